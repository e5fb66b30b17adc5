"""The narrow interface through which the API reads and acts on the workspace.

The API never touches actors directly: it reads snapshots and the bus, and asks for changes here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import trio

import dev8
from actors import ChildState, EventBus, NodeStatus, Supervisor, UnknownChild


class UnknownService(LookupError):
    def __init__(self, name: str, known: Sequence[str]) -> None:
        super().__init__(f"unknown service {name!r}")
        self.name = name
        self.known = sorted(known)


def format_uptime(seconds: float) -> str:
    """``2h30m15s``, the seed's shape; days are folded into hours."""
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def iso_now() -> str:
    return datetime.now(tz=UTC).isoformat()


class Control:
    """What the API may see and do."""

    def __init__(
        self,
        *,
        bus: EventBus,
        root: Supervisor,
        services: Supervisor,
        environment_id: str,
        user_id: str,
    ) -> None:
        self.bus = bus
        self.root = root
        self.services = services
        self.environment_id = environment_id
        self.user_id = user_id
        self.started_wall = time.time()
        self.started_clock = trio.current_time()

    def uptime(self) -> float:
        return trio.current_time() - self.started_clock

    def service_nodes(self) -> Mapping[str, NodeStatus]:
        return {node.name: node for node in self.services.children()}

    def service_names(self) -> list[str]:
        return list(self.service_nodes())

    def health(self) -> tuple[bool, dict[str, Any]]:
        nodes = self.service_nodes()
        healthy = all(node.state is ChildState.RUNNING for node in nodes.values())
        body = {
            "healthy": healthy,
            "lastCheck": iso_now(),
            "services": {name: node.state.value for name, node in nodes.items()},
            "uptime": format_uptime(self.uptime()),
        }
        return healthy, body

    def status(self) -> dict[str, Any]:
        return {
            "version": dev8.__version__,
            "pid": os.getpid(),
            "environment_id": self.environment_id,
            "user_id": self.user_id,
            "started": datetime.fromtimestamp(self.started_wall, tz=UTC).isoformat(),
            "uptime": format_uptime(self.uptime()),
            "uptime_seconds": round(self.uptime(), 3),
            "last_event": self.bus.last_seq,
            "tree": self.root.snapshot().to_dict(),
        }

    async def restart_service(self, name: str) -> NodeStatus:
        try:
            return await self.services.restart_child(name, reason="manual")
        except UnknownChild as error:
            raise UnknownService(name, error.known) from None
