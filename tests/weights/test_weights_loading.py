"""load_components: both layouts give back the model that was written; bad files are refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tests.weights.conftest import run_dit

from stepedit.errors import WeightsError
from stepedit.weights import Components, load_components


def _assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    left, right = a.state_dict(), b.state_dict()
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), key


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_each_layout_loads_back_identical(
    layout: str, tiny: Components, original_dir: Path, diffusers_dir: Path
) -> None:
    directory = original_dir if layout == "original" else diffusers_dir
    loaded = load_components(directory, device="cpu", dtype=torch.float32)
    assert loaded.source_layout == layout
    assert loaded.version == "v1.1"
    _assert_same(loaded.dit, tiny.dit)
    _assert_same(loaded.ae, tiny.ae)
    _assert_same(loaded.text_model, tiny.text_model)
    assert torch.equal(run_dit(loaded.dit), run_dit(tiny.dit))
    text = "<|im_start|>user\nmake the “sky” purple<|im_end|>"
    assert loaded.processor.tokenizer(text).input_ids == tiny.processor.tokenizer(text).input_ids
    assert loaded.processor.image_processor.size == tiny.processor.image_processor.size


def test_dtype_is_applied(original_dir: Path) -> None:
    loaded = load_components(original_dir, device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.dit.parameters()} == {torch.bfloat16}
    # The VAE stays float32 whatever the DiT's dtype, as the official code keeps it
    # (docs/weights.md, "Precision").
    assert {p.dtype for p in loaded.ae.parameters()} == {torch.float32}
    assert not any(p.requires_grad for p in loaded.dit.parameters())


def _edit_dit_file(directory: Path, tmp_path: Path, change: str) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    path = copy / "step1x-edit-v1p1-official.safetensors"
    state = load_file(path)
    if change == "missing":
        del state["double_blocks.0.img_mod.lin.bias"]
    elif change == "extra":
        state["double_blocks.0.lora_down.weight"] = torch.zeros(2, 2)
    else:
        state["txt_in.weight"] = torch.zeros(3, 3)
    save_file(state, path)
    return copy


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("missing", r"1 missing key\(s\): 'double_blocks\.0\.img_mod\.lin\.bias'"),
        ("extra", r"1 unexpected key\(s\): 'double_blocks\.0\.lora_down\.weight'"),
        ("misshaped", r"'txt_in\.weight' is \[3, 3\], model wants \[64, 64\]"),
    ],
)
def test_bad_original_dit_is_refused_naming_the_key(
    change: str, message: str, original_dir: Path, tmp_path: Path
) -> None:
    broken = _edit_dit_file(original_dir, tmp_path, change)
    with pytest.raises(WeightsError, match=message):
        load_components(broken, device="cpu", dtype=torch.float32)


def test_bad_diffusers_vae_is_refused_naming_the_key(diffusers_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(diffusers_dir, copy)
    path = copy / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    del state["decoder.mid_block.attentions.0.to_k.bias"]
    state["decoder.quant_conv.weight"] = torch.zeros(1)
    save_file(state, path)
    with pytest.raises(WeightsError) as caught:
        load_components(copy, device="cpu", dtype=torch.float32)
    assert "decoder.mid_block.attentions.0.to_k.bias" in caught.value.message
    assert "decoder.quant_conv.weight" in caught.value.message


def test_missing_text_encoder_is_refused_naming_the_default_and_its_command(
    original_dir: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(original_dir, copy)
    shutil.rmtree(copy / "Qwen2.5-VL-7B-Instruct")
    with pytest.raises(WeightsError, match=r"text encoder Qwen/Qwen2\.5-VL-7B-Instruct: not in"):
        load_components(copy, device="cpu", dtype=torch.float32)
    with pytest.raises(WeightsError, match=r"stepedit download Qwen/Qwen2\.5-VL-7B-Instruct"):
        load_components(copy, device="cpu", dtype=torch.float32)


def test_dummy_sources_are_seeded() -> None:
    a = load_components("dummy:tiny-v1.2@5", device="cpu", dtype=torch.float32)
    b = load_components("dummy:tiny-v1.2@5", device="cpu", dtype=torch.float32)
    c = load_components("dummy:tiny-v1.2@6", device="cpu", dtype=torch.float32)
    assert a.version == "v1.2" and a.source_layout == "dummy"
    _assert_same(a.dit, b.dit)
    _assert_same(a.text_model, b.text_model)
    assert not torch.equal(a.dit.img_in.weight, c.dit.img_in.weight)
    with pytest.raises(WeightsError, match="unknown dummy preset"):
        load_components("dummy:huge", device="cpu", dtype=torch.float32)
    with pytest.raises(WeightsError, match=r"not v1\.1"):
        load_components("dummy:tiny-v1.2", device="cpu", dtype=torch.float32, version="v1.1")


def test_full_size_dummy_is_the_published_architecture() -> None:
    from stepedit.model.presets import DIT_PRESETS
    from stepedit.model.qwen_tiny import build_tiny_processor
    from stepedit.weights.dummy import parse_dummy, qwen_7b_config

    spec = parse_dummy("dummy:v1.1")
    assert spec.dit_config == DIT_PRESETS["v1.1"] and spec.ae_config.ch == 128
    config = qwen_7b_config(build_tiny_processor())
    assert config.text_config.hidden_size == 3584
    assert config.text_config.num_hidden_layers == 28
    assert config.text_config.vocab_size == 152064
    assert config.vision_config.out_hidden_size == 3584

    from stepedit.weights.dummy import dummy_dit, dummy_text_model

    meta = torch.device("meta")  # shapes only: the full model would not fit a CPU test
    qwen, _ = dummy_text_model(spec, device=meta, dtype=torch.bfloat16)
    assert round(sum(p.numel() for p in qwen.parameters()) / 1e9, 2) == 8.29  # Qwen2.5-VL-7B
    dit = dummy_dit(spec.dit_config, device=meta, dtype=torch.bfloat16, seed=0)
    assert round(sum(p.numel() for p in dit.parameters()) / 1e9, 2) == 12.43
    assert {p.dtype for p in dit.parameters()} == {torch.bfloat16}


def test_sharded_diffusers_transformer_loads(
    diffusers_dir: Path, tmp_path: Path, tiny: Components
) -> None:
    import json

    copy = tmp_path / "copy"
    shutil.copytree(diffusers_dir, copy)
    folder = copy / "transformer"
    state = load_file(folder / "diffusion_pytorch_model.safetensors")
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    keys = sorted(state)
    shards = {
        "part-1.safetensors": keys[: len(keys) // 2],
        "part-2.safetensors": keys[len(keys) // 2 :],
    }
    for name, part in shards.items():
        save_file({k: state[k] for k in part}, folder / name)
    weight_map = {k: name for name, part in shards.items() for k in part}
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    loaded = load_components(copy, device="cpu", dtype=torch.float32)
    _assert_same(loaded.dit, tiny.dit)
