"""`dummy:<preset>[@seed]` sources: the real architecture with seeded random weights, no files.

Like vLLM's dummy load format: for GPU benchmarks of the full-size model (`dummy:v1.1`) without
downloading 30 GB, and for CPU tests with the tiny presets (`dummy:tiny-v1.1`). The same preset
and seed give the same weights on the same device.

The DiT and the VAE are built on the meta device and then materialised directly on the target
device in the target dtype (`to_empty`) and filled from a device-side generator, so a full-size
dummy never passes through CPU memory or float32. Each tensor has its own seed, derived from the
preset's seed and its key, so `DummySource` can write the same values to disk one tensor at a
time (`stepedit convert dummy:v1.1 DST`) without building the model.

The full-size text encoder is Qwen2.5-VL-7B's architecture (its published config, embedded
below) built by transformers on the target device; its processor is the tiny tokenizer of
`stepedit.model.qwen_tiny` (the special tokens have their own ids there, and the embedded config
points at those ids).
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

from stepedit.errors import WeightsError
from stepedit.model.autoencoder import AutoEncoder
from stepedit.model.connector import SCALE_FACTOR_INIT
from stepedit.model.dit import Step1XEditDiT
from stepedit.model.presets import AE_PRESETS, DIT_PRESETS, AutoEncoderConfig, DiTConfig
from stepedit.model.qwen_tiny import build_tiny_processor, build_tiny_qwen
from stepedit.weights.native import build_on_meta

logger = logging.getLogger(__name__)

DUMMY_PREFIX = "dummy:"
DEFAULT_SEED = 0

# Qwen2.5-VL-7B-Instruct's published architecture (config.json of the release).
QWEN_7B_TEXT: dict[str, Any] = {
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "hidden_act": "silu",
    "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 1_000_000.0,
        "mrope_section": [16, 24, 24],
    },
}
QWEN_7B_VISION: dict[str, Any] = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "in_channels": 3,
    "out_hidden_size": 3584,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
    "hidden_act": "silu",
}


@dataclass(frozen=True)
class DummySpec:
    preset: str
    seed: int

    @property
    def dit_config(self) -> DiTConfig:
        return DIT_PRESETS[self.preset]

    @property
    def ae_config(self) -> AutoEncoderConfig:
        return AE_PRESETS["tiny" if self.is_tiny else "flux"]

    @property
    def is_tiny(self) -> bool:
        return self.preset.startswith("tiny")


def is_dummy(source: object) -> bool:
    return isinstance(source, str) and source.startswith(DUMMY_PREFIX)


def parse_dummy(source: str) -> DummySpec:
    """`dummy:tiny-v1.1` or `dummy:v1.1@7` (a seed after `@`; default 0)."""
    body = source[len(DUMMY_PREFIX) :]
    preset, _, seed_text = body.partition("@")
    if preset not in DIT_PRESETS:
        raise WeightsError(f"unknown dummy preset {preset!r}; known: {sorted(DIT_PRESETS)}")
    try:
        seed = int(seed_text) if seed_text else DEFAULT_SEED
    except ValueError as exc:
        raise WeightsError(f"dummy seed must be an integer, got {seed_text!r}") from exc
    return DummySpec(preset, seed)


def _fan_in(weight: torch.Tensor) -> int:
    return math.prod(weight.shape[1:]) if weight.ndim > 1 else weight.shape[0]


def tensor_seed(seed: int, key: str) -> int:
    """The seed of one tensor: each key draws from its own stream, so a tensor's values do not
    depend on the order tensors are made in (a streamed conversion makes them in another)."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


@torch.no_grad()
def fill_tensor(tensor: torch.Tensor, owner: nn.Module, name: str, *, key: str, seed: int) -> None:
    """Seeded values in PyTorch's default init ranges; norms start at 1, norm biases at 0."""
    if isinstance(owner, nn.Linear | nn.Conv2d):
        bound = 1 / math.sqrt(_fan_in(owner.weight))
        generator = torch.Generator(device=tensor.device).manual_seed(tensor_seed(seed, key))
        tensor.uniform_(-bound, bound, generator=generator)
    elif name == "scale_factor":
        tensor.fill_(SCALE_FACTOR_INIT)
    elif name == "bias":
        tensor.zero_()
    else:  # GroupNorm / LayerNorm weights, RMSNorm scales
        tensor.fill_(1.0)


