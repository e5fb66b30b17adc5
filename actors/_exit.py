"""Why an actor ended: a closed set of reasons, as OTP keeps one. A leaf module."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs


class ExitReason(enum.StrEnum):
    """Why an actor's incarnation ended (OTP's ``normal``, ``shutdown``, ``{shutdown, Why}``...).

    A ``StrEnum``, so a reason reads and serialises as its plain name (``"error"``).
    """

    #: It returned on its own: nothing went wrong.
    NORMAL = "normal"
    #: It was stopped on purpose (``ExitInfo.shutdown`` says why: ``stop``, ``restart``...).
    SHUTDOWN = "shutdown"
    #: It raised (or a fault was injected): an abnormal exit.
    ERROR = "error"
    #: It did not report ready within its ``start_timeout`` and was stopped.
    START_TIMEOUT = "start_timeout"
    #: It was a supervisor that gave up for good (a critical child ended).
    ESCALATED = "escalated"
    #: Its process was killed by the kernel's out-of-memory killer (the error's ``exit_reason``).
    OOM = "oom"

    @property
    def abnormal(self) -> bool:
        """Whether a ``transient`` child is restarted after it (OTP: not normal/shutdown)."""
        return self not in (ExitReason.NORMAL, ExitReason.SHUTDOWN)


@attrs.frozen(kw_only=True)
class ExitInfo:
    """Why a child's task ended."""

    reason: ExitReason
    abnormal: bool
    error: str | None = None
    #: For ``SHUTDOWN``: who asked (``stop``, ``restart``, ``sibling``, ``remove``, ``shutdown``,
    #: or the reason given to ``restart_child``, e.g. ``probe``).
    shutdown: str | None = None
    details: Mapping[str, Any] = attrs.field(factory=dict)


def describe(error: BaseException) -> str:
    """``Type: message`` (or just ``Type``), the way errors are shown in events.

    A group of one error (a nursery's) is described by that error.
    """
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
