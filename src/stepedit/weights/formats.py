"""Recognise a checkpoint on disk: which layout it is in, which files hold what, which version.

Two published layouts exist:

- "original": the Step1X-Edit release. One directory holding the DiT file
  (`step1x-edit-i1258.safetensors` for v1.0, `step1x-edit-v1p1-official.safetensors` for v1.1,
  optionally an `-FP8` variant), the FLUX VAE (`vae.safetensors` or `ae.safetensors`) and,
  optionally, a Qwen2.5-VL-7B-Instruct folder (the published repository has none). A path to
  the DiT file itself is accepted too; the VAE and the Qwen folder are then looked up next to it.
- "diffusers": `model_index.json` with `transformer/`, `vae/`, `text_encoder/`, `processor/`
  (or `tokenizer/`) and `scheduler/` sub-folders, as published for v1.1 and v1.2.

The functions here answer from file names, so they serve a local directory and a Hub
repository's file list alike; `checkpoint.py` puts them together into the pre-flight check.
Only file names, JSON files and safetensors headers are read; no tensor data.
"""

from __future__ import annotations

import json
import logging
import re
import struct
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, cast, get_args

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
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own bound on a header
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


# When a repository holds several release DiT files and no version is asked for: the newest.
NEWEST_FIRST: tuple[ModelVersion, ...] = ("v1.2", "v1.1", "v1.0")
TEXT_ENCODER_WEIGHTS_NAME = "model.safetensors"
TEXT_ENCODER_INDEX_NAME = "model.safetensors.index.json"
# The diffusers layout names its Qwen processor folder "processor"; "tokenizer" is accepted too.
PROCESSOR_FOLDER_NAMES = ("processor", "tokenizer")


def detect_layout(path: str | Path) -> Layout:
    """Say which layout `path` (a directory, or an original DiT `.safetensors` file) is in."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"checkpoint path {str(path)!r} does not exist")
    if path.is_file():
        if path.suffix in (".safetensors", ".gguf") and path.name not in VAE_FILE_NAMES:
            return "original"  # a .gguf DiT holds the original key names (weights/gguf.py)
        raise WeightsError(
            f"{str(path)!r} is a file but not a DiT .safetensors file; give a checkpoint directory"
        )
    layout = layout_of_names(relative_names(path))
    if layout is not None:
        return layout
    found = sorted(p.name for p in path.iterdir())[:12]
    raise WeightsError(
        f"{str(path)!r} is in no known layout: expected model_index.json (diffusers layout) or a "
        f"step1x-edit*.safetensors DiT file (original layout); found {found}"
    )


def relative_names(directory: Path) -> list[str]:
    """The top-level file names of `directory`, plus `transformer/config.json` when present."""
    names = [p.name for p in directory.iterdir() if p.is_file()]
    if (directory / "transformer" / "config.json").is_file():
        names.append("transformer/config.json")
    return names


def layout_of_names(names: Collection[str]) -> Layout | None:
    """The layout of a directory or Hub repository given its (relative) file names."""
    if "model_index.json" in names or "transformer/config.json" in names:
        return "diffusers"
    if dit_file_candidates(names):
        return "original"
    return None


def is_fp8_name(name: str) -> bool:
    return "fp8" in name.lower()


# transformers' weight files (a Qwen2.5-VL repository, a PEFT adapter): never a DiT.
_TRANSFORMERS_WEIGHTS = re.compile(r"(model|adapter_model)(-\d+-of-\d+)?\.safetensors")


def dit_file_candidates(names: Iterable[str]) -> list[str]:
    """Top-level `.safetensors` names that may hold a DiT: not the VAE, not diffusers or
    transformers weights."""
    return sorted(
        name
        for name in names
        if "/" not in name
        and name.endswith(".safetensors")
        and name not in VAE_FILE_NAMES
        and not name.startswith("diffusion_pytorch_model")
        and not _TRANSFORMERS_WEIGHTS.fullmatch(name)
    )


def choose_dit_file(names: Iterable[str], version: ModelVersion | None, where: str) -> str | None:
    """The DiT file to load among a directory's (or a Hub repository's) top-level file names.

    The official repository holds several DiT files (v1.0 and v1.1; FP8 and LoRA files may sit
    next to them): the release file of `version` wins, else the newest release file; another
    release's file never stands in for the one asked for. Without release files, a single file is
    used whatever its name; an FP8 file only when nothing else is there (name the file itself to
    pick it). None when no suitable file is present.
    """
    candidates = dit_file_candidates(names)
    plain = [name for name in candidates if not is_fp8_name(name)]
    wanted = NEWEST_FIRST if version is None else (version,)
    releases = [DIT_FILE_NAMES[v] for v in wanted if DIT_FILE_NAMES[v] in plain]
    other_releases = [DIT_FILE_NAMES[v] for v in NEWEST_FIRST if DIT_FILE_NAMES[v] in plain]
    chosen: str | None
    if releases:
        chosen = releases[0]
    elif other_releases:  # other releases are here, not the one asked for
        chosen = None
    elif len(plain) == 1:  # whatever its name; its keys must then agree with `version`
        chosen = plain[0]
    elif not plain and len(candidates) == 1:
        chosen = candidates[0]
    elif not candidates:
        chosen = None
    else:
        raise WeightsError(
            f"cannot tell which DiT file to load in {where}: found {candidates}; name the "
            ".safetensors file itself (a path, or org/name/<file> for a Hub repository)"
        )
    if chosen is not None and len(candidates) > 1:
        reason = f"the {version} release" if version else "the newest release"
        logger.info("%s holds DiT files %s; using %s (%s)", where, candidates, chosen, reason)
    return chosen


def find_qwen_folder(directory: Path) -> Path | None:
    """The Qwen2.5-VL sub-folder: by its release name (even if incomplete, so that what it lacks
    is reported), else any folder whose config says so."""
    named = directory / QWEN_FOLDER_NAME
    if named.is_dir():
        return named
    for child in sorted(p for p in directory.iterdir() if p.is_dir()):
        config = child / "config.json"
        if config.is_file() and read_json(config).get("model_type") == "qwen2_5_vl":
            return child
    return None


def find_processor_folder(root: Path) -> Path | None:
    """A diffusers checkpoint's processor folder (`processor/`, or `tokenizer/`), if any."""
    for name in PROCESSOR_FOLDER_NAMES:
        folder = root / name
        if folder.is_dir() and any(folder.iterdir()):
            return folder
    return None


