"""The device-only switches on a real GPU (skipped without CUDA): kernels, FP8, streaming."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from accel_tiny_edit import make_inputs, make_tiny_dit  # type: ignore[import-not-found]
from torch import nn

from stepedit.acceleration.attention import has_cudnn_sdpa, has_flash3, select_attention
from stepedit.acceleration.compile import compile_blocks
from stepedit.acceleration.offload import StreamedModule
from stepedit.sampling import denoise

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device("cuda")


def _run(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    x = make_inputs(40, steps=4)

    def to(t: torch.Tensor) -> torch.Tensor:
        return t.to(CUDA, dtype)

    def ids(t: torch.Tensor) -> torch.Tensor:
        return t.to(CUDA)  # positions stay float32, as the pipeline makes them

    with torch.no_grad():
        return denoise(
            model,  # type: ignore[arg-type]
            to(x.img), ids(x.img_ids), to(x.ref_img), ids(x.txt_ids), to(x.llm_embedding),
            ids(x.mask), x.timesteps, 4.0,
        ).float()  # fmt: skip


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().mean() / b.abs().mean())


@pytest.fixture
def dit_bf16() -> nn.Module:
    return make_tiny_dit(std=0.05).to(CUDA, torch.bfloat16)


@pytest.mark.parametrize("backend", ["cudnn", "flash3"])
def test_fast_attention_kernels_match_default_sdpa(dit_bf16: nn.Module, backend: str) -> None:
    if backend == "cudnn" and not has_cudnn_sdpa():
        pytest.skip("no cuDNN SDPA in this build")
    if backend == "flash3" and not has_flash3():
        pytest.skip("FlashAttention-3 not installed")
    select_attention("sdpa", CUDA)
    expected = _run(dit_bf16)
    try:
        select_attention(backend, CUDA)  # type: ignore[arg-type]
        got = _run(dit_bf16)
    finally:
        select_attention("sdpa", CUDA)
    assert _relative(got, expected) < 2e-2


def test_compiled_blocks_match_eager_on_gpu(dit_bf16: nn.Module) -> None:
    expected = _run(dit_bf16)
    compile_blocks(dit_bf16)
    assert _relative(_run(dit_bf16), expected) < 2e-2


def test_fp8_dit_stays_close_to_bf16() -> None:
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability 8.9+")
    if importlib.util.find_spec("torchao") is None:
        pytest.skip("torchao not installed")
    from stepedit.acceleration.fp8 import quantize_dit_fp8

    dit = make_tiny_dit(std=0.05).to(torch.bfloat16)  # on the CPU, as the 24gb mode loads it
    expected = _run(make_tiny_dit(std=0.05).to(CUDA, torch.bfloat16))
    assert quantize_dit_fp8(dit, CUDA) > 0
    error = _relative(_run(dit), expected)
    print(f"FP8 tiny DiT relative mean error: {error:.3g}")
    assert error < 0.1


def test_streamed_module_matches_a_resident_one() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))
    x = torch.randn(4, 64)
    expected = model.to(CUDA)(x.to(CUDA))
    model.cpu()
    streamer = StreamedModule(model, CUDA)
    before = torch.cuda.memory_allocated()
    out = model(x)  # host input: the root hook moves it
    assert out.device.type == "cuda"
    assert torch.allclose(out, expected, atol=1e-5)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert torch.cuda.memory_allocated() - before < 2 * out.numel() * 4 + 2**20
    streamer.remove()
