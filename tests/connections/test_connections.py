"""dev8.connections.tracker: the kernel's TCP tables, and the tracker actor on real sockets."""

from __future__ import annotations

import functools
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from support.audit_hook import audited
from support.net import free_port

from actors import (
    ActorExited,
    ActorNotFound,
    ActorRef,
    Backoff,
    ChildContext,
    EventBus,
    Registry,
    Supervisor,
)
from dev8.connections.idle import run_idle
from dev8.connections.tracker import (
    Connection,
    ConnectionsView,
    ConnectionTracker,
    PortsChanged,
    SetPorts,
    Snapshot,
    TcpRow,
    own_socket_inodes,
    parse_proc_net_tcp,
    read_connections,
    service_connections,
    set_watched_ports,
)

# Captured on this machine: a dual-stack listener on port 0xA013 (40979) with one client over
# IPv4 (seen as v4-mapped) and one over ::1.
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:A013 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 169503 1 000000003148aa15 100 0 0 10 0
   1: 00000000000000000000000001000000:A013 00000000000000000000000001000000:941A 01 00000000:00000000 00:00000000 00000000     0        0 169507 1 00000000345d71d5 20 0 0 10 -1
   2: 00000000000000000000000001000000:941A 00000000000000000000000001000000:A013 01 00000000:00000000 00:00000000 00000000     0        0 169506 2 00000000cdff5d50 20 0 0 10 -1
   3: 0000000000000000FFFF00000100007F:A013 0000000000000000FFFF00000100007F:9244 01 00000000:00000000 00:00000000 00000000     0        0 169505 1 0000000087d3fc89 22 0 0 10 -1
"""  # noqa: E501
TCP4 = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1684 1 00000000eb6ad8f9 100 0 0 10 0
  62: 0100007F:9244 0100007F:A013 01 00000000:00000000 00:00000000 00000000     0        0 169504 2 00000000c504eb7e 22 0 0 10 -1
   7: 0100007F:1F90 0201000A:D431 06 00000000:00000000 03:00000AF2 00000000     0        0 0 3 00000000bca6f27d
"""  # noqa: E501


def test_parse_tcp6_shows_v4_mapped_addresses_as_ipv4() -> None:
    rows = parse_proc_net_tcp(TCP6)
    assert [(r.local_ip, r.local_port, r.remote_ip, r.remote_port, r.state) for r in rows] == [
        ("::", 40979, "::", 0, 0x0A),
        ("::1", 40979, "::1", 37914, 0x01),
        ("::1", 37914, "::1", 40979, 0x01),
        ("127.0.0.1", 40979, "127.0.0.1", 37444, 0x01),
    ]
    assert [r.inode for r in rows] == [169503, 169507, 169506, 169505]


def test_parse_tcp4_and_skip_malformed_lines() -> None:
    rows = parse_proc_net_tcp(TCP4 + "   9: garbage\n  10: ZZZZ:1 0:0 01 a b c d e 5\n")
    assert rows == [
        TcpRow(
            local_ip="0.0.0.0", local_port=2024, remote_ip="0.0.0.0", remote_port=0, state=10,
            inode=1684,
        ),
        TcpRow(
            local_ip="127.0.0.1", local_port=37444, remote_ip="127.0.0.1", remote_port=40979,
            state=1, inode=169504,
        ),
        TcpRow(
            local_ip="127.0.0.1", local_port=8080, remote_ip="10.0.1.2", remote_port=54321,
            state=6, inode=0,
        ),
    ]  # fmt: skip


def test_only_established_connections_to_watched_ports_count() -> None:
    rows = parse_proc_net_tcp(TCP6) + parse_proc_net_tcp(TCP4)
    assert service_connections(rows, {40979: "web"}) == {
        Connection("web", 40979, "[::1]:37914"),
        Connection("web", 40979, "127.0.0.1:37444"),
    }
    # 8080's only row is in TIME_WAIT (06); the listener (0A) is not a connection either.
    assert service_connections(rows, {8080: "code", 2024: "ssh"}) == set()


