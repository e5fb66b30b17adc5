"""The supervisor: starts children in order, restarts them by strategy, and knows when to give up.

It runs as ONE loop over its mailbox, with no lock: commands (from callers) and notices (from its
own tasks: a child became ready, exited, timed out starting, finished stopping; a backoff ran out)
arrive on that mailbox and each is decided at once, without waiting. Whatever takes time runs in
the child's own task: its start (until ready) and its stop ladder (cancel, wait up to its
``shutdown_timeout``, cut its cleanup short). So while one child takes 10 s to stop or to become
ready, another child's crash is handled and it is restarted within its backoff, and commands about
other children are answered at once. What follows a stop (a restart, a reply) is a continuation
run by the loop when the child's stop ladder reports it is done.

A child runs in a shielded cancel scope of its own, so a supervisor being stopped does not cancel
all its children at once: it stops them one by one, in reverse start order, each with its own
shutdown ladder (or all at once with ``parallel_shutdown`` for children that do not depend on one
another).
"""

from __future__ import annotations

import collections
import enum
import itertools
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import trio

from ._backoff import Backoff, Intensity, RestartWindow
from ._bus import EventBus
from ._event import Event
from ._exit import ExitInfo, ExitReason, describe
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
from ._mailbox import ActorNotFound, Mailbox, Reply
from ._spec import ChildContext, ChildSpec, ChildState, NodeStatus, Restart


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


# -- notices from the supervisor's own tasks ------------------------------------------------------


@attrs.frozen
class _Ready:
    child: _Child
    generation: int
    value: Any


@attrs.frozen
class _Exited:
    child: _Child
    generation: int
    exit: ExitInfo


@attrs.frozen
class _StartTimedOut:
    child: _Child
    generation: int


@attrs.frozen
class _Stopped:
    child: _Child
    generation: int


@attrs.frozen
class _RestartDue:
    token: int


_Notice = _Ready | _Exited | _StartTimedOut | _Stopped | _RestartDue
_Message = Command | _Notice
_Then = Callable[[], None]
_LIVE = (ChildState.STARTING, ChildState.RUNNING)


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
        #: Stopped by a command: nothing brings it back but a start (or a planned restart).
        self.held = False
        self.stop_reason: str | None = None
        self.stop_deadline = math.inf
        self.fault_injected = False
        self.ctx: ChildContext | None = None
        self.scope: trio.CancelScope | None = None
        self.done: trio.Event | None = None
        #: The start timeout's timer, cancelled once the start settles.
        self.start_timer: trio.CancelScope | None = None
        #: Run by the loop once the current start settles (ready, ended, or stopped).
        self.on_settled: list[_Then] = []
        #: Run by the loop once the current stop ladder is done.
        self.after_stop: list[_Then] = []
        self.window = RestartWindow(spec.intensity) if spec.intensity else None

    def set_state(self, state: ChildState) -> None:
        self.state = state
        self.since = time.time()


class _StartedReporter:
    """The ``task_status`` handed to a child: turns ``started()`` into a notice to the loop."""

    def __init__(self, mailbox: Mailbox[_Message], child: _Child, generation: int) -> None:
        self._mailbox = mailbox
        self._child = child
        self._generation = generation

    def started(self, value: Any = None) -> None:
        self._mailbox.put_internal(_Ready(self._child, self._generation, value))


