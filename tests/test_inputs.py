"""Source image decoding, validation and URL fetching (no server, no engine)."""

from __future__ import annotations

import asyncio
import base64
import io
import ipaddress
import shutil
import ssl
import subprocess
import threading
import zlib
from collections.abc import AsyncIterator, Coroutine, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import httpx
import pytest
from PIL import Image

from stepedit.errors import ImageFetchError, InvalidInput, PayloadTooLarge, UnsupportedMediaType
from stepedit.inputs import (
    DEFAULT_RULES,
    OPENAI_EDITS_RULES,
    FetchPolicy,
    ImageRules,
    check_callback_url,
    check_prompt,
    decode_base64_source,
    decode_image,
    fetch_image_bytes,
    fetch_policy_from_settings,
    is_blocked_address,
    load_image_source,
    rules_from_settings,
)
from stepedit.request import MAX_PROMPT_CHARS
from stepedit.settings import Settings

PUBLIC_IP = "93.184.216.34"
T = TypeVar("T")


def encode(width: int, height: int, fmt: str = "PNG", color: str = "red", **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


# --- decoding -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_accepted_formats_decode_to_rgb(fmt: str) -> None:
    decoded = decode_image(encode(80, 64, fmt), OPENAI_EDITS_RULES)
    assert (decoded.width, decoded.height) == (80, 64)
    assert decoded.image.mode == "RGB"
    assert Image.open(io.BytesIO(decoded.to_png_bytes())).size == (80, 64)


def test_rgba_and_palette_are_converted_to_rgb() -> None:
    buffer = io.BytesIO()
    Image.new("RGBA", (64, 64), (1, 2, 3, 4)).save(buffer, format="PNG")
    assert decode_image(buffer.getvalue()).image.mode == "RGB"
    buffer = io.BytesIO()
    Image.new("P", (64, 64)).save(buffer, format="PNG")
    assert decode_image(buffer.getvalue()).image.mode == "RGB"


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (120, 64), "blue")
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    decoded = decode_image(buffer.getvalue())
    assert (decoded.width, decoded.height) == (64, 120)


def test_not_an_image_is_unsupported_media_type() -> None:
    with pytest.raises(UnsupportedMediaType) as info:
        decode_image(b"hello, this is text and not a picture", param="image")
    assert info.value.param == "image"


def test_wrong_format_is_refused() -> None:
    with pytest.raises(UnsupportedMediaType, match="gif"):
        decode_image(encode(64, 64, "GIF"), OPENAI_EDITS_RULES)
    with pytest.raises(UnsupportedMediaType, match="bmp"):
        decode_image(encode(64, 64, "BMP"), OPENAI_EDITS_RULES)


