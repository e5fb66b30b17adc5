"""/health during a connection flood: the liveness probe must keep answering.

    .venv/bin/python benchmarks/flood.py [--idle 5000] [--unread 4000] [--rounds 3]

Starts ``dev8 run`` (two sleeping services, a token, ``api.probe_bind``), opens ``--idle``
connections that never finish a request and ``--unread`` that ask for /openapi.json twice,
pipelined, and never read (as tests/api/test_fuzz_api.py does), then times GET /health (a fresh
connection each, as a kubelet probes) while the flood's sockets are held:

- **during the onslaught**: on the API's port, one GET after another from a thread while the
  flood is being opened (``api_port_health_while_opening_ms``); then right after the last
  connection was opened, on the probe port and on the API's port. The flood opens connections
  faster than dev8 can serve them (each costs Hypercorn about 1 to 1.7 ms of CPU here), so they
  wait in the kernel's accept queue (up to its backlog), which is first in, first out: a GET to
  the API's port waits behind every connection queued before it (``accept_queue_at_onslaught``),
  whatever dev8 does with it once accepted. The probe listener has its own queue and accept
  loop.
- **at steady state**, once the API's accept queue is empty (dev8 has taken the flood), the
  flood's sockets still open: ``--steady`` GETs to the API's port, with the flood connections
  dev8 still holds then (it closes an idle one after its keep-alive, 5 s, and one whose answers
  are not read after the write deadline, 10 s).
- once the flood is let go.

Earlier versions timed only the onslaught, and reported it as "/health while the connections
are held"; what they measured was the accept queue of an onslaught dev8 could not keep up with.
Prints one JSON line per round: latencies (ms), the accept queue, dev8's CPU time (s) over the
flood, its RSS before and during. Standard library only; loopback only; Linux (/proc).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOKEN = "flood-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def proc_figures(pid: int) -> tuple[float, int]:
    """(CPU seconds, utime + stime; RSS in KiB) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return cpu, int(line.split()[1])
    raise RuntimeError("no VmRSS")


def get(port: int, path: str, timeout: float = 60.0) -> tuple[int, float]:
    """(status, milliseconds) of one GET on a fresh connection, as a kubelet probe makes it."""
    began = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    elapsed = (time.perf_counter() - began) * 1000
    return int(answer.split(b" ", 2)[1]), elapsed


