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
from stepedit.jobs.health import LoadedLora, ModelFacts
from stepedit.model.attention import get_attention_backend
from stepedit.pipeline import EditOutput, EditPipeline, PipelineProgress
from stepedit.request import EditRequest, Pass
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
        # What apply_optimizations set up and checked (JSON-ready, for /health); None: as loaded.
        self.optimizations: dict[str, Any] | None = None

    def facts(self) -> ModelFacts:
        """What this editor runs with, for /health and `GET /v1/loras` (no file paths)."""
        loras = tuple(
            LoadedLora(
                name=info["name"],
                format=info["format"],
                rank=info["rank"],
                targets=info["targets"],
                default_scale=info["default_scale"],
                merged=info["merged"],
            )
            for info in self.pipeline.loras.info()
        )
        return ModelFacts(optimizations=self.optimizations or as_loaded(self.pipeline), loras=loras)

    @classmethod
    def from_settings(cls, settings: Settings) -> PipelineEditor:
        if not settings.model:
            raise ValueError("no model source given (--model or STEPEDIT_MODEL)")
        from stepedit.acceleration.config import plan_optimizations
        from stepedit.pipeline import default_device

        device = torch.device(settings.device) if settings.device else default_device()
        dtype = _DTYPES[settings.dtype.lower()] if settings.dtype else None
        plan = plan_optimizations(
            settings.optimize, offload=settings.offload, device_type=device.type
        )
        pipeline = EditPipeline.from_pretrained(
            settings.model,
            device=device,
            dtype=dtype,
            offload=plan.load_on_host,
            version=settings.model_version,
            text_encoder=settings.text_encoder,
            download=settings.download,
        )
        editor = cls(pipeline, device)
        editor.optimizations = apply_speed_switches(pipeline, plan.mode or "auto", device)
        if settings.loras:  # after the switches: merged into plain weights, paths otherwise
            from stepedit.weights.lora import load_loras, parse_lora_specs

            load_loras(pipeline, parse_lora_specs(settings.loras))
        return editor

    def edit(
        self,
        request: EditRequest,
        image: Image.Image,
        on_progress: ProgressCallback,
        mask: Image.Image | None = None,
    ) -> EditorResult:
        def callback(progress: PipelineProgress) -> None:
            on_progress(progress.step, progress.total_steps, progress.stage)

        self._synchronize()
        started = time.perf_counter()
        if request.enhance_only:
            return self._enhance_only(request, image, started)
        output = self.pipeline(image, request, mask=mask, callback=callback)
        self._synchronize()  # device time, not launch time
        return EditorResult(
            images=list(output.images),
            seeds=list(output.seeds),
            prompt=output.prompt,
            passes=list(output.passes),
            inference_s=time.perf_counter() - started,
            stages_s=dict(output.timings),
            reasoning=reasoning_record(output),
            region_masks=list(output.region_masks),
        )

    def _enhance_only(
        self, request: EditRequest, image: Image.Image, started: float
    ) -> EditorResult:
        """POST /v1/prompt/enhance: the enhancer alone; the job's prompt_used is its answer."""
        enhanced = self.pipeline.enhance(
            request.prompt, image if request.enhance_image else None, seed=request.seed
        )
        seconds = time.perf_counter() - started
        return EditorResult(
            images=[],
            seeds=[],
            prompt=enhanced,
            passes=[Pass.ENHANCE],
            inference_s=seconds,
            stages_s={"enhance": seconds},
            reasoning={"original_prompt": request.prompt, "prompt": enhanced, "rounds": []},
        )

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def reasoning_record(output: EditOutput) -> dict[str, Any] | None:
    """What the job record keeps of the MLLM passes; None for a plain edit."""
    if output.passes == [Pass.DIFFUSION]:
        return None
    return {
        "original_prompt": output.original_prompt,
        "prompt": output.prompt,
        "best_round": None if output.best_round is None else output.best_round + 1,
        "rounds": [r.to_dict() for r in output.rounds],
    }


def as_loaded(pipeline: EditPipeline) -> dict[str, Any]:
    """What runs when no speed switch was applied (`--optimize auto` on a CPU): the pipeline as
    loaded, in the keys of `AppliedOptimizations.summary`."""
    return {
        "mode": "as loaded",
        "device": str(pipeline.device),
        "dtype": str(pipeline.dtype).removeprefix("torch."),
        "attention": get_attention_backend(),
        "batch_cfg": pipeline.batch_cfg,
        "compiled_blocks": 0,
        "regions": False,
    }


def apply_speed_switches(
    pipeline: EditPipeline, optimize: str, device: torch.device
) -> dict[str, Any] | None:
    """Apply the `optimize` mode (see stepedit.acceleration) to a freshly loaded pipeline and
    warm compiled blocks up; returns the summary of what runs (None: left as loaded).

    "auto" is the exact preset on CUDA and leaves a CPU pipeline as loaded.
    """
    from stepedit.acceleration import apply_optimizations
    from stepedit.acceleration.config import parse_mode
    from stepedit.acceleration.warmup import warm_up

    mode = optimize
    if mode == "auto":
        if device.type != "cuda":
            return None  # the pipeline as loaded: the reference's batched CFG, eager blocks
        mode = "exact"
    applied = apply_optimizations(pipeline, parse_mode(mode))
    summary = applied.summary()
    if applied.compiled_blocks:
        summary["warmup"] = warm_up(pipeline)  # compile now, not during a user's edit
    summary["mode"] = mode
    logger.info("speed switches (%s): %s", mode, summary)
    return summary
