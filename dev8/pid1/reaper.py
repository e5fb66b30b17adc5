"""PID-1 duties: reap orphans without stealing our own children, and sweep at shutdown.

A container's PID 1 (or a subreaper) inherits every orphan and must reap it, or zombies pile up.
The hazard is reaping a child that trio spawned and is about to wait for: CPython then reports
exit status 0 for it. So the reaper asks the kernel which child exited without collecting it
(`waitid(P_ALL, WNOWAIT)`), collects only pids that are *not* ours, and reaps nothing at all while
a spawn is in flight (trio's `open_process` runs `Popen` in a worker thread, so a child can exit
before its pid is known to us). The work per SIGCHLD is one system call per exited child: it does
not grow with the number of processes alive in the container.

Everything here runs in the trio thread: the peek-and-reap step has no checkpoint, so no spawn
can start in the middle of it.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import resource
import select
import signal
import sys
from collections.abc import Callable, Iterator

import trio

from dev8.pid1.signals import IGNORED_SIGNALS

__all__ = [
    "IGNORED_SIGNALS",
    "OwnPids",
    "become_subreaper",
    "final_sweep",
    "is_pid1",
    "list_descendants",
    "list_zombie_children",
    "raise_fd_limit",
    "run_reaper",
]

_PR_SET_CHILD_SUBREAPER = 36
#: With an unlimited hard limit, the soft one goes this high (the kernel's nr_open default).
_FD_LIMIT_CEILING = 1 << 20
_POLL_INTERVAL = 0.02
_GONE_STATES = frozenset({"Z", "X", "x"})
#: Reads of the threads' children files before giving up on them for the full scan.
_CHILDREN_READ_ATTEMPTS = 3


class OwnPids:
    """The pids dev8 spawned itself; the reaper never collects these.

    Only touch it from the trio thread. A child spawned *and* waited outside trio (for example
    `subprocess.run` in a worker thread) must stay inside `spawning()` for its whole life, since
    its pid never reaches `add()` before it could become a zombie.
    """

    def __init__(self) -> None:
        self._pids: set[int] = set()
        self._spawning = 0
        self._scan_wanted = False
        self._wake = trio.Event()
        #: The own zombie the last pass stopped at: the kernel shows it first until trio collects
        #: it, so the reaper looks again shortly, and at once when `discard()` says it is gone.
        self._blocked_by: int | None = None

    @contextlib.contextmanager
    def spawning(self) -> Iterator[None]:
        """Mark a spawn in flight: until the last one ends, the reaper defers."""
        self._spawning += 1
        try:
            yield
        finally:
            self._spawning -= 1
            if self._spawning == 0 and self._scan_wanted:
                self._wake.set()

    @property
    def spawn_in_progress(self) -> bool:
        return self._spawning > 0

    def add(self, pid: int) -> None:
        self._pids.add(pid)

    def discard(self, pid: int) -> None:
        """Forget `pid` once trio has collected its exit status."""
        self._pids.discard(pid)
        if pid == self._blocked_by:
            self._blocked_by = None
            self.request_scan()

    def __contains__(self, pid: object) -> bool:
        return pid in self._pids

    def __len__(self) -> int:
        return len(self._pids)

    def __repr__(self) -> str:
        return f"<OwnPids {len(self._pids)} pids, {self._spawning} spawning>"

    def request_scan(self) -> None:
        """Ask the reaper for a scan (a SIGCHLD does the same)."""
        self._scan_wanted = True
        self._wake.set()

    async def _wait_scan_turn(self) -> None:
        """Return when a scan is wanted and no spawn is in flight; always a checkpoint."""
        await trio.lowlevel.checkpoint()
        while not (self._scan_wanted and self._spawning == 0):
            self._wake = trio.Event()
            await self._wake.wait()
        self._scan_wanted = False

    def _reap_orphans(self, on_reaped: Callable[[int, int], None] | None) -> list[int]:
        """Reap every zombie child not ours; callers make sure no spawn is in flight.

        The kernel names one exited child at a time (`WNOWAIT`: still a zombie). One of ours
        ends the pass: trio collects it, and `discard()` asks for the next pass. No checkpoint in
        here, so no spawn can start halfway through.
        """
        reaped: list[int] = []
        self._blocked_by = None
        while True:
            try:
                peeked = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return reaped  # no child at all
            if peeked is None:
                return reaped  # children, but none has exited
            pid = peeked.si_pid
            if pid in self._pids:
                self._blocked_by = pid  # trio will collect it, with its real status
                return reaped
            try:
                result = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG)
            except ChildProcessError:
                continue  # someone else collected it meanwhile
            if result is None:
                continue
            reaped.append(pid)
            if on_reaped is not None:
                on_reaped(pid, _returncode(result))


def _returncode(result: os.waitid_result) -> int:
    """subprocess-style: the exit status, or minus the signal that ended it."""
    if result.si_code == os.CLD_EXITED:
        return result.si_status
    return -result.si_status


async def run_reaper(
    own: OwnPids,
    *,
    on_reaped: Callable[[int, int], None] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Reap orphans on each SIGCHLD, forever; idle, it sleeps without any timer.

    `on_reaped(pid, returncode)` gets subprocess-style codes (negative: killed by that signal).
    Must run in the main thread (signal handling).
    """
    with trio.open_signal_receiver(signal.SIGCHLD) as sigchld:
        task_status.started()
        own.request_scan()  # zombies may predate the handler

        async def forward_signals() -> None:
            async for _ in sigchld:
                own.request_scan()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward_signals)
            while True:
                blocked = own._blocked_by is not None
                with trio.move_on_after(_POLL_INTERVAL if blocked else math.inf) as waiting:
                    await own._wait_scan_turn()
                if waiting.cancelled_caught:
                    # One of ours hid the zombies behind it: look again once trio collected it,
                    # even if no SIGCHLD comes (the others may have exited at the same moment).
                    own.request_scan()
                    continue
                own._reap_orphans(on_reaped)


