"""``create_app``: the Quart-Trio application over a ``Control``."""

from __future__ import annotations

import contextlib
import hmac
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from quart import Response, request, websocket
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from actors import Envelope, SubscriberLagged

from ..control import Control, UnknownService

#: Websocket close code for a subscriber that fell behind (private range 4000-4999).
CLOSE_LAGGED = 4001


def error_response(status: int, code: str, message: str, **extra: Any) -> Response:
    body = {"error": {"code": code, "message": message, **extra}}
    return Response(json.dumps(body), status=status, content_type="application/json")


def create_app(
    control: Control, *, token: str | None = None, open_changes: bool = True
) -> QuartTrio:
    """Build the app.

    ``token``: when set, state-changing endpoints and the event stream need
    ``Authorization: Bearer TOKEN``. ``open_changes``: whether changes are allowed without a token
    (only when the API listens on loopback or a Unix socket).
    """
    app = QuartTrio(__name__, root_path=os.path.dirname(__file__))
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024

    def authorized(header: str | None) -> bool:
        if token is None:
            return open_changes
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[len("Bearer ") :].encode(), token.encode())

    def guarded(
        handler: Callable[..., Awaitable[Any]],
    ) -> Callable[..., Awaitable[Any]]:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not authorized(request.headers.get("Authorization")):
                if token is None:
                    return error_response(
                        403,
                        "forbidden",
                        "changes need a token when the API listens beyond loopback",
                    )
                return error_response(401, "unauthorized", "missing or wrong bearer token")
            return await handler(*args, **kwargs)

        wrapper.__name__ = handler.__name__
        return wrapper

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        code = (error.name or "error").lower().replace(" ", "_")
        return error_response(error.code or 500, code, error.description or code)

    @app.get("/health")
    async def health() -> Response:
        healthy, body = control.health()
        return Response(
            json.dumps(body), status=200 if healthy else 503, content_type="application/json"
        )

    @app.get("/status")
    async def status() -> dict[str, Any]:
        return control.status()

    @app.post("/restart/<service>")
    @guarded
    async def restart(service: str) -> Any:
        try:
            node = await control.restart_service(service)
        except UnknownService as error:
            return error_response(
                404, "unknown_service", f"no service named {service!r}", known=error.known
            )
        return {"service": service, "state": node.state.value, "restarts": node.restarts}

    @app.websocket("/events")
    async def events() -> None:
        if token is not None and not authorized(websocket.headers.get("Authorization")):
            await websocket.close(1008, "missing or wrong bearer token")
            return
        await stream_events(control)

    return app


async def stream_events(control: Control) -> None:
    """One websocket subscriber: optional resume point and filters from the query string."""
    since_text = websocket.args.get("since")
    kinds = {k for k in websocket.args.get("kind", "").split(",") if k}
    services = {s for s in websocket.args.get("service", "").split(",") if s}
    try:
        since = int(since_text) if since_text is not None else None
    except ValueError:
        await websocket.close(1008, "since must be an integer")
        return

    def accept(envelope: Envelope) -> bool:
        event = envelope.event
        if kinds and event.kind not in kinds:
            return False
        if services:
            name = getattr(event, "child", None) or event.source.rsplit("/", 1)[-1]
            return name in services
        return True

    await websocket.accept()
    with control.bus.subscribe(since=since, accept=accept) as subscription:
        if subscription.missed:
            await websocket.send(json.dumps({"kind": "resync", "data": control.status()}))
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
