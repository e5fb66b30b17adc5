"""dev8.health: the prober actors and the board.

The prober's logic runs on trio's virtual clock against an in-process HTTP server that the test
makes answer, fail or hang; times are asserted exactly. Then a real hanging process is restarted
by its liveness probe through a real supervisor, on real time.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pytest
import trio
from support.net import free_port

from actors import (
    ChildContext,
    ChildSpec,
    ChildState,
    Envelope,
    EventBus,
    Intensity,
    RestartScheduled,
    Supervisor,
)
from dev8.config import ProbeConfig, ProbesConfig, ProbeType
from dev8.health import HealthBoard, LivenessFailed, make_prober_spec
from dev8.init import OwnPids
from dev8.probes import process_state
from dev8.process import ProcessSettings, run_process


class FakeService:
    """An HTTP service on 127.0.0.1: answers ``status``, or hangs while ``status`` is None.

    ``pid`` plays the supervisor's view of it: None while not running.
    """

    def __init__(self, script: Iterable[int] = ()) -> None:
        self.status: int | None = 200
        self.script = iter(script)  # statuses for the next requests, before `status` applies
        self.requests = 0
        self.pid: int | None = 1000
        self.restarts: list[float] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                data += chunk
            self.requests += 1
            self.status = next(self.script, self.status)
            if self.status is None:
                await stream.receive_some(1)  # hang until the prober gives up
                return
            answer = f"HTTP/1.1 {self.status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            await stream.send_all(answer.encode())
        except trio.BrokenResourceError:
            pass

    async def restart(self, name: str) -> None:
        """What the supervisor does: a new incarnation that answers again."""
        assert name == "web"
        self.restarts.append(trio.current_time())
        assert self.pid is not None
        self.pid += 1
        self.status = 200


class Timeline:
    """Events with their virtual time relative to the start of the test."""

    def __init__(self, bus: EventBus) -> None:
        self.t0 = trio.current_time()
        self.events: list[tuple[float, Any]] = []
        bus.add_listener(self._on)

    def _on(self, envelope: Envelope) -> None:
        self.events.append((round(trio.current_time() - self.t0, 6), envelope.event))

    def steps(self, *kinds: str) -> list[tuple[float, str, dict[str, Any]]]:
        """The prober's events (or those of ``kinds``): (time, kind, data)."""
        kinds = kinds or HEALTH_KINDS
        return [(t, e.kind, e.data()) for t, e in self.events if e.kind in kinds]


HEALTH_KINDS = (
    "probe_failed",
    "probe_recovered",
    "service_ready",
    "service_not_ready",
    "liveness_failed",
)


@asynccontextmanager
async def running(
    service: FakeService, probes: Callable[[int], ProbesConfig], **options: Any
) -> AsyncIterator[tuple[HealthBoard, Timeline, Supervisor, float]]:
    """The fake service on a port, and its prober under a `health` supervisor."""
    bus = EventBus()
    board = HealthBoard(wall_clock=lambda: 1_700_000_000.0 + trio.current_time())
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, service.handle, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        spec = make_prober_spec(
            "web", probes(port), board, service.restart, lambda: service.pid, **options
        )
        health = Supervisor("health", [spec], bus=bus)
        timeline = Timeline(bus)
        await nursery.start(health.run)
        yield board, timeline, health, timeline.t0
        nursery.cancel_scope.cancel()


def http(port: int, **options: Any) -> ProbeConfig:
    return ProbeConfig(type=ProbeType.HTTP, url=f"http://127.0.0.1:{port}/healthz", **options)


async def at(t0: float, t: float) -> None:
    await trio.sleep_until(t0 + t)


# --------------------------------------------------------------------------- liveness


