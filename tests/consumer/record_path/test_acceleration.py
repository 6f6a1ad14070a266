"""Speed tiers on the production record path with the tiny model: each tier is the operator's guidance
interval for that request alone, `transformer_passes` says what ran, switching tiers loads nothing, and
a tier the worker does not offer is refused by name."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from consumer.settings import Settings
from pipeline import Editor, KleinEditor
from pipeline.config import TINY_RANDOM, PipelineSettings
from schemas.errors import ErrorCode
from schemas.results import EditStatus
from tests.consumer.record_path.path import RecordPath, path_settings, png

pytestmark = pytest.mark.timeout(120)
TIERS = {"regular": (0.0, 0.6), "high": (0.0, 0.2)}


@pytest.fixture(scope="module")
def tiered_editor() -> Editor:
    """The tiny model loaded by the production loader with the tiers on (the gate wraps the forward)."""
    return KleinEditor.load(
        PipelineSettings(model=TINY_RANDOM, device="cpu", warmup=False, acceleration_tiers=TIERS)  # type: ignore[arg-type]
    )


def tiered(editor: Editor, **pipeline: object) -> RecordPath:
    settings: Settings = path_settings(pipeline={"acceleration_tiers": TIERS, **pipeline})
    return RecordPath(settings, editor)


async def test_each_tier_runs_its_passes_and_switching_loads_nothing(tiered_editor: Editor) -> None:
    path = tiered(tiered_editor)
    try:
        image = path.stage("a.png", png(64, 64))
        reqs = {tier: path.request(image, seed=2, acceleration=tier) for tier in ("none", "regular", "high")}
        reqs["none-again"] = path.request(image, seed=2, acceleration="none")
        for req in reqs.values():
            assert await path.handle(req)
        by_id = {event.request_id: event for event in path.results()}
        passes = {}
        for name, req in reqs.items():
            event = by_id[req.request_id]
            assert event.status is EditStatus.SUCCEEDED, event.error
            assert event.params is not None
            assert event.params.acceleration == name.removesuffix("-again")
            passes[name] = event.transformer_passes
        steps = 25
        assert passes["none"] == 2 * steps
        assert passes["regular"] == steps + sum(1 for i in range(steps) if i / steps < 0.6)  # 25 + 15
        assert passes["high"] == steps + sum(1 for i in range(steps) if i / steps < 0.2)  # 25 + 5
        assert passes["none-again"] == passes["none"]  # back to the full schedule: nothing stuck
    finally:
        path.close()


async def test_a_tier_the_worker_does_not_offer_is_refused(make_path: Callable[..., RecordPath]) -> None:
    path = make_path()  # no tiers configured
    assert await path.handle(path.request(path.stage("a.png", png(64, 64)), acceleration="high"))
    event = path.result()
    assert event.error is not None
    assert event.error.code is ErrorCode.INVALID_EVENT
    assert "acceleration: 'high' is not offered" in event.error.message
    assert "ACCELERATION_TIERS" in event.error.message
