"""The ``/events`` websocket: every subscriber reads the bus's shared history at its own pace.

A subscriber is a cursor (the last event it was sent) into the history the bus already keeps:
replay and live events are the same thing, read in place, so a thousand subscribers that do not
read hold no copy of anything (what one holds is at most the message being sent). Each event's
JSON (``dev8.documents``: camelCase, every key present) is made once however many subscribers
send it; a subscriber that is
behind gets up to ``MAX_BATCH`` events in one message, a JSON array, so a burst costs it one
send instead of one per event.

A resume point (``since``) the history no longer holds, or one from another boot of dev8
(``bootId``), gets a ``resync`` event (the /status document) and then live events only, so
``seq`` never goes backwards on a connection. A subscriber that falls ``subscriber_buffer``
events further behind than it started (replay counts) is cut off with close code 4001 and the
JSON reason ``{"resumeFrom": N, "bootId": S}``; resuming from there replays what it missed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from quart import Response, websocket

from actors import Envelope, EventBus

from .. import documents
from ..control import Control
from ._responses import BadParameter, error_response, whole_number

#: Websocket close code for a subscriber that fell behind (private range 4000-4999).
CLOSE_LAGGED = 4001
#: Most events in one message to a subscriber that is behind.
MAX_BATCH = 64
#: How long a subscriber cut off for lagging has to take the close.
LAGGED_CLOSE_GRACE = 5.0


def resync_event(control: Control) -> dict[str, Any]:
    """What a subscriber that cannot be replayed to gets first: the state now."""
    return documents.resync_document(
        seq=control.bus.last_seq,
        boot_id=control.bus.boot_id,
        time=time.time(),
        status=control.status_document(),
    )


def batch_text(envelopes: list[Envelope], encode: Callable[[Envelope], str]) -> str:
    """One event as an object; several as an array of them."""
    if len(envelopes) == 1:
        return encode(envelopes[0])
    return "[" + ",".join(encode(e) for e in envelopes) + "]"


def _accepting(kinds: set[str], services: set[str]) -> Callable[[Envelope], bool] | None:
    if not kinds and not services:
        return None

    def accept(envelope: Envelope) -> bool:
        event = envelope.event
        if kinds and event.kind not in kinds:
            return False
        if services:
            name = getattr(event, "service", None) or getattr(event, "child", None)
            return (name or event.source.rsplit("/", 1)[-1]) in services
        return True

    return accept


class _Subscriber:
    def __init__(self, cursor: int, limit: int) -> None:
        #: The last event sent (or skipped by the filters): where it resumes if cut off.
        self.cursor = cursor
        #: Cut off once it is more than this many events behind.
        self.limit = limit
        self.lagged = False


class EventFeed:
    """Wakes the subscribers of one bus when something is published (one parking lot).

    A subscriber stuck in a send (its client stopped reading, the socket is full) cannot
    check for itself that it fell behind: the feed marks those on each publish, and they stop
    once the send is done (the server's write deadline ends a send that never is).
    """

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        #: Each event's wire JSON, made once for every subscriber.
        self.encode = documents.EventEncoder(bus.boot_id)
        self._lot = trio.lowlevel.ParkingLot()
        self.sending: set[_Subscriber] = set()
        bus.add_listener(self._on_publish)

    def _on_publish(self, envelope: Envelope) -> None:
        if self._lot:
            self._lot.unpark_all()
        for subscriber in list(self.sending):
            if envelope.seq - subscriber.cursor > subscriber.limit:
                self.cut_off(subscriber)

    def cut_off(self, subscriber: _Subscriber) -> None:
        self.sending.discard(subscriber)
        if not subscriber.lagged:
            subscriber.lagged = True
            self.bus.dropped_subscribers += 1  # counted with the bus's own (metrics)

    async def wait_after(self, seq: int) -> None:
        while self.bus.last_seq <= seq:
            await self._lot.park()


async def stream_events(control: Control, feed: EventFeed) -> Response | None:
    """One websocket subscriber; a bad query is an HTTP 400 before the handshake."""
    args = websocket.args
    try:
        since = whole_number(args, "since")
    except BadParameter as error:
        return error_response(400, "bad_request", str(error), parameter=error.name)
    accept = _accepting(
        {k for k in args.get("kind", "").split(",") if k},
        {s for s in args.get("service", "").split(",") if s},
    )
    bus = control.bus
    other_boot = args.get("bootId") not in (None, bus.boot_id)
    resync = since is not None and (other_boot or bus.missed(since))
    start = bus.last_seq if since is None or resync else since
    # Replay counts: cut off once it fell subscriber_buffer further behind than it started.
    subscriber = _Subscriber(start, bus.last_seq - start + bus.subscriber_buffer)
    await websocket.accept()
    control.websocket_clients += 1
    try:
        if resync:
            await websocket.send(json.dumps(resync_event(control)))
        # Bound once: the context-local proxy resolves the websocket only here, not per send.
        await _follow(subscriber, feed, accept, websocket.send)
    finally:
        feed.sending.discard(subscriber)
        control.websocket_clients -= 1
    lagged = documents.LaggedCloseDocument(resume_from=subscriber.cursor, boot_id=bus.boot_id)
    reason = documents.to_json(lagged).decode()
    with trio.move_on_after(LAGGED_CLOSE_GRACE):
        await websocket.close(CLOSE_LAGGED, reason)
    return None


async def _follow(
    subscriber: _Subscriber,
    feed: EventFeed,
    accept: Callable[[Envelope], bool] | None,
    send: Callable[[str], Awaitable[None]],
) -> None:
    """Send until the subscriber lags (the client leaving cancels us)."""
    bus = feed.bus
    while True:
        await feed.wait_after(subscriber.cursor)
        if (
            subscriber.lagged
            or bus.last_seq - subscriber.cursor > subscriber.limit
            or bus.missed(subscriber.cursor)
        ):
            feed.cut_off(subscriber)
            return
        envelopes = bus.events_after(subscriber.cursor, MAX_BATCH)
        batch = envelopes if accept is None else [e for e in envelopes if accept(e)]
        if batch:
            feed.sending.add(subscriber)
            await send(batch_text(batch, feed.encode))
            feed.sending.discard(subscriber)
        subscriber.cursor = envelopes[-1].seq
