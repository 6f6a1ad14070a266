"""Parsing of input references and resolution of output locations (pure; no server)."""

from __future__ import annotations

import pytest

from schemas.errors import ErrorCode
from storage import (
    AdapterRefused,
    InputForbidden,
    InvalidLocation,
    S3Location,
    S3Settings,
    parse_adapter_location,
    parse_input_location,
    resolve_output_location,
)

SETTINGS = S3Settings(
    input_bucket="in-bucket",
    allowed_buckets=["shared.assets"],
    output_bucket="out-bucket",
    output_prefix="edits/",
    state_prefix="klein-edit-state/",
)


def resolve(
    uri: str | None, *, inputs: tuple[S3Location, ...] = (), settings: S3Settings = SETTINGS
) -> S3Location:
    return resolve_output_location(uri, request_id="req-1", extension="png", settings=settings, inputs=inputs)


class TestS3Location:
    def test_uri(self) -> None:
        assert S3Location("b-1", "a/b.png").uri == "s3://b-1/a/b.png"

    def test_is_hashable_and_compares_by_value(self) -> None:
        assert {S3Location("b-1", "k"), S3Location("b-1", "k")} == {S3Location("b-1", "k")}


class TestParseAdapterLocation:
    SETTINGS = SETTINGS.model_copy(update={"adapter_buckets": ["adapters"]})

    @pytest.mark.parametrize("key", ["brand/v3.safetensors", "flux2-klein-lora.sft", "STYLE.SFT"])
    def test_safetensors_names_are_read(self, key: str) -> None:
        """`.sft` is how BFL names its own safetensors files; the bytes are checked by the pipeline."""
        assert parse_adapter_location(key, self.SETTINGS, field="loras[0]") == S3Location("adapters", key)

    @pytest.mark.parametrize(
        "key", ["brand.bin", "brand.pt", "brand.ckpt", "brand.sft.bin", "brand.safetensors.pt"]
    )
    def test_other_names_are_refused_before_a_byte_is_read(self, key: str) -> None:
        with pytest.raises(AdapterRefused) as info:
            parse_adapter_location(key, self.SETTINGS, field="loras[0]")
        assert info.value.code is ErrorCode.INVALID_ADAPTER
        assert info.value.message.startswith("loras[0]: s3://adapters/")
        assert "not a .safetensors or .sft file" in info.value.message


class TestParseInputLocation:
    def test_s3_uri(self) -> None:
        assert parse_input_location("s3://in-bucket/dir/a.png", SETTINGS, field="image") == S3Location(
            "in-bucket", "dir/a.png"
        )

    def test_bare_key_goes_to_input_bucket(self) -> None:
        assert parse_input_location("dir/a.png", SETTINGS, field="image") == S3Location(
            "in-bucket", "dir/a.png"
        )

    def test_allowed_extra_bucket(self) -> None:
        location = parse_input_location("s3://shared.assets/x.jpg", SETTINGS, field="references[0]")
        assert location == S3Location("shared.assets", "x.jpg")

    @pytest.mark.parametrize("key", ["é/ü/画像.png", "a b+c=d&e.png", "a:b@c!.png", "x" * 1024, "é" * 512])
    def test_unusual_but_valid_keys(self, key: str) -> None:
        assert parse_input_location(key, SETTINGS, field="image").key == key

    def test_bucket_not_allowed_is_forbidden_and_names_field(self) -> None:
        with pytest.raises(InputForbidden) as info:
            parse_input_location("s3://private-bucket/a.png", SETTINGS, field="references[2]")
        assert info.value.code is ErrorCode.INPUT_FORBIDDEN
        assert not info.value.retryable
        assert info.value.message.startswith("references[2]: ")
        assert "private-bucket" in info.value.message

    @pytest.mark.parametrize(
        ("ref", "problem"),
        [
            ("", "empty"),
            ("s3://in-bucket", "no key"),
            ("s3://in-bucket/", "no key"),
            ("https://in-bucket.s3.amazonaws.com/a.png", "not an s3:// URI"),
            ("s3a://in-bucket/a.png", "not an s3:// URI"),
            ("s3://IN-BUCKET/a.png", "bucket name"),
            ("s3://ab/a.png", "bucket name"),
            ("s3://-bucket/a.png", "bucket name"),
            ("s3://in..bucket/a.png", "bucket name"),
            ("s3://192.168.0.1/a.png", "bucket name"),
            ("s3://in_bucket/a.png", "bucket name"),
            ("s3:///a.png", "bucket name"),
            ("../x", "'..'"),
            ("a/../../other-bucket/x", "'..'"),
            ("./x", "'.'"),
            ("s3://in-bucket/../out-bucket/x", "'..'"),
            ("/abs", "starts with '/'"),
            ("s3://in-bucket//abs", "starts with '/'"),
            ("a//b", "'//'"),
            ("a\\b", "backslash"),
            ("a\x00b", "control characters"),
            ("a\nb", "control characters"),
            ("a\rb", "control characters"),
            ("a\x7fb", "control characters"),
            ("a\x85b", "control characters"),
            ("a\ud800b", "surrogate"),
            ("x" * 1025, "1025 bytes"),
            ("é" * 513, "1026 bytes"),
        ],
    )
    def test_malformed_reference(self, ref: str, problem: str) -> None:
        with pytest.raises(InvalidLocation) as info:
            parse_input_location(ref, SETTINGS, field="image")
        assert info.value.code is ErrorCode.INVALID_EVENT
        assert not info.value.retryable
        assert info.value.message.startswith("image: ")
        assert problem in info.value.message

    def test_control_characters_are_escaped_in_the_message(self) -> None:
        with pytest.raises(InvalidLocation) as info:
            parse_input_location("a\nINJECTED", SETTINGS, field="image")
        assert "\n" not in info.value.message

    def test_long_hostile_key_is_cut_in_the_message(self) -> None:
        with pytest.raises(InvalidLocation) as info:
            parse_input_location("../" + "x" * 900, SETTINGS, field="image")
        assert len(info.value.message) < 400


