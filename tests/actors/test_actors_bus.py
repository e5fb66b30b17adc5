"""The event bus: numbering, timestamps, bounded history, resume, lag, filters."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import ClassVar

import attrs
import pytest
import trio
import trio.testing

from actors import Envelope, Event, EventBus, SubscriberLagged, Subscription


@attrs.frozen(kw_only=True)
class Tick(Event):
    kind: ClassVar[str] = "tick"
    n: int


@attrs.frozen(kw_only=True)
class Tock(Event):
    kind: ClassVar[str] = "tock"
    n: int


def counting_clock(start: float = 1_700_000_000.0) -> Callable[[], float]:
    """A wall clock that advances one second per reading."""
    counter = itertools.count()
    return lambda: start + next(counter)


def publish_ticks(bus: EventBus, numbers: range) -> list[Envelope]:
    return [bus.publish(Tick(n=n, source="test")) for n in numbers]


def ticks(envelopes: list[Envelope]) -> list[int]:
    return [envelope.event.n for envelope in envelopes if isinstance(envelope.event, Tick)]


def drain(subscription: Subscription) -> list[Envelope]:
    got: list[Envelope] = []
    while True:
        try:
            got.append(subscription.receive_nowait())
        except trio.WouldBlock:
            return got


async def test_events_are_numbered_and_stamped() -> None:
    bus = EventBus(wall_clock=counting_clock())
    assert bus.last_seq == 0
    first, second, third = publish_ticks(bus, range(3))
    assert [first.seq, second.seq, third.seq] == [1, 2, 3]
    assert [first.time, second.time, third.time] == [
        1_700_000_000.0,
        1_700_000_001.0,
        1_700_000_002.0,
    ]
    assert bus.last_seq == 3
    assert third.to_dict() == {
        "seq": 3,
        "bootId": bus.boot_id,
        "time": "2023-11-14T22:13:22+00:00",
        "kind": "tick",
        "source": "test",
        "data": {"n": 2},
    }


async def test_each_bus_has_its_own_boot_id_and_stamps_it_on_every_event() -> None:
    first, second = EventBus(), EventBus()
    assert first.boot_id != second.boot_id
    assert first.publish(Tick(n=1)).boot_id == first.boot_id


async def test_events_after_reads_the_history_in_place() -> None:
    bus = EventBus(history=5)
    publish_ticks(bus, range(8))  # history holds 4..8
    assert [e.seq for e in bus.events_after(0, 3)] == [4, 5, 6]
    assert [e.seq for e in bus.events_after(5, 10)] == [6, 7, 8]
    assert bus.events_after(8, 10) == []
    assert bus.missed(2)
    assert not bus.missed(3)
    assert bus.missed(9)  # ahead of the bus: an earlier life


async def test_listeners_see_every_event_synchronously() -> None:
    bus = EventBus()
    seen: list[int] = []
    bus.add_listener(lambda envelope: seen.append(envelope.seq))
    publish_ticks(bus, range(4))
    assert seen == [1, 2, 3, 4]


async def test_history_is_bounded() -> None:
    bus = EventBus(history=3)
    publish_ticks(bus, range(10))
    assert [e.seq for e in bus.history()] == [8, 9, 10]
    assert [e.seq for e in bus.history(since=8)] == [9, 10]
    assert bus.history(since=10) == []


async def test_live_subscription_gets_only_new_events_in_order() -> None:
    bus = EventBus()
    publish_ticks(bus, range(3))
    with bus.subscribe() as sub:
        assert sub.last_seq == 3
        publish_ticks(bus, range(3, 6))
        got = [await sub.receive() for _ in range(3)]
    assert [e.seq for e in got] == [4, 5, 6]
    assert ticks(got) == [3, 4, 5]
    assert sub.last_seq == 6
    assert bus.subscriber_count == 0


async def test_receive_waits_for_the_next_event() -> None:
    bus = EventBus()
    got: list[Envelope] = []
    with bus.subscribe() as sub:
        async with trio.open_nursery() as nursery:

            async def reader() -> None:
                got.append(await sub.receive())

            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            bus.publish(Tick(n=9))
    assert ticks(got) == [9]


async def test_resume_since_has_no_gap_and_no_duplicate() -> None:
    bus = EventBus(history=100)
    publish_ticks(bus, range(5))  # seq 1..5
    sub = bus.open_subscription(since=2)
    # Published between subscribing and the first receive: must come after the replay, once.
    publish_ticks(bus, range(5, 8))  # seq 6..8
    got = drain(sub)
    assert [e.seq for e in got] == [3, 4, 5, 6, 7, 8]
    assert sub.missed is False
    bus.publish(Tick(n=8))
    assert [e.seq for e in drain(sub)] == [9]
    sub.close()


async def test_resume_from_the_present_and_from_zero() -> None:
    bus = EventBus(history=10)
    publish_ticks(bus, range(4))
    with bus.subscribe(since=4) as present:
        assert drain(present) == []
        assert present.missed is False
    with bus.subscribe(since=0) as everything:
        assert [e.seq for e in drain(everything)] == [1, 2, 3, 4]
        assert everything.missed is False
    empty = EventBus()
    with empty.subscribe(since=0) as sub:
        assert sub.missed is False
        assert drain(sub) == []


async def test_missed_when_history_no_longer_holds_the_resume_point() -> None:
    bus = EventBus(history=3)
    publish_ticks(bus, range(10))  # history holds 8, 9, 10
    with bus.subscribe(since=7) as exact:
        assert exact.missed is False
        assert [e.seq for e in drain(exact)] == [8, 9, 10]
    with bus.subscribe(since=6) as late:
        assert late.missed is True
        assert [e.seq for e in drain(late)] == [8, 9, 10]  # what is left is still replayed
    with bus.subscribe(since=0) as zero:
        assert zero.missed is True
    # A resume point from an earlier life of the bus (ahead of it) missed everything.
    with bus.subscribe(since=50) as ahead:
        assert ahead.missed is True


async def test_slow_subscriber_is_told_it_lagged_and_never_slows_publish(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bus = EventBus(subscriber_buffer=3)
    slow = bus.open_subscription()
    fast = bus.open_subscription(buffer=100)
    start = trio.current_time()
    publish_ticks(bus, range(10))  # never waits, even though `slow` reads nothing
    assert trio.current_time() == start
    assert bus.dropped_subscribers == 1
    assert bus.subscriber_count == 1
    assert slow.lagged
    # It still gets what fitted in its buffer, then the lag, with where to resume from.
    assert [e.seq for e in drain_until_lag(slow)] == [1, 2, 3]
    with pytest.raises(SubscriberLagged) as lagged:
        await slow.receive()
    assert lagged.value.last_seq == 3
    # The other subscriber lost nothing.
    assert [e.seq for e in drain(fast)] == list(range(1, 11))
    # Resuming from the lag point gives the rest without a gap.
    with bus.subscribe(since=lagged.value.last_seq) as resumed:
        assert resumed.missed is False
        assert [e.seq for e in drain(resumed)] == list(range(4, 11))
    fast.close()


def drain_until_lag(subscription: Subscription) -> list[Envelope]:
    got: list[Envelope] = []
    while True:
        try:
            got.append(subscription.receive_nowait())
        except SubscriberLagged:
            return got


async def test_a_reader_parked_in_receive_gets_the_buffered_events_then_the_lag() -> None:
    bus = EventBus(subscriber_buffer=1)
    results: list[object] = []
    sub = bus.open_subscription()

    async def reader() -> None:
        try:
            async for envelope in sub:
                results.append(envelope.seq)
        except SubscriberLagged as lag:
            results.append(lag.last_seq)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        # Three publishes in a row, with no checkpoint: the parked reader cannot keep up.
        publish_ticks(bus, range(3))
    assert results == [1, 1]
    assert sub.lagged
    assert bus.dropped_subscribers == 1


async def test_replayed_history_does_not_count_against_the_buffer() -> None:
    bus = EventBus(history=100, subscriber_buffer=2)
    publish_ticks(bus, range(5))
    sub = bus.open_subscription(since=0)
    publish_ticks(bus, range(5, 7))  # 2 live events fit beside the 5 replayed ones
    assert not sub.lagged
    assert sub.pending() == 7
    bus.publish(Tick(n=7))  # the third live one does not
    assert sub.lagged
    assert [e.seq for e in drain_until_lag(sub)] == [1, 2, 3, 4, 5, 6, 7]


async def test_accept_filters_live_and_replayed_events() -> None:
    bus = EventBus()
    bus.publish(Tick(n=0))
    bus.publish(Tock(n=1))
    with bus.subscribe(since=0, accept=lambda e: e.event.kind == "tock", buffer=1) as sub:
        for n in range(2, 12):
            bus.publish(Tick(n=n))  # filtered out: cannot make the subscriber lag
        bus.publish(Tock(n=12))
        got = drain(sub)
        assert not sub.lagged
    assert [(e.event.kind, e.seq) for e in got] == [("tock", 2), ("tock", 13)]


async def test_closed_subscription_ends_iteration() -> None:
    bus = EventBus()
    sub = bus.open_subscription()
    bus.publish(Tick(n=1))
    seen: list[int] = []

    async def reader() -> None:
        async for envelope in sub:
            seen.append(envelope.seq)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        sub.close()
    assert seen == [1]
    assert bus.subscriber_count == 0
    bus.publish(Tick(n=2))  # nobody is left to receive it; publishing still works
    assert bus.last_seq == 2


async def test_wait_lagged_wakes_a_consumer_blocked_elsewhere(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bus = EventBus(subscriber_buffer=2)
    sub = bus.open_subscription()
    woke: list[float] = []
    start = trio.current_time()

    async def watcher() -> None:
        await sub.wait_lagged()
        woke.append(trio.current_time() - start)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watcher)
        await trio.sleep(5)
        publish_ticks(bus, range(2))  # fills the buffer exactly: not lagging yet
        await trio.testing.wait_all_tasks_blocked()
        assert woke == []
        bus.publish(Tick(n=2))
    assert woke == [5]
    assert sub.lagged
