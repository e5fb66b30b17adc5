"""The prober actors and the board they write: is each service ready, is it alive?

One prober per service runs its readiness and liveness probes on their intervals, counting
consecutive results as Kubernetes does. Readiness only marks the service ready or not; liveness
failing ``failure_threshold`` times in a row asks the supervisor to restart it. While the service
is not running (starting, in backoff, stopped) nothing is probed: a restart must not be hammered.

The board is plain state read by the API without touching any actor.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

import attrs
import trio

from actors import ChildContext, ChildSpec, Event, Restart

from .config import ProbeConfig, ProbesConfig
from .probes import ProbeResult, run_probe

__all__ = [
    "DURATION_BUCKETS",
    "HealthBoard",
    "LivenessFailed",
    "ProbeFailed",
    "ProbeKind",
    "ProbeLatencyCleared",
    "ProbeLatencyCrossed",
    "ProbeRecovered",
    "ProbeStats",
    "ServiceNotReady",
    "ServiceReady",
    "make_prober_spec",
]

ProbeKind = Literal["readiness", "liveness"]

#: How often a prober looks whether its service was restarted meanwhile (a dict lookup).
WATCH_INTERVAL = 0.5
#: Upper bounds (seconds) of the probe-duration histogram for /metrics: Prometheus' defaults,
#: which hold 0.5 (the "health check slower than 500 ms" alert).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
#: A check slower than this is slow (the seed's "health check slower than 500 ms").
SLOW_PROBE_SECONDS = 0.5


def _micro(seconds: float) -> float:
    return round(seconds, 6)


@attrs.frozen(kw_only=True)
class ProbeFailed(Event):
    """One failed check (successes are not published: they would flood the bus)."""

    kind: ClassVar[str] = "probe_failed"
    service: str
    probe: str  # readiness | liveness
    type: str
    detail: str
    latency: float = attrs.field(converter=_micro)
    failures: int
    failure_threshold: int


@attrs.frozen(kw_only=True)
class ProbeRecovered(Event):
    """The first passing check after failures."""

    kind: ClassVar[str] = "probe_recovered"
    service: str
    probe: str
    detail: str
    latency: float = attrs.field(converter=_micro)
    after_failures: int


@attrs.frozen(kw_only=True)
class ProbeLatencyCrossed(Event):
    """A check took longer than ``threshold`` seconds, after checks that did not."""

    kind: ClassVar[str] = "probe_latency_crossed"
    service: str
    probe: str
    latency: float = attrs.field(converter=_micro)
    threshold: float


@attrs.frozen(kw_only=True)
class ProbeLatencyCleared(Event):
    """The first check within ``threshold`` seconds after slow ones."""

    kind: ClassVar[str] = "probe_latency_cleared"
    service: str
    probe: str
    latency: float = attrs.field(converter=_micro)
    threshold: float


@attrs.frozen(kw_only=True)
class ServiceReady(Event):
    kind: ClassVar[str] = "service_ready"
    service: str
    detail: str


@attrs.frozen(kw_only=True)
class ServiceNotReady(Event):
    kind: ClassVar[str] = "service_not_ready"
    service: str
    detail: str


@attrs.frozen(kw_only=True)
class LivenessFailed(Event):
    """Liveness failed past its threshold: the service is being restarted (reason ``probe``)."""

    kind: ClassVar[str] = "liveness_failed"
    service: str
    detail: str
    failures: int


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, tz=UTC).isoformat()


@attrs.define
class _ProbeRecord:
    """What the board knows of one probe of one service."""

    probe: ProbeConfig
    ok: bool | None = None
    detail: str = "not checked yet"
    latency: float | None = None
    failures: int = 0
    successes: int = 0
    checks: int = 0
    last_check: float | None = None  # wall clock
    #: For /metrics, never reset while the record lives: checks by result, and the durations
    #: per DURATION_BUCKETS bound (one more for +Inf), not cumulative, with their sum.
    passed: int = 0
    failed: int = 0
    duration_counts: list[int] = attrs.field(factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    duration_sum: float = 0.0
    #: The last check took longer than SLOW_PROBE_SECONDS (published when it changes).
    slow: bool = False

    def count(self, result: ProbeResult) -> None:
        self.checks += 1
        if result.ok:
            self.passed += 1
        else:
            self.failed += 1
        self.duration_counts[bisect.bisect_left(DURATION_BUCKETS, result.latency)] += 1
        self.duration_sum += result.latency

    def reset(self, detail: str) -> None:
        self.ok, self.detail, self.failures, self.successes = None, detail, 0, 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.probe.type.value,
            "ok": self.ok,
            "detail": self.detail,
            "latency": None if self.latency is None else _micro(self.latency),
            "consecutiveFailures": self.failures,
            "consecutiveSuccesses": self.successes,
            "failureThreshold": self.probe.failure_threshold,
            "successThreshold": self.probe.success_threshold,
            "checks": self.checks,
            "lastCheck": _iso(self.last_check),
        }


@attrs.frozen(kw_only=True)
class ProbeStats:
    """One probe's figures for /metrics; ``duration_counts`` per ``DURATION_BUCKETS`` bound and
    +Inf, not cumulative. ``last_duration`` is None before the first check."""

    service: str
    probe: str
    passed: int
    failed: int
    consecutive_failures: int
    last_duration: float | None
    duration_counts: tuple[int, ...]
    duration_sum: float


@attrs.define
class _ServiceRecord:
    pid_of: Callable[[], int | None]
    started_ready: bool
    probes: dict[str, _ProbeRecord]
    ready: bool = False
    #: The incarnation the readiness prober has taken in; a newer one is judged by started_ready.
    pid: int | None = None


class HealthBoard:
    """Per service: ready or not, and the last result and counters of each probe.

    Only services with probes are on it. ``readiness()`` lists only services with a readiness
    probe; any other service is ready when it runs.
    """

    def __init__(self, *, wall_clock: Callable[[], float] = time.time) -> None:
        self._services: dict[str, _ServiceRecord] = {}
        self._wall_clock = wall_clock

    def add(
        self,
        service: str,
        probes: ProbesConfig,
        *,
        pid_of: Callable[[], int | None],
        started_ready: bool = True,
    ) -> None:
        records = {
            kind: _ProbeRecord(probe)
            for kind, probe in (("readiness", probes.readiness), ("liveness", probes.liveness))
            if probe is not None
        }
        self._services[service] = _ServiceRecord(pid_of, started_ready, records)

    def remove(self, service: str) -> None:
        """Forget a service (removed or replaced by a config reload)."""
        self._services.pop(service, None)

    def __contains__(self, service: object) -> bool:
        return service in self._services

    def is_ready(self, service: str) -> bool:
        """Ready by its readiness probe (True when it has none)."""
        record = self._services.get(service)
        if record is None or "readiness" not in record.probes:
            return True
        pid = record.pid_of()
        if pid is None:
            return False
        if pid != record.pid:  # started since the prober last looked
            return record.started_ready
        return record.ready

    def readiness(self) -> dict[str, bool]:
        """Service -> ready, for the services that have a readiness probe."""
        return {
            name: self.is_ready(name)
            for name, record in self._services.items()
            if "readiness" in record.probes
        }

    def details(self) -> dict[str, dict[str, Any]]:
        """Service -> ``{"probes": {kind: {...}}}``, JSON-ready, to merge into /status."""
        return {
            name: {"probes": {kind: probe.to_dict() for kind, probe in record.probes.items()}}
            for name, record in self._services.items()
        }

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {
            name: {"ready": self.is_ready(name), **detail}
            for name, detail in self.details().items()
        }

    def probe_stats(self) -> Iterator[ProbeStats]:
        """Each probe's counters, for /metrics."""
        for name, record in self._services.items():
            for kind, probe in record.probes.items():
                yield ProbeStats(
                    service=name,
                    probe=kind,
                    passed=probe.passed,
                    failed=probe.failed,
                    consecutive_failures=probe.failures,
                    last_duration=probe.latency,
                    duration_counts=tuple(probe.duration_counts),
                    duration_sum=probe.duration_sum,
                )

    # -- written by the probers --------------------------------------------------------------

    def _record(self, service: str) -> _ServiceRecord:
        return self._services[service]

    def _note(self, service: str, kind: str, result: ProbeResult) -> _ProbeRecord:
        record = self._services[service].probes[kind]
        record.count(result)
        record.ok, record.detail, record.latency = result.ok, result.detail, result.latency
        record.last_check = self._wall_clock()
        if result.ok:
            record.successes, record.failures = record.successes + 1, 0
        else:
            record.successes, record.failures = 0, record.failures + 1
        return record


