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
from stepedit.model.qwen import CHAT_TEMPLATE, ImageTextProcessor
from stepedit.weights import diffusers_layout as dl
from stepedit.weights import dummy
from stepedit.weights.checkpoint import Checkpoint, TextEncoder, resolve_checkpoint
from stepedit.weights.formats import (
    DIFFUSERS_WEIGHTS_NAME,
    DIT_FILE_NAMES,
    QWEN_FOLDER_NAME,
    Layout,
    infer_ae_config,
    infer_dit_config,
    read_json,
)
from stepedit.weights.gguf import open_dit_source
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
    text_encoder: str | Path | None = None,
    revision: str | None = None,
    download: bool = False,
) -> Components:
    """Load DiT, VAE, Qwen2.5-VL and its processor from a path, a Hub repo id, or `dummy:`.

    `source` is a checkpoint directory (either layout), an original DiT file, a Hugging Face repo
    id in the local cache (`org/name[@revision]`), or `dummy:<preset>[@seed]`. Every file is
    found before anything loads (`resolve_checkpoint`); one `MissingWeights` names all that are
    missing. `text_encoder` (a folder or a repo id) replaces the checkpoint's Qwen2.5-VL; the
    original layout without one uses Qwen/Qwen2.5-VL-7B-Instruct from the cache. `revision`
    applies to a repo id; `download` fetches what the cache lacks (see docs/weights.md).

    All weights are cast to `dtype` except Linear weights of an FP8 DiT, which stay float8 when
    `keep_fp8` (upcast per call; see native.Float8StorageLinear). With `offload`, everything is
    placed on the CPU and the pipeline moves each component to `device` when it runs.
    `version` overrides the detected model version where the weights allow it, and picks the
    DiT file of a repository holding several.
    """
    target = torch.device("cpu") if offload else torch.device(device)
    if dummy.is_dummy(source):
        if text_encoder is not None or revision is not None or download:
            raise WeightsError(
                f"{source!r} has no files: text_encoder, revision and download do not apply"
            )
        return _load_dummy(str(source), device=target, dtype=dtype, version=version)
    checkpoint = resolve_checkpoint(
        source, version=version, text_encoder=text_encoder, revision=revision, download=download
    )
    if checkpoint.layout == "original":
        return _load_original(checkpoint, target, dtype, keep_fp8)
    return _load_diffusers(checkpoint, target, dtype, keep_fp8)


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
    encoder: TextEncoder, *, device: torch.device, dtype: torch.dtype
) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor]:
    """Qwen2.5-VL from a local folder (never the hub) and its processor.

    The processor is Qwen's tokenizer and the PIL image processor
    (`stepedit.model.qwen.ImageTextProcessor`), so neither torchvision nor a video processor is
    needed.
    """
    try:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            encoder.model, dtype=dtype, attn_implementation="sdpa", local_files_only=True
        )
        tokenizer = Qwen2Tokenizer.from_pretrained(encoder.processor, local_files_only=True)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(
            encoder.processor, local_files_only=True
        )
    except OSError as exc:
        raise WeightsError(f"cannot load Qwen2.5-VL from {encoder.origin}: {exc}") from exc
    processor = ImageTextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template or CHAT_TEMPLATE,
    )
    model.eval().requires_grad_(False)
    return cast(Any, model).to(device), processor


def _text_model(
    checkpoint: Checkpoint, device: torch.device, dtype: torch.dtype
) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor]:
    assert checkpoint.text_encoder is not None  # resolve_checkpoint requires it for loading
    return load_text_model(checkpoint.text_encoder, device=device, dtype=dtype)


