"""`stepedit convert` both ways, and the same edit from every layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from tests.weights.conftest import run_dit

from stepedit.cli import main
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


def test_every_layout_gives_the_same_image(original_dir: Path, diffusers_dir: Path) -> None:
    """Both layouts hold the dummy model's tensors bit for bit (tested above); here the edit."""
    pipeline_module = pytest.importorskip("stepedit.pipeline")
    image = Image.linear_gradient("L").resize((96, 64)).convert("RGB")
    results = []
    for source in (original_dir, diffusers_dir):
        pipe = pipeline_module.EditPipeline.from_pretrained(
            source, device="cpu", dtype=torch.float32
        )
        out = pipe(image, "add a hat", num_inference_steps=2, seed=7, size_level=256)
        results.append(np.asarray(out.images[0]))
    assert np.array_equal(results[0], results[1])
