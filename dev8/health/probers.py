"""The prober actors and the board they write: is each service ready, is it alive?

One prober actor per service (at ``<tree>/health/<service>``) runs its readiness and liveness
probes on ``send_after`` timers, counting consecutive results as Kubernetes does. Readiness only
marks the service ready or not; liveness failing ``failure_threshold`` times in a row asks the
supervisor to restart it. A prober hears its service start and exit as the supervisor's
lifecycle events (``child_started`` with the pid, ``child_stopping`` / ``child_exited`` /
``child_stopped``): nothing polls, and while the service is not running (starting, in backoff,
stopped) nothing is probed, so a restart is not hammered. It answers ``ProbeNow`` (a round now)
and ``Status``.

The board is plain state, written only by the probers and read by the API.
"""

from __future__ import annotations

import bisect
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, Protocol

import attrs
import trio

from actors import (
    NO_REPLY,
    Actor,
    ActorError,
    ChildContext,
    ChildSpec,
    ChildStarted,
    ChildState,
    Envelope,
    Event,
    EventBus,
    ExitReason,
    NodeStatus,
    Refuse,
    Registry,
    Reply,
    Restart,
    UnknownChild,
)
from dev8.config import ProbeConfig, ProbesConfig
from dev8.health.probes import ProbeResult, run_probe

__all__ = [
    "DURATION_BUCKETS",
    "HEARD_KINDS",
    "HealthBoard",
    "LivenessFailed",
    "ProbeFailed",
    "ProbeKind",
    "ProbeLatencyCleared",
    "ProbeLatencyCrossed",
    "ProbeNow",
    "ProbeRecovered",
    "ProbeRound",
    "ProbeStats",
    "Prober",
    "ProberStatus",
    "ServiceHearing",
    "ServiceNotReady",
    "ServiceNotRunning",
    "ServiceReady",
    "ServiceSighting",
    "ServiceTree",
    "Status",
    "make_prober_spec",
]

ProbeKind = Literal["readiness", "liveness"]

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


#: One incarnation of a service: its restart count and its pid (None: no process of its own).
Incarnation = tuple[int, int | None]


@attrs.define
class _ServiceRecord:
    started_ready: bool
    probes: dict[str, _ProbeRecord]
    #: Whether the prober heard the service running (started, not yet stopping or exited).
    running: bool = False
    ready: bool = False
    #: The incarnation the readiness prober has taken in: a prober restarted meanwhile keeps
    #: its verdict; a newer incarnation is judged by ``started_ready``.
    incarnation: Incarnation | None = None


class HealthBoard:
    """Per service: ready or not, and the last result and counters of each probe.

    Only services with probes are on it; only their probers write it (each its own record).
    ``readiness()`` lists only services with a readiness probe; any other service is ready when
    it runs.
    """

    def __init__(self, *, wall_clock: Callable[[], float] = time.time) -> None:
        self._services: dict[str, _ServiceRecord] = {}
        self._wall_clock = wall_clock

    def add(self, service: str, probes: ProbesConfig, *, started_ready: bool = True) -> None:
        records = {
            kind: _ProbeRecord(probe)
            for kind, probe in (("readiness", probes.readiness), ("liveness", probes.liveness))
            if probe is not None
        }
        self._services[service] = _ServiceRecord(started_ready, records)

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
        return record.running and record.ready

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

    # -- written by the probers (each its own service's record) --------------------------------

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


# -- hearing the services ---------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ServiceSighting:
    """What a service is when its prober starts listening: where it lives and, if it is
    running, which incarnation and pid."""

    path: str
    incarnation: Incarnation | None
    pid: int | None


class ServiceTree(Protocol):
    """The supervisor of the services, as the probers see it: its path and its snapshot."""

    @property
    def path(self) -> str: ...

    def children(self) -> Sequence[NodeStatus]: ...


#: The lifecycle events a prober hears about its service (published by the services'
#: supervisor, with the service's path as their source).
HEARD_KINDS = frozenset(
    {"child_started", "child_stopping", "child_exited", "child_stopped", "child_removed"}
)
_DOWN_DETAILS = {
    "child_stopping": "stopping",
    "child_exited": "not running",
    "child_stopped": "not running",
    "child_removed": "removed",
}


def sighted(path: str, restarts: int, info: Mapping[str, Any]) -> ServiceSighting:
    """A service seen started (its ``child_started`` or its node in the snapshot): running,
    unless it started without a process of its own (held stopped: ``pid`` None)."""
    pid = info.get("pid")
    if "pid" in info and not isinstance(pid, int):
        return ServiceSighting(path=path, incarnation=None, pid=None)
    pid = pid if isinstance(pid, int) else None
    return ServiceSighting(path=path, incarnation=(restarts, pid), pid=pid)


