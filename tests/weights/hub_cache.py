"""A Hugging Face cache built from local files, laid out as huggingface_hub lays out downloads.

`models--<org>--<name>/blobs/<sha256>` holds each file's content once, `snapshots/<commit>/<path>`
is a relative symlink to its blob, `refs/<revision>` holds the commit; the folder name comes from
huggingface_hub itself (`repo_folder_name`). `scan_cache_dir` reading it back is tested.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from huggingface_hub import constants
from huggingface_hub.file_download import repo_folder_name


@contextmanager
def hub_environment(cache: Path, *, offline: bool) -> Iterator[None]:
    """HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE as a freshly started process would see them.

    huggingface_hub reads its environment once, when it is imported (transformers and diffusers
    rely on the same constants), so its constants module is reloaded after the variables are set
    and again after they are restored.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HOME", str(cache.parent))
        patch.setenv("HF_HUB_CACHE", str(cache))
        patch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
        patch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        importlib.reload(constants)
        try:
            yield
        finally:
            pass
    importlib.reload(constants)


def commit_of(repo_id: str, revision: str) -> str:
    return hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()


def files_of(folder: Path) -> dict[str, Path]:
    """Every file under `folder`, by its path relative to it (as a repository names them)."""
    return {
        path.relative_to(folder).as_posix(): path
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def add_to_cache(
    cache: Path,
    repo_id: str,
    files: dict[str, Path],
    *,
    revision: str = constants.DEFAULT_REVISION,
    only: Iterable[str] | None = None,
    listed: bool = False,
) -> Path:
    """Put `files` (repository path -> local file) into the cache as `repo_id` at `revision`;
    return the snapshot folder. `only`: the subset of names to put there (a partial download).
    `listed`: also store the repository's whole file listing, as huggingface_hub >= 1.x does on
    every download (it then calls a snapshot holding fewer files incomplete)."""
    repo = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    commit = commit_of(repo_id, revision)
    snapshot = repo / "snapshots" / commit
    wanted = set(files if only is None else only)
    for name, source in files.items():
        if name not in wanted:
            continue
        blob = repo / "blobs" / hashlib.sha256(source.read_bytes()).hexdigest()
        if not blob.exists():
            blob.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, blob)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    if listed:
        _write_listing(repo, commit, files)
    return snapshot


def can_write_listings() -> bool:
    return importlib.util.find_spec("huggingface_hub._tree_cache") is not None


def _write_listing(repo: Path, commit: str, files: dict[str, Path]) -> None:
    # huggingface_hub's own (private) writer, so the format is whatever the installed version reads.
    from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache

    entries = {
        name: TreeCacheEntry(
            size=path.stat().st_size, blob_id=hashlib.sha1(path.read_bytes()).hexdigest()
        )
        for name, path in files.items()
    }
    write_tree_cache(str(repo), commit, entries)
