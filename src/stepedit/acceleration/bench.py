"""The benchmark behind `stepedit bench`: time full edits per optimization mode and image size.

For each mode (an optimization preset, see `stepedit.acceleration`) the pipeline is loaded once
(cold start, timed), optimized, then for each size run `warmup` untimed edits (they also compile)
and `repeats` timed ones. Per-stage times come from the pipeline's own timings; per-step times
from its progress callback, with a device synchronisation at each step so they are real. The
final latents of every mode after the first exact one are compared with that mode's (same seed,
same size), as max |diff| and PSNR: approximate modes report their error, exact ones show how
far they agree in bf16.

`--compare-official PATH` times the official inference code (a checkout at PATH) in a child
process with the very same dummy weights written to disk in the original layout, so both lines
land in one RESULTS.md entry. See benchmarks/README.md.
"""

from __future__ import annotations

import gc
import importlib
import importlib.metadata
import inspect
import itertools
import json
import logging
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from stepedit.acceleration import (
    AccelerationUnavailable,
    OptimizationConfig,
    apply_optimizations,
)
from stepedit.acceleration.cfg_parallel import CFGParallelDiT, init_cfg_parallel
from stepedit.acceleration.compile import compile_report
from stepedit.acceleration.config import parse_mode
from stepedit.acceleration.device import check_device
from stepedit.request import EditRequest

logger = logging.getLogger(__name__)

PROMPT = "turn the sky into a starry night"
RESULTS_HEADER = "# Benchmark results\n"


@dataclass(frozen=True)
class BenchConfig:
    model: str = "dummy:v1.1"
    device: str = "cuda"
    dtype: str = "bfloat16"
    sizes: tuple[int, ...] = (512, 768, 1024)
    # Source image aspect ratios "W:H"; each size is measured at each (area about size**2).
    # A non-square one shows whether a new token count recompiles on the request path.
    aspects: tuple[str, ...] = ("1:1",)
    steps: int = 28
    modes: tuple[str, ...] = ("exact",)
    warmup: int = 1
    warmup_steps: int | None = None  # steps of a warm-up edit (None: `steps`); 2 compiles all
    repeats: int = 3
    guidance_scale: float = 6.0
    seed: int = 42
    results: Path | None = Path("benchmarks/RESULTS.md")
    compare_official: Path | None = None
    cfg_parallel: bool = False  # launched by torchrun on 2 ranks; rank 0 reports
    official_workdir: Path | None = None  # default: ~/.cache/stepedit/bench-official/<model>
    # Final latents of exact modes, kept across runs: a later run's modes are compared with
    # them (one process per group of modes, each under its own time limit).
    reference_path: Path | None = None
    progress_path: Path | None = None  # one JSON line per finished mode, as it finishes


@dataclass
class SizeResult:
    mode: str
    size: int
    width: int  # working size
    height: int
    seconds_per_edit: float  # median of the timed edits' totals
    edits_per_minute: float
    encode_s: float  # MLLM, median
    vae_encode_s: float
    step_mean_s: float
    step_median_s: float
    decode_s: float
    peak_memory_gb: float | None  # torch.cuda.max_memory_allocated over the timed edits
    aspect: str = "1:1"
    # torch.cuda.max_memory_reserved: what the caching allocator took from the driver (closer
    # to nvidia-smi; the 24 GB goal is about this plus the CUDA context).
    peak_reserved_gb: float | None = None
    compiled_graphs: int | None = None  # graphs torch.compile built during the timed edits
    skipped_steps: int | None = None  # step cache: DiT forwards skipped per edit
    max_abs_diff: float | None = None  # final latents vs the run's exact mode
    psnr_db: float | None = None
    first_edit_s: float | None = None  # the first warm-up edit: includes torch.compile
    warmup_compiled_graphs: int | None = None  # graphs compiled by this size's warm-up edits


@dataclass
class ModeResult:
    mode: str
    load_s: float  # weights to ready (cold start), before optimizations
    optimize_s: float = 0.0  # apply_optimizations (compile itself happens in the warm-up)
    optimizations: dict[str, Any] = field(default_factory=dict)
    sizes: list[SizeResult] = field(default_factory=list)
    error: str | None = None  # an optimization this machine cannot run