class ServiceHearing:
    """How probers hear their services start and exit: one listener on the bus, by source.

    Each prober listens at its service's path; an event reaches only that prober's mailbox, at
    once (it is a notice: never refused, never lagging), so the bus's cost per event does not
    grow with the number of probers and nothing polls while nothing happens. It also keeps what
    it heard (which services run, which incarnation), taken once from the tree's snapshot at
    the first ``listen``: a prober starting, or restarted, learns its service's state in O(1).
    """

    def __init__(self, bus: EventBus, services: ServiceTree) -> None:
        self.services = services
        self._ears: dict[str, Callable[[Event], None]] = {}
        #: Running services by path; None until the first ``listen`` takes the snapshot.
        self._running: dict[str, ServiceSighting] | None = None
        self._prefix = ""
        bus.add_listener(self._hear)

    def _hear(self, envelope: Envelope) -> None:
        event = envelope.event
        if event.kind not in HEARD_KINDS:
            return
        source = event.source
        if self._running is not None and source.startswith(self._prefix):
            if isinstance(event, ChildStarted):
                sighting = sighted(source, event.restarts, event.info)
                if sighting.incarnation is not None:
                    self._running[source] = sighting
                else:
                    self._running.pop(source, None)
            else:
                self._running.pop(source, None)
        ear = self._ears.get(source)
        if ear is not None:
            ear(event)

    def _take_snapshot(self) -> dict[str, ServiceSighting]:
        self._prefix = f"{self.services.path}/"
        running = {}
        for node in self.services.children():
            if node.state is ChildState.RUNNING:
                sighting = sighted(node.path, node.restarts, node.info)
                if sighting.incarnation is not None:
                    running[node.path] = sighting
        self._running = running
        return running

    def listen(self, service: str, ear: Callable[[Event], None]) -> ServiceSighting:
        """Send ``service``'s lifecycle events to ``ear`` from now on, and say what it is now.

        Both in one step: nothing is missed between the sighting and the first event heard.
        """
        path = f"{self.services.path}/{service}"
        running = self._running
        if running is None or not path.startswith(self._prefix):
            running = self._take_snapshot()
        self._ears[path] = ear
        found = running.get(path)
        return (
            found if found is not None else ServiceSighting(path=path, incarnation=None, pid=None)
        )

    def forget(self, service: str, ear: Callable[[Event], None]) -> None:
        """Stop sending to ``ear`` (and only it: a newer prober's ear stays)."""
        path = f"{self.services.path}/{service}"
        if self._ears.get(path) == ear:  # a bound method is a new object at each access
            del self._ears[path]

    def listeners(self) -> int:
        return len(self._ears)


# -- the prober's messages --------------------------------------------------------------------


@attrs.frozen
class ProbeNow:
    """Run every probe of the service now (a check already under way counts); the reply is a
    ``ProbeRound``. The results count as the regular checks' do, and the intervals start again
    from them."""


@attrs.frozen
class Status:
    """The reply is a ``ProberStatus``."""


@attrs.frozen(kw_only=True)
class ProbeRound:
    """The answer to ``ProbeNow``: each probe's result (by kind) and the verdict after them."""

    service: str
    results: Mapping[str, ProbeResult]
    ready: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "ready": self.ready,
            "probes": {
                kind: {"ok": r.ok, "detail": r.detail, "latency": _micro(r.latency)}
                for kind, r in self.results.items()
            },
        }


@attrs.frozen(kw_only=True)
class ProberStatus:
    """The answer to ``Status``: what the prober knows of its service now."""

    service: str
    running: bool
    pid: int | None
    ready: bool
    restarting: bool
    #: Each probe as /status shows it (``probes.<kind>``).
    probes: Mapping[str, Mapping[str, Any]]


class ServiceNotRunning(Exception):
    """``ProbeNow`` for a service that is not running (or is being restarted by its prober)."""

    def __init__(self, service: str, why: str = "not running") -> None:
        super().__init__(f"service {service!r} is {why}: nothing to probe")
        self.service = service


@attrs.frozen
class _Due:
    """A probe's interval ran out (a ``send_after`` timer)."""

    kind: ProbeKind
    generation: int


@attrs.frozen
class _Checked:
    """A check's result, from its helper task."""

    kind: ProbeKind
    generation: int
    started: float
    result: ProbeResult


