"""Serving never recompiles: after warm-up, new output sizes and reference counts reuse the compiled blocks.

A counting `torch.compile` backend (`CompileCounter` around dynamo's "eager" backend, so the CPU test does
not pay for inductor) counts every graph dynamo builds for the regionally compiled tiny transformer.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import PipelineSettings
from pipeline.editor import EditJob, KleinEditor
from pipeline.loader import load_pipeline
from pipeline.optimize import CompileCounter, compile_transformer
from tests.pipeline.conftest import synthetic_image

BLOCK_CLASSES = 2  # Flux2TransformerBlock and Flux2SingleTransformerBlock


def test_zero_recompiles_after_warm_up_across_sizes_and_reference_counts(saved_tiny_dir: Path) -> None:
    settings = PipelineSettings(
        model=str(saved_tiny_dir), device="cpu", compile=True, warmup_sizes=[(64, 64), (128, 96)]
    )
    pipe, name = load_pipeline(settings)
    counter = CompileCounter("eager")
    compile_transformer(pipe.transformer, counter)
    editor = KleinEditor(pipe, settings, name, compile_counter=counter)

    editor.warm_up()
    assert editor.compilations == BLOCK_CLASSES  # one graph per block class, shared by its blocks

    for width, height, references in [(64, 64, 2), (96, 64, 0), (64, 128, 4), (112, 80, 1), (80, 80, 3)]:
        images = [synthetic_image(width, height, seed) for seed in range(1 + references)]
        # A reference of another size than the output changes the token count once more.
        images.append(synthetic_image(64, 96, 99))
        editor.edit(
            EditJob(
                images=images,
                prompt="make the sky purple",  # one prompt: the text encoder runs once
                num_inference_steps=2,
                guidance_scale=4.0,
                seed=1,
                width=width,
                height=height,
            )
        )
    assert editor.recompiles_after_ready == 0
    assert editor.compilations == BLOCK_CLASSES


def test_without_compile_nothing_is_counted(tiny_pipe: object) -> None:
    editor = KleinEditor(tiny_pipe, PipelineSettings(model="tiny-random", device="cpu"), "tiny-random")
    assert editor.compilations == 0
    assert editor.recompiles_after_ready == 0
