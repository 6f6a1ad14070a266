"""The tiny model is a sensitive instrument: every input of an edit moves its output clearly.

A test that changes the base image, a reference, the prompt or the adapters of an edit can only see a
wrong wiring if the model reacts to that input. Each figure here is the mean absolute difference, in
levels of 255, between two edits that differ in that one input; each must be at least `CLEAR` levels.

The model is `tiny-random` as production loads it (`KleinEditor.load`: the directory written by
`pipeline.tiny.ensure_tiny_model`, read by `pipeline.loader.load_pipeline`) and the edits run through
`KleinEditor.edit`: the sensitivity is in the weights of that directory (`pipeline.tiny.condition_weights`),
not in any code path of its own. `pytest -s` prints the figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from pipeline.adapters import ActiveAdapter
from pipeline.config import TINY_RANDOM, PipelineSettings
from pipeline.editor import EditJob, KleinEditor
from tests.adapters import adapter_file
from tests.pipeline.conftest import synthetic_image

CLEAR = 8.0  # levels of 255, mean over all pixels and channels (issue 19, item 8)
SIZE = 64
PROMPT = "make the sky purple and add a moon"
OTHER_PROMPT = "replace the background with a sunny beach"


@pytest.fixture(scope="module")
def editor() -> KleinEditor:
    """An editor of this module's own: the adapter edit loads an adapter into its transformer."""
    return KleinEditor.load(PipelineSettings(model=TINY_RANDOM, device="cpu", warmup=False))


def picture(seed: int, *, turn: bool = False) -> Image.Image:
    """A gradient-and-noise image; `turn` rotates it half a turn, so its gradient runs the other way."""
    image = synthetic_image(SIZE, SIZE, seed=seed)
    return image.transpose(Image.Transpose.ROTATE_180) if turn else image


def flat(colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (SIZE, SIZE), colour)


def request(steps: int, images: Sequence[Image.Image] | None = None) -> EditJob:
    """The baseline edit: a base image and two references, guidance 4 (two passes per step)."""
    return EditJob(
        images=list(images) if images is not None else [picture(1), picture(2), picture(3)],
        prompt=PROMPT,
        num_inference_steps=steps,
        guidance_scale=4.0,
        seed=5,
        width=SIZE,
        height=SIZE,
    )


def pixels(editor: KleinEditor, job: EditJob) -> np.ndarray:
    return np.asarray(editor.edit(job).image, dtype=np.float64)


def levels_apart(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def with_image(job: EditJob, index: int, image: Image.Image) -> EditJob:
    images = list(job.images)
    images[index] = image
    return replace(job, images=images)


@pytest.mark.parametrize("steps", [4, 25])
def test_each_input_moves_the_output_clearly(editor: KleinEditor, steps: int) -> None:
    base = request(steps)
    adapter = ActiveAdapter(editor.parse_adapter(adapter_file(seed=1), name="loras[0]"), 1.0)
    reference = pixels(editor, base)
    red = with_image(base, 0, flat((220, 30, 30)))
    variants = {
        "base image": with_image(base, 0, picture(4, turn=True)),
        "reference 1": with_image(base, 1, picture(5, turn=True)),
        "reference 2": with_image(base, 2, picture(6, turn=True)),
        "prompt": replace(base, prompt=OTHER_PROMPT),
        "seed": replace(base, seed=6),
        "adapter (scale 1)": replace(base, adapters=[adapter]),
    }
    figures = {name: levels_apart(reference, pixels(editor, job)) for name, job in variants.items()}
    figures["base red -> blue"] = levels_apart(
        pixels(editor, red), pixels(editor, with_image(red, 0, flat((30, 30, 220))))
    )
    report = ", ".join(f"{name} {value:.1f}" for name, value in figures.items())
    print(f"\ntiny-random, {SIZE}x{SIZE}, {steps} steps, mean levels apart: {report}")
    numb = [name for name, value in figures.items() if value < CLEAR]
    assert not numb, f"{numb} move the output by under {CLEAR} levels of 255 ({report})"


def test_the_same_request_twice_gives_the_same_pixels(editor: KleinEditor) -> None:
    job = request(4)
    first = editor.edit(job).image.tobytes()
    assert editor.edit(replace(job, images=[picture(1), picture(2), picture(3)])).image.tobytes() == first
