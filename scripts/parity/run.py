"""Reference-parity harness: stepedit against the Step1X-Edit reference code, on tiny models.

    python scripts/parity/run.py --official-v10 DIR --official-v11 DIR \\
        --diffusers-v11 DIR --diffusers-v12 DIR [--only NAME ...] [--steps N] [--size N]

Run with stepedit's venv; each reference runs in the reference venv (--ref-python) in its own
process. Prints one table (check, reference commit, max|diff|, result) and exits 1 when any
check fails. See scripts/parity/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

import exchange
import fixtures
import stepedit_side
from mllm_script import SCENARIOS, Scenario, scenario_named
from report import Result, compare_tensors, compare_values, failure, format_table
from stepedit.reasoning import DEVIATIONS

HERE = Path(__file__).resolve().parent
DEFAULT_REF_PYTHON = Path("/work/scratch/refvenv/bin/python")
PROMPT = 'Put a red hat on the cat and write "Hi 5" on the wall'
SOURCE_SIZE = (160, 96)  # non-square, smaller than the working size
V11_DIFFUSERS_SIZE = 1024  # Step1XEditPipeline hard-codes its working size level
COMMON_CHECKS = ("dit", "vae_encode", "vae_decode", "encoder")
EDIT_CHECKS = ("edit_latents", "edit_seed")
LORA_SCALE = 1.0  # the official --lora path merges at multiplier 1.0


@dataclass(frozen=True)
class Target:
    name: str
    family: str  # "official" or "diffusers"
    version: str
    layout: str  # the checkpoint layout stepedit loads
    cfg_rescale: str | None  # stepedit's setting that matches this reference

    def checks(self) -> list[str]:
        checks = [*COMMON_CHECKS, *EDIT_CHECKS, "lora"]
        if self.version != "v1.2":
            checks.insert(0, "tokenizer")
        if self.version == "v1.2":
            checks += [f"reasoning:{s.name}" for s in SCENARIOS]
        return checks


TARGETS = (
    Target("official-v10", "official", "v1.0", "original", "official"),
    Target("official-v11", "official", "v1.1", "original", "official"),
    # The v1.1 diffusers pipeline compares 0..1000 timesteps with 0.93: every step rescaled.
    Target("diffusers-v11", "diffusers", "v1.1", "diffusers", "every_step"),
    Target("diffusers-v12", "diffusers", "v1.2", "diffusers", None),
)


# ----------------------------------------------------------------- command line


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for target in TARGETS:
        parser.add_argument(f"--{target.name}", type=Path, metavar="DIR", help="checkout")
    parser.add_argument(
        "--commit",
        action="append",
        default=[],
        metavar="TARGET=LABEL",
        help="commit label for a checkout that is not a git work tree",
    )
    parser.add_argument(
        "--only", nargs="+", default=[], metavar="NAME", help="targets or checks to run"
    )
    parser.add_argument("--steps", type=int, default=2, help="denoising steps (default 2)")
    parser.add_argument("--size", type=int, default=256, help="size level (default 256)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--ref-python", type=Path, default=DEFAULT_REF_PYTHON)
    parser.add_argument("--workdir", type=Path, help="keep checkpoints and jobs here")
    return parser.parse_args(argv)


def is_selected(only: list[str], target: Target, check: str) -> bool:
    if not only:
        return True
    base = check.split("[")[0].split(":")[0]
    names = {target.name, check, base, f"{target.name}:{check}", f"{target.name}:{base}"}
    return any(token in names for token in only)


def commit_of(directory: Path, labels: dict[str, str], target: str) -> str:
    if target in labels:
        return labels[target]
    found = subprocess.run(
        ["git", "-C", str(directory), "rev-parse", "--short=8", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip() if found.returncode == 0 else "unknown"


# ----------------------------------------------------------------- one target


@dataclass
class Context:
    target: Target
    ref_dir: Path
    commit: str
    checkpoint: Path
    params: dict[str, Any]
    source: Image.Image
    inputs: dict[str, torch.Tensor]


def edit_params(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    size = V11_DIFFUSERS_SIZE if target.name == "diffusers-v11" else args.size
    return {
        "prompt": PROMPT,
        "negative_prompt": "",
        "seed": args.seed,
        "steps": args.steps,
        "guidance_scale": 6.0,
        "size_level": size,
        "cfg_rescale": target.cfg_rescale,
        "dit": stepedit_side.dit_hyperparameters(target.version),
        "ae": stepedit_side.ae_hyperparameters(),
        "dit_file": _dit_file(target.version),
        "vae_file": "vae.safetensors",
        "qwen_folder": fixtures.QWEN_FOLDER,
    }


def _dit_file(version: str) -> str:
    return {
        "v1.0": "step1x-edit-i1258.safetensors",
        "v1.1": "step1x-edit-v1p1-official.safetensors",
        "v1.2": "step1x-edit-v1p2.safetensors",
    }[version]


def prepare(
    target: Target, ref_dir: Path, commit: str, args: argparse.Namespace, workdir: Path
) -> Context:
    tokenizer = fixtures.build_tokenizer(workdir / "cache")
    save_processor = None
    if target.layout == "diffusers":
        save_processor = _reference_processor_saver(args.ref_python)
    checkpoint = fixtures.write_checkpoint(
        target.version,
        target.layout,
        workdir / f"checkpoint-{target.name}",
        tokenizer,
        save_processor,
    )
    params = edit_params(target, args)
    dit_weights = checkpoint / params["dit_file"]
    if target.layout == "diffusers":
        dit_weights = checkpoint / "transformer" / "diffusion_pytorch_model.safetensors"
    lora = fixtures.write_lora(
        target.layout, dit_weights, workdir / f"lora-{target.name}.safetensors"
    )
    params["lora_file"] = str(lora)
    source = fixtures.source_image(*SOURCE_SIZE)
    inputs = {**fixtures.dit_inputs(target.version, params["dit"]), **fixtures.vae_inputs()}
    return Context(target, ref_dir, commit, checkpoint, params, source, inputs)


def _reference_processor_saver(ref_python: Path) -> Callable[[Path, Path], None]:
    """The diffusers layout's processor folder as the fork's conversion script writes it."""

    def save(source: Path, destination: Path) -> None:
        pixels = (str(256 * 28 * 28), str(324 * 28 * 28))
        command = [str(ref_python), str(HERE / "reference_runner.py"), "save-processor"]
        subprocess.run([*command, str(source), str(destination), *pixels], check=True)

    return save


def run_stepedit(context: Context, checks: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Our outputs per check (tensors dict, or (tensors, trace) for reasoning); errors aside."""
    pipe = stepedit_side.load(context.checkpoint)
    print(f"stepedit: {stepedit_side.describe(pipe)}", flush=True)
    working = stepedit_side.working_image(pipe, context.source, context.params["size_level"])
    context.inputs["encoder/working"] = torch.from_numpy(fixtures.to_uint8(working))
    context.inputs["edit/latents"] = fixtures.start_latents(*working.size)
    ours: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for check in checks:
        name = check
        if name in ours:
            ours[check] = ours[name]
            continue
        if name in errors:
            errors[check] = errors[name]
            continue
        try:
            ours[check] = _stepedit_check(pipe, context, name, working)
        except Exception as exc:
            traceback.print_exc()
            errors[check] = f"{type(exc).__name__}: {exc}"
        print(f"stepedit {context.target.name}: {check} done", flush=True)
    return ours, errors


