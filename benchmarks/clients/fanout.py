"""dev8 event fan-out: many websocket subscribers to ``/events``, bursts of events, latency.

Standard library only (asyncio and a minimal RFC 6455 client), so the client's own cost per
message stays small next to the server's. A burst is every service's child SIGKILLed at once
(each gives ``child_exited``, ``restart_scheduled``, ``child_started``); latency is the arrival
time at a subscriber minus the event's ``time`` stamp (dev8's wall clock at publish).

Phase ``baseline``: only fast subscribers. Phase ``slow``: plus subscribers with a 4 KiB receive
buffer that stop reading; what happens to the fast ones is the question. At the end the slow ones
read again, to see whether dev8 closed them (code 4001: fell behind) or kept them.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import statistics
import struct
import time
from datetime import datetime
from typing import Any

#: How long one burst may take to reach every subscriber before it is reported incomplete.
BURST_TIMEOUT = 120.0


class Subscriber(asyncio.Protocol):
    def __init__(self, hub: Hub, port: int, *, slow: bool = False) -> None:
        self.hub = hub
        self.port = port
        self.slow = slow
        self.buffer = bytearray()
        self.upgraded = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.started = 0
        self.received = 0
        self.close_code: int | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed before the upgrade"))

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        self.buffer += data
        if not self.upgraded.done():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end])
            del self.buffer[: end + 4]
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                self.upgraded.set_exception(ConnectionError(head[:100].decode(errors="replace")))
                return
            self.upgraded.set_result(None)
            if self.slow and self.transport is not None:
                self.transport.pause_reading()
        self._frames(now)

    def _frames(self, now: int) -> None:
        buffer = self.buffer
        while len(buffer) >= 2:
            opcode, length, offset = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    return
                (length,), offset = struct.unpack_from(">H", buffer, 2), 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                (length,), offset = struct.unpack_from(">Q", buffer, 2), 10
            if len(buffer) < offset + length:
                return
            payload = bytes(buffer[offset : offset + length])
            del buffer[: offset + length]
            if opcode == 0x1:
                self._message(payload, now)
            elif opcode == 0x8:
                self.close_code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
            elif opcode == 0x9 and self.transport is not None:  # ping: answer, masked
                mask = os.urandom(4)
                masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + mask + masked)

    def _message(self, payload: bytes, now: int) -> None:
        self.received += 1
        event = json.loads(payload)
        if self.slow:
            return
        stamp = datetime.fromisoformat(event["time"]).timestamp()
        self.hub.latencies.append((now - stamp * 1e9) / 1e6)
        if event.get("kind") == "child_started" and event.get("source", "").startswith(
            "dev8/services/"
        ):
            self.started += 1
            if self.started == self.hub.target:
                self.hub.done += 1
                if self.hub.done == self.hub.fast_count:
                    self.hub.all_done.set()


class Hub:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.target = 0
        self.done = 0
        self.fast_count = 0
        self.all_done = asyncio.Event()


def service_pids(port: int) -> list[int]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/status")
        body = json.loads(connection.getresponse().read())
    finally:
        connection.close()
    return [s["pid"] for s in body["services"].values() if s.get("state") == "running"]


async def connect(hub: Hub, port: int, count: int, *, slow: bool) -> list[Subscriber]:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(50)

    async def one() -> Subscriber:
        async with gate:
            sock = socket.socket()
            if slow:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))
            _, protocol = await loop.create_connection(
                lambda: Subscriber(hub, port, slow=slow), sock=sock
            )
            await asyncio.wait_for(protocol.upgraded, 30)
            return protocol

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def burst(hub: Hub, fast: list[Subscriber], port: int, services: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    pids = service_pids(port)
    while len(pids) < services and loop.time() < deadline:  # every service back up
        await asyncio.sleep(0.05)
        pids = service_pids(port)
    await asyncio.sleep(0.1)  # the status call's own events have been delivered
    hub.latencies = []
    hub.target, hub.done, hub.all_done = len(pids), 0, asyncio.Event()
    for subscriber in fast:
        subscriber.started = 0
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    killed = loop.time()
    # A burst that does not complete is reported (how many got it all, how many were closed).
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(hub.all_done.wait(), BURST_TIMEOUT)
    latencies = sorted(hub.latencies) or [float("nan")]
    return {
        "complete": hub.all_done.is_set(),
        "seconds": round(loop.time() - killed, 3),
        "reached": hub.done,
        "closed": sum(s.closed for s in fast),
        "close_codes": sorted({s.close_code for s in fast if s.close_code is not None}),
        "messages": len(hub.latencies),
        "p50_ms": round(latencies[len(latencies) // 2], 3),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 3),
        "max_ms": round(latencies[-1], 3),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    hub = Hub()
    start = time.perf_counter()
    fast = await connect(hub, args.port, args.subscribers, slow=False)
    connected = time.perf_counter() - start
    hub.fast_count = len(fast)
    baseline = [await burst(hub, fast, args.port, args.services) for _ in range(args.bursts)]
    slow = await connect(hub, args.port, args.slow, slow=True)
    with_slow = [await burst(hub, fast, args.port, args.services) for _ in range(args.bursts)]
    for subscriber in slow:
        if subscriber.transport is not None:
            subscriber.transport.resume_reading()
    loop = asyncio.get_running_loop()
    until = loop.time() + 3
    # Several sockets, several ways to end: polled, bounded by `until`.
    while loop.time() < until and not all(s.closed or s.close_code for s in slow):  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    fast_alive = sum(not s.closed for s in fast)
    for subscriber in fast + slow:
        if subscriber.transport is not None:
            subscriber.transport.abort()
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
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
