"""The managed-process actor (``ProcessActor``) and one life of its process (``run_process``).

The actor is the address of a service (``dev8/services/<name>`` in the registry): operators,
probes and secret changes act on the service only by messages to it (``Status``, ``Stop``,
``Start``, ``Restart``, ``Signal``, ``Tail``). It owns the service's output, the operator's
stop (``held``) and its live process (the only one that signals it); the life cycle itself
(starting, running, backoff, ...) stays with the ``services`` supervisor, whose child runs one
life of the process per incarnation and is the one writer of the state and its events.

One life: spawn in a new session (so the process group can be signalled as a whole), as the
configured user, with output captured line by line; exit code 0 is a normal end, anything else
raises ``ProcessExited`` so the supervisor sees an abnormal exit. Stopping is a ladder: the stop
signal (then SIGCONT) to the group, ``stop_timeout`` for the whole group to comply, then SIGKILL
to it.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import math
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import attrs
import structlog
import trio

from actors import (
    NO_REPLY,
    Actor,
    ChildContext,
    ChildGaveUp,
    ChildStarted,
    ChildState,
    Envelope,
    EventBus,
    MailboxFull,
    NodeStatus,
    Refuse,
    Registry,
    Reply,
    RestartScheduled,
    Supervisor,
    UnknownChild,
)
from actors import Restart as RestartPolicy
from dev8.pid1.reaper import OwnPids
from dev8.resources.cgroups import Hierarchy, ServiceCgroup
from dev8.resources.sampler import OomKilled
from dev8.services.preflight import CommandProblem, Who, resolve_command

#: The logger of the services' output lines (dev8's own lines use "dev8.services.process").
SERVICE_OUTPUT_LOGGER = "dev8.output"
_MAX_LINE = 16 * 1024
#: How much of a failed run's output its exit carries (``lastOutput``).
LAST_OUTPUT_LINES = 5
LAST_OUTPUT_CHARS = 500
_DRAIN_AFTER_EXIT = 0.5
_GROUP_POLL_INTERVAL = 0.02
#: dev8's own environment that no service may inherit: its settings, and every credential the
#: Azure SDK (azure-identity, MSAL) reads. With ``IDENTITY_ENDPOINT``/``IDENTITY_HEADER`` (App
#: Service, Container Apps), ``MSI_*`` (older App Service, Cloud Shell), ``IMDS_ENDPOINT`` (Arc)
#: or a federated token file, a service could mint dev8's own Key Vault tokens.
_STRIPPED_PREFIXES = ("DEV8_", "AZURE_", "IDENTITY_", "MSI_", "IMDS_", "MSAL_")
_STRIPPED_NAMES = frozenset(
    {"SYSTEM_OIDCREQUESTURI", "SYSTEM_ACCESSTOKEN", "AZUREPS_HOST_ENVIRONMENT", "REGION_NAME"}
)


class ProcessExited(Exception):
    """The process ended on its own with a failure. ``details`` feeds the exit events.

    ``last_output``: its last lines, so a service that fails at once (and ends ``fatal``) shows
    why in ``/status`` and in the log without reading its raw output.
    """

    def __init__(
        self, returncode: int, last_output: Sequence[str] = (), *, oom: bool = False
    ) -> None:
        #: The exit's reason for the supervisor (``child_exited``, /status): ``oom`` when the
        #: kernel's OOM killer sent the SIGKILL.
        self.exit_reason = "oom" if oom else "error"
        if returncode < 0:
            name = _signal_name(-returncode)
            message = "killed by the OOM killer (SIGKILL)" if oom else f"killed by {name}"
            self.details: dict[str, Any] = {"signal": name, "exit_code": None}
        else:
            message = f"exited with code {returncode}"
            self.details = {"exit_code": returncode, "signal": None}
        if last_output:
            self.details["lastOutput"] = list(last_output)
        super().__init__(message)
        self.returncode = returncode


class SpawnError(Exception):
    """The process could not be started (no such command, no such user, ...)."""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@attrs.frozen(kw_only=True)
class Limits:
    """What the service may use (see ``limits:`` in docs/configuration.md) and its OOM score."""

    memory: int | None = None
    nofile: int | None = None
    nproc: int | None = None
    cpu: float | None = None
    oom_score_adj: int | None = None
    #: dev8's cgroup, where the service's sub-group goes; None: rlimits only.
    hierarchy: Hierarchy | None = None
    #: The group, under dev8's, that holds the services' sub-groups (one per run of dev8).
    cgroup_parent: str | None = None
    #: The container's OOM kills so far (a SIGKILL while it grows is the OOM killer's).
    container_oom_kills: Callable[[], int | None] | None = None


@attrs.frozen(kw_only=True)
class ProcessSettings:
    """Everything needed to run one service's process."""

    command: Sequence[str]
    env: Mapping[str, str] = attrs.field(factory=dict)
    cwd: str | None = None
    user: str | None = None
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout: float = 10.0
    limits: Limits = attrs.field(factory=Limits)