def weight_files(folder: Path, single_name: str, index_name: str) -> tuple[list[Path], list[str]]:
    """The weight files of a component folder and the names of those missing.

    Sharded (an index naming the shards), one file named `single_name`, or any `.safetensors`
    files; with none of these, the single name is reported missing.
    """
    index = folder / index_name
    if index.is_file():
        shards = sorted(set(read_json(index).get("weight_map", {}).values()))
        return [folder / name for name in shards], [
            name for name in shards if not (folder / name).is_file()
        ]
    if (folder / single_name).is_file():
        return [folder / single_name], []
    found = (
        sorted(p for p in folder.glob("*.safetensors") if p.is_file()) if folder.is_dir() else []
    )
    return found, [] if found else [single_name]


def missing_component_files(folder: Path) -> list[str]:
    """What a diffusers component folder (transformer/, vae/) lacks: config.json, weights."""
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    return missing + weight_files(folder, DIFFUSERS_WEIGHTS_NAME, DIFFUSERS_INDEX_NAME)[1]


def missing_text_model_files(folder: Path) -> list[str]:
    """What a Qwen2.5-VL model folder lacks: config.json, safetensors weights (all shards)."""
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    return missing + weight_files(folder, TEXT_ENCODER_WEIGHTS_NAME, TEXT_ENCODER_INDEX_NAME)[1]


def missing_processor_files(folder: Path) -> list[str]:
    """What a Qwen2.5-VL processor folder lacks: the tokenizer and the image processor config.

    transformers 4 writes the image processor's settings to preprocessor_config.json (as the
    releases have them), transformers 5 into processor_config.json; either is read.
    """
    missing = []
    has_vocab = all((folder / name).is_file() for name in ("vocab.json", "merges.txt"))
    if not (folder / "tokenizer.json").is_file() and not has_vocab:
        missing.append("tokenizer.json")
    if not (folder / "tokenizer_config.json").is_file():
        missing.append("tokenizer_config.json")
    if not any(
        (folder / n).is_file() for n in ("preprocessor_config.json", "processor_config.json")
    ):
        missing.append("preprocessor_config.json")
    return missing


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read {str(path)!r}: {exc}") from exc
    if not isinstance(data, dict):
        raise WeightsError(f"{str(path)!r} does not hold a JSON object")
    return cast(dict[str, Any], data)


def safetensors_keys(files: list[Path]) -> set[str]:
    """Key names from the files' headers (no tensor data is read, and no torch is imported: a
    safetensors file starts with the length of its JSON header, then the header)."""
    if any(file.suffix == ".gguf" for file in files):
        from stepedit.weights.gguf import gguf_keys

        return gguf_keys(files)
    keys: set[str] = set()
    for file in files:
        try:
            with file.open("rb") as handle:
                (length,) = struct.unpack("<Q", handle.read(8))
                if length > MAX_HEADER_BYTES:
                    raise ValueError(f"a {length}-byte header")
                header = json.loads(handle.read(length))
        except (OSError, ValueError, struct.error) as exc:
            raise WeightsError(f"cannot read the header of {str(file)!r}: {exc}") from exc
        if not isinstance(header, dict):
            raise WeightsError(f"cannot read the header of {str(file)!r}: not a JSON object")
        keys.update(k for k in header if k != "__metadata__")
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
