"""`stepedit edit IMAGE "instruction" -o out.png`, or `stepedit edit --batch pairs.jsonl -o dir`.

Batch files: JSONL (one object per line) or CSV (a header row). Each row needs `image` (a path,
relative to the batch file's folder) and `prompt` (or `instruction`); it may set `negative_prompt`,
`seed`, `steps`, `guidance`, `size`, `n`, `strength` and `output` (a file name) to override the
command-line values. Every output image is written to the output folder and each row's result
(files, seeds, timings, or its error) to `results.jsonl` there.

Exit codes: 0 done; 1 the model could not be loaded or a run failed (in batch mode: some row
failed); 2 bad input (a missing image, an out-of-range parameter, a malformed batch file).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stepedit.errors import InvalidInput, StepEditError

if TYPE_CHECKING:
    from PIL import Image

    from stepedit.pipeline import EditOutput, EditPipeline, PipelineProgress

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
ROW_KEYS = {
    "image",
    "prompt",
    "instruction",
    "negative_prompt",
    "seed",
    "steps",
    "guidance",
    "size",
    "n",
    "strength",
    "output",
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "edit",
        help="edit an image (or a batch of images) with an instruction",
        description=(
            "Edit IMAGE following INSTRUCTION and write the result to -o. With --batch, edit "
            "every (image, instruction) row of a JSONL or CSV file into the -o folder."
        ),
    )
    parser.add_argument("image", nargs="?", help="source image (jpg, png, webp, ...)")
    parser.add_argument("instruction", nargs="?", help="what to change, in words")
    parser.add_argument("-o", "--output", required=True, help="output file (folder with --batch)")
    parser.add_argument("--batch", metavar="FILE", help="JSONL or CSV of image/prompt rows")
    parser.add_argument(
        "--model",
        default=os.environ.get("STEPEDIT_MODEL"),
        help="checkpoint directory (either layout) or dummy:<preset>, e.g. dummy:tiny-v1.1 "
        "(default: $STEPEDIT_MODEL)",
    )
    parser.add_argument("--version", choices=["v1.0", "v1.1", "v1.2"], default=None)
    parser.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    parser.add_argument("--steps", type=int, default=28, help="denoising steps (default 28)")
    parser.add_argument("--guidance", type=float, default=6.0, help="CFG scale (default 6)")
    parser.add_argument("--negative-prompt", default="", help="what to steer away from")
    parser.add_argument(
        "--size",
        default="1024",
        help="working size level: 512, 768 or 1024 (or '768x768'); aspect ratio is kept",
    )
    parser.add_argument("--n", type=int, default=1, help="images per edit, 1-4 (seeds s..s+n-1)")
    parser.add_argument(
        "--strength", type=float, default=1.0, help="1 = from noise; < 1 starts from the source"
    )
    parser.add_argument(
        "--output-size",
        choices=["input", "working"],
        default="input",
        help="'input': resize back to the source size (reference); 'working': model size",
    )
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if any)")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA"
    )
    parser.add_argument(
        "--offload", action="store_true", help="keep models on the CPU until used (24 GB GPUs)"
    )
    parser.add_argument(
        "--enhance-prompt",
        action="store_true",
        help="let the MLLM rewrite the instruction into a specific one first (any version)",
    )
    parser.add_argument(
        "--thinking",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="v1.2 thinking pass (default: on for v1.2)",
    )
    parser.add_argument(
        "--reflection",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="v1.2 reflection rounds (default: on for v1.2)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


@dataclass(frozen=True)
class EditJob:
    image: Path
    prompt: str
    output: Path  # file for one image; with n > 1, "-i" is added before the suffix
    negative_prompt: str
    seed: int | None
    steps: int
    guidance: float
    size_level: int
    num_images: int
    strength: float


def run(args: argparse.Namespace) -> int:
    try:
        jobs = _batch_jobs(args) if args.batch else [_single_job(args)]
        if not args.batch:
            _validate(jobs[0])
    except InvalidInput as error:
        _fail(error.message)
        return EXIT_BAD_INPUT
    if not args.model:
        _fail("no model: pass --model DIR (or dummy:<preset>) or set STEPEDIT_MODEL")
        return EXIT_BAD_INPUT

    try:
        pipeline = _load_pipeline(args)
    except StepEditError as error:
        _fail(f"could not load {args.model}: {error.message}")
        return EXIT_FAILED
    except (OSError, ValueError) as error:
        _fail(f"could not load {args.model}: {error}")
        return EXIT_FAILED

    if not args.batch:
        try:
            output = _run_job(pipeline, jobs[0], args)
        except InvalidInput as error:
            _fail(error.message)
            return EXIT_BAD_INPUT
        except StepEditError as error:
            _fail(error.message)
            return EXIT_FAILED
        paths = _output_paths(jobs[0], len(output.images))
        for path, seed in zip(paths, output.seeds, strict=True):
            print(f"{path}\tseed={seed}")
        return EXIT_OK
    return _run_batch(pipeline, jobs, args)


def _validate(job: EditJob) -> None:
    """Range checks before any model is loaded (the pipeline repeats them)."""
    from stepedit.pipeline import check_edit_params

    if not job.image.is_file():
        raise InvalidInput(f"image not found: {job.image}", param="image")
    check_edit_params(
        job.prompt,
        negative_prompt=job.negative_prompt,
        num_inference_steps=job.steps,
        guidance_scale=job.guidance,
        seed=job.seed,
        num_images=job.num_images,
        size_level=job.size_level,
        strength=job.strength,
    )


def _fail(message: str) -> None:
    print(f"stepedit edit: error: {message}", file=sys.stderr)


def _load_pipeline(args: argparse.Namespace) -> EditPipeline:
    import torch

    from stepedit.pipeline import EditPipeline

    dtype = getattr(torch, DTYPES[args.dtype]) if args.dtype else None
    return EditPipeline.from_pretrained(
        args.model, device=args.device, dtype=dtype, offload=args.offload, version=args.version
    )


def _size_level(value: object) -> int:
    from stepedit.images import size_level_from_size

    if isinstance(value, int | str):
        return size_level_from_size(value)
    raise InvalidInput(f"size must be a number or 'NxN', got {value!r}", param="size")


def _single_job(args: argparse.Namespace) -> EditJob:
    if args.image is None or args.instruction is None:
        raise InvalidInput("give IMAGE and INSTRUCTION, or --batch FILE")
    return EditJob(
        image=Path(args.image),
        prompt=args.instruction,
        output=Path(args.output),
        negative_prompt=args.negative_prompt,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        size_level=_size_level(args.size),
        num_images=args.n,
        strength=args.strength,
    )


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL or CSV batch file (CSV: by header; empty cells are left out)."""
    if not path.is_file():
        raise InvalidInput(f"batch file not found: {path}", param="batch")
    text = path.read_text(encoding="utf-8")
    rows: list[dict[str, Any]] = []
    if path.suffix.lower() == ".csv":
        for row in csv.DictReader(text.splitlines()):
            rows.append({k.strip(): v for k, v in row.items() if k and v not in (None, "")})
        return rows
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise InvalidInput(f"{path}:{number}: not JSON ({error.msg})", param="batch") from None
        if not isinstance(row, dict):
            raise InvalidInput(f"{path}:{number}: expected a JSON object", param="batch")
        rows.append(row)
    return rows