class TestResolveOutputLocation:
    def test_default_is_deterministic_per_request(self) -> None:
        first = resolve(None)
        assert first == S3Location("out-bucket", "edits/req-1.png")
        assert resolve(None) == first

    def test_default_uses_extension(self) -> None:
        location = resolve_output_location(
            None, request_id="r:2", extension="jpg", settings=SETTINGS, inputs=()
        )
        assert location.key == "edits/r:2.jpg"

    @pytest.mark.parametrize("extension", ["", "PNG", "p/g", "png.", "x" * 11])
    def test_default_rejects_bad_extension(self, extension: str) -> None:
        with pytest.raises(InvalidLocation, match=r"^output\.uri: invalid output extension"):
            resolve_output_location(None, request_id="r", extension=extension, settings=SETTINGS, inputs=())

    @pytest.mark.parametrize("request_id", ["", "../x", "a/../b", "a\nb"])
    def test_default_rejects_hostile_request_id(self, request_id: str) -> None:
        with pytest.raises(InvalidLocation):
            resolve_output_location(
                None, request_id=request_id, extension="png", settings=SETTINGS, inputs=()
            )

    def test_default_inside_state_prefix_is_refused(self) -> None:
        settings = SETTINGS.model_copy(update={"output_prefix": "klein-edit-state/edits/"})
        with pytest.raises(InvalidLocation, match="state prefix"):
            resolve(None, settings=settings)

    def test_explicit_uri(self) -> None:
        assert resolve("s3://out-bucket/edits/custom/a.png") == S3Location("out-bucket", "edits/custom/a.png")

    def test_explicit_bare_key_goes_to_output_bucket(self) -> None:
        assert resolve("edits/custom/é.png") == S3Location("out-bucket", "edits/custom/é.png")

    def test_empty_prefix_allows_any_key(self) -> None:
        settings = SETTINGS.model_copy(update={"output_prefix": ""})
        assert resolve("anything/a.png", settings=settings).key == "anything/a.png"

    @pytest.mark.parametrize(
        ("uri", "problem"),
        [
            ("s3://in-bucket/edits/a.png", "not in the output bucket"),
            ("s3://other-bucket/edits/a.png", "not in the output bucket"),
            ("other/a.png", "outside the output prefix"),
            ("edit/a.png", "outside the output prefix"),
            ("edits", "outside the output prefix"),
            ("edits/", "names the output prefix"),
            ("edits/../secrets/a.png", "'..'"),
            ("edits/./a.png", "'.'"),
            ("edits/a/..", "'..'"),
            ("/edits/a.png", "starts with '/'"),
            ("edits//a.png", "'//'"),
            ("edits\\a.png", "backslash"),
            ("edits/a\x00.png", "control characters"),
            ("edits/a\n.png", "control characters"),
            ("edits/" + "x" * 1019, "1025 bytes"),
            ("s3://out-bucket", "no key"),
            ("file:///etc/passwd", "not an s3:// URI"),
        ],
    )
    def test_explicit_uri_violations(self, uri: str, problem: str) -> None:
        with pytest.raises(InvalidLocation) as info:
            resolve(uri)
        assert info.value.code is ErrorCode.INVALID_EVENT
        assert info.value.message.startswith("output.uri: ")
        assert problem in info.value.message

    def test_output_over_an_input_is_refused(self) -> None:
        settings = SETTINGS.model_copy(update={"input_bucket": "out-bucket"})
        image = parse_input_location("edits/photo.png", settings, field="image")
        with pytest.raises(InvalidLocation, match=r"output\.uri: .*one of the request's inputs"):
            resolve("s3://out-bucket/edits/photo.png", inputs=(image,), settings=settings)

    def test_output_next_to_an_input_is_fine(self) -> None:
        image = S3Location("out-bucket", "edits/photo.png")
        assert resolve("edits/photo-edited.png", inputs=(image,)).key == "edits/photo-edited.png"

    def test_output_under_state_prefix_is_refused(self) -> None:
        settings = SETTINGS.model_copy(update={"output_prefix": ""})
        with pytest.raises(InvalidLocation, match=r"output\.uri: .*state prefix"):
            resolve("klein-edit-state/attempts/requests/0/1.json", settings=settings)
