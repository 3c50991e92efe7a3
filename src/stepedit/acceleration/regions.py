"""Region-aware sampling: masked edits, the estimate of the edited region, and `+regions`.

One sampler (`RegionSampler.denoise`, called like `sampling.denoise`) serves three requests:

- A mask (or an outpaint's new area). After every Euler step the tokens that may not change yet
  are replaced by the source latents brought to the new noise level with the edit's own noise,
  x = t * noise + (1 - t) * source, as diffusers' FLUX Kontext inpainting does. A grey level m
  is local strength, as in differential diffusion: a latent pixel follows the source up to step
  floor((1 - m) n) of the request's n steps and is free after, exactly as an img2img edit at
  strength m starts (so `strength` keeps its meaning and combines as the minimum); m = 1 is free
  from the start, m = 0 never, and ends exactly on the source latents.
- preserve_unedited. After the first `partition_at` of the steps, the model's own prediction of
  the final image, x0 = x_t - t v, is compared with the source latents token by token (cosine
  similarity of the 64 packed channels, below `threshold` = edited), the estimate is cleaned
  (3x3 erosion then 5x5 dilation on the token grid, so isolated tokens drop out and the region
  gets a margin), and the rest is treated as a mask from then on (RegionE's adaptive region
  partition, arXiv 2510.25590).
- `+regions` (RegionE-class acceleration). Once the region is known (the mask, or the same
  estimate), the next step runs the whole DiT once more and keeps, in every block, the keys and
  values of the context: the unedited noisy tokens and the reference image's tokens. The steps
  after it run the DiT over the text and the edited tokens only, attending to that cached
  context; the instruction's tokens are recomputed (they are few). A refresh step in the middle
  and the last `final_full_steps` run every token again. Without a mask or preserve_unedited, the
  unedited tokens are moved in one Euler step to the noise level of the next full step (their
  trajectory is straight, RegionE's finding) instead of being replaced by the source. A region
  step may reuse the last velocity when the last two computed ones barely differ. When every
  token is edited the region path is not taken, so the result is exactly that of the exact path.

The cached-context forward is written from the DiT's own submodules (as `step_cache` gates
them); `tests/acceleration/test_accel_regions.py` checks it against the DiT's forward.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image
from torch import Tensor, nn

from stepedit import sampling
from stepedit.acceleration.step_cache import StepCachedDiT, relative_l1
from stepedit.model.attention import apply_rope, embed_positions
from stepedit.model.layers import (
    DoubleStreamBlock,
    ModulationOut,
    SingleStreamBlock,
    timestep_embedding,
)
from stepedit.sampling import Conditioning, Schedule, StepCallback, cfg_combine

if TYPE_CHECKING:
    from stepedit.model.dit import Step1XEditDiT
    from stepedit.regions import EditArea

LATENT_CHANNELS = 16
VAE_DOWNSAMPLE = 8


@dataclass(frozen=True)
class RegionSettings:
    """Tunables of the region estimate and of `+regions` (defaults: RegionE's for Step1X-Edit
    at 28 steps, where it has one; see docs/regions.md)."""

    accelerate: bool = False  # `+regions`: the DiT runs over the edited tokens after the partition
    # cosine(x0, source) of a token below this: edited. Above 1 everything counts as edited.
    threshold: float = 0.88
    partition_at: float = 0.2  # fraction of the steps run before the region is decided (6 of 28)
    refresh_at: tuple[float, ...] = (0.57,)  # +regions: full steps that refresh the cache (16/28)
    final_full_steps: int = 2  # +regions: the last steps run every token
    # +regions: a region step reuses the last velocity when the last two computed ones differ by
    # less than this (relative L1 over the edited tokens); never twice in a row; 0: never.
    reuse_threshold: float = 0.05
    latent_feather: float = 1.0  # std (latent pixels) of the outward feather of a mask

    def __post_init__(self) -> None:
        if not 0.0 < self.partition_at < 1.0:
            raise ValueError(f"partition_at must be in (0, 1), got {self.partition_at}")
        if self.final_full_steps < 0:
            raise ValueError(f"final_full_steps must be >= 0, got {self.final_full_steps}")
        if self.reuse_threshold < 0 or self.latent_feather < 0:
            raise ValueError("reuse_threshold and latent_feather must be >= 0")


@dataclass
class RegionStats:
    full: int = 0  # steps whose velocity came from a forward over every token
    region: int = 0  # steps that ran the DiT over the edited tokens only
    reused: int = 0  # steps that reused the previous velocity
    edited_fraction: float | None = None  # of the noisy tokens (union over the batch)
    trace: list[str] = field(default_factory=list)  # per step: "full", "region" or "reused"


class StepKind(Enum):
    FULL = "full"  # the DiT's own forward over every token
    CAPTURE = "capture"  # every token, keeping the context's keys and values
    REGION = "region"  # the edited tokens, attending to the cached context


@dataclass(frozen=True)
class StepPlan:
    partition: int  # the step after which the region is decided
    kinds: tuple[StepKind, ...]  # what each step runs once the region path is taken

    @property
    def has_region_steps(self) -> bool:
        return StepKind.REGION in self.kinds

    def next_full(self, step: int) -> int:
        """The first step after `step` that runs every token (num_steps: none left)."""
        later = (i for i in range(step + 1, len(self.kinds)) if self.kinds[i] != StepKind.REGION)
        return next(later, len(self.kinds))


def plan_steps(num_steps: int, settings: RegionSettings) -> StepPlan:
    """Partition after round(partition_at * n) steps; the step after it captures the context;
    region steps up to the last `final_full_steps`, with the refresh steps that leave a region
    step on each side. Too few steps for a region step: every step runs in full."""
    partition = min(num_steps - 1, max(0, round(settings.partition_at * num_steps) - 1))
    final_from = max(partition + 1, num_steps - settings.final_full_steps)
    kinds = [StepKind.FULL] * num_steps
    if partition + 2 < final_from:
        kinds[partition + 1] = StepKind.CAPTURE
        for step in range(partition + 2, final_from):
            kinds[step] = StepKind.REGION
        for fraction in settings.refresh_at:
            step = round(fraction * num_steps)
            if partition + 2 < step < final_from - 1:
                kinds[step] = StepKind.CAPTURE
    return StepPlan(partition, tuple(kinds))


# --- masks at latent resolution, the region estimate ---------------------------------------------


def latent_mask(
    mask: Image.Image, width: int, height: int, batch: int, feather: float = 1.0
) -> Tensor:
    """A pixel mask ("L", white = may change) as packed tokens [B, L, 64] in [0, 1].

    Resized to the working size (bilinear), averaged over each 8x8 latent pixel, then feathered
    outwards only (the maximum of itself and a Gaussian blur of std `feather` latent pixels), so
    the tokens just outside the mask join late and harmonise the seam, while the inside keeps 1.
    """
    gray = mask.convert("L").resize((width, height), Image.Resampling.BILINEAR)
    pixels = torch.frombuffer(bytearray(gray.tobytes()), dtype=torch.uint8)
    m = pixels.view(1, 1, height, width).float() / 255
    m = F.avg_pool2d(m, VAE_DOWNSAMPLE)  # [1, 1, h, w]
    if feather > 0:
        m = torch.maximum(m, _gaussian_blur(m, feather)).clamp(0.0, 1.0)
    return sampling.pack(m.expand(batch, LATENT_CHANNELS, -1, -1).contiguous())


def _gaussian_blur(m: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of [1, 1, h, w], zero outside (only its maximum with m is used)."""
    radius = max(1, int(3 * sigma + 0.5))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    m = F.conv2d(m, kernel.view(1, 1, 1, -1), padding=(0, radius))
    return F.conv2d(m, kernel.view(1, 1, -1, 1), padding=(radius, 0))


