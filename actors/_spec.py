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
from ._exit import ExitInfo


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

    def kill_cleanup(self) -> None:
        """Cut every cleanup under way short: the shutdown's deadline has passed."""
        for scope in list(self._cleanup_scopes):
            scope.cancel()


class StartFunction(Protocol):
    def __call__(
        self, ctx: ChildContext, *, task_status: trio.TaskStatus[Any]
    ) -> Awaitable[None]: ...


@attrs.frozen(kw_only=True)
class ChildSpec:
    """How to run one child (OTP's child specification), field by field.

    ``start(ctx, task_status=...)`` runs the child for one incarnation and calls
    ``task_status.started(info)`` once it is really ready. Returning means a normal exit; raising,
    an abnormal one. It is stopped by cancellation; cleanup that must finish goes in
    ``ctx.cleanup_scope()``, and is cut after ``shutdown_timeout``. The start and the stop run in
    the child's own task: however long they take, the supervisor keeps handling its mailbox.
    """

    #: Unique among its siblings; the child's path is ``<supervisor path>/<name>``.
    name: str
    #: Runs one incarnation (see above). An ``Actor``'s ``run`` or a ``Supervisor``'s ``run`` fit.
    start: StartFunction
    #: When an ended child is started again: ``PERMANENT`` always, ``TRANSIENT`` after an abnormal
    #: exit only, ``TEMPORARY`` never.
    restart: Restart = Restart.PERMANENT
    #: Seconds from the stop's cancellation until its cleanup (``ctx.cleanup_scope``) is cut short
    #: (OTP's ``shutdown``). The stop waits in the child's task, never in the supervisor's loop.
    shutdown_timeout: float = 5.0
    #: Seconds to report ready (``task_status.started``); past it the child is stopped and its
    #: exit counts as abnormal (``start_timeout``). ``None``: wait as long as it takes.
    start_timeout: float | None = None
    #: The delay before each restart after an unwanted exit, growing with consecutive failures.
    backoff: Backoff = Backoff()
    #: This child's own restart intensity: more restarts than ``max_restarts`` in ``window``
    #: seconds and the child is given up on alone (state ``fatal``); its siblings are untouched.
    #: ``None``: its restarts count toward the supervisor's intensity instead (OTP's rule), which
    #: stops every child and escalates when exceeded.
    intensity: Intensity | None = None
    #: When a critical child ends for good (gives up, or ends without being restarted), its
    #: supervisor stops and escalates a final ``Escalation``: nothing above restarts it. (OTP's
    #: ``significant`` applies to transient/temporary children with auto-shutdown only; this is the
    #: notion "the whole tree depends on it", valid with any restart type.)
    critical: bool = False
    #: ``worker`` or ``supervisor``, shown in the status snapshot.
    kind: str = "worker"
    #: For a nested supervisor: how to read its children's status.
    children: Callable[[], Sequence[NodeStatus]] | None = None
