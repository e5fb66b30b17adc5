"""Fault injection for chaos tests: crash an actor, signal a service's processes.

Off unless the config says ``chaos: {enabled: true}``: the API registers its ``/chaos`` routes only
then. Every fault is published on the bus (``chaos_fault_injected``), so the logs and the event
stream tell an injected failure from a real one.
"""

from __future__ import annotations

import os
import signal
from typing import ClassVar

import attrs

from actors import ChildState, Event, NodeStatus

from .control import Control, UnknownService

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


class NotRunning(Exception):
    """The target exists but has nothing to hit right now (backoff, stopped, no process)."""

    def __init__(self, target: str, state: str) -> None:
        super().__init__(f"{target} is {state}, not running")
        self.target = target
        self.state = state


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


def signal_service(control: Control, name: str, sig: signal.Signals) -> int:
    """Send ``sig`` to the process group of a running service; returns the group's id."""
    nodes = control.service_nodes()
    if name not in nodes:
        raise UnknownService(name, list(nodes))
    node = nodes[name]
    pid = node.info.get("pid")
    if node.state is not ChildState.RUNNING or not isinstance(pid, int):
        raise NotRunning(name, node.state.value)
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        raise NotRunning(name, "gone") from None
    control.bus.publish(
        ChaosFaultInjected(
            source="dev8/chaos", fault="signal", target=name, signal=sig.name, pid=pid
        )
    )
    return pid
