"""dev8.health.probes: each probe type against real sockets and processes; readiness gating
of a start.

Probe logic against in-process servers runs on trio's virtual clock (loopback I/O between our
own tasks is seen at once); real processes run on real time with small, bounded waits.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio
from support.http_fake import ScriptedHttp
from support.net import free_port
from support.waiting import wait_until

from actors import (
    ChildContext,
    ChildExited,
    ChildSpec,
    ChildStarted,
    ChildState,
    Envelope,
    Escalation,
    EventBus,
    Intensity,
    Restart,
    Supervisor,
)
from dev8.config import ProbeConfig, ProbeType
from dev8.health.probes import process_state, run_probe, start_when_ready, wait_ready
from dev8.pid1.reaper import OwnPids
from dev8.services.process import ProcessSettings, run_process

# --------------------------------------------------------------------------- in-process servers


@asynccontextmanager
async def serving(handler: Callable[[trio.SocketStream], Awaitable[None]]) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


def http_probe(port: int, **options: Any) -> ProbeConfig:
    return ProbeConfig(type=ProbeType.HTTP, url=f"http://127.0.0.1:{port}/healthz", **options)


async def test_http_probe_passes_on_the_expected_status(autojump_clock: trio.abc.Clock) -> None:
    fake = ScriptedHttp()
    async with serving(fake.handle) as port:
        result = await run_probe(http_probe(port), pid=None)
        assert (result.ok, result.detail) == (True, "HTTP 200")
        fake.status = 503
        result = await run_probe(http_probe(port), pid=None)
        assert (result.ok, result.detail) == (False, "HTTP 503 (expected 200)")
        result = await run_probe(http_probe(port, expect_status=503), pid=None)
        assert result.ok
        fake.status = 302  # redirects are not followed: the status is the answer
        result = await run_probe(http_probe(port), pid=None)
        assert (result.ok, result.detail) == (False, "HTTP 302 (expected 200)")
    assert fake.requests == 4


async def test_http_probe_that_hangs_fails_at_its_timeout(autojump_clock: trio.abc.Clock) -> None:
    fake = ScriptedHttp()
    fake.status = None
    async with serving(fake.handle) as port:
        start = trio.current_time()
        result = await run_probe(http_probe(port, timeout=2.5), pid=None)
        assert trio.current_time() - start == pytest.approx(2.5)
    assert (result.ok, result.detail) == (False, "timed out after 2.5 s")
    assert result.latency == pytest.approx(2.5)


async def test_http_probe_failure_detail_never_shows_the_url() -> None:
    port = free_port()  # nothing listens
    probe = ProbeConfig(type=ProbeType.HTTP, url=f"http://u:s3cret@127.0.0.1:{port}/?token=t0k3n")
    result = await run_probe(probe, pid=None)
    assert not result.ok
    assert "ConnectError" in result.detail
    assert "s3cret" not in result.detail
    assert "t0k3n" not in result.detail


async def test_http_probe_ignores_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("ALL_PROXY", f"http://127.0.0.1:{free_port()}")
    fake = ScriptedHttp()
    async with serving(fake.handle) as port:
        assert (await run_probe(http_probe(port), pid=None)).ok


async def test_tcp_probe(autojump_clock: trio.abc.Clock) -> None:
    async def close(stream: trio.SocketStream) -> None:
        await stream.aclose()

    async with serving(close) as port:
        probe = ProbeConfig(type=ProbeType.TCP, port=port)
        result = await run_probe(probe, pid=None)
        assert (result.ok, result.detail) == (True, f"connected to 127.0.0.1:{port}")
    result = await run_probe(probe, pid=None)  # the listener is gone
    assert not result.ok
    assert "OSError" in result.detail


async def test_ssh_banner_probe(autojump_clock: trio.abc.Clock) -> None:
    answer = [b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"]

    async def sshd(stream: trio.SocketStream) -> None:
        if answer[0]:
            await stream.send_all(answer[0])
        await stream.receive_some(1)

    async with serving(sshd) as port:
        probe = ProbeConfig(type=ProbeType.SSH_BANNER, port=port, timeout=1.0)
        result = await run_probe(probe, pid=None)
        assert (result.ok, result.detail) == (True, "SSH-2.0-OpenSSH_9.2p1 Debian-2")
        answer[0] = b"HTTP/1.1 400 Bad Request\r\n\r\n"
        result = await run_probe(probe, pid=None)
        assert not result.ok
        answer[0] = b""  # a port that accepts and says nothing
        start = trio.current_time()
        result = await run_probe(probe, pid=None)
        assert not result.ok
        assert trio.current_time() - start == pytest.approx(1.0)


async def test_process_probe_alive_zombie_gone() -> None:
    assert (await run_probe(ProbeConfig(type=ProbeType.PROCESS), pid=None)).detail == "no process"
    process = await trio.lowlevel.open_process(["sleep", "30"])
    try:
        result = await run_probe(ProbeConfig(type=ProbeType.PROCESS), pid=process.pid)
        assert result.ok
        assert result.detail.startswith(f"process {process.pid} is alive")
        process.kill()
        # Not waited for: it stays a zombie.
        await wait_until(lambda: process_state(process.pid) == "Z", timeout=10.0, what="a zombie")
        result = await run_probe(ProbeConfig(type=ProbeType.PROCESS), pid=process.pid)
        assert (result.ok, result.detail) == (False, f"process {process.pid} is a zombie")
    finally:
        with trio.CancelScope(shield=True):
            process.kill()
            await process.wait()
    result = await run_probe(ProbeConfig(type=ProbeType.PROCESS), pid=process.pid)
    assert (result.ok, result.detail) == (False, f"process {process.pid} is gone")


# --------------------------------------------------------------------------- wait_ready


async def test_wait_ready_polls_fast_while_starting(autojump_clock: trio.abc.Clock) -> None:
    """The port opens at t=1.3; polls at 0, .05, .15, .35, .75, 1.55: ready at 1.55, not 30."""
    port = free_port()
    probe = ProbeConfig(type=ProbeType.TCP, port=port, interval=30.0)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:

        async def open_later() -> None:
            await trio.sleep(1.3)
            listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
            async with listeners[0]:
                await trio.sleep_forever()

        nursery.start_soon(open_later)
        result = await wait_ready(probe, pid_getter=lambda: None)
        assert trio.current_time() - start == pytest.approx(1.55)
        assert result.ok
        nursery.cancel_scope.cancel()


async def test_wait_ready_needs_success_threshold_in_a_row(
    autojump_clock: trio.abc.Clock,
) -> None:
    fake = ScriptedHttp()
    answers = iter([200, 500, 200, 200, 200])

    async def flaky(stream: trio.SocketStream) -> None:
        fake.status = next(answers)
        await fake.handle(stream)

    async with serving(flaky) as port:
        probe = http_probe(port, success_threshold=2, initial_delay=3.0, interval=0.1)
        start = trio.current_time()
        await wait_ready(probe, pid_getter=lambda: None)
        # initial delay 3, then polls at +0, +.05, +.1 (500 breaks the run), +.2 (the cap: interval)
        assert trio.current_time() - start == pytest.approx(3.25)
    assert fake.requests == 4


# --------------------------------------------------------------------------- gating a real start


SLOW_LISTENER = """
import socket, sys, time
time.sleep(float(sys.argv[2]))
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", int(sys.argv[1])))
sock.listen()
print("listening", flush=True)
time.sleep(3600)
"""


def gated_spec(
    name: str,
    argv: list[str],
    probe: ProbeConfig,
    own: OwnPids,
    *,
    start_timeout: float = 20.0,
    **spec: Any,
) -> ChildSpec:
    """A service child as dev8.services.factory builds one, with its start gated on the readiness
    probe."""
    settings = ProcessSettings(command=argv, stop_timeout=2.0)

    async def start(ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
        await start_when_ready(
            partial(run_process, ctx, settings, own=own),
            probe,
            pid_getter=lambda: ctx.info.get("pid"),
            task_status=task_status,
        )

    return ChildSpec(
        name=name, start=start, shutdown_timeout=5.0, start_timeout=start_timeout, **spec
    )


class Timeline:
    def __init__(self, bus: EventBus) -> None:
        self.t0 = trio.current_time()
        self.events: list[tuple[float, Any]] = []
        bus.add_listener(self._on)

    def _on(self, envelope: Envelope) -> None:
        self.events.append((trio.current_time() - self.t0, envelope.event))

    def of(self, cls: type[Any]) -> list[tuple[float, Any]]:
        return [(t, e) for t, e in self.events if isinstance(e, cls)]


async def test_a_service_is_started_only_once_its_port_answers() -> None:
    port = free_port()
    bus = EventBus()
    timeline = Timeline(bus)
    own = OwnPids()
    probe = ProbeConfig(type=ProbeType.TCP, port=port, interval=30.0, timeout=1.0)
    argv = [sys.executable, "-c", SLOW_LISTENER, str(port), "0.5"]
    services = Supervisor("services", [gated_spec("slow", argv, probe, own)], bus=bus)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(15):
            await nursery.start(services.run)  # returns once every child is started
        (node,) = services.children()
        assert node.state is ChildState.RUNNING
        pid = node.info["pid"]
        assert process_state(pid) not in (None, "Z")
        (started_at, started), *_ = timeline.of(ChildStarted)
        assert started.info["pid"] == pid
        # It was STARTING while the process slept: spawn is at once, readiness after 0.5 s.
        assert started_at >= 0.5
        # Polled fast, not at the 30 s interval (a bound far from both: a busy machine may
        # take seconds to start Python).
        assert started_at < probe.interval / 2
        nursery.cancel_scope.cancel()
    assert process_state(pid) is None  # stopped and waited for


async def test_never_ready_is_a_failed_start_and_a_critical_one_ends_the_tree() -> None:
    port = free_port()
    bus = EventBus()
    timeline = Timeline(bus)
    own = OwnPids()
    probe = ProbeConfig(type=ProbeType.TCP, port=port, interval=30.0, timeout=0.2)
    argv = [sys.executable, "-c", SLOW_LISTENER, str(port), "3600"]  # never listens
    spec = gated_spec(
        "stuck",
        argv,
        probe,
        own,
        start_timeout=0.6,
        critical=True,
        intensity=Intensity(max_restarts=0, window=60.0),
    )
    services = Supervisor("services", [spec], bus=bus)
    pids: list[int] = []
    bus.add_listener(
        lambda e: pids.append(e.event.info["pid"]) if isinstance(e.event, ChildStarted) else None
    )
    with trio.fail_after(15), pytest.raises(Escalation) as raised:
        await services.run()
    assert raised.value.final
    assert raised.value.child == "stuck"
    exits = [e for _, e in timeline.of(ChildExited)]
    assert [(e.reason, e.abnormal) for e in exits] == [("start_timeout", True)]
    assert pids == []  # never reported started
    assert len(own) == 0  # its process was stopped and waited for


async def test_a_service_dying_before_ready_reports_its_own_exit() -> None:
    bus = EventBus()
    timeline = Timeline(bus)
    probe = ProbeConfig(type=ProbeType.TCP, port=free_port(), timeout=0.2)
    argv = [sys.executable, "-c", "import sys, time; time.sleep(0.3); sys.exit(3)"]
    spec = gated_spec("dies", argv, probe, OwnPids(), restart=Restart.TEMPORARY)
    services = Supervisor("services", [spec], bus=bus)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(15):
            await nursery.start(services.run)
        await wait_until(lambda: bool(timeline.of(ChildExited)), timeout=10.0, what="the exit")
        nursery.cancel_scope.cancel()
    (_, exited), *_ = timeline.of(ChildExited)
    assert exited.error == "ProcessExited: exited with code 3"  # not an exception group
    assert exited.details == {"exit_code": 3, "signal": None}


async def test_start_when_ready_without_a_probe_reports_at_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def run(*, task_status: trio.TaskStatus[Any]) -> None:
        task_status.started({"pid": 42})
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        value = await nursery.start(partial(start_when_ready, run, None, pid_getter=lambda: 42))
        assert value == {"pid": 42}
        nursery.cancel_scope.cancel()
