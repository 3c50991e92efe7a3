"""Image files on local disk: uploaded inputs (deleted when their job ends) and outputs.

Outputs are named by an unguessable token (`secrets.token_urlsafe`, 192 bits) and served at
`/files/{token}.{ext}` until they expire; `JobService.cleanup_expired` removes them.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

logger = logging.getLogger(__name__)

_MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"))
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}


def sniff_format(data: bytes) -> str:
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "bin"


def is_token(text: str) -> bool:
    return 16 <= len(text) <= 64 and all(c.isalnum() or c in "-_" for c in text)


class FileStorage:
    def __init__(self, data_dir: Path) -> None:
        self.inputs_dir = data_dir / "inputs"
        self.outputs_dir = data_dir / "outputs"
        self.inputs_dir.mkdir(parents=True, exist_ok=True)
        self.outputs_dir.mkdir(parents=True, exist_ok=True)

    def save_input(self, job_id: str, data: bytes) -> Path:
        path = self.inputs_dir / f"{job_id}.{sniff_format(data)}"
        _write_atomically(path, data)
        return path

    def save_output(self, data: bytes, image_format: str) -> tuple[str, Path]:
        token = secrets.token_urlsafe(24)
        path = self.outputs_dir / f"{token}.{EXTENSIONS.get(image_format, image_format)}"
        _write_atomically(path, data)
        return token, path

    def delete(self, path: str | Path | None) -> None:
        if path is None:
            return
        try:
            Path(path).unlink(missing_ok=True)
        except OSError:
            logger.warning("could not delete %s", path, exc_info=True)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
