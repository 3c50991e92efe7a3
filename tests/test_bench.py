"""`stepedit bench` end to end on the CPU with the tiny dummy model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from stepedit.acceleration.bench import (
    BenchConfig,
    BenchReport,
    ModeResult,
    append_results,
    format_table,
    official_options,
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
    argv += ["--sizes", "256", "--aspects", "1:1,16:9", "--steps", "2", "--repeats", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "s/edit" in out and "exact" in out
    # The table says what was measured: dtype, steps, and the kernel that ran.
    assert "float32 · 2 steps" in out and "attention sdpa (runs " in out

    results = tmp_path / "benchmarks" / "RESULTS.md"
    (report,) = _results_json(results)
    env = report["environment"]
    assert isinstance(env, dict)
    assert {"gpu", "torch", "cuda", "driver", "stepedit_commit"} <= env.keys()
    # What else ran on the machine and which tree was measured.
    assert env["cpu"] and env["torch_threads"] >= 1 and env["load_avg_1m"] is not None
    assert env["stepedit_dirty"] in (True, False)
    (mode,) = report["modes"]  # type: ignore[misc]
    assert mode["mode"] == "exact" and mode["load_s"] > 0
    assert mode["optimizations"]["compiled_blocks"] == 2
    assert mode["optimizations"]["compile_dynamic"] is True
    square, wide = mode["sizes"]
    assert square["width"] == 256 and square["height"] == 256
    assert wide["aspect"] == "16:9" and wide["width"] > wide["height"]
    for key in ("seconds_per_edit", "encode_s", "step_mean_s", "step_median_s", "decode_s"):
        assert square[key] > 0, key
    assert square["edits_per_minute"] == pytest.approx(60 / square["seconds_per_edit"])
    # The square warm-up compiled the blocks; the new aspect ratio compiled nothing, and no
    # timed edit did: no compile on a request.
    assert square["warmup_compiled_graphs"] > 0
    assert wide["warmup_compiled_graphs"] == 0
    assert square["compiled_graphs"] == 0 and wide["compiled_graphs"] == 0


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
    with pytest.raises(ValueError, match="aspect ratio"):
        run_bench(BenchConfig(model="dummy:missing", device="cpu", aspects=("wide",)))


@pytest.mark.slow
def test_modes_in_separate_runs_are_compared_with_one_exact_run(tmp_path: Path) -> None:
    config = BenchConfig(
        model="dummy:tiny-v1.1",
        device="cpu",
        dtype="float32",
        sizes=(256,),
        steps=4,
        warmup=0,
        repeats=1,
        results=None,
        reference_path=tmp_path / "reference.pt",
        progress_path=tmp_path / "progress.jsonl",
    )
    run_bench(replace(config, modes=("plain",)))
    (approx,) = run_bench(replace(config, modes=("plain+step_cache=0.5",))).modes
    (size,) = approx.sizes
    assert size.max_abs_diff is not None and size.max_abs_diff > 0  # against the first run
    lines = config.progress_path.read_text().splitlines()  # type: ignore[union-attr]
    assert [json.loads(line)["mode"] for line in lines] == ["plain", "plain+step_cache=0.5"]


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


def test_the_official_code_gets_only_the_arguments_its_signature_takes() -> None:
    class V10Era:  # stepfun-ai/Step1X-Edit as first released: no version, no mode
        def __init__(self, dit_path, ae_path, qwen2vl_model_path, device="cuda", max_length=640):
            pass

    class Upstream:  # later upstream code: version= and mode= ("flash" or "xdit")
        def __init__(self, dit_path, ae_path, qwen2vl_model_path, mode="flash", version="v1.0"):
            pass

    assert official_options(V10Era, "v1.1") == {}
    assert official_options(Upstream, "v1.1") == {"version": "v1.1", "mode": "flash"}


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
    assert row["options"] == {"version": "v1.1"}

    # The v1.0-era checkout's ImageGenerator has no version=: it runs, and the row says how.
    v10_era = FAKE_OFFICIAL.replace("max_length, version):", "max_length):").replace(
        'and version == "v1.1"', ""
    )
    (official / "inference.py").write_text(v10_era)
    (row,) = run_official(config, tmp_path / "work")
    assert row["options"] == {} and "no version=" in row["note"], row

    (official / "inference.py").write_text("raise ImportError('no xfuser here')")
    (row,) = run_official(config, tmp_path / "work")  # reuses the written checkpoint
    assert "no xfuser here" in row["error"]


@pytest.mark.slow
def test_gpu_check_dry_run_goes_through_every_step_on_the_cpu(tmp_path: Path) -> None:
    """benchmarks/gpu-check.sh --dry-run: the GPU session's script, end to end, tiny model."""
    script = Path(__file__).parents[1] / "benchmarks" / "gpu-check.sh"
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "GPU_CHECK_PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(script), "--dry-run"], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (out / "summary.txt").read_text()
    for name in ("1. pytest -m gpu", "2. attention kernels", "3. bench", "4. bench fast"):
        assert f"{name}" in summary
    assert "FAILED" not in summary and "TIMED OUT" not in summary, summary
    # Every mode has its rows or says why it did not run; plain is compared with exact.
    lines = summary.splitlines()

    def rows(mode: str) -> list[str]:
        return [line for line in lines if line.startswith(f"{mode} ")]

    assert "not run: FP8" in rows("fast")[0] and "not run: FP8" in rows("24gb")[0]
    assert len(rows("plain")) == 2  # square and 16:9
    assert all("inf" in row.split() for row in rows("exact-compile"))  # = plain (PSNR inf)
    assert "default dispatch" in summary  # the attention kernels were timed
    modes = [json.loads(line)["mode"] for line in (out / "bench.jsonl").read_text().splitlines()]
    assert modes == ["plain", "exact-compile", "fast", "24gb"]
