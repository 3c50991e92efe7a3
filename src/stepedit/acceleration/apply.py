"""Apply an OptimizationConfig to a loaded pipeline from outside, switch by switch.

The pipeline is duck-typed: it needs `dit`, `ae`, `encoder` (or `text_model`) and `device`
attributes, either on itself or on its `components`, and a `batch_cfg` attribute for the CFG
layout. Each switch changes one thing and is reported in `AppliedOptimizations`, so the bench can
say what actually ran (e.g. "auto" attention resolved to "cudnn").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from stepedit.acceleration.attention import select_attention
from stepedit.acceleration.compile import compile_blocks
from stepedit.acceleration.config import OptimizationConfig
from stepedit.acceleration.encoding_cache import CachedEncoder
from stepedit.acceleration.fp8 import check_fp8_device, quantize_dit_fp8
from stepedit.acceleration.offload import StreamedModule
from stepedit.acceleration.step_cache import StepCachedDiT
from stepedit.acceleration.vae_tiling import tiled_decoder

logger = logging.getLogger(__name__)


@dataclass
class AppliedOptimizations:
    config: OptimizationConfig
    attention_backend: str = "sdpa"
    compiled_blocks: int = 0
    fp8_linears: int = 0
    step_cache: StepCachedDiT | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "attention": self.attention_backend,
            "batch_cfg": self.config.batch_cfg,
            "compiled_blocks": self.compiled_blocks,
            "compile_mode": self.config.compile_mode if self.compiled_blocks else None,
            "fp8_linears": self.fp8_linears,
            "negative_encoding_cache": self.config.cache_negative_encoding,
            "step_cache_threshold": (
                None if self.config.step_cache is None else self.config.step_cache.threshold
            ),
            "vae_tiling": self.config.vae_tiling,
            "offload_mllm": self.config.offload_mllm,
            "notes": self.notes,
        }


def _owner(pipeline: Any, name: str) -> Any:
    """The object holding attribute `name`: the pipeline or its `components`."""
    if hasattr(pipeline, name):
        return pipeline
    components = getattr(pipeline, "components", None)
    if components is not None and hasattr(components, name):
        return components
    raise AttributeError(f"{type(pipeline).__name__} has no {name!r} (nor components.{name})")


def get_part(pipeline: Any, name: str) -> Any:
    return getattr(_owner(pipeline, name), name)


def set_part(pipeline: Any, name: str, value: Any) -> None:
    setattr(_owner(pipeline, name), name, value)


def pipeline_device(pipeline: Any) -> torch.device:
    device = getattr(pipeline, "device", None)
    if device is not None:
        return torch.device(device)
    dit: torch.nn.Module = get_part(pipeline, "dit")
    return next(dit.parameters()).device


def apply_optimizations(pipeline: Any, config: OptimizationConfig) -> AppliedOptimizations:
    """Switch on every optimization `config` asks for; call once, right after loading.

    Order matters: FP8 replaces Linear weights before compile traces the blocks, and the step
    cache wraps the (compiled) DiT last so it gates the very block modules that will run.
    """
    device = pipeline_device(pipeline)
    applied = AppliedOptimizations(config=config)
    if config.fp8:
        check_fp8_device(device)  # fail before any other change

    # 1. Attention kernel (process-wide).
    applied.attention_backend = select_attention(config.attention, device)

    # 2. CFG layout: the sampler runs both layouts; the pipeline passes this flag to it.
    batch_cfg = True  # sampling.denoise's default, used by a pipeline without the switch
    if hasattr(pipeline, "batch_cfg"):
        pipeline.batch_cfg = config.batch_cfg
        batch_cfg = config.batch_cfg
    elif not config.batch_cfg:
        applied.notes.append("pipeline has no batch_cfg switch: CFG stays batched")

    # 3. FP8 DiT blocks.
    dit = get_part(pipeline, "dit")
    if config.fp8:
        applied.fp8_linears = quantize_dit_fp8(dit, device)

    # 4. torch.compile of the repeated blocks.
    if config.compile_blocks:
        applied.compiled_blocks = compile_blocks(dit, config.compile_mode)

    # 5. Step cache around the DiT: one cache state per CFG branch call pattern.
    if config.step_cache is not None:
        cached = StepCachedDiT(dit, config.step_cache, branches=1 if batch_cfg else 2)
        set_part(pipeline, "dit", cached)
        applied.step_cache = cached

    # 6. Encodings of repeated (prompt, image) pairs, the negative prompt above all.
    if config.cache_negative_encoding:
        _enable_encoding_cache(pipeline, applied)

    # 7. VAE tiling for large images.
    if config.vae_tiling:
        ae = get_part(pipeline, "ae")
        factor = int(getattr(getattr(ae, "config", None), "downsample_factor", 8))
        ae.decode = tiled_decoder(ae.decode, min_pixels=config.vae_tile_min_pixels, factor=factor)

    # 8. MLLM streamed from pinned host memory, layer by layer.
    if config.offload_mllm:
        _stream_mllm(pipeline, device, applied)
    logger.info("optimizations applied: %s", applied.summary())
    return applied


def _stream_mllm(pipeline: Any, device: torch.device, applied: AppliedOptimizations) -> None:
    if device.type != "cuda":
        applied.notes.append(f"offload_mllm: nothing to do on {device.type}")
        return
    StreamedModule(get_part(pipeline, "text_model"), device)
    if getattr(pipeline, "offload", False):
        # Loaded with the pipeline's whole-model offload (everything on the host, for a small
        # GPU): the DiT (already there if FP8 moved it) and the VAE now stay on the GPU, and
        # only the MLLM keeps moving, layer by layer.
        get_part(pipeline, "dit").to(device)
        get_part(pipeline, "ae").to(device)
        pipeline.offload = False
    torch.cuda.empty_cache()


def _enable_encoding_cache(pipeline: Any, applied: AppliedOptimizations) -> None:
    # Prefer the pipeline's own switch (the encoder caches exactly); else wrap the encoder.
    for flag in ("cache_negative_encoding", "use_encoding_cache"):
        if hasattr(pipeline, flag):
            setattr(pipeline, flag, True)
            return
    encoder = get_part(pipeline, "encoder")
    if hasattr(encoder, "clear_cache"):
        applied.notes.append("encoding cache: the encoder caches the negative prompt itself")
        return
    if not isinstance(encoder, CachedEncoder):
        set_part(pipeline, "encoder", CachedEncoder(encoder))
    applied.notes.append("encoding cache: wrapped the encoder")