def _load_original(
    checkpoint: Checkpoint, device: torch.device, dtype: torch.dtype, keep_fp8: bool
) -> Components:
    with open_dit_source(checkpoint.dit_files) as dit_source:  # safetensors, or one GGUF file
        shapes = {k: dit_source.shape(k) for k in dit_source.names()}
        dit = load_dit(
            dit_source,
            infer_dit_config(shapes, checkpoint.version),
            device=device,
            dtype=dtype,
            keep_fp8=keep_fp8,
        )
    with SafetensorsSource(checkpoint.vae_files) as vae_source:
        shapes = {k: vae_source.shape(k) for k in vae_source.names()}
        # float32 straight from the file, as the references run the VAE: a cast to the
        # pipeline's bf16 first would round its weights before the pipeline upcasts them.
        ae = load_ae(vae_source, infer_ae_config(shapes), device=device, dtype=torch.float32)
    text_model, processor = _text_model(checkpoint, device, dtype)
    return Components(dit, ae, text_model, processor, checkpoint.version, "original")


def _load_diffusers(
    checkpoint: Checkpoint, device: torch.device, dtype: torch.dtype, keep_fp8: bool
) -> Components:
    transformer_config = read_json(checkpoint.dit_files[0].parent / "config.json")
    config = dl.dit_config_from_diffusers(transformer_config, checkpoint.version)
    with SafetensorsSource(checkpoint.dit_files) as raw:
        dit = load_dit(
            dl.dit_to_original(raw, config), config, device=device, dtype=dtype, keep_fp8=keep_fp8
        )
    ae_config = dl.vae_config_from_diffusers(
        read_json(checkpoint.vae_files[0].parent / "config.json")
    )
    with SafetensorsSource(checkpoint.vae_files) as raw:
        ae = load_ae(
            dl.to_original(raw, dl.vae_key_maps(ae_config), "VAE"),
            ae_config,
            device=device,
            dtype=torch.float32,  # as in _load_original: never rounded to bf16 on the way
        )
    text_model, processor = _text_model(checkpoint, device, dtype)
    return Components(dit, ae, text_model, processor, checkpoint.version, "diffusers")


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
    write_layout(
        directory,
        layout,
        dit=(DictSource(components.dit.state_dict()), components.dit.config),
        ae=(DictSource(components.ae.state_dict()), components.ae.config),
        text_model=components.text_model,
        processor=components.processor,
        fold_scale_factor=fold_scale_factor,
    )
    return directory


def write_layout(
    directory: Path,
    layout: Layout,
    *,
    dit: tuple[TensorSource, DiTConfig],
    ae: tuple[TensorSource, AutoEncoderConfig],
    text_model: Qwen2_5_VLForConditionalGeneration,
    processor: Qwen2_5_VLProcessor,
    fold_scale_factor: bool = False,
) -> None:
    """Write a checkpoint from tensor sources (streamed one tensor at a time) and a text model."""
    directory.mkdir(parents=True, exist_ok=True)
    (dit_source, dit_config), (ae_source, ae_config) = dit, ae
    if layout == "original":
        write_safetensors(directory / DIT_FILE_NAMES[dit_config.version], dit_source)
        write_safetensors(directory / "vae.safetensors", ae_source)
        write_text_model(text_model, processor, directory / QWEN_FOLDER_NAME)
        return
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
    write_text_model(text_model, None, directory / "text_encoder")
    processor.save_pretrained(directory / "processor")
    write_diffusers_index(directory, dit_config.version)


def write_text_model(
    text_model: Qwen2_5_VLForConditionalGeneration,
    processor: Qwen2_5_VLProcessor | None,
    folder: Path,
) -> None:
    # 5 GB shards as the Qwen2.5-VL release has them; transformers writes each shard straight
    # from the model's tensors, so the model is not copied.
    text_model.save_pretrained(folder, max_shard_size="5GB")
    if processor is not None:
        processor.save_pretrained(folder)


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
    """Copy files (hard links where the filesystem allows; weights are never modified).

    Symlinks are followed: the copy holds the files themselves, never links into a cache.
    """
    destination.mkdir(parents=True, exist_ok=True)
    for item in sorted(source.iterdir()):
        if names is not None and item.name not in names:
            continue
        target = destination / item.name
        if item.is_dir():
            shutil.copytree(item, target, dirs_exist_ok=True)
            continue
        if target.exists() or target.is_symlink():
            target.unlink()
        content = item.resolve()  # a Hub cache snapshot holds symlinks to its blobs
        try:
            target.hardlink_to(content)
        except OSError:
            shutil.copy2(content, target)
