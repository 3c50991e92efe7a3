"""`stepedit bench`: time full edits per optimization mode and size (see stepedit.bench)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.replace(",", " ").split())


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark full edits (speed, memory) per mode and size",
        description="Time full edits with dummy full-size weights (no download) or real ones, "
        "print a table and append JSON to benchmarks/RESULTS.md.",
    )
    parser.add_argument("--model", default="dummy:v1.1", help="checkpoint dir or dummy:<preset>")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default=None, help="bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--sizes", type=_sizes, default=(512, 768, 1024), help="e.g. 512,1024")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument(
        "--mode",
        action="append",
        metavar="MODE",
        help="optimization preset (plain, exact, fast, 24gb), optionally with switches added or "
        "removed, e.g. plain+compile, exact-compile, exact+step_cache=0.05; repeat to run "
        "several (default: exact)",
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed edits per size")
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

    from stepedit.bench import BenchConfig, format_row, format_table, run_bench, to_json

    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    config = BenchConfig(
        model=args.model,
        device=args.device,
        dtype=dtype,
        sizes=args.sizes,
        steps=args.steps,
        modes=tuple(args.mode or ["exact"]),
        warmup=args.warmup,
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
