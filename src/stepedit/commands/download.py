"""`stepedit download [--version v1.1] DIR`: fetch the released weights from the Hugging Face hub.

The only place stepedit talks to the hub; loading never does. Needs the optional extra
`pip install 'stepedit[download]'` (huggingface_hub).
"""

from __future__ import annotations

import argparse
from typing import Any

# Official repositories and the files each version needs. v1.0 and v1.1 are original-layout
# releases sharing one repository, used with Qwen's own Qwen2.5-VL-7B-Instruct repository in a
# sub-folder (as the official inference script expects); v1.2 is published in the diffusers
# layout, text encoder included.
RELEASES: dict[str, tuple[str, list[str] | None]] = {
    "v1.0": ("stepfun-ai/Step1X-Edit", ["step1x-edit-i1258.safetensors", "vae.safetensors"]),
    "v1.1": (
        "stepfun-ai/Step1X-Edit",
        ["step1x-edit-v1p1-official.safetensors", "vae.safetensors"],
    ),
    "v1.2": ("stepfun-ai/Step1X-Edit-v1p2", None),
}
QWEN_REPO = "Qwen/Qwen2.5-VL-7B-Instruct"
QWEN_FOLDER = "Qwen2.5-VL-7B-Instruct"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "download",
        help="download released weights from the Hugging Face hub",
        description=(
            "Download a Step1X-Edit release into DIR with huggingface_hub (optional extra: "
            "pip install 'stepedit[download]'). Serving and tests never download anything."
        ),
    )
    parser.add_argument("directory", help="where to put the checkpoint")
    parser.add_argument("--version", choices=sorted(RELEASES), default="v1.1")
    parser.add_argument(
        "--repo",
        default=None,
        help="another repository id, downloaded whole (e.g. stepfun-ai/Step1X-Edit-v1p1-diffusers)",
    )
    parser.add_argument("--revision", default=None, help="branch, tag or commit")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        print(
            "error: `stepedit download` needs huggingface_hub; install it with "
            "pip install 'stepedit[download]'"
        )
        return 1
    repo, patterns = RELEASES[args.version]
    if args.repo is not None:
        repo, patterns = args.repo, None
    print(f"downloading {repo} ({args.version}) to {args.directory} ...")
    path = snapshot_download(
        repo_id=repo, revision=args.revision, local_dir=args.directory, allow_patterns=patterns
    )
    if args.repo is None and args.version != "v1.2":
        target = f"{args.directory}/{QWEN_FOLDER}"
        print(f"downloading {QWEN_REPO} to {target} ...")
        snapshot_download(repo_id=QWEN_REPO, local_dir=target)
    print(f"done: {path}")
    print(f"check it with: stepedit edit --model {args.directory} IMAGE 'instruction' -o out.png")
    return 0
