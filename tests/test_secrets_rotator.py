"""The rotator on a virtual clock, with a real directory provider and a real injector."""

from __future__ import annotations

import itertools
import random
import shutil
from pathlib import Path

import pytest
import structlog.testing
import trio
import trio.testing
from support.events import EventRecorder

from dev8.secrets import (
    DirectoryProvider,
    Injector,
    RefreshResult,
    Rotator,
    SecretFetched,
    SecretFetchFailed,
    SecretRotated,
    SecretsInjected,
)
from dev8.secrets.events import SecretsInjectionFailed

NAMES = {"github_token": "github-token-u", "copilot_token": "copilot-token-u"}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    (path / "github-token-u").write_text("ghp_one")
    return path


def make_rotator(store: Path, home: Path, recorder: EventRecorder, **kwargs: object) -> Rotator:
    options: dict[str, object] = {
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