@torch.no_grad()
def fill_random(module: nn.Module, *, seed: int) -> None:
    """Fill every parameter of `module` in place with `fill_tensor`'s values."""
    if next(module.parameters()).device.type == "meta":  # shapes only (planning, tests)
        return
    for key, tensor in module.state_dict(keep_vars=True).items():
        owner_name, _, name = key.rpartition(".")
        fill_tensor(tensor, module.get_submodule(owner_name), name, key=key, seed=seed)


def build_random(factory: Any, *, device: torch.device, dtype: torch.dtype, seed: int) -> nn.Module:
    module: nn.Module = build_on_meta(factory)
    module = module.to(dtype=dtype).to_empty(device=device)
    fill_random(module, seed=seed)
    return module.eval().requires_grad_(False)


class DummySource:
    """A dummy module's tensors made one at a time on the CPU, for writing them to a file.

    The module exists only on the meta device, so a full-size DiT (25 GB in bf16) streams to
    disk with one tensor in memory. The values are those `build_random` gives on the CPU.
    """

    def __init__(self, factory: Any, *, dtype: torch.dtype, seed: int) -> None:
        self._module: nn.Module = build_on_meta(factory).to(dtype=dtype)
        self._entries = self._module.state_dict(keep_vars=True)
        self._seed = seed

    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._entries[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        return self._entries[key].dtype

    def get(self, key: str) -> torch.Tensor:
        owner_name, _, name = key.rpartition(".")
        tensor = torch.empty(self.shape(key), dtype=self.dtype(key))
        owner = self._module.get_submodule(owner_name)
        fill_tensor(tensor, owner, name, key=key, seed=self._seed)
        return tensor


def dummy_dit(
    config: DiTConfig, *, device: torch.device, dtype: torch.dtype, seed: int
) -> Step1XEditDiT:
    module = build_random(lambda: Step1XEditDiT(config), device=device, dtype=dtype, seed=seed)
    assert isinstance(module, Step1XEditDiT)
    return module


def dummy_ae(
    config: AutoEncoderConfig, *, device: torch.device, dtype: torch.dtype, seed: int
) -> AutoEncoder:
    module = build_random(lambda: AutoEncoder(config), device=device, dtype=dtype, seed=seed)
    assert isinstance(module, AutoEncoder)
    return module


def qwen_7b_config(processor: Qwen2_5_VLProcessor) -> Qwen2_5_VLConfig:
    vocab = processor.tokenizer.get_vocab()
    text = dict(QWEN_7B_TEXT)
    text.update(
        bos_token_id=vocab["<|endoftext|>"],
        eos_token_id=vocab["<|im_end|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(QWEN_7B_VISION),
        image_token_id=vocab["<|image_pad|>"],
        video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    for sub_config in (config.text_config, config.vision_config):
        sub_config._attn_implementation = "sdpa"  # type: ignore[union-attr]
    return config


def dummy_text_model(
    spec: DummySpec, *, device: torch.device, dtype: torch.dtype
) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor]:
    if spec.is_tiny:
        model, processor = build_tiny_qwen(seed=spec.seed)
        return cast(Any, model).to(device=device, dtype=dtype), processor
    processor = build_tiny_processor()
    config = qwen_7b_config(processor)
    # transformers initialises on the device the module is created on, in `dtype`; its rotary
    # tables are computed there too (a meta build would leave them empty).
    cuda_devices = []
    if device.type == "cuda":
        cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(spec.seed)
        with torch.device(device):
            model = cast(Any, Qwen2_5_VLForConditionalGeneration)._from_config(config, dtype=dtype)
    model.eval().requires_grad_(False)
    return model, processor
