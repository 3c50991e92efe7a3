"""Convert a checkpoint directory between the original and the diffusers layouts, file to file.

Nothing is instantiated: tensors stream from the memory-mapped source through the key table
into the destination file one at a time, in the source dtype (bf16 stays bf16, FP8 stays FP8).
The Qwen2.5-VL files are hard-linked (or copied) as they are: the original release keeps model
and processor files in one folder, the diffusers layout in `text_encoder/` and `processor/`.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from stepedit.errors import WeightsError
from stepedit.model.presets import ModelVersion
from stepedit.weights import diffusers_layout as dl
from stepedit.weights.components import (
    copy_tree,
    write_diffusers_component,
    write_diffusers_index,
)
from stepedit.weights.formats import (
    DIT_FILE_NAMES,
    QWEN_FOLDER_NAME,
    Layout,
    check_version,
    detect_layout,
    find_diffusers_files,
    find_original_files,
    infer_ae_config,
    infer_dit_config,
    read_json,
    safetensors_files,
    version_from_diffusers_config,
    version_from_original_keys,
)
from stepedit.weights.tensors import SafetensorsSource, write_safetensors

logger = logging.getLogger(__name__)

# Files of a Qwen2.5-VL folder that belong to the processor (tokenizer + image processor).
PROCESSOR_FILES = frozenset(
    {
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
        "special_tokens_map.json",
        "added_tokens.json",
        "preprocessor_config.json",
        "processor_config.json",
        "video_preprocessor_config.json",
        "chat_template.json",
        "chat_template.jinja",
    }
)


def convert_checkpoint(
    source: str | Path,
    destination: str | Path,
    to: Layout,
    *,
    version: ModelVersion | None = None,
    fold_scale_factor: bool = False,
) -> ModelVersion:
    """Write `source` (a checkpoint directory) into `destination` in layout `to`; return version."""
    source, destination = Path(source), Path(destination)
    layout = detect_layout(source)
    if layout == to:
        raise WeightsError(f"{str(source)!r} is already in the {to} layout")
    if destination.exists() and any(destination.iterdir()):
        raise WeightsError(f"destination {str(destination)!r} exists and is not empty")
    is_new = not destination.exists()
    destination.mkdir(parents=True, exist_ok=True)
    try:
        if to == "diffusers":
            return _original_to_diffusers(source, destination, version, fold_scale_factor)
        return _diffusers_to_original(source, destination, version)
    except BaseException:
        # Leave no half-written checkpoint that a later load could mistake for a whole one.
        if is_new:
            shutil.rmtree(destination)
        else:
            _empty(directory=destination)
        raise


def _empty(directory: Path) -> None:
    for item in directory.iterdir():
        if item.is_dir():
            shutil.rmtree(item)
        else:
            item.unlink()


def _original_to_diffusers(
    source: Path, destination: Path, version: ModelVersion | None, fold_scale_factor: bool
) -> ModelVersion:
    files = find_original_files(source)
    with SafetensorsSource([files.dit]) as dit:
        detected = version_from_original_keys(set(dit.names()))
        if version is not None and check_version(version) != detected:
            raise WeightsError(f"{files.dit.name} is {detected}, not {version}")
        shapes = {k: dit.shape(k) for k in dit.names()}
        config = infer_dit_config(shapes, detected)
        logger.info("transformer: %s -> %s", files.dit, destination / "transformer")
        write_diffusers_component(
            destination / "transformer",
            dl.dit_to_diffusers(dit, config, fold_scale_factor=fold_scale_factor),
            dl.dit_config_to_diffusers(config, folded_scale_factor=fold_scale_factor),
        )
    with SafetensorsSource([files.vae]) as vae:
        ae_config = infer_ae_config({k: vae.shape(k) for k in vae.names()})
        logger.info("vae: %s -> %s", files.vae, destination / "vae")
        write_diffusers_component(
            destination / "vae",
            dl.to_diffusers(vae, dl.vae_key_maps(ae_config), "VAE"),
            dl.vae_config_to_diffusers(ae_config),
        )
    if files.text_encoder is None:
        logger.warning("no Qwen2.5-VL folder in %s: no text_encoder/ or processor/", source)
    else:
        names = {p.name for p in files.text_encoder.iterdir()}
        copy_tree(files.text_encoder, destination / "text_encoder", names - PROCESSOR_FILES)
        copy_tree(files.text_encoder, destination / "processor", names & PROCESSOR_FILES)
    write_diffusers_index(destination, detected)
    return detected


def _diffusers_to_original(
    source: Path, destination: Path, version: ModelVersion | None
) -> ModelVersion:
    files = find_diffusers_files(source)
    transformer_config = read_json(files.transformer / "config.json")
    detected = version_from_diffusers_config(transformer_config)
    resolved = detected if version is None else check_version(version)
    config = dl.dit_config_from_diffusers(transformer_config, resolved)
    with SafetensorsSource(safetensors_files(files.transformer)) as raw:
        target = destination / DIT_FILE_NAMES[resolved]
        logger.info("transformer: %s -> %s", files.transformer, target)
        write_safetensors(target, dl.dit_to_original(raw, config))
    ae_config = dl.vae_config_from_diffusers(read_json(files.vae / "config.json"))
    with SafetensorsSource(safetensors_files(files.vae)) as raw:
        logger.info("vae: %s -> %s", files.vae, destination / "vae.safetensors")
        write_safetensors(
            destination / "vae.safetensors", dl.to_original(raw, dl.vae_key_maps(ae_config), "VAE")
        )
    qwen = destination / QWEN_FOLDER_NAME
    if files.text_encoder is not None:
        copy_tree(files.text_encoder, qwen)
    if files.processor is not None:
        copy_tree(files.processor, qwen)
    if files.text_encoder is None:
        logger.warning("no text_encoder/ in %s; %s not written", source, QWEN_FOLDER_NAME)
    return resolved
