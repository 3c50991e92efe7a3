"""Load the four components of Step1X-Edit from any source, and write them in either layout."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from stepedit.errors import WeightsError
from stepedit.model.autoencoder import AutoEncoder
from stepedit.model.dit import Step1XEditDiT
from stepedit.model.presets import AutoEncoderConfig, DiTConfig, ModelVersion
from stepedit.model.qwen_tiny import CHAT_TEMPLATE, ImageTextProcessor
from stepedit.weights import diffusers_layout as dl
from stepedit.weights import dummy
from stepedit.weights.formats import (
    DIFFUSERS_WEIGHTS_NAME,
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
from stepedit.weights.native import has_fp8, load_module, reject_scaled_fp8
from stepedit.weights.tensors import DictSource, SafetensorsSource, TensorSource, write_safetensors

logger = logging.getLogger(__name__)

SourceLayout = Literal["original", "diffusers", "dummy"]

# FP8 storage is kept for the transformer blocks' Linears: their weights are 11.8 of the full
# DiT's 12.4 B parameters. The embedders, connector and final layer are upcast; they are small,
# and code there may take its compute dtype from a weight (the timestep embedder does).
FP8_BLOCK_PREFIXES = ("double_blocks.", "single_blocks.")


@dataclass
class Components:
    dit: Step1XEditDiT
    ae: AutoEncoder
    text_model: Qwen2_5_VLForConditionalGeneration
    processor: Qwen2_5_VLProcessor
    version: ModelVersion
    source_layout: SourceLayout


def load_components(
    source: str | Path,
    *,
    device: torch.device | str,
    dtype: torch.dtype,
    version: ModelVersion | None = None,
    offload: bool = False,
    keep_fp8: bool = True,
) -> Components:
    """Load DiT, VAE, Qwen2.5-VL and its processor from a directory (either layout) or `dummy:`.

    All weights are cast to `dtype` except Linear weights of an FP8 DiT, which stay float8 when
    `keep_fp8` (upcast per call; see native.Float8StorageLinear). With `offload`, everything is
    placed on the CPU and the pipeline moves each component to `device` when it runs.
    `version` overrides the detected model version where the weights allow it.
    """
    target = torch.device("cpu") if offload else torch.device(device)
    if dummy.is_dummy(source):
        return _load_dummy(str(source), device=target, dtype=dtype, version=version)
    layout = detect_layout(source)
    if layout == "original":
        return _load_original(Path(source), target, dtype, version, keep_fp8)
    return _load_diffusers(Path(source), target, dtype, version, keep_fp8)


def _load_dummy(
    source: str, *, device: torch.device, dtype: torch.dtype, version: ModelVersion | None
) -> Components:
    spec = dummy.parse_dummy(source)
    if version is not None and version != spec.dit_config.version:
        raise WeightsError(f"{source!r} is a {spec.dit_config.version} model, not {version}")
    logger.info("building %s with random weights (seed %d) on %s", spec.preset, spec.seed, device)
    text_model, processor = dummy.dummy_text_model(spec, device=device, dtype=dtype)
    return Components(
        dit=dummy.dummy_dit(spec.dit_config, device=device, dtype=dtype, seed=spec.seed),
        ae=dummy.dummy_ae(spec.ae_config, device=device, dtype=dtype, seed=spec.seed + 1),
        text_model=text_model,
        processor=processor,
        version=spec.dit_config.version,
        source_layout="dummy",
    )


def _resolve_version(
    detected: ModelVersion, override: ModelVersion | None, what: str
) -> ModelVersion:
    if override is None or override == detected:
        return detected
    check_version(override)
    raise WeightsError(
        f"version {override} was asked for but {what} is {detected}; their DiT structures differ"
    )


def load_dit(
    source: TensorSource,
    config: DiTConfig,
    *,
    device: torch.device,
    dtype: torch.dtype,
    keep_fp8: bool,
) -> Step1XEditDiT:
    fp8 = has_fp8(source)
    if fp8:
        reject_scaled_fp8(source, "DiT")
        logger.info(
            "DiT is stored in float8 (%s)", "kept, upcast per Linear" if keep_fp8 else "upcast"
        )
    return load_module(
        lambda: Step1XEditDiT(config),
        source,
        device=device,
        dtype=dtype,
        what=f"DiT ({config.version})",
        keep_fp8=FP8_BLOCK_PREFIXES if keep_fp8 and fp8 else (),
    )


def load_ae(
    source: TensorSource, config: AutoEncoderConfig, *, device: torch.device, dtype: torch.dtype
) -> AutoEncoder:
    return load_module(lambda: AutoEncoder(config), source, device=device, dtype=dtype, what="VAE")


def load_text_model(
    folder: Path | None, processor_folder: Path | None, *, device: torch.device, dtype: torch.dtype
) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor]:
    """Qwen2.5-VL from a local folder (never the hub) and its processor.

    The processor is Qwen's tokenizer and the PIL image processor (`qwen_tiny.ImageTextProcessor`),
    so neither torchvision nor a video processor is needed.
    """
    if folder is None:
        raise WeightsError("the checkpoint has no Qwen2.5-VL folder (text encoder)")
    processor_folder = processor_folder or folder
    try:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            folder, dtype=dtype, attn_implementation="sdpa", local_files_only=True
        )
        tokenizer = Qwen2Tokenizer.from_pretrained(processor_folder, local_files_only=True)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(
            processor_folder, local_files_only=True
        )
    except OSError as exc:
        raise WeightsError(f"cannot load Qwen2.5-VL from {str(folder)!r}: {exc}") from exc
    processor = ImageTextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template or CHAT_TEMPLATE,
    )
    model.eval().requires_grad_(False)
    return cast(Any, model).to(device), processor


def _load_original(
    path: Path,
    device: torch.device,
    dtype: torch.dtype,
    version: ModelVersion | None,
    keep_fp8: bool,
) -> Components:
    files = find_original_files(path)
    logger.info("loading original layout: DiT %s, VAE %s", files.dit.name, files.vae.name)
    with SafetensorsSource([files.dit]) as dit_source:
        detected = version_from_original_keys(set(dit_source.names()))
        resolved = _resolve_version(detected, version, files.dit.name)
        shapes = {k: dit_source.shape(k) for k in dit_source.names()}
        dit = load_dit(
            dit_source,
            infer_dit_config(shapes, resolved),
            device=device,
            dtype=dtype,
            keep_fp8=keep_fp8,
        )
    with SafetensorsSource([files.vae]) as vae_source:
        shapes = {k: vae_source.shape(k) for k in vae_source.names()}
        ae = load_ae(vae_source, infer_ae_config(shapes), device=device, dtype=dtype)
    text_model, processor = load_text_model(files.text_encoder, None, device=device, dtype=dtype)
    return Components(dit, ae, text_model, processor, resolved, "original")


def _load_diffusers(
    path: Path,
    device: torch.device,
    dtype: torch.dtype,
    version: ModelVersion | None,
    keep_fp8: bool,
) -> Components:
    files = find_diffusers_files(path)
    transformer_config = read_json(files.transformer / "config.json")
    detected = version_from_diffusers_config(transformer_config)
    resolved = detected if version is None else check_version(version)
    if resolved != detected and {resolved, detected} != {"v1.0", "v1.1"}:
        raise WeightsError(
            f"version {resolved} was asked for but transformer/config.json says {detected}"
        )
    config = dl.dit_config_from_diffusers(transformer_config, resolved)
    logger.info("loading diffusers layout from %s (%s)", path, resolved)
    with SafetensorsSource(safetensors_files(files.transformer)) as raw:
        dit = load_dit(
            dl.dit_to_original(raw, config), config, device=device, dtype=dtype, keep_fp8=keep_fp8
        )
    ae_config = dl.vae_config_from_diffusers(read_json(files.vae / "config.json"))
    with SafetensorsSource(safetensors_files(files.vae)) as raw:
        ae = load_ae(
            dl.to_original(raw, dl.vae_key_maps(ae_config), "VAE"),
            ae_config,
            device=device,
            dtype=dtype,
        )
    text_model, processor = load_text_model(
        files.text_encoder, files.processor, device=device, dtype=dtype
    )
    return Components(dit, ae, text_model, processor, resolved, "diffusers")


# --- writing -------------------------------------------------------------------------------------


def write_checkpoint(
    components: Components,
    directory: str | Path,
    layout: Layout,
    *,
    fold_scale_factor: bool = False,
) -> Path:
    """Write `components` as a checkpoint directory that `load_components` reads back.

    The original layout gets the release's file names; the diffusers layout gets config.json
    files, model_index.json and FLUX's scheduler config. A v1.0 DiT needs `fold_scale_factor`
    to be written in the diffusers layout (see diffusers_layout).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dit_config: DiTConfig = components.dit.config
    ae_config: AutoEncoderConfig = components.ae.config
    dit_source = DictSource(components.dit.state_dict())
    ae_source = DictSource(components.ae.state_dict())
    if layout == "original":
        write_safetensors(directory / DIT_FILE_NAMES[dit_config.version], dit_source)
        write_safetensors(directory / "vae.safetensors", ae_source)
        qwen = directory / QWEN_FOLDER_NAME
        components.text_model.save_pretrained(qwen)
        components.processor.save_pretrained(qwen)
        return directory
    converted = dl.dit_to_diffusers(dit_source, dit_config, fold_scale_factor=fold_scale_factor)
    write_diffusers_component(
        directory / "transformer",
        converted,
        dl.dit_config_to_diffusers(dit_config, folded_scale_factor=fold_scale_factor),
    )
    write_diffusers_component(
        directory / "vae",
        dl.to_diffusers(ae_source, dl.vae_key_maps(ae_config), "VAE"),
        dl.vae_config_to_diffusers(ae_config),
    )
    components.text_model.save_pretrained(directory / "text_encoder")
    components.processor.save_pretrained(directory / "processor")
    write_diffusers_index(directory, dit_config.version)
    return directory


def write_diffusers_component(
    folder: Path, source: TensorSource, config: dict[str, object]
) -> None:
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_safetensors(folder / DIFFUSERS_WEIGHTS_NAME, source)


def write_diffusers_index(directory: Path, version: ModelVersion) -> None:
    import json

    (directory / "scheduler").mkdir(parents=True, exist_ok=True)
    (directory / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(dl.SCHEDULER_CONFIG, indent=2) + "\n"
    )
    (directory / "model_index.json").write_text(
        json.dumps(dl.model_index(version), indent=2) + "\n"
    )


def copy_tree(source: Path, destination: Path, names: set[str] | None = None) -> None:
    """Copy files (hard links where the filesystem allows; weights are never modified)."""
    destination.mkdir(parents=True, exist_ok=True)
    for item in sorted(source.iterdir()):
        if names is not None and item.name not in names:
            continue
        target = destination / item.name
        if item.is_dir():
            shutil.copytree(item, target, dirs_exist_ok=True)
            continue
        if target.exists():
            target.unlink()
        try:
            target.hardlink_to(item)
        except OSError:
            shutil.copy2(item, target)