def estimate_edited(x0: Tensor, source: Tensor, threshold: float, grid: tuple[int, int]) -> Tensor:
    """Tokens the edit changes: x0, source [B, L, 64] packed -> [B, L] bool.

    cosine(x0, source) < threshold per token, then a 3x3 erosion (drops isolated tokens) and a
    5x5 dilation (restores the rest with a one-token margin) on the (h/2, w/2) token grid.
    """
    batch = x0.shape[0]
    similarity = F.cosine_similarity(x0.float(), source.float(), dim=-1)  # [B, L]
    edited = (similarity < threshold).float().view(batch, 1, *grid)
    eroded = -F.max_pool2d(-edited, 3, stride=1, padding=1)
    dilated = F.max_pool2d(eroded, 5, stride=1, padding=2)
    return dilated.view(batch, -1) > 0.5


def region_images(
    edited: Tensor, grid: tuple[int, int], width: int, height: int
) -> list[Image.Image]:
    """[B, L] bool token regions -> one "L" image per row at (width, height), white = edited."""
    rows = (edited.view(-1, *grid).to(torch.uint8) * 255).cpu()
    return [
        Image.fromarray(row.numpy(), mode="L").resize((width, height), Image.Resampling.NEAREST)
        for row in rows
    ]


# --- the forward over edited tokens with a cached context ----------------------------------------

