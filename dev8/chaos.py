"""Fault injection for chaos tests: crash an actor, signal a service's processes (sent by the
service's process actor, which owns the process).

Off unless the config says ``chaos: {enabled: true}``: the API registers its ``/chaos`` routes only
then. Every fault is published on the bus (``chaos_fault_injected``), so the logs and the event
stream tell an injected failure from a real one.
"""

from __future__ import annotations

import signal
from typing import ClassVar

import attrs

from actors import ChildState, Event, NodeStatus
from dev8.control import Control
from dev8.services.process import NotRunning

__all__ = [
    "CHAOS_SIGNALS",
    "BadSignal",
    "ChaosFaultInjected",
    "NotRunning",
    "crash_actor",
    "find_actor",
    "parse_signal",
    "signal_service",
]

#: The signals a chaos test may send to a service's process group.
CHAOS_SIGNALS: dict[str, signal.Signals] = {
    "KILL": signal.SIGKILL,
    "STOP": signal.SIGSTOP,
    "CONT": signal.SIGCONT,
    "TERM": signal.SIGTERM,
}


class BadSignal(ValueError):
    def __init__(self, text: str) -> None:
        super().__init__(f"signal must be one of {', '.join(CHAOS_SIGNALS)}, not {text[:40]!r}")


@attrs.frozen(kw_only=True)
class ChaosFaultInjected(Event):
    kind: ClassVar[str] = "chaos_fault_injected"
    fault: str  # crash | signal
    target: str
    signal: str | None = None
    pid: int | None = None


def parse_signal(text: str) -> signal.Signals:
    """``KILL``, ``SIGKILL`` or ``kill``; nothing outside :data:`CHAOS_SIGNALS`."""
    name = text.upper().removeprefix("SIG")
    try:
        return CHAOS_SIGNALS[name]
    except KeyError:
        raise BadSignal(text) from None


def find_actor(control: Control, path: str) -> NodeStatus | None:
    for node in control.root.snapshot().walk():
        if node.path == path:
            return node
    return None


async def crash_actor(control: Control, path: str) -> NodeStatus:
    """Make the running actor at ``path`` fail ("InjectedFault"); its restart policy applies."""
    node = find_actor(control, path)
    if node is None or node.path == control.root.path:
        return await control.crash_actor(path)  # raises UnknownService, with the known paths
    if node.state is not ChildState.RUNNING:
        raise NotRunning(path, node.state.value)
    # Published first: crashing the API (or what runs this) cancels the rest of this call.
    control.bus.publish(ChaosFaultInjected(source="dev8/chaos", fault="crash", target=path))
    return await control.crash_actor(path)


async def signal_service(control: Control, name: str, sig: signal.Signals) -> int:
    """Have a running service's process actor send ``sig`` to its process group; returns the
    group's id (``NotRunning`` when it has no process to hit, ``ActorError`` when the actor is
    between restarts or busy)."""
    pid = await control.signal_service(name, sig)
    control.bus.publish(
        ChaosFaultInjected(
            source="dev8/chaos", fault="signal", target=name, signal=sig.name, pid=pid
        )
    )
    return pid
