"""Start-up failures give one clear error instead of a traceback (no broker needed: that is the point)."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import SecretStr

from consumer.app import build_worker
from consumer.services import free_port
from consumer.settings import KafkaSettings, Settings, WorkerSettings
from consumer.worker import BrokerUnreachable
from pipeline import StandInEditor
from storage import S3Settings


async def test_unreachable_brokers_are_retried_then_named_in_one_error() -> None:
    closed = f"127.0.0.1:{free_port()}"
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers=closed, startup_timeout_s=1.5),
        s3=S3Settings(
            access_key_id=SecretStr("x"),
            secret_access_key=SecretStr("x"),
            input_bucket="in",
            output_bucket="out",
        ),
        worker=WorkerSettings(http_port=None),
    )
    worker = build_worker(settings, editor_factory=lambda: StandInEditor(edit_ms=1))
    with pytest.raises(BrokerUnreachable, match=f"cannot reach Kafka at {closed}.*BOOTSTRAP_SERVERS"):
        await asyncio.wait_for(worker.run(asyncio.Event()), timeout=30)
    assert worker.state.model_ready  # the model loads first, then the group is joined
    assert not worker.state.in_group