async def test_liveness_restarts_a_hung_service_after_its_threshold(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Probes at 0, 10, 20, ...; it hangs at 25; the checks at 30, 40 and 50 each time out after
    2 s: the third failure, at 52, restarts it. Then it answers again and is left alone."""
    service = FakeService()

    def probes(port: int) -> ProbesConfig:
        return ProbesConfig(liveness=http(port, interval=10.0, timeout=2.0, failure_threshold=3))

    async with running(service, probes) as (board, timeline, _, t0):
        await at(t0, 25)
        assert service.requests == 3  # at 0, 10, 20
        service.status = None
        await at(t0, 100)
        assert [t - t0 for t in service.restarts] == [pytest.approx(52.0)]
        # The new incarnation is probed at once (initial_delay 0) and every 10 s after.
        assert service.requests == 3 + 3 + 5  # 30, 40, 50 | 52, 62, 72, 82, 92
        probe = board.details()["web"]["probes"]["liveness"]
    failed = timeline.steps("probe_failed", "liveness_failed")
    assert failed == [
        (32.0, "probe_failed", _failed("liveness", 1, 3)),
        (42.0, "probe_failed", _failed("liveness", 2, 3)),
        (52.0, "probe_failed", _failed("liveness", 3, 3)),
        (52.0, "liveness_failed", {"service": "web", "detail": TIMEOUT, "failures": 3}),
    ]
    assert {e.source for _, e in timeline.events} == {"health/web"}
    assert probe["ok"] is True
    assert probe["consecutiveFailures"] == 0
    assert probe["checks"] == 11
    assert (
        probe["lastCheck"] == datetime.fromtimestamp(1_700_000_000.0 + t0 + 92, tz=UTC).isoformat()
    )
    assert "web" not in board.readiness()  # no readiness probe: ready when running


TIMEOUT = "timed out after 2 s"


def _failed(kind: str, failures: int, threshold: int) -> dict[str, Any]:
    return {
        "service": "web",
        "probe": kind,
        "type": "http",
        "detail": TIMEOUT,
        "latency": 2.0,
        "failures": failures,
        "failure_threshold": threshold,
    }


async def test_a_success_resets_the_liveness_count(autojump_clock: trio.abc.Clock) -> None:
    service = FakeService(script=[500, 500, 200, 500, 500, 200])

    def probes(port: int) -> ProbesConfig:
        return ProbesConfig(liveness=http(port, interval=5.0, failure_threshold=3))

    async with running(service, probes) as (_, timeline, _, t0):
        await at(t0, 60)
    assert service.restarts == []
    steps = [(t, kind) for t, kind, _ in timeline.steps("probe_failed", "probe_recovered")]
    assert steps == [
        (0.0, "probe_failed"),
        (5.0, "probe_failed"),
        (10.0, "probe_recovered"),
        (15.0, "probe_failed"),
        (20.0, "probe_failed"),
        (25.0, "probe_recovered"),
    ]


async def test_nothing_is_probed_while_the_service_is_not_running(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Backoff is not hammered: no probes while pid_of() is None, and counts start again."""
    service = FakeService()
    service.pid = None
    service.status = 500

    def probes(port: int) -> ProbesConfig:
        return ProbesConfig(
            liveness=http(port, interval=1.0, failure_threshold=3, initial_delay=4.0)
        )

    async with running(service, probes, watch_interval=0.25) as (board, timeline, _, t0):
        await at(t0, 29.9)
        assert service.requests == 0
        service.pid = 7  # seen running at 30: first check after the initial delay, at 34
        await at(t0, 35.5)
        assert service.requests == 2  # 34, 35
        service.pid = None  # stopped again (crashed, in backoff)
        await at(t0, 59.9)
        assert service.requests == 2
        assert board.details()["web"]["probes"]["liveness"]["consecutiveFailures"] == 0
        service.pid = 8  # seen at 60
        await at(t0, 65.5)
    times = [t for t, _, _ in timeline.steps("probe_failed")]
    assert times == [34.0, 35.0, 64.0, 65.0]  # a third failure in a row would restart it
    assert service.restarts == []


# --------------------------------------------------------------------------- readiness


async def test_readiness_marks_not_ready_and_ready_without_restarting(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Checks every 5 s from 5 (the start itself was gated on readiness); 503 from 7 to 22:
    two failures (10, 15) make it not ready at 15; two successes (25, 30) ready again at 30."""
    service = FakeService()

    def probes(port: int) -> ProbesConfig:
        return ProbesConfig(
            readiness=http(port, interval=5.0, failure_threshold=2, success_threshold=2)
        )

    async with running(service, probes) as (board, timeline, _, t0):
        assert board.readiness() == {"web": True}
        await at(t0, 7)
        service.status = 503
        await at(t0, 16)
        assert board.readiness() == {"web": False}
        assert not board.is_ready("web")
        await at(t0, 22)
        service.status = 200
        await at(t0, 27)
        assert board.readiness() == {"web": False}  # one success is not enough
        await at(t0, 31)
        assert board.readiness() == {"web": True}
        snapshot = board.snapshot()["web"]
    assert service.restarts == []
    assert [(t, kind) for t, kind, _ in timeline.steps()] == [
        (10.0, "probe_failed"),
        (15.0, "probe_failed"),
        (15.0, "service_not_ready"),
        (20.0, "probe_failed"),
        (25.0, "probe_recovered"),
        (30.0, "service_ready"),
    ]
    not_ready = timeline.steps("service_not_ready")[0][2]
    assert not_ready == {"service": "web", "detail": "HTTP 503 (expected 200)"}
    assert snapshot["ready"] is True
    assert snapshot["probes"]["readiness"]["consecutiveSuccesses"] == 2
    assert snapshot["probes"]["readiness"]["type"] == "http"


async def test_a_new_incarnation_starts_ready_or_not_as_configured(
    autojump_clock: trio.abc.Clock,
) -> None:
    """With started_ready=False (a start not gated on readiness) each incarnation begins not
    ready and is checked at once."""
    service = FakeService()
    service.status = 503

    def probes(port: int) -> ProbesConfig:
        return ProbesConfig(readiness=http(port, interval=5.0, failure_threshold=1))

    async with running(service, probes, started_ready=False) as (board, timeline, _, t0):
        assert board.readiness() == {"web": False}
        await at(t0, 1)
        service.status = 200
        await at(t0, 6.2)
        assert board.readiness() == {"web": True}  # passed at 5
        service.pid = None
        assert board.readiness() == {"web": False}  # not running: at once, not at the next poll
        service.pid = 2000
        assert board.readiness() == {"web": False}  # a new incarnation, not yet probed
        await at(t0, 20)
        assert board.readiness() == {"web": True}
    assert [(t, kind) for t, kind, _ in timeline.steps()] == [
        (0.0, "probe_failed"),
        (5.0, "probe_recovered"),
        (5.0, "service_ready"),
        (6.5, "service_ready"),  # the new incarnation, noticed within the watch interval
    ]


async def test_a_gated_incarnation_starts_ready(autojump_clock: trio.abc.Clock) -> None:
    service = FakeService()

    def probes(port: int) -> ProbesConfig:
        return ProbesConfig(readiness=http(port, interval=5.0))

    async with running(service, probes) as (board, _, _, t0):
        assert board.readiness() == {"web": True}
        service.pid = 1001
        assert board.readiness() == {"web": True}  # its start waited for readiness
        await at(t0, 12)
    assert service.requests == 2  # 5.5 and 10.5: no check right after a gated start


def test_a_service_without_probes_has_no_prober() -> None:
    board = HealthBoard()

    async def restart(name: str) -> None:
        raise AssertionError

    with pytest.raises(ValueError, match="no probes"):
        make_prober_spec("web", ProbesConfig(), board, restart, lambda: 1)
    assert board.readiness() == {}
    assert board.is_ready("web")


# --------------------------------------------------------------------------- a real hung process


async def poll_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """A bounded wait on real processes."""
    with trio.fail_after(timeout):
        while True:
            if condition():
                return
            await trio.sleep(0.02)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


HUNG = """
import socket, sys, time
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", int(sys.argv[1])))
sock.listen(64)
time.sleep(3600)  # connections complete in the kernel's backlog; nobody ever answers
"""


async def test_a_real_hung_process_is_restarted_by_its_liveness_probe() -> None:
    port = free_port()
    bus = EventBus()
    own = OwnPids()
    settings = ProcessSettings(command=[sys.executable, "-c", HUNG, str(port)], stop_timeout=2.0)

    async def start(ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
        await run_process(ctx, settings, own=own, task_status=task_status)

    services = Supervisor(
        "services",
        [ChildSpec(name="web", start=start, shutdown_timeout=5.0)],
        bus=bus,
        intensity=Intensity(max_restarts=100, window=60.0),
    )

    def pid_of() -> int | None:
        (node,) = services.children()
        return node.info.get("pid") if node.state is ChildState.RUNNING else None

    async def restart(name: str) -> None:
        await services.restart_child(name, reason="probe")

    board = HealthBoard()
    liveness = http(port, interval=0.3, timeout=0.2, failure_threshold=2)
    prober = make_prober_spec("web", ProbesConfig(liveness=liveness), board, restart, pid_of)
    health = Supervisor("health", [prober], bus=bus)
    async with trio.open_nursery() as nursery:
        await nursery.start(services.run)
        first = pid_of()
        assert first is not None
        # Probed only once it listens: before that a probe is refused, not timed out (a busy
        # machine can take longer than two probe intervals to start Python).
        await poll_until(lambda: listening(port))
        await nursery.start(health.run)
        await poll_until(
            lambda: (
                any(isinstance(e.event, RestartScheduled) for e in bus.history())
                and pid_of() not in (None, first)
            )
        )
        second = pid_of()
        (node,) = services.children()
        assert set(node.restart_reasons) == {"probe"}
        assert process_state(first) is None  # the hung one was stopped and waited for
        assert second is not None
        assert process_state(second) not in (None, "Z")
        nursery.cancel_scope.cancel()
    assert process_state(second) is None
    assert len(own) == 0
    kinds = [e.event.kind for e in bus.history()]
    assert kinds.index("liveness_failed") < kinds.index("restart_scheduled")
    scheduled = next(e.event for e in bus.history() if isinstance(e.event, RestartScheduled))
    assert (scheduled.child, scheduled.reason) == ("web", "probe")
    failed = next(e.event for e in bus.history() if isinstance(e.event, LivenessFailed))
    assert failed.detail == "timed out after 0.2 s"
