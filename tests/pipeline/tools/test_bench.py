"""The benchmark harness: FLOP formula, option-set parsing, a tiny CPU run, 9B dims on the meta device."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.config import PipelineSettings
from pipeline.tools.bench import (
    build_random_pipeline,
    image_tokens,
    parse_option_set,
    run_pipeline_benchmark,
    transformer_flops,
)
from pipeline.tools.sizing import QWEN3_8B, TRANSFORMER_9B


def test_flops_match_the_published_figure() -> None:
    # 1024x1024 output with one 1024x1024 image: 512 text + 4096 latent + 4096 reference tokens.
    flops = transformer_flops(TRANSFORMER_9B, text_tokens=512, image_tokens=4096, reference_tokens=4096)
    assert flops["sequence_tokens"] == 8704
    assert flops["total_flops"] / 1e12 == pytest.approx(161.3, abs=0.1)
    assert flops["attention_flops"] / 1e12 == pytest.approx(39.7, abs=0.1)


def test_flops_match_torch_flop_counter_at_9b_dims() -> None:
    diffusers = importlib.import_module("diffusers")
    text, visual = 512, 1024 + 256
    with torch.device("meta"), torch.no_grad():
        transformer = diffusers.Flux2Transformer2DModel(**TRANSFORMER_9B)
        counter = FlopCounterMode(display=False)
        with counter:
            transformer(
                hidden_states=torch.empty(1, visual, 128),
                encoder_hidden_states=torch.empty(1, text, 12288),
                timestep=torch.empty(1),
                img_ids=torch.zeros(1, visual, 4, dtype=torch.long),
                txt_ids=torch.zeros(1, text, 4, dtype=torch.long),
                return_dict=False,
            )
    analytic = transformer_flops(TRANSFORMER_9B, text_tokens=text, image_tokens=1024, reference_tokens=256)
    assert analytic["total_flops"] == pytest.approx(counter.get_total_flops(), rel=0.005)


def test_real_dims_build_in_bf16_on_the_meta_device() -> None:
    pipe = build_random_pipeline(real_dims=True, device=torch.device("meta"), dtype=torch.bfloat16)
    transformer_params = sum(p.numel() for p in pipe.transformer.parameters())
    text_params = sum(p.numel() for p in pipe.text_encoder.parameters())
    assert transformer_params / 1e9 == pytest.approx(9.08, abs=0.01)
    assert text_params / 1e9 == pytest.approx(8.19, abs=0.01)
    assert pipe.text_encoder.config.hidden_size == QWEN3_8B["hidden_size"]
    for module in (pipe.transformer, pipe.text_encoder, pipe.vae):
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}
        assert {p.device.type for p in module.parameters()} == {"meta"}


def test_reference_tokens_follow_the_pipeline_area_cap() -> None:
    assert image_tokens(1024, 1024) == 4096
    assert image_tokens(2048, 2048) == 4096
    assert image_tokens(100, 70) == 6 * 4


def test_option_sets() -> None:
    base = PipelineSettings(model="x")
    both = parse_option_set("float8+compile", base)
    assert both.quantize_float8
    assert both.compile
    assert both.text_encoder_placement == "gpu"
    plain = parse_option_set("bf16", base)
    assert not plain.quantize_float8
    assert not plain.compile
    assert parse_option_set("te-offload", base).text_encoder_placement == "cpu_offload"
    with pytest.raises(ValueError, match="unknown option set"):
        parse_option_set("float4", base)


def test_tiny_run_on_cpu() -> None:
    (result,) = run_pipeline_benchmark(
        PipelineSettings(model="x", device="cpu"),
        real_dims=False,
        steps=2,
        width=64,
        height=64,
        references=1,
        option_sets=["bf16"],
    )
    assert result["transformer_passes"] == 4  # 2 steps x (cond + uncond)
    assert result["tokens_per_pass"] == {"text": 512, "image": 16, "reference": 32}
    assert result["ms_per_pass_median"] > 0
    assert result["flops_per_pass"] > 0
    assert result["achieved_tflops"] is not None  # a speed figure: measured by the benchmark, never asserted
    assert result["edit_s"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_real_dims_need_cuda() -> None:
    with pytest.raises(RuntimeError, match="CUDA"):
        run_pipeline_benchmark(
            PipelineSettings(model="x"),
            real_dims=True,
            steps=1,
            width=64,
            height=64,
            references=0,
            option_sets=["bf16"],
        )
