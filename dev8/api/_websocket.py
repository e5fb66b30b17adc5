"""The websocket side of dev8's HTTP server (``_http``), on wsproto.

Imported on the first websocket handshake, not at start-up.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import h11
import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import CloseConnection, Ping
from wsproto.frame_protocol import FrameProtocol
from wsproto.utilities import generate_accept_token

from ._http import _RECEIVE, _SERVER, Response

if TYPE_CHECKING:
    from ._http import _HttpConnection

#: Server frames are not masked: a message's frame is the same bytes for every client.
_FRAMES = FrameProtocol(client=False, extensions=[])


def text_frame(text: str) -> bytes:
    """One complete websocket text message as wire bytes (no extensions are negotiated)."""
    return bytes(_FRAMES.send_data(text, fin=True))


class WebSocket:
    """The server side of one websocket: accept or reject, send, close; pings answered.

    Everything written goes through one outgoing buffer, written from the front: frames never
    interleave, ``write_nowait`` lets one task write to many sockets without a task switch per
    socket, and a write interrupted halfway (a stalled client cut off) keeps its tail, so a
    close frame queued after it still arrives whole.
    """

    def __init__(self, http: _HttpConnection, key: str) -> None:
        self._http = http
        self._key = key
        self._ws = Connection(ConnectionType.SERVER)
        self._out = bytearray()
        self._fd = -1
        self._flush_lock = trio.StrictFIFOLock()
        self._peer_gone = trio.Event()
        self.accepted = False
        self.rejection: Response | None = None
        #: The code of the client's close frame, once it sent one.
        self.close_code: int | None = None

    @property
    def _stream(self) -> trio.abc.Stream:
        return self._http.stream

    def reject(self, response: Response) -> None:
        """Refuse the handshake with an HTTP answer (sent when the handler returns)."""
        self.rejection = response

    async def accept(self) -> None:
        """Complete the handshake (once: a second call does nothing)."""
        if self.accepted:
            return
        accept = generate_accept_token(self._key.encode("latin-1")).decode("ascii")
        headers = [
            *_SERVER,
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", accept),
        ]
        data = self._http.conn.send(h11.InformationalResponse(status_code=101, headers=headers))
        await self._stream.send_all(data)
        self._fd = self._stream.socket.fileno()  # type: ignore[attr-defined]
        self.accepted = True
        leftover, _closed = self._http.conn.trailing_data
        if leftover:
            self._ws.receive_data(bytes(leftover))
        await self.flush()  # what was queued before the handshake

    async def send_text(self, text: str) -> None:
        await self.send_frames(text_frame(text))

    async def send_frames(self, frames: bytes) -> None:
        """Write already-built frames (``text_frame``), in order with every other send."""
        if self._ws.state is not ConnectionState.OPEN:
            raise trio.ClosedResourceError("the websocket is closing")
        self.write_nowait(frames)
        await self.flush()

    def write_nowait(self, data: bytes) -> bool:
        """Queue ``data`` and write what the socket takes now; True when nothing is left queued.

        Before the handshake is done, only queues. Raises ``trio.BrokenResourceError`` when the
        client is gone.
        """
        if self._out or self._flush_lock.locked() or not self.accepted:
            self._out += data
            if self._flush_lock.locked() or not self.accepted:
                return False  # a flush (or the handshake) is pending: it writes in order
            return self._write_some()
        # Nothing queued (the common case): write straight from ``data``, queue only the rest.
        try:
            written = os.write(self._fd, data)
        except BlockingIOError:
            written = 0
        except OSError as error:
            raise trio.BrokenResourceError(f"the client is gone: {error.strerror}") from None
        if written < len(data):
            self._out += memoryview(data)[written:]
            return False
        return True

    def _write_some(self) -> bool:
        if not self._out:
            return True
        try:
            written = os.write(self._fd, self._out)
        except BlockingIOError:
            return False
        except OSError as error:
            self._out.clear()
            raise trio.BrokenResourceError(f"the client is gone: {error.strerror}") from None
        del self._out[:written]
        return not self._out

    async def flush(self) -> None:
        """Wait until everything queued is written (cancel-safe: what is left stays queued)."""
        async with self._flush_lock:
            while self._out and not self._write_some():
                await trio.lowlevel.wait_writable(self._stream.socket)  # type: ignore[attr-defined]
        await trio.lowlevel.checkpoint()

    async def _write(self, data: bytes) -> None:
        self.write_nowait(data)
        await self.flush()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame (once), then give the client a moment to answer it."""
        if self._ws.state is ConnectionState.OPEN:
            await self._write(self._ws.send(CloseConnection(code=code, reason=reason)))
        with trio.move_on_after(1):
            await self.wait_closed()

    async def wait_closed(self) -> None:
        """Read (and answer) the client's frames until it closes or goes away."""
        try:
            while not self._peer_gone.is_set():
                for event in self._ws.events():
                    await self._handle(event)
                if self._peer_gone.is_set():
                    break
                data = await self._stream.receive_some(_RECEIVE)
                self._ws.receive_data(bytes(data) or None)
                if not data:
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        self._peer_gone.set()

    async def _handle(self, event: object) -> None:
        if isinstance(event, Ping):
            await self._write(self._ws.send(event.response()))
        elif isinstance(event, CloseConnection):
            self.close_code = event.code
            if self._ws.state is ConnectionState.REMOTE_CLOSING:
                await self._write(self._ws.send(event.response()))
            self._peer_gone.set()
        # Messages are ignored: the event stream takes no input.

    async def finish(self) -> None:
        """After the handler: tell the client (if nobody did), then hang up."""
        if not self._peer_gone.is_set():
            await self.close(1000)
