"""What the checks run on: tiny checkpoints in the release's format, images, seeded inputs.

Runs in stepedit's venv. The DiT and the VAE are stepedit's `dummy:tiny-<version>` models written
by `stepedit.weights.write_checkpoint`; the Qwen2.5-VL folder is rewritten in the form the
released Qwen2.5-VL-7B-Instruct folder has (flat config.json with `rope_scaling` mrope,
preprocessor_config.json, tokenizer files, chat_template.json), which transformers 4.x (the
references) and 5.x (stepedit) both read, with the Qwen-shaped tokenizer of qwen_tokenizer.py.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer

import qwen_tokenizer
import stepedit_side

QWEN_FOLDER = "Qwen2.5-VL-7B-Instruct"
WEIGHTS_SEED = 0
# Qwen2.5-VL's image preprocessing as released (the references pass their own pixel bounds).
PREPROCESSOR_CONFIG: dict[str, Any] = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
}
# Files of stepedit's own processor save that the release format replaces.
_PROCESSOR_FILES = (
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)


@dataclass(frozen=True)
class QwenTokenizer:
    tokenizer: Tokenizer
    merges: list[tuple[str, str]]


def build_tokenizer(cache: Path) -> QwenTokenizer:
    """The Qwen-shaped tokenizer, fitted to stepedit's template head (cached in `cache`)."""
    merges_file = cache / "qwen_shaped_merges.json"
    if merges_file.exists():
        merges = [tuple(m) for m in json.loads(merges_file.read_text())]
    else:
        merges = qwen_tokenizer.fit_merges(stepedit_side.template_head())
        cache.mkdir(parents=True, exist_ok=True)
        merges_file.write_text(json.dumps(merges))
    pairs: list[tuple[str, str]] = [(a, b) for a, b in merges]
    return QwenTokenizer(qwen_tokenizer.build_tokenizer(pairs), pairs)


def release_config(model: Any) -> dict[str, Any]:
    """config.json as Qwen2.5-VL-7B-Instruct publishes it (flat text fields, mrope_section in
    `rope_scaling`), for the tiny model's sizes."""
    text, vision = model.config.text_config, model.config.vision_config
    rope = dict(getattr(text, "rope_parameters", None) or {})
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "attention_dropout": 0.0,
        "bos_token_id": text.bos_token_id,
        "eos_token_id": text.eos_token_id,
        "pad_token_id": text.pad_token_id,
        "vision_start_token_id": model.config.vision_start_token_id,
        "vision_end_token_id": model.config.vision_end_token_id,
        "vision_token_id": model.config.vision_end_token_id + 1,
        "image_token_id": model.config.image_token_id,
        "video_token_id": model.config.video_token_id,
        "hidden_act": text.hidden_act,
        "hidden_size": text.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": text.intermediate_size,
        "max_position_embeddings": text.max_position_embeddings,
        "max_window_layers": text.num_hidden_layers,
        "num_attention_heads": text.num_attention_heads,
        "num_hidden_layers": text.num_hidden_layers,
        "num_key_value_heads": text.num_key_value_heads,
        "rms_norm_eps": text.rms_norm_eps,
        "rope_theta": rope.get("rope_theta", 1_000_000.0),
        "rope_scaling": {"type": "mrope", "mrope_section": list(rope["mrope_section"])},
        "sliding_window": 32768,
        "use_sliding_window": False,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": text.vocab_size,
        "vision_config": {
            "depth": vision.depth,
            "hidden_act": vision.hidden_act,
            "hidden_size": vision.hidden_size,
            "intermediate_size": vision.intermediate_size,
            "num_heads": vision.num_heads,
            "in_chans": 3,
            "out_hidden_size": vision.out_hidden_size,
            "patch_size": vision.patch_size,
            "spatial_merge_size": vision.spatial_merge_size,
            "spatial_patch_size": vision.patch_size,
            "window_size": vision.window_size,
            "fullatt_block_indexes": list(vision.fullatt_block_indexes),
            "tokens_per_second": 2,
            "temporal_patch_size": vision.temporal_patch_size,
        },
    }


def write_qwen_folders(
    model: Any, tokenizer: QwenTokenizer, model_dir: Path, processor_dir: Path
) -> None:
    """Weights + config in `model_dir`, tokenizer + preprocessing in `processor_dir` (the same
    folder in the original layout)."""
    (model_dir / "config.json").write_text(json.dumps(release_config(model), indent=2) + "\n")
    for name in _PROCESSOR_FILES:
        (processor_dir / name).unlink(missing_ok=True)
    qwen_tokenizer.save_tokenizer_files(
        tokenizer.tokenizer, tokenizer.merges, stepedit_side.chat_template(), processor_dir
    )
    (processor_dir / "preprocessor_config.json").write_text(
        json.dumps(PREPROCESSOR_CONFIG, indent=2) + "\n"
    )


