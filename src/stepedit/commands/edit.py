"""`stepedit edit IMAGE "instruction" -o out.png`, or `stepedit edit --batch pairs.jsonl -o dir`.

Everything the user gave is checked before the model is imported or loaded: the images, the
output path and its extension, every parameter (as an `EditRequest`, against the release when
the model source names it), and errors name the flag at fault (`--steps`, not
num_inference_steps).

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
import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, UnidentifiedImageError

from stepedit import regions
from stepedit.errors import InvalidInput, StepEditError
from stepedit.request import (
    MODEL_VERSIONS,
    SIZE_LEVELS,
    VERSIONS,
    CfgRescale,
    EditRequest,
    VersionSpec,
    version_named,
)

if TYPE_CHECKING:
    from stepedit.pipeline import EditOutput, EditPipeline, PipelineProgress

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
CFG_RESCALES: tuple[CfgRescale, ...] = ("official", "every_step", "never")
# EditRequest field -> the flag (or batch column) the user typed, for error messages.
FLAGS = {
    "prompt": "INSTRUCTION",
    "negative_prompt": "--negative-prompt",
    "seed": "--seed",
    "num_inference_steps": "--steps",
    "guidance_scale": "--guidance-scale",
    "size_level": "--size",
    "num_images": "--n",
    "strength": "--strength",
    "output_size": "--output-size",
    "enable_thinking": "--thinking",
    "enable_reflection": "--reflection",
    "enhance_prompt": "--enhance-prompt",
    "cfg_rescale": "--cfg-rescale",
    "model": "--model-version",
    "mask": "--mask",
    "outpaint_padding": "--outpaint",
    "outpaint_aspect_ratio": "--outpaint",
    "preserve_unedited": "--preserve-unedited",
    "preserve_outside_mask": "--preserve-outside-mask",
}
ROW_COLUMNS = {
    "negative_prompt": "negative_prompt",
    "seed": "seed",
    "num_inference_steps": "steps",
    "guidance_scale": "guidance",
    "size_level": "size",
    "num_images": "n",
    "strength": "strength",
}
ROW_KEYS = {"image", "prompt", "instruction", "output", *ROW_COLUMNS.values()}


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
        help="checkpoint directory (either layout), a Hugging Face repo id in the local cache, "
        "or dummy:<preset>, e.g. dummy:tiny-v1.1 (default: $STEPEDIT_MODEL)",
    )
    parser.add_argument(
        "--model-version",
        choices=MODEL_VERSIONS,
        default=None,
        help="the release, when the weights do not say (default: detected)",
    )
    parser.add_argument(  # the older spelling, still accepted
        "--version",
        dest="model_version",
        choices=MODEL_VERSIONS,
        help=argparse.SUPPRESS,
        default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--text-encoder",
        default=os.environ.get("STEPEDIT_TEXT_ENCODER"),
        help="original layout: the Qwen2.5-VL folder or repo id, when not inside the checkpoint",
    )
    parser.add_argument(
        "--download",
        action="store_true",
        help="fetch a hub model missing from the local cache (default: never download)",
    )
    parser.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    parser.add_argument("--steps", type=int, default=28, help="denoising steps (default 28)")
    parser.add_argument(
        "--guidance-scale", dest="guidance", type=float, default=6.0, help="CFG scale (default 6)"
    )
    parser.add_argument(  # the older spelling, still accepted
        "--guidance", type=float, help=argparse.SUPPRESS, default=argparse.SUPPRESS
    )
    parser.add_argument("--negative-prompt", default="", help="what to steer away from")
    parser.add_argument(
        "--size",
        type=int,
        choices=SIZE_LEVELS,
        default=1024,
        help="working size: the image is edited at about SIZE x SIZE pixels, aspect ratio kept "
        "(default 1024)",
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
    parser.add_argument(
        "--cfg-rescale",
        choices=CFG_RESCALES,
        default=None,
        help="when the guidance term is norm-rescaled: 'official' (the release's own code, "
        "default), 'every_step' (the v1.1 diffusers pipeline), 'never' (plain CFG)",
    )
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if any)")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA"
    )
    parser.add_argument(
        "--offload", action="store_true", help="keep models on the CPU until used (24 GB GPUs)"
    )
    parser.add_argument(
        "--optimize",
        default=None,
        metavar="PRESET",
        help='speed switches as for serve: "plain", "exact", "fast", "24gb", or a preset with '
        "+/- switches (docs/performance.md); default: as loaded",
    )
    parser.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="[NAME=]PATH[:SCALE]",
        help="apply a LoRA adapter (official or diffusers format) at SCALE (default 1); "
        "repeatable (docs/lora.md)",
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
    parser.add_argument(
        "--mask",
        metavar="PATH",
        help="edit only where this image is white (grey: partly; a non-opaque alpha channel: "
        "where transparent); the image's size or aspect ratio (docs/regions.md)",
    )
    parser.add_argument(
        "--outpaint",
        metavar="SPEC",
        help="extend the canvas: W:H (e.g. 16:9), LEFT,TOP,RIGHT,BOTTOM pixels or side=pixels "
        "(e.g. right=256); INSTRUCTION may then be left out",
    )
    parser.add_argument(
        "--preserve-outside-mask",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="copy pixels outside the mask (or outpaint area) from the source (default: on)",
    )
    parser.add_argument(
        "--preserve-unedited",
        action="store_true",
        help="without a mask: keep the area the edit does not touch exactly as the source",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


@dataclass(frozen=True)
class Task:
    """One edit of the command line or of a batch row: the request, its image, its files."""

    image: Path
    request: EditRequest
    output: Path  # file for one image; with n > 1, "-i" is added before the suffix
    mask: Path | None = None  # --mask (docs/regions.md)

    def output_paths(self, count: int) -> list[Path]:
        if count == 1:
            return [self.output]
        stem, suffix = self.output.stem, self.output.suffix
        return [self.output.with_name(f"{stem}-{i}{suffix}") for i in range(count)]


def run(args: argparse.Namespace) -> int:
    # 1. Every input, before the model is imported or loaded: the request against the release
    # the checkpoint holds (found from file names, JSON and safetensors headers only).
    try:
        if not args.model:
            raise InvalidInput(
                "no model: pass --model DIR, a hub repo id, or dummy:<preset> "
                "(or set STEPEDIT_MODEL)",
                param="model",
            )
        if args.optimize:
            _check_optimize(args.optimize)
        if getattr(args, "lora", None):
            from stepedit.weights.lora import parse_lora_specs

            parse_lora_specs(args.lora)
        spec = _release(args)
        tasks = _batch_tasks(args, spec) if args.batch else [_single_task(args, spec)]
    except InvalidInput as error:
        _fail(error.message)
        return EXIT_BAD_INPUT
    except StepEditError as error:  # the checkpoint: missing parts, an unknown layout
        _fail(f"could not load {args.model}: {error.message}")
        return EXIT_FAILED

    # 2. The model.
    try:
        pipeline = _load_pipeline(args)
    except InvalidInput as error:  # --optimize asks for what this device cannot run
        _fail(error.message)
        return EXIT_BAD_INPUT
    except StepEditError as error:
        _fail(f"could not load {args.model}: {error.message}")
        return EXIT_FAILED
    except (OSError, ValueError) as error:
        _fail(f"could not load {args.model}: {error}")
        return EXIT_FAILED

    # 3. The edits.
    if not args.batch:
        try:
            output = _run_task(pipeline, tasks[0], args)
        except InvalidInput as error:
            _fail(_flag_message(error))
            return EXIT_BAD_INPUT
        except StepEditError as error:
            _fail(error.message)
            return EXIT_FAILED
        for path, seed in zip(tasks[0].output_paths(len(output.images)), output.seeds, strict=True):
            print(f"{path}\tseed={seed}")
        return EXIT_OK
    return _run_batch(pipeline, tasks, args)


def _fail(message: str) -> None:
    print(f"stepedit edit: error: {message}", file=sys.stderr)


def _flag_message(error: InvalidInput, flags: dict[str, str] = FLAGS) -> str:
    """The error with the request field's name replaced by the flag the user typed."""
    if error.param and error.param in flags and error.message.startswith(f"{error.param}:"):
        return flags[error.param] + error.message[len(error.param) :]
    return error.message


