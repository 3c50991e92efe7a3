"""`stepedit convert SRC DST --to diffusers|original`: write a checkpoint in either layout.

SRC is a checkpoint (a directory, an original DiT file, a repo id in the Hugging Face cache)
or `dummy:<preset>[@seed]`, which writes a random-weight checkpoint: for trying the loaders,
for bug reports, and for tests.
"""

from __future__ import annotations

import argparse
from typing import Any

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="write a checkpoint (or dummy:<preset> random weights) in the original or "
        "diffusers layout",
        description=(
            "Convert a Step1X-Edit checkpoint (DiT, VAE and the Qwen2.5-VL files) between the "
            "original release layout and the diffusers layout; tensors keep their dtype, the "
            "Qwen2.5-VL files are hard-linked or copied. A dummy:<preset>[@seed] source writes "
            "random weights (tiny presets in an instant; full-size ones stream to disk)."
        ),
    )
    parser.add_argument(
        "source",
        help="checkpoint directory, original DiT .safetensors file, repo id in the Hugging "
        "Face cache, or dummy:<preset>[@seed] (e.g. dummy:tiny-v1.1)",
    )
    parser.add_argument("destination", help="new, empty directory to write")
    parser.add_argument("--to", required=True, choices=["diffusers", "original"], dest="layout")
    parser.add_argument(
        "--model-version",
        dest="version",
        choices=["v1.0", "v1.1", "v1.2"],
        default=None,
        help="model version, if detection from the weights is not wanted (picks the DiT file "
        "of a repository holding several)",
    )
    parser.add_argument(  # the older spelling, still accepted
        "--version",
        choices=["v1.0", "v1.1", "v1.2"],
        help=argparse.SUPPRESS,
        default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--fold-v1.0-scale",
        action="store_true",
        dest="fold_scale_factor",
        help=(
            "v1.0 only: multiply connector.scale_factor into connector.global_proj_out.weight, "
            "since the diffusers layout has no place for it (see docs/weights.md)"
        ),
    )
    parser.add_argument(
        "--text-encoder",
        default=None,
        help="Qwen2.5-VL folder or repo id to write as the text encoder (default: the "
        "checkpoint's own, else Qwen/Qwen2.5-VL-7B-Instruct from the cache if present)",
    )
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="bf16",
        help="dummy sources only: the dtype of the random weights (default bf16, as released)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from stepedit.errors import WeightsError
    from stepedit.weights.conversion import convert_checkpoint

    try:
        version = convert_checkpoint(
            args.source,
            args.destination,
            args.layout,
            version=args.version,
            fold_scale_factor=args.fold_scale_factor,
            text_encoder=args.text_encoder,
            dtype=getattr(torch, DTYPES[args.dtype]),
        )
    except WeightsError as exc:
        print(f"error: {exc.message}")
        return 1
    print(f"wrote {version} checkpoint in the {args.layout} layout to {args.destination}")
    return 0
