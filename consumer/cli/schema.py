"""`klein-edit schema`: print or write the JSON Schemas of the events, or the AsyncAPI document.

Needs no configuration: the published contract does not depend on a deployment.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from consumer.cli.command import add_command


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        subparsers, "schema", "print the JSON Schemas of the events (needs no configuration)"
    )
    parser.add_argument(
        "--write",
        metavar="DIR",
        help="write one <event>.schema.json file per event into DIR (default: print them all as one "
        "JSON object)",
    )
    parser.add_argument(
        "--asyncapi",
        action="store_true",
        help="the AsyncAPI 3.0 document of the five topics instead (with --write: DIR/asyncapi.yaml "
        "and the JSON Schemas it references in DIR/jsonschema/) (default: off)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from consumer.cli import asyncapi
    from schemas.export import json_schemas, write_published

    if args.asyncapi:
        if not args.write:
            print(asyncapi.asyncapi_yaml(), end="")
            return 0
        out = Path(args.write)
        out.mkdir(parents=True, exist_ok=True)
        written = [asyncapi.write_published(out), *write_published(out / "jsonschema")]
        print(f"wrote {len(written)} files to {out}")
        return 0
    schemas = json_schemas()
    if args.write:
        out = Path(args.write)
        out.mkdir(parents=True, exist_ok=True)
        for name, schema in schemas.items():
            (out / f"{name}.schema.json").write_text(json.dumps(schema, indent=2) + "\n")
        print(f"wrote {len(schemas)} schemas to {out}")
    else:
        print(json.dumps(schemas, indent=2))
    return 0
