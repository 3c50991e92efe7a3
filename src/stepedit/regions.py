"""Where an edit may change the picture: masks, outpainting, and the final composite (issue 13).

Torch-free on purpose: the API layer calls `check_mask` and `canvas_size` on uploads, the CLI
checks its flags with them before a model loads, and the pipeline builds an `EditArea` from the
request before any model work. The latent side (the blend schedule, the estimate of the edited
region, the region-aware sampler) is `stepedit.acceleration.regions`. docs/regions.md has the
rules and the reasons for each choice.

Masks: white means "may change", black "keep". An alpha channel that is not fully opaque wins
over the colour (transparent = may change, the convention of OpenAI's image-edit API); otherwise
the luma of the colour is read (ITU-R 601, Pillow's "L"). A mask of the image's size is used as
it is; one of the same aspect ratio within 1% is resized (bilinear); any other is refused. Grey
levels are local strength (differential diffusion): a pixel at 50% changes like an img2img edit
at strength 0.5.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from stepedit.errors import InvalidInput

if TYPE_CHECKING:
    from stepedit.request import EditRequest

MAX_MASK_PIXELS = 4096 * 4096  # as for source images (stepedit.inputs.DEFAULT_RULES)
MAX_CANVAS_SIDE = 4096  # an outpainted canvas, per side
ASPECT_TOLERANCE = 0.01  # a mask of another size is resized when its aspect ratio is this close
# The instruction of an outpaint request that brings none. It names the blurred margins the
# canvas is filled with (`extend_canvas`), which the model sees in its reference image.
DEFAULT_OUTPAINT_PROMPT = (
    "Extend the picture beyond its original borders: replace the blurred margins with a "
    "natural continuation of the scene, matching its content, style, lighting and perspective."
)
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def _invalid(message: str, param: str = "mask") -> InvalidInput:
    return InvalidInput(f"{param}: {message}", param=param)


# --- masks --------------------------------------------------------------------------------------


def check_mask(mask: Image.Image | bytes, image_size: tuple[int, int]) -> Image.Image:
    """The mask as an "L" image of `image_size` (white = may change), or InvalidInput(param="mask").

    `mask`: a PIL image, or the bytes of an encoded one (PNG, JPEG, WebP...; the pixel count is
    checked from the header, so a decompression bomb is refused before it is decoded, and EXIF
    orientation is applied as for source images).
    """
    width, height = image_size
    if width < 1 or height < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if isinstance(mask, bytes | bytearray):
        mask = _decode_mask(bytes(mask))
    if not isinstance(mask, Image.Image):
        raise _invalid(f"expected an image, got {type(mask).__name__}")
    _check_pixel_count(mask.size)
    return _fit_to(_to_gray(mask), image_size)


def _decode_mask(data: bytes) -> Image.Image:
    if not data:
        raise _invalid("the mask is empty")
    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; make it an error too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            opened = Image.open(io.BytesIO(data))
            _check_pixel_count(opened.size)  # from the header, before any pixel is decoded
            opened.load()
            return ImageOps.exif_transpose(opened)
        except InvalidInput:
            raise
        except UnidentifiedImageError:
            raise _invalid("the file is not an image in a format Pillow reads") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _invalid(f"too many pixels (limit {MAX_MASK_PIXELS}); not decoded") from None
        except Exception as exc:  # Pillow raises many types for hostile or truncated data
            raise _invalid(f"the image could not be read: {exc}") from None


def _check_pixel_count(size: tuple[int, int]) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise _invalid("the mask is empty")
    if width * height > MAX_MASK_PIXELS:
        raise _invalid(
            f"the mask is {width}x{height}: too many pixels ({width * height}; the limit is "
            f"{MAX_MASK_PIXELS})"
        )


def _to_gray(mask: Image.Image) -> Image.Image:
    """White = may change. A non-opaque alpha channel wins (transparent = may change)."""
    has_alpha = "A" in mask.getbands() or (mask.mode == "P" and "transparency" in mask.info)
    if has_alpha:
        alpha = mask.convert("RGBA").getchannel("A")
        lowest, _ = cast(tuple[int, int], alpha.getextrema())
        if lowest < 255:
            return ImageOps.invert(alpha)
    if mask.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(mask, dtype=np.int64)
        if values.max(initial=0) > 255:  # 16-bit data: scale 0..65535 to 0..255
            values = (values + 128) // 257
        return Image.fromarray(values.clip(0, 255).astype(np.uint8), mode="L")
    if mask.mode == "F":
        raise _invalid("floating-point masks are not supported; send an 8-bit grey image")
    return mask.convert("L")


def _fit_to(gray: Image.Image, image_size: tuple[int, int]) -> Image.Image:
    if gray.size == image_size:
        return gray
    (mask_w, mask_h), (width, height) = gray.size, image_size
    # |mask ratio / image ratio - 1|, without dividing by a side that could be small.
    mismatch = abs(mask_w * height - width * mask_h) / (width * mask_h)
    if mismatch > ASPECT_TOLERANCE:
        raise _invalid(
            f"the mask is {mask_w}x{mask_h} and the image {width}x{height}; send a mask of the "
            f"image's size, or of its aspect ratio (within {ASPECT_TOLERANCE:.0%}) to be resized"
        )
    return gray.resize(image_size, Image.Resampling.BILINEAR)


def is_all_white(mask: Image.Image) -> bool:
    return mask.getextrema() == (255, 255)


def is_all_black(mask: Image.Image) -> bool:
    return mask.getextrema() == (0, 0)


# --- outpainting --------------------------------------------------------------------------------


def outpaint_padding(
    image_size: tuple[int, int], request: EditRequest
) -> tuple[int, int, int, int]:
    """Pixels added (left, top, right, bottom) to an image of `image_size`; zeros without
    outpaint. An aspect ratio grows the short axis, split evenly (the odd pixel right/bottom)."""
    if request.outpaint_padding is not None:
        padding = request.outpaint_padding
        param = "outpaint_padding"
    elif request.outpaint_aspect_ratio is not None:
        padding = _padding_for_ratio(image_size, float(request.outpaint_aspect_ratio))
        param = "outpaint_aspect_ratio"
    else:
        return (0, 0, 0, 0)
    left, top, right, bottom = padding
    width, height = image_size[0] + left + right, image_size[1] + top + bottom
    if max(width, height) > MAX_CANVAS_SIDE or width * height > MAX_MASK_PIXELS:
        raise _invalid(
            f"the outpainted canvas would be {width}x{height}; each side must be at most "
            f"{MAX_CANVAS_SIDE} and the area at most {MAX_MASK_PIXELS} pixels",
            param,
        )
    return padding


def _padding_for_ratio(image_size: tuple[int, int], ratio: float) -> tuple[int, int, int, int]:
    width, height = image_size
    if width / height < ratio:
        extra = round(height * ratio) - width
        padding = (extra // 2, 0, extra - extra // 2, 0)
    else:
        extra = round(width / ratio) - height
        padding = (0, extra // 2, 0, extra - extra // 2)
    if sum(padding) <= 0:
        raise _invalid(
            f"the {width}x{height} image already has the aspect ratio {ratio:g}; outpainting "
            "would add nothing",
            "outpaint_aspect_ratio",
        )
    return padding


def canvas_size(image_size: tuple[int, int], request: EditRequest) -> tuple[int, int]:
    """The size of what the model edits: the image, or its outpainted canvas."""
    left, top, right, bottom = outpaint_padding(image_size, request)
    return image_size[0] + left + right, image_size[1] + top + bottom


def extend_canvas(
    image: Image.Image, padding: tuple[int, int, int, int]
) -> tuple[Image.Image, Image.Image]:
    """(canvas, mask): the image on a larger canvas and the new area as a white mask.

    The new area is the image's edge pixels carried outwards, then blurred (Gaussian, standard
    deviation 1/16 of the canvas's longer side) so it reads as a soft continuation of the colours
    rather than streaks; the original pixels are pasted back untouched.
    """
    left, top, right, bottom = padding
    source = image.convert("RGB")
    extended = np.pad(
        np.asarray(source), ((top, bottom), (left, right), (0, 0)), mode="edge"
    )  # [H', W', 3]
    canvas = Image.fromarray(extended)
    canvas = canvas.filter(ImageFilter.GaussianBlur(max(canvas.size) / 16))
    canvas.paste(source, (left, top))
    mask = Image.new("L", canvas.size, 255)
    mask.paste(0, (left, top, left + source.width, top + source.height))
    return canvas, mask


_RATIO = re.compile(r"\s*(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?)\s*")
_SIDES = ("left", "top", "right", "bottom")


def parse_outpaint(text: str) -> dict[str, tuple[int, int, int, int] | float]:
    """The EditRequest field of an outpaint option as the CLI takes it: "16:9" (a target aspect
    ratio), "0,0,256,0" (pixels added left, top, right, bottom) or "right=256,bottom=64"."""
    param = "outpaint_padding"
    ratio = _RATIO.fullmatch(text)
    if ratio is not None:
        width, height = float(ratio.group(1)), float(ratio.group(2))
        if width <= 0 or height <= 0:
            raise _invalid(f"an aspect ratio needs two positive numbers: {text!r}", param)
        return {"outpaint_aspect_ratio": width / height}
    parts = [part.strip() for part in text.split(",")]
    try:
        if all("=" in part for part in parts):
            named = {}
            for part in parts:
                side, value = (s.strip() for s in part.split("=", 1))
                if side not in _SIDES or side in named:
                    raise ValueError(side)
                named[side] = int(value)
            values = [named.get(side, 0) for side in _SIDES]
        else:
            values = [int(part) for part in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        raise _invalid(
            f"expected W:H (e.g. 16:9), LEFT,TOP,RIGHT,BOTTOM pixels (e.g. 0,0,256,0) or "
            f"side=pixels (e.g. right=256), got {text!r}",
            param,
        )
    left, top, right, bottom = values
    return {"outpaint_padding": (left, top, right, bottom)}


# --- the area of one edit, and the composite ----------------------------------------------------


@dataclass(frozen=True)
class EditArea:
    """What one edit may change, decided from the request (and mask) before any model work."""

    image: Image.Image  # RGB: the source, or the outpainted canvas; what the model edits
    mask: Image.Image | None  # "L", image's size, white = may change; None: no mask
    prompt: str  # the instruction (outpaint's default when the request brings none)
    preserve_outside: bool  # pixels outside the region are copied from `image` at the end
    estimate: bool  # preserve_unedited: the region is estimated while sampling

    @property
    def is_whole(self) -> bool:
        """Nothing limits the edit: sample and return exactly as without regions."""
        return not self.estimate and (self.mask is None or is_all_white(self.mask))

    @property
    def sampling_mask(self) -> Image.Image | None:
        """The mask the sampler blends with, or None (no mask, or an all-white one)."""
        return None if self.is_whole else self.mask

    def finish(
        self, images: list[Image.Image], estimated: Sequence[Sequence[Image.Image]] = ()
    ) -> tuple[list[Image.Image], list[Image.Image]]:
        """(images, regions): each image with the outside of its region copied from the source
        (when `preserve_outside`), and each image's region ("L", the image's size).

        `estimated`: per diffusion round, per image, the regions the sampler estimated
        (preserve_unedited); an image's region is their union over the rounds (a reasoning
        run's later rounds edit earlier candidates). A mask, when there is one, is the region.
        """
        if self.mask is None and not self.estimate:
            return images, []
        regions = [self._region(i, image.size, estimated) for i, image in enumerate(images)]
        if not self.preserve_outside or self.is_whole:
            return images, regions
        finished = []
        for image, region in zip(images, regions, strict=True):
            source = self.image
            if source.size != image.size:  # output_size="working"
                source = source.resize(image.size, Image.Resampling.LANCZOS)
            finished.append(composite(image, source, region))
        return finished, regions

    def _region(
        self, index: int, size: tuple[int, int], estimated: Sequence[Sequence[Image.Image]]
    ) -> Image.Image:
        if self.mask is not None:
            if self.mask.size == size:
                return self.mask
            return self.mask.resize(size, Image.Resampling.BILINEAR)
        union: np.ndarray | None = None
        for round_regions in estimated:
            if not round_regions:
                continue
            region = round_regions[min(index, len(round_regions) - 1)]
            values = np.asarray(region.resize(size, Image.Resampling.NEAREST))
            union = values if union is None else np.maximum(union, values)
        if union is None:  # no round estimated anything (e.g. no step was run)
            return Image.new("L", size, 0)
        return Image.fromarray(union, mode="L")


def checked_mask(
    image_size: tuple[int, int], request: EditRequest, mask: Image.Image | bytes | None
) -> Image.Image | None:
    """The mask of an edit of an image of `image_size`, checked (`check_mask`); None without
    one. InvalidInput(param="mask") for a bad mask, or for one sent with an outpaint (which
    makes its own). The API calls it on arrival, `edit_area` before the model runs."""
    if mask is None:
        return None
    if request.is_outpaint:
        raise _invalid("outpaint makes its own mask (the new area); send one or the other")
    return check_mask(mask, image_size)


def edit_area(
    image: Image.Image, request: EditRequest, mask: Image.Image | bytes | None = None
) -> EditArea:
    """The area of an edit: the mask checked (`check_mask`), or the outpaint canvas and its mask,
    or the whole image (estimated while sampling with preserve_unedited). InvalidInput for a bad
    mask, a mask sent with outpaint, or an outpaint the image cannot take."""
    source = image.convert("RGB")
    checked = checked_mask(source.size, request, mask)
    if request.is_outpaint:
        canvas, new_area = extend_canvas(source, outpaint_padding(source.size, request))
        prompt = request.prompt if request.prompt.strip() else DEFAULT_OUTPAINT_PROMPT
        return EditArea(canvas, new_area, prompt, request.preserve_outside_mask, estimate=False)
    if checked is not None:
        return EditArea(source, checked, request.prompt, request.preserve_outside_mask, False)
    keep = request.preserve_unedited
    return EditArea(source, None, request.prompt, preserve_outside=keep, estimate=keep)


def seam_width(size: tuple[int, int]) -> int:
    """Pixels over which the composite fades from the source into the edit: 1/64 of the short
    side (16 px at 1024), at least 4."""
    return max(4, round(min(size) / 64))


def seam_alpha(region: Image.Image, feather: int | None = None) -> Image.Image:
    """The composite's alpha ("L"): 0 wherever the region is 0, rising over `feather` pixels
    inside it. The region is eroded by feather/2 and blurred (sigma feather/4), then capped by
    the region itself, so no pixel outside the region takes anything from the edit."""
    feather = seam_width(region.size) if feather is None else feather
    inside = np.asarray(region.convert("L")) > 0  # [H, W]
    if feather < 2:
        return Image.fromarray((inside * 255).astype(np.uint8), mode="L")
    core = _erode(inside, feather // 2)
    blurred = Image.fromarray((core * 255).astype(np.uint8), mode="L")
    blurred = blurred.filter(ImageFilter.GaussianBlur(feather / 4))
    alpha = np.minimum(np.asarray(blurred), (inside * 255).astype(np.uint8))
    return Image.fromarray(alpha, mode="L")


def _erode(inside: np.ndarray, radius: int) -> np.ndarray:
    """Binary erosion by a (2r+1)-square, from a summed-area table; the image border counts as
    inside (a region that reaches the border has no seam there)."""
    size = 2 * radius + 1
    height, width = inside.shape
    padded = np.pad(inside, radius, mode="edge").astype(np.int32)
    table = np.pad(padded.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    box = (
        table[size : size + height, size : size + width]
        - table[:height, size : size + width]
        - table[size : size + height, :width]
        + table[:height, :width]
    )
    return np.asarray(box == size * size)


def composite(
    edited: Image.Image, source: Image.Image, region: Image.Image, feather: int | None = None
) -> Image.Image:
    """`edited` inside `region`, `source` outside, with a feathered seam inside the region.
    Pixels where the region is 0 are exactly the source's (integer arithmetic)."""
    alpha = np.asarray(seam_alpha(region, feather), dtype=np.uint32)[..., None]  # [H, W, 1]
    new = np.asarray(edited.convert("RGB"), dtype=np.uint32)
    old = np.asarray(source.convert("RGB"), dtype=np.uint32)
    mixed = (new * alpha + old * (255 - alpha) + 127) // 255
    return Image.fromarray(mixed.astype(np.uint8), mode="RGB")
