"""``create_app``: the management API's routes over a ``Control``."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

import trio

from ..config import ConfigError
from ..control import Control, NotAvailable, UnknownService
from ._answers import error_answer
from ._chaos import CHAOS_PATHS, register_chaos
from ._events import EventStream
from ._http import App, Request, Response, json_response
from ._openapi import openapi_document

if TYPE_CHECKING:
    from ._websocket import WebSocket

MAX_LOG_LINES = 1000
#: How long a rendered /status may be served again when no event happened meanwhile.
STATUS_REUSE = 0.1

Handler = Callable[..., Awaitable[Response]]


def unknown_service(error: UnknownService) -> Response:
    return error_answer(
        404, "unknown_service", f"no service named {error.name!r}", known=error.known
    )


def create_app(
    control: Control, *, token: str | None = None, open_changes: bool = True, chaos: bool = False
) -> App:
    """Build the app.

    ``token``: when set, state-changing endpoints and the event stream need
    ``Authorization: Bearer TOKEN``. ``open_changes``: whether changes are allowed without a token
    (only when the API listens on loopback or a Unix socket).
    """
    app = App()

    def authorized(header: str | None) -> bool:
        if token is None:
            return open_changes
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[len("Bearer ") :].encode(), token.encode())

    def guarded(handler: Handler) -> Handler:
        async def wrapper(request: Request, **params: str) -> Response:
            if not authorized(request.headers.get("authorization")):
                if token is None:
                    return error_answer(
                        403,
                        "forbidden",
                        "changes need a token when the API listens beyond loopback",
                    )
                return error_answer(401, "unauthorized", "missing or wrong bearer token")
            if request.body.strip():
                try:
                    parsed = json.loads(request.body)
                except ValueError:
                    return error_answer(400, "bad_request", "the body is not valid JSON")
                if not isinstance(parsed, dict):
                    return error_answer(400, "bad_request", "the body must be a JSON object")
            return await handler(request, **params)

        wrapper.__name__ = handler.__name__
        return wrapper

    _register_reads(app, control, chaos=chaos)
    _register_actions(app, control, guarded)
    if chaos:  # fault injection, for test rigs only (config: chaos.enabled)
        register_chaos(app, control, guarded)
    stream = EventStream(control, app)

    @app.websocket("/events")
    async def events(request: Request, socket: WebSocket) -> None:
        # Browsers cannot set headers on a websocket: the dashboard passes ?token= instead.
        header = request.headers.get("authorization")
        if header is None and "token" in request.query:
            header = f"Bearer {request.query['token']}"
        if token is not None and not authorized(header):
            socket.reject(error_answer(401, "unauthorized", "missing or wrong bearer token"))
            return
        await stream.serve(request, socket)

    return app


def _register_reads(app: App, control: Control, *, chaos: bool = False) -> None:
    """Read-only endpoints: open to probes and dashboards."""
    registry: Any = None

    @app.get("/")
    async def dashboard(request: Request) -> Response:
        page = resources.files("dev8.api").joinpath("dashboard.html").read_bytes()
        return Response(200, page, "text/html; charset=utf-8")

    @app.get("/openapi.json")
    async def openapi(request: Request) -> Response:
        document = openapi_document()
        if chaos:
            document["paths"].update(CHAOS_PATHS)
        return json_response(document)

    @app.get("/health")
    async def health(request: Request) -> Response:
        healthy, body = control.health()
        return json_response(body, 200 if healthy else 503)

    @app.get("/ready")
    async def ready(request: Request) -> Response:
        is_ready, body = control.ready()
        return json_response(body, 200 if is_ready else 503)

    rendered: tuple[int, float, Response] | None = None

    @app.get("/status")
    async def status(request: Request) -> Response:
        # Agents and dashboards poll this: the body is rendered again only once something
        # happened (an event) or STATUS_REUSE seconds went by (uptime, probe timings).
        nonlocal rendered
        now = trio.current_time()
        if (
            rendered is None
            or rendered[0] != control.bus.last_seq
            or now - rendered[1] > STATUS_REUSE
        ):
            rendered = (control.bus.last_seq, now, json_response(control.status()))
        return rendered[2]

    @app.get("/connections")
    async def connections(request: Request) -> Response:
        return json_response(control.connections())

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        # prometheus_client is imported on the first scrape, not at start-up.
        from prometheus_client import CONTENT_TYPE_LATEST  # noqa: PLC0415

        from ..metrics import make_registry, render  # noqa: PLC0415

        nonlocal registry
        if registry is None:
            registry = make_registry(control)
        return Response(200, render(registry), CONTENT_TYPE_LATEST)

    @app.get("/services/{name}/logs")
    async def logs(request: Request, name: str) -> Response:
        text = request.query.get("lines", "100")
        since = request.query.get("since", "0")
        if not text.isdigit() or not 1 <= int(text) <= MAX_LOG_LINES:
            return error_answer(
                400,
                "bad_request",
                f"lines must be a whole number from 1 to {MAX_LOG_LINES}",
                parameter="lines",
            )
        if not since.isdigit():
            return error_answer(
                400, "bad_request", "since must be a whole number", parameter="since"
            )
        try:
            lines = control.logs(name, int(text), since=int(since))
        except UnknownService as error:
            return unknown_service(error)
        return json_response({"service": name, "lines": lines})


def _register_actions(app: App, control: Control, guarded: Callable[[Handler], Handler]) -> None:
    """State-changing endpoints: each behind ``guarded`` (token and body checks)."""

    async def act(name: str, action: Callable[[str], Awaitable[Any]]) -> Response:
        try:
            node = await action(name)
        except UnknownService as error:
            return unknown_service(error)
        return json_response(
            {"service": name, "state": node.state.value, "restarts": node.restarts}
        )

    @app.post("/restart/{service}")
    @guarded
    async def restart(request: Request, service: str) -> Response:
        return await act(service, control.restart_service)

    @app.post("/services/{name}/restart")
    @guarded
    async def restart_service(request: Request, name: str) -> Response:
        return await act(name, control.restart_service)

    @app.post("/services/{name}/stop")
    @guarded
    async def stop_service(request: Request, name: str) -> Response:
        return await act(name, control.stop_service)

    @app.post("/services/{name}/start")
    @guarded
    async def start_service(request: Request, name: str) -> Response:
        return await act(name, control.start_service)

    @app.post("/reload")
    @guarded
    async def reload(request: Request) -> Response:
        try:
            return json_response(await control.reload())
        except ConfigError as error:
            return error_answer(422, "invalid_config", str(error))
        except NotAvailable as error:
            return error_answer(409, "not_available", str(error))

    @app.post("/secrets/refresh")
    @guarded
    async def refresh_secrets(request: Request) -> Response:
        try:
            return json_response(await control.refresh_secrets())
        except NotAvailable as error:
            return error_answer(409, "not_available", str(error))
