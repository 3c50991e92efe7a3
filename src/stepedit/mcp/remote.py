"""`RemoteBackend`: a running stepedit server, through its native job API.

    POST /v1/jobs            {image, prompt, ...EditRequest fields} -> the job (202)
    GET  /v1/jobs/{id}       the job: status, progress, outputs [{url, seed}], error
    POST /v1/jobs/{id}/cancel
    POST /v1/prompt/enhance  {prompt, image?} -> {prompt, enhanced_prompt}
    GET  /health             status, model_version; a fleet's live workers

An edit is submitted, then polled until it ends; its outputs are downloaded and returned as
images. Image URLs and base64 are sent as they are (the server fetches URLs, under its own URL
policy); a local path is read here and sent as a data URI. Any 4xx/5xx becomes a
`ServerError` carrying the server's own message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx

from stepedit import __version__
from stepedit.errors import ServiceUnavailable, StepEditError
from stepedit.mcp.backend import EditResult, JobResult, OutputImage, ProgressFn
from stepedit.mcp.images import ImageArg, image_size, read_file, to_data_uri
from stepedit.request import EditRequest

logger = logging.getLogger(__name__)

# The EditRequest fields the native API takes (JobCreate).
NATIVE_FIELDS = (
    "prompt",
    "negative_prompt",
    "seed",
    "guidance_scale",
    "num_inference_steps",
    "size_level",
    "num_images",
    "strength",
    "enable_thinking",
    "enable_reflection",
    "enhance_prompt",
    "output_format",
)
TERMINAL = frozenset({"succeeded", "failed", "canceled"})
ENHANCE_TIMEOUT_S = 330.0  # the server itself waits up to 300 s for the enhancer
POLL_FIRST_S = 0.2
POLL_MAX_S = 1.0


class ServerError(StepEditError):
    """The stepedit server answered an error status; `message` is its own."""

    def __init__(self, status: int, code: str, message: str, *, param: str | None = None) -> None:
        where = f" [{param}]" if param else ""
        super().__init__(f"HTTP {status} {code}: {message}{where}", param=param)
        self.status = status
        self.code = code


class JobNotFinished(StepEditError):
    code = "timeout"


class RemoteBackend:
    mode = "remote"
    has_jobs = True

    def __init__(
        self,
        server_url: str,
        api_key: str | None = None,
        *,
        wait_s: float = 600.0,
        timeout_s: float = 60.0,
    ) -> None:
        self.server_url = server_url.rstrip("/")
        self.api_key = api_key
        self.wait_s = wait_s  # how long edit_image waits for a job before handing back its id
        self.timeout_s = timeout_s  # one HTTP request
        self._client: httpx.AsyncClient | None = None
        self._files: httpx.AsyncClient | None = None
        self._version: str | None = None  # the server's model version, once asked ("": none)

    # ------------------------------------------------------------------ life

    async def __aenter__(self) -> RemoteBackend:
        headers = {"User-Agent": f"stepedit-mcp/{__version__}"}
        self._files = httpx.AsyncClient(headers=headers, timeout=self.timeout_s)
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        self._client = httpx.AsyncClient(
            base_url=self.server_url, headers=headers, timeout=self.timeout_s
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in (self._client, self._files):
            if client is not None:
                await client.aclose()

    # ------------------------------------------------------------------ tools

    async def edit(self, image: ImageArg, request: EditRequest, progress: ProgressFn) -> EditResult:
        body = native_body(request)
        body["image"] = await self._image_field(image)
        view = await self._json("POST", "/v1/jobs", json=body)
        job_id = str(view["id"])
        logger.info("job %s submitted to %s", job_id, self.server_url)
        try:
            view = await self._wait(view, progress)
        except asyncio.CancelledError:
            await asyncio.shield(self._cancel(job_id))
            raise
        if view["status"] != "succeeded":
            raise _job_error(view)
        images = await self._outputs(view)
        return EditResult(
            images=images,
            prompt_used=view.get("prompt_used") or request.prompt,
            passes=list(view.get("passes") or []),
            model_version=await self._served_version(view),
            job_id=job_id,
        )

    async def enhance(self, prompt: str, image: ImageArg | None) -> str:
        body: dict[str, Any] = {"prompt": prompt}
        if image is not None:
            body["image"] = await self._image_field(image)
        answer = await self._json(
            "POST", "/v1/prompt/enhance", json=body, timeout=ENHANCE_TIMEOUT_S
        )
        enhanced: str = answer.get("enhanced_prompt") or prompt
        return enhanced

    async def job(self, job_id: str, *, include_images: bool) -> JobResult:
        view = await self._json("GET", f"/v1/jobs/{quote(job_id, safe='')}")
        images = await self._outputs(view) if include_images else []
        return JobResult(view, images)

    async def models(self) -> dict[str, Any]:
        """/health as it is: 503 while the model loads is an answer, not an error."""
        response = await self._send("GET", "/health")
        try:
            health = response.json()
        except ValueError:
            _raise_for_status(response)
            raise ServerError(response.status_code, "bad_response", "/health is not JSON") from None
        if not isinstance(health, dict):
            raise ServerError(response.status_code, "bad_response", "/health is not an object")
        if response.status_code >= 400 and "status" not in health:
            _raise_for_status(response)
        return {"mode": self.mode, "server": self.server_url, **health}

    # ------------------------------------------------------------------ HTTP

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        assert self._client is not None, "enter the backend first (async with)"
        try:
            return await self._client.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise ServiceUnavailable(
                f"the stepedit server at {self.server_url} did not answer {method} {path} in time"
            ) from None
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise ServiceUnavailable(
                f"cannot reach the stepedit server at {self.server_url}: {reason}"
            ) from None

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await self._send(method, path, **kwargs)
        _raise_for_status(response)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ServerError(
                response.status_code, "bad_response", f"{method} {path} did not answer JSON"
            )
        return body

    async def _wait(self, view: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
        """Poll the job until it ends (or `wait_s` passes), relaying its progress."""
        job_id = view["id"]
        deadline = time.monotonic() + self.wait_s
        pause = POLL_FIRST_S
        while view["status"] not in TERMINAL:
            step = view.get("progress") or {}
            await progress(
                int(step.get("step") or 0),
                int(step.get("total_steps") or 0),
                str(step.get("stage")),
            )
            if time.monotonic() >= deadline:
                raise JobNotFinished(
                    f"job {job_id} is still {view['status']} after {self.wait_s:g} s and keeps "
                    f"running on the server: call get_job with job_id={job_id!r} and "
                    "include_images=true for its result"
                )
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, POLL_MAX_S)
            view = await self._json("GET", f"/v1/jobs/{job_id}")
        return view

    async def _served_version(self, view: dict[str, Any]) -> str | None:
        """The release that ran the job: the one it asked for, else the server's (once)."""
        asked = (view.get("request") or {}).get("model")
        if asked:
            return str(asked)
        if self._version is None:
            try:
                self._version = (await self.models()).get("model_version") or ""
            except StepEditError:
                return None
        return self._version or None

    async def _cancel(self, job_id: str) -> None:
        """The tool call was cancelled: cancel the job too (best effort)."""
        try:
            await self._send("POST", f"/v1/jobs/{job_id}/cancel", timeout=5.0)
        except StepEditError as exc:
            logger.warning("job %s: could not cancel it: %s", job_id, exc.message)

    async def _image_field(self, image: ImageArg) -> str:
        if image.kind != "path":
            return image.value
        data = await asyncio.to_thread(read_file, image.value)
        return to_data_uri(data, image.value)

    async def _outputs(self, view: dict[str, Any]) -> list[OutputImage]:
        return [await self._download(output) for output in view.get("outputs") or []]

    async def _download(self, output: dict[str, Any]) -> OutputImage:
        """One output file. The API key goes only to the server's own origin (outputs may
        live elsewhere, e.g. on S3)."""
        url = urljoin(self.server_url + "/", str(output["url"]))
        same_origin = _origin(url) == _origin(self.server_url)
        client = self._client if same_origin else self._files
        assert client is not None
        try:
            response = await client.get(url)
        except httpx.TransportError as exc:
            raise ServiceUnavailable(f"cannot download the output {url}: {exc}") from None
        _raise_for_status(response)
        data = response.content
        mime = response.headers.get("content-type", "image/png").split(";")[0].strip()
        width, height = await asyncio.to_thread(image_size, data)
        return OutputImage(data, mime, int(output["seed"]), width, height, url=url)


def native_body(request: EditRequest) -> dict[str, Any]:
    """The native API's JSON fields for `request` (the image is added by the caller)."""
    fields = request.to_dict()
    return {name: fields[name] for name in NATIVE_FIELDS}


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    code, message, param = "http_error", response.reason_phrase or "error", None
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):  # the native error body
        code = str(error.get("code") or code)
        message = str(error.get("message") or message)
        param = error.get("param") or None
    elif isinstance(body, dict) and "detail" in body:  # FastAPI's default body
        message = str(body["detail"])
    elif response.text.strip():
        message = response.text.strip()[:500]
    raise ServerError(response.status_code, code, message, param=param)


def _job_error(view: dict[str, Any]) -> StepEditError:
    error = view.get("error") or {}
    code = f" ({error['code']})" if error.get("code") else ""
    message = error.get("message") or "no reason given"
    return StepEditError(f"job {view['id']} {view['status']}{code}: {message}")


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc
