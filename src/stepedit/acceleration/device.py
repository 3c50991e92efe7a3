"""Pick the compute device, and refuse to fall back to the CPU when a GPU is there but unusable.

A CUDA build of PyTorch needs an NVIDIA driver at least as new as its CUDA runtime (13.x: driver
580 or newer; 12.x: 525 or newer, through CUDA's minor-version compatibility). On an older driver
`torch.cuda.is_available()` is simply False, and code that picks "cuda if available else cpu"
would run a 12 B-parameter model on the CPU in float32, taking hours per edit, with nothing in
the log but one PyTorch warning. `default_device()` raises `DeviceUnavailable` instead, saying
what to install; an explicit `device="cpu"` still runs on the CPU.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# The oldest driver each CUDA major version runs on (NVIDIA's CUDA compatibility tables:
# minor-version compatibility within a major version, the .0 release's minimum).
MIN_DRIVER = {11: (450, 80), 12: (525, 60), 13: (580, 65)}
NVIDIA_PROC = Path("/proc/driver/nvidia/version")


class DeviceUnavailable(RuntimeError):
    """A GPU is present but this PyTorch cannot use it; the message says what to install."""


@dataclass(frozen=True)
class GpuProbe:
    """What the machine says about NVIDIA GPUs, read without CUDA."""

    has_gpu: bool
    driver: str | None  # e.g. "570.124.06"

    @property
    def driver_version(self) -> tuple[int, int] | None:
        if self.driver is None:
            return None
        match = re.match(r"(\d+)\.(\d+)", self.driver)
        return (int(match.group(1)), int(match.group(2))) if match else None


def probe_gpu(proc_file: Path = NVIDIA_PROC, dev_dir: Path = Path("/dev")) -> GpuProbe:
    """An NVIDIA GPU and its driver version, from the kernel module or nvidia-smi."""
    driver = None
    if proc_file.exists():
        match = re.search(
            r"Kernel Module\s+(?:for \S+\s+)?(\d+\.\d+(?:\.\d+)?)", proc_file.read_text()
        )
        driver = match.group(1) if match else None
    if driver is None and shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            )
            driver = out.stdout.strip().splitlines()[0] or None
        except (OSError, subprocess.SubprocessError, IndexError):
            driver = None
    has_gpu = driver is not None or (dev_dir / "nvidia0").exists()
    return GpuProbe(has_gpu=has_gpu, driver=driver)


def cuda_problem(probe: GpuProbe | None = None, cuda_runtime: str | None = None) -> str | None:
    """Why this PyTorch cannot use the machine's NVIDIA GPU, or None (usable, or no GPU).

    `cuda_runtime` is the build's CUDA version (`torch.version.cuda`, None for a CPU build).
    """
    if torch.cuda.is_available():
        return None
    probe = probe if probe is not None else probe_gpu()
    if not probe.has_gpu:
        return None
    runtime = cuda_runtime if cuda_runtime is not None else torch.version.cuda
    if runtime is None:
        return (
            f"an NVIDIA GPU is present (driver {probe.driver or 'unknown'}) but this PyTorch "
            f"({torch.__version__}) is a CPU build: install the CUDA build into this environment "
            "(on Linux, `pip install --force-reinstall torch` from PyPI is a CUDA build; "
            "scripts/setup-env does this on a machine with nvidia-smi)"
        )
    major = int(runtime.split(".")[0])
    need = MIN_DRIVER.get(major)
    have = probe.driver_version
    if need is not None and have is not None and have < need:
        return (
            f"this PyTorch ({torch.__version__}) is built for CUDA {runtime}, which needs NVIDIA "
            f"driver {need[0]}.{need[1]} or newer; this machine has {probe.driver}. Upgrade the "
            f"driver, or install a PyTorch built for the CUDA version the driver supports "
            f"(`nvidia-smi` shows it top right), e.g. from the PyTorch index for that CUDA"
        )
    return (
        f"an NVIDIA GPU is present (driver {probe.driver or 'unknown'}) but PyTorch "
        f"{torch.__version__} (CUDA {runtime}) cannot initialise it: check `nvidia-smi`, "
        "CUDA_VISIBLE_DEVICES and the driver's kernel module"
    )


def default_device() -> torch.device:
    """CUDA when usable; the CPU only on a machine without an NVIDIA GPU (or when the
    environment says STEPEDIT_ALLOW_CPU=1), never silently instead of a present GPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    problem = cuda_problem()
    if problem is not None:
        if os.environ.get("STEPEDIT_ALLOW_CPU") == "1":
            logger.warning("running on the CPU (STEPEDIT_ALLOW_CPU=1): %s", problem)
        else:
            raise DeviceUnavailable(
                problem + " (to run on the CPU anyway, pass --device cpu or set "
                "STEPEDIT_ALLOW_CPU=1)"
            )
    return torch.device("cpu")


def check_device(device: torch.device) -> None:
    """Raise DeviceUnavailable with the reason when `device` is CUDA and CUDA is unusable."""
    if device.type != "cuda" or torch.cuda.is_available():
        return
    problem = cuda_problem() or (
        f"this PyTorch ({torch.__version__}) sees no CUDA device and no NVIDIA GPU was found"
    )
    raise DeviceUnavailable(f"device {device} requested: {problem}")
