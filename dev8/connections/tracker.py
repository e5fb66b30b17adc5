"""The connection tracker: who is connected to which service, and when anyone last was.

Established TCP connections to the services' ports are read from the kernel's tables
(``/proc/net/tcp`` and ``tcp6``) every ``interval`` seconds, which sees every client (a browser
on code-server, an SSH session) without touching the services. Connections that dev8 opened
itself (its health probes) do not count: they are not a user. The platform stops idle
workspaces from ``lastActivity``.

The tracker is an actor (``ConnectionTracker``) and the only writer of what it knows: it takes
``Snapshot`` (the ``GET /connections`` document) and ``SetPorts`` (a config reload's new ports)
calls, and publishes a ``ConnectionsView`` that readers use without asking it.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

import attrs
import trio

from actors import (
    Actor,
    ActorError,
    ActorExited,
    ActorNotFound,
    ActorRef,
    CallTimeout,
    ChildContext,
    ChildSpec,
    Envelope,
    Event,
    EventBus,
    Refuse,
    Registry,
    Reply,
    Restart,
)

__all__ = [
    "Connection",
    "ConnectionBoard",
    "ConnectionClosed",
    "ConnectionOpened",
    "ConnectionTracker",
    "ConnectionsView",
    "PortsChanged",
    "ServiceConnectionsView",
    "SetPorts",
    "Snapshot",
    "TcpRow",
    "own_socket_inodes",
    "parse_proc_net_tcp",
    "read_confirmed",
    "read_connections",
    "service_connections",
    "set_watched_ports",
]

_ESTABLISHED = 0x01


@attrs.frozen(kw_only=True)
class ConnectionOpened(Event):
    kind: ClassVar[str] = "connection_opened"
    service: str
    port: int
    peer: str


@attrs.frozen(kw_only=True)
class ConnectionClosed(Event):
    kind: ClassVar[str] = "connection_closed"
    service: str
    port: int
    peer: str
    #: Seconds between the polls that first and last saw it: accurate to the poll interval.
    duration: float


@attrs.frozen(kw_only=True)
class TcpRow:
    """One socket of the kernel's table; addresses as text, v4-mapped IPv6 shown as IPv4."""

    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int
    state: int
    inode: int


@attrs.frozen(order=True)
class Connection:
    """A client connected to a service: ``peer`` is ``IP:PORT`` (``[IPV6]:PORT``)."""

    service: str
    port: int
    peer: str


def _address(text: str) -> str:
    """The kernel prints each 32-bit word of an address in host byte order."""
    packed = b"".join(struct.pack("=I", int(text[i : i + 8], 16)) for i in range(0, len(text), 8))
    if len(packed) == 4:
        return socket.inet_ntop(socket.AF_INET, packed)
    address = ipaddress.IPv6Address(packed)
    return str(address.ipv4_mapped or address)


def _endpoint(text: str) -> tuple[str, int]:
    address, _, port = text.partition(":")
    return _address(address), int(port, 16)


def _lines(text: str) -> list[list[str]]:
    """The fields of each socket line of a table (its header left out, short lines too)."""
    return [fields for line in text.splitlines()[1:] if len(fields := line.split()) >= 10]


def _row(fields: list[str]) -> TcpRow | None:
    try:
        local_ip, local_port = _endpoint(fields[1])
        remote_ip, remote_port = _endpoint(fields[2])
        return TcpRow(
            local_ip=local_ip,
            local_port=local_port,
            remote_ip=remote_ip,
            remote_port=remote_port,
            state=int(fields[3], 16),
            inode=int(fields[9]),
        )
    except (ValueError, struct.error):
        return None


def parse_proc_net_tcp(text: str) -> list[TcpRow]:
    """Parse ``/proc/net/tcp`` or ``/proc/net/tcp6``; malformed lines are skipped."""
    return [row for fields in _lines(text) if (row := _row(fields)) is not None]