@dataclass
class BenchReport:
    config: dict[str, Any]
    environment: dict[str, Any]
    modes: list[ModeResult]
    official: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------- environment


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
            timeout=30,
        )
        return out.stdout
    except (OSError, subprocess.SubprocessError):
        return None


def _git_commit() -> str:
    out = _git("rev-parse", "--short", "HEAD")
    return out.strip() if out else "unknown"


def _git_dirty() -> bool | None:
    """True when the checkout has uncommitted changes to tracked files (the figures then belong
    to no commit); None outside a git checkout."""
    out = _git("status", "--porcelain", "--untracked-files=no")
    return None if out is None else bool(out.strip())


def _driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def cpu_model() -> str:
    """The CPU's marketing name (platform.processor() is often empty or just the arch)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: torch.device) -> dict[str, Any]:
    is_cuda = device.type == "cuda"
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "world_size": torch.distributed.get_world_size() if distributed else 1,
        "gpu": torch.cuda.get_device_name(device) if is_cuda else None,
        "gpu_memory_gb": (
            round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
            if is_cuda
            else None
        ),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        # 1-minute load average when the run started: a busy machine slows the host-side work
        # of a GPU run (launches, streaming) and all of a CPU run.
        "load_avg_1m": None if load is None else round(load[0], 2),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if is_cuda else None,
        "driver": _driver_version() if is_cuda else None,
        "torchao": _package_version("torchao"),
        "flash_attn_3": _package_version("flash_attn_3") or _package_version("flashattn-hopper"),
        "flash_attn_4": _package_version("flash-attn-4"),
        "transformers": _package_version("transformers"),
        "python": platform.python_version(),
        "stepedit_commit": _git_commit(),
        "stepedit_dirty": _git_dirty(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# ---------------------------------------------------------------------- measurement


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parse_aspect(text: str) -> tuple[int, int]:
    """ "16:9" -> (16, 9)."""
    match = re.fullmatch(r"\s*(\d+)\s*[:x/]\s*(\d+)\s*", text)
    if match is None or int(match.group(1)) == 0 or int(match.group(2)) == 0:
        raise ValueError(f"an aspect ratio looks like '1:1' or '16:9', got {text!r}")
    return int(match.group(1)), int(match.group(2))


def image_size(size: int, aspect: str = "1:1") -> tuple[int, int]:
    """(width, height) of a source with about size**2 pixels at `aspect`."""
    a, b = parse_aspect(aspect)
    return round(size * math.sqrt(a / b)), round(size * math.sqrt(b / a))


def sample_image(size: int, seed: int = 0, aspect: str = "1:1") -> Image.Image:
    """A deterministic smooth RGB image (gradients plus a little noise)."""
    g = torch.Generator().manual_seed(seed)
    width, height = image_size(size, aspect)
    pixels = torch.stack([
        torch.linspace(0, 1, width)[None, :].expand(height, width),
        torch.linspace(0, 1, height)[:, None].expand(height, width),
        torch.rand(height, width, generator=g) * 0.2 + 0.4,
    ])  # fmt: skip
    array = (pixels.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    return Image.fromarray(array, "RGB")


def psnr(approx: Tensor, exact: Tensor) -> float:
    mse = float((approx - exact).pow(2).mean())
    peak = float(exact.abs().max())
    if mse == 0:
        return float("inf")
    return 10.0 * float(torch.log10(torch.tensor(peak * peak / mse)))


def _edit_once(
    pipeline: Any,
    image: Image.Image,
    config: BenchConfig,
    size: int,
    device: torch.device,
    num_steps: int | None = None,
) -> tuple[dict[str, float], list[float], Tensor | None]:
    stamps: list[float] = []

    def on_progress(progress: Any) -> None:
        if progress.stage == "denoise":
            _sync(device)
            stamps.append(time.perf_counter())

    no_reasoning = False if pipeline.spec.has_reasoning else None  # the edit alone
    request = EditRequest(
        prompt=PROMPT,
        num_inference_steps=num_steps or config.steps,
        guidance_scale=config.guidance_scale,
        seed=config.seed,
        size_level=size,
        enable_thinking=no_reasoning,
        enable_reflection=no_reasoning,
    )
    _sync(device)
    output = pipeline(image, request, callback=on_progress)
    _sync(device)
    steps = [b - a for a, b in itertools.pairwise(stamps)]
    timings = dict(output.timings)
    timings["width"], timings["height"] = float(output.width), float(output.height)
    final = None if output.latents is None else output.latents.detach().float().cpu()
    return timings, steps, final


def bench_size(
    pipeline: Any,
    mode: str,
    size: int,
    config: BenchConfig,
    device: torch.device,
    step_cache: Any,
    aspect: str = "1:1",
) -> tuple[SizeResult, Tensor | None]:
    # A new image for every edit, as in service: the negative prompt is encoded with the image,
    # so its cache never hits here and the MLLM time is that of a first edit of an image.
    images = [
        sample_image(size, seed=i, aspect=aspect) for i in range(config.warmup + config.repeats)
    ]
    first_edit_s: float | None = None
    graphs_before = compile_report()["compiled_graphs"]
    for image in images[: config.warmup]:
        tic = time.perf_counter()
        _edit_once(pipeline, image, config, size, device, config.warmup_steps)
        first_edit_s = first_edit_s or time.perf_counter() - tic
    warmup_graphs = compile_report()["compiled_graphs"] - graphs_before
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    graphs_before = compile_report()["compiled_graphs"]
    runs: list[dict[str, float]] = []
    steps: list[float] = []
    latents: list[Tensor] = []
    skipped: list[int] = []
    for image in images[config.warmup :]:
        if step_cache is not None:
            step_cache.reset()
        timings, step_times, final = _edit_once(pipeline, image, config, size, device)
        if final is not None:
            latents.append(final)
        runs.append(timings)
        steps.extend(step_times)
        if step_cache is not None:
            skipped.append(step_cache.stats().skipped)
    totals = [r["total"] for r in runs]
    per_edit = statistics.median(totals)
    is_cuda = device.type == "cuda"
    result = SizeResult(
        mode=mode,
        size=size,
        aspect=aspect,
        width=int(runs[0]["width"]),
        height=int(runs[0]["height"]),
        seconds_per_edit=per_edit,
        edits_per_minute=60.0 / per_edit,
        encode_s=statistics.median(r.get("encode", 0.0) for r in runs),
        vae_encode_s=statistics.median(r.get("vae_encode", 0.0) for r in runs),
        step_mean_s=statistics.fmean(steps) if steps else 0.0,
        step_median_s=statistics.median(steps) if steps else 0.0,
        decode_s=statistics.median(r.get("decode", 0.0) for r in runs),
        peak_memory_gb=torch.cuda.max_memory_allocated(device) / 2**30 if is_cuda else None,
        peak_reserved_gb=torch.cuda.max_memory_reserved(device) / 2**30 if is_cuda else None,
        compiled_graphs=compile_report()["compiled_graphs"] - graphs_before,
        skipped_steps=max(skipped) if skipped else None,
        first_edit_s=first_edit_s,
        warmup_compiled_graphs=warmup_graphs if config.warmup else None,
    )
    return result, (latents[-1] if latents else None)


def load_pipeline(config: BenchConfig, optimizations: OptimizationConfig) -> tuple[Any, float]:
    from stepedit.pipeline import EditPipeline

    device = torch.device(config.device)
    check_device(device)  # an unusable GPU says why, instead of a bare CUDA error
    dtype = getattr(torch, config.dtype)
    _sync(device)
    tic = time.perf_counter()
    # 24 GB: load on the host; the optimizations then place the FP8 DiT on the GPU block by block.
    pipeline = EditPipeline.from_pretrained(
        config.model, device=device, dtype=dtype, offload=optimizations.load_on_host
    )
    _sync(device)
    return pipeline, time.perf_counter() - tic


def free_device_memory(device: torch.device) -> None:
    """Drop a finished mode's model: compiled graphs hold its parameters, so reset dynamo too."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bench_mode(
    config: BenchConfig,
    mode: str,
    optimizations: OptimizationConfig,
    device: torch.device,
    reference: dict[tuple[int, str], Tensor],
    on_result: Callable[[SizeResult], None] | None = None,
) -> ModeResult:
    """Load, optimize and time one mode at every size. Its pipeline dies with this frame."""
    torch._dynamo.reset()  # compiled code of an earlier model would serve this one's blocks
    pipeline, load_s = load_pipeline(config, optimizations)
    mode_result = ModeResult(mode=mode, load_s=load_s)
    tic = time.perf_counter()
    try:
        applied = apply_optimizations(pipeline, optimizations)
    except AccelerationUnavailable as exc:
        logger.warning("mode %s not run: %s", mode, exc)
        mode_result.error = str(exc)
        return mode_result
    if config.cfg_parallel:
        pipeline.dit = CFGParallelDiT(pipeline.dit)
        applied.notes.append("CFG-parallel: cond and uncond on 2 ranks")
    _sync(device)
    mode_result.optimize_s = time.perf_counter() - tic
    mode_result.optimizations = applied.summary()
    for size, aspect in itertools.product(config.sizes, config.aspects):
        result, final = bench_size(pipeline, mode, size, config, device, applied.step_cache, aspect)
        # Every mode after the first exact one is compared with it: approximate modes report
        # their error, exact ones show that they agree to bf16 rounding.
        key = (size, aspect)
        if final is not None and key in reference:
            result.max_abs_diff = float((final - reference[key]).abs().max())
            result.psnr_db = psnr(final, reference[key])
        elif final is not None and optimizations.is_exact:
            reference[key] = final
        mode_result.sizes.append(result)
        if on_result is not None:
            on_result(result)
    return mode_result


