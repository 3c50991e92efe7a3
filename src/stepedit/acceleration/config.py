"""Which speed and memory optimizations to apply, one switch each, and the named presets.

Every switch is independent so the bench can measure each on its own. Exact switches change
speed or memory but not the result beyond float rounding; approximate ones (`fp8`, `step_cache`)
trade quality for speed and the bench reports their deviation from the exact path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal

# "auto" picks the fastest kernel the device has: FlashAttention-3 if installed on Hopper, then
# cuDNN SDPA, then PyTorch's own choice. "sdpa" leaves PyTorch's dispatcher alone.
AttentionChoice = Literal["auto", "sdpa", "flash3", "cudnn"]

CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]

PresetName = Literal["plain", "exact", "fast", "24gb"]


@dataclass(frozen=True)
class StepCacheConfig:
    """First-block cache: skip the rest of the DiT while the first block's residual barely moves.

    `threshold` is the relative L1 change of the first double block's output residual under
    which the cached residual of the remaining blocks is reused; 0 never skips (exact).
    """

    threshold: float = 0.08
    warmup_steps: int = 2  # always compute the first steps: the image layout is decided there
    max_consecutive_skips: int = 3  # bounds the drift of one reused residual

    def __post_init__(self) -> None:
        if self.threshold < 0:
            raise ValueError(f"step cache threshold must be >= 0, got {self.threshold}")
        if self.warmup_steps < 1:
            raise ValueError(f"warmup_steps must be >= 1, got {self.warmup_steps}")
        if self.max_consecutive_skips < 1:
            raise ValueError(
                f"max_consecutive_skips must be >= 1, got {self.max_consecutive_skips}"
            )


@dataclass(frozen=True)
class OptimizationConfig:
    attention: AttentionChoice = "sdpa"
    batch_cfg: bool = False  # cond and uncond in one DiT forward instead of two
    compile_blocks: bool = False  # torch.compile each double/single block (dynamic=False)
    compile_mode: CompileMode = "default"
    fp8: bool = False  # torchao float8 dynamic activation + weight for the DiT blocks' Linears
    cache_negative_encoding: bool = False  # reuse MLLM encodings of repeated (prompt, image)
    step_cache: StepCacheConfig | None = None
    vae_tiling: bool = False  # decode large latents tile by tile
    vae_tile_min_pixels: int = 1536 * 1536  # only images above this many pixels are tiled
    offload_mllm: bool = False  # keep the MLLM in pinned CPU memory; on the GPU only to encode
    # Load every weight to host memory first (EditPipeline offload=True) and let the switches
    # place them: for GPUs smaller than the bf16 model. A loader hint; apply_optimizations
    # works on either placement.
    load_on_host: bool = False

    @property
    def is_exact(self) -> bool:
        """True when the result equals the plain path up to float rounding.

        VAE tiling is not counted: it only changes images above `vae_tile_min_pixels`, which
        the bench sizes stay below, and it is off in the exact preset.
        """
        return not self.fp8 and self.step_cache is None


PLAIN = OptimizationConfig()
# The MLLM is streamed in exact mode too: bf16 DiT (24.9 GB) + resident MLLM (16.6 GB) is over
# the 40 GB goal before any activation, and streaming changes no value.
EXACT = OptimizationConfig(
    attention="auto",
    batch_cfg=True,
    compile_blocks=True,
    cache_negative_encoding=True,
    offload_mllm=True,
)
FAST = replace(EXACT, fp8=True, step_cache=StepCacheConfig())
# 24 GB cards: DiT resident in FP8 (about 13 GB: 11.8 B block parameters at 1 byte, 0.6 B at 2),
# the 7B MLLM (about 16.6 GB in bf16, so it cannot sit next to the DiT whole) streamed in from
# pinned host memory for the one encode per edit, VAE tiled above 1536 px. No step cache.
LOW_MEMORY = replace(EXACT, fp8=True, vae_tiling=True, load_on_host=True)

PRESETS: dict[str, OptimizationConfig] = {
    "plain": PLAIN,
    "exact": EXACT,
    "fast": FAST,
    "24gb": LOW_MEMORY,
}


# Switch names for `parse_mode`: "+name" turns a switch on, "-name" off.
_SWITCHES: dict[str, tuple[str, object, object]] = {
    # name: (field, value when on, value when off)
    "batch_cfg": ("batch_cfg", True, False),
    "compile": ("compile_blocks", True, False),
    "fp8": ("fp8", True, False),
    "step_cache": ("step_cache", StepCacheConfig(), None),
    "encoding_cache": ("cache_negative_encoding", True, False),
    "vae_tiling": ("vae_tiling", True, False),
    "offload_mllm": ("offload_mllm", True, False),
    "flash3": ("attention", "flash3", "sdpa"),
    "cudnn": ("attention", "cudnn", "sdpa"),
    "best_attention": ("attention", "auto", "sdpa"),
}


def parse_mode(text: str) -> OptimizationConfig:
    """A preset name with switches added or removed, to measure each switch on its own.

    "plain+compile" is the plain path with compiled blocks; "exact-compile" the exact preset
    without them; "fast" the preset as is. A step cache threshold is written "step_cache=0.05".
    """
    parts = re.split(r"(?=[+-][a-z])", text.strip())
    config = preset(parts[0])
    for part in parts[1:]:
        sign, name = part[0], part[1:]
        threshold: float | None = None
        if name.startswith("step_cache="):
            name, value = name.split("=", 1)
            threshold = float(value)
        if name not in _SWITCHES:
            known = ", ".join(sorted(_SWITCHES))
            raise ValueError(f"unknown switch {name!r} in mode {text!r}; known: {known}")
        field_name, on, off = _SWITCHES[name]
        value_on: object = on if threshold is None else StepCacheConfig(threshold=threshold)
        config = replace(config, **{field_name: value_on if sign == "+" else off})  # type: ignore[arg-type]
    return config


def preset(name: str) -> OptimizationConfig:
    try:
        return PRESETS[name]
    except KeyError:
        known = sorted(PRESETS)
        raise ValueError(f"unknown optimization preset {name!r}; known: {known}") from None
