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
from PIL import Image
from torch import Tensor, nn

from stepedit import sampling
from stepedit.encoder import QwenEditEncoder
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
from stepedit.request import MAX_IMAGES_PER_REQUEST, MAX_SEED

logger = logging.getLogger(__name__)

MAX_STEPS = 100
MAX_GUIDANCE = 20.0
MIN_SIZE_LEVEL = 256
MAX_SIZE_LEVEL = 2048
LATENT_CHANNELS = 16
VAE_DOWNSAMPLE = 8


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
) -> None:
    """Raise InvalidInput (with `param` set) for the first out-of-range edit parameter.

    Needs no model, so callers (the CLI, the service) can run it before loading anything.
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
        if flag:
            raise _invalid(name, "reasoning passes are not run by EditPipeline itself")


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
        self.encoder = QwenEditEncoder(components.text_model, components.processor, max_length)
        text_model: nn.Module = self.encoder.model
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
        if self.version == "v1.2":
            # v1.2 conditions on a different prompt layout plus raw token embeddings
            # (text_embeddings / text_mask); not built here yet.
            raise NotImplementedError("EditPipeline does not implement v1.2 conditioning yet")
        started = time.perf_counter()
        timings: dict[str, float] = {}

        def report(step: int, total: int, stage: str) -> None:
            if callback is not None:
                callback(PipelineProgress(step=step, total_steps=total, stage=stage))

        # 1. Sizes and seeds.
        original_size = image.size
        resample = Image.Resampling.BICUBIC if self.version == "v1.0" else Image.Resampling.LANCZOS
        working = resize_to_working(image, size_level, resample)
        width, height = working.size
        base_seed = seed if seed is not None else secrets.randbelow(MAX_SEED + 1)
        seeds = [base_seed + i for i in range(num_images)]
        pixels = to_tensor(working)  # [1, 3, H, W] in [0, 1]
        report(0, num_inference_steps, "encode")

        # 2. Conditioning: Qwen2.5-VL reads both prompts with the working-size image.
        tic = time.perf_counter()
        emb, mask = self.encode_prompts(prompt, negative_prompt, to_pil(pixels[0]))
        timings["encode"] = time.perf_counter() - tic

        # 3. Reference latents (also the img2img start for strength < 1).
        tic = time.perf_counter()
        ref_latents = self.encode_reference(pixels, seeds)  # [N, 16, h, w]
        timings["vae_encode"] = time.perf_counter() - tic

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
        tic = time.perf_counter()
        img = sampling.pack(x)  # [N, L, 64]
        ref_img = sampling.pack(ref_latents.to(x.dtype))
        img_ids, _ = sampling.prepare_ids(
            num_images, noise.shape[-2], noise.shape[-1], 0, self.version, self.device
        )
        _, txt_ids = sampling.prepare_ids(
            2 * num_images,
            noise.shape[-2],
            noise.shape[-1],
            emb.shape[1],
            self.version,
            self.device,
        )
        llm_embedding = torch.repeat_interleave(emb, num_images, dim=0).to(self.device, self.dtype)
        text_mask = torch.repeat_interleave(mask, num_images, dim=0).to(self.device)
        total = len(timesteps) - 1
        with self._on_device(self.dit), self._autocast():
            img = sampling.denoise(
                self.dit,  # type: ignore[arg-type]
                img,
                img_ids,
                ref_img,
                txt_ids,
                llm_embedding,
                text_mask,
                timesteps,
                guidance_scale,
                timesteps_truncate=sampling.TIMESTEPS_TRUNCATE[self.version],
                batch_cfg=self.batch_cfg,
                callback=lambda step, steps: report(step, steps, "denoise"),
            )
        timings["denoise"] = time.perf_counter() - tic

        # 7. Decode in float32.
        report(total, total, "decode")
        tic = time.perf_counter()
        decoded = self.decode(img, height, width)
        timings["decode"] = time.perf_counter() - tic

        # 8. Back to the source size (the reference's output) unless asked otherwise.
        images = [to_output(out, original_size, output_size) for out in decoded]
        timings["total"] = time.perf_counter() - started
        logger.info(
            "edit %dx%d, %d steps, %d image(s), seed %d: %.2fs",
            width,
            height,
            total,
            num_images,
            base_seed,
            timings["total"],
        )
        return EditOutput(
            images=images,
            seeds=seeds,
            prompt=prompt,
            width=width,
            height=height,
            timings=timings,
            passes=["diffusion"],
        )
