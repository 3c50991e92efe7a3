"""The options `stepedit serve` and `stepedit worker` share: which model to load, and where
and how it runs. (Not a sub-command: the leading `_` keeps `stepedit.cli` from registering it.)"""

from __future__ import annotations

import argparse

from stepedit.gpus import add_gpu_arguments

# The settings these options override (--gpus and --parallel are no settings: `GpuPlan`).
MODEL_SETTING_NAMES = (
    "model",
    "model_version",
    "text_encoder",
    "download",
    "device",
    "dtype",
    "offload",
    "loras",
)


def add_model_arguments(
    parser: argparse.ArgumentParser, *, version_help: str | None = None
) -> None:
    """--model, --model-version (described by `version_help`), --text-encoder, --download."""
    parser.add_argument("--model", help='checkpoint directory or "dummy:<preset>" (STEPEDIT_MODEL)')
    parser.add_argument("--model-version", choices=["v1.0", "v1.1", "v1.2"], help=version_help)
    parser.add_argument(
        "--text-encoder",
        help="Qwen2.5-VL folder or repo id, for checkpoints without one (STEPEDIT_TEXT_ENCODER)",
    )
    parser.add_argument(
        "--download",
        action="store_true",
        default=None,
        help="fetch what the Hugging Face cache lacks of the model (STEPEDIT_DOWNLOAD)",
    )


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """--device, --gpus/--parallel, --dtype, --lora, --offload."""
    parser.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when present)")
    add_gpu_arguments(parser)
    parser.add_argument("--dtype", help="bf16, fp16 or fp32 (default: the pipeline's choice)")
    parser.add_argument(
        "--lora",
        action="append",
        dest="loras",
        metavar="[NAME=]PATH[:SCALE]",
        help="preload a LoRA adapter; SCALE (default 1) applies to requests naming none, 0 "
        "preloads it for requests only; repeatable (STEPEDIT_LORAS, docs/lora.md)",
    )
    parser.add_argument("--offload", action="store_true", default=None, help="CPU offload")
