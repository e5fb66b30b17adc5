"""A small HTTP/1.1 server on trio, h11 doing the protocol work (websockets: ``_websocket``).

Why not Quart on hypercorn: their per-request machinery cost about 2 ms of CPU per call (dev8
topped out near 600 requests/s), their imports half of dev8's start-up, and their websocket path
re-framed every event for every subscriber (benchmarks/README.md). Here a request is parsed by
h11, routed by a table of path patterns and answered from a plain async function; an event
stream can write frames built once for all subscribers. Limits are explicit: head size, body
size, idle and request deadlines, and how many connections are held at once.
"""

from __future__ import annotations

import errno
import http
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs
import h11
import trio

log = logging.getLogger("dev8.api")

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
#: An idle keep-alive connection is closed after this long; a started request must end in
#: ``REQUEST_DEADLINE``.
KEEP_ALIVE = 5.0
REQUEST_DEADLINE = 10.0
MAX_CONNECTIONS = 4096
_RECEIVE = 64 * 1024
_ACCEPT_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_SERVER = [("server", "dev8")]
_REASONS = {status.value: status.phrase.encode() for status in http.HTTPStatus}


@attrs.frozen
class Request:
    method: str
    path: str
    #: First value of each query parameter, as a form would give it.
    query: Mapping[str, str]
    #: Lower-case header names; repeated headers joined with ", ".
    headers: Mapping[str, str]
    body: bytes = b""


@attrs.frozen
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: Sequence[tuple[str, str]] = ()


def json_response(body: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(body).encode())


def error_response(status: int, code: str, message: str, **extra: Any) -> Response:
    return json_response({"error": {"code": code, "message": message, **extra}}, status)


Handler = Callable[..., Awaitable[Response]]
WebsocketHandler = Callable[..., Awaitable[None]]

_PARAM = re.compile(r"\{(\w+)(?::path)?\}")


@attrs.frozen
class Route:
    pattern: str
    method: str  # "GET", "POST", or "WEBSOCKET"
    regex: re.Pattern[str]
    handler: Callable[..., Awaitable[Any]]


def _compile(pattern: str) -> re.Pattern[str]:
    out, at = "", 0
    for match in _PARAM.finditer(pattern):
        out += re.escape(pattern[at : match.start()])
        wide = match.group(0).endswith(":path}")
        out += f"(?P<{match.group(1)}>{'.+' if wide else '[^/]+'})"
        at = match.end()
    return re.compile(out + re.escape(pattern[at:]) + r"\Z")


