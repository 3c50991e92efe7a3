"""`stepedit convert SRC DST --to diffusers|original`: rewrite a checkpoint in the other layout."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a checkpoint between the original and the diffusers layouts",
        description=(
            "Convert a Step1X-Edit checkpoint directory (DiT, VAE and the Qwen2.5-VL folder) "
            "between the original release layout and the diffusers layout. Tensors keep their "
            "dtype; the Qwen2.5-VL files are hard-linked or copied."
        ),
    )
    parser.add_argument("source", help="checkpoint directory (or original DiT .safetensors file)")
    parser.add_argument("destination", help="new, empty directory to write")
    parser.add_argument("--to", required=True, choices=["diffusers", "original"], dest="layout")
    parser.add_argument(
        "--version",
        choices=["v1.0", "v1.1", "v1.2"],
        default=None,
        help="model version, if detection from the weights is not wanted",
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
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stepedit.errors import WeightsError
    from stepedit.weights.conversion import convert_checkpoint

    try:
        version = convert_checkpoint(
            args.source,
            args.destination,
            args.layout,
            version=args.version,
            fold_scale_factor=args.fold_scale_factor,
        )
    except WeightsError as exc:
        print(f"error: {exc.message}")
        return 1
    print(f"wrote {version} checkpoint in the {args.layout} layout to {args.destination}")
    return 0