def test_connections_dev8_opened_itself_do_not_count() -> None:
    rows = parse_proc_net_tcp(TCP6)
    # Inode 169506 is the client end of the ::1 connection: ours, like a health probe's.
    assert service_connections(rows, {40979: "web"}, own_inodes={169506}) == {
        Connection("web", 40979, "127.0.0.1:37444")
    }


def test_own_socket_inodes_sees_a_new_socket() -> None:
    with socket.socket() as sock:
        inode = Path(f"/proc/self/fd/{sock.fileno()}").readlink().name
        assert int(inode[len("socket:[") : -1]) in own_socket_inodes()


# --------------------------------------------------------------------------- what is read


def fake_proc(root: Path, tcp: str, tcp6: str, own_inodes: Iterable[int]) -> Path:
    """A /proc with these tables and these sockets open in ``self``: fd links as the kernel's."""
    (root / "net").mkdir(parents=True)
    (root / "net" / "tcp").write_text(tcp)
    (root / "net" / "tcp6").write_text(tcp6)
    fds = root / "self" / "fd"
    fds.mkdir(parents=True)
    (fds / "0").symlink_to("/dev/null")
    (fds / "1").symlink_to("pipe:[4242]")
    for fd, inode in enumerate(own_inodes, start=3):
        (fds / str(fd)).symlink_to(f"socket:[{inode}]")
    return root


def test_with_no_port_watched_nothing_is_read(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path / "proc", TCP4, TCP6, [169506])
    with audited() as seen:
        assert read_connections({}, proc=str(proc)) == set()
    assert [path for _, path in seen if path.startswith(str(proc))] == []
    # Control: a watched port reads both tables, and dev8's sockets for the loopback clients.
    with audited() as seen:
        assert read_connections({40979: "web"}, proc=str(proc)) == {
            Connection("web", 40979, "127.0.0.1:37444")
        }
    assert [entry for entry in seen if entry[1].startswith(str(proc))] == [
        ("open", str(proc / "net" / "tcp")),
        ("open", str(proc / "net" / "tcp6")),
        ("os.listdir", str(proc / "self" / "fd")),
    ]


def test_nobody_connected_to_a_watched_port_leaves_our_sockets_unread(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path / "proc", TCP4, TCP6, [169506])
    # 8080 has a TIME_WAIT row, 2024 a listener: nobody connected, no client end to look for.
    with audited() as seen:
        assert read_connections({8080: "code", 2024: "ssh"}, proc=str(proc)) == set()
    assert [path for _, path in seen if path.startswith(str(proc))] == [
        str(proc / "net" / "tcp"),
        str(proc / "net" / "tcp6"),
    ]


def test_the_filtered_read_finds_what_the_full_parse_finds(tmp_path: Path) -> None:
    own = [169506]
    proc = fake_proc(tmp_path / "proc", TCP4, TCP6, own)
    rows = parse_proc_net_tcp(TCP4) + parse_proc_net_tcp(TCP6)
    # Watched: the server port; a client's ephemeral port (its rows are established too);
    # ports with no connection; nothing known.
    for ports in (
        {40979: "web"},
        {37914: "odd"},
        {40979: "web", 37444: "x"},
        {8080: "c"},
        {1: "z"},
    ):
        expected = service_connections(rows, ports, own_inodes=own)
        assert read_connections(ports, proc=str(proc)) == expected, ports
    assert read_connections({37914: "odd"}, proc=str(proc)) == {
        Connection("odd", 37914, "[::1]:40979")
    }


def _word(packed: bytes) -> str:
    return "".join(f"{struct.unpack('=I', packed[i : i + 4])[0]:08X}" for i in range(0, 16, 4))


def _kernel_address(ip: str) -> str:
    """An address as /proc/net/tcp* prints it: 32-bit words in host byte order."""
    if ":" in ip:
        return _word(socket.inet_pton(socket.AF_INET6, ip))
    return f"{struct.unpack('=I', socket.inet_aton(ip))[0]:08X}"


