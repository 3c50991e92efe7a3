"""Masks, outpainting and preserve_unedited (issue 13), on the tiny random models on CPU.

What a user would notice: outside a mask the pixels are the source's, bit for bit, with a soft
seam inside it; an all-white mask is the plain edit, an all-black one the source; an outpaint
returns the asked canvas with the original in place; bad masks are refused as InvalidInput.
"""

from __future__ import annotations

import dataclasses
import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from stepedit import regions
from stepedit.acceleration.regions import RegionSettings
from stepedit.errors import InvalidInput
from stepedit.pipeline import EditOutput, EditPipeline
from stepedit.request import EditRequest

LEVEL = 256
STEPS = 2
SIZE = (300, 200)
BOX = (100, 50, 220, 150)  # the masked rectangle


@pytest.fixture(scope="module")
def pipe() -> EditPipeline:
    return EditPipeline.from_pretrained("dummy:tiny-v1.1", device="cpu")


@pytest.fixture(scope="module")
def source() -> Image.Image:
    gradient = Image.linear_gradient("L").resize(SIZE)
    return Image.merge("RGB", (gradient, gradient.rotate(90).resize(SIZE), gradient))


@pytest.fixture(scope="module")
def box_mask() -> Image.Image:
    mask = Image.new("L", SIZE, 0)
    ImageDraw.Draw(mask).rectangle(BOX, fill=255)
    return mask


def edit(
    pipe: EditPipeline,
    image: Image.Image,
    mask: Image.Image | bytes | None = None,
    **kwargs: object,
) -> EditOutput:
    options: dict[str, object] = {
        "prompt": "add a red hat",
        "num_inference_steps": STEPS,
        "size_level": LEVEL,
        "seed": 7,
    }
    options.update(kwargs)
    return pipe(image, EditRequest(**options), mask=mask)  # type: ignore[arg-type]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# --- masked edits -------------------------------------------------------------------------------


def test_outside_the_mask_the_pixels_are_the_source_and_the_seam_is_feathered(
    pipe: EditPipeline, source: Image.Image, box_mask: Image.Image
) -> None:
    out = edit(pipe, source, box_mask)
    raw = edit(pipe, source, box_mask, preserve_outside_mask=False)
    result, inside = pixels(out.images[0]), np.asarray(box_mask) > 0
    assert np.array_equal(result[~inside], pixels(source)[~inside])
    assert np.abs(result[inside] - pixels(source)[inside]).mean() > 5  # the edit happened
    # The composite of the raw decode with the source, and the seam in between: pixels just
    # inside the mask's edge are a mix of the two, unlike the middle of the mask.
    assert out.images[0].tobytes() == regions.composite(raw.images[0], source, box_mask).tobytes()
    alpha = np.asarray(regions.seam_alpha(box_mask))
    assert alpha[~inside].max() == 0 and alpha[100, 160] == 255
    edge = alpha[BOX[1] + 1 : BOX[3], BOX[0] + 1]
    assert ((edge > 0) & (edge < 255)).all()
    assert out.region_masks[0].tobytes() == box_mask.tobytes()


def test_an_all_white_mask_is_the_unmasked_edit(pipe: EditPipeline, source: Image.Image) -> None:
    plain = edit(pipe, source)
    white = edit(pipe, source, Image.new("L", SIZE, 255))
    assert white.images[0].tobytes() == plain.images[0].tobytes()
    assert white.latents is not None and plain.latents is not None
    assert white.latents.equal(plain.latents)


def test_an_all_black_mask_returns_the_source(pipe: EditPipeline, source: Image.Image) -> None:
    out = edit(pipe, source, Image.new("L", SIZE, 0), num_images=2)
    assert [image.tobytes() for image in out.images] == [source.tobytes()] * 2


def test_grey_is_local_strength(pipe: EditPipeline, source: Image.Image) -> None:
    # 100/255 of 4 steps: the source up to step floor(0.61 * 4) = 2, as strength 0.5 starts.
    grey_mask = Image.new("L", SIZE, 100)
    grey = edit(pipe, source, grey_mask, num_inference_steps=4, preserve_outside_mask=False)
    img2img = edit(pipe, source, num_inference_steps=4, strength=0.5)
    assert grey.images[0].tobytes() == img2img.images[0].tobytes()