ProcessorSaver = Callable[[Path, Path], None]


def write_checkpoint(
    version: str,
    layout: str,
    folder: Path,
    tokenizer: QwenTokenizer,
    save_processor: ProcessorSaver | None = None,
) -> Path:
    """A tiny `version` checkpoint in `layout` under `folder` (rewritten if present).

    `save_processor(source, destination)`, when given, rewrites the diffusers layout's processor
    folder from the release-format one (as the fork's conversion script does).
    """
    if folder.exists():
        shutil.rmtree(folder)
    vocab = tokenizer.tokenizer.get_vocab(with_added_tokens=True)
    model = stepedit_side.build_qwen(vocab, qwen_tokenizer.EMBEDDING_ROWS, WEIGHTS_SEED)
    stepedit_side.write_tiny_checkpoint(version, layout, folder, model, WEIGHTS_SEED)
    if layout == "original":
        write_qwen_folders(model, tokenizer, folder / QWEN_FOLDER, folder / QWEN_FOLDER)
    else:
        write_qwen_folders(model, tokenizer, folder / "text_encoder", folder / "processor")
        if save_processor is not None:
            _resave_processor(folder / "processor", save_processor)
    return folder


def _resave_processor(processor_dir: Path, save_processor: ProcessorSaver) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        saved = Path(scratch) / "processor"
        save_processor(processor_dir, saved)
        shutil.rmtree(processor_dir)
        shutil.copytree(saved, processor_dir)


# ----------------------------------------------------------------- LoRA files

# The official format (sd-scripts' lora_unet_* keys, what the official `--lora` merges): one
# Linear of each kind its network adapts, each with its own rank and alpha.
OFFICIAL_LORA = (  # (module, rank, alpha)
    ("double_blocks.0.img_attn.qkv", 4, 2.0),  # double-block attention, q/k/v fused
    ("double_blocks.0.txt_mlp.0", 2, 3.0),  # double-block MLP
    ("double_blocks.0.img_mod.lin", 4, 0.0),  # modulation; alpha 0 stands for alpha = rank
    ("single_blocks.0.linear1", 3, 1.0),  # single block: q/k/v and MLP in, fused
    ("single_blocks.0.linear2", 4, 8.0),  # single block out
    ("img_in", 2, 1.0),  # outside the blocks (the network's `in_dims` filters)
)
# The diffusers/PEFT format: modules of the diffusers transformer; rank and lora_alpha in the
# safetensors header, keyed "transformer.*" as a pipeline's save_lora_weights writes them.
DIFFUSERS_LORA = (
    "transformer_blocks.0.attn.to_q",  # row blocks of the original layout's fused img qkv
    "transformer_blocks.0.attn.to_k",
    "transformer_blocks.0.attn.add_v_proj",  # ... and of the txt qkv
    "transformer_blocks.0.ff.net.0.proj",  # double-block MLP
    "single_transformer_blocks.0.attn.to_v",  # row blocks of the single block's linear1
    "single_transformer_blocks.0.proj_mlp",
    "single_transformer_blocks.0.proj_out",  # linear2
    "norm_out.linear",  # the final AdaLN, whose halves the original layout swaps
    "x_embedder",
)
DIFFUSERS_LORA_CONFIG: dict[str, Any] = {
    "r": 4,
    "lora_alpha": 2.0,
    "rank_pattern": {"single_transformer_blocks.0.proj_mlp": 2},
    "alpha_pattern": {"single_transformer_blocks.0.proj_mlp": 3.0},
    "target_modules": list(DIFFUSERS_LORA),
}
LORA_METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY


