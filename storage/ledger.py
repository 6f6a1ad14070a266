"""Durable attempt counters per Kafka record, kept as small objects in S3.

A record that crashes the worker outright (a segfault, an OOM kill) never reaches an `except` block,
so an in-memory retry count dies with the process and the record crash-loops the partition forever.
Two counts per record let the next worker see what happened:
- `pickups`: how often a worker started on the record (counted at pickup, cheap to keep exact);
- `gpu_runs`: how often its edit started on the GPU. Only the record on the GPU is blamed for a crash,
  not the records fetched ahead of it, so poison detection uses this count.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from botocore.exceptions import BotoCoreError, ClientError

from storage._boundary import client_error_status, output_error
from storage.config import S3Settings
from storage.locations import S3Location
from storage.store import ImageStore, encryption_args

# Kafka's own topic-name rule; it also keeps the ledger key free of path tricks.
_TOPIC_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
# A ledger object is a few dozen bytes; anything bigger is not ours.
_MAX_RECORD_BYTES = 4096


@dataclass(frozen=True)
class LedgerEntry:
    pickups: int = 0
    gpu_runs: int = 0


class AttemptLedger:
    """Counts processing attempts per (topic, partition, offset) in the output bucket.

    Read-modify-write without a lock is enough: Kafka gives each partition one owner at a time, and
    after a rebalance the new owner starts on the record only once the old one stopped polling.

    Needs s3:GetObject, s3:PutObject and s3:DeleteObject on `<state_prefix>*` of the output bucket
    (and s3:ListBucket, so a missing object is a 404); the IAM policy and a lifecycle rule for the
    prefix are in docs/operations.md.
    """

    def __init__(self, store: ImageStore, settings: S3Settings) -> None:
        self._client = store.client
        self._settings = settings

    def record_pickup(self, topic: str, partition: int, offset: int) -> LedgerEntry:
        """Count one more pickup of this record; returns the counts including this pickup."""
        location = self.location_of(topic, partition, offset)
        entry = self._read(location)
        entry = LedgerEntry(pickups=entry.pickups + 1, gpu_runs=entry.gpu_runs)
        self._write(location, topic, partition, offset, entry)
        return entry

    def record_gpu_run(self, topic: str, partition: int, offset: int) -> LedgerEntry:
        """Count one more start of this record's edit on the GPU; returns the new counts."""
        location = self.location_of(topic, partition, offset)
        entry = self._read(location)
        entry = LedgerEntry(pickups=max(entry.pickups, 1), gpu_runs=entry.gpu_runs + 1)
        self._write(location, topic, partition, offset, entry)
        return entry

    def _write(
        self, location: S3Location, topic: str, partition: int, offset: int, entry: LedgerEntry
    ) -> None:
        document = {
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "pickups": entry.pickups,
            "gpu_runs": entry.gpu_runs,
            "updated_at": datetime.now(UTC).isoformat(),
        }
        try:
            self._client.put_object(
                Bucket=location.bucket,
                Key=location.key,
                Body=json.dumps(document).encode("utf-8"),
                ContentType="application/json",
                **encryption_args(self._settings),
            )
        except (ClientError, BotoCoreError) as exc:
            raise output_error(exc, location.uri, "record an attempt in") from exc

    def clear(self, topic: str, partition: int, offset: int) -> None:
        """Forget the record's attempts (after its offset is committed). Clearing twice is harmless."""
        location = self.location_of(topic, partition, offset)
        try:
            self._client.delete_object(Bucket=location.bucket, Key=location.key)
        except (ClientError, BotoCoreError) as exc:
            raise output_error(exc, location.uri, "clear") from exc

    def location_of(self, topic: str, partition: int, offset: int) -> S3Location:
        if not _TOPIC_PATTERN.fullmatch(topic):
            raise ValueError(f"invalid Kafka topic name {topic!r}")
        if partition < 0 or offset < 0:
            raise ValueError(f"partition and offset must be >= 0, got {partition} and {offset}")
        key = f"{self._settings.state_prefix}attempts/{topic}/{partition}/{offset}.json"
        return S3Location(self._settings.output_bucket, key)

    def _read(self, location: S3Location) -> LedgerEntry:
        try:
            response = self._client.get_object(
                Bucket=location.bucket, Key=location.key, Range=f"bytes=0-{_MAX_RECORD_BYTES - 1}"
            )
            with response["Body"] as body:
                raw = body.read()
        except ClientError as exc:
            if (
                client_error_status(exc) == 404
                and exc.response.get("Error", {}).get("Code") != "NoSuchBucket"
            ):
                return LedgerEntry()
            raise output_error(exc, location.uri, "read the attempt count from") from exc
        except (BotoCoreError, OSError) as exc:
            raise output_error(exc, location.uri, "read the attempt count from") from exc
        try:
            document = json.loads(raw)
            pickups, gpu_runs = document["pickups"], document["gpu_runs"]
        except (ValueError, KeyError, TypeError):
            # S3 PUTs are atomic, so only a foreign writer leaves this; counting from zero again costs
            # at most a few extra attempts, while failing here would block the whole partition.
            return LedgerEntry()
        if not all(isinstance(n, int) and n >= 0 for n in (pickups, gpu_runs)):
            return LedgerEntry()
        return LedgerEntry(pickups=pickups, gpu_runs=gpu_runs)
