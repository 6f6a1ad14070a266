"""Images in, pixel arrays out: the colour check works on RGB and leaves alpha to the caller.

A cut-out's alpha says where the product is, not what colour it is, so measuring and correcting read
only the RGB channels, and a correction hands back the input's alpha plane byte for byte.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

Rgb8Image = npt.NDArray[np.uint8]
ImageInput = Image.Image | npt.NDArray[Any]


def split_alpha(image: ImageInput) -> tuple[Rgb8Image, Rgb8Image | None]:
    """An image -> (RGB uint8 HxWx3, alpha uint8 HxW or None).

    Takes a PIL image in any mode (converted to RGB, its alpha or `transparency` kept as an alpha
    plane) or a uint8 array HxWx3 or HxWx4 (RGBA). Raises `ValueError` for other arrays.
    """
    if isinstance(image, Image.Image):
        has_alpha = "A" in image.getbands() or "transparency" in image.info
        if has_alpha:
            rgba = np.asarray(image.convert("RGBA"))
            return np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3])
        return np.asarray(image.convert("RGB")), None
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"expected a uint8 HxWx3 or HxWx4 array, got {array.dtype} {array.shape}")
    if array.shape[2] == 4:
        return np.ascontiguousarray(array[..., :3]), np.ascontiguousarray(array[..., 3])
    return array, None


def same_size(baseline: Rgb8Image, output: Rgb8Image) -> None:
    """Raises `ValueError` unless both are the same HxW (the caller resizes the baseline first)."""
    if baseline.shape[:2] != output.shape[:2]:
        raise ValueError(
            f"baseline {baseline.shape[1]}x{baseline.shape[0]} and output "
            f"{output.shape[1]}x{output.shape[0]} differ in size: resize the baseline to the output first"
        )
