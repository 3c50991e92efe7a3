"""Entry point of the reference side, run with the reference venv's python by run.py.

    python reference_runner.py JOB_DIR          run the job's checks, write its outputs
    python reference_runner.py check-import DIR  import a reference checkout (setup check)
    python reference_runner.py save-processor SRC DST MIN_PIXELS MAX_PIXELS
        save Qwen's processor as the fork's conversion script does

One process per job, so each reference checkout is imported alone.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any

import torch
from PIL import Image

import exchange


def _runner_for(job: exchange.Job) -> Any:
    if job.family == "official":
        from reference_official import Official

        return Official(job)
    from reference_diffusers import Diffusers

    return Diffusers(job)


def run_job(folder: Path) -> None:
    job = exchange.read_job(folder)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    inputs = exchange.read_tensors(folder / exchange.INPUTS_FILE)
    source = Image.open(folder / exchange.SOURCE_IMAGE_FILE).convert("RGB")
    runner = _runner_for(job)
    tensors: dict[str, torch.Tensor] = {}
    info: dict[str, Any] = {}
    for check in job.checks:
        try:
            out, meta = runner.run(check, inputs, source)
        except Exception as exc:  # reported per check; the other checks still run
            info[check] = {"error": f"{type(exc).__name__}: {exc}"}
            traceback.print_exc()
            continue
        tensors.update(
            {f"{check}/{k}": v.float() if v.is_floating_point() else v for k, v in out.items()}
        )
        info[check] = meta
        print(f"reference {job.target}: {check} done", flush=True)
    exchange.write_tensors(folder / exchange.OUTPUTS_FILE, tensors)
    (folder / exchange.OUTPUTS_JSON_FILE).write_text(json.dumps(info, indent=2) + "\n")


def check_import(directory: Path) -> None:
    """Import a checkout the way a job would (official repo or diffusers branch)."""
    import reference_patches as patches

    if (directory / "src" / "diffusers").is_dir():
        sys.path.insert(0, str(directory / "src"))
        import diffusers

        print(f"ok: diffusers {diffusers.__version__} from {directory}")
        return
    sys.path.insert(0, str(directory))
    patches.stub_gpu_only_imports()
    import inference

    print(f"ok: official Step1X-Edit inference.py from {directory} ({inference.__name__})")


def save_processor(source: Path, destination: Path, min_pixels: int, max_pixels: int) -> None:
    """scripts/convert_step1x_edit_to_diffusers.py of the fork writes the diffusers layout's
    processor folder as `AutoProcessor.from_pretrained(qwen, min_pixels=..., max_pixels=...)
    .save_pretrained(...)`; this does the same with the reference venv's transformers."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(
        str(source), min_pixels=min_pixels, max_pixels=max_pixels
    )
    processor.save_pretrained(str(destination))


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "check-import":
        check_import(Path(argv[2]))
        return 0
    if len(argv) == 6 and argv[1] == "save-processor":
        save_processor(Path(argv[2]), Path(argv[3]), int(argv[4]), int(argv[5]))
        return 0
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    run_job(Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
