"""Recognise a checkpoint on disk: which layout it is in, which files hold what, which version.

Two published layouts exist:

- "original": the Step1X-Edit release. One directory holding the DiT file
  (`step1x-edit-i1258.safetensors` for v1.0, `step1x-edit-v1p1-official.safetensors` for v1.1,
  optionally an `-FP8` variant), the FLUX VAE (`vae.safetensors` or `ae.safetensors`) and a
  Qwen2.5-VL-7B-Instruct folder. A path to the DiT file itself is accepted too; the VAE and the
  Qwen folder are then looked up next to it.
- "diffusers": `model_index.json` with `transformer/`, `vae/`, `text_encoder/`, `processor/`
  (or `tokenizer/`) and `scheduler/` sub-folders, as published for v1.1 and v1.2.

Only file names, JSON files and safetensors headers are read here; no tensor data.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

from safetensors import safe_open

from stepedit.errors import WeightsError
from stepedit.model.presets import (
    AE_PRESETS,
    DIT_PRESETS,
    AutoEncoderConfig,
    DiTConfig,
    ModelVersion,
)

logger = logging.getLogger(__name__)

Layout = Literal["original", "diffusers"]
Shape = tuple[int, ...]
MODEL_VERSIONS: tuple[str, ...] = get_args(ModelVersion)

VAE_FILE_NAMES = ("vae.safetensors", "ae.safetensors")
QWEN_FOLDER_NAME = "Qwen2.5-VL-7B-Instruct"
# File names of the official release, used when writing the original layout.
DIT_FILE_NAMES: dict[str, str] = {
    "v1.0": "step1x-edit-i1258.safetensors",
    "v1.1": "step1x-edit-v1p1-official.safetensors",
    "v1.2": "step1x-edit-v1p2.safetensors",
}
DIFFUSERS_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
DIFFUSERS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
# Our own key in the transformer's config.json (diffusers ignores keys starting with "_"):
# the diffusers layout cannot tell v1.0 from v1.1 otherwise (see diffusers_layout.py).
VERSION_CONFIG_KEY = "_stepedit_model_version"

V1_0_MARKER_KEY = "connector.scale_factor"
V1_2_MARKER_KEY = "text_token_mapping.weight"


@dataclass(frozen=True)
class OriginalFiles:
    dit: Path
    vae: Path
    text_encoder: Path | None  # the Qwen2.5-VL folder; None when absent (DiT/VAE-only use)


@dataclass(frozen=True)
class DiffusersFiles:
    root: Path
    transformer: Path
    vae: Path
    text_encoder: Path | None
    processor: Path | None


def detect_layout(path: str | Path) -> Layout:
    """Say which layout `path` (a directory, or an original DiT `.safetensors` file) is in."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"checkpoint path {str(path)!r} does not exist")
    if path.is_file():
        if path.suffix == ".safetensors" and path.name not in VAE_FILE_NAMES:
            return "original"
        raise WeightsError(
            f"{str(path)!r} is a file but not a DiT .safetensors file; give a checkpoint directory"
        )
    if (path / "model_index.json").is_file():
        return "diffusers"
    if (path / "transformer" / "config.json").is_file():
        return "diffusers"
    if _dit_candidates(path):
        return "original"
    found = sorted(p.name for p in path.iterdir())[:12]
    raise WeightsError(
        f"{str(path)!r} is in no known layout: expected model_index.json (diffusers layout) or a "
        f"step1x-edit*.safetensors DiT file (original layout); found {found}"
    )


def _dit_candidates(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.glob("*.safetensors")
        if p.name not in VAE_FILE_NAMES and not p.name.startswith("diffusion_pytorch_model")
    )


def find_original_files(path: str | Path) -> OriginalFiles:
    """Locate the DiT file, the VAE file and the Qwen folder of an original-layout checkpoint."""
    path = Path(path)
    if path.is_file():
        dit, directory = path, path.parent
    else:
        directory = path
        candidates = _dit_candidates(directory)
        # The official repository ships bf16 and FP8 DiT files side by side; the plain one wins
        # unless the user names the FP8 file itself.
        plain = [p for p in candidates if "fp8" not in p.name.lower()]
        preferred = plain or candidates
        if len(preferred) != 1:
            names = [p.name for p in candidates]
            raise WeightsError(
                f"cannot tell which DiT file to load in {str(directory)!r}: found {names}; "
                "pass the path of the DiT .safetensors file itself"
            )
        dit = preferred[0]
    vaes = [directory / n for n in VAE_FILE_NAMES if (directory / n).is_file()]
    if not vaes:
        raise WeightsError(
            f"no VAE next to {dit.name!r} in {str(directory)!r}: expected one of {VAE_FILE_NAMES}"
        )
    return OriginalFiles(dit=dit, vae=vaes[0], text_encoder=find_qwen_folder(directory))


