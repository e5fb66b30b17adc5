"""A tool's own status call, run with that tool's Python: ``status_client.py TOOL PORT MODE ...``.

- ``bench N``: N sequential status calls on one connection; prints JSON latencies (ns).
- ``wait-ready TIMEOUT``: prints ``polling`` once loaded, then ``ready NS`` (wall clock, ns) when
  the API first answers. It polls a TCP connect every millisecond, then makes the call, so no tool
  pays for a client library's reconnect interval.

supervisord: XML-RPC ``supervisor.getAllProcessInfo``; Circus: ``status`` over ZeroMQ with its
``CircusClient``; dev8: ``GET /status`` over a keep-alive HTTP/1.1 connection.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import time
from collections.abc import Callable
from typing import Any


def dev8_caller(port: int) -> Callable[[], Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def call() -> Any:
        connection.request("GET", "/status")
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"status {response.status}")
        return json.loads(body)

    return call


def supervisord_caller(port: int) -> Callable[[], Any]:
    import xmlrpc.client  # noqa: PLC0415 - each caller imports only its own client

    proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}/RPC2")
    call: Callable[[], Any] = proxy.supervisor.getAllProcessInfo
    return call


def circus_caller(port: int) -> Callable[[], Any]:
    from circus.client import CircusClient  # type: ignore[import-not-found]  # noqa: PLC0415

    client = CircusClient(endpoint=f"tcp://127.0.0.1:{port}", timeout=10)

    def call() -> Any:
        answer = client.call({"command": "status", "properties": {}})
        if answer.get("status") != "ok":
            raise RuntimeError(str(answer)[:200])
        return answer

    return call


CALLERS = {"dev8": dev8_caller, "supervisord": supervisord_caller, "circus": circus_caller}


def bench(tool: str, port: int, count: int, warmup: int = 10) -> None:
    call = CALLERS[tool](port)
    for _ in range(warmup):
        call()
    latencies = []
    for _ in range(count):
        start = time.perf_counter_ns()
        call()
        latencies.append(time.perf_counter_ns() - start)
    print(json.dumps({"latencies_ns": latencies}))


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.connect(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_ready(tool: str, port: int, timeout: float) -> None:
    make_caller = CALLERS[tool]
    print("polling", flush=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _port_open(port):
            try:
                make_caller(port)()
            except Exception:  # not answering yet: poll again
                time.sleep(0.001)
                continue
            print(f"ready {time.time_ns()}", flush=True)
            return
        time.sleep(0.001)
    print("timeout", flush=True)
    sys.exit(1)


def main() -> None:
    tool, port, mode, *rest = sys.argv[1:]
    if mode == "bench":
        bench(tool, int(port), int(rest[0]))
    elif mode == "wait-ready":
        wait_ready(tool, int(port), float(rest[0]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
