"""The supervisor: starts children in order, restarts them by strategy, and knows when to give up.

All decisions happen in one place, serialized by a lock: child exits (reported by the task that
ran the child) and commands (from the mailbox). A child runs in a shielded cancel scope of its own,
so a supervisor being stopped does not cancel all its children at once: it stops them one by one,
in reverse start order, each with its own shutdown ladder (or all at once, each with its own ladder,
with ``parallel_shutdown`` for children that do not depend on one another).
"""

from __future__ import annotations

import collections
import contextlib
import enum
import itertools
import math
import random
import time
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from ._backoff import Backoff, Intensity, RestartWindow
from ._bus import EventBus
from ._event import Event
from ._lifecycle import (
    ChildAdded,
    ChildExited,
    ChildGaveUp,
    ChildKilled,
    ChildRemoved,
    ChildStarted,
    ChildStopped,
    ChildStopping,
    RestartScheduled,
    SupervisorEscalated,
)
from ._mailbox import Mailbox, Reply
from ._spec import ChildContext, ChildSpec, ChildState, ExitInfo, NodeStatus, Restart


class Strategy(enum.Enum):
    """Which children restart when one of them fails."""

    ONE_FOR_ONE = "one_for_one"  # only the failed child
    ONE_FOR_ALL = "one_for_all"  # every child
    REST_FOR_ONE = "rest_for_one"  # the failed child and those started after it


class Escalation(Exception):
    """A supervisor gave up. ``final`` means the tree above must stop too, not restart it."""

    def __init__(self, supervisor: str, reason: str, child: str | None, *, final: bool) -> None:
        where = f" (child {child})" if child else ""
        super().__init__(f"supervisor {supervisor} gave up: {reason}{where}")
        self.supervisor = supervisor
        self.reason = reason
        self.child = child
        self.final = final


class UnknownChild(LookupError):
    def __init__(self, name: str, known: Sequence[str]) -> None:
        super().__init__(f"no child named {name!r}; known: {', '.join(known) or 'none'}")
        self.name = name
        self.known = list(known)


class ChildExists(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"a child named {name!r} already exists")
        self.name = name


# -- commands (the supervisor's mailbox) --------------------------------------------------------


@attrs.frozen(kw_only=True)
class StartChild:
    name: str
    reply: Reply[NodeStatus]


@attrs.frozen(kw_only=True)
class StopChild:
    name: str
    reply: Reply[NodeStatus]


@attrs.frozen(kw_only=True)
class RestartChild:
    name: str
    reason: str
    reply: Reply[NodeStatus]
    #: A planned restart (an operator's, a changed secret's) is not a failure: it is done at once
    #: and never counts toward the restart intensity or the backoff.
    planned: bool = False


@attrs.frozen(kw_only=True)
class AddChild:
    spec: ChildSpec
    reply: Reply[NodeStatus]


@attrs.frozen(kw_only=True)
class RemoveChild:
    name: str
    reply: Reply[None]


@attrs.frozen(kw_only=True)
class CrashChild:
    """Fault injection: the child's task fails as if it had raised (for chaos testing)."""

    name: str
    reply: Reply[NodeStatus]


Command = StartChild | StopChild | RestartChild | AddChild | RemoveChild | CrashChild


@attrs.frozen
class _Exited:
    child: _Child
    generation: int
    exit: ExitInfo


@attrs.frozen
class _RestartDue:
    token: int


_Internal = _Exited | _RestartDue


class _Child:
    """A supervisor's bookkeeping for one child, across its incarnations."""

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.state = ChildState.STOPPED
        self.since = time.time()
        self.restarts = 0
        self.reasons: collections.Counter[str] = collections.Counter()
        self.last_exit: ExitInfo | None = None
        self.info: dict[str, Any] = {}
        self.generation = 0
        self.consecutive = 0
        self.started_at: float | None = None
        self.pending: int | None = None
        self.stop_reason: str | None = None
        self.stop_deadline = math.inf
        self.fault_injected = False
        self.ctx: ChildContext | None = None
        self.scope: trio.CancelScope | None = None
        self.done: trio.Event | None = None
        self.settled: trio.Event | None = None
        self.window = RestartWindow(spec.intensity) if spec.intensity else None

    def set_state(self, state: ChildState) -> None:
        self.state = state
        self.since = time.time()


