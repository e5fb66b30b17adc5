"""dev8.pid1.reaper with real processes: orphan reaping, the spawn race, PID 1, the final sweep."""

from __future__ import annotations

import ctypes
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing
from support.audit_hook import audited
from support.pid1_harness import TERM_IGNORER, spawn_own, wait_own
from support.waiting import wait_until

from dev8.pid1.reaper import (
    OwnPids,
    become_subreaper,
    final_sweep,
    is_pid1,
    list_descendants,
    list_zombie_children,
    run_reaper,
)

REPO = Path(__file__).resolve().parents[2]


def _set_subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(36, int(on), 0, 0, 0) == 0


def _is_zombie(pid: int) -> bool:
    return _state(pid) == "Z"


def _state(pid: int) -> str | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].split()[0].decode()


async def read_line(proc: trio.Process) -> bytes:
    assert proc.stdout is not None
    buf = b""
    with trio.fail_after(10):
        while not buf.endswith(b"\n"):
            chunk = await proc.stdout.receive_some()
            assert chunk, f"EOF before a line, got {buf!r}"
            buf += chunk
    return buf


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    """Every test must end with no descendant alive and no zombie child."""
    yield
    me = os.getpid()
    deadline = time.monotonic() + 5
    while (list_descendants(me) or list_zombie_children()) and time.monotonic() < deadline:
        time.sleep(0.02)
    alive, zombies = list_descendants(me), list_zombie_children()
    for pid in alive:  # clean up before failing, so one test's leak does not fail the next
        os.kill(pid, signal.SIGKILL)
    if alive:
        time.sleep(0.2)
    for pid in list_zombie_children():
        os.waitpid(pid, 0)
    assert alive == []
    assert zombies == []


@pytest.fixture
def subreaper() -> Iterator[None]:
    """Subreaper for this test only: other tests' orphans must not pile up on pytest."""
    assert become_subreaper()
    try:
        yield
    finally:
        _set_subreaper(False)


@pytest.fixture
async def reaper() -> AsyncIterator[tuple[OwnPids, list[tuple[int, int]]]]:
    own = OwnPids()
    seen: list[tuple[int, int]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(run_reaper, own, on_reaped=lambda p, rc: seen.append((p, rc))))
        yield own, seen
        nursery.cancel_scope.cancel()


def test_is_pid1_false_here() -> None:
    assert is_pid1() is (os.getpid() == 1)
    assert not is_pid1()


async def test_orphan_is_reaped_when_not_pid1(
    subreaper: None, reaper: tuple[OwnPids, list[tuple[int, int]]]
) -> None:
    own, seen = reaper
    maker = await spawn_own(
        own, ["sh", "-c", "(sleep 0.2; exit 7) & echo $!; exit 0"], stdout=subprocess.PIPE
    )
    orphan = int(await read_line(maker))
    assert await wait_own(own, maker) == 0
    assert maker.stdout is not None
    await maker.stdout.aclose()
    # The orphan came back to us (subreaper) and the reaper collected its real status.
    await wait_until(lambda: (orphan, 7) in seen, timeout=5.0, what="the orphan's status")
    assert _state(orphan) is None
    assert list_zombie_children() == []
    assert maker.pid not in [p for p, _ in seen]