def write_lora(layout: str, dit_weights: Path, path: Path, seed: int = 4) -> Path:
    """A tiny LoRA for the DiT saved in `dit_weights`: the official format for the original
    layout, the diffusers/PEFT one for the diffusers layout. Up and down are both random
    (a LoRA fresh from training has up = 0, which would change nothing)."""
    generator = torch.Generator().manual_seed(seed)
    with safe_open(str(dit_weights), framework="pt") as handle:
        shapes = {key: handle.get_slice(key).get_shape() for key in handle.keys()}  # noqa: SIM118

    def factors(module: str, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        out_features, in_features = shapes[f"{module}.weight"]
        down = torch.randn(rank, in_features, generator=generator) * 0.1
        up = torch.randn(out_features, rank, generator=generator) * 0.1
        return down, up

    tensors: dict[str, torch.Tensor] = {}
    header = {"format": "pt"}
    if layout == "original":
        for module, rank, alpha in OFFICIAL_LORA:
            name = "lora_unet_" + module.replace(".", "_")
            down, up = factors(module, rank)
            tensors[f"{name}.lora_down.weight"] = down
            tensors[f"{name}.lora_up.weight"] = up
            tensors[f"{name}.alpha"] = torch.tensor(alpha)
    else:
        config = DIFFUSERS_LORA_CONFIG
        for module in DIFFUSERS_LORA:
            down, up = factors(module, config["rank_pattern"].get(module, config["r"]))
            tensors[f"transformer.{module}.lora_A.weight"] = down
            tensors[f"transformer.{module}.lora_B.weight"] = up
        header[LORA_METADATA_KEY] = json.dumps({f"transformer.{k}": v for k, v in config.items()})
    save_file(tensors, str(path), metadata=header)
    return path


# ----------------------------------------------------------------- inputs


def source_image(width: int, height: int) -> Image.Image:
    """A smooth, asymmetric RGB test picture (gradients and a disc), the same every run."""
    ys = torch.linspace(0, 1, height)[:, None]
    xs = torch.linspace(0, 1, width)[None, :]
    disc = (((xs - 0.35) ** 2 + (ys - 0.6) ** 2) < 0.05).float()
    red = 0.8 * xs + 0.2 * disc
    green = 0.3 + 0.5 * ys * (1 - disc)
    blue = 0.5 + 0.4 * torch.sin(6 * math.pi * xs * ys)
    rgb = torch.stack([red, green, blue], dim=-1).clamp(0, 1).mul(255).round().to(torch.uint8)
    return Image.fromarray(rgb.numpy())


def to_uint8(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).copy()


def _ids(h: int, w: int, index: float, offset: float) -> torch.Tensor:
    ids = torch.zeros(h, w, 3)
    ids[..., 0] = index
    ids[..., 1] = torch.arange(h)[:, None] + offset
    ids[..., 2] = torch.arange(w)[None, :] + offset
    return ids.reshape(h * w, 3)


def dit_inputs(version: str, hp: dict[str, Any], seed: int = 1) -> dict[str, torch.Tensor]:
    """Random DiT inputs for CFG-shaped batches of 2: 6x4 packed noisy tokens, as many
    reference tokens, 20 text tokens (the second row padded after 12)."""
    g = torch.Generator().manual_seed(seed)
    batch, h, w, length = 2, 4, 6, 20
    tokens = h * w
    img_ids = torch.cat([_ids(h, w, 0, 0), _ids(h, w, 1, 1)])  # noisy | reference
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 12:] = 0
    txt_ids = torch.zeros(batch, length, 3)
    inputs = {
        "dit/img": torch.randn(batch, 2 * tokens, hp["in_channels"], generator=g),
        "dit/img_ids": img_ids.expand(batch, -1, -1).contiguous(),
        "dit/t": torch.full((batch,), 0.7),
        "dit/llm_embedding": torch.randn(batch, length, hp["connector_in_channels"], generator=g),
        "dit/mask": mask,
    }
    if version == "v1.2":
        txt_ids[..., 0] = -torch.arange(length, 0, -1).float()
        txt_ids[:, 5:9, 1:] = torch.rand(4, 2, generator=g) * 4
        inputs["dit/text_embeddings"] = torch.randn(
            batch, length, hp["connector_in_channels"], generator=g
        )
        inputs["dit/text_mask"] = (torch.rand(batch, length, generator=g) > 0.5).long()
        inputs["dit/mask"] = torch.ones(batch, length, dtype=torch.long)  # v1.2 never pads
    inputs["dit/txt_ids"] = txt_ids
    return inputs


def vae_inputs(seed: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "vae/x": torch.rand(1, 3, 64, 96, generator=g) * 2 - 1,
        "vae/z": torch.randn(1, 16, 8, 12, generator=g),
    }


def start_latents(width: int, height: int, seed: int = 3) -> torch.Tensor:
    """Starting latents [1, 16, H/8, W/8] for a working size of width x height."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 16, height // 8, width // 8, generator=g)