_KeyValue = tuple[Tensor, Tensor]  # keys (RoPE applied) and values, [B, H, L, D]


@dataclass
class _Context:
    """One block's cached keys and values, laid out [this step's tokens | context] so a region
    step writes its own rows in place instead of concatenating the whole context again."""

    k: Tensor  # [B, H, head + C, D]
    v: Tensor
    head: int = 0  # rows in front of the context

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q, k, v [B, H, L, D] of this step's tokens -> [B, L, H*D] over them and the context.
        Attention is unmasked, so the order of the keys does not matter."""
        rows = k.shape[2]
        if rows != self.head:  # first use: lay the buffer out for this many rows
            self.k = torch.cat((k, self.k[:, :, self.head :]), dim=2)
            self.v = torch.cat((v, self.v[:, :, self.head :]), dim=2)
            self.head = rows
        else:
            self.k[:, :, :rows] = k
            self.v[:, :, :rows] = v
        out = F.scaled_dot_product_attention(q, self.k, self.v)
        return rearrange(out, "b h l d -> b l (h d)")


@dataclass
class _ContextCache:
    """Per block, the context tokens' keys and values of one CFG branch."""

    double: list[_Context] = field(default_factory=list)
    single: list[_Context] = field(default_factory=list)


def _modulate(x: Tensor, mod: ModulationOut) -> Tensor:
    return (1 + mod.scale) * x + mod.shift


def _attend(q: Tensor, k: Tensor, v: Tensor, context: _Context | None) -> Tensor:
    """q, k, v [B, H, L, D] (RoPE applied), and the cached context -> [B, L, H*D]."""
    if context is not None:
        return context.attend(q, k, v)
    out = F.scaled_dot_product_attention(q, k, v)
    return rearrange(out, "b h l d -> b l (h d)")


def _double_block(
    block: DoubleStreamBlock,
    img: Tensor,
    txt: Tensor,
    vec: Tensor,
    pe: Tensor,
    context: _Context | None,
) -> tuple[Tensor, Tensor, _KeyValue]:
    """`DoubleStreamBlock.forward` whose image tokens also attend to `context`; returns the image
    tokens' own keys and values too."""
    img_mod1, img_mod2 = block.img_mod(vec)
    txt_mod1, txt_mod2 = block.txt_mod(vec)
    assert img_mod2 is not None and txt_mod2 is not None
    img_q, img_k, img_v = block.img_attn.split_qkv(_modulate(block.img_norm1(img), img_mod1))
    txt_q, txt_k, txt_v = block.txt_attn.split_qkv(_modulate(block.txt_norm1(txt), txt_mod1))
    q = torch.cat((txt_q, img_q), dim=2)  # [B, H, L_txt + L_img, D]
    k = torch.cat((txt_k, img_k), dim=2)
    v = torch.cat((txt_v, img_v), dim=2)
    q, k = apply_rope(q, k, pe)
    num_txt = txt.shape[1]
    attn = _attend(q, k, v, context)  # [B, L_txt + L_img, hidden]
    txt_attn, img_attn = attn[:, :num_txt], attn[:, num_txt:]
    img = img + img_mod1.gate * block.img_attn.proj(img_attn)
    img = img + img_mod2.gate * block.img_mlp(_modulate(block.img_norm2(img), img_mod2))
    txt = txt + txt_mod1.gate * block.txt_attn.proj(txt_attn)
    txt = txt + txt_mod2.gate * block.txt_mlp(_modulate(block.txt_norm2(txt), txt_mod2))
    return img, txt, (k[:, :, num_txt:], v[:, :, num_txt:])


