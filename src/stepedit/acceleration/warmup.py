"""Warm a compiled pipeline up at start-up, so no user's edit waits for torch.compile.

With dynamic token counts (`OptimizationConfig.compile_dynamic`) one graph per block kind and
batch layout serves every size and aspect ratio. The layouts a server meets: batched CFG (one
forward of 2 rows, both prompts of one length), two forwards of 1 row (v1.2's unpadded prompts of
different lengths), and 1 row without guidance (guidance_scale <= 1, where the release's
reference skips CFG). One short edit per layout compiles them all; a non-square image checks
that the token count is symbolic (it then compiles nothing new).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from PIL import Image

from stepedit.acceleration.compile import compile_report
from stepedit.request import EditRequest

if TYPE_CHECKING:
    from stepedit.pipeline import EditPipeline

logger = logging.getLogger(__name__)

WARMUP_STEPS = 2
WARMUP_SIZE = 512


def warmup_image(width: int, height: int) -> Image.Image:
    """A smooth RGB gradient: any image compiles the same graphs."""
    return Image.linear_gradient("L").resize((width, height)).convert("RGB")


def warm_up(pipeline: EditPipeline, *, size_level: int = WARMUP_SIZE) -> dict[str, float | int]:
    """Run the short edits that compile every graph a served edit needs; returns the time and
    the graphs compiled. Reasoning passes are off: they run the MLLM, which is not compiled."""
    tic = time.perf_counter()
    before = compile_report()["compiled_graphs"]
    requests = [
        # Both prompts, square: batched CFG (or two forwards for v1.2's unpadded prompts).
        (warmup_image(size_level, size_level), 6.0),
        # Non-square, as many uploads are: no new graph when token counts are symbolic.
        (warmup_image(size_level * 4 // 3, size_level * 3 // 4), 6.0),
        # No guidance where the release skips CFG for guidance_scale <= 1: one row.
        (warmup_image(size_level, size_level), 1.0),
    ]
    for image, guidance in requests:
        request = EditRequest(
            prompt="warm-up",
            seed=0,
            guidance_scale=guidance,
            num_inference_steps=WARMUP_STEPS,
            size_level=size_level,
            enable_thinking=False if pipeline.spec.has_reasoning else None,
            enable_reflection=False if pipeline.spec.has_reasoning else None,
        )
        pipeline(image, request)
    report = {
        "warmup_s": time.perf_counter() - tic,
        "compiled_graphs": compile_report()["compiled_graphs"] - before,
    }
    logger.info("warm-up: %.1fs, %d graphs compiled", report["warmup_s"], report["compiled_graphs"])
    return report
