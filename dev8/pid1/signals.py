"""The signal policy, and the catcher that holds signals from the first moment of `dev8 run`.

A PID 1 gets no default action for a signal it has not caught: a SIGTERM that arrives before
the handlers are in place is lost (``docker stop`` then waits its whole grace period and
kills). A dev8 that is not PID 1 would die of any signal it does not catch and leave its services
orphaned. So ``python -m dev8 run`` (and the ``dev8`` command) installs this catcher before
importing anything heavy, and the running tree takes the signals that arrived meanwhile.

Standard library only: this module is imported before trio, structlog or the Azure SDK.
Services are unaffected: the handlers are caught, not ignored, so ``exec`` resets them to their
defaults, and the signal mask is never touched.
"""

from __future__ import annotations

import collections
import signal
from collections.abc import Callable, Iterable
from types import FrameType

__all__ = [
    "DEFAULT_ACTION_KEPT",
    "IGNORED_SIGNALS",
    "REALTIME_SIGNALS",
    "RELOAD_SIGNALS",
    "SHUTDOWN_SIGNALS",
    "SignalCatcher",
    "caught_signals",
    "signal_name",
]

#: A graceful shutdown; another delivery of either skips to the kill.
SHUTDOWN_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)
#: Reload the config file.
RELOAD_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGHUP,)
#: Caught, logged and ignored (never forwarded: with several services there is no right target).
#: Each would kill or stop a dev8 that is not PID 1 by default. They are caught rather than set to
#: SIG_IGN, so services, which start with default dispositions, do not inherit "ignore".
IGNORED_SIGNALS: tuple[signal.Signals, ...] = (
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
    signal.SIGVTALRM,
    signal.SIGPROF,
    signal.SIGIO,
    signal.SIGPWR,
    signal.SIGTSTP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGTRAP,
    signal.SIGSYS,
    signal.SIGXCPU,
    signal.SIGSTKFLT,
    signal.SIGABRT,
)
#: SIGRTMIN..SIGRTMAX (the C library keeps the two below SIGRTMIN): caught and ignored too.
REALTIME_SIGNALS: tuple[int, ...] = tuple(
    range(int(signal.SIGRTMIN), int(signal.SIGRTMAX) + 1)  # type: ignore[attr-defined,unused-ignore]
)
#: The catchable signals dev8 leaves alone, and why.
DEFAULT_ACTION_KEPT: dict[signal.Signals, str] = {
    signal.SIGCHLD: "the orphan reaper's",
    signal.SIGPIPE: "ignored by Python itself: a closed pipe is an EPIPE error instead",
    signal.SIGXFSZ: "ignored by Python itself: a file too large is an EFBIG error instead",
    signal.SIGCONT: "its default is to do nothing (it resumes a stopped process)",
    signal.SIGWINCH: "its default is to do nothing",
    signal.SIGURG: "its default is to do nothing",
    signal.SIGSEGV: "a fault in dev8 itself: a handler would re-run the faulting instruction",
    signal.SIGBUS: "a fault in dev8 itself: a handler would re-run the faulting instruction",
    signal.SIGFPE: "a fault in dev8 itself: a handler would re-run the faulting instruction",
    signal.SIGILL: "a fault in dev8 itself: a handler would re-run the faulting instruction",
}


def caught_signals() -> tuple[int, ...]:
    """Every signal dev8 installs a handler for: shutdown, reload, and the ignored ones."""
    return (*SHUTDOWN_SIGNALS, *RELOAD_SIGNALS, *IGNORED_SIGNALS, *REALTIME_SIGNALS)


def signal_name(number: int) -> str:
    """``SIGTERM``, or ``SIGRTMIN+3`` for a real-time signal."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIGRTMIN+{number - int(signal.SIGRTMIN)}"  # type: ignore[attr-defined,unused-ignore]


def _disposition(handler: object) -> signal.Handlers:
    return handler if isinstance(handler, signal.Handlers) else signal.SIG_DFL


class SignalCatcher:
    """Records every delivery of the caught signals, in order, until someone takes them.

    The handler only appends (no lock, no I/O: it runs between two bytecodes of the main thread)
    and calls the ``notify`` of whoever is attached. Each delivery is one entry: two SIGTERMs in
    a row are two entries even when nobody looked in between.
    """

    def __init__(self) -> None:
        self._pending: collections.deque[int] = collections.deque()
        self._notify: Callable[[], None] | None = None
        self._previous: dict[int, object] = {}

    def install(self, signals: Iterable[int] | None = None) -> SignalCatcher:
        """Catch `signals` (default: `caught_signals()`); main thread only."""
        for number in caught_signals() if signals is None else signals:
            self._previous[number] = signal.signal(number, self._on_signal)
        return self

    def restore(self) -> None:
        """Put back the handlers found at `install()` (for a dev8 run inside another program)."""
        for number, handler in self._previous.items():
            signal.signal(number, handler if callable(handler) else _disposition(handler))
        self._previous.clear()

    def attach(self, notify: Callable[[], None] | None) -> None:
        """Call `notify()` after each delivery from now on (None: stop calling)."""
        self._notify = notify

    def take(self) -> list[int]:
        """Every delivery since the last call, oldest first."""
        taken = []
        while self._pending:
            taken.append(self._pending.popleft())
        return taken

    def _on_signal(self, number: int, _frame: FrameType | None) -> None:
        self._pending.append(number)
        notify = self._notify
        if notify is not None:
            notify()