def _single_block(
    block: SingleStreamBlock,
    joint: Tensor,
    vec: Tensor,
    pe: Tensor,
    num_txt: int,
    context: _Context | None,
) -> tuple[Tensor, _KeyValue]:
    """`SingleStreamBlock.forward` over [txt | image tokens] that also attends to `context`."""
    mod, _ = block.modulation(vec)
    qkv, mlp = torch.split(
        block.linear1(_modulate(block.pre_norm(joint), mod)),
        [3 * block.hidden_size, block.mlp_hidden_dim],
        dim=-1,
    )
    q, k, v = rearrange(qkv, "B L (K H D) -> K B H L D", K=3, H=block.num_heads)
    q, k = block.norm(q, k, v)
    q, k = apply_rope(q, k, pe)
    attn = _attend(q, k, v, context)  # [B, L, hidden]
    out = block.linear2(torch.cat((attn, block.mlp_act(mlp)), dim=2))
    return joint + mod.gate * out, (k[:, :, num_txt:], v[:, :, num_txt:])


def _unwrap(model: nn.Module) -> Step1XEditDiT:
    return cast("Step1XEditDiT", model.dit if isinstance(model, StepCachedDiT) else model)


class ContextForward:
    """The DiT as two forwards: `capture` over every image token (it keeps, per block and CFG
    branch, the keys and values of the `context_rows` of [noisy | reference] tokens), and
    `region` over some noisy tokens, attending to what `capture` kept."""

    def __init__(self, model: nn.Module, context_rows: Tensor) -> None:
        self.dit = _unwrap(model)
        self.context_rows = context_rows  # [C] indices into the L_img + L_ref image tokens
        self._caches: dict[int, _ContextCache] = {}

    def capture(
        self, x: Tensor, img_ids: Tensor, t: float, scale: int, text: Conditioning, branch: int
    ) -> Tensor:
        """x [B, L_img + L_ref, 64] -> velocity [B, L_img + L_ref, 64]; keeps the context."""
        kept = _ContextCache()
        out = self._forward(x, img_ids, t, scale, text, context=None, keep=kept)
        self._caches[branch] = kept
        return out

    def region(
        self, x: Tensor, img_ids: Tensor, t: float, scale: int, text: Conditioning, branch: int
    ) -> Tensor:
        """x [B, E, 64] (some noisy tokens), img_ids [B, E, 3] -> velocity [B, E, 64]."""
        return self._forward(x, img_ids, t, scale, text, context=self._caches[branch], keep=None)

    def _forward(
        self,
        x: Tensor,
        img_ids: Tensor,
        t: float,
        scale: int,
        text: Conditioning,
        context: _ContextCache | None,
        keep: _ContextCache | None,
    ) -> Tensor:
        # As Step1XEditDiT.forward, told t / scale as sampling._velocity tells it.
        dit = self.dit
        t_vec = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        if scale != 1:
            t_vec = t_vec / scale
        txt, y = dit.connector(text.emb, t_vec, text.mask)  # [B, L_txt, ctx], [B, 768]
        if dit.text_token_mapping is not None:
            if text.text_embeds is None or text.text_mask is None:
                raise ValueError("this v1.2 model needs text_embeds and text_mask")
            txt = txt + dit.text_token_mapping(text.text_embeds) * text.text_mask[:, :, None]
        img = dit.img_in(x)  # [B, L, hidden]
        vec = dit.time_in(timestep_embedding(t_vec, 256)) + dit.vector_in(y)
        txt = dit.txt_in(txt)
        ids = torch.cat((text.txt_ids, img_ids), dim=1)
        pe = embed_positions(ids, dit.config.axes_dim, dit.config.theta)

        rows = self.context_rows
        for index, double in enumerate(dit.double_blocks):
            cached = None if context is None else context.double[index]
            img, txt, (k, v) = _double_block(
                cast(DoubleStreamBlock, double), img, txt, vec, pe, cached
            )
            if keep is not None:
                keep.double.append(_Context(k.index_select(2, rows), v.index_select(2, rows)))
        num_txt = txt.shape[1]
        joint = torch.cat((txt, img), dim=1)
        for index, single in enumerate(dit.single_blocks):
            cached = None if context is None else context.single[index]
            joint, (k, v) = _single_block(
                cast(SingleStreamBlock, single), joint, vec, pe, num_txt, cached
            )
            if keep is not None:
                keep.single.append(_Context(k.index_select(2, rows), v.index_select(2, rows)))
        out: Tensor = dit.final_layer(joint[:, num_txt:], vec)
        return out


