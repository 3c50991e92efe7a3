"""The `Editor` protocol the worker runs, and `FakeEditor` for tests (no torch, no model).

An editor owns a model on a device and turns one `EditRequest` plus its source image (and the
edit's mask, when it came with one: an "L" image of the source's size, white = may change) into
images. `request.seed` is always set when the worker calls it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image, ImageOps

from stepedit.jobs.health import ModelFacts
from stepedit.request import EditRequest, Pass

# (step, total_steps, stage) -> None. It may raise to abort the edit (cancellation).
ProgressCallback = Callable[[int, int, str], None]


@dataclass(frozen=True)
class EditorResult:
    images: list[Image.Image]
    seeds: list[int]  # seeds[i] produced images[i]
    prompt: str  # the instruction the model was conditioned on
    passes: list[str]  # which passes ran (`stepedit.request.Pass` names)
    inference_s: float  # measured device time
    stages_s: dict[str, float] = field(default_factory=dict)
    # Reasoning record for the job (original/rewritten prompt, rounds with verdicts), or None.
    reasoning: dict[str, Any] | None = None
    # Where each image may have changed ("L", white = changed), when the edit had a region: a
    # mask, an outpaint, or preserve_unedited's estimate (`EditOutput.region_masks`).
    region_masks: list[Image.Image] = field(default_factory=list)


class Editor(Protocol):
    def edit(
        self,
        request: EditRequest,
        image: Image.Image,
        on_progress: ProgressCallback,
        mask: Image.Image | None = None,
    ) -> EditorResult: ...


def loaded_facts(editor: Editor) -> tuple[str | None, ModelFacts]:
    """(the release, what it runs with) as a loaded editor reports them for /health and
    `GET /v1/loras`; an editor that says nothing (a test's) reports neither."""
    version = getattr(editor, "model_version", None)
    facts = getattr(editor, "facts", None)
    return (
        version if isinstance(version, str) else None,
        facts() if callable(facts) else ModelFacts(),
    )


class FakeEditor:
    """Inverts the source image after `step_delay_s` per step (cog-style fake predictor); with a
    mask, only where the mask is white (and the mask is the region it reports).

    Selected with the model source "fake" or "fake:<seconds per step>"; for tests only.
    """

    def __init__(self, step_delay_s: float = 0.0, *, fail_with: Exception | None = None) -> None:
        self.step_delay_s = step_delay_s
        self.fail_with = fail_with
        self.calls: list[EditRequest] = []
        self.masks: list[Image.Image | None] = []  # the mask of each call

    @classmethod
    def from_source(cls, source: str) -> FakeEditor:
        _, _, delay = source.partition(":")
        return cls(float(delay) if delay else 0.0)

    def edit(
        self,
        request: EditRequest,
        image: Image.Image,
        on_progress: ProgressCallback,
        mask: Image.Image | None = None,
    ) -> EditorResult:
        self.calls.append(request)
        self.masks.append(mask)
        started = time.perf_counter()
        total = request.num_inference_steps
        for step in range(1, total + 1):
            if self.step_delay_s:
                time.sleep(self.step_delay_s)
            on_progress(step, total, "denoise")
        if self.fail_with is not None:
            raise self.fail_with
        assert request.seed is not None
        source = image.convert("RGB")
        edited = ImageOps.invert(source)
        if mask is not None:
            edited = Image.composite(edited, source, mask)
        return EditorResult(
            images=[edited.copy() for _ in range(request.num_images)],
            seeds=[request.seed + i for i in range(request.num_images)],
            prompt=request.prompt,
            passes=[Pass.DIFFUSION],
            inference_s=time.perf_counter() - started,
            region_masks=[] if mask is None else [mask.copy() for _ in range(request.num_images)],
        )
