from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from stepedit.errors import WeightsError
from stepedit.weights import Components, detect_layout, detect_version, write_checkpoint
from stepedit.weights.formats import find_original_files


def test_layouts_are_told_apart(original_dir: Path, diffusers_dir: Path) -> None:
    assert detect_layout(original_dir) == "original"
    assert detect_layout(diffusers_dir) == "diffusers"
    assert detect_layout(original_dir / "step1x-edit-v1p1-official.safetensors") == "original"


def test_unknown_directory_is_refused_with_what_was_found(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(WeightsError, match=r"no known layout.*notes\.txt"):
        detect_layout(tmp_path)
    with pytest.raises(WeightsError, match="does not exist"):
        detect_layout(tmp_path / "missing")


@pytest.mark.parametrize("layout", ["original", "diffusers"])
@pytest.mark.parametrize("version", ["v1.0", "v1.1", "v1.2"])
def test_version_is_detected_from_the_weights(
    layout: str, version: str, tmp_path: Path, tiny: Components
) -> None:
    from stepedit.weights import load_components

    components = load_components(f"dummy:tiny-{version}", device="cpu", dtype=torch.float32)
    components.text_model, components.processor = tiny.text_model, tiny.processor
    write_checkpoint(components, tmp_path, layout, fold_scale_factor=True)  # type: ignore[arg-type]
    assert detect_version(tmp_path) == version


def test_override_that_contradicts_the_weights_is_refused(original_dir: Path) -> None:
    assert detect_version(original_dir, "v1.1") == "v1.1"
    with pytest.raises(WeightsError, match=r"v1\.2 was asked for but the checkpoint is v1\.1"):
        detect_version(original_dir, "v1.2")
    with pytest.raises(WeightsError, match="unknown model version"):
        detect_version(original_dir, "v9")


def test_diffusers_v11_may_be_read_as_v10(diffusers_dir: Path) -> None:
    assert detect_version(diffusers_dir, "v1.0") == "v1.0"


def test_diffusers_marker_decides(diffusers_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(diffusers_dir, copy)
    config_path = copy / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["enable_text_token_mapping"] = True
    config_path.write_text(json.dumps(config))
    assert detect_version(copy) == "v1.2"


def test_plain_dit_file_is_preferred_over_fp8(original_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(original_dir, copy)
    plain = copy / "step1x-edit-v1p1-official.safetensors"
    fp8 = copy / "step1x-edit-v1p1-official-FP8.safetensors"
    shutil.copy(plain, fp8)
    assert find_original_files(copy).dit == plain
    assert find_original_files(fp8).dit == fp8
    shutil.copy(plain, copy / "step1x-edit-other.safetensors")
    with pytest.raises(WeightsError, match="cannot tell which DiT file"):
        find_original_files(copy)
