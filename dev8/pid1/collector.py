"""The cyclic garbage collector during `dev8 run`'s start-up: the youngest generation only.

Start-up builds what lives as long as dev8 (modules, classes, the tree). Each pass over the
older generations walks all of it, and the heap grows as the imports go: those passes cost
about a tenth of the time to the API's first answer. The young generation is still collected
(turning the collector off keeps start-up's short-lived cycles until the end: 2.5 MB more RSS).
Once the tree has started, ``Dev8.run`` collects once, freezes what exists (out of every later
pass) and restores the thresholds (``restore_collector``).

Standard library only: ``dev8.__main__`` calls ``defer_old_generations`` before the imports.
"""

from __future__ import annotations

import gc

#: Collections of the youngest generation between two of the next: never, during start-up.
_NEVER = 1 << 30
_saved: tuple[int, ...] | None = None


def defer_old_generations() -> None:
    """Until ``restore_collector``, only the youngest generation is collected."""
    global _saved  # noqa: PLW0603 - one process-wide setting, as gc's own
    if _saved is None:
        _saved = gc.get_threshold()
        gc.set_threshold(_saved[0], _NEVER, _NEVER)


def restore_collector() -> None:
    """The older generations' thresholds as they were before ``defer_old_generations`` (if it
    was called). The youngest one's is left as it is now: start-up did not change it, and the
    event stream may have sized it to its first subscribers already (dev8.api._collector)."""
    global _saved  # noqa: PLW0603
    if _saved is not None:
        gc.set_threshold(gc.get_threshold()[0], *_saved[1:])
        _saved = None