async def test_spawned_children_keep_their_status_under_orphan_storm(
    subreaper: None, reaper: tuple[OwnPids, list[tuple[int, int]]]
) -> None:
    own, seen = reaper
    codes: list[int] = []
    done = trio.Event()

    async def exit5(rounds: int) -> None:
        for i in range(rounds):
            proc = await spawn_own(own, ["sh", "-c", "exit 5"])
            if i % 4 == 0:  # sometimes let it become a zombie, with SIGCHLDs flying, first
                await wait_until(partial(_is_zombie, proc.pid), timeout=5.0, what="a zombie")
                await trio.testing.wait_all_tasks_blocked(cushion=0.001)
            codes.append(await wait_own(own, proc))

    async def orphans() -> None:
        while not done.is_set():
            p = await spawn_own(own, ["sh", "-c", "(exit 3) & (sleep 0.01; exit 4) & exit 0"])
            await wait_own(own, p)

    async with trio.open_nursery() as outer:
        outer.start_soon(orphans)
        async with trio.open_nursery() as workers:
            for _ in range(2):
                workers.start_soon(exit5, 100)
        done.set()
    # Still under the reaper: every orphan must end up reaped, none left as a zombie.
    me = os.getpid()
    await wait_until(
        lambda: not list_descendants(me) and not list_zombie_children(),
        timeout=5.0,
        what="no descendants and no zombies",
    )
    assert codes == [5] * 200
    assert len(own) == 0
    assert seen, "the orphan makers produced no orphan for the reaper"
    assert {rc for _, rc in seen} <= {3, 4}


async def test_reaper_defers_during_spawn_and_rescans_after(
    subreaper: None, reaper: tuple[OwnPids, list[tuple[int, int]]]
) -> None:
    """Deterministic form of the race: the child is a zombie before its pid is registered."""
    own, seen = reaper
    with own.spawning():
        child = await trio.lowlevel.open_process(["sh", "-c", "exit 5"])
        maker = await trio.lowlevel.open_process(
            ["sh", "-c", "(sleep 0.1; exit 7) & echo $!"], stdout=subprocess.PIPE
        )
        orphan = int(await read_line(maker))
        # Every SIGCHLD has been sent: child, maker and orphan are all zombies of ours now.
        await wait_until(
            lambda: {child.pid, maker.pid, orphan} <= set(list_zombie_children()),
            timeout=5.0,
            what="three zombies",
        )
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        assert _state(child.pid) == "Z"
        assert _state(orphan) == "Z", "the reaper reaped while a spawn was in flight"
        assert seen == []
        own.add(child.pid)
        own.add(maker.pid)
    # The spawn ended: the deferred scan runs without any new SIGCHLD.
    await wait_until(lambda: (orphan, 7) in seen, timeout=5.0, what="the orphan's status")
    assert await wait_own(own, child) == 5
    assert await wait_own(own, maker) == 0
    assert maker.stdout is not None
    await maker.stdout.aclose()
    assert [p for p, _ in seen] == [orphan]


async def test_without_the_guard_the_status_is_lost(
    subreaper: None, reaper: tuple[OwnPids, list[tuple[int, int]]]
) -> None:
    """Control: the same child spawned outside the protocol is stolen and reads as exit 0."""
    _own, seen = reaper
    child = await trio.lowlevel.open_process(["sh", "-c", "exit 5"])
    await wait_until(lambda: (child.pid, 5) in seen, timeout=5.0, what="the child's status")
    assert await child.wait() == 0  # CPython's answer after ECHILD: the hazard is real


async def test_naive_waitpid_reaper_corrupts_exit_status() -> None:
    """Control: a waitpid(-1) reaper racing trio turns exit 5 into 0 within a few tries."""

    async def naive(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGCHLD) as sigs:
            task_status.started()
            async for _ in sigs:
                while True:
                    try:
                        pid, _status = os.waitpid(-1, os.WNOHANG)  # noqa: ASYNC222 - WNOHANG
                    except ChildProcessError:
                        break
                    if pid == 0:
                        break

    codes: list[int] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(naive)
        while 0 not in codes and len(codes) < 200:
            proc = await trio.lowlevel.open_process(["sh", "-c", "exit 5"])
            codes.append(await proc.wait())
        nursery.cancel_scope.cancel()
    assert 0 in codes, f"no corrupted status in {len(codes)} tries"


