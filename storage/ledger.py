"""A durable attempt counter per Kafka record, kept as small objects in S3.

A record that crashes the worker outright (a segfault, an OOM kill) never reaches an `except` block,
so an in-memory retry count dies with the process and the record crash-loops the partition forever.
Counting attempts in S3 before the work starts lets the next worker see "this is attempt N" and
dead-letter the record once N is too high.
"""

from __future__ import annotations

import json
import re
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


class AttemptLedger:
    """Counts processing attempts per (topic, partition, offset) in the output bucket.

    Read-modify-write without a lock is enough: Kafka gives each partition one owner at a time, and
    after a rebalance the new owner starts on the record only once the old one stopped polling.
    """

    def __init__(self, store: ImageStore, settings: S3Settings) -> None:
        self._client = store.client
        self._settings = settings

    def record_attempt(self, topic: str, partition: int, offset: int) -> int:
        """Count one more attempt at this record and return the count (1 for the first)."""
        location = self.location_of(topic, partition, offset)
        attempts = self._read(location) + 1
        document = {
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "attempts": attempts,
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
        return attempts

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

    def _read(self, location: S3Location) -> int:
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
                return 0
            raise output_error(exc, location.uri, "read the attempt count from") from exc
        except (BotoCoreError, OSError) as exc:
            raise output_error(exc, location.uri, "read the attempt count from") from exc
        try:
            attempts = json.loads(raw)["attempts"]
        except (ValueError, KeyError, TypeError):
            # S3 PUTs are atomic, so only a foreign writer leaves this; counting from zero again costs
            # at most a few extra attempts, while failing here would block the whole partition.
            return 0
        return attempts if isinstance(attempts, int) and attempts >= 0 else 0