class App:
    """Routes: ``{name}`` matches one path segment, ``{name:path}`` the rest of the path."""

    def __init__(
        self,
        *,
        max_body: int = MAX_BODY,
        keep_alive: float = KEEP_ALIVE,
        request_deadline: float = REQUEST_DEADLINE,
    ) -> None:
        self.routes: list[Route] = []
        self._static: dict[tuple[str, str], Route] = {}
        self.max_body = max_body
        self.keep_alive = keep_alive
        self.request_deadline = request_deadline
        self._nursery: trio.Nursery | None = None

    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self._add(Route(pattern, method.upper(), _compile(pattern), handler))
            return handler

        return register

    def _add(self, route: Route) -> None:
        self.routes.append(route)
        if "{" not in route.pattern:  # looked up directly, before the patterns
            served = "GET" if route.method == "WEBSOCKET" else route.method
            self._static.setdefault((served, route.pattern), route)
            if served == "GET":
                self._static.setdefault(("HEAD", route.pattern), route)

    def get(self, pattern: str) -> Callable[[Handler], Handler]:
        return self.route("GET", pattern)

    def post(self, pattern: str) -> Callable[[Handler], Handler]:
        return self.route("POST", pattern)

    def websocket(self, pattern: str) -> Callable[[WebsocketHandler], WebsocketHandler]:
        def register(handler: WebsocketHandler) -> WebsocketHandler:
            self._add(Route(pattern, "WEBSOCKET", _compile(pattern), handler))
            return handler

        return register

    @property
    def serving(self) -> object | None:
        """Which run of ``serve`` is current (None when not serving): tasks started with
        ``start_soon`` die with it."""
        return self._nursery

    def start_soon(self, function: Callable[[], Awaitable[None]]) -> None:
        """Run ``function`` beside the server, past the request that asked for it."""
        if self._nursery is None:
            raise RuntimeError("the app is not being served")
        self._nursery.start_soon(function)

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | Response:
        static = self._static.get((method, path))
        if static is not None:
            return static, {}
        allowed: list[str] = []
        for route in self.routes:
            found = route.regex.match(path)
            if found is None:
                continue
            served = "GET" if route.method == "WEBSOCKET" else route.method
            if served == method or (served == "GET" and method == "HEAD"):
                return route, {k: unquote(v) for k, v in found.groupdict().items()}
            allowed.append(served)
        if not allowed:
            return error_response(404, "not_found", f"no route for {path}")
        if "GET" in allowed:
            allowed.append("HEAD")
        allow = ", ".join(sorted(set(allowed)))
        response = error_response(405, "method_not_allowed", f"{method} not allowed here")
        return attrs.evolve(response, headers=[("allow", allow)])

    async def serve(
        self,
        listeners: Iterable[trio.abc.Listener[Any]],
        *,
        max_connections: int = MAX_CONNECTIONS,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept on every listener until cancelled; at most ``max_connections`` held at once."""
        slots = trio.Semaphore(max_connections)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                for listener in listeners:
                    nursery.start_soon(self._accept, listener, slots, nursery)
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def _accept(
        self, listener: trio.abc.Listener[Any], slots: trio.Semaphore, nursery: trio.Nursery
    ) -> None:
        async with listener:
            while True:
                await slots.acquire()
                try:
                    stream = await listener.accept()
                except OSError as error:
                    slots.release()
                    if error.errno not in _ACCEPT_ERRNOS:
                        raise
                    log.warning("api_accept_failed: %s", errno.errorcode[error.errno])
                    await trio.sleep(0.1)  # out of fds: let some close
                    continue
                except BaseException:
                    slots.release()
                    raise
                nursery.start_soon(self._connection, stream, slots)

    async def _connection(self, stream: trio.abc.Stream, slots: trio.Semaphore) -> None:
        try:
            async with stream:
                connection = _HttpConnection(self, stream)
                await connection.run()
                if connection.refused:
                    await _linger(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer went away
        except Exception:
            # One connection's failure (a bug, a protocol state we did not foresee) ends that
            # connection only, never the server.
            log.exception("api_connection_failed")
        finally:
            slots.release()


async def _linger(stream: trio.abc.Stream, limit: int = 1 << 20) -> None:
    """Half-close, then discard what the client still sends for a moment.

    Closing with unread input makes the kernel send a reset, which can destroy the refusal we
    just wrote before the client reads it.
    """
    with trio.move_on_after(1):
        await stream.send_eof()  # type: ignore[attr-defined]
        discarded = 0
        while discarded < limit:
            data = await stream.receive_some(_RECEIVE)
            if not data:
                return
            discarded += len(data)


class _Closed(Exception):
    """The connection is done: stop serving it."""


class _HttpConnection:
    def __init__(self, app: App, stream: trio.abc.Stream) -> None:
        self.app = app
        self.stream = stream
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self._head_only = False
        #: Answered with a refusal while the client may still be sending.
        self.refused = False

    async def run(self) -> None:
        try:
            while True:
                with trio.move_on_after(self.app.keep_alive) as idle:
                    event = await self._next_event()
                if idle.cancelled_caught or not isinstance(event, h11.Request):
                    return  # idle too long, or the client hung up
                if await self._request(event) or self.conn.our_state is h11.MUST_CLOSE:
                    return
                self.conn.start_next_cycle()
        except _Closed:
            return

    async def _next_event(self) -> Any:
        """The next protocol event, answering malformed input with a 4xx and hanging up."""
        while True:
            try:
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    self.conn.receive_data(bytes(await self.stream.receive_some(_RECEIVE)))
                    continue
            except h11.RemoteProtocolError as error:
                await self._refuse(error)
            return event

    async def _refuse(self, error: h11.RemoteProtocolError) -> None:
        status = 431 if "exceeds" in str(error) else error.error_status_hint
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            response = error_response(status, "bad_request", "malformed or oversized request")
            await self._send(response, close=True)
        raise _Closed

    async def _read_body(self, head: h11.Request) -> bytes | Response:
        """The whole body, or the answer refusing it (too large, too slow)."""
        length = _header(head.headers, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.app.max_body:
            return _too_large(self.app.max_body)
        try:
            event = self.conn.next_event()
        except h11.RemoteProtocolError as error:
            await self._refuse(error)
        if isinstance(event, h11.EndOfMessage):
            return b""  # no body, already parsed: no deadline to set up
        chunks: list[bytes] = []
        size = 0
        with trio.move_on_after(self.app.request_deadline):
            while True:
                if event is h11.NEED_DATA:
                    event = await self._next_event()
                if isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > self.app.max_body:
                        return _too_large(self.app.max_body)
                    chunks.append(bytes(event.data))
                    event = h11.NEED_DATA
                elif isinstance(event, h11.EndOfMessage):
                    return b"".join(chunks)
                else:
                    raise _Closed
        return error_response(408, "timeout", "the request took too long")

    async def _request(self, head: h11.Request) -> bool:
        """Answer one request; True when the connection became a websocket."""
        method = head.method.decode("ascii", "replace")
        self._head_only = method == "HEAD"
        target = head.target.decode("ascii", "replace")
        if "?" in target or "#" in target:
            parts = urlsplit(target)
            path, query = parts.path, dict(parse_qsl(parts.query, keep_blank_values=True)[::-1])
        else:
            path, query = target, {}
        body = await self._read_body(head)
        if isinstance(body, Response):
            await self._send(body, close=True)  # the rest of the body is never read
            return False
        request = Request(method, path or "/", query, _headers(head.headers), body)
        found = self.app.match(method, request.path)
        if isinstance(found, Response):
            await self._send(found)
            return False
        route, params = found
        if route.method == "WEBSOCKET":
            return await self._websocket(route, request, params)
        try:
            response = await route.handler(request, **params)
        except Exception:
            log.exception("api_handler_failed: %s %s", method, route.pattern)
            response = error_response(500, "internal_error", "the handler failed; see dev8's log")
        await self._send(response)
        return False

    async def _send(self, response: Response, close: bool = False) -> None:
        if self.conn.our_state is not h11.SEND_RESPONSE and self.conn.our_state is not h11.IDLE:
            raise _Closed
        headers = [
            *_SERVER,
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
            *response.headers,
        ]
        if close:
            headers.append(("connection", "close"))
            self.refused = response.status >= 400
        reason = _REASONS.get(response.status, b"")
        data = self.conn.send(
            h11.Response(status_code=response.status, headers=headers, reason=reason)
        )
        if not self._head_only and response.body:
            data += self.conn.send(h11.Data(data=response.body))
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)
        if close:
            raise _Closed

    async def _websocket(self, route: Route, request: Request, params: dict[str, str]) -> bool:
        upgrade = request.headers.get("upgrade", "").lower()
        connection = {t.strip().lower() for t in request.headers.get("connection", "").split(",")}
        key = request.headers.get("sec-websocket-key")
        if upgrade != "websocket" or "upgrade" not in connection or key is None:
            response = error_response(400, "bad_request", "a websocket endpoint: needs an Upgrade")
            await self._send(response, close=True)
        if request.headers.get("sec-websocket-version") != "13":
            response = error_response(426, "upgrade_required", "websocket version 13 only")
            response = attrs.evolve(response, headers=[("sec-websocket-version", "13")])
            await self._send(response, close=True)
        assert key is not None
        # wsproto (its import builds a 64 KiB unmasking table) is loaded by the first websocket.
        from ._websocket import WebSocket  # noqa: PLC0415

        socket = WebSocket(self, key)
        try:
            await route.handler(request, socket, **params)
        finally:
            if socket.accepted:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await socket.finish()
        if not socket.accepted:
            await self._send(socket.rejection or error_response(403, "forbidden", "refused"), True)
        return True


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def _headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for key, value in raw:
        name, text = key.decode("latin-1"), value.decode("latin-1")
        headers[name] = f"{headers[name]}, {text}" if name in headers else text
    return headers


def _too_large(limit: int) -> Response:
    return error_response(413, "request_entity_too_large", f"bodies are limited to {limit} bytes")
