"""`InProcessBackend`: the model loaded in the MCP server's own process.

The pipeline is loaded once, in a worker thread started when the server starts, so the MCP
handshake does not wait for it; tools that need it wait for the load. Edits run one at a time on
that same thread, so the event loop stays free (progress notifications, other tool calls), and
a cancelled tool call stops its edit at the next step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from stepedit.errors import NotFound, ServiceUnavailable, StepEditError
from stepedit.inputs import (
    decode_image,
    fetch_policy_from_settings,
    load_image_source,
    rules_from_settings,
)
from stepedit.mcp.backend import EditResult, JobResult, OutputImage, ProgressFn
from stepedit.mcp.images import MIME_TYPES, ImageArg, encode_image, read_file
from stepedit.request import EditRequest, ModelVersion, version_named
from stepedit.settings import Settings

if TYPE_CHECKING:
    from stepedit.pipeline import EditOutput, EditPipeline, PipelineProgress

logger = logging.getLogger(__name__)

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
PROGRESS_SEND_TIMEOUT_S = 10.0


class EditAborted(Exception):
    """Raised from the progress callback to stop an edit whose tool call was cancelled."""


@dataclass(frozen=True)
class ModelOptions:
    """How to load the model (the same choices as `stepedit edit`)."""

    source: str  # checkpoint folder, hub repo id in the local cache, or dummy:<preset>
    version: ModelVersion | None = None
    device: str | None = None  # default: cuda when present
    dtype: str | None = None  # bf16 | fp16 | fp32; default: the pipeline's choice
    offload: bool = False
    text_encoder: str | None = None
    download: bool = False
    optimize: str | None = None  # a speed preset (docs/performance.md)


class InProcessBackend:
    mode = "in-process"
    has_jobs = False

    def __init__(self, options: ModelOptions, settings: Settings | None = None) -> None:
        self.options = options
        # Source images follow the server's limits and URL policy (STEPEDIT_MAX_UPLOAD_BYTES,
        # STEPEDIT_ALLOW_PRIVATE_URLS, ...).
        self.settings = settings if settings is not None else Settings()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="stepedit-mcp-model"
        )
        self._loading: asyncio.Future[EditPipeline] | None = None
        self._closing = threading.Event()

    # ------------------------------------------------------------------ life

    async def __aenter__(self) -> InProcessBackend:
        self._start_loading()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()  # a running edit stops at its next step
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _start_loading(self) -> asyncio.Future[EditPipeline]:
        if self._loading is None:
            loop = asyncio.get_running_loop()
            self._loading = loop.run_in_executor(self._executor, self._load)
            self._loading.add_done_callback(self._loaded)
        return self._loading

    def _load(self) -> EditPipeline:
        import torch

        from stepedit.pipeline import EditPipeline

        options = self.options
        logger.info("loading %s", options.source)
        dtype = getattr(torch, DTYPES[options.dtype]) if options.dtype else None
        pipeline = EditPipeline.from_pretrained(
            options.source,
            device=options.device,
            dtype=dtype,
            offload=options.offload,
            version=options.version,
            text_encoder=options.text_encoder or None,
            download=options.download,
        )
        if options.optimize:
            from stepedit.acceleration import apply_optimizations
            from stepedit.acceleration.config import parse_mode

            applied = apply_optimizations(pipeline, parse_mode(options.optimize))
            logger.info("speed switches (%s): %s", options.optimize, applied.summary())
        return pipeline

    def _loaded(self, future: asyncio.Future[EditPipeline]) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if error is None:
            logger.info("model ready: %s (%s)", self.options.source, future.result().version)
        else:
            logger.error("could not load %s", self.options.source, exc_info=error)

    async def _pipeline(self) -> EditPipeline:
        # shield: a cancelled tool call must not cancel the load the next call waits for
        try:
            return await asyncio.shield(self._start_loading())
        except Exception as exc:
            raise ServiceUnavailable(
                f"the model {self.options.source} could not be loaded ({_describe(exc)})"
            ) from None

    # ------------------------------------------------------------------ tools

    async def edit(self, image: ImageArg, request: EditRequest, progress: ProgressFn) -> EditResult:
        request.validate()  # the bad field before any wait for the model
        source = await self._source_image(image)
        pipeline = await self._pipeline()
        request = request.validate(pipeline.spec)
        image_format = request.output_format
        loop = asyncio.get_running_loop()
        stop = threading.Event()

        def on_progress(update: PipelineProgress) -> None:
            if stop.is_set() or self._closing.is_set():
                raise EditAborted("the tool call was cancelled")
            sent = asyncio.run_coroutine_threadsafe(
                progress(update.step, update.total_steps, update.stage), loop
            )
            try:  # in order, and before the result
                sent.result(PROGRESS_SEND_TIMEOUT_S)
            except Exception:
                logger.debug("a progress notification was not sent", exc_info=True)

        def run() -> tuple[EditOutput, list[bytes]]:
            output = pipeline(source, request, callback=on_progress)
            return output, [encode_image(result, image_format) for result in output.images]

        try:
            output, encoded = await loop.run_in_executor(self._executor, run)
        except asyncio.CancelledError:
            stop.set()
            raise
        except StepEditError:
            raise
        except Exception as exc:
            logger.exception("the edit failed")
            raise StepEditError(f"the edit failed: {_describe(exc)}") from None
        images = [
            OutputImage(data, MIME_TYPES[image_format], seed, result.width, result.height)
            for data, seed, result in zip(encoded, output.seeds, output.images, strict=True)
        ]
        return EditResult(
            images=images,
            prompt_used=output.prompt,
            passes=list(output.passes),
            model_version=pipeline.version,
        )

    async def enhance(self, prompt: str, image: ImageArg | None) -> str:
        EditRequest(prompt=prompt, enhance_only=True).validate()
        source = await self._source_image(image) if image is not None else None
        pipeline = await self._pipeline()
        loop = asyncio.get_running_loop()
        try:
            enhanced: str = await loop.run_in_executor(
                self._executor, pipeline.enhance, prompt, source
            )
        except StepEditError:
            raise
        except Exception as exc:
            logger.exception("the prompt enhancer failed")
            raise StepEditError(f"the prompt enhancer failed: {_describe(exc)}") from None
        return enhanced

    async def job(self, job_id: str, *, include_images: bool) -> JobResult:
        raise NotFound(
            "in-process edits are not jobs: edit_image returns its result directly "
            "(get_job needs a stepedit server: stepedit mcp --server URL)",
            param="job_id",
        )

    async def models(self) -> dict[str, Any]:
        loading = self._start_loading()
        info: dict[str, Any] = {
            "mode": self.mode,
            "source": self.options.source,
            "status": "loading",
            "model_version": self.options.version or version_named(self.options.source),
        }
        if loading.done():
            error = loading.exception()
            if error is not None:
                info.update(status="failed", reason=_describe(error))
            else:
                pipeline = loading.result()
                info.update(
                    status="ok",
                    model_version=pipeline.version,
                    device=str(pipeline.device),
                    dtype=str(pipeline.dtype).removeprefix("torch."),
                )
        return info

    # ------------------------------------------------------------------ inputs

    async def _source_image(self, image: ImageArg) -> Image.Image:
        rules = rules_from_settings(self.settings)
        if image.kind == "path":
            data = await asyncio.to_thread(read_file, image.value)
            decoded = await asyncio.to_thread(decode_image, data, rules)
        else:
            policy = fetch_policy_from_settings(self.settings)
            decoded = await load_image_source(image.value, rules, policy)
        return decoded.image


def _describe(exc: BaseException) -> str:
    """One line naming a failure."""
    if isinstance(exc, StepEditError):
        return exc.message
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__