def test_each_image_of_a_batch_keeps_the_outside(
    pipe: EditPipeline, source: Image.Image, box_mask: Image.Image
) -> None:
    out = edit(pipe, source, box_mask, num_images=2, output_size="working")
    assert out.images[0].tobytes() != out.images[1].tobytes()
    working = source.resize(out.images[0].size, Image.Resampling.LANCZOS)
    region = np.asarray(out.region_masks[0]) > 0
    for image in out.images:
        assert np.array_equal(pixels(image)[~region], pixels(working)[~region])


def test_a_mask_of_the_same_aspect_ratio_is_resized_and_alpha_wins(
    pipe: EditPipeline, source: Image.Image, box_mask: Image.Image
) -> None:
    as_size = edit(pipe, source, box_mask)
    smaller = box_mask.resize((150, 100), Image.Resampling.NEAREST)
    as_alpha = Image.new("RGBA", (150, 100), (255, 255, 255, 255))  # white colour everywhere
    as_alpha.putalpha(Image.eval(smaller, lambda v: 255 - v))  # transparent where editable
    resized = edit(pipe, source, png_bytes(as_alpha))
    region = np.asarray(resized.region_masks[0]) > 0
    assert abs(int(region.sum()) - int((np.asarray(box_mask) > 0).sum())) < 500
    assert np.array_equal(pixels(resized.images[0])[~region], pixels(source)[~region])
    assert np.array_equal(pixels(as_size.images[0])[~region], pixels(resized.images[0])[~region])


def test_reasoning_rounds_keep_the_outside(box_mask: Image.Image, source: Image.Image) -> None:
    pipe = EditPipeline.from_pretrained("dummy:tiny-v1.2", device="cpu")
    out = edit(pipe, source, box_mask, enable_thinking=True, enable_reflection=False)
    inside = np.asarray(box_mask) > 0
    assert np.array_equal(pixels(out.images[0])[~inside], pixels(source)[~inside])


# --- bad masks ----------------------------------------------------------------------------------


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height and whose data is a few bytes: a bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (Image.new("L", (200, 200), 255), "aspect ratio"),  # 1:1 for a 3:2 image
        (Image.new("L", (304, 200), 255), "aspect ratio"),  # 1.3% off
        (_png_header_only(5000, 5000), "too many pixels"),  # over our limit, from the header
        (_png_header_only(20000, 20000), "too many pixels"),  # over Pillow's bomb limit
        (png_bytes(Image.new("L", SIZE, 9))[:60], "could not be read"),  # truncated
        (b"%PDF-1.4 not an image", "not an image"),
        (b"", "empty"),
        ("mask.png", "expected an image"),
        (np.zeros((200, 300), dtype=np.uint8), "expected an image"),
    ],
    ids=["square", "1.3%", "5000px", "bomb", "truncated", "pdf", "empty", "path", "array"],
)
def test_bad_masks_are_invalid_input(
    pipe: EditPipeline, source: Image.Image, mask: object, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message) as caught:
        edit(pipe, source, mask)  # type: ignore[arg-type]
    assert caught.value.param == "mask"


def test_a_mask_and_outpaint_together_are_refused(
    pipe: EditPipeline, source: Image.Image, box_mask: Image.Image
) -> None:
    with pytest.raises(InvalidInput) as caught:
        edit(pipe, source, box_mask, outpaint_padding=(0, 0, 64, 0))
    assert caught.value.param == "mask"


# --- mask rules, without a model ------------------------------------------------------------------


def test_check_mask_reads_luma_alpha_and_sixteen_bits() -> None:
    rgb = Image.new("RGB", (30, 20), (255, 0, 0))
    assert regions.check_mask(rgb, (30, 20)).getextrema() == (76, 76)  # ITU-R 601 luma of red
    opaque = Image.new("RGBA", (30, 20), (255, 255, 255, 255))
    assert regions.check_mask(opaque, (30, 20)).getextrema() == (255, 255)  # colour read
    holed = opaque.copy()
    holed.putpixel((3, 4), (255, 255, 255, 0))
    checked = regions.check_mask(holed, (30, 20))  # alpha wins: only the hole may change
    assert checked.getpixel((3, 4)) == 255 and checked.getpixel((0, 0)) == 0
    deep = Image.fromarray(np.full((20, 30), 65535, dtype=np.uint16))
    assert regions.check_mask(png_bytes(deep), (30, 20)).getextrema() == (255, 255)
    resized = regions.check_mask(Image.new("L", (301, 200), 255), (300, 200))  # within 1%
    assert resized.size == (300, 200) and resized.mode == "L"


