"""Fixtures of the record-path tier: the tiny model loaded once, a `RecordPath` per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from consumer.settings import Settings
from consumer.url_fetch import UrlSource
from pipeline import Editor
from tests.consumer.record_path.path import RecordPath, path_settings


@pytest.fixture
def make_path(tiny_editor: Editor) -> Iterator[Callable[..., RecordPath]]:
    made: list[RecordPath] = []

    def make(
        settings: Settings | None = None, *, urls: UrlSource | None = None, **sections: dict[str, Any]
    ) -> RecordPath:
        path = RecordPath(settings or path_settings(**sections), tiny_editor, urls=urls)
        made.append(path)
        return path

    yield make
    for path in made:
        path.close()


@pytest.fixture
def path(make_path: Callable[..., RecordPath]) -> RecordPath:
    return make_path()
