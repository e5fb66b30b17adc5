"""The alert evaluator and the idle watcher, on a real bus, timers on trio's mock clock."""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar

import attrs
import pytest
import trio

from actors import (
    ChildContext,
    ChildGaveUp,
    ChildSpec,
    ChildStarted,
    Event,
    EventBus,
    Registry,
    Supervisor,
)
from dev8.config import ProbeConfig, ProbesConfig, ProbeType
from dev8.connections.idle import IdleState, WorkspaceActive, WorkspaceIdle, run_idle
from dev8.connections.tracker import ConnectionClosed, ConnectionOpened
from dev8.health.probers import (
    HealthBoard,
    ProbeFailed,
    ProbeLatencyCleared,
    ProbeLatencyCrossed,
    ProbeRecovered,
    ServiceHearing,
    make_prober_spec,
)
from dev8.monitoring.alerts import AlertRules, run_alerts
from dev8.secrets.events import SecretFetchFailed, SecretsInjectionFailed

# The resource monitor's events (kinds and fields as agreed for issue 16), published here by hand.


@attrs.frozen(kw_only=True)
class ResourceThresholdCrossed(Event):
    kind: ClassVar[str] = "resource_threshold_crossed"
    scope: str
    service: str | None
    resource: str
    value: float
    threshold: float


@attrs.frozen(kw_only=True)
class ResourceThresholdCleared(ResourceThresholdCrossed):
    kind: ClassVar[str] = "resource_threshold_cleared"


@attrs.frozen(kw_only=True)
class ContainerCpuThrottled(Event):
    kind: ClassVar[str] = "container_cpu_throttled"
    periods: int
    seconds: float


@attrs.frozen(kw_only=True)
class OomKilled(Event):
    kind: ClassVar[str] = "oom_killed"
    scope: str
    service: str | None


def _failed(failures: int, probe: str = "liveness") -> ProbeFailed:
    return ProbeFailed(
        source="dev8/health/web", service="web", probe=probe, type="http", detail="HTTP 503",
        latency=0.01, failures=failures, failure_threshold=10,
    )  # fmt: skip


def _alerts(bus: EventBus) -> list[tuple[str, str, str | None, dict[str, str]]]:
    """(status, alert, service, labels) of every alert published, in order."""
    return [
        ("firing" if e.event.kind == "alert_fired" else "resolved",
         e.event.data()["alert"], e.event.data()["service"], dict(e.event.data()["labels"]))
        for e in bus.history()
        if e.event.kind in ("alert_fired", "alert_resolved")
    ]  # fmt: skip


async def _running_alerts(nursery: trio.Nursery, bus: EventBus, resolve_after: float) -> None:
    rules = AlertRules(resolve_after=resolve_after)
    await nursery.start(lambda task_status: run_alerts(
        bus, rules, bus.publish, task_status=task_status
    ))  # fmt: skip


async def test_conditions_fire_once_and_resolve_when_they_end(
    autojump_clock: trio.abc.Clock,
) -> None:
    bus = EventBus()
    async with trio.open_nursery() as nursery:
        await _running_alerts(nursery, bus, resolve_after=300)
        for failures in (1, 2, 3):  # three in a row is not "more than 3"
            bus.publish(_failed(failures))
        await trio.sleep(1)
        assert _alerts(bus) == []
        bus.publish(_failed(4))
        bus.publish(_failed(5))  # still the same alert: no second webhook
        await trio.sleep(1)
        assert _alerts(bus) == [("firing", "HealthCheckFailing", "web", {"probe": "liveness"})]
        bus.publish(ProbeRecovered(
            source="dev8/health/web", service="web", probe="liveness", detail="HTTP 200",
            latency=0.01, after_failures=5,
        ))  # fmt: skip
        bus.publish(ProbeLatencyCrossed(
            source="dev8/health/web", service="web", probe="readiness", latency=0.7, threshold=0.5
        ))  # fmt: skip
        bus.publish(ProbeLatencyCleared(
            source="dev8/health/web", service="web", probe="readiness", latency=0.1, threshold=0.5
        ))  # fmt: skip
        bus.publish(ChildGaveUp(
            source="dev8/services/web", child="web", restarts=10, max_restarts=10, window=60.0
        ))  # fmt: skip
        # A prober (dev8/health/...) that gives up is not a service giving up.
        bus.publish(ChildGaveUp(
            source="dev8/health/web", child="web", restarts=3, max_restarts=3, window=5.0
        ))  # fmt: skip
        for crossed in (ResourceThresholdCrossed, ResourceThresholdCleared):
            bus.publish(crossed(
                scope="container", service=None, resource="memory", value=0.93, threshold=0.8
            ))  # fmt: skip
        bus.publish(ResourceThresholdCrossed(
            scope="service", service="web", resource="cpu", value=0.85, threshold=0.8
        ))  # fmt: skip
        bus.publish(
            ResourceThresholdCrossed(
                scope="service", service="web", resource="disk", value=0.99, threshold=0.8
            )
        )  # a resource with no alert: ignored
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert _alerts(bus) == [
        ("firing", "HealthCheckFailing", "web", {"probe": "liveness"}),
        ("resolved", "HealthCheckFailing", "web", {"probe": "liveness"}),
        ("firing", "HealthCheckSlow", "web", {"probe": "readiness"}),
        ("resolved", "HealthCheckSlow", "web", {"probe": "readiness"}),
        ("firing", "ServiceRestartLimitExceeded", "web", {}),
        ("firing", "MemoryHigh", None, {"scope": "container"}),
        ("resolved", "MemoryHigh", None, {"scope": "container"}),
        ("firing", "CpuHigh", "web", {"scope": "service"}),
    ]
    fired = next(e.event.data() for e in bus.history() if e.event.kind == "alert_fired")
    assert fired["severity"] == "critical"
    assert "4 times in a row" in fired["summary"]