def test_composite_is_exact_outside_and_soft_at_the_seam() -> None:
    region = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(region).rectangle((16, 16, 47, 47), fill=255)
    out = regions.composite(Image.new("RGB", (64, 64), "white"), Image.new("RGB", (64, 64)), region)
    values = np.asarray(out)[..., 0]
    assert values[np.asarray(region) == 0].max() == 0
    assert values[32, 32] == 255
    assert 0 < values[32, 16] < 128 < values[32, 21]  # rising from the edge inwards


# --- outpaint -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "canvas", "origin"),
    [
        ({"outpaint_padding": (16, 0, 64, 40)}, (380, 240), (16, 0)),
        ({"outpaint_aspect_ratio": 16 / 9}, (356, 200), (28, 0)),
        ({"outpaint_aspect_ratio": 1.0}, (300, 300), (0, 50)),
    ],
)
def test_outpaint_returns_the_canvas_with_the_original_in_place(
    pipe: EditPipeline,
    source: Image.Image,
    fields: dict[str, object],
    canvas: tuple[int, int],
    origin: tuple[int, int],
) -> None:
    out = edit(pipe, source, prompt="", **fields)
    result = out.images[0]
    assert result.size == canvas
    left, top = origin
    placed = result.crop((left, top, left + SIZE[0], top + SIZE[1]))
    assert placed.tobytes() == source.tobytes()
    assert out.prompt == regions.DEFAULT_OUTPAINT_PROMPT
    new_area = np.asarray(out.region_masks[0]) > 0
    assert new_area.sum() == canvas[0] * canvas[1] - SIZE[0] * SIZE[1]
    assert np.abs(pixels(result)[new_area] - 128).mean() < 127  # something was painted there


def test_outpaint_keeps_a_given_instruction(pipe: EditPipeline, source: Image.Image) -> None:
    out = edit(pipe, source, prompt="a beach to the right", outpaint_padding=(0, 0, 32, 0))
    assert out.prompt == "a beach to the right"


def test_outpaint_that_adds_nothing_is_refused(pipe: EditPipeline, source: Image.Image) -> None:
    with pytest.raises(InvalidInput) as caught:
        edit(pipe, source, outpaint_aspect_ratio=1.5)
    assert caught.value.param == "outpaint_aspect_ratio"


def test_outpaint_fields_are_validated_and_stored() -> None:
    request = EditRequest(prompt="", outpaint_padding=(0, 0, 256, 0)).validate()
    assert EditRequest.from_json(request.to_json()) == request
    bad: list[tuple[dict[str, object], str]] = [
        ({"prompt": ""}, "prompt"),
        ({"outpaint_padding": (0, 0, 0, 0)}, "outpaint_padding"),
        ({"outpaint_padding": (0, 0, -1, 0)}, "outpaint_padding"),
        ({"outpaint_padding": (0, 0, 5000, 0)}, "outpaint_padding"),
        ({"outpaint_padding": [0, 0, 8, 0]}, "outpaint_padding"),
        ({"outpaint_padding": (0, 0, 8)}, "outpaint_padding"),
        ({"outpaint_aspect_ratio": 5.0}, "outpaint_aspect_ratio"),
        ({"outpaint_aspect_ratio": float("nan")}, "outpaint_aspect_ratio"),
        ({"outpaint_padding": (8, 0, 0, 0), "outpaint_aspect_ratio": 2.0}, "outpaint_aspect_ratio"),
        ({"preserve_unedited": "yes"}, "preserve_unedited"),
        ({"preserve_outside_mask": 1}, "preserve_outside_mask"),
    ]
    base = EditRequest(prompt="x")
    for fields, param in bad:
        changes = {"prompt": "x", **fields}
        with pytest.raises(InvalidInput) as caught:
            dataclasses.replace(base, **changes).validate()  # type: ignore[arg-type]
        assert caught.value.param == param, fields


def test_parse_outpaint() -> None:
    assert regions.parse_outpaint("16:9") == {"outpaint_aspect_ratio": 16 / 9}
    assert regions.parse_outpaint("0,0,256,0") == {"outpaint_padding": (0, 0, 256, 0)}
    assert regions.parse_outpaint("right=256, top=8") == {"outpaint_padding": (0, 8, 256, 0)}
    for text in ("1,2", "left=1,left=2", "up=3", "0:9", "wide"):
        with pytest.raises(InvalidInput):
            regions.parse_outpaint(text)