def _row_job(row: dict[str, Any], index: int, base: Path, args: argparse.Namespace) -> EditJob:
    unknown = set(row) - ROW_KEYS
    if unknown:
        raise InvalidInput(f"unknown column(s) {sorted(unknown)}", param="batch")
    prompt = row.get("prompt", row.get("instruction"))
    if "image" not in row or not prompt:
        raise InvalidInput("each row needs 'image' and 'prompt' (or 'instruction')", param="batch")
    image = Path(str(row["image"]))
    if not image.is_absolute():
        image = base / image

    def number(key: str, kind: type, default: Any) -> Any:
        if key not in row:
            return default
        try:
            return kind(row[key])
        except (TypeError, ValueError):
            raise InvalidInput(f"{key} must be a number, got {row[key]!r}", param=key) from None

    name = str(row.get("output") or f"{index:04d}-{image.stem}.png")
    return EditJob(
        image=image,
        prompt=str(prompt),
        output=Path(args.output) / name,
        negative_prompt=str(row.get("negative_prompt", args.negative_prompt)),
        seed=number("seed", int, args.seed),
        steps=number("steps", int, args.steps),
        guidance=number("guidance", float, args.guidance),
        size_level=_size_level(row.get("size", args.size)),
        num_images=number("n", int, args.n),
        strength=number("strength", float, args.strength),
    )


