"""ImageStore against a real moto S3 server: reads, limits, conditional puts and error mapping."""

from __future__ import annotations

import hashlib
import socket
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from pydantic import SecretStr

from schemas.errors import ErrorCode
from storage import (
    ImageStore,
    InputForbidden,
    InputNotFound,
    InputTooLarge,
    S3Location,
    S3Settings,
    StorageUnavailable,
)
from storage.store import build_client

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PNG = "image/png"


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def inputs(store: ImageStore, key: str) -> S3Location:
    return S3Location(store.settings.input_bucket, key)


def outputs(store: ImageStore, key: str) -> S3Location:
    return S3Location(store.settings.output_bucket, key)


class TestFetch:
    def test_returns_the_bytes(self, store: ImageStore) -> None:
        location = inputs(store, "dir/é photo.png")
        store.put_object(location, b"\x89PNG-data", content_type=PNG)
        assert store.fetch(location) == b"\x89PNG-data"

    def test_empty_object(self, store: ImageStore) -> None:
        location = inputs(store, "empty.png")
        store.put_object(location, b"", content_type=PNG)
        assert store.fetch(location) == b""

    def test_object_of_exactly_the_limit_is_read(self, s3_settings: S3Settings) -> None:
        small = ImageStore(s3_settings.model_copy(update={"max_image_bytes": 1000}))
        small.ensure_bucket(s3_settings.input_bucket)
        location = inputs(small, "exact.png")
        small.put_object(location, b"x" * 1000, content_type=PNG)
        assert small.fetch(location) == b"x" * 1000

    def test_object_over_the_limit_is_refused(self, s3_settings: S3Settings) -> None:
        small = ImageStore(s3_settings.model_copy(update={"max_image_bytes": 1000}))
        small.ensure_bucket(s3_settings.input_bucket)
        location = inputs(small, "big.png")
        small.put_object(location, b"x" * 1001, content_type=PNG)
        with pytest.raises(InputTooLarge) as info:
            small.fetch(location)
        assert info.value.code is ErrorCode.INPUT_TOO_LARGE
        assert not info.value.retryable
        assert location.uri in info.value.message
        assert "1001 bytes" in info.value.message
        assert "1000 bytes" in info.value.message

    def test_large_object_is_refused_without_downloading_it(self, s3_settings: S3Settings) -> None:
        # 8 MiB against a 1 KiB limit: the size comes from Content-Range, before the body is read.
        small = ImageStore(s3_settings.model_copy(update={"max_image_bytes": 1024}))
        small.ensure_bucket(s3_settings.input_bucket)
        location = inputs(small, "huge.png")
        small.put_object(location, b"y" * (8 * 1024 * 1024), content_type=PNG)
        ranges: list[object] = []
        small.client.meta.events.register(
            "before-send.s3.GetObject", lambda request, **_: ranges.append(request.headers.get("Range"))
        )
        with pytest.raises(InputTooLarge, match=str(8 * 1024 * 1024)):
            small.fetch(location)
        # The server was asked for at most limit + 1 bytes, and the body was never read.
        assert ranges == [b"bytes=0-1024"]
        # The refusal did not break the client's connection pool.
        small.put_object(inputs(small, "ok.png"), b"ok", content_type=PNG)
        assert small.fetch(inputs(small, "ok.png")) == b"ok"

    def test_missing_key(self, store: ImageStore) -> None:
        location = inputs(store, "nope.png")
        with pytest.raises(InputNotFound) as info:
            store.fetch(location)
        assert info.value.code is ErrorCode.INPUT_NOT_FOUND
        assert not info.value.retryable
        assert location.uri in info.value.message
        assert "object does not exist" in info.value.message
        assert "URL-encode" not in info.value.message

    @pytest.mark.parametrize("key", ["shots/red+shoe.png", "shots/red%2Bshoe.png", "shots/red%2bshoe.png"])
    def test_missing_url_encoded_key_hints_at_event_notifications(self, store: ImageStore, key: str) -> None:
        # The object is "shots/red shoe.png"; an S3 event notification delivered its key URL-encoded.
        store.put_object(inputs(store, "shots/red shoe.png"), b"\x89PNG-data", content_type=PNG)
        with pytest.raises(InputNotFound, match="S3 event notifications URL-encode keys") as info:
            store.fetch(inputs(store, key))
        assert "unquote_plus" in info.value.message

    def test_existing_key_with_a_plus_is_read(self, store: ImageStore) -> None:
        location = inputs(store, "a+b.png")
        store.put_object(location, b"plus", content_type=PNG)
        assert store.fetch(location) == b"plus"

    def test_missing_bucket(self, store: ImageStore) -> None:
        location = S3Location("no-such-bucket", "a.png")
        with pytest.raises(InputNotFound, match=r"s3://no-such-bucket/a\.png: the bucket does not exist"):
            store.fetch(location)


