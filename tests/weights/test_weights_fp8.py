"""FP8 DiT files (every tensor cast to float8_e4m3fn, as the official --quantized path stores)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tests.weights.conftest import run_dit

from stepedit.errors import WeightsError
from stepedit.weights import Components, load_components
from stepedit.weights.native import Float8StorageLinear

DIT_FILE = "step1x-edit-v1p1-official.safetensors"
FP8_FILE = "step1x-edit-v1p1-official-FP8.safetensors"


@pytest.fixture(scope="module")
def fp8_dir(original_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fp8")
    shutil.copytree(original_dir, directory, dirs_exist_ok=True)
    state = load_file(directory / DIT_FILE)
    save_file({k: v.to(torch.float8_e4m3fn) for k, v in state.items()}, directory / FP8_FILE)
    (directory / DIT_FILE).unlink()
    return directory


def _rounded_reference(tiny: Components) -> torch.nn.Module:
    """The fp32 model with every weight rounded through float8: what the FP8 file holds."""
    reference = load_components("dummy:tiny-v1.1@3", device="cpu", dtype=torch.float32).dit
    with torch.no_grad():
        for param in reference.parameters():
            param.copy_(param.to(torch.float8_e4m3fn).float())
    return reference


def test_fp8_linear_weights_stay_fp8_and_compute_matches(fp8_dir: Path, tiny: Components) -> None:
    loaded = load_components(fp8_dir, device="cpu", dtype=torch.float32)
    dit = loaded.dit
    qkv = dit.double_blocks[0].img_attn.qkv
    assert isinstance(qkv, Float8StorageLinear)
    assert qkv.weight.dtype == torch.float8_e4m3fn
    assert dit.single_blocks[0].linear1.weight.dtype == torch.float8_e4m3fn
    assert qkv.bias.dtype == torch.float32  # biases, norms and small layers are upcast
    assert dit.img_in.weight.dtype == torch.float32
    out = run_dit(dit)
    torch.testing.assert_close(out, run_dit(_rounded_reference(tiny)), rtol=1e-5, atol=1e-5)
    full = run_dit(tiny.dit)
    cosine = torch.nn.functional.cosine_similarity(out.flatten(), full.flatten(), dim=0)
    assert cosine > 0.98


def test_fp8_storage_survives_a_dtype_cast(fp8_dir: Path) -> None:
    dit = load_components(fp8_dir, device="cpu", dtype=torch.float32).dit
    reference = run_dit(dit)
    dit.to(torch.bfloat16)
    linear2 = dit.single_blocks[0].linear2
    assert linear2.weight.dtype == torch.float8_e4m3fn
    assert linear2.bias.dtype == torch.bfloat16
    dit.to(torch.float32)
    torch.testing.assert_close(run_dit(dit), reference)


def test_fp8_can_be_upcast_at_load(fp8_dir: Path, tiny: Components) -> None:
    dit = load_components(fp8_dir, device="cpu", dtype=torch.float32, keep_fp8=False).dit
    assert {p.dtype for p in dit.parameters()} == {torch.float32}
    torch.testing.assert_close(run_dit(dit), run_dit(_rounded_reference(tiny)))


def test_scaled_fp8_is_refused(fp8_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(fp8_dir, copy)
    state = load_file(copy / FP8_FILE)
    state["img_in.scale_weight"] = torch.ones(1)
    save_file(state, copy / FP8_FILE)
    with pytest.raises(WeightsError, match="scaled-FP8"):
        load_components(copy, device="cpu", dtype=torch.float32)
