"""A record in flight past `worker.stuck_after_s` is a readiness problem and a metric, then clears."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition

from consumer.admission import Admission
from consumer.commits import CommitTracker
from consumer.settings import Settings, WorkerSettings
from consumer.worker import EditWorker
from storage import S3Settings
from tests.consumer.fakes import FakeConsumer
from tests.consumer.test_admission import Starts, record

TP = TopicPartition("requests", 3)


async def test_a_stuck_record_shows_on_readyz_and_in_metrics_until_it_leaves() -> None:
    settings = Settings(
        s3=S3Settings(input_bucket="in", output_bucket="out"), worker=WorkerSettings(stuck_after_s=60)
    )
    none: Any = None
    worker = EditWorker(settings, editor_factory=none, store=none, ledger=none)
    commits = CommitTracker()
    admission = Admission(
        FakeConsumer(TP), commits.flights, request_topics=["requests"], max_in_flight=2, low_lane_share=0.0
    )
    Starts(admission, commits).admit(TP, [record(TP, 41), record(TP, 42)])
    worker._observe_stuck(admission)
    assert worker.state.problems == {}
    assert worker.metrics.stuck_records._value.get() == 0

    commits.flights[(TP, 41)].admitted_at -= 120
    worker._observe_stuck(admission)
    assert "requests-3@41" in worker.state.problems["stuck"]
    assert worker.metrics.stuck_records._value.get() == 1
    assert worker.metrics.oldest_in_flight_seconds._value.get() >= 120
    worker.state.model_ready = worker.state.in_group = True
    assert not worker.state.ready

    commits.finish(TP, 41)
    worker._observe_stuck(admission)
    assert worker.state.problems == {}
    assert worker.state.ready
