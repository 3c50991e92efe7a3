"""CFG-parallel on 2 CPU processes (gloo) denoises exactly like one process."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stepedit.acceleration.cfg_parallel import CFGParallelDiT, init_cfg_parallel


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _denoise(model: torch.nn.Module) -> torch.Tensor:
    from accel_tiny_edit import make_inputs  # type: ignore[import-not-found]

    return make_inputs(30, steps=3).denoise(model, batch_cfg=True)


def _worker(rank: int, port: int, out_dir: str, tests_dir: str) -> None:
    import sys

    sys.path.insert(0, tests_dir)
    from accel_tiny_edit import make_tiny_dit  # type: ignore[import-not-found]

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2"
    )
    torch.set_num_threads(1)
    init_cfg_parallel("gloo")
    try:
        result = _denoise(CFGParallelDiT(make_tiny_dit(seed=7)))
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_cfg_parallel_on_two_processes_equals_one(tmp_path: Path) -> None:
    from accel_tiny_edit import make_tiny_dit  # type: ignore[import-not-found]

    tests_dir = str(Path(__file__).parent)
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), tests_dir), nprocs=2, join=True)
    expected = _denoise(make_tiny_dit(seed=7))
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4)