def run_bench(
    config: BenchConfig, *, on_result: Callable[[SizeResult], None] | None = None
) -> BenchReport:
    device = torch.device(config.device)
    is_reporter = True
    if config.cfg_parallel:
        device = init_cfg_parallel()
        config = replace(config, device=str(device))
        is_reporter = torch.distributed.get_rank() == 0
        if not is_reporter:
            on_result = None
    parsed = {mode: parse_mode(mode) for mode in config.modes}  # raises on a typo, before loading
    for aspect in config.aspects:
        parse_aspect(aspect)
    # Exact modes first, so approximate ones can be compared with their latents.
    modes = sorted(config.modes, key=lambda m: not parsed[m].is_exact)
    report = BenchReport(config=_config_dict(config), environment=environment(device), modes=[])
    reference = load_reference(config.reference_path)
    for mode in modes:
        result = bench_mode(config, mode, parsed[mode], device, reference, on_result)
        report.modes.append(result)
        free_device_memory(device)
        if not is_reporter:
            continue
        # Written as each mode ends, so a later mode's time-out loses nothing before it.
        if config.progress_path is not None:
            with config.progress_path.open("a") as f:
                f.write(json.dumps({"environment": report.environment, **asdict(result)}) + "\n")
        if config.reference_path is not None and reference:
            torch.save(reference, config.reference_path)
    if config.compare_official is not None and is_reporter:
        report.official = run_official(config, config.official_workdir)
    if config.results is not None and is_reporter:
        append_results(config.results, report)
    return report


