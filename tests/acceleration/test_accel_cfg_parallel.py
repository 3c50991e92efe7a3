"""CFG-parallel on 2 CPU processes (gloo) denoises like one process: SPMD (bench) and the
leader/follower pair (serve), including a follower that crashes or hangs."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stepedit.acceleration.cfg_parallel import (
    CFGLeaderDiT,
    CFGParallelDiT,
    FollowerLink,
    PairAddress,
    Select,
    init_cfg_parallel,
    open_pair_store,
    run_follower,
)


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


# ------------------------------------------------------------------ leader and follower
# `serve --gpus 0,1 --parallel cfg`: only the leader runs the sampler; each DiT call's inputs go
# to the follower process, which computes the second half. Real processes, gloo, a tiny DiT.

CALL_TIMEOUT_S = 30.0  # the watchdog's; a tiny DiT call takes milliseconds
HANG_TIMEOUT_S = 6.0  # the hang test's own: its one good call before the hang takes milliseconds


class _DyingDiT(torch.nn.Module):
    """The follower's DiT, which crashes (or hangs) on its `at`-th call."""

    def __init__(self, dit: torch.nn.Module, at: int, how: str) -> None:
        super().__init__()
        self.dit, self.at, self.how, self.calls = dit, at, how, 0

    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.at:
            if self.how == "crash":
                os._exit(3)
            time.sleep(3600)
        out: torch.Tensor = self.dit(*args, **kwargs)
        return out


def _follower(
    conn: Connection, address: PairAddress, tests_dir: str, out_dir: str, fault: str
) -> None:
    import sys

    sys.path.insert(0, tests_dir)
    from accel_tiny_edit import make_tiny_dit  # type: ignore[import-not-found]

    torch.set_num_threads(1)

    @contextlib.contextmanager
    def select(selection: object) -> Iterator[None]:
        with (Path(out_dir) / "selections.txt").open("a") as f:
            f.write(f"{selection}\n")
        yield

    def load() -> tuple[torch.nn.Module, Select]:
        dit: torch.nn.Module = make_tiny_dit(seed=7)
        if fault:
            dit = _DyingDiT(dit, at=2, how=fault)
        return dit, select

    sys.exit(run_follower(conn, address, torch.device("cpu"), load))


def _leader(tests_dir: str, out_dir: str, fault: str) -> None:
    import sys

    sys.path.insert(0, tests_dir)
    from accel_tiny_edit import make_tiny_dit  # type: ignore[import-not-found]

    from stepedit.engine.editor_process import spawn_child

    torch.set_num_threads(1)
    store, address = open_pair_store("gloo", 600.0)
    process, conn = spawn_child(_follower, (address, tests_dir, out_dir, fault), "follower")
    timeout_s = HANG_TIMEOUT_S if fault == "hang" else CALL_TIMEOUT_S
    link = FollowerLink(conn, process, torch.device("cpu"), call_timeout_s=timeout_s)
    link.wait_ready()
    link.join(store, address)
    leader = CFGLeaderDiT(CFGParallelDiT(make_tiny_dit(seed=7)), link)
    leader.selection = "loras of this edit"
    results = {"batched": _denoise(leader)}
    results["two_forwards"] = make_inputs_two_forwards(leader)
    results["again"] = _denoise(leader)  # a fault, if any, happened during this edit or before
    counts = {"split": leader.split_calls, "alone": leader.leader_calls, "state": link.state}
    link.close()
    torch.save({"results": results, "counts": counts}, Path(out_dir) / "leader.pt")


def make_inputs_two_forwards(model: torch.nn.Module) -> torch.Tensor:
    from accel_tiny_edit import make_inputs  # type: ignore[import-not-found]

    return make_inputs(30, steps=3).denoise(model, batch_cfg=False)


def _run_pair(tmp_path: Path, fault: str = "") -> dict[str, object]:
    tests_dir = str(Path(__file__).parent)
    context = mp.get_context("spawn")
    leader = context.Process(target=_leader, args=(tests_dir, str(tmp_path), fault))
    leader.start()
    leader.join(600)  # a guard against a hang, not a measure
    assert leader.exitcode == 0, f"the leader exited with {leader.exitcode}"
    saved: dict[str, object] = torch.load(tmp_path / "leader.pt")
    return saved


@pytest.mark.slow
def test_leader_and_follower_denoise_like_one_process(tmp_path: Path) -> None:
    from accel_tiny_edit import make_tiny_dit  # type: ignore[import-not-found]

    saved = _run_pair(tmp_path)
    results, counts = saved["results"], saved["counts"]
    assert isinstance(results, dict) and isinstance(counts, dict)
    expected = _denoise(make_tiny_dit(seed=7))
    for name in ("batched", "again"):
        assert torch.allclose(results[name], expected, rtol=1e-4, atol=1e-4), name
    two = make_inputs_two_forwards(make_tiny_dit(seed=7))
    assert torch.allclose(results["two_forwards"], two, rtol=1e-4, atol=1e-4)
    # 3 steps x 2 batched edits split; batch-1 forwards (v1.2's unequal prompts) stay here.
    assert counts == {"split": 6, "alone": 6, "state": "ok"}
    selections = (tmp_path / "selections.txt").read_text().splitlines()
    assert selections == ["loras of this edit"] * 6


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["crash", "hang"])
def test_a_follower_that_dies_or_hangs_mid_call_leaves_the_leader_to_finish(
    tmp_path: Path, fault: str
) -> None:
    """The follower fails during its second call, while the leader waits in the all-gather:
    gloo reports the closed connection (a crash) or the watchdog stops the follower after
    HANG_TIMEOUT_S (a hang); either way the leader computes the half itself, from then on."""
    from accel_tiny_edit import make_tiny_dit  # type: ignore[import-not-found]

    saved = _run_pair(tmp_path, fault)
    results, counts = saved["results"], saved["counts"]
    assert isinstance(results, dict) and isinstance(counts, dict)
    expected = _denoise(make_tiny_dit(seed=7))
    for name in ("batched", "again"):
        assert torch.allclose(results[name], expected, rtol=1e-4, atol=1e-4), name
    assert counts["split"] == 1  # the first call; the second was the follower's last
    assert str(counts["state"]).startswith("lost: ")
