"""`stepedit convert` both ways, and the same edit from every layout."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from tests.weights.conftest import run_dit

from stepedit.cli import main
from stepedit.request import EditRequest
from stepedit.weights import Components, detect_layout, load_components, write_checkpoint


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118


def test_cli_round_trip_is_bit_identical(
    original_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    diffusers, back = tmp_path / "diffusers", tmp_path / "back"
    assert main(["convert", str(original_dir), str(diffusers), "--to", "diffusers"]) == 0
    assert detect_layout(diffusers) == "diffusers"
    assert (diffusers / "processor" / "tokenizer_config.json").is_file()
    assert (diffusers / "text_encoder" / "config.json").is_file()
    assert not (diffusers / "text_encoder" / "tokenizer_config.json").exists()
    assert main(["convert", str(diffusers), str(back), "--to", "original"]) == 0
    assert "wrote v1.1 checkpoint" in capsys.readouterr().out
    for name in ("step1x-edit-v1p1-official.safetensors", "vae.safetensors"):
        before, after = _tensors(original_dir / name), _tensors(back / name)
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before), name
    qwen = sorted(p.name for p in (original_dir / "Qwen2.5-VL-7B-Instruct").iterdir())
    assert sorted(p.name for p in (back / "Qwen2.5-VL-7B-Instruct").iterdir()) == qwen


def test_cli_refuses_clearly(
    original_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["convert", str(original_dir), str(tmp_path / "x"), "--to", "original"]) == 1
    assert "already in the original layout" in capsys.readouterr().out
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    assert main(["convert", str(original_dir), str(tmp_path / "full"), "--to", "diffusers"]) == 1
    assert "not empty" in capsys.readouterr().out


def test_v10_converts_only_with_the_fold_and_keeps_its_outputs(
    tiny_v10: Components, tiny: Components, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny_v10.text_model, tiny_v10.processor = tiny.text_model, tiny.processor
    original = write_checkpoint(tiny_v10, tmp_path / "v10", "original")
    target = tmp_path / "v10-diffusers"
    assert main(["convert", str(original), str(target), "--to", "diffusers"]) == 1
    assert "fold" in capsys.readouterr().out
    assert (
        main(["convert", str(original), str(target), "--to", "diffusers", "--fold-v1.0-scale"]) == 0
    )
    loaded = load_components(target, device="cpu", dtype=torch.float32)
    assert loaded.version == "v1.0"
    assert loaded.dit.connector.scale_factor is not None
    assert torch.equal(loaded.dit.connector.scale_factor, torch.zeros(1))
    torch.testing.assert_close(run_dit(loaded.dit), run_dit(tiny_v10.dit), rtol=1e-5, atol=1e-5)
    back = tmp_path / "v10-back"
    assert main(["convert", str(target), str(back), "--to", "original"]) == 0
    assert (back / "step1x-edit-i1258.safetensors").is_file()
    assert load_components(back, device="cpu", dtype=torch.float32).version == "v1.0"


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_every_layout_gives_the_image_of_its_weights(
    layout: str, tiny: Components, original_dir: Path, diffusers_dir: Path
) -> None:
    """Both layouts hold the dummy model's tensors bit for bit (tested above); here the edit.

    Each layout follows its own reference's numerics (`VersionSpec.reference_for`), so the
    comparison is with the in-memory model marked as coming from that layout.
    """
    pipeline_module = pytest.importorskip("stepedit.pipeline")
    image = Image.linear_gradient("L").resize((96, 64)).convert("RGB")
    request = EditRequest(prompt="add a hat", num_inference_steps=2, seed=7, size_level=256)
    directory = original_dir if layout == "original" else diffusers_dir
    loaded = pipeline_module.EditPipeline.from_pretrained(
        directory, device="cpu", dtype=torch.float32
    )
    in_memory = pipeline_module.EditPipeline(
        dataclasses.replace(tiny, source_layout=layout), "cpu", torch.float32
    )
    assert np.array_equal(
        np.asarray(loaded(image, request).images[0]),
        np.asarray(in_memory(image, request).images[0]),
    )


@pytest.mark.parametrize(
    ("source", "layout"),
    [
        ("dummy:tiny-v1.2", "diffusers"),
        ("dummy:tiny-v1.1@5", "original"),
        ("dummy:tiny-v1.0", "original"),
    ],
)
def test_convert_writes_a_dummy_model_that_loads_back_identical(
    source: str, layout: str, tmp_path: Path
) -> None:
    target = tmp_path / "dummy"
    assert main(["convert", source, str(target), "--to", layout, "--dtype", "fp32"]) == 0
    assert detect_layout(target) == layout
    loaded = load_components(target, device="cpu", dtype=torch.float32)
    in_memory = load_components(source, device="cpu", dtype=torch.float32)
    assert loaded.version == in_memory.version
    for name in ("dit", "ae", "text_model"):
        left, right = getattr(loaded, name).state_dict(), getattr(in_memory, name).state_dict()
        assert left.keys() == right.keys()
        assert all(torch.equal(left[k], right[k]) for k in left), name


def test_convert_dummy_defaults_to_bf16_and_keeps_the_v10_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "bf16"
    assert main(["convert", "dummy:tiny-v1.1", str(target), "--to", "original"]) == 0
    stored = _tensors(target / "step1x-edit-v1p1-official.safetensors")
    in_memory = load_components("dummy:tiny-v1.1", device="cpu", dtype=torch.bfloat16)
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}
    assert all(torch.equal(stored[k], v) for k, v in in_memory.dit.state_dict().items())
    assert main(["convert", "dummy:tiny-v1.0", str(tmp_path / "v10"), "--to", "diffusers"]) == 1
    assert "fold" in capsys.readouterr().out
    assert not (tmp_path / "v10").exists()  # nothing half-written is left
    args = ["convert", "dummy:tiny-v1.1", str(tmp_path / "x"), "--to", "original"]
    assert main([*args, "--version", "v1.2"]) == 1
    assert "is a v1.1 model, not v1.2" in capsys.readouterr().out


def test_a_full_size_dummy_streams_without_building_the_model() -> None:
    """`convert dummy:v1.1` writes the DiT from a DummySource: the 12.4 B parameters exist only
    as meta shapes, and each tensor is made when it is written."""
    import math

    from stepedit.model.dit import Step1XEditDiT
    from stepedit.model.presets import DIT_PRESETS
    from stepedit.weights.dummy import DummySource

    config = DIT_PRESETS["v1.1"]
    source = DummySource(lambda: Step1XEditDiT(config), dtype=torch.bfloat16, seed=0)
    total = sum(math.prod(source.shape(k)) for k in source.names())
    assert round(total / 1e9, 2) == 12.43
    tensor = source.get("final_layer.linear.bias")
    assert tensor.dtype == torch.bfloat16 and tensor.shape == (64,)
    assert torch.equal(source.get("final_layer.linear.bias"), tensor)  # seeded per key