def _stepedit_check(pipe: Any, context: Context, check: str, working: Image.Image) -> Any:
    params, inputs = context.params, context.inputs
    if check == "tokenizer":
        return {"prefix_tokens": stepedit_side.prefix_tokens(pipe)}
    if check == "dit":
        return {"out": stepedit_side.dit_forward(pipe, inputs)}
    if check == "vae_encode":
        return {"moments": stepedit_side.vae_moments(pipe, inputs["vae/x"])}
    if check == "vae_decode":
        return {"pixels": stepedit_side.vae_decode(pipe, inputs["vae/z"])}
    if check == "encoder":
        prompts = [params["prompt"], params["negative_prompt"]]
        return stepedit_side.encode(pipe, prompts, working)
    if check in EDIT_CHECKS:
        latents = inputs["edit/latents"] if check == "edit_latents" else None
        return stepedit_side.edit(pipe, context.source, params, latents)
    if check == "lora":
        lora = Path(params["lora_file"])
        with_lora = stepedit_side.load_with_lora(context.checkpoint, lora, LORA_SCALE)
        return stepedit_side.edit(with_lora, context.source, params, inputs["edit/latents"])
    if check.startswith("reasoning:"):
        scenario = scenario_named(check.split(":", 1)[1])
        return stepedit_side.reasoning(pipe, context.source, params, scenario)
    raise ValueError(check)


def run_reference(context: Context, checks: list[str], ref_python: Path, workdir: Path) -> Path:
    folder = workdir / f"job-{context.target.name}"
    folder.mkdir(parents=True, exist_ok=True)
    job = exchange.Job(
        target=context.target.name,
        family=context.target.family,
        version=context.target.version,
        ref_dir=str(context.ref_dir),
        checkpoint=str(context.checkpoint),
        checks=checks,
        params=context.params,
    )
    exchange.write_job(folder, job)
    exchange.write_tensors(folder / exchange.INPUTS_FILE, context.inputs)
    context.source.save(folder / exchange.SOURCE_IMAGE_FILE)
    command = [str(ref_python), str(HERE / "reference_runner.py"), str(folder)]
    subprocess.run(command, check=True, cwd=HERE)
    return folder


