"""dev8 event fan-out: many websocket subscribers to ``/events``, bursts of events, latency.

Standard library only: non-blocking sockets on one ``select.epoll`` loop and a minimal RFC 6455
client, so the client's own cost per message (a few microseconds) stays small next to the
server's; it shares the machine's cores with dev8 (an asyncio client cost about 15 us per
message, and its own backlog showed up as latency). A burst is every service's child SIGKILLed
at once (each gives ``child_exited``, ``restart_scheduled``, ``child_started``); latency is the
arrival time at a subscriber (the read that returned it) minus the event's ``time`` stamp (dev8's
wall clock at publish). The client's CPU time per burst is reported with it, and dev8's
(``--server-pid``: utime+stime from /proc, the figure a busy shared machine does not blur).

Phase ``baseline``: only fast subscribers. Phase ``slow``: plus subscribers with a 4 KiB receive
buffer that stop reading; what happens to the fast ones is the question. At the end the slow ones
read again, to see whether dev8 closed them (code 4001: fell behind) or kept them.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import select
import signal
import socket
import statistics
import struct
import time
from datetime import datetime
from typing import Any

#: How long one burst may take to reach every subscriber before it is reported incomplete.
BURST_TIMEOUT = 120.0


class Hub:
    def __init__(self) -> None:
        #: Every subscriber gets the same bytes for an event: each distinct one is parsed once.
        self.parsed: dict[bytes, list[tuple[float, bool]]] = {}
        self.latencies: list[float] = []
        self.target = 0
        self.done = 0
        #: Websocket messages received by fast subscribers (events arrive batched).
        self.frames = 0


class Subscriber:
    def __init__(self, hub: Hub, sock: socket.socket, *, slow: bool) -> None:
        self.hub = hub
        self.sock = sock
        self.slow = slow
        self.buffer = bytearray()
        self.started = 0
        self.received = 0
        self.close_code: int | None = None
        self.closed = False

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        now = time.time_ns()
        if not data:
            self.closed = True
            return
        self.buffer += data
        self._frames(now)

    def _frames(self, now: int) -> None:
        # Walk the buffer by index and cut it once.
        buffer = self.buffer
        at, size = 0, len(buffer)
        while size - at >= 2:
            opcode, length, offset = buffer[at] & 0x0F, buffer[at + 1] & 0x7F, at + 2
            if length == 126:
                if size - at < 4:
                    break
                (length,), offset = struct.unpack_from(">H", buffer, at + 2), at + 4
            elif length == 127:
                if size - at < 10:
                    break
                (length,), offset = struct.unpack_from(">Q", buffer, at + 2), at + 10
            if size < offset + length:
                break
            payload = bytes(buffer[offset : offset + length])
            at = offset + length
            if opcode == 0x1:
                self._message(payload, now)
            elif opcode == 0x8:
                self.close_code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
            elif opcode == 0x9:  # ping: answer, masked
                mask = os.urandom(4)
                masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                self.sock.send(bytes([0x8A, 0x80 | len(payload)]) + mask + masked)
        del buffer[:at]

    def _message(self, payload: bytes, now: int) -> None:
        """One message: an event, or a JSON array of events (a subscriber that is behind)."""
        parsed = self.hub.parsed.get(payload)
        if parsed is None:
            body = json.loads(payload)
            parsed = []
            for event in body if isinstance(body, list) else [body]:
                stamp = datetime.fromisoformat(event["time"]).timestamp() * 1e9
                source = event.get("source", "")
                started = event.get("kind") == "child_started" and source.startswith(
                    "dev8/services/"
                )
                parsed.append((stamp, started))
            self.hub.parsed[payload] = parsed
        self.received += len(parsed)
        if self.slow:
            return
        self.hub.frames += 1
        for stamp, started in parsed:
            self.hub.latencies.append((now - stamp) / 1e6)
            if started:
                self.started += 1
                if self.started == self.hub.target:
                    self.hub.done += 1


def handshake(port: int, *, slow: bool) -> socket.socket:
    """A websocket connection to /events, upgraded; returned non-blocking."""
    sock = socket.socket()
    if slow:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:  # byte by byte: nothing after the head is consumed
        byte = sock.recv(1)
        if not byte:
            raise ConnectionError("closed before the upgrade")
        head += byte
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise ConnectionError(head[:100].decode(errors="replace"))
    sock.setblocking(False)
    return sock


def cpu_seconds(pid: int | None) -> float:
    """A process's user+system CPU time (0 without a pid): /proc/PID/stat fields 14 and 15."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Client:
    def __init__(self, port: int, server_pid: int | None = None) -> None:
        self.port = port
        self.server_pid = server_pid
        self.hub = Hub()
        self.poll = select.epoll()
        self.by_fd: dict[int, Subscriber] = {}

    def connect(self, count: int, *, slow: bool) -> list[Subscriber]:
        subscribers = []
        for _ in range(count):
            sock = handshake(self.port, slow=slow)
            subscriber = Subscriber(self.hub, sock, slow=slow)
            subscribers.append(subscriber)
            if not slow:  # the slow ones are not read until the end
                self.watch(subscriber)
        return subscribers

    def watch(self, subscriber: Subscriber) -> None:
        self.by_fd[subscriber.sock.fileno()] = subscriber
        self.poll.register(subscriber.sock.fileno(), select.EPOLLIN)

    def pump(self, timeout: float) -> None:
        """Read whatever arrives within ``timeout`` seconds."""
        for fd, _events in self.poll.poll(timeout, 2048):
            subscriber = self.by_fd[fd]
            subscriber.on_readable()
            if subscriber.closed:
                self.poll.unregister(fd)

    def settle(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            self.pump(left)

    def burst(self, fast: list[Subscriber], services: int) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        pids = service_pids(self.port)
        while len(pids) < services and time.monotonic() < deadline:  # every service back up
            self.settle(0.05)
            pids = service_pids(self.port)
        self.settle(0.1)  # the status call's own events have been delivered
        hub = self.hub
        hub.latencies = []
        hub.parsed = {}
        hub.target, hub.done, hub.frames = len(pids), 0, 0
        for subscriber in fast:
            subscriber.started = 0
        cpu_before = time.process_time()
        server_before = cpu_seconds(self.server_pid)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        # A burst that does not complete is reported (how many got it all, how many closed).
        while hub.done < len(fast) and time.monotonic() - killed < BURST_TIMEOUT:
            self.pump(0.5)
        seconds = time.monotonic() - killed
        server_cpu = cpu_seconds(self.server_pid) - server_before
        latencies = sorted(hub.latencies) or [float("nan")]
        stamps = [stamp for parsed in hub.parsed.values() for stamp, _ in parsed]
        return {
            "complete": hub.done >= len(fast),
            "seconds": round(seconds, 3),
            "reached": hub.done,
            "closed": sum(s.closed for s in fast),
            "close_codes": sorted({s.close_code for s in fast if s.close_code is not None}),
            "messages": len(hub.latencies),
            # Websocket messages that carried them: fewer than events when batched.
            "frames": hub.frames,
            # From the first event of the burst published to the last (dev8's clock).
            "spread_ms": round((max(stamps) - min(stamps)) / 1e6, 3) if stamps else None,
            # This client's own CPU over the burst: near the burst's length, it was the bottleneck.
            "client_cpu_s": round(time.process_time() - cpu_before, 3),
            # dev8's CPU over the burst (restarting the services, publishing, every send).
            "server_cpu_s": round(server_cpu, 3) if self.server_pid else None,
            "p50_ms": round(latencies[len(latencies) // 2], 3),
            "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 3),
            "max_ms": round(latencies[-1], 3),
        }


def service_pids(port: int) -> list[int]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/status")
        body = json.loads(connection.getresponse().read())
    finally:
        connection.close()
    return [s["pid"] for s in body["services"].values() if s.get("state") == "running"]


def main(args: argparse.Namespace) -> dict[str, Any]:
    client = Client(args.port, args.server_pid)
    start = time.perf_counter()
    fast = client.connect(args.subscribers, slow=False)
    connected = time.perf_counter() - start
    baseline = [client.burst(fast, args.services) for _ in range(args.bursts)]
    slow = client.connect(args.slow, slow=True)
    with_slow = [client.burst(fast, args.services) for _ in range(args.bursts)]
    for subscriber in slow:
        client.watch(subscriber)
    until = time.monotonic() + 3
    while time.monotonic() < until and not all(s.closed or s.close_code for s in slow):
        client.pump(0.05)
    fast_alive = sum(not s.closed for s in fast)
    for subscriber in fast + slow:
        subscriber.sock.close()
    return {
        "subscribers": len(fast),
        "connect_s": round(connected, 3),
        "baseline": baseline,
        "with_slow": with_slow,
        "fast_still_connected": fast_alive,
        "slow": {
            "count": len(slow),
            "closed_4001": sum(s.close_code == 4001 for s in slow),
            "closed_other": sum(s.close_code not in (None, 4001) for s in slow),
            "received_median": statistics.median([s.received for s in slow]) if slow else 0,
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--slow", type=int, default=10)
    parser.add_argument("--bursts", type=int, default=5)
    parser.add_argument("--services", type=int, default=20)
    parser.add_argument("--server-pid", type=int, help="dev8's pid: its CPU time per burst")
    print(json.dumps(main(parser.parse_args())))
