"""dev8's HTTP/1.1 + websocket server (``dev8.api._http``) over real loopback and Unix sockets.

The management API's routes are tested in test_api.py and fuzzed in test_fuzz_api.py; this is the
protocol layer under them: keep-alive, HEAD, limits, deadlines, the connection cap, websocket
control frames, and the Unix socket's mode.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
import trio_websocket

from actors import ChildContext, EventBus
from dev8.api._http import App, Request, Response, json_response
from dev8.api._server import serve_api
from dev8.api._websocket import WebSocket, text_frame


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def demo_app(**options: Any) -> App:
    app = App(**options)

    @app.get("/hello/{name}")
    async def hello(request: Request, name: str) -> Response:
        return json_response({"hello": name, "q": dict(request.query)})

    @app.post("/echo")
    async def echo(request: Request) -> Response:
        return Response(200, request.body, "application/octet-stream")

    @app.get("/boom")
    async def boom(request: Request) -> Response:
        raise RuntimeError("handler bug")

    @app.websocket("/ws")
    async def ws(request: Request, socket: WebSocket) -> None:
        await socket.accept()
        await socket.send_frames(text_frame("one") + text_frame("two"))
        await socket.wait_closed()

    return app


async def serve(nursery: trio.Nursery, app: App, *, max_connections: int = 64) -> int:
    port = free_port()
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    await nursery.start(
        lambda task_status: app.serve(
            listeners, max_connections=max_connections, task_status=task_status
        )
    )
    return port


@pytest.fixture
async def port(nursery: trio.Nursery) -> AsyncIterator[int]:
    yield await serve(nursery, demo_app())
    nursery.cancel_scope.cancel()


async def exchange(port: int, data: bytes, *, until_close: bool = False) -> bytes:
    """Send raw bytes; read one answer (up to the end of its head and body), or until EOF."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(data)
        received = b""
        with trio.fail_after(30):
            while True:
                chunk = await stream.receive_some()
                if not chunk:
                    return received
                received += chunk
                if not until_close and _complete(received):
                    return received


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return True


