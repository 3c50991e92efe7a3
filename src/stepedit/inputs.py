"""Source images as the API receives them: decoding, validation and safe URL fetching.

Everything here raises `stepedit.errors` types with `param` set to the request field at fault,
so each API flavour can report it in its own error shape. Torch-free on purpose.

Sources: multipart upload bytes, `data:` URIs, raw base64, and http(s) URLs. URLs are fetched
with the resolved address pinned (no DNS-rebinding window), every address of the host checked
against the blocked ranges, redirects followed by hand and re-checked, a byte limit enforced while
streaming and one deadline for the whole fetch.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import logging
import re
import socket
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from urllib.parse import SplitResult, urljoin, urlsplit

import httpx
from PIL import Image, ImageOps, UnidentifiedImageError

from stepedit import regions
from stepedit.errors import ImageFetchError, InvalidInput, PayloadTooLarge, UnsupportedMediaType
from stepedit.request import MAX_PROMPT_CHARS, EditRequest
from stepedit.settings import Settings

logger = logging.getLogger(__name__)

MB = 1024 * 1024
# Pillow format names -> the names users know.
FORMAT_NAMES = {"JPEG": "jpeg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}


@dataclass(frozen=True)
class ImageRules:
    """What one API flavour accepts as a source image."""

    formats: frozenset[str] = frozenset({"jpeg", "png", "webp"})
    max_bytes: int = 20 * MB
    min_side: int = 16
    max_side: int = 4096
    max_pixels: int = 4096 * 4096  # checked from the header, before any pixel is decoded
    max_aspect: float | None = None  # long side / short side; None: no limit


# Seed 002: jpg/png/webp, 64..1728 px per side, area <= 1024*1024, <= 10 MB, aspect 1:3..3:1.
OPENAI_EDITS_RULES = ImageRules(
    max_bytes=10 * MB, min_side=64, max_side=1728, max_pixels=1024 * 1024, max_aspect=3.0
)
# Seeds 000/001/003/004 publish no limits: a generous default that still bounds memory.
DEFAULT_RULES = ImageRules()


@dataclass(frozen=True)
class FetchPolicy:
    """How image URLs are fetched. `allow_private_urls` is for tests and private deployments."""

    allow_private_urls: bool = False
    max_bytes: int = 20 * MB
    timeout_s: float = 15.0
    max_redirects: int = 3
    user_agent: str = "stepedit-image-fetcher/1"


@dataclass(frozen=True)
class DecodedImage:
    """A validated source image: EXIF orientation applied, RGB."""

    image: Image.Image = field(repr=False)
    format: str  # "jpeg" | "png" | "webp" | ...
    width: int
    height: int
    source_bytes: int

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def to_png_bytes(self) -> bytes:
        """The normalized image, losslessly encoded, as handed to the job service."""
        return png_bytes(self.image)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def rules_from_settings(settings: Settings, base: ImageRules = DEFAULT_RULES) -> ImageRules:
    """`base` tightened by the server's input limits (`max_upload_bytes`, `max_input_pixels`).
    A flavour's own published limits (seed 002) are never loosened by the settings."""
    return replace(
        base,
        max_bytes=min(base.max_bytes, settings.max_upload_bytes),
        max_pixels=min(base.max_pixels, settings.max_input_pixels),
    )


def fetch_policy_from_settings(settings: Settings) -> FetchPolicy:
    """How image URLs are fetched on this server: `allow_private_urls`, `max_upload_bytes`,
    `image_fetch_timeout_s`."""
    return FetchPolicy(
        allow_private_urls=settings.allow_private_urls,
        max_bytes=settings.max_upload_bytes,
        timeout_s=settings.image_fetch_timeout_s,
    )


# --- decoding -------------------------------------------------------------------------------


def decode_image(
    data: bytes, rules: ImageRules = DEFAULT_RULES, *, param: str = "image"
) -> DecodedImage:
    """Decode and validate image bytes; never lets a Pillow exception escape."""
    with opened_upload(data, rules, param=param) as (opened, fmt):
        try:
            opened.load()
            image = ImageOps.exif_transpose(opened)
            image = image.convert("RGB")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _too_many_pixels(rules, param) from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            # Truncated or corrupt data: Pillow's message ("image file is truncated") is useful.
            raise InvalidInput(
                f"The {_noun(param)} data is corrupt or truncated: {exc}", param=param
            ) from None
    return DecodedImage(
        image=image, format=fmt, width=image.width, height=image.height, source_bytes=len(data)
    )