def test_truncated_file_is_invalid_input_not_a_crash() -> None:
    noisy = Image.effect_noise((256, 256), 50).convert("RGB")
    buffer = io.BytesIO()
    noisy.save(buffer, format="PNG")
    data = buffer.getvalue()
    with pytest.raises(InvalidInput, match=r"truncated|corrupt"):
        decode_image(data[: len(data) // 2])


def test_empty_file() -> None:
    with pytest.raises(InvalidInput, match="empty"):
        decode_image(b"")


def test_huge_file_is_payload_too_large_before_decoding() -> None:
    with pytest.raises(PayloadTooLarge):
        decode_image(b"\x89PNG" + b"\0" * (10 * 1024 * 1024), OPENAI_EDITS_RULES)


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` pixels: what a decompression bomb looks like to a
    decoder that reads the header first (the pixel data here is missing altogether)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_from_the_header() -> None:
    with pytest.raises(InvalidInput, match=r"between|pixels") as info:
        decode_image(png_header(30000, 30000), DEFAULT_RULES)
    assert not isinstance(info.value, PayloadTooLarge)


def test_bomb_beyond_pillows_own_limit_is_refused() -> None:
    loose = ImageRules(max_side=10**6, max_pixels=10**12, max_bytes=10**9)
    with pytest.raises(InvalidInput, match="too many pixels"):
        decode_image(png_header(20000, 20000), loose)  # > 2 * Image.MAX_IMAGE_PIXELS
    with pytest.raises(InvalidInput, match="too many pixels"):
        decode_image(png_header(10000, 10000), loose)  # Pillow only warns here


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ((63, 200), "between 64 and 1728"),
        ((1729, 300), "between 64 and 1728"),
        ((1100, 1000), "area"),
        ((600, 180), "aspect"),
    ],
)
def test_seed_002_dimension_rules(size: tuple[int, int], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_image(encode(*size), OPENAI_EDITS_RULES)


def test_seed_002_dimension_limits_are_inclusive() -> None:
    decode_image(encode(1024, 1024), OPENAI_EDITS_RULES)
    decode_image(encode(64, 192), OPENAI_EDITS_RULES)  # exactly 1:3
    decode_image(encode(1728, 576), OPENAI_EDITS_RULES)  # 3:1, area < 1024^2


# --- base64 and data URIs -------------------------------------------------------------------


def test_data_uri_and_raw_base64_decode_to_the_same_bytes() -> None:
    data = encode(64, 64)
    b64 = base64.b64encode(data).decode()
    assert decode_base64_source(f"data:image/png;base64,{b64}", max_bytes=10**6) == data
    assert decode_base64_source(b64, max_bytes=10**6) == data
    urlsafe = base64.urlsafe_b64encode(data).decode().rstrip("=")
    assert decode_base64_source(urlsafe, max_bytes=10**6) == data


@pytest.mark.parametrize(
    "value", ["not base64 at all!", "data:image/png,rawtext", "", "data:;base64,@@"]
)
def test_bad_base64_is_invalid_input(value: str) -> None:
    with pytest.raises(InvalidInput) as info:
        decode_base64_source(value, max_bytes=10**6, param="image")
    assert info.value.param == "image"


def test_oversized_base64_is_refused_before_decoding() -> None:
    with pytest.raises(PayloadTooLarge):
        decode_base64_source("A" * 4000, max_bytes=1000)


# --- address blocking -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",
        "224.0.1.1",  # multicast that Python calls global
        "240.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "2002:7f00:1::",  # 6to4 wrapping 127.0.0.1
        "ff02::1",
    ],
)
def test_blocked_addresses(address: str) -> None:
    assert is_blocked_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", [PUBLIC_IP, "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_allowed(address: str) -> None:
    assert not is_blocked_address(ipaddress.ip_address(address))


# --- URL fetching ---------------------------------------------------------------------------


def test_loopback_and_localhost_urls_are_blocked_by_default() -> None:
    for url in ["http://127.0.0.1:9/x.png", "http://localhost:9/x.png", "http://[::1]:9/x.png"]:
        with pytest.raises(ImageFetchError, match="private") as info:
            run(fetch_image_bytes(url, FetchPolicy(), param="image"))
        assert info.value.param == "image"


def test_non_http_scheme_is_refused() -> None:
    with pytest.raises(ImageFetchError):
        run(fetch_image_bytes("file:///etc/passwd", FetchPolicy()))


def mock_transport(routes: dict[str, httpx.Response]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.host == PUBLIC_IP  # the connection goes to the checked address
        key = f"{request.headers['host']}{request.url.path}"
        return routes.get(key, httpx.Response(404))

    return httpx.MockTransport(handler)


def test_fetch_pins_the_checked_address_and_sends_the_original_host() -> None:
    data = encode(64, 64)
    transport = mock_transport({f"{PUBLIC_IP}/a.png": httpx.Response(200, content=data)})
    got = run(fetch_image_bytes(f"http://{PUBLIC_IP}/a.png", FetchPolicy(), transport=transport))
    assert got == data


def test_redirect_to_a_blocked_address_is_refused() -> None:
    transport = mock_transport(
        {f"{PUBLIC_IP}/a.png": httpx.Response(302, headers={"location": "http://127.0.0.1/x"})}
    )
    with pytest.raises(ImageFetchError, match="private"):
        run(fetch_image_bytes(f"http://{PUBLIC_IP}/a.png", FetchPolicy(), transport=transport))


def test_redirect_loop_is_bounded() -> None:
    transport = mock_transport(
        {f"{PUBLIC_IP}/a.png": httpx.Response(302, headers={"location": "/a.png"})}
    )
    with pytest.raises(ImageFetchError, match="redirected"):
        run(fetch_image_bytes(f"http://{PUBLIC_IP}/a.png", FetchPolicy(), transport=transport))


def test_http_error_status_is_a_fetch_error() -> None:
    transport = mock_transport({})
    with pytest.raises(ImageFetchError, match="404"):
        run(
            fetch_image_bytes(f"http://{PUBLIC_IP}/missing.png", FetchPolicy(), transport=transport)
        )


def test_size_limit_while_streaming() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"\0" * 1000

    transport = mock_transport({f"{PUBLIC_IP}/big": httpx.Response(200, content=chunks())})
    with pytest.raises(PayloadTooLarge):
        run(
            fetch_image_bytes(
                f"http://{PUBLIC_IP}/big", FetchPolicy(max_bytes=5000), transport=transport
            )
        )


class _ImageHandler(BaseHTTPRequestHandler):
    body = encode(64, 64)

    def do_GET(self) -> None:
        if self.path == "/slow":
            threading.Event().wait(3)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def local_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_private_url_allowed_with_the_setting(local_server: str) -> None:
    policy = FetchPolicy(allow_private_urls=True)
    decoded = run(load_image_source(f"{local_server}/cat.png", DEFAULT_RULES, policy))
    assert decoded.width == 64
    with pytest.raises(ImageFetchError, match="private"):
        run(load_image_source(f"{local_server}/cat.png", DEFAULT_RULES, FetchPolicy()))


def test_fetch_timeout(local_server: str) -> None:
    policy = FetchPolicy(allow_private_urls=True, timeout_s=0.5)
    with pytest.raises(ImageFetchError, match="timed out"):
        run(fetch_image_bytes(f"{local_server}/slow", policy))


def test_unreachable_url() -> None:
    policy = FetchPolicy(allow_private_urls=True, timeout_s=5)
    with pytest.raises(ImageFetchError, match="could not be fetched"):
        run(fetch_image_bytes("http://127.0.0.1:9/x.png", policy))


def test_unresolvable_host() -> None:
    with pytest.raises(ImageFetchError, match="resolved"):
        run(fetch_image_bytes("http://no-such-host.invalid/x.png", FetchPolicy(timeout_s=5)))


@pytest.mark.parametrize(
    "url",
    ["http://[::1", "http://host:99999/x", "http://" + "a" * 300 + ".com/", "http://\u2603..com/x"],
)
def test_malformed_urls_are_fetch_errors(url: str) -> None:
    with pytest.raises(ImageFetchError):
        run(fetch_image_bytes(url, FetchPolicy(timeout_s=5)))


@pytest.mark.parametrize("url", ["http://[::1", "ftp://x/y", "http://127.0.0.1/hook"])
def test_bad_callback_urls(url: str) -> None:
    with pytest.raises(InvalidInput) as info:
        run(check_callback_url(url, FetchPolicy()))
    assert info.value.param == "webhook"


def test_callback_url_allowed_for_private_deployments() -> None:
    policy = FetchPolicy(allow_private_urls=True)
    assert run(check_callback_url("http://127.0.0.1:8/h", policy)) == "http://127.0.0.1:8/h"


def test_prompt_checks() -> None:
    assert check_prompt("  add a hat ", 20) == "add a hat"
    for bad in ["", "   ", "x" * 21, "\ud800"]:
        with pytest.raises(InvalidInput):
            check_prompt(bad, 20)
    assert check_prompt("", 20, param="negative_prompt", allow_empty=True) == ""
    assert check_prompt("x" * MAX_PROMPT_CHARS) == "x" * MAX_PROMPT_CHARS
    with pytest.raises(InvalidInput):
        check_prompt("x" * (MAX_PROMPT_CHARS + 1))


def test_settings_tighten_the_image_rules_and_never_loosen_them() -> None:
    tight = Settings(max_upload_bytes=1024 * 1024, max_input_pixels=1000 * 1000)
    rules = rules_from_settings(tight)
    assert (rules.max_bytes, rules.max_pixels) == (1024 * 1024, 1000 * 1000)
    assert rules.max_side == DEFAULT_RULES.max_side
    with pytest.raises(InvalidInput):  # 1200 x 1000 pixels: over the server's limit
        decode_image(encode(1200, 1000), rules)
    loose = Settings(max_upload_bytes=100 * 1024 * 1024, max_input_pixels=10**9)
    assert rules_from_settings(loose, OPENAI_EDITS_RULES) == OPENAI_EDITS_RULES
    assert rules_from_settings(loose) == DEFAULT_RULES


def test_fetch_policy_from_settings() -> None:
    settings = Settings(
        allow_private_urls=True, max_upload_bytes=5 * 1024 * 1024, image_fetch_timeout_s=2.5
    )
    assert fetch_policy_from_settings(settings) == FetchPolicy(
        allow_private_urls=True, max_bytes=5 * 1024 * 1024, timeout_s=2.5
    )


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    """An HTTPS image server on loopback with a self-signed certificate for `img.test`."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=img.test",
         "-addext", "subjectAltName=DNS:img.test"],
        check=True, capture_output=True,
    )  # fmt: skip
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], str(cert)
    server.shutdown()


def test_https_fetch_pins_the_address_and_still_verifies_the_hostname(
    tls_server: tuple[int, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, cert = tls_server

    async def resolve(host: str, port: int) -> list[ipaddress.IPv4Address]:
        return [ipaddress.IPv4Address("127.0.0.1")]

    monkeypatch.setattr("stepedit.inputs.resolve_addresses", resolve)
    policy = FetchPolicy(allow_private_urls=True, timeout_s=10)
    trusted = httpx.AsyncHTTPTransport(verify=ssl.create_default_context(cafile=cert))
    data = run(fetch_image_bytes(f"https://img.test:{port}/a.png", policy, transport=trusted))
    assert data == _ImageHandler.body
    # The certificate is for img.test: the same address under another name must fail.
    trusted = httpx.AsyncHTTPTransport(verify=ssl.create_default_context(cafile=cert))
    with pytest.raises(ImageFetchError):
        run(fetch_image_bytes(f"https://other.test:{port}/a.png", policy, transport=trusted))