def _limits_prefix(limits: Limits, *, in_cgroup: bool) -> list[str]:
    """``prlimit`` and ``choom`` (util-linux) before the command: each sets its own limits or
    score and execs the next, so the spawn stays a vfork. The memory limit is an address-space
    rlimit only without a sub-group: it counts virtual memory (a JIT reserves gigabytes it never
    touches) and turns an OOM kill into a failed allocation."""
    prefix: list[str] = []
    options = [
        f"--{name}={value}"
        for name, value in (
            ("as", None if in_cgroup else limits.memory),
            ("nofile", limits.nofile),
            ("nproc", limits.nproc),
        )
        if value is not None
    ]
    prlimit = shutil.which("prlimit")
    if options and prlimit is not None:
        prefix += [prlimit, *options, "--"]
    choom = shutil.which("choom")
    score, own = limits.oom_score_adj, _own_oom_score_adj()
    if score is not None and own is not None and score < own and not may_lower_oom_score():
        score = None  # would fail the start (EACCES): the service keeps dev8's score
    if score is not None and choom is not None and score != own:
        prefix += [choom, "-n", str(limits.oom_score_adj), "--"]
    return prefix


#: The capability that lowering an OOM score takes (linux/capability.h).
_CAP_SYS_RESOURCE = 24


def may_lower_oom_score(status: str = "/proc/self/status") -> bool:
    """Whether this process may lower OOM scores: CAP_SYS_RESOURCE, which root lacks in some
    sandboxes (and in containers that drop it)."""
    try:
        with open(status, encoding="ascii") as handle:
            for line in handle:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_SYS_RESOURCE & 1)
    except (OSError, ValueError):
        pass
    return False


def _own_oom_score_adj() -> int | None:
    try:
        with open("/proc/self/oom_score_adj", encoding="ascii") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return None


class OutputRing:
    """The last lines a service printed, for ``/services/{name}/logs``."""

    def __init__(self, size: int = 1000) -> None:
        self._lines: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)
        self._seq = 0

    def append(self, stream: str, line: str) -> None:
        self._seq += 1
        self._lines.append({"seq": self._seq, "stream": stream, "line": line})

    @property
    def last_seq(self) -> int:
        """The number of the last line appended (0: none yet)."""
        return self._seq

    def tail(self, count: int, *, since: int = 0) -> list[dict[str, Any]]:
        """The last ``count`` lines numbered above ``since`` (for ``logs -f``), oldest first."""
        if count <= 0:
            return []
        return [entry for entry in self._lines if entry["seq"] > since][-count:]


@attrs.frozen
class _Identity:
    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str
    home: str
    shell: str


def _identity(user: str | None) -> _Identity | None:
    """Who to run as; None means 'as dev8 itself'. Never falls back to root silently."""
    if user is None:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise SpawnError(f"user {user!r} does not exist") from None
    if os.geteuid() != 0:
        if entry.pw_uid == os.geteuid():
            return None
        raise SpawnError(f"cannot run as {user!r}: dev8 is not running as root")
    groups = tuple(os.getgrouplist(user, entry.pw_gid))
    return _Identity(
        entry.pw_uid, entry.pw_gid, groups, entry.pw_name, entry.pw_dir, entry.pw_shell
    )


