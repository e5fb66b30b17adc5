"""The event bus: one numbered stream of everything that happened, fanned out without back-pressure.

Publishing never waits. Each subscriber has a bounded buffer; one that falls behind is cut off and
told so (``SubscriberLagged``), so a stuck websocket client can never slow the tree. The bus keeps
the last events so a subscriber can resume from a sequence number.
"""

from __future__ import annotations

import collections
import functools
import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import attrs
import trio

from ._event import Event


@attrs.frozen
class Envelope:
    """An event as published: numbered and stamped."""

    seq: int
    time: float
    event: Event
    #: The bus's ``boot_id``: seq numbers are only comparable within one boot.
    boot_id: str = ""

    @functools.cached_property
    def json(self) -> str:
        """``to_dict()`` as JSON text, made once however many subscribers send it."""
        return json.dumps(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "bootId": self.boot_id,
            "time": datetime.fromtimestamp(self.time, tz=UTC).isoformat(),
            "kind": self.event.kind,
            "source": self.event.source,
            "data": self.event.data(),
        }


class SubscriberLagged(Exception):
    """The subscriber fell further behind than its buffer; resume from ``last_seq``."""

    def __init__(self, last_seq: int) -> None:
        super().__init__(f"subscriber fell behind after event {last_seq}")
        self.last_seq = last_seq


class Subscription:
    """A subscriber's view of the bus. Iterate it, or call ``receive``."""

    def __init__(
        self,
        bus: EventBus,
        buffer: int,
        accept: Callable[[Envelope], bool] | None,
    ) -> None:
        self._bus = bus
        self._buffer = buffer
        self._accept = accept
        self._pending: collections.deque[Envelope] = collections.deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._replayed = 0
        self._lagged = False
        self._lagged_event = trio.Event()
        self._closed = False
        self.last_seq = 0
        #: True when the resume point asked for was older than what the bus still holds.
        self.missed = False

    def _replay(self, envelopes: list[Envelope]) -> None:
        for envelope in envelopes:
            if self._accept is None or self._accept(envelope):
                self._pending.append(envelope)
        # Replayed history sits at the front and does not count against the live buffer.
        self._replayed = len(self._pending)

    def _offer(self, envelope: Envelope) -> bool:
        """Queue an envelope; False when this subscriber has fallen too far behind."""
        if self._accept is not None and not self._accept(envelope):
            return True
        if len(self._pending) - self._replayed >= self._buffer:
            self._lagged = True
            self._lagged_event.set()
            self._lot.unpark_all()
            return False
        self._pending.append(envelope)
        if self._lot:  # a receiver is waiting (publishing stays cheap when nobody is)
            self._lot.unpark_all()
        return True

    @property
    def lagged(self) -> bool:
        return self._lagged

    async def wait_lagged(self) -> None:
        """Return once this subscriber has been cut off for falling behind.

        Lets a consumer that is itself blocked (on a slow socket) be told to give up.
        """
        await self._lagged_event.wait()

    def pending(self) -> int:
        return len(self._pending)

    def receive_nowait(self) -> Envelope:
        if self._pending:
            envelope = self._pending.popleft()
            self.last_seq = envelope.seq
            if self._replayed:
                self._replayed -= 1
            return envelope
        if self._lagged:
            raise SubscriberLagged(self.last_seq)
        if self._closed:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    async def receive(self) -> Envelope:
        while True:
            try:
                envelope = self.receive_nowait()
            except trio.WouldBlock:
                await self._lot.park()
                continue
            await trio.lowlevel.checkpoint()
            return envelope

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Envelope:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def close(self) -> None:
        self._closed = True
        self._bus._unsubscribe(self)
        self._lot.unpark_all()


class EventBus:
    """Numbers events, keeps the last ``history`` of them, and fans them out."""

    def __init__(
        self,
        *,
        history: int = 1000,
        subscriber_buffer: int = 256,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._history: collections.deque[Envelope] = collections.deque(maxlen=history)
        self._subscribers: set[Subscription] = set()
        self._seq = 0
        self._wall_clock = wall_clock
        #: New for each bus (each start of the program): tells resuming clients the
        #: numbering started again.
        self.boot_id = uuid.uuid4().hex
        self.subscriber_buffer = subscriber_buffer
        #: How many subscribers were cut off for falling behind.
        self.dropped_subscribers = 0
        self._listeners: list[Callable[[Envelope], None]] = []

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def history(self, since: int = 0) -> list[Envelope]:
        return [envelope for envelope in self._history if envelope.seq > since]

    def missed(self, since: int) -> bool:
        """Whether events after ``since`` are gone from the history (or ``since`` is from an
        earlier life of the bus, ahead of it)."""
        oldest = self._history[0].seq if self._history else self._seq + 1
        return since > self._seq or (since + 1 < oldest and since < self._seq)

    def events_after(self, seq: int, limit: int) -> list[Envelope]:
        """At most ``limit`` held events after ``seq``, oldest first, without scanning the
        history (the numbers in it are consecutive)."""
        if not self._history:
            return []
        start = max(seq + 1 - self._history[0].seq, 0)
        return list(itertools.islice(self._history, start, start + limit))

    def publish(self, event: Event) -> Envelope:
        self._seq += 1
        envelope = Envelope(
            seq=self._seq, time=self._wall_clock(), event=event, boot_id=self.boot_id
        )
        self._history.append(envelope)
        for listener in self._listeners:
            listener(envelope)
        for subscription in list(self._subscribers):
            if not subscription._offer(envelope):
                self._subscribers.discard(subscription)
                self.dropped_subscribers += 1
        return envelope

    def add_listener(self, listener: Callable[[Envelope], None]) -> None:
        """Call ``listener`` synchronously for every event (loggers, metrics). It must not block."""
        self._listeners.append(listener)

    def open_subscription(
        self,
        *,
        since: int | None = None,
        buffer: int | None = None,
        accept: Callable[[Envelope], bool] | None = None,
    ) -> Subscription:
        """Subscribe; with ``since``, first replay every held event after that sequence number.

        Registration and replay happen in one step, so nothing is missed or seen twice.
        """
        subscription = Subscription(
            self, self.subscriber_buffer if buffer is None else max(buffer, 1), accept
        )
        if since is not None:
            subscription.missed = self.missed(since)
            subscription.last_seq = since
            subscription._replay(self.history(since))
        else:
            subscription.last_seq = self._seq
        self._subscribers.add(subscription)
        return subscription

    @contextmanager
    def subscribe(
        self,
        *,
        since: int | None = None,
        buffer: int | None = None,
        accept: Callable[[Envelope], bool] | None = None,
    ) -> Iterator[Subscription]:
        subscription = self.open_subscription(since=since, buffer=buffer, accept=accept)
        try:
            yield subscription
        finally:
            subscription.close()

    def _unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)
