"""The ``/events`` websocket: one broadcaster writes every event to every subscriber.

With a bus subscription and a task per subscriber, each event cost every subscriber an offer, a
wake-up and a send: about 0.1 ms each, so with 1,000 subscribers every event stalled the loop
that also supervises the services for 100 ms. Here the bus hands each event to one listener;
its frame is built once; one task writes what every subscriber should get straight to its
socket, without waiting, and events published meanwhile go out together in one write. A
subscriber whose socket is full keeps its queue in its own buffer, and its own task waits for
the socket; once more events than the bus's ``subscriber_buffer`` queued up while its socket was
full, it is cut off (4001), told where to resume.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from actors import Envelope

from ..control import Control
from ._http import App, Request, error_response

if TYPE_CHECKING:
    from ._websocket import WebSocket

#: Websocket close code for a subscriber that fell behind (private range 4000-4999).
CLOSE_LAGGED = 4001
#: How long a subscriber cut off for lagging has to read the rest of its queue and the close.
LAGGED_CLOSE_GRACE = 5.0


class _FrameCache:
    """Each event's websocket frame, built once for however many subscribers send it."""

    def __init__(self, size: int = 4096) -> None:
        self._frames: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._size = size

    def __call__(self, envelope: Envelope) -> bytes:
        frame = self._frames.get(envelope.seq)
        if frame is None:
            from ._websocket import text_frame  # noqa: PLC0415 - loaded with the first websocket

            frame = self._frames[envelope.seq] = text_frame(envelope.json)
            if len(self._frames) > self._size:
                self._frames.popitem(last=False)
        return frame


class _Subscriber:
    def __init__(
        self,
        socket: WebSocket,
        accept: Callable[[Envelope], bool] | None,
        *,
        joined: int,
        limit: int,
    ) -> None:
        self.socket = socket
        self.limit = limit
        #: Events queued since the socket last took everything.
        self.behind = 0
        #: None: every event (the common case, whose bytes are shared by all such subscribers).
        self.accept = accept
        #: Events up to this one were replayed or predate the subscriber.
        self.joined = joined
        #: The last event queued for this subscriber: where it resumes if cut off.
        self.last_seq = joined
        #: The socket is full: this subscriber's own task waits for it.
        self.blocked = trio.Event()
        self.ended = trio.Event()
        self.lagged = False

    def deliver(self, envelopes: list[Envelope], everything: bytes, frames: _FrameCache) -> None:
        """Queue this round's events for this subscriber and write what the socket takes."""
        if self.ended.is_set():
            return
        if envelopes[0].seq > self.joined:
            fresh = envelopes  # the common case: no copy, and the shared bytes below
        else:
            fresh = [e for e in envelopes if e.seq > self.joined]
            if not fresh:
                return
        if self.accept is None and fresh is envelopes:
            data = everything
        else:
            data = b"".join(frames(e) for e in fresh if self.accept is None or self.accept(e))
        self.last_seq = fresh[-1].seq
        if not data:
            return
        try:
            if self.socket.write_nowait(data):
                self.behind = 0
                return
        except trio.BrokenResourceError:
            self.ended.set()
            return
        self.blocked.set()
        self.behind += len(fresh)
        if self.behind > self.limit:
            self.lagged = True
            self.ended.set()


class EventStream:
    """The subscribers of one app and the broadcaster task that feeds them."""

    def __init__(self, control: Control, app: App) -> None:
        self._control = control
        self._app = app
        self._frames = _FrameCache()
        self._subscribers: set[_Subscriber] = set()
        self._queue: list[Envelope] = []
        self._lot = trio.lowlevel.ParkingLot()
        self._broadcasting_for: object | None = None
        control.bus.add_listener(self._on_publish)

    def _on_publish(self, envelope: Envelope) -> None:
        if self._subscribers:
            self._queue.append(envelope)
            if self._lot:
                self._lot.unpark_all()

    def _ensure_broadcaster(self) -> None:
        # The API actor may be restarted: a broadcaster lives and dies with one run of serve.
        if self._broadcasting_for is not self._app.serving:
            self._broadcasting_for = self._app.serving
            self._app.start_soon(self._broadcast)

    async def _broadcast(self) -> None:
        while True:
            if not self._queue:
                await self._lot.park()
            envelopes, self._queue = self._queue, []
            everything = b"".join(self._frames(e) for e in envelopes)
            for subscriber in list(self._subscribers):
                subscriber.deliver(envelopes, everything, self._frames)
            # Let the loop run (and more events be published) before the next round.
            await trio.lowlevel.checkpoint()

    async def serve(self, request: Request, socket: WebSocket) -> None:
        """One websocket subscriber: optional resume point and filters from the query string."""
        since_text = request.query.get("since")
        kinds = {k for k in request.query.get("kind", "").split(",") if k}
        services = {s for s in request.query.get("service", "").split(",") if s}
        if since_text is not None and not since_text.isdigit():
            socket.reject(error_response(400, "bad_request", "since must be a whole number"))
            return
        since = int(since_text) if since_text is not None else None

        def accept(envelope: Envelope) -> bool:
            event = envelope.event
            if kinds and event.kind not in kinds:
                return False
            if services:
                name = getattr(event, "service", None) or getattr(event, "child", None)
                return (name or event.source.rsplit("/", 1)[-1]) in services
            return True

        from ._websocket import text_frame  # noqa: PLC0415 - see _FrameCache

        control = self._control
        bus = control.bus
        # Replay and join in one step (no await between): nothing is missed or seen twice.
        # Until the handshake is done, what is written only queues.
        with bus.subscribe(since=since, accept=accept) as replay:
            if replay.missed:
                resync = {"kind": "resync", "seq": bus.last_seq, "data": control.status()}
                socket.write_nowait(text_frame(json.dumps(resync)))
            replayed = []
            while replay.pending():
                replayed.append(self._frames(replay.receive_nowait()))
            socket.write_nowait(b"".join(replayed))
        filtered = accept if kinds or services else None
        subscriber = _Subscriber(socket, filtered, joined=bus.last_seq, limit=bus.subscriber_buffer)
        self._subscribers.add(subscriber)
        control.websocket_clients += 1
        try:
            self._ensure_broadcaster()
            await socket.accept()  # then writes what queued up
            await self._follow(subscriber)
        finally:
            self._subscribers.discard(subscriber)
            control.websocket_clients -= 1
        if subscriber.lagged and socket.close_code is None:
            bus.dropped_subscribers += 1  # counted with the bus's own (metrics)
            with trio.move_on_after(LAGGED_CLOSE_GRACE):
                await socket.close(
                    CLOSE_LAGGED, f"fell behind; resume with since={subscriber.last_seq}"
                )

    async def _follow(self, subscriber: _Subscriber) -> None:
        """Until the client leaves or lags: answer its frames, and wait out a full socket."""
        async with trio.open_nursery() as nursery:

            async def until_ended() -> None:
                await subscriber.ended.wait()
                nursery.cancel_scope.cancel()

            async def until_closed() -> None:
                await subscriber.socket.wait_closed()  # a close, pings, or a hang-up
                nursery.cancel_scope.cancel()

            nursery.start_soon(until_ended)
            nursery.start_soon(until_closed)
            while True:
                await subscriber.blocked.wait()
                try:
                    await subscriber.socket.flush()
                except trio.BrokenResourceError:
                    break
                subscriber.blocked = trio.Event()
                subscriber.behind = 0
            nursery.cancel_scope.cancel()
