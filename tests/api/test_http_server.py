"""The API's transport on Quart-Trio + Hypercorn over real loopback and Unix sockets: limits,
keep-alive, the Unix socket's mode, strict query parameters and the event stream's contract
(``seq`` never backwards, ``bootId``, the 4001 resume point)."""

from __future__ import annotations

import gc
import json
import os
import socket
import stat
import tracemalloc
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, ClassVar

import attrs
import httpx
import pytest
import trio
import trio.lowlevel
import trio.testing
import trio_websocket
from support.api_harness import Api, events_in, start_api
from support.net import free_port

from actors import ChildContext, Event, EventBus
from dev8.api import ApiBindError, bind_api, serve_api
from dev8.api._events import WAKE_CHUNK


@attrs.frozen
class Padded(Event):
    """A large event: fills a socket that is not read in fewer rounds."""

    kind: ClassVar[str] = "padded"
    pad: str = "x" * 4000


pytestmark = [
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.usefixtures("collect_garbage_after_module"),
]


async def exchange(url: str, data: bytes, *, until_close: bool = True) -> bytes:
    """Send raw bytes; what the server answers until it closes (or 5 s of silence)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    received = b""
    async with stream:
        await stream.send_all(data)
        with trio.move_on_after(5):
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                received += chunk
                if not until_close and b"\r\n\r\n" in received:
                    break
    return received


@pytest.fixture
async def api(nursery: trio.Nursery) -> Api:
    return await start_api(nursery)


async def test_keep_alive_serves_several_requests_on_one_connection(api: Api) -> None:
    request = b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    answer = await exchange(api.url, request * 3 + b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            b"Connection: close\r\n\r\n")  # fmt: skip
    assert answer.count(b"HTTP/1.1 200") == 4


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/services/web/logs?lines=%C2%B2", "lines"),  # "²": str.isdigit() says yes
        ("/services/web/logs?since=%C2%B2", "since"),
        ("/services/web/logs?lines=0", "lines"),
        ("/services/web/logs?since=-1", "since"),
        ("/services/web/logs?since=" + "9" * 5000, "since"),  # int() refuses > 4,300 digits
    ],
)
async def test_a_malformed_query_parameter_is_a_400_naming_it(
    api: Api, path: str, parameter: str
) -> None:
    async with httpx.AsyncClient(base_url=api.url) as client:
        response = await client.get(path)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "bad_request"
    assert error["parameter"] == parameter
    assert parameter in error["message"]


@pytest.mark.parametrize("since", ["%C2%B2", "-1", "abc"])
async def test_a_bad_since_on_the_event_stream_is_a_400_before_the_upgrade(
    api: Api, since: str
) -> None:
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    async with httpx.AsyncClient(base_url=api.url) as client:
        response = await client.get(f"/events?since={since}", headers=upgrade)
    assert response.status_code == 400
    assert response.json()["error"]["parameter"] == "since"


async def test_expect_100_continue_is_answered(api: Api) -> None:
    head = (
        b"POST /services/web/restart HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    )
    host, port = api.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(head)
        with trio.fail_after(5):
            interim = await stream.receive_some(65536)
        assert interim.startswith(b"HTTP/1.1 100")
        await stream.send_all(b"{}")
        answer = b""
        with trio.fail_after(5):
            while b'"restarts"' not in answer:
                answer += await stream.receive_some(65536)
    assert b" 200 " in answer.split(b"\r\n\r\n")[-2].split(b"\r\n")[-1] or b"200" in answer


async def test_the_head_limit_is_enforced(api: Api) -> None:
    big = b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * (64 * 1024) + b"\r\n\r\n"
    answer = await exchange(api.url, big)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 4")
    # The server goes on.
    async with httpx.AsyncClient(base_url=api.url) as client:
        assert (await client.get("/livez")).status_code == 200


async def test_unknown_hosts_are_refused_on_loopback(nursery: trio.Nursery) -> None:
    """DNS rebinding: a page of evil.example resolving to 127.0.0.1 sends Host: evil.example."""
    api = await start_api(nursery, allowed_hosts={"localhost", "127.0.0.1", "::1"})
    async with httpx.AsyncClient(base_url=api.url) as client:
        refused = await client.get("/status", headers={"Host": "evil.example:9000"})
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "forbidden_host"
        assert (await client.get("/status", headers={"Host": "localhost:9000"})).status_code == 200
        assert (await client.get("/status")).status_code == 200


async def test_the_unix_socket_is_owner_only_replaces_a_stale_one_and_is_removed(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    path = tmp_path / "api.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a socket file left by an earlier life
    api = await start_api(nursery)
    app = api.app
    ctx = ChildContext(name="api", path="dev8/api", attempt=0, publish=EventBus().publish)
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[Any]) -> None:
        with scope:
            await serve_api(ctx, app, f"unix:{path}", task_status=task_status)

    started = await nursery.start(run)
    assert started == {"binds": [f"unix:{path}"]}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    transport = httpx.AsyncHTTPTransport(uds=str(path))
    async with httpx.AsyncClient(base_url="http://localhost", transport=transport) as client:
        assert (await client.get("/livez")).status_code == 200
    scope.cancel()
    await trio.testing.wait_all_tasks_blocked()
    assert not path.exists()


async def test_the_probe_listener_serves_the_probes_only_and_without_a_token(
    nursery: trio.Nursery,
) -> None:
    # api.probe_bind: the kubelet's port, with its own accept loop (benchmarks/flood.py).
    api = await start_api(nursery, token="s3cret")
    bound = await bind_api(f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
    assert bound.probe is not None
    ctx = ChildContext(name="api", path="dev8/api", attempt=0, publish=EventBus().publish)
    started = await nursery.start(serve_api, ctx, api.app, bound)
    assert started["probeBinds"] == bound.probe.binds
    async with (
        httpx.AsyncClient(base_url=bound.probe.binds[0]) as probe,
        httpx.AsyncClient(base_url=bound.binds[0]) as main,
    ):
        for path in ("/livez", "/readyz", "/health"):
            answer, same = await probe.get(path), await main.get(path)
            assert answer.status_code == same.status_code, path
            assert answer.json().keys() == same.json().keys(), path
        for path in ("/status", "/connections", "/"):
            refused = await probe.get(path, headers={"Authorization": "Bearer s3cret"})
            assert refused.status_code == 404, path
            assert refused.json()["error"]["code"] == "not_found"
        assert (await probe.post("/health")).status_code == 405
        assert (await main.get("/status")).status_code == 401
    bound.close()


async def test_a_port_in_use_is_one_clear_error(nursery: trio.Nursery) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    with taken, pytest.raises(ApiBindError) as raised:
        await bind_api(f"127.0.0.1:{port}")
    assert str(raised.value) == f"the API cannot listen on 127.0.0.1:{port}: address already in use"


# -- the event stream's contract --------------------------------------------------------------


async def read_all(ws: trio_websocket.WebSocketConnection, into: list[int]) -> None:
    while True:
        into.extend(e["seq"] for e in events_in(await ws.get_message()))


async def next_events(ws: trio_websocket.WebSocketConnection) -> list[dict[str, Any]]:
    with trio.fail_after(5):
        return events_in(await ws.get_message())


async def test_every_event_carries_the_boot_id(api: Api) -> None:
    async with trio_websocket.open_websocket_url(f"{api.ws_url}/events") as ws:
        await trio.testing.wait_all_tasks_blocked()
        api.bus.publish(Event(source="test"))
        (event,) = await next_events(ws)
    assert set(event) == {"seq", "bootId", "time", "kind", "source", "data"}
    assert event["bootId"] == api.bus.boot_id


async def test_a_resync_never_replays_older_events(nursery: trio.Nursery) -> None:
    api = await start_api(nursery, history=5)
    for _ in range(20):
        api.bus.publish(Event(source="test"))
    # Resume point 3 is gone from the history: a resync, then live events only.
    async with trio_websocket.open_websocket_url(f"{api.ws_url}/events?since=3") as ws:
        (resync,) = await next_events(ws)
        assert resync["kind"] == "resync"
        assert resync["source"] == "dev8"
        assert resync["seq"] == api.bus.last_seq
        assert resync["bootId"] == api.bus.boot_id
        assert resync["data"]["lastEvent"] == api.bus.last_seq
        assert "time" in resync
        api.bus.publish(Event(source="test"))
        (live,) = await next_events(ws)
    assert live["seq"] == resync["seq"] + 1


async def test_resuming_across_a_restart_of_dev8_is_told_to_resync(api: Api) -> None:
    for _ in range(3):
        api.bus.publish(Event(source="test"))
    # A bootId of an earlier dev8, with a seq this one also has: not comparable.
    url = f"{api.ws_url}/events?since=1&bootId=an-earlier-boot"
    async with trio_websocket.open_websocket_url(url) as ws:
        (resync,) = await next_events(ws)
    assert resync["kind"] == "resync"
    assert resync["seq"] == api.bus.last_seq
    # The same boot resumes without a resync.
    url = f"{api.ws_url}/events?since=1&bootId={api.bus.boot_id}"
    async with trio_websocket.open_websocket_url(url) as ws:
        seqs: list[int] = []
        while len(seqs) < api.bus.last_seq - 1:
            seqs.extend(e["seq"] for e in await next_events(ws))
    assert seqs == list(range(2, api.bus.last_seq + 1))


async def test_a_subscriber_behind_gets_batches_and_the_cut_off_says_where_to_resume(
    nursery: trio.Nursery,
) -> None:
    api = await start_api(nursery, history=5000, subscriber_buffer=50)
    first = api.bus.last_seq
    for _ in range(40):
        api.bus.publish(Event(source="test"))
    # 40 to replay: sent in batches (fewer messages than events), in order.
    async with trio_websocket.open_websocket_url(f"{api.ws_url}/events?since={first}") as ws:
        messages, seqs = 0, list[int]()
        while len(seqs) < 40:
            seqs.extend(e["seq"] for e in await next_events(ws))
            messages += 1
        assert seqs == list(range(first + 1, first + 41))
        assert messages < 40


@pytest.mark.parametrize("subscribers", [3, WAKE_CHUNK + 6])
async def test_a_burst_reaches_each_live_subscriber_in_one_message_once_it_is_over(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock, subscribers: int
) -> None:
    """Subscribers are woken when a burst is over, not per event (dev8.api._events.EventFeed),
    in chunks when there are many: the clock stands still until the test moves it, so "over"
    is exactly when it does."""
    api = await start_api(nursery)
    first = api.bus.last_seq
    sockets = []
    async with AsyncExitStack() as stack:
        for _ in range(subscribers):
            url = f"{api.ws_url}/events?since={first}"
            sockets.append(await stack.enter_async_context(trio_websocket.open_websocket_url(url)))
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(30):  # the way services publish: a scheduler step apart
            api.bus.publish(Event(source="test"))
            await trio.lowlevel.checkpoint()
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(1.0)
        for ws in sockets:
            # The first message holds the whole burst (woken per event, it held the first).
            events = events_in(await ws.get_message())
            assert [e["seq"] for e in events] == list(range(first + 1, first + 31))
        # A lone event later: a single object, as ever.
        api.bus.publish(Event(source="test"))
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(1.0)
        for ws in sockets:
            message = json.loads(await ws.get_message())
            assert isinstance(message, dict)
            assert message["seq"] == first + 31


async def test_a_subscriber_leaving_while_it_gathers_a_burst_wakes_the_others(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    """The first subscriber to wait gathers the burst (dev8.api._events.EventFeed); its client
    leaving must not leave the others waiting for a wake-up nobody will give."""
    api = await start_api(nursery)
    first, url = api.bus.last_seq, f"{api.ws_url}/events"
    gatherer = await trio_websocket.connect_websocket_url(nursery, url)
    await trio.testing.wait_all_tasks_blocked()  # parked first: it is summoned to gather
    other = await trio_websocket.connect_websocket_url(nursery, url)
    await trio.testing.wait_all_tasks_blocked()
    api.bus.publish(Event(source="test"))
    await trio.testing.wait_all_tasks_blocked()
    await gatherer.aclose()  # mid-gather, and the clock never moves

    got: list[str | bytes] = []

    async def read() -> None:
        got.append(await other.get_message())

    async with trio.open_nursery() as reading:
        reading.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        reading.cancel_scope.cancel()
    assert [e["seq"] for e in events_in(got[0])] == [first + 1]
    await other.aclose()


async def test_the_cut_off_says_where_to_resume_and_resuming_there_loses_nothing(
    nursery: trio.Nursery,
) -> None:
    api = await start_api(nursery, history=100_000, subscriber_buffer=50)
    # A subscriber that does not read: its socket fills, it falls behind, it is cut off.
    async with trio_websocket.open_websocket_url(f"{api.ws_url}/events") as slow:
        await trio.sleep(0.2)
        with trio.fail_after(120):
            while not api.bus.dropped_subscribers:
                for _ in range(10):  # fewer than the buffer at a time: it falls behind slowly
                    api.bus.publish(Padded(source="test"))
                await trio.lowlevel.checkpoint()
        received: list[int] = []
        with trio.fail_after(30), pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await read_all(slow, received)
    reason = closed.value.reason
    assert reason is not None
    assert reason.code == 4001
    assert reason.reason is not None
    resume = json.loads(reason.reason)
    assert resume == {"resumeFrom": received[-1], "bootId": api.bus.boot_id}
    # Resuming from there: no gap, no duplicate.
    url = f"{api.ws_url}/events?since={resume['resumeFrom']}&bootId={resume['bootId']}"
    async with trio_websocket.open_websocket_url(url) as ws:
        (after,) = (await next_events(ws))[:1]
    assert after["seq"] == received[-1] + 1
    assert after["kind"] != "resync"


async def test_dev8_refuses_to_listen_beyond_loopback_without_a_token(tmp_path: Path) -> None:
    from support.dev8_harness import run_cli

    config = tmp_path / "dev8.yaml"
    config.write_text("api:\n  bind: 0.0.0.0:9\nservices: {}\n")
    result = await run_cli("run", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.decode() == (
        "dev8: api.bind 0.0.0.0:9 listens beyond loopback without a token: set api.token_file "
        "(a file holding the token), or api.insecure_no_auth: true to serve everyone on that "
        "network\n"
    )
    assert result.stdout == b""  # refused before anything started


async def test_insecure_no_auth_is_a_choice_written_in_the_config() -> None:
    from dev8.app import api_auth_problem
    from dev8.config import parse_config

    def parse(text: str) -> Any:
        return parse_config(text, "test.yaml", environ={})

    assert api_auth_problem(parse("api: {bind: '0.0.0.0:9000', insecure_no_auth: true}")) is None
    assert api_auth_problem(parse("api: {bind: '0.0.0.0:9000'}")) is not None
    assert api_auth_problem(parse("api: {bind: '127.0.0.1:9000'}")) is None


async def test_replay_to_clients_that_do_not_read_holds_no_copy_and_memory_returns(
    nursery: trio.Nursery,
) -> None:
    """Replay is read from the bus's own history: 200 clients resuming from 0 that never read
    hold at most what is in flight each, and it is all given back once they leave."""
    api = await start_api(nursery, history=2000)
    for _ in range(2000):
        api.bus.publish(Padded(source="test"))  # about 4 KB each: 8 MB of history

    async def round_of(count: int) -> int:
        """Traced bytes held while ``count`` such clients are connected."""
        start = tracemalloc.get_traced_memory()[0]
        async with trio.open_nursery() as clients:
            opened = trio.Semaphore(0)

            async def resume_and_never_read() -> None:
                async with trio_websocket.open_websocket_url(f"{api.ws_url}/events?since=0"):
                    opened.release()
                    await trio.sleep_forever()

            for _ in range(count):
                clients.start_soon(resume_and_never_read)
            for _ in range(count):
                await opened.acquire()
            await trio.sleep(1)
            held = tracemalloc.get_traced_memory()[0] - start
            clients.cancel_scope.cancel()
        await wait_until_quiet(api)
        return held

    tracemalloc.start()
    try:
        await round_of(200)  # the first websockets load what the stack keeps for good
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        during = await round_of(200)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    print(f"traced memory: {during // 1024} KiB with 200 clients, {after // 1024} KiB after")
    # A copy of the history per client would be 200 x 8 MB; in flight is a batch (64 events).
    assert during < 200 * 64 * 4200 * 2
    # The test's own clients are traced too (trio-websocket leaves some to the collector).
    assert after < during / 2


async def wait_until_quiet(api: Api) -> None:
    with trio.fail_after(30):
        while api.control.websocket_clients:  # noqa: ASYNC110 - the server's handlers ending
            await trio.sleep(0.05)
