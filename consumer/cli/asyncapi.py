"""The AsyncAPI 3.0 document of the worker's Kafka interface: five topics, their keys, headers and payloads.

Payloads reference the published JSON Schemas (`schemas/jsonschema/*.schema.json`, Draft 2020-12)
as Multi Format Schema Objects, so the document and the schemas cannot disagree. The committed copy
is `schemas/asyncapi.yaml` (`klein-edit schema --asyncapi --write schemas`); a test fails when it
drifts from this builder. Topic names are the defaults of `KafkaSettings`; each is configurable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from consumer.kafka import clients as kafka_io
from consumer.kafka import tracing
from consumer.kafka.settings import KafkaSettings
from schemas.export import PUBLISHED_DIR
from schemas.requests import REQUEST_ID_PATTERN

ASYNCAPI_FILE = "asyncapi.yaml"
PUBLISHED_PATH = PUBLISHED_DIR.parent / ASYNCAPI_FILE
_SCHEMA_FORMAT = "application/schema+json;version=draft-2020-12"
_KAFKA_BINDING_VERSION = "0.5.0"

_KEY = {"type": "string", "pattern": REQUEST_ID_PATTERN, "description": "The request_id."}
_TRACE_HEADERS = {
    tracing.TRACEPARENT: {
        "type": "string",
        "description": "W3C Trace Context. Optional on a request; copied unchanged onto its result, "
        "progress and dead-letter records.",
    },
    tracing.TRACESTATE: {"type": "string", "description": "W3C Trace Context, carried with traceparent."},
}


def _payload(name: str) -> dict[str, Any]:
    relative = PUBLISHED_DIR.relative_to(PUBLISHED_DIR.parent) / f"{name}.schema.json"
    return {"schemaFormat": _SCHEMA_FORMAT, "schema": {"$ref": f"./{relative.as_posix()}"}}


def _message(name: str, title: str, summary: str, *, key: dict[str, Any] | None = _KEY) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": name,
        "title": title,
        "summary": summary,
        "contentType": "application/json",
        "headers": {"type": "object", "properties": _TRACE_HEADERS},
        "payload": _payload(name),
    }
    if key is not None:
        message["bindings"] = {"kafka": {"key": key, "bindingVersion": _KAFKA_BINDING_VERSION}}
    return message


def _dlq_message() -> dict[str, Any]:
    header = {"type": "string"}
    headers = {
        kafka_io.DLQ_ORIGINAL_TOPIC: {**header, "description": "Topic the record was read from."},
        kafka_io.DLQ_ORIGINAL_PARTITION: {**header, "description": "Its partition (decimal)."},
        kafka_io.DLQ_ORIGINAL_OFFSET: {**header, "description": "Its offset (decimal)."},
        kafka_io.DLQ_ERROR_CODE: {**header, "description": "The stable error code, e.g. INVALID_EVENT."},
        kafka_io.DLQ_ERROR_MESSAGE: {**header, "description": "Why, naming the field where one is at fault."},
        kafka_io.DLQ_ATTEMPTS: {**header, "description": "Tries made before giving up (decimal)."},
    }
    optional = {
        kafka_io.DLQ_TRUNCATED: {
            **header,
            "const": "true",
            "description": f"Present when the value was over max_request_bytes and only its first "
            f"{kafka_io.DLQ_PREVIEW_BYTES} bytes are kept.",
        },
        kafka_io.DLQ_ORIGINAL_SIZE: {**header, "description": "With truncated: the value's size in bytes."},
        kafka_io.DLQ_KEY_TRUNCATED: {
            **header,
            "const": "true",
            "description": f"Present when the key was over {kafka_io.DLQ_PREVIEW_BYTES} bytes and only its "
            "first bytes are kept.",
        },
        kafka_io.DLQ_ORIGINAL_KEY_SIZE: {
            **header,
            "description": "With key-truncated: the key's size in bytes.",
        },
        kafka_io.DLQ_ORIGINAL_KEY_SHA256: {
            **header,
            "description": "With key-truncated: the hex SHA-256 of the whole original key.",
        },
        kafka_io.DLQ_HEADERS_DROPPED: {
            **header,
            "description": f"How many of the record's own headers were left out (they are kept up to "
            f"{kafka_io.DLQ_PREVIEW_BYTES} bytes).",
        },
    }
    return {
        "name": "dead-letter",
        "title": "Dead-lettered record",
        "summary": "A request record the worker gave up on: its original key, value (an oversize value "
        "truncated, saying so) and headers, plus klein-edit.* headers saying where it came from and "
        "why. `klein-edit dlq replay` sends it back with its own headers.",
        "contentType": "application/octet-stream",
        "headers": {
            "type": "object",
            "properties": {**headers, **optional, **_TRACE_HEADERS},
            "required": sorted(headers),
        },
        "payload": {"description": "The original record value, unchanged (it may not be valid JSON)."},
    }


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document as a plain dict (YAML/JSON-ready)."""
    topics = KafkaSettings()
    channels = {
        "editRequests": {
            "address": topics.request_topic,
            "title": "Edit requests",
            "description": "Requests to edit, keyed by request_id (KLEIN_EDIT_KAFKA__REQUEST_TOPIC). "
            "Priority lanes (KLEIN_EDIT_KAFKA__PRIORITY_TOPICS) carry the same message.",
            "messages": {"editRequest": {"$ref": "#/components/messages/editRequest"}},
        },
        "editResults": {
            "address": topics.result_topic,
            "title": "Edit results",
            "description": "One result per request, keyed by request_id (KLEIN_EDIT_KAFKA__RESULT_TOPIC).",
            "messages": {"editCompleted": {"$ref": "#/components/messages/editCompleted"}},
        },
        "editProgress": {
            "address": topics.progress_topic,
            "title": "Edit progress",
            "description": "Throttled progress, fire-and-forget (KLEIN_EDIT_KAFKA__PROGRESS_TOPIC).",
            "messages": {"editProgressed": {"$ref": "#/components/messages/editProgressed"}},
        },
        "editControl": {
            "address": topics.control_topic,
            "title": "Job control",
            "description": "Cancel commands; make the topic compacted (KLEIN_EDIT_KAFKA__CONTROL_TOPIC).",
            "messages": {"cancelRequested": {"$ref": "#/components/messages/cancelRequested"}},
        },
        "deadLetters": {
            "address": topics.dlq_topic,
            "title": "Dead letters",
            "description": "Undecodable requests and requests that exhausted their retries "
            "(KLEIN_EDIT_KAFKA__DLQ_TOPIC).",
            "messages": {"deadLetter": {"$ref": "#/components/messages/deadLetter"}},
        },
    }

    def operation(action: str, channel: str, message: str, summary: str) -> dict[str, Any]:
        return {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": summary,
            "messages": [{"$ref": f"#/channels/{channel}/messages/{message}"}],
        }

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "klein-edit",
            "version": "1",
            "description": "FLUX.2 [klein] image edits over Kafka. Operations are from the worker's "
            "point of view. Evolution policy: README, 'Evolving the contract'.",
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": {
            "consumeEditRequests": operation(
                "receive", "editRequests", "editRequest", "The workers' consumer group reads requests."
            ),
            "publishEditResults": operation(
                "send", "editResults", "editCompleted", "Sent once the output is in S3, before the commit."
            ),
            "publishEditProgress": operation(
                "send", "editProgress", "editProgressed", "At most one a second per request."
            ),
            "consumeCancels": operation(
                "receive", "editControl", "cancelRequested", "Every worker reads the whole topic."
            ),
            "publishDeadLetters": operation(
                "send", "deadLetters", "deadLetter", "Copies of records the worker gave up on."
            ),
        },
        "components": {
            "messages": {
                "editRequest": _message("edit-request.v1", "Edit request", "One edit to run."),
                "editCompleted": _message(
                    "edit-completed.v1", "Edit completed", "Succeeded, failed or canceled."
                ),
                "editProgressed": _message("edit-progressed.v1", "Edit progressed", "A stage or step."),
                "cancelRequested": _message(
                    "cancel-requested.v1", "Cancel requested", "Skip or stop a request."
                ),
                "deadLetter": _dlq_message(),
            }
        },
    }


def asyncapi_yaml() -> str:
    header = (
        "# Generated by `klein-edit schema --asyncapi` (consumer/cli/asyncapi.py); do not edit by hand.\n"
    )
    return header + yaml.safe_dump(asyncapi_document(), sort_keys=False, allow_unicode=True, width=100)


def write_published(directory: Path = PUBLISHED_DIR.parent) -> Path:
    path = directory / ASYNCAPI_FILE
    path.write_text(asyncapi_yaml(), encoding="utf-8")
    return path
