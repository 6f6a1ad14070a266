"""One size rule for the whole edit, checked against Flux2KleinPipeline's own preprocessing.

For 200 random input sizes: the planned output keeps the aspect ratio within one 16-px step, and an
input resized to its planned conditioning size goes through the pipeline's preprocessing (diffusers
0.42.1, `Flux2KleinPipeline.__call__` step 4) with no resampling and no crop.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import PipelineSettings
from pipeline.images import (
    CONDITIONING_MAX_PIXELS,
    MAX_ASPECT,
    MIN_SIDE,
    SIZE_MULTIPLE,
    fit_size,
    plan_geometry,
    to_conditioning_size,
)

DEFAULT_MEGAPIXELS = PipelineSettings().max_megapixels


def random_sizes(count: int, seed: int = 20261130) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    sizes: list[tuple[int, int]] = []
    while len(sizes) < count:
        width, height = rng.randint(MIN_SIDE, 6000), rng.randint(MIN_SIDE, 6000)
        if max(width / height, height / width) <= MAX_ASPECT:
            sizes.append((width, height))
    return sizes


def pipeline_conditioning(pipe: Any, image: Image.Image) -> tuple[tuple[int, int], torch.Tensor]:
    """What Flux2KleinPipeline does to one conditioning image (diffusers 0.42.1, lines 771-781)."""
    processor = pipe.image_processor
    processor.check_image_input(image)
    width, height = image.size
    if width * height > 1024 * 1024:
        image = processor._resize_to_target_area(image, 1024 * 1024)
        width, height = image.size
    multiple_of = pipe.vae_scale_factor * 2
    width, height = width // multiple_of * multiple_of, height // multiple_of * multiple_of
    tensor = processor.preprocess(image, height=height, width=width, resize_mode="crop")
    return (width, height), tensor


def within_one_step(size: tuple[int, int], source: tuple[int, int]) -> bool:
    ratio = source[0] / source[1]
    width, height = size
    return min(abs(width - height * ratio), abs(height - width / ratio)) <= SIZE_MULTIPLE


@pytest.mark.parametrize(
    ("source", "expected"),
    [((130, 79), (128, 80)), ((79, 130), (80, 128)), ((64, 512), (64, 512)), ((1000, 750), (1008, 752))],
)
def test_awkward_sizes_round_to_the_nearest_step(source: tuple[int, int], expected: tuple[int, int]) -> None:
    assert plan_geometry([source], None, 1.05).output == expected


def test_200_random_sizes_keep_aspect_and_limits() -> None:
    for source in random_sizes(200):
        geometry = plan_geometry([source, source[::-1]], None, DEFAULT_MEGAPIXELS)
        for size in (geometry.output, *geometry.inputs):
            assert size[0] % SIZE_MULTIPLE == 0, (source, size)
            assert size[1] % SIZE_MULTIPLE == 0, (source, size)
            assert min(size) >= MIN_SIDE
            assert max(size[0] / size[1], size[1] / size[0]) <= MAX_ASPECT
            assert within_one_step(size, source) or within_one_step(size, source[::-1]), (source, size)
        assert geometry.output[0] * geometry.output[1] <= DEFAULT_MEGAPIXELS * 1e6
        assert all(w * h <= CONDITIONING_MAX_PIXELS for w, h in geometry.inputs)
        assert geometry.inputs[0] == geometry.output  # the base is conditioned at the output size


def test_random_sizes_pass_the_pipeline_preprocessing_untouched(tiny_pipe: Any) -> None:
    """40 sizes up to the conditioning cap (about 1 MP each, so about 1 s of tensor work per 5 sizes);
    the sizing rule itself is checked on 200 in `test_200_random_sizes_keep_aspect_and_limits`."""
    rng = np.random.default_rng(0)
    for source in random_sizes(40, seed=7):
        size = fit_size(source, CONDITIONING_MAX_PIXELS)
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        prepared = Image.fromarray(pixels, "RGB")
        pipeline_size, tensor = pipeline_conditioning(tiny_pipe, prepared)
        assert pipeline_size == size, source
        assert tuple(tensor.shape) == (1, 3, size[1], size[0])
        # No resample and no crop: the tensor is exactly our pixels, normalised to [-1, 1].
        expected = torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1.0
        assert torch.allclose(tensor[0], expected, atol=1e-5), source


def test_real_pipeline_call_receives_the_planned_sizes(tiny_pipe: Any) -> None:
    """The spy sits on the pipeline's own preprocess call inside `__call__`."""
    seen: list[tuple[int, int]] = []
    processor = tiny_pipe.image_processor
    original = processor.preprocess

    def spy(image: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append((kwargs["width"], kwargs["height"]))
        assert image.size == (kwargs["width"], kwargs["height"])  # nothing left to crop
        return original(image, *args, **kwargs)

    sources = [(130, 79), (300, 97), (97, 700)]
    geometry = plan_geometry(sources, None, 1.05)
    images = [
        to_conditioning_size(Image.new("RGB", source, (10 * i, 80, 160)), size)
        for i, (source, size) in enumerate(zip(sources, geometry.inputs, strict=True))
    ]
    processor.preprocess = spy
    try:
        result = tiny_pipe(
            image=images,
            prompt="spy",
            num_inference_steps=1,
            guidance_scale=1.0,
            width=geometry.output[0],
            height=geometry.output[1],
            generator=torch.Generator().manual_seed(0),
        )
    finally:
        processor.preprocess = original
    assert seen == list(geometry.inputs)
    assert result.images[0].size == geometry.output


def test_requested_size_wins_and_inputs_keep_their_own_aspect() -> None:
    geometry = plan_geometry([(4000, 3000), (500, 2000)], (1024, 512), 1.05)
    assert geometry.output == (1024, 512)
    assert geometry.inputs == ((1184, 880), (496, 2000))  # 500x2000 is under 1024x1024 in area
