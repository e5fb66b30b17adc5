"""Resource figures: per service (summed over its whole process tree) and for the container.

The sampler actor reads ``/proc`` and the cgroup every ``resources.interval`` seconds, in a
thread (the reads are many small files), and keeps the last figures on a ``ResourceBoard`` that
/status and /metrics read. When a service's memory (of its ``limits.memory``) or CPU (of its
``limits.cpu`` cores), or the container's (of the cgroup's limits), crosses the threshold, or the
container's CPU is throttled, or the OOM killer struck, it publishes an event.

A process belongs to a service when the service's leader is among its ancestors or it is in the
leader's session (services start in their own session): sshd's logins call ``setsid`` but stay
children of sshd; a daemonised helper leaves the tree but keeps the session.

A sample reads only what may have changed (``ProcessSampler``): a process that has not run since
the last sample has the same stat, and a new process in a service's tree was forked by one that
ran. Each service process's CPU clock (one system call, no file) says which ran; only then is
/proc listed and the stat of what ran, or is new, read again. With 1,000 idle services a sample
costs about 2 ms instead of 40 ms (benchmarks/results/resources.md).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Literal, NamedTuple, TypeVar

import attrs
import outcome
import trio

from actors import ChildContext, ChildSpec, Event, Mailbox, Reply, Restart
from dev8.resources.cgroups import CgroupFiles, ContainerFigures

__all__ = [
    "ContainerCpuThrottled",
    "OomKilled",
    "ProcStat",
    "ProcessSampler",
    "ResourceBoard",
    "ResourceThresholdCleared",
    "ResourceThresholdCrossed",
    "SampleNow",
    "ServiceFigures",
    "make_sampler_spec",
    "parse_proc_stat",
    "process_cpu_ns",
    "read_process_table",
    "service_figures",
]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

Scope = Literal["service", "container"]
Resource = Literal["memory", "cpu"]


@attrs.frozen(kw_only=True)
class ResourceThresholdCrossed(Event):
    kind: ClassVar[str] = "resource_threshold_crossed"
    scope: Scope
    service: str | None
    resource: Resource
    value: float  # fraction of the limit (memory) or of the cores allowed (cpu)
    threshold: float


@attrs.frozen(kw_only=True)
class ResourceThresholdCleared(Event):
    kind: ClassVar[str] = "resource_threshold_cleared"
    scope: Scope
    service: str | None
    resource: Resource
    value: float
    threshold: float


@attrs.frozen(kw_only=True)
class ContainerCpuThrottled(Event):
    kind: ClassVar[str] = "container_cpu_throttled"
    periods: int  # throttled periods since the last sample
    seconds: float


@attrs.frozen(kw_only=True)
class OomKilled(Event):
    kind: ClassVar[str] = "oom_killed"
    scope: Scope
    service: str | None


class ProcStat(NamedTuple):
    """What ``/proc/PID/stat`` says of one process (a tuple: thousands are made per sample)."""

    pid: int
    ppid: int
    session: int
    cpu_ticks: int  # its own user+system time, and that of its children it has waited for
    threads: int
    rss_pages: int


def parse_proc_stat(text: str | bytes) -> ProcStat | None:
    """One ``/proc/PID/stat`` line; None when malformed. The command (field 2) may hold spaces
    and parentheses: the fields after it start after its last ``)``. Bytes are parsed as they
    are (no decoding: thousands of lines a sample)."""
    data = text.encode("utf-8", "replace") if isinstance(text, str) else text
    head, _, rest = data.rpartition(b")")
    fields = rest.split()
    try:
        pid = int(head.split(b" (", 1)[0])
        return ProcStat(
            pid=pid,
            ppid=int(fields[1]),
            session=int(fields[3]),
            cpu_ticks=int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14]),
            threads=int(fields[17]),
            rss_pages=int(fields[21]),
        )
    except (ValueError, IndexError):
        return None


def _read_stat(proc_fd: int, pid: int) -> ProcStat | None:
    """One process's stat (blocking), relative to /proc's fd; None when gone or malformed."""
    try:
        fd = os.open(f"{pid}/stat", os.O_RDONLY, dir_fd=proc_fd)
    except OSError:  # gone meanwhile
        return None
    try:
        data = os.read(fd, 4096)  # one line, well under a page
    except OSError:
        return None
    finally:
        os.close(fd)
    return parse_proc_stat(data)


def _pids(proc_fd: int) -> list[int]:
    return [int(name) for name in os.listdir(proc_fd) if name.isdigit()]


def read_process_table(proc: str = "/proc") -> dict[int, ProcStat]:
    """Every process's stat (blocking: one small read per process, relative to /proc's fd)."""
    table: dict[int, ProcStat] = {}
    proc_fd = os.open(proc, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for pid in _pids(proc_fd):
            stat = _read_stat(proc_fd, pid)
            if stat is not None:
                table[stat.pid] = stat
    finally:
        os.close(proc_fd)
    return table


#: Linux's clock id for a process's CPU time, all its threads (``CPUCLOCK_SCHED``): what glibc's
#: ``clock_getcpuclockid(pid)`` returns, ``(~pid << 3) | 2``. Reading it takes no permission.
_CPUCLOCK_SCHED = 2


def process_cpu_ns(pid: int) -> int | None:
    """CPU time of all of ``pid``'s threads, in ns (None: gone). One system call and no file:
    an order of magnitude cheaper than reading its stat; exact, where the stat counts ticks."""
    try:
        return time.clock_gettime_ns((~pid << 3) | _CPUCLOCK_SCHED)
    except OSError:
        return None


def _cpu_clocks_work() -> bool:
    own = process_cpu_ns(os.getpid())
    return own is not None and own > 0


_CPU_CLOCKS = _cpu_clocks_work()


def owners(table: Mapping[int, ProcStat], leaders: Mapping[int, str]) -> dict[int, str]:
    """pid -> service, for every process of a service's tree or session."""
    found: dict[int, str | None] = {pid: name for pid, name in leaders.items() if pid in table}

    def owner(pid: int) -> str | None:
        chain = []
        current: int | None = pid
        result: str | None = None
        while current is not None and current not in found:
            chain.append(current)
            stat = table.get(current)
            current = None if stat is None or stat.ppid <= 1 else stat.ppid
        if current is not None:
            result = found[current]
        for link in chain:
            found[link] = result
        return result

    result: dict[int, str] = {}
    for pid, stat in table.items():
        name = owner(pid)
        if name is None:
            name = leaders.get(stat.session)
        if name is not None:
            result[pid] = name
    return result


