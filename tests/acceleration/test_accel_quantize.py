"""Weight-only quantization (int8, NF4 on CPU; int4 on CUDA) and the 16gb preset.

Bounds are relative L2 errors against the unquantized float32 output, from runs on 2 CPU
cores (measured: a Gaussian-weight Linear 0.7 % int8, 9.2 % NF4; the tiny std-0.2 DiT through one
guided Euler step 1.5 % int8; the tiny Qwen's hidden states 0.9 % int8); each bound leaves
about 2x margin. docs/16gb.md quotes them.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from accel_tiny_edit import make_inputs, make_tiny_dit  # type: ignore[import-not-found]
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from stepedit.acceleration import apply_optimizations
from stepedit.acceleration.attention import AccelerationUnavailable
from stepedit.acceleration.bench import sample_image
from stepedit.acceleration.config import OptimizationConfig, parse_mode, preset
from stepedit.acceleration.quantize import (
    check_quantization,
    quantize_dit,
    quantize_module,
    quantized_bytes,
)
from stepedit.pipeline import EditPipeline
from stepedit.request import EditRequest
from stepedit.weights.lora import LoraSpec, load_loras, official_targets

pytest.importorskip("torchao")

CPU = torch.device("cpu")
LINEAR_BOUND = {"int8": 0.015, "nf4": 0.12}


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().float(), want.detach().float()
    return float((got - want).norm() / want.norm())


def gaussian_linear(seed: int, dtype: torch.dtype = torch.float32) -> nn.Linear:
    generator = torch.Generator().manual_seed(seed)
    linear = nn.Linear(256, 512)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(512, 256, generator=generator) * 0.05)
    return linear.to(dtype)


@pytest.mark.parametrize("scheme", ["int8", "nf4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_quantized_linear_stays_within_its_bound(scheme: str, dtype: torch.dtype) -> None:
    linear = gaussian_linear(0, dtype)
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(1)).to(dtype)
    want = linear(x)
    assert quantize_module(linear, scheme) == 1
    assert isinstance(linear, nn.Linear)  # the module stays: hooks (LoRA paths) keep working
    assert relative(linear(x), want) < LINEAR_BOUND[scheme]


def test_int8_dit_through_a_guided_step_stays_within_3_percent() -> None:
    base = make_tiny_dit()
    inputs = make_inputs(0, steps=1)
    want = inputs.denoise(base)
    quantized = copy.deepcopy(base)
    count = quantize_dit(quantized, "int8", CPU, torch.float32)
    assert count == 13  # every Linear of the double and single blocks, nothing else
    assert type(quantized.img_in.weight.data) is torch.Tensor  # embedders stay float
    assert relative(inputs.denoise(quantized), want) < 0.03


@pytest.mark.parametrize(("scheme", "ratio"), [("int8", 0.27), ("nf4", 0.14)])
def test_block_weights_shrink(scheme: str, ratio: float) -> None:
    """Bytes of the block Linears' weights after / before (float32 before: int8 ~1/4, NF4
    ~1/8, plus scales)."""
    dit = make_tiny_dit()
    blocks = [*dit.double_blocks, *dit.single_blocks]
    before = sum(quantized_bytes(b) for b in blocks)
    quantize_dit(dit, scheme, CPU, torch.float32)
    after = sum(quantized_bytes(b) for b in blocks)
    assert after / before < ratio + 0.15  # biases and norm scales stay float32


def test_int8_mllm_keeps_its_hidden_states_close() -> None:
    pipeline = EditPipeline.from_pretrained("dummy:tiny-v1.1", device="cpu", dtype=torch.float32)
    image = sample_image(256)
    want = pipeline.encoder.encode("add a hat", image).emb
    config = OptimizationConfig(mllm_quant="int8")
    applied = apply_optimizations(pipeline, config)
    assert any(note.startswith("MLLM:") and "int8" in note for note in applied.notes)
    got = pipeline.encoder.encode("add a hat", image).emb
    assert relative(got, want) < 0.02


def test_the_16gb_preset_edits_on_cpu_with_an_nf4_dit() -> None:
    config = preset("16gb")
    assert config.dit_quant == "nf4" and config.offload_mllm and config.load_on_host
    assert not config.fp8 and not config.compile_blocks and not config.is_exact
    pipeline = EditPipeline.from_pretrained(
        "dummy:tiny-v1.1", device="cpu", dtype=torch.float32, offload=config.load_on_host
    )
    applied = apply_optimizations(pipeline, config)
    assert any("nf4" in note for note in applied.notes)
    linear1 = pipeline.dit.single_blocks[0].linear1
    assert type(linear1.weight.data).__name__ == "NF4Tensor"
    request = EditRequest(prompt="add a hat", num_inference_steps=2, size_level=256, seed=1)
    out = pipeline(Image.new("RGB", (64, 64), (90, 140, 30)), request)
    assert out.images[0].size == (64, 64)


def test_modes_name_the_schemes() -> None:
    assert parse_mode("exact+int8").dit_quant == "int8"
    assert parse_mode("16gb-nf4+int8").dit_quant == "int8"
    assert parse_mode("plain+mllm_nf4").mllm_quant == "nf4"
    assert not parse_mode("plain+int8").is_exact


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (OptimizationConfig(dit_quant="int4"), "int4 runs torchao's tinygemm CUDA kernels"),
        (OptimizationConfig(mllm_quant="int4"), "int4 runs torchao's tinygemm CUDA kernels"),
        (OptimizationConfig(fp8=True, dit_quant="nf4"), "choose one"),
        (OptimizationConfig(mllm_quant="nf4", offload_mllm=True), "add -offload_mllm"),
    ],
)
def test_impossible_combinations_are_refused_before_any_change(
    config: OptimizationConfig, message: str
) -> None:
    with pytest.raises(AccelerationUnavailable, match=message):
        check_quantization(config, CPU, torch.float32)


def test_int4_on_cpu_is_refused_by_apply_and_leaves_the_model_alone() -> None:
    pipeline = EditPipeline.from_pretrained("dummy:tiny-v1.1", device="cpu", dtype=torch.float32)
    before = {k: v.clone() for k, v in pipeline.dit.state_dict().items()}
    with pytest.raises(AccelerationUnavailable, match="use nf4 or int8"):
        apply_optimizations(pipeline, parse_mode("plain+int4"))
    after = pipeline.dit.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def _lora_file(path: Path, dit: nn.Module) -> None:
    modules = {n: m for n, m in dit.named_modules() if isinstance(m, nn.Linear)}
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for lora_name, ours in official_targets(modules).items():
        linear = modules[ours]
        tensors[f"{lora_name}.lora_down.weight"] = torch.randn(2, linear.in_features) * 0.1
        tensors[f"{lora_name}.lora_up.weight"] = torch.randn(linear.out_features, 2) * 0.1
        tensors[f"{lora_name}.alpha"] = torch.tensor(2.0)
    del generator
    save_file(tensors, path)


def test_lora_beside_int8_weights_runs_as_paths_not_merged(tmp_path: Path) -> None:
    """The adapter is not rounded into the int8 weights: the int8 model + paths equals a float
    model holding the dequantized int8 weights with the adapter merged."""
    quantized = EditPipeline.from_pretrained("dummy:tiny-v1.1", device="cpu", dtype=torch.float32)
    apply_optimizations(quantized, parse_mode("plain+int8"))
    _lora_file(tmp_path / "a.safetensors", quantized.dit)
    load_loras(quantized, [LoraSpec(tmp_path / "a.safetensors", "a", 1.0)])
    assert quantized.loras.info()[0]["merged"] is False

    reference = EditPipeline.from_pretrained("dummy:tiny-v1.1", device="cpu", dtype=torch.float32)
    modules = dict(quantized.dit.named_modules())
    for name, linear in reference.dit.named_modules():
        weight = getattr(modules[name], "weight", None)
        if isinstance(linear, nn.Linear) and hasattr(weight, "dequantize"):
            with torch.no_grad():
                linear.weight.copy_(weight.dequantize())  # type: ignore[union-attr]
    load_loras(reference, [LoraSpec(tmp_path / "a.safetensors", "a", 1.0)])
    assert reference.loras.info()[0]["merged"] is True

    request = EditRequest(prompt="add a hat", num_inference_steps=2, size_level=256, seed=1)
    image = Image.new("RGB", (64, 64), (90, 140, 30))
    got, want = quantized(image, request).latents, reference(image, request).latents
    assert got is not None and want is not None
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


# --- CUDA ---------------------------------------------------------------------------------------

gpu = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("scheme", ["int8", "nf4", "int4"])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_schemes_on_cuda_in_bf16(scheme: str) -> None:
    linear = gaussian_linear(0, torch.bfloat16).cuda()
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(1)).bfloat16().cuda()
    want = linear(x)
    assert quantize_module(linear, scheme) == 1
    bound = {"int8": 0.015, "nf4": 0.12, "int4": 0.12}[scheme]
    assert relative(linear(x), want) < bound


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_16gb_preset_on_cuda() -> None:
    config = preset("16gb")
    pipeline = EditPipeline.from_pretrained(
        "dummy:tiny-v1.1", device="cuda", dtype=torch.bfloat16, offload=True
    )
    applied = apply_optimizations(pipeline, config)
    assert applied.mllm == "streamed" and any("nf4" in n for n in applied.notes)
    assert pipeline.dit.img_in.weight.device.type == "cuda"
    request = EditRequest(prompt="add a hat", num_inference_steps=2, size_level=256, seed=1)
    assert pipeline(Image.new("RGB", (64, 64)), request).images