def _become(identity: _Identity | None) -> tuple[list[str], dict[str, Any]]:
    """How the child takes on ``identity``: an argv prefix, or ``Popen`` options.

    Given ``user``/``group``/``extra_groups``, CPython forks rather than vforks, copying all of
    dev8's page tables: 10-15 ms per spawn on a 2-core VM, against 1-3 ms. ``setpriv`` (util-linux)
    switches identity after a vfork+exec instead, as ``Popen`` would (groups, then gid, then uid;
    real, effective and saved ids alike); without it, the slow path.
    """
    if identity is None:
        return [], {}
    same_ids = os.getresuid() == (identity.uid,) * 3 and os.getresgid() == (identity.gid,) * 3
    if same_ids and set(os.getgroups()) | {identity.gid} == set(identity.groups) | {identity.gid}:
        return [], {}  # already that identity: nothing to switch
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return [], {"user": identity.uid, "group": identity.gid, "extra_groups": identity.groups}
    groups = ",".join(str(gid) for gid in identity.groups)  # getgrouplist: never empty
    return [
        setpriv,
        f"--reuid={identity.uid}",
        f"--regid={identity.gid}",
        f"--groups={groups}",
        "--",
    ], {}


_ROOT = Who("root", 0, frozenset({0}))


def _resolve_program(
    program: str, env: Mapping[str, str], cwd: str | None, identity: _Identity | None
) -> str:
    """The full path of the program the user would run, or ``SpawnError`` as ``Popen`` raises.

    Behind ``setpriv`` a missing program is only an exit 127; and setpriv searches the PATH with
    root's permissions, so it could pick a file the user may not run (exit 126) before one they
    may. Searched as the user, in the child's PATH and relative to its working directory; the
    full path is given only when setpriv's own search would find another file. Behind only
    ``prlimit``/``choom`` (``identity`` None: as dev8 itself), the same search tells a missing or
    non-executable program apart from the program's own exit 126/127.
    """
    if cwd is not None and not os.path.isdir(cwd):
        return program  # Popen reports the working directory itself
    if identity is None:
        own = os.geteuid()
        who = Who(str(own), own, frozenset((os.getegid(), *os.getgroups())))
        searcher = who
    else:
        who = Who(identity.name, identity.uid, frozenset((identity.gid, *identity.groups)))
        searcher = _ROOT
    path = env.get("PATH", os.defpath)
    base = cwd if cwd is not None else os.getcwd()
    try:
        resolved = resolve_command(program, path, base, who)
    except CommandProblem as problem:
        reason = os.strerror(problem.errno)
        raise SpawnError(f"cannot start {program!r}: {reason}") from None
    # The same file as setpriv would find: keep the argv as written (argv[0] unchanged).
    return program if resolve_command(program, path, base, searcher) == resolved else resolved


def _environment(settings: ProcessSettings, identity: _Identity | None) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_STRIPPED_PREFIXES) and key not in _STRIPPED_NAMES
    }
    if identity is not None:
        env.update(
            HOME=identity.home, USER=identity.name, LOGNAME=identity.name, SHELL=identity.shell
        )
    env.update(settings.env)
    return env


