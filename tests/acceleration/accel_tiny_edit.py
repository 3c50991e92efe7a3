"""A seeded tiny DiT (float32, CPU) and the DiT inputs of a small edit, for these tests.

A module of its own (not conftest): several test folders have a conftest, and only a unique
module name imports reliably from test files and from spawned worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stepedit.model import DIT_PRESETS, Step1XEditDiT, init_random_weights
from stepedit.sampling import get_schedule, pack, prepare_ids

TXT_LEN = 8


def make_tiny_dit(seed: int = 0, std: float = 0.2) -> Step1XEditDiT:
    dit = Step1XEditDiT(DIT_PRESETS["tiny-v1.1"])
    # A larger std than the default keeps the blocks far from identity, so skips are visible.
    init_random_weights(dit, torch.Generator().manual_seed(seed), std=std)
    return dit.eval()


@dataclass(frozen=True)
class EditInputs:
    img: torch.Tensor  # [B, L, 64] noisy tokens
    ref_img: torch.Tensor  # [B, L, 64]
    img_ids: torch.Tensor  # [B, 2L, 3]
    txt_ids: torch.Tensor  # [2B, T, 3]
    llm_embedding: torch.Tensor  # [2B, T, C]
    mask: torch.Tensor  # [2B, T]
    timesteps: list[float]


def make_inputs(seed: int, *, batch: int = 1, size: int = 64, steps: int = 6) -> EditInputs:
    """Inputs of `denoise` for a `size` px square edit with guidance (positive, negative rows)."""
    g = torch.Generator().manual_seed(seed)
    latent = size // 8
    noise = pack(torch.randn(batch, 16, latent, latent, generator=g))
    ref = pack(torch.randn(batch, 16, latent, latent, generator=g))
    img_ids, txt_ids = prepare_ids(2 * batch, latent, latent, TXT_LEN, "v1.1")
    config = DIT_PRESETS["tiny-v1.1"]
    emb = torch.randn(2 * batch, TXT_LEN, config.connector_in_channels, generator=g)
    mask = torch.ones(2 * batch, TXT_LEN, dtype=torch.long)
    mask[:, TXT_LEN - 2 :] = 0  # padded tail, as the encoder pads to its max length
    return EditInputs(
        img=noise,
        ref_img=ref,
        img_ids=img_ids[:batch],
        txt_ids=txt_ids,
        llm_embedding=emb,
        mask=mask,
        timesteps=get_schedule(steps, noise.shape[1]),
    )
