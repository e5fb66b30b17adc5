"""Following the event stream (trio-websocket), resuming with `?since=` after a drop."""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

import attrs
import httpx
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from dev8.client.endpoint import Target
from dev8.client.errors import ApiError, Unreachable, decode, failure_reason, unreachable

#: Waits between reconnection attempts of the event stream; one attempt per entry.
RETRY_DELAYS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
#: Websocket close codes the server uses (see dev8.api).
CLOSE_POLICY = 1008
CLOSE_LAGGED = 4001
#: A resync message carries the whole /status snapshot: allow it to be large.
MAX_MESSAGE_SIZE = 16 * 1024 * 1024


@attrs.define
class _Cursor:
    """Where the stream stands: the last sequence number delivered and which dev8 sent it."""

    seq: int
    #: The ``bootId`` of the dev8 that numbered ``seq`` (sent back on reconnection).
    boot_id: str | None


@attrs.frozen
class _Ended:
    """How one connection ended: whether it got through the handshake, and why it stopped."""

    connected: bool
    reason: str
    at_once: bool = False  # reconnect without waiting (we were told we lagged)


def events_resource(
    since: int,
    kinds: Iterable[str] = (),
    services: Iterable[str] = (),
    *,
    boot_id: str | None = None,
) -> str:
    query: dict[str, str] = {"since": str(since)}
    if boot_id:  # from another boot of dev8, the server answers with a resync
        query["bootId"] = boot_id
    if kinds := ",".join(kinds):
        query["kind"] = kinds
    if services := ",".join(services):
        query["service"] = services
    return "/events?" + urllib.parse.urlencode(query)


async def follow_events(
    target: Target,
    emit: Callable[[dict[str, Any]], None],
    *,
    since: int | None = None,
    kinds: Sequence[str] = (),
    services: Sequence[str] = (),
    retry_delays: Sequence[float] = RETRY_DELAYS,
    connect_timeout: float = 10.0,
) -> NoReturn:
    """Call ``emit`` with every event, for ever; raise ``ApiError`` when the stream is lost.

    Without ``since`` it starts at the present (the /status ``lastEvent``). After a drop it
    waits ``retry_delays[i]`` before attempt ``i`` and resumes from the last event delivered;
    a dev8 that restarted in between (a new ``bootId``: its seq numbers start again) is
    announced by a ``resync`` message carrying its fresh /status, as the server does when
    events are gone.
    """
    transport = httpx.AsyncHTTPTransport(uds=target.endpoint.uds) if target.endpoint.uds else None
    async with httpx.AsyncClient(
        base_url=target.endpoint.base_url,
        transport=transport,
        timeout=connect_timeout,
        headers=target.headers(),  # /status needs the token too
    ) as http:

        async def read_status() -> dict[str, Any]:
            try:
                response = await http.get("/status")
            except httpx.TransportError as error:
                raise unreachable(target.endpoint, error) from None
            body: dict[str, Any] = decode(target, response, None)
            return body

        status = await read_status()
        cursor = _Cursor(status["lastEvent"] if since is None else since, status.get("bootId"))
        failures = 0
        while True:
            ended = await _session(
                target, cursor, kinds=kinds, services=services, emit=emit, timeout=connect_timeout
            )
            if ended.connected:
                failures = 0
            while not ended.at_once:
                if failures >= len(retry_delays):
                    raise ApiError(
                        f"lost the event stream at {target.endpoint}: {ended.reason} "
                        f"(gave up after {failures} retries)"
                    )
                await trio.sleep(retry_delays[failures])
                failures += 1
                try:
                    status = await read_status()
                except Unreachable as error:
                    ended = _Ended(False, error.reason)
                    continue
                if status.get("bootId") != cursor.boot_id:
                    cursor.boot_id = status.get("bootId")
                    cursor.seq = status["lastEvent"]
                    emit(
                        {
                            "seq": cursor.seq,
                            "bootId": cursor.boot_id,
                            "time": datetime.now(tz=UTC).isoformat(),
                            "kind": "resync",
                            "source": "dev8",
                            "data": status,
                        }
                    )
                break


