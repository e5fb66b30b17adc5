"""The rotator actor: first injection at startup, then a version check every interval.

``run`` reports readiness with the first pass's :class:`RefreshResult`, whatever it holds: the
rotator itself never fails because the store is down or a secret is missing (that must not take a
workspace down). ``ready`` is set once every required secret has been written; services wait on
it. Failures keep the last good files, publish an event and back off (never sooner than a
``Retry-After`` the store asked for); only changed versions are rewritten.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection, Mapping
from typing import NoReturn, Protocol

import attrs
import structlog
import trio

from actors import Event

from .errors import SecretFetchError
from .events import (
    SecretFetched,
    SecretFetchFailed,
    SecretRotated,
    SecretsInjected,
    SecretsInjectionFailed,
)
from .injector import InjectionResult
from .providers import SecretProvider, SecretValue
from .settings import SecretsConfig

log = structlog.get_logger(__name__)


class SupportsInject(Protocol):
    def inject(self, secrets: Mapping[str, SecretValue | None]) -> InjectionResult: ...


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


class Rotator:
    """Keeps the workspace's credential files in step with the secret store."""

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
    ) -> None:
        unknown = set(required) - set(names)
        if unknown:
            raise ValueError(f"required roles without a name: {sorted(unknown)}")
        self._provider = provider
        self._injector = injector
        self._names = dict(names)
        self._required = frozenset(required)
        self._publish = publish or (lambda _event: None)
        self.rotation_interval = rotation_interval
        self.rotation_jitter = rotation_jitter
        self.retry_initial_delay = retry_initial_delay
        self.retry_max_delay = retry_max_delay
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._source = source
        self._versions: dict[str, str] = {}
        self._missing_logged: set[str] = set()
        self._refresh_wanted = trio.Event()
        self._passes_started = 0
        self._passes_done = 0
        self._pass_done = trio.Event()
        self.last_result: RefreshResult | None = None
        #: Set once every required secret has been written; it stays set.
        self.ready = trio.Event()
        #: Wall-clock times of the last pass's start and of the next scheduled check.
        self.last_pass_at: float | None = None
        self.next_check_at: float | None = None
        self.stats = RotatorStats()

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
        )

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

    async def run(
        self, *, task_status: trio.TaskStatus[RefreshResult] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """First injection, ``started(result)``, then check on the interval or on request."""
        result = await self._pass(forced=True)
        task_status.started(result)
        while True:
            delay = self.next_delay()
            self.next_check_at = time.time() + delay
            with trio.move_on_after(delay):
                await self._refresh_wanted.wait()
            forced = self._refresh_wanted.is_set()
            if forced:  # requests made from now on ask for another pass after this one
                self._refresh_wanted = trio.Event()
            result = await self._pass(forced=forced)

    def request_refresh(self) -> None:
        """Ask for a forced pass soon; requests made while one is pending are merged into it."""
        self._refresh_wanted.set()

    async def refresh(self) -> RefreshResult:
        """Force a pass (re-fetch, re-inject) and return its result. Bound it with a timeout:
        it waits for the running rotator to get to it."""
        target = self._passes_started + 1
        self.request_refresh()
        while self._passes_done < target or self.last_result is None:
            await self._pass_done.wait()
        return self.last_result

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

    async def _pass(self, *, forced: bool) -> RefreshResult:
        self._passes_started += 1
        self.last_pass_at = time.time()
        try:
            try:
                result = await self._check(forced=forced)
            except Exception as error:  # a bug or a bad input fails this pass, never the rotator
                log.error("secrets.pass_failed", error_type=type(error).__name__)
                result = self._failed_pass(forced=forced)
        finally:
            self._passes_done += 1
            done, self._pass_done = self._pass_done, trio.Event()
            done.set()
        return result

    def _failed_pass(self, *, forced: bool) -> RefreshResult:
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
        self._account(result)
        self._announce(result, {}, written=False)
        return result

    async def _check(self, *, forced: bool) -> RefreshResult:
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
        for role, secret in list(fetched.items()):
            if secret is not None:
                self._missing_logged.discard(role)
                continue
            del fetched[role]
            if role in self._required:  # never written, or vanished: keep files, complain, back off
                failed[role] = FetchFailure(self._names[role], "missing")
                continue
            missing.append(role)
            if role not in self._missing_logged:
                self._missing_logged.add(role)
                log.info("secrets.optional_absent", name=self._names[role], role=role)
            self._versions.pop(role, None)

        present = {role: s for role, s in fetched.items() if s is not None}
        changed = tuple(sorted(r for r, s in present.items() if self._versions.get(r) != s.version))
        injection: InjectionResult | None = None
        if forced or changed:
            injection = self._injector.inject(present)
        written_ok = injection is None or not injection.failed
        previous = dict(self._versions)
        if written_ok:
            self._versions.update({r: present[r].version for r in changed})
        result = RefreshResult(
            versions={r: s.version for r, s in present.items()},
            changed=changed,
            missing=tuple(sorted(missing)),
            failed=failed,
            injection=injection,
            fetch_duration=fetch_duration,
            duration=time.perf_counter() - start,
            forced=forced,
        )
        self._account(result)
        self._announce(result, previous, written_ok)
        return result

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