def accept_queue(port: int) -> int | None:
    """Connections waiting in the kernel's accept queue of the socket listening on ``port``
    (a listening socket's ``rx_queue`` in /proc/net/tcp), or None if none listens there."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return int(fields[4].split(":")[1], 16)
    return None


def wait_accept_queue_empty(port: int, timeout: float = 300.0) -> None:
    """Until the accept queue of ``port`` is empty (a bounded poll of the kernel's figure:
    nothing announces it)."""
    began = time.perf_counter()
    while accept_queue(port) and time.perf_counter() - began < timeout:
        time.sleep(0.05)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def open_flood(port: int, idle: int, unread: int) -> list[socket.socket]:
    held: list[socket.socket] = []
    ask = b"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 2
    for index in range(idle + unread):
        sock = socket.socket()
        held.append(sock)
        if index >= idle:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect(("127.0.0.1", port))
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        poller.poll(5000)  # established (the server accepts at its own pace)
        with contextlib.suppress(OSError):
            if index >= idle:
                sock.send(ask)
            elif index % 3 == 0:
                sock.send(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    return held


def wait_answering(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dev8 exited {process.returncode}")
        with contextlib.suppress(OSError):
            if get(port, "/livez", timeout=5)[0] == 200:
                return
        time.sleep(0.05)
    raise RuntimeError("dev8's API never answered")


@contextlib.contextmanager
def launch(work: Path, *, probe: bool = True) -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    """``dev8 run`` with two sleeping services, a token and a probe listener; (process, API
    port, probe port) once it answers."""
    port, probe_port = free_port(), free_port()
    token_file = work / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    config = work / "dev8.yaml"
    sleeper = [sys.executable, "-c", "import time; time.sleep(100000)"]
    config.write_text(
        json.dumps(
            {
                "environment_id": "flood",
                "user_id": "bench",
                "workspace": {"dir": str(work), "user": pwd.getpwuid(os.geteuid()).pw_name},
                "api": {
                    "bind": f"127.0.0.1:{port}",
                    "token_file": str(token_file),
                    **({"probe_bind": f"127.0.0.1:{probe_port}"} if probe else {}),
                },
                "services": {name: {"command": sleeper} for name in ("a", "b")},
            }
        )
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "dev8", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_answering(port, process)
        yield process, port, probe_port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


@contextlib.contextmanager
def probing(port: int, every: float = 0.25) -> Iterator[list[float]]:
    """GET /health on ``port`` from a thread, one after another (a pause of ``every`` between
    them), while the block runs: the latencies (ms) of those that were answered in it, and of
    the last one, however long it takes."""
    latencies: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                latencies.append(get(port, "/health")[1])
            stop.wait(every)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    try:
        yield latencies
    finally:
        stop.set()
        thread.join()


def summary(latencies: list[float]) -> dict[str, float | int]:
    ordered = sorted(latencies)
    if not ordered:
        return {"count": 0}
    return {
        "count": len(ordered),
        "p50": round(ordered[len(ordered) // 2], 1),
        "p90": round(ordered[int(len(ordered) * 0.9)], 1),
        "max": round(ordered[-1], 1),
        "over_100ms": sum(ms > 100 for ms in ordered),
    }


def one_round(
    work: Path, idle: int, unread: int, *, probe: bool = True, steady: int = 5
) -> dict[str, object]:
    with launch(work, probe=probe) as (process, port, probe_port):
        cpu_before, rss_before = proc_figures(process.pid)
        began = time.perf_counter()
        with probing(port) as while_opening:
            held = open_flood(port, idle, unread)
        opened_s = time.perf_counter() - began
        try:
            queued = accept_queue(port)
            probe_status, probe_ms = get(probe_port, "/health") if probe else (0, 0.0)
            api_status, api_ms = get(port, "/health")
            probe_again = get(probe_port, "/health")[1] if probe else 0.0
            cpu_during, rss_during = proc_figures(process.pid)
            wait_accept_queue_empty(port)
            drained_s = time.perf_counter() - began
            held_by_dev8 = open_fds(process.pid)
            steady_ms = sorted(get(port, "/health")[1] for _ in range(steady))
            cpu_steady, rss_steady = proc_figures(process.pid)
        finally:
            for sock in held:
                sock.close()
        time.sleep(1)
        after_ms = get(port, "/health")[1]
        return {
            "opened_s": round(opened_s, 2),
            "accept_queue_at_onslaught": queued,
            "probe_port_health_ms": round(probe_ms, 1),
            "probe_port_health_again_ms": round(probe_again, 1),
            "api_port_health_while_opening_ms": summary(while_opening),
            "api_port_health_onslaught_ms": round(api_ms, 1),
            "statuses": [probe_status, api_status],
            "accept_queue_drained_after_s": round(drained_s, 1),
            "dev8_fds_at_steady_state": held_by_dev8,
            "api_port_health_steady_ms": [round(ms, 1) for ms in steady_ms],
            "after_flood_health_ms": round(after_ms, 1),
            "dev8_cpu_s": round(cpu_during - cpu_before, 2),
            "dev8_cpu_to_steady_s": round(cpu_steady - cpu_before, 2),
            "rss_before_mb": round(rss_before / 1024, 1),
            "rss_during_mb": round(rss_during / 1024, 1),
            "rss_steady_mb": round(rss_steady / 1024, 1),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--idle", type=int, default=5000)
    parser.add_argument("--unread", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--steady", type=int, default=5, help="GETs to the API's port once its queue is empty"
    )
    parser.add_argument(
        "--no-probe-listener",
        action="store_true",
        help="without api.probe_bind (a dev8 that has none: the API's port only)",
    )
    args = parser.parse_args()
    print(json.dumps({"loadavg": os.getloadavg()}), flush=True)
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="dev8-flood-") as work:
            print(
                json.dumps(
                    one_round(
                        Path(work),
                        args.idle,
                        args.unread,
                        probe=not args.no_probe_listener,
                        steady=args.steady,
                    )
                ),
                flush=True,
            )
    print(json.dumps({"loadavg": os.getloadavg()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
