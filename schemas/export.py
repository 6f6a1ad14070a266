"""JSON Schemas of every wire event, for producers and consumers in other languages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas.control import CancelRequested
from schemas.progress import EditProgressed
from schemas.requests import EditRequest
from schemas.results import EditCompleted

WIRE_EVENTS: dict[str, type[BaseModel]] = {
    "edit-request.v1": EditRequest,
    "edit-completed.v1": EditCompleted,
    "edit-progressed.v1": EditProgressed,
    "cancel-requested.v1": CancelRequested,
}
# Events we consume are validated as input; events we publish are described as we serialise them.
_INPUTS = (EditRequest, CancelRequested)

PUBLISHED_DIR = Path(__file__).parent / "jsonschema"


def json_schemas() -> dict[str, dict[str, Any]]:
    schemas = {}
    for name, model in WIRE_EVENTS.items():
        schema = model.model_json_schema(mode="validation" if model in _INPUTS else "serialization")
        schema["$id"] = f"https://klein-edit.dev/schemas/{name}.json"
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schemas[name] = schema
    return schemas


def write_published(directory: Path = PUBLISHED_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = directory / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_published():
        print(path)