class _Prober:
    """One service's probers: a loop per probe kind, in one actor."""

    def __init__(
        self,
        ctx: ChildContext,
        name: str,
        board: HealthBoard,
        restart: Callable[[str], Awaitable[object]],
        watch_interval: float,
    ) -> None:
        self.ctx = ctx
        self.name = name
        self.board = board
        self.record = board._record(name)
        self.restart = restart
        self.watch_interval = watch_interval

    async def _sleep_until(self, deadline: float, pid: int) -> bool:
        """Sleep until ``deadline``; True as soon as the service is not incarnation ``pid``."""
        while trio.current_time() < deadline:
            await trio.sleep_until(min(deadline, trio.current_time() + self.watch_interval))
            if self.record.pid_of() != pid:
                return True
        return False

    async def run(self, kind: ProbeKind, probe: ProbeConfig) -> None:
        probe_record = self.record.probes[kind]
        seen: int | None = None
        next_check = 0.0
        while True:
            pid = self.record.pid_of()
            if pid is None:
                if seen is not None:
                    seen = None
                    probe_record.reset("not running")
                    if kind == "readiness":
                        self.record.ready, self.record.pid = False, None
                await trio.sleep(min(probe.interval, self.watch_interval))
                continue
            if pid != seen:  # a new incarnation (or a new prober): counts start again
                seen = pid
                probe_record.reset("not checked yet")
                delay = probe.initial_delay
                if kind == "readiness" and pid != self.record.pid:
                    self.record.ready, self.record.pid = self.record.started_ready, pid
                    if self.record.started_ready:  # its start just waited for readiness
                        delay = probe.interval
                next_check = trio.current_time() + delay
            if await self._sleep_until(next_check, pid):
                continue
            started = trio.current_time()
            result = await run_probe(probe, pid=pid)
            next_check = started + probe.interval
            if self.record.pid_of() != pid:
                continue  # it was restarted meanwhile: the result is about the old one
            await self._judge(kind, probe, result)

    async def _judge(self, kind: ProbeKind, probe: ProbeConfig, result: ProbeResult) -> None:
        before = self.record.probes[kind].failures
        record = self.board._note(self.name, kind, result)
        slow = result.latency > SLOW_PROBE_SECONDS
        if slow != record.slow:
            record.slow = slow
            latency_event = ProbeLatencyCrossed if slow else ProbeLatencyCleared
            self.ctx.publish(
                latency_event(
                    service=self.name,
                    probe=kind,
                    latency=result.latency,
                    threshold=SLOW_PROBE_SECONDS,
                )
            )
        if not result.ok:
            self.ctx.publish(
                ProbeFailed(
                    service=self.name,
                    probe=kind,
                    type=probe.type.value,
                    detail=result.detail,
                    latency=result.latency,
                    failures=record.failures,
                    failure_threshold=probe.failure_threshold,
                )
            )
        elif before:
            self.ctx.publish(
                ProbeRecovered(
                    service=self.name,
                    probe=kind,
                    detail=result.detail,
                    latency=result.latency,
                    after_failures=before,
                )
            )
        if kind == "readiness":
            self._judge_readiness(probe, record, result)
        elif record.failures >= probe.failure_threshold:
            self.ctx.publish(
                LivenessFailed(service=self.name, detail=result.detail, failures=record.failures)
            )
            record.reset("restarting")
            await self.restart(self.name)

    def _judge_readiness(
        self, probe: ProbeConfig, record: _ProbeRecord, result: ProbeResult
    ) -> None:
        service = self.record
        if service.ready and record.failures >= probe.failure_threshold:
            service.ready = False
            self.ctx.publish(ServiceNotReady(service=self.name, detail=result.detail))
        elif not service.ready and record.successes >= probe.success_threshold:
            service.ready = True
            self.ctx.publish(ServiceReady(service=self.name, detail=result.detail))