def compare(
    context: Context, checks: list[str], ours: dict[str, Any], errors: dict[str, str], job: Path
) -> list[Result]:
    tensors = exchange.read_tensors(job / exchange.OUTPUTS_FILE)
    info = exchange.read_json(job / exchange.OUTPUTS_JSON_FILE)
    results: list[Result] = []
    for check in checks:
        label = f"{context.target.name} {check}"
        ref_error = info.get(check, {}).get("error") if check in info else "no output"
        if check in errors or ref_error:
            why = errors.get(check) or f"reference: {ref_error}"
            results.append(failure(label, context.commit, why))
            continue
        theirs = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith(f"{check}/")}
        results += _compare_check(label, context.commit, check, ours[check], theirs, info[check])
    return results


def _compare_check(
    label: str,
    commit: str,
    check: str,
    ours: Any,
    theirs: dict[str, torch.Tensor],
    info: dict[str, Any],
) -> list[Result]:
    if check == "tokenizer":
        result = compare_values(
            f"{label}.prefix_tokens", commit, ours["prefix_tokens"], info["prefix_tokens"]
        )
        return [result]
    if check.startswith("reasoning:"):
        scenario = scenario_named(check.split(":", 1)[1])
        return _compare_reasoning(label, commit, scenario, ours, theirs, info)
    by_key = {
        key: compare_tensors(f"{label}.{key}", commit, ours.get(key), theirs.get(key))
        for key in sorted(set(ours) | set(theirs))
    }
    if "image" in by_key and "decoded" in by_key:
        by_key["image"] = _image_given_decoded(by_key["image"], by_key["decoded"])
    return list(by_key.values())


def _compare_reasoning(
    label: str,
    commit: str,
    scenario: Scenario,
    ours: Any,
    theirs: dict[str, torch.Tensor],
    info: dict[str, Any],
) -> list[Result]:
    """The control flow (rounds, chosen candidate, MLLM calls) and each round's image. In a
    scenario that meets a documented stepedit deviation, a differing row is that deviation."""
    images, trace = ours
    rows = [
        compare_values(f"{label}.{key}", commit, trace[key], info[key])
        for key in ("rounds", "chosen", "mllm_calls")
    ]
    shared = sorted(set(images) & set(theirs))
    rows += [compare_tensors(f"{label}.{key}", commit, images[key], theirs[key]) for key in shared]
    if scenario.deviation is None:
        return rows
    why = f"{scenario.deviation}: {DEVIATIONS[scenario.deviation]}"
    return [row if row.passed else dataclasses.replace(row, deviation=why) for row in rows]


def _image_given_decoded(image: Result, decoded: Result) -> Result:
    """Values one level apart are rounding of sub-tolerance float differences only when the
    tensor before quantization matched."""
    if image.passed and image.max_diff and not decoded.passed:
        return dataclasses.replace(image, passed=False)
    return image


def run_target(
    target: Target, ref_dir: Path, commit: str, args: argparse.Namespace, workdir: Path
) -> list[Result]:
    checks = [c for c in target.checks() if is_selected(args.only, target, c)]
    if not checks:
        return []
    print(f"== {target.name} ({commit}): {', '.join(checks)}", flush=True)
    context = prepare(target, ref_dir, commit, args, workdir)
    ours, errors = run_stepedit(context, checks)
    try:
        job = run_reference(context, checks, args.ref_python, workdir)
    except subprocess.CalledProcessError as exc:
        return [failure(f"{target.name} {c}", commit, f"reference runner: {exc}") for c in checks]
    results = compare(context, checks, ours, errors, job)
    for r in results:
        diff = "-" if r.max_diff is None else f"{r.max_diff:.3g}"
        print(f"{r.check}: max|diff| {diff} {r.status}", flush=True)
    return results


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    labels = dict(item.split("=", 1) for item in args.commit)
    chosen = [(t, getattr(args, t.name.replace("-", "_"))) for t in TARGETS]
    chosen = [(t, d) for t, d in chosen if d is not None]
    if not chosen:
        print("no reference checkout given (see --help)", file=sys.stderr)
        return 2
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory(prefix="stepedit-parity-") as scratch:
        workdir = args.workdir or Path(scratch)
        results: list[Result] = []
        for target, directory in chosen:
            commit = commit_of(directory, labels, target.name)
            results += run_target(target, directory.resolve(), commit, args, workdir)
    print()
    print(format_table(results))
    return 0 if results and all(r.status != "FAIL" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
