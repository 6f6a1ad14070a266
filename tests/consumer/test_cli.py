"""The console script: --recolor parsing, `schema`, the help texts, --version, and one line per failure.

The process-level behaviour (exit codes, exactly what reaches stderr) is checked on the real
`klein-edit` executable; nothing here needs a broker or S3 (they are pointed at closed ports).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from PIL import Image

from consumer.cli import main
from consumer.cli.main import build_parser
from consumer.cli.submit import new_request_id, parse_recolor_flag
from pipeline.config import DEFAULT_MODEL, TINY_RANDOM
from schemas.export import PUBLISHED_DIR, json_schemas
from schemas.requests import REQUEST_ID_PATTERN, RecolorInstruction

KLEIN_EDIT = str(Path(sys.executable).with_name("klein-edit"))


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


def test_schema_needs_no_configuration(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KLEIN_EDIT_KAFKA__PRIORITY_TOPICS", "edit.urgent,edit.high")  # not JSON
    monkeypatch.setenv("KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVER", "typo:9092")  # not a setting
    monkeypatch.setenv("KLEIN_EDIT_WORKER__MAX_ATTEMPTS", "0")  # out of range
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json_schemas()


def test_a_configuration_error_is_one_line_per_problem(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KLEIN_EDIT_S3__INPUT_BUCKET", "acme-in")
    monkeypatch.setenv("KLEIN_EDIT_S3__OUTPUT_BUCKET", "acme-out")
    monkeypatch.setenv("KLEIN_EDIT_WORKER__MAX_ATTEMPTS", "0")
    assert main(["cancel", "some-request"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "klein-edit cancel: invalid configuration: KLEIN_EDIT_WORKER__MAX_ATTEMPTS: "
        "Input should be greater than or equal to 1 (got '0')\n"
    )


# --- the parser: every option says its unit, range and default ------------------------------------


def subparsers(parser: argparse.ArgumentParser, path: str = "klein-edit") -> Iterator[tuple[str, Any]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from subparsers(child, f"{path} {name}")


def test_every_option_of_every_command_gives_its_default_and_range() -> None:
    commands = dict(subparsers(build_parser()))
    assert {"klein-edit submit", "klein-edit dev up", "klein-edit demo", "klein-edit worker"} <= set(commands)
    checked = 0
    for path, parser in commands.items():
        for action in parser._actions:
            if isinstance(
                action, argparse._HelpAction | argparse._VersionAction | argparse._SubParsersAction
            ):
                continue
            if not action.option_strings:
                assert action.help, f"{path} {action.dest}: no help"
                continue
            flag, text = action.option_strings[0], action.help or ""
            assert re.search(r"\(default: .+\)$|\(required\)$", text), f"{path} {flag}: {text!r}"
            if action.type is not None:
                # A number says its unit or what it counts, and its range.
                assert re.search(r"\d+ ?-\d+|more than 0|1 or more|0 to", text), f"{path} {flag}: {text!r}"
                assert action.metavar in {
                    "SECONDS",
                    "PIXELS",
                    "MS",
                    "MB",
                    "MP",
                    "N",
                    "PORT",
                    "SCALE",
                    "PRESET|WxH",
                }, flag
            checked += 1
    assert checked >= 25


def test_top_level_help_says_what_the_tool_is_for(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "klein-edit edits images with the FLUX.2 [klein] model" in out
    assert "klein-edit dev up" in out


@pytest.mark.parametrize("command", ["worker", "fetch-model"])
def test_worker_and_fetch_model_help_name_the_variables_the_model_and_hf_token(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "HF_TOKEN" in out
    assert DEFAULT_MODEL in out
    assert "KLEIN_EDIT_PIPELINE__MODEL" in out
    if command == "worker":
        for name in ("KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVERS", "KLEIN_EDIT_S3__OUTPUT_BUCKET", TINY_RANDOM):
            assert name in out


# --- the process: --version, python -m consumer, one line per failure -----------------------------------


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("KLEIN_EDIT_")}
    return subprocess.run(
        [KLEIN_EDIT, *args], env={**base, **(env or {})}, capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_version_comes_from_the_package_metadata() -> None:
    expected = f"klein-edit {importlib.metadata.version('klein-edit')}\n"
    assert run_cli("--version").stdout == expected
    # The same command line as a module, and --version reads no configuration either.
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("KLEIN_EDIT_")}
    module = subprocess.run(
        [sys.executable, "-m", "consumer", "--version"],
        env={**env, "KLEIN_EDIT_NOT_A_SETTING": "x"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (module.returncode, module.stdout) == (0, expected)


def test_a_misspelled_setting_stops_the_worker_with_one_line(tmp_path: Path) -> None:
    proc = run_cli("worker", env={"KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVER": "broker:9092"}, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == (
        "klein-edit worker: invalid configuration: KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVER (from the environment) "
        "is not a setting; did you mean KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVERS?\n"
    )


def test_a_list_that_is_not_json_stops_the_worker_but_not_schema(tmp_path: Path) -> None:
    env = {"KLEIN_EDIT_KAFKA__PRIORITY_TOPICS": "edit.urgent,edit.high"}
    worker = run_cli("worker", env=env, cwd=tmp_path)
    assert worker.returncode == 2
    assert worker.stderr.count("\n") == 1
    assert (
        "KLEIN_EDIT_KAFKA__PRIORITY_TOPICS (from the environment) is not JSON: lists are JSON"
        in worker.stderr
    )
    schema = run_cli("schema", env=env, cwd=tmp_path)
    assert (schema.returncode, schema.stderr) == (0, "")
    assert json.loads(schema.stdout) == json_schemas()


@pytest.mark.parametrize("command", [["worker"], ["submit", "--image", "s3://in/shot.png", "--prompt", "x"]])
def test_bucket_names_are_required_on_aws_and_the_line_says_to_paste_dev_ups_exports(
    tmp_path: Path, command: list[str]
) -> None:
    """A new terminal without `dev up`'s exports: one line naming both variables and where they come from."""
    proc = run_cli(*command, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == (
        f"klein-edit {command[0]}: invalid configuration: KLEIN_EDIT_S3__INPUT_BUCKET and "
        "KLEIN_EDIT_S3__OUTPUT_BUCKET are not set (required without KLEIN_EDIT_S3__ENDPOINT_URL, i.e. on "
        "AWS): for local services, paste the `export` lines that `klein-edit dev up` prints into this "
        "terminal; on AWS, set them to your buckets\n"
    )


def test_submit_rejects_a_missing_file_before_reading_any_configuration_of_kafka(tmp_path: Path) -> None:
    env = {
        "KLEIN_EDIT_S3__ENDPOINT_URL": "http://127.0.0.1:1",
        "KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",
    }
    proc = run_cli("submit", "--image", "no-such-shot.png", "--prompt", "make it blue", env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == (
        "klein-edit submit: --image no-such-shot.png: no such file (an object in S3 is given as "
        "s3://bucket/key, a URL as https://...)\n"
    )


def test_cancel_with_an_unreachable_broker_is_one_line(tmp_path: Path) -> None:
    # No S3 settings at all: a cancel goes to Kafka only, so it asks for no bucket names.
    env = {"KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    proc = run_cli("cancel", "req-1", env=env, cwd=tmp_path)
    assert proc.returncode == 4
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("klein-edit cancel: cannot reach Kafka at 127.0.0.1:1 (")
    assert proc.stderr.endswith(
        "start a broker (`klein-edit dev up` runs one here) or set KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVERS\n"
    )


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


def test_demo_on_unreachable_services_is_one_line(tmp_path: Path) -> None:
    env = {
        "KLEIN_EDIT_S3__ENDPOINT_URL": "http://127.0.0.1:1",
        "KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "KLEIN_EDIT_S3__ACCESS_KEY_ID": "k",
        "KLEIN_EDIT_S3__SECRET_ACCESS_KEY": "s",
    }
    proc = run_cli("demo", "--no-embedded", env=env, cwd=tmp_path)
    assert proc.returncode == 4
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("klein-edit demo: cannot use S3 at http://127.0.0.1:1 (")


def test_bench_pipeline_options_give_their_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    """`bench pipeline` passes its options to pipeline.tools.bench, whose parser follows the same rule."""
    with pytest.raises(SystemExit) as info:
        main(["bench", "pipeline", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: klein-edit bench pipeline")
    options = out.split("options:", 1)[1]
    for flag in ("--real-dims", "--steps N", "--width PIXELS", "--height PIXELS", "--references N"):
        described = options.split(flag, 1)[1].split("\n  --", 1)[0]
        assert "(default: " in described, flag


def test_dev_up_on_a_busy_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_cli("dev", "up", "--kafka-port", str(port), "--s3-port", "0", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == (
        f"klein-edit dev up: 127.0.0.1:{port} is in use (another `klein-edit dev up`?); pass --kafka-port "
        "PORT (0 picks a free one)\n"
    )


def test_dlq_replay_dry_run_without_a_broker_is_one_line(tmp_path: Path) -> None:
    """The consumer whose start failed is closed: no `Unclosed AIOKafkaConsumer` after the line."""
    env = {"KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    proc = run_cli("dlq", "replay", "--dry-run", env=env, cwd=tmp_path)
    assert proc.returncode == 4
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("klein-edit dlq replay: cannot reach Kafka at 127.0.0.1:1 (")


def test_a_second_worker_on_a_taken_health_port_is_one_line(tmp_path: Path) -> None:
    env = {
        "KLEIN_EDIT_S3__ENDPOINT_URL": "http://127.0.0.1:1",
        "KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "KLEIN_EDIT_WORKER__HTTP_HOST": "127.0.0.1",
        "KLEIN_EDIT_LOG__LEVEL": "WARNING",
    }
    with socket.socket() as taken:  # the first worker's health endpoint
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli("worker", env={**env, "KLEIN_EDIT_WORKER__HTTP_PORT": str(port)}, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == (
        f"klein-edit worker: the health endpoint cannot listen on 127.0.0.1:{port}: address already in use "
        "(another `klein-edit worker` on this machine?); set KLEIN_EDIT_WORKER__HTTP_PORT to a free port, 0 "
        "to pick a free one, or off to serve no /livez, /readyz, /metrics\n"
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--env-file", "/nonexistent/x.env"],
            "--env-file /nonexistent/x.env: no such file (leave the flag out to read .env if present)",
        ),
        (
            ["--secrets-dir", "/nonexistent"],
            "--secrets-dir /nonexistent: no such directory (leave the flag out to read "
            "/run/secrets/klein-edit if present)",
        ),
    ],
    ids=["env-file", "secrets-dir"],
)
def test_an_explicit_configuration_path_that_does_not_exist_is_a_usage_error(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    proc = run_cli(*flags, "cancel", "req-1", env={"KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == f"klein-edit cancel: {message}\n"


def test_an_env_file_given_as_a_pipe_is_read(tmp_path: Path) -> None:
    """`--env-file <(...)` in a shell: a pipe, not a regular file, and still no usage error."""
    fifo = tmp_path / "env.fifo"
    os.mkfifo(fifo)
    with subprocess.Popen(
        [KLEIN_EDIT, "--env-file", str(fifo), "cancel", "req-1"],
        env={k: v for k, v in os.environ.items() if not k.upper().startswith("KLEIN_EDIT_")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    ) as proc:
        # Opening a pipe for writing blocks until it is opened for reading: in a thread, so a command
        # that never reads it fails the test instead of hanging it.
        writer = threading.Thread(
            target=fifo.write_text, args=("KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:1\n",), daemon=True
        )
        writer.start()
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 4, err
    assert err.startswith("klein-edit cancel: cannot reach Kafka at 127.0.0.1:1 (")


def test_an_explicit_env_file_that_exists_is_read(tmp_path: Path) -> None:
    env_file = tmp_path / "local.env"
    env_file.write_text("KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:1\n")
    proc = run_cli(
        "--env-file", str(env_file), "--secrets-dir", str(tmp_path), "cancel", "req-1", cwd=tmp_path
    )
    assert proc.returncode == 4
    assert proc.stderr.startswith("klein-edit cancel: cannot reach Kafka at 127.0.0.1:1 (")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt", "make it blue", "--steps", "7"], "--steps: at least 25 (got 7)"),
        (["--prompt", "make it blue", "--guidance", "31"], "--guidance: at most 30.0 (got 31.0)"),
        (
            ["--prompt", "make it blue", "--width", "100", "--height", "64"],
            "--width: a multiple of 16 (got 100)",
        ),
        (["--prompt", "make it blue", "--width", "64"], "give --width and --height together"),
        ([], "give --prompt or --recolor"),
        (
            ["--prompt", "make it blue", "--request-id", "bad id!"],
            "--request-id: 1-128 characters, each a letter, a digit or one of . _ : - (got 'bad id!')",
        ),
        (
            ["--recolor", "the shirt=blue"],
            "--recolor 'the shirt=blue': expected TARGET=#RRGGBB or #RGB, e.g. 'the sneakers=#1E90FF'",
        ),
        (["--prompt", "x", "--num-images", "5"], "--num-images: at most 4 (got 5)"),
        (
            ["--prompt", "x", "--image-size", "100x64"],
            "--image-size (width): a multiple of 16 (got 100)",
        ),
        (
            ["--prompt", "x", "--image-size", "square", "--aspect-ratio", "4:3"],
            "--image-size and --aspect-ratio conflict: give one way of sizing the output",
        ),
        (
            ["--prompt", "x", "--image-size", "512x512", "--width", "64", "--height", "64"],
            "--image-size and --width/--height conflict: give one way of sizing the output",
        ),
        (
            ["--prompt", "x", "--megapixels", "9"],
            "--megapixels: 9, the worker makes at most 4 (KLEIN_EDIT_PIPELINE__MAX_OUTPUT_MEGAPIXELS)",
        ),
        (["--prompt", "x", "--quality", "80"], "--quality applies to --format jpeg or webp; png is lossless"),
        (["--prompt", "x", "--format", "jpeg", "--lossless"], "--lossless needs --format webp, not jpeg"),
        (["--prompt", "x", "--negative-prompt", " "], "--negative-prompt: not blank (got ' ')"),
        (
            ["--prompt", "x", "--width", "4096", "--height", "4096"],
            "--width/--height: 4096x4096 is 16.78 MP, the worker makes at most 4 "
            "(KLEIN_EDIT_PIPELINE__MAX_OUTPUT_MEGAPIXELS)",
        ),
    ],
    ids=[
        "steps",
        "guidance",
        "width",
        "width-alone",
        "no-prompt",
        "request-id",
        "recolor",
        "num-images",
        "image-size-wxh",
        "size-conflict",
        "wxh-and-width",
        "megapixels-cap",
        "png-quality",
        "jpeg-lossless",
        "negative-prompt",
        "width-height-cap",
    ],
)
def test_submit_names_the_flags_the_user_typed(tmp_path: Path, args: list[str], message: str) -> None:
    shot = tmp_path / "shot.png"
    Image.new("RGB", (64, 64)).save(shot)
    env = {
        "KLEIN_EDIT_S3__ENDPOINT_URL": "http://127.0.0.1:1",
        "KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",
    }
    proc = run_cli("submit", "--image", str(shot), *args, env=env, cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == f"klein-edit submit: {message}\n"


def test_submit_sends_an_https_image_as_it_is_and_checks_it_as_the_worker_would(tmp_path: Path) -> None:
    env = {
        "KLEIN_EDIT_S3__ENDPOINT_URL": "http://127.0.0.1:1",
        "KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",
    }
    url = "https://cdn.example.com/shots/a.png?X-Amz-Signature=secret"
    proc = run_cli("submit", "--image", url, "--prompt", "x", env=env, cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert "no such file" not in proc.stderr
    assert "KLEIN_EDIT_URL_INPUTS__ENABLED" in proc.stderr  # off on this worker: said before anything is sent
    assert "secret" not in proc.stderr


def test_cancel_of_an_id_with_other_characters_says_which_are_allowed(tmp_path: Path) -> None:
    proc = run_cli("cancel", "bad id!", cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == (
        "klein-edit cancel: REQUEST_ID: 1-128 characters, each a letter, a digit or one of . _ : - "
        "(got 'bad id!')\n"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"# klein-edit\n", "not an image in an allowed format (PNG, JPEG, WEBP, HEIF, AVIF)"),
        (b"", "empty input, expected an image (PNG/JPEG/WEBP/HEIF/AVIF)"),
        ("gif", "image format GIF is not allowed (allowed: PNG, JPEG, WEBP, HEIF, AVIF)"),
    ],
    ids=["text", "empty", "gif"],
)
def test_submit_checks_that_a_local_file_is_an_allowed_image_before_uploading(
    tmp_path: Path, content: bytes | str, message: str
) -> None:
    path = tmp_path / "input.bin"
    if content == "gif":
        Image.new("RGB", (64, 64)).save(path, format="GIF")
    else:
        assert isinstance(content, bytes)
        path.write_bytes(content)
    # The broker and S3 are closed ports: the check runs before either is touched.
    env = {
        "KLEIN_EDIT_S3__ENDPOINT_URL": "http://127.0.0.1:1",
        "KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",
    }
    for flags in (
        ["--image", str(path)],
        ["--image", "s3://klein-edit-inputs/a.png", "--reference", str(path)],
    ):
        proc = run_cli("submit", *flags, "--prompt", "x", env=env, cwd=tmp_path)
        assert (proc.returncode, proc.stdout) == (2, "")
        assert proc.stderr == f"klein-edit submit: {flags[-2]} {path}: {message}\n"


def help_of(*command: str) -> str:
    parser = build_parser()
    for name in command:
        parser = next(
            action.choices[name]
            for action in parser._actions
            if isinstance(action, argparse._SubParsersAction)
        )
    return parser.format_help()


def test_help_texts_say_what_the_values_mean() -> None:
    flat = " ".join(help_of("submit").split())
    assert "recolour TARGET to #RRGGBB or #RGB" in flat
    assert "(default: as --width)" not in flat
    assert "with --width (default: like --width, the input's size scaled to at most" in flat
    bench = " ".join(help_of().split())
    for mode in ("orchestration", "adapters", "pipeline", "quality"):
        assert mode in bench.split("benchmarks:", 1)[1].split("dlq", 1)[0]
    worker = " ".join(help_of("worker").split())
    assert "KLEIN_EDIT_WORKER__HTTP_PORT /livez, /readyz, /metrics; 1-65535, 0 picks a free one" in worker
    assert "off serves none" in worker
    fetch = " ".join(help_of("fetch-model").split())
    assert "without a GPU also set KLEIN_EDIT_PIPELINE__DEVICE=cpu" in fetch


# --- submit: the flags of issue 22 ------------------------------------------------------------------


def submit_args(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["submit", "--image", "s3://klein-edit-inputs/a.png", *flags])


def local_settings() -> Any:
    from consumer.settings import Settings

    return Settings(_env_file=None, s3={"endpoint_url": "http://127.0.0.1:1"})  # type: ignore[call-arg]


def test_submit_flags_set_every_request_field_of_issue_22() -> None:
    from consumer.cli.submit import prepare_submission

    args = submit_args(
        "--prompt", "a red chair", "--negative-prompt", "blurry", "--num-images", "3",
        "--aspect-ratio", "16:9", "--megapixels", "0.5", "--acceleration", "high",
        "--format", "webp", "--quality", "70", "--lossless",
    )  # fmt: skip
    request = prepare_submission(local_settings(), args).request
    assert (request.negative_prompt, request.num_images, request.acceleration) == ("blurry", 3, "high")
    assert (request.aspect_ratio, request.megapixels, request.image_size) == ("16:9", 0.5, None)
    assert request.output is not None
    assert (request.output.format, request.output.quality, request.output.lossless) == ("webp", 70, True)
    preset = prepare_submission(
        local_settings(), submit_args("--prompt", "x", "--image-size", "portrait_4_3")
    )
    assert (preset.request.image_size, preset.request.width) == ("portrait_4_3", None)
    wxh = prepare_submission(local_settings(), submit_args("--prompt", "x", "--image-size", "768x1024"))
    assert (wxh.request.width, wxh.request.height, wxh.request.image_size) == (768, 1024, None)
    plain = prepare_submission(local_settings(), submit_args("--prompt", "x")).request
    assert plain.output is None  # no output flag: the worker's defaults, nothing sent
    assert (plain.num_images, plain.negative_prompt, plain.acceleration) == (1, None, None)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--image-size", "huge"],
            "argument --image-size: 'huge' is neither a preset (square_hd, square, portrait_4_3, "
            "portrait_16_9, landscape_4_3, landscape_16_9) nor WIDTHxHEIGHT, e.g. 768x1024",
        ),
        (["--aspect-ratio", "2:1"], "argument --aspect-ratio: invalid choice: '2:1'"),
        (["--acceleration", "fast"], "argument --acceleration: invalid choice: 'fast'"),
        (["--num-images", "two"], "argument --num-images: invalid int value: 'two'"),
        (["--megapixels", "lots"], "argument --megapixels: invalid float value: 'lots'"),
        (["--quality", "high"], "argument --quality: invalid int value: 'high'"),
    ],
)
def test_submit_flag_values_of_the_wrong_form_are_usage_errors(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        submit_args("--prompt", "x", *flags)
    assert exit_info.value.code == 2
    assert f"klein-edit submit: error: {message}" in capsys.readouterr().err
