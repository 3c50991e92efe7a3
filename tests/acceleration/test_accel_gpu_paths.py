"""The GPU fast paths' logic, run on the CPU: device choice, placement plans, attention selection
and its report, compile without recompiles, FP8 preparation, pinned streaming, the step cache on
v1.2, the VAE's precision. Each test is named after what a user of a GPU server would notice."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from accel_tiny_edit import make_inputs, make_tiny_dit  # type: ignore[import-not-found]
from torch import nn

from stepedit.acceleration import AccelerationUnavailable, apply_optimizations
from stepedit.acceleration.apply import _generate_resident
from stepedit.acceleration.attention import SdpaScope, sdpa_priority, select_attention
from stepedit.acceleration.bench import sample_image
from stepedit.acceleration.compile import compile_blocks, compile_report
from stepedit.acceleration.config import parse_mode, plan_optimizations, preset
from stepedit.acceleration.device import (
    DeviceUnavailable,
    GpuProbe,
    check_device,
    cuda_problem,
    probe_gpu,
)
from stepedit.acceleration.fp8 import check_fp8_dtype, upcast_float8_storage
from stepedit.acceleration.offload import PinnedArena, StreamedModule
from stepedit.acceleration.warmup import warm_up
from stepedit.pipeline import EditPipeline
from stepedit.request import EditRequest
from stepedit.weights import load_components, write_checkpoint
from stepedit.weights.native import Float8StorageLinear

CPU = torch.device("cpu")
needs_compiler = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("cc") is None,
    reason="no C++ compiler for the CPU inductor backend",
)


# ------------------------------------------------------------------ 2. no silent CPU fallback


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA answers")
def test_an_old_driver_is_refused_with_the_driver_to_install() -> None:
    problem = cuda_problem(GpuProbe(has_gpu=True, driver="535.104.05"), cuda_runtime="13.2")
    assert problem is not None
    assert "580" in problem and "535.104.05" in problem and "CUDA 13.2" in problem
    cpu_build = cuda_problem(GpuProbe(has_gpu=True, driver="580.65.06"), cuda_runtime=None)
    assert cpu_build is not None and "CPU build" in cpu_build
    # No GPU at all: the CPU is the right device, nothing to complain about.
    assert cuda_problem(GpuProbe(has_gpu=False, driver=None), cuda_runtime="13.2") is None


def test_the_driver_version_is_read_from_the_kernel_module(tmp_path: Path) -> None:
    proc = tmp_path / "version"
    proc.write_text(
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build\n"
    )
    probe = probe_gpu(proc_file=proc, dev_dir=tmp_path)
    assert probe.has_gpu and probe.driver_version == (580, 65)
    proc.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19\n")
    assert probe_gpu(proc_file=proc, dev_dir=tmp_path).driver == "535.104.05"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA answers")
def test_asking_for_cuda_without_a_usable_gpu_says_why() -> None:
    with pytest.raises(DeviceUnavailable, match="device cuda requested"):
        check_device(torch.device("cuda"))
    check_device(CPU)  # the CPU is always there


# ------------------------------------------------------------------ 1. one switch for 24 GB


@pytest.mark.parametrize(
    ("optimize", "offload", "device", "mode", "on_host"),
    [
        ("auto", False, "cuda", "exact", False),
        ("auto", True, "cuda", "24gb", True),  # serve --offload
        (None, True, "cuda", "24gb", True),  # edit --offload
        ("24gb", False, "cuda", "24gb", True),  # --optimize 24gb alone loads on the host
        ("exact", True, "cuda", "exact", True),  # explicit: placed (or refused) after loading
        ("auto", False, "cpu", None, False),
        (None, False, "cuda", None, False),
    ],
)
def test_one_switch_is_enough_for_a_24gb_card(
    optimize: str | None, offload: bool, device: str, mode: str | None, on_host: bool
) -> None:
    plan = plan_optimizations(optimize, offload=offload, device_type=device)
    assert (plan.mode, plan.load_on_host) == (mode, on_host)
    assert plan.config == (None if mode is None else parse_mode(mode))


def test_plain_runs_cfg_in_the_references_own_layout() -> None:
    # plain is the reference's path: one batch of 2 for the official code (two batch-1
    # forwards there would make every plain-vs-exact speed-up look larger), two forwards for
    # the diffusers pipelines; exact batches.
    assert preset("plain").batch_cfg is None and preset("exact").batch_cfg
    assert parse_mode("plain-batch_cfg").batch_cfg is False


# ------------------------------------------------------------------ attention: what really runs


def test_the_attention_report_names_the_kernel_pytorch_runs() -> None:
    dit = make_tiny_dit()
    selection = select_attention("auto", CPU, dit=dit, dtype=torch.float32)
    assert selection.backend == "sdpa"
    assert selection.kernel in ("flash", "math")  # PyTorch's CPU kernels
    summary = apply_optimizations(
        EditPipeline.from_pretrained("dummy:tiny-v1.1", device="cpu", dtype=torch.float32),
        preset("plain"),
    ).summary()
    assert summary["attention"] == "sdpa" and summary["attention_kernel"] in ("flash", "math")
    assert summary["device"] == "cpu" and summary["dtype"] == "float32"


@pytest.mark.parametrize("backend", ["cudnn", "flash3", "flash4"])
def test_gpu_attention_backends_are_refused_on_the_cpu(backend: str) -> None:
    with pytest.raises(AccelerationUnavailable, match="needs a CUDA device"):
        select_attention(backend, CPU)  # type: ignore[arg-type]


class _Recorder(nn.Module):
    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.seen: list[list[int]] = []
        self.fail = fail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(list(torch._C._get_sdp_priority_order()))
        if self.fail:
            raise RuntimeError("boom")
        return x


def test_the_sdpa_priority_holds_inside_the_dit_only() -> None:
    # Process-wide toggles would also reach Qwen's masked attention and the float32 VAE's.
    before = list(torch._C._get_sdp_priority_order())
    priority = sdpa_priority("cudnn")
    assert priority is not None
    module = _Recorder()
    scope = SdpaScope(module, priority)
    module(torch.zeros(1))
    assert module.seen[0][0] == priority[0].value  # cuDNN first inside
    assert list(torch._C._get_sdp_priority_order()) == before  # restored outside
    failing = _Recorder(fail=True)
    SdpaScope(failing, priority)
    with pytest.raises(RuntimeError, match="boom"):
        failing(torch.zeros(1))
    assert list(torch._C._get_sdp_priority_order()) == before  # restored after an error too
    scope.remove()
    module(torch.zeros(1))
    assert module.seen[-1] == before


# ------------------------------------------------------------------ 4. no compile on the request


@pytest.mark.slow
@needs_compiler
def test_after_the_warm_up_no_size_or_aspect_ratio_compiles_again() -> None:
    torch._dynamo.reset()  # blocks compiled by an earlier test would serve these ones
    pipeline = EditPipeline.from_pretrained("dummy:tiny-v1.1", device="cpu", dtype=torch.float32)
    request = EditRequest(prompt="make it red", num_inference_steps=2, seed=3, size_level=256)
    eager = {
        aspect: pipeline(sample_image(256, aspect=aspect), request).latents
        for aspect in ("1:1", "16:9")
    }
    applied = apply_optimizations(pipeline, parse_mode("plain+compile"))
    assert applied.summary()["compile_dynamic"] is True
    report = warm_up(pipeline, size_level=320)
    assert report["compiled_graphs"] > 0
    before = compile_report()["compiled_graphs"]
    for aspect, expected in eager.items():
        got = pipeline(sample_image(256, aspect=aspect), request).latents
        assert got is not None and expected is not None
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4)
    # New sizes and a new aspect ratio after the warm-up: the same graphs serve them.
    assert compile_report()["compiled_graphs"] == before
    assert compile_report()["recompile_limit_hits"] == 0


@pytest.mark.slow
@needs_compiler
def test_static_compile_recompiles_for_each_new_size() -> None:
    # The behaviour dynamic shapes remove (and the reason the default changed).
    torch._dynamo.reset()
    dit = make_tiny_dit()
    compile_blocks(dit, dynamic=False)
    make_inputs(1, size=64, steps=1).denoise(dit)
    first = compile_report()["compiled_graphs"]
    make_inputs(1, size=96, steps=1).denoise(dit)
    assert compile_report()["compiled_graphs"] > first


# ------------------------------------------------------------------ 5. FP8 checkpoints + torchao


def _float8_storage_block() -> nn.Module:
    dit = make_tiny_dit(std=0.05)
    block = dit.double_blocks[0]
    for module in block.modules():
        if type(module) is nn.Linear:
            module.weight = nn.Parameter(module.weight.detach().to(torch.float8_e4m3fn))
            module.__class__ = Float8StorageLinear
    return block


def test_fp8_checkpoint_weights_reach_torchao_as_exact_bf16() -> None:
    block = _float8_storage_block()
    stored = {n: p.detach().clone() for n, p in block.named_parameters() if p.dtype.itemsize == 1}
    assert stored and upcast_float8_storage(block) == len(stored)
    for name, param in block.named_parameters():
        if name in stored:
            assert param.dtype == torch.bfloat16
            assert torch.equal(param.float(), stored[name].float())  # float8 values are exact
    assert not any(isinstance(m, Float8StorageLinear) for m in block.modules())


def test_fp8_refuses_a_pipeline_that_is_not_bf16() -> None:
    check_fp8_dtype(torch.bfloat16)
    with pytest.raises(AccelerationUnavailable, match="bf16"):
        check_fp8_dtype(torch.float16)


def test_torchao_quantizes_an_fp8_checkpoint_dit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real torchao path on a DiT whose blocks hold float8 storage (an FP8 checkpoint):
    torchao asserts bf16 weights for per-row scales. Runs on the CPU with torchao's hardware
    check lifted (its float8 matmul has a CPU fallback); on a GPU test_accel_gpu runs it as is."""
    pytest.importorskip("torchao")
    import torchao.quantization.quant_api as quant_api

    from stepedit.acceleration.fp8 import quantize_blocks

    monkeypatch.setattr(quant_api, "_check_hardware_support", lambda granularity: None)
    dit = make_tiny_dit(std=0.05).to(torch.bfloat16)
    expected = make_inputs(40, steps=2).denoise(dit, dtype=torch.bfloat16).float()
    for module in dit.double_blocks.modules():
        if type(module) is nn.Linear:
            module.weight = nn.Parameter(module.weight.detach().to(torch.float8_e4m3fn))
            module.__class__ = Float8StorageLinear
    assert quantize_blocks(dit, CPU) > 0
    got = make_inputs(40, steps=2).denoise(dit, dtype=torch.bfloat16).float()
    assert float((got - expected).abs().mean() / expected.abs().mean()) < 0.1