class TestPutOutput:
    def test_conditional_put_keeps_the_first_object(self, store: ImageStore) -> None:
        location = outputs(store, "edits/req-1.png")
        first = store.put_output(location, b"first", content_type=PNG, metadata={"request_id": "req-1"})
        assert first.created
        assert first.existing is None

        second = store.put_output(location, b"second, different", content_type=PNG, metadata={})
        assert not second.created
        assert second.existing is not None
        assert second.existing.sha256 == hashlib.sha256(b"first").hexdigest()
        assert second.existing.size == len(b"first")
        assert second.existing.metadata["request_id"] == "req-1"
        assert store.fetch(location) == b"first"

    def test_find_output(self, store: ImageStore) -> None:
        location = outputs(store, "edits/req-2.png")
        assert store.find_output(location) is None
        store.put_output(
            location, b"pixels", content_type=PNG, metadata={"request_id": "req-2", "Sha256": "spoofed"}
        )
        found = store.find_output(location)
        assert found is not None
        assert found.location == location
        assert found.size == 6
        # Our own digest wins over a caller-supplied "sha256" (S3 lower-cases metadata keys).
        assert found.sha256 == hashlib.sha256(b"pixels").hexdigest()
        assert found.metadata == {"request_id": "req-2", "sha256": found.sha256}
        assert found.content_type == PNG

    def test_find_output_without_our_metadata(self, store: ImageStore) -> None:
        location = outputs(store, "edits/plain.png")
        store.put_object(location, b"abc", content_type=PNG)
        found = store.find_output(location)
        assert found is not None
        assert found.sha256 is None
        assert found.size == 3

    def test_server_side_encryption(self, s3_settings: S3Settings) -> None:
        encrypted = ImageStore(s3_settings.model_copy(update={"server_side_encryption": "AES256"}))
        encrypted.ensure_bucket(s3_settings.output_bucket)
        location = outputs(encrypted, "edits/enc.png")
        assert encrypted.put_output(location, b"secret pixels", content_type=PNG, metadata={}).created
        head = encrypted.client.head_object(Bucket=location.bucket, Key=location.key)
        assert head["ServerSideEncryption"] == "AES256"
        assert encrypted.fetch(location) == b"secret pixels"

    def test_missing_output_bucket_is_retryable(self, s3_settings: S3Settings) -> None:
        # No ensure_bucket: the deployment is broken, not the request.
        store = ImageStore(s3_settings)
        location = outputs(store, "edits/req-3.png")
        with pytest.raises(StorageUnavailable) as info:
            store.put_output(location, b"x", content_type=PNG, metadata={})
        assert info.value.retryable
        assert info.value.code is ErrorCode.STORAGE_UNAVAILABLE
        assert location.uri in info.value.message
        assert "bucket does not exist" in info.value.message

    @pytest.mark.parametrize("metadata", [{"note": "héllo"}, {"bad key": "v"}, {"k": "line\nbreak"}])
    def test_metadata_must_be_header_safe(self, store: ImageStore, metadata: dict[str, str]) -> None:
        with pytest.raises(ValueError, match="metadata"):
            store.put_output(outputs(store, "edits/m.png"), b"x", content_type=PNG, metadata=metadata)
        assert store.find_output(outputs(store, "edits/m.png")) is None


class TestHelpers:
    def test_presigned_get(self, store: ImageStore) -> None:
        location = outputs(store, "edits/shared.png")
        store.put_object(location, b"shareable", content_type=PNG)
        url = store.presign(location, expires_s=60)
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.read() == b"shareable"

    def test_presign_rejects_bad_expiry(self, store: ImageStore) -> None:
        with pytest.raises(ValueError, match="expires_s"):
            store.presign(outputs(store, "a.png"), expires_s=0)

    def test_bucket_exists(self, store: ImageStore) -> None:
        assert not store.bucket_exists("not-created-yet")
        store.ensure_bucket("not-created-yet")
        assert store.bucket_exists("not-created-yet")

    def test_ensure_bucket_is_idempotent(self, store: ImageStore) -> None:
        store.ensure_bucket("fresh-bucket")
        store.ensure_bucket("fresh-bucket")
        assert "fresh-bucket" in {b["Name"] for b in store.client.list_buckets()["Buckets"]}

    def test_half_configured_credentials_are_refused(self) -> None:
        half = S3Settings(access_key_id=SecretStr("only-the-id"), input_bucket="i", output_bucket="o")
        with pytest.raises(ValueError, match="set together"):
            build_client(half)