def _batch_jobs(args: argparse.Namespace) -> list[EditJob]:
    if args.image is not None:
        raise InvalidInput("give either IMAGE INSTRUCTION or --batch FILE, not both")
    path = Path(args.batch)
    rows = read_rows(path)
    if not rows:
        raise InvalidInput(f"batch file {path} has no rows", param="batch")
    jobs = []
    for index, row in enumerate(rows):
        try:
            job = _row_job(row, index, path.parent, args)
            _validate(job)
            jobs.append(job)
        except InvalidInput as error:
            raise InvalidInput(f"{path} row {index + 1}: {error.message}", param="batch") from None
    return jobs


def _open_image(path: Path) -> Image.Image:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise InvalidInput(f"image not found: {path}", param="image") from None
    except (UnidentifiedImageError, OSError) as error:
        raise InvalidInput(f"not a readable image: {path} ({error})", param="image") from None


def _output_paths(job: EditJob, count: int) -> list[Path]:
    if count == 1:
        return [job.output]
    return [job.output.with_name(f"{job.output.stem}-{i}{job.output.suffix}") for i in range(count)]


def _run_job(pipeline: EditPipeline, job: EditJob, args: argparse.Namespace) -> EditOutput:
    from tqdm import tqdm

    image = _open_image(job.image)
    if job.output.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise InvalidInput(f"output must end in .png, .jpg or .webp: {job.output}", param="output")
    with tqdm(
        total=job.steps, desc=job.image.name, unit="step", disable=args.no_progress
    ) as progress:

        def on_progress(update: PipelineProgress) -> None:
            if update.stage == "denoise":
                progress.total = update.total_steps
                progress.n = update.step
                progress.refresh()

        output = pipeline(
            image,
            job.prompt,
            negative_prompt=job.negative_prompt,
            num_inference_steps=job.steps,
            guidance_scale=job.guidance,
            seed=job.seed,
            num_images=job.num_images,
            size_level=job.size_level,
            strength=job.strength,
            output_size=args.output_size,
            enhance_prompt=args.enhance_prompt,
            enable_thinking=args.thinking,
            enable_reflection=args.reflection,
            callback=on_progress,
        )
    if output.prompt != job.prompt:
        logger.info("%s: edited with the instruction %r", job.image.name, output.prompt)
    job.output.parent.mkdir(parents=True, exist_ok=True)
    for path, result in zip(_output_paths(job, len(output.images)), output.images, strict=True):
        result.save(path)
    return output


def _run_batch(pipeline: EditPipeline, jobs: list[EditJob], args: argparse.Namespace) -> int:
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    with (out_dir / "results.jsonl").open("w", encoding="utf-8") as results:
        for index, job in enumerate(jobs):
            record: dict[str, Any] = {"row": index, "image": str(job.image), "prompt": job.prompt}
            try:
                output = _run_job(pipeline, job, args)
            except StepEditError as error:
                failures += 1
                record["error"] = {"code": error.code, "message": error.message}
                _fail(f"row {index + 1}: {error.message}")
            else:
                paths = _output_paths(job, len(output.images))
                record.update(
                    outputs=[str(path) for path in paths],
                    seeds=output.seeds,
                    width=output.width,
                    height=output.height,
                    timings={k: round(v, 3) for k, v in output.timings.items()},
                )
            results.write(json.dumps(record) + "\n")
            results.flush()
    print(f"{len(jobs) - failures}/{len(jobs)} rows done; results in {out_dir / 'results.jsonl'}")
    return EXIT_OK if failures == 0 else EXIT_FAILED