def _release(args: argparse.Namespace) -> VersionSpec | None:
    """The release the model source holds, without loading it: a `dummy:` name says it; a
    checkpoint is resolved (every file found, or one error naming all that are missing). With
    --download the files may not be here yet: then only --model-version tells."""
    named = version_named(args.model_version)
    if args.model.startswith("dummy:"):
        named = named or version_named(args.model)
    elif not args.download:
        from stepedit.weights.checkpoint import resolve_checkpoint

        checkpoint = resolve_checkpoint(
            args.model, version=args.model_version, text_encoder=args.text_encoder
        )
        named = checkpoint.version
    return VERSIONS[named] if named is not None else None


def _check_optimize(mode: str) -> None:
    from stepedit.acceleration.config import parse_mode

    try:
        parse_mode(mode)
    except ValueError as error:
        raise InvalidInput(f"--optimize: {error}", param="optimize") from None


def _checked_request(request: EditRequest, spec: VersionSpec | None) -> EditRequest:
    try:
        return request.validate(spec)
    except InvalidInput as error:
        raise InvalidInput(_flag_message(error), param=error.param) from None


def _check_image(path: Path) -> None:
    """The file exists and Pillow can read its pixels (a truncated file fails here too)."""
    if not path.is_file():
        raise InvalidInput(f"image not found: {path}", param="image")
    try:
        with Image.open(path) as image:
            image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise InvalidInput(f"not a readable image: {path} ({error})", param="image") from None


