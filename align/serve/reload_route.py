"""``POST /v1/indexes/{name}/reload``: check one index folder now (``align.serve.reload``).

Its own module because ``align.serve.reload`` imports no fastapi (a ``Searcher`` user can poll
without the serve extra), and FastAPI reads the handler's annotations from its module's globals.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException

from align.serve.http_models import ReloadResponse
from align.serve.reload import IndexReloader


def reload_routes(router: APIRouter) -> None:
    """The route on ``router`` (the ``/v1`` router: the token rule of every ``/v1`` path applies,
    enforced by ``GateMiddleware`` before the route runs)."""

    @router.post(
        "/indexes/{name}/reload",
        response_model=ReloadResponse,
        summary="check an index folder now; load it if it changed (the old one serves until then)",
    )
    async def reload_index(request: Request, name: str) -> dict[str, Any]:
        reloader: IndexReloader = request.app.state.reloader
        known = sorted(reloader.searcher.indexes)
        if name not in known:  # 404 (ERRORS documents the shape): the name is the URL's
            raise HTTPException(404, f"no index named {name!r} is loaded; loaded: {known}")
        outcome = await asyncio.to_thread(reloader.check, name, force=True)  # a load takes seconds: off the loop
        return asdict(outcome)
