"""Bounded waits for what a real process or socket does (no change notification to await)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import trio

__all__ = ["fail_after", "wait_until"]


async def wait_until(
    condition: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.02
) -> None:
    """Bounded poll of an outside condition (a process's state has no change notification)."""
    with fail_after(timeout, what):
        while not condition():  # noqa: ASYNC110 - external processes: nothing to wait on
            await trio.sleep(interval)


@contextlib.contextmanager
def fail_after(timeout: float, what: str, tail: Callable[[], str] | None = None) -> Iterator[None]:
    """`trio.fail_after` whose failure says what was awaited (and dev8's last log lines)."""
    try:
        with trio.fail_after(timeout):
            yield
    except trio.TooSlowError:
        extra = f"\n--- dev8's last output ---\n{tail()}" if tail is not None else ""
        raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}") from None