async def test_happenings_fire_at_once_and_resolve_after_a_quiet_spell(
    autojump_clock: trio.abc.Clock,
) -> None:
    bus = EventBus()
    start = trio.current_time()
    resolved_at: dict[str, float] = {}

    async def watch() -> None:
        with bus.subscribe(accept=lambda e: e.event.kind == "alert_resolved") as events:
            async for envelope in events:
                resolved_at[envelope.event.data()["alert"]] = trio.current_time() - start

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await _running_alerts(nursery, bus, resolve_after=100)
        bus.publish(ChildStarted(source="dev8/services/web", child="web", restarts=0))
        await trio.sleep(1)
        assert _alerts(bus) == []  # a first start is no restart
        bus.publish(ChildStarted(source="dev8/services/web", child="web", restarts=1))
        bus.publish(OomKilled(scope="service", service="web"))
        bus.publish(SecretFetchFailed(
            source="dev8/secrets", name="gh-token", role="github_token", reason="throttled"
        ))  # fmt: skip
        bus.publish(SecretsInjectionFailed(
            source="dev8/secrets", paths=("/home/u/.config/gh/hosts.yml",), reasons=("EROFS",)
        ))  # fmt: skip
        await trio.sleep_until(start + 50)
        # Another restart and more throttling within the spell: no new alert, a later end.
        bus.publish(ChildStarted(source="dev8/services/web", child="web", restarts=2))
        bus.publish(ContainerCpuThrottled(periods=12, seconds=0.4))
        await trio.sleep_until(start + 60)
        bus.publish(ContainerCpuThrottled(periods=3, seconds=0.1))
        await trio.sleep_until(start + 400)
        nursery.cancel_scope.cancel()
    assert _alerts(bus) == [
        ("firing", "ServiceRestarted", "web", {}),
        ("firing", "ContainerOutOfMemory", "web", {"scope": "service"}),
        ("firing", "SecretInjectionFailed", None, {"secret": "gh-token", "stage": "fetch"}),
        ("firing", "SecretInjectionFailed", None, {"stage": "injection"}),
        ("firing", "CpuThrottling", None, {}),
        ("resolved", "ContainerOutOfMemory", "web", {"scope": "service"}),
        ("resolved", "SecretInjectionFailed", None, {"secret": "gh-token", "stage": "fetch"}),
        ("resolved", "SecretInjectionFailed", None, {"stage": "injection"}),
        ("resolved", "ServiceRestarted", "web", {}),
        ("resolved", "CpuThrottling", None, {}),
    ]
    # Exactly resolve_after seconds after the last happening of each.
    assert resolved_at == pytest.approx(
        {
            "ContainerOutOfMemory": 101,
            "SecretInjectionFailed": 101,
            "ServiceRestarted": 150,
            "CpuThrottling": 160,
        }
    )


def test_a_new_incarnation_resolves_gave_up_and_failing_checks() -> None:
    rules = AlertRules()
    rules.observe("child_gave_up", "dev8/services/web", {"restarts": 3, "window": 5.0}, 0.0)
    rules.observe("probe_failed", "dev8/health/web", _failed(4).data(), 0.0)
    rules.observe("probe_failed", "dev8/health/db", {**_failed(4).data(), "service": "db"}, 0.0)
    out = rules.observe("child_started", "dev8/services/web", {"restarts": 0}, 1.0)
    assert sorted((status, a.name, a.service) for status, a in out) == [
        ("resolved", "HealthCheckFailing", "web"),
        ("resolved", "ServiceRestartLimitExceeded", "web"),
    ]
    assert [a.service for a in rules.active.values()] == ["db"]


# ------------------------------------------------------------------------------------ idle


