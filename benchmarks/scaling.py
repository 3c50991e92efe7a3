"""Edits per minute with 1, 2 and 4 CPU workers on the tiny model, in one run.

Starts redis-server and a throwaway PostgreSQL on loopback (the test launchers), one API node
(`stepedit serve --queue --db`) and N `stepedit worker` processes (`--threads 1` each), submits
a burst through the native API and times it from the first submission to the last result.

    python benchmarks/scaling.py [--workers 1 2 4] [--jobs 8] [--steps 2]
"""

from __future__ import annotations

import argparse
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
    for job_id in ids:
        status = httpx.get(f"{base_url}/v1/jobs/{job_id}", timeout=10).json()["status"]
        if status == "failed":
            raise RuntimeError(f"job {job_id} failed")
        if status != "succeeded":
            return False
    return True


def measure(cluster: Cluster, workers: int, jobs: int, steps: int) -> float:
    api = cluster.api()
    for _ in range(workers):
        cluster.worker("dummy:tiny-v1.1", "--device", "cpu", "--threads", "1")
    cluster.wait_workers(api, workers, timeout_s=300)
    warmup = [submit(api.base_url, i, steps) for i in range(workers)]
    wait_until(lambda: finished(api.base_url, warmup), 600, "warm-up")
    started = time.monotonic()
    ids = [submit(api.base_url, i, steps) for i in range(jobs)]
    wait_until(lambda: finished(api.base_url, ids), 1800, "the burst")
    return jobs / (time.monotonic() - started) * 60


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--jobs", type=int, default=8, help="jobs per burst")
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
                    print(f"{count} worker(s): {results[count]:.1f} edits/min", flush=True)
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