def render_table(rows: Iterable[TcpRow]) -> str:
    lines = ["  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid"]
    for number, row in enumerate(rows):
        lines.append(
            f"{number:4d}: {_kernel_address(row.local_ip)}:{row.local_port:04X} "
            f"{_kernel_address(row.remote_ip)}:{row.remote_port:04X} {row.state:02X} "
            f"00000000:00000000 00:00000000 00000000     0        0 {row.inode} 1 0 20 4 30 10 -1"
        )
    return "\n".join(lines) + "\n"


_PORTS = st.sampled_from([22, 2222, 8080, 0x1F90 + 1, 40000, 40001, 65535])
_V4 = st.sampled_from(["127.0.0.1", "10.0.0.7", "0.0.0.0"])
_V6 = st.sampled_from(["::1", "2001:db8::5", "::"])


def _rows(ips: st.SearchStrategy[str]) -> st.SearchStrategy[list[TcpRow]]:
    return st.lists(
        st.builds(
            TcpRow,
            local_ip=ips,
            local_port=_PORTS,
            remote_ip=ips,
            remote_port=_PORTS,
            state=st.sampled_from([0x01, 0x01, 0x06, 0x0A]),
            inode=st.integers(min_value=0, max_value=20),
        ),
        max_size=12,
    )


@settings(max_examples=150, deadline=None)
@given(
    v4=_rows(_V4),
    v6=_rows(_V6),
    ports=st.sets(_PORTS, max_size=3),
    own=st.sets(st.integers(min_value=1, max_value=20), max_size=6),
)
def test_filtered_read_equals_the_full_parse_on_any_table(
    v4: list[TcpRow], v6: list[TcpRow], ports: set[int], own: set[int]
) -> None:
    watched = {port: f"svc{port}" for port in ports}
    with tempfile.TemporaryDirectory() as scratch:
        proc = fake_proc(Path(scratch) / "proc", render_table(v4), render_table(v6), own)
        rows = parse_proc_net_tcp(render_table(v4)) + parse_proc_net_tcp(render_table(v6))
        assert rows == [*v4, *v6]  # the rendering is the kernel's format
        expected = service_connections(rows, watched, own_inodes=own)
        assert read_connections(watched, proc=str(proc)) == expected


# --------------------------------------------------------------------------- virtual time


class FakeWall:
    def __init__(self) -> None:
        self.base = 1_700_000_000.0

    def __call__(self) -> float:
        return self.base + trio.current_time()


def utc_iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat()


