"""The rectified-flow sampler of Step1X-Edit as plain functions.

Latents are packed into 2x2 patches (`pack`) and concatenated with the packed reference-image
latents along the token axis; only the first half (the noisy image) is updated by the Euler steps,
the reference tokens are fed unchanged at every step. Guidance is "true" CFG: a second pass with
the negative prompt, combined by `cfg_combine`, which for t above `timesteps_truncate` divides the
guidance term by a power of its per-token norm (v1.1+; v1.0 used plain CFG).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from einops import rearrange, repeat
from torch import Tensor

from stepedit.model.dit import Step1XEditDiT
from stepedit.model.presets import ModelVersion

# Called after each Euler step with (steps_done, total_steps); raise from it to abort.
StepCallback = Callable[[int, int], None]

# Plain CFG for v1.0 (no t is above 1.0); norm-rescaled CFG above t = 0.93 for v1.1 and v1.2.
TIMESTEPS_TRUNCATE: dict[ModelVersion, float] = {"v1.0": 1.0, "v1.1": 0.93, "v1.2": 0.93}


def _shift_mu(image_seq_len: int, base_shift: float, max_shift: float) -> float:
    """Shift grows linearly with the token count: base_shift at 256 tokens, max_shift at 4096."""
    slope = (max_shift - base_shift) / (4096 - 256)
    return slope * image_seq_len + (base_shift - slope * 256)


def get_schedule(
    num_steps: int,
    image_seq_len: int,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
    shift: bool = True,
) -> list[float]:
    """num_steps + 1 times from 1.0 down to 0.0, shifted towards 1 for larger images.

    image_seq_len: packed tokens of the noisy image only, (h/2)(w/2) for an h x w latent; the
    reference tokens are not counted (as in the reference).
    """
    timesteps = torch.linspace(1, 0, num_steps + 1)  # float32, like the reference
    if shift:
        mu = _shift_mu(image_seq_len, base_shift, max_shift)
        # t' = e^mu / (e^mu + (1/t - 1)); t = 0 gives 1/0 = inf and so t' = 0.
        timesteps = math.exp(mu) / (math.exp(mu) + (1 / timesteps - 1))
    return timesteps.tolist()


def pack(latents: Tensor) -> Tensor:
    """latents [B, C, h, w] -> tokens [B, (h/2)(w/2), C*4] (2x2 patches, channel-major)."""
    return rearrange(latents, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)


def unpack(x: Tensor, height: int, width: int) -> Tensor:
    """tokens [B, L, C*4] -> latents [B, C, h, w] for an image of height x width *pixels*."""
    return rearrange(
        x,
        "b (h w) (c ph pw) -> b c (h ph) (w pw)",
        h=math.ceil(height / 16),
        w=math.ceil(width / 16),
        ph=2,
        pw=2,
    )


def image_ids(
    batch_size: int,
    latent_height: int,
    latent_width: int,
    index: int = 0,
    device: torch.device | None = None,
) -> Tensor:
    """RoPE ids (index, index + row, index + col) of packed tokens: [B, (h/2)(w/2), 3] float32.

    The offset shifts all three axes: the v1.1 reference builds the reference-image ids from
    `torch.ones` and then adds the row/column ranges, so they start at (1, 1, 1), not (1, 0, 0).
    """
    h, w = latent_height // 2, latent_width // 2
    ids = torch.full((h, w, 3), float(index))
    ids[..., 1] += torch.arange(h)[:, None]
    ids[..., 2] += torch.arange(w)[None, :]
    return repeat(ids, "h w c -> b (h w) c", b=batch_size).to(device)


def reference_index(version: ModelVersion) -> int:
    """RoPE index of the reference image tokens: v1.0 shares 0 with the noisy image."""
    return 0 if version == "v1.0" else 1


def prepare_ids(
    batch_size: int,
    latent_height: int,
    latent_width: int,
    txt_len: int,
    version: ModelVersion,
    device: torch.device | None = None,
) -> tuple[Tensor, Tensor]:
    """(img_ids [B, 2L, 3] for [noisy | reference] tokens, txt_ids [B, txt_len, 3] all zero)."""
    noisy = image_ids(batch_size, latent_height, latent_width, 0, device)
    ref = image_ids(batch_size, latent_height, latent_width, reference_index(version), device)
    txt_ids = torch.zeros(batch_size, txt_len, 3, device=device)
    return torch.cat([noisy, ref], dim=1), txt_ids


def noise_for_strength(
    noise: Tensor, init_latents: Tensor, timesteps: list[float], strength: float
) -> tuple[Tensor, list[float]]:
    """Start latents and remaining timesteps for an img2img strength in [0, 1].

    strength 1 starts from pure noise with the whole schedule; strength 0 returns init_latents
    with no step left. noise and init_latents have the same shape (packed or not).
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    if strength == 1.0:
        # The reference's path without an init image: exactly the noise. (The shifted schedule's
        # first value is 1 - 6e-8 in float32, so the blend below would leak a trace of init.)
        return noise, timesteps
    num_steps = len(timesteps) - 1
    t_idx = int((1 - strength) * num_steps)
    t = timesteps[t_idx]
    x = t * noise + (1.0 - t) * init_latents.to(noise.dtype)
    return x, timesteps[t_idx:]


