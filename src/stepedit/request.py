"""The one edit request, its limits, and the table of Step1X-Edit releases it is checked against.

Every API flavour and the CLI build an `EditRequest`; it is validated once (`validate`, against
the serving release's `VersionSpec`) before anything is queued or loaded, and the pipeline reads
it as it is. Torch-free on purpose: the API layer imports this module, the worker hands the same
object to the model.

Adding a release: a `VersionSpec` below, a DiT preset (`model/presets.py`) and its detection
(`weights/formats.py`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, get_args

from stepedit.errors import InvalidInput

ModelVersion = Literal["v1.0", "v1.1", "v1.2"]
MODEL_VERSIONS: tuple[ModelVersion, ...] = get_args(ModelVersion)
OutputSize = Literal["input", "working"]
ImageFormat = Literal["png", "jpeg", "webp"]
# When the guidance term is divided by a power of its norm (see `sampling.cfg_combine`):
# "official": as the release's own inference code does (`VersionSpec.rescale_above`);
# "every_step": at every step (the v1.1 diffusers pipeline, which compares t on its 0..1000
# scale with 0.93); "never": plain CFG.
CfgRescale = Literal["official", "every_step", "never"]

# Limits. SIZE_LEVELS are the working sizes the docs and the wire flavours name; the Python API
# also takes any multiple of 16 in MIN_SIZE_LEVEL..MAX_SIZE_LEVEL.
SIZE_LEVELS = (512, 768, 1024)
SIZE_MULTIPLE = 16  # VAE downsampling (8) times latent patch size (2)
MIN_SIZE_LEVEL = 256
MAX_SIZE_LEVEL = 2048
MAX_STEPS = 100
MAX_GUIDANCE = 20.0
MAX_IMAGES_PER_REQUEST = 4
MAX_SEED = 2**31 - 1
MAX_PROMPT_CHARS = 2048  # flavours without a published limit; seed 002 says 512
MAX_OUTPAINT_PIXELS = 4096  # added on one side (docs/regions.md)
MAX_OUTPAINT_ASPECT = 4.0  # outpaint_aspect_ratio in [1/4, 4]
# LoRA adapters a request may select (names of adapters the server preloaded; docs/lora.md).
MAX_LORAS_PER_REQUEST = 4
MAX_LORA_SCALE = 4.0  # |scale|; negative scales subtract an adapter
LORA_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"  # never a path or a URL


@dataclass(frozen=True)
class LoraChoice:
    """One preloaded LoRA adapter, by name, and the scale to apply it at."""

    name: str
    scale: float = 1.0


class Pass(StrEnum):
    """The passes an edit runs, as job records and responses list them. Reasoning runs number
    their rounds: `Pass.DIFFUSION.round(2)` is "diffusion_2"."""

    ENHANCE = "enhance"  # the prompt enhancer's rewrite
    THINKING = "thinking"  # v1.2's instruction rewrite
    DIFFUSION = "diffusion"  # one diffusion edit
    REFLECTION = "reflection"  # v1.2's verdict on a candidate

    def round(self, index: int) -> str:
        """The name of this pass in round `index` (1-based) of a reasoning run."""
        return f"{self.value}_{index}"

    @classmethod
    def ran(cls, passes: list[str] | tuple[str, ...], name: Pass) -> bool:
        """Whether `passes` include `name`, in any round."""
        return any(p == name.value or p.startswith(f"{name.value}_") for p in passes)


@dataclass(frozen=True)
class VersionSpec:
    """Everything that differs between Step1X-Edit releases, in one record (cf. flux's
    `configs`). The model code reads the numerics rules; the API reads the capabilities."""

    name: ModelVersion
    # Conditioning: the MLLM template family. "enhanced-prompt": v1.0/v1.1's "Enhanced prompt"
    # prefix, image before the instruction, 640 tokens padded; "edit": v1.2's editing prefix,
    # instruction before the image, up to 2048 tokens unpadded, vision-token positions.
    encoder: Literal["enhanced-prompt", "edit"]
    # RoPE ids of the reference-image tokens: "shared" (0, row, col) as the noisy image (v1.0);
    # "offset" (1, row + 1, col + 1) (v1.1: built from ones, then rows and columns added);
    # "index" (1, row, col) (v1.2: only axis 0 set to 1).
    reference_positions: Literal["shared", "offset", "index"]
    # cfg_rescale="official": the guidance term is norm-rescaled while t > rescale_above (t on
    # the 0..1 scale). v1.0's code passes 1.0 (never); v1.1's release passes 0.93; v1.2's only
    # reference compares its 0..1000 timesteps with 0.93, i.e. every step.
    rescale_above: float
    # Resampling of the source to the working size (v1.0's code used PIL's default, BICUBIC).
    working_resample: Literal["bicubic", "lanczos"]
    # What the VAE encodes: the working-size image, or (v1.2) the source resized to the working
    # size by bilinear interpolation with antialiasing on float pixels.
    vae_input: Literal["working", "source-bilinear"]
    # Whose arithmetic the pipeline reproduces: the official repository's, the diffusers
    # pipeline's, or whichever matches the layout the weights were published in.
    reference: Literal["official", "diffusers", "by-layout"]
    has_text_token_mapping: bool  # v1.2's DiT reads quoted characters' input embeddings
    has_reasoning: bool  # thinking and reflection passes (a fine-tuned MLLM)
    default_guidance_scale: float = 6.0
    default_num_inference_steps: int = 28

    def reference_for(self, layout: str) -> Literal["official", "diffusers"]:
        """Whose numerics apply to weights loaded from `layout` ("original", "diffusers", or
        "dummy", which follows the original layout)."""
        if self.reference != "by-layout":
            return self.reference
        return "diffusers" if layout == "diffusers" else "official"

    def rescale_threshold(self, cfg_rescale: CfgRescale | None) -> float:
        """The t (0..1) above which the sampler rescales the guidance term."""
        if cfg_rescale in (None, "official"):
            return self.rescale_above
        if cfg_rescale == "every_step":
            return -math.inf
        return math.inf


VERSIONS: dict[ModelVersion, VersionSpec] = {
    "v1.0": VersionSpec(
        name="v1.0",
        encoder="enhanced-prompt",
        reference_positions="shared",
        rescale_above=math.inf,
        working_resample="bicubic",
        vae_input="working",
        reference="official",
        has_text_token_mapping=False,
        has_reasoning=False,
    ),
    "v1.1": VersionSpec(
        name="v1.1",
        encoder="enhanced-prompt",
        reference_positions="offset",
        rescale_above=0.93,
        working_resample="lanczos",
        vae_input="working",
        reference="by-layout",
        has_text_token_mapping=False,
        has_reasoning=False,
    ),
    "v1.2": VersionSpec(
        name="v1.2",
        encoder="edit",
        reference_positions="index",
        rescale_above=-math.inf,
        working_resample="lanczos",
        vae_input="source-bilinear",
        reference="diffusers",
        has_text_token_mapping=True,
        has_reasoning=True,
    ),
}

_VERSION_NAME = re.compile(r"v1\.[0-9]+")


def version_named(text: str | None) -> ModelVersion | None:
    """The release a model field or source names ("v1.2", "step1x-edit-v1.2", "...-v1p2")."""
    found = _VERSION_NAME.search((text or "").lower().replace("v1p", "v1."))
    if found is None or found.group(0) not in MODEL_VERSIONS:
        return None
    name: ModelVersion = found.group(0)  # type: ignore[assignment]
    return name


def draw_seed() -> int:
    """The one rule for a random seed: uniform over 0..MAX_SEED."""
    return secrets.randbelow(MAX_SEED + 1)


@dataclass(frozen=True)
class EditRequest:
    """One edit as stepedit runs it, whatever API or command it arrived through.

    The source image is not part of the request: the job system stores it once and the worker
    hands it to the pipeline beside the request.
    """

    prompt: str
    negative_prompt: str = ""
    seed: int | None = None  # None: drawn (`with_seed`) when the job is accepted
    guidance_scale: float = 6.0
    num_inference_steps: int = 28
    size_level: int = 1024  # the working area is about size_level**2, aspect ratio kept
    output_size: OutputSize = "input"  # "input": resized back to the source size (reference)
    num_images: int = 1  # image i uses seed + i
    strength: float = 1.0  # 1.0 starts from pure noise; lower starts from the noised source
    enable_thinking: bool | None = None  # None: the release's default (on where it has them)
    enable_reflection: bool | None = None
    enhance_prompt: bool = False
    cfg_rescale: CfgRescale | None = None  # None: "official"
    # Only the prompt enhancer runs (POST /v1/prompt/enhance): no diffusion, no images; the
    # job's prompt_used is the enhanced instruction. enhance_image False: the enhancer is not
    # shown the job's image (the endpoint was called without one and a placeholder was stored).
    enhance_only: bool = False
    enhance_image: bool = True
    model: str | None = None  # the release asked for ("v1.2"); None: whichever is served
    output_format: ImageFormat = "png"
    # Regions (issue 13, stepedit.regions, docs/regions.md). A mask travels beside the request,
    # as the source image does. Outpaint: pixels added (left, top, right, bottom), or a target
    # width / height reached by growing the short axis evenly; not both; the prompt may be empty.
    preserve_outside_mask: bool = True  # mask/outpaint: outside pixels copied from the source
    preserve_unedited: bool = False  # no mask: estimate the edited region, keep the rest exact
    outpaint_padding: tuple[int, int, int, int] | None = None
    outpaint_aspect_ratio: float | None = None
    # LoRA adapters by name with a scale each; None: the server's default set, (): none.
    loras: tuple[LoraChoice, ...] | None = None

    @property
    def is_outpaint(self) -> bool:
        return self.outpaint_padding is not None or self.outpaint_aspect_ratio is not None

    # ------------------------------------------------------------------ validation

    def validate(self, spec: VersionSpec | None = None) -> EditRequest:
        """Raise InvalidInput (with `param` set) for the first bad field; return self.

        Needs no model. With `spec` (the release that will run it), release-specific rules are
        checked too: the reasoning passes, reflection with several images, a named release.
        """
        _check_text(self.prompt, "prompt", allow_empty=self.is_outpaint)
        _check_text(self.negative_prompt, "negative_prompt", allow_empty=True)
        _check_int(self.num_inference_steps, "num_inference_steps", 1, MAX_STEPS)
        _check_number(self.guidance_scale, "guidance_scale", 0.0, MAX_GUIDANCE)
        if self.seed is not None:
            _check_int(self.seed, "seed", 0, MAX_SEED)
        _check_int(self.num_images, "num_images", 1, MAX_IMAGES_PER_REQUEST)
        _check_int(self.size_level, "size_level", MIN_SIZE_LEVEL, MAX_SIZE_LEVEL)
        if self.size_level % SIZE_MULTIPLE:
            raise _invalid("size_level", f"must be a multiple of {SIZE_MULTIPLE}")
        _check_number(self.strength, "strength", 0.0, 1.0)
        _check_choice(self.output_size, "output_size", get_args(OutputSize))
        _check_choice(self.output_format, "output_format", get_args(ImageFormat))
        if self.cfg_rescale is not None:
            _check_choice(self.cfg_rescale, "cfg_rescale", get_args(CfgRescale))
        for name in ("enhance_prompt", "enhance_only", "enhance_image"):
            if not isinstance(getattr(self, name), bool):
                raise _invalid(name, "must be a boolean")
        for name in ("enable_thinking", "enable_reflection"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise _invalid(name, "must be a boolean")
        self._check_regions()
        self._check_loras()
        if self.model is not None and version_named(self.model) is None:
            raise _invalid(
                "model",
                f"names no Step1X-Edit release ({', '.join(MODEL_VERSIONS)}): {self.model!r}",
            )
        if spec is not None:
            self._check_release(spec)
        return self

    def _check_regions(self) -> None:
        for name in ("preserve_outside_mask", "preserve_unedited"):
            if not isinstance(getattr(self, name), bool):
                raise _invalid(name, "must be a boolean")
        padding = self.outpaint_padding
        if padding is not None:
            if not isinstance(padding, tuple) or len(padding) != 4:
                raise _invalid("outpaint_padding", "must be 4 integers: left, top, right, bottom")
            for side in padding:
                _check_int(side, "outpaint_padding", 0, MAX_OUTPAINT_PIXELS)
            if not any(padding):
                raise _invalid("outpaint_padding", "adds nothing; give at least one side > 0")
        ratio = self.outpaint_aspect_ratio
        if ratio is not None:
            name = "outpaint_aspect_ratio"
            if padding is not None:
                raise _invalid(name, "give outpaint_padding or outpaint_aspect_ratio, not both")
            _check_number(ratio, name, 1 / MAX_OUTPAINT_ASPECT, MAX_OUTPAINT_ASPECT)

    def _check_loras(self) -> None:
        if self.loras is None:
            return
        if not isinstance(self.loras, tuple) or len(self.loras) > MAX_LORAS_PER_REQUEST:
            raise _invalid("loras", f"must be a list of at most {MAX_LORAS_PER_REQUEST} adapters")
        names = set()
        for choice in self.loras:
            if not isinstance(choice, LoraChoice):
                raise _invalid("loras", "each entry must name an adapter and a scale")
            if not isinstance(choice.name, str) or not re.fullmatch(LORA_NAME_PATTERN, choice.name):
                raise _invalid("loras", f"{choice.name!r} is not an adapter name")
            if choice.name in names:
                raise _invalid("loras", f"{choice.name!r} is given twice")
            names.add(choice.name)
            _check_number(choice.scale, "loras", -MAX_LORA_SCALE, MAX_LORA_SCALE)

    def _check_release(self, spec: VersionSpec) -> None:
        named = version_named(self.model)
        if named is not None and named != spec.name:
            raise _invalid("model", f"this server runs {spec.name}, not {named}")
        _, reflection = self.reasoning(spec)
        if reflection and self.num_images > 1 and not self.enhance_only:
            raise _invalid(
                "num_images",
                "must be 1 with enable_reflection (reflection picks one image per chain); "
                "send separate requests or set enable_reflection=false",
            )

    def reasoning(self, spec: VersionSpec) -> tuple[bool, bool]:
        """(thinking, reflection) as they will run: None means on where the release has them.
        Asking for them from a release without them is an InvalidInput."""
        if not spec.has_reasoning:
            for name in ("enable_thinking", "enable_reflection"):
                if getattr(self, name):
                    raise _invalid(
                        name,
                        f"the reasoning passes need the v1.2 model (this server runs "
                        f"{spec.name}); use enhance_prompt for a rewritten instruction",
                    )
            return False, False
        thinking = True if self.enable_thinking is None else self.enable_thinking
        reflection = True if self.enable_reflection is None else self.enable_reflection
        return thinking, reflection

    # ------------------------------------------------------------------ seeds, storage

    def with_seed(self) -> EditRequest:
        """This request with its seed set: drawn once (`draw_seed`) when it was None."""
        return self if self.seed is not None else dataclasses.replace(self, seed=draw_seed())

    @property
    def seeds(self) -> list[int]:
        """The seed of each image (image i: seed + i). Needs the seed set (`with_seed`)."""
        if self.seed is None:
            raise ValueError("the request has no seed yet; call with_seed() first")
        return [self.seed + i for i in range(self.num_images)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EditRequest:
        """Read back `to_json`; keys of fields that no longer exist are ignored (old rows)."""
        known = {f.name for f in dataclasses.fields(cls)}
        fields: dict[str, Any] = {k: v for k, v in json.loads(text).items() if k in known}
        if isinstance(fields.get("outpaint_padding"), list):  # JSON has no tuples
            fields["outpaint_padding"] = tuple(fields["outpaint_padding"])
        if isinstance(fields.get("loras"), list):
            fields["loras"] = tuple(LoraChoice(**choice) for choice in fields["loras"])
        return cls(**fields)


def _invalid(param: str, message: str) -> InvalidInput:
    return InvalidInput(f"{param}: {message}", param=param)


def _check_text(value: object, param: str, *, allow_empty: bool) -> None:
    if not isinstance(value, str):
        raise _invalid(param, "must be a string")
    if not allow_empty and not value.strip():
        raise _invalid(param, "the instruction must be a non-empty string")
    if len(value) > MAX_PROMPT_CHARS:
        raise _invalid(param, f"is {len(value)} characters long; the limit is {MAX_PROMPT_CHARS}")


def _check_int(value: object, param: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(param, "must be an integer")
    if not low <= value <= high:
        raise _invalid(param, f"must be in {low}..{high}, got {value}")


def _check_number(value: object, param: str, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(param, "must be a number")
    if not low <= float(value) <= high:  # NaN fails both comparisons
        raise _invalid(param, f"must be in [{low:g}, {high:g}], got {value}")


def _check_choice(value: object, param: str, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise _invalid(param, f"must be one of {', '.join(map(str, choices))}, got {value!r}")
