"""Restart pacing: the backoff curve, its jitter, its reset, and the restart-intensity window."""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio
import trio.testing

from actors import (
    Backoff,
    ChildContext,
    ChildSpec,
    Envelope,
    EventBus,
    Intensity,
    RestartScheduled,
    RestartWindow,
    Supervisor,
)


def test_delay_sequence_without_jitter() -> None:
    backoff = Backoff(initial_delay=0.0, min_delay=0.5, factor=3.0, max_delay=100.0, jitter=0.0)
    rng = random.Random(0)
    assert [backoff.delay(n, rng) for n in range(6)] == [0.0, 0.5, 1.5, 4.5, 13.5, 40.5]


def test_initial_delay_applies_to_the_first_restart_only() -> None:
    backoff = Backoff(initial_delay=2.0, min_delay=1.0, factor=2.0, jitter=0.0)
    rng = random.Random(0)
    assert [backoff.delay(n, rng) for n in range(4)] == [2.0, 1.0, 2.0, 4.0]


def test_delay_is_capped() -> None:
    backoff = Backoff(min_delay=1.0, factor=2.0, max_delay=5.0, jitter=0.0)
    rng = random.Random(0)
    assert [backoff.delay(n, rng) for n in range(1, 8)] == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]
    assert backoff.delay(500, rng) == 5.0  # no overflow on a very long streak


def test_jitter_stays_in_bounds_and_is_seedable() -> None:
    backoff = Backoff(min_delay=1.0, factor=2.0, max_delay=30.0, jitter=0.25)
    first = [backoff.delay(n, random.Random(42)) for n in range(1, 7)]
    again = [backoff.delay(n, random.Random(42)) for n in range(1, 7)]
    assert first == again  # same seed, same delays: tests are deterministic
    rng = random.Random(1)
    samples = {n: [backoff.delay(n, rng) for _ in range(200)] for n in range(1, 5)}
    for n, delays in samples.items():
        base = 2.0 ** (n - 1)
        assert all(base * 0.75 <= d <= base * 1.25 for d in delays)
        assert len(set(delays)) > 100  # really random, not a constant
        assert min(delays) < base < max(delays)
    # Jitter never pushes a delay beyond the cap.
    capped = Backoff(min_delay=1.0, factor=2.0, max_delay=4.0, jitter=0.5)
    assert max(capped.delay(10, rng) for _ in range(200)) <= 4.0


def test_zero_delay_has_no_jitter() -> None:
    backoff = Backoff(initial_delay=0.0, jitter=0.9)
    assert {backoff.delay(0, random.Random(s)) for s in range(20)} == {0.0}


def test_restart_window_allows_n_restarts_within_t_seconds() -> None:
    window = RestartWindow(Intensity(max_restarts=3, window=5.0))
    assert [window.record(t) for t in (0.0, 1.0, 2.0)] == [True, True, True]
    assert window.record(4.9) is False  # a 4th within 5 s

    sliding = RestartWindow(Intensity(max_restarts=3, window=5.0))
    assert [sliding.record(t) for t in (0.0, 1.0, 2.0)] == [True, True, True]
    # At exactly t=5 the restart at 0 has left the window: 3 restarts in (0, 5].
    assert sliding.record(5.0) is True
    assert sliding.record(6.0) is True  # the one at 1 left too
    assert sliding.record(6.5) is False  # 2, 5, 6, 6.5


def test_restart_window_clear() -> None:
    window = RestartWindow(Intensity(max_restarts=1, window=10.0))
    assert window.record(0.0) is True
    assert window.record(1.0) is False
    window.clear()
    assert window.record(2.0) is True


def test_zero_restarts_allowed() -> None:
    window = RestartWindow(Intensity(max_restarts=0, window=10.0))
    assert window.record(0.0) is False


