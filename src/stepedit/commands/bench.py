"""`stepedit bench`: time edits per optimization mode and size (stepedit.acceleration.bench)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.replace(",", " ").split())


def _dtype(text: str) -> str:
    """bf16/fp16/fp32 as for edit and serve (torch's own names are accepted too)."""
    names = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
    if text not in names and text not in names.values():
        raise argparse.ArgumentTypeError(f"{text!r}: use bf16, fp16 or fp32")
    return names.get(text, text)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark full edits (speed, memory) per mode and size",
        description="Time full edits with dummy full-size weights (no download) or real ones, "
        "print a table and append JSON to benchmarks/RESULTS.md.",
    )
    parser.add_argument("--model", default="dummy:v1.1", help="checkpoint dir or dummy:<preset>")
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--dtype", type=_dtype, default=None, help="bf16, fp16 or fp32 (default: bf16 on CUDA)"
    )
    parser.add_argument("--sizes", type=_sizes, default=(512, 768, 1024), help="e.g. 512,1024")
    parser.add_argument(
        "--aspects",
        type=lambda text: tuple(a for a in text.replace(",", " ").split()),
        default=("1:1",),
        help="source aspect ratios W:H, each at every size, e.g. 1:1,16:9 (default 1:1)",
    )
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument(
        "--optimize",
        dest="mode",
        action="append",
        metavar="PRESET",
        help="optimization preset (plain, exact, fast, 24gb), optionally with switches added or "
        "removed, e.g. plain+compile, exact-compile, exact+step_cache=0.05; repeat to run "
        "several (default: exact)",
    )
    parser.add_argument(  # the older spelling, still accepted
        "--mode", action="append", help=argparse.SUPPRESS, default=argparse.SUPPRESS
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed edits per size")
    parser.add_argument(
        "--warmup-steps", type=int, default=None, help="steps of a warm-up edit (default: --steps)"
    )
    parser.add_argument(
        "--reference",
        type=Path,
        default=None,
        metavar="FILE",
        help="exact-mode latents kept across runs, so modes run in separate processes are "
        "compared with the same exact run",
    )
    parser.add_argument(
        "--progress", type=Path, default=None, metavar="FILE", help="a JSON line per mode done"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed edits per size")
    parser.add_argument("--guidance-scale", type=float, default=6.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/RESULTS.md"))
    parser.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--json", action="store_true", help="print the JSON report too")
    parser.add_argument(
        "--compare-official",
        type=Path,
        default=None,
        metavar="PATH",
        help="also time the official inference code checked out at PATH (same dummy weights)",
    )
    parser.add_argument(
        "--cfg-parallel",
        action="store_true",
        help="cond and uncond on 2 GPUs; launch with torchrun --nproc-per-node 2",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch.distributed

    from stepedit.acceleration.bench import (
        BenchConfig,
        format_row,
        format_table,
        run_bench,
        to_json,
    )

    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    config = BenchConfig(
        model=args.model,
        device=args.device,
        dtype=dtype,
        sizes=args.sizes,
        aspects=args.aspects,
        steps=args.steps,
        modes=tuple(args.mode or ["exact"]),
        warmup=args.warmup,
        warmup_steps=args.warmup_steps,
        reference_path=args.reference,
        progress_path=args.progress,
        repeats=args.repeats,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
        results=None if args.no_results else args.results,
        compare_official=args.compare_official,
        cfg_parallel=args.cfg_parallel,
    )
    report = run_bench(config, on_result=lambda r: print(format_row(r), flush=True))
    if args.cfg_parallel and torch.distributed.get_rank() != 0:
        torch.distributed.destroy_process_group()
        return 0
    if args.cfg_parallel:
        torch.distributed.destroy_process_group()
    print()
    print(format_table(report))
    if args.json:
        print(to_json(report))
    if config.results is not None:
        print(f"\nappended to {config.results}")
    return 0
