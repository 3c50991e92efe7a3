"""Image sizes and conversions as the Step1X-Edit reference does them (no torchvision).

Size rule (reference `input_process_image`): keep the aspect ratio, make the area about
size_level**2 rounding the long side's square-root solution up, then floor both sides to a multiple
of 16 (8x VAE downsampling times 2x2 latent packing). The source is resized with LANCZOS; the output
is resized back to the source size with PIL's default filter, as the reference does. (The v1.0
reference resized the source with PIL's default filter too.)
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch
from PIL import Image

from stepedit.errors import InvalidInput
from stepedit.request import SIZE_MULTIPLE, OutputSize


def working_size(width: int, height: int, size_level: int) -> tuple[int, int]:
    """The (width, height) the model works at for a source of this size and a size level."""
    ratio = width / height
    if width > height:
        new_width = math.ceil(math.sqrt(size_level * size_level * ratio))
        new_height = math.ceil(new_width / ratio)
    else:
        new_height = math.ceil(math.sqrt(size_level * size_level / ratio))
        new_width = math.ceil(new_height * ratio)
    return new_width // SIZE_MULTIPLE * SIZE_MULTIPLE, new_height // SIZE_MULTIPLE * SIZE_MULTIPLE


def size_level_from_size(size: str | int) -> int:
    """StepFun's `size` field ("768x768", or 768) to a size level.

    The hosted API documents square sizes only: "approximate output size ... area ~ size*size,
    input aspect ratio kept", which is exactly the size level of the reference.
    """
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX*]\s*(\d+))?\s*", size)
    if match is None:
        raise InvalidInput(f"size must look like '1024x1024' or '1024', got {size!r}", param="size")
    side, other = int(match.group(1)), match.group(2)
    if other is not None and int(other) != side:
        raise InvalidInput(
            f"size must be square (it sets the area; the image keeps its aspect ratio): {size!r}",
            param="size",
        )
    return side


def resize_to_working(
    image: Image.Image, size_level: int, resample: Image.Resampling = Image.Resampling.LANCZOS
) -> Image.Image:
    """The working-size source. The v1.1 reference resizes with LANCZOS; v1.0 used PIL's
    default (BICUBIC)."""
    width, height = working_size(image.width, image.height, size_level)
    return image.convert("RGB").resize((width, height), resample)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 [1, 3, H, W] in [0, 1] (uint8 / 255, like torchvision's)."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)  # [3, H, W]
    return tensor.to(torch.float32).div(255).unsqueeze(0)


def to_pil(tensor: torch.Tensor, *, rounding: bool = False) -> Image.Image:
    """float [3, H, W] in [0, 1] -> RGB PIL, scaled by 255 and truncated like torchvision's
    `to_pil_image` (the official code), or rounded like diffusers' `numpy_to_pil`."""
    scaled = tensor.detach().float().cpu().mul(255)
    if rounding:
        scaled = scaled.round()
    array = scaled.to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array)


def to_output(
    image: Image.Image, original_size: tuple[int, int], output_size: OutputSize = "input"
) -> Image.Image:
    """The reference returns images resized back to the source's (width, height)."""
    if output_size == "working" or image.size == original_size:
        return image
    return image.resize(original_size)
