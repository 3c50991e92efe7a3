"""Where images live: uploaded inputs (deleted when their job ends) and outputs.

A job's inputs are its image, `inputs/<job id>.<ext>`, and, when the edit came with one, its
mask beside it, `inputs/<job id>.mask.png`: the part of a name before its first dot is the job.

Outputs are served at `/files/{token}.{ext}` until they expire (`JobService.cleanup_expired`).
A token is derived from the job's secret salt (128 random bits, stored with the job before it
runs), the attempt and the output's index (`output_token`): unguessable, and known before the
file is written, so the files of an attempt that died before recording them can be found and
deleted (`JobService.recover_lost`); files no job refers to are swept (`sweep_orphans`).

`FileStorage` keeps them on a disk (local, or a mount every fleet node shares);
`stepedit.distributed.storage.ObjectStorage` in S3-compatible object storage. Every write goes
to a temporary file first and is renamed into place; a write that fails removes it, and a full
disk is `InsufficientStorage`.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from stepedit.errors import InsufficientStorage
from stepedit.jobs.models import OutputKind

logger = logging.getLogger(__name__)

_MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"))
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}
TMP_SUFFIX = ".tmp"
MASK_SUFFIX = ".mask"  # inputs/<job id>.mask.png
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class DataDirError(RuntimeError):
    """The data directory cannot be used (missing and not creatable, read-only...)."""


def sniff_format(data: bytes) -> str:
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "bin"


def is_token(text: str) -> bool:
    return 16 <= len(text) <= 64 and all(c.isalnum() or c in "-_" for c in text)


def new_output_salt() -> str:
    return secrets.token_hex(16)


def output_token(
    salt: str | None, attempt: int, index: int, kind: OutputKind = OutputKind.IMAGE
) -> str:
    """The token of output `index` (of its `kind`) of `attempt` (32 characters, 192 bits). A job
    stored before salts existed (None) gets a random one, as tokens were before."""
    if salt is None:
        return secrets.token_urlsafe(24)
    name = f"{salt}:{attempt}:{index}"
    if kind is not OutputKind.IMAGE:
        name = f"{salt}:{attempt}:{kind.value}:{index}"
    digest = hashlib.sha256(name.encode()).digest()
    return base64.urlsafe_b64encode(digest[:24]).decode()


def output_name(token: str, image_format: str) -> str:
    return f"{token}.{EXTENSIONS.get(image_format, image_format)}"


def check_data_dir(directory: Path) -> None:
    """Create `directory` if missing and prove it is writable; DataDirError naming it if not."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-check-{os.getpid()}{TMP_SUFFIX}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DataDirError(
            f"the data directory {directory.resolve()} cannot be used: {reason} "
            "(set --data-dir or STEPEDIT_DATA_DIR to a writable directory)"
        ) from exc


def is_disk_full_error(exc: OSError) -> bool:
    return exc.errno in _DISK_FULL_ERRNOS


@dataclass(frozen=True)
class StoredFile:
    """A file in storage, for the orphan sweep: `kind` is "inputs" or "outputs"."""

    path: Path  # the path the store records for it
    kind: str
    modified: datetime

    @property
    def is_temporary(self) -> bool:
        return self.path.name.endswith(TMP_SUFFIX)


class Storage(Protocol):
    """The store records the paths these methods return; any node can resolve them."""

    def save_input(self, job_id: str, data: bytes) -> Path: ...

    def save_mask(self, job_id: str, data: bytes) -> Path:
        """Store the mask of `job_id`'s edit beside its input image."""
        ...

    def save_output(self, token: str, data: bytes, image_format: str) -> Path:
        """Store an output under `token`; returns the path to record (= `output_path`)."""
        ...

    def output_path(self, token: str, image_format: str) -> Path:
        """Where `save_output` puts (or put) the output named `token`."""
        ...

    def delete(self, path: str | Path | None) -> None: ...

    def local_path(self, path: str | Path) -> Path:
        """A file this process can open for a recorded path; FileNotFoundError when gone."""
        ...

    def stored_files(self) -> Iterator[StoredFile]:
        """Every input and output file (temporary ones included), for the orphan sweep."""
        ...


class FileStorage:
    def __init__(self, data_dir: Path) -> None:
        self.inputs_dir = data_dir / "inputs"
        self.outputs_dir = data_dir / "outputs"
        for directory in (self.inputs_dir, self.outputs_dir):
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DataDirError(f"cannot create {directory}: {exc.strerror or exc}") from exc

    def save_input(self, job_id: str, data: bytes) -> Path:
        path = self.inputs_dir / f"{job_id}.{sniff_format(data)}"
        write_atomically(path, data)
        return path

    def save_mask(self, job_id: str, data: bytes) -> Path:
        path = self.inputs_dir / f"{job_id}{MASK_SUFFIX}.{sniff_format(data)}"
        write_atomically(path, data)
        return path

    def save_output(self, token: str, data: bytes, image_format: str) -> Path:
        path = self.output_path(token, image_format)
        write_atomically(path, data)
        return path

    def output_path(self, token: str, image_format: str) -> Path:
        return self.outputs_dir / output_name(token, image_format)

    def delete(self, path: str | Path | None) -> None:
        if path is None:
            return
        try:
            Path(path).unlink(missing_ok=True)
        except OSError:
            logger.warning("could not delete %s", path, exc_info=True)

    def local_path(self, path: str | Path) -> Path:
        local = Path(path)
        if not local.is_file():
            raise FileNotFoundError(str(local))
        return local

    def stored_files(self) -> Iterator[StoredFile]:
        for kind, directory in (("inputs", self.inputs_dir), ("outputs", self.outputs_dir)):
            try:
                entries = list(os.scandir(directory))
            except FileNotFoundError:
                continue
            for entry in entries:
                try:
                    modified = datetime.fromtimestamp(entry.stat().st_mtime, UTC)
                except FileNotFoundError:
                    continue
                yield StoredFile(Path(entry.path), kind, modified)


def write_atomically(path: Path, data: bytes) -> None:
    """`data` at `path`, whole or not at all: written beside it, then renamed. A failed write
    leaves no temporary file; a full disk (or quota, or file-size limit) is InsufficientStorage."""
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
        tmp.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if is_disk_full_error(exc):
            raise InsufficientStorage("the server's disk is full; retry later") from exc
        raise
