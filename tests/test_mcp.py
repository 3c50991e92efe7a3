"""`stepedit mcp`, driven by the MCP SDK's own client, end to end on the tiny random model.

- in-process over stdio: the client spawns `python -m stepedit.cli mcp --model dummy:tiny-v1.1`;
- remote over streamable HTTP: `stepedit mcp --server URL --transport http` in front of a real
  `stepedit serve --model dummy:tiny-v1.1`, both on free loopback ports.

The fast tests at the end pin the rules for `image` arguments and output paths, with no model.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import io
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.types import CallToolResult, ImageContent, TextContent
from PIL import Image

from stepedit.errors import InvalidInput, ServiceUnavailable
from stepedit.mcp.images import (
    FileAccess,
    output_format_for,
    output_paths,
    parse_image_arg,
)
from stepedit.mcp.local import InProcessBackend, ModelOptions
from stepedit.mcp.remote import RemoteBackend, ServerError
from stepedit.mcp.server import ProgressRelay, build_server

MODEL = "dummy:tiny-v1.1"
GUARD_S = 300.0  # a generous bound on a whole scenario; nothing here is timed
SOURCE_SIZE = (96, 64)
NOT_AN_IMAGE = base64.b64encode(b"plain text, certainly not a picture of anything").decode()


def load_server_helpers() -> ModuleType:
    path = Path(__file__).resolve().parent / "api" / "conftest.py"
    spec = importlib.util.spec_from_file_location("stepedit_mcp_test_servers", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


servers = load_server_helpers()


def source_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", SOURCE_SIZE, (200, 120, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def decoded_images(result: CallToolResult) -> list[Image.Image]:
    return [
        Image.open(io.BytesIO(base64.b64decode(block.data)))
        for block in result.content
        if isinstance(block, ImageContent)
    ]


def error_text(result: CallToolResult) -> str:
    assert result.is_error, result
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


def run_guarded(scenario: Callable[[], Awaitable[None]]) -> None:
    async def guarded() -> None:
        with anyio.fail_after(GUARD_S):
            await scenario()

    asyncio.run(guarded())


# --- in-process, over stdio --------------------------------------------------------------


@pytest.mark.slow
def test_in_process_over_stdio(tmp_path: Path) -> None:
    (tmp_path / "cat.png").write_bytes(source_png())
    log_path = tmp_path / "mcp-stdio.log"
    parameters = StdioServerParameters(
        command=sys.executable,
        args=["-m", "stepedit.cli", "--log-level", "INFO", "mcp", "--model", MODEL],
        cwd=str(tmp_path),
    )

    async def scenario() -> None:
        with log_path.open("w") as log:
            async with Client(stdio_client(parameters, errlog=log)) as client:
                await check_in_process(client, tmp_path)

    try:
        run_guarded(scenario)
    except BaseException:
        print(log_path.read_text(errors="replace"))
        raise


async def check_in_process(client: Client, folder: Path) -> None:
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == {"edit_image", "enhance_prompt", "list_models"}  # no jobs in-process
    schema = tools["edit_image"].input_schema
    assert schema["required"] == ["image", "prompt"]
    assert schema["properties"]["num_inference_steps"]["maximum"] == 100
    assert tools["edit_image"].output_schema is not None

    # A relative path (from the server's working folder), saved where output_path says.
    edited = await client.call_tool(
        "edit_image",
        {
            "image": "cat.png",
            "prompt": "make it snow",
            "seed": 7,
            "size_level": 256,
            "num_inference_steps": 2,
            "output_path": str(folder / "out" / "snow.png"),
        },
    )
    assert not edited.is_error, edited
    [image] = decoded_images(edited)
    assert image.size == SOURCE_SIZE
    result = edited.structured_content
    assert result is not None
    assert result["seeds"] == [7]
    assert result["model_version"] == "v1.1"
    assert result["images"][0]["path"] == str(folder / "out" / "snow.png")
    with Image.open(folder / "out" / "snow.png") as saved:
        assert saved.size == SOURCE_SIZE

    # Base64 in, two JPEGs out, with a drawn seed and the one after it.
    several = await client.call_tool(
        "edit_image",
        {
            "image": base64.b64encode(source_png()).decode(),
            "prompt": "make it snow",
            "size_level": 256,
            "num_inference_steps": 2,
            "num_images": 2,
            "output_format": "jpeg",
        },
    )
    assert not several.is_error, several
    assert [block.mime_type for block in several.content if isinstance(block, ImageContent)] == [
        "image/jpeg",
        "image/jpeg",
    ]
    assert all(image.size == SOURCE_SIZE for image in decoded_images(several))
    assert several.structured_content is not None
    first, second = several.structured_content["seeds"]
    assert second == first + 1

    # Bad input is a tool error with the reason, and the server keeps serving.
    assert "not an image" in error_text(
        await client.call_tool("edit_image", {"image": NOT_AN_IMAGE, "prompt": "x"})
    )
    assert "no such file" in error_text(
        await client.call_tool("edit_image", {"image": "missing.png", "prompt": "x"})
    )
    assert "reasoning passes need the v1.2 model" in error_text(
        await client.call_tool(
            "edit_image",
            {"image": "cat.png", "prompt": "x", "enable_thinking": True, "size_level": 256},
        )
    )
    assert "num_inference_steps" in error_text(
        await client.call_tool(
            "edit_image", {"image": "cat.png", "prompt": "x", "num_inference_steps": 1000}
        )
    )

    enhanced = await client.call_tool("enhance_prompt", {"prompt": "nicer", "image": "cat.png"})
    assert not enhanced.is_error, enhanced
    assert enhanced.structured_content is not None
    assert isinstance(enhanced.structured_content["result"], str)
    assert enhanced.structured_content["result"].strip()

    models = await client.call_tool("list_models", {})
    assert models.structured_content is not None
    assert models.structured_content["mode"] == "in-process"
    assert models.structured_content["status"] == "ok"
    assert models.structured_content["model_version"] == "v1.1"


# --- remote, over streamable HTTP ------------------------------------------------------


@pytest.fixture(scope="module")
def stepedit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server = servers.start_server(
        tmp_path_factory.mktemp("server") / "data",
        "--api-key",
        "s3cret",
        model=MODEL,
        ready_timeout_s=GUARD_S,
    )
    yield server
    server.stop()


def start_mcp_http(
    server_url: str, log_path: Path, *args: str
) -> tuple[subprocess.Popen[bytes], str]:
    port = servers.free_port()
    command = [
        sys.executable, "-m", "stepedit.cli", "mcp", "--server", server_url,
        "--transport", "http", "--port", str(port), *args,
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ)
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.monotonic() + GUARD_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"stepedit mcp exited:\n{log_path.read_text()}")
        try:
            httpx.get(url, timeout=1)  # any answer: it listens
            return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    process.terminate()
    raise RuntimeError(f"stepedit mcp did not listen:\n{log_path.read_text()}")


@pytest.mark.slow
def test_remote_over_streamable_http(stepedit_server: Any, tmp_path: Path) -> None:
    log_path = tmp_path / "mcp-http.log"
    shared = tmp_path / "shared"
    shared.mkdir()
    process, url = start_mcp_http(
        stepedit_server.base_url, log_path, "--api-key", "s3cret", "--files-root", str(shared)
    )

    async def scenario() -> None:
        async with Client(url) as client:
            await check_remote(client, shared)

    try:
        run_guarded(scenario)
    except BaseException:
        print(log_path.read_text(errors="replace"))
        print(stepedit_server.log())
        raise
    finally:
        process.terminate()
        process.wait(30)


async def check_remote(client: Client, shared: Path) -> None:
    tools = {tool.name for tool in (await client.list_tools()).tools}
    assert tools == {"edit_image", "enhance_prompt", "get_job", "list_models"}

    # A path under --files-root: read by the MCP server and sent to stepedit as bytes.
    (shared / "cat.png").write_bytes(source_png())
    edited = await client.call_tool(
        "edit_image",
        {
            "image": "cat.png",
            "prompt": "make it snow",
            "seed": 11,
            "size_level": 512,
            "num_inference_steps": 2,
            "output_path": "out/snow.webp",
        },
    )
    assert not edited.is_error, edited
    [image] = decoded_images(edited)
    assert image.size == SOURCE_SIZE
    assert image.format == "WEBP"
    result = edited.structured_content
    assert result is not None
    assert result["seeds"] == [11]
    assert result["model_version"] == "v1.1"
    with Image.open(shared / "out" / "snow.webp") as saved:
        assert saved.size == SOURCE_SIZE
    job_id = result["job_id"]
    assert job_id and result["images"][0]["url"].startswith("http")

    job = await client.call_tool("get_job", {"job_id": job_id, "include_images": True})
    assert not job.is_error, job
    assert job.structured_content is not None
    assert job.structured_content["status"] == "succeeded"
    assert [o["seed"] for o in job.structured_content["outputs"]] == [11]
    assert [i.size for i in decoded_images(job)] == [SOURCE_SIZE]

    # The server's own messages come back as tool errors.
    message = error_text(
        await client.call_tool("edit_image", {"image": NOT_AN_IMAGE, "prompt": "x"})
    )
    assert "HTTP 415" in message and "not an image" in message
    assert "size_level" in error_text(
        await client.call_tool(
            "edit_image", {"image": data_uri(source_png()), "prompt": "x", "size_level": 256}
        )
    )
    assert "not_found" in error_text(await client.call_tool("get_job", {"job_id": "nope"}))
    # Paths stay under --files-root.
    assert "outside the files root" in error_text(
        await client.call_tool("edit_image", {"image": "../secret.png", "prompt": "x"})
    )

    enhanced = await client.call_tool("enhance_prompt", {"prompt": "nicer"})
    assert not enhanced.is_error, enhanced
    assert enhanced.structured_content is not None
    assert enhanced.structured_content["result"].strip()

    models = await client.call_tool("list_models", {})
    assert models.structured_content is not None
    assert models.structured_content["mode"] == "remote"
    assert models.structured_content["status"] == "ok"
    assert models.structured_content["model_version"] == "v1.1"


@pytest.mark.slow
def test_remote_errors_carry_the_servers_message(stepedit_server: Any) -> None:
    async def scenario() -> None:
        async with RemoteBackend(stepedit_server.base_url, "wrong-key") as backend:
            with pytest.raises(ServerError) as info:
                await backend.job("anything", include_images=False)
        assert info.value.status == 401
        async with RemoteBackend("http://127.0.0.1:9", None) as unreachable:
            with pytest.raises(ServiceUnavailable, match="cannot reach the stepedit server"):
                await unreachable.models()

    run_guarded(scenario)


@pytest.mark.slow
def test_a_model_that_cannot_load_is_a_tool_error_not_a_crash(tmp_path: Path) -> None:
    backend = InProcessBackend(ModelOptions(source="dummy:no-such-preset", device="cpu"))

    async def scenario() -> None:
        async with backend, Client(build_server(backend, FileAccess(enabled=True))) as client:
            (tmp_path / "cat.png").write_bytes(source_png())
            arguments = {"image": str(tmp_path / "cat.png"), "prompt": "x"}
            assert "could not be loaded" in error_text(
                await client.call_tool("edit_image", arguments)
            )
            models = await client.call_tool("list_models", {})
            assert models.structured_content is not None
            assert models.structured_content["status"] == "failed"
            assert models.structured_content["reason"]

    run_guarded(scenario)


# --- the rules, with no model ----------------------------------------------------------


def test_image_arguments_are_classified(tmp_path: Path) -> None:
    (tmp_path / "cat.png").write_bytes(source_png())
    files = FileAccess(enabled=True, root=tmp_path)
    assert parse_image_arg("https://example.com/a.png", files).kind == "url"
    assert parse_image_arg(data_uri(b"x"), files).kind == "inline"
    assert parse_image_arg("cat.png", files).value == str(tmp_path / "cat.png")
    assert parse_image_arg(f"file://{tmp_path}/cat.png", files).kind == "path"
    # JPEG base64 starts "/9j/": a path-looking string of base64 that names no file is base64
    jpeg_base64 = "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEx"
    assert parse_image_arg(jpeg_base64, files).kind == "inline"
    assert parse_image_arg("missing.png", files).kind == "path"  # read later: "no such file"
    with pytest.raises(InvalidInput, match="outside the files root"):
        parse_image_arg("../elsewhere.png", files)
    with pytest.raises(InvalidInput, match="not accepted"):
        parse_image_arg("cat.png", FileAccess.for_transport("http", None))
    assert FileAccess.for_transport("http", tmp_path).enabled
    assert FileAccess.for_transport("stdio", None).enabled


def test_output_paths_and_formats() -> None:
    assert output_format_for(None, None) == "png"
    assert output_format_for("out.JPG", None) == "jpeg"
    assert output_format_for("out.webp", "webp") == "webp"
    with pytest.raises(InvalidInput, match="output_path"):
        output_format_for("out.png", "jpeg")
    with pytest.raises(InvalidInput, match="must end in"):
        output_format_for("out.gif", None)
    assert output_paths(Path("d/out.png"), 1) == [Path("d/out.png")]
    assert output_paths(Path("d/out.png"), 2) == [Path("d/out-0.png"), Path("d/out-1.png")]


def test_progress_only_increases_across_rounds() -> None:
    sent: list[tuple[float, float | None, str | None]] = []

    class Recorder:
        async def report_progress(
            self, progress: float, total: float | None = None, message: str | None = None
        ) -> None:
            sent.append((progress, total, message))

    relay = ProgressRelay(Recorder())  # type: ignore[arg-type]

    async def two_rounds() -> None:
        for step, stage in [(0, "encode"), (1, "denoise"), (2, "denoise"), (2, "decode")]:
            await relay(step, 2, stage)
        for step in (0, 1, 2):
            await relay(step, 2, "denoise")

    asyncio.run(two_rounds())
    assert sent == [(1, 2, "denoise"), (2, 2, "denoise"), (3, 4, "denoise"), (4, 4, "denoise")]
