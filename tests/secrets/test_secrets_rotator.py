"""The rotator on a virtual clock, with a real directory provider and a real injector: its passes,
backoff and events, and the actor (its address, ``Refresh`` and ``Status``, coalescing, a crash
mid-refresh under a real supervisor)."""

from __future__ import annotations

import itertools
import random
import shutil
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
import trio
import trio.testing
from support.events import EventRecorder

from actors import ActorExited, ChildStarted, ChildState, EventBus, Registry, Supervisor
from dev8.secrets import (
    DirectoryProvider,
    InjectionResult,
    Injector,
    RefreshResult,
    Rotator,
    SecretFetched,
    SecretFetchFailed,
    SecretRotated,
    SecretsInjected,
    SecretValue,
)
from dev8.secrets.errors import SecretsRefreshFailed
from dev8.secrets.events import SecretsInjectionFailed
from dev8.secrets.rotator import Refresh, Status
from dev8.secrets.runtime import REFRESH_TIMEOUT, Secrets

NAMES = {"github_token": "github-token-u", "copilot_token": "copilot-token-u"}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    (path / "github-token-u").write_text("ghp_one")
    return path


async def run_inline(
    write: Callable[[Mapping[str, SecretValue | None]], InjectionResult],
    secrets: Mapping[str, SecretValue | None],
) -> InjectionResult:
    """The injector's writes on the trio thread: the virtual clock sees a pass as one step
    (a worker thread would let it jump while the files are written)."""
    return write(secrets)


def make_rotator(store: Path, home: Path, recorder: EventRecorder, **kwargs: object) -> Rotator:
    options: dict[str, object] = {
        "offload": run_inline,
        "provider": DirectoryProvider(store),
        "injector": Injector(home=home, github_user="u"),
        "names": NAMES,
        "required": ["github_token"],
        "publish": recorder,
        "rotation_interval": 3600.0,
        "rotation_jitter": 300.0,
        "retry_initial_delay": 5.0,
        "retry_max_delay": 600.0,
        "rng": random.Random(7),
        "source": "root/secrets",
    }
    options.update(kwargs)
    return Rotator(**options)  # type: ignore[arg-type]


def creds(home: Path) -> str:
    return (home / ".git-credentials").read_text()


async def test_started_after_first_injection_then_checks_on_interval_plus_jitter(
    autojump_clock: trio.testing.MockClock, store: Path, home: Path
) -> None:
    recorder = EventRecorder(zero=0.0)
    rotator = make_rotator(store, home, recorder)
    jitters = random.Random(7)
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        first: RefreshResult = await nursery.start(rotator.run)
        assert creds(home) == "https://u:ghp_one@github.com\n"  # written before started()
        assert first.forced
        assert first.injection is not None
        assert first.ok
        assert trio.current_time() == t0
        [(_, fetched)] = recorder.of(SecretFetched)
        assert isinstance(fetched, SecretFetched)
        assert (fetched.name, fetched.role, fetched.source) == (
            "github-token-u",
            "github_token",
            "root/secrets",
        )

        (store / "github-token-u").write_text("ghp_two")
        when, event = await recorder.next(SecretRotated)
        assert when - t0 == pytest.approx(3600 + jitters.uniform(0, 300), abs=1e-9)
        assert isinstance(event, SecretRotated)
        assert event.previous_version == fetched.version
        assert event.version != fetched.version
        assert creds(home) == "https://u:ghp_two@github.com\n"
        assert rotator.stats.rotations == 1

        # The next check comes one interval (plus new jitter) after that one.
        (store / "github-token-u").write_text("ghp_three")
        when2, _ = await recorder.next(SecretRotated)
        assert when2 - when == pytest.approx(3600 + jitters.uniform(0, 300), abs=1e-9)
        nursery.cancel_scope.cancel()


