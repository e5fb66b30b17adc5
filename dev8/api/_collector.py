"""The garbage collector's youngest generation, sized to the event stream's subscribers.

CPython collects its youngest generation every 700 net allocations of tracked objects. A wake
of a thousand subscribers has a dozen or more such objects in flight per send (coroutines,
cancel scopes, outcomes in Hypercorn's and trio's send path): a pass set off dozens of young
collections, each promoting whatever was in flight at that instant, and those promotions soon
made up a quarter of the oldest generation, which sets off a full collection. With a thousand
connections the oldest generation holds about 200,000 objects (the boot's are frozen, see
``dev8.app``; the connections' are not: they become cyclic garbage when a client leaves), so
a full collection stalled the loop 100-300 ms, about every second burst of events.

Sized above what a pass holds in flight, the in-flight objects are freed by reference counting
before a young collection sees them: young collections become rare, nothing transient is
promoted, and full collections happen as the connections' own objects call for them. The size
follows the subscribers connected, so a dev8 with a few of them (or none) keeps CPython's own
threshold and its short young collections.
"""

from __future__ import annotations

import gc

#: CPython's own threshold for the youngest generation (kept with few subscribers).
DEFAULT_YOUNG_THRESHOLD = 700
#: Net allocations allowed per subscriber connected before a young collection: above what a
#: send holds in flight, with room for what a burst of events leaves (history, logs).
YOUNG_PER_SUBSCRIBER = 40
#: ...but never more than this: a young collection walks what it holds (about 10-40 ms for
#: 40,000 objects on a busy 2-core machine), so its pause is bounded too.
YOUNG_MAX = 100_000


def size_young_generation(subscribers: int) -> None:
    """Set the youngest generation's threshold for ``subscribers`` connected; older ones kept."""
    _, middle, oldest = gc.get_threshold()
    young = min(YOUNG_MAX, max(DEFAULT_YOUNG_THRESHOLD, subscribers * YOUNG_PER_SUBSCRIBER))
    gc.set_threshold(young, middle, oldest)