class Supervisor:
    """An OTP-style supervisor. Run it with ``run``; control it with the helpers."""

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
        """``intensity`` bounds the restarts of the children that have none of their own
        (``ChildSpec.intensity is None``); exceeding it stops every child and escalates.
        ``parallel_shutdown``: on shutdown stop every child at once rather than one by one in
        reverse start order (OTP's rule, for children that depend on those started before them),
        so a shutdown takes the longest child's shutdown timeout, not their sum."""
        self.name = name
        self.parallel_shutdown = parallel_shutdown
        self.strategy = strategy
        self.intensity = intensity
        self.mailbox_capacity = mailbox_capacity
        self._bus = bus
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._children: dict[str, _Child] = {}
        for spec in children:
            if spec.name in self._children:
                raise ChildExists(spec.name)
            self._children[spec.name] = _Child(spec)
        self._mailbox: Mailbox[_Message] | None = None
        self._path = name
        self._state = ChildState.STOPPED
        self._since = time.time()
        self._tokens = itertools.count(1)
        self._window = RestartWindow(intensity)
        self._nursery: trio.Nursery | None = None
        self._escalation: Escalation | None = None

    # -- reading -------------------------------------------------------------------------------

    @property
    def path(self) -> str:
        return self._path

    def children(self) -> tuple[NodeStatus, ...]:
        return tuple(self._status_of(child) for child in self._children.values())

    def child_states(self) -> Iterator[tuple[str, ChildState, Mapping[str, Any]]]:
        """Each child's name, state and info, read as they are: no snapshot of it or of its own
        children (``children()`` costs about 7 µs a child; a sampler of 1,000 services reads
        this every interval). Read the info at once: it is the child's own."""
        for child in self._children.values():
            yield child.spec.name, child.state, child.info

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
        path = f"{self._path}/{child.spec.name}"
        nested = child.spec.children() if child.spec.children is not None else ()
        return NodeStatus(
            name=child.spec.name,
            path=path,
            kind=child.spec.kind,
            state=child.state,
            restarts=child.restarts,
            restart_reasons=dict(child.reasons),
            last_exit=child.last_exit,
            since=child.since,
            info=dict(child.info),
            # A supervisor that has not run yet (held back, or never started) knows only its
            # own name: its children are shown where they will live.
            children=tuple(_placed_under(path, node) for node in nested),
        )

    def child_spec(
        self,
        *,
        restart: Restart = Restart.PERMANENT,
        critical: bool = False,
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
            critical=critical,
            shutdown_timeout=shutdown_timeout,
            backoff=backoff,
            intensity=intensity,
            kind="supervisor",
            children=self.children,
        )

    # -- commands --------------------------------------------------------------------------------

    async def _call(self, request: Callable[[Reply[Any]], Command], timeout: float) -> Any:
        mailbox = self._mailbox
        if mailbox is None:
            raise ActorNotFound(self._path)
        return await mailbox.call(request, timeout=timeout)

    async def start_child(self, name: str, *, timeout: float = 60.0) -> NodeStatus:
        """Start a stopped (or fatal) child; answers once it is ready or has ended."""
        status: NodeStatus = await self._call(
            lambda r: StartChild(name=name, reply=r), timeout=timeout
        )
        return status

    async def stop_child(self, name: str, *, timeout: float = 60.0) -> NodeStatus:
        """Stop a child and keep it stopped until a start; answers once its stop is done."""
        status: NodeStatus = await self._call(
            lambda r: StopChild(name=name, reply=r), timeout=timeout
        )
        return status

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
        status: NodeStatus = await self._call(
            lambda r: RestartChild(name=name, reason=reason, reply=r, planned=is_planned),
            timeout=timeout,
        )
        return status

    async def crash_child(self, name: str, *, timeout: float = 60.0) -> NodeStatus:
        """Make a running child fail as if it had raised; its restart policy applies."""
        status: NodeStatus = await self._call(
            lambda r: CrashChild(name=name, reply=r), timeout=timeout
        )
        return status

    async def add_child(self, spec: ChildSpec, *, timeout: float = 60.0) -> NodeStatus:
        status: NodeStatus = await self._call(
            lambda r: AddChild(spec=spec, reply=r), timeout=timeout
        )
        return status

    async def remove_child(self, name: str, *, timeout: float = 60.0) -> None:
        await self._call(lambda r: RemoveChild(name=name, reply=r), timeout=timeout)

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
        mailbox: Mailbox[_Message] = Mailbox(self._path, self.mailbox_capacity)
        self._mailbox = mailbox
        self._set_state(ChildState.STARTING)
        reason = ExitReason.SHUTDOWN
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                for child in self._children.values():
                    if child.window is not None:
                        child.window.clear()
                    child.consecutive = 0
                    child.pending = None
                    # ``held`` survives: a stopped child stays stopped across this supervisor's
                    # own restarts, until a start.

                def booted() -> None:
                    self._set_state(ChildState.RUNNING)
                    task_status.started()

                self._start_in_order(list(self._children.values()), None, booted, boot=True)
                async for message in mailbox:
                    try:
                        self._handle(message)
                    except Escalation as escalation:
                        self._escalation = escalation
                        reason = ExitReason.ESCALATED
                        break
            finally:
                mailbox.close(reason)
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
                        child.ctx.kill_cleanup()
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

    def _lookup(self, name: str) -> _Child:
        try:
            return self._children[name]
        except KeyError:
            raise UnknownChild(name, list(self._children)) from None

    def _child_path(self, child: _Child) -> str:
        return f"{self._path}/{child.spec.name}"

    def _current(self, child: _Child, generation: int) -> bool:
        return self._children.get(child.spec.name) is child and child.generation == generation

    # -- the loop's decisions (never await) ------------------------------------------------------

    def _handle(self, message: _Message) -> None:
        if isinstance(message, _Ready):
            self._on_ready(message)
        elif isinstance(message, _Exited):
            self._on_exited(message)
        elif isinstance(message, _StartTimedOut):
            child = message.child
            if self._current(child, message.generation) and child.state is ChildState.STARTING:
                self._begin_stop(child, "start_timeout", self._after_start_timeout(child))
        elif isinstance(message, _Stopped):
            self._on_stopped(message)
        elif isinstance(message, _RestartDue):
            group = [c for c in self._children.values() if c.pending == message.token]
            self._start_in_order(group, message.token, None, boot=False)
        else:
            try:
                self._on_command(message)
            except (UnknownChild, ChildExists) as error:
                message.reply.fail(error)

    def _on_command(self, command: Command) -> None:
        if isinstance(command, AddChild):
            name = command.spec.name
            if name in self._children:
                raise ChildExists(name)
            child = self._children[name] = _Child(command.spec)
            self._publish(ChildAdded(source=self._child_path(child), child=name))
            self._launch(child)
            self._reply_when_settled(child, command.reply)
            return
        child = self._lookup(command.name)
        if isinstance(command, StartChild):
            child.held = False
            if child.state in _LIVE:
                self._reply_when_settled(child, command.reply)
                return

            def start() -> None:
                if child.window:
                    child.window.clear()
                child.consecutive = 0
                child.pending = None
                if child.state not in _LIVE:
                    self._launch(child)
                self._reply_when_settled(child, command.reply)

            if child.state is ChildState.STOPPING:
                child.after_stop.append(start)  # once the stop under way is done
            else:
                start()
        elif isinstance(command, StopChild):
            child.held = True
            child.pending = None
            self._begin_stop(child, "stop", lambda: command.reply.send(self._status_of(child)))
        elif isinstance(command, CrashChild):
            if child.state is ChildState.RUNNING and child.scope is not None:
                child.fault_injected = True
                child.scope.cancel()
            command.reply.send(self._status_of(child))
        elif isinstance(command, RestartChild):
            child.held = False
            self._restart_on_request(child, command)
        else:
            child.held = True
            child.pending = None

            def remove() -> None:
                if self._children.get(child.spec.name) is child:
                    del self._children[child.spec.name]
                    self._publish(
                        ChildRemoved(source=self._child_path(child), child=child.spec.name)
                    )
                command.reply.send(None)

            self._begin_stop(child, "remove", remove)

    def _reply_when_settled(self, child: _Child, reply: Reply[NodeStatus]) -> None:
        if child.state is ChildState.STARTING or child.state is ChildState.STOPPING:
            child.on_settled.append(lambda: reply.send(self._status_of(child)))
        else:
            reply.send(self._status_of(child))

    def _settle(self, child: _Child) -> None:
        if child.start_timer is not None:
            child.start_timer.cancel()
            child.start_timer = None
        waiting, child.on_settled = child.on_settled, []
        for then in waiting:
            then()

    def _on_ready(self, message: _Ready) -> None:
        child = message.child
        if not self._current(child, message.generation) or child.state is not ChildState.STARTING:
            return
        if isinstance(message.value, dict):
            child.info.update(message.value)
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
        self._settle(child)

    def _on_exited(self, message: _Exited) -> None:
        child = message.child
        if not self._current(child, message.generation):
            return
        child.last_exit = message.exit
        if child.state not in _LIVE:
            return  # being stopped: its stop ladder reports when it is done
        child.set_state(ChildState.EXITED)
        self._settle(child)
        if child.held:
            return
        self._on_exit(child, message.exit)

    def _on_stopped(self, message: _Stopped) -> None:
        child = message.child
        if child.generation != message.generation or child.state is not ChildState.STOPPING:
            return
        child.generation += 1
        self._mark_stopped(child)
        # Those waiting for the start that was cut short hear after what follows the stop was
        # decided (a restart in backoff, say); a start launched by a continuation has its own.
        if child.start_timer is not None:
            child.start_timer.cancel()
            child.start_timer = None
        waiting, child.on_settled = child.on_settled, []
        continuations, child.after_stop = child.after_stop, []
        for then in continuations:
            then()
        for settled in waiting:
            settled()

    def _after_start_timeout(self, child: _Child) -> _Then:
        timeout = child.spec.start_timeout

        def timed_out() -> None:
            child.last_exit = ExitInfo(
                reason=ExitReason.START_TIMEOUT,
                abnormal=True,
                error=f"not ready within {timeout}s",
                shutdown="start_timeout",
            )
            child.set_state(ChildState.EXITED)
            if not child.held:
                self._on_exit(child, child.last_exit)

        return timed_out

    def _on_exit(self, child: _Child, exit_info: ExitInfo) -> None:
        spec = child.spec
        if exit_info.reason is ExitReason.ESCALATED:
            child.set_state(ChildState.FATAL)
            if spec.critical:
                raise Escalation(self._path, "critical child ended", spec.name, final=True)
            return
        wanted = spec.restart is Restart.PERMANENT or (
            spec.restart is Restart.TRANSIENT and exit_info.abnormal
        )
        if not wanted:
            child.set_state(ChildState.EXITED)
            if spec.critical:
                raise Escalation(self._path, "critical child ended", spec.name, final=True)
            return
        if exit_info.reason is ExitReason.START_TIMEOUT:
            reason = "start_timeout"
        else:
            reason = "crash" if exit_info.abnormal else "exit"
        self._restart(child, reason)

    def _restart_on_request(self, child: _Child, command: RestartChild) -> None:
        reason = command.reason
        if command.planned:

            def restart_now() -> None:
                child.consecutive = 0
                child.pending = None
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
                self._launch(child)
                self._reply_when_settled(child, command.reply)

            self._begin_stop(child, "restart", restart_now)
            return

        def restart_later() -> None:
            self._restart(child, reason)
            self._reply_when_settled(child, command.reply)

        self._begin_stop(child, reason, restart_later)

    def _restart(self, child: _Child, reason: str) -> None:
        """An unwanted end: count it, maybe give up, else restart its group after the backoff."""
        spec = child.spec
        now = trio.current_time()
        if child.window is not None:
            if not child.window.record(now):
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
                if spec.critical:
                    raise Escalation(self._path, "critical child gave up", spec.name, final=True)
                return
        elif not self._window.record(now):
            raise Escalation(self._path, "restart intensity exceeded", spec.name, final=False)
        if child.started_at is not None and now - child.started_at >= spec.backoff.reset_after:
            child.consecutive = 0
        ran_for = now - child.started_at if child.started_at is not None else 0.0
        delay = spec.backoff.delay(child.consecutive, self._rng, ran_for=ran_for)
        child.consecutive += 1
        group = self._group_of(child)
        token = next(self._tokens)

        def schedule() -> None:
            if child.held or child.state in _LIVE:
                return  # stopped or started by a command meanwhile
            members = [m for m in group if not m.held and m.state not in _LIVE]
            for member in members:
                member.pending = token  # a later restart of the same group takes them over
                member.restarts += 1
                member.reasons[reason if member is child else "sibling"] += 1
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
                self._start_in_order(members, token, None, boot=False)
            else:
                assert self._nursery is not None
                self._nursery.start_soon(self._restart_timer, delay, token)

        self._stop_in_order([m for m in reversed(group) if m is not child], "sibling", schedule)

    async def _restart_timer(self, delay: float, token: int) -> None:
        await trio.sleep(delay)
        assert self._mailbox is not None
        self._mailbox.put_internal(_RestartDue(token))

    def _group_of(self, child: _Child) -> list[_Child]:
        """The children restarted together with ``child`` under this supervisor's strategy."""
        if self.strategy is Strategy.ONE_FOR_ONE:
            return [child]
        children = list(self._children.values())
        if self.strategy is Strategy.REST_FOR_ONE:
            children = children[children.index(child) :]
        live = (ChildState.STARTING, ChildState.RUNNING, ChildState.BACKOFF, ChildState.STOPPING)
        return [c for c in children if c is child or (c.state in live and not c.held)]

    def _stop_in_order(self, children: list[_Child], why: str, then: _Then) -> None:
        """Stop ``children`` one after another, each once the previous is down; then ``then``."""
        if not children:
            then()
            return
        first, rest = children[0], children[1:]
        self._begin_stop(first, why, lambda: self._stop_in_order(rest, why, then))

    def _start_in_order(
        self, children: list[_Child], token: int | None, then: _Then | None, *, boot: bool
    ) -> None:
        """Start ``children`` one after another, each once the previous one is ready.

        At boot a child that fails to start does not hold up the next (its own exit restarts it);
        in a group restart it stops the sequence, and its exit restarts the rest of the group.
        """
        for index, child in enumerate(children):
            if child.held or (token is not None and child.pending != token):
                continue
            child.pending = None
            self._launch(child)
            rest = children[index + 1 :]

            def next_one(child: _Child = child, rest: list[_Child] = rest) -> None:
                if boot or child.state is ChildState.RUNNING:
                    self._start_in_order(rest, token, then, boot=boot)

            child.on_settled.append(next_one)
            return
        if then is not None:
            then()

    # -- a child's own tasks: its start, its run, its stop ladder ---------------------------------

    def _launch(self, child: _Child) -> None:
        """Start one incarnation in its own task; its readiness and its end come as notices."""
        assert self._nursery is not None
        assert self._mailbox is not None
        child.generation += 1
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
        child.done = trio.Event()
        child.scope = trio.CancelScope(shield=True)
        self._nursery.start_soon(self._run_child, child, child.generation, self._mailbox)
        if child.spec.start_timeout is not None:
            child.start_timer = trio.CancelScope()
            self._nursery.start_soon(
                self._start_timer,
                child.start_timer,
                _StartTimedOut(child, child.generation),
                child.spec.start_timeout,
            )

    async def _start_timer(
        self, scope: trio.CancelScope, notice: _StartTimedOut, timeout: float
    ) -> None:
        with scope:
            await trio.sleep(timeout)
            assert self._mailbox is not None
            self._mailbox.put_internal(notice)

    async def _run_child(self, child: _Child, generation: int, mailbox: Mailbox[_Message]) -> None:
        ctx, scope, done = child.ctx, child.scope, child.done
        assert ctx is not None
        assert scope is not None
        assert done is not None
        exit_info: ExitInfo
        try:
            with scope:
                await child.spec.start(
                    ctx, task_status=_StartedReporter(mailbox, child, generation)
                )
            if scope.cancel_called and child.fault_injected:
                exit_info = ExitInfo(
                    reason=ExitReason.ERROR,
                    abnormal=True,
                    error="InjectedFault: crashed on request",
                )
            elif scope.cancel_called:
                why = child.stop_reason or "shutdown"
                if why == "start_timeout":
                    exit_info = ExitInfo(
                        reason=ExitReason.START_TIMEOUT, abnormal=True, shutdown=why
                    )
                else:
                    exit_info = ExitInfo(reason=ExitReason.SHUTDOWN, abnormal=False, shutdown=why)
            else:
                exit_info = ExitInfo(reason=ExitReason.NORMAL, abnormal=False)
        except Exception as error:
            escalated = isinstance(error, Escalation) and error.final
            exit_info = ExitInfo(
                reason=ExitReason.ESCALATED if escalated else _error_reason(error),
                abnormal=True,
                error=describe(error),
                details=dict(getattr(error, "details", None) or {}),
            )
        self._publish(
            ChildExited(
                source=ctx.path,
                child=child.spec.name,
                reason=exit_info.reason,
                abnormal=exit_info.abnormal,
                error=exit_info.error,
                shutdown=exit_info.shutdown,
                details=exit_info.details,
            )
        )
        done.set()
        mailbox.put_internal(_Exited(child, generation, exit_info))

    def _begin_stop(self, child: _Child, why: str, then: _Then) -> None:
        """Stop one child in its own task (cancel, wait, cut short); ``then`` once it is down."""
        if child.state is ChildState.STOPPING:
            child.after_stop.append(then)
            return
        if child.state is ChildState.BACKOFF:
            self._cancel_backoff(child)
        if child.state not in _LIVE:
            then()
            return
        assert self._nursery is not None
        self._cancel_child(child, why)
        child.after_stop.append(then)
        self._nursery.start_soon(self._stop_ladder, child, child.generation)

    # -- transitions that are announced: the state and its event in one place ---------------------

    def _mark_stopped(self, child: _Child) -> None:
        child.set_state(ChildState.STOPPED)
        self._publish(ChildStopped(source=self._child_path(child), child=child.spec.name))

    def _cancel_backoff(self, child: _Child) -> None:
        """A child waiting for its restart is stopped at once: no restart follows."""
        child.pending = None
        self._mark_stopped(child)

    def _cancel_child(self, child: _Child, why: str) -> None:
        """Ask a live child to stop (cancel its task) and start counting its shutdown timeout."""
        assert child.scope is not None
        child.stop_reason = why
        child.set_state(ChildState.STOPPING)
        self._publish(
            ChildStopping(source=self._child_path(child), child=child.spec.name, reason=why)
        )
        child.scope.cancel()
        child.stop_deadline = trio.current_time() + child.spec.shutdown_timeout

    async def _stop_ladder(self, child: _Child, generation: int) -> None:
        await self._wait_stopped(child)
        assert self._mailbox is not None
        self._mailbox.put_internal(_Stopped(child, generation))

    async def _wait_stopped(self, child: _Child) -> None:
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
            ctx.kill_cleanup()
            await done.wait()

    # -- shutdown (the loop has ended: awaiting here holds up nothing) ---------------------------

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
        if child.state is ChildState.BACKOFF:
            self._cancel_backoff(child)
            return
        if child.state in _LIVE:
            self._cancel_child(child, "shutdown")
        elif child.state is not ChildState.STOPPING:
            return
        # A stop under way (its ladder was cancelled with us) is finished by its own deadline.
        await self._wait_stopped(child)
        child.generation += 1
        child.after_stop.clear()
        child.on_settled.clear()
        self._mark_stopped(child)


def _error_reason(error: Exception) -> ExitReason:
    """An error may name its reason (``exit_reason``: a process the OOM killer took is ``oom``)."""
    named = getattr(error, "exit_reason", None)
    try:
        return ExitReason(named) if named is not None else ExitReason.ERROR
    except ValueError:
        return ExitReason.ERROR


def _placed_under(parent: str, node: NodeStatus) -> NodeStatus:
    """`node` (and its children) with the path it has below `parent`."""
    path = f"{parent}/{node.name}"
    if node.path == path:
        return node
    children = tuple(_placed_under(path, child) for child in node.children)
    return attrs.evolve(node, path=path, children=children)
