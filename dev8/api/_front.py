"""The API's ASGI entry: the routes polled most are answered here, the rest by the Quart app.

Probes (/livez, /readyz, /health) and /status are what the kubelet, the agent and dashboards
poll. They take no parameters and no body, so they need no request object, no routing and no
request context: answered from dev8's state straight through ASGI, they cost a fraction of a
Quart request. A wrong or missing token is answered 401 here too (what an unauthenticated
flood of requests earns), in the shape Quart's would have. Everything else, and any of these
that is not a plain GET (a HEAD, a body) or whose Host is refused, goes to the Quart app, which
serves every route and gives every other error.

Quart (with Flask, Werkzeug and Jinja2: about 14 MB and 0.2 s of imports) is built on the first
request it is needed for, so start-up to the API answering, and a workspace that only its
probes and pollers ever call, do without it. Lifespan is answered here: the app has no
``before_serving``/``after_serving`` work, and Quart may not exist yet when it starts.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import attrs
import trio

from dev8 import documents
from dev8.api._access import PROBE_PATHS, PUBLIC_PATHS, UNAUTHORIZED_MESSAGE, AccessPolicy
from dev8.control import Control

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

#: How long a rendered /status may be served again when no event happened meanwhile.
STATUS_REUSE = 0.1
_JSON = (b"content-type", b"application/json")
#: Request headers that mean a body follows: such a request is Quart's to read and check.
_BODY_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"expect"})
_UNAUTHORIZED = documents.to_json(documents.error_document("unauthorized", UNAUTHORIZED_MESSAGE))
_CHALLENGE = (b"www-authenticate", b'Bearer realm="dev8"')
#: Set in the ASGI scope once this front found the request's bearer token right.
AUTHORIZED_KEY = "dev8.authorized"
#: A websocket's ASGI ``send``, in its scope: the event stream sends through it directly.
ASGI_SEND_KEY = "dev8.asgi_send"


class _Headers:
    """Case-insensitive ``get`` over ASGI's header pairs (what ``AccessPolicy`` reads)."""

    __slots__ = ("_pairs",)

    def __init__(self, pairs: Iterable[tuple[bytes, bytes]]) -> None:
        self._pairs = pairs

    def get(self, key: str, /) -> str | None:
        wanted = key.lower().encode("latin-1")
        for name, value in self._pairs:
            if name == wanted:
                return value.decode("latin-1")
        return None


class PolledRoutes:
    """/livez, /readyz, /health and /status as (status code, JSON bytes): one implementation
    for this front and for the Quart routes of the same paths."""

    def __init__(self, control: Control) -> None:
        self.control = control
        self._status: tuple[int, float, bytes] | None = None

    def answer(self, path: str) -> tuple[int, bytes] | None:
        control = self.control
        if path == "/health":
            healthy, body = control.health()
            return (200 if healthy else 503), json.dumps(body).encode()
        if path == "/livez":
            alive, body = control.liveness()
            return (200 if alive else 503), json.dumps(body).encode()
        if path == "/readyz":
            ready, body = control.readyz()
            return (200 if ready else 503), json.dumps(body).encode()
        if path == "/status":
            return 200, self.status()
        return None

    def status(self) -> bytes:
        """Rendered again only once something happened (an event) or ``STATUS_REUSE`` went by
        (uptime, probe timings): agents and dashboards poll it."""
        now = trio.current_time()
        seq = self.control.bus.last_seq
        rendered = self._status
        if rendered is None or rendered[0] != seq or now - rendered[1] > STATUS_REUSE:
            rendered = (seq, now, json.dumps(self.control.status()).encode())
            self._status = rendered
        return rendered[2]


@attrs.define
class ApiFront:
    """The ASGI app Hypercorn serves (``create_app``)."""

    control: Control
    policy: AccessPolicy
    polled: PolledRoutes
    #: Builds the Quart app (called once, on the first request that needs it).
    build: Callable[[PolledRoutes], Any]
    _quart: App | None = None
    #: Runs Quart's background tasks (``add_background_task``): this front answers the
    #: lifespan, so Quart's own lifespan never opens the nursery they need.
    _background: trio.Nursery | None = None

    @property
    def quart(self) -> Any:
        """The Quart app, built now if it was not yet."""
        if self._quart is None:
            self._quart = self.build(self.polled)
            if self._background is not None:
                _give_nursery(self._quart, self._background)
            gc.freeze()  # Quart's modules and the app live as long as dev8 (see dev8.app)
        return self._quart

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            answer = self._answer(scope)
            if answer is not None:
                await _send_json(send, *answer)
                return
        elif kind == "websocket":
            # The event stream sends through ASGI itself (``dev8.api._events``).
            scope[ASGI_SEND_KEY] = send
        elif kind == "lifespan":
            async with trio.open_nursery() as background:
                self._background = background
                if self._quart is not None:
                    _give_nursery(self._quart, background)
                await _lifespan(receive, send)
                background.cancel_scope.cancel()  # what is left of them ends with the server
            return
        await self.quart(scope, receive, send)

    def _answer(self, scope: Scope) -> tuple[int, bytes, list[tuple[bytes, bytes]]] | None:
        """This front's answer, or None for Quart's. A refusal other than a wrong token (the
        one an unauthenticated flood earns) is Quart's to give, in the one shape of errors."""
        path = scope["path"]
        pairs = scope["headers"]
        headers = _Headers(pairs)
        if not self.policy.host_ok(headers):
            return None
        if self.policy.token is not None and path not in PUBLIC_PATHS:
            # Checked once per request: Quart's check reads the outcome (AUTHORIZED_KEY).
            authorized = self.policy.bearer_ok(headers.get("Authorization"))
            if not authorized:
                return 401, _UNAUTHORIZED, [_CHALLENGE]
            scope[AUTHORIZED_KEY] = True
        if path != "/status" and path not in PROBE_PATHS:
            return None
        if scope["method"] != "GET" or any(name in _BODY_HEADERS for name, _ in pairs):
            return None
        found = self.polled.answer(path)
        return None if found is None else (*found, [])

    async def probes(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The probe listener's app (``api.probe_bind``): GET /livez, /readyz, /health only.

        No Host check: the probes reveal nothing private, and the kubelet addresses the pod's IP.
        """
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        path = scope["path"]
        answer = self.polled.answer(path) if path in PROBE_PATHS else None
        if answer is None:
            answer = (
                404,
                documents.to_json(
                    documents.error_document(
                        "not_found", "this listener serves only /livez, /readyz and /health"
                    )
                ),
            )
        elif scope["method"] not in ("GET", "HEAD"):
            answer = (
                405,
                documents.to_json(
                    documents.error_document("method_not_allowed", "the probes are GET only")
                ),
            )
        await _send_json(send, *answer, [], body=scope["method"] != "HEAD")


def _give_nursery(quart: Any, nursery: trio.Nursery) -> None:
    """Where QuartTrio's ``add_background_task`` starts its tasks."""
    quart.nursery = nursery


async def _send_json(
    send: Send,
    status: int,
    text: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    *,
    body: bool = True,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [_JSON, (b"content-length", str(len(text)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": text if body else b""})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
