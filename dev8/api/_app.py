"""``create_app``: the management API, a Quart-Trio application over a ``Control``."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from functools import wraps
from importlib import resources
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from actors import ActorError
from dev8 import documents
from dev8.api._access import PUBLIC_PATHS, AccessPolicy, unauthorized
from dev8.api._chaos import CHAOS_PATHS, register_chaos
from dev8.api._events import EventFeed, stream_events
from dev8.api._front import AUTHORIZED_KEY, PolledRoutes
from dev8.api._openapi import openapi_document
from dev8.api._responses import (
    BadParameter,
    error_response,
    json_response,
    json_text_response,
    whole_number,
)
from dev8.config import ConfigError
from dev8.control import ActionFailed, Control, NotAvailable, UnknownService

log = logging.getLogger("dev8.api")

MAX_LOG_LINES = 1000
MAX_BODY = 64 * 1024
#: A request body must have arrived within this long.
BODY_TIMEOUT = 10.0

Handler = Callable[..., Awaitable[Response]]


def unknown_service(error: UnknownService) -> Response:
    return error_response(
        404, "unknown_service", f"no service named {error.name!r}", known=error.known
    )


def create_app(
    control: Control,
    *,
    token: str | None = None,
    open_changes: bool = True,
    chaos: bool = False,
    allowed_hosts: Iterable[str] | None = None,
    allowed_origins: Iterable[str] = (),
    polled: PolledRoutes | None = None,
) -> QuartTrio:
    """Build the app.

    ``token``: when set, every route but /livez, /readyz and /health (and the dashboard's static
    page) needs ``Authorization: Bearer TOKEN``. ``open_changes``: without a token, whether
    changes are allowed (loopback, a Unix socket, or ``api.insecure_no_auth``).
    ``allowed_hosts``: Host names the API answers to (None: any). ``allowed_origins``: browser
    origins allowed besides the API's own.
    """
    app = QuartTrio(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.config["BODY_TIMEOUT"] = BODY_TIMEOUT
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    policy = AccessPolicy.build(
        token=token,
        open_changes=open_changes,
        allowed_hosts=allowed_hosts,
        allowed_origins=allowed_origins,
    )

    @app.before_request
    async def check_access() -> Response | None:
        refused = policy.check_host(request.headers)
        if refused is not None:
            return refused
        if (
            request.path not in PUBLIC_PATHS
            and not request.scope.get(AUTHORIZED_KEY)  # the front checked it already
            and not policy.bearer_ok(request.headers.get("Authorization"))
        ):
            return unauthorized()
        return None

    def guarded(handler: Handler) -> Handler:
        """A state change: token, cross-site and body checks before the handler runs."""

        @wraps(handler)
        async def wrapper(*args: Any, **kwargs: Any) -> Response:
            body = await request.get_data(as_text=False)
            refused = policy.check_change(request.headers, request.scheme, bool(body))
            if refused is not None:
                return refused
            if body.strip():
                try:
                    parsed = json.loads(body)
                except ValueError:
                    return error_response(400, "bad_request", "the body is not valid JSON")
                if not isinstance(parsed, dict):
                    return error_response(400, "bad_request", "the body must be a JSON object")
            return await handler(*args, **kwargs)

        return wrapper

    _register_errors(app)
    _register_reads(app, control, polled or PolledRoutes(control), chaos=chaos)
    _register_actions(app, control, guarded)
    if chaos:  # fault injection, for test rigs only (config: chaos.enabled)
        register_chaos(app, control, guarded)

    feed = EventFeed(control.bus)

    @app.websocket("/events")
    async def events() -> Response | None:
        from quart import websocket  # noqa: PLC0415 - the websocket's context

        refused = policy.check_host(websocket.headers)
        if refused is not None:
            return refused
        # Browsers cannot set headers on a websocket: the dashboard passes ?token= instead.
        header = websocket.headers.get("Authorization")
        if header is None and "token" in websocket.args:
            header = f"Bearer {websocket.args['token']}"
        if not policy.bearer_ok(header):
            return unauthorized()
        if not policy.origin_ok(
            websocket.headers, "https" if websocket.scheme == "wss" else "http"
        ):
            return error_response(
                403, "cross_site", "the event stream is refused to pages of other origins"
            )
        return await stream_events(control, feed)

    return app


def _register_errors(app: QuartTrio) -> None:
    """Every refusal and failure is a JSON error; a bug is a 500 that names no internals."""

    @app.errorhandler(BadParameter)
    async def bad_parameter(error: BadParameter) -> Response:
        return error_response(400, "bad_request", str(error), parameter=error.name)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        code = (error.name or "error").lower().replace(" ", "_")
        response = error_response(error.code or 500, code, error.description or code)
        for name, value in error.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value  # Allow on a 405 (RFC 9110)
        return response

    @app.errorhandler(ActorError)
    async def actor_unavailable(error: ActorError) -> Response:
        # An actor between restarts, with a full mailbox or too slow to answer: try again.
        log.warning("api_actor_unavailable: %s %s: %s", request.method, request.path, error)
        return error_response(503, "actor_unavailable", str(error))

    @app.errorhandler(Exception)
    async def internal_error(error: Exception) -> Response:
        log.error("api_handler_failed: %s %s", request.method, request.path, exc_info=error)
        return error_response(500, "internal_error", "the handler failed; see dev8's log")


def _register_reads(
    app: QuartTrio, control: Control, polled: PolledRoutes, *, chaos: bool = False
) -> None:
    """Read-only endpoints."""
    registry: Any = None

    @app.get("/")
    async def dashboard() -> Response:
        page = resources.files("dev8.api").joinpath("dashboard.html").read_bytes()
        return Response(page, content_type="text/html; charset=utf-8")

    openapi_text: str | None = None

    @app.get("/openapi.json")
    async def openapi() -> Response:
        # The same for the life of the app: rendered once (it is the largest answer).
        nonlocal openapi_text
        if openapi_text is None:
            document = openapi_document()
            if chaos:
                document["paths"].update(CHAOS_PATHS)
            openapi_text = json.dumps(document)
        return json_text_response(openapi_text)

    def polled_route(path: str) -> None:
        async def answer() -> Response:
            found = polled.answer(path)
            assert found is not None
            return json_text_response(found[1], found[0])

        app.add_url_rule(path, path.strip("/"), answer, methods=["GET"])

    # Also answered by the front (``dev8.api._front``) without Quart when a plain GET.
    for path in ("/livez", "/readyz", "/health"):
        polled_route(path)

    @app.get("/ready")
    async def ready() -> Response:
        is_ready, body = control.ready()
        return json_response(body, 200 if is_ready else 503)

    polled_route("/status")

    @app.get("/connections")
    async def connections() -> Response:
        return json_response(control.connections())

    @app.get("/metrics")
    async def metrics() -> Response:
        # prometheus_client is imported on the first scrape, not at start-up.
        from prometheus_client import CONTENT_TYPE_LATEST  # noqa: PLC0415

        from dev8.monitoring.metrics import make_registry, render  # noqa: PLC0415

        nonlocal registry
        if registry is None:
            registry = make_registry(control)
        return Response(render(registry), content_type=CONTENT_TYPE_LATEST)

    @app.get("/services/<name>/logs")
    async def logs(name: str) -> Response:
        lines = whole_number(request.args, "lines", default=100, low=1, high=MAX_LOG_LINES)
        since = whole_number(request.args, "since", default=0)
        assert lines is not None
        assert since is not None
        try:
            found = await control.logs(name, lines, since=since)
        except UnknownService as error:
            return unknown_service(error)
        return json_response({"service": name, "lines": found})


def _register_actions(
    app: QuartTrio, control: Control, guarded: Callable[[Handler], Handler]
) -> None:
    """State-changing endpoints: each behind ``guarded`` (token, cross-site and body checks)."""

    async def act(name: str, action: Callable[[str], Awaitable[Any]]) -> Response:
        try:
            node = await action(name)
        except UnknownService as error:
            return unknown_service(error)
        except ActionFailed as failure:
            return json_text_response(documents.to_json(failure.document), failure.status)
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
            return json_response(await control.reload(), 202)
        except ConfigError as error:
            return error_response(422, "invalid_config", str(error))
        except NotAvailable as error:
            return error_response(409, "not_available", str(error))
        except ActionFailed as failure:
            return json_text_response(documents.to_json(failure.document), failure.status)

    @app.post("/secrets/refresh")
    @guarded
    async def refresh_secrets() -> Response:
        try:
            return json_response(await control.refresh_secrets())
        except NotAvailable as error:
            return error_response(409, "not_available", str(error))
        except ActionFailed as failure:
            return json_text_response(documents.to_json(failure.document), failure.status)