@contextmanager
def opened_upload(
    data: bytes, rules: ImageRules, *, param: str = "image"
) -> Iterator[tuple[Image.Image, str]]:
    """(the image, its format name), opened but not decoded, once `data` passed what every
    upload is checked for: not empty, at most `rules.max_bytes`, a format of `rules`, and a
    size (read from the header, so a decompression bomb stops here) within `rules`. Inside the
    block Pillow's decompression-bomb warning is an error too."""
    if not data:
        raise InvalidInput(f"The {_noun(param)} is empty.", param=param)
    if len(data) > rules.max_bytes:
        raise PayloadTooLarge(
            f"The {_noun(param)} is {len(data)} bytes; the limit is {rules.max_bytes} bytes "
            f"({rules.max_bytes // MB} MB).",
            param=param,
        )
    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; make it an error too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            opened = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise UnsupportedMediaType(
                f"The {_noun(param)} file is not an image in a supported format "
                f"({', '.join(sorted(rules.formats))}).",
                param=param,
            ) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _too_many_pixels(rules, param) from None
        except Exception as exc:  # Pillow raises many types for hostile headers
            raise InvalidInput(
                f"The {_noun(param)} could not be read: {exc}", param=param
            ) from None
        with opened:
            fmt = FORMAT_NAMES.get(opened.format or "", (opened.format or "unknown").lower())
            if fmt not in rules.formats:
                raise UnsupportedMediaType(
                    f"{_noun(param).capitalize()} format {fmt!r} is not supported; use one of "
                    f"{', '.join(sorted(rules.formats))}.",
                    param=param,
                )
            # The rules are symmetric in width and height: EXIF rotation cannot change this.
            check_dimensions(*opened.size, rules, param=param)
            yield opened, fmt


def _too_many_pixels(rules: ImageRules, param: str) -> InvalidInput:
    return InvalidInput(
        f"The {_noun(param)} has too many pixels (limit {rules.max_pixels}); refusing to "
        "decode it.",
        param=param,
    )


def check_dimensions(
    width: int, height: int, rules: ImageRules, *, param: str = "image", what: str | None = None
) -> None:
    """Per-flavour size rules, on the image as displayed (after EXIF orientation). `what` names
    the picture in the message (default: the image, or the mask for param="mask")."""
    what = what or _noun(param)
    short, long = sorted((width, height))
    if short < rules.min_side or long > rules.max_side:
        raise InvalidInput(
            f"The {what} is {width}x{height}; each side must be between {rules.min_side} and "
            f"{rules.max_side} pixels.",
            param=param,
        )
    if width * height > rules.max_pixels:
        raise InvalidInput(
            f"The {what} is {width}x{height} ({width * height} pixels); the area must be at most "
            f"{rules.max_pixels} pixels.",
            param=param,
        )
    if rules.max_aspect is not None and long / short > rules.max_aspect:
        ratio = f"1:{rules.max_aspect:g}"
        raise InvalidInput(
            f"The {what} is {width}x{height}; the aspect ratio must be between {ratio} and "
            f"{rules.max_aspect:g}:1.",
            param=param,
        )


# --- the area of an edit: mask and outpaint -------------------------------------------------


def check_edit_area(
    image_size: tuple[int, int], request: EditRequest, mask: bytes | None, rules: ImageRules
) -> bytes | None:
    """At submission, what the pipeline's `regions.edit_area` will need, checked once for every
    API flavour: an outpaint's result within `rules` (the flavour's size limits apply to the
    canvas), and the mask checked as an upload (`opened_upload`: bytes, format, pixel count from
    the header) and by the mask rules (`regions.checked_mask`: size, channel, not with an
    outpaint). Returns the mask as the "L" PNG the job stores beside its image (None without
    one); InvalidInput with `param` naming the field otherwise."""
    if request.is_outpaint:
        param = "outpaint_padding" if request.outpaint_padding else "outpaint_aspect_ratio"
        width, height = regions.canvas_size(image_size, request)
        check_dimensions(width, height, rules, param=param, what="outpainted image")
    if mask is None:
        return None
    with opened_upload(mask, rules, param="mask"):
        pass  # the checks every upload gets, before the mask rules decode it
    checked = regions.checked_mask(image_size, request, mask)
    return None if checked is None else png_bytes(checked)


def _noun(param: str) -> str:
    """What a message calls the picture of the field `param`."""
    return "mask" if param == "mask" else "image"


# --- string sources: data URI, raw base64, URL --------------------------------------------

_DATA_URI = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?),(?P<data>.*)$", re.S
)
_BASE64_CHARS = re.compile(r"^[A-Za-z0-9+/=_-]+$")


