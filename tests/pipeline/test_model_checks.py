"""Model directories broken the way real installs break: each is refused with one line, what and what to do.

Every case is a copy of the tiny model's directory (`saved_tiny_dir`) broken one way: a download cut
short (a missing shard, a partial `.incomplete` blob, a link to a missing blob, a truncated file), a
component of another model (a text encoder or VAE of another width, weights that do not fit their
config, a tokenizer without tokenizer.json), a pickle where safetensors belong. Most are refused before
any weight is read; the rest while loading or by the checks after it; a warm-up edit that fails is a load
failure too. A distilled checkpoint loads, and says what it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import load, save_file
from structlog.testing import capture_logs

from pipeline.config import PipelineSettings
from pipeline.editor import DISTILLED_RULES, EditJob, KleinEditor
from pipeline.errors import GpuOutOfMemory, ModelLoadError
from pipeline.loader import load_pipeline, untyped_attr

TRANSFORMER_WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"
TEXT_ENCODER_WEIGHTS = "text_encoder/model.safetensors"
LOCAL_ADVICE = "copy the complete model directory again, or set KLEIN_EDIT_PIPELINE__MODEL to the Hub id"


@pytest.fixture
def model_dir(saved_tiny_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny model's directory, to break."""
    return shutil.copytree(saved_tiny_dir, tmp_path / "model")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors, read into memory (not mapped: the tests then overwrite the file)."""
    return load(path.read_bytes())


def refusal(settings: PipelineSettings | Path) -> str:
    """The message `load_pipeline` refuses the model with; it must be one line."""
    if isinstance(settings, Path):
        settings = PipelineSettings(model=str(settings), device="cpu")
    with pytest.raises(ModelLoadError) as info:
        load_pipeline(settings)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def rewrite_weights(path: Path, width: dict[int, int]) -> None:
    """Replace the file's tensors by random ones with every dimension in `width` resized (old -> new)."""
    tensors = read_weights(path)
    resized = {
        key: torch.randn(*[width.get(side, side) for side in value.shape]) for key, value in tensors.items()
    }
    save_file(resized, path, metadata={"format": "pt"})


def edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# -- a download cut short -----------------------------------------------------------------------------------


