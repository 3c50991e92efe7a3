"""A seeded tiny DiT (float32, CPU) and the DiT inputs of a small edit, for these tests.

A module of its own (not conftest): several test folders have a conftest, and only a unique
module name imports reliably from test files and from spawned worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from seeded import init_random_weights
from stepedit.model import DIT_PRESETS, Step1XEditDiT
from stepedit.sampling import (
    Conditioning,
    Schedule,
    denoise,
    get_schedule,
    pack,
    prepare_image_ids,
)

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
    positive: Conditioning  # batch B
    negative: Conditioning  # batch B
    schedule: Schedule

    def denoise(
        self,
        model: object,
        *,
        batch_cfg: bool = True,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """`sampling.denoise` over these inputs with guidance 4 (on `device` in `dtype`)."""

        def to(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, dtype)

        def text(c: Conditioning) -> Conditioning:
            return c.to(device or torch.device("cpu"), dtype or c.emb.dtype)

        with torch.no_grad():
            return denoise(
                model,  # type: ignore[arg-type]
                to(self.img),
                self.img_ids.to(device),  # positions stay float32, as the pipeline makes them
                to(self.ref_img),
                text(self.positive),
                text(self.negative),
                self.schedule,
                4.0,
                batch_cfg=batch_cfg,
            )


def make_inputs(seed: int, *, batch: int = 1, size: int = 64, steps: int = 6) -> EditInputs:
    """Inputs of `denoise` for a `size` px square edit with guidance (positive, negative rows)."""
    g = torch.Generator().manual_seed(seed)
    latent = size // 8
    noise = pack(torch.randn(batch, 16, latent, latent, generator=g))
    ref = pack(torch.randn(batch, 16, latent, latent, generator=g))
    config = DIT_PRESETS["tiny-v1.1"]
    emb = torch.randn(2 * batch, TXT_LEN, config.connector_in_channels, generator=g)
    mask = torch.ones(2 * batch, TXT_LEN, dtype=torch.long)
    mask[:, TXT_LEN - 2 :] = 0  # padded tail, as the encoder pads to its max length
    txt_ids = torch.zeros(batch, TXT_LEN, 3)
    return EditInputs(
        img=noise,
        ref_img=ref,
        img_ids=prepare_image_ids(batch, latent, latent, "offset"),
        positive=Conditioning(emb[:batch], mask[:batch], txt_ids),
        negative=Conditioning(emb[batch:], mask[batch:], txt_ids),
        schedule=get_schedule(steps, noise.shape[1]),
    )
