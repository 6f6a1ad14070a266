"""The published AsyncAPI 3.0 document: valid, in sync with its builder, and pointing at the JSON Schemas."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from consumer.cli.asyncapi import PUBLISHED_PATH, asyncapi_document, asyncapi_yaml
from consumer.kafka.settings import KafkaSettings
from schemas.export import WIRE_EVENTS

ASYNCAPI_SCHEMA = Path(__file__).parent / "data" / "asyncapi-3.0.0.schema.json"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(PUBLISHED_PATH.read_text(encoding="utf-8"))
    return loaded


def test_the_committed_document_is_the_generated_one() -> None:
    assert PUBLISHED_PATH.read_text(encoding="utf-8") == asyncapi_yaml(), (
        "schemas/asyncapi.yaml is out of date: run `klein-edit schema --asyncapi --write schemas`"
    )


def test_it_is_a_valid_asyncapi_3_document(document: dict[str, Any]) -> None:
    validator = Draft7Validator(json.loads(ASYNCAPI_SCHEMA.read_text(encoding="utf-8")))
    assert [e.message for e in validator.iter_errors(document)] == []
    assert document["asyncapi"] == "3.0.0"
    broken = {**document, "operations": {"x": {"action": "publish", "channel": {"$ref": "#/channels/a"}}}}
    assert list(validator.iter_errors(broken)), "the AsyncAPI schema should catch a v2 action"


def test_the_five_topics_are_the_default_topics(document: dict[str, Any]) -> None:
    defaults = KafkaSettings()
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert addresses == {
        defaults.request_topic,
        defaults.result_topic,
        defaults.progress_topic,
        defaults.control_topic,
        defaults.dlq_topic,
    }
    for operation in document["operations"].values():
        channel = operation["channel"]["$ref"].removeprefix("#/channels/")
        assert channel in document["channels"]
        for message in operation["messages"]:
            _, _, name, _, key = message["$ref"].split("/")
            assert name == channel
            assert key in document["channels"][channel]["messages"]


def test_payloads_reference_every_published_json_schema(document: dict[str, Any]) -> None:
    referenced = set()
    for message in document["components"]["messages"].values():
        payload = message["payload"]
        if "schema" not in payload:
            continue  # the dead letter: raw bytes
        assert payload["schemaFormat"] == "application/schema+json;version=draft-2020-12"
        target = PUBLISHED_PATH.parent / payload["schema"]["$ref"]
        assert target.is_file(), target
        assert json.loads(target.read_text())["title"] == WIRE_EVENTS[message["name"]].__name__
        referenced.add(message["name"])
    assert referenced == set(WIRE_EVENTS)


def test_the_cli_writes_the_document_beside_the_schemas_it_references(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "consumer", "schema", "--asyncapi", "--write", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    written = yaml.safe_load((tmp_path / "asyncapi.yaml").read_text())
    assert written == asyncapi_document()
    for message in written["components"]["messages"].values():
        if "schema" in message["payload"]:
            assert (tmp_path / message["payload"]["schema"]["$ref"]).is_file()


def test_every_dead_letter_header_the_worker_writes_is_documented(document: dict[str, Any]) -> None:
    """A new `klein-edit.*` DLQ header in consumer/kafka/clients.py must be described in the document too."""
    from consumer.kafka import clients as kafka_io

    written = {
        value
        for name, value in vars(kafka_io).items()
        if name.startswith("DLQ_") and isinstance(value, str) and value.startswith("klein-edit.")
    }
    documented = document["components"]["messages"]["deadLetter"]["headers"]["properties"]
    assert written - set(documented) == set(), "describe them in consumer/cli/asyncapi.py (_dlq_message)"
    assert {"traceparent", "tracestate"} <= set(documented)