def test_missing_shard_names_the_file_and_the_fix(model_dir: Path) -> None:
    shard_transformer(model_dir)
    (model_dir / "transformer/diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    message = refusal(model_dir)
    assert message == (
        f"{model_dir}: transformer/diffusion_pytorch_model-00002-of-00002.safetensors is missing (1 of the 2 "
        "shards named by transformer/diffusion_pytorch_model.safetensors.index.json); "
        f"{LOCAL_ADVICE} and run `klein-edit fetch-model`"
    )


def test_sharded_weights_load(model_dir: Path) -> None:
    shard_transformer(model_dir)
    pipe, _name = load_pipeline(PipelineSettings(model=str(model_dir), device="cpu"))
    assert pipe.transformer.config.in_channels == 16


def shard_transformer(model_dir: Path) -> None:
    """Split the transformer's weights in two shards with an index, as save_pretrained does for large ones."""
    single = model_dir / TRANSFORMER_WEIGHTS
    tensors = read_weights(single)
    keys = sorted(tensors)
    weight_map = {}
    for number, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :]), start=1):
        name = f"diffusion_pytorch_model-{number:05d}-of-00002.safetensors"
        save_file({key: tensors[key] for key in part}, single.parent / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    (single.parent / f"{single.name}.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    single.unlink()


def test_missing_weights_are_not_looked_for_as_a_pickle(model_dir: Path) -> None:
    (model_dir / TRANSFORMER_WEIGHTS).unlink()
    message = refusal(model_dir)
    assert message.startswith(
        f"{model_dir}: {TRANSFORMER_WEIGHTS} is missing (the weights of the transformer)"
    )
    assert ".bin" not in message


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (
            "truncate",
            "is truncated: {half:,} bytes of the {size:,} its header declares (an interrupted download",
        ),
        ("empty", "is empty (an interrupted download or copy)"),
        ("extend", "is corrupt: {longer:,} bytes, but its header declares {size:,}"),
        ("header", "is corrupt: its safetensors header is not JSON"),
        ("pickle", "is not a safetensors file"),
    ],
)
def test_damaged_safetensors_file_says_how(model_dir: Path, damage: str, expected: str) -> None:
    path = model_dir / TRANSFORMER_WEIGHTS
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "extend":
        path.write_bytes(data + b"\0" * 4)
    elif damage == "header":
        path.write_bytes(data[:8] + b"garbage!" + data[16:])
    else:
        torch.save(read_weights(path), path)  # a zip pickle under the safetensors name
    message = refusal(model_dir)
    expected = expected.format(size=len(data), half=len(data) // 2, longer=len(data) + 4)
    assert message.startswith(f"{model_dir}: {TRANSFORMER_WEIGHTS} {expected}"), message
    assert message.endswith(f"; {LOCAL_ADVICE} and run `klein-edit fetch-model`")


def hub_cache(source: Path, cache: Path) -> Path:
    """`source` laid out as the Hugging Face cache keeps repository acme/klein: blobs named by their sha256
    and a snapshot of relative links to them; returns the snapshot directory."""
    repository = cache / "models--acme--klein"
    commit = "c0ffee" * 6 + "abcd"
    snapshot = repository / "snapshots" / commit
    for path in sorted(source.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        blob = repository / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text(commit)
    return snapshot


def hub_settings(cache: Path) -> PipelineSettings:
    return PipelineSettings(model="acme/klein", cache_dir=str(cache), device="cpu")


def test_hub_cache_snapshot_loads(saved_tiny_dir: Path, tmp_path: Path) -> None:
    snapshot = hub_cache(saved_tiny_dir, tmp_path / "hub")
    pipe, name = load_pipeline(hub_settings(tmp_path / "hub"))
    assert name == "acme/klein"
    assert Path(pipe.name_or_path) == snapshot


def test_interrupted_hub_download_says_run_fetch_model_again(saved_tiny_dir: Path, tmp_path: Path) -> None:
    snapshot = hub_cache(saved_tiny_dir, tmp_path / "hub")
    # An interrupted download: the blob is still `.incomplete` and the snapshot has no link to it yet.
    link = snapshot / TRANSFORMER_WEIGHTS
    blob = link.resolve()
    blob.rename(blob.with_name(blob.name + ".incomplete"))
    link.unlink()
    assert refusal(hub_settings(tmp_path / "hub")) == (
        f"{snapshot}: {TRANSFORMER_WEIGHTS} is missing (the weights of the transformer); a download was "
        f"interrupted (partial file {blob.name}.incomplete): run `klein-edit fetch-model` again (it resumes)"
    )


def test_link_to_a_missing_blob(saved_tiny_dir: Path, tmp_path: Path) -> None:
    snapshot = hub_cache(saved_tiny_dir, tmp_path / "hub")
    link = snapshot / "vae/config.json"
    link.resolve().unlink()
    assert refusal(hub_settings(tmp_path / "hub")) == (
        f"{snapshot}: vae/config.json is a link to {os.readlink(link)}, which does not exist (a file of the "
        "VAE); run `klein-edit fetch-model` again (it resumes)"
    )


def test_truncated_blob_is_named_for_deletion(saved_tiny_dir: Path, tmp_path: Path) -> None:
    snapshot = hub_cache(saved_tiny_dir, tmp_path / "hub")
    blob = (snapshot / TEXT_ENCODER_WEIGHTS).resolve()
    blob.write_bytes(blob.read_bytes()[:100_000])
    message = refusal(hub_settings(tmp_path / "hub"))
    assert message.startswith(f"{snapshot}: {TEXT_ENCODER_WEIGHTS} is truncated: 100,000 bytes of the ")
    # fetch-model keeps a blob that exists, so the damaged one has to go first.
    assert message.endswith(f"; delete {blob} and run `klein-edit fetch-model` again")


# -- a component missing, or of another model ---------------------------------------------------------------


def test_missing_vae_is_named(model_dir: Path) -> None:
    shutil.rmtree(model_dir / "vae")
    assert refusal(model_dir).startswith(f"{model_dir}: vae/ is missing (the VAE); {LOCAL_ADVICE}")


def test_missing_vae_config_is_named(model_dir: Path) -> None:
    (model_dir / "vae/config.json").unlink()
    assert refusal(model_dir).startswith(f"{model_dir}: vae/config.json is missing (the config of the VAE)")


def test_pickled_transformer_is_refused(model_dir: Path) -> None:
    weights = model_dir / TRANSFORMER_WEIGHTS
    torch.save(read_weights(weights), weights.with_suffix(".bin"))
    weights.unlink()
    message = refusal(model_dir)
    assert message.startswith(
        f"{model_dir}: transformer/diffusion_pytorch_model.bin is a pickle checkpoint and klein-edit loads "
        "model weights as safetensors only"
    )
    assert "convert it to transformer/diffusion_pytorch_model.safetensors" in message


def test_text_encoder_weights_of_another_width(model_dir: Path) -> None:
    rewrite_weights(model_dir / TEXT_ENCODER_WEIGHTS, {32: 48})
    assert refusal(model_dir).startswith(
        f"{model_dir}: the text encoder's weights have hidden_size 48 (model.embed_tokens.weight is "
        "[512, 48]) but text_encoder/config.json says 32: the weights and the config come from different "
        "models; install the text_encoder/ folder that ships with this model"
    )


def test_text_encoder_of_another_model(model_dir: Path) -> None:
    """A whole text encoder of another width (config and weights agree): it cannot feed this transformer."""
    edit_json(model_dir / "text_encoder/config.json", hidden_size=48, intermediate_size=96)
    rewrite_weights(model_dir / TEXT_ENCODER_WEIGHTS, {32: 48, 64: 96})
    assert refusal(model_dir) == (
        f"{model_dir}: text encoder hidden size 48 does not match transformer joint_attention_dim 96 "
        "(expects 32); the text encoder belongs to a different model, install the text_encoder that ships "
        "with this transformer"
    )


@pytest.mark.parametrize(
    ("weights", "resize", "expected"),
    [
        # transformers reports it in a load report; the width probes do not cover the MLP
        (TEXT_ENCODER_WEIGHTS, {64: 128}, "the text encoder's weights do not fit text_encoder/config.json"),
        # diffusers in its exception
        (TRANSFORMER_WEIGHTS, {64: 128}, "the transformer's weights do not fit transformer/config.json"),
    ],
)
def test_weights_that_do_not_fit_their_config_are_one_quiet_line(
    model_dir: Path, weights: str, resize: dict[int, int], expected: str, capfd: pytest.CaptureFixture[str]
) -> None:
    rewrite_weights(model_dir / weights, resize)
    message = refusal(model_dir)
    assert message.startswith(f"{model_dir}: {expected} (tensor sizes differ: "), message
    assert "in the weights, [" in message  # the sizes the library reported, in one clause
    assert "install the" in message
    captured = capfd.readouterr()
    assert "LOAD REPORT" not in captured.err + captured.out
    assert "\x1b[" not in captured.err + captured.out


def vae_of_another_model() -> Any:
    """The tiny VAE with 8 latent channels, where the tiny transformer reads 4 (x4 patchified: 16)."""
    from pipeline.tiny import tiny_vae_config

    return untyped_attr("diffusers", "AutoencoderKLFlux2")(
        **{**tiny_vae_config(), "latent_channels": 8}
    ).eval()


def test_vae_of_another_model(model_dir: Path) -> None:
    vae_of_another_model().save_pretrained(model_dir / "vae")
    assert refusal(model_dir) == (
        f"{model_dir}: VAE latent_channels 8 (x4 patchified = 32) does not match transformer in_channels 16 "
        "(expects 4 latent channels): the VAE belongs to a different model; install the vae/ folder that "
        "ships with this transformer"
    )


def test_missing_tokenizer(model_dir: Path) -> None:
    shutil.rmtree(model_dir / "tokenizer")
    assert refusal(model_dir).startswith(f"{model_dir}: tokenizer/ is missing (the tokenizer)")


def test_missing_tokenizer_json(model_dir: Path) -> None:
    """Without it, transformers builds a tokenizer of 2 tokens: every prompt would give the same pixels."""
    (model_dir / "tokenizer/tokenizer.json").unlink()
    assert refusal(model_dir).startswith(
        f"{model_dir}: tokenizer/tokenizer.json is missing (without it the tokenizer falls back to a 2-token "
        "vocabulary and every prompt would be ignored)"
    )


def test_tokenizer_with_a_tiny_vocabulary(model_dir: Path) -> None:
    from tokenizers import Tokenizer, models

    words = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "make", "the", "sky"]
    tokenizer = Tokenizer(
        models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<|endoftext|>")
    )
    tokenizer.save(str(model_dir / "tokenizer/tokenizer.json"))
    message = refusal(model_dir)
    assert message.startswith(f"{model_dir}: the tokenizer has 6 tokens (Qwen3's has 151,669)"), message
    assert "every prompt would be ignored" in message


# -- what the checkpoint is ---------------------------------------------------------------------------------


def test_distilled_checkpoint_says_so_and_never_guides(
    model_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    edit_json(model_dir / "model_index.json", is_distilled=True)
    with capture_logs() as logs:
        editor = KleinEditor.load(PipelineSettings(model=str(model_dir), device="cpu", warmup=False))
    [notice] = [entry for entry in logs if entry["event"] == "model.checkpoint"]
    assert notice["log_level"] == "warning"
    assert notice["distilled"] is True
    assert notice["rules"].startswith(
        "distilled FLUX.2 [klein] checkpoint (model_index.json is_distilled: true)"
    )
    assert editor.distilled
    assert editor.checkpoint == DISTILLED_RULES
    assert editor.checkpoint.default_steps == 4
    assert not editor.uses_guidance(4.0)
    assert editor.guidance_note(4.0) == (
        "this checkpoint is distilled: it has no classifier-free guidance, guidance_scale is ignored"
    )
    job = EditJob(
        images=[Image.new("RGB", (64, 64), (90, 120, 30))],
        prompt="p",
        num_inference_steps=2,
        guidance_scale=4.0,
        seed=1,
        width=64,
        height=64,
    )
    capfd.readouterr()
    assert editor.edit(job).transformer_passes == 2  # one pass per step: no unconditional pass
    assert "ignored for step-wise distilled models" not in capfd.readouterr().err


def test_base_checkpoint_rules(saved_tiny_dir: Path) -> None:
    with capture_logs() as logs:
        editor = KleinEditor.load(PipelineSettings(model=str(saved_tiny_dir), device="cpu", warmup=False))
    [notice] = [entry for entry in logs if entry["event"] == "model.checkpoint"]
    assert notice["log_level"] == "info"
    assert notice["rules"] == (
        "FLUX.2 [klein] base checkpoint (undistilled): 25-50 steps (default 50), classifier-free guidance "
        "when guidance_scale > 1"
    )
    assert not editor.distilled
    assert editor.guidance_note(4.0) is None
    assert editor.guidance_note(1.0) == "guidance_scale 1 <= 1 turns classifier-free guidance off"


# -- a warm-up edit that fails is a load failure ------------------------------------------------------------


def warm_up_settings() -> PipelineSettings:
    return PipelineSettings(model="tiny-random", device="cpu", warmup_sizes=[(64, 64)], max_references=0)


def test_failed_warm_up_is_a_one_line_load_error(tiny_pipe: Any) -> None:
    """Components that do not fit together, assembled without the loader's checks, fail the warm-up edit."""
    from pipeline.tiny import assemble_pipeline

    pipe = assemble_pipeline(
        transformer=tiny_pipe.transformer,
        text_encoder=tiny_pipe.text_encoder,
        vae=vae_of_another_model(),
        tokenizer=tiny_pipe.tokenizer,
    )
    editor = KleinEditor(pipe, warm_up_settings(), "tiny-random")
    with pytest.raises(ModelLoadError) as info:
        editor.warm_up()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("the warm-up edit (64x64, 0 references) failed (RuntimeError: "), message
    assert message.endswith("or run `klein-edit fetch-model` again")
    assert info.value.__cause__ is not None


class OutOfMemoryEditor(KleinEditor):
    """Every edit runs out of GPU memory."""

    def edit(self, job: EditJob) -> Any:
        error = GpuOutOfMemory(f"GPU out of memory for a {job.width}x{job.height} edit")
        error.__cause__ = torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail"
        )
        raise error


def test_warm_up_out_of_memory_names_the_memory_options(tiny_pipe: Any) -> None:
    editor = OutOfMemoryEditor(tiny_pipe, warm_up_settings(), "tiny-random")
    with pytest.raises(ModelLoadError) as info:
        editor.warm_up()
    assert str(info.value).startswith(
        "the warm-up edit (64x64, 0 references) ran out of GPU memory: the model does not fit in GPU memory "
        "(CUDA out of memory. Tried to allocate 2.00 GiB); try KLEIN_EDIT_PIPELINE__QUANTIZE_FLOAT8=true"
    )