def find_qwen_folder(directory: Path) -> Path | None:
    """The Qwen2.5-VL sub-folder: by its release name, else any folder whose config says so."""
    named = directory / QWEN_FOLDER_NAME
    if (named / "config.json").is_file():
        return named
    for child in sorted(p for p in directory.iterdir() if p.is_dir()):
        config = child / "config.json"
        if config.is_file() and read_json(config).get("model_type") == "qwen2_5_vl":
            return child
    return None


def find_diffusers_files(path: str | Path) -> DiffusersFiles:
    root = Path(path)
    missing = [sub for sub in ("transformer", "vae") if not (root / sub / "config.json").is_file()]
    if missing:
        raise WeightsError(
            f"diffusers-layout checkpoint {str(root)!r} lacks {missing} (each needs a config.json)"
        )
    text_encoder = root / "text_encoder"
    processor = next(
        (
            root / sub
            for sub in ("processor", "tokenizer")
            if (root / sub).is_dir() and any((root / sub).iterdir())
        ),
        None,
    )
    return DiffusersFiles(
        root=root,
        transformer=root / "transformer",
        vae=root / "vae",
        text_encoder=text_encoder if (text_encoder / "config.json").is_file() else None,
        processor=processor,
    )


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read {str(path)!r}: {exc}") from exc
    if not isinstance(data, dict):
        raise WeightsError(f"{str(path)!r} does not hold a JSON object")
    return cast(dict[str, Any], data)


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files of a diffusers component folder: sharded (with an index) or single."""
    index = folder / DIFFUSERS_INDEX_NAME
    if index.is_file():
        weight_map = read_json(index).get("weight_map", {})
        return [folder / name for name in sorted(set(weight_map.values()))]
    single = folder / DIFFUSERS_WEIGHTS_NAME
    if single.is_file():
        return [single]
    found = sorted(folder.glob("*.safetensors"))
    if not found:
        raise WeightsError(f"no .safetensors weights in {str(folder)!r}")
    return found


def safetensors_keys(files: list[Path]) -> set[str]:
    keys: set[str] = set()
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            keys.update(handle.keys())
    return keys


def check_version(version: str) -> ModelVersion:
    if version not in MODEL_VERSIONS:
        raise WeightsError(f"unknown model version {version!r}; known: {list(MODEL_VERSIONS)}")
    return cast(ModelVersion, version)


def version_from_original_keys(keys: set[str]) -> ModelVersion:
    """v1.0 carries the connector's scale_factor, v1.2 the text_token_mapping; else v1.1."""
    if V1_0_MARKER_KEY in keys and V1_2_MARKER_KEY in keys:
        raise WeightsError(
            f"DiT has both {V1_0_MARKER_KEY!r} (v1.0) and {V1_2_MARKER_KEY!r} (v1.2); "
            "no released version has both"
        )
    if V1_0_MARKER_KEY in keys:
        return "v1.0"
    if V1_2_MARKER_KEY in keys:
        return "v1.2"
    return "v1.1"


def version_from_diffusers_config(config: dict[str, Any]) -> ModelVersion:
    marked = config.get(VERSION_CONFIG_KEY)
    if marked is not None:
        return check_version(str(marked))
    return "v1.2" if config.get("enable_text_token_mapping") else "v1.1"


