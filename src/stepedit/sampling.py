"""The rectified-flow sampler of Step1X-Edit as plain functions.

Latents are packed into 2x2 patches (`pack`) and concatenated with the packed reference-image
latents along the token axis; only the first half (the noisy image) is updated by the Euler steps,
the reference tokens are fed unchanged at every step. Guidance is "true" CFG: a second pass with
the negative prompt, combined by `cfg_combine`, which for t above a threshold divides the guidance
term by a power of its per-token norm.

Two references exist and differ in float rounding only (see docs/weights.md): the official
repository computes its schedule in torch float32 and steps in the latents' dtype; the diffusers
pipelines compute it with numpy, tell the DiT (1000 t) / 1000, and step in float32. `Schedule`
carries the difference, so `denoise` reads the same for both.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal, Protocol

import numpy as np
import torch
from einops import rearrange, repeat
from torch import Tensor

# Called after each Euler step with (steps_done, total_steps); raise from it to abort.
StepCallback = Callable[[int, int], None]
Reference = Literal["official", "diffusers"]
PositionRule = Literal["shared", "offset", "index"]
NUM_TRAIN_TIMESTEPS = 1000  # the diffusers scheduler's scale of t


@dataclass(frozen=True)
class Conditioning:
    """The text side of the DiT's input for one prompt, as every encoder returns it.

    v1.0/v1.1 rows are padded to a fixed length (`mask` marks the real tokens) and have zero
    positions; v1.2 rows are exactly as long as the prompt's tokens, with positions, and carry
    the input embeddings of quoted characters for the DiT's `text_token_mapping`.
    """

    emb: Tensor  # [B, L, C_llm] last hidden state of the MLLM
    mask: Tensor  # [B, L] long, 1 = token
    txt_ids: Tensor  # [B, L, 3] float32 RoPE positions
    text_embeds: Tensor | None = None  # [B, L, C_llm] (v1.2)
    text_mask: Tensor | None = None  # [B, L] long, 1 = a character inside quotes (v1.2)

    @property
    def batch(self) -> int:
        return int(self.emb.shape[0])

    @property
    def length(self) -> int:
        return int(self.emb.shape[1])

    def repeat(self, times: int) -> Conditioning:
        """Each row `times` times in a row (one per image made with this prompt)."""

        def rep(x: Tensor) -> Tensor:
            return torch.repeat_interleave(x, times, dim=0)

        return self._map(rep)

    def to(self, device: torch.device, dtype: torch.dtype) -> Conditioning:
        """Embeddings in `dtype`; masks and positions keep theirs."""
        return Conditioning(
            self.emb.to(device, dtype),
            self.mask.to(device),
            self.txt_ids.to(device),
            None if self.text_embeds is None else self.text_embeds.to(device, dtype),
            None if self.text_mask is None else self.text_mask.to(device),
        )

    def cat(self, other: Conditioning) -> Conditioning:
        """Rows of self then rows of other; both must have the same length."""
        if other.length != self.length:
            raise ValueError(f"cannot batch lengths {self.length} and {other.length}")

        def join(a: Tensor | None, b: Tensor | None) -> Tensor | None:
            return None if a is None or b is None else torch.cat([a, b])

        return Conditioning(
            torch.cat([self.emb, other.emb]),
            torch.cat([self.mask, other.mask]),
            torch.cat([self.txt_ids, other.txt_ids]),
            join(self.text_embeds, other.text_embeds),
            join(self.text_mask, other.text_mask),
        )

    def _map(self, fn: Callable[[Tensor], Tensor]) -> Conditioning:
        return Conditioning(
            fn(self.emb),
            fn(self.mask),
            fn(self.txt_ids),
            None if self.text_embeds is None else fn(self.text_embeds),
            None if self.text_mask is None else fn(self.text_mask),
        )


class DiT(Protocol):
    """`Step1XEditDiT` or a module standing in for it (a step cache, CFG-parallel, a test's
    fake): called with the arguments of `Step1XEditDiT.forward`, by keyword (`_velocity`)."""

    def __call__(self, **inputs: Tensor | None) -> Tensor: ...


# --- schedule -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """times: t_0 > ... > t_n = 0, the Euler integration times (n steps). The DiT is told
    model_times[i] / model_scale at step i, computed in the latents' dtype: t_i itself for the
    official code; the diffusers pipelines keep 1000 t (float32) and divide it by 1000.
    upcast_step: the Euler update is done in float32 and cast back (diffusers)."""

    times: list[float]
    model_times: list[float]
    model_scale: int = 1
    upcast_step: bool = False

    @property
    def num_steps(self) -> int:
        return len(self.times) - 1

    def starting_at(self, index: int) -> Schedule:
        return replace(self, times=self.times[index:], model_times=self.model_times[index:])


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
    *,
    reference: Reference = "official",
) -> Schedule:
    """num_steps + 1 times from 1.0 down to 0.0, shifted towards 1 for larger images.

    image_seq_len: packed tokens of the noisy image only, (h/2)(w/2) for an h x w latent; the
    reference tokens are not counted (as in both references).
    """
    mu = _shift_mu(image_seq_len, base_shift, max_shift)
    if reference == "diffusers":
        # FlowMatchEulerDiscreteScheduler with the pipelines' sigmas: a float64 linspace cast to
        # float32, shifted in float32 numpy, a final 0 appended; the DiT reads (1000 t) / 1000.
        sigmas = np.linspace(1.0, 1 / num_steps, num_steps).astype(np.float32)
        if shift:
            sigmas = (math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))).astype(np.float32)
        sigmas_t = torch.from_numpy(sigmas)
        diffusers_times: list[float] = torch.cat([sigmas_t, torch.zeros(1)]).tolist()
        model_times: list[float] = (sigmas_t * NUM_TRAIN_TIMESTEPS).tolist()
        return Schedule(diffusers_times, model_times, NUM_TRAIN_TIMESTEPS, upcast_step=True)
    timesteps = torch.linspace(1, 0, num_steps + 1)  # float32, like the official code
    if shift:
        # t' = e^mu / (e^mu + (1/t - 1)); t = 0 gives 1/0 = inf and so t' = 0.
        timesteps = math.exp(mu) / (math.exp(mu) + (1 / timesteps - 1))
    times: list[float] = timesteps.tolist()
    return Schedule(times, times[:-1])


def noise_for_strength(
    noise: Tensor, init_latents: Tensor, schedule: Schedule, strength: float
) -> tuple[Tensor, Schedule]:
    """Start latents and remaining schedule for an img2img strength in [0, 1].

    strength 1 starts from pure noise with the whole schedule; strength 0 returns init_latents
    with no step left. noise and init_latents have the same shape (packed or not).
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    if strength == 1.0:
        # The reference's path without an init image: exactly the noise. (The shifted schedule's
        # first value is 1 - 6e-8 in float32, so the blend below would leak a trace of init.)
        return noise, schedule
    t_idx = int((1 - strength) * schedule.num_steps)
    t = schedule.times[t_idx]
    x = t * noise + (1.0 - t) * init_latents.to(noise.dtype)
    return x, schedule.starting_at(t_idx)