def test_idle_state_counts_connections_and_api_clients() -> None:
    state = IdleState(after=10, now=0.0)
    assert state.deadline() == 10
    assert state.set_api_clients(1, 2.0) is None
    assert state.deadline() == float("inf")
    assert state.set_api_clients(0, 3.0) is None
    assert state.deadline() == 13
    assert state.expire(12.9) is None
    idle = state.expire(13.0)
    assert isinstance(idle, WorkspaceIdle)
    assert (idle.idle_for, idle.after) == (10, 10)
    assert state.expire(50.0) is None  # announced once per spell
    opened = {"service": "sshd", "port": 2222, "peer": "10.0.0.1:5000"}
    active = state.observe("connection_opened", opened, 20.0)
    assert isinstance(active, WorkspaceActive)
    assert (active.by, active.idle_for) == ("sshd", 17)
    # API clients may be left out (the platform's own agents holding a stream).
    ignoring = IdleState(after=10, now=0.0, api_clients=1, count_api_clients=False)
    assert ignoring.deadline() == 10


async def test_idle_then_active_then_idle_on_the_bus(autojump_clock: trio.abc.Clock) -> None:
    bus = EventBus()
    start = trio.current_time()
    seen: list[tuple[str, float]] = []
    snapshot: dict[str, Any] = {
        "services": {"sshd": {"peers": ["10.0.0.1:5000"]}, "web": {"peers": []}},
        "websocketClients": 0,
    }

    async def watch() -> None:
        kinds = ("workspace_idle", "workspace_active")
        with bus.subscribe(accept=lambda e: e.event.kind in kinds) as events:
            async for envelope in events:
                seen.append((envelope.event.kind, trio.current_time() - start))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await nursery.start(lambda task_status: run_idle(
            bus, lambda: snapshot, bus.publish, after=30, poll_interval=5, task_status=task_status
        ))  # fmt: skip
        # Seeded from the snapshot: someone is on SSH, so nothing counts down.
        await trio.sleep_until(start + 100)
        assert seen == []
        bus.publish(ConnectionClosed(service="sshd", port=2222, peer="10.0.0.1:5000", duration=1))
        await trio.sleep_until(start + 200.5)
        snapshot["websocketClients"] = 1  # seen at the next poll, at 200.5 + 4.5
        await trio.sleep_until(start + 210)
        bus.publish(ConnectionOpened(service="web", port=8080, peer="10.0.0.2:6000"))
        snapshot["websocketClients"] = 0
        await trio.sleep_until(start + 220)
        bus.publish(ConnectionClosed(service="web", port=8080, peer="10.0.0.2:6000", duration=1))
        await trio.sleep_until(start + 300)
        nursery.cancel_scope.cancel()
    assert seen == [
        ("workspace_idle", pytest.approx(130)),
        ("workspace_active", pytest.approx(205)),
        ("workspace_idle", pytest.approx(250)),
    ]
    active = next(e.event for e in bus.history() if e.event.kind == "workspace_active")
    assert active.data() == {"by": "api", "idle_for": pytest.approx(105)}


async def test_the_prober_publishes_when_checks_turn_slow_and_fast_again(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A real HTTP probe against a server that answers after 0.1, 0.7, 0.8, 0.2 ... seconds."""
    delays = iter([0.1, 0.7, 0.8, 0.2])

    async def handle(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            data += chunk
        await trio.sleep(next(delays, 0.1))
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    bus = EventBus()
    board = HealthBoard()

    async def restart(name: str) -> None:
        raise AssertionError("a slow check that passes restarts nothing")

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        probe = ProbeConfig(
            type=ProbeType.HTTP, url=f"http://127.0.0.1:{port}/", interval=10.0, timeout=5.0
        )

        async def web(ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
            ctx.info["pid"] = 1  # the service the prober hears start (nothing probes the pid)
            task_status.started()
            await trio.sleep_forever()

        services = Supervisor("services", [ChildSpec(name="web", start=web)], bus=bus)
        await nursery.start(services.run)
        spec = make_prober_spec(
            "web",
            ProbesConfig(liveness=probe),
            board,
            restart,
            registry=Registry(),
            hearing=ServiceHearing(bus, services),
        )
        await nursery.start(Supervisor("health", [spec], bus=bus).run)
        await _running_alerts(nursery, bus, resolve_after=300)
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    latency = [
        (e.event.kind, e.event.data()["latency"])
        for e in bus.history()
        if e.event.kind.startswith("probe_latency")
    ]
    assert latency == [
        ("probe_latency_crossed", pytest.approx(0.7, abs=0.05)),
        ("probe_latency_cleared", pytest.approx(0.2, abs=0.05)),
    ]
    assert _alerts(bus) == [
        ("firing", "HealthCheckSlow", "web", {"probe": "liveness"}),
        ("resolved", "HealthCheckSlow", "web", {"probe": "liveness"}),
    ]
