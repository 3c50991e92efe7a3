"""EditPipeline: one Step1X-Edit edit (image + EditRequest -> images), as the references run it.

Each release's rules come from its `VersionSpec` (stepedit.request); whose arithmetic is
reproduced, the official repository's or the diffusers pipeline's, follows the release and the
layout the weights were published in (`VersionSpec.reference_for`, docs/weights.md).

official (v1.0; v1.1 in the original layout):
- Qwen sees the working image after a float round trip (uint8 / 255, then x 255 truncated);
- random draws: the noise from a fresh `Generator(device)` seeded with the seed, then the VAE
  posterior sample from another (the global RNG of a seeded official run);
- schedule: a float32 torch linspace, shifted; the DiT is told t; the Euler step in the latents'
  dtype; true CFG always; the output x 255 truncated.
diffusers (v1.1 in the diffusers layout; v1.2):
- Qwen sees the working image, through transformers' torchvision ("fast") image processor
  (computed in torch: `model.qwen.TensorQwenImageProcessor`), which diffusers users get;
- random draws: the posterior sample, then the noise, from one `Generator("cpu")` seeded with the
  seed (the pipelines' examples pass `torch.Generator().manual_seed(seed)`);
- schedule: numpy sigmas; the DiT is told (1000 t) / 1000; the Euler step in float32; true CFG
  only when guidance_scale > 1; the VAE's arithmetic as AutoencoderKL's; the output x 255 rounded.

Common to both: the source resized to the working size (`VersionSpec.working_resample`; v1.2's VAE
reads the source resized bilinearly with antialiasing); the starting noise drawn in bfloat16 as
both references draw it, then cast to the pipeline dtype; the VAE in float32 (on CUDA its encoder
under bf16 autocast from v1.1 on); the DiT in the pipeline dtype (under bf16 autocast on CUDA);
CFG's norm rescale per `request.cfg_rescale` (default: the release's own code); the result
resized back to the source size with PIL's default filter. Image i uses seed + i.

Reasoning (v1.2, stepedit.reasoning): as in the reference, the rounds of one run continue one
random stream, a CPU generator seeded with the seed and handed to every round's
`prepare_latents` (so each round reports the request's seed); the MLLM samples from another CPU
generator, seeded with the seed when the edit starts. One seed reproduces the whole run.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from stepedit import regions, sampling
from stepedit.acceleration.regions import RegionSettings, region_sampler
from stepedit.encoder import EncodingCache, QwenEditEncoder
from stepedit.encoder_v12 import QwenEditEncoderV12
from stepedit.errors import InvalidInput
from stepedit.images import resize_to_working, to_output, to_pil, to_tensor, working_size
from stepedit.model.lora import LoraSet
from stepedit.model.qwen import with_tensor_image_processor
from stepedit.reasoning import (
    DEFAULT_MAX_ROUNDS,
    MAX_ASKS,
    ReasoningOptions,
    ReasoningResult,
    TextGenerator,
    Thinker,
    TokenBudget,
    run_reasoning_edit,
)
from stepedit.reasoning import enhance_prompt as rewrite_prompt
from stepedit.reasoning.prompts import ChatTurn
from stepedit.request import VERSIONS, EditRequest, ModelVersion, Pass, VersionSpec

logger = logging.getLogger(__name__)

LATENT_CHANNELS = 16
VAE_DOWNSAMPLE = 8
NOISE_DTYPE = torch.bfloat16  # both references draw the starting noise in bf16
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


@dataclass(frozen=True)
class PipelineProgress:
    step: int
    total_steps: int
    stage: str  # "encode", "denoise", "decode", or a reasoning pass ("thinking", ...)


ProgressCallback = Callable[[PipelineProgress], None]


@dataclass
class EditOutput:
    images: list[Image.Image]
    seeds: list[int]  # images[i] was made with seeds[i]
    prompt: str  # the instruction the DiT was conditioned on
    width: int  # working size
    height: int
    timings: dict[str, float] = field(default_factory=dict)  # seconds
    passes: list[str] = field(default_factory=list)
    original_prompt: str = ""  # the instruction as given
    rounds: list[RoundRecord] = field(default_factory=list)  # one per candidate (reasoning)
    best_round: int | None = None  # index into rounds of the returned candidate
    latents: Tensor | None = None  # the denoised latents [N, 16, h, w] (float32), before decoding
    # images[i]'s region ("L", images[i]'s size, white = may have changed): the mask, the
    # outpainted area or the estimate of preserve_unedited; empty without one (docs/regions.md).
    region_masks: list[Image.Image] = field(default_factory=list)


@dataclass(frozen=True)
class RoundRecord:
    """One reasoning round as the job record keeps it (no image)."""

    index: int  # 0-based
    instruction: str  # what the DiT was conditioned on in this round
    edits: str  # "source" or "previous"
    seed: int
    verdict: str | None  # success | retry | failed; None without reflection
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
    latents: Tensor
    source_size: tuple[int, int]
    width: int
    height: int
    timings: dict[str, float]
    regions: list[Image.Image] = field(default_factory=list)  # preserve_unedited's estimates

    def images(self, request: EditRequest) -> list[Image.Image]:
        return [to_output(out, self.source_size, request.output_size) for out in self.decoded]


def default_device() -> torch.device:
    """CUDA when usable; never a silent CPU fallback when a GPU is present but unusable (an old
    driver, a CPU build of torch): that raises, saying what to install."""
    from stepedit.acceleration.device import default_device as checked_default

    return checked_default()


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA (the reference's precision), float32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def make_encoder(
    spec: VersionSpec, text_model: nn.Module, processor: Any
) -> QwenEditEncoder | QwenEditEncoderV12:
    if spec.encoder == "edit":
        return QwenEditEncoderV12(text_model, processor)  # type: ignore[arg-type]
    return QwenEditEncoder(text_model, processor)  # type: ignore[arg-type]


class EditPipeline:
    """Step1X-Edit editing over loaded components (see `stepedit.weights.load_components`)."""

    def __init__(
        self,
        components: Any,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        offload: bool = False,
    ) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype if dtype is not None else default_dtype(self.device)
        self.offload = offload
        self.components = components
        self.version: ModelVersion = components.version
        self.spec: VersionSpec = VERSIONS[self.version]
        self.reference: sampling.Reference = self.spec.reference_for(components.source_layout)
        # Switches (the acceleration presets set them): CFG as one batch of 2N, as the official
        # code runs it, or two batches of N, as the diffusers pipelines do (the same result up to
        # float rounding); exact reuse of the negative prompt's encoding across calls.
        self.batch_cfg = self.reference == "official"
        self.cache_negative_encoding = True
        self.encoding_cache = EncodingCache()
        # Region estimate and `+regions` (stepedit.acceleration.regions; set by the presets).
        self.region_settings = RegionSettings()
        self.dit: nn.Module = components.dit
        # The reference keeps the VAE in float32 whatever the DiT's precision; diffusers'
        # AutoencoderKL orders its arithmetic its own way (the last float bits differ).
        self.ae: Any = components.ae.to(torch.float32)
        self.ae.use_diffusers_arithmetic(self.reference == "diffusers")
        self.text_model: nn.Module = components.text_model
        # The diffusers pipelines' processor is transformers' torchvision ("fast") one.
        self.processor = components.processor
        if self.reference == "diffusers":
            self.processor = with_tensor_image_processor(self.processor)
        self.encoder = make_encoder(self.spec, self.text_model, self.processor)
        # The reasoning passes: at most this many candidates with reflection, these new-token
        # bounds per pass, and the generator (Qwen itself, sampling; tests put a script here).
        self.max_reflection_rounds = DEFAULT_MAX_ROUNDS
        # A model may cap its own generation (the tiny random test MLLM does: its text is noise,
        # and a long generation of noise only costs time).
        cap = getattr(getattr(self.text_model, "generation_config", None), "max_new_tokens", None)
        self.reasoning_budget = TokenBudget().capped(cap)
        self.text_generator: TextGenerator = self._generate_text
        self._chat: Any = None
        # The MLLM's sampling draws: seeded with the request's seed as each edit starts.
        self.text_rng = torch.Generator("cpu")
        # The reference asks a pass again, up to MAX_ASKS times, while its answer is unreadable.
        # A dummy checkpoint's MLLM is random, its answers never are: it is asked once.
        self.reasoning_max_asks = 1 if components.source_layout == "dummy" else MAX_ASKS
        home = torch.device("cpu") if offload else self.device
        modules: list[nn.Module] = [self.dit, self.ae, self.text_model]
        for module in modules:
            module.to(home)
        self.dit.to(self.dtype)
        self.text_model.to(self.dtype)
        # LoRA adapters (stepedit.weights.lora.load_loras; request.loras picks per edit).
        self.loras = LoraSet(self.dit, self.dtype)

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        offload: bool = False,
        version: ModelVersion | None = None,
        **load_options: Any,
    ) -> EditPipeline:
        """Load from a checkpoint directory (either layout), a hub repo id in the local cache,
        or `dummy:<preset>`; `load_options` go to `stepedit.weights.load_components`."""
        from stepedit.weights import load_components

        resolved = torch.device(device) if device is not None else default_device()
        dtype = dtype if dtype is not None else default_dtype(resolved)
        components = load_components(
            source, device=resolved, dtype=dtype, version=version, offload=offload, **load_options
        )
        return cls(components, resolved, dtype, offload=offload)

    # ------------------------------------------------------------------ validation

    def check_inputs(
        self, image: Image.Image, request: EditRequest, latents: Tensor | None = None
    ) -> EditRequest:
        """Raise InvalidInput naming the first bad input; does no model work."""
        if not isinstance(image, Image.Image):
            raise InvalidInput(
                f"image: expected a PIL image, got {type(image).__name__}", param="image"
            )
        if image.width < 1 or image.height < 1:
            raise InvalidInput("image: the image is empty", param="image")
        if not isinstance(request, EditRequest):
            raise TypeError(f"expected an EditRequest, got {type(request).__name__}")
        request.validate(self.spec)
        self.loras.check(request.loras)
        if latents is not None:
            canvas = regions.canvas_size(image.size, request)  # outpaint grows the image
            width, height = working_size(*canvas, request.size_level)
            h, w = height // VAE_DOWNSAMPLE, width // VAE_DOWNSAMPLE
            unpacked = (request.num_images, LATENT_CHANNELS, h, w)
            packed = (request.num_images, h * w // 4, LATENT_CHANNELS * 4)
            if tuple(latents.shape) not in (unpacked, packed):
                raise InvalidInput(
                    f"latents: expected shape {unpacked} (or packed {packed}), "
                    f"got {tuple(latents.shape)}",
                    param="latents",
                )
        return request

    # ------------------------------------------------------------------ the edit

    @torch.inference_mode()
    def __call__(
        self,
        image: Image.Image,
        request: EditRequest,
        *,
        mask: Image.Image | None = None,
        latents: Tensor | None = None,
        callback: ProgressCallback | None = None,
    ) -> EditOutput:
        """Edit `image` as `request` says. `latents`: the starting noise instead of the seed's
        ([N, 16, h, w] or packed); `callback` sees every stage and step (raise to abort).
        `mask`: white = may change (rules: `regions.check_mask`, docs/regions.md)."""
        request = self.check_inputs(image, request, latents).with_seed()
        assert request.seed is not None
        self.text_rng.manual_seed(request.seed)
        started = time.perf_counter()
        thinking, reflection = request.reasoning(self.spec)
        timings: dict[str, float] = {}
        passes: list[str] = []

        def report(step: int, total: int, stage: str) -> None:
            if callback is not None:
                callback(PipelineProgress(step=step, total_steps=total, stage=stage))

        # The region: a mask, an outpaint canvas, or preserve_unedited (docs/regions.md).
        area = regions.edit_area(image, request, mask)
        source = area.image

        # 1. The prompt enhancer (any version): one rewrite before everything else.
        instruction = area.prompt
        if request.enhance_prompt:
            report(0, request.num_inference_steps, Pass.ENHANCE)
            tic = time.perf_counter()
            instruction = self.enhance(area.prompt, source)
            timings[Pass.ENHANCE] = time.perf_counter() - tic
            passes.append(Pass.ENHANCE)

        # 2a. A plain edit.
        if not (thinking or reflection):
            made = self._edit_one(
                source, instruction, request, request.seeds, latents, report, area
            )
            images, region_masks = area.finish(made.images(request), [made.regions])
            passes.append(Pass.DIFFUSION)
            timings.update(made.timings)
            timings["total"] = time.perf_counter() - started
            self._log(made, request, request.seeds, timings["total"])
            return EditOutput(
                images=images,
                seeds=request.seeds,
                prompt=instruction,
                width=made.width,
                height=made.height,
                timings=timings,
                passes=passes,
                original_prompt=request.prompt,
                latents=made.latents,
                region_masks=region_masks,
            )

        # 2b. Reasoning: thinking, then candidates judged by reflection (one chain, one image
        # with reflection; without it the single round makes all num_images).
        candidates: list[_Edit] = []

        # With reflection, every round draws from this one generator, as the reference's do.
        seed = request.seed
        generator = torch.Generator("cpu").manual_seed(seed) if reflection else None

        def make_candidate(image: Image.Image, instruction: str) -> Image.Image:
            seeds = [seed] if reflection else request.seeds
            made = self._edit_one(
                image, instruction, request, seeds, latents, report, area, generator=generator
            )
            candidates.append(made)
            # The next round edits this candidate at the source's size, as the reference.
            return to_output(made.decoded[0], made.source_size, "input")

        result = run_reasoning_edit(
            Thinker(self.text_generator, self.reasoning_budget, self.reasoning_max_asks),
            make_candidate,
            source,
            instruction,
            request.seed,
            ReasoningOptions(thinking, reflection, self.max_reflection_rounds),
            on_pass=lambda name: report(0, request.num_inference_steps, name),
        )
        chosen = candidates[result.best_index]
        images, region_masks = area.finish(chosen.images(request), [c.regions for c in candidates])
        passes.extend(result.passes)
        for name in ("encode", "vae_encode", "denoise", "decode"):
            timings[name] = sum(c.timings[name] for c in candidates)
        timings.update({k: v for k, v in result.timings.items() if k != "total"})
        timings["total"] = time.perf_counter() - started
        seeds = [result.rounds[result.best_index].seed] if reflection else request.seeds
        self._log(chosen, request, seeds, timings["total"])
        return EditOutput(
            images=images,
            seeds=seeds,
            prompt=result.rounds[result.best_index].instruction,
            width=chosen.width,
            height=chosen.height,
            timings=timings,
            passes=passes,
            original_prompt=request.prompt,
            rounds=round_records(result),
            best_round=result.best_index,
            latents=chosen.latents,
            region_masks=region_masks,
        )

    def _edit_one(
        self,
        image: Image.Image,
        instruction: str,
        request: EditRequest,
        seeds: list[int],
        latents: Tensor | None,
        report: Callable[[int, int, str], None],
        area: regions.EditArea | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> _Edit:
        """One diffusion edit of `image` by `instruction`, image i with seeds[i]; no MLLM
        passes."""
        timings: dict[str, float] = {}
        steps = request.num_inference_steps

        # 1. Sizes: the working-size image Qwen reads, and the VAE's pixels [1, 3, H, W].
        working = resize_to_working(
            image, request.size_level, _RESAMPLE[self.spec.working_resample]
        )
        width, height = working.size
        if self.spec.vae_input == "source-bilinear":
            pixels = F.interpolate(
                to_tensor(image), (height, width), mode="bilinear", antialias=True
            )
        else:
            pixels = to_tensor(working)
        qwen_view = to_pil(pixels[0]) if self.reference == "official" else working
        report(0, steps, "encode")

        # 2. Conditioning: Qwen2.5-VL reads each prompt with the working-size image.
        tic = self._clock()
        with_cfg = self.reference == "official" or request.guidance_scale > 1.0
        positive, negative = self.encode_prompts(
            instruction, request.negative_prompt if with_cfg else None, qwen_view
        )
        positive = positive.repeat(len(seeds)).to(self.device, self.dtype)
        if negative is not None:
            negative = negative.repeat(len(seeds)).to(self.device, self.dtype)
        timings["encode"] = self._clock() - tic

        # 3. Reference latents (also the img2img start for strength < 1) and the starting noise,
        # drawn in the reference's order.
        tic = self._clock()
        noise, ref_latents = self.prepare_latents(pixels, seeds, height, width, generator)
        if latents is not None:
            unpacked = latents if latents.ndim == 4 else sampling.unpack(latents, height, width)
            noise = unpacked.to(self.device, self.dtype)
        timings["vae_encode"] = self._clock() - tic

        # 4. Schedule; strength < 1 starts part-way from the noised source.
        h, w = noise.shape[-2:]
        schedule = sampling.get_schedule(steps, h * w // 4, reference=self.reference)
        x = noise
        if request.strength < 1.0:
            x, schedule = sampling.noise_for_strength(
                noise, ref_latents, schedule, request.strength
            )

        # 5. Denoise with true CFG (region-aware with a mask, preserve_unedited or +regions).
        sampler = region_sampler(self.region_settings, area, noise, steps, schedule.num_steps)
        denoise = sampling.denoise if sampler is None else sampler.denoise
        tic = self._clock()
        with self._on_device(self.dit), self._autocast(), self.loras.selected(request.loras):
            img = denoise(
                self.dit,
                sampling.pack(x),  # [N, L, 64]
                sampling.prepare_image_ids(
                    len(seeds), h, w, self.spec.reference_positions, self.device
                ),
                sampling.pack(ref_latents.to(x.dtype)),
                positive,
                negative,
                schedule,
                request.guidance_scale,
                rescale_above=self.spec.rescale_threshold(request.cfg_rescale),
                batch_cfg=self.batch_cfg,
                callback=lambda step, total: report(step, total, "denoise"),
            )
        timings["denoise"] = self._clock() - tic

        # 6. Decode in float32.
        report(schedule.num_steps, schedule.num_steps, "decode")
        tic = self._clock()
        final = sampling.unpack(img.float(), height, width)  # [N, 16, h, w]
        decoded = self.decode(final)
        timings["decode"] = self._clock() - tic
        estimated = [] if sampler is None else sampler.estimated_regions(width, height)
        return _Edit(decoded, final, image.size, width, height, timings, estimated)

    # ------------------------------------------------------------------ stages

    def encode_prompts(
        self, prompt: str, negative_prompt: str | None, image: Image.Image
    ) -> tuple[sampling.Conditioning, sampling.Conditioning | None]:
        """(positive, negative) conditioning of batch 1; no negative when it is None."""
        with self._on_device(self.text_model):
            positive = self.encoder.encode(prompt, image)
            negative = None
            if negative_prompt is not None:
                if self.cache_negative_encoding:
                    negative = self.encoding_cache.get(self.encoder.encode, negative_prompt, image)
                else:
                    negative = self.encoder.encode(negative_prompt, image)
        return positive, negative

    def prepare_latents(
        self,
        pixels: Tensor,
        seeds: list[int],
        height: int,
        width: int,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(noise [N, 16, H/8, W/8] in the pipeline dtype, reference latents [N, 16, H/8, W/8])
        for pixels [1, 3, H, W] in [0, 1], image i from seeds[i], in the reference's order.
        `generator`: every draw from it instead, continuing its stream (a reasoning run)."""
        shape = (1, LATENT_CHANNELS, height // VAE_DOWNSAMPLE, width // VAE_DOWNSAMPLE)
        with self._on_device(self.ae), torch.no_grad(), self._autocast(self.version != "v1.0"):
            moments = self.ae.encoder(pixels.to(self.device) * 2 - 1)  # [1, 32, H/8, W/8]
        mean, logvar = torch.chunk(moments, 2, dim=1)
        if self.reference == "diffusers":
            logvar = logvar.clamp(-30.0, 20.0)  # diffusers' DiagonalGaussianDistribution
        std = torch.exp(0.5 * logvar)
        noises, samples = [], []
        for seed in seeds:
            if self.reference == "diffusers":
                # One CPU generator per image (the diffusers examples pass
                # torch.Generator().manual_seed(seed)): the posterior sample, then the noise.
                stream = generator or torch.Generator("cpu").manual_seed(seed)
                samples.append(_randn(mean.shape, stream, mean.dtype).to(mean.device))
                noises.append(_randn(shape, stream, NOISE_DTYPE))
            else:
                # The official code: noise from a fresh device generator; the posterior from the
                # global RNG, which a seeded run has in the same state.
                noises.append(_randn(shape, generator or self._generator(seed), NOISE_DTYPE))
                samples.append(_randn(mean.shape, generator or self._generator(seed), mean.dtype))
        z = mean + std * torch.cat(samples)  # [N, 16, H/8, W/8]
        ref_latents: Tensor = self.ae.scale_factor * (z - self.ae.shift_factor)
        noise = torch.cat(noises).to(self.device, self.dtype)
        return noise, ref_latents

    def decode(self, latents: Tensor) -> list[Image.Image]:
        """latents [N, 16, h, w] -> images, quantized as the reference does."""
        with self._on_device(self.ae), torch.no_grad():
            pixels = self.ae.decode(latents.to(self.device))  # [N, 3, H, W]
        pixels = pixels.clamp(-1, 1).mul(0.5).add(0.5)
        rounding = self.reference == "diffusers"
        return [to_pil(row, rounding=rounding) for row in pixels.float()]

    # ------------------------------------------------------------------ the MLLM passes

    def _generate_text(self, conversation: list[ChatTurn] | Any, *, max_new_tokens: int) -> str:
        """Sampled text from the loaded Qwen2.5-VL, drawing from `text_rng` (see
        `stepedit.reasoning.chat`)."""
        from stepedit.reasoning.chat import QwenChat

        if self._chat is None:
            self._chat = QwenChat(
                self.components.text_model, self.processor, generator=self.text_rng
            )
        with self._on_device(self.text_model), torch.inference_mode():
            reply: str = self._chat(conversation, max_new_tokens=max_new_tokens)
        return reply

    def enhance(
        self, prompt: str, image: Image.Image | None = None, seed: int | None = None
    ) -> str:
        """The prompt enhancer alone: a vague instruction made specific (no diffusion).
        `seed` reseeds the MLLM's sampling (None: its stream continues)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidInput("prompt: the instruction must be a non-empty string", param="prompt")
        if seed is not None:
            self.text_rng.manual_seed(seed)
        return rewrite_prompt(
            self.text_generator, image, prompt, max_new_tokens=self.reasoning_budget.rewrite
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

    def _log(self, made: _Edit, request: EditRequest, seeds: list[int], seconds: float) -> None:
        logger.info(
            "edit %dx%d, %d steps, %d image(s), seed %d: %.2fs",
            made.width,
            made.height,
            request.num_inference_steps,
            len(made.decoded),
            seeds[0],
            seconds,
        )


def _randn(shape: Any, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    """Standard normal noise drawn on the generator's device."""
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype)


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
