"""dev8's own alerts: what happened on the bus, judged as alerts that fire and resolve.

The rules (docs/operations.md, "Alerts") are a pure state machine, :class:`AlertRules`: events
in, ``firing`` / ``resolved`` transitions out, with deadlines as plain numbers so tests drive
them on a mock clock. The actor around it reads the bus and publishes each transition back on it
as ``alert_fired`` / ``alert_resolved``; the webhook notifier (dev8.monitoring.webhooks), the
logs and the event stream take them from there. Nothing here waits on anything but the bus.

Two kinds of alert: a *condition* (a service gave up, probes failing, memory high, idle) fires
when it starts and resolves when an event says it ended; a *happening* (a restart, an OOM kill,
throttling, a failed secrets pass) fires at once, and resolves after ``resolve_after`` seconds
without another one, as a Prometheus rule over ``increase(...[5m]) > 0`` would.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

import attrs
import trio

from actors import ChildContext, ChildSpec, Event, EventBus, Restart

__all__ = [
    "ALERT_KINDS",
    "Alert",
    "AlertFired",
    "AlertResolved",
    "AlertRules",
    "make_alerts_spec",
    "run_alerts",
]

Status = Literal["firing", "resolved"]

#: How many consecutive failed checks are "more than 3" (the seed's rule).
FAILING_CHECKS = 4
#: The kinds of the events this module publishes (the notifier takes these).
ALERT_KINDS = frozenset({"alert_fired", "alert_resolved"})

_SEVERITY = {
    "ServiceRestartLimitExceeded": "critical",
    "ServiceRestarted": "warning",
    "HealthCheckFailing": "critical",
    "HealthCheckSlow": "warning",
    "SecretInjectionFailed": "critical",
    "ContainerOutOfMemory": "critical",
    "CpuThrottling": "warning",
    "MemoryHigh": "warning",
    "CpuHigh": "warning",
    "WorkspaceIdle": "warning",
}


@attrs.frozen(kw_only=True)
class AlertFired(Event):
    kind: ClassVar[str] = "alert_fired"
    alert: str
    severity: str
    service: str | None
    summary: str
    labels: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class AlertResolved(Event):
    kind: ClassVar[str] = "alert_resolved"
    alert: str
    severity: str
    service: str | None
    summary: str
    labels: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class Alert:
    """One alert instance: its name, what it is about, and a line for a human."""

    name: str
    service: str | None
    labels: tuple[tuple[str, str], ...]
    summary: str

    @property
    def severity(self) -> str:
        return _SEVERITY[self.name]

    @property
    def key(self) -> tuple[str, str | None, tuple[tuple[str, str], ...]]:
        return (self.name, self.service, self.labels)

    def event(self, status: Status) -> Event:
        fields: dict[str, Any] = {
            "alert": self.name,
            "severity": self.severity,
            "service": self.service,
            "summary": self.summary,
            "labels": dict(self.labels),
        }
        return AlertFired(**fields) if status == "firing" else AlertResolved(**fields)


def _alert(name: str, service: str | None, summary: str, **labels: Any) -> Alert:
    shown = tuple(sorted((k, str(v)) for k, v in labels.items() if v is not None))
    return Alert(name, service, shown, summary)


def _service_of(source: str) -> str | None:
    """The service an actor path is about (``dev8/services/NAME``), else None."""
    parts = source.split("/")
    return parts[-1] if len(parts) >= 2 and parts[-2] == "services" else None


Transition = tuple[Status, Alert]


class AlertRules:
    """Events in, alert transitions out. ``now`` is monotonic seconds (trio's clock)."""

    def __init__(self, *, resolve_after: float = 300.0) -> None:
        self.resolve_after = resolve_after
        self.active: dict[tuple[str, str | None, tuple[tuple[str, str], ...]], Alert] = {}
        #: key -> when a happening's alert resolves (conditions have no entry).
        self._expires: dict[tuple[str, str | None, tuple[tuple[str, str], ...]], float] = {}

    # -- the two ways an alert starts ---------------------------------------------------------

    def _condition(self, alert: Alert) -> list[Transition]:
        if alert.key in self.active:
            return []
        self.active[alert.key] = alert
        return [("firing", alert)]

    def _happening(self, alert: Alert, now: float) -> list[Transition]:
        self._expires[alert.key] = now + self.resolve_after
        return self._condition(alert)

    def _resolve(self, keep: Callable[[Alert], bool]) -> list[Transition]:
        """Resolve every active alert for which ``keep`` is False."""
        gone = [alert for alert in self.active.values() if not keep(alert)]
        for alert in gone:
            del self.active[alert.key]
            self._expires.pop(alert.key, None)
        return [("resolved", alert) for alert in gone]

    def _resolve_one(self, alert: Alert) -> list[Transition]:
        return self._resolve(lambda a: a.key != alert.key)

    # -- time -----------------------------------------------------------------------------

    def next_deadline(self) -> float:
        """When the next happening's alert resolves (``inf``: none is active)."""
        return min(self._expires.values(), default=math.inf)

    def expire(self, now: float) -> list[Transition]:
        due = {key for key, at in self._expires.items() if at <= now}
        return self._resolve(lambda a: a.key not in due)

    # -- events ---------------------------------------------------------------------------

    def observe(  # noqa: PLR0911, PLR0912 - one branch per kind reads best
        self, kind: str, source: str, data: Mapping[str, Any], now: float
    ) -> list[Transition]:
        """The transitions one event causes (most cause none)."""
        service = _service_of(source)
        if kind == "child_gave_up" and service is not None:
            return self._condition(
                _alert(
                    "ServiceRestartLimitExceeded",
                    service,
                    f"{service} gave up after {data.get('restarts')} restarts "
                    f"within {data.get('window')} s",
                )
            )
        if kind == "child_started" and service is not None:
            # A new incarnation: it no longer gave up, and its probe counts start again.
            out = self._resolve(
                lambda a: (
                    not (
                        a.service == service
                        and a.name in ("ServiceRestartLimitExceeded", "HealthCheckFailing")
                    )
                )
            )
            if int(data.get("restarts", 0)) > 0:
                out += self._happening(
                    _alert("ServiceRestarted", service, f"{service} was restarted"), now
                )
            return out
        if kind == "probe_failed":
            failing = _alert(
                "HealthCheckFailing",
                data["service"],
                f"{data['service']} failed its {data['probe']} check "
                f"{data['failures']} times in a row: {data.get('detail', '')}",
                probe=data["probe"],
            )
            if int(data["failures"]) >= FAILING_CHECKS:
                return self._condition(failing)
            return []
        if kind == "probe_recovered":
            return self._resolve(
                lambda a: (
                    not (
                        a.name == "HealthCheckFailing"
                        and a.service == data["service"]
                        and dict(a.labels).get("probe") == data["probe"]
                    )
                )
            )
        if kind in ("probe_latency_crossed", "probe_latency_cleared"):
            slow = _alert(
                "HealthCheckSlow",
                data["service"],
                f"{data['service']}'s {data['probe']} check took {data['latency']} s "
                f"(more than {data['threshold']} s)",
                probe=data["probe"],
            )
            if kind == "probe_latency_crossed":
                return self._condition(slow)
            return self._resolve(lambda a: a.key != slow.key)
        if kind == "secret_fetch_failed":
            return self._happening(
                _alert(
                    "SecretInjectionFailed",
                    None,
                    f"secret {data['name']} ({data['role']}) could not be fetched: "
                    f"{data['reason']}; the last good files stay in place",
                    secret=data["name"],
                    stage="fetch",
                ),
                now,
            )
        if kind == "secrets_injection_failed":
            return self._happening(
                _alert(
                    "SecretInjectionFailed",
                    None,
                    f"{len(data.get('paths', ()))} secret file(s) could not be written "
                    f"({', '.join(sorted(set(data.get('reasons', ()))))}); "
                    "the last good files stay in place",
                    stage="injection",
                ),
                now,
            )
        if kind == "oom_killed":
            who = data.get("service") or "the container"
            return self._happening(
                _alert(
                    "ContainerOutOfMemory",
                    data.get("service"),
                    f"the kernel's OOM killer killed a process of {who}",
                    scope=data.get("scope"),
                ),
                now,
            )
        if kind == "container_cpu_throttled":
            return self._happening(
                _alert(
                    "CpuThrottling",
                    None,
                    f"the container's CPU was throttled for {data.get('seconds')} s "
                    f"({data.get('periods')} periods)",
                ),
                now,
            )
        if kind in ("resource_threshold_crossed", "resource_threshold_cleared"):
            name = {"memory": "MemoryHigh", "cpu": "CpuHigh"}.get(str(data.get("resource")))
            if name is None:
                return []
            who = data.get("service") or "the container"
            high = _alert(
                name,
                data.get("service"),
                f"{data.get('resource')} of {who} at {float(data.get('value', 0)):.0%} "
                f"of its limit (threshold {float(data.get('threshold', 0)):.0%})",
                scope=data.get("scope"),
            )
            if kind == "resource_threshold_crossed":
                return self._condition(high)
            return self._resolve(lambda a: a.key != high.key)
        if kind == "workspace_idle":
            return self._condition(
                _alert("WorkspaceIdle", None, f"nobody connected for {data.get('idle_for')} s")
            )
        if kind == "workspace_active":
            return self._resolve(lambda a: a.name != "WorkspaceIdle")
        return []


#: Event kinds the rules look at (the subscription takes only these).
OBSERVED_KINDS = frozenset(
    {
        "child_gave_up",
        "child_started",
        "probe_failed",
        "probe_recovered",
        "probe_latency_crossed",
        "probe_latency_cleared",
        "secret_fetch_failed",
        "secrets_injection_failed",
        "oom_killed",
        "container_cpu_throttled",
        "resource_threshold_crossed",
        "resource_threshold_cleared",
        "workspace_idle",
        "workspace_active",
    }
)


async def run_alerts(
    bus: EventBus,
    rules: AlertRules,
    publish: Callable[[Event], object],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Judge every observed event, and resolve happenings when their time is up."""
    changed = trio.Event()

    def emit(transitions: list[Transition]) -> None:
        nonlocal changed
        for status, alert in transitions:
            publish(alert.event(status))
        changed.set()

    async def expire() -> None:
        nonlocal changed
        while True:
            changed = trio.Event()
            with trio.move_on_at(rules.next_deadline()):
                await changed.wait()
            transitions = rules.expire(trio.current_time())
            if transitions:
                emit(transitions)

    with bus.subscribe(
        accept=lambda envelope: envelope.event.kind in OBSERVED_KINDS, buffer=1024
    ) as events:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(expire)
            task_status.started()
            async for envelope in events:
                event = envelope.event
                emit(rules.observe(event.kind, event.source, event.data(), trio.current_time()))


def make_alerts_spec(bus: EventBus, *, resolve_after: float, name: str = "alerts") -> ChildSpec:
    """The alert evaluator actor. A restart starts with no alert active (they fire again)."""

    async def start(ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
        await run_alerts(
            bus, AlertRules(resolve_after=resolve_after), ctx.publish, task_status=task_status
        )

    return ChildSpec(name=name, start=start, restart=Restart.PERMANENT, shutdown_timeout=1.0)