def load_reference(path: Path | None) -> dict[tuple[int, str], Tensor]:
    """Exact-mode latents saved by an earlier run with the same --reference file."""
    if path is None or not path.exists():
        return {}
    loaded: dict[tuple[int, str], Tensor] = torch.load(path, weights_only=True)
    return loaded


def _config_dict(config: BenchConfig) -> dict[str, Any]:
    data = asdict(config)
    return {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}


# ---------------------------------------------------------------------- output


TABLE_COLUMNS = (
    "mode",
    "size",
    "W x H",
    "s/edit",
    "edits/min",
    "encode s",
    "step mean s",
    "step med s",
    "decode s",
    "peak GB",
    "compiles",
    "skipped",
    "max|diff|",
    "PSNR dB",
)
_MODE_WIDTH = 16


def _size_label(r: SizeResult) -> str:
    return str(r.size) if r.aspect == "1:1" else f"{r.size} {r.aspect}"


def _cells(r: SizeResult) -> list[str]:
    def optional(value: float | int | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    return [
        r.mode,
        _size_label(r),
        f"{r.width}x{r.height}",
        f"{r.seconds_per_edit:.2f}",
        f"{r.edits_per_minute:.2f}",
        f"{r.encode_s:.3f}",
        f"{r.step_mean_s:.4f}",
        f"{r.step_median_s:.4f}",
        f"{r.decode_s:.3f}",
        optional(r.peak_memory_gb, ".1f"),
        optional(r.compiled_graphs, "d"),
        optional(r.skipped_steps, "d"),
        optional(r.max_abs_diff, ".3g"),
        optional(r.psnr_db, ".1f"),
    ]


def _join(cells: list[str]) -> str:
    widths = [_MODE_WIDTH] + [max(len(name), 9) for name in TABLE_COLUMNS[1:]]
    first = cells[0].ljust(widths[0])
    return "  ".join([first] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)])