def _check_output_file(path: Path) -> None:
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise InvalidInput(f"-o must end in {', '.join(OUTPUT_SUFFIXES)}: {path}", param="output")
    _check_writable_folder(path.parent)


def _check_writable_folder(folder: Path) -> None:
    """The folder exists and is writable, or can be created."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidInput(f"cannot write to {folder}", param="output")


def _request_from_args(args: argparse.Namespace, prompt: str) -> EditRequest:
    return EditRequest(
        prompt=prompt,
        negative_prompt=args.negative_prompt,
        seed=args.seed,
        guidance_scale=args.guidance,
        num_inference_steps=args.steps,
        size_level=args.size,
        output_size=args.output_size,
        num_images=args.n,
        strength=args.strength,
        enable_thinking=args.thinking,
        enable_reflection=args.reflection,
        enhance_prompt=args.enhance_prompt,
        cfg_rescale=args.cfg_rescale,
        model=args.model_version,
        preserve_outside_mask=args.preserve_outside_mask,
        preserve_unedited=args.preserve_unedited,
        **_outpaint_fields(args.outpaint),
    )


def _outpaint_fields(spec: str | None) -> dict[str, Any]:
    if spec is None:
        return {}
    try:
        return dict(regions.parse_outpaint(spec))
    except InvalidInput as error:
        raise InvalidInput(_flag_message(error), param=error.param) from None


def _check_area(task: Task) -> None:
    """The mask and the outpaint geometry against the image, before any model loads."""
    with Image.open(task.image) as image:
        size = image.size
    try:
        regions.canvas_size(size, task.request)
        if task.mask is not None:
            if task.request.is_outpaint:
                raise InvalidInput("mask: outpaint makes its own mask", param="mask")
            regions.check_mask(_open_mask(task.mask), size)
    except InvalidInput as error:
        raise InvalidInput(_flag_message(error), param=error.param) from None


def _single_task(args: argparse.Namespace, spec: VersionSpec | None) -> Task:
    if args.image is None or (args.instruction is None and args.outpaint is None):
        raise InvalidInput("give IMAGE and INSTRUCTION, or --batch FILE")
    request = _checked_request(_request_from_args(args, args.instruction or ""), spec)
    mask = Path(args.mask) if args.mask else None
    task = Task(Path(args.image), request, Path(args.output), mask)
    _check_image(task.image)
    _check_output_file(task.output)
    _check_area(task)
    return task


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


def _row_task(
    row: dict[str, Any], index: int, base: Path, args: argparse.Namespace, spec: VersionSpec | None
) -> Task:
    unknown = set(row) - ROW_KEYS
    if unknown:
        raise InvalidInput(f"unknown column(s) {sorted(unknown)}", param="batch")
    prompt = row.get("prompt", row.get("instruction"))
    if "image" not in row or not prompt:
        raise InvalidInput("each row needs 'image' and 'prompt' (or 'instruction')", param="batch")
    image = Path(str(row["image"]))
    if not image.is_absolute():
        image = base / image
    defaults = _request_from_args(args, str(prompt))
    overrides = {}
    for field_name, column in ROW_COLUMNS.items():
        if column in row:
            overrides[field_name] = _row_value(
                row[column], column, type(getattr(defaults, field_name))
            )
    if overrides.get("size_level", args.size) not in SIZE_LEVELS:
        raise InvalidInput(f"size must be one of {', '.join(map(str, SIZE_LEVELS))}", param="size")
    try:
        request = dataclasses.replace(defaults, **overrides).validate(spec)
    except InvalidInput as error:
        raise InvalidInput(
            _flag_message(error, {**FLAGS, **ROW_COLUMNS}), param=error.param
        ) from None
    name = str(row.get("output") or f"{index:04d}-{image.stem}.png")
    task = Task(image, request, Path(args.output) / name)
    _check_image(task.image)
    if task.output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise InvalidInput(
            f"output must end in {', '.join(OUTPUT_SUFFIXES)}: {name}", param="output"
        )
    return task


def _row_value(value: Any, column: str, kind: type) -> Any:
    """A batch cell as the field's type (CSV cells are text); None stays None (seed)."""
    if kind is str:
        return str(value)
    if kind is type(None) or column == "seed":
        kind = int
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{column} must be a number, got {value!r}", param=column) from None