def make_prober_spec(
    name: str,
    probes: ProbesConfig,
    board: HealthBoard,
    restart: Callable[[str], Awaitable[object]],
    pid_of: Callable[[], int | None],
    *,
    started_ready: bool = True,
    watch_interval: float = WATCH_INTERVAL,
) -> ChildSpec:
    """The prober actor of service ``name`` (name the child after the service), on ``board``.

    ``pid_of()`` gives the service's pid while it is running (ready), else None.
    ``restart(name)`` restarts it through its supervisor. ``started_ready``: the process actor
    reports started only once the readiness probe passed (``start_when_ready``), so each new
    incarnation begins ready; with False it begins not ready until its probe passes.
    """
    if probes.readiness is None and probes.liveness is None:
        raise ValueError(f"service {name!r} has no probes")
    board.add(name, probes, pid_of=pid_of, started_ready=started_ready)

    async def start(ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
        prober = _Prober(ctx, name, board, restart, watch_interval)
        ctx.info["service"] = name
        async with trio.open_nursery() as nursery:
            if probes.readiness is not None:
                nursery.start_soon(prober.run, "readiness", probes.readiness)
            if probes.liveness is not None:
                nursery.start_soon(prober.run, "liveness", probes.liveness)
            task_status.started()

    return ChildSpec(name=name, start=start, restart=Restart.PERMANENT, shutdown_timeout=2.0)