def become_subreaper() -> bool:
    """Make orphans of our descendants come back to us even when we are not PID 1."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        return False
    return bool(rc == 0)


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft limit of open files to the hard one; returns (before, after).

    Containers often start with a soft limit of 1024 under a far higher hard one: every idle
    connection to the API holds an fd, and with the soft limit spent dev8 cannot spawn, read /proc
    or accept (a connection flood would take the workspace down). Services inherit the raised
    limit, as they would under systemd's or Docker's own defaults.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, _FD_LIMIT_CEILING)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, target
    return soft, soft


def is_pid1() -> bool:
    return os.getpid() == 1


def _read_stat(pid: int, proc: str = "/proc") -> tuple[str, int] | None:
    """(state, ppid) of `pid`, or None if it is gone."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields start after the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    if len(fields) < 2:
        return None
    return fields[0].decode(), int(fields[1])


def _all_stats(proc: str = "/proc") -> dict[int, tuple[str, int]]:
    stats: dict[int, tuple[str, int]] = {}
    with os.scandir(proc) as entries:
        for entry in entries:
            if entry.name.isdigit():
                pid = int(entry.name)
                st = _read_stat(pid, proc)
                if st is not None:
                    stats[pid] = st
    return stats


def _read_children(proc: str, tid: str) -> list[int]:
    with open(f"{proc}/self/task/{tid}/children", "rb") as f:
        return [int(pid) for pid in f.read().split()]


def _own_children(proc: str) -> set[int] | None:
    """Our children, from each thread's ``children`` file; None if the kernel has no such file.

    A child is listed under the thread that forked it (trio spawns from worker threads), zombies
    included until reaped; when a thread exits, its children move to another thread without any
    SIGCHLD. So every thread is read, and the whole read again if the set of threads changed
    meanwhile: children moving under our feet could otherwise be missed until the next SIGCHLD.
    """
    main = str(os.getpid())
    for _attempt in range(_CHILDREN_READ_ATTEMPTS):
        try:
            tasks = os.listdir(f"{proc}/self/task")
            found = set(_read_children(proc, main))
        except FileNotFoundError:
            return None  # no CONFIG_PROC_CHILDREN (or no /proc): scan instead
        try:
            for tid in tasks:
                if tid != main:
                    found.update(_read_children(proc, tid))
        except FileNotFoundError:
            continue  # that thread just exited: its children moved to another one
        if set(os.listdir(f"{proc}/self/task")) == set(tasks):
            return found
    return None  # threads keep coming and going: the scan cannot miss anything