async def run_process(
    ctx: ChildContext,
    settings: ProcessSettings,
    *,
    own: OwnPids,
    output: OutputRing | None = None,
    live: LiveProcess | None = None,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the process once; report started with its pid; return on exit 0, raise otherwise.

    ``live``: where the process actor finds the process while it runs (to signal it)."""
    log = structlog.get_logger("dev8.services.process").bind(service=ctx.name)
    identity = _identity(settings.user)
    env = _environment(settings, identity)
    limits = settings.limits
    cgroup = await _open_cgroup(ctx.name, limits)
    try:
        prefix, options = _become(identity)
        prefix = [*_limits_prefix(limits, in_cgroup=cgroup is not None), *prefix]
        command = list(settings.command)
        if prefix:
            command[0] = _resolve_program(command[0], env, settings.cwd, identity)
        del env  # built again for the spawn, then dropped (see there)
        await _run_limited(
            ctx, settings, prefix, command, options, own=own, output=output, cgroup=cgroup,
            log=log, identity=identity, live=live, task_status=task_status,
        )  # fmt: skip
    finally:
        if cgroup is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(cgroup.remove)


async def _open_cgroup(service: str, limits: Limits) -> ServiceCgroup | None:
    """The service's own sub-group, when it has limits to enforce and dev8 may make one."""
    if limits.hierarchy is None or (limits.memory is None and limits.cpu is None):
        return None
    return await trio.to_thread.run_sync(
        functools.partial(
            ServiceCgroup.create,
            limits.hierarchy,
            service,
            memory=limits.memory,
            cpu=limits.cpu,
            parent=limits.cgroup_parent,
        )
    )


def _oom_count(limits: Limits, cgroup: ServiceCgroup | None) -> int | None:
    if cgroup is not None:
        return cgroup.oom_kills()
    return limits.container_oom_kills() if limits.container_oom_kills is not None else None


async def _run_limited(
    ctx: ChildContext,
    settings: ProcessSettings,
    prefix: list[str],
    command: list[str],
    options: dict[str, Any],
    *,
    own: OwnPids,
    output: OutputRing | None,
    cgroup: ServiceCgroup | None,
    log: Any,
    identity: _Identity | None,
    live: LiveProcess | None,
    task_status: trio.TaskStatus[Any],
) -> None:
    ooms_before = _oom_count(settings.limits, cgroup)
    env = _environment(settings, identity)
    try:
        with own.spawning():
            process = await trio.lowlevel.open_process(
                [*prefix, *command],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                env=env,
                cwd=settings.cwd,
                **options,
            )
            own.add(process.pid)
            if cgroup is not None:
                try:
                    cgroup.add(process.pid)  # a write to cgroupfs: it does not block
                except OSError as error:
                    log.warning("cgroup_join_failed", pid=process.pid, error=error.strerror)
    except OSError as error:
        if settings.cwd is not None and error.filename == settings.cwd:
            raise SpawnError(
                f"cannot start {settings.command[0]!r} in {settings.cwd!r}: {error.strerror}"
            ) from None
        raise SpawnError(f"cannot start {settings.command[0]!r}: {error.strerror}") from None
    first_seq = output.last_seq if output is not None else 0
    # The environment (dev8's, copied) would stay alive as long as the process runs: about
    # 5 KB for each of a thousand services.
    del env
    if live is not None:
        live.process = process
    try:
        ctx.info.update(pid=process.pid, user=identity.name if identity else None)
        returncode = await _supervise(
            ctx, process, settings, log=log, output=output, task_status=task_status
        )
    finally:
        if live is not None and live.process is process:
            live.process = None
        own.discard(process.pid)
        with contextlib.suppress(OSError):
            _close_pipes(process)
    ctx.info["exit_code"] = returncode
    if returncode != 0:
        lines = [] if output is None else output.tail(LAST_OUTPUT_LINES, since=first_seq)
        oom = False
        if returncode == -signal.SIGKILL and ooms_before is not None:
            ooms_after = await trio.to_thread.run_sync(_oom_count, settings.limits, cgroup)
            oom = ooms_after is not None and ooms_after > ooms_before
            if oom:
                ctx.publish(OomKilled(scope="service", service=ctx.name))
        raise ProcessExited(
            returncode, [entry["line"][:LAST_OUTPUT_CHARS] for entry in lines], oom=oom
        )


async def _supervise(
    ctx: ChildContext,
    process: trio.Process,
    settings: ProcessSettings,
    *,
    log: Any,
    output: OutputRing | None,
    task_status: trio.TaskStatus[Any],
) -> int:
    try:
        async with trio.open_nursery() as nursery:
            # The service's own lines: the first a stalled stdout drops (dev8.monitoring.logs).
            output_log = structlog.get_logger(SERVICE_OUTPUT_LOGGER).bind(service=ctx.name)
            for stream, name in ((process.stdout, "stdout"), (process.stderr, "stderr")):
                if stream is not None:
                    nursery.start_soon(_pump, stream, name, output_log, output)
            task_status.started({"pid": process.pid})
            returncode = await process.wait()
            # Output still in the pipes is drained; a grandchild holding them open is not waited.
            nursery.cancel_scope.deadline = trio.current_time() + _DRAIN_AFTER_EXIT
    finally:
        if process.returncode is None:  # being stopped (cancelled), or failing ourselves
            with ctx.cleanup_scope():
                await _stop(process, settings, log)
    # What is left of the process group (orphaned helpers) goes with its leader, by the same
    # ladder: one that ignores SIGTERM must not outlive it (and pile up at every restart).
    with ctx.cleanup_scope():
        await _clear_group(process.pid, settings, log)
    return returncode


async def _stop(process: trio.Process, settings: ProcessSettings, log: Any) -> None:
    """The stop ladder, for the whole group: the stop signal (and SIGCONT, so a stopped process
    can act on it), up to ``stop_timeout`` for the leader *and* its helpers to end, then SIGKILL
    to whatever is left of the group."""
    pgid = process.pid
    if process.returncode is None:
        _ask_group_to_stop(pgid, settings.stop_signal)
        with trio.move_on_after(settings.stop_timeout):
            await process.wait()
            await _wait_group_gone(pgid)
        if process.returncode is None or _signal_group(pgid, 0):
            log.warning("stop_timeout_kill", pid=pgid, stop_timeout=settings.stop_timeout)
    _signal_group(pgid, signal.SIGKILL)
    await process.wait()


async def _clear_group(pgid: int, settings: ProcessSettings, log: Any) -> None:
    """SIGTERM (and SIGCONT) to what is left of the group, ``stop_timeout`` to go, then SIGKILL."""
    if not _ask_group_to_stop(pgid, signal.SIGTERM):
        return  # nobody left: the usual case
    with trio.move_on_after(settings.stop_timeout):
        await _wait_group_gone(pgid)
        return
    log.warning("leftovers_killed", pgid=pgid, stop_timeout=settings.stop_timeout)
    _signal_group(pgid, signal.SIGKILL)


def _ask_group_to_stop(pgid: int, sig: int) -> bool:
    """`sig`, then SIGCONT: a stopped (state T) process would otherwise never see `sig`."""
    if not _signal_group(pgid, sig):
        return False
    if sig not in (signal.SIGKILL, signal.SIGCONT):
        _signal_group(pgid, signal.SIGCONT)
    return True


async def _wait_group_gone(pgid: int) -> None:
    """Until nobody is left in the group (zombies count until the reaper collects them)."""
    # Helpers are not our children (their parent is the leader): nothing tells us when they exit.
    while _signal_group(pgid, 0):  # noqa: ASYNC110
        await trio.sleep(_GROUP_POLL_INTERVAL)


def _signal_group(pgid: int, sig: int) -> bool:
    """Signal the group; False when nobody we may signal is left in it."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _close_pipes(process: trio.Process) -> None:
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()  # type: ignore[attr-defined]


async def _pump(
    stream: trio.abc.ReceiveStream, name: str, log: Any, output: OutputRing | None
) -> None:
    """Forward output line by line; a line longer than the cap is split, never buffered forever."""
    pending = b""
    async for chunk in stream:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        # A whole line read in one chunk is capped too, not only a line still being read.
        lines = [
            raw[i : i + _MAX_LINE] for raw in complete for i in range(0, len(raw) or 1, _MAX_LINE)
        ]
        while len(pending) > _MAX_LINE:
            lines.append(pending[:_MAX_LINE])
            pending = pending[_MAX_LINE:]
        for raw in lines:
            _emit(raw, name, log, output)
    if pending:
        _emit(pending, name, log, output)


def _emit(raw: bytes, name: str, log: Any, output: OutputRing | None) -> None:
    line = raw.decode("utf-8", errors="replace").rstrip("\r")
    log.info(line, stream=name)
    if output is not None:
        output.append(name, line)


# -- the process actor ------------------------------------------------------------------------


class LiveProcess:
    """The process of the current life, while it runs: written by ``run_process`` only."""

    def __init__(self) -> None:
        self.process: trio.Process | None = None

    @property
    def pid(self) -> int | None:
        process = self.process
        return process.pid if process is not None and process.returncode is None else None


class NotRunning(Exception):
    """The target exists but has nothing to hit right now (backoff, stopped, no process)."""

    def __init__(self, target: str, state: str) -> None:
        super().__init__(f"{target} is {state}, not running")
        self.target = target
        self.state = state


@attrs.frozen
class Status:
    """Ask for a ``ProcessStatus``."""


@attrs.frozen
class Stop:
    """Stop the service and keep it stopped until a ``Start`` (or an operator's ``Restart``).

    Answered with its ``NodeStatus`` once stopped (never ``exited`` with a restart pending)."""


@attrs.frozen
class Start:
    """Start a stopped (or fatal) service; answered with its ``NodeStatus`` once settled."""


@attrs.frozen
class Restart:
    """Restart the service; answered with its ``NodeStatus`` once the new life settled.

    ``reason`` ``manual`` is an operator's: planned (never counted toward the intensity or the
    backoff) and it ends a stop. Any other reason (``probe``, ``secret``) leaves a stopped
    service alone; ``planned`` defaults to ``reason == "manual"``."""

    reason: str = "manual"
    planned: bool | None = None


@attrs.frozen
class Signal:
    """Send ``sig`` to the running process's group; answered with the group's id (its pid)."""

    sig: signal.Signals


@attrs.frozen
class Tail:
    """The last ``lines`` lines of output numbered above ``since``, oldest first."""

    lines: int
    since: int = 0


@attrs.frozen(kw_only=True)
class ProcessStatus:
    """The answer to ``Status``."""

    service: str
    state: ChildState
    pid: int | None
    held: bool
    restarts: int
    #: The number of the last output line (``Tail``'s ``since`` for what comes next).
    last_seq: int


#: How long a stop may take: the service's whole stop ladder, and a start of it under way.
STOP_CALL_TIMEOUT: Final = 300.0
#: How long a start or a restart may take (the supervisor answers once it settled).
START_CALL_TIMEOUT: Final = 300.0
#: What a supervisor publishes once it has decided what follows a child's exit.
_DECIDED = frozenset({RestartScheduled.kind, ChildGaveUp.kind, ChildStarted.kind})
#: The longest a stop waits for the supervisor to decide what follows an exit it was too late
#: for (a restart in backoff, say).
_DECISION_TIMEOUT = 120.0
#: How many times a stop tries again when it lands on an exit whose restart is still pending.
_STOP_ATTEMPTS = 10


def restart_pending(node: NodeStatus, policy: RestartPolicy | None) -> bool:
    """The child has exited and its supervisor has yet to restart it (``exited`` is not final)."""
    if node.state is not ChildState.EXITED or policy is None:
        return False
    if policy is RestartPolicy.PERMANENT:
        return True
    abnormal = node.last_exit is not None and node.last_exit.abnormal
    return policy is RestartPolicy.TRANSIENT and abnormal


def actor_child(name: str) -> str:
    """The process actor's name as a child of ``process-actors``: never a service's name (``.``
    is not allowed in one), so its own life events (``child_started``, ...) are never taken for
    the service's, which are keyed by the child's name too."""
    return f"{name}.actor"


def actor_path(services_path: str, name: str) -> str:
    """The address of a service's process actor: its life's place in the tree,
    ``dev8/services/web`` (the events about the service come from there too)."""
    return f"{services_path}/{name}"


class ProcessActor(Actor):
    """A service's address. It outlives the lives of its process and its own restarts (its
    output, its operator's stop and its live process are kept on the object).

    Reads (``Status``, ``Tail``, ``Signal``) are answered at once; life-cycle requests
    (``Stop``, ``Start``, ``Restart``) are handed to the ``services`` supervisor one after
    another by a helper task and answered once done, so a 10 s stop never makes the actor busy.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        name: str,
        path: str,
        services: Supervisor,
        bus: EventBus,
        output: OutputRing | None = None,
        policy: RestartPolicy | None = None,
    ) -> None:
        super().__init__(registry, path)
        self.name = name
        self.services = services
        self.bus = bus
        self.output = output
        #: The service's restart policy (tells a final ``exited`` from one with a restart due).
        self.policy = policy
        self.live = LiveProcess()
        self._held = False
        #: The request that last set or cleared ``held`` (a stop that fails is undone only if
        #: nothing asked otherwise since).
        self._held_by: Reply[Any] | None = None
        self._requests: trio.MemorySendChannel[tuple[Any, Reply[Any]]] | None = None

    @property
    def held(self) -> bool:
        """Stopped by an operator: nothing starts it again but a ``Start`` or a manual restart."""
        return self._held

    # -- the behaviour ---------------------------------------------------------------------------

    async def init(self) -> None:
        send, receive = trio.open_memory_channel[tuple[Any, Reply[Any]]](math.inf)
        self._requests = send
        self.start_soon(self._run_requests, receive)

    async def handle_call(self, message: Any, reply: Reply[Any]) -> Any:
        if isinstance(message, Status):
            return self._status()
        if isinstance(message, Tail):
            return (
                [] if self.output is None else self.output.tail(message.lines, since=message.since)
            )
        if isinstance(message, Signal):
            return self._signal(message.sig)
        if not isinstance(message, Stop | Start | Restart):
            return await super().handle_call(message, reply)
        if isinstance(message, Restart) and message.reason != "manual" and self._held:
            return self._node()  # stopped on purpose: a probe's or a secret's restart waits
        self._queue(message, reply)
        if isinstance(message, Stop):
            self._held, self._held_by = True, reply  # from now on nothing starts it again
        elif isinstance(message, Start) or message.reason == "manual":
            self._held, self._held_by = False, reply
        return NO_REPLY

    # -- reads -----------------------------------------------------------------------------------

    def _node(self) -> NodeStatus:
        for node in self.services.children():
            if node.name == self.name:
                return node
        raise Refuse(UnknownChild(self.name, [n.name for n in self.services.children()]))

    def _status(self) -> ProcessStatus:
        node = self._node()
        return ProcessStatus(
            service=self.name,
            state=node.state,
            pid=self.live.pid if node.state in (ChildState.STARTING, ChildState.RUNNING) else None,
            held=self._held,
            restarts=node.restarts,
            last_seq=self.output.last_seq if self.output is not None else 0,
        )

    def _signal(self, sig: signal.Signals) -> int:
        node = self._node()
        pid = self.live.pid
        if node.state is not ChildState.RUNNING or pid is None:
            raise Refuse(NotRunning(self.name, node.state.value))
        if not _signal_group(pid, sig):
            raise Refuse(NotRunning(self.name, "gone"))
        return pid

    # -- life-cycle requests, in order, in a helper task -----------------------------------------

    def _queue(self, message: Any, reply: Reply[Any]) -> None:
        assert self._requests is not None
        if self._requests.statistics().current_buffer_used >= self.mailbox_capacity:
            raise Refuse(MailboxFull(f"{self.path} has {self.mailbox_capacity} requests queued"))
        self._requests.send_nowait((message, reply))

    async def _run_requests(
        self, requests: trio.MemoryReceiveChannel[tuple[Any, Reply[Any]]]
    ) -> None:
        async for message, reply in requests:
            try:
                reply.send(await self._carry_out(message))
            except Exception as error:  # the caller's error (unknown child, busy supervisor)
                if isinstance(message, Stop) and self._held_by is reply:
                    self._held = False  # a stop that was refused does not stick
                reply.fail(error)

    async def _carry_out(self, message: Any) -> NodeStatus:
        if isinstance(message, Stop):
            return await self._stop_and_hold()
        if isinstance(message, Start):
            return await self.services.start_child(self.name, timeout=START_CALL_TIMEOUT)
        assert isinstance(message, Restart)
        if message.reason != "manual" and self._held:
            return self._node()  # stopped while this restart waited its turn
        return await self.services.restart_child(
            self.name, reason=message.reason, planned=message.planned, timeout=START_CALL_TIMEOUT
        )

    async def _stop_and_hold(self) -> NodeStatus:
        """A stop that lands on an exit whose restart the supervisor has not yet scheduled is
        sent again once the restart is scheduled: the answer is ``stopped``, never ``exited``."""
        source = self.path  # where the supervisor's events about the service come from

        def decided(envelope: Envelope) -> bool:
            return envelope.event.source == source and envelope.event.kind in _DECIDED

        with self.bus.subscribe(accept=decided) as decisions:
            node = await self.services.stop_child(self.name, timeout=STOP_CALL_TIMEOUT)
            for _ in range(_STOP_ATTEMPTS):
                if not restart_pending(node, self.policy):
                    break
                with trio.move_on_after(_DECISION_TIMEOUT):
                    await decisions.receive()
                node = await self.services.stop_child(self.name, timeout=STOP_CALL_TIMEOUT)
        return node
