"""The playground's static files at `/`, mounted after every API route.

A mount at `/` matches every path, and Starlette prefers it to a route that matches the path
but not the method, so without care `GET /v1/images/edits` would be a file lookup (404) and
`DELETE /v1/jobs` the file server's 405 (`Allow: GET, HEAD`). `Playground` answers first what
the API routes would: a path an API route serves with other methods is a 405 naming them all,
and a path under an API flavour's prefix that no route serves is a 404, both in the flavour's
shape (they are raised, for the app's error handlers). Only the rest are files.
"""

from __future__ import annotations

from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.routing import Match, Mount, Router
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from stepedit.api.flavours import FlavourRegistry

# The methods a 405 may name: probed one by one (FastAPI keeps included routers' routes behind
# `matches`, so asking each route whether it serves the path with that method is the way).
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class Playground:
    def __init__(self, router: Router, flavours: FlavourRegistry, web_dir: Path | None) -> None:
        self.router = router
        self.flavours = flavours
        self.files = StaticFiles(directory=web_dir, html=True) if web_dir else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        allowed = self.methods_served(scope)
        if allowed:
            raise HTTPException(
                405,
                f"{scope['method']} is not allowed here; use {' or '.join(allowed)}.",
                headers={"Allow": ", ".join(allowed)},
            )
        if self.files is None or self.is_api_path(str(scope["path"])):
            raise HTTPException(404)
        await self.files(scope, receive, send)

    def methods_served(self, scope: Scope) -> list[str]:
        """The methods an API route serves this path with (none when the path is no route's)."""
        routes = [route for route in self.router.routes if not isinstance(route, Mount)]
        served = []
        for method in METHODS:
            probe = {k: v for k, v in scope.items() if k != "fastapi"}  # matching writes there
            probe["method"] = method
            if any(route.matches(probe)[0] is Match.FULL for route in routes):
                served.append(method)
        return served

    def is_api_path(self, path: str) -> bool:
        return any(flavour.serves(path) for flavour in self.flavours)
