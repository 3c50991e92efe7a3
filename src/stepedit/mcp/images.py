"""Images as MCP tools take and give them: the `image` argument, output files, encoded results.

An `image` argument is one string, read as the first of these that fits:

1. `http://` / `https://`: a URL (fetched by whoever runs the edit, with its URL policy);
2. `data:`: a data URI;
3. `file://`: a local path;
4. a local path, where such a file exists;
5. raw base64.

Local paths are read on the machine the MCP server runs on, never by a remote stepedit server
(the MCP server reads the file and sends its bytes). `FileAccess` says whether paths are
accepted at all and confines them to a root folder; output files obey the same rule.
"""

from __future__ import annotations

import base64
import io
import mimetypes
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args
from urllib.parse import unquote, urlsplit

from PIL import Image

from stepedit.errors import InvalidInput
from stepedit.request import ImageFormat

MB = 1024 * 1024
# A file bigger than this is not read at all (the edit's own limit is lower: 10 MB by default).
MAX_FILE_BYTES = 64 * MB
MIME_TYPES: dict[ImageFormat, str] = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
}
_PIL_FORMATS: dict[ImageFormat, str] = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
_SUFFIX_FORMATS: dict[str, ImageFormat] = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".webp": "webp",
}
_BASE64 = re.compile(r"^[A-Za-z0-9+/=_-]+$")
_MIN_BASE64_CHARS = 32  # shorter strings are names, not images


@dataclass(frozen=True)
class ImageArg:
    """An `image` argument, classified. `value`: the URL, the data URI / base64 text, or the
    resolved path."""

    kind: Literal["url", "inline", "path"]
    value: str


@dataclass(frozen=True)
class FileAccess:
    """Whether tools may read and write local files, and under which folder.

    Over stdio the MCP client is the local user who started the server: paths are allowed
    (anywhere, or under `root` when one is set). Over HTTP any client that reaches the port
    could name a file, so paths are refused unless a root confines them.
    """

    enabled: bool
    root: Path | None = None

    @classmethod
    def for_transport(cls, transport: str, root: Path | None) -> FileAccess:
        return cls(enabled=transport == "stdio" or root is not None, root=root)

    def resolve(self, text: str, param: str) -> Path:
        """The absolute path `text` names; InvalidInput when paths are refused or it leaves the
        root. Relative paths are taken from the root, else from the server's working folder."""
        if not self.enabled:
            hint = "; send the image as a URL or base64 instead" if param == "image" else ""
            raise InvalidInput(
                f"{param}: local file paths are not accepted by this MCP server (it serves HTTP "
                f"without --files-root){hint}",
                param=param,
            )
        path = Path(text).expanduser()
        if self.root is None:
            return path.resolve()
        root = self.root.expanduser().resolve()
        resolved = (root / path).resolve()
        if not resolved.is_relative_to(root):
            raise InvalidInput(f"{param}: {text} is outside the files root {root}", param=param)
        return resolved


def parse_image_arg(text: str, files: FileAccess, *, param: str = "image") -> ImageArg:
    """Classify an `image` argument (see the module docstring for the order)."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput(
            f"{param}: give a file path, an http(s) URL, a data URI or base64-encoded bytes",
            param=param,
        )
    value = text.strip()
    if value.startswith(("http://", "https://")):
        return ImageArg("url", value)
    if value.startswith("data:"):
        return ImageArg("inline", value)
    if value.startswith("file://"):
        return ImageArg("path", str(files.resolve(unquote(urlsplit(value).path), param)))
    # JPEG's base64 starts "/9j/": a string of base64 characters is a path only if it is a file.
    is_base64_shaped = len(value) >= _MIN_BASE64_CHARS and _BASE64.match(value) is not None
    try:
        path = files.resolve(value, param)
    except InvalidInput:
        if is_base64_shaped:
            return ImageArg("inline", value)
        raise
    if is_base64_shaped and not _is_file(path):
        return ImageArg("inline", value)
    return ImageArg("path", str(path))


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long for the file system, say
        return False


def read_file(path: str, *, max_bytes: int = MAX_FILE_BYTES, param: str = "image") -> bytes:
    """The bytes of a local image file, with errors a user can act on."""
    try:
        with open(path, "rb") as file:
            data = file.read(max_bytes + 1)
    except FileNotFoundError:
        raise InvalidInput(f"{param}: no such file: {path}", param=param) from None
    except IsADirectoryError:
        raise InvalidInput(f"{param}: {path} is a folder, not an image file", param=param) from None
    except OSError as exc:
        raise InvalidInput(f"{param}: cannot read {path}: {exc.strerror}", param=param) from None
    if len(data) > max_bytes:
        raise InvalidInput(
            f"{param}: {path} is larger than {max_bytes // MB} MB; not an image to edit",
            param=param,
        )
    return data


def to_data_uri(data: bytes, path: str) -> str:
    """A file's bytes as a data URI (the media type from its name; the server sniffs anyway)."""
    mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def encode_image(image: Image.Image, image_format: ImageFormat) -> bytes:
    """An output image as the bytes of `image_format` (Pillow's default quality, as the
    server's worker writes them)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format=_PIL_FORMATS[image_format])
    return buffer.getvalue()


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from an image's header."""
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def output_format_for(output_path: str | None, output_format: ImageFormat | None) -> ImageFormat:
    """The format of the result: as asked, else the one `output_path`'s suffix names, else
    PNG. A suffix naming another format than the one asked is an InvalidInput."""
    named = _suffix_format(output_path) if output_path else None
    if output_format is not None and output_format not in get_args(ImageFormat):
        raise InvalidInput(
            f"output_format: must be one of {', '.join(get_args(ImageFormat))}",
            param="output_format",
        )
    if output_format is not None and named is not None and named != output_format:
        raise InvalidInput(
            f"output_path: the suffix {Path(output_path or '').suffix!r} is not "
            f"{output_format}; change one of output_path and output_format",
            param="output_path",
        )
    return output_format or named or "png"


def _suffix_format(output_path: str) -> ImageFormat:
    suffix = Path(output_path).suffix.lower()
    if suffix not in _SUFFIX_FORMATS:
        raise InvalidInput(
            f"output_path: must end in {', '.join(_SUFFIX_FORMATS)} (got {output_path!r})",
            param="output_path",
        )
    return _SUFFIX_FORMATS[suffix]


def output_paths(output_path: Path, count: int) -> list[Path]:
    """One file per image: `output_path` itself for one, `stem-0.png`, `stem-1.png`, ... for
    several (as `stepedit edit --n` names them)."""
    if count == 1:
        return [output_path]
    return [
        output_path.with_name(f"{output_path.stem}-{i}{output_path.suffix}") for i in range(count)
    ]


def write_files(paths: list[Path], contents: list[bytes]) -> None:
    """Write each image to its path, creating the folder; errors name the path."""
    for path, data in zip(paths, contents, strict=True):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        except OSError as exc:
            raise InvalidInput(
                f"output_path: cannot write {path}: {exc.strerror or exc}", param="output_path"
            ) from None
