"""`stepedit mcp`: an MCP server with image-editing tools for agents (docs/mcp.md).

    stepedit mcp --model /models/Step1X-Edit-v1p1          # stdio, the model in this process
    stepedit mcp --server http://127.0.0.1:8000 --api-key KEY   # stdio, a running server
    stepedit mcp --server URL --transport http --port 8001  # streamable HTTP at :8001/mcp

Over stdio nothing but the protocol may reach stdout: logs go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from stepedit.request import MODEL_VERSIONS

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_BAD_INPUT = 2


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "mcp",
        help="serve image-editing tools to agents over MCP (stdio or streamable HTTP)",
        description=(
            "An MCP server with the tools edit_image, enhance_prompt, get_job (with --server) "
            "and list_models. The edits run on a stepedit server (--server) or on a model "
            "loaded in this process (--model)."
        ),
    )
    where = parser.add_argument_group("where edits run (one of)")
    where.add_argument(
        "--server",
        default=os.environ.get("STEPEDIT_SERVER_URL"),
        metavar="URL",
        help="a running stepedit server, e.g. http://127.0.0.1:8000 ($STEPEDIT_SERVER_URL)",
    )
    where.add_argument(
        "--model",
        default=os.environ.get("STEPEDIT_MODEL"),
        metavar="SOURCE",
        help="load this model here: checkpoint folder, Hugging Face repo id in the local cache, "
        "or dummy:<preset> ($STEPEDIT_MODEL; ignored with --server)",
    )
    remote = parser.add_argument_group("with --server")
    remote.add_argument(
        "--api-key",
        default=os.environ.get("STEPEDIT_API_KEY"),
        help="Bearer key for the server ($STEPEDIT_API_KEY)",
    )
    remote.add_argument(
        "--wait",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long edit_image waits for a job before returning its id (default 600)",
    )
    local = parser.add_argument_group("with --model")
    local.add_argument("--model-version", choices=MODEL_VERSIONS, default=None)
    local.add_argument("--text-encoder", default=os.environ.get("STEPEDIT_TEXT_ENCODER"))
    local.add_argument("--download", action="store_true", help="fetch a missing hub model")
    local.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if any)")
    local.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None)
    local.add_argument("--offload", action="store_true", help="keep the MLLM off the GPU")
    local.add_argument("--optimize", default=None, help="speed preset (docs/performance.md)")
    transport = parser.add_argument_group("transport")
    transport.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    transport.add_argument("--host", default="127.0.0.1", help="http: bind address")
    transport.add_argument("--port", type=int, default=8001, help="http: port (default 8001)")
    transport.add_argument("--path", default="/mcp", help="http: endpoint path (default /mcp)")
    transport.add_argument(
        "--files-root",
        type=Path,
        default=None,
        metavar="DIR",
        help="local image paths and output_path are confined to DIR; over http they are "
        "refused unless this is set",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import anyio

    from stepedit.mcp.backend import Backend
    from stepedit.mcp.images import FileAccess
    from stepedit.mcp.server import serve

    if args.files_root is not None and not args.files_root.is_dir():
        logger.error("--files-root %s is not a folder", args.files_root)
        return EXIT_BAD_INPUT
    if args.server and not args.server.startswith(("http://", "https://")):
        logger.error("--server must be an http(s) URL, e.g. http://127.0.0.1:8000")
        return EXIT_BAD_INPUT
    backend: Backend
    if args.server:
        from stepedit.mcp.remote import RemoteBackend

        backend = RemoteBackend(args.server, args.api_key, wait_s=args.wait)
        logger.info("MCP tools on the stepedit server %s", args.server)
    elif args.model:
        from stepedit.mcp.local import InProcessBackend, ModelOptions

        options = ModelOptions(
            source=args.model,
            version=args.model_version,
            device=args.device,
            dtype=args.dtype,
            offload=args.offload,
            text_encoder=args.text_encoder,
            download=args.download,
            optimize=args.optimize,
        )
        backend = InProcessBackend(options)
        logger.info("MCP tools on %s, loaded in this process", args.model)
    else:
        logger.error("give --server URL (a running stepedit server) or --model SOURCE")
        return EXIT_BAD_INPUT
    files = FileAccess.for_transport(args.transport, args.files_root)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per job poll
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(
            lambda: serve(
                backend, files, args.transport, host=args.host, port=args.port, path=args.path
            )
        )
    return EXIT_OK
