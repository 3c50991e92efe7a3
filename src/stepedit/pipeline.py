"""EditPipeline: one Step1X-Edit edit (image + instruction -> images), as the reference runs it.

Numerics follow the official sampler (`ImageGenerator.generate_image`, v1.0/v1.1):
- the source is resized to the working size (LANCZOS); Qwen2.5-VL sees that image after the
  reference's float round trip (uint8 / 255, then *255 truncated back to uint8);
- the VAE stays float32; on CUDA its encoder runs under bf16 autocast (v1.1+; v1.0 encoded in
  float32), its decoder in float32; v1.0 resized the source with PIL's default filter (BICUBIC);
- the noise is drawn in the pipeline dtype from `torch.Generator(device).manual_seed(seed)`;
- the DiT runs in the pipeline dtype (under bf16 autocast on CUDA), with true CFG against the
  negative prompt in one batch [positive | negative];
- the result is decoded in float32, clamped to [-1, 1], scaled by 255 with truncation, and resized
  back to the source size with PIL's default filter.
The reference samples the VAE posterior with the global RNG; we draw that sample from a generator
seeded with the image's seed instead (identical to the reference run after
`torch.manual_seed(seed)`), so one seed reproduces one image.

v1.2 follows its diffusers-layout reference instead (Peyton-Chen/diffusers@c69df6bd,
pipeline_step1x_edit_v1p2.py, `Step1XEditPipelineV1P2`):
- conditioning from `QwenEditEncoderV12` (its own prefix, token positions, quote embeddings for
  the DiT's `text_token_mapping`), each prompt trimmed to its own length, so the positive and the
  negative prompt run as two DiT forwards rather than one padded batch;
- the VAE sees the source resized by bilinear interpolation with antialiasing, Qwen the
  LANCZOS-resized working image;
- true CFG only when guidance_scale > 1, and the norm-rescaled combination at every step: the
  reference compares scheduler timesteps on the 0..1000 scale with `timesteps_truncate=0.93`,
  which every step exceeds;
- reasoning (`enable_thinking` / `enable_reflection`, both on by default for v1.2) runs the
  thinking pass, then up to `max_reflection_rounds` candidates judged by the reflection pass
  (`stepedit.reasoning.run_reasoning_edit`). v1.0/v1.1 refuse both flags: their MLLM is the
  stock Qwen2.5-VL, never trained on the reflection tags, and the reference runs reasoning only
  in its v1.2 pipeline; `enhance_prompt` (one rewrite before editing) works for every version.
- With reflection, one chain makes one image: num_images > 1 is refused (send separate requests,
  or turn reflection off; thinking alone rewrites once and makes all images from it).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from stepedit import sampling
from stepedit.encoder import QwenEditEncoder
from stepedit.encoder_v12 import QwenEditEncoderV12, V12Conditioning, stack_conditioning
from stepedit.errors import InvalidInput
from stepedit.images import (
    SIZE_MULTIPLE,
    OutputSize,
    resize_to_working,
    to_output,
    to_pil,
    to_tensor,
    working_size,
)
from stepedit.model.presets import ModelVersion
from stepedit.reasoning import (
    DEFAULT_MAX_ROUNDS,
    ReasoningOptions,
    ReasoningResult,
    TextGenerator,
    Thinker,
    TokenBudget,
    run_reasoning_edit,
)
from stepedit.reasoning import enhance_prompt as rewrite_prompt
from stepedit.reasoning.prompts import ChatTurn
from stepedit.request import MAX_IMAGES_PER_REQUEST, MAX_SEED

logger = logging.getLogger(__name__)

MAX_STEPS = 100
MAX_GUIDANCE = 20.0
MIN_SIZE_LEVEL = 256
MAX_SIZE_LEVEL = 2048
LATENT_CHANNELS = 16
VAE_DOWNSAMPLE = 8
# See the module docstring: the v1.2 reference rescales CFG at every step.
V12_TIMESTEPS_TRUNCATE = 0.0


@dataclass(frozen=True)
class PipelineProgress:
    step: int
    total_steps: int
    stage: str  # "encode", "denoise", "decode"


@dataclass
class EditOutput:
    images: list[Image.Image]
    seeds: list[int]  # images[i] was made with seeds[i] = seed + i
    prompt: str  # the instruction the DiT was conditioned on
    width: int  # working size
    height: int
    timings: dict[str, float] = field(default_factory=dict)  # seconds
    passes: list[str] = field(default_factory=list)
    original_prompt: str = ""  # the instruction as given
    rounds: list[RoundRecord] = field(default_factory=list)  # one per candidate (reasoning)
    best_round: int | None = None  # index into rounds of the returned candidate


@dataclass(frozen=True)
class RoundRecord:
    """One reasoning round as the job record keeps it (no image)."""

    index: int  # 0-based
    instruction: str  # what the DiT was conditioned on in this round
    edits: str  # "source" or "previous"
    seed: int
    verdict: str | None  # success | retry | failed | malformed; None without reflection
    thought: str | None = None
    next_instruction: str | None = None  # the corrected instruction of a "retry"
    raw: str | None = None  # the reflection answer, verbatim
    score: float | None = None  # the selection score, min(score1) * min(score2)

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.index + 1,
            "instruction": self.instruction,
            "edits": self.edits,
            "seed": self.seed,
            "verdict": self.verdict,
            "thought": self.thought,
            "next_instruction": self.next_instruction,
            "raw": self.raw,
            "score": self.score,
        }


@dataclass
class _Edit:
    """One diffusion edit at working size, before resizing for output."""

    decoded: list[Image.Image]
    source_size: tuple[int, int]
    width: int
    height: int
    timings: dict[str, float]

    def images(self, output_size: OutputSize) -> list[Image.Image]:
        return [to_output(out, self.source_size, output_size) for out in self.decoded]


ProgressCallback = Callable[[PipelineProgress], None]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA (the reference's precision), float32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _invalid(param: str, message: str) -> InvalidInput:
    return InvalidInput(f"{param}: {message}", param=param)


def check_edit_params(
    prompt: str,
    *,
    negative_prompt: str = "",
    num_inference_steps: int = 28,
    guidance_scale: float = 6.0,
    seed: int | None = None,
    num_images: int = 1,
    size_level: int = 1024,
    strength: float = 1.0,
    output_size: str = "input",
    enhance_prompt: bool = False,
    enable_thinking: bool | None = None,
    enable_reflection: bool | None = None,
    version: ModelVersion | None = None,
) -> None:
    """Raise InvalidInput (with `param` set) for the first out-of-range edit parameter.

    Needs no model, so callers (the CLI, the service) can run it before loading anything; the
    reasoning flags are checked against `version` when it is known.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise _invalid("prompt", "the instruction must be a non-empty string")
    if not isinstance(negative_prompt, str):
        raise _invalid("negative_prompt", "must be a string")
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int):
        raise _invalid("num_inference_steps", "must be an integer")
    if not 1 <= num_inference_steps <= MAX_STEPS:
        raise _invalid("num_inference_steps", f"must be in 1..{MAX_STEPS}")
    if not 0.0 <= float(guidance_scale) <= MAX_GUIDANCE:
        raise _invalid("guidance_scale", f"must be in [0, {MAX_GUIDANCE}]")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise _invalid("seed", f"must be in 0..{MAX_SEED}")
    if not 1 <= num_images <= MAX_IMAGES_PER_REQUEST:
        raise _invalid("num_images", f"must be in 1..{MAX_IMAGES_PER_REQUEST}")
    if not MIN_SIZE_LEVEL <= size_level <= MAX_SIZE_LEVEL or size_level % SIZE_MULTIPLE != 0:
        raise _invalid(
            "size_level",
            f"must be a multiple of 16 in {MIN_SIZE_LEVEL}..{MAX_SIZE_LEVEL}, got {size_level}",
        )
    if not 0.0 <= float(strength) <= 1.0:
        raise _invalid("strength", "must be in [0, 1]")
    if output_size not in ("input", "working"):
        raise _invalid("output_size", "must be 'input' or 'working'")
    for name, flag in (
        ("enhance_prompt", enhance_prompt),
        ("enable_thinking", enable_thinking),
        ("enable_reflection", enable_reflection),
    ):
        if flag is not None and not isinstance(flag, bool):
            raise _invalid(name, "must be a boolean")
    if version is not None:
        _, reflection = resolve_reasoning(version, enable_thinking, enable_reflection)
        if reflection and num_images > 1:
            raise _invalid(
                "num_images",
                "must be 1 with enable_reflection (reflection picks one image per chain); "
                "send separate requests or set enable_reflection=false",
            )


