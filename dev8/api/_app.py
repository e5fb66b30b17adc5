"""``create_app``: the Quart-Trio application over a ``Control``."""

from __future__ import annotations

import contextlib
import hmac
import json
import os
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST
from quart import Response, request, websocket
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from actors import Envelope, SubscriberLagged, Subscription

from ..config import ConfigError
from ..control import Control, NotAvailable, UnknownService
from ..metrics import make_registry, render
from ._chaos import CHAOS_PATHS, register_chaos
from ._openapi import openapi_document

#: Websocket close code for a subscriber that fell behind (private range 4000-4999).
CLOSE_LAGGED = 4001
MAX_LOG_LINES = 1000

Handler = Callable[..., Awaitable[Any]]


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")


def error_response(status: int, code: str, message: str, **extra: Any) -> Response:
    return json_response({"error": {"code": code, "message": message, **extra}}, status)


def unknown_service(error: UnknownService) -> Response:
    return error_response(
        404, "unknown_service", f"no service named {error.name!r}", known=error.known
    )


def create_app(
    control: Control, *, token: str | None = None, open_changes: bool = True, chaos: bool = False
) -> QuartTrio:
    """Build the app.

    ``token``: when set, state-changing endpoints and the event stream need
    ``Authorization: Bearer TOKEN``. ``open_changes``: whether changes are allowed without a token
    (only when the API listens on loopback or a Unix socket).
    """
    app = QuartTrio(__name__, root_path=os.path.dirname(__file__))
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024

    def authorized(header: str | None) -> bool:
        if token is None:
            return open_changes
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[len("Bearer ") :].encode(), token.encode())

    def guarded(handler: Handler) -> Handler:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not authorized(request.headers.get("Authorization")):
                if token is None:
                    return error_response(
                        403,
                        "forbidden",
                        "changes need a token when the API listens beyond loopback",
                    )
                return error_response(401, "unauthorized", "missing or wrong bearer token")
            body = await request.get_data(as_text=False)
            if body.strip():
                try:
                    parsed = json.loads(body)
                except ValueError:
                    return error_response(400, "bad_request", "the body is not valid JSON")
                if not isinstance(parsed, dict):
                    return error_response(400, "bad_request", "the body must be a JSON object")
            return await handler(*args, **kwargs)

        wrapper.__name__ = handler.__name__
        return wrapper

    _register_reads(app, control, chaos=chaos)
    _register_actions(app, control, guarded)
    if chaos:  # fault injection, for test rigs only (config: chaos.enabled)
        register_chaos(app, control, guarded)

    @app.websocket("/events")
    async def events() -> None:
        # Browsers cannot set headers on a websocket: the dashboard passes ?token= instead.
        header = websocket.headers.get("Authorization")
        if header is None and "token" in websocket.args:
            header = f"Bearer {websocket.args['token']}"
        if token is not None and not authorized(header):
            await websocket.close(1008, "missing or wrong bearer token")
            return
        await stream_events(control)

    return app


def _register_reads(app: QuartTrio, control: Control, *, chaos: bool = False) -> None:
    """Read-only endpoints: open to probes and dashboards."""
    registry = make_registry(control)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        code = (error.name or "error").lower().replace(" ", "_")
        response = error_response(error.code or 500, code, error.description or code)
        for name, value in error.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value  # Allow on a 405 (RFC 9110)
        return response

    @app.get("/")
    async def dashboard() -> Response:
        page = resources.files("dev8.api").joinpath("dashboard.html").read_text("utf-8")
        return Response(page, content_type="text/html; charset=utf-8")

    @app.get("/openapi.json")
    async def openapi() -> Response:
        document = openapi_document()
        if chaos:
            document["paths"].update(CHAOS_PATHS)
        return json_response(document)

    @app.get("/health")
    async def health() -> Response:
        healthy, body = control.health()
        return json_response(body, 200 if healthy else 503)

    @app.get("/ready")
    async def ready() -> Response:
        is_ready, body = control.ready()
        return json_response(body, 200 if is_ready else 503)

    @app.get("/status")
    async def status() -> Response:
        return json_response(control.status())

    @app.get("/connections")
    async def connections() -> Response:
        return json_response(control.connections())

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(render(registry), content_type=CONTENT_TYPE_LATEST)

    @app.get("/services/<name>/logs")
    async def logs(name: str) -> Response:
        text = request.args.get("lines", "100")
        since = request.args.get("since", "0")
        if not text.isdigit() or not 1 <= int(text) <= MAX_LOG_LINES:
            return error_response(
                400, "bad_request", f"lines must be a whole number from 1 to {MAX_LOG_LINES}"
            )
        if not since.isdigit():
            return error_response(400, "bad_request", "since must be a whole number")
        try:
            lines = control.logs(name, int(text), since=int(since))
        except UnknownService as error:
            return unknown_service(error)
        return json_response({"service": name, "lines": lines})


