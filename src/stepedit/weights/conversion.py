"""Convert a checkpoint between the original and the diffusers layouts, file to file.

Nothing is instantiated: tensors stream from the memory-mapped source through the key table
into the destination file one at a time, in the source dtype (bf16 stays bf16, FP8 stays FP8).
The Qwen2.5-VL files are hard-linked (or copied) as they are: the original release keeps model
and processor files in one folder, the diffusers layout in `text_encoder/` and `processor/`.

A `dummy:<preset>` source is written the same way: its DiT and VAE tensors are made one at a
time as they are written (`dummy.DummySource`), so even the 12B-parameter presets stream to disk.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from stepedit.errors import WeightsError
from stepedit.model.autoencoder import AutoEncoder
from stepedit.model.dit import Step1XEditDiT
from stepedit.model.presets import ModelVersion
from stepedit.weights import diffusers_layout as dl
from stepedit.weights import dummy
from stepedit.weights.checkpoint import Checkpoint, resolve_checkpoint
from stepedit.weights.components import (
    copy_tree,
    write_diffusers_component,
    write_diffusers_index,
    write_layout,
)
from stepedit.weights.formats import (
    DIT_FILE_NAMES,
    QWEN_FOLDER_NAME,
    Layout,
    check_version,
    infer_ae_config,
    infer_dit_config,
    read_json,
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
    text_encoder: str | Path | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> ModelVersion:
    """Write `source` into `destination` in layout `to`; return the model version.

    `source` is a checkpoint (a path, or a repo id in the Hub cache; never downloaded) or
    `dummy:<preset>[@seed]`, whose random weights are written in `dtype` (the other sources keep
    their dtype). `text_encoder` replaces or supplies the Qwen2.5-VL files, as for loading.
    """
    destination = Path(destination)
    if destination.exists() and any(destination.iterdir()):
        raise WeightsError(f"destination {str(destination)!r} exists and is not empty")
    if dummy.is_dummy(source):
        if text_encoder is not None:
            raise WeightsError(
                f"{source!r} carries its own text encoder; --text-encoder is not for it"
            )
        spec = dummy.parse_dummy(str(source))
        if version is not None and check_version(version) != spec.dit_config.version:
            raise WeightsError(f"{source!r} is a {spec.dit_config.version} model, not {version}")
        return _write_into(
            destination, lambda: _write_dummy(spec, destination, to, dtype, fold_scale_factor)
        )
    checkpoint = resolve_checkpoint(
        source, version=version, text_encoder=text_encoder, need_text_encoder=False
    )
    if checkpoint.layout == to:
        raise WeightsError(f"{str(source)!r} is already in the {to} layout")
    if to == "diffusers":
        return _write_into(
            destination, lambda: _original_to_diffusers(checkpoint, destination, fold_scale_factor)
        )
    return _write_into(destination, lambda: _diffusers_to_original(checkpoint, destination))


def _write_into(destination: Path, write: Callable[[], ModelVersion]) -> ModelVersion:
    is_new = not destination.exists()
    destination.mkdir(parents=True, exist_ok=True)
    try:
        return write()
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


def _write_dummy(
    spec: dummy.DummySpec, destination: Path, to: Layout, dtype: torch.dtype, fold: bool
) -> ModelVersion:
    """Random weights straight to disk: the DiT and the VAE are made one tensor at a time
    (`DummySource`), never built; the text model is built once, on the CPU, and saved."""
    dit_config, ae_config = spec.dit_config, spec.ae_config
    logger.info("writing %s (seed %d) in the %s layout, %s", spec.preset, spec.seed, to, dtype)
    text_model, processor = dummy.dummy_text_model(spec, device=torch.device("cpu"), dtype=dtype)
    write_layout(
        destination,
        to,
        dit=(
            dummy.DummySource(lambda: Step1XEditDiT(dit_config), dtype=dtype, seed=spec.seed),
            dit_config,
        ),
        ae=(
            dummy.DummySource(lambda: AutoEncoder(ae_config), dtype=dtype, seed=spec.seed + 1),
            ae_config,
        ),
        text_model=text_model,
        processor=processor,
        fold_scale_factor=fold,
    )
    return dit_config.version


def _original_to_diffusers(
    checkpoint: Checkpoint, destination: Path, fold_scale_factor: bool
) -> ModelVersion:
    version = checkpoint.version
    with SafetensorsSource(checkpoint.dit_files) as dit:
        config = infer_dit_config({k: dit.shape(k) for k in dit.names()}, version)
        logger.info("transformer: %s -> %s", checkpoint.dit_files[0], destination / "transformer")
        write_diffusers_component(
            destination / "transformer",
            dl.dit_to_diffusers(dit, config, fold_scale_factor=fold_scale_factor),
            dl.dit_config_to_diffusers(config, folded_scale_factor=fold_scale_factor),
        )
    with SafetensorsSource(checkpoint.vae_files) as vae:
        ae_config = infer_ae_config({k: vae.shape(k) for k in vae.names()})
        logger.info("vae: %s -> %s", checkpoint.vae_files[0], destination / "vae")
        write_diffusers_component(
            destination / "vae",
            dl.to_diffusers(vae, dl.vae_key_maps(ae_config), "VAE"),
            dl.vae_config_to_diffusers(ae_config),
        )
    encoder = checkpoint.text_encoder
    if encoder is None:
        logger.warning("no text encoder for %s: no text_encoder/ or processor/", checkpoint.source)
    elif encoder.model == encoder.processor:  # one Qwen2.5-VL folder: split it
        names = {p.name for p in encoder.model.iterdir()}
        copy_tree(encoder.model, destination / "text_encoder", names - PROCESSOR_FILES)
        copy_tree(encoder.model, destination / "processor", names & PROCESSOR_FILES)
    else:
        copy_tree(encoder.model, destination / "text_encoder")
        copy_tree(encoder.processor, destination / "processor")
    write_diffusers_index(destination, version)
    return version


def _diffusers_to_original(checkpoint: Checkpoint, destination: Path) -> ModelVersion:
    version = checkpoint.version
    transformer_config = read_json(checkpoint.dit_files[0].parent / "config.json")
    config = dl.dit_config_from_diffusers(transformer_config, version)
    with SafetensorsSource(checkpoint.dit_files) as raw:
        target = destination / DIT_FILE_NAMES[version]
        logger.info("transformer: %s -> %s", checkpoint.dit_files[0].parent, target)
        write_safetensors(target, dl.dit_to_original(raw, config))
    ae_config = dl.vae_config_from_diffusers(
        read_json(checkpoint.vae_files[0].parent / "config.json")
    )
    with SafetensorsSource(checkpoint.vae_files) as raw:
        logger.info(
            "vae: %s -> %s", checkpoint.vae_files[0].parent, destination / "vae.safetensors"
        )
        write_safetensors(
            destination / "vae.safetensors", dl.to_original(raw, dl.vae_key_maps(ae_config), "VAE")
        )
    encoder = checkpoint.text_encoder
    if encoder is None:
        logger.warning(
            "no text encoder for %s; %s not written", checkpoint.source, QWEN_FOLDER_NAME
        )
    else:
        copy_tree(encoder.model, destination / QWEN_FOLDER_NAME)
        if encoder.processor != encoder.model:
            copy_tree(encoder.processor, destination / QWEN_FOLDER_NAME)
    return version
