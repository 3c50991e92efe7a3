"""`PipelineEditor`: the real `Editor`, wrapping `stepedit.pipeline.EditPipeline`.

The only engine module that imports torch; the API never imports it (load it lazily).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from PIL import Image

from stepedit.engine.editor import EditorResult, ProgressCallback
from stepedit.pipeline import EditOutput, EditPipeline, PipelineProgress
from stepedit.request import EditRequest
from stepedit.settings import Settings

logger = logging.getLogger(__name__)

_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
}


class PipelineEditor:
    def __init__(self, pipeline: EditPipeline, device: torch.device) -> None:
        self.pipeline = pipeline
        self.device = device
        self.model_version = pipeline.version

    @classmethod
    def from_settings(cls, settings: Settings) -> PipelineEditor:
        if not settings.model:
            raise ValueError("no model source given (--model or STEPEDIT_MODEL)")
        device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = _DTYPES[settings.dtype.lower()] if settings.dtype else None
        pipeline = EditPipeline.from_pretrained(
            settings.model,
            device=device,
            dtype=dtype,
            offload=settings.offload,
            version=settings.model_version,
        )
        apply_speed_switches(pipeline, settings.optimize, device)
        return cls(pipeline, device)

    def edit(
        self, request: EditRequest, image: Image.Image, on_progress: ProgressCallback
    ) -> EditorResult:
        def callback(progress: PipelineProgress) -> None:
            on_progress(progress.step, progress.total_steps, progress.stage)

        self._synchronize()
        started = time.perf_counter()
        if request.enhance_only:
            return self._enhance_only(request, image, started)
        output = self.pipeline(
            image,
            request.prompt,
            negative_prompt=request.negative_prompt,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            seed=request.seed,
            num_images=request.num_images,
            size_level=request.size_level,
            strength=request.strength,
            output_size=request.output_size,
            enhance_prompt=request.enhance_prompt,
            enable_thinking=request.enable_thinking,
            enable_reflection=request.enable_reflection,
            callback=callback,
        )
        self._synchronize()  # device time, not launch time
        return EditorResult(
            images=list(output.images),
            seeds=list(output.seeds),
            prompt=output.prompt,
            passes=list(output.passes),
            inference_s=time.perf_counter() - started,
            stages_s=dict(output.timings),
            reasoning=reasoning_record(output),
        )

    def _enhance_only(
        self, request: EditRequest, image: Image.Image, started: float
    ) -> EditorResult:
        """POST /v1/prompt/enhance: the enhancer alone; the job's prompt_used is its answer."""
        enhanced = self.pipeline.enhance(request.prompt, image if request.enhance_image else None)
        seconds = time.perf_counter() - started
        return EditorResult(
            images=[],
            seeds=[],
            prompt=enhanced,
            passes=["enhance"],
            inference_s=seconds,
            stages_s={"enhance": seconds},
            reasoning={"original_prompt": request.prompt, "prompt": enhanced, "rounds": []},
        )

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def reasoning_record(output: EditOutput) -> dict[str, Any] | None:
    """What the job record keeps of the MLLM passes; None for a plain edit."""
    if output.passes == ["diffusion"]:
        return None
    return {
        "original_prompt": output.original_prompt,
        "prompt": output.prompt,
        "best_round": None if output.best_round is None else output.best_round + 1,
        "rounds": [r.to_dict() for r in output.rounds],
    }


def apply_speed_switches(pipeline: EditPipeline, optimize: str, device: torch.device) -> None:
    """Apply the `optimize` mode (see stepedit.acceleration) to a freshly loaded pipeline.

    "auto" is the exact preset on CUDA and leaves a CPU pipeline as loaded.
    """
    from stepedit.acceleration import apply_optimizations
    from stepedit.acceleration.config import parse_mode

    mode = optimize
    if mode == "auto":
        if device.type != "cuda":
            return  # the pipeline as loaded: the reference's batched CFG, eager blocks
        mode = "exact"
    applied = apply_optimizations(pipeline, parse_mode(mode))
    logger.info("speed switches (%s): %s", mode, applied.summary())
