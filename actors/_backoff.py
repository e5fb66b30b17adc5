"""Restart pacing: exponential backoff with jitter, and the restart-intensity window."""

from __future__ import annotations

import collections
import random

import attrs


@attrs.frozen(kw_only=True)
class Backoff:
    """Delay before the n-th consecutive restart.

    The first restart waits ``initial_delay`` (0 by default: a crash is repaired at once), later
    ones ``min_delay * factor**(n-1)`` up to ``max_delay``, each scaled by a random factor in
    ``[1 - jitter, 1 + jitter]``. Once a child has stayed up ``reset_after`` seconds, the count
    starts again.

    ``floor`` is the least time between two starts of a child: one that fails at once, with
    every delay set to 0, is restarted at most ``1 / floor`` times a second instead of as fast as
    the machine can spawn it, while one that ran ``floor`` or longer is restarted after its
    backoff alone (at once, by default). A streak of any length costs only its capped delay.
    """

    initial_delay: float = 0.0
    min_delay: float = 0.1
    max_delay: float = 30.0
    factor: float = 2.0
    jitter: float = 0.1
    reset_after: float = 10.0
    floor: float = 0.0

    def delay(self, attempt: int, rng: random.Random, *, ran_for: float = 0.0) -> float:
        """Delay for restart number ``attempt`` (0-based) since the child was last stable, of a
        child whose last start was ``ran_for`` seconds ago."""
        if attempt <= 0:
            base = self.initial_delay
        else:
            try:
                base = min(self.max_delay, self.min_delay * self.factor ** (attempt - 1))
            except OverflowError:  # factor ** 1024 and beyond: long past the cap
                base = self.max_delay
        if base > 0 and self.jitter > 0:
            base = min(self.max_delay, base * rng.uniform(1 - self.jitter, 1 + self.jitter))
        return max(self.floor - ran_for, base)


@attrs.frozen(kw_only=True)
class Intensity:
    """At most ``max_restarts`` restarts within ``window`` seconds."""

    max_restarts: int = 3
    window: float = 5.0


class RestartWindow:
    """Counts restarts in a sliding window of trio time."""

    def __init__(self, intensity: Intensity) -> None:
        self.intensity = intensity
        self._times: collections.deque[float] = collections.deque()

    def record(self, now: float) -> bool:
        """Record a restart at ``now``; False when that exceeds the intensity."""
        horizon = now - self.intensity.window
        while self._times and self._times[0] <= horizon:
            self._times.popleft()
        self._times.append(now)
        return len(self._times) <= self.intensity.max_restarts

    def clear(self) -> None:
        self._times.clear()