def _peer(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def service_connections(
    rows: Iterable[TcpRow], ports: Mapping[int, str], *, own_inodes: Iterable[int] = ()
) -> set[Connection]:
    """Established connections to the watched ``ports`` (port -> service), minus our own.

    A connection dev8 opened has its client end in one of dev8's sockets (``own_inodes``); its
    server end, the row that counts, is recognised by its remote end being that client end.
    """
    rows = list(rows)
    own = set(own_inodes)
    ours = {(row.local_ip, row.local_port) for row in rows if row.inode in own}
    return {
        Connection(ports[row.local_port], row.local_port, _peer(row.remote_ip, row.remote_port))
        for row in rows
        if row.state == _ESTABLISHED
        and row.local_port in ports
        and (row.remote_ip, row.remote_port) not in ours
    }


def own_socket_inodes(proc: str = "/proc") -> set[int]:
    """The inodes of this process's sockets (``socket:[INODE]`` links in its fd directory)."""
    inodes: set[int] = set()
    fd_dir = os.path.join(proc, "self", "fd")
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def _port_suffixes(ports: Iterable[int]) -> set[str]:
    """How the ports end a raw ``ADDRESS:PORT`` field (the kernel prints ``%04X``)."""
    return {f":{port:04X}" for port in ports}


def _rows_where(lines: list[list[str]], keep: Callable[[list[str]], bool]) -> list[TcpRow]:
    return [row for fields in lines if keep(fields) and (row := _row(fields)) is not None]


def read_connections(ports: Mapping[int, str], *, proc: str = "/proc") -> set[Connection]:
    """The current connections to the watched ports, from this network namespace's tables.

    Only what can matter is parsed, and only when it can: with no port watched nothing is read
    (that poll was most of dev8's idle CPU); then only the established lines of a watched port;
    and only if one of those comes from a socket in this network namespace, that socket's line and
    dev8's own socket inodes, to leave out dev8's own connections (its probes). Parsing every line
    cost 5 ms a poll with 500 sockets in the table; the filters, 0.5 ms.
    """
    if not ports:
        return set()
    lines: list[list[str]] = []
    for table in ("tcp", "tcp6"):
        try:
            with open(os.path.join(proc, "net", table), encoding="ascii") as handle:
                lines.extend(_lines(handle.read()))
        except FileNotFoundError:  # no IPv6 in this kernel
            continue
    watched = _port_suffixes(ports)
    servers = _rows_where(lines, lambda fields: fields[3] == "01" and fields[1][-5:] in watched)
    if not servers:
        return set()
    peers = {(row.remote_ip, row.remote_port) for row in servers}
    peer_ports = _port_suffixes(port for _, port in peers)
    candidates = _rows_where(lines, lambda fields: fields[1][-5:] in peer_ports)
    clients = [row for row in candidates if (row.local_ip, row.local_port) in peers]
    own = own_socket_inodes(proc) if clients else set()
    return service_connections([*servers, *clients], ports, own_inodes=own)


Read = Callable[[Mapping[int, str]], set[Connection]]
#: Runs a ``Read`` off the event loop (``trio.to_thread.run_sync``'s shape).
Offload = Callable[[Read, Mapping[int, str]], Awaitable[set[Connection]]]


def read_confirmed(
    read: Read, ports: Mapping[int, str], *, known: Iterable[Connection]
) -> set[Connection]:
    """``read``, and if it finds a connection not ``known``, a second read to confirm it.

    Off the event loop, dev8 may open and close a connection of its own (a probe's) between the
    read of the tables and the listing of its sockets: it would pass for a client. That socket
    is closed by the second read, so a new connection counts only if both reads find it (one
    seen only by the second is counted at the next sample). Connections ``known`` already, and
    closed ones, need no second look: the race only ever adds connections.
    """
    known = set(known)
    found = read(ports)
    if found <= known:
        return found
    again = read(ports)
    return {c for c in again if c in known or c in found}


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, tz=UTC).isoformat()


# -- the state and what is published of it ----------------------------------------------------


@attrs.frozen(kw_only=True)
class ServiceConnectionsView:
    """One service's part of the published view."""

    ports: tuple[int, ...]
    #: ``IP:PORT`` of each client, sorted.
    peers: tuple[str, ...]
    #: Wall time of the last activity (None: nobody came yet).
    last_activity: float | None


