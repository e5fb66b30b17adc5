"""The rotator actor: first injection at startup, then a version check every interval.

It is an ``Actor`` at its path in the tree (``dev8/secrets``) with a bounded mailbox:

- ``Refresh`` (call): run a forced pass and answer with its :class:`RefreshResult` (which
  secrets and files changed, which failed and why: names, versions and reasons, never values).
  Requests that arrive while a pass runs are **coalesced** into the next pass, which starts
  once the running one is done: every caller gets the result of a pass that started after its
  request. As a cast it asks for such a pass without waiting for it.
- ``Status`` (call): the rotator's state as ``/status`` shows it (:meth:`Rotator.status`).

The periodic check is a ``send_after`` timer set after each pass; a pass runs in its own task
(the fetches in the provider's worker threads), so ``Status`` is answered while it runs, and
its outcome comes back as a notice that the actor's loop applies: the loop is the one writer of
the versions written, the counters and ``ready``.

``run`` reports readiness with the first pass's :class:`RefreshResult`, whatever it holds: the
rotator itself never fails because the store is down or a secret is missing (that must not take a
workspace down). ``ready`` is set once every required secret has been written; services wait on
it. Failures keep the last good files, publish an event and back off (never sooner than a
``Retry-After`` the store asked for); only changed versions are rewritten.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import attrs
import structlog
import trio

from actors import NO_REPLY, Actor, ChildContext, Event, Refuse, Registry, Reply
from dev8.secrets.errors import SecretFetchError
from dev8.secrets.events import (
    SecretFetched,
    SecretFetchFailed,
    SecretRotated,
    SecretsInjected,
    SecretsInjectionFailed,
)
from dev8.secrets.injector import InjectionResult
from dev8.secrets.providers import SecretProvider, SecretValue
from dev8.secrets.settings import SecretsConfig

log = structlog.get_logger(__name__)

#: Requests from outside that may wait in the rotator's mailbox (each ``Refresh`` leaves it at
#: once to wait for its pass, so only a burst faster than the loop can fill it).
MAILBOX_CAPACITY = 32


class SupportsInject(Protocol):
    def inject(self, secrets: Mapping[str, SecretValue | None]) -> InjectionResult: ...


#: Runs the injector's blocking writes and awaits their result (``trio.to_thread.run_sync``).
Offload = Callable[
    [
        Callable[[Mapping[str, SecretValue | None]], InjectionResult],
        Mapping[str, SecretValue | None],
    ],
    Awaitable[InjectionResult],
]


@attrs.frozen
class FetchFailure:
    """Why a role could not be fetched; value-free by construction."""

    name: str
    reason: str
    status: int | None = None
    #: Seconds the store asked us to wait (``Retry-After``), if it did.
    retry_after: float | None = None


@attrs.frozen(kw_only=True)
class RefreshResult:
    """One pass: fetch every secret, inject what changed."""

    #: role -> version fetched in this pass.
    versions: Mapping[str, str]
    #: roles whose version differed from the last one written.
    changed: tuple[str, ...]
    #: optional roles that do not exist.
    missing: tuple[str, ...]
    failed: Mapping[str, FetchFailure]
    #: None when nothing changed and the pass was not forced.
    injection: InjectionResult | None
    fetch_duration: float
    duration: float
    forced: bool

    @property
    def ok(self) -> bool:
        return not self.failed and not (self.injection and self.injection.failed)

    @property
    def retry_after(self) -> float | None:
        """The longest wait the store asked for in this pass, if any."""
        waits = [f.retry_after for f in self.failed.values() if f.retry_after is not None]
        return max(waits) if waits else None


@attrs.define
class RotatorStats:
    """Counters for ``/metrics``."""

    passes: int = 0
    failed_passes: int = 0
    fetch_failures: int = 0
    #: reason class -> failed fetches (throttled, timeout, credential, missing, ...).
    fetch_failures_by_reason: dict[str, int] = attrs.field(factory=dict)
    rotations: int = 0
    consecutive_failed_passes: int = 0
    last_fetch_duration: float = 0.0
    last_injection_duration: float = 0.0
    #: Wall-clock time of the last pass without any failure (0: none yet).
    last_success_time: float = 0.0


# -- messages --------------------------------------------------------------------------------


@attrs.frozen
class Refresh:
    """Run a forced pass (re-fetch, re-inject); a call is answered with its ``RefreshResult``."""


@attrs.frozen
class Status:
    """Answered with :meth:`Rotator.status`: what ``/status`` shows under ``secrets``."""


@attrs.frozen
class _StartPass:
    """Queued behind the requests already in the mailbox, so that they share one pass."""


@attrs.frozen
class _Tick:
    """The periodic check is due (``timer`` tells a current timer from a cancelled one)."""

    timer: int


@attrs.frozen
class _PassDone:
    result: RefreshResult


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, tz=UTC).isoformat()


def failure_document(failure: FetchFailure) -> dict[str, Any]:
    return {
        "name": failure.name,
        "reason": failure.reason,
        "status": failure.status,
        "retryAfter": failure.retry_after,
    }


class Rotator(Actor):
    """Keeps the workspace's credential files in step with the secret store.

    Its state (the versions written, the counters, ``ready``) outlives its restarts: a new
    incarnation starts with a forced pass against what is already on disk.
    """

    mailbox_capacity = MAILBOX_CAPACITY

    def __init__(
        self,
        *,
        provider: SecretProvider,
        injector: SupportsInject,
        names: Mapping[str, str],
        required: Collection[str] = (),
        publish: Callable[[Event], object] | None = None,
        rotation_interval: float = 3600.0,
        rotation_jitter: float = 300.0,
        retry_initial_delay: float = 5.0,
        retry_max_delay: float = 600.0,
        rng: random.Random | None = None,
        source: str = "secrets",
        registry: Registry | None = None,
        path: str | None = None,
        provider_kind: str | None = None,
        offload: Offload = trio.to_thread.run_sync,
    ) -> None:
        """``path``: where it registers; by default its place in the tree (``ctx.path``), or
        ``source`` when it runs outside a supervisor. ``provider_kind`` names the store in
        ``status()`` (the config's ``secrets.provider``). ``offload`` runs the injector's
        blocking writes: a worker thread (tests on the virtual clock run them inline)."""
        unknown = set(required) - set(names)
        if unknown:
            raise ValueError(f"required roles without a name: {sorted(unknown)}")
        super().__init__(registry if registry is not None else Registry(), path)
        self._provider = provider
        self._injector = injector
        self._offload = offload
        self._names = dict(names)
        self._required = frozenset(required)
        self._publish = publish or (lambda _event: None)
        self.rotation_interval = rotation_interval
        self.rotation_jitter = rotation_jitter
        self.retry_initial_delay = retry_initial_delay
        self.retry_max_delay = retry_max_delay
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._source = source
        self.provider_kind = provider_kind or type(provider).__name__
        self._versions: dict[str, str] = {}
        self._missing_logged: set[str] = set()
        self.last_result: RefreshResult | None = None
        #: Set once every required secret has been written; it stays set.
        self.ready = trio.Event()
        #: Wall-clock times of the last pass's start and of the next scheduled check.
        self.last_pass_at: float | None = None
        self.next_check_at: float | None = None
        self.stats = RotatorStats()
        # One incarnation's state, set again by ``init``.
        self._starting: trio.TaskStatus[RefreshResult] | None = None
        self._pass_running = False
        self._in_pass: list[Reply[RefreshResult]] = []  # callers the running pass answers
        self._next_pass: list[Reply[RefreshResult]] = []  # callers the next pass answers
        self._pass_wanted = False  # a forced pass is asked for (by a call or a cast)
        self._start_queued = False  # a _StartPass is in the mailbox
        self._timer: trio.CancelScope | None = None
        self._timer_id = 0

    @classmethod
    def from_config(
        cls,
        config: SecretsConfig,
        *,
        provider: SecretProvider,
        injector: SupportsInject,
        publish: Callable[[Event], object] | None = None,
        rng: random.Random | None = None,
        source: str = "secrets",
        registry: Registry | None = None,
        path: str | None = None,
    ) -> Rotator:
        return cls(
            provider=provider,
            injector=injector,
            names=config.resolved_names(),
            required=config.required,
            publish=publish,
            rotation_interval=config.rotation_interval,
            rotation_jitter=config.rotation_jitter,
            retry_initial_delay=config.retry_initial_delay,
            retry_max_delay=config.retry_max_delay,
            rng=rng,
            source=source,
            registry=registry,
            path=path,
            provider_kind=config.provider,
        )

    # -- reading (snapshots of the actor's state; nothing here changes it) ----------------------

    @property
    def versions(self) -> Mapping[str, str]:
        """role -> version currently written (safe to show: no values)."""
        return dict(self._versions)

    def waiting_for(self) -> list[FetchFailure]:
        """Required secrets never written yet, each with why (``pending`` before the first pass)."""
        if self.ready.is_set():
            return []
        failed = self.last_result.failed if self.last_result is not None else {}
        return [
            failed.get(role, FetchFailure(self._names[role], "pending"))
            for role in sorted(self._required)
            if role not in self._versions
        ]

    def status(self) -> dict[str, Any]:
        """What ``/status`` shows under ``secrets`` (and ``Status`` answers): no values."""
        last = self.last_result
        return {
            "provider": self.provider_kind,
            "versions": dict(self._versions),
            "last_fetch": _iso(self.last_pass_at),
            "next_check": _iso(self.next_check_at),
            "last_pass_ok": None if last is None else last.ok,
            "ready": self.ready.is_set(),
            "waitingFor": [failure_document(f) for f in self.waiting_for()],
            "failed": [] if last is None else sorted(last.failed),
            "missing": [] if last is None else list(last.missing),
            "stats": attrs.asdict(self.stats),
        }

    def next_delay(self) -> float:
        """Seconds until the next check: the interval plus jitter, or a backoff after failures.

        A ``Retry-After`` from the store is a lower bound, spread by up to 20 % (+1 s) so that a
        fleet of workspaces throttled together does not come back together.
        """
        failures = self.stats.consecutive_failed_passes
        if failures == 0:
            return self.rotation_interval + self._rng.uniform(0, self.rotation_jitter)
        exponent = min(failures - 1, 64)  # no float overflow on a long outage
        backoff = min(self.retry_max_delay, self.retry_initial_delay * 2.0**exponent)
        delay = float(min(self.rotation_interval, backoff * (1 + 0.1 * self._rng.random())))
        retry_after = self.last_result.retry_after if self.last_result is not None else None
        if retry_after is not None:
            delay = max(delay, retry_after + self._rng.uniform(0, 0.2 * retry_after + 1.0))
        return delay

    # -- through the address ---------------------------------------------------------------------

    async def refresh(self, *, timeout: float = math.inf) -> RefreshResult:
        """``Refresh`` through this actor's address: force a pass and wait for its result."""
        result: RefreshResult = await self.ref.call(Refresh(), timeout=timeout)
        return result

    def request_refresh(self) -> None:
        """``Refresh`` as a cast: a forced pass soon, merged with the requests pending."""
        self.ref.cast(Refresh())

    # -- the actor -----------------------------------------------------------------------------

    async def run(
        self,
        ctx: ChildContext | None = None,
        *,
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Registered at once (a ``Refresh`` sent during the first pass waits for the next one);
        ``started(result)`` once the first pass is done, so the services start on its files."""
        self._starting = task_status
        if ctx is None:
            ctx = ChildContext(
                name=self._source.rpartition("/")[2],
                path=self._source,
                attempt=0,
                publish=self._publish,
            )
        await super().run(ctx, task_status=trio.TASK_STATUS_IGNORED)

    async def init(self) -> None:
        self._pass_running = False
        self._in_pass, self._next_pass = [], []
        self._pass_wanted = self._start_queued = False
        self._timer = None
        self._start_pass(forced=True)

    async def handle_call(self, message: Any, reply: Reply[Any]) -> Any:
        if isinstance(message, Refresh):
            self._next_pass.append(reply)
            self._want_pass()
            return NO_REPLY
        if isinstance(message, Status):
            return self.status()
        raise Refuse(TypeError(f"{self.path} takes no call {type(message).__name__}"))

    async def handle_cast(self, message: Any) -> None:
        if isinstance(message, Refresh):
            self._want_pass()
        else:
            await super().handle_cast(message)

    async def handle_info(self, message: Any) -> None:
        if isinstance(message, _StartPass):
            self._start_queued = False
            if self._pass_wanted and not self._pass_running:
                self._start_pass(forced=True)
        elif isinstance(message, _Tick):
            if message.timer == self._timer_id and not self._pass_running:
                self._start_pass(forced=self._pass_wanted)
        elif isinstance(message, _PassDone):
            self._finish_pass(message.result)

    def _want_pass(self) -> None:
        """A forced pass once the requests already queued are in (they share it)."""
        self._pass_wanted = True
        if not self._pass_running and not self._start_queued:
            self._start_queued = True
            self.notify(_StartPass())

    def _start_pass(self, *, forced: bool) -> None:
        """Every caller waiting so far asked before this pass began: it answers them all."""
        self._cancel_timer()
        self._pass_running = True
        self._pass_wanted = False
        self._in_pass, self._next_pass = self._next_pass, []
        self.last_pass_at = time.time()
        self.start_soon(self._pass, forced, dict(self._versions))

    def _finish_pass(self, result: RefreshResult) -> None:
        self._pass_running = False
        self._apply(result)
        answered, self._in_pass = self._in_pass, []
        for reply in answered:
            reply.send(result)
        if self._pass_wanted:  # asked for during this pass: the next one starts now
            if not self._start_queued:
                self._start_queued = True
                self.notify(_StartPass())
        else:
            self._schedule_check()
        starting, self._starting = self._starting, None
        if starting is not None:
            starting.started(result)

    def _schedule_check(self) -> None:
        delay = self.next_delay()
        self.next_check_at = time.time() + delay
        self._timer_id += 1
        self._timer = self.send_after(delay, _Tick(self._timer_id))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_id += 1  # a tick already in the mailbox is stale

    # -- one pass (its own task: reads the actor's state, changes none of it) -------------------

    async def _pass(self, forced: bool, written: Mapping[str, str]) -> None:
        try:
            result = await self._check(forced=forced, written=written)
        except Exception as error:  # a bug or a bad input fails this pass, never the rotator
            log.error("secrets.pass_failed", error_type=type(error).__name__)
            result = RefreshResult(
                versions={},
                changed=(),
                missing=(),
                failed={r: FetchFailure(n, "internal_error") for r, n in self._names.items()},
                injection=None,
                fetch_duration=0.0,
                duration=0.0,
                forced=forced,
            )
        self.notify(_PassDone(result))

    async def _check(self, *, forced: bool, written: Mapping[str, str]) -> RefreshResult:
        start = time.perf_counter()
        fetched: dict[str, SecretValue | None] = {}
        failed: dict[str, FetchFailure] = {}

        async def fetch(role: str, name: str) -> None:
            try:
                fetched[role] = await self._provider.get(name)
            except SecretFetchError as e:
                failed[role] = FetchFailure(name, e.reason, e.status, e.retry_after)

        async with trio.open_nursery() as nursery:
            for role, name in self._names.items():
                nursery.start_soon(fetch, role, name)
        fetch_duration = time.perf_counter() - start

        missing: list[str] = []
        present: dict[str, SecretValue] = {}
        for role, secret in fetched.items():
            if secret is not None:
                present[role] = secret
            elif role in self._required:  # never written, or vanished: keep files, back off
                failed[role] = FetchFailure(self._names[role], "missing")
            else:
                missing.append(role)
        changed = tuple(sorted(r for r, s in present.items() if written.get(r) != s.version))
        injection: InjectionResult | None = None
        if forced or changed:
            # Files under the user's home: never on the event loop (a stalled mount, a FIFO). Not
            # abandoned on cancel: a write in progress finishes (each file is atomic anyway).
            injection = await self._offload(self._injector.inject, present)
        return RefreshResult(
            versions={r: s.version for r, s in present.items()},
            changed=changed,
            missing=tuple(sorted(missing)),
            failed=failed,
            injection=injection,
            fetch_duration=fetch_duration,
            duration=time.perf_counter() - start,
            forced=forced,
        )

    # -- applying a pass's outcome (the loop: the one writer of the state) ----------------------

    def _apply(self, result: RefreshResult) -> None:
        for role in result.versions:
            self._missing_logged.discard(role)
        for role in result.missing:
            self._versions.pop(role, None)
            if role not in self._missing_logged:
                self._missing_logged.add(role)
                log.info("secrets.optional_absent", name=self._names[role], role=role)
        written_ok = result.injection is None or not result.injection.failed
        previous = dict(self._versions)
        if written_ok:
            self._versions.update({r: result.versions[r] for r in result.changed})
        self._account(result)
        self._announce(result, previous, written_ok)

    def _account(self, result: RefreshResult) -> None:
        self.last_result = result
        stats = self.stats
        stats.passes += 1
        stats.fetch_failures += len(result.failed)
        for failure in result.failed.values():
            by_reason = stats.fetch_failures_by_reason
            by_reason[failure.reason] = by_reason.get(failure.reason, 0) + 1
        if result.ok:
            stats.last_success_time = time.time()
        else:
            stats.failed_passes += 1
        if self._required.issubset(self._versions):
            self.ready.set()
        stats.last_fetch_duration = result.fetch_duration
        if result.injection is not None:
            stats.last_injection_duration = result.injection.duration
        stats.consecutive_failed_passes = 0 if result.ok else stats.consecutive_failed_passes + 1
        log.info(
            "secrets.checked",
            versions=dict(result.versions),
            changed=list(result.changed),
            missing=list(result.missing),
            failed={r: f.reason for r, f in result.failed.items()},
            forced=result.forced,
            fetch_ms=round(result.fetch_duration * 1000, 3),
            duration_ms=round(result.duration * 1000, 3),
        )

    def _announce(self, result: RefreshResult, previous: Mapping[str, str], written: bool) -> None:
        for role, failure in sorted(result.failed.items()):
            log.warning(
                "secrets.fetch_failed", name=failure.name, role=role,
                reason=failure.reason, status=failure.status, retry_after=failure.retry_after,
            )  # fmt: skip
            self._publish(
                SecretFetchFailed(source=self._source, name=failure.name, role=role,
                                  reason=failure.reason, status=failure.status,
                                  retry_after=failure.retry_after)
            )  # fmt: skip
        if result.injection is not None and result.injection.changed:
            self._publish(
                SecretsInjected(
                    source=self._source,
                    paths=tuple(str(p) for p in result.injection.changed),
                    roles=result.changed,
                    duration=result.injection.duration,
                )
            )
        if result.injection is not None and result.injection.failed:
            self._publish(
                SecretsInjectionFailed(
                    source=self._source,
                    paths=tuple(str(path) for path, _ in result.injection.failed),
                    reasons=tuple(reason for _, reason in result.injection.failed),
                )
            )
        if not written:
            return
        for role in result.changed:
            name, version = self._names[role], result.versions[role]
            old = previous.get(role)
            if old is None:
                self._publish(
                    SecretFetched(source=self._source, name=name, role=role, version=version)
                )
            else:
                self.stats.rotations += 1
                log.info("secrets.rotated", name=name, role=role, version=version)
                self._publish(
                    SecretRotated(source=self._source, name=name, role=role,
                                  version=version, previous_version=old)
                )  # fmt: skip
