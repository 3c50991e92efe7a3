"""`--gpus 0,1 [--parallel replicas|cfg]`: which GPUs `stepedit serve` and `stepedit worker` run
on and how they share the work, checked before anything loads (torch-free but for counting the
CUDA devices). How each mode runs: `stepedit.engine.multi_gpu`.

- `replicas` (the default): one pipeline per GPU, each edit on one of them.
- `cfg`: one pipeline over exactly two GPUs, each edit's positive and negative halves at once.

`plan_gpus` refuses, naming the flag: a list that is not comma-separated indices, an index
named twice, an index the machine does not have (or no CUDA device at all), `cfg` with other
than two GPUs, `--gpus` with `--device`, `--parallel` without `--gpus`. The hidden
`--device-type cpu` makes the indices name processes on the CPU (tests, over gloo).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Parallel = Literal["replicas", "cfg"]
PARALLEL_MODES: tuple[Parallel, ...] = ("replicas", "cfg")
DEFAULT_PARALLEL: Parallel = "replicas"
CFG_GPUS = 2
_INDEX = re.compile(r"[0-9]+")


class GpuChoiceError(ValueError):
    """--gpus / --parallel name something this machine or model cannot run (a usage error)."""


@dataclass(frozen=True)
class GpuPlan:
    """The devices a server or worker runs on, and how they share the work."""

    mode: Parallel
    indices: tuple[int, ...]
    device_type: str = "cuda"  # "cpu" only for tests (--device-type cpu)

    @property
    def devices(self) -> tuple[str, ...]:
        """The torch device of each index ("cpu" for every one on the CPU)."""
        if self.device_type == "cuda":
            return tuple(f"cuda:{i}" for i in self.indices)
        return tuple("cpu" for _ in self.indices)

    @property
    def labels(self) -> tuple[str, ...]:
        """How logs and /health name each device."""
        return tuple(f"{self.device_type}:{i}" for i in self.indices)

    @property
    def backend(self) -> str:
        """torch.distributed's backend for a cfg pair."""
        return "nccl" if self.device_type == "cuda" else "gloo"

    def summary(self) -> str:
        if self.mode == "cfg":
            leader, follower = self.labels
            return (
                f"parallel cfg: each edit's positive half on {leader} (leader), its negative "
                f"half on {follower} (follower)"
            )
        return f"parallel replicas: one pipeline per device on {', '.join(self.labels)}"

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "devices": list(self.labels)}


def parse_gpu_indices(text: str) -> tuple[int, ...]:
    """ "0,1" -> (0, 1); GpuChoiceError for anything else (empty items, names, repeats)."""
    items = [item.strip() for item in text.split(",")]
    if not all(_INDEX.fullmatch(item) for item in items):
        raise GpuChoiceError(
            f"--gpus {text!r}: give GPU indices separated by commas, e.g. --gpus 0,1"
        )
    indices = tuple(int(item) for item in items)
    repeated = sorted({i for i in indices if indices.count(i) > 1})
    if repeated:
        named = ", ".join(map(str, repeated))
        raise GpuChoiceError(f"--gpus {text!r}: GPU {named} is named more than once")
    return indices


def plan_gpus(
    gpus: str | None,
    parallel: str | None,
    *,
    device: str | None = None,
    device_type: str = "cuda",
    device_count: Callable[[], int] | None = None,
) -> GpuPlan | None:
    """The plan `--gpus`/`--parallel` ask for, checked against the machine (`device_count`:
    the CUDA devices PyTorch sees); None without --gpus. Raises GpuChoiceError."""
    if gpus is None:
        if parallel is not None:
            raise GpuChoiceError("--parallel needs --gpus (e.g. --gpus 0,1 --parallel cfg)")
        return None
    if device is not None:
        raise GpuChoiceError("give --gpus or --device, not both")
    if parallel not in (None, *PARALLEL_MODES):
        raise GpuChoiceError(f"--parallel {parallel!r}: choose replicas or cfg")
    indices = parse_gpu_indices(gpus)
    mode: Parallel = "cfg" if parallel == "cfg" else DEFAULT_PARALLEL
    if mode == "cfg" and len(indices) != CFG_GPUS:
        raise GpuChoiceError(
            f"--parallel cfg runs each edit on exactly {CFG_GPUS} GPUs (its positive and "
            f"negative halves), got {len(indices)}: give two, or use --parallel replicas"
        )
    if device_type == "cuda":
        _check_cuda_indices(indices, (device_count or cuda_device_count)())
    return GpuPlan(mode, indices, device_type)


def _check_cuda_indices(indices: Sequence[int], count: int) -> None:
    if count == 0:
        from stepedit.acceleration.device import cuda_problem

        why = cuda_problem() or "PyTorch sees no CUDA device and no NVIDIA GPU was found"
        raise GpuChoiceError(f"--gpus: no CUDA device to run on: {why}")
    missing = [i for i in indices if i >= count]
    if missing:
        visible = "0" if count == 1 else f"0-{count - 1}"
        raise GpuChoiceError(
            f"--gpus: no GPU {', '.join(map(str, missing))} on this machine: PyTorch sees "
            f"{count} CUDA device{'s' if count > 1 else ''} ({visible}; CUDA_VISIBLE_DEVICES "
            "renumbers them from 0)"
        )


def cuda_device_count() -> int:
    import torch

    return int(torch.cuda.device_count())


def check_plan_model(plan: GpuPlan | None, model: str | None) -> None:
    """cfg splits a real model's DiT: the test models ("fake") have none."""
    name = model or ""
    if plan is not None and plan.mode == "cfg" and (name == "fake" or name.startswith("fake:")):
        raise GpuChoiceError(f"--parallel cfg needs a model with a DiT, not {name!r}")


def add_gpu_arguments(parser: argparse.ArgumentParser) -> None:
    """--gpus and --parallel, as `serve` and `worker` take them."""
    parser.add_argument(
        "--gpus",
        metavar="0,1",
        help="run on these GPUs (CUDA indices): one pipeline per GPU, or each edit across two "
        "with --parallel cfg (docs/performance.md, Several GPUs)",
    )
    parser.add_argument(
        "--parallel",
        choices=PARALLEL_MODES,
        help='with --gpus: "replicas" (default) runs one edit per GPU at a time; "cfg" runs '
        "each edit's positive and negative halves on two GPUs at once",
    )
    # Tests: the --gpus indices name processes on the CPU (gloo instead of NCCL).
    parser.add_argument(
        "--device-type", choices=["cuda", "cpu"], default="cuda", help=argparse.SUPPRESS
    )


def plan_from_args(args: argparse.Namespace) -> GpuPlan | None:
    """The checked plan of a parsed `serve` or `worker` command line (GpuChoiceError)."""
    return plan_gpus(
        getattr(args, "gpus", None),
        getattr(args, "parallel", None),
        device=getattr(args, "device", None),
        device_type=getattr(args, "device_type", "cuda"),
    )
