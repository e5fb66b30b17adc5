"""What permessage-deflate costs the event stream per subscriber: wsproto, as Hypercorn uses it.

    .venv/bin/python benchmarks/ws_deflate_cost.py

Hypercorn accepts permessage-deflate whenever a client offers it (browsers always do; the Go
agent and the benchmark's client do not) and has no setting to refuse it; each connection then
compresses every message itself, with its own zlib state. This frames a batch of 60 events
(the shape ``/events`` sends during a burst) on 200 server connections, with and without the
extension, and prints the CPU per send and the memory each connection holds (traced).
"""

from __future__ import annotations

import json
import time
import tracemalloc

from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import TextMessage
from wsproto.extensions import PerMessageDeflate
from wsproto.handshake import server_extensions_handshake

CONNECTIONS = 200
ROUNDS = 5
#: What Chromium offers.
BROWSER_OFFER = ["permessage-deflate; client_max_window_bits"]


def batch_text(events: int = 60) -> str:
    event = {
        "seq": 0,
        "bootId": "0f" * 16,
        "time": "2026-12-03T18:00:00.000000Z",
        "source": "dev8/services/svc-12",
        "kind": "child_started",
        "service": "svc-12",
        "pid": 12345,
        "attempt": 3,
    }
    return "[" + ",".join(json.dumps({**event, "seq": n}) for n in range(events)) + "]"


def server_connection(*, deflate: bool) -> Connection:
    """A server connection as Hypercorn's handshake makes it (``PerMessageDeflate()``)."""
    extensions = [PerMessageDeflate()]
    if deflate:
        server_extensions_handshake(BROWSER_OFFER, extensions)
    return Connection(ConnectionType.SERVER, extensions)


def main() -> None:
    text = batch_text()
    print(f"a batch of 60 events: {len(text)} bytes of JSON")
    for deflate in (False, True):
        tracemalloc.start()
        connections = [server_connection(deflate=deflate) for _ in range(CONNECTIONS)]
        for connection in connections:
            connection.send(TextMessage(data=text))
        held = tracemalloc.get_traced_memory()[0] / CONNECTIONS
        tracemalloc.stop()
        start = time.process_time()
        for _ in range(ROUNDS):
            for connection in connections:
                frame = connection.send(TextMessage(data=text))
        per_send = (time.process_time() - start) / (ROUNDS * CONNECTIONS)
        print(
            f"permessage-deflate {'on ' if deflate else 'off'}: {per_send * 1e6:6.1f} µs CPU "
            f"per send, {len(frame):6d} bytes on the wire, {held / 1024:5.0f} KiB per connection"
        )


if __name__ == "__main__":
    main()
