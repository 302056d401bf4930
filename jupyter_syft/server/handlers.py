"""`/jupyter-syft/api/...`: the REST API of the Syft sidebar.

Every handler is a jupyter_server `APIHandler` behind `@tornado.web.authenticated`, so it
takes the same token or cookie as the rest of Jupyter's API (and its XSRF check on POST).
Backend calls block on the peer network, so they run in a worker thread; their errors become
JSON `{"message": ...}` replies with a status that says what kind of failure it was.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from jupyter_syft.errors import (
    ConflictError,
    InvalidError,
    NotAuthorisedError,
    NotFoundError,
    SyftError,
    Unreachable,
)
from jupyter_syft.server.backend import Backend

STATUS: list[tuple[type[Exception], int]] = [
    (InvalidError, 400),
    (NotAuthorisedError, 403),
    (NotFoundError, 404),
    (ConflictError, 409),
    (Unreachable, 503),
    (SyftError, 502),  # the domain answered with an error of its own
]


class SyftHandler(APIHandler):
    """Runs one backend call off the event loop and answers with its JSON."""

    def initialize(self, backend: Backend) -> None:
        self.backend = backend

    async def reply(self, call: Callable[..., Any], *args: Any) -> None:
        try:
            result = await asyncio.get_running_loop().run_in_executor(None, call, *args)
        except SyftError as exc:
            status = next(code for kind, code in STATUS if isinstance(exc, kind))
            self.set_status(status)
            self.finish(json.dumps({"message": str(exc)}))
            return
        self.finish(json.dumps(result))

    def argument(self, name: str) -> str:
        value = self.get_query_argument(name, "")
        if not value:
            raise web.HTTPError(400, f"missing query argument {name!r}")
        return value


class StateHandler(SyftHandler):
    @web.authenticated
    async def get(self) -> None:
        await self.reply(self.backend.state)


class PendingHandler(SyftHandler):
    """GET: the requests waiting for your decision (the Lab's notifications poll it)."""

    @web.authenticated
    async def get(self) -> None:
        await self.reply(self.backend.pending)


class DatasetsHandler(SyftHandler):
    @web.authenticated
    async def get(self) -> None:
        await self.reply(self.backend.search, self.get_query_argument("q", ""))


class PreviewHandler(SyftHandler):
    @web.authenticated
    async def get(self) -> None:
        await self.reply(self.backend.preview, self.argument("domain"), self.argument("dataset"))


class DecisionsHandler(SyftHandler):
    @web.authenticated
    async def post(self) -> None:
        try:
            body = json.loads(self.request.body or b"{}")
            domain, request_id = str(body["domain"]), str(body["request_id"])
            approve, reason = body["approve"], str(body.get("reason", ""))
        except (ValueError, KeyError, TypeError):
            raise web.HTTPError(400, "expected {domain, request_id, approve, reason}") from None
        if not isinstance(approve, bool):
            raise web.HTTPError(400, "approve must be true or false")
        await self.reply(self.backend.decide, domain, request_id, approve, reason)


class ReleaseErrorHandler(SyftHandler):
    """POST {domain, request_id}: the scientist may read that failed job's error and log."""

    @web.authenticated
    async def post(self) -> None:
        domain, request_id = _target(self.request.body)
        await self.reply(self.backend.release_error, domain, request_id)


class HeldResultHandler(SyftHandler):
    """GET ?domain=&request_id=: a preview of a result awaiting release; POST {domain,
    request_id, release, reason}: release it to the scientist or withhold it."""

    @web.authenticated
    async def get(self) -> None:
        domain, request_id = self.argument("domain"), self.argument("request_id")
        await self.reply(self.backend.result_preview, domain, request_id)

    @web.authenticated
    async def post(self) -> None:
        domain, request_id = _target(self.request.body)
        body = json.loads(self.request.body)
        release, reason = body.get("release"), str(body.get("reason", ""))
        if not isinstance(release, bool):
            raise web.HTTPError(400, "release must be true or false")
        await self.reply(self.backend.decide_result, domain, request_id, release, reason)


def _target(raw: bytes) -> tuple[str, str]:
    """The {domain, request_id} of a POST body, or 400."""
    try:
        body = json.loads(raw or b"{}")
        return str(body["domain"]), str(body["request_id"])
    except (ValueError, KeyError, TypeError):
        raise web.HTTPError(400, "expected {domain, request_id, ...}") from None


def routes(base_url: str, backend: Backend) -> list[tuple[str, type[SyftHandler], dict]]:
    api = url_path_join(base_url, "jupyter-syft", "api")
    kwargs = {"backend": backend}
    return [
        (url_path_join(api, "state"), StateHandler, kwargs),
        (url_path_join(api, "pending"), PendingHandler, kwargs),
        (url_path_join(api, "datasets"), DatasetsHandler, kwargs),
        (url_path_join(api, "preview"), PreviewHandler, kwargs),
        (url_path_join(api, "decisions"), DecisionsHandler, kwargs),
        (url_path_join(api, "release_error"), ReleaseErrorHandler, kwargs),
        (url_path_join(api, "held_result"), HeldResultHandler, kwargs),
    ]
