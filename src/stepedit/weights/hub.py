"""Hugging Face Hub repositories as model sources: parse ids, find them in the cache, fetch them.

A source such as `stepfun-ai/Step1X-Edit-v1p1-diffusers` is looked up in the local Hugging Face
cache exactly as transformers and diffusers do it, through huggingface_hub itself: the cache is
`HF_HUB_CACHE` (default `$HF_HOME/hub`, `~/.cache/huggingface/hub`), a revision resolves through
`refs/<revision>` to `snapshots/<commit>/`. Like those libraries, huggingface_hub reads these
variables once, when it is imported, so set them before starting stepedit.

Nothing is downloaded unless asked (`fetch`, used by `stepedit download` and `download=True`);
`HF_HUB_OFFLINE=1` forbids even that.

Spelling: `org/name`, optionally `@revision` (branch, tag or commit, as in `hf://` paths), and
for an original-layout repository optionally `/<DiT file>.safetensors` to pick one DiT file
(e.g. the FP8 one): `stepfun-ai/Step1X-Edit@main/step1x-edit-i1258-FP8.safetensors`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import HFValidationError, validate_repo_id

from stepedit.errors import WeightsError

logger = logging.getLogger(__name__)

# The official app loads the text encoder of the original layout from this repository.
DEFAULT_TEXT_ENCODER = "Qwen/Qwen2.5-VL-7B-Instruct"

# The published Step1X-Edit repositories and their layouts: used to say what a repository that
# is not in the cache yet will need (the original one needs the text encoder as well).
PUBLISHED_LAYOUTS: dict[str, str] = {
    "stepfun-ai/Step1X-Edit": "original",
    "stepfun-ai/Step1X-Edit-v1p1-diffusers": "diffusers",
    "stepfun-ai/Step1X-Edit-v1p2": "diffusers",
    "stepfun-ai/Step1X-Edit-v1p2-preview": "diffusers",
}


@dataclass(frozen=True)
class HubRef:
    """A model repository on the Hub, at a revision (None: main), maybe naming one DiT file."""

    repo_id: str
    revision: str | None = None
    filename: str | None = None

    def __str__(self) -> str:
        text = self.repo_id
        if self.revision:
            text += f"@{self.revision}"
        if self.filename:
            text += f"/{self.filename}"
        return text

    def with_revision(self, revision: str | None) -> HubRef:
        """This ref at `revision` (a `revision=` argument); one spelled in the id must agree."""
        if revision is None or revision == self.revision:
            return self
        if self.revision is not None:
            raise WeightsError(
                f"{self} names revision {self.revision!r} but revision={revision!r} was given"
            )
        return replace(self, revision=revision)


def parse_hub_ref(text: str) -> HubRef | None:
    """`org/name[@revision][/file.safetensors]` as a `HubRef`; None when `text` is not one.

    A name without an organisation (`gpt2`) is not accepted: it is far more often a local folder
    that does not exist than one of the Hub's few legacy repositories.
    """
    body, filename = text, None
    if text.endswith(".safetensors") and text.count("/") >= 2:
        body, _, filename = text.rpartition("/")
    repo_id, _, revision = body.partition("@")
    if repo_id.count("/") != 1:
        return None
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return None
    return HubRef(repo_id, revision or None, filename)


def cache_dir() -> Path:
    """The Hub cache huggingface_hub uses (HF_HUB_CACHE, else $HF_HOME/hub)."""
    return Path(constants.HF_HUB_CACHE)


def is_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as huggingface_hub reads it."""
    is_offline_mode = getattr(constants, "is_offline_mode", None)  # huggingface_hub >= 1.0
    return bool(is_offline_mode() if is_offline_mode is not None else constants.HF_HUB_OFFLINE)


def cached_snapshot(ref: HubRef) -> Path | None:
    """The cached snapshot folder of `ref` (never the network), or None when it is not cached.

    The folder may hold only some of the repository's files (stepedit fetches only what a
    checkpoint needs): callers check the files they need themselves.
    """
    try:
        folder = snapshot_download(ref.repo_id, revision=ref.revision, local_files_only=True)
    except LocalEntryNotFoundError as error:
        # huggingface_hub >= 1.x keeps the listing of each downloaded commit and calls a snapshot
        # with fewer files than the repository incomplete; the folder still comes with the error.
        partial = getattr(error, "snapshot_path", None)
        return Path(partial) if partial else None
    return Path(str(folder))


def remote_files(ref: HubRef) -> list[str]:
    """The file names of `ref` on the Hub (a network call)."""
    try:
        return HfApi().list_repo_files(ref.repo_id, revision=ref.revision)
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError, HfHubHTTPError) as e:
        raise WeightsError(f"cannot list {ref} on the Hugging Face Hub: {_first_line(e)}") from e
    except OSError as error:  # connection errors
        raise WeightsError(f"cannot reach the Hugging Face Hub for {ref}: {error}") from error


def fetch(ref: HubRef, allow_patterns: list[str] | None, local_dir: Path | None = None) -> Path:
    """Download `ref` (only files matching `allow_patterns`; None: all) into the Hub cache, or
    into `local_dir` as plain files."""
    what = "all files" if allow_patterns is None else ", ".join(allow_patterns)
    logger.info("downloading %s (%s) into %s", ref, what, local_dir or cache_dir())
    try:
        folder = snapshot_download(
            ref.repo_id,
            revision=ref.revision,
            allow_patterns=allow_patterns,
            local_dir=local_dir,
        )
    except (
        RepositoryNotFoundError,
        GatedRepoError,
        RevisionNotFoundError,
        LocalEntryNotFoundError,
        HfHubHTTPError,
    ) as error:
        raise WeightsError(f"cannot download {ref}: {_first_line(error)}") from error
    except OSError as error:
        raise WeightsError(f"cannot download {ref}: {error}") from error
    return Path(str(folder))


def _first_line(error: Exception) -> str:
    """The hub's message on one line (its errors span several, with request ids)."""
    text = " ".join(str(error).split())
    return text[:400] if text else type(error).__name__
