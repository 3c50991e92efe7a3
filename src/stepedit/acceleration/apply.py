"""Apply an OptimizationConfig to a loaded EditPipeline, switch by switch, and place its weights.

Each switch changes one thing and is reported in `AppliedOptimizations`, so the bench, the log
and /health say what actually runs (e.g. "auto" attention resolved to cuDNN, and the kernel
PyTorch's dispatcher picks at the DiT's shape), never a silent fallback.

Placement. A pipeline loaded on the host (`EditPipeline(offload=True)`, the 24gb preset) is
placed here: the DiT goes to the GPU block by block through FP8 quantization, or whole when it
fits; the VAE follows; the MLLM is streamed from pinned host memory (`offload_mllm`) or moved
whole when it fits. What does not fit is refused with the mode that would fit, before any edit.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from stepedit.acceleration.attention import AccelerationUnavailable, select_attention
from stepedit.acceleration.compile import compile_blocks
from stepedit.acceleration.config import OptimizationConfig
from stepedit.acceleration.fp8 import (
    check_fp8_device,
    check_fp8_dtype,
    quantize_dit_fp8,
    torchao_version,
)
from stepedit.acceleration.offload import StreamedModule
from stepedit.acceleration.step_cache import StepCachedDiT
from stepedit.acceleration.vae_tiling import tiled_decoder

if TYPE_CHECKING:
    from stepedit.pipeline import EditPipeline
    from stepedit.reasoning import TextGenerator

logger = logging.getLogger(__name__)

GiB = 2**30
# Free GPU memory kept for activations when a whole component is placed: the DiT's at 1024 px
# with batched CFG (attention workspaces, the 2 x 8832-token hidden states of 57 blocks' worth
# of temporaries under compile) and the MLLM's KV cache for a reasoning answer.
DIT_HEADROOM = 8 * GiB
GENERATION_HEADROOM = 3 * GiB


@dataclass
class AppliedOptimizations:
    config: OptimizationConfig
    device: str = "cpu"
    dtype: str = "float32"
    attention_backend: str = "sdpa"
    attention_kernel: str = "unknown"  # what PyTorch's dispatcher runs at the DiT's shape
    batch_cfg: bool = True  # the CFG layout that runs (the config's, or the reference's)
    compiled_blocks: int = 0
    fp8_linears: int = 0
    step_cache: StepCachedDiT | None = None
    mllm: str = "as loaded"  # "resident", "streamed", "as loaded"
    mllm_streamer: StreamedModule | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: what the bench prints and /health shows."""
        streamer = self.mllm_streamer
        return {
            "device": self.device,
            "dtype": self.dtype,
            "attention": self.attention_backend,
            "attention_kernel": self.attention_kernel,
            "batch_cfg": self.batch_cfg,
            "compiled_blocks": self.compiled_blocks,
            "compile_mode": self.config.compile_mode if self.compiled_blocks else None,
            "compile_dynamic": self.config.compile_dynamic if self.compiled_blocks else None,
            "fp8_linears": self.fp8_linears,
            "torchao": torchao_version() if self.fp8_linears else None,
            "negative_encoding_cache": self.config.cache_negative_encoding,
            "step_cache_threshold": (
                None if self.config.step_cache is None else self.config.step_cache.threshold
            ),
            "vae_tiling": self.config.vae_tiling,
            "regions": self.config.regions,
            "mllm": self.mllm,
            "mllm_host_gib": None if streamer is None else round(streamer.nbytes / GiB, 2),
            "mllm_pinned": None if streamer is None else streamer.arena.is_pinned,
            "notes": list(self.notes),
        }