async def test_keep_alive_serves_several_requests_on_one_connection(port: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        first = await client.get("/hello/a%20b?x=1&x=2&y=")
        second = await client.post("/echo", content=b"payload")
        assert first.json() == {"hello": "a b", "q": {"x": "1", "y": ""}}
        assert second.content == b"payload"
        assert first.extensions["network_stream"] is second.extensions["network_stream"]
        assert first.reason_phrase == "OK"


async def test_head_has_the_headers_of_get_and_no_body(port: int) -> None:
    answer = await exchange(
        port, b"HEAD /hello/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", until_close=True
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"content-length: 23" in head.lower()  # {"hello": "x", "q": {}}
    assert body == b""


async def test_wrong_method_is_405_with_allow_and_unknown_path_404(port: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        wrong = await client.delete("/echo")
        brew = await client.request("BREW", "/hello/x")
        missing = await client.get("/nowhere")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"
    assert brew.status_code == 405
    assert brew.headers["allow"] == "GET, HEAD"
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


async def test_a_failing_handler_is_a_500_and_the_server_goes_on(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        failed = await client.get("/boom")
        after = await client.get("/hello/again")
    assert failed.status_code == 500
    assert failed.json()["error"]["code"] == "internal_error"
    assert "handler bug" not in failed.text  # details go to the log, not to the client
    assert after.status_code == 200
    assert any("api_handler_failed" in record.getMessage() for record in caplog.records)


async def test_bodies_over_the_limit_are_413_whether_declared_or_chunked(
    nursery: trio.Nursery,
) -> None:
    port = await serve(nursery, demo_app(max_body=1000))
    declared = await exchange(
        port, b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n" + b"x" * 100
    )
    chunk = b"%x\r\n%s\r\n" % (600, b"y" * 600)
    chunked = await exchange(
        port,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 2,
        until_close=True,
    )
    fits = await exchange(port, b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
    assert declared.startswith(b"HTTP/1.1 413 ")
    assert chunked.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in chunked.lower()
    assert fits.startswith(b"HTTP/1.1 200 ")
    assert fits.endswith(b"abc")


async def test_malformed_and_oversized_heads_are_4xx(port: int) -> None:
    garbage = await exchange(port, b"NOT HTTP AT ALL\r\n\r\n", until_close=True)
    huge = await exchange(
        port,
        b"GET /hello/x HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"a" * 200_000 + b"\r\n\r\n",
        until_close=True,
    )
    assert garbage.startswith(b"HTTP/1.1 400 ")
    assert huge.startswith(b"HTTP/1.1 431 ")


async def test_an_idle_connection_is_closed_after_the_keep_alive(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.autojump_threshold = 0.05  # virtual time jumps only once real I/O is quiet
    port = await serve(nursery, demo_app(keep_alive=5.0))
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"GET /hello/x HTTP/1.1\r\nHost: t\r\n\r\n")
        answer = await stream.receive_some()
        assert answer.startswith(b"HTTP/1.1 200 ")
        idle_from = trio.current_time()
        assert await stream.receive_some() == b""  # the server hung up
        assert 5.0 <= trio.current_time() - idle_from < 5.5


async def test_a_body_that_never_ends_gets_408(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.autojump_threshold = 0.05
    port = await serve(nursery, demo_app(request_deadline=10.0))
    started = trio.current_time()
    answer = await exchange(
        port, b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc", until_close=True
    )
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert 10.0 <= trio.current_time() - started < 10.5


async def test_connections_beyond_the_cap_wait_for_a_free_slot(nursery: trio.Nursery) -> None:
    port = await serve(nursery, demo_app(), max_connections=2)
    held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
    for stream in held:  # both are being served
        await stream.send_all(b"GET /hello/x HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await stream.receive_some()).startswith(b"HTTP/1.1 200 ")
    third = await trio.open_tcp_stream("127.0.0.1", port)  # in the kernel's backlog only
    await third.send_all(b"GET /hello/y HTTP/1.1\r\nHost: t\r\n\r\n")
    with trio.move_on_after(0.3) as waited:
        await third.receive_some()
    assert waited.cancelled_caught, "a third connection was served beyond the cap"
    await held[0].aclose()
    with trio.fail_after(5):
        assert (await third.receive_some()).startswith(b"HTTP/1.1 200 ")
    for stream in (held[1], third):
        await stream.aclose()


async def test_websocket_frames_arrive_and_pings_and_close_are_answered(port: int) -> None:
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws") as ws:
        assert [await ws.get_message(), await ws.get_message()] == ["one", "two"]
        with trio.fail_after(5):
            await ws.ping(b"are-you-there")  # returns when the matching pong arrives
    assert ws.closed is not None
    assert ws.closed.code == 1000


async def test_a_plain_get_of_a_websocket_route_is_400(port: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        response = await client.get("/ws")
    assert response.status_code == 400


async def test_unix_socket_is_owner_only_replaces_a_stale_one_and_is_removed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    path = tmp_path / "api.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # left behind by an earlier life that died
    stale.close()
    ctx = ChildContext(name="api", path="dev8/api", attempt=0, publish=EventBus().publish)
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[Any]) -> None:
        with scope:
            await serve_api(ctx, demo_app(), f"unix:{path}", task_status=task_status)

    started = await nursery.start(run)
    assert started == {"binds": [f"unix:{path}"]}
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    transport = httpx.AsyncHTTPTransport(uds=str(path))
    async with httpx.AsyncClient(transport=transport, base_url="http://dev8") as client:
        assert (await client.get("/hello/unix")).json()["hello"] == "unix"
    scope.cancel()
    await trio.testing.wait_all_tasks_blocked()
    assert not path.exists()


async def test_the_frame_of_an_event_is_built_once_for_every_subscriber() -> None:
    from actors import Event
    from dev8.api._events import _FrameCache

    bus = EventBus()
    envelope = bus.publish(Event(source="test"))
    frames = _FrameCache(size=2)
    first, again = frames(envelope), frames(envelope)
    assert first is again
    assert first == text_frame(envelope.json)
    assert json.loads(first[2:]) == envelope.to_dict()  # a short frame: 2 bytes of header
    for _ in range(3):
        frames(bus.publish(Event(source="test")))
    assert frames(envelope) is not first  # evicted, rebuilt: the cache is bounded
