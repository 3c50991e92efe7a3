"""DiT cost per step of `+regions` against the edited fraction, measured beside the exact forward.

    . .venv/bin/activate && python benchmarks/regions.py            # appends to RESULTS.md
    python benchmarks/regions.py --repeats 3 --no-results

A mid-size DiT (hidden 768, one double and two single blocks by default: between the tiny test
preset and the 12B model) with random weights, at the token counts of a 1024x1024 edit: 64x64
packed latents, so 4096 noisy + 4096 reference tokens, and 640 text tokens (v1.1's padding).
One CFG branch (batch 1): guidance doubles both sides alike. For each edited fraction (10%, 30%,
100%) a context is captured once (a full forward that keeps the keys and values), then the
region forward over the edited tokens is timed against the DiT's own forward, interleaved, and
the best of the repeats is kept. Both the process's CPU time (the cost: on a shared machine it
barely moves with the load) and the wall time are recorded; the speed-ups use CPU time.

The per-edit figure projects the DiT time of a 28-step edit from these per-step costs and the
step plan of `stepedit.acceleration.regions.plan_steps` (6 full steps, the capture step, a
refresh, 2 final full steps, 18 region steps), without and with the most velocity reuse the
sampler allows (every other region step after a computed one). At 100% edited the sampler does
not take the region path (the result must equal exact mode), so "as run" is exact there.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

from stepedit import sampling
from stepedit.acceleration.regions import ContextForward, RegionSettings, StepKind, plan_steps
from stepedit.model import Step1XEditDiT
from stepedit.model.presets import DiTConfig
from stepedit.sampling import Conditioning

RESULTS = Path(__file__).with_name("RESULTS.md")
FRACTIONS = (0.1, 0.3, 1.0)
LATENT_SIDE = 128  # 1024 px / 8
TEXT_TOKENS = 640
QWEN_WIDTH = 64  # the connector's input width: small, it reads text only
STEPS = 28
GOAL = 2.5  # docs/regions.md: the speed-up asked for at 30% edited


def mid_preset(hidden: int, double: int, single: int) -> DiTConfig:
    heads = hidden // 64  # head_dim 64, RoPE split as the tiny preset's proportions
    return DiTConfig(
        hidden_size=hidden,
        num_heads=heads,
        depth=double,
        depth_single_blocks=single,
        axes_dim=(8, 28, 28),
        context_in_dim=hidden,
        connector_in_channels=QWEN_WIDTH,
        connector_hidden_size=hidden,
        connector_heads=heads,
        connector_depth=1,
    )


def edited_rows(fraction: float, side: int) -> torch.Tensor:
    """A centred block of about `fraction` of the side x side token grid, row-major indices."""
    rows = torch.zeros(side, side, dtype=torch.bool)
    height = max(1, round(side * fraction**0.5))
    width = max(1, min(side, round(fraction * side * side / height)))
    top, left = (side - height) // 2, (side - width) // 2
    rows[top : top + height, left : left + width] = True
    return rows.flatten().nonzero().flatten()


def timed(run: Callable[[], object], cpu: list[float], wall: list[float]) -> None:
    """Run once; append the process CPU seconds (all threads) and the wall seconds."""
    cpu_tic, wall_tic = time.process_time(), time.perf_counter()
    run()
    cpu.append(time.process_time() - cpu_tic)
    wall.append(time.perf_counter() - wall_tic)


def machine() -> dict[str, object]:
    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], capture_output=True, text=True, timeout=10
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() + (" (uncommitted changes)" if dirty.stdout.strip() else "")


def project(full: float, capture: float, region: float) -> tuple[float, float]:
    """28-step DiT time with +regions over exact: (no reuse, most reuse)."""
    plan = plan_steps(STEPS, RegionSettings(accelerate=True))
    kinds = plan.kinds
    base = kinds.count(StepKind.FULL) * full + kinds.count(StepKind.CAPTURE) * capture
    region_steps = kinds.count(StepKind.REGION)
    # Runs of region steps between full ones: after a computed step, every other one reuses.
    runs, current = [], 0
    for kind in kinds:
        if kind is StepKind.REGION:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    most_reused = sum(run // 2 for run in [*runs, current] if run)
    exact = STEPS * full
    no_reuse = exact / (base + region_steps * region)
    with_reuse = exact / (base + (region_steps - most_reused) * region)
    return no_reuse, with_reuse


@torch.inference_mode()
def measure(hidden: int, double: int, single: int, repeats: int) -> dict[str, object]:
    torch.manual_seed(0)
    dit = Step1XEditDiT(mid_preset(hidden, double, single)).eval()
    side = LATENT_SIDE // 2
    num = side * side
    x = torch.randn(1, 2 * num, 64)  # [noisy | reference]
    img_ids = sampling.prepare_image_ids(1, LATENT_SIDE, LATENT_SIDE, "offset")
    text = Conditioning(
        emb=torch.randn(1, TEXT_TOKENS, QWEN_WIDTH),
        mask=torch.ones(1, TEXT_TOKENS, dtype=torch.long),
        txt_ids=torch.zeros(1, TEXT_TOKENS, 3),
    )
    t = 0.5

    def exact() -> object:
        return sampling._velocity(dit, x, img_ids, t, 1, text)

    forwards: dict[float, tuple[ContextForward, torch.Tensor]] = {}
    capture_cpu: list[float] = []
    capture_wall: list[float] = []
    for fraction in FRACTIONS:
        edit = edited_rows(fraction, side)
        unedited = torch.ones(num, dtype=torch.bool)
        unedited[edit] = False
        context_rows = torch.cat([unedited.nonzero().flatten(), torch.arange(num, 2 * num)])
        forward = ContextForward(dit, context_rows)

        def keep_context(forward: ContextForward = forward) -> object:
            return forward.capture(x, img_ids, t, 1, text, branch=0)

        timed(keep_context, capture_cpu, capture_wall)
        forward.region(x[:, edit], img_ids[:, edit], t, 1, text, branch=0)  # lays the cache out
        forwards[fraction] = (forward, edit)

    exact_cpu: list[float] = []
    exact_wall: list[float] = []
    timed(exact, [], [])  # warm-up
    region_cpu: dict[float, list[float]] = {f: [] for f in FRACTIONS}
    region_wall: dict[float, list[float]] = {f: [] for f in FRACTIONS}
    for _ in range(repeats):  # interleaved, so load changes hit both sides
        timed(exact, exact_cpu, exact_wall)
        for fraction, (forward, edit) in forwards.items():

            def region_step(forward: ContextForward = forward, edit: torch.Tensor = edit) -> object:
                return forward.region(x[:, edit], img_ids[:, edit], t, 1, text, branch=0)

            timed(region_step, region_cpu[fraction], region_wall[fraction])

    full, capture = min(exact_cpu), statistics.median(capture_cpu)
    rows = []
    for fraction in FRACTIONS:
        region = min(region_cpu[fraction])
        no_reuse, with_reuse = project(full, capture, region)
        rows.append(
            {
                "edited_fraction": fraction,
                "edited_tokens": len(forwards[fraction][1]),
                "exact_cpu_s": round(full, 3),
                "region_cpu_s": round(region, 3),
                "exact_wall_s": round(min(exact_wall), 3),
                "region_wall_s": round(min(region_wall[fraction]), 3),
                "step_speedup": round(full / region, 2),
                "step_speedup_wall": round(min(exact_wall) / min(region_wall[fraction]), 2),
                "edit_speedup_no_reuse": round(no_reuse, 2),
                "edit_speedup_most_reuse": round(with_reuse, 2),
                "edit_speedup_as_run": 1.0 if fraction >= 1.0 else round(no_reuse, 2),
            }
        )
    return {"capture_cpu_s": round(capture, 3), "rows": rows}


def report_markdown(entry: dict[str, object]) -> str:
    rows = entry["rows"]
    assert isinstance(rows, list)
    lines = [
        "",
        f"## Region-aware DiT steps (`benchmarks/regions.py`), {entry['date']}",
        "",
        f"Mid-size DiT {entry['model']}, 1024-px token counts (4096 noisy + 4096 reference + "
        f"{TEXT_TOKENS} text), float32, batch 1, on {entry['machine']['cpu']} "  # type: ignore[index]
        f"({entry['machine']['cores']} cores, {entry['machine']['torch_threads']} torch threads, "  # type: ignore[index]
        f"torch {entry['machine']['torch']}); load average {entry['load_before']} before, "  # type: ignore[index]
        f"{entry['load_after']} after (a shared machine); best of {entry['repeats']} interleaved "
        f"repeats; commit {entry['commit']}.",
        "",
        "| edited | tokens | exact CPU s/step | region CPU s/step | step speed-up (CPU; wall) "
        "| 28-step DiT speed-up (no reuse / most reuse) | as run |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['edited_fraction']:.0%} | {row['edited_tokens']} | "
            f"{row['exact_cpu_s']} | {row['region_cpu_s']} | "
            f"{row['step_speedup']}x; {row['step_speedup_wall']}x | "
            f"{row['edit_speedup_no_reuse']}x / {row['edit_speedup_most_reuse']}x | "
            f"{row['edit_speedup_as_run']}x |"
        )
    goal_row = next(r for r in rows if r["edited_fraction"] == 0.3)
    met = "met" if goal_row["edit_speedup_no_reuse"] >= GOAL else "missed"
    lines += [
        "",
        f"Goal: >= {GOAL}x at 30% edited. Per step {goal_row['step_speedup']}x; per 28-step edit "
        f"{goal_row['edit_speedup_no_reuse']}x without velocity reuse ({met} on that floor), "
        f"{goal_row['edit_speedup_most_reuse']}x if every reusable step reuses. The capture "
        f"forward cost {entry['capture_cpu_s']} CPU s. At 100% the sampler runs exact mode "
        "(1.0x).",
        "",
        "```json",
        json.dumps(entry, indent=1, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--double", type=int, default=1, help="double-stream blocks")
    parser.add_argument("--single", type=int, default=2, help="single-stream blocks")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()

    load_before = [round(v, 2) for v in os.getloadavg()]
    figures = measure(args.hidden, args.double, args.single, args.repeats)
    load_after = [round(v, 2) for v in os.getloadavg()]
    entry = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "model": f"hidden {args.hidden}, {args.double} double + {args.single} single blocks",
        "machine": machine(),
        "load_before": load_before,
        "load_after": load_after,
        "repeats": args.repeats,
        "commit": commit(),
        **figures,
    }
    print(report_markdown(entry))
    if not args.no_results:
        with RESULTS.open("a", encoding="utf-8") as results:
            results.write(report_markdown(entry))
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
