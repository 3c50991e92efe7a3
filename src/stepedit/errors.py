"""The typed errors stepedit raises; `api/errors.py` maps each to HTTP once, per API flavour."""

from __future__ import annotations


class StepEditError(Exception):
    """Base class. `code` is a stable machine-readable name used in every error body."""

    code: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidInput(StepEditError):
    """The request itself is wrong: a field out of range, not an image, too large..."""

    code = "invalid_request"


class UnsupportedMediaType(InvalidInput):
    """The upload is an image format we do not accept."""

    code = "unsupported_media_type"


class PayloadTooLarge(InvalidInput):
    """An upload or a fetched image is larger than the configured limit."""

    code = "payload_too_large"


class ImageFetchError(InvalidInput):
    """An image URL could not be fetched (unreachable, blocked address, timeout, too large)."""

    code = "image_fetch_failed"


class Unauthorized(StepEditError):
    code = "unauthorized"


class QuotaExceeded(StepEditError):
    code = "quota_exceeded"


class NotFound(StepEditError):
    code = "not_found"


class QueueFull(StepEditError):
    """The job queue is at capacity; the client should retry later."""

    code = "queue_full"


class ServiceUnavailable(StepEditError):
    """A dependency (database, broker, model) is not available right now."""

    code = "service_unavailable"
    retry_after_s: int | None = None  # the Retry-After to send; None: the API's default


class InsufficientStorage(ServiceUnavailable):
    """The server's disk (or its database's) is full: nothing new can be stored until space is
    freed. HTTP 507 (or 503) with Retry-After; a subclass, so callers of ServiceUnavailable
    still catch it."""

    code = "insufficient_storage"
    retry_after_s = 60


class JobCanceled(StepEditError):
    """The job a synchronous call waited for was canceled (by its owner) before it finished:
    a client-side outcome, HTTP 409 in each flavour's shape."""

    code = "canceled"


class WeightsError(StepEditError):
    """A checkpoint could not be loaded: unknown layout, missing/unexpected/mis-shaped keys."""

    code = "weights_error"


class ModelOutputError(StepEditError):
    """The model produced something we could not use (e.g. an unparsable MLLM answer)."""

    code = "model_output_error"