class TestUnavailable:
    def test_closed_port(self, settings_for: Callable[..., S3Settings]) -> None:
        settings = settings_for(
            f"http://127.0.0.1:{unused_port()}",
            connect_timeout_s=0.5,
            read_timeout_s=0.5,
            max_attempts=1,
            secret_access_key=SecretStr("do-not-print-me"),
        )
        store = ImageStore(settings)
        location = S3Location(settings.input_bucket, "a.png")
        started = time.monotonic()
        calls: list[Callable[[], Any]] = [
            lambda: store.fetch(location),
            lambda: store.find_output(location),
            lambda: store.put_output(location, b"x", content_type=PNG, metadata={}),
            lambda: store.put_object(location, b"x", content_type=PNG),
            lambda: store.ensure_bucket(settings.input_bucket),
        ]
        for call in calls:
            with pytest.raises(StorageUnavailable) as info:
                call()
            assert info.value.retryable
            assert "cannot connect" in info.value.message
            assert "do-not-print-me" not in info.value.message
            assert "do-not-print-me" not in repr(info.value)
        assert time.monotonic() - started < 5
        assert "do-not-print-me" not in repr(store)

    def test_paused_server_times_out(
        self, moto_factory: Callable[..., Any], settings_for: Callable[..., S3Settings]
    ) -> None:
        server = moto_factory()
        settings = settings_for(
            server.endpoint_url, connect_timeout_s=0.5, read_timeout_s=0.5, max_attempts=1
        )
        store = ImageStore(settings)
        store.ensure_bucket(settings.input_bucket)
        location = S3Location(settings.input_bucket, "a.png")
        store.put_object(location, b"data", content_type=PNG)
        server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(StorageUnavailable, match="read timeout") as info:
                ImageStore(settings).fetch(location)
            assert info.value.retryable
            assert location.uri in info.value.message
            assert time.monotonic() - started < 3
        finally:
            server.resume()
        # Back after the outage.
        assert ImageStore(settings).fetch(location) == b"data"


class TestAccessDenied:
    """moto with authentication on: a user without permissions gets real 403 answers."""

    def test_denied_input_is_forbidden_and_bad_keys_are_unavailable(
        self, moto_factory: Callable[..., Any], settings_for: Callable[..., S3Settings]
    ) -> None:
        # The first four requests (two S3 and two IAM setup calls) run unauthenticated.
        server = moto_factory({"INITIAL_NO_AUTH_ACTION_COUNT": "4"})
        admin = ImageStore(settings_for(server.endpoint_url))
        admin.client.create_bucket(Bucket="test-inputs")
        location = S3Location("test-inputs", "private.png")
        admin.client.put_object(Bucket=location.bucket, Key=location.key, Body=b"x")
        iam = boto3.session.Session().client(
            "iam",
            endpoint_url=server.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        iam.create_user(UserName="worker")
        key = iam.create_access_key(UserName="worker")["AccessKey"]

        worker = ImageStore(
            settings_for(
                server.endpoint_url,
                access_key_id=SecretStr(key["AccessKeyId"]),
                secret_access_key=SecretStr(key["SecretAccessKey"]),
            )
        )
        with pytest.raises(InputForbidden) as info:
            worker.fetch(location)
        assert info.value.code is ErrorCode.INPUT_FORBIDDEN
        assert not info.value.retryable
        assert location.uri in info.value.message
        assert "access denied" in info.value.message

        with pytest.raises(StorageUnavailable, match="access denied") as denied:
            worker.put_output(S3Location("test-inputs", "edits/x.png"), b"x", content_type=PNG, metadata={})
        assert "IAM policy" in denied.value.message

        stranger = ImageStore(
            settings_for(
                server.endpoint_url,
                access_key_id=SecretStr("AKIAUNKNOWN0000000"),
                secret_access_key=SecretStr("nope"),
            )
        )
        with pytest.raises(StorageUnavailable, match="rejected the worker's credentials") as rejected:
            stranger.fetch(location)
        assert rejected.value.retryable