def apply_optimizations(pipeline: EditPipeline, config: OptimizationConfig) -> AppliedOptimizations:
    """Switch on every optimization `config` asks for; call once, right after loading.

    Order matters: FP8 replaces Linear weights before compile traces the blocks, and the step
    cache wraps the (compiled) DiT last so it gates the very block modules that will run.
    """
    device = pipeline.device
    applied = AppliedOptimizations(
        config=config, device=str(device), dtype=str(pipeline.dtype).removeprefix("torch.")
    )
    if config.fp8:  # fail before any other change
        check_fp8_device(device)
        check_fp8_dtype(pipeline.dtype)
    if config.dit_quant or config.mllm_quant:
        from stepedit.acceleration.quantize import check_quantization

        check_quantization(config, device, pipeline.dtype)
    dit = pipeline.dit

    # 1. Attention kernel, checked at the DiT's head shape in the dtype it runs in.
    selection = select_attention(config.attention, device, dit=dit, dtype=pipeline.dtype)
    applied.attention_backend = selection.backend
    applied.attention_kernel = selection.kernel
    if selection.is_fallback:
        applied.notes.append(
            f"attention: {selection.backend} asked, PyTorch runs {selection.kernel} at the DiT's "
            "shape"
        )

    # 2. CFG layout (the sampler runs both) and exact reuse of repeated negative encodings.
    if config.batch_cfg is not None:
        pipeline.batch_cfg = config.batch_cfg
    applied.batch_cfg = pipeline.batch_cfg
    pipeline.cache_negative_encoding = config.cache_negative_encoding
    # Region-aware sampling after the region partition (acceleration/regions.py).
    pipeline.region_settings = replace(pipeline.region_settings, accelerate=config.regions)

    # 3. FP8 DiT blocks (moves the DiT to the device block by block).
    if config.fp8:
        applied.fp8_linears = quantize_dit_fp8(dit, device)
    # 3b. Weight-only int8 / NF4 / int4 (acceleration/quantize.py), block by block as FP8.
    if config.dit_quant or config.mllm_quant:
        from stepedit.acceleration.quantize import quantize_pipeline

        applied.notes.extend(quantize_pipeline(pipeline, config))

    # 4. torch.compile of the repeated blocks.
    if config.compile_blocks:
        applied.compiled_blocks = compile_blocks(
            dit, config.compile_mode, dynamic=config.compile_dynamic
        )

    # 5. Step cache around the DiT: one cache state per conditioning the sampler passes.
    if config.step_cache is not None:
        cached = StepCachedDiT(dit, config.step_cache)
        pipeline.dit = cached
        applied.step_cache = cached

    # 6. VAE tiling for large images.
    if config.vae_tiling:
        ae = pipeline.ae
        factor = ae.config.downsample_factor
        ae.decode = tiled_decoder(ae.decode, min_pixels=config.vae_tile_min_pixels, factor=factor)

    # 7. Placement: a host-loaded pipeline's DiT and VAE to the GPU, the MLLM streamed or moved.
    _place(pipeline, config, applied)
    logger.info("optimizations applied: %s", applied.summary())
    return applied


def module_bytes(module: nn.Module) -> int:
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def free_device_bytes(device: torch.device) -> int:
    """Free memory on `device` for new tensors: the driver's free plus the allocator's cache."""
    if device.type != "cuda":
        return 2**62
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + cached)


def _place(
    pipeline: EditPipeline, config: OptimizationConfig, applied: AppliedOptimizations
) -> None:
    device = pipeline.device
    if device.type != "cuda":
        if config.offload_mllm:
            applied.notes.append(f"offload_mllm: nothing to do on {device.type}")
        return
    if pipeline.offload:
        # Loaded on the host: everything that is not streamed goes to the GPU now, once.
        if not (config.fp8 or config.dit_quant):  # quantized: already on the device
            need = module_bytes(pipeline.dit) + DIT_HEADROOM
            free = free_device_bytes(device)
            if need > free:
                raise AccelerationUnavailable(
                    f"the {applied.dtype} DiT needs about {need / GiB:.1f} GiB with activations, "
                    f"{device} has {free / GiB:.1f} GiB free: use --optimize 24gb (the DiT in "
                    "FP8, about 13 GB; needs an sm89+ GPU such as an RTX 4090, L4, L40S, H100)"
                )
        pipeline.dit.to(device)
        pipeline.ae.to(device)
        pipeline.offload = False
        torch.cuda.empty_cache()
    text_model = pipeline.text_model
    stream = config.offload_mllm
    if not stream and _device_of(text_model).type != "cuda":
        need = module_bytes(text_model) + GENERATION_HEADROOM
        if need > free_device_bytes(device):
            stream = True
            applied.notes.append(
                "MLLM streamed although offload_mllm is off: it does not fit next to the DiT"
            )
            logger.warning("the MLLM does not fit on %s next to the DiT: streaming it", device)
        else:
            text_model.to(device)
    if not stream:
        applied.mllm = "resident"
        return
    streamer = StreamedModule(text_model, device)
    applied.mllm_streamer = streamer
    applied.mllm = "streamed"
    pipeline.text_generator = functools.partial(
        _generate_resident, streamer, pipeline.text_generator
    )
    if not streamer.arena.is_pinned:
        applied.notes.append("MLLM host copy not pinned: slower streaming (see the log)")
    torch.cuda.empty_cache()


def _device_of(module: nn.Module) -> torch.device:
    first = next(iter(module.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _generate_resident(
    streamer: StreamedModule,
    generate: TextGenerator,
    conversation: Any,
    *,
    max_new_tokens: int,
) -> str:
    """A text generation with the whole MLLM on the GPU when it fits (one copy for the whole
    answer instead of one per token), else streamed with a warning."""
    need = streamer.nbytes + GENERATION_HEADROOM
    free = free_device_bytes(streamer.device)
    if need > free:
        logger.warning(
            "text generation streams the MLLM: %.1f GiB needed, %.1f GiB free on %s; each token "
            "copies %.1f GiB (slow)",
            need / GiB,
            free / GiB,
            streamer.device,
            streamer.nbytes / GiB,
        )
        return generate(conversation, max_new_tokens=max_new_tokens)
    with streamer.resident():
        return generate(conversation, max_new_tokens=max_new_tokens)
