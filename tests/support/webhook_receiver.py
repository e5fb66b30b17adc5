"""A real HTTP webhook receiver on loopback, in a thread: it records what it got and answers as
told (a status, or hang until the test ends)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

#: What the receiver answers, in turn: an HTTP status, or HANG (no answer until it is closed).
HANG = 0


class Receiver:
    """Answers ``plan`` in turn, then ``default``; ``requests`` holds (headers, body) of each."""

    def __init__(self, plan: list[int] | None = None, default: int = 200, port: int = 0) -> None:
        self.plan = list(plan or [])
        self.default = default
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.closing = threading.Event()
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.requests.append((dict(self.headers.items()), body))
                    answer = receiver.plan.pop(0) if receiver.plan else receiver.default
                if answer == HANG:
                    receiver.closing.wait(60)
                    return
                self.send_response(answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks/dev8?token=do-not-log-me"

    def bodies(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(body) for _, body in self.requests]

    def count(self) -> int:
        with self._lock:
            return len(self.requests)


@contextlib.contextmanager
def serve(plan: list[int] | None = None, default: int = 200, port: int = 0) -> Iterator[Receiver]:
    receiver = Receiver(plan, default, port)
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.closing.set()
        receiver.server.shutdown()
        receiver.server.server_close()
        thread.join(10)


def verify(key: bytes, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does: recompute the HMAC of the exact body and compare in constant time."""
    expected = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers.get("X-Dev8-Signature", ""))
