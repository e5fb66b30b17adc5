"""dev8.health.probers: the prober actors and the board.

The prober's logic runs on trio's virtual clock against an in-process HTTP server that the test
makes answer, fail or hang, its service a task under a real ``services`` supervisor whose
lifecycle events the prober hears; times are asserted exactly. Then a real hanging process is
restarted by its liveness probe through a real supervisor, on real time.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from support.http_fake import ScriptedHttp
from support.net import free_port
from support.waiting import wait_until

from actors import (
    ActorError,
    ActorExited,
    ActorRef,
    ChildContext,
    ChildSpec,
    ChildState,
    Envelope,
    EventBus,
    Intensity,
    Registry,
    RestartScheduled,
    Supervisor,
)
from dev8.config import ProbeConfig, ProbesConfig, ProbeType
from dev8.health.probers import (
    HealthBoard,
    LivenessFailed,
    ProbeNow,
    ProbeRound,
    ProberStatus,
    ServiceHearing,
    ServiceNotRunning,
    Status,
    make_prober_spec,
)
from dev8.health.probes import process_state
from dev8.pid1.reaper import OwnPids
from dev8.services.process import ProcessSettings, run_process


class FakeService(ScriptedHttp):
    """An HTTP service on 127.0.0.1: answers ``status``, or hangs while ``status`` is None.

    ``run`` is its process actor's stand-in under a real ``services`` supervisor: each
    incarnation has a new pid (in its info, as the process actor's), and a restarted one answers
    ``restart_status`` again.
    """

    def __init__(self, script: Iterable[int] = (), *, restart_status: int = 200) -> None:
        super().__init__(script)
        self.restart_status = restart_status
        self.pid = 1000
        self.starts: list[float] = []

    async def run(self, ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
        if self.starts:
            self.status = self.restart_status
        self.starts.append(trio.current_time())
        self.pid += 1
        ctx.info["pid"] = self.pid
        task_status.started()
        await trio.sleep_forever()

    @property
    def restarts(self) -> list[float]:
        return self.starts[1:]


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


@attrs.frozen
class Tree:
    board: HealthBoard
    timeline: Timeline
    services: Supervisor
    health: Supervisor
    registry: Registry
    hearing: ServiceHearing
    t0: float

    @property
    def prober(self) -> ActorRef:
        return self.registry.ref("health/web")


@asynccontextmanager
async def running(
    service: FakeService,
    probes: Callable[[int], ProbesConfig],
    *,
    stopped: bool = False,
    **options: Any,
) -> AsyncIterator[Tree]:
    """The fake service on a port under a real ``services`` supervisor, and its prober under a
    ``health`` supervisor. ``stopped``: the service is stopped before the prober starts."""
    bus = EventBus()
    board = HealthBoard(wall_clock=lambda: 1_700_000_000.0 + trio.current_time())
    registry = Registry()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, service.handle, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        services = Supervisor(
            "services",
            [ChildSpec(name="web", start=service.run, shutdown_timeout=1.0)],
            bus=bus,
            intensity=Intensity(max_restarts=100, window=60.0),
        )
        hearing = ServiceHearing(bus, services)

        async def restart(name: str) -> None:
            await services.restart_child(name, reason="probe")

        spec = make_prober_spec(
            "web", probes(port), board, restart, registry=registry, hearing=hearing, **options
        )
        health = Supervisor("health", [spec], bus=bus)
        timeline = Timeline(bus)
        await nursery.start(services.run)
        if stopped:
            await services.stop_child("web")
        await nursery.start(health.run)
        yield Tree(board, timeline, services, health, registry, hearing, timeline.t0)
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

    async with running(service, probes) as tree:
        t0 = tree.t0
        await at(t0, 25)
        assert service.requests == 3  # at 0, 10, 20
        service.status = None
        await at(t0, 100)
        assert [t - t0 for t in service.restarts] == [pytest.approx(52.0)]
        # The new incarnation is probed at once (initial_delay 0) and every 10 s after.
        assert service.requests == 3 + 3 + 5  # 30, 40, 50 | 52, 62, 72, 82, 92
        probe = tree.board.details()["web"]["probes"]["liveness"]
        (node,) = tree.services.children()
    failed = tree.timeline.steps("probe_failed", "liveness_failed")
    assert failed == [
        (32.0, "probe_failed", _failed("liveness", 1, 3)),
        (42.0, "probe_failed", _failed("liveness", 2, 3)),
        (52.0, "probe_failed", _failed("liveness", 3, 3)),
        (52.0, "liveness_failed", {"service": "web", "detail": TIMEOUT, "failures": 3}),
    ]
    probe_events = {e.source for _, e in tree.timeline.events if e.kind in HEALTH_KINDS}
    assert probe_events == {"health/web"}
    assert dict(node.restart_reasons) == {"probe": 1}
    assert probe["ok"] is True
    assert probe["consecutiveFailures"] == 0
    assert probe["checks"] == 11
    assert (
        probe["lastCheck"] == datetime.fromtimestamp(1_700_000_000.0 + t0 + 92, tz=UTC).isoformat()
    )
    assert "web" not in tree.board.readiness()  # no readiness probe: ready when running


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

    async with running(service, probes) as tree:
        await at(tree.t0, 60)
    assert service.restarts == []
    steps = [(t, kind) for t, kind, _ in tree.timeline.steps("probe_failed", "probe_recovered")]
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
    """Backoff is not hammered: no probes while the service is stopped, it is probed from the
    moment its start is heard (after the initial delay), and counts start again."""
    service = FakeService(restart_status=500)
    service.status = 500

    def probes(port: int) -> ProbesConfig:
        return ProbesConfig(
            liveness=http(port, interval=1.0, failure_threshold=3, initial_delay=4.0)
        )

    async with running(service, probes, stopped=True) as tree:
        t0 = tree.t0
        assert tree.board.details()["web"]["probes"]["liveness"]["detail"] == "not running"
        await at(t0, 30)
        assert service.requests == 0
        await tree.services.start_child("web")  # heard at 30: first check at 34
        await at(t0, 35.5)
        assert service.requests == 2  # 34, 35
        await tree.services.stop_child("web")  # heard at 35.5, at once
        await trio.testing.wait_all_tasks_blocked()
        assert tree.board.details()["web"]["probes"]["liveness"]["consecutiveFailures"] == 0
        await at(t0, 60)
        assert service.requests == 2
        await tree.services.start_child("web")  # heard at 60
        await at(t0, 65.5)
    times = [t for t, _, _ in tree.timeline.steps("probe_failed")]
    assert times == [34.0, 35.0, 64.0, 65.0]  # a third failure in a row would restart it
    assert service.restarts == [t0 + 30.0, t0 + 60.0]  # the operator's starts, not the prober's


class StepCounter(trio.abc.Instrument):
    """Counts the steps of every task: a task that polls steps while nothing happens."""

    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1


async def test_a_prober_hears_starts_and_exits_without_polling(
    autojump_clock: trio.abc.Clock,
) -> None:
    """With a long interval nothing runs between events: no task steps at all while the service
    runs quietly, one check at each start heard, and an exit marks it down at the same instant."""
    service = FakeService()

    def probes(port: int) -> ProbesConfig:
        return ProbesConfig(
            readiness=http(port, interval=1000.0, success_threshold=1),
            liveness=http(port, interval=1000.0),
        )

    counter = StepCounter()
    async with running(service, probes, started_ready=False) as tree:
        t0 = tree.t0
        await at(t0, 100)
        assert service.requests == 2  # one check of each at the start, then nothing
        assert tree.board.readiness() == {"web": True}
        trio.lowlevel.add_instrument(counter)
        await at(t0, 900)
        trio.lowlevel.remove_instrument(counter)
        assert counter.steps == 1  # only this test's own wake-up at 900
        await tree.services.crash_child("web")  # exits, then is restarted at once
        await trio.testing.wait_all_tasks_blocked()
        heard = [(t, e.kind) for t, e in tree.timeline.events if e.source == "services/web"]
        assert [step for step in heard if step[1] in ("child_exited", "child_started")] == [
            (0.0, "child_started"),
            (900.0, "child_exited"),
            (900.0, "child_started"),
        ]
        await at(t0, 950)
        assert service.requests == 4  # the new incarnation's first checks, at 900
        assert tree.board.readiness() == {"web": True}
        await tree.services.stop_child("web")
        # Heard at once: down without waiting for a check or an interval.
        await trio.testing.wait_all_tasks_blocked()
        assert trio.current_time() == t0 + 950
        assert tree.board.readiness() == {"web": False}
        liveness = tree.board.details()["web"]["probes"]["liveness"]
        assert (liveness["ok"], liveness["detail"]) == (None, "not running")
        status = await tree.prober.call(Status(), timeout=1.0)
        assert (status.running, status.pid, status.ready) == (False, None, False)
    assert tree.timeline.steps("probe_failed", "liveness_failed") == []


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

    async with running(service, probes) as tree:
        t0, board = tree.t0, tree.board
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
    assert [(t, kind) for t, kind, _ in tree.timeline.steps()] == [
        (10.0, "probe_failed"),
        (15.0, "probe_failed"),
        (15.0, "service_not_ready"),
        (20.0, "probe_failed"),
        (25.0, "probe_recovered"),
        (30.0, "service_ready"),
    ]
    not_ready = tree.timeline.steps("service_not_ready")[0][2]
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

    async with running(service, probes, started_ready=False) as tree:
        t0, board = tree.t0, tree.board
        assert board.readiness() == {"web": False}
        await at(t0, 1)
        service.status = 200
        await at(t0, 6.5)
        assert board.readiness() == {"web": True}  # passed at 5
        await tree.services.stop_child("web")
        await trio.testing.wait_all_tasks_blocked()
        assert trio.current_time() == t0 + 6.5
        assert board.readiness() == {"web": False}  # heard at once
        await at(t0, 7)
        await tree.services.start_child("web")
        assert board.readiness() == {"web": False}  # a new incarnation, not yet probed
        await at(t0, 20)
        assert board.readiness() == {"web": True}
    assert [(t, kind) for t, kind, _ in tree.timeline.steps()] == [
        (0.0, "probe_failed"),
        (5.0, "probe_recovered"),
        (5.0, "service_ready"),
        (7.0, "service_ready"),  # the new incarnation, checked as soon as its start was heard
    ]


async def test_a_gated_incarnation_starts_ready(autojump_clock: trio.abc.Clock) -> None:
    service = FakeService()

    def probes(port: int) -> ProbesConfig:
        return ProbesConfig(readiness=http(port, interval=5.0))

    async with running(service, probes) as tree:
        assert tree.board.readiness() == {"web": True}
        await at(tree.t0, 0.5)
        await tree.services.restart_child("web")
        await trio.testing.wait_all_tasks_blocked()
        assert tree.board.readiness() == {"web": True}  # its start waited for readiness
        await at(tree.t0, 12)
    assert service.requests == 2  # 5.5 and 10.5: no check right after a gated start


def test_a_service_without_probes_has_no_prober() -> None:
    board = HealthBoard()

    async def restart(name: str) -> None:
        raise AssertionError

    services = Supervisor("services", [], bus=EventBus())
    hearing = ServiceHearing(EventBus(), services)
    with pytest.raises(ValueError, match="no probes"):
        make_prober_spec(
            "web", ProbesConfig(), board, restart, registry=Registry(), hearing=hearing
        )
    assert board.readiness() == {}
    assert board.is_ready("web")


# --------------------------------------------------------------------------- the actor's messages


async def test_probe_now_runs_a_round_at_once_and_restarts_the_intervals(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Intervals of 100 s: ProbeNow at 30 checks both probes then, counts them as checks, and
    the next regular checks follow 100 s after it (130), not at 100."""
    service = FakeService()

    def probes(port: int) -> ProbesConfig:
        return ProbesConfig(
            readiness=http(port, interval=100.0), liveness=http(port, interval=100.0)
        )

    async with running(service, probes) as tree:
        t0 = tree.t0
        await at(t0, 30)
        assert service.requests == 1  # liveness at 0 (readiness waits: the start was gated)
        service.status = 503
        answer = await tree.prober.call(ProbeNow(), timeout=5.0)
        assert isinstance(answer, ProbeRound)
        assert trio.current_time() == t0 + 30
        assert answer.service == "web"
        assert {kind: r.ok for kind, r in answer.results.items()} == {
            "readiness": False,
            "liveness": False,
        }
        assert answer.results["liveness"].detail == "HTTP 503 (expected 200)"
        assert answer.to_dict()["probes"]["readiness"]["ok"] is False
        assert service.requests == 3
        service.status = 200
        await at(t0, 129)
        assert service.requests == 3
        await at(t0, 131)
        assert service.requests == 5
        status = await tree.prober.call(Status(), timeout=5.0)
    assert isinstance(status, ProberStatus)
    assert (status.service, status.running, status.pid, status.ready) == ("web", True, 1001, True)
    assert status.probes["liveness"]["checks"] == 3
    assert status.probes["liveness"]["consecutiveFailures"] == 0
    assert [(t, kind) for t, kind, _ in tree.timeline.steps()] == [
        (30.0, "probe_failed"),
        (30.0, "probe_failed"),
        (130.0, "probe_recovered"),
        (130.0, "probe_recovered"),
    ]


async def test_probe_now_waits_for_a_check_under_way_and_refuses_a_stopped_service(
    autojump_clock: trio.abc.Clock,
) -> None:
    service = FakeService()

    def probes(port: int) -> ProbesConfig:
        return ProbesConfig(liveness=http(port, interval=10.0, timeout=2.0))

    async with running(service, probes) as tree:
        t0 = tree.t0
        await at(t0, 5)
        service.status = None  # the check at 10 hangs until 12
        await at(t0, 11)
        # The actor answers Status while a check hangs...
        status = await tree.prober.call(Status(), timeout=0.1)
        assert status.running
        # ... and ProbeNow gets the result of the check under way.
        answer = await tree.prober.call(ProbeNow(), timeout=5.0)
        assert trio.current_time() == t0 + 12
        assert answer.results["liveness"].detail == TIMEOUT
        assert service.requests == 2  # 0 and 10: no second check
        await tree.services.stop_child("web")
        with pytest.raises(ServiceNotRunning, match="'web' is not running"):
            await tree.prober.call(ProbeNow(), timeout=5.0)


async def test_a_crashed_prober_is_restarted_and_hears_again(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Crashed mid-call (a ProbeNow waits on a hanging check): the caller gets ActorExited,
    not a hang; the supervisor restarts the prober at the same path; it takes the running
    service in from the tree's snapshot, keeps its readiness verdict, and hears the next exit."""
    service = FakeService()

    def probes(port: int) -> ProbesConfig:
        return ProbesConfig(
            readiness=http(port, interval=10.0, timeout=5.0),
            liveness=http(port, interval=10.0, timeout=5.0),
        )

    async with running(service, probes) as tree:
        t0 = tree.t0
        await at(t0, 1)
        service.status = None
        outcome: list[BaseException] = []

        async def probe_now() -> None:
            try:
                await tree.prober.call(ProbeNow(), timeout=60.0)
            except ActorError as error:
                outcome.append(error)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe_now)
            await at(t0, 2)
            await tree.health.crash_child("web")
        assert trio.current_time() == t0 + 2
        assert [type(e) for e in outcome] == [ActorExited]
        service.status = 200
        await trio.testing.wait_all_tasks_blocked()
        (node,) = tree.health.children()
        assert (node.state, node.restarts) == (ChildState.RUNNING, 1)
        assert tree.registry.paths() == ["health/web"]
        assert tree.hearing.listeners() == 1
        status = await tree.prober.call(Status(), timeout=1.0)
        assert (status.running, status.pid, status.ready) == (True, 1001, True)
        await at(t0, 3)
        await tree.services.stop_child("web")
        await trio.testing.wait_all_tasks_blocked()
        assert tree.board.readiness() == {"web": False}
        status = await tree.prober.call(Status(), timeout=1.0)
        assert (status.running, status.pid) == (False, None)
        await tree.health.remove_child("web")
        assert tree.hearing.listeners() == 0  # a removed prober hears nothing more
        assert not tree.prober.alive
    restarts = tree.timeline.steps("restart_scheduled")
    assert [(t, data["child"], data["reason"]) for t, _, data in restarts] == [
        (2.0, "web", "crash")
    ]


# --------------------------------------------------------------------------- the hearing


async def test_the_hearing_takes_the_snapshot_once_then_follows_the_events(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Made after the services started, it learns them from the tree's snapshot at the first
    listen; from then on only from their events (a start, a stop, a start without a process:
    held stopped), and an event reaches only the ear at its source."""
    bus = EventBus()
    pids = iter(range(500, 600))
    held = {"b"}

    async def run(ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
        task_status.started({"pid": None} if ctx.name in held else {"pid": next(pids)})
        await trio.sleep_forever()

    services = Supervisor(
        "services", [ChildSpec(name=name, start=run) for name in ("a", "b", "c")], bus=bus
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(services.run)
        hearing = ServiceHearing(bus, services)
        heard: list[str] = []
        first = hearing.listen("a", lambda event: heard.append(f"a:{event.kind}"))
        assert (first.path, first.incarnation, first.pid) == ("services/a", (0, 500), 500)
        held_one = hearing.listen("b", lambda event: heard.append(f"b:{event.kind}"))
        assert held_one.incarnation is None  # started without a process: nothing to probe
        await services.stop_child("c")
        assert (
            hearing.listen("c", lambda event: heard.append(f"c:{event.kind}")).incarnation is None
        )
        held.clear()
        await services.restart_child("b")
        await services.restart_child("a")
        await trio.testing.wait_all_tasks_blocked()
        again = hearing.listen("a", lambda event: None)
        assert (again.incarnation, again.pid) == ((1, 503), 503)
        assert hearing.listen("b", lambda event: None).pid == 502
        nursery.cancel_scope.cancel()
    assert heard[:4] == ["b:child_stopping", "b:child_exited", "b:child_stopped", "b:child_started"]
    assert heard[4:] == ["a:child_stopping", "a:child_exited", "a:child_stopped", "a:child_started"]


async def test_a_service_started_without_a_process_is_not_probed(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A held service's stand-in reports started with no pid (the factory's _stay_stopped):
    the prober takes it as not running, and ProbeNow says so."""
    bus = EventBus()

    async def held(ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
        task_status.started({"pid": None})
        await trio.sleep_forever()

    async def restart(name: str) -> None:
        raise AssertionError("nothing is probed, so nothing fails")

    services = Supervisor("services", [ChildSpec(name="web", start=held)], bus=bus)
    registry = Registry()
    probe = ProbeConfig(type=ProbeType.PROCESS, interval=1.0)
    spec = make_prober_spec(
        "web",
        ProbesConfig(liveness=probe),
        HealthBoard(),
        restart,
        registry=registry,
        hearing=ServiceHearing(bus, services),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(services.run)
        await nursery.start(Supervisor("health", [spec], bus=bus).run)
        await trio.sleep(10)
        status = await registry.ref("health/web").call(Status(), timeout=1.0)
        assert (status.running, status.probes["liveness"]["checks"]) == (False, 0)
        with pytest.raises(ServiceNotRunning):
            await registry.ref("health/web").call(ProbeNow(), timeout=1.0)
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- a real hung process


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
    hearing = ServiceHearing(bus, services)
    prober = make_prober_spec(
        "web",
        ProbesConfig(liveness=liveness),
        board,
        restart,
        registry=Registry(),
        hearing=hearing,
    )
    health = Supervisor("health", [prober], bus=bus)
    async with trio.open_nursery() as nursery:
        await nursery.start(services.run)
        first = pid_of()
        assert first is not None
        # Probed only once it listens: before that a probe is refused, not timed out (a busy
        # machine can take longer than two probe intervals to start Python).
        await wait_until(lambda: listening(port), timeout=20.0, what="the service to listen")
        await nursery.start(health.run)
        await wait_until(
            lambda: (
                any(isinstance(e.event, RestartScheduled) for e in bus.history())
                and pid_of() not in (None, first)
            ),
            timeout=20.0,
            what="a restart of the hung service",
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
