from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from stepedit.errors import WeightsError
from stepedit.weights import (
    Components,
    detect_layout,
    detect_version,
    resolve_checkpoint,
    write_checkpoint,
)
from stepedit.weights.formats import choose_dit_file


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


def test_override_that_contradicts_the_weights_is_refused(
    original_dir: Path, tmp_path: Path
) -> None:
    assert detect_version(original_dir, "v1.1") == "v1.1"
    # The v1.2 release file is not there (another release's file never stands in for it) ...
    with pytest.raises(WeightsError, match=r"DiT file step1x-edit-v1p2\.safetensors \(v1\.2\)"):
        detect_version(original_dir, "v1.2")
    # ... and a file of another name is read, and found to be v1.1.
    copy = tmp_path / "copy"
    shutil.copytree(original_dir, copy)
    (copy / "step1x-edit-v1p1-official.safetensors").rename(copy / "my-edit.safetensors")
    with pytest.raises(WeightsError, match=r"v1\.2 was asked for but the checkpoint is v1\.1"):
        detect_version(copy, "v1.2")
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
    assert resolve_checkpoint(copy).dit_files == (plain,)
    assert resolve_checkpoint(fp8).dit_files == (fp8,)
    # A release file wins over files of other names (LoRA files sit next to it in the repo).
    shutil.copy(plain, copy / "step1x-edit-other.safetensors")
    assert resolve_checkpoint(copy).dit_files == (plain,)
    plain.unlink()
    shutil.copy(fp8, copy / "step1x-edit-another.safetensors")
    with pytest.raises(WeightsError, match="cannot tell which DiT file"):
        resolve_checkpoint(copy)


@pytest.mark.parametrize(
    ("names", "version", "chosen"),
    [
        # stepfun-ai/Step1X-Edit: v1.0 and v1.1 (and FP8): the newest unless a version is asked
        (["step1x-edit-i1258.safetensors", "step1x-edit-v1p1-official.safetensors"], None,
         "step1x-edit-v1p1-official.safetensors"),
        (["step1x-edit-i1258.safetensors", "step1x-edit-v1p1-official.safetensors"], "v1.0",
         "step1x-edit-i1258.safetensors"),
        (["step1x-edit-i1258-FP8.safetensors", "step1x-edit-i1258.safetensors"], "v1.0",
         "step1x-edit-i1258.safetensors"),
        # a requested release that is not there is missing, not replaced by another release
        (["step1x-edit-i1258.safetensors", "step1x-edit-v1p1-official.safetensors"], "v1.2",
         None),
        (["step1x-edit-v1p1-official.safetensors", "vae.safetensors"], "v1.0", None),
        # one file of any name (a fine-tune), or an FP8 file alone (an FP8-only repository)
        (["my-finetune.safetensors", "vae.safetensors"], "v1.1", "my-finetune.safetensors"),
        (["step1x-edit-i1258-FP8.safetensors", "vae.safetensors"], None,
         "step1x-edit-i1258-FP8.safetensors"),
        (["vae.safetensors", "README.md", "transformer/x.safetensors"], None, None),
    ],
)  # fmt: skip
def test_dit_file_is_chosen_by_version_then_newest(
    names: list[str], version: str | None, chosen: str | None
) -> None:
    assert choose_dit_file(names, version, "repo") == chosen  # type: ignore[arg-type]