def resolve_reasoning(
    version: ModelVersion, enable_thinking: bool | None, enable_reflection: bool | None
) -> tuple[bool, bool]:
    """(thinking, reflection) for a request: None means the version's default (on for v1.2)."""
    if version != "v1.2":
        for name, flag in (
            ("enable_thinking", enable_thinking),
            ("enable_reflection", enable_reflection),
        ):
            if flag:
                raise _invalid(
                    name,
                    f"reasoning passes need the v1.2 model (this server runs {version}); "
                    "use enhance_prompt for a rewritten instruction",
                )
        return False, False
    thinking = True if enable_thinking is None else enable_thinking
    reflection = True if enable_reflection is None else enable_reflection
    return thinking, reflection


class EditPipeline:
    """Step1X-Edit editing over loaded components (see `stepedit.weights.load_components`)."""

    def __init__(
        self,
        components: Any,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        offload: bool = False,
        max_length: int = 640,
    ) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype if dtype is not None else default_dtype(self.device)
        self.offload = offload
        # Switches (acceleration presets set them): CFG as one batch of 2N or two batches of N
        # (same result); exact reuse of the negative prompt's encoding across calls.
        self.batch_cfg = True
        self.cache_negative_encoding = True
        self.components = components
        self.version: ModelVersion = components.version
        self.dit: nn.Module = components.dit
        # The reference keeps the VAE in float32 whatever the DiT's precision.
        self.ae: Any = components.ae.to(torch.float32)
        self.encoder: Any
        if self.version == "v1.2":
            self.encoder = QwenEditEncoderV12(components.text_model, components.processor)
        else:
            self.encoder = QwenEditEncoder(components.text_model, components.processor, max_length)
        text_model: nn.Module = self.encoder.model
        self.text_model = text_model
        # The reasoning passes: at most this many candidates with reflection, these new-token
        # bounds per pass, and the generator (Qwen itself, greedy; tests put a script here).
        self.max_reflection_rounds = DEFAULT_MAX_ROUNDS
        self.reasoning_budget = TokenBudget()
        self.text_generator: TextGenerator = self._generate_text
        self._chat: Any = None
        home = torch.device("cpu") if offload else self.device
        for module in (self.dit, self.ae, text_model):
            module.to(home)
        self.dit.to(self.dtype)
        text_model.to(self.dtype)

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        offload: bool = False,
        version: ModelVersion | None = None,
    ) -> EditPipeline:
        """Load from a checkpoint directory (either layout) or `dummy:<preset>`."""
        from stepedit.weights import load_components

        resolved = torch.device(device) if device is not None else default_device()
        dtype = dtype if dtype is not None else default_dtype(resolved)
        components = load_components(
            source, device=resolved, dtype=dtype, version=version, offload=offload
        )
        return cls(components, resolved, dtype, offload=offload)

    # ------------------------------------------------------------------ validation

    def check_inputs(
        self,
        image: Image.Image,
        prompt: str,
        *,
        negative_prompt: str = "",
        num_inference_steps: int = 28,
        guidance_scale: float = 6.0,
        seed: int | None = None,
        num_images: int = 1,
        size_level: int = 1024,
        strength: float = 1.0,
        output_size: str = "input",
        latents: Tensor | None = None,
        enhance_prompt: bool = False,
        enable_thinking: bool | None = None,
        enable_reflection: bool | None = None,
    ) -> None:
        """Raise InvalidInput naming the first bad parameter; does no model work."""
        if not isinstance(image, Image.Image):
            raise _invalid("image", f"expected a PIL image, got {type(image).__name__}")
        if image.width < 1 or image.height < 1:
            raise _invalid("image", "the image is empty")
        check_edit_params(
            prompt,
            negative_prompt=negative_prompt,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            seed=seed,
            num_images=num_images,
            size_level=size_level,
            strength=strength,
            output_size=output_size,
            enhance_prompt=enhance_prompt,
            enable_thinking=enable_thinking,
            enable_reflection=enable_reflection,
            version=self.version,
        )
        if latents is not None:
            self._check_latents(latents, image, size_level, num_images)

    def _check_latents(
        self, latents: Tensor, image: Image.Image, size_level: int, num_images: int
    ) -> None:
        width, height = working_size(image.width, image.height, size_level)
        h, w = height // VAE_DOWNSAMPLE, width // VAE_DOWNSAMPLE
        unpacked = (num_images, LATENT_CHANNELS, h, w)
        packed = (num_images, h * w // 4, LATENT_CHANNELS * 4)
        if tuple(latents.shape) not in (unpacked, packed):
            raise _invalid(
                "latents",
                f"expected shape {unpacked} (or packed {packed}), got {tuple(latents.shape)}",
            )

    # ------------------------------------------------------------------ helpers

    @contextlib.contextmanager
    def _on_device(self, module: nn.Module) -> Iterator[None]:
        """With offload, keep `module` on the device only while it is used."""
        if not self.offload:
            yield
            return
        module.to(self.device)
        try:
            yield
        finally:
            module.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _autocast(self, enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
        if enabled and self.device.type == "cuda" and self.dtype == torch.bfloat16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _clock(self) -> float:
        """Wall time after the device has finished queued work, so stage timings are real."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    def encode_prompts(
        self, prompt: str, negative_prompt: str, image: Image.Image
    ) -> tuple[Tensor, Tensor]:
        """(emb [2, max_len, hidden], mask [2, max_len]) for [prompt, negative_prompt]."""
        with self._on_device(self.encoder.model):
            emb, mask = self.encoder([prompt], [image])
            neg_emb, neg_mask = self.encoder(
                [negative_prompt], [image], use_cache=self.cache_negative_encoding
            )
        return torch.cat([emb, neg_emb]), torch.cat([mask, neg_mask])

    def encode_reference(self, pixels: Tensor, seeds: list[int]) -> Tensor:
        """pixels [1, 3, H, W] in [0, 1] -> one posterior sample per seed [N, 16, H/8, W/8]."""
        with self._on_device(self.ae), torch.no_grad(), self._autocast(self.version != "v1.0"):
            moments = self.ae.encoder(pixels.to(self.device) * 2 - 1)  # [1, 32, H/8, W/8]
            mean, logvar = torch.chunk(moments, 2, dim=1)
            std = torch.exp(0.5 * logvar)
            samples = [
                mean
                + std
                * torch.randn(
                    mean.shape, generator=self._generator(s), device=mean.device, dtype=mean.dtype
                )
                for s in seeds
            ]
            z = torch.cat(samples)  # [N, 16, H/8, W/8]
            latents: Tensor = self.ae.scale_factor * (z - self.ae.shift_factor)
        return latents

    def prepare_noise(self, seeds: list[int], height: int, width: int) -> Tensor:
        """[N, 16, H/8, W/8] in the pipeline dtype, image i from its own seeded generator."""
        shape = (1, LATENT_CHANNELS, height // VAE_DOWNSAMPLE, width // VAE_DOWNSAMPLE)
        return torch.cat(
            [
                torch.randn(
                    shape, device=self.device, dtype=self.dtype, generator=self._generator(s)
                )
                for s in seeds
            ]
        )

    def decode(self, packed: Tensor, height: int, width: int) -> list[Image.Image]:
        latents = sampling.unpack(packed.float(), height, width)  # [N, 16, H/8, W/8]
        with self._on_device(self.ae), torch.no_grad():
            pixels = self.ae.decode(latents.to(self.device))  # [N, 3, H, W]
        pixels = pixels.clamp(-1, 1).mul(0.5).add(0.5)
        return [to_pil(row) for row in pixels.float()]

    def encode_v12(
        self, prompt: str, negative_prompt: str | None, image: Image.Image, num_images: int
    ) -> V12Conditioning:
        """Rows [prompt x N | negative x N] (no negative rows when negative_prompt is None)."""
        with self._on_device(self.encoder.model):
            rows = [self.encoder.encode_one(prompt, image).repeat_rows(num_images)]
            if negative_prompt is not None:
                encode = (
                    self.encoder.encode_cached
                    if self.cache_negative_encoding
                    else self.encoder.encode_one
                )
                rows.append(encode(negative_prompt, image).repeat_rows(num_images))
        return stack_conditioning(rows)

    # ------------------------------------------------------------------ the MLLM passes

    def _generate_text(self, conversation: list[ChatTurn] | Any, *, max_new_tokens: int) -> str:
        """Greedy text from the loaded Qwen2.5-VL (see `stepedit.reasoning.chat`)."""
        from stepedit.reasoning.chat import QwenChat

        if self._chat is None:
            self._chat = QwenChat(self.text_model, self.components.processor)  # type: ignore[arg-type]
        with self._on_device(self.text_model), torch.inference_mode():
            reply: str = self._chat(conversation, max_new_tokens=max_new_tokens)
        return reply

    def enhance(self, prompt: str, image: Image.Image | None = None) -> str:
        """The prompt enhancer alone: a vague instruction made specific (no diffusion)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise _invalid("prompt", "the instruction must be a non-empty string")
        return rewrite_prompt(
            self.text_generator, image, prompt, max_new_tokens=self.reasoning_budget.rewrite
        )

    # ------------------------------------------------------------------ one candidate

    def _edit_one(
        self,
        image: Image.Image,
        prompt: str,
        *,
        negative_prompt: str,
        num_inference_steps: int,
        guidance_scale: float,
        seeds: list[int],
        size_level: int,
        strength: float,
        latents: Tensor | None,
        report: Callable[[int, int, str], None],
    ) -> _Edit:
        """One diffusion edit of `image` by `prompt`, image i with seeds[i]; no MLLM passes."""
        timings: dict[str, float] = {}
        num_images = len(seeds)
        is_v12 = self.version == "v1.2"

        # 1. Sizes: the working-size image Qwen reads, and the VAE's pixels.
        if self.version == "v1.0":
            working = resize_to_working(image, size_level, Image.Resampling.BICUBIC)
        else:
            working = resize_to_working(image, size_level, Image.Resampling.LANCZOS)
        width, height = working.size
        if is_v12:
            pixels = F.interpolate(
                to_tensor(image), (height, width), mode="bilinear", antialias=True
            )  # [1, 3, H, W] in [0, 1]
            qwen_view = working
        else:
            pixels = to_tensor(working)  # [1, 3, H, W] in [0, 1]
            qwen_view = to_pil(pixels[0])  # the reference's float round trip
        report(0, num_inference_steps, "encode")

        # 2. Conditioning: Qwen2.5-VL reads both prompts with the working-size image.
        tic = self._clock()
        cfg_scale: float | None = guidance_scale
        text_embeddings: Tensor | None = None
        text_mask: Tensor | None = None
        if is_v12:
            cfg_scale = guidance_scale if guidance_scale > 1.0 else None
            negative = negative_prompt if cfg_scale is not None else None
            cond = self.encode_v12(prompt, negative, qwen_view, num_images)
            llm_embedding = cond.emb.to(self.device, self.dtype)
            mask = cond.mask.to(self.device)
            txt_ids = cond.txt_ids.to(self.device)
            text_embeddings = cond.text_embeds.to(self.device, self.dtype)
            text_mask = cond.text_mask.to(self.device)
        else:
            emb, emb_mask = self.encode_prompts(prompt, negative_prompt, qwen_view)
            llm_embedding = torch.repeat_interleave(emb, num_images, dim=0).to(
                self.device, self.dtype
            )
            mask = torch.repeat_interleave(emb_mask, num_images, dim=0).to(self.device)
            txt_ids = None
        timings["encode"] = self._clock() - tic

        # 3. Reference latents (also the img2img start for strength < 1).
        tic = self._clock()
        ref_latents = self.encode_reference(pixels, seeds)  # [N, 16, h, w]
        timings["vae_encode"] = self._clock() - tic

        # 4. Initial noise.
        if latents is None:
            noise = self.prepare_noise(seeds, height, width)
        elif latents.ndim == 3:
            noise = sampling.unpack(latents, height, width).to(self.device, self.dtype)
        else:
            noise = latents.to(self.device, self.dtype)

        # 5. Schedule; strength < 1 starts part-way from the noised source.
        timesteps = sampling.get_schedule(
            num_inference_steps, noise.shape[-1] * noise.shape[-2] // 4, shift=True
        )
        x = noise
        if strength < 1.0:
            x, timesteps = sampling.noise_for_strength(noise, ref_latents, timesteps, strength)

        # 6. Denoise with true CFG: text rows are [positive x N | negative x N].
        tic = self._clock()
        img = sampling.pack(x)  # [N, L, 64]
        ref_img = sampling.pack(ref_latents.to(x.dtype))
        img_ids, _ = sampling.prepare_ids(
            num_images, noise.shape[-2], noise.shape[-1], 0, self.version, self.device
        )
        if txt_ids is None:
            _, txt_ids = sampling.prepare_ids(
                2 * num_images,
                noise.shape[-2],
                noise.shape[-1],
                llm_embedding.shape[1],
                self.version,
                self.device,
            )
        model: Any = _TrimmedText(self.dit) if is_v12 else self.dit
        total = len(timesteps) - 1
        with self._on_device(self.dit), self._autocast():
            img = sampling.denoise(
                model,
                img,
                img_ids,
                ref_img,
                txt_ids,
                llm_embedding,
                mask,
                timesteps,
                cfg_scale,
                text_embeddings=text_embeddings,
                text_mask=text_mask,
                timesteps_truncate=(
                    V12_TIMESTEPS_TRUNCATE if is_v12 else sampling.TIMESTEPS_TRUNCATE[self.version]
                ),
                # v1.2 rows differ in length: one forward per half (see _TrimmedText).
                batch_cfg=self.batch_cfg and not is_v12,
                callback=lambda step, steps: report(step, steps, "denoise"),
            )
        timings["denoise"] = self._clock() - tic

        # 7. Decode in float32.
        report(total, total, "decode")
        tic = self._clock()
        decoded = self.decode(img, height, width)
        timings["decode"] = self._clock() - tic
        return _Edit(decoded, image.size, width, height, timings)

    # ------------------------------------------------------------------ the edit

    @torch.inference_mode()
    def __call__(
        self,
        image: Image.Image,
        prompt: str,
        *,
        negative_prompt: str = "",
        num_inference_steps: int = 28,
        guidance_scale: float = 6.0,
        seed: int | None = None,
        num_images: int = 1,
        size_level: int = 1024,
        strength: float = 1.0,
        output_size: OutputSize = "input",
        latents: Tensor | None = None,
        enhance_prompt: bool = False,
        enable_thinking: bool | None = None,
        enable_reflection: bool | None = None,
        callback: ProgressCallback | None = None,
    ) -> EditOutput:
        self.check_inputs(
            image,
            prompt,
            negative_prompt=negative_prompt,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            seed=seed,
            num_images=num_images,
            size_level=size_level,
            strength=strength,
            output_size=output_size,
            latents=latents,
            enhance_prompt=enhance_prompt,
            enable_thinking=enable_thinking,
            enable_reflection=enable_reflection,
        )
        started = time.perf_counter()
        thinking, reflection = resolve_reasoning(self.version, enable_thinking, enable_reflection)
        timings: dict[str, float] = {}
        passes: list[str] = []

        def report(step: int, total: int, stage: str) -> None:
            if callback is not None:
                callback(PipelineProgress(step=step, total_steps=total, stage=stage))

        # 1. Seeds: image i uses seed + i; reasoning round r uses seed + r.
        base_seed = seed if seed is not None else secrets.randbelow(MAX_SEED + 1)
        seeds = [base_seed + i for i in range(num_images)]
        source = image.convert("RGB")

        # 2. The prompt enhancer (any version): one rewrite before everything else.
        instruction = prompt
        if enhance_prompt:
            report(0, num_inference_steps, "enhance")
            tic = time.perf_counter()
            instruction = self.enhance(prompt, source)
            timings["enhance"] = time.perf_counter() - tic
            passes.append("enhance")

        def edit(target: Image.Image, text: str, edit_seeds: list[int]) -> _Edit:
            return self._edit_one(
                target,
                text,
                negative_prompt=negative_prompt,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                seeds=edit_seeds,
                size_level=size_level,
                strength=strength,
                latents=latents,
                report=report,
            )

        # 3a. A plain edit.
        if not (thinking or reflection):
            made = edit(source, instruction, seeds)
            passes.append("diffusion")
            timings.update(made.timings)
            timings["total"] = time.perf_counter() - started
            self._log(made, num_inference_steps, seeds, timings["total"])
            return EditOutput(
                images=made.images(output_size),
                seeds=seeds,
                prompt=instruction,
                width=made.width,
                height=made.height,
                timings=timings,
                passes=passes,
                original_prompt=prompt,
            )

        # 3b. Reasoning: thinking, then candidates judged by reflection (one chain, one image
        # with reflection; without it the single round makes all num_images).
        candidates: list[_Edit] = []

        def make_candidate(image: Image.Image, instruction: str, seed: int) -> Image.Image:
            made = edit(image, instruction, [seed] if reflection else seeds)
            candidates.append(made)
            # The next round edits this candidate at the source's size, as the reference.
            return made.images("input")[0]

        def on_pass(name: str) -> None:
            report(0, num_inference_steps, name)

        result = run_reasoning_edit(
            Thinker(self.text_generator, self.reasoning_budget),
            make_candidate,
            source,
            instruction,
            base_seed,
            ReasoningOptions(thinking, reflection, self.max_reflection_rounds),
            on_pass=on_pass,
        )
        chosen = candidates[result.best_index]
        passes.extend(result.passes)
        for name in ("encode", "vae_encode", "denoise", "decode"):
            timings[name] = sum(c.timings[name] for c in candidates)
        timings.update({k: v for k, v in result.timings.items() if k != "total"})
        timings["total"] = time.perf_counter() - started
        used_seeds = [result.rounds[result.best_index].seed] if reflection else seeds
        self._log(chosen, num_inference_steps, used_seeds, timings["total"])
        return EditOutput(
            images=chosen.images(output_size),
            seeds=used_seeds,
            prompt=result.rounds[result.best_index].instruction,
            width=chosen.width,
            height=chosen.height,
            timings=timings,
            passes=passes,
            original_prompt=prompt,
            rounds=round_records(result),
            best_round=result.best_index,
        )

    def _log(self, made: _Edit, steps: int, seeds: list[int], seconds: float) -> None:
        logger.info(
            "edit %dx%d, %d steps, %d image(s), seed %d: %.2fs",
            made.width,
            made.height,
            steps,
            len(made.decoded),
            seeds[0],
            seconds,
        )


def round_records(result: ReasoningResult) -> list[RoundRecord]:
    records = []
    for r in result.rounds:
        judgement = r.judgement
        verdict = judgement.verdict if judgement is not None else None
        records.append(
            RoundRecord(
                index=r.index,
                instruction=r.instruction,
                edits=r.edits,
                seed=r.seed,
                verdict=verdict.kind if verdict is not None else None,
                thought=verdict.thought if verdict is not None else None,
                next_instruction=verdict.instruction if verdict is not None else None,
                raw=verdict.raw if verdict is not None else None,
                score=judgement.selection_score if judgement is not None else None,
            )
        )
    return records


class _TrimmedText:
    """The DiT with each call's text cut to its longest valid row.

    v1.2 encodes every prompt unpadded (reference `encode_prompt`), and the DiT's joint attention
    does not mask text padding, so a row must reach the DiT at exactly its own length. Rows of
    one CFG half share a prompt and so a length; the halves run as separate forwards.
    """

    def __init__(self, dit: nn.Module) -> None:
        self.dit = dit

    def __call__(
        self,
        *,
        img: Tensor,
        img_ids: Tensor,
        txt_ids: Tensor,
        timesteps: Tensor,
        llm_embedding: Tensor,
        t_vec: Tensor,
        mask: Tensor,
        text_embeddings: Tensor | None = None,
        text_mask: Tensor | None = None,
    ) -> Tensor:
        keep = int(mask.sum(dim=1).max())
        out: Tensor = self.dit(
            img=img,
            img_ids=img_ids,
            txt_ids=txt_ids[:, :keep],
            timesteps=timesteps,
            llm_embedding=llm_embedding[:, :keep],
            t_vec=t_vec,
            mask=mask[:, :keep],
            text_embeddings=None if text_embeddings is None else text_embeddings[:, :keep],
            text_mask=None if text_mask is None else text_mask[:, :keep],
        )
        return out