def detect_version(path: str | Path, override: str | None = None) -> ModelVersion:
    """The model version of the checkpoint at `path`; `override` wins where it is compatible.

    The version decides the DiT's structure (v1.0: connector.scale_factor; v1.2:
    text_token_mapping), so an override that contradicts the weights is an error, except v1.0
    over a diffusers checkpoint with no marker (the scale is then taken as folded, i.e. 1).
    """
    layout = detect_layout(path)
    detected: ModelVersion
    if layout == "original":
        files = find_original_files(path)
        detected = version_from_original_keys(safetensors_keys([files.dit]))
        evidence = f"keys of {files.dit.name!r}"
    else:
        config = read_json(find_diffusers_files(path).transformer / "config.json")
        detected = version_from_diffusers_config(config)
        evidence = "transformer/config.json"
    if override is None:
        logger.info("detected model version %s from %s", detected, evidence)
        return detected
    wanted = check_version(override)
    compatible = wanted == detected or (
        layout == "diffusers" and {wanted, detected} == {"v1.0", "v1.1"}
    )
    if not compatible:
        raise WeightsError(
            f"version {wanted} was asked for but the checkpoint is {detected} (from {evidence}); "
            "the DiT structures differ"
        )
    return wanted


# --- configs of original-layout files, which carry none -------------------------------------------


def _count(shapes: Mapping[str, Shape], prefix: str) -> int:
    indices = {int(k[len(prefix) :].split(".")[0]) for k in shapes if k.startswith(prefix)}
    return max(indices) + 1 if indices else 0


def _dim(shapes: Mapping[str, Shape], key: str, axis: int) -> int:
    if key not in shapes:
        raise WeightsError(f"the checkpoint has no {key!r}; is it a Step1X-Edit file?")
    return shapes[key][axis]


def infer_dit_config(shapes: Mapping[str, Shape], version: ModelVersion) -> DiTConfig:
    """The DiT preset whose weight shapes these are (original layout has no config file).

    Head counts and the RoPE split leave no trace in weight shapes, so the answer is a preset:
    the closest one of `version`, whose strict load then names any key that does not fit.
    """
    hidden = _dim(shapes, "img_in.weight", 0)
    found = {
        "in_channels": _dim(shapes, "img_in.weight", 1),
        "out_channels": _dim(shapes, "final_layer.linear.weight", 0),
        "hidden_size": hidden,
        "context_in_dim": _dim(shapes, "txt_in.weight", 1),
        "vec_in_dim": _dim(shapes, "vector_in.in_layer.weight", 1),
        "depth": _count(shapes, "double_blocks."),
        "depth_single_blocks": _count(shapes, "single_blocks."),
        "head_dim": _dim(shapes, "double_blocks.0.img_attn.norm.query_norm.scale", 0),
        "mlp_ratio": _dim(shapes, "double_blocks.0.img_mlp.0.weight", 0) / hidden,
        "connector_in_channels": _dim(shapes, "connector.S.input_embedder.weight", 1),
        "connector_hidden_size": _dim(shapes, "connector.S.input_embedder.weight", 0),
        "connector_depth": _count(shapes, "connector.S.individual_token_refiner.blocks."),
    }
    candidates = [(n, p) for n, p in DIT_PRESETS.items() if p.version == version]

    def agreement(item: tuple[str, DiTConfig]) -> int:
        return sum(getattr(item[1], k) == v for k, v in found.items())

    name, preset = max(candidates, key=agreement)
    differing = {k: v for k, v in found.items() if getattr(preset, k) != v}
    if differing:
        # Load against the closest preset anyway: the strict check then names the bad keys.
        logger.warning("DiT weights differ from the closest preset %r in %s", name, differing)
    else:
        logger.info("DiT weights match preset %r", name)
    return preset


def infer_ae_config(shapes: Mapping[str, Shape]) -> AutoEncoderConfig:
    """A FLUX-style VAE's structure from its weight shapes; scale/shift from a matching preset."""
    ch = _dim(shapes, "encoder.conv_in.weight", 0)
    levels = _count(shapes, "encoder.down.")
    ch_mult = tuple(
        _dim(shapes, f"encoder.down.{i}.block.0.conv1.weight", 0) // ch for i in range(levels)
    )
    structure = {
        "in_channels": _dim(shapes, "encoder.conv_in.weight", 1),
        "out_ch": _dim(shapes, "decoder.conv_out.weight", 0),
        "ch": ch,
        "ch_mult": ch_mult,
        "num_res_blocks": _count(shapes, "encoder.down.0.block."),
        "z_channels": _dim(shapes, "decoder.conv_in.weight", 1),
    }
    for preset in AE_PRESETS.values():
        if all(getattr(preset, k) == v for k, v in structure.items()):
            return preset
    logger.warning("VAE matches no preset; using FLUX's scale and shift factors")
    return AutoEncoderConfig(**structure)  # type: ignore[arg-type]