# ------------------------------------------------------------------ 3 and 7. streaming the MLLM


def test_the_pinned_arena_holds_every_tensor_without_power_of_two_rounding() -> None:
    # Sizes like the MLLM's: a caching host allocator would round each up to a power of two.
    tensors = [torch.randn(3000, 130), torch.randn(1000), torch.arange(7, dtype=torch.int64)]
    arena = PinnedArena(tensors)
    for view, tensor in zip(arena.views, tensors, strict=True):
        view.copy_(tensor)
        assert view.dtype == tensor.dtype and torch.equal(view, tensor)
        assert view.data_ptr() % 512 == 0
    exact = sum(t.numel() * t.element_size() for t in tensors)
    rounded = sum(2 ** math.ceil(math.log2(t.numel() * t.element_size())) for t in tensors)
    assert exact <= arena.nbytes < exact + 512 * len(tensors) < rounded


def _weight_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))


def test_streamed_weights_live_in_one_host_buffer_and_compute_the_same() -> None:
    model = _model()
    x = torch.randn(3, 8)
    expected = model(x)
    streamer = StreamedModule(model, CPU)
    base = streamer.arena.buffer.untyped_storage().data_ptr()
    for param in model.parameters():
        assert param.untyped_storage().data_ptr() == base  # a view into the arena
    assert torch.equal(model(x), expected)
    assert streamer.copied_bytes == _weight_bytes(model)  # every weight copied once per forward


