"""The garbage collector's youngest generation, sized to the event stream's subscribers.

CPython collects its youngest generation every 700 net allocations of tracked objects. A wake
of a thousand subscribers has a dozen or more such objects in flight per send (coroutines,
cancel scopes, outcomes in Hypercorn's and trio's send path): a pass set off dozens of young
collections, each promoting whatever was in flight at that instant, and those promotions soon
made up a quarter of the oldest generation, which sets off a full collection. With a thousand
connections the oldest generation holds about 200,000 objects (the boot's are frozen, see
``dev8.app``; the connections' are not: they become cyclic garbage when a client leaves), so
a full collection stalled the loop 180-390 ms on a busy 2-core machine, about every 2 s while
bursts of events were being sent (benchmarks/results/fanout.md).

Sized above what a pass holds in flight, the in-flight objects are freed by reference counting
before a young collection sees them: young collections become rare, nothing transient is
promoted, and full collections happen as the connections' own objects call for them. The size
follows the subscribers connected (of every event feed in the process: the collector is the
process's), so a dev8 with a few of them (or none) keeps the threshold it had (CPython's 700)
and its short young collections.
"""

from __future__ import annotations

import gc

#: Net allocations allowed per subscriber connected before a young collection: above what a
#: send holds in flight, with room for what a burst of events leaves (history, logs).
YOUNG_PER_SUBSCRIBER = 40
#: ...but never more than this: a young collection walks what it holds (about 10-40 ms for
#: 40,000 objects on a busy 2-core machine), so its pause is bounded too.
YOUNG_MAX = 100_000


class YoungGeneration:
    """The youngest generation's threshold while subscribers are connected, restored after."""

    def __init__(self) -> None:
        self.subscribers = 0
        #: The threshold in effect before the first subscriber (restored after the last).
        self.base = gc.get_threshold()[0]

    def joined(self) -> None:
        if self.subscribers == 0:
            self.base = gc.get_threshold()[0]
        self.subscribers += 1
        self._apply()

    def left(self) -> None:
        self.subscribers -= 1
        self._apply()

    def _apply(self) -> None:
        _, middle, oldest = gc.get_threshold()
        scaled = min(YOUNG_MAX, self.subscribers * YOUNG_PER_SUBSCRIBER)
        gc.set_threshold(max(self.base, scaled), middle, oldest)


#: The process's (one garbage collector, however many event feeds).
YOUNG_GENERATION = YoungGeneration()