async def test_unchanged_versions_write_nothing(
    autojump_clock: trio.testing.MockClock, store: Path, home: Path
) -> None:
    recorder = EventRecorder(zero=0.0)
    rotator = make_rotator(store, home, recorder, rotation_jitter=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(rotator.run)
        inode = (home / ".git-credentials").stat().st_ino
        await trio.sleep(3 * 3600 + 1)
        assert rotator.stats.passes == 4
        assert rotator.last_result is not None
        assert rotator.last_result.injection is None
        assert rotator.last_result.changed == ()
        assert len(recorder.of(SecretsInjected)) == 1  # only the first pass wrote
        assert (home / ".git-credentials").stat().st_ino == inode
        nursery.cancel_scope.cancel()


async def test_failures_keep_last_good_files_and_back_off(
    autojump_clock: trio.testing.MockClock, store: Path, home: Path
) -> None:
    recorder = EventRecorder(zero=0.0)
    rotator = make_rotator(store, home, recorder, rotation_jitter=0)
    backoff_rng = random.Random(7)
    backoff_rng.uniform(0, 0)  # what the delay after the first (good) pass drew
    async with trio.open_nursery() as nursery:
        await nursery.start(rotator.run)
        good = creds(home)
        # The secret becomes unreadable (here: a directory where the file was).
        (store / "github-token-u").unlink()
        (store / "github-token-u").mkdir()
        t_fail, failed = await recorder.next(SecretFetchFailed)
        assert isinstance(failed, SecretFetchFailed)
        assert (failed.name, failed.reason, failed.status) == ("github-token-u", "not_a_file", None)
        assert creds(home) == good

        times = [t_fail]
        for _ in range(4):
            times.append((await recorder.next(SecretFetchFailed))[0])
        gaps = [b - a for a, b in itertools.pairwise(times)]
        expected = [d * (1 + 0.1 * backoff_rng.random()) for d in (5, 10, 20, 40)]
        assert gaps == pytest.approx(expected, abs=1e-9)
        assert rotator.stats.consecutive_failed_passes == 5
        assert creds(home) == good

        (store / "github-token-u").rmdir()
        (store / "github-token-u").write_text("ghp_back")
        await recorder.next(SecretRotated)
        assert creds(home) == "https://u:ghp_back@github.com\n"
        assert rotator.stats.consecutive_failed_passes == 0
        assert rotator.next_delay() == 3600
        nursery.cancel_scope.cancel()


async def test_backoff_is_capped(
    autojump_clock: trio.testing.MockClock, store: Path, home: Path
) -> None:
    rotator = make_rotator(
        store, home, EventRecorder(zero=0.0), retry_max_delay=30.0, rotation_jitter=0
    )
    rotator.stats.consecutive_failed_passes = 20
    assert 30 <= rotator.next_delay() <= 33
    rotator.rotation_interval = 10
    assert rotator.next_delay() == 10  # never later than a normal check


async def test_manual_refresh_forces_a_pass_and_repairs_files(
    autojump_clock: trio.testing.MockClock, store: Path, home: Path
) -> None:
    recorder = EventRecorder(zero=0.0)
    rotator = make_rotator(store, home, recorder)
    async with trio.open_nursery() as nursery:
        await nursery.start(rotator.run)
        (home / ".git-credentials").unlink()
        t = trio.current_time()
        result = await rotator.refresh()
        assert trio.current_time() == t  # no waiting for the interval
        assert result.forced
        assert result.injection is not None
        assert result.injection.written == (home / ".git-credentials",)
        assert creds(home) == "https://u:ghp_one@github.com\n"

        # Requests made while one is pending merge into one pass.
        passes = rotator.stats.passes
        rotator.request_refresh()
        rotator.request_refresh()
        rotator.request_refresh()
        await trio.testing.wait_all_tasks_blocked()
        assert rotator.stats.passes == passes + 1
        nursery.cancel_scope.cancel()


async def test_an_optional_absent_secret_is_logged_once_and_picked_up_later(
    autojump_clock: trio.testing.MockClock, store: Path, home: Path
) -> None:
    recorder = EventRecorder(zero=0.0)
    rotator = make_rotator(store, home, recorder, rotation_jitter=0)
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            first = await nursery.start(rotator.run)
            assert first.missing == ("copilot_token",)
            assert first.ok
            await trio.sleep(3 * 3600 + 1)
            (store / "copilot-token-u").write_text("ghu_late")
            _, fetched = await recorder.next(SecretFetched)
            assert isinstance(fetched, SecretFetched)
            assert fetched.role == "copilot_token"
            nursery.cancel_scope.cancel()
    absent = [entry for entry in logs if entry["event"] == "secrets.optional_absent"]
    assert [entry["name"] for entry in absent] == ["copilot-token-u"]
    assert recorder.of(SecretFetchFailed) == []
    assert (home / ".config/github-copilot/hosts.json").exists()


async def test_a_required_secret_that_vanishes_later_keeps_its_files(
    autojump_clock: trio.testing.MockClock, store: Path, home: Path
) -> None:
    recorder = EventRecorder(zero=0.0)
    rotator = make_rotator(store, home, recorder)
    async with trio.open_nursery() as nursery:
        await nursery.start(rotator.run)
        (store / "github-token-u").unlink()
        _, failed = await recorder.next(SecretFetchFailed)
        assert isinstance(failed, SecretFetchFailed)
        assert failed.reason == "missing"
        assert creds(home) == "https://u:ghp_one@github.com\n"
        nursery.cancel_scope.cancel()


async def test_a_file_that_cannot_be_written_is_retried(
    autojump_clock: trio.testing.MockClock, store: Path, home: Path
) -> None:
    recorder = EventRecorder(zero=0.0)
    rotator = make_rotator(store, home, recorder, rotation_jitter=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(rotator.run)
        (home / ".config/gh").rename(home / "gh-moved")
        (home / ".config/gh").write_text("a file where a directory should be")
        (store / "github-token-u").write_text("ghp_two")
        await trio.sleep(3601)
        result = rotator.last_result
        assert result is not None
        assert result.injection is not None
        assert [p.name for p, _ in result.injection.failed] == ["hosts.yml"]
        assert not result.ok
        assert rotator.versions["github_token"] != result.versions["github_token"]
        assert recorder.of(SecretRotated) == []  # not announced until it is really written
        ((_, failed),) = recorder.of(SecretsInjectionFailed)  # announced (an alert)
        assert isinstance(failed, SecretsInjectionFailed)
        assert [Path(path).name for path in failed.paths] == ["hosts.yml"]
        assert len(failed.reasons) == 1

        (home / ".config/gh").unlink()
        shutil.move(home / "gh-moved", home / ".config/gh")
        _, _rotated = await recorder.next(SecretRotated)
        assert trio.current_time() < 3601 + 10  # the backoff retry, not the next hour
        assert "ghp_two" in (home / ".config/gh/hosts.yml").read_text()
        nursery.cancel_scope.cancel()


# ---- the rotator as an actor: its address, its messages, its timer ----------------------------


class HeldProvider:
    """The real directory provider, with a gate an operator can close: a pass that fetches
    while it is closed waits, as a pass waits on a slow store."""

    def __init__(self, store: Path) -> None:
        self.inner = DirectoryProvider(store)
        self.gate = trio.Event()
        self.gate.set()
        #: (virtual time, name) of each fetch, when it began.
        self.fetches: list[tuple[float, str]] = []

    def hold(self) -> None:
        self.gate = trio.Event()

    def release(self) -> None:
        self.gate.set()

    async def get(self, name: str) -> SecretValue | None:
        self.fetches.append((trio.current_time(), name))
        await self.gate.wait()
        return await self.inner.get(name)

    async def aclose(self) -> None:
        await self.inner.aclose()


def make_actor(
    store: Path, home: Path, recorder: EventRecorder, registry: Registry, **kwargs: object
) -> tuple[Rotator, HeldProvider]:
    provider = HeldProvider(store)
    options: dict[str, object] = {
        "provider": provider,
        "registry": registry,
        "path": "dev8/secrets",
        "source": "dev8/secrets",
        "provider_kind": "directory",
        "rotation_jitter": 0.0,
    }
    options.update(kwargs)
    return make_rotator(store, home, recorder, **options), provider


async def test_the_periodic_pass_is_a_timer_of_the_actor_at_its_path(
    autojump_clock: trio.testing.MockClock, store: Path, home: Path
) -> None:
    recorder = EventRecorder(zero=0.0)
    registry = Registry()
    rotator, provider = make_actor(store, home, recorder, registry)
    address = registry.ref("dev8/secrets")
    async with trio.open_nursery() as nursery:
        await nursery.start(rotator.run)
        assert registry.paths() == ["dev8/secrets"]
        status = await address.call(Status(), timeout=1)
        assert status == rotator.status()
        assert status["stats"]["passes"] == 1
        assert status["ready"] is True
        assert status["provider"] == "directory"
        assert set(status) == {
            *("provider", "versions", "last_fetch", "next_check", "last_pass_ok", "ready"),
            *("waitingFor", "failed", "missing", "stats"),
        }
        assert status["next_check"] is not None
        (store / "github-token-u").write_text("ghp_two")
        await trio.sleep(3599.5)
        assert (await address.call(Status(), timeout=1))["stats"]["passes"] == 1
        when, _ = await recorder.next(SecretRotated)
        assert when == 3600.0  # the timer: exactly one interval after the first pass
        assert [t for t, _ in provider.fetches] == [0.0, 0.0, 3600.0, 3600.0]
        assert (await address.call(Status(), timeout=1))["stats"]["rotations"] == 1
        nursery.cancel_scope.cancel()
    assert registry.paths() == []


async def test_refresh_answers_what_changed_and_what_failed_without_values(
    autojump_clock: trio.testing.MockClock, store: Path, home: Path
) -> None:
    recorder = EventRecorder(zero=0.0)
    registry = Registry()
    rotator, provider = make_actor(store, home, recorder, registry)
    address = registry.ref("dev8/secrets")
    async with trio.open_nursery() as nursery:
        first = await nursery.start(rotator.run)
        assert first.changed == ("github_token",)

        (store / "github-token-u").write_text("ghp_SECRETtwo")
        (store / "copilot-token-u").write_text("ghu_SECRETcopilot")
        result = await address.call(Refresh(), timeout=10)
        assert isinstance(result, RefreshResult)
        assert result.forced
        assert result.ok
        assert result.changed == ("copilot_token", "github_token")
        assert result.injection is not None
        changed_files = {p.relative_to(home).as_posix() for p in result.injection.changed}
        assert {".git-credentials", ".config/github-copilot/hosts.json"} <= changed_files
        assert "SECRET" not in repr(result)

        # One secret unreadable: named with its reason, the other still checked.
        (store / "copilot-token-u").unlink()
        (store / "copilot-token-u").mkdir()
        failed = await address.call(Refresh(), timeout=10)
        assert not failed.ok
        assert {role: (f.name, f.reason) for role, f in failed.failed.items()} == {
            "copilot_token": ("copilot-token-u", "not_a_file")
        }
        assert failed.changed == ()
        assert "SECRET" not in repr(failed)
        status = await address.call(Status(), timeout=1)
        assert status["failed"] == ["copilot_token"]
        assert status["last_pass_ok"] is False

        # What POST /secrets/refresh answers is made from that reply, through the address.
        secrets = Secrets(provider, Injector(home=home), rotator, "directory")
        with pytest.raises(SecretsRefreshFailed) as refused:
            await secrets.refresh()
        assert (refused.value.status, refused.value.code) == (503, "secrets_unavailable")
        details: Any = refused.value.details
        assert details["failed"]["copilot_token"]["reason"] == "not_a_file"
        (store / "copilot-token-u").rmdir()
        (store / "copilot-token-u").write_text("ghu_SECRETcopilot")
        reply = await secrets.refresh()
        assert reply["ok"] is True
        assert "SECRET" not in repr(reply)
        nursery.cancel_scope.cancel()


async def test_refreshes_during_a_pass_share_the_next_pass(
    autojump_clock: trio.testing.MockClock, store: Path, home: Path
) -> None:
    recorder = EventRecorder(zero=0.0)
    registry = Registry()
    rotator, provider = make_actor(store, home, recorder, registry)
    address = registry.ref("dev8/secrets")
    answers: dict[str, RefreshResult] = {}

    async def refresh(who: str) -> None:
        answers[who] = await address.call(Refresh(), timeout=3000)

    async with trio.open_nursery() as nursery:
        await nursery.start(rotator.run)
        passes = rotator.stats.passes
        provider.hold()
        nursery.start_soon(refresh, "early")
        await trio.testing.wait_all_tasks_blocked()  # its pass is fetching, held
        assert len(provider.fetches) == 4
        # While that pass runs: the secret changes, three more callers ask, Status answers.
        (store / "github-token-u").write_text("ghp_two")
        for who in ("a", "b", "c"):
            nursery.start_soon(refresh, who)
        await trio.testing.wait_all_tasks_blocked()
        assert (await address.call(Status(), timeout=1))["stats"]["passes"] == passes
        assert answers == {}
        provider.release()
        await trio.testing.wait_all_tasks_blocked()
        assert set(answers) == {"early", "a", "b", "c"}
        assert answers["a"] is answers["b"] is answers["c"]
        assert answers["a"] is not answers["early"]
        assert rotator.stats.passes == passes + 2  # four requests, two passes
        assert len(provider.fetches) == 6  # the second pass fetched after they asked
        assert rotator.last_result is answers["a"]
        nursery.cancel_scope.cancel()


async def test_a_refresh_cast_burst_is_one_pass(
    autojump_clock: trio.testing.MockClock, store: Path, home: Path
) -> None:
    recorder = EventRecorder(zero=0.0)
    registry = Registry()
    rotator, _ = make_actor(store, home, recorder, registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(rotator.run)
        passes = rotator.stats.passes
        for _ in range(5):
            registry.ref("dev8/secrets").cast(Refresh())
        result = await registry.ref("dev8/secrets").call(Refresh(), timeout=10)
        await trio.testing.wait_all_tasks_blocked()
        assert rotator.stats.passes == passes + 1  # six requests queued together: one pass
        assert rotator.last_result is result
        nursery.cancel_scope.cancel()


async def test_a_crash_mid_refresh_is_a_clear_error_and_the_supervisor_restarts_it(
    autojump_clock: trio.testing.MockClock, store: Path, home: Path
) -> None:
    bus = EventBus()
    recorder = EventRecorder(bus, zero=0.0)
    registry = Registry()
    rotator, provider = make_actor(
        store, home, EventRecorder(zero=0.0), registry, publish=bus.publish
    )
    secrets = Secrets(provider, Injector(home=home), rotator, "directory")
    root = Supervisor("dev8", [secrets.child_spec()], bus=bus, rng=random.Random(7))
    errors: list[BaseException] = []

    async def refresh_through_the_api_path() -> None:
        try:
            await secrets.refresh()
        except SecretsRefreshFailed as error:
            errors.append(error)

    async def refresh_through_the_address() -> None:
        try:
            await registry.ref("dev8/secrets").call(Refresh(), timeout=3000)
        except ActorExited as error:
            errors.append(error)

    async with trio.open_nursery() as nursery:
        await nursery.start(root.run)
        node = root.snapshot().children[0]
        assert (node.path, node.state) == ("dev8/secrets", ChildState.RUNNING)
        assert registry.paths() == [node.path]  # registered at its place in the tree
        provider.hold()
        nursery.start_soon(refresh_through_the_api_path)
        nursery.start_soon(refresh_through_the_address)
        await trio.testing.wait_all_tasks_blocked()  # both wait for a pass, which is held
        assert errors == []
        await root.crash_child("secrets")
        crashed_at = trio.current_time()
        await trio.testing.wait_all_tasks_blocked()
        assert len(errors) == 2
        [failed] = [e for e in errors if isinstance(e, SecretsRefreshFailed)]
        [exited] = [e for e in errors if isinstance(e, ActorExited)]
        assert (failed.status, failed.code) == (503, "actor_unavailable")
        assert "dev8/secrets" in failed.message
        assert exited.path == "dev8/secrets"
        provider.release()
        _, started = await recorder.next(ChildStarted)
        assert isinstance(started, ChildStarted)
        assert (started.source, started.restarts) == ("dev8/secrets", 1)
        assert trio.current_time() > crashed_at  # after its backoff, not at once
        result = await registry.ref("dev8/secrets").call(Refresh(), timeout=10)
        assert result.ok  # the same address, a new incarnation
        assert root.snapshot().children[0].last_exit is not None
        nursery.cancel_scope.cancel()


async def test_a_refresh_that_gets_no_pass_in_time_is_secrets_timeout(
    autojump_clock: trio.testing.MockClock, store: Path, home: Path
) -> None:
    registry = Registry()
    rotator, provider = make_actor(store, home, EventRecorder(zero=0.0), registry)
    secrets = Secrets(provider, Injector(home=home), rotator, "directory")
    async with trio.open_nursery() as nursery:
        await nursery.start(rotator.run)
        provider.hold()
        start = trio.current_time()
        with pytest.raises(SecretsRefreshFailed) as refused:
            await secrets.refresh()
        assert (refused.value.status, refused.value.code) == (503, "secrets_timeout")
        assert trio.current_time() - start == REFRESH_TIMEOUT
        provider.release()
        assert (await secrets.refresh())["ok"] is True  # the actor lived on
        nursery.cancel_scope.cancel()


async def test_a_bug_in_a_pass_fails_that_pass_and_the_actor_answers_on(
    autojump_clock: trio.testing.MockClock, store: Path, home: Path
) -> None:
    class BrokenInjector:
        def inject(self, secrets: object) -> InjectionResult:
            raise RuntimeError("a bug")

    registry = Registry()
    rotator, _ = make_actor(
        store, home, EventRecorder(zero=0.0), registry, injector=BrokenInjector()
    )
    async with trio.open_nursery() as nursery:
        first = await nursery.start(rotator.run)
        assert {f.reason for f in first.failed.values()} == {"internal_error"}
        again = await registry.ref("dev8/secrets").call(Refresh(), timeout=10)
        assert {f.reason for f in again.failed.values()} == {"internal_error"}
        assert rotator.stats.consecutive_failed_passes == 2
        with pytest.raises(TypeError, match="takes no call"):
            await registry.ref("dev8/secrets").call("what?", timeout=1)
        nursery.cancel_scope.cancel()


async def test_the_files_are_written_off_the_event_loop(store: Path, home: Path) -> None:
    """The user's home may hold a stalled mount or a FIFO: the writes never run on trio's thread
    (the real clock here: the default ``offload``, a worker thread)."""
    writers: list[int] = []

    class RecordingInjector(Injector):
        def inject(self, secrets: Mapping[str, SecretValue | None]) -> InjectionResult:
            writers.append(threading.get_ident())
            return super().inject(secrets)

    rotator = Rotator(
        provider=DirectoryProvider(store),
        injector=RecordingInjector(home=home, github_user="u"),
        names=NAMES,
        required=["github_token"],
    )
    async with trio.open_nursery() as nursery:
        first = await nursery.start(rotator.run)
        assert first.injection is not None
        assert creds(home) == "https://u:ghp_one@github.com\n"
        (store / "github-token-u").write_text("ghp_two")
        assert (await rotator.refresh(timeout=30)).changed == ("github_token",)
        assert creds(home) == "https://u:ghp_two@github.com\n"
        nursery.cancel_scope.cancel()
    assert len(writers) == 2
    assert threading.get_ident() not in writers
