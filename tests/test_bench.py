"""`stepedit bench` end to end on the CPU with the tiny dummy model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stepedit.bench import (
    BenchConfig,
    BenchReport,
    ModeResult,
    append_results,
    format_table,
    psnr,
    run_bench,
    run_official,
)
from stepedit.cli import main


def _results_json(path: Path) -> list[dict[str, object]]:
    blocks = re.findall(r"```json\n(.*?)\n```", path.read_text(), flags=re.S)
    return [json.loads(b) for b in blocks]


@pytest.mark.slow
def test_bench_command_runs_end_to_end_on_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["bench", "--model", "dummy:tiny-v1.1", "--device", "cpu"]
    argv += ["--sizes", "256", "--steps", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "s/edit" in out and "exact" in out

    results = tmp_path / "benchmarks" / "RESULTS.md"
    (report,) = _results_json(results)
    env = report["environment"]
    assert isinstance(env, dict)
    assert {"gpu", "torch", "cuda", "driver", "stepedit_commit"} <= env.keys()
    (mode,) = report["modes"]  # type: ignore[misc]
    assert mode["mode"] == "exact" and mode["load_s"] > 0
    assert mode["optimizations"]["compiled_blocks"] == 2
    (size,) = mode["sizes"]
    assert size["width"] == 256 and size["height"] == 256
    for key in ("seconds_per_edit", "encode_s", "step_mean_s", "step_median_s", "decode_s"):
        assert size[key] > 0, key
    assert size["edits_per_minute"] == pytest.approx(60 / size["seconds_per_edit"])


@pytest.mark.slow
def test_approximate_modes_report_their_deviation_and_fp8_is_refused_on_cpu() -> None:
    config = BenchConfig(
        model="dummy:tiny-v1.1",
        device="cpu",
        dtype="float32",
        sizes=(256,),
        steps=4,
        modes=("plain+step_cache=0.5", "fast", "plain", "plain+encoding_cache"),
        warmup=0,
        repeats=1,
        results=None,
    )
    report = run_bench(config)
    by_name = {m.mode: m for m in report.modes}
    assert report.modes[0].mode == "plain"  # exact modes run first
    assert by_name["fast"].error is not None and "FP8" in by_name["fast"].error
    (exact,) = by_name["plain"].sizes
    assert exact.max_abs_diff is None and exact.skipped_steps is None
    (also_exact,) = by_name["plain+encoding_cache"].sizes
    assert also_exact.max_abs_diff is not None and also_exact.max_abs_diff < 1e-5
    (cached,) = by_name["plain+step_cache=0.5"].sizes
    assert cached.skipped_steps is not None and cached.skipped_steps > 0
    assert cached.max_abs_diff is not None and cached.max_abs_diff > 0
    assert cached.psnr_db is not None and cached.psnr_db < float("inf")
    table = format_table(report)
    assert "fast: not run" in table and "plain+step_cache=0.5" in table


def test_results_accumulate_under_one_header(tmp_path: Path) -> None:
    report = BenchReport(
        config={},
        environment={"date": "2026-01-01T00:00:00", "gpu": "NVIDIA H100", "stepedit_commit": "abc"},
        modes=[ModeResult(mode="exact", load_s=1.0)],
    )
    results = tmp_path / "RESULTS.md"
    append_results(results, report)
    append_results(results, report)
    assert results.read_text().count("# Benchmark results") == 1
    assert "## 2026-01-01T00:00:00 · NVIDIA H100 · stepedit abc" in results.read_text()
    assert [r["modes"][0]["mode"] for r in _results_json(results)] == ["exact", "exact"]  # type: ignore[index]


def test_an_unknown_mode_fails_before_loading_anything() -> None:
    with pytest.raises(ValueError, match="unknown switch"):
        run_bench(BenchConfig(model="dummy:missing", device="cpu", modes=("exact+turbo",)))


def test_psnr_of_identical_and_perturbed_latents() -> None:
    x = torch.linspace(-1, 1, 100)
    assert psnr(x, x) == float("inf")
    assert psnr(x + 0.01, x) == pytest.approx(40.0, abs=0.01)


@pytest.mark.slow
def test_bench_runs_cfg_parallel_on_two_gloo_ranks(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["-m", "stepedit.cli", "bench", "--model", "dummy:tiny-v1.1", "--device", "cpu"]
    command += ["--sizes", "256", "--steps", "2", "--mode", "plain", "--cfg-parallel"]
    command += ["--repeats", "1", "--warmup", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("s/edit") == 1  # only rank 0 reports
    (report,) = _results_json(tmp_path / "benchmarks" / "RESULTS.md")
    assert report["environment"]["world_size"] == 2  # type: ignore[index]
    assert "CFG-parallel" in str(report["modes"][0]["optimizations"]["notes"])  # type: ignore[index]


FAKE_OFFICIAL = """
import os, time

class ImageGenerator:
    def __init__(self, ae_path, dit_path, qwen2vl_model_path, max_length, version):
        for path in (ae_path, dit_path, os.path.join(qwen2vl_model_path, "config.json")):
            assert os.path.exists(path), path
        assert dit_path.endswith("step1x-edit-v1p1-official.safetensors") and version == "v1.1"

    def generate_image(self, prompt, negative_prompt, ref_images, num_steps, cfg_guidance,
                       seed, size_level):
        assert ref_images.size == (size_level, size_level) and num_steps == 2
        print("official chatter on stdout")
        time.sleep(0.01)
"""


@pytest.mark.slow
def test_compare_official_times_the_official_code_with_the_same_weights(tmp_path: Path) -> None:
    official = tmp_path / "official"
    official.mkdir()
    (official / "inference.py").write_text(FAKE_OFFICIAL)
    config = BenchConfig(
        model="dummy:tiny-v1.1",
        device="cpu",
        sizes=(256,),
        steps=2,
        warmup=1,
        repeats=2,
        results=None,
        compare_official=official,
    )
    (row,) = run_official(config, tmp_path / "work")
    assert row["size"] == 256, row
    assert 0.01 <= row["seconds_per_edit"] < 5 and row["edits_per_minute"] > 0
    assert (tmp_path / "work" / "checkpoint" / "vae.safetensors").exists()

    (official / "inference.py").write_text("raise ImportError('no xfuser here')")
    (row,) = run_official(config, tmp_path / "work")  # reuses the written checkpoint
    assert "no xfuser here" in row["error"]
