"""`stepedit download REPO_ID`: fetch a checkpoint from the Hugging Face Hub into its cache.

    stepedit download stepfun-ai/Step1X-Edit-v1p1-diffusers     # diffusers layout, whole
    stepedit download stepfun-ai/Step1X-Edit [--model-version v1.0]  # DiT file + VAE + Qwen2.5-VL
    stepedit download Qwen/Qwen2.5-VL-7B-Instruct                # any other repository, whole

Afterwards `--model REPO_ID` loads from the cache with no network. The older form
`stepedit download [--model-version v1.1] DIR` still puts a release into a plain directory.
This command, and `download=True` / `--download` when loading, are the only downloads.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# The older form: official repositories and the files each version needs, into a directory.
# v1.0 and v1.1 are original-layout releases sharing one repository, used with Qwen's own
# Qwen2.5-VL-7B-Instruct repository in a sub-folder (as the official inference script expects);
# v1.2 is published in the diffusers layout, text encoder included.
RELEASES: dict[str, tuple[str, list[str] | None]] = {
    "v1.0": ("stepfun-ai/Step1X-Edit", ["step1x-edit-i1258.safetensors", "vae.safetensors"]),
    "v1.1": (
        "stepfun-ai/Step1X-Edit",
        ["step1x-edit-v1p1-official.safetensors", "vae.safetensors"],
    ),
    "v1.2": ("stepfun-ai/Step1X-Edit-v1p2", None),
}
QWEN_FOLDER = "Qwen2.5-VL-7B-Instruct"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "download",
        help="download weights from the Hugging Face Hub into its cache",
        description=(
            "Download a checkpoint by its Hugging Face repo id into the Hugging Face cache "
            "(HF_HUB_CACHE / HF_HOME): for an original-layout repository only the DiT file of "
            "--model-version (default: the newest) and the VAE, plus the Qwen2.5-VL text "
            "encoder it needs (Qwen/Qwen2.5-VL-7B-Instruct unless --text-encoder); a "
            "diffusers-layout repository whole. Loading never downloads unless asked (--download)."
        ),
    )
    parser.add_argument(
        "source",
        metavar="REPO_ID",
        help="org/name[@revision][/<DiT file>.safetensors], e.g. stepfun-ai/Step1X-Edit; "
        "older form: a directory, for --model-version's release as plain files",
    )
    parser.add_argument(
        "--model-version",
        dest="version",
        choices=["v1.0", "v1.1", "v1.2"],
        default=None,
        help="which DiT file of a repository holding several (default: the newest); "
        "with a directory: which release (default v1.1)",
    )
    parser.add_argument(  # the older spelling, still accepted
        "--version",
        choices=["v1.0", "v1.1", "v1.2"],
        help=argparse.SUPPRESS,
        default=argparse.SUPPRESS,
    )
    parser.add_argument("--revision", default=None, help="branch, tag or commit")
    parser.add_argument(
        "--text-encoder",
        default=None,
        help="the text encoder (repo id or folder) an original-layout checkpoint is used with "
        "(default: Qwen/Qwen2.5-VL-7B-Instruct)",
    )
    parser.add_argument(
        "--no-text-encoder",
        action="store_true",
        help="fetch the checkpoint's own files only",
    )
    parser.add_argument(
        "--repo",
        default=None,
        help="with a directory: another repository id, downloaded whole into it",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stepedit.errors import WeightsError
    from stepedit.weights import hub

    is_repo_id = hub.parse_hub_ref(args.source) is not None
    if args.repo is None and is_repo_id and not Path(args.source).expanduser().exists():
        run_form = _download_to_cache
    else:
        run_form = _download_to_directory
    if hub.is_offline():
        print("error: HF_HUB_OFFLINE is set; unset it to download")
        return 1
    try:
        run_form(args)
    except WeightsError as exc:
        print(f"error: {exc.message}")
        return 1
    return 0


def _download_to_cache(args: argparse.Namespace) -> None:
    from stepedit.weights import fetch_checkpoint, hub, resolve_checkpoint
    from stepedit.weights.formats import layout_of_names

    ref = hub.parse_hub_ref(args.source)
    assert ref is not None
    ref = ref.with_revision(args.revision)
    names = hub.remote_files(ref)
    if layout_of_names(names) is None and ref.repo_id not in hub.PUBLISHED_LAYOUTS:
        # Not a Step1X-Edit checkpoint (a text encoder, say): the repository, whole.
        print(f"downloading {ref} ...")
        print(f"done: {hub.fetch(ref, None)}")
        return
    with_text_encoder = not args.no_text_encoder
    print(f"downloading {ref} into {hub.cache_dir()} ...")
    fetch_checkpoint(
        args.source,
        version=args.version,
        text_encoder=args.text_encoder,
        revision=args.revision,
        with_text_encoder=with_text_encoder,
    )
    checkpoint = resolve_checkpoint(
        args.source,
        version=args.version,
        text_encoder=args.text_encoder,
        revision=args.revision,
        need_text_encoder=with_text_encoder,
    )
    print(f"done: {checkpoint.describe()}")
    model = f"--model {args.source}"
    if args.version:
        model += f" --model-version {args.version}"
    if args.text_encoder:
        model += f" --text-encoder {args.text_encoder}"
    print(f"use it: stepedit edit {model} IMAGE 'instruction' -o out.png")


def _download_to_directory(args: argparse.Namespace) -> None:
    from stepedit.weights import hub

    version = args.version or "v1.1"
    repo, patterns = RELEASES[version]
    if args.repo is not None:
        repo, patterns = args.repo, None
    directory = Path(args.source)
    print(f"downloading {repo} ({version}) to {directory} ...")
    path = hub.fetch(hub.HubRef(repo, args.revision), patterns, local_dir=directory)
    if args.repo is None and version != "v1.2":
        target = directory / QWEN_FOLDER
        print(f"downloading {hub.DEFAULT_TEXT_ENCODER} to {target} ...")
        hub.fetch(hub.HubRef(hub.DEFAULT_TEXT_ENCODER), None, local_dir=target)
    print(f"done: {path}")
    print(f"check it with: stepedit edit --model {directory} IMAGE 'instruction' -o out.png")
