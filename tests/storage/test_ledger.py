"""AttemptLedger against a real moto S3 server."""

from __future__ import annotations

import pytest

from schemas.errors import ErrorCode
from storage import AttemptLedger, ImageStore, LedgerEntry, S3Settings, StorageUnavailable

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture
def ledger(store: ImageStore) -> AttemptLedger:
    return AttemptLedger(store, store.settings)


def pickups(ledger: AttemptLedger, topic: str, partition: int, offset: int) -> int:
    return ledger.record_pickup(topic, partition, offset).pickups


def test_counts_pickups_and_gpu_runs_separately(ledger: AttemptLedger) -> None:
    assert ledger.record_pickup("edit-requests", 3, 42) == LedgerEntry(pickups=1, gpu_runs=0)
    assert ledger.record_gpu_run("edit-requests", 3, 42) == LedgerEntry(pickups=1, gpu_runs=1)
    assert ledger.record_pickup("edit-requests", 3, 42) == LedgerEntry(pickups=2, gpu_runs=1)
    assert ledger.record_pickup("edit-requests", 3, 42) == LedgerEntry(pickups=3, gpu_runs=1)
    assert ledger.record_gpu_run("edit-requests", 3, 42) == LedgerEntry(pickups=3, gpu_runs=2)


def test_counts_attempts_and_clears(ledger: AttemptLedger) -> None:
    assert [pickups(ledger, "edit-requests", 3, 42) for _ in range(3)] == [1, 2, 3]
    ledger.clear("edit-requests", 3, 42)
    assert pickups(ledger, "edit-requests", 3, 42) == 1


def test_records_are_independent(ledger: AttemptLedger) -> None:
    assert pickups(ledger, "edit-requests", 0, 7) == 1
    assert pickups(ledger, "edit-requests", 0, 7) == 2
    assert pickups(ledger, "edit-requests", 0, 8) == 1
    assert pickups(ledger, "edit-requests", 1, 7) == 1
    assert pickups(ledger, "other.topic", 0, 7) == 1


def test_count_survives_a_new_ledger(store: ImageStore) -> None:
    # A restarted worker (new process, new client) sees the crashed worker's attempts.
    pickups(AttemptLedger(store, store.settings), "edit-requests", 0, 1)
    restarted = AttemptLedger(ImageStore(store.settings), store.settings)
    assert pickups(restarted, "edit-requests", 0, 1) == 2


def test_clear_without_record_is_harmless(ledger: AttemptLedger) -> None:
    ledger.clear("edit-requests", 0, 99)
    ledger.clear("edit-requests", 0, 99)


def test_stored_under_state_prefix_in_output_bucket(ledger: AttemptLedger, store: ImageStore) -> None:
    pickups(ledger, "edit-requests", 2, 5)
    listing = store.client.list_objects_v2(Bucket=store.settings.output_bucket)
    assert [item["Key"] for item in listing.get("Contents", [])] == [
        "klein-edit-state/attempts/edit-requests/2/5.json"
    ]


def test_unreadable_record_counts_from_scratch(ledger: AttemptLedger, store: ImageStore) -> None:
    location = ledger.location_of("edit-requests", 0, 3)
    store.put_object(location, b"not json", content_type="application/json")
    assert pickups(ledger, "edit-requests", 0, 3) == 1


@pytest.mark.parametrize(
    ("topic", "partition", "offset"), [("../x", 0, 0), ("a/b", 0, 0), ("", 0, 0), ("t", -1, 0), ("t", 0, -1)]
)
def test_rejects_bad_coordinates(ledger: AttemptLedger, topic: str, partition: int, offset: int) -> None:
    with pytest.raises(ValueError, match=r"invalid Kafka topic|must be >= 0"):
        pickups(ledger, topic, partition, offset)


def test_missing_output_bucket_is_unavailable(s3_settings: S3Settings) -> None:
    ledger = AttemptLedger(ImageStore(s3_settings), s3_settings)
    with pytest.raises(StorageUnavailable, match="bucket does not exist") as info:
        pickups(ledger, "edit-requests", 0, 1)
    assert info.value.code is ErrorCode.STORAGE_UNAVAILABLE
    assert info.value.retryable