async def test_run_reaper_reaps_zombies_that_predate_it(subreaper: None) -> None:
    maker = await trio.lowlevel.open_process(
        ["sh", "-c", "(sleep 0.05; exit 9) & echo $!; exit 0"], stdout=subprocess.PIPE
    )
    orphan = int(await read_line(maker))
    assert await maker.wait() == 0
    assert maker.stdout is not None
    await maker.stdout.aclose()
    await wait_until(
        lambda: orphan in list_zombie_children(), timeout=5.0, what="the orphan as a zombie"
    )
    own = OwnPids()
    seen: list[tuple[int, int]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(run_reaper, own, on_reaped=lambda p, rc: seen.append((p, rc))))
        await wait_until(lambda: seen == [(orphan, 9)], timeout=5.0, what="the zombie reaped")
        nursery.cancel_scope.cancel()


def test_list_descendants_walks_the_tree() -> None:
    with subprocess.Popen(["sh", "-c", "sleep 30 & echo $!; wait"], stdout=subprocess.PIPE) as sh:
        assert sh.stdout is not None
        grandchild = int(sh.stdout.readline())
        try:
            assert list_descendants(os.getpid()) == sorted([sh.pid, grandchild])
            assert list_descendants(sh.pid) == [grandchild]
            assert list_descendants(grandchild) == []
        finally:
            os.kill(grandchild, signal.SIGKILL)
            sh.wait(timeout=5)


@pytest.mark.parametrize("as_subreaper", [False, True])
async def test_final_sweep_kills_descendants(as_subreaper: bool) -> None:
    if as_subreaper:
        assert become_subreaper()
    try:
        await _sweep_descendants(as_subreaper)
    finally:
        _set_subreaper(False)


async def _sweep_descendants(as_subreaper: bool) -> None:
    own = OwnPids()
    script = f"{sys.executable} -c {shlex.quote(TERM_IGNORER)} & sleep 60 & echo $!; wait"
    sh = await spawn_own(own, ["sh", "-c", script], stdout=subprocess.PIPE)
    sleeper = int(await read_line(sh))
    assert (await read_line(sh)) == b"ready\n"  # the ignorer's handler is in place
    before = list_descendants(os.getpid())
    assert len(before) == 3
    assert sh.pid in before
    assert sleeper in before
    ignorer = next(p for p in before if p not in (sh.pid, sleeper))

    grace = 0.5
    t0 = trio.current_time()
    assert await final_sweep(grace=grace, own=own) == 3
    elapsed = trio.current_time() - t0
    # The ignorer held out for the whole grace (the upper bound only catches a hang: a busy
    # machine may be slow to deliver the SIGKILL and reap).
    assert grace <= elapsed < grace + 5.0
    assert await wait_own(own, sh) == -signal.SIGTERM
    assert sh.stdout is not None
    await sh.stdout.aclose()
    if as_subreaper:
        # Orphans came back to us and the sweep reaped them (they are not in `own`).
        assert _state(ignorer) is None
        assert _state(sleeper) is None
    else:
        # They escaped to the machine's init; they must still be dead.
        await wait_until(
            lambda: _state(ignorer) in (None, "Z") and _state(sleeper) in (None, "Z"),
            timeout=5.0,
            what="both processes dead",
        )


async def test_final_sweep_returns_early_when_all_obey_sigterm() -> None:
    own = OwnPids()
    procs = [await spawn_own(own, ["sleep", "60"]) for _ in range(3)]
    stopped = await spawn_own(own, ["sleep", "60"])
    os.kill(stopped.pid, signal.SIGSTOP)
    await wait_until(lambda: _state(stopped.pid) == "T", timeout=5.0, what="the process stopped")
    t0 = trio.current_time()
    assert await final_sweep(grace=10.0, own=own) == 4
    assert trio.current_time() - t0 < 5.0  # returned early: not after the 10 s grace
    for p in [*procs, stopped]:
        assert await wait_own(own, p) == -signal.SIGTERM


async def test_final_sweep_with_nothing_left() -> None:
    assert await final_sweep(grace=5.0, own=OwnPids()) == 0


# -- finding our zombies without scanning /proc --------------------------------------------------


