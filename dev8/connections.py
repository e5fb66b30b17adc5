"""The connection tracker: who is connected to which service, and when anyone last was.

Established TCP connections to the services' ports are read from the kernel's tables
(``/proc/net/tcp`` and ``tcp6``) every ``interval`` seconds, which sees every client (a browser
on code-server, an SSH session) without touching the services. Connections that dev8 opened
itself (its health probes) do not count: they are not a user. The platform stops idle
workspaces from ``lastActivity``.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

import attrs
import trio

from actors import ChildContext, ChildSpec, Event, Restart

__all__ = [
    "Connection",
    "ConnectionBoard",
    "ConnectionClosed",
    "ConnectionOpened",
    "TcpRow",
    "make_tracker_spec",
    "own_socket_inodes",
    "parse_proc_net_tcp",
    "read_connections",
    "run_tracker",
    "service_connections",
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


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, tz=UTC).isoformat()


class ConnectionBoard:
    """The tracker's findings, readable by the API as plain data.

    ``websocket_clients`` counts the API's event subscribers. They are shown, but are not
    activity: the platform's own dashboards and agents would otherwise keep a workspace awake.
    """

    def __init__(
        self,
        ports: Mapping[str, Iterable[int]],
        *,
        websocket_clients: Callable[[], int] = lambda: 0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.services = {name: tuple(numbers) for name, numbers in ports.items()}
        self.ports = {port: name for name, numbers in self.services.items() for port in numbers}
        self._websocket_clients = websocket_clients
        self._wall_clock = wall_clock
        self._current: dict[Connection, float] = {}  # -> wall time first seen
        self._activity: dict[str, float | None] = dict.fromkeys(self.services)

    def set_ports(self, ports: Mapping[str, Iterable[int]]) -> None:
        """Follow a config reload: services and their ports, keeping what is still watched."""
        self.services = {name: tuple(numbers) for name, numbers in ports.items()}
        self.ports = {port: name for name, numbers in self.services.items() for port in numbers}
        self._activity = {name: self._activity.get(name) for name in self.services}
        self._current = {c: t for c, t in self._current.items() if c.service in self.services}

    @property
    def current(self) -> frozenset[Connection]:
        return frozenset(self._current)

    def count(self, service: str) -> int:
        return sum(1 for connection in self._current if connection.service == service)

    def last_activity(self, service: str | None = None) -> float | None:
        """Wall time of the last activity of ``service``, or of any service."""
        if service is not None:
            return self._activity[service]
        times = [t for t in self._activity.values() if t is not None]
        return max(times) if times else None

    def update(
        self, found: set[Connection]
    ) -> tuple[list[Connection], list[tuple[Connection, float]]]:
        """Take in one poll: the connections opened, and those closed with how long they were open.

        A service was active at this poll if it has connections or one just closed.
        """
        now = self._wall_clock()
        opened = sorted(found - self._current.keys())
        closed = [(c, now - self._current.pop(c)) for c in sorted(self._current.keys() - found)]
        for connection in opened:
            self._current[connection] = now
        for connection in (*self._current, *(c for c, _ in closed)):
            self._activity[connection.service] = now
        return opened, closed

    def snapshot(self) -> dict[str, Any]:
        """``GET /connections``."""
        services = {}
        for name, numbers in self.services.items():
            connections = sorted(c for c in self._current if c.service == name)
            services[name] = {
                "count": len(connections),
                "ports": list(numbers),
                "peers": [c.peer for c in connections],
                "lastActivity": _iso(self._activity[name]),
            }
        return {
            "services": services,
            "websocketClients": self._websocket_clients(),
            "lastActivity": _iso(self.last_activity()),
        }


async def run_tracker(
    ctx: ChildContext,
    board: ConnectionBoard,
    *,
    interval: float = 5.0,
    read: Callable[[Mapping[int, str]], set[Connection]] = read_connections,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Poll every ``interval`` seconds and publish what changed; started after the first poll."""
    first = True
    while True:
        # Reading procfs does not block; a thread would only cost more than the read.
        opened, closed = board.update(read(board.ports))
        for connection in opened:
            ctx.publish(
                ConnectionOpened(
                    service=connection.service, port=connection.port, peer=connection.peer
                )
            )
        for connection, duration in closed:
            ctx.publish(
                ConnectionClosed(
                    service=connection.service,
                    port=connection.port,
                    peer=connection.peer,
                    duration=round(duration, 3),
                )
            )
        if first:
            first = False
            task_status.started()
        await trio.sleep(interval)


def make_tracker_spec(
    board: ConnectionBoard, *, interval: float = 5.0, name: str = "connections"
) -> ChildSpec:
    """The tracker actor, to run under any supervisor."""

    async def start(ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
        await run_tracker(ctx, board, interval=interval, task_status=task_status)

    return ChildSpec(name=name, start=start, restart=Restart.PERMANENT, shutdown_timeout=1.0)