def _batch_tasks(args: argparse.Namespace, spec: VersionSpec | None) -> list[Task]:
    if args.image is not None:
        raise InvalidInput("give either IMAGE INSTRUCTION or --batch FILE, not both")
    if args.mask is not None:
        raise InvalidInput("--mask edits one image; it cannot be used with --batch", param="mask")
    path = Path(args.batch)
    rows = read_rows(path)
    if not rows:
        raise InvalidInput(f"batch file {path} has no rows", param="batch")
    _check_writable_folder(Path(args.output))
    tasks = []
    for index, row in enumerate(rows):
        try:
            tasks.append(_row_task(row, index, path.parent, args, spec))
        except InvalidInput as error:
            raise InvalidInput(f"{path} row {index + 1}: {error.message}", param="batch") from None
    return tasks


def _load_pipeline(args: argparse.Namespace) -> EditPipeline:
    import torch

    from stepedit.pipeline import EditPipeline

    dtype = getattr(torch, DTYPES[args.dtype]) if args.dtype else None
    from stepedit.acceleration.config import plan_optimizations
    from stepedit.pipeline import default_device

    device = torch.device(args.device) if args.device else default_device()
    # --offload alone on CUDA means the 24gb plan; --optimize 24gb loads on the host by itself.
    plan = plan_optimizations(args.optimize, offload=args.offload, device_type=device.type)
    pipeline = EditPipeline.from_pretrained(
        args.model,
        device=device,
        dtype=dtype,
        offload=plan.load_on_host,
        version=args.model_version,
        text_encoder=args.text_encoder or None,
        download=args.download,
    )
    if plan.config is not None:
        from stepedit.acceleration import AccelerationUnavailable, apply_optimizations

        try:
            applied = apply_optimizations(pipeline, plan.config)
        except AccelerationUnavailable as error:
            raise InvalidInput(f"--optimize {plan.mode}: {error}", param="optimize") from None
        logger.info("speed switches (%s): %s", plan.mode, applied.summary())
    if getattr(args, "lora", None):  # after the switches: merged into plain weights, else paths
        from stepedit.weights.lora import load_loras, parse_lora_specs

        load_loras(pipeline, parse_lora_specs(args.lora))
    return pipeline


def _open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise InvalidInput(f"image not found: {path}", param="image") from None
    except (UnidentifiedImageError, OSError) as error:
        raise InvalidInput(f"not a readable image: {path} ({error})", param="image") from None


def _open_mask(path: Path) -> Image.Image:
    """The mask file as Pillow reads it (no EXIF rotation, as for the image), its pixel count
    checked before it is decoded."""
    if not path.is_file():
        raise InvalidInput(f"mask: not found: {path}", param="mask")
    try:
        with Image.open(path) as mask:
            if mask.width * mask.height > regions.MAX_MASK_PIXELS:
                raise InvalidInput(
                    f"mask: {path} has too many pixels (limit {regions.MAX_MASK_PIXELS})",
                    param="mask",
                )
            mask.load()
            return mask.copy()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise InvalidInput(f"mask: not a readable image: {path} ({error})", param="mask") from None


def _run_task(pipeline: EditPipeline, task: Task, args: argparse.Namespace) -> EditOutput:
    from tqdm import tqdm

    image = _open_image(task.image)
    steps = task.request.num_inference_steps
    with tqdm(total=steps, desc=task.image.name, unit="step", disable=args.no_progress) as bar:

        def on_progress(update: PipelineProgress) -> None:
            if update.stage == "denoise":
                bar.total = update.total_steps
                bar.n = update.step
                bar.refresh()

        mask = None if task.mask is None else _open_mask(task.mask)
        output = pipeline(image, task.request, mask=mask, callback=on_progress)
    if output.prompt != task.request.prompt:
        logger.info("%s: edited with the instruction %r", task.image.name, output.prompt)
    task.output.parent.mkdir(parents=True, exist_ok=True)
    for path, result in zip(task.output_paths(len(output.images)), output.images, strict=True):
        result.save(path)
    return output


def _run_batch(pipeline: EditPipeline, tasks: list[Task], args: argparse.Namespace) -> int:
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    with (out_dir / "results.jsonl").open("w", encoding="utf-8") as results:
        for index, task in enumerate(tasks):
            record: dict[str, Any] = {
                "row": index,
                "image": str(task.image),
                "prompt": task.request.prompt,
            }
            try:
                output = _run_task(pipeline, task, args)
            except StepEditError as error:
                failures += 1
                record["error"] = {"code": error.code, "message": error.message}
                _fail(f"row {index + 1}: {error.message}")
            else:
                paths = task.output_paths(len(output.images))
                record.update(
                    outputs=[str(path) for path in paths],
                    seeds=output.seeds,
                    width=output.width,
                    height=output.height,
                    timings={k: round(v, 3) for k, v in output.timings.items()},
                )
            results.write(json.dumps(record) + "\n")
            results.flush()
    print(f"{len(tasks) - failures}/{len(tasks)} rows done; results in {out_dir / 'results.jsonl'}")
    return EXIT_OK if failures == 0 else EXIT_FAILED
