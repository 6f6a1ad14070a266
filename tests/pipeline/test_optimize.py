"""Load-time options: regional compile is applied per block, float8 without torchao is a clear error."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from pipeline.config import PipelineSettings
from pipeline.errors import ModelLoadError
from pipeline.optimize import apply_options, compile_transformer, quantize_float8
from pipeline.tiny import tiny_transformer_config


def tiny_transformer() -> torch.nn.Module:
    diffusers = importlib.import_module("diffusers")
    module: torch.nn.Module = diffusers.Flux2Transformer2DModel(**tiny_transformer_config())
    return module


def test_regional_compile_wraps_every_repeated_block() -> None:
    transformer = tiny_transformer()
    compile_transformer(transformer)
    blocks = [*transformer.get_submodule("transformer_blocks").children()]
    blocks += [*transformer.get_submodule("single_transformer_blocks").children()]
    assert blocks
    assert all(getattr(block, "klein_edit_compiled", False) for block in blocks)
    assert transformer._compiled_call_impl is None  # the model itself stays eager


def test_defaults_apply_nothing(tiny_pipe: object) -> None:
    assert apply_options(tiny_pipe, PipelineSettings(model="tiny-random")) == []


@pytest.mark.skipif(importlib.util.find_spec("torchao") is not None, reason="torchao is installed")
def test_float8_without_torchao_says_how_to_fix() -> None:
    with pytest.raises(ModelLoadError, match="pip install torchao"):
        quantize_float8(tiny_transformer())


@pytest.mark.gpu
def test_float8_quantizes_block_linears() -> None:
    if not torch.cuda.is_available() or importlib.util.find_spec("torchao") is None:
        pytest.skip("needs CUDA and torchao")
    transformer = tiny_transformer().to("cuda", torch.bfloat16)
    assert quantize_float8(transformer, skip=("x_embedder",)) > 0
