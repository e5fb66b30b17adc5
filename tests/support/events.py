"""Record the events a test's actors publish, each with the (virtual) time it arrived."""

from __future__ import annotations

from typing import Any

import trio

from actors import Envelope, Event, EventBus


class EventRecorder:
    """Every event given to it (as the publish callback, or heard on `bus`), with its time.

    Times count from `zero`: the recorder's birth by default, so they read as "seconds into the
    test" on trio's virtual clock; `zero=0.0` keeps the clock's own times.
    """

    def __init__(self, bus: EventBus | None = None, *, zero: float | None = None) -> None:
        self.t0 = trio.current_time() if zero is None else zero
        self.log: list[tuple[float, Event]] = []
        self._arrived = trio.Event()
        if bus is not None:
            bus.add_listener(self._on_envelope)

    def __call__(self, event: Event) -> None:
        self.log.append((trio.current_time() - self.t0, event))
        self._arrived.set()

    def _on_envelope(self, envelope: Envelope) -> None:
        self(envelope.event)

    def of(self, kind: type[Event]) -> list[tuple[float, Event]]:
        """(time, event) of the events of this class."""
        return [(t, e) for t, e in self.log if isinstance(e, kind)]

    def events(self, cls: type[Any]) -> list[Any]:
        """The events of this class, without their times."""
        return [event for _, event in self.log if isinstance(event, cls)]

    async def next(self, kind: type[Event]) -> tuple[float, Event]:
        """The next event of this class to arrive from now on."""
        seen = len(self.of(kind))
        while len(self.of(kind)) <= seen:
            self._arrived = trio.Event()
            await self._arrived.wait()
        return self.of(kind)[-1]

    def steps(self, *kinds: str, child: str | None = None) -> list[tuple[float, str, str]]:
        """(time, kind, child) of the events of these kinds (all if none), maybe of one child."""
        out = []
        for t, event in self.log:
            name = getattr(event, "child", None) or event.source
            if kinds and event.kind not in kinds:
                continue
            if child is not None and name != child:
                continue
            out.append((t, event.kind, name))
        return out