def is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def decode_base64_source(value: str, *, max_bytes: int, param: str = "image") -> bytes:
    """Bytes from a `data:` URI or from raw base64 (standard or URL-safe alphabet)."""
    text = value.strip()
    match = _DATA_URI.match(text)
    if match:
        if ";base64" not in match.group("params"):
            raise InvalidInput("Only base64-encoded data URIs are supported.", param=param)
        text = match.group("data")
    text = "".join(text.split())  # base64 may be wrapped over lines
    # 4 characters encode 3 bytes: refuse an oversized payload before decoding it.
    if len(text) * 3 // 4 > max_bytes + 3:
        raise PayloadTooLarge(
            f"The {_noun(param)} is larger than the limit of {max_bytes} bytes.", param=param
        )
    if not text or not _BASE64_CHARS.match(text):
        raise InvalidInput(
            f"The {_noun(param)} must be an http(s) URL, a data URI or base64-encoded bytes.",
            param=param,
        )
    padded = text + "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"The {_noun(param)} is not valid base64.", param=param) from None


async def load_image_source(
    value: str,
    rules: ImageRules,
    policy: FetchPolicy,
    *,
    param: str = "image",
    transport: httpx.AsyncBaseTransport | None = None,
) -> DecodedImage:
    """A URL, data URI or raw base64 string -> validated image."""
    data = await read_source(value, rules.max_bytes, policy, param=param, transport=transport)
    return await asyncio.to_thread(decode_image, data, rules, param=param)


async def read_source(
    value: str,
    max_bytes: int,
    policy: FetchPolicy,
    *,
    param: str = "image",
    transport: httpx.AsyncBaseTransport | None = None,
) -> bytes:
    """The bytes a URL (fetched under `policy`), data URI or raw base64 string carries, at
    most `max_bytes`; not yet decoded."""
    if is_url(value.strip()):
        return await fetch_image_bytes(
            value.strip(), _tighter(policy, max_bytes), param=param, transport=transport
        )
    return decode_base64_source(value, max_bytes=max_bytes, param=param)


async def check_callback_url(url: str, policy: FetchPolicy, *, param: str = "webhook") -> str:
    """A webhook URL the server may POST to: http(s), resolvable, and (unless the policy allows
    private addresses) only public addresses."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise InvalidInput("The webhook is not a valid URL.", param=param) from None
    if parts.scheme not in ("http", "https") or not host or len(url) > 2048:
        raise InvalidInput("The webhook must be an http(s) URL.", param=param)
    try:
        addresses = await resolve_addresses(host, port)
    except (OSError, UnicodeError, ValueError):
        raise InvalidInput("The webhook URL's host could not be resolved.", param=param) from None
    if not policy.allow_private_urls and any(is_blocked_address(a) for a in addresses):
        raise InvalidInput(
            "The webhook URL points to a private or loopback address, which is not allowed.",
            param=param,
        )
    return url.strip()


def _tighter(policy: FetchPolicy, max_bytes: int) -> FetchPolicy:
    return replace(policy, max_bytes=min(policy.max_bytes, max_bytes))


# --- URL fetching ---------------------------------------------------------------------------


def is_blocked_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for loopback, private, link-local, multicast, reserved and other non-global ranges."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or _teredo_client(address)
        if embedded is not None and is_blocked_address(embedded):
            return True
    return (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


def _teredo_client(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    teredo = address.teredo
    return teredo[1] if teredo else None


async def resolve_addresses(
    host: str, port: int
) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address `host` resolves to (an IP literal resolves to itself)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        # Drop an IPv6 zone id ("fe80::1%eth0") before parsing.
        addresses.append(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]))
    return addresses


async def fetch_image_bytes(
    url: str,
    policy: FetchPolicy,
    *,
    param: str = "image",
    transport: httpx.AsyncBaseTransport | None = None,
) -> bytes:
    """GET an image URL under `policy`; raises ImageFetchError / PayloadTooLarge."""
    try:
        async with asyncio.timeout(policy.timeout_s):
            return await _fetch_following_redirects(url, policy, param, transport)
    except TimeoutError:
        raise ImageFetchError(
            f"Fetching the {_noun(param)} URL timed out after {policy.timeout_s:g} s.", param=param
        ) from None


async def _fetch_following_redirects(
    url: str, policy: FetchPolicy, param: str, transport: httpx.AsyncBaseTransport | None
) -> bytes:
    timeout = httpx.Timeout(policy.timeout_s)
    async with httpx.AsyncClient(
        transport=transport, timeout=timeout, follow_redirects=False, trust_env=False
    ) as client:
        for _hop in range(policy.max_redirects + 1):
            request = await _pinned_request(client, url, policy, param)
            try:
                response = await client.send(request, stream=True)
            except (httpx.HTTPError, httpx.InvalidURL, UnicodeError) as exc:
                raise ImageFetchError(
                    f"The {_noun(param)} URL could not be fetched: {type(exc).__name__}.",
                    param=param,
                ) from None
            try:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    logger.info("image URL redirected to %s", _redacted(url))
                    continue
                if response.status_code != 200:
                    raise ImageFetchError(
                        f"The {_noun(param)} URL answered HTTP {response.status_code}.", param=param
                    )
                return await _read_limited(response, policy.max_bytes, param)
            finally:
                await response.aclose()
    raise ImageFetchError(
        f"The {_noun(param)} URL redirected more than {policy.max_redirects} times.", param=param
    )


async def _pinned_request(
    client: httpx.AsyncClient, url: str, policy: FetchPolicy, param: str
) -> httpx.Request:
    """A request to the checked address itself, with Host/SNI set to the original name, so the
    name cannot resolve to another (blocked) address between the check and the connection."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # "http://[::1", "http://h:99999"
        raise ImageFetchError(f"The {_noun(param)} URL is not a valid URL.", param=param) from None
    if parts.scheme not in ("http", "https") or not host:
        raise ImageFetchError(
            f"The {_noun(param)} URL must be an http(s) URL with a host.", param=param
        )
    try:
        addresses = await resolve_addresses(host, port)
    except (OSError, UnicodeError, ValueError):  # UnicodeError: a name IDNA cannot encode
        raise ImageFetchError(
            f"The {_noun(param)} URL's host {host!r} could not be resolved.", param=param
        ) from None
    if not addresses:
        raise ImageFetchError(
            f"The {_noun(param)} URL's host {host!r} has no address.", param=param
        )
    if not policy.allow_private_urls:
        blocked = [a for a in addresses if is_blocked_address(a)]
        if blocked:
            logger.warning("blocked image URL %s -> %s", _redacted(url), blocked[0])
            raise ImageFetchError(
                f"The {_noun(param)} URL points to a private, loopback or otherwise non-public "
                "address, which is not allowed.",
                param=param,
            )
    pinned, host_header, extensions = pin_to_address(parts, addresses[0])
    headers: Mapping[str, str] = {
        "Host": host_header,
        "User-Agent": policy.user_agent,
        "Accept": "image/*",
    }
    try:
        return client.build_request("GET", pinned, headers=headers, extensions=extensions)
    except (httpx.InvalidURL, ValueError):
        raise ImageFetchError(f"The {_noun(param)} URL is not a valid URL.", param=param) from None