# --- tokens and positions -------------------------------------------------------------------


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
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0),
    device: torch.device | None = None,
) -> Tensor:
    """RoPE ids (index, row, col) + offset of packed tokens: [B, (h/2)(w/2), 3] float32."""
    h, w = latent_height // 2, latent_width // 2
    ids = torch.zeros(h, w, 3)
    ids[..., 1] += torch.arange(h)[:, None]
    ids[..., 2] += torch.arange(w)[None, :]
    ids += torch.tensor(offset)
    return repeat(ids, "h w c -> b (h w) c", b=batch_size).to(device)


# How each release places the reference image's tokens (`VersionSpec.reference_positions`).
REFERENCE_OFFSETS: dict[PositionRule, tuple[float, float, float]] = {
    "shared": (0.0, 0.0, 0.0),  # v1.0: the same positions as the noisy image
    "offset": (1.0, 1.0, 1.0),  # v1.1: built from torch.ones, then rows and columns added
    "index": (1.0, 0.0, 0.0),  # v1.2: only axis 0 set to 1; rows and columns 0-based
}


def prepare_image_ids(
    batch_size: int,
    latent_height: int,
    latent_width: int,
    rule: PositionRule,
    device: torch.device | None = None,
) -> Tensor:
    """img_ids [B, 2L, 3] for [noisy | reference] tokens."""
    noisy = image_ids(batch_size, latent_height, latent_width, device=device)
    ref = image_ids(batch_size, latent_height, latent_width, REFERENCE_OFFSETS[rule], device)
    return torch.cat([noisy, ref], dim=1)


# --- guidance and the loop ------------------------------------------------------------------


def _diff_norm_divisor(diff_norm: Tensor, k: float) -> Tensor:
    """diff_norm ** k where it exceeds 1, else 1: only large guidance terms are damped."""
    return torch.where(diff_norm > 1.0, diff_norm.pow(k), torch.ones_like(diff_norm))