class Crasher:
    """Each incarnation becomes ready at once, then crashes after the next lifetime in the list.

    The incarnation that finds the list empty runs forever and sets ``settled``.
    """

    def __init__(self, lifetimes: list[float]) -> None:
        self.lifetimes = list(lifetimes)
        self.starts: list[float] = []
        self.settled = trio.Event()

    async def __call__(self, ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
        self.starts.append(trio.current_time())
        task_status.started()
        if not self.lifetimes:
            self.settled.set()
            await trio.sleep_forever()
        await trio.sleep(self.lifetimes.pop(0))
        raise RuntimeError("crash")


async def run_until_settled(supervisor: Supervisor, crasher: Crasher) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        await crasher.settled.wait()
        nursery.cancel_scope.cancel()


async def test_backoff_grows_and_resets_after_a_stable_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bus = EventBus()
    scheduled: list[tuple[float, float]] = []

    def listen(envelope: Envelope) -> None:
        if isinstance(envelope.event, RestartScheduled):
            scheduled.append((trio.current_time(), envelope.event.delay))

    bus.add_listener(listen)
    # Lives of 1, 1, 1, 9 (not stable yet), 10 (stable: the streak resets), then 1.
    crasher = Crasher([1, 1, 1, 9, 10, 1])
    backoff = Backoff(min_delay=1.0, factor=2.0, max_delay=100.0, jitter=0.0, reset_after=10.0)
    supervisor = Supervisor(
        "sup",
        [ChildSpec(name="c", start=crasher, backoff=backoff)],
        bus=bus,
        intensity=Intensity(max_restarts=100, window=1.0),
    )
    t0 = trio.current_time()
    await run_until_settled(supervisor, crasher)
    rel = [(t - t0, delay) for t, delay in scheduled]
    assert rel == [(1, 0.0), (2, 1.0), (4, 2.0), (15, 4.0), (29, 0.0), (30, 1.0)]
    assert [t - t0 for t in crasher.starts] == [0, 1, 3, 6, 19, 29, 31]


async def test_jittered_restart_delays_are_reproducible_with_a_seeded_rng(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backoff = Backoff(min_delay=1.0, factor=2.0, max_delay=100.0, jitter=0.5, reset_after=1e9)
    expected_rng = random.Random(1234)
    expected = [backoff.delay(n, expected_rng) for n in range(5)]

    async def observed(seed: int) -> tuple[list[float], list[float]]:
        """The gaps between incarnations, and the delays the events announced."""
        bus = EventBus()
        delays: list[float] = []
        bus.add_listener(
            lambda e: (
                delays.append(e.event.delay) if isinstance(e.event, RestartScheduled) else None
            )
        )
        crasher = Crasher([0.0] * 5)
        supervisor = Supervisor(
            "sup",
            [ChildSpec(name="c", start=crasher, backoff=backoff)],
            bus=bus,
            intensity=Intensity(max_restarts=100, window=1.0),
            rng=random.Random(seed),
        )
        t0 = trio.current_time()
        await run_until_settled(supervisor, crasher)
        assert crasher.starts[0] == t0
        gaps = [b - a for a, b in zip(crasher.starts, crasher.starts[1:], strict=False)]
        return gaps, delays

    gaps, delays = await observed(1234)
    # Each incarnation started its delay after the previous one crashed; the event carries the
    # delay rounded to the microsecond.
    assert gaps == pytest.approx(expected, abs=1e-9)
    assert delays == [round(d, 6) for d in expected]
    again_gaps, again_delays = await observed(1234)  # same seed, same timeline
    assert again_gaps == pytest.approx(gaps, abs=1e-9)
    assert again_delays == delays
    other_gaps, _ = await observed(99)
    assert other_gaps != pytest.approx(gaps, abs=1e-3)
    assert expected[0] == 0.0
    assert all(
        2.0 ** (n - 1) * 0.5 <= d <= 2.0 ** (n - 1) * 1.5 for n, d in enumerate(expected) if n
    )