def pin_to_address(
    parts: SplitResult, address: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> tuple[str, str, dict[str, str]]:
    """(the URL with its host replaced by the checked `address`, the Host header to send, the
    httpx extensions that keep TLS verifying the original name), so the name cannot resolve to
    another address between the check and the connection (DNS rebinding)."""
    netloc = f"[{address}]" if address.version == 6 else str(address)
    if parts.port:
        netloc += f":{parts.port}"
    host_header = parts.netloc.rsplit("@", 1)[-1]
    extensions = {"sni_hostname": parts.hostname or ""} if parts.scheme == "https" else {}
    return parts._replace(netloc=netloc).geturl(), host_header, extensions


async def _read_limited(response: httpx.Response, max_bytes: int, param: str) -> bytes:
    too_large = PayloadTooLarge(
        f"The {_noun(param)} at the URL is larger than the limit of {max_bytes} bytes.", param=param
    )
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    chunks: list[bytes] = []
    received = 0
    try:
        async for chunk in response.aiter_bytes():
            received += len(chunk)
            if received > max_bytes:
                raise too_large
            chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise ImageFetchError(
            f"The {_noun(param)} download failed: {type(exc).__name__}.", param=param
        ) from None
    return b"".join(chunks)


def _redacted(url: str) -> str:
    """A URL for logs: no query string (may carry signed tokens), no credentials."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{parts.path}"


# --- text -----------------------------------------------------------------------------------


def check_prompt(
    prompt: str,
    max_chars: int = MAX_PROMPT_CHARS,
    *,
    param: str = "prompt",
    allow_empty: bool = False,
) -> str:
    """The prompt, stripped; InvalidInput when empty (unless allowed), longer than `max_chars`
    characters, or not encodable as UTF-8 (a lone surrogate from a JSON "\\ud800" escape)."""
    text = prompt.strip()
    if not text and not allow_empty:
        raise InvalidInput("The prompt must not be empty.", param=param)
    if len(prompt) > max_chars:
        raise InvalidInput(
            f"The {param} is {len(prompt)} characters long; the limit is {max_chars}.", param=param
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"The {param} is not valid Unicode text.", param=param) from None
    return text


def check_negative_prompt(prompt: str) -> str:
    """`check_prompt` for a negative prompt, which may be empty."""
    return check_prompt(prompt, param="negative_prompt", allow_empty=True)