class ScriptedTables:
    """The kernel's tables on virtual time: ``there[i]`` is who is connected from ``i * period``
    seconds on (the last entry after that); a read finds those on the ports it asks about.

    It is both the tracker's ``read`` and its ``offload`` (what runs in a worker thread);
    ``reads`` has (seconds since the start, ports, ``loop`` or ``thread``) of each read. ``hold``
    holds the offloaded work before it reads; ``fail_next`` fails the next one.
    """

    def __init__(self, there: list[set[Connection]], period: float = 5.0) -> None:
        self.there = there
        self.period = period
        self.start = trio.current_time()
        self.reads: list[tuple[float, dict[int, str], str]] = []
        self.hold: trio.Event | None = None
        self.fail_next = False
        self._where = "loop"

    def __call__(self, ports: Mapping[int, str]) -> set[Connection]:
        elapsed = trio.current_time() - self.start
        self.reads.append((elapsed, dict(ports), self._where))
        connected = self.there[min(int(elapsed // self.period), len(self.there) - 1)]
        return {c for c in connected if ports.get(c.port) == c.service}

    async def offload(
        self, work: Callable[[Mapping[int, str]], set[Connection]], ports: Mapping[int, str]
    ) -> set[Connection]:
        if self.hold is not None:
            await self.hold.wait()
        if self.fail_next:
            self.fail_next = False
            raise OSError("cannot read /proc/net/tcp")
        self._where = "thread"
        try:
            return work(ports)
        finally:
            self._where = "loop"

    def read_times(self) -> list[float]:
        """When each read ran; every one of them off the loop."""
        assert {where for _, _, where in self.reads} <= {"thread"}
        return [when for when, _, _ in self.reads]


def connection_events(bus: EventBus) -> list[tuple[str, dict[str, Any]]]:
    return [
        (e.event.kind, e.event.data()) for e in bus.history() if e.event.kind.startswith("conn")
    ]


def tracker_on(
    registry: Registry, ports: Mapping[str, Iterable[int]], tables: ScriptedTables, **options: Any
) -> ConnectionTracker:
    return ConnectionTracker(
        registry, ports, read=tables, offload=tables.offload, wall_clock=FakeWall(), **options
    )


@asynccontextmanager
async def running_tracker(
    ports: Mapping[str, Iterable[int]], tables: ScriptedTables, **options: Any
) -> AsyncIterator[tuple[ConnectionTracker, ActorRef, EventBus]]:
    """A tracker at dev8/connections, as its supervisor runs it (events stamped with its path)."""
    bus, registry = EventBus(), Registry()
    tracker = tracker_on(registry, ports, tables, **options)
    ctx = ChildContext(name="connections", path="dev8/connections", attempt=0, publish=bus.publish)
    async with trio.open_nursery() as nursery:
        await nursery.start(tracker.run, ctx)
        yield tracker, registry.ref("dev8/connections"), bus
        nursery.cancel_scope.cancel()


async def test_tracker_diffs_polls_and_keeps_last_activity(autojump_clock: trio.abc.Clock) -> None:
    wall = FakeWall()
    alice = Connection("web", 8080, "10.0.0.7:50000")
    bob = Connection("ssh", 2222, "[2001:db8::5]:41000")
    # Who is there at each poll (every 5 s, from t=0).
    tables = ScriptedTables([set(), {alice}, {alice, bob}, {bob}, set(), set()])
    start = trio.current_time()
    ports = {"web": [8080], "ssh": [2222]}
    async with running_tracker(ports, tables, websocket_clients=lambda: 3) as (tracker, ref, bus):
        first = await ref.call(Snapshot(), timeout=1)
        assert first == {
            "services": {
                "web": {"count": 0, "ports": [8080], "peers": [], "lastActivity": None},
                "ssh": {"count": 0, "ports": [2222], "peers": [], "lastActivity": None},
            },
            "websocketClients": 3,
            "lastActivity": None,  # websocket clients are shown, but are not activity
        }
        assert tracker.snapshot() == first  # the published view says the same
        await trio.sleep_until(start + 11)  # polls at 0, 5, 10
        snap = await ref.call(Snapshot(), timeout=1)
        assert snap["services"]["web"]["peers"] == ["10.0.0.7:50000"]
        assert snap["services"]["ssh"]["peers"] == ["[2001:db8::5]:41000"]
        assert snap["services"]["ssh"]["lastActivity"] == utc_iso(wall.base + 10)
        assert tracker.snapshot() == snap
        await trio.sleep_until(start + 26)  # polls at 15 (alice gone), 20 (bob gone), 25
        view = tracker.published
        final = await ref.call(Snapshot(), timeout=1)
    # Every poll reads in a thread; one that finds a new connection reads twice.
    assert tables.read_times() == [0, 5, 5, 10, 10, 15, 20, 25]
    assert {frozenset(ports.items()) for _, ports, _ in tables.reads} == {
        frozenset({8080: "web", 2222: "ssh"}.items())
    }
    assert view.count("web") == view.count("ssh") == 0
    # Active at a poll = had a connection, or one closed since the last poll.
    assert view.services["web"].last_activity == wall.base + 15
    assert view.services["ssh"].last_activity == wall.base + 20
    assert view.last_activity == wall.base + 20
    assert final["lastActivity"] == utc_iso(wall.base + 20)
    assert connection_events(bus) == [
        ("connection_opened", {"service": "web", "port": 8080, "peer": "10.0.0.7:50000"}),
        ("connection_opened", {"service": "ssh", "port": 2222, "peer": "[2001:db8::5]:41000"}),
        (
            "connection_closed",
            {"service": "web", "port": 8080, "peer": "10.0.0.7:50000", "duration": 10.0},
        ),
        (
            "connection_closed",
            {"service": "ssh", "port": 2222, "peer": "[2001:db8::5]:41000", "duration": 10.0},
        ),
    ]
    assert {e.event.source for e in bus.history()} == {"dev8/connections"}


async def test_a_new_connection_counts_only_if_a_second_read_confirms_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    probe = Connection("web", 8080, "127.0.0.1:40000")
    user = Connection("web", 8080, "10.0.0.7:50000")
    tables = ScriptedTables([set(), {user}, set()])
    first_reads: list[bool] = []

    def racing(ports: Mapping[int, str]) -> set[Connection]:
        """The first read of each sample sees dev8's own probe, closed before it listed its
        sockets; the second read, after that, does not."""
        found = tables(ports)
        first = len(tables.reads) == 1 or tables.reads[-2][0] != tables.reads[-1][0]
        first_reads.append(first)
        return found | {probe} if first else found

    bus, registry = EventBus(), Registry()
    tracker = ConnectionTracker(
        registry, {"web": [8080]}, path="t", read=racing, offload=tables.offload
    )
    ctx = ChildContext(name="t", path="t", attempt=0, publish=bus.publish)
    async with trio.open_nursery() as nursery:
        await nursery.start(tracker.run, ctx)
        await trio.sleep(12)
        nursery.cancel_scope.cancel()
    assert tables.read_times() == [0, 0, 5, 5, 10, 10]
    assert first_reads == [True, False] * 3
    assert [(kind, data["peer"]) for kind, data in connection_events(bus)] == [
        ("connection_opened", user.peer),
        ("connection_closed", user.peer),
    ]
    assert tracker.published.count("web") == 0


async def test_set_ports_closes_what_is_no_longer_watched_and_samples_at_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    alice = Connection("web", 8080, "10.0.0.7:50000")
    bob = Connection("ssh", 2222, "10.0.0.8:41000")
    carol = Connection("web", 9090, "10.0.0.9:42000")
    tables = ScriptedTables([{alice, bob, carol}])
    ports = {"web": [8080], "ssh": [2222]}
    async with running_tracker(ports, tables) as (tracker, ref, bus):
        assert tracker.published.count("web") == tracker.published.count("ssh") == 1
        await trio.sleep(1)
        changed = await ref.call(SetPorts({"web": [9090], "db": (5432,)}), timeout=1)
        assert changed == PortsChanged(
            added=("db",), removed=("ssh",), changed=("web",), closed=(bob, alice)
        )
        # Closed at once, announced with the change; the published view follows in the same step.
        closed = {"duration": 1.0}
        assert connection_events(bus)[2:] == [
            ("connection_closed", {"service": "ssh", "port": 2222, "peer": bob.peer, **closed}),
            ("connection_closed", {"service": "web", "port": 8080, "peer": alice.peer, **closed}),
        ]
        assert set(tracker.published.services) == {"web", "db"}
        await trio.testing.wait_all_tasks_blocked()  # the sample SetPorts started is done
        snap = await ref.call(Snapshot(), timeout=1)
        assert snap["services"]["web"] == {
            "count": 1,
            "ports": [9090],
            "peers": [carol.peer],
            "lastActivity": snap["lastActivity"],
        }
        assert snap["services"]["db"]["ports"] == [5432]
        # The new ports were read at once (twice: carol is new), not at the next tick.
        assert tables.read_times() == [0, 0, 1, 1]
        assert tables.reads[-1][1] == {9090: "web", 5432: "db"}
        # The same ports again change nothing and read nothing.
        assert (await ref.call(SetPorts({"web": [9090], "db": [5432]}), timeout=1)).nothing
        await trio.sleep(5.5)
        assert tables.read_times()[4:] == [6]  # the timer restarted from the change
    assert connection_events(bus)[-1] == (
        "connection_opened",
        {"service": "web", "port": 9090, "peer": carol.peer},
    )


async def test_the_idle_watcher_hears_a_reload_end_the_connections_of_a_removed_service(
    autojump_clock: trio.abc.Clock,
) -> None:
    alice = Connection("web", 8080, "10.0.0.7:50000")
    tables = ScriptedTables([{alice}])
    async with (
        running_tracker({"web": [8080]}, tables) as (tracker, ref, bus),
        trio.open_nursery() as nursery,
    ):
        watcher = functools.partial(
            run_idle, bus, tracker.snapshot, bus.publish, after=60, count_api_clients=False
        )
        await nursery.start(watcher)
        await trio.sleep(100)
        assert [e for e in bus.history() if e.event.kind == "workspace_idle"] == []
        removed = trio.current_time()
        await ref.call(SetPorts({"ssh": [2222]}), timeout=1)  # web gone, alice with it
        await trio.sleep(61)
        nursery.cancel_scope.cancel()
    idle = [e.event for e in bus.history() if e.event.kind == "workspace_idle"]
    assert len(idle) == 1
    assert idle[0].data()["idle_for"] == 60
    assert removed + 60 <= trio.current_time()


async def test_no_port_watched_means_no_timer_and_no_read(autojump_clock: trio.abc.Clock) -> None:
    tables = ScriptedTables([set()])
    async with running_tracker({"web": []}, tables, interval=5.0) as (tracker, ref, _):
        await trio.sleep(3600)
        assert tables.reads == []
        await ref.call(SetPorts({"web": [8080]}), timeout=1)
        await trio.sleep(10.5)
        assert tables.read_times() == [3600, 3605, 3610]
        await ref.call(SetPorts({}), timeout=1)
        await trio.sleep(3600)
        assert len(tables.reads) == 3
        assert tracker.snapshot()["services"] == {}


async def test_calls_are_answered_during_a_slow_read_and_a_stale_read_is_dropped(
    autojump_clock: trio.abc.Clock,
) -> None:
    old = Connection("web", 8080, "10.0.0.7:50000")
    new = Connection("web", 9090, "10.0.0.9:42000")
    tables = ScriptedTables([set(), {old, new}])
    async with running_tracker({"web": [8080]}, tables, interval=5.0) as (tracker, ref, bus):
        tables.hold = trio.Event()
        await trio.sleep(5.5)  # the second sample (of 8080) hangs in its thread
        assert len(tables.reads) == 1
        start = trio.current_time()
        assert (await ref.call(Snapshot(), timeout=1))["services"]["web"]["count"] == 0
        changed = await ref.call(SetPorts({"web": [9090]}), timeout=1)
        assert changed.changed == ("web",)
        assert trio.current_time() == start  # both answered at once, the read still under way
        assert len(tables.reads) == 1  # one sample at a time: the next waits for this one
        tables.hold.set()
        tables.hold = None
        await trio.testing.wait_all_tasks_blocked()
        # The read of 8080 finished after the change: dropped, and 9090 read at once.
        assert [ports for _, ports, _ in tables.reads[1:]] == [
            {8080: "web"},  # found "old" (new): read twice...
            {8080: "web"},
            {9090: "web"},  # ...and dropped: 9090 read at once, "new" found twice
            {9090: "web"},
        ]
        assert tables.read_times()[1:] == [5.5] * 4
        assert tracker.published.services["web"].peers == (new.peer,)
    assert connection_events(bus) == [
        ("connection_opened", {"service": "web", "port": 9090, "peer": new.peer}),
    ]


async def test_a_crashed_tracker_is_restarted_callers_get_a_clear_error_meanwhile(
    autojump_clock: trio.abc.Clock,
) -> None:
    alice = Connection("web", 8080, "10.0.0.7:50000")
    # t=0 nobody, t=5 alice, t=10 the read fails; after the restart (1 s later) alice is gone.
    tables = ScriptedTables([set(), {alice}, set()])
    bus, registry = EventBus(), Registry()
    tracker = tracker_on(registry, {"web": [8080]}, tables)
    spec = attrs.evolve(
        tracker.child_spec(), backoff=Backoff(initial_delay=1.0, min_delay=1.0, jitter=0.0)
    )
    tree = Supervisor("dev8", [spec], bus=bus)
    ref = registry.ref("dev8/connections")
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(tree.run)
        await trio.sleep_until(start + 9)
        tables.fail_next = True
        await trio.sleep_until(start + 10.5)  # crashed at 10, restarts at 11
        assert not ref.alive
        with pytest.raises(ActorNotFound, match="no live actor at dev8/connections"):
            await ref.call(Snapshot(), timeout=1)
        # Readers of the published view still see the last one; a reload's SetPorts waits.
        assert tracker.published.services["web"].peers == (alice.peer,)
        changed = await set_watched_ports(ref, bus, {"web": [8080], "db": [5432]}, timeout=10)
        assert changed.added == ("db",)
        assert trio.current_time() - start == 11
        snap = await ref.call(Snapshot(), timeout=1)
        assert snap["services"]["web"]["peers"] == []
        assert snap["services"]["db"]["ports"] == [5432]
        # The supervisor's crash (chaos' way): callers fail at once, it comes back again.
        await tree.crash_child("connections")
        with pytest.raises((ActorNotFound, ActorExited)):  # dying, or gone
            await ref.call(Snapshot(), timeout=1)
        await trio.sleep(1.5)  # virtual time: its backoff is 1 s
        assert (await ref.call(Snapshot(), timeout=1))["services"]["db"]["ports"] == [5432]
        nursery.cancel_scope.cancel()
    exits = [e.event.data() for e in bus.history() if e.event.kind == "child_exited"]
    assert [(e["reason"], "cannot read /proc/net/tcp" in (e["error"] or "")) for e in exits][
        :2
    ] == [
        ("error", True),
        ("error", False),
    ]
    # The state outlived the restart: alice, seen before the crash, closed at the first sample
    # after it (every opened gets its closed).
    assert connection_events(bus) == [
        ("connection_opened", {"service": "web", "port": 8080, "peer": alice.peer}),
        (
            "connection_closed",
            {"service": "web", "port": 8080, "peer": alice.peer, "duration": 6.0},
        ),
    ]


async def test_set_ports_gives_up_with_the_last_error_when_the_tracker_stays_away(
    autojump_clock: trio.abc.Clock,
) -> None:
    bus, registry = EventBus(), Registry()
    ref = registry.ref("dev8/connections")
    start = trio.current_time()
    with pytest.raises(ActorNotFound, match="no live actor at dev8/connections"):
        await set_watched_ports(ref, bus, {"web": [8080]}, timeout=3)
    assert trio.current_time() - start == 3


# --------------------------------------------------------------------------- real sockets


@asynccontextmanager
async def spawned(argv: list[str], **options: Any) -> AsyncIterator[trio.Process]:
    """A child process that is killed and waited for, whatever happens."""
    process = await trio.lowlevel.open_process(argv, **options)
    try:
        yield process
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    await stream.aclose()


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = trio.current_time() + timeout
    while trio.current_time() < deadline:
        if condition():
            return
        await trio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def wait_listening(port: int) -> None:
    with trio.fail_after(10):
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.02)
                continue
            await stream.aclose()
            return


async def read_line(process: trio.Process) -> str:
    assert process.stdout is not None
    data = b""
    with trio.fail_after(10):
        while not data.endswith(b"\n"):
            chunk = await process.stdout.receive_some(1024)
            assert chunk, "the client exited early"
            data += chunk
    return data.decode().strip()


HTTP_CLIENT = """
import http.client, sys
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
conn.request("GET", "/")
response = conn.getresponse()
response.read()
print(conn.sock.getsockname()[1], response.status, response.getheader("Connection"), flush=True)
sys.stdin.read()  # keep the connection alive until told
conn.close()
"""
TCP_CLIENT = """
import socket, sys
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
print(sock.getsockname()[1], flush=True)
sys.stdin.read()
sock.close()
"""


async def test_tracker_counts_a_keepalive_http_connection_and_a_tcp_session(
    tmp_path: Path,
) -> None:
    web_port, raw_port = free_port(), free_port()
    (tmp_path / "index.html").write_text("hello")
    server = [sys.executable, "-m", "http.server", "-p", "HTTP/1.1", "-b", "127.0.0.1"]
    bus, registry = EventBus(), Registry()
    # The real read: the kernel's tables, in a worker thread.
    tracker = ConnectionTracker(
        registry,
        {"web": [web_port], "raw": [raw_port]},
        interval=0.05,
        websocket_clients=lambda: bus.subscriber_count,
    )

    def view() -> ConnectionsView:
        return tracker.published

    raw_listener = socket.socket()
    raw_listener.bind(("127.0.0.1", raw_port))
    raw_listener.listen()
    tree = Supervisor("t", [tracker.child_spec()], bus=bus)
    pipes: dict[str, Any] = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}
    with raw_listener:
        async with (
            spawned([*server, "-d", str(tmp_path), str(web_port)], stderr=subprocess.DEVNULL),
            trio.open_nursery() as nursery,
        ):
            await wait_listening(web_port)
            await nursery.start(tree.run)
            async with (
                spawned([sys.executable, "-c", HTTP_CLIENT, str(web_port)], **pipes) as http,
                spawned([sys.executable, "-c", TCP_CLIENT, str(raw_port)], **pipes) as tcp,
            ):
                http_port, status, connection_header = (await read_line(http)).split()
                assert (status, connection_header) == ("200", "None")  # not "close": kept alive
                tcp_port = await read_line(tcp)
                # dev8's own connection to a watched port (a probe's) is not counted.
                with socket.create_connection(("127.0.0.1", raw_port)):
                    await wait_for(
                        lambda: view().count("web") == 1 and view().count("raw") == 1,
                        "one connection per service",
                    )
                    await trio.sleep(0.2)  # several more polls
                    assert view().count("raw") == 1
                snap = await registry.ref("t/connections").call(Snapshot(), timeout=5)
                assert snap["services"]["web"]["peers"] == [f"127.0.0.1:{http_port}"]
                assert snap["services"]["raw"]["peers"] == [f"127.0.0.1:{tcp_port}"]
                assert snap["services"]["web"]["lastActivity"] is not None
                assert snap["websocketClients"] == 0
                for client in (http, tcp):
                    assert client.stdin is not None
                    await client.stdin.aclose()
                    with trio.fail_after(10):
                        assert await client.wait() == 0
                await wait_for(
                    lambda: view().count("web") == 0 and view().count("raw") == 0, "both closed"
                )
            nursery.cancel_scope.cancel()
    kinds = [
        (e.event.kind, e.event.data()["service"], e.event.data()["peer"])
        for e in bus.history()
        if e.event.kind.startswith("connection_")
    ]
    assert sorted(kinds) == sorted(
        [
            ("connection_opened", "web", f"127.0.0.1:{http_port}"),
            ("connection_opened", "raw", f"127.0.0.1:{tcp_port}"),
            ("connection_closed", "web", f"127.0.0.1:{http_port}"),
            ("connection_closed", "raw", f"127.0.0.1:{tcp_port}"),
        ]
    )
    assert tracker.snapshot()["services"]["web"]["peers"] == []


async def test_read_connections_sees_a_real_connection_from_another_process() -> None:
    port = free_port()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        assert read_connections({port: "svc"}) == set()
        pipes: dict[str, Any] = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}
        async with spawned([sys.executable, "-c", TCP_CLIENT, str(port)], **pipes) as client:
            client_port = int(await read_line(client))
            assert read_connections({port: "svc"}) == {
                Connection("svc", port, f"127.0.0.1:{client_port}")
            }


async def test_the_idle_watcher_polls_the_api_client_count_alone(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Given the count, the poll does not write out every service's connections (2 ms a poll
    with 1,000 services): the snapshot is read once, to seed; the count still ends idleness."""
    bus = EventBus(history=100)
    snapshots: list[float] = []
    clients = [0]

    def snapshot() -> dict[str, Any]:
        snapshots.append(trio.current_time())
        return {"services": {}, "websocketClients": 0}

    async with trio.open_nursery() as nursery:
        watcher = functools.partial(
            run_idle,
            bus,
            snapshot,
            bus.publish,
            after=60,
            poll_interval=5.0,
            api_client_count=lambda: clients[0],
        )
        await nursery.start(watcher)
        await trio.sleep(61)
        clients[0] = 1
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    announced = [e.event for e in bus.history() if e.event.kind.startswith("workspace_")]
    assert [event.kind for event in announced] == ["workspace_idle", "workspace_active"]
    assert announced[1].data()["by"] == "api"
    assert len(snapshots) == 1