def format_row(r: SizeResult) -> str:
    return _join(_cells(r))


def _mode_line(mode: ModeResult) -> str:
    o = mode.optimizations
    ready = mode.load_s + mode.optimize_s
    first = ", ".join(
        f"{_size_label(r)}: {r.first_edit_s:.1f}s" for r in mode.sizes if r.first_edit_s
    )
    kernel = o.get("attention_kernel")
    return (
        f"-- {mode.mode}: cold start {ready:.1f}s (load {mode.load_s:.1f}s + optimize "
        f"{mode.optimize_s:.1f}s); attention {o.get('attention')} (runs {kernel}), compiled "
        f"blocks {o.get('compiled_blocks')} (dynamic {o.get('compile_dynamic')}), fp8 linears "
        f"{o.get('fp8_linears')}, mllm {o.get('mllm')}; first edit per size: {first or '-'}"
        + (f"; notes: {'; '.join(o['notes'])}" if o.get("notes") else "")
    )


def format_table(report: BenchReport) -> str:
    env, cfg = report.environment, report.config
    dirty = " (uncommitted changes)" if env.get("stepedit_dirty") else ""
    lines = [
        f"{env['gpu'] or 'CPU'} · torch {env['torch']} · CUDA {env['cuda']} · "
        f"driver {env['driver']} · stepedit {env['stepedit_commit']}{dirty}",
        f"{cfg.get('model')} · {cfg.get('dtype')} · {cfg.get('steps')} steps · guidance "
        f"{cfg.get('guidance_scale')} · {cfg.get('repeats')} timed edit(s) per size · CPU "
        f"{env.get('cpu')}, {env.get('torch_threads')} threads, load {env.get('load_avg_1m')}",
        _join(list(TABLE_COLUMNS)),
    ]
    for mode in report.modes:
        if mode.error is not None:
            lines.append(f"-- {mode.mode}: not run: {mode.error}")
            continue
        lines.append(_mode_line(mode))
        lines.extend(format_row(r) for r in mode.sizes)
    for row in report.official:
        lines.append(f"-- official: {json.dumps(row)}")
    return "\n".join(lines)


def to_json(report: BenchReport) -> str:
    return json.dumps(asdict(report), indent=2, default=str)


def append_results(path: Path, report: BenchReport) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(RESULTS_HEADER)
    env = report.environment
    title = f"\n## {env['date']} · {env['gpu'] or 'CPU'} · stepedit {env['stepedit_commit']}\n\n"
    with path.open("a") as f:
        f.write(title + "```json\n" + to_json(report) + "\n```\n")


# ---------------------------------------------------------------------- official code


OFFICIAL_RESULT_PREFIX = "STEPEDIT_BENCH_RESULT "


