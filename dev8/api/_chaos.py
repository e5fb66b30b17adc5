"""The ``/chaos`` routes: fault injection for external chaos tests, only when the config enables it.

Registered by ``create_app`` when ``chaos.enabled`` is true; absent (404) otherwise. Each route is
``guarded`` like every other state change (bearer token, body checks).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio

from actors import ChildState
from dev8 import chaos, documents
from dev8.api._openapi import document_content, error_content
from dev8.api._responses import error_response, json_response
from dev8.control import Control, UnknownService

Handler = Callable[..., Awaitable[Response]]

#: Crashing the API's own actor cancels the request that asked for it: that one is answered
#: first (202) and crashed a moment later.
API_PATH = "dev8/api"
_SELF_CRASH_DELAY = 0.1


def register_chaos(
    app: QuartTrio,
    control: Control,
    guarded: Callable[[Handler], Handler],
    *,
    api_path: str = API_PATH,
) -> None:
    """Add ``POST /chaos/actors/{path}/crash`` and ``POST /chaos/services/{name}/signal``."""

    @app.post("/chaos/actors/<path:path>/crash")
    @guarded
    async def chaos_crash_actor(path: str) -> Response:
        node = chaos.find_actor(control, path)
        if path == api_path and node is not None:
            if node.state is not ChildState.RUNNING:
                return _not_running(chaos.NotRunning(path, node.state.value))

            async def crash_later() -> None:
                await trio.sleep(_SELF_CRASH_DELAY)
                await chaos.crash_actor(control, path)

            app.add_background_task(crash_later)
            return json_response(
                {"path": path, "state": node.state.value, "restarts": node.restarts}, 202
            )
        try:
            status = await chaos.crash_actor(control, path)
        except UnknownService as error:
            return error_response(404, "unknown_actor", f"no actor at {path!r}", known=error.known)
        except chaos.NotRunning as error:
            return _not_running(error)
        return json_response(
            {"path": path, "state": status.state.value, "restarts": status.restarts}
        )

    @app.post("/chaos/services/<name>/signal")
    @guarded
    async def chaos_signal_service(name: str) -> Response:
        try:
            signum = chaos.parse_signal(request.args.get("signal", ""))
        except chaos.BadSignal as error:
            return error_response(400, "bad_request", str(error))
        try:
            pid = await chaos.signal_service(control, name, signum)
        except UnknownService as error:
            return error_response(
                404, "unknown_service", f"no service named {name!r}", known=error.known
            )
        except chaos.NotRunning as error:
            return _not_running(error)
        signalled = signum.name.removeprefix("SIG")
        return json_response({"service": name, "signal": signalled, "pid": pid})


def _not_running(error: chaos.NotRunning) -> Response:
    return error_response(409, "not_running", str(error), state=error.state)


_GUARD_ERRORS = {
    "401": error_content("missing or wrong bearer token"),
    "403": error_content(
        "a cross-origin browser request, a Host this API does not answer to, or changes need "
        "a token when the API listens beyond loopback"
    ),
    "400": error_content("an unknown signal name, or a body that is not a JSON object"),
    "409": error_content("the target is not running (backoff, stopped, fatal)"),
    "413": error_content("the body is larger than the API accepts"),
    "415": error_content("a body that is not application/json"),
}

#: OpenAPI ``paths`` of the chaos routes, merged into the document when chaos is enabled.
CHAOS_PATHS: dict[str, Any] = {
    "/chaos/actors/{path}/crash": {
        "post": {
            "summary": "Chaos: make an actor fail as if it had raised (its restart policy applies)",
            "parameters": [
                {
                    "name": "path",
                    "in": "path",
                    "required": True,
                    "description": "the actor's path in /status's tree, e.g. dev8/services/web",
                    "schema": {"type": "string"},
                }
            ],
            "security": [{"bearer": []}],
            "responses": {
                "200": document_content(
                    documents.CrashedDocument, "the actor's state as the crash was requested"
                ),
                "202": document_content(
                    documents.CrashedDocument,
                    "the API's own actor: answered first, crashed right after",
                ),
                "404": error_content("no actor at that path; `known` lists the paths"),
                **_GUARD_ERRORS,
            },
        }
    },
    "/chaos/services/{name}/signal": {
        "post": {
            "summary": "Chaos: send a signal to a running service's process group",
            "parameters": [
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                {
                    "name": "signal",
                    "in": "query",
                    "required": True,
                    "schema": {"type": "string", "enum": list(chaos.CHAOS_SIGNALS)},
                },
            ],
            "security": [{"bearer": []}],
            "responses": {
                "200": document_content(
                    documents.SignalledDocument, "the signal was sent to the group led by `pid`"
                ),
                "404": error_content("no such service; `known` lists the names"),
                "503": error_content(
                    "the service's process actor is between restarts or busy (actor_unavailable)"
                ),
                **_GUARD_ERRORS,
            },
        }
    },
}
