"""The Python steps of benchmarks/gpu-check.sh: an attention micro-benchmark and the summary table.

`python -m stepedit.acceleration.gpucheck attention --size 1024 --device cuda` times every
attention kernel this install has at the DiT's own shape; `... summary OUT_DIR` turns the bench's
progress files (`stepedit bench --progress`) into one table with the goals beside it. Both run
on the CPU too (the script's dry run), where the kernels are PyTorch's CPU ones.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from stepedit.acceleration.attention import has_flash3, has_flash4

TEXT_TOKENS = 640  # v1.1's padded prompt
GOALS = (
    "goals at 1024 px, 28 steps, CFG (docs/performance.md): exact <= 15 s and < 40 GB peak; "
    "fast <= 5 s; 24gb <= 12 s and <= 22 GB; cold start < 60 s"
)


def dit_tokens(size: int) -> int:
    """Tokens per row at a square `size`: text + noisy image + reference image (2x2 patches)."""
    return TEXT_TOKENS + 2 * (size // 16) ** 2


def _time(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    for _ in range(2):
        fn()
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        torch.cuda.synchronize(device)
        return float(start.elapsed_time(end)) / repeats / 1e3
    tic = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - tic) / repeats


def attention_kernels(
    size: int, device: torch.device, dtype: torch.dtype, repeats: int = 10
) -> list[dict[str, Any]]:
    """Each available kernel at [2, 24, L, 128]: seconds per call, TFLOP/s, max |diff|."""
    length = dit_tokens(size)
    q, k, v = (torch.randn(2, 24, length, 128, device=device, dtype=dtype) for _ in range(3))
    flop = 4 * 2 * 24 * length * length * 128

    def sdpa_with(backend: SDPBackend) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, v)

        return run

    candidates: list[tuple[str, Callable[[], torch.Tensor]]] = [
        ("default dispatch", lambda: F.scaled_dot_product_attention(q, k, v)),
        ("cudnn", sdpa_with(SDPBackend.CUDNN_ATTENTION)),
        ("flash (PyTorch's FA2)", sdpa_with(SDPBackend.FLASH_ATTENTION)),
        ("efficient", sdpa_with(SDPBackend.EFFICIENT_ATTENTION)),
    ]
    if has_flash3():
        import flash_attn_interface

        def fa3() -> torch.Tensor:
            out = flash_attn_interface.flash_attn_func(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            )
            out = out[0] if isinstance(out, tuple) else out
            return out.transpose(1, 2)

        candidates.append(("FA3 flash_attn_interface", fa3))
    reference = F.scaled_dot_product_attention(q, k, v).float()
    rows = []
    for name, fn in candidates:
        rows.append(_measure(name, fn, reference, device, flop, repeats))
    if has_flash4() and device.type == "cuda":
        attention: Any = torch.nn.attention
        attention.activate_flash_attention_impl("FA4")
        try:
            rows.append(
                _measure(
                    "FA4 (flash-attn-4 via SDPA)",
                    sdpa_with(SDPBackend.FLASH_ATTENTION),
                    reference,
                    device,
                    flop,
                    repeats,
                )
            )
        finally:
            attention.restore_flash_attention_impl()
    return [dict(row, tokens=length) for row in rows]


def _measure(
    name: str,
    fn: Callable[[], torch.Tensor],
    reference: torch.Tensor,
    device: torch.device,
    flop: int,
    repeats: int,
) -> dict[str, Any]:
    try:
        seconds = _time(fn, device, repeats)
        diff = float((fn().float() - reference).abs().max())
    except Exception as exc:  # a kernel this build or shape lacks: say so, keep going
        return {"kernel": name, "error": str(exc).splitlines()[0][:160] if str(exc) else repr(exc)}
    return {
        "kernel": name,
        "ms": round(seconds * 1e3, 3),
        "tflops": round(flop / seconds / 1e12, 1),
        "max_abs_diff": diff,
    }


# ---------------------------------------------------------------------- summary


def read_progress(out: Path) -> list[dict[str, Any]]:
    modes = []
    for path in sorted(out.glob("bench*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                modes.append(json.loads(line))
    return modes


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _mode_detail(o: dict[str, Any]) -> str:
    detail = (
        f"{o.get('attention')}->{o.get('attention_kernel')}, "
        f"compiled {o.get('compiled_blocks')} (dynamic {o.get('compile_dynamic')}), "
        f"fp8 {o.get('fp8_linears')}, mllm {o.get('mllm')} {o.get('mllm_host_gib') or ''}"
    )
    return detail + (f"; {'; '.join(o['notes'])}" if o.get("notes") else "")


def _mode_rows(mode: dict[str, Any]) -> list[str]:
    detail = _mode_detail(mode.get("optimizations", {}))
    cold = mode["load_s"] + mode.get("optimize_s", 0.0)
    rows = []
    for s in mode["sizes"]:
        aspect = s.get("aspect", "1:1")
        size = str(s["size"]) if aspect == "1:1" else f"{s['size']} {aspect}"
        graphs = f"{_fmt(s.get('warmup_compiled_graphs'), 'd')}/{_fmt(s['compiled_graphs'], 'd')}"
        cells = [
            f"{mode['mode']:8s}",
            f"{size:>10s}",
            f"{s['width']}x{s['height']}".rjust(10),
            f"{s['seconds_per_edit']:7.2f}",
            f"{s['step_median_s'] * 1e3:8.0f}",
            f"{s['encode_s']:6.2f}",
            _fmt(s.get("peak_memory_gb"), ".1f").rjust(8),
            _fmt(s.get("peak_reserved_gb"), ".1f").rjust(8),
            f"{cold:7.1f}",
            _fmt(s.get("first_edit_s"), ".1f").rjust(7),
            graphs.rjust(7),
            _fmt(s.get("skipped_steps"), "d").rjust(5),
            _fmt(s.get("max_abs_diff"), ".3g").rjust(15),
            _fmt(s.get("psnr_db"), ".1f").rjust(6),
        ]
        rows.append(" ".join(cells) + "  " + detail)
    return rows


def summary_lines(out: Path) -> list[str]:
    """One row per (mode, size, aspect) from every bench run's progress file, plus the
    attention kernels and the test result, with the goals above."""
    lines = [GOALS]
    modes = read_progress(out)
    if modes:
        env = modes[0]["environment"]
        dirty = " +uncommitted" if env.get("stepedit_dirty") else ""
        lines.append(
            f"{env.get('gpu') or 'CPU'} ({env.get('gpu_memory_gb')} GB), driver {env.get('driver')}"
            f", torch {env.get('torch')} CUDA {env.get('cuda')} cuDNN {env.get('cudnn')}, torchao "
            f"{env.get('torchao')}, FA3 {env.get('flash_attn_3')}, FA4 {env.get('flash_attn_4')}, "
            f"stepedit {env.get('stepedit_commit')}{dirty}, CPU {env.get('cpu')} load "
            f"{env.get('load_avg_1m')}"
        )
    header = (
        f"{'mode':8s} {'size':>10s} {'W x H':>10s} {'s/edit':>7s} {'step ms':>8s} {'enc s':>6s} "
        f"{'peak GB':>8s} {'resv GB':>8s} {'cold s':>7s} {'warm s':>7s} {'graphs':>7s} "
        f"{'skip':>5s} {'max|d| vs ref':>15s} {'PSNR':>6s}  attention / notes"
    )
    lines.append(header)
    for mode in modes:
        if mode.get("error"):
            lines.append(f"{mode['mode']:8s} not run: {mode['error']}")
            continue
        lines.extend(_mode_rows(mode))
    if not modes:
        lines.append("  no bench results: see gpu-check.log")
    lines.append(
        "  ref = the first exact mode benched (plain): every later mode's final latents against "
        "it; graphs = torch.compile graphs built by the warm-up / by the timed edits (want 0/0 "
        "after the first size: no compile on a request); cold = load + optimize; warm = first "
        "warm-up edit (it compiles)"
    )
    attention = out / "attention.json"
    if attention.exists():
        lines.append("attention kernels at the DiT's shape:")
        for row in json.loads(attention.read_text()):
            if "error" in row:
                lines.append(f"  {row['kernel']:28s} not available: {row['error']}")
            else:
                lines.append(
                    f"  {row['kernel']:28s} L={row['tokens']}: {row['ms']:8.2f} ms "
                    f"{row['tflops']:7.1f} TFLOP/s  max|diff| {row['max_abs_diff']:.2e}"
                )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stepedit.acceleration.gpucheck")
    sub = parser.add_subparsers(dest="command", required=True)
    attention = sub.add_parser("attention", help="time the attention kernels at the DiT shape")
    attention.add_argument("--size", type=int, default=1024)
    attention.add_argument("--device", default="cuda")
    attention.add_argument("--repeats", type=int, default=10)
    attention.add_argument("--json", type=Path, default=None, help="also write the rows here")
    summary = sub.add_parser("summary", help="one table from a gpu-check output folder")
    summary.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "attention":
        device = torch.device(args.device)
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        rows = attention_kernels(args.size, device, dtype, args.repeats)
        if args.json is not None:
            args.json.write_text(json.dumps(rows, indent=1))
        for row in rows:
            print(json.dumps(row))
        return 0
    print("\n".join(summary_lines(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
