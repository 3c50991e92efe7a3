"""Size rules and conversions of `stepedit.images`, against values worked out from the reference."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from stepedit.errors import InvalidInput
from stepedit.images import (
    resize_to_working,
    size_level_from_size,
    to_output,
    to_pil,
    to_tensor,
    working_size,
)

# (source width, height, size level) -> working (width, height), from the reference's
# input_process_image arithmetic.
REFERENCE_SIZES = {
    (1000, 333, 512): (880, 288),
    (333, 1000, 512): (288, 880),
    (777, 555, 512): (592, 432),
    (1000, 333, 768): (1328, 432),
    (333, 1000, 768): (432, 1328),
    (777, 555, 768): (896, 640),
    (1000, 333, 1024): (1760, 592),
    (333, 1000, 1024): (592, 1760),
    (777, 555, 1024): (1200, 864),
    (640, 640, 1024): (1024, 1024),
    (64, 192, 512): (288, 880),
}


@pytest.mark.parametrize(("source", "expected"), list(REFERENCE_SIZES.items()))
def test_working_size_matches_reference(
    source: tuple[int, int, int], expected: tuple[int, int]
) -> None:
    assert working_size(*source) == expected


@pytest.mark.parametrize("size_level", [512, 768, 1024])
@pytest.mark.parametrize("source", [(1000, 333), (333, 1000), (777, 555), (1920, 1080)])
def test_working_size_keeps_area_and_aspect(size_level: int, source: tuple[int, int]) -> None:
    width, height = working_size(*source, size_level)
    assert width % 16 == 0 and height % 16 == 0
    assert 0.85 < width * height / size_level**2 <= 1.01
    assert abs(width / height - source[0] / source[1]) / (source[0] / source[1]) < 0.05


def test_resize_to_working_uses_rule() -> None:
    image = Image.new("RGB", (777, 555), (10, 20, 30))
    assert resize_to_working(image, 512).size == (592, 432)


def test_size_strings() -> None:
    assert size_level_from_size("768x768") == 768
    assert size_level_from_size("1024") == 1024
    assert size_level_from_size(512) == 512
    with pytest.raises(InvalidInput) as info:
        size_level_from_size("768x512")
    assert info.value.param == "size"
    with pytest.raises(InvalidInput):
        size_level_from_size("big")


def test_tensor_round_trip_is_exact() -> None:
    values = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16).expand(3, 16, 16)
    image = Image.fromarray(values.permute(1, 2, 0).numpy())
    tensor = to_tensor(image)
    assert tensor.shape == (1, 3, 16, 16) and tensor.dtype == torch.float32
    assert float(tensor.max()) == 1.0
    assert to_pil(tensor[0]).tobytes() == image.tobytes()


def test_to_output_resizes_back_to_input() -> None:
    image = Image.new("RGB", (592, 432))
    assert to_output(image, (777, 555)).size == (777, 555)
    assert to_output(image, (777, 555), "working").size == (592, 432)