def cfg_combine(
    cond: Tensor, uncond: Tensor, scale: float, t: float, rescale_above: float, k: float = 0.4
) -> Tensor:
    """True CFG on [B, L, C] predictions; above t = rescale_above the term is divided by
    max(1, |cond - uncond|)^k per token (norm over channels)."""
    diff = cond - uncond
    if t > rescale_above:
        norm = torch.norm(diff, dim=2, keepdim=True)  # [B, L, 1]
        return uncond + scale * diff / _diff_norm_divisor(norm, k)
    return uncond + scale * diff


def _velocity(
    model: DiT, x: Tensor, img_ids: Tensor, t: float, scale: int, text: Conditioning
) -> Tensor:
    """One DiT forward at time t / scale for every row of x [N, L, 64] -> [N, L, 64]."""
    t_vec = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
    if scale != 1:
        t_vec = t_vec / scale
    return model(
        img=x,
        img_ids=img_ids,
        txt_ids=text.txt_ids,
        timesteps=t_vec,
        llm_embedding=text.emb,
        t_vec=t_vec,
        mask=text.mask,
        text_embeddings=text.text_embeds,
        text_mask=text.text_mask,
    )


def _euler(img: Tensor, pred: Tensor, t_curr: float, t_prev: float, upcast: bool) -> Tensor:
    """x_{t_prev} = x_t + (t_prev - t_curr) v (t decreases, so the step is negative)."""
    if upcast:  # diffusers: dt as a float32 tensor, the sum in float32, cast back
        dt = torch.tensor(t_prev, dtype=torch.float32) - torch.tensor(t_curr, dtype=torch.float32)
        return (img.float() + dt.to(img.device) * pred).to(pred.dtype)
    return img + (t_prev - t_curr) * pred


def denoise(
    model: DiT,
    # model input
    img: Tensor,
    img_ids: Tensor,
    ref_img: Tensor | None,
    positive: Conditioning,
    negative: Conditioning | None,
    # sampling parameters
    schedule: Schedule,
    guidance_scale: float,
    *,
    rescale_above: float = 0.93,
    norm_power: float = 0.4,
    batch_cfg: bool = True,
    callback: StepCallback | None = None,
) -> Tensor:
    """Integrate the flow along `schedule`; returns img [B, L_img, 64].

    img: noisy packed latents [B, L_img, 64]; ref_img: packed reference latents [B, L_ref, 64]
    or None (text-to-image); img_ids: [B, L_img + L_ref, 3] (see `prepare_image_ids`).
    positive/negative: batch B each; without a negative (None) there is no guidance. With
    batch_cfg, and both of one length, the two run as one forward of batch 2B
    [positive | negative], as the official code lays them out; otherwise as two forwards.
    rescale_above: see `cfg_combine` and `VersionSpec.rescale_threshold`.
    """
    batch, num_img_tokens = img.shape[:2]
    for name, text in (("positive", positive), ("negative", negative)):
        if text is not None and text.batch != batch:
            raise ValueError(f"{name} conditioning has batch {text.batch}, expected {batch}")
    # Unpadded (v1.2) prompts of different lengths cannot share a batch: one forward each.
    can_batch = batch_cfg and negative is not None and negative.length == positive.length
    both = positive.cat(negative) if can_batch and negative is not None else None

    total, scale = schedule.num_steps, schedule.model_scale
    steps = zip(itertools.pairwise(schedule.times), schedule.model_times, strict=True)
    for step, ((t_curr, t_prev), t_model) in enumerate(steps):
        # 1. Model input: noisy tokens followed by the unchanged reference tokens.
        x = img if ref_img is None else torch.cat([img, ref_img.to(img.dtype)], dim=1)

        # 2. Velocity of the noisy tokens for the positive (and negative) prompt.
        if negative is None:
            pred = _velocity(model, x, img_ids, t_model, scale, positive)[:, :num_img_tokens]
        else:
            if both is not None:
                xx, ids = torch.cat([x, x]), torch.cat([img_ids, img_ids])
                out = _velocity(model, xx, ids, t_model, scale, both)
                cond, uncond = out[:batch], out[batch:]
            else:
                cond = _velocity(model, x, img_ids, t_model, scale, positive)
                uncond = _velocity(model, x, img_ids, t_model, scale, negative)
            # 3. Guidance.
            pred = cfg_combine(
                cond[:, :num_img_tokens],
                uncond[:, :num_img_tokens],
                guidance_scale,
                t_curr,
                rescale_above,
                norm_power,
            )

        # 4. Euler step on the noisy tokens only.
        img = _euler(img, pred, t_curr, t_prev, schedule.upcast_step)

        if callback is not None:
            callback(step + 1, total)
    return img
