"""The MCP server: stepedit's tools on the official MCP SDK's `MCPServer` (v1's `FastMCP`).

    edit_image      image + instruction + parameters -> the edited image(s) and their seeds
    enhance_prompt  instruction (+ image) -> the instruction rewritten by the model's MLLM
    get_job         a job of the stepedit server by id (remote mode only)
    list_models     what is served: model version, status, a fleet's live workers

Tool failures (bad input, a 4xx/5xx from the server, a model that could not load) come back as
MCP tool errors carrying the message, never as a crash of the server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, ContentBlock, ImageContent, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from stepedit import __version__
from stepedit.errors import StepEditError
from stepedit.mcp.backend import Backend, OutputImage
from stepedit.mcp.images import (
    FileAccess,
    output_format_for,
    output_paths,
    parse_image_arg,
    write_files,
)
from stepedit.request import (
    MAX_GUIDANCE,
    MAX_IMAGES_PER_REQUEST,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_SIZE_LEVEL,
    MAX_STEPS,
    MIN_SIZE_LEVEL,
    SIZE_MULTIPLE,
    EditRequest,
)

logger = logging.getLogger(__name__)

Transport = Literal["stdio", "http"]
DEFAULTS = EditRequest(prompt="-")  # the parameter defaults, as every API has them

INSTRUCTIONS = """\
Instruction-based image editing with Step1X-Edit. Call edit_image with the source image and
what to change, in words ("replace the sky with a sunset"); it returns the edited image and the
seed it used (pass that seed again to reproduce it). Images: a local file path, an http(s) URL,
a data URI or base64. enhance_prompt rewrites a vague instruction into a specific one.
list_models says which model version runs and whether it is ready."""

ImageParam = Annotated[
    str,
    Field(
        description="The source image: a local file path or file:// URI (read by this MCP "
        "server, on its own machine), an http(s) URL, a data URI, or raw base64 "
        "(JPEG, PNG or WebP)."
    ),
]
PromptParam = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        description="The editing instruction, e.g. 'make the car red'.",
    ),
]


class SavedImage(BaseModel):
    seed: int
    mime_type: str
    width: int
    height: int
    path: str | None = Field(default=None, description="where output_path saved it")
    url: str | None = Field(default=None, description="where the stepedit server keeps it")


class EditImageResult(BaseModel):
    seeds: list[int] = Field(description="the seed of each image, in order")
    images: list[SavedImage]
    prompt_used: str = Field(description="the instruction the model was conditioned on")
    passes: list[str] = Field(description="what ran: enhance, thinking, diffusion, reflection")
    model_version: str | None
    job_id: str | None = Field(default=None, description="the server's job id (remote mode)")


def build_server(backend: Backend, files: FileAccess) -> MCPServer:
    """An MCPServer whose tools run on `backend`; `files` rules the local paths they take."""
    server: MCPServer = MCPServer(
        "stepedit", title="stepedit (Step1X-Edit)", version=__version__, instructions=INSTRUCTIONS
    )

    @server.tool(
        title="Edit an image",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False),
    )
    async def edit_image(
        image: ImageParam,
        prompt: PromptParam,
        ctx: Context,
        negative_prompt: Annotated[
            str, Field(max_length=MAX_PROMPT_CHARS, description="What to steer away from.")
        ] = DEFAULTS.negative_prompt,
        seed: Annotated[
            int | None,
            Field(
                ge=0,
                le=MAX_SEED,
                description="Omitted: random. Image i uses seed + i; the seeds used are returned.",
            ),
        ] = None,
        num_inference_steps: Annotated[
            int, Field(ge=1, le=MAX_STEPS, description="Denoising steps.")
        ] = DEFAULTS.num_inference_steps,
        guidance_scale: Annotated[
            float,
            Field(ge=0, le=MAX_GUIDANCE, description="How strongly to follow the instruction."),
        ] = DEFAULTS.guidance_scale,
        size_level: Annotated[
            int,
            Field(
                ge=MIN_SIZE_LEVEL,
                le=MAX_SIZE_LEVEL,
                multiple_of=SIZE_MULTIPLE,
                description="Working size: the image is edited at about size_level x size_level "
                "pixels (aspect ratio kept) and returned at its own size. 512, 768 or 1024; a "
                "model run in-process also takes any multiple of 16 from 256 to 2048.",
            ),
        ] = DEFAULTS.size_level,
        num_images: Annotated[
            int, Field(ge=1, le=MAX_IMAGES_PER_REQUEST, description="Images to make.")
        ] = DEFAULTS.num_images,
        strength: Annotated[
            float,
            Field(ge=0, le=1, description="1 starts from noise; lower keeps more of the source."),
        ] = DEFAULTS.strength,
        enable_thinking: Annotated[
            bool | None,
            Field(
                description="v1.2 models: reason about the instruction first (default: on for "
                "v1.2). Other versions refuse true."
            ),
        ] = None,
        enable_reflection: Annotated[
            bool | None,
            Field(
                description="v1.2 models: judge the result and retry if needed (default: on for "
                "v1.2; needs num_images=1). Other versions refuse true."
            ),
        ] = None,
        enhance_prompt: Annotated[
            bool, Field(description="Rewrite a vague instruction into a specific one first.")
        ] = DEFAULTS.enhance_prompt,
        output_format: Annotated[
            Literal["png", "jpeg", "webp"] | None,
            Field(description="Default: output_path's suffix, else png."),
        ] = None,
        output_path: Annotated[
            str | None,
            Field(
                description="Also save the result here (.png, .jpg or .webp, on the MCP server's "
                "machine); several images are saved as NAME-0.png, NAME-1.png, ..."
            ),
        ] = None,
    ) -> Annotated[CallToolResult, EditImageResult]:
        """Edit an image following an instruction in words. Returns the edited image(s) and
        the seed of each (the same seed and parameters reproduce an image)."""
        with tool_errors():
            source = parse_image_arg(image, files)
            image_format = output_format_for(output_path, output_format)
            target = files.resolve(output_path, "output_path") if output_path else None
            request = EditRequest(
                prompt=prompt,
                negative_prompt=negative_prompt,
                seed=seed,
                guidance_scale=guidance_scale,
                num_inference_steps=num_inference_steps,
                size_level=size_level,
                num_images=num_images,
                strength=strength,
                enable_thinking=enable_thinking,
                enable_reflection=enable_reflection,
                enhance_prompt=enhance_prompt,
                output_format=image_format,
            )
            result = await backend.edit(source, request, ProgressRelay(ctx))
            paths = output_paths(target, len(result.images)) if target else []
            if paths:
                await asyncio.to_thread(write_files, paths, [i.data for i in result.images])
        structured = EditImageResult(
            seeds=[i.seed for i in result.images],
            images=[_saved(i, paths[n] if paths else None) for n, i in enumerate(result.images)],
            prompt_used=result.prompt_used,
            passes=result.passes,
            model_version=result.model_version,
            job_id=result.job_id,
        ).model_dump(mode="json")
        content: list[ContentBlock] = [_image_content(i) for i in result.images]
        content.append(TextContent(type="text", text=json.dumps(structured)))
        return CallToolResult(content=content, structured_content=structured)

    @server.tool(
        title="Rewrite an editing instruction",
        annotations=ToolAnnotations(read_only_hint=True),
    )
    async def enhance_prompt(
        prompt: PromptParam,
        image: Annotated[
            str | None,
            Field(
                description="Optional: the image the instruction is for, as for edit_image "
                "(the rewrite then names what is in it)."
            ),
        ] = None,
    ) -> str:
        """Rewrite a vague editing instruction into a specific one with the model's MLLM (the
        Prompt Enhancer), without editing anything. Returns the rewritten instruction."""
        with tool_errors():
            source = parse_image_arg(image, files) if image is not None else None
            return await backend.enhance(prompt, source)

    if backend.has_jobs:

        @server.tool(
            title="Look up an edit job",
            annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True),
        )
        async def get_job(
            job_id: Annotated[str, Field(min_length=1, description="The job id edit_image gave.")],
            include_images: Annotated[
                bool, Field(description="Also return the output images of a finished job.")
            ] = False,
        ) -> Annotated[CallToolResult, dict[str, Any]]:
            """A job of the stepedit server by id: status (queued, processing, succeeded,
            failed, canceled), progress, outputs (url and seed of each image), error."""
            with tool_errors():
                found = await backend.job(job_id.strip(), include_images=include_images)
            content: list[ContentBlock] = [_image_content(i) for i in found.images]
            content.append(TextContent(type="text", text=json.dumps(found.view)))
            return CallToolResult(content=content, structured_content=found.view)

    @server.tool(
        title="What is served",
        annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True),
    )
    async def list_models() -> dict[str, Any]:
        """The model this server edits with: its Step1X-Edit version (v1.0, v1.1, v1.2) and
        status (ok, loading, failed); for a stepedit fleet, also its live workers."""
        with tool_errors():
            return await backend.models()

    return server


async def serve(
    backend: Backend,
    files: FileAccess,
    transport: Transport,
    *,
    host: str = "127.0.0.1",
    port: int = 8001,
    path: str = "/mcp",
) -> None:
    """Run until the client goes (stdio) or the process is stopped (http)."""
    async with backend:
        server = build_server(backend, files)
        if transport == "stdio":
            await server.run_stdio_async()
        else:
            await server.run_streamable_http_async(host=host, port=port, streamable_http_path=path)


class ProgressRelay:
    """Pipeline/job progress as MCP progress notifications, which must only ever increase:
    steps restart with each reasoning round or image, so rounds are laid end to end."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._offset = 0
        self._step = 0
        self._total = 0
        self._sent = 0

    async def __call__(self, step: int, total: int, stage: str) -> None:
        if step < self._step:
            self._offset += self._total
        self._step, self._total = step, total
        value = self._offset + step
        if value <= self._sent:
            return
        self._sent = value
        await self.ctx.report_progress(value, self._offset + total, stage)


@contextlib.contextmanager
def tool_errors() -> Iterator[None]:
    """stepedit's errors as MCP tool errors (is_error results) with their message."""
    try:
        yield
    except StepEditError as exc:
        raise ToolError(exc.message) from None


def _image_content(image: OutputImage) -> ImageContent:
    data = base64.b64encode(image.data).decode("ascii")
    return ImageContent(type="image", data=data, mime_type=image.mime_type)


def _saved(image: OutputImage, path: Path | None) -> SavedImage:
    fields = dataclasses.asdict(image)
    del fields["data"]
    return SavedImage(**fields, path=str(path) if path else None)