@attrs.frozen(kw_only=True)
class ConnectionsView:
    """What the tracker publishes after each change: immutable, so anyone reads it without
    asking the tracker (``GET /connections``, the idle watcher, ``/metrics``)."""

    services: Mapping[str, ServiceConnectionsView]
    last_activity: float | None

    def count(self, service: str) -> int:
        view = self.services.get(service)
        return 0 if view is None else len(view.peers)

    def document(self, websocket_clients: int) -> dict[str, Any]:
        """``GET /connections`` (``websocket_clients``: the API's, counted where they live)."""
        return {
            "services": {
                name: {
                    "count": len(view.peers),
                    "ports": list(view.ports),
                    "peers": list(view.peers),
                    "lastActivity": _iso(view.last_activity),
                }
                for name, view in self.services.items()
            },
            "websocketClients": websocket_clients,
            "lastActivity": _iso(self.last_activity),
        }


@attrs.frozen(kw_only=True)
class PortsChanged:
    """The answer to ``SetPorts``: what the new ports changed."""

    #: Services watched now that were not.
    added: tuple[str, ...] = ()
    #: Services no longer watched.
    removed: tuple[str, ...] = ()
    #: Services watched before and now, on other ports.
    changed: tuple[str, ...] = ()
    #: Connections to ports no longer watched: forgotten, each published as ``connection_closed``.
    closed: tuple[Connection, ...] = ()

    @property
    def nothing(self) -> bool:
        return not (self.added or self.removed or self.changed or self.closed)