class _StartedReporter:
    """The ``task_status`` handed to a child: turns ``started()`` into the RUNNING transition."""

    def __init__(self, supervisor: Supervisor, child: _Child, generation: int) -> None:
        self._supervisor = supervisor
        self._child = child
        self._generation = generation

    def started(self, value: Any = None) -> None:
        self._supervisor._child_started(self._child, self._generation, value)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


class Supervisor:
    """An OTP-style supervisor. Run it with ``run``; control it through ``ref`` or the helpers."""

    def __init__(
        self,
        name: str,
        children: Sequence[ChildSpec] = (),
        *,
        bus: EventBus,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        intensity: Intensity = Intensity(),
        rng: random.Random | None = None,
        mailbox_capacity: int = 64,
        parallel_shutdown: bool = False,
    ) -> None:
        """``parallel_shutdown``: on shutdown stop every child at once rather than one by one in
        reverse start order (OTP's rule, for children that depend on those started before them),
        so a shutdown takes the longest child's shutdown timeout, not their sum."""
        self.name = name
        self.parallel_shutdown = parallel_shutdown
        self.strategy = strategy
        self.intensity = intensity
        self._bus = bus
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._children: dict[str, _Child] = {}
        for spec in children:
            if spec.name in self._children:
                raise ChildExists(spec.name)
            self._children[spec.name] = _Child(spec)
        self._mailbox: Mailbox[Command] = Mailbox(name, mailbox_capacity)
        self.ref = self._mailbox.ref
        self._path = name
        self._state = ChildState.STOPPED
        self._since = time.time()
        self._tokens = itertools.count(1)
        self._window = RestartWindow(intensity)
        self._nursery: trio.Nursery | None = None
        self._internal: trio.MemorySendChannel[_Internal] | None = None
        self._lock = trio.Lock()
        self._escalation: Escalation | None = None

    # -- reading -------------------------------------------------------------------------------

    @property
    def path(self) -> str:
        return self._path

    def children(self) -> tuple[NodeStatus, ...]:
        return tuple(self._status_of(child) for child in self._children.values())

    def snapshot(self) -> NodeStatus:
        return NodeStatus(
            name=self.name,
            path=self._path,
            kind="supervisor",
            state=self._state,
            restarts=0,
            restart_reasons={},
            last_exit=None,
            since=self._since,
            info={"strategy": self.strategy.value},
            children=self.children(),
        )

    def _status_of(self, child: _Child) -> NodeStatus:
        nested = child.spec.children() if child.spec.children is not None else ()
        return NodeStatus(
            name=child.spec.name,
            path=f"{self._path}/{child.spec.name}",
            kind=child.spec.kind,
            state=child.state,
            restarts=child.restarts,
            restart_reasons=dict(child.reasons),
            last_exit=child.last_exit,
            since=child.since,
            info=dict(child.info),
            children=tuple(nested),
        )

    def child_spec(
        self,
        *,
        restart: Restart = Restart.PERMANENT,
        significant: bool = False,
        shutdown_timeout: float | None = None,
        backoff: Backoff = Backoff(),
        intensity: Intensity | None = None,
    ) -> ChildSpec:
        """This supervisor as a child of another one."""
        if shutdown_timeout is None:
            # The sum even for a parallel shutdown: children added at runtime may need more than
            # the longest of today's, and a generous budget costs nothing (it is only a bound).
            shutdown_timeout = sum(c.spec.shutdown_timeout for c in self._children.values()) + 1
        return ChildSpec(
            name=self.name,
            start=self.run,
            restart=restart,
            significant=significant,
            shutdown_timeout=shutdown_timeout,
            backoff=backoff,
            intensity=intensity,
            kind="supervisor",
            children=self.children,
        )

    # -- commands --------------------------------------------------------------------------------

    async def start_child(self, name: str, *, timeout: float = 60.0) -> NodeStatus:
        return await self.ref.call(lambda r: StartChild(name=name, reply=r), timeout=timeout)

    async def stop_child(self, name: str, *, timeout: float = 60.0) -> NodeStatus:
        return await self.ref.call(lambda r: StopChild(name=name, reply=r), timeout=timeout)

    async def restart_child(
        self,
        name: str,
        *,
        reason: str = "manual",
        planned: bool | None = None,
        timeout: float = 60.0,
    ) -> NodeStatus:
        """Restart a child. ``planned`` (default: ``reason == "manual"``) restarts it at once,
        outside the intensity and the backoff; otherwise the restart counts as a failure's."""
        is_planned = reason == "manual" if planned is None else planned
        return await self.ref.call(
            lambda r: RestartChild(name=name, reason=reason, reply=r, planned=is_planned),
            timeout=timeout,
        )

    async def crash_child(self, name: str, *, timeout: float = 60.0) -> NodeStatus:
        """Make a running child fail as if it had raised; its restart policy applies."""
        return await self.ref.call(lambda r: CrashChild(name=name, reply=r), timeout=timeout)

    async def add_child(self, spec: ChildSpec, *, timeout: float = 60.0) -> NodeStatus:
        return await self.ref.call(lambda r: AddChild(spec=spec, reply=r), timeout=timeout)

    async def remove_child(self, name: str, *, timeout: float = 60.0) -> None:
        await self.ref.call(lambda r: RemoveChild(name=name, reply=r), timeout=timeout)

    # -- running ---------------------------------------------------------------------------------

    async def run(
        self,
        ctx: ChildContext | None = None,
        *,
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Start the children in order, report started, then supervise until stopped or failed."""
        self._path = ctx.path if ctx is not None else self.name
        self._escalation = None
        self._window.clear()
        internal_send, internal_receive = trio.open_memory_channel[_Internal](math.inf)
        self._internal = internal_send
        self._set_state(ChildState.STARTING)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                for child in list(self._children.values()):
                    if child.window is not None:
                        child.window.clear()
                    child.consecutive = 0
                    child.pending = None
                    await self._start(child)
                self._set_state(ChildState.RUNNING)
                task_status.started()
                nursery.start_soon(self._serve_commands)
                async for message in internal_receive:
                    await self._handle(self._on_internal, message)
            finally:
                self._set_state(ChildState.STOPPING)
                if ctx is not None:
                    with ctx.cleanup_scope():
                        await self._stop_all()
                else:
                    with trio.CancelScope(shield=True):
                        await self._stop_all()
                # If our own cleanup was cut short (we were killed hard), so are the children's:
                # nothing may keep this nursery open.
                for child in self._children.values():
                    if child.done is not None and not child.done.is_set():
                        assert child.scope is not None
                        assert child.ctx is not None
                        child.scope.cancel()
                        child.ctx._kill()
                nursery.cancel_scope.cancel()
                self._set_state(ChildState.FATAL if self._escalation else ChildState.STOPPED)
        if self._escalation is not None:
            self._publish(
                SupervisorEscalated(
                    source=self._path,
                    reason=self._escalation.reason,
                    child=self._escalation.child,
                )
            )
            raise self._escalation

    def _set_state(self, state: ChildState) -> None:
        self._state = state
        self._since = time.time()

    def _publish(self, event: Event) -> None:
        self._bus.publish(event)

    async def _serve_commands(self) -> None:
        async for command in self._mailbox:
            await self._handle(self._on_command, command)

    async def _handle(self, handler: Any, message: Any) -> None:
        async with self._lock:
            if self._escalation is not None:
                return
            try:
                await handler(message)
            except Escalation as escalation:
                self._escalation = escalation
                assert self._nursery is not None
                self._nursery.cancel_scope.cancel()

    async def _on_internal(self, message: _Internal) -> None:
        if isinstance(message, _RestartDue):
            group = [c for c in self._children.values() if c.pending == message.token]
            await self._start_group(group, message.token)
            return
        child = message.child
        if self._children.get(child.spec.name) is not child:
            return  # removed meanwhile
        if message.generation != child.generation or child.state is not ChildState.EXITED:
            return  # an incarnation we already dealt with (stopped on purpose)
        await self._on_exit(child, message.exit)

    async def _on_command(self, command: Command) -> None:
        try:
            if isinstance(command, AddChild):
                name = command.spec.name
                if name in self._children:
                    raise ChildExists(name)
                child = self._children[name] = _Child(command.spec)
                self._publish(ChildAdded(source=self._child_path(child), child=name))
                await self._start(child)
                command.reply.send(self._status_of(child))
                return
            child = self._lookup(command.name)
            if isinstance(command, StartChild):
                if child.state not in (ChildState.STARTING, ChildState.RUNNING):
                    if child.window:
                        child.window.clear()
                    child.consecutive = 0
                    await self._start(child)
                command.reply.send(self._status_of(child))
            elif isinstance(command, StopChild):
                await self._stop(child, reason="stop")
                command.reply.send(self._status_of(child))
            elif isinstance(command, CrashChild):
                if child.state is ChildState.RUNNING and child.scope is not None:
                    child.fault_injected = True
                    child.scope.cancel()
                command.reply.send(self._status_of(child))
            elif isinstance(command, RestartChild):
                await self._restart_on_request(child, command.reason, planned=command.planned)
                command.reply.send(self._status_of(child))
            else:
                await self._stop(child, reason="remove")
                del self._children[child.spec.name]
                self._publish(ChildRemoved(source=self._child_path(child), child=child.spec.name))
                command.reply.send(None)
        except (UnknownChild, ChildExists) as error:
            command.reply.fail(error)

    def _lookup(self, name: str) -> _Child:
        try:
            return self._children[name]
        except KeyError:
            raise UnknownChild(name, list(self._children)) from None

    def _child_path(self, child: _Child) -> str:
        return f"{self._path}/{child.spec.name}"

    # -- the child's lifecycle ---------------------------------------------------------------------

    async def _start(self, child: _Child) -> None:
        """Start one incarnation; wait until it is ready, has ended, or its start timed out."""
        assert self._nursery is not None
        child.generation += 1
        generation = child.generation
        child.pending = None
        child.stop_reason = None
        child.fault_injected = False
        child.set_state(ChildState.STARTING)
        ctx = ChildContext(
            name=child.spec.name,
            path=self._child_path(child),
            attempt=child.restarts,
            publish=self._publish,
        )
        child.ctx = ctx
        child.info = ctx.info
        child.settled = trio.Event()
        child.done = trio.Event()
        child.scope = trio.CancelScope(shield=True)
        self._nursery.start_soon(self._run_child, child, generation)
        timeout = child.spec.start_timeout
        with trio.move_on_after(math.inf if timeout is None else timeout):
            await child.settled.wait()
        if child.settled.is_set() or child.generation != generation:
            return
        await self._stop(child, reason="start_timeout")
        assert self._internal is not None
        child.set_state(ChildState.EXITED)
        self._internal.send_nowait(
            _Exited(
                child,
                child.generation,
                ExitInfo(
                    reason="start_timeout",
                    abnormal=True,
                    error=f"not ready within {timeout}s",
                ),
            )
        )

    def _child_started(self, child: _Child, generation: int, value: Any) -> None:
        if child.generation != generation or child.state is not ChildState.STARTING:
            return
        if isinstance(value, dict):
            child.info.update(value)
        child.started_at = trio.current_time()
        child.set_state(ChildState.RUNNING)
        self._publish(
            ChildStarted(
                source=self._child_path(child),
                child=child.spec.name,
                restarts=child.restarts,
                info=dict(child.info),
            )
        )
        assert child.settled is not None
        child.settled.set()

    async def _run_child(self, child: _Child, generation: int) -> None:
        ctx, scope, done, settled = child.ctx, child.scope, child.done, child.settled
        assert ctx is not None
        assert scope is not None
        assert done is not None
        assert settled is not None
        exit_info: ExitInfo
        try:
            with scope:
                await child.spec.start(ctx, task_status=_StartedReporter(self, child, generation))
            if scope.cancel_called and child.fault_injected:
                exit_info = ExitInfo(
                    reason="error", abnormal=True, error="InjectedFault: crashed on request"
                )
            elif scope.cancel_called:
                reason = child.stop_reason or "shutdown"
                exit_info = ExitInfo(reason=reason, abnormal=reason == "start_timeout")
            else:
                exit_info = ExitInfo(reason="normal", abnormal=False)
        except Exception as error:
            exit_info = ExitInfo(
                # An error may name its reason (a process killed by the OOM killer: "oom").
                reason=str(getattr(error, "exit_reason", None) or "error"),
                abnormal=True,
                error=_describe(error),
                details=dict(getattr(error, "details", None) or {}),
            )
            if isinstance(error, Escalation) and error.final:
                exit_info = attrs.evolve(exit_info, reason="escalated")
        current = child.generation == generation
        if current:
            child.last_exit = exit_info
            if child.state in (ChildState.STARTING, ChildState.RUNNING):
                child.set_state(ChildState.EXITED)
        self._publish(
            ChildExited(
                source=ctx.path,
                child=child.spec.name,
                reason=exit_info.reason,
                abnormal=exit_info.abnormal,
                error=exit_info.error,
                details=exit_info.details,
            )
        )
        done.set()
        settled.set()
        if current and self._internal is not None:
            with contextlib.suppress(trio.ClosedResourceError):  # the supervisor is gone
                self._internal.send_nowait(_Exited(child, generation, exit_info))

    async def _on_exit(self, child: _Child, exit_info: ExitInfo) -> None:
        spec = child.spec
        if exit_info.reason == "escalated":
            child.set_state(ChildState.FATAL)
            if spec.significant:
                raise Escalation(self._path, "significant child ended", spec.name, final=True)
            return
        wanted = spec.restart is Restart.PERMANENT or (
            spec.restart is Restart.TRANSIENT and exit_info.abnormal
        )
        if not wanted:
            child.set_state(ChildState.EXITED)
            if spec.significant:
                raise Escalation(self._path, "significant child ended", spec.name, final=True)
            return
        if exit_info.reason == "start_timeout":
            reason = "start_timeout"
        else:
            reason = "crash" if exit_info.abnormal else "exit"
        await self._restart(child, reason)

    async def _restart_on_request(self, child: _Child, reason: str, *, planned: bool) -> None:
        if planned:
            await self._stop(child, reason="restart")
            child.consecutive = 0
            child.restarts += 1
            child.reasons[reason] += 1
            self._publish(
                RestartScheduled(
                    source=self._child_path(child),
                    child=child.spec.name,
                    reason=reason,
                    delay=0.0,
                    restarts=child.restarts,
                )
            )
            await self._start(child)
            return
        await self._stop(child, reason=reason)
        await self._restart(child, reason)

    async def _restart(self, child: _Child, reason: str) -> None:
        """An unwanted end: count it, maybe give up, else restart its group after the backoff."""
        spec = child.spec
        now = trio.current_time()
        if child.window is not None and not child.window.record(now):
            child.set_state(ChildState.FATAL)
            assert spec.intensity is not None
            self._publish(
                ChildGaveUp(
                    source=self._child_path(child),
                    child=spec.name,
                    restarts=child.restarts,
                    max_restarts=spec.intensity.max_restarts,
                    window=spec.intensity.window,
                )
            )
            if spec.significant:
                raise Escalation(self._path, "significant child gave up", spec.name, final=True)
            return
        if not self._window.record(now):
            raise Escalation(self._path, "restart intensity exceeded", spec.name, final=False)
        if child.started_at is not None and now - child.started_at >= spec.backoff.reset_after:
            child.consecutive = 0
        delay = spec.backoff.delay(child.consecutive, self._rng)
        child.consecutive += 1
        group = self._group_of(child)
        for other in reversed(group):
            if other is not child:
                await self._stop(other, reason="sibling")
        token = next(self._tokens)
        for member in group:
            member.restarts += 1
            member.reasons[reason if member is child else "sibling"] += 1
            member.pending = token
            member.set_state(ChildState.BACKOFF)
        self._publish(
            RestartScheduled(
                source=self._child_path(child),
                child=spec.name,
                reason=reason,
                delay=delay,
                restarts=child.restarts,
            )
        )
        if delay <= 0:
            await self._start_group(group, token)
        else:
            assert self._nursery is not None
            self._nursery.start_soon(self._restart_timer, delay, token)

    async def _restart_timer(self, delay: float, token: int) -> None:
        await trio.sleep(delay)
        assert self._internal is not None
        self._internal.send_nowait(_RestartDue(token))

    def _group_of(self, child: _Child) -> list[_Child]:
        """The children restarted together with ``child`` under this supervisor's strategy."""
        if self.strategy is Strategy.ONE_FOR_ONE:
            return [child]
        children = list(self._children.values())
        if self.strategy is Strategy.REST_FOR_ONE:
            children = children[children.index(child) :]
        live = (ChildState.STARTING, ChildState.RUNNING, ChildState.BACKOFF)
        return [c for c in children if c is child or c.state in live]

    async def _start_group(self, group: list[_Child], token: int) -> None:
        for member in group:
            if member.pending != token:
                continue
            await self._start(member)
            if member.state is not ChildState.RUNNING:
                break  # its exit restarts the rest of the group, as the strategy says

    async def _stop(self, child: _Child, *, reason: str) -> None:
        """Stop one child: cancel it, wait its shutdown timeout, then cut its cleanup short."""
        if child.state is ChildState.BACKOFF:
            child.pending = None
            child.set_state(ChildState.STOPPED)
            self._publish(ChildStopped(source=self._child_path(child), child=child.spec.name))
            return
        if child.state not in (ChildState.STARTING, ChildState.RUNNING):
            return
        scope = child.scope
        assert scope is not None
        child.stop_reason = reason
        child.set_state(ChildState.STOPPING)
        self._publish(
            ChildStopping(source=self._child_path(child), child=child.spec.name, reason=reason)
        )
        scope.cancel()
        child.stop_deadline = trio.current_time() + child.spec.shutdown_timeout
        await self._finish_stop(child)

    async def _finish_stop(self, child: _Child) -> None:
        """Wait for a stopping child until its deadline, then cut its cleanup short."""
        done, ctx = child.done, child.ctx
        assert done is not None
        assert ctx is not None
        with trio.move_on_at(child.stop_deadline):
            await done.wait()
        if not done.is_set():
            self._publish(
                ChildKilled(
                    source=self._child_path(child),
                    child=child.spec.name,
                    shutdown_timeout=child.spec.shutdown_timeout,
                )
            )
            ctx._kill()
            await done.wait()
        child.generation += 1
        child.set_state(ChildState.STOPPED)
        self._publish(ChildStopped(source=self._child_path(child), child=child.spec.name))

    async def _stop_all(self) -> None:
        children = list(reversed(self._children.values()))
        if not self.parallel_shutdown:
            for child in children:
                await self._shutdown_one(child)
            return
        async with trio.open_nursery() as nursery:
            for child in children:
                nursery.start_soon(self._shutdown_one, child)

    async def _shutdown_one(self, child: _Child) -> None:
        if child.state is ChildState.STOPPING:
            # A stop that our own cancellation interrupted: finish it by its deadline.
            await self._finish_stop(child)
        else:
            await self._stop(child, reason="shutdown")