def official_workdir(model: str) -> Path:
    """Where the checkpoint for the official code is written once and reused (outside the repo)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "stepedit" / "bench-official" / re.sub(r"[^A-Za-z0-9._-]+", "_", model)


def run_official(config: BenchConfig, workdir: Path | None = None) -> list[dict[str, Any]]:
    """Time the official code at PATH with this run's weights, one child process per size."""
    assert config.compare_official is not None
    from stepedit.weights import load_components, write_checkpoint

    workdir = (workdir or official_workdir(config.model)).resolve()
    checkpoint = workdir / "checkpoint"
    version_file = workdir / "version"
    if not version_file.exists():
        components = load_components(config.model, device="cpu", dtype=torch.bfloat16)
        write_checkpoint(components, checkpoint, "original")
        version_file.write_text(components.version)
        del components
        gc.collect()
    version = version_file.read_text().strip()
    results = []
    for size in config.sizes:
        image_path = workdir / f"input-{size}.png"
        sample_image(size).save(image_path)
        command = [
            sys.executable, "-m", "stepedit.acceleration.bench", "official",
            str(Path(config.compare_official).resolve()), str(checkpoint), version,
            str(image_path), str(size), str(config.steps), str(config.guidance_scale),
            str(config.seed), str(config.warmup), str(config.repeats),
        ]  # fmt: skip
        # The official code imports its `modules` package relative to its checkout.
        out = subprocess.run(
            command, capture_output=True, text=True, check=False, cwd=config.compare_official
        )
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith(OFFICIAL_RESULT_PREFIX)]
        if out.returncode != 0 or not lines:
            results.append({"size": size, "error": (out.stderr or out.stdout)[-2000:]})
            continue
        results.append(json.loads(lines[-1].removeprefix(OFFICIAL_RESULT_PREFIX)))
    return results


def official_options(image_generator: Any, version: str) -> dict[str, Any]:
    """The keyword arguments this checkout's `ImageGenerator` takes beyond the paths.

    The v1.0-era official code has neither `version` nor `mode`; the later upstream code takes
    `version` ("v1.0", "v1.1") and `mode` ("flash" on one GPU, "xdit" under torchrun), whose
    defaults are the single-GPU path. Pass only what the signature has.
    """
    try:
        parameters = inspect.signature(image_generator).parameters
    except (TypeError, ValueError):
        return {}
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    options: dict[str, Any] = {}
    if "version" in parameters or accepts_any:
        options["version"] = version
    if "mode" in parameters:
        options["mode"] = "flash"  # one process, one GPU: the upstream default, said out loud
    return options


def _official_child(argv: list[str]) -> None:
    """Child process: import the official ImageGenerator from a checkout and time edits."""
    repo, checkpoint, version, image_path = Path(argv[0]), Path(argv[1]), argv[2], argv[3]
    size, steps, guidance, seed, warmup, repeats = (
        int(argv[4]), int(argv[5]), float(argv[6]), int(argv[7]), int(argv[8]), int(argv[9])
    )  # fmt: skip
    from stepedit.weights.formats import DIT_FILE_NAMES, QWEN_FOLDER_NAME

    is_cuda = torch.cuda.is_available()

    def sync() -> None:
        if is_cuda:
            torch.cuda.synchronize()

    sys.path.insert(0, str(repo))
    official = importlib.import_module("inference")
    options = official_options(official.ImageGenerator, version)
    tic = time.perf_counter()
    generator = official.ImageGenerator(
        ae_path=str(checkpoint / "vae.safetensors"),
        dit_path=str(checkpoint / DIT_FILE_NAMES[version]),
        qwen2vl_model_path=str(checkpoint / QWEN_FOLDER_NAME),
        max_length=640,
        **options,
    )
    sync()
    load_s = time.perf_counter() - tic
    image = Image.open(image_path).convert("RGB")
    times = []
    for i in range(warmup + repeats):
        if i == warmup and is_cuda:
            torch.cuda.reset_peak_memory_stats()
        sync()
        tic = time.perf_counter()
        generator.generate_image(
            PROMPT, negative_prompt="", ref_images=image, num_steps=steps,
            cfg_guidance=guidance, seed=seed, size_level=size,
        )  # fmt: skip
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - tic)
    per_edit = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / 2**30 if is_cuda else None
    result: dict[str, Any] = {
        "size": size, "load_s": load_s, "seconds_per_edit": per_edit,
        "edits_per_minute": 60.0 / per_edit, "peak_memory_gb": peak,
        "options": {k: str(v) for k, v in options.items()},
    }  # fmt: skip
    if "version" not in options and version != "v1.0":
        # The v1.0-era checkout has no `version`: it runs every DiT file as v1.0 does.
        result["note"] = (
            f"this official checkout takes no version=; ran the {version} weights as v1.0"
        )
    print(OFFICIAL_RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "official":
    _official_child(sys.argv[2:])