def _diff_norm_divisor(diff_norm: Tensor, k: float) -> Tensor:
    """diff_norm ** k where it exceeds 1, else 1: only large guidance terms are damped."""
    return torch.where(diff_norm > 1.0, diff_norm.pow(k), torch.ones_like(diff_norm))


def cfg_combine(
    cond: Tensor, uncond: Tensor, scale: float, t: float, truncate: float, k: float = 0.4
) -> Tensor:
    """True CFG on [B, L, C] predictions; above t = truncate the term is divided by
    max(1, |cond - uncond|)^k per token (norm over channels)."""
    diff = cond - uncond
    if t > truncate:
        norm = torch.norm(diff, dim=2, keepdim=True)  # [B, L, 1]
        return uncond + scale * diff / _diff_norm_divisor(norm, k)
    return uncond + scale * diff


@dataclass(frozen=True)
class _TextInputs:
    txt_ids: Tensor
    llm_embedding: Tensor
    mask: Tensor
    text_embeddings: Tensor | None
    text_mask: Tensor | None

    def rows(self, rows: slice) -> _TextInputs:
        def take(x: Tensor | None) -> Tensor | None:
            return None if x is None else x[rows]

        return _TextInputs(
            self.txt_ids[rows],
            self.llm_embedding[rows],
            self.mask[rows],
            take(self.text_embeddings),
            take(self.text_mask),
        )


def _velocity(
    model: Step1XEditDiT, x: Tensor, img_ids: Tensor, t: float, text: _TextInputs
) -> Tensor:
    """One DiT forward at time t for every row of x [N, L, 64] -> [N, L, 64]."""
    t_vec = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
    return model(
        img=x,
        img_ids=img_ids,
        txt_ids=text.txt_ids,
        timesteps=t_vec,
        llm_embedding=text.llm_embedding,
        t_vec=t_vec,
        mask=text.mask,
        text_embeddings=text.text_embeddings,
        text_mask=text.text_mask,
    )


def denoise(
    model: Step1XEditDiT,
    img: Tensor,
    img_ids: Tensor,
    ref_img: Tensor | None,
    txt_ids: Tensor,
    llm_embedding: Tensor,
    mask: Tensor,
    timesteps: list[float],
    guidance_scale: float | None,
    *,
    text_embeddings: Tensor | None = None,
    text_mask: Tensor | None = None,
    timesteps_truncate: float = 0.93,
    norm_power: float = 0.4,
    batch_cfg: bool = True,
    callback: StepCallback | None = None,
) -> Tensor:
    """Integrate the flow from timesteps[0] to timesteps[-1]; returns img [B, L_img, 64].

    img: noisy packed latents [B, L_img, 64]; ref_img: packed reference latents [B, L_ref, 64]
    or None (text-to-image); img_ids: [B, L_img + L_ref, 3] (see `prepare_ids`).
    Text conditioning (txt_ids, llm_embedding, mask, and for v1.2 text_embeddings, text_mask)
    has batch B without guidance (guidance_scale None), else 2B: the B positive prompts first,
    then the B negative ones, as the reference lays them out. With batch_cfg the two halves run
    in one forward of batch 2B, otherwise as two forwards of batch B (same result).
    timesteps_truncate: see `TIMESTEPS_TRUNCATE` (1.0 for v1.0, 0.93 for v1.1 and v1.2).
    """
    batch, num_img_tokens = img.shape[:2]
    expected = batch if guidance_scale is None else 2 * batch
    if llm_embedding.shape[0] != expected:
        raise ValueError(f"text batch is {llm_embedding.shape[0]}, expected {expected}")
    text = _TextInputs(txt_ids, llm_embedding, mask, text_embeddings, text_mask)
    positive, negative = slice(0, batch), slice(batch, 2 * batch)

    total = len(timesteps) - 1
    for step, (t_curr, t_prev) in enumerate(itertools.pairwise(timesteps)):
        # 1. Model input: noisy tokens followed by the unchanged reference tokens.
        x = img if ref_img is None else torch.cat([img, ref_img.to(img.dtype)], dim=1)

        # 2. Velocity of the noisy tokens for the positive (and negative) prompt.
        if guidance_scale is None:
            pred = _velocity(model, x, img_ids, t_curr, text)[:, :num_img_tokens]
        else:
            if batch_cfg:
                both = _velocity(
                    model, torch.cat([x, x]), torch.cat([img_ids, img_ids]), t_curr, text
                )
                cond, uncond = both[positive], both[negative]
            else:
                cond = _velocity(model, x, img_ids, t_curr, text.rows(positive))
                uncond = _velocity(model, x, img_ids, t_curr, text.rows(negative))
            # 3. Guidance.
            pred = cfg_combine(
                cond[:, :num_img_tokens],
                uncond[:, :num_img_tokens],
                guidance_scale,
                t_curr,
                timesteps_truncate,
                norm_power,
            )

        # 4. Euler step on the noisy tokens only (t decreases, so the step is negative).
        img = img + (t_prev - t_curr) * pred

        if callback is not None:
            callback(step + 1, total)
    return img
