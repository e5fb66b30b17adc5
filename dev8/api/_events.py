"""The ``/events`` websocket: every subscriber reads the bus's shared history at its own pace.

A subscriber is a cursor (the last event it was sent) into the history the bus already keeps:
replay and live events are the same thing, read in place, so a thousand subscribers that do not
read hold no copy of anything (what one holds is at most the message being sent). Each event's
JSON (``dev8.documents``: camelCase, every key present) is made once however many subscribers
send it; a subscriber that is behind gets up to ``MAX_BATCH`` events in one message, a JSON
array, so a burst costs it one send instead of one per event.

Subscribers are not woken by each event but once a burst is over (``EventFeed.wait_after``):
waking a thousand of them per event left the services publishing a burst of restarts one step
per scheduler pass behind a thousand sends, so the burst itself took seconds. Gathered, the
burst is published at full speed, each subscriber sends it in one or a few messages, and the
subscribers at the same point send the same text, made once.

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
from dev8 import documents
from dev8.api._collector import YOUNG_GENERATION
from dev8.api._front import ASGI_SEND_KEY
from dev8.api._responses import BadParameter, error_response, whole_number
from dev8.control import Control

#: Websocket close code for a subscriber that fell behind (private range 4000-4999).
CLOSE_LAGGED = 4001
#: Most events in one message to a subscriber that is behind.
MAX_BATCH = 64
#: How long a subscriber cut off for lagging has to take the close.
LAGGED_CLOSE_GRACE = 5.0
#: Subscribers are woken once a burst is over: this long after the first event they were not
#: woken for, per subscriber (waking each costs a send, so a burst is worth gathering for about
#: as long as sending it takes; a few subscribers are woken almost at once)...
GATHER_PER_SUBSCRIBER = 60e-6
#: ...but never longer than this...
GATHER_MAX = 0.080
#: ...and sooner when no event came for this fraction of that time.
GATHER_QUIET_FRACTION = 0.2
#: Subscribers woken per scheduler pass: between chunks the services publishing the burst get
#: their turn, and the later chunks send what was published meanwhile.
WAKE_CHUNK = 64


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
    """Wakes the subscribers of one bus once a burst of events is over (one parking lot).

    The first subscriber to wait while events are unsent gathers (for everyone): it sleeps
    until the bus has been quiet for a while or the gathering window (longer the more
    subscribers there are, at most ``GATHER_MAX``) is over, then wakes them all,
    ``WAKE_CHUNK`` per scheduler pass. It is a subscriber rather than a task of its own
    because the feed has no nursery (it lives as long as the Quart app); a gatherer whose
    client leaves wakes the rest at once.

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
        #: Subscribers connected (they set how long a burst is gathered).
        self.subscribers = 0
        #: Subscribers have been woken for every event up to this one.
        self.woken_seq = bus.last_seq
        self._first_unsent = 0.0
        self._last_publish = 0.0
        self._gathering = False
        #: A parked subscriber was unparked to gather (not yet started).
        self._summoned = False
        #: The last batch made: (after, last_seq then, envelopes, text), shared by the
        #: subscribers at one point.
        self._batch: tuple[int, int, list[Envelope], str] | None = None
        bus.add_listener(self._on_publish)

    def joined(self) -> None:
        """A subscriber connected: the collector's young generation grows with them."""
        self.subscribers += 1
        YOUNG_GENERATION.joined()

    def left(self) -> None:
        self.subscribers -= 1
        YOUNG_GENERATION.left()

    def _on_publish(self, envelope: Envelope) -> None:
        try:
            now = trio.current_time()
        except RuntimeError:  # published outside trio.run, where no subscriber can be
            now = self._last_publish
        if envelope.seq == self.woken_seq + 1:
            self._first_unsent = now
        self._last_publish = now
        if not self._gathering and not self._summoned and self._lot:
            self._summoned = True
            self._lot.unpark(count=1)
        for subscriber in list(self.sending):
            if envelope.seq - subscriber.cursor > subscriber.limit:
                self.cut_off(subscriber)

    def cut_off(self, subscriber: _Subscriber) -> None:
        self.sending.discard(subscriber)
        if not subscriber.lagged:
            subscriber.lagged = True
            self.bus.dropped_subscribers += 1  # counted with the bus's own (metrics)

    async def wait_after(self, seq: int) -> None:
        """Return once events after ``seq`` were published and their burst is over."""
        while self.woken_seq <= seq:
            if self.bus.last_seq > self.woken_seq and not self._gathering:
                await self._gather()  # for everyone, whether or not it is behind itself
            else:
                await self._lot.park()

    async def _gather(self) -> None:
        self._gathering = True
        self._summoned = False
        longest = min(GATHER_MAX, self.subscribers * GATHER_PER_SUBSCRIBER)
        quiet = longest * GATHER_QUIET_FRACTION
        try:
            while True:
                deadline = min(self._last_publish + quiet, self._first_unsent + longest)
                if trio.current_time() >= deadline:
                    break
                await trio.sleep_until(deadline)
            self.woken_seq = self.bus.last_seq
            remaining = len(self._lot)
            while remaining > WAKE_CHUNK:
                self._lot.unpark(count=WAKE_CHUNK)
                remaining -= WAKE_CHUNK
                await trio.lowlevel.checkpoint()
            self._lot.unpark(count=remaining)
        except BaseException:  # cancelled (its client left): the rest are woken now
            self.woken_seq = self.bus.last_seq
            self._lot.unpark_all()
            raise
        finally:
            self._gathering = self._summoned = False
            if self._lot and self.bus.last_seq > self.woken_seq:  # published meanwhile
                self._summoned = True
                self._lot.unpark(count=1)

    def batch(self, after: int) -> tuple[list[Envelope], str]:
        """The held events after ``after`` (at most ``MAX_BATCH``) and their message text."""
        made = self._batch
        last = self.bus.last_seq
        if made is not None and made[0] == after and made[1] == last:
            return made[2], made[3]
        envelopes = self.bus.events_after(after, MAX_BATCH)
        text = batch_text(envelopes, self.encode) if envelopes else ""
        self._batch = (after, last, envelopes, text)
        return envelopes, text


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
    feed.joined()
    try:
        if resync:
            await websocket.send(json.dumps(resync_event(control)))
        await _follow(subscriber, feed, accept, _sender(websocket))
    finally:
        feed.sending.discard(subscriber)
        feed.left()
        control.websocket_clients -= 1
    lagged = documents.LaggedCloseDocument(resume_from=subscriber.cursor, boot_id=bus.boot_id)
    reason = documents.to_json(lagged).decode()
    with trio.move_on_after(LAGGED_CLOSE_GRACE):
        await websocket.close(CLOSE_LAGGED, reason)
    return None


def _sender(socket: Any) -> Callable[[str], Awaitable[None]]:
    """Send text on the accepted websocket: straight through ASGI when the front passed its
    ``send`` (Quart's ``send`` adds a checkpoint and a signal per message), else Quart's."""
    asgi_send = socket.scope.get(ASGI_SEND_KEY)
    if asgi_send is None:
        # Bound once: the context-local proxy resolves the websocket only here, not per send.
        send: Callable[[str], Awaitable[None]] = socket.send
        return send

    async def send_text(text: str) -> None:
        await asgi_send({"type": "websocket.send", "bytes": None, "text": text})

    return send_text


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
        if accept is None:
            envelopes, text = feed.batch(subscriber.cursor)
        else:
            envelopes = bus.events_after(subscriber.cursor, MAX_BATCH)
            chosen = [e for e in envelopes if accept(e)]
            text = batch_text(chosen, feed.encode) if chosen else ""
        if text:
            feed.sending.add(subscriber)
            await send(text)
            feed.sending.discard(subscriber)
        subscriber.cursor = envelopes[-1].seq
