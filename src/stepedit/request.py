"""The one canonical internal request type. Every API flavour converts to and from it.

Torch-free on purpose: the API layer imports this, the worker turns it into a pipeline call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

OutputSize = Literal["input", "working"]
ImageFormat = Literal["png", "jpeg", "webp"]

SIZE_LEVELS = (512, 768, 1024)
MAX_IMAGES_PER_REQUEST = 4
MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class EditRequest:
    """One edit as stepedit runs it, whatever API it arrived through.

    The source image is not part of the request: it is stored once (see `jobs/`) and the job
    record points at it.
    """

    prompt: str
    negative_prompt: str = ""
    seed: int | None = None  # None: a random seed is drawn and recorded before the run
    guidance_scale: float = 6.0
    num_inference_steps: int = 28
    size_level: int = 1024  # the working area is about size_level**2, aspect ratio kept
    output_size: OutputSize = "input"  # "input": resized back to the source size (reference)
    num_images: int = 1
    strength: float = 1.0  # 1.0 starts from pure noise; lower starts from the noised source
    enable_thinking: bool | None = None  # None: the model version's default
    enable_reflection: bool | None = None
    enhance_prompt: bool = False
    # Only the prompt enhancer runs (POST /v1/prompt/enhance): no diffusion, no images; the job's
    # prompt_used is the enhanced instruction. enhance_image False: the enhancer is not shown the
    # job's image (the endpoint was called without one and a placeholder was stored).
    enhance_only: bool = False
    enhance_image: bool = True
    model: str | None = None  # model version requested; None: whichever the server serves
    output_format: ImageFormat = "png"