# --- the sampler -----------------------------------------------------------------------------

_Forward = Callable[[Tensor, Tensor, Conditioning, int], Tensor]  # (x, ids, text, branch)


@dataclass(frozen=True)
class _Guidance:
    """The guided velocity of `sampling.denoise`'s steps 2 and 3 over any forward."""

    positive: Conditioning
    negative: Conditioning | None
    both: Conditioning | None  # [positive | negative] in one batch, when they can share one
    scale: float
    rescale_above: float
    norm_power: float

    def __call__(
        self, forward: _Forward, x: Tensor, ids: Tensor, t_curr: float, num_tokens: int
    ) -> Tensor:
        if self.negative is None:
            return forward(x, ids, self.positive, 0)[:, :num_tokens]
        batch = x.shape[0]
        if self.both is not None:
            out = forward(torch.cat([x, x]), torch.cat([ids, ids]), self.both, 0)
            cond, uncond = out[:batch], out[batch:]
        else:
            cond = forward(x, ids, self.positive, 0)
            uncond = forward(x, ids, self.negative, 1)
        return cfg_combine(
            cond[:, :num_tokens],
            uncond[:, :num_tokens],
            self.scale,
            t_curr,
            self.rescale_above,
            self.norm_power,
        )


@dataclass
class _RegionPath:
    """The edited tokens (shared by the batch: the union of its rows) and the cached context."""

    edit: Tensor  # [E] indices of edited noisy tokens
    unedited: Tensor  # [L] bool, True for noisy tokens outside the union
    forward: ContextForward


