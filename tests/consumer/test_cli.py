"""The console script's pure parts: --recolor parsing and `klein-edit schema`."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from consumer.cli import main
from consumer.cli.submit import new_request_id, parse_recolor_flag
from schemas.export import PUBLISHED_DIR, json_schemas
from schemas.requests import REQUEST_ID_PATTERN, RecolorInstruction


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No KLEIN_EDIT_* from the outside, and the global logging set-up that `main` installs is undone."""
    for name in list(os.environ):
        if name.upper().startswith("KLEIN_EDIT_"):
            monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    aiokafka_level = logging.getLogger("aiokafka").level
    structlog_config = structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("aiokafka").setLevel(aiokafka_level)
    structlog.configure(**structlog_config)


# --- parse_recolor_flag ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "target", "color"),
    [
        ("the sneakers=#1E90FF", "the sneakers", "#1E90FF"),
        ("the sneakers=#1e90ff", "the sneakers", "#1e90ff"),
        ("laces=#fff", "laces", "#fff"),
        ("  the bag  =#000000", "the bag", "#000000"),
        ("the a=b sign=#ABC", "the a=b sign", "#ABC"),
    ],
)
def test_parse_recolor_flag(flag: str, target: str, color: str) -> None:
    parsed = parse_recolor_flag(flag)
    assert parsed == {"target": target, "color": color}
    assert RecolorInstruction.model_validate(parsed).color == color


@pytest.mark.parametrize(
    "flag",
    [
        "the sneakers",
        "the sneakers=",
        "the sneakers=1E90FF",
        "the sneakers=#1E90F",
        "the sneakers=#1E90",
        "the sneakers=#GGGGGG",
        "the sneakers=blue",
        "the sneakers=#1E90FF80",
        "the sneakers= #1E90FF",
        "the sneakers=#1E90FF ",
        "=#1E90FF",
        "",
    ],
)
def test_parse_recolor_flag_rejects(flag: str) -> None:
    with pytest.raises(ValueError, match="expected TARGET=#RRGGBB"):
        parse_recolor_flag(flag)


def test_new_request_ids_match_the_contract() -> None:
    ids = {new_request_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(REQUEST_ID_PATTERN, rid) for rid in ids)


# --- klein-edit schema -----------------------------------------------------------------------------


def test_schema_prints_every_wire_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    out = capsys.readouterr().out
    printed = json.loads(out)
    assert printed == json_schemas()
    assert {"edit-request.v1", "edit-completed.v1"} <= set(printed)


def test_schema_output_matches_the_committed_files(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    for name, schema in printed.items():
        committed = json.loads((PUBLISHED_DIR / f"{name}.schema.json").read_text())
        assert committed == schema, f"{name}: run `python -m schemas.export`"


def test_schema_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "published"
    assert main(["schema", "--write", str(out_dir)]) == 0
    schemas = json_schemas()
    assert capsys.readouterr().out.strip() == f"wrote {len(schemas)} schemas to {out_dir}"
    for name, schema in schemas.items():
        path = out_dir / f"{name}.schema.json"
        assert json.loads(path.read_text()) == schema
        assert path.read_text() == (PUBLISHED_DIR / path.name).read_text()


def test_invalid_configuration_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KLEIN_EDIT_WORKER__MAX_ATTEMPTS", "0")
    assert main(["schema"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "invalid configuration" in captured.err
    assert "max_attempts" in captured.err


def test_malformed_json_list_in_the_environment_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KLEIN_EDIT_KAFKA__PRIORITY_TOPICS", "edit.urgent,edit.high")
    assert main(["schema"]) == 2
    assert "invalid configuration" in capsys.readouterr().err


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "klein-edit" in capsys.readouterr().err


def test_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
