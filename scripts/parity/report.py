"""Comparing outputs and printing the final table."""

from __future__ import annotations

from dataclasses import dataclass

import torch

TOLERANCE = 1e-5  # max |diff|, float32 on the CPU
# uint8 images: a float difference below TOLERANCE can still move a value across a rounding
# boundary, so a few values one level apart pass; a different quantization rule (truncating vs
# rounding) or resize filter changes far more values than this.
IMAGE_FLIP_FRACTION = 1e-3


@dataclass(frozen=True)
class Result:
    check: str  # e.g. "official-v11 dit"
    commit: str  # the reference's commit (short)
    max_diff: float | None  # None: not comparable (shape mismatch, missing output, error)
    passed: bool
    note: str = ""
    # A difference that a documented stepedit deviation explains ("name: what it does"); such a
    # row is reported as that deviation, not as a failure.
    deviation: str = ""

    @property
    def status(self) -> str:
        if self.passed:
            return "pass"
        return "deviation" if self.deviation else "FAIL"


def compare_tensors(
    check: str, commit: str, ours: torch.Tensor | None, theirs: torch.Tensor | None
) -> Result:
    """max |ours - theirs| in float64; integer tensors (masks, uint8 images) must match exactly."""
    if ours is None or theirs is None:
        missing = "stepedit" if ours is None else "reference"
        return Result(check, commit, None, False, f"no output from {missing}")
    if tuple(ours.shape) != tuple(theirs.shape):
        return Result(
            check, commit, None, False, f"shape {tuple(ours.shape)} vs {tuple(theirs.shape)}"
        )
    if ours.numel() == 0:
        return Result(check, commit, 0.0, True, "empty")
    diff = (ours.double() - theirs.double()).abs()
    worst = float(diff.max())
    is_exact = not (ours.is_floating_point() or theirs.is_floating_point())
    passed = worst == 0.0 if is_exact else worst <= TOLERANCE
    note = ""
    if is_exact and worst > 0:
        flips = int((diff > 0).sum())
        passed = (
            ours.dtype == torch.uint8 and worst <= 1 and flips <= IMAGE_FLIP_FRACTION * diff.numel()
        )
        note = f"{flips} of {diff.numel()} values differ"
    elif not passed:
        note = f"{int((diff > TOLERANCE).sum())} of {diff.numel()} values above {TOLERANCE:g}"
    return Result(check, commit, worst, passed, note)


def compare_values(check: str, commit: str, ours: object, theirs: object) -> Result:
    """Exact comparison of plain values (control-flow traces, counts)."""
    if ours == theirs:
        return Result(check, commit, 0.0, True)
    return Result(check, commit, None, False, f"stepedit {ours!r} vs reference {theirs!r}")


def failure(check: str, commit: str, why: str) -> Result:
    return Result(check, commit, None, False, why)


def format_table(results: list[Result]) -> str:
    rows = [("check", "reference", "max|diff|", "result")]
    for r in results:
        diff = "-" if r.max_diff is None else f"{r.max_diff:.3g}"
        rows.append((r.check, r.commit, diff, r.status))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"- {r.check}: {r.note}" for r in results if r.note and r.status == "FAIL"]
    notes += [
        f"- {r.check}: deviation {r.deviation}" + (f" ({r.note})" if r.note else "")
        for r in results
        if r.status == "deviation"
    ]
    if notes:
        lines += ["", "notes:", *notes]
    counts = {status: sum(r.status == status for r in results) for status in ("pass", "deviation")}
    failed = len(results) - counts["pass"] - counts["deviation"]
    deviations = f"{counts['deviation']} documented deviations, " if counts["deviation"] else ""
    lines += ["", f"{counts['pass']} passed, {deviations}{failed} failed"]
    return "\n".join(lines)