def _register_actions(
    app: QuartTrio, control: Control, guarded: Callable[[Handler], Handler]
) -> None:
    """State-changing endpoints: each behind ``guarded`` (token and body checks)."""

    async def act(name: str, action: Callable[[str], Awaitable[Any]]) -> Response:
        try:
            node = await action(name)
        except UnknownService as error:
            return unknown_service(error)
        return json_response(
            {"service": name, "state": node.state.value, "restarts": node.restarts}
        )

    @app.post("/restart/<service>")
    @guarded
    async def restart(service: str) -> Response:
        return await act(service, control.restart_service)

    @app.post("/services/<name>/restart")
    @guarded
    async def restart_service(name: str) -> Response:
        return await act(name, control.restart_service)

    @app.post("/services/<name>/stop")
    @guarded
    async def stop_service(name: str) -> Response:
        return await act(name, control.stop_service)

    @app.post("/services/<name>/start")
    @guarded
    async def start_service(name: str) -> Response:
        return await act(name, control.start_service)

    @app.post("/reload")
    @guarded
    async def reload() -> Response:
        try:
            return json_response(await control.reload())
        except ConfigError as error:
            return error_response(422, "invalid_config", str(error))
        except NotAvailable as error:
            return error_response(409, "not_available", str(error))

    @app.post("/secrets/refresh")
    @guarded
    async def refresh_secrets() -> Response:
        try:
            return json_response(await control.refresh_secrets())
        except NotAvailable as error:
            return error_response(409, "not_available", str(error))


async def stream_events(control: Control) -> None:
    """One websocket subscriber: optional resume point and filters from the query string."""
    since_text = websocket.args.get("since")
    kinds = {k for k in websocket.args.get("kind", "").split(",") if k}
    services = {s for s in websocket.args.get("service", "").split(",") if s}
    if since_text is not None and not since_text.isdigit():
        await websocket.close(1008, "since must be a whole number")
        return
    since = int(since_text) if since_text is not None else None

    def accept(envelope: Envelope) -> bool:
        event = envelope.event
        if kinds and event.kind not in kinds:
            return False
        if services:
            name = getattr(event, "service", None) or getattr(event, "child", None)
            return (name or event.source.rsplit("/", 1)[-1]) in services
        return True

    # Subscribe before accepting: a client that sees the handshake complete misses nothing after.
    with control.bus.subscribe(since=since, accept=accept) as subscription:
        await websocket.accept()
        control.websocket_clients += 1
        try:
            await _send_events(control, subscription)
        finally:
            control.websocket_clients -= 1


async def _send_events(control: Control, subscription: Subscription) -> None:
    if subscription.missed:
        resync = {"kind": "resync", "seq": control.bus.last_seq, "data": control.status()}
        await websocket.send(json.dumps(resync))
    async with trio.open_nursery() as nursery:

        async def drop_when_lagged() -> None:
            await subscription.wait_lagged()
            nursery.cancel_scope.cancel()

        nursery.start_soon(drop_when_lagged)
        with contextlib.suppress(SubscriberLagged):
            async for envelope in subscription:
                await websocket.send(json.dumps(envelope.to_dict()))
        nursery.cancel_scope.cancel()
    if subscription.lagged:
        await websocket.close(
            CLOSE_LAGGED, f"fell behind; resume with since={subscription.last_seq}"
        )
