"""Shared FastAPI dependencies as `Annotated` aliases: settings, the job service, the caller."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from stepedit.errors import Unauthorized
from stepedit.jobs.service import JobService
from stepedit.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="An API key from STEPEDIT_API_KEYS")


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_job_service(request: Request) -> JobService:
    service: JobService = request.app.state.job_service
    return service


def owner_for_key(key: str) -> str:
    """Jobs are owned by a hash of the key, so the database never holds a usable key."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def get_owner(
    settings: Annotated[Settings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str | None:
    """The caller's owner id; None for anonymous use (no keys configured: any key is ignored)."""
    if not settings.api_keys:
        return None
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    given = credentials.credentials.encode()
    if not any(hmac.compare_digest(given, key.encode()) for key in settings.api_keys):
        raise Unauthorized("invalid API key")
    return owner_for_key(credentials.credentials)


AppSettings = Annotated[Settings, Depends(get_settings)]
Jobs = Annotated[JobService, Depends(get_job_service)]
Owner = Annotated[str | None, Depends(get_owner)]
# A flavour router's `dependencies=`: the key is checked before anything reads the body, so a
# caller without one gets 401 (with `WWW-Authenticate: Bearer`, `stepedit.api.errors`), not a
# validation error. Routes naming `Owner` get the same, cached, answer.
AUTHENTICATED = [Depends(get_owner)]
