"""Every GPU fast path on a real CUDA device (skipped without one): `pytest -m gpu`.

Tiny models, so the whole file runs in about a minute on an H100 (most of it torch.compile).
The full-size figures come from `benchmarks/gpu-check.sh`. Each test checks that the path runs
(not a silent fallback) and agrees with the plain path.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from accel_tiny_edit import make_inputs, make_tiny_dit  # type: ignore[import-not-found]
from torch import nn

from stepedit.acceleration import apply_optimizations
from stepedit.acceleration.attention import (
    has_cudnn_sdpa,
    has_flash3,
    has_flash4,
    select_attention,
)
from stepedit.acceleration.bench import sample_image
from stepedit.acceleration.compile import compile_blocks, compile_report
from stepedit.acceleration.config import parse_mode
from stepedit.acceleration.device import default_device
from stepedit.acceleration.offload import StreamedModule
from stepedit.acceleration.warmup import warm_up
from stepedit.pipeline import EditPipeline
from stepedit.request import EditRequest
from stepedit.weights.native import Float8StorageLinear

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device("cuda")
EXPECTED_KERNEL = {"cudnn": "cudnn", "flash3": "FA3", "flash4": "flash (FA4)"}


def _run(model: nn.Module, dtype: torch.dtype = torch.bfloat16, size: int = 64) -> torch.Tensor:
    return make_inputs(40, size=size, steps=4).denoise(model, device=CUDA, dtype=dtype).float()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().mean() / b.abs().mean())


def _has_fp8() -> bool:
    has_torchao = importlib.util.find_spec("torchao") is not None
    return has_torchao and torch.cuda.get_device_capability() >= (8, 9)


needs_fp8 = pytest.mark.skipif(
    not torch.cuda.is_available() or not _has_fp8(), reason="FP8 needs sm89+ and torchao"
)


@pytest.fixture
def dit_bf16() -> nn.Module:
    return make_tiny_dit(std=0.05).to(CUDA, torch.bfloat16)


def test_the_default_device_is_the_gpu() -> None:
    assert default_device().type == "cuda"


@pytest.mark.parametrize("backend", ["cudnn", "flash3", "flash4"])
def test_fast_attention_kernels_run_and_match_sdpa(dit_bf16: nn.Module, backend: str) -> None:
    available = {"cudnn": has_cudnn_sdpa, "flash3": has_flash3, "flash4": has_flash4}[backend]
    if not available():
        pytest.skip(f"{backend} not installed")
    select_attention("sdpa", CUDA, dit=dit_bf16)
    expected = _run(dit_bf16)
    try:
        selection = select_attention(backend, CUDA, dit=dit_bf16)  # type: ignore[arg-type]
        got = _run(dit_bf16)
    finally:
        select_attention("sdpa", CUDA, dit=dit_bf16)
    print(f"{backend}: PyTorch runs {selection.kernel}")
    assert selection.kernel == EXPECTED_KERNEL[backend], selection  # not a silent fallback
    assert _relative(got, expected) < 2e-2


def test_auto_attention_is_a_fused_kernel_on_the_gpu(dit_bf16: nn.Module) -> None:
    selection = select_attention("auto", CUDA, dit=dit_bf16)
    select_attention("sdpa", CUDA, dit=dit_bf16)
    print(f"auto -> {selection.backend}, kernel {selection.kernel}")
    assert selection.kernel not in ("math", "unknown")


def test_compiled_blocks_serve_every_size_without_recompiling(dit_bf16: nn.Module) -> None:
    expected = {size: _run(dit_bf16, size=size) for size in (64, 96)}
    compile_blocks(dit_bf16, dynamic=True)
    got = {64: _run(dit_bf16, size=64)}
    graphs = compile_report()["compiled_graphs"]
    got[96] = _run(dit_bf16, size=96)
    assert compile_report()["compiled_graphs"] == graphs  # a new token count: same graph
    for size in expected:
        assert _relative(got[size], expected[size]) < 2e-2


@needs_fp8
def test_fp8_dit_stays_close_to_bf16() -> None:
    from stepedit.acceleration.fp8 import quantize_dit_fp8

    dit = make_tiny_dit(std=0.05).to(torch.bfloat16)  # on the CPU, as the 24gb mode loads it
    expected = _run(make_tiny_dit(std=0.05).to(CUDA, torch.bfloat16))
    assert quantize_dit_fp8(dit, CUDA) > 0
    error = _relative(_run(dit), expected)
    print(f"FP8 tiny DiT relative mean error: {error:.3g}")
    assert error < 0.1


@needs_fp8
def test_fp8_from_an_fp8_checkpoint_then_compiled() -> None:
    """Float8-stored block weights (an FP8 checkpoint) through torchao, then torch.compile."""
    from stepedit.acceleration.fp8 import quantize_dit_fp8

    expected = _run(make_tiny_dit(std=0.05).to(CUDA, torch.bfloat16))
    dit = make_tiny_dit(std=0.05).to(torch.bfloat16)
    for module in [*dit.double_blocks.modules(), *dit.single_blocks.modules()]:
        if type(module) is nn.Linear:
            module.weight = nn.Parameter(module.weight.detach().to(torch.float8_e4m3fn))
            module.__class__ = Float8StorageLinear
    assert quantize_dit_fp8(dit, CUDA) > 0
    compile_blocks(dit, dynamic=True)
    assert _relative(_run(dit), expected) < 0.15


def test_streamed_module_pins_one_buffer_and_matches_a_resident_one() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))
    x = torch.randn(4, 64)
    expected = model.to(CUDA)(x.to(CUDA))
    model.cpu()
    host_stats = getattr(torch.cuda, "host_memory_stats", dict)  # newer PyTorch only
    host_before = host_stats().get("allocated_bytes.all.current", 0)
    streamer = StreamedModule(model, CUDA)
    assert streamer.arena.is_pinned  # cudaHostRegister, not the rounding caching allocator
    assert streamer.arena.buffer.is_pinned()
    assert host_stats().get("allocated_bytes.all.current", 0) == host_before
    before = torch.cuda.memory_allocated()
    out = model(x)  # host input: the root hook moves it
    assert out.device.type == "cuda"
    assert torch.allclose(out, expected, atol=1e-5)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert torch.cuda.memory_allocated() - before < 2 * out.numel() * 4 + 2**20
    with streamer.resident():
        assert all(p.device.type == "cuda" for p in model.parameters())
        assert torch.allclose(model(x), expected, atol=1e-5)
    assert all(p.device.type == "cpu" for p in model.parameters())
    streamer.remove()
    streamer.arena.release()


@pytest.mark.parametrize("mode", ["exact", "24gb"])
def test_a_preset_places_every_component_and_edits(mode: str) -> None:
    config = parse_mode(mode)
    if config.fp8 and not _has_fp8():
        pytest.skip("FP8 needs sm89+ and torchao")
    plain = EditPipeline.from_pretrained("dummy:tiny-v1.1", device=CUDA)
    request = EditRequest(prompt="make it red", num_inference_steps=3, seed=3, size_level=256)
    expected = plain(sample_image(256), request).latents
    del plain
    pipeline = EditPipeline.from_pretrained(
        "dummy:tiny-v1.1", device=CUDA, offload=config.load_on_host
    )
    applied = apply_optimizations(pipeline, config)
    summary = applied.summary()
    print(mode, summary)
    assert pipeline.offload is False
    assert next(pipeline.ae.parameters()).device.type == "cuda"
    assert next(pipeline.ae.parameters()).dtype == torch.float32
    assert summary["mllm"] == "streamed" and summary["mllm_pinned"] is True
    assert summary["attention_kernel"] not in ("math", "unknown")
    warm_up(pipeline, size_level=256)
    graphs = compile_report()["compiled_graphs"]
    got = pipeline(sample_image(320, aspect="16:9"), request).latents  # new size and aspect
    assert compile_report()["compiled_graphs"] == graphs
    got = pipeline(sample_image(256), request).latents
    assert got is not None and expected is not None
    limit = 0.15 if config.fp8 else 2e-2
    assert _relative(got.float(), expected.float()) < limit