@attrs.frozen
class _RestartAnswered:
    """The restart that failed liveness asked for was answered (or refused)."""

    generation: int


@attrs.define
class _Round:
    """A ``ProbeNow`` waiting for its checks."""

    reply: Reply[ProbeRound]
    waiting: set[ProbeKind]
    results: dict[str, ProbeResult] = attrs.field(factory=dict)


class Prober(Actor):
    """One service's prober: its readiness and liveness checks, on timers, in one actor.

    It hears its service start (``child_started``: probes begin, after ``initial_delay``) and
    stop or exit (the service is down at once, nothing is probed until it starts again). Checks
    run in helper tasks; their results come back as notices and are judged here, so the actor
    answers ``Status`` and ``ProbeNow`` while a check hangs.
    """

    mailbox_capacity = 16

    def __init__(
        self,
        ctx: ChildContext,
        registry: Registry,
        *,
        probes: ProbesConfig,
        board: HealthBoard,
        restart: Callable[[str], Awaitable[object]],
        hearing: ServiceHearing,
    ) -> None:
        super().__init__(registry, ctx.path)
        self.ctx = ctx
        self.name = ctx.name
        self.probes: dict[ProbeKind, ProbeConfig] = {}
        if probes.readiness is not None:
            self.probes["readiness"] = probes.readiness
        if probes.liveness is not None:
            self.probes["liveness"] = probes.liveness
        self.board = board
        self.record = board._record(self.name)
        self.restart = restart
        self.hearing = hearing
        #: Bumped at each start and stop heard: timers and checks of an older one are stale.
        self.generation = 0
        self.incarnation: Incarnation | None = None
        self.pid: int | None = None
        #: Liveness failed and a restart was asked for: liveness waits for the answer.
        self.restarting = False
        self.timers: dict[ProbeKind, trio.CancelScope] = {}
        self.checks: dict[ProbeKind, trio.CancelScope] = {}
        self.rounds: list[_Round] = []

    # -- the behaviour ---------------------------------------------------------------------------

    async def init(self) -> None:
        self.ctx.info["service"] = self.name
        sighting = self.hearing.listen(self.name, self._ear)
        if sighting.incarnation is not None:
            self._up(sighting.incarnation, sighting.pid)
        else:
            self._down("not running")

    def _ear(self, event: Event) -> None:
        self.notify(event)

    async def terminate(self, reason: ExitReason) -> None:
        self.hearing.forget(self.name, self._ear)

    async def handle_call(self, message: Any, reply: Reply[Any]) -> Any:
        if isinstance(message, Status):
            return ProberStatus(
                service=self.name,
                running=self.incarnation is not None,
                pid=self.pid,
                ready=self.board.is_ready(self.name),
                restarting=self.restarting,
                probes={kind: probe.to_dict() for kind, probe in self.record.probes.items()},
            )
        if isinstance(message, ProbeNow):
            return self._probe_now(reply)
        return await super().handle_call(message, reply)

    async def handle_info(self, message: Any) -> None:
        if isinstance(message, _Checked):
            if message.generation == self.generation:
                self._on_checked(message)
        elif isinstance(message, _Due):
            if message.generation == self.generation:
                self.timers.pop(message.kind, None)
                self._check(message.kind)
        elif isinstance(message, _RestartAnswered):
            if message.generation == self.generation and self.restarting:
                # Not restarted after all (held stopped, or its supervisor was away).
                self.restarting = False
                self._schedule("liveness", self.probes["liveness"].interval)
        elif isinstance(message, ChildStarted):
            sighting = sighted(message.source, message.restarts, message.info)
            if sighting.incarnation is None:
                self._down("not running")  # started without a process (held stopped)
            else:
                self._up(sighting.incarnation, sighting.pid)
        elif isinstance(message, Event) and message.kind in _DOWN_DETAILS:
            self._down(_DOWN_DETAILS[message.kind])

    # -- the service's life, as heard -------------------------------------------------------------

    def _up(self, incarnation: Incarnation, pid: int | None) -> None:
        if incarnation == self.incarnation:
            return
        self._forget_incarnation()
        self.incarnation, self.pid = incarnation, pid
        service = self.record
        service.running = True
        gated_start = False
        if "readiness" in self.probes and incarnation != service.incarnation:
            service.ready, service.incarnation = service.started_ready, incarnation
            gated_start = service.started_ready  # its start just waited for readiness
        for kind, probe in self.probes.items():
            service.probes[kind].reset("not checked yet")
            delay = probe.interval if kind == "readiness" and gated_start else probe.initial_delay
            self._schedule(kind, delay)

    def _down(self, detail: str) -> None:
        """Heard it stop or exit: down at once; nothing is probed until it starts again."""
        self._forget_incarnation()
        self.incarnation, self.pid = None, None
        service = self.record
        service.running = False
        if "readiness" in self.probes:
            service.ready, service.incarnation = False, None
        for kind in self.probes:
            service.probes[kind].reset(detail)

    def _forget_incarnation(self) -> None:
        self.generation += 1
        self.restarting = False
        for scope in (*self.timers.values(), *self.checks.values()):
            scope.cancel()
        self.timers.clear()
        self.checks.clear()
        rounds, self.rounds = self.rounds, []
        for waiting in rounds:
            waiting.reply.fail(ServiceNotRunning(self.name, "no longer running"))

    # -- checks ------------------------------------------------------------------------------------

    def _schedule(self, kind: ProbeKind, delay: float) -> None:
        timer = self.timers.pop(kind, None)
        if timer is not None:
            timer.cancel()
        self.timers[kind] = self.send_after(max(delay, 0.0), _Due(kind, self.generation))

    def _check(self, kind: ProbeKind) -> None:
        """Start a check of ``kind`` in a helper task, unless one is under way."""
        if kind in self.checks or self.incarnation is None:
            return
        scope = self.checks[kind] = trio.CancelScope()
        self.start_soon(self._run_check, kind, self.generation, scope, self.pid)

    async def _run_check(
        self, kind: ProbeKind, generation: int, scope: trio.CancelScope, pid: int | None
    ) -> None:
        with scope:
            started = trio.current_time()
            result = await run_probe(self.probes[kind], pid=pid)
            self.notify(_Checked(kind, generation, started, result))

    def _probe_now(self, reply: Reply[ProbeRound]) -> object:
        if self.incarnation is None:
            raise Refuse(ServiceNotRunning(self.name))
        kinds = {kind for kind in self.probes if not (kind == "liveness" and self.restarting)}
        if not kinds:
            raise Refuse(ServiceNotRunning(self.name, "being restarted"))
        self.rounds.append(_Round(reply, kinds))
        for kind in kinds:
            timer = self.timers.pop(kind, None)
            if timer is not None:
                timer.cancel()
            self._check(kind)
        return NO_REPLY

    def _on_checked(self, checked: _Checked) -> None:
        kind, result = checked.kind, checked.result
        self.checks.pop(kind, None)
        probe = self.probes[kind]
        self._judge(kind, probe, result)
        if not (kind == "liveness" and self.restarting):
            self._schedule(kind, checked.started + probe.interval - trio.current_time())
        for waiting in list(self.rounds):
            if kind in waiting.waiting:
                waiting.waiting.discard(kind)
                waiting.results[kind] = result
                if not waiting.waiting:
                    self.rounds.remove(waiting)
                    waiting.reply.send(
                        ProbeRound(
                            service=self.name,
                            results=waiting.results,
                            ready=self.board.is_ready(self.name),
                        )
                    )

    def _judge(self, kind: ProbeKind, probe: ProbeConfig, result: ProbeResult) -> None:
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
            self.restarting = True
            self.start_soon(self._ask_restart, self.generation)

    async def _ask_restart(self, generation: int) -> None:
        """Ask for the restart in a helper task: its stop may take the service's whole
        ``stop_timeout``, and the prober keeps answering meanwhile."""
        # Its supervisor is away or no longer has it (a reload removing it): liveness goes on.
        with contextlib.suppress(ActorError, UnknownChild):
            await self.restart(self.name)
        self.notify(_RestartAnswered(generation))

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
    *,
    registry: Registry,
    hearing: ServiceHearing,
    started_ready: bool = True,
) -> ChildSpec:
    """The prober actor of service ``name`` (the child is named after the service), on ``board``.

    It registers at its path in ``registry`` and hears the service through ``hearing``.
    ``restart(name)`` restarts the service through its supervisor. ``started_ready``: the
    process actor reports started only once the readiness probe passed (``start_when_ready``),
    so each new incarnation begins ready; with False it begins not ready until its probe passes.
    """
    if probes.readiness is None and probes.liveness is None:
        raise ValueError(f"service {name!r} has no probes")
    board.add(name, probes, started_ready=started_ready)

    async def start(ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
        # A new actor for each incarnation: a restarted prober starts from what it hears.
        prober = Prober(ctx, registry, probes=probes, board=board, restart=restart, hearing=hearing)
        await prober.run(ctx, task_status=task_status)

    return ChildSpec(name=name, start=start, restart=Restart.PERMANENT, shutdown_timeout=2.0)
