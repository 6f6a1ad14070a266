"""The error tree drawn in `schemas.errors`'s docstring names every typed error, with its code."""

from __future__ import annotations

import importlib
import inspect
import re

import pytest

import schemas.errors
from schemas.errors import KleinEditError

MODULES = [
    "schemas.errors",
    "storage.errors",
    "pipeline.errors",
    "pipeline.signing",
    "consumer.policy",
    "consumer.publisher",
]


def request_errors() -> list[type[KleinEditError]]:
    found: dict[str, type[KleinEditError]] = {}
    for name in MODULES:
        for _, cls in inspect.getmembers(importlib.import_module(name), inspect.isclass):
            if issubclass(cls, KleinEditError) and cls is not KleinEditError and cls.__module__ == name:
                found[cls.__name__] = cls
    return list(found.values())


@pytest.mark.parametrize("cls", request_errors(), ids=lambda cls: cls.__name__)
def test_every_request_error_is_drawn_with_its_code(cls: type[KleinEditError]) -> None:
    doc = schemas.errors.__doc__ or ""
    line = next((line for line in doc.splitlines() if re.search(rf"\b{cls.__name__}\b", line)), None)
    assert line is not None, f"{cls.__name__} is missing from the tree in schemas/errors.py"
    assert cls.code.value in line, (
        f"{cls.__name__}: the tree says {line.strip()!r}, the code {cls.code.value}"
    )
