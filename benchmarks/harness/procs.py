"""Processes: launch a supervisor, read its costs from /proc, and leave nothing behind.

The harness makes itself a child subreaper, so a child that a supervisor leaves behind comes back
to the harness: it can be counted as an orphan, then killed and reaped.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_PR_SET_CHILD_SUBREAPER = 36
_TICKS = os.sysconf("SC_CLK_TCK")

#: Popen objects the harness waits for itself; the orphan reaper never touches them.
_LAUNCHED: dict[int, subprocess.Popen[Any]] = {}


def become_subreaper() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


@dataclass(frozen=True)
class Sample:
    """A process's cumulative costs at one instant; context switches per thread id."""

    at: float
    cpu_s: float
    rss_kb: int
    switches: dict[int, tuple[int, int]]  # tid -> (voluntary, involuntary)

    @property
    def threads(self) -> int:
        return len(self.switches)

    def switches_since(self, before: Sample) -> tuple[int, int]:
        """(voluntary, involuntary) since ``before``, counting threads born in between in full.

        Summing over threads and subtracting would go negative when a thread exits; a thread that
        exits in between loses its last switches instead (an undercount, small).
        """
        voluntary = involuntary = 0
        for tid, (v, i) in self.switches.items():
            v0, i0 = before.switches.get(tid, (0, 0))
            voluntary += v - v0
            involuntary += i - i0
        return voluntary, involuntary


def sample(pid: int) -> Sample:
    at = time.monotonic()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    switches: dict[int, tuple[int, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        voluntary = involuntary = 0
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    voluntary = int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches:"):
                    involuntary = int(line.split()[1])
            switches[int(task.name)] = (voluntary, involuntary)
    return Sample(at, cpu, rss, switches)


def state(pid: int) -> str | None:
    """The /proc state letter, or None when the pid is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def alive(pid: int) -> bool:
    return state(pid) not in (None, "Z", "X")


def _ppids() -> dict[int, int]:
    result: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                text = Path(f"/proc/{entry}/stat").read_text()
                result[int(entry)] = int(text.rsplit(")", 1)[1].split()[1])
    return result


def descendants(root: int) -> list[int]:
    parents = _ppids()
    found: list[int] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found.append(pid)
                frontier.append(pid)
    return found


def launch(
    argv: list[str], *, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a supervisor in its own session, output to a file (nothing to drain)."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    _LAUNCHED[process.pid] = process
    return process


def wait_exit(process: subprocess.Popen[bytes], timeout: float) -> float | None:
    """Seconds until the process exited (polled every millisecond), or None after ``timeout``."""
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return time.monotonic() - start
        time.sleep(0.001)
    return None


def stop(process: subprocess.Popen[bytes], *, timeout: float = 20.0) -> None:
    """SIGTERM, a bounded wait, then SIGKILL to the supervisor and everything under it."""
    tree = descendants(process.pid)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        if wait_exit(process, timeout) is None:
            tree += descendants(process.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.kill()
            process.wait(10)
    _LAUNCHED.pop(process.pid, None)
    kill_all(tree)
    reap_orphans()


def kill_all(pids: Iterable[int]) -> None:
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    reap_orphans()


def track(process: subprocess.Popen[Any]) -> None:
    """A child the harness waits for itself (a client): the orphan reaper leaves it alone."""
    _LAUNCHED[process.pid] = process


def untrack(process: subprocess.Popen[Any]) -> None:
    _LAUNCHED.pop(process.pid, None)


def reap_orphans(*, timeout: float = 5.0) -> int:
    """Kill and reap every child of ours that the harness did not start itself.

    Those are what a supervisor left behind (re-parented to us, the subreaper). Returns how many
    were still alive.
    """
    me = os.getpid()
    found: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = False
        for pid, ppid in _ppids().items():
            if ppid != me or pid in _LAUNCHED:
                continue
            if state(pid) == "Z":
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
                continue
            pending = True
            if pid not in found:
                found.add(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if not pending:
            break
        time.sleep(0.002)
    return len(found)


def sweep() -> None:
    """Last resort at exit: kill every launched supervisor and every descendant of ours."""
    for process in list(_LAUNCHED.values()):
        stop(process, timeout=5.0)
    kill_all(descendants(os.getpid()))


@contextlib.contextmanager
def running(
    argv: list[str], *, log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    process = launch(argv, log=log, env=env)
    try:
        yield process
    finally:
        stop(process)


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
