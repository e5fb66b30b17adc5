"""The events a supervisor publishes about its children. ``source`` is the child's path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from ._event import Event
from ._exit import ExitReason


@attrs.frozen(kw_only=True)
class ChildStarted(Event):
    kind: ClassVar[str] = "child_started"
    child: str
    restarts: int
    info: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class ChildExited(Event):
    kind: ClassVar[str] = "child_exited"
    child: str
    reason: ExitReason
    abnormal: bool
    error: str | None = None
    #: For ``reason == "shutdown"``: who stopped it (``stop``, ``restart``, ``sibling``...).
    shutdown: str | None = None
    details: Mapping[str, Any] = attrs.field(factory=dict)


def _microseconds(seconds: float) -> float:
    return round(seconds, 6)


@attrs.frozen(kw_only=True)
class RestartScheduled(Event):
    kind: ClassVar[str] = "restart_scheduled"
    child: str
    reason: str
    delay: float = attrs.field(converter=_microseconds)
    restarts: int


@attrs.frozen(kw_only=True)
class ChildGaveUp(Event):
    kind: ClassVar[str] = "child_gave_up"
    child: str
    restarts: int
    max_restarts: int
    window: float


@attrs.frozen(kw_only=True)
class ChildStopping(Event):
    kind: ClassVar[str] = "child_stopping"
    child: str
    reason: str


@attrs.frozen(kw_only=True)
class ChildStopped(Event):
    kind: ClassVar[str] = "child_stopped"
    child: str


@attrs.frozen(kw_only=True)
class ChildKilled(Event):
    """A child did not finish within its shutdown timeout and was cancelled hard."""

    kind: ClassVar[str] = "child_killed"
    child: str
    shutdown_timeout: float


@attrs.frozen(kw_only=True)
class ChildAdded(Event):
    kind: ClassVar[str] = "child_added"
    child: str


@attrs.frozen(kw_only=True)
class ChildRemoved(Event):
    kind: ClassVar[str] = "child_removed"
    child: str


@attrs.frozen(kw_only=True)
class SupervisorEscalated(Event):
    kind: ClassVar[str] = "supervisor_escalated"
    reason: str
    child: str | None = None
