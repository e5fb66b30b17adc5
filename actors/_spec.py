"""What a supervisor needs to know to run a child, and what the child gets from it."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import attrs
import trio

from ._backoff import Backoff, Intensity
from ._event import Event


class Restart(enum.Enum):
    """When a child that ended is started again."""

    PERMANENT = "permanent"  # always
    TRANSIENT = "transient"  # only after an abnormal exit
    TEMPORARY = "temporary"  # never


class ChildState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    STOPPED = "stopped"
    EXITED = "exited"
    FATAL = "fatal"


@attrs.frozen(kw_only=True)
class ExitInfo:
    """Why a child's task ended."""

    reason: str  # normal | error | shutdown | killed | start_timeout
    abnormal: bool
    error: str | None = None
    details: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class NodeStatus:
    """One node of the tree snapshot, readable without touching any actor."""

    name: str
    path: str
    kind: str  # worker | supervisor
    state: ChildState
    restarts: int
    restart_reasons: Mapping[str, int]
    last_exit: ExitInfo | None
    since: float
    info: Mapping[str, Any]
    children: tuple[NodeStatus, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "kind": self.kind,
            "state": self.state.value,
            "restarts": self.restarts,
            "restart_reasons": dict(self.restart_reasons),
            "last_exit": attrs.asdict(self.last_exit) if self.last_exit else None,
            "since": self.since,
            "info": dict(self.info),
            "children": [child.to_dict() for child in self.children],
        }

    def walk(self) -> Iterator[NodeStatus]:
        yield self
        for child in self.children:
            yield from child.walk()


class ChildContext:
    """Handed to each incarnation of a child: its identity, its voice, its cleanup budget."""

    def __init__(
        self,
        *,
        name: str,
        path: str,
        attempt: int,
        publish: Callable[[Event], object],
    ) -> None:
        self.name = name
        self.path = path
        #: How many times this child was restarted before this incarnation.
        self.attempt = attempt
        self._publish = publish
        #: Free-form facts shown in the status snapshot (a pid, a port, readiness).
        self.info: dict[str, Any] = {}
        self._cleanup_scopes: set[trio.CancelScope] = set()

    def publish(self, event: Event) -> None:
        """Publish ``event``, stamped with this child's path unless it names another source."""
        if not event.source:
            event = attrs.evolve(event, source=self.path)
        self._publish(event)

    @contextmanager
    def cleanup_scope(self, timeout: float | None = None) -> Iterator[trio.CancelScope]:
        """A shielded scope for cleanup after cancellation.

        The shield keeps the graceful stop (the supervisor cancelling the child) from cutting the
        cleanup short; the supervisor still cancels this scope when the child's shutdown timeout
        runs out, which is how a child hanging in its cleanup is killed hard.
        """
        scope = trio.CancelScope(shield=True)
        if timeout is not None:
            scope.deadline = trio.current_time() + timeout
        self._cleanup_scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._cleanup_scopes.discard(scope)

    def _kill(self) -> None:
        for scope in list(self._cleanup_scopes):
            scope.cancel()


class StartFunction(Protocol):
    def __call__(
        self, ctx: ChildContext, *, task_status: trio.TaskStatus[Any]
    ) -> Awaitable[None]: ...


@attrs.frozen(kw_only=True)
class ChildSpec:
    """How to run one child.

    ``start(ctx, task_status=...)`` runs the child for one incarnation and calls
    ``task_status.started()`` once it is really ready. Returning means a normal exit; raising, an
    abnormal one. It is stopped by cancellation; cleanup that must finish goes in
    ``ctx.cleanup_scope()``, and is cut after ``shutdown_timeout``.
    """

    name: str
    start: StartFunction
    restart: Restart = Restart.PERMANENT
    shutdown_timeout: float = 5.0
    start_timeout: float | None = None
    backoff: Backoff = Backoff()
    #: Per-child intensity: beyond it the child is given up on (state ``fatal``).
    intensity: Intensity | None = None
    #: When a significant child ends for good, its supervisor stops and escalates.
    significant: bool = False
    kind: str = "worker"
    #: For a nested supervisor: how to read its children's status.
    children: Callable[[], Sequence[NodeStatus]] | None = None