class ConnectionBoard:
    """The tracker's state: the watched ports, who is connected since when, the last activity.

    Pure (a wall clock given in): the tracker actor owns one and is its only writer; everyone
    else reads the ``ConnectionsView`` it publishes.
    """

    def __init__(
        self, ports: Mapping[str, Iterable[int]], *, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self._wall_clock = wall_clock
        self.services: dict[str, tuple[int, ...]] = {}
        self.ports: dict[int, str] = {}
        self._current: dict[Connection, float] = {}  # -> wall time first seen
        self._activity: dict[str, float | None] = {}
        self._views: dict[str, ServiceConnectionsView] = {}
        self._dirty: set[str] = set()
        self._view: ConnectionsView | None = None
        self.set_ports(ports)

    def set_ports(
        self, ports: Mapping[str, Iterable[int]]
    ) -> tuple[PortsChanged, list[tuple[Connection, float]]]:
        """Watch these services' ports instead; connections to ports no longer watched are
        closed (returned with how long they were open), the rest keep their history."""
        services = {name: tuple(numbers) for name, numbers in ports.items()}
        before = self.services
        self.services = services
        self.ports = {port: name for name, numbers in services.items() for port in numbers}
        self._activity = {name: self._activity.get(name) for name in services}
        now = self._wall_clock()
        closed = [
            (c, now - first)
            for c, first in sorted(self._current.items())
            if self.ports.get(c.port) != c.service
        ]
        for connection, _ in closed:
            del self._current[connection]
            if connection.service in services:
                self._activity[connection.service] = now
        changed = PortsChanged(
            added=tuple(name for name in services if name not in before),
            removed=tuple(name for name in before if name not in services),
            changed=tuple(n for n in services if n in before and services[n] != before[n]),
            closed=tuple(c for c, _ in closed),
        )
        self._dirty.update(changed.added, changed.changed, (c.service for c, _ in closed))
        for name in changed.removed:
            self._views.pop(name, None)
        if not changed.nothing:
            self._view = None
        return changed, closed

    @property
    def current(self) -> frozenset[Connection]:
        return frozenset(self._current)

    def last_activity(self, service: str | None = None) -> float | None:
        """Wall time of the last activity of ``service``, or of any service."""
        if service is not None:
            return self._activity[service]
        times = [t for t in self._activity.values() if t is not None]
        return max(times) if times else None

    def update(
        self, found: Iterable[Connection]
    ) -> tuple[list[Connection], list[tuple[Connection, float]]]:
        """Take in one poll: the connections opened, and those closed with how long they were open.

        A service was active at this poll if it has connections or one just closed. Connections
        to ports not watched (a poll that raced a change of ports) are left out.
        """
        now = self._wall_clock()
        found = {c for c in found if self.ports.get(c.port) == c.service}
        opened = sorted(found - self._current.keys())
        closed = [(c, now - self._current.pop(c)) for c in sorted(self._current.keys() - found)]
        for connection in opened:
            self._current[connection] = now
        for connection in (*self._current, *(c for c, _ in closed)):
            self._activity[connection.service] = now
            self._dirty.add(connection.service)
        if self._dirty:
            self._view = None
        return opened, closed

    def view(self) -> ConnectionsView:
        """The published form; rebuilt only for the services that changed since the last one."""
        if self._view is not None:
            return self._view
        peers: dict[str, list[str]] = {name: [] for name in self._dirty}
        for connection in sorted(self._current):
            if connection.service in peers:
                peers[connection.service].append(connection.peer)
        for name in self._dirty:
            if name in self.services:
                self._views[name] = ServiceConnectionsView(
                    ports=self.services[name],
                    peers=tuple(peers[name]),
                    last_activity=self._activity[name],
                )
        self._dirty.clear()
        self._view = ConnectionsView(
            services={name: self._views[name] for name in self.services},
            last_activity=self.last_activity(),
        )
        return self._view


# -- the actor ------------------------------------------------------------------------------------


@attrs.frozen
class Snapshot:
    """Call: the connections document, as ``GET /connections`` shows it (a dict)."""


def _ports(ports: Mapping[str, Iterable[int]]) -> dict[str, tuple[int, ...]]:
    return {str(name): tuple(int(port) for port in numbers) for name, numbers in ports.items()}


@attrs.frozen(hash=False)
class SetPorts:
    """Call: watch these services' ports (service -> ports) instead; answered ``PortsChanged``."""

    ports: Mapping[str, tuple[int, ...]] = attrs.field(converter=_ports)


@attrs.frozen
class _SampleDue:
    """The sampling timer went off."""


@attrs.frozen
class _Sampled:
    """A read of the kernel's tables finished, for the ports of ``generation``."""

    generation: int
    found: frozenset[Connection]


def _nowhere(event: Event) -> None:
    """Where events go when the tracker runs outside a supervisor (no context to publish on)."""


class ConnectionTracker(Actor):
    """The connection tracker: the only writer of its ``ConnectionBoard``.

    It samples the kernel's tables every ``interval`` seconds on a ``send_after`` timer (only
    while some port is watched), reading them off the event loop (``offload``: a worker thread)
    in a helper task so that ``Snapshot`` and ``SetPorts`` are answered meanwhile (a sample that
    finds a new connection reads twice: ``read_confirmed``), and ``SetPorts`` samples at once.
    After each change it publishes the ``connection_opened`` / ``connection_closed`` events and
    the new ``ConnectionsView``, in one step. Its state outlives its restarts: the first sample
    of a new incarnation reports what opened and closed while it was down, so every ``opened``
    still gets its ``closed`` (the idle watcher counts on it).
    """

    mailbox_capacity = 16

    def __init__(
        self,
        registry: Registry,
        ports: Mapping[str, Iterable[int]],
        *,
        path: str | None = None,
        interval: float = 5.0,
        websocket_clients: Callable[[], int] = lambda: 0,
        read: Read = read_connections,
        offload: Offload = trio.to_thread.run_sync,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(registry, path)
        self._board = ConnectionBoard(ports, wall_clock=wall_clock)
        self._interval = interval
        self._websocket_clients = websocket_clients
        self._read = read
        self._offload = offload
        self._published = self._board.view()
        self._publish: Callable[[Event], object] = _nowhere
        #: Bumped by each ``SetPorts`` that changed something: a read of older ports is dropped.
        self._generation = 0
        self._reading = False
        self._sample_again = False
        self._timer: trio.CancelScope | None = None

    # -- what readers see, without asking --------------------------------------------------------

    @property
    def published(self) -> ConnectionsView:
        return self._published

    def snapshot(self) -> dict[str, Any]:
        """``GET /connections`` from the published view (the API's client count read now)."""
        return self._published.document(self._websocket_clients())

    def websocket_clients(self) -> int:
        """The API's event-stream client count, now (what ``snapshot()`` puts in, alone)."""
        return self._websocket_clients()

    def child_spec(self, name: str = "connections") -> ChildSpec:
        return ChildSpec(name=name, start=self.run, restart=Restart.PERMANENT, shutdown_timeout=1.0)

    # -- the behaviour ---------------------------------------------------------------------------

    async def run(
        self,
        ctx: ChildContext | None = None,
        *,
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        if ctx is not None:
            if self._path is not None and self._path != ctx.path:
                raise ValueError(f"tracker at {self._path} run as {ctx.path}")
            self._publish = ctx.publish
        await super().run(ctx, task_status=task_status)

    async def init(self) -> None:
        """Sample once before answering anyone: started means the view is current."""
        self._reading = self._sample_again = False
        self._timer = None
        ports = dict(self._board.ports)
        self._take(await self._read_off_loop(ports) if ports else ())
        self._schedule()

    async def handle_call(self, message: Any, reply: Reply[Any]) -> Any:
        if isinstance(message, Snapshot):
            return self.snapshot()
        if isinstance(message, SetPorts):
            changed, closed = self._board.set_ports(message.ports)
            if not changed.nothing:
                self._generation += 1
                self._announce([], closed)
                self._sample_now()
            return changed
        raise Refuse(TypeError(f"{self.path} takes no call {type(message).__name__}"))

    async def handle_info(self, message: Any) -> None:
        if isinstance(message, _SampleDue):
            self._timer = None
            self._sample_now()
        elif isinstance(message, _Sampled):
            self._reading = False
            if message.generation == self._generation:
                self._take(message.found)
            if self._sample_again:
                self._sample_again = False
                self._sample_now()
            else:
                self._schedule()

    # -- sampling ----------------------------------------------------------------------------

    def _schedule(self) -> None:
        """The next sample in ``interval`` seconds; none while no port is watched."""
        if self._board.ports and self._timer is None:
            self._timer = self.send_after(self._interval, _SampleDue())

    def _sample_now(self) -> None:
        if self._reading:  # the read under way may be of older ports: one more follows it
            self._sample_again = True
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        ports = dict(self._board.ports)
        if not ports:
            self._take(())
            return
        self._reading = True
        self.start_soon(self._read_tables, self._generation, ports)

    async def _read_tables(self, generation: int, ports: Mapping[int, str]) -> None:
        """A helper task: a failed read crashes the tracker (its supervisor restarts it)."""
        found = frozenset(await self._read_off_loop(ports))
        self.notify(_Sampled(generation, found))

    async def _read_off_loop(self, ports: Mapping[int, str]) -> set[Connection]:
        """One sample: the tables read and filtered off the event loop (35 ms with 7,000 sockets
        in them, which the loop would stall for), a new connection confirmed by a second read."""
        read = functools.partial(read_confirmed, self._read, known=self._board.current)
        return await self._offload(read, ports)

    def _take(self, found: Iterable[Connection]) -> None:
        opened, closed = self._board.update(found)
        self._announce(opened, closed)

    def _announce(
        self, opened: Iterable[Connection], closed: Iterable[tuple[Connection, float]]
    ) -> None:
        """Publish the events and the new view together (no await between)."""
        self._published = self._board.view()
        for connection in opened:
            self._publish(
                ConnectionOpened(
                    service=connection.service, port=connection.port, peer=connection.peer
                )
            )
        for connection, duration in closed:
            self._publish(
                ConnectionClosed(
                    service=connection.service,
                    port=connection.port,
                    peer=connection.peer,
                    duration=round(duration, 3),
                )
            )


async def set_watched_ports(
    tracker: ActorRef,
    bus: EventBus,
    ports: Mapping[str, Iterable[int]],
    *,
    timeout: float,
) -> PortsChanged:
    """``SetPorts``, riding out a restart of the tracker.

    Between two incarnations a call fails at once (``ActorNotFound``; ``ActorExited`` if it died
    on this call): the message is sent again when the tracker has started again (``SetPorts``
    says the whole state wanted, so sending it twice does no harm). The last error is raised if
    the tracker is not back within ``timeout``.
    """
    message = SetPorts(ports)
    failure: ActorError = CallTimeout(f"{tracker.path} did not answer within {timeout}s")

    def restarted(envelope: Envelope) -> bool:
        return envelope.event.kind == "child_started" and envelope.event.source == tracker.path

    with trio.move_on_after(timeout), bus.subscribe(accept=restarted) as started:
        while True:
            try:
                changed: PortsChanged = await tracker.call(message, timeout=timeout)
            except (ActorNotFound, ActorExited) as error:
                failure = error
                await started.receive()
            else:
                return changed
    raise failure