@attrs.frozen(kw_only=True)
class ServiceFigures:
    """One service's figures at one sample, summed over its processes."""

    cpu_seconds: float = 0.0
    memory_bytes: int = 0
    threads: int = 0
    open_fds: int | None = 0  # None: some fd directory could not be read
    processes: int = 0


def _fd_dir_size_counts(proc: str = "/proc") -> bool:
    """Since Linux 6.2 the size of ``/proc/PID/fd`` is the number of open fds: one stat instead
    of listing the directory (a third of the sampler's time with 1,000 services)."""
    try:
        return os.stat(f"{proc}/self/fd").st_size > 0
    except OSError:
        return False


_FD_DIR_SIZE_COUNTS = _fd_dir_size_counts()


def _count_fds(proc: str, pid: int) -> int | None:
    try:
        if _FD_DIR_SIZE_COUNTS:
            return os.stat(f"{proc}/{pid}/fd").st_size
        return len(os.listdir(f"{proc}/{pid}/fd"))
    except FileNotFoundError:
        return 0  # gone meanwhile
    except OSError:
        return None


class ProcessSampler:
    """Each service's figures, sample after sample, reading again only what may have changed.

    Reading a process's stat costs about 15 µs here, so reading them all made a sample of 1,000
    services cost 40 ms. But a process that has not run since the last sample has the same stat
    (CPU, threads, open fds, parent, session), and a process that joins a service's tree was forked
    by one of the tree that ran. So a sample first reads each service process's CPU clock (about
    1 µs); when none ran, none is gone and the leaders are the same, the last figures stand. Else it
    lists /proc and reads the stat of each process that is new, ran, or lost its parent (reparented
    without running), then sums the services again.

    Memory is the one figure that may change while a process sleeps (the kernel reclaims its
    pages): a slice of the service processes' stats is read again each sample, all of them within
    ``refresh_every`` samples (10 minutes at the default interval). Blocking: run it in a thread,
    one sample at a time.
    """

    def __init__(self, proc: str = "/proc", *, refresh_every: int = 60) -> None:
        self.proc = proc
        self.refresh_every = refresh_every
        # The clocks are those of this process's pid namespace: only for the /proc it mounts.
        self._clocks_tell = proc == "/proc" and _CPU_CLOCKS
        self._leaders: dict[int, str] | None = None
        self._table: dict[int, ProcStat] = {}
        self._clocks: dict[int, int | None] = {}  # read just before the stat in the table
        self._fds: dict[int, int | None] = {}  # service processes only
        self._owners: dict[int, str] = {}
        self._figures: dict[str, ServiceFigures] = {}
        self._turn = 0
        self.stats_read = 0  # in the last sample (for tests and benchmarks)

    def sample(self, leaders: Mapping[int, str]) -> dict[str, ServiceFigures]:
        self.stats_read = 0
        leaders = dict(leaders)
        if not self._clocks_tell:
            self._leaders = leaders
            self._rescan(everything=True)
        elif leaders != self._leaders or self._any_ran() or self._refresh_slice():
            # New leaders need no more: their processes are new or ran since they were read.
            self._leaders = leaders
            self._rescan(everything=False)
        return dict(self._figures)

    def _any_ran(self) -> bool:
        clock, clocks = time.clock_gettime_ns, self._clocks
        for pid in self._owners:
            try:
                if clock((~pid << 3) | _CPUCLOCK_SCHED) != clocks[pid]:
                    return True
            except OSError:  # gone
                return True
        return False

    def _refresh_slice(self) -> bool:
        """Read the next slice of service processes again; whether any of them changed."""
        owned = list(self._owners)
        if not owned or self.refresh_every <= 0:
            return False
        size = -(-len(owned) // self.refresh_every)
        start = (self._turn * size) % len(owned)
        self._turn += 1
        changed = False
        proc_fd = os.open(self.proc, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for pid in owned[start : start + size]:
                stat = _read_stat(proc_fd, pid)
                self.stats_read += 1
                if stat != self._table.get(pid):
                    self._clocks[pid] = None  # read it again in the rescan
                    changed = True
        finally:
            os.close(proc_fd)
        return changed

    def _rescan(self, *, everything: bool) -> None:
        table, clocks, fds = self._table, self._clocks, self._fds
        proc_fd = os.open(self.proc, os.O_RDONLY | os.O_DIRECTORY)
        try:
            pids = _pids(proc_fd)
            present = set(pids)
            gone = [pid for pid in table if pid not in present]
            for pid in gone:
                del table[pid]
                clocks.pop(pid, None)
                fds.pop(pid, None)
            read: set[int] = set()
            for pid in pids:
                clock = process_cpu_ns(pid) if self._clocks_tell else None
                if everything or clock is None or pid not in table or clock != clocks.get(pid):
                    self._read(proc_fd, pid, clock)
                    read.add(pid)
            # One that ran may have exited: its children were reparented without running.
            moved = read.union(gone)
            for pid in [pid for pid, stat in table.items() if stat.ppid in moved]:
                if pid not in read:
                    self._read(proc_fd, pid, process_cpu_ns(pid) if self._clocks_tell else None)
        finally:
            os.close(proc_fd)
        assert self._leaders is not None
        self._owners = owners(table, self._leaders)
        for pid in [pid for pid in fds if pid not in self._owners]:
            del fds[pid]
        for pid in self._owners:
            if pid not in fds:
                fds[pid] = _count_fds(self.proc, pid)
        self._figures = self._sum()

    def _read(self, proc_fd: int, pid: int, clock: int | None) -> None:
        """Read ``pid``'s stat again (``clock``: its CPU clock, read just before)."""
        stat = _read_stat(proc_fd, pid)
        self.stats_read += 1
        self._fds.pop(pid, None)  # counted again if it is a service's
        if stat is None:
            self._table.pop(pid, None)
            self._clocks.pop(pid, None)
        else:
            self._table[pid] = stat
            self._clocks[pid] = clock

    def _sum(self) -> dict[str, ServiceFigures]:
        assert self._leaders is not None
        sums: dict[str, list[Any]] = {name: [0, 0, 0, 0, 0] for name in self._leaders.values()}
        for pid, name in self._owners.items():
            stat = self._table[pid]
            entry = sums[name]
            entry[0] += stat.cpu_ticks
            entry[1] += stat.rss_pages
            entry[2] += stat.threads
            fds = self._fds[pid]
            entry[3] = None if fds is None or entry[3] is None else entry[3] + fds
            entry[4] += 1
        return {
            name: ServiceFigures(
                cpu_seconds=ticks / _CLOCK_TICKS,
                memory_bytes=pages * _PAGE_SIZE,
                threads=threads,
                open_fds=fds,
                processes=count,
            )
            for name, (ticks, pages, threads, fds, count) in sums.items()
        }


def service_figures(
    leaders: Mapping[int, str], *, proc: str = "/proc"
) -> dict[str, ServiceFigures]:
    """Each service's figures now, from its leader's pid (blocking; every process read)."""
    return ProcessSampler(proc).sample(leaders)


@attrs.frozen
class SampleNow:
    """Take a sample at once and answer with the board's snapshot (tests, operators)."""

    reply: Reply[dict[str, Any]]


class ResourceBoard:
    """The last figures, and which thresholds are crossed. Read by /status and /metrics."""

    def __init__(
        self,
        *,
        memory_limits: Mapping[str, int | None] | None = None,
        cpu_limits: Mapping[str, float | None] | None = None,
        memory_threshold: float = 0.8,
        cpu_threshold: float = 0.8,
    ) -> None:
        self.memory_limits = dict(memory_limits or {})
        self.cpu_limits = dict(cpu_limits or {})
        self.memory_threshold = memory_threshold
        self.cpu_threshold = cpu_threshold
        self.services: dict[str, ServiceFigures] = {}
        self.cpu_usage: dict[str, float] = {}  # cores used over the last interval
        self.container = ContainerFigures()
        self.container_cpu_usage: float | None = None
        self.oom_kills: dict[str, int] = {}
        self.sampled_at: float | None = None  # wall time
        self._above: dict[tuple[str | None, str], bool] = {}
        self._last: tuple[float, dict[str, ServiceFigures], ContainerFigures] | None = None

    def set_limits(self, memory: Mapping[str, int | None], cpu: Mapping[str, float | None]) -> None:
        self.memory_limits, self.cpu_limits = dict(memory), dict(cpu)

    def count_oom_kill(self, service: str) -> None:
        self.oom_kills[service] = self.oom_kills.get(service, 0) + 1

    def update(
        self,
        now: float,
        wall: float,
        services: Mapping[str, ServiceFigures],
        container: ContainerFigures,
    ) -> list[Event]:
        """Take in one sample; the events it gives rise to."""
        events: list[Event] = []
        previous = self._last
        self.services = dict(services)
        self.container = container
        self.sampled_at = wall
        if previous is not None and now > previous[0]:
            elapsed = now - previous[0]
            self.cpu_usage = {
                name: max(0.0, figures.cpu_seconds - previous[1][name].cpu_seconds) / elapsed
                for name, figures in services.items()
                if name in previous[1]
            }
            before = previous[2]
            if container.cpu_seconds is not None and before.cpu_seconds is not None:
                self.container_cpu_usage = (
                    max(0.0, container.cpu_seconds - before.cpu_seconds) / elapsed
                )
            events += self._container_changes(before, container)
        self._last = (now, dict(services), container)
        events += self._thresholds()
        return events

    def _container_changes(self, before: ContainerFigures, now: ContainerFigures) -> list[Event]:
        events: list[Event] = []
        if now.throttled_periods is not None and before.throttled_periods is not None:
            periods = now.throttled_periods - before.throttled_periods
            if periods > 0:
                seconds = (now.throttled_seconds or 0.0) - (before.throttled_seconds or 0.0)
                events.append(ContainerCpuThrottled(periods=periods, seconds=round(seconds, 6)))
        if now.oom_kills is not None and before.oom_kills is not None:
            for _ in range(max(0, now.oom_kills - before.oom_kills)):
                events.append(OomKilled(scope="container", service=None))
        return events

    def _fractions(self) -> Iterable[tuple[str | None, Resource, float | None, float]]:
        # Once a sample: glibc reads /sys for it (a file a call, 1,000 calls with 1,000 services).
        all_cores = os.cpu_count() or 1
        for name, figures in self.services.items():
            limit = self.memory_limits.get(name)
            yield (
                name,
                "memory",
                figures.memory_bytes / limit if limit else None,
                self.memory_threshold,
            )
            cores = self.cpu_limits.get(name) or all_cores
            usage = self.cpu_usage.get(name)
            yield name, "cpu", None if usage is None else usage / cores, self.cpu_threshold
        c = self.container
        memory = (
            c.memory_bytes / c.memory_limit_bytes
            if c.memory_bytes is not None and c.memory_limit_bytes
            else None
        )
        yield None, "memory", memory, self.memory_threshold
        cores = c.cpu_limit_cores or all_cores
        usage = self.container_cpu_usage
        yield None, "cpu", None if usage is None else usage / cores, self.cpu_threshold

    def _thresholds(self) -> list[Event]:
        events: list[Event] = []
        for service, resource, value, threshold in self._fractions():
            if value is None:
                continue
            key = (service, resource)
            above = value >= threshold
            if above == self._above.get(key, False):
                continue
            self._above[key] = above
            kind = ResourceThresholdCrossed if above else ResourceThresholdCleared
            events.append(
                kind(
                    scope="container" if service is None else "service",
                    service=service,
                    resource=resource,
                    value=round(value, 4),
                    threshold=threshold,
                )
            )
        live = set(self.services)
        self._above = {k: v for k, v in self._above.items() if k[0] is None or k[0] in live}
        return events

    def service_snapshot(self, name: str) -> dict[str, Any]:
        figures = self.services.get(name)
        return {
            "cpuSeconds": None if figures is None else round(figures.cpu_seconds, 3),
            "cpuUsage": None if name not in self.cpu_usage else round(self.cpu_usage[name], 4),
            "memoryBytes": None if figures is None else figures.memory_bytes,
            "memoryLimitBytes": self.memory_limits.get(name),
            "cpuLimitCores": self.cpu_limits.get(name),
            "threads": None if figures is None else figures.threads,
            "openFds": None if figures is None else figures.open_fds,
            "processes": None if figures is None else figures.processes,
            "oomKills": self.oom_kills.get(name, 0),
        }

    def snapshot(self) -> dict[str, Any]:
        c = self.container
        return {
            "sampledAt": self.sampled_at,
            "services": {
                name: self.service_snapshot(name)
                for name in sorted({*self.services, *self.oom_kills, *self.memory_limits})
            },
            "container": {
                "memoryBytes": c.memory_bytes,
                "memoryLimitBytes": c.memory_limit_bytes,
                "cpuSeconds": c.cpu_seconds,
                "cpuUsage": None
                if self.container_cpu_usage is None
                else round(self.container_cpu_usage, 4),
                "cpuLimitCores": c.cpu_limit_cores,
                "throttledPeriods": c.throttled_periods,
                "throttledSeconds": c.throttled_seconds,
                "oomKills": c.oom_kills,
            },
        }


_T = TypeVar("_T")


class _OwnThread:
    """One worker thread kept for the sampler's life.

    ``trio.to_thread`` lets an idle worker go after 10 s, the default interval: each sample paid
    for a new thread (its stack, its start-up hand-offs: about 4 context switches, most of an idle
    dev8's). ``run`` waits for the call even when cancelled, as ``trio.to_thread.run_sync`` does.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        threading.Thread(target=self._work, name=name, daemon=True).start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    async def run(self, function: Callable[..., _T], *args: Any) -> _T:
        token = trio.lowlevel.current_trio_token()
        task = trio.lowlevel.current_task()

        def job() -> None:
            result = outcome.capture(function, *args)
            with contextlib.suppress(trio.RunFinishedError):  # nobody left to tell
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        self._jobs.put(job)
        value: _T = await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
        return value

    def close(self) -> None:
        self._jobs.put(None)


def _sample(
    sampler: ProcessSampler, leaders: Mapping[int, str], cgroup: CgroupFiles
) -> tuple[dict[str, ServiceFigures], ContainerFigures]:
    return sampler.sample(leaders), cgroup.container()


async def run_sampler(
    ctx: ChildContext,
    board: ResourceBoard,
    mailbox: Mailbox[SampleNow],
    *,
    leaders: Callable[[], Mapping[int, str]],
    cgroup: CgroupFiles,
    interval: float = 10.0,
    proc: str = "/proc",
    wall_clock: Callable[[], float] | None = None,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Sample every ``interval`` seconds (and at each ``SampleNow``); started after the first."""
    wall = wall_clock or time.time
    pending: list[SampleNow] = []
    started = False
    sampler = ProcessSampler(proc)
    worker = _OwnThread("dev8-resources")
    try:
        while True:
            pids = dict(leaders())
            services, container = await worker.run(_sample, sampler, pids, cgroup)
            for event in board.update(trio.current_time(), wall(), services, container):
                ctx.publish(event)
            if pending:
                snapshot = board.snapshot()
                for request in pending:
                    request.reply.send(snapshot)
            if not started:
                started = True
                task_status.started()
            pending = []
            with trio.move_on_after(interval):
                pending.append(await mailbox.receive())
            while True:  # every request waiting now is answered by the one next sample
                try:
                    pending.append(mailbox.receive_nowait())
                except trio.WouldBlock:
                    break
    finally:
        worker.close()


def make_sampler_spec(
    board: ResourceBoard,
    mailbox: Mailbox[SampleNow],
    *,
    leaders: Callable[[], Mapping[int, str]],
    cgroup: CgroupFiles,
    interval: float = 10.0,
    name: str = "resources",
) -> ChildSpec:
    """The sampler actor, to run under any supervisor."""

    async def start(ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
        await run_sampler(
            ctx,
            board,
            mailbox,
            leaders=leaders,
            cgroup=cgroup,
            interval=interval,
            task_status=task_status,
        )

    return ChildSpec(name=name, start=start, restart=Restart.PERMANENT, shutdown_timeout=1.0)
