"""The record-path test tier: the production `RecordHandler` and `EditStages`, built by the same
`build_record_handler` the worker uses, on `consumer.fakes` (store, ledger, producer), fed synthetic
records. One record takes milliseconds; no broker, no S3 server. The tiny model is the real loader's.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiokafka import ConsumerRecord
from PIL import Image

from consumer.control import CancelRegistry
from consumer.fakes import FakeLedger, FakeProducer, FakeStore, FakeUrls, SentRecord
from consumer.gpu import GpuThread
from consumer.handler import RecordHandler, build_record_handler
from consumer.http.metrics import WorkerMetrics
from consumer.kafka.codec import decode_event, encode_event
from consumer.kafka.settings import KafkaSettings
from consumer.moderation import Moderation
from consumer.provenance import OutputSigner
from consumer.settings import Settings, WorkerSettings
from consumer.url_fetch import UrlSource
from pipeline import Editor
from pipeline.config import TINY_RANDOM, PipelineSettings
from pipeline.moderation.settings import TINY_IMAGE_CLASSIFIER, ModerationSettings
from pipeline.signing import ManifestSigner
from schemas.requests import EditRequest
from schemas.results import EditCompleted
from storage import S3Location, S3Settings

TOPIC = "edit.requests"


def path_settings(**sections: dict[str, Any]) -> Settings:
    """Settings as a test worker runs them: no retries' backoff, no HTTP port, the tiny model."""
    worker: dict[str, Any] = {"name": "w-path", "http_port": None, "retry_backoff_s": 0.0}
    worker.update(sections.pop("worker", {}))
    pipeline: dict[str, Any] = {"model": TINY_RANDOM, "device": "cpu", "warmup": False}
    pipeline.update(sections.pop("pipeline", {}))
    s3: dict[str, Any] = {"input_bucket": "inputs", "output_bucket": "outputs"}
    s3.update(sections.pop("s3", {}))
    kafka: dict[str, Any] = {"request_topic": TOPIC}
    kafka.update(sections.pop("kafka", {}))
    moderation: dict[str, Any] = {"model": TINY_IMAGE_CLASSIFIER, "device": "cpu"}
    moderation.update(sections.pop("moderation", {}))
    return Settings(
        kafka=KafkaSettings(**kafka),
        s3=S3Settings(**s3),
        pipeline=PipelineSettings(**pipeline),
        worker=WorkerSettings(**worker),
        moderation=ModerationSettings(**moderation),
        **sections,
    )


def png(width: int, height: int, color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


class RecordPath:
    """One worker's record path on fakes. `handle` feeds one record and returns whether it may be
    committed; `results`, `dead_letters` and `progress` read what the fake producer was sent."""

    def __init__(
        self,
        settings: Settings,
        editor: Editor,
        moderation: Moderation | None = None,
        signer: OutputSigner | None = None,
        *,
        urls: UrlSource | None = None,
    ) -> None:
        """`moderation`: the loaded classifiers; by default loaded from `settings.moderation` as the worker
        loads them (None when it is off). `signer`: by default built from `settings.provenance` as the
        worker builds it (None when no signing key is configured). `urls`: the URL reader, by default a
        `FakeUrls` (`self.urls`)."""
        if moderation is None and settings.moderation.enabled:
            moderation = Moderation.load(
                settings.moderation, pipeline_device="cpu", cache_dir=settings.pipeline.cache_dir
            )
        self.moderation = moderation
        self.settings = settings
        self.store = FakeStore(settings.s3)
        self.urls = FakeUrls()
        self.ledger = FakeLedger()
        self.producer = FakeProducer(max_request_size=max(settings.kafka.max_request_bytes, 1_048_576) * 2)
        self.gpu = GpuThread()
        self.io = ThreadPoolExecutor(max_workers=4, thread_name_prefix="path-io")
        self.cancels = CancelRegistry(100)
        self.metrics = WorkerMetrics()
        self.abandon = asyncio.Event()
        self.handler: RecordHandler = build_record_handler(
            settings,
            editor=editor,
            store=self.store,
            ledger=self.ledger,
            producer=self.producer,
            gpu=self.gpu,
            io=self.io,
            metrics=self.metrics,
            cancels=self.cancels,
            abandon=self.abandon,
            moderation=moderation,
            signer=signer if signer is not None else ManifestSigner.from_settings(settings.provenance),
            urls=urls if urls is not None else self.urls,
        )
        self._offset = 0

    @property
    def gpu_runs(self) -> int:
        """Edits started on the GPU so far (as the handler records them in the ledger before stage 6)."""
        return self.ledger.gpu_runs

    def close(self) -> None:
        self.gpu.shutdown(wait=True)
        self.io.shutdown(wait=True)

    def stage(self, key: str, data: bytes) -> str:
        """Put an input into the input bucket; returns its s3:// URI."""
        location = S3Location(self.settings.s3.input_bucket, key)
        self.store.put_object(location, data, content_type="image/png")
        return location.uri

    def request(self, image: str, **fields: Any) -> EditRequest:
        body: dict[str, Any] = {
            "request_id": f"r-{uuid.uuid4().hex[:12]}",
            "image": image,
            "num_inference_steps": 25,
        }
        if "prompt" not in fields and "recolor" not in fields:
            body["prompt"] = "make it blue"
        body.update(fields)
        return EditRequest.model_validate(body)

    async def handle(
        self,
        value: bytes | EditRequest | None,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        offset: int | None = None,
        lane: int = 0,
    ) -> bool:
        raw = encode_event(value) if isinstance(value, EditRequest) else value
        if offset is None:
            offset = self._offset
            self._offset += 1
        record: ConsumerRecord[bytes, bytes] = ConsumerRecord(
            topic=TOPIC,
            partition=0,
            offset=offset,
            timestamp=int(time.time() * 1000),
            timestamp_type=0,
            key=key,
            value=raw,
            checksum=None,
            serialized_key_size=len(key or b""),
            serialized_value_size=len(raw or b""),
            headers=list(headers),
        )
        request_id = value.request_id if isinstance(value, EditRequest) else f"invalid:{TOPIC}:0:{offset}"
        return await self.handler.handle(record, request_id, lane)

    def results(self) -> list[EditCompleted]:
        return [
            decode_event(EditCompleted, r.value or b"")
            for r in self.producer.on(self.settings.kafka.result_topic)
        ]

    def result(self) -> EditCompleted:
        (only,) = self.results()
        return only

    def dead_letters(self) -> list[SentRecord]:
        return self.producer.on(self.settings.kafka.dlq_topic)

    def progress(self) -> list[SentRecord]:
        return self.producer.on(self.settings.kafka.progress_topic)