def _main_thread_children() -> list[int]:
    me = os.getpid()
    return [int(p) for p in Path(f"/proc/self/task/{me}/children").read_text().split()]


def _poll_sync(cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_zombies_are_found_under_every_thread_and_nothing_else_is_read() -> None:
    """A child of a living worker thread is listed under that thread only (trio spawns from
    worker threads); the child of a thread that has exited moved to another thread."""
    by_role: dict[str, subprocess.Popen[bytes]] = {}
    release = threading.Event()

    def spawn_and_wait() -> None:
        by_role["living"] = subprocess.Popen(["true"])
        release.wait(10)

    def spawn_and_exit() -> None:
        by_role["orphaned"] = subprocess.Popen(["true"])

    worker = threading.Thread(target=spawn_and_wait)
    worker.start()
    gone = threading.Thread(target=spawn_and_exit)
    gone.start()
    gone.join()
    spawned = by_role.values()  # the threads may spawn in either order
    try:
        _poll_sync(lambda: len(by_role) == 2 and all(_is_zombie(p.pid) for p in spawned))
        living, orphaned = by_role["living"], by_role["orphaned"]
        assert living.pid not in _main_thread_children()  # only in the worker thread's file
        with audited() as seen:
            zombies = list_zombie_children()
        assert zombies == sorted(p.pid for p in spawned)
        # Our threads' children files and our children's stat, not every process in /proc.
        assert ("os.scandir", "/proc") not in seen
        stats = sorted(path for event, path in seen if path.endswith("/stat"))
        assert stats == sorted(f"/proc/{p.pid}/stat" for p in spawned)
        assert all(
            path.startswith("/proc/self/task") for _, path in seen if not path.endswith("/stat")
        )
    finally:
        release.set()
        worker.join()
        for p in spawned:
            p.wait()
    assert orphaned.returncode == living.returncode == 0
    assert list_zombie_children() == []


def test_without_children_files_the_whole_of_proc_is_scanned(tmp_path: Path) -> None:
    """Kernels without CONFIG_PROC_CHILDREN: a /proc whose threads have no ``children`` file
    (the processes themselves are the real ones, linked in)."""
    child = subprocess.Popen(["true"])
    try:
        _poll_sync(lambda: _is_zombie(child.pid))
        for task in os.listdir("/proc/self/task"):
            (tmp_path / "self" / "task" / task).mkdir(parents=True)
        for name in os.listdir("/proc"):
            if name.isdigit():
                (tmp_path / name).symlink_to(f"/proc/{name}")
        with audited() as seen:
            assert list_zombie_children(proc=str(tmp_path)) == [child.pid]
        assert ("os.scandir", str(tmp_path)) in seen  # the full scan, not the children files
        assert list_zombie_children() == [child.pid]  # the real /proc says the same
    finally:
        child.wait()
    assert list_zombie_children(proc=str(tmp_path)) == []


async def test_as_real_pid1() -> None:
    """The harness runs as PID 1 of a fresh PID namespace (we are root, so unshare works)."""
    cmd = [
        "unshare",
        "--pid",
        "--fork",
        "--mount-proc",
        sys.executable,
        "tests/support/pid1_harness.py",
    ]
    with trio.fail_after(60):
        done = await trio.run_process(cmd, cwd=REPO, capture_stdout=True, check=False)
    lines = done.stdout.decode().strip().splitlines()
    assert len(lines) == 1, lines
    res = json.loads(lines[0])
    assert res["pid"] == 1
    assert res["exit5_runs"] == 300
    assert res["exit5_wrong"] == []
    assert res["zombies_left"] == []
    assert res["procs_left_after_race"] == []
    assert res["orphans_reaped"] > 0
    assert res["sweep_signalled"] == 2
    assert res["ignorer_rc"] == -signal.SIGKILL
    assert res["procs_left"] == []
    assert res["ok"] is True
    assert done.returncode == 0