class RegionSampler:
    """One edit's region-aware denoise (module docstring). Build it with `region_sampler`."""

    def __init__(
        self,
        settings: RegionSettings,
        *,
        noise: Tensor,
        mask: Tensor | None,
        estimate: bool,
        steps_before: int,
        total_steps: int,
        grid: tuple[int, int],
    ) -> None:
        self.settings = settings
        self.noise = noise  # [B, L, 64] the edit's starting noise, packed
        self.mask = mask  # [B, L, 64] in [0, 1], or None
        self.estimate = estimate
        self.steps_before = steps_before  # skipped by strength < 1
        self.total_steps = total_steps  # the request's num_inference_steps
        self.grid = grid  # (h/2, w/2) tokens
        self.edited: Tensor | None = None  # [B, L] bool, once the region is decided
        self.stats = RegionStats()

    def estimated_regions(self, width: int, height: int) -> list[Image.Image]:
        """preserve_unedited: each image's estimated region at (width, height); else []."""
        if not self.estimate or self.edited is None:
            return []
        return region_images(self.edited, self.grid, width, height)

    @torch.no_grad()
    def denoise(
        self,
        model: sampling.DiT,
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
        """`sampling.denoise` with the regions of this edit; the same arguments and result."""
        if ref_img is None:
            raise ValueError("region-aware sampling edits an image: ref_img is required")
        num_tokens = img.shape[1]
        source = ref_img.to(img.dtype)
        noise = self.noise.to(img.device, img.dtype)
        can_batch = batch_cfg and negative is not None and negative.length == positive.length
        both = positive.cat(negative) if can_batch and negative is not None else None
        guide = _Guidance(positive, negative, both, guidance_scale, rescale_above, norm_power)
        plan = plan_steps(schedule.num_steps, self.settings)
        total, scale = schedule.num_steps, schedule.model_scale
        mask = None if self.mask is None else self.mask.to(img.device)

        if mask is not None and not bool((mask > 0).any()):
            # Nothing may change: the source latents, without a DiT call.
            self.edited = torch.zeros(img.shape[:2], dtype=torch.bool, device=img.device)
            for step in range(total):
                if callback is not None:
                    callback(step + 1, total)
            return source.clone()

        img = self._keep_source(img, mask, source, noise, schedule.times[0], self.steps_before)
        path: _RegionPath | None = None
        history: list[Tensor] = []  # the last computed velocities of the edited tokens
        reused_last = False
        steps = zip(itertools.pairwise(schedule.times), schedule.model_times, strict=True)
        for step, ((t_curr, t_prev), t_model) in enumerate(steps):
            kind = plan.kinds[step] if path is not None else StepKind.FULL

            # 1. Velocity: of every noisy token, or (region steps) of the edited ones.
            if kind is StepKind.REGION:
                assert path is not None
                if self._may_reuse(history, reused_last):
                    pred, reused_last = history[-1], True
                    self.stats.reused += 1
                    self.stats.trace.append("reused")
                else:
                    region_forward = _bind(path.forward.region, t_model, scale)
                    ids = img_ids[:, path.edit]
                    pred = guide(region_forward, img[:, path.edit], ids, t_curr, len(path.edit))
                    history, reused_last = [*history[-1:], pred], False
                    self.stats.region += 1
                    self.stats.trace.append("region")
            else:
                x = torch.cat([img, source], dim=1)
                if kind is StepKind.CAPTURE:
                    assert path is not None
                    forward = _bind(path.forward.capture, t_model, scale)
                else:
                    forward = _bind_model(model, t_model, scale)
                pred = guide(forward, x, img_ids, t_curr, num_tokens)
                self.stats.full += 1
                self.stats.trace.append("full")

            # 2. The region, once: the mask, or the estimate from x0 = x_t - t v.
            if step == plan.partition and self.edited is None:
                edited = self._partition(img, pred, source, t_curr, mask)
                if edited is not None:
                    self.edited = edited
                    if self.estimate:
                        mask = edited[..., None].expand_as(img).to(img.dtype)
                    path = self._region_path(model, edited, num_tokens, plan)
                    if path is not None:
                        history = []

            # 3. Euler step (the edited tokens only on a region step).
            if kind is StepKind.REGION:
                assert path is not None
                moved = sampling._euler(
                    img[:, path.edit], pred, t_curr, t_prev, schedule.upcast_step
                )
                img = img.index_copy(1, path.edit, moved)
            else:
                stepped = sampling._euler(img, pred, t_curr, t_prev, schedule.upcast_step)
                if path is not None and kind is StepKind.CAPTURE and mask is None:
                    # Unedited tokens: one straight step to the next full step's noise level.
                    target = schedule.times[plan.next_full(step)]
                    jumped = sampling._euler(img, pred, t_curr, target, schedule.upcast_step)
                    stepped = torch.where(path.unedited[None, :, None], jumped, stepped)
                if path is not None and kind is StepKind.CAPTURE:
                    history, reused_last = [pred[:, path.edit]], False
                img = stepped

            # 4. Tokens that may not change (yet) follow the source at the new noise level.
            img = self._keep_source(img, mask, source, noise, t_prev, self.steps_before + step + 1)

            if callback is not None:
                callback(step + 1, total)
        return img

    # -- internals ------------------------------------------------------------------------------

    def _keep_source(
        self, img: Tensor, mask: Tensor | None, source: Tensor, noise: Tensor, t: float, step: int
    ) -> Tensor:
        """The latents entering global step `step` (at level t): where the mask does not free
        them yet, the source at level t. A grey level m is an img2img edit at strength m
        (`sampling.noise_for_strength`): the source up to step floor((1 - m) n), free after;
        m = 1 is free from the start, m = 0 never (and ends on the source itself)."""
        if mask is None:
            return img
        free = (mask >= 1) | (step > torch.floor((1 - mask) * self.total_steps))
        if bool(free.all()):
            return img
        known = t * noise + (1.0 - t) * source  # as sampling.noise_for_strength
        return torch.where(free, img, known)

    def _partition(
        self, img: Tensor, pred: Tensor, source: Tensor, t_curr: float, mask: Tensor | None
    ) -> Tensor | None:
        if mask is not None:
            return (mask > 0).any(dim=-1)  # [B, L]: any freedom at any step
        if not (self.estimate or self.settings.accelerate):
            return None
        x0 = img.float() - t_curr * pred.float()
        return estimate_edited(x0, source, self.settings.threshold, self.grid)

    def _region_path(
        self, model: sampling.DiT, edited: Tensor, num_tokens: int, plan: StepPlan
    ) -> _RegionPath | None:
        union = edited.any(dim=0)  # [L]
        self.stats.edited_fraction = float(union.float().mean())
        if not self.settings.accelerate or not plan.has_region_steps or bool(union.all()):
            return None  # every token edited: the exact path, unchanged
        edit = union.nonzero().flatten()
        reference = torch.arange(num_tokens, 2 * num_tokens, device=union.device)
        context_rows = torch.cat([(~union).nonzero().flatten(), reference])
        forward = ContextForward(cast(nn.Module, model), context_rows)
        return _RegionPath(edit=edit, unedited=~union, forward=forward)

    def _may_reuse(self, history: list[Tensor], reused_last: bool) -> bool:
        threshold = self.settings.reuse_threshold
        if threshold <= 0 or reused_last or len(history) < 2:
            return False
        return relative_l1(history[-1], history[-2]) < threshold


def _bind(
    forward: Callable[[Tensor, Tensor, float, int, Conditioning, int], Tensor], t: float, scale: int
) -> _Forward:
    def call(x: Tensor, ids: Tensor, text: Conditioning, branch: int) -> Tensor:
        return forward(x, ids, t, scale, text, branch)

    return call


def _bind_model(model: sampling.DiT, t: float, scale: int) -> _Forward:
    def call(x: Tensor, ids: Tensor, text: Conditioning, branch: int) -> Tensor:
        return sampling._velocity(model, x, ids, t, scale, text)

    return call


def region_sampler(
    settings: RegionSettings,
    area: EditArea | None,
    noise: Tensor,
    total_steps: int,
    steps_run: int,
) -> RegionSampler | None:
    """The sampler of one edit, or None when plain `sampling.denoise` does the same.

    noise: the edit's starting noise [B, 16, h, w]; total_steps: the request's steps;
    steps_run: those left after strength.
    """
    mask_image = None if area is None else area.sampling_mask
    estimate = area is not None and area.estimate
    if mask_image is None and not estimate and not settings.accelerate:
        return None
    batch, _, h, w = noise.shape
    mask = None
    if mask_image is not None:
        height, width = h * VAE_DOWNSAMPLE, w * VAE_DOWNSAMPLE
        mask = latent_mask(mask_image, width, height, batch, settings.latent_feather)
    return RegionSampler(
        settings,
        noise=sampling.pack(noise),
        mask=mask,
        estimate=estimate,
        steps_before=total_steps - steps_run,
        total_steps=total_steps,
        grid=(h // 2, w // 2),
    )