def list_zombie_children(*, proc: str = "/proc") -> list[int]:
    """Pids of our children that are zombies, from /proc (no wait call: nothing is reaped).

    Reads only our own children (one small file per thread, then each child's stat) rather than
    every process in view: the full scan cost 2-9 ms per SIGCHLD with 90-150 processes, on the
    event loop, before each restart. Kernels without the ``children`` files get the full scan.
    """
    me = os.getpid()
    children = _own_children(proc)
    if children is None:
        stats = _all_stats(proc).items()
        return sorted(pid for pid, (state, ppid) in stats if state == "Z" and ppid == me)
    zombies = []
    for pid in children:
        st = _read_stat(pid, proc)
        # The ppid check guards against a pid reaped and reused since the children were read.
        if st is not None and st[0] == "Z" and st[1] == me:
            zombies.append(pid)
    return sorted(zombies)


def list_descendants(root: int) -> list[int]:
    """Every live process below `root` in the ppid tree (zombies excluded, `root` excluded)."""
    stats = _all_stats()
    children: dict[int, list[int]] = {}
    for pid, (_state, ppid) in stats.items():
        children.setdefault(ppid, []).append(pid)
    found: list[int] = []
    stack = list(children.get(root, []))
    seen = {root}
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        if stats[pid][0] not in _GONE_STATES:
            found.append(pid)
        stack.extend(children.get(pid, []))
    return sorted(found)


def _sweep_targets() -> list[int]:
    me = os.getpid()
    if me == 1:
        stats = _all_stats()
        return sorted(p for p, (state, _) in stats.items() if p != me and state not in _GONE_STATES)
    return list_descendants(me)


class _Target:
    """One process to sweep, held by pidfd when possible so a reused pid is never signalled."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd: int | None = None
        with contextlib.suppress(OSError):  # gone already, or out of fds: fall back to the pid
            self.fd = os.pidfd_open(pid)

    def signal(self, sig: int) -> bool:
        try:
            if self.fd is not None:
                signal.pidfd_send_signal(self.fd, sig)
            else:
                os.kill(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def gone(self) -> bool:
        if self.fd is not None:
            p = select.poll()
            p.register(self.fd, select.POLLIN)
            return bool(p.poll(0))
        st = _read_stat(self.pid)
        return st is None or st[0] in _GONE_STATES

    async def wait_gone(self) -> None:
        if self.fd is not None:
            await trio.lowlevel.wait_readable(self.fd)
            return
        # Without a pidfd nothing signals a non-child's exit: a short bounded poll is all there is.
        while not self.gone():  # noqa: ASYNC110
            await trio.sleep(_POLL_INTERVAL)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


async def _wait_all_gone(targets: list[_Target]) -> None:
    async with trio.open_nursery() as nursery:
        for t in targets:
            if not t.gone():
                nursery.start_soon(t.wait_gone)


async def final_sweep(*, grace: float, own: OwnPids, kill_timeout: float = 2.0) -> int:
    """Stop every process left (all of /proc as PID 1, else our descendants); return the count.

    SIGTERM (with SIGCONT, so stopped processes see it), up to `grace` seconds, SIGKILL to what
    remains and to anything new, up to `kill_timeout` more, then reap zombies not in `own`.
    """
    targets: dict[int, _Target] = {}
    signalled: set[int] = set()
    try:
        for pid in _sweep_targets():
            t = targets[pid] = _Target(pid)
            if t.signal(signal.SIGTERM):
                signalled.add(pid)
                t.signal(signal.SIGCONT)
        with trio.move_on_after(grace):
            await _wait_all_gone(list(targets.values()))

        # Orphans of the terminated may have escaped our tree: keep the ones we knew, add new ones.
        for pid in _sweep_targets():
            if pid not in targets:
                targets[pid] = _Target(pid)
        to_kill = [t for t in targets.values() if not t.gone()]
        for t in to_kill:
            if t.signal(signal.SIGKILL):
                signalled.add(t.pid)
        with trio.move_on_after(kill_timeout):
            await _wait_all_gone(to_kill)
    finally:
        for t in targets.values():
            t.close()
    if own.spawn_in_progress:
        own.request_scan()  # a running reaper will do it once the spawn ends
    else:
        own._reap_orphans(None)
    return len(signalled)
