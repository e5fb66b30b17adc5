"""A fake HTTP/1.1 service on 127.0.0.1 for the probes: its answers are set by the test."""

from __future__ import annotations

from collections.abc import Iterable

import trio


class ScriptedHttp:
    """Answers each request with ``status`` (after the statuses of ``script``, one per
    request), or hangs while ``status`` is None, until the client gives up."""

    def __init__(self, script: Iterable[int] = ()) -> None:
        self.status: int | None = 200
        self.script = iter(script)
        self.requests = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                data += chunk
            self.requests += 1
            self.status = next(self.script, self.status)
            if self.status is None:
                await stream.receive_some(1)  # hang until the client gives up
                return
            head = f"HTTP/1.1 {self.status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            await stream.send_all(head.encode())
        except trio.BrokenResourceError:
            pass
