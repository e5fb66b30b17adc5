"""Idle: nobody has been connected for ``idle.after`` seconds, the platform's cue to stop us.

Someone is connected while the connection tracker has a client on a service's port (SSH, code-
server: its ``connection_opened`` / ``connection_closed`` events) or, unless
``idle.api_clients`` is off, an event-stream (websocket) client is on the API (read from the
same ``GET /connections`` snapshot every ``poll_interval``: API clients are not events, so that a
stream never shows its own readers). The snapshot is the view the tracker publishes, read
without asking it: the watcher only reads what the tracker owns. The idle watcher publishes
``workspace_idle`` once the quiet has lasted ``after`` seconds, and ``workspace_active`` when
someone comes back. The rules are :class:`IdleState`, pure, on a clock given in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import attrs
import trio

from actors import ChildContext, ChildSpec, Event, EventBus, Restart

__all__ = ["IdleState", "WorkspaceActive", "WorkspaceIdle", "make_idle_spec", "run_idle"]


def _rounded(seconds: float) -> float:
    return round(seconds, 3)


@attrs.frozen(kw_only=True)
class WorkspaceIdle(Event):
    """Nobody connected for ``idle_for`` seconds (at least ``after``)."""

    kind: ClassVar[str] = "workspace_idle"
    idle_for: float = attrs.field(converter=_rounded)
    after: float


@attrs.frozen(kw_only=True)
class WorkspaceActive(Event):
    """Someone connected again after the workspace was idle; ``by``: a service, or ``api``."""

    kind: ClassVar[str] = "workspace_active"
    by: str
    idle_for: float = attrs.field(converter=_rounded)


WATCHED_KINDS = frozenset({"connection_opened", "connection_closed"})


class IdleState:
    """Who is connected, since when nobody is, and whether that was announced."""

    def __init__(
        self,
        *,
        after: float,
        now: float,
        connections: Iterable[tuple[str, str]] = (),
        api_clients: int = 0,
        count_api_clients: bool = True,
    ) -> None:
        self.after = after
        self.count_api_clients = count_api_clients
        self.connections = set(connections)  # (service, peer)
        self.api_clients = api_clients
        self.idle = False
        #: Monotonic time since which nobody is connected (None: someone is).
        self.quiet_since: float | None = None if self.busy else now

    @property
    def busy(self) -> bool:
        return bool(self.connections) or (self.count_api_clients and self.api_clients > 0)

    def deadline(self) -> float:
        """When the workspace turns idle if nobody comes (``inf``: not counting down)."""
        if self.idle or self.quiet_since is None:
            return math.inf
        return self.quiet_since + self.after

    def observe(self, kind: str, data: Mapping[str, Any], now: float) -> Event | None:
        """Take in one connection event; ``WorkspaceActive`` when it ended an idle spell."""
        was_busy = self.busy
        connection = (str(data.get("service")), str(data.get("peer")))
        if kind == "connection_opened":
            self.connections.add(connection)
        elif kind == "connection_closed":
            self.connections.discard(connection)
        return self._changed(was_busy, connection[0], now)

    def set_api_clients(self, count: int, now: float) -> Event | None:
        """Take in the API's current event-stream client count."""
        was_busy = self.busy
        self.api_clients = count
        return self._changed(was_busy, "api", now)

    def _changed(self, was_busy: bool, by: str, now: float) -> Event | None:
        if self.busy and not was_busy:
            quiet_since, self.quiet_since = self.quiet_since, None
            if self.idle:
                self.idle = False
                idle_for = now - quiet_since if quiet_since is not None else 0.0
                return WorkspaceActive(by=by, idle_for=idle_for)
        elif was_busy and not self.busy:
            self.quiet_since = now
        return None

    def expire(self, now: float) -> Event | None:
        """``WorkspaceIdle`` once the quiet has lasted ``after`` seconds (once per spell)."""
        if now < self.deadline():
            return None
        self.idle = True
        assert self.quiet_since is not None
        return WorkspaceIdle(idle_for=now - self.quiet_since, after=self.after)


def seed_from(snapshot: Mapping[str, Any]) -> tuple[set[tuple[str, str]], int]:
    """The connections and API clients in a ``GET /connections`` document."""
    connections = {
        (name, str(peer))
        for name, info in snapshot.get("services", {}).items()
        for peer in info.get("peers", ())
    }
    return connections, int(snapshot.get("websocketClients", 0))


async def run_idle(
    bus: EventBus,
    snapshot: Callable[[], Mapping[str, Any]],
    publish: Callable[[Event], object],
    *,
    after: float,
    count_api_clients: bool = True,
    poll_interval: float = 5.0,
    api_client_count: Callable[[], int] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Follow the connection events (and the API's client count); announce idle and active.

    ``api_client_count``: the count alone, for the poll (else read from ``snapshot()``, which
    writes out every service: 2 ms a poll with 1,000 services, half of an idle dev8's CPU).
    """
    count_clients = api_client_count or (lambda: seed_from(snapshot())[1])
    with bus.subscribe(accept=lambda envelope: envelope.event.kind in WATCHED_KINDS) as events:
        # Subscribed and seeded in one step (no await between): nothing counted twice or missed.
        connections, api_clients = seed_from(snapshot())
        state = IdleState(
            after=after,
            now=trio.current_time(),
            connections=connections,
            api_clients=api_clients,
            count_api_clients=count_api_clients,
        )
        changed = trio.Event()

        async def countdown() -> None:
            nonlocal changed
            while True:
                changed = trio.Event()
                with trio.move_on_at(state.deadline()):
                    await changed.wait()
                idle = state.expire(trio.current_time())
                if idle is not None:
                    publish(idle)

        def publish_active(active: Event | None) -> None:
            if active is not None:
                publish(active)
            changed.set()

        async def poll_api_clients() -> None:
            while True:
                await trio.sleep(poll_interval)
                clients = count_clients()
                publish_active(state.set_api_clients(clients, trio.current_time()))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(countdown)
            if count_api_clients:
                nursery.start_soon(poll_api_clients)
            task_status.started()
            async for envelope in events:
                event = envelope.event
                publish_active(state.observe(event.kind, event.data(), trio.current_time()))


def make_idle_spec(
    bus: EventBus,
    snapshot: Callable[[], Mapping[str, Any]],
    *,
    after: float,
    count_api_clients: bool = True,
    poll_interval: float = 5.0,
    api_client_count: Callable[[], int] | None = None,
    name: str = "idle",
) -> ChildSpec:
    """The idle watcher actor; ``snapshot()`` is the tracker's ``GET /connections`` document, from
    the view it publishes (``ConnectionTracker.snapshot``)."""

    async def start(ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
        await run_idle(
            bus,
            snapshot,
            ctx.publish,
            after=after,
            count_api_clients=count_api_clients,
            poll_interval=poll_interval,
            api_client_count=api_client_count,
            task_status=task_status,
        )

    return ChildSpec(name=name, start=start, restart=Restart.PERMANENT, shutdown_timeout=1.0)