# --- preserve_unedited ----------------------------------------------------------------------------


def test_preserve_unedited_leaves_far_away_pixels_identical(
    pipe: EditPipeline, source: Image.Image
) -> None:
    # The tiny random model's x0 sits at cosine 0.46..0.90 from the source; 0.8 marks about a
    # quarter of the tokens as edited, so both parts exist.
    pipe.region_settings = RegionSettings(threshold=0.8)
    try:
        first = edit(pipe, source, num_inference_steps=8, preserve_unedited=True)
        again = first.images[0]
        second = edit(pipe, again, num_inference_steps=8, preserve_unedited=True, seed=8)
    finally:
        pipe.region_settings = RegionSettings()
    region = np.asarray(first.region_masks[0]) > 0
    assert 0.05 < region.mean() < 0.9
    assert np.array_equal(pixels(first.images[0])[~region], pixels(source)[~region])
    assert np.abs(pixels(first.images[0])[region] - pixels(source)[region]).mean() > 1
    # A second edit of the result: where neither edit touched, still the source, bit for bit.
    untouched = ~region & ~(np.asarray(second.region_masks[0]) > 0)
    assert untouched.mean() > 0.05
    assert np.array_equal(pixels(second.images[0])[untouched], pixels(source)[untouched])


def test_without_regions_no_region_masks(pipe: EditPipeline, source: Image.Image) -> None:
    assert edit(pipe, source).region_masks == []


# --- the command line ----------------------------------------------------------------------------


def test_cli_mask_and_outpaint(source: Image.Image, box_mask: Image.Image, tmp_path: Path) -> None:
    from stepedit.cli import main

    image, mask = tmp_path / "in.png", tmp_path / "mask.png"
    source.save(image)
    box_mask.resize((150, 100), Image.Resampling.NEAREST).save(mask)  # resized on the way in
    fast = ["--model", "dummy:tiny-v1.1", "--size", "512", "--steps", "2", "--no-progress"]
    masked, wider = tmp_path / "masked.png", tmp_path / "wider.png"
    assert main(["edit", str(image), "a hat", "-o", str(masked), "--mask", str(mask), *fast]) == 0
    outside = np.asarray(regions.check_mask(Image.open(mask), SIZE)) == 0
    assert outside.mean() > 0.7
    assert np.array_equal(pixels(Image.open(masked))[outside], pixels(source)[outside])
    assert main(["edit", str(image), "-o", str(wider), "--outpaint", "right=64", *fast]) == 0
    result = Image.open(wider)
    assert result.size == (364, 200)
    assert result.crop((0, 0, *SIZE)).tobytes() == source.tobytes()


def test_cli_checks_masks_and_outpaint_before_loading(source: Image.Image, tmp_path: Path) -> None:
    """With torch unimportable, every bad region flag still gets its answer (exit 2)."""
    image, out = tmp_path / "in.png", str(tmp_path / "out.png")
    source.save(image)
    Image.new("L", (100, 100)).save(tmp_path / "square.png")
    (tmp_path / "bomb.png").write_bytes(_png_header_only(5000, 5000))
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text("raise ImportError('torch was imported')\n")
    existing = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(fake), existing]))}
    cases = [
        (["x", "--mask", str(tmp_path / "square.png")], "--mask: the mask is 100x100"),
        (["x", "--mask", str(tmp_path / "bomb.png")], "--mask"),
        (["x", "--mask", str(tmp_path / "missing.png")], "--mask: not found"),
        (["--outpaint", "1,2"], "--outpaint: expected"),
        (["--outpaint", "3:2"], "--outpaint: the 300x200 image already"),
        (["x", "--outpaint", "0,0,9000,0"], "--outpaint: must be in 0..4096"),
        (["x", "--outpaint", "16:9", "--mask", str(tmp_path / "square.png")], "outpaint"),
    ]
    command = [sys.executable, "-m", "stepedit.cli", "edit", str(image)]
    for extra, message in cases:
        model = ["-o", out, "--model", "dummy:tiny-v1.1"]
        done = subprocess.run(
            [*command, *extra, *model], capture_output=True, text=True, env=env, timeout=60
        )
        assert done.returncode == 2, (extra, done.stderr)
        assert message in done.stderr, (extra, done.stderr)
        assert "Traceback" not in done.stderr
