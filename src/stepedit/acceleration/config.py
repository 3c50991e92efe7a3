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
# cuDNN SDPA, then PyTorch's own choice. "sdpa" leaves PyTorch's dispatcher alone. "flash4" is
# FlashAttention-4 (the `flash-attn-4` package, Hopper and Blackwell) plugged into PyTorch's SDPA;
# it is only used when asked for by name until a GPU run shows it beats cuDNN.
AttentionChoice = Literal["auto", "sdpa", "flash3", "flash4", "cudnn"]

CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]

PresetName = Literal["plain", "exact", "fast", "24gb", "16gb"]

# Weight-only quantization (acceleration/quantize.py): "int8" and "nf4" run on CPU and CUDA,
# "int4" (torchao tinygemm) on CUDA in bf16 only.
WeightQuant = Literal["int8", "nf4", "int4"]


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
    # cond and uncond in one DiT forward of batch 2 (True) or two of batch 1 (False); None keeps
    # the layout of the reference the pipeline reproduces (the official code's one batch of 2,
    # the diffusers pipelines' two forwards), so `plain` is the reference's own path.
    batch_cfg: bool | None = None
    compile_blocks: bool = False  # torch.compile each double/single block
    compile_mode: CompileMode = "default"
    # Symbolic token counts in the compiled blocks: one graph serves every image size and
    # aspect ratio (and every v1.2 prompt length), so no edit recompiles after the warm-up.
    compile_dynamic: bool = True
    fp8: bool = False  # torchao float8 dynamic activation + weight for the DiT blocks' Linears
    cache_negative_encoding: bool = False  # reuse MLLM encodings of repeated (prompt, image)
    step_cache: StepCacheConfig | None = None
    vae_tiling: bool = False  # decode large latents tile by tile
    vae_tile_min_pixels: int = 1536 * 1536  # only images above this many pixels are tiled
    # The MLLM's weights live in pinned host memory and are streamed to the GPU layer by layer
    # for each encode; a text generation (v1.2 reasoning, the prompt enhancer) runs with the
    # whole MLLM resident when it fits next to the DiT, as streaming it costs a copy per token.
    offload_mllm: bool = False
    # Load every weight to host memory first (EditPipeline offload=True) and let the switches
    # place them: for GPUs smaller than the bf16 model. A loader hint; apply_optimizations
    # works on either placement.
    load_on_host: bool = False
    # Region-aware sampling (REGIONS package, acceleration/regions.py, docs/regions.md): after
    # the region partition the DiT runs over the edited tokens only. Approximate.
    regions: bool = False
    # Weight-only quantization of the DiT's block Linears and of the MLLM (docs/16gb.md).
    # Approximate. A quantized MLLM is resident (offload_mllm must be off).
    dit_quant: WeightQuant | None = None
    mllm_quant: WeightQuant | None = None

    @property
    def is_exact(self) -> bool:
        """True when the result equals the plain path up to float rounding.

        VAE tiling is not counted: it only changes images above `vae_tile_min_pixels`, which
        the bench sizes stay below, and it is off in the exact preset.
        """
        return (
            not self.fp8
            and self.step_cache is None
            and not self.regions
            and self.dit_quant is None
            and self.mllm_quant is None
        )


PLAIN = OptimizationConfig()  # the reference's path: its CFG layout, PyTorch SDPA, eager
# The MLLM is streamed in exact mode too: bf16 DiT (24.9 GB) + resident MLLM (16.6 GB) is over
# the 40 GB goal before any activation, and streaming changes no value.
EXACT = OptimizationConfig(
    attention="auto",
    batch_cfg=True,
    compile_blocks=True,
    cache_negative_encoding=True,
    offload_mllm=True,
)
FAST = replace(EXACT, fp8=True, step_cache=StepCacheConfig(), regions=True)
# 24 GB cards: DiT resident in FP8 (about 13 GB: 11.8 B block parameters at 1 byte, 0.6 B at 2),
# the 7B MLLM (about 16.6 GB in bf16, so it cannot sit next to the DiT whole) streamed in from
# pinned host memory for the one encode per edit, VAE tiled above 1536 px. No step cache.
LOW_MEMORY = replace(EXACT, fp8=True, vae_tiling=True, load_on_host=True)
# 16 GB cards (docs/16gb.md): DiT blocks in NF4 (about 5.7 GiB + 1.1 GiB of bf16 embedders and
# connector), quantized on the GPU block by block from host memory; the bf16 MLLM streamed from
# pinned host memory as in 24gb; no compile (untested over NF4 weights); any GPU (no FP8).
SIXTEEN_GB = replace(
    EXACT, compile_blocks=False, dit_quant="nf4", vae_tiling=True, load_on_host=True
)

PRESETS: dict[str, OptimizationConfig] = {
    "plain": PLAIN,
    "exact": EXACT,
    "fast": FAST,
    "24gb": LOW_MEMORY,
    "16gb": SIXTEEN_GB,
}


# Switch names for `parse_mode`: "+name" turns a switch on, "-name" off.
_SWITCHES: dict[str, tuple[str, object, object]] = {
    # name: (field, value when on, value when off)
    "batch_cfg": ("batch_cfg", True, False),
    "compile": ("compile_blocks", True, False),
    "dynamic": ("compile_dynamic", True, False),
    "fp8": ("fp8", True, False),
    "step_cache": ("step_cache", StepCacheConfig(), None),
    "encoding_cache": ("cache_negative_encoding", True, False),
    "vae_tiling": ("vae_tiling", True, False),
    "offload_mllm": ("offload_mllm", True, False),
    "regions": ("regions", True, False),
    "int8": ("dit_quant", "int8", None),
    "nf4": ("dit_quant", "nf4", None),
    "int4": ("dit_quant", "int4", None),
    "mllm_int8": ("mllm_quant", "int8", None),
    "mllm_nf4": ("mllm_quant", "nf4", None),
    "flash3": ("attention", "flash3", "sdpa"),
    "cudnn": ("attention", "cudnn", "sdpa"),
    "flash4": ("attention", "flash4", "sdpa"),
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


@dataclass(frozen=True)
class OptimizationPlan:
    """What a loader does: where the weights load, and which switches apply after loading."""

    mode: str | None  # the mode applied (None: the pipeline as loaded)
    config: OptimizationConfig | None
    load_on_host: bool  # EditPipeline.from_pretrained(offload=...)


def plan_optimizations(
    optimize: str | None, *, offload: bool, device_type: str
) -> OptimizationPlan:
    """One rule for every command that loads a model (edit, serve, worker, bench).

    `optimize` is a mode ("exact", "24gb+compile"...), "auto" or None. "auto" is the exact
    preset on CUDA; None leaves the pipeline as loaded. On CUDA, `--offload` alone means the
    24 GB plan (its whole point is a GPU smaller than the 25 GB bf16 DiT), and a mode that
    loads on the host (24gb) does so whether or not `--offload` was given: either switch alone
    is enough.
    """
    mode = optimize
    if mode in (None, "auto") and offload and device_type == "cuda":
        mode = "24gb"
    elif mode == "auto":
        mode = "exact" if device_type == "cuda" else None
    config = None if mode is None else parse_mode(mode)
    load_on_host = offload or (config is not None and config.load_on_host)
    return OptimizationPlan(mode=mode, config=config, load_on_host=load_on_host)