async def _session(
    target: Target,
    cursor: _Cursor,
    *,
    kinds: Sequence[str],
    services: Sequence[str],
    emit: Callable[[dict[str, Any]], None],
    timeout: float,
) -> _Ended:
    """One websocket connection, from handshake to close."""
    resource = events_resource(cursor.seq, kinds, services, boot_id=cursor.boot_id)
    connected = False
    try:
        async with _open_websocket(target, resource, timeout) as ws:
            connected = True
            while True:
                _deliver(target, cursor, await ws.get_message(), emit)
    except ConnectionClosed as closed:
        code, why = (closed.reason.code, closed.reason.reason) if closed.reason else (1006, None)
        if code == CLOSE_LAGGED:
            return _Ended(connected, "fell behind", at_once=True)
        if code == CLOSE_POLICY:
            raise _refused_stream(target, why or "refused") from None
        return _Ended(connected, f"closed by the server (code {code})")
    except ConnectionRejected as rejected:
        if rejected.status_code in (401, 403):
            raise _refused_stream(target, "missing or wrong bearer token") from None
        if rejected.status_code == 404:
            raise ApiError(f"the API at {target.endpoint} has no event stream") from None
        return _Ended(False, f"refused (HTTP {rejected.status_code})")
    except (OSError, trio.TooSlowError, HandshakeError, trio.BrokenResourceError) as error:
        return _Ended(connected, failure_reason(error))


def _refused_stream(target: Target, why: str) -> ApiError:
    if "token" in why:
        note = f" ({target.token_note})" if target.token_note else ""
        return ApiError(f"unauthorized: the event stream refused: {why}{note}")
    return ApiError(f"the event stream refused: {why}")


def _deliver(
    target: Target, cursor: _Cursor, message: str | bytes, emit: Callable[[dict[str, Any]], None]
) -> None:
    """One message: an event, or a JSON array of events (a subscriber that was behind)."""
    try:
        parsed = json.loads(message)
        events = parsed if isinstance(parsed, list) else [parsed]
        seqs = [int(event["seq"]) for event in events]
    except (ValueError, KeyError, TypeError):
        raise ApiError(f"unexpected message on the event stream at {target.endpoint}") from None
    for event, seq in zip(events, seqs, strict=True):
        # A resync restarts the numbering (maybe a new boot); otherwise seq never goes back.
        cursor.seq = seq if event.get("kind") == "resync" else max(cursor.seq, seq)
        if isinstance(event.get("bootId"), str):
            cursor.boot_id = event["bootId"]
        emit(event)


@contextlib.asynccontextmanager
async def _open_websocket(
    target: Target, resource: str, connect_timeout: float
) -> AsyncIterator[WebSocketConnection]:
    """A client websocket over TCP or a Unix socket; errors come out unwrapped."""
    host, port, host_header = target.endpoint.ws_target()
    headers = [(k.lower().encode(), v.encode()) for k, v in target.headers().items()]
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(connect_timeout):
                if target.endpoint.uds:
                    stream: trio.SocketStream = await trio.open_unix_socket(target.endpoint.uds)
                else:
                    stream = await trio.open_tcp_stream(host, port)
                try:
                    ws = await wrap_client_stream(
                        nursery,
                        stream,
                        host_header,
                        resource,
                        extra_headers=headers,
                        max_message_size=MAX_MESSAGE_SIZE,
                    )
                except BaseException:
                    with trio.CancelScope(shield=True):
                        await stream.aclose()
                    raise
            try:
                yield ws
            finally:
                with trio.CancelScope(shield=True):
                    with trio.move_on_after(2.0):
                        await ws.aclose()
                    # After a close from the server, trio-websocket leaves the socket open.
                    await stream.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        sole = _sole(group)
        if sole is group:
            raise
        raise sole from None


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one meaningful error of a nursery's group; Cancelled and others stay grouped."""
    leaves = list(_leaves(group))
    if any(isinstance(leaf, trio.Cancelled) for leaf in leaves):
        return group
    # The reader task's rejection comes with the handshake waiter's cancellation: keep it.
    for kind in (ConnectionRejected, ConnectionClosed, OSError, HandshakeError, ApiError):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return group


def _leaves(error: BaseException) -> Iterable[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error