def test_text_generation_copies_the_mllm_once_not_once_per_token() -> None:
    model = _model()
    streamer = StreamedModule(model, CPU)
    x = torch.randn(1, 8)

    def generate(conversation: object, *, max_new_tokens: int) -> str:
        for _ in range(max_new_tokens):  # one forward per generated token
            model(x)
        return "done"

    assert generate(None, max_new_tokens=5) == "done"
    streamed = streamer.copied_bytes
    assert streamed == 5 * _weight_bytes(model)
    assert _generate_resident(streamer, generate, None, max_new_tokens=5) == "done"
    assert streamer.copied_bytes - streamed == _weight_bytes(model)  # once for all five tokens
    base = streamer.arena.buffer.untyped_storage().data_ptr()
    assert all(p.untyped_storage().data_ptr() == base for p in model.parameters())


# ------------------------------------------------------------------ 6. the step cache on v1.2


@pytest.mark.slow
@pytest.mark.parametrize("model", ["dummy:tiny-v1.1", "dummy:tiny-v1.2"])
def test_the_step_cache_skips_on_v12_as_on_v11(model: str) -> None:
    pipeline = EditPipeline.from_pretrained(model, device="cpu", dtype=torch.float32)
    # The tiny random DiT's residual moves by about 0.4 per step: a high threshold skips.
    applied = apply_optimizations(pipeline, parse_mode("plain+step_cache=1.5"))
    assert applied.step_cache is not None
    reasoning = {"enable_thinking": False, "enable_reflection": False}
    request = EditRequest(
        prompt="make it red",
        num_inference_steps=12,
        seed=3,
        size_level=256,
        **(reasoning if model.endswith("v1.2") else {}),  # type: ignore[arg-type]
    )
    pipeline(sample_image(256), request)
    stats = applied.step_cache.stats()
    # v1.1 batches both prompts (one forward per step); v1.2's unpadded prompts of different
    # lengths run as two forwards per step, each branch cached on its own.
    forwards_per_step = 2 if model.endswith("v1.2") else 1
    assert stats.total == 12 * forwards_per_step
    assert stats.skipped >= 6 * forwards_per_step


# ------------------------------------------------------------------ 8. the VAE stays float32


def test_a_bf16_pipeline_reads_the_vae_in_float32_from_the_file(tmp_path: Path) -> None:
    built = load_components("dummy:tiny-v1.1", device="cpu", dtype=torch.float32)
    folder = write_checkpoint(built, tmp_path / "ckpt", "original")
    expected = {k: v.clone() for k, v in built.ae.state_dict().items()}
    assert any(not torch.equal(v, v.bfloat16().float()) for v in expected.values())
    loaded = load_components(folder, device="cpu", dtype=torch.bfloat16)
    for key, value in loaded.ae.state_dict().items():
        assert value.dtype == torch.float32, key
        assert torch.equal(value, expected[key]), key  # not rounded through bf16
    assert next(loaded.dit.parameters()).dtype == torch.bfloat16
