"""The files the driver and the reference runner exchange (imported on both sides).

A job is a folder: `job.json` says which reference to run and which checks; `inputs.safetensors`
holds the input tensors, `source.png` the source image; the runner writes
`outputs.safetensors` (tensors named `<check>/<field>`) and `outputs.json` (everything that is not
a tensor: control-flow traces, counts, the reference's commit).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

JOB_FILE = "job.json"
INPUTS_FILE = "inputs.safetensors"
SOURCE_IMAGE_FILE = "source.png"
OUTPUTS_FILE = "outputs.safetensors"
OUTPUTS_JSON_FILE = "outputs.json"


@dataclass
class Job:
    target: str  # "official-v10", "official-v11", "diffusers-v11", "diffusers-v12"
    family: str  # "official" or "diffusers"
    version: str  # "v1.0", "v1.1", "v1.2"
    ref_dir: str  # the reference checkout
    checkpoint: str  # the tiny checkpoint written for this target
    checks: list[str]
    params: dict[str, Any] = field(default_factory=dict)


def write_job(folder: Path, job: Job) -> None:
    (folder / JOB_FILE).write_text(json.dumps(asdict(job), indent=2) + "\n")


def read_job(folder: Path) -> Job:
    return Job(**json.loads((folder / JOB_FILE).read_text()))


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path)) if path.exists() else {}


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}
