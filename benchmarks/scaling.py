"""Edits per minute with 1, 2 and 4 CPU workers on the tiny model, in one run.

Starts redis-server and a throwaway PostgreSQL on loopback (the test launchers), one API node
(`stepedit serve --queue --db`) and N `stepedit worker` processes (`--threads 1` each), submits
a burst through the native API and times it from the first submission to the last result.

    python benchmarks/scaling.py [--workers 1 2 4] [--jobs 8] [--steps 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from tests.distributed.conftest import (  # noqa: E402
    Cluster,
    RedisServer,
    png,
    start_postgres,
    wait_until,
)

# One core per worker: torch, OpenMP and BLAS all single-threaded.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def submit(base_url: str, index: int, steps: int) -> str:
    response = httpx.post(
        f"{base_url}/v1/jobs",
        files={"image": ("a.png", png(index), "image/png")},
        data={"prompt": f"edit {index}", "num_inference_steps": str(steps), "seed": str(index),
              "size_level": "512"},
        timeout=30,
    )  # fmt: skip
    response.raise_for_status()
    job_id: str = response.json()["id"]
    return job_id


def finished(base_url: str, ids: list[str]) -> bool:
    """One list call per poll, so polling does not compete with the workers for the CPU."""
    jobs = httpx.get(f"{base_url}/v1/jobs", params={"limit": 100}, timeout=10).json()["data"]
    status = {job["id"]: job["status"] for job in jobs}
    if any(status.get(job_id) == "failed" for job_id in ids):
        raise RuntimeError("a job failed")
    return all(status.get(job_id) == "succeeded" for job_id in ids)


def measure(cluster: Cluster, workers: int, jobs: int, steps: int) -> float:
    api = cluster.api()
    for _ in range(workers):
        cluster.worker("dummy:tiny-v1.1", "--device", "cpu", "--threads", "1", env=ONE_THREAD)
    cluster.wait_workers(api, workers, timeout_s=300)
    warmup = [submit(api.base_url, i, steps) for i in range(workers)]
    wait_until(lambda: finished(api.base_url, warmup), 600, "warm-up")
    started = time.monotonic()
    ids = [submit(api.base_url, i, steps) for i in range(jobs)]
    while not finished(api.base_url, ids):
        time.sleep(0.5)
    rate = jobs / (time.monotonic() - started) * 60
    workers_seen = httpx.get(f"{api.base_url}/health", timeout=10).json()["workers"]
    print(f"  jobs per worker: {sorted(w['jobs_done'] for w in workers_seen)}", flush=True)
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--jobs", type=int, default=12, help="jobs per burst")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps per edit")
    args = parser.parse_args()

    postgres = start_postgres()
    if postgres is None:
        print("PostgreSQL is not installed", file=sys.stderr)
        return 2
    results: dict[int, float] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="stepedit-bench-") as scratch:
            redis = RedisServer("redis-server", Path(scratch))
            redis.start()
            try:
                for count in args.workers:
                    run_dir = Path(scratch) / f"w{count}"
                    run_dir.mkdir()
                    cluster = Cluster(run_dir, redis.url, postgres.create_database())
                    try:
                        results[count] = measure(cluster, count, args.jobs, args.steps)
                    finally:
                        cluster.stop()
                    load = os.getloadavg()[0]  # other work on the machine skews the figures
                    print(
                        f"{count} worker(s): {results[count]:.1f} edits/min "
                        f"(1-minute load average after the run: {load:.1f})",
                        flush=True,
                    )
            finally:
                redis.stop()
    finally:
        postgres.destroy()
    base = results[min(results)]
    print("\nworkers  edits/min  speed-up")
    for count, rate in results.items():
        print(f"{count:>7}  {rate:>9.1f}  {rate / base:>8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
