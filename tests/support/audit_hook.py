"""``audited()``: which files a block of code opens and which directories it lists.

Shared by the tests that check what dev8 reads (the reaper's and the connection tracker's
narrow reads of /proc).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_AUDITED: list[tuple[str, str]] | None = None
_AUDIT_HOOKED = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _AUDITED is not None and event in ("open", "os.listdir", "os.scandir"):
        _AUDITED.append((event, str(args[0])))


@contextmanager
def audited() -> Iterator[list[tuple[str, str]]]:
    """The (event, path) of every file opened and directory listed in the block.

    An audit hook cannot be removed: it is installed once and records only inside this block.
    """
    global _AUDITED, _AUDIT_HOOKED  # noqa: PLW0603 - the hook outlives any one test
    if not _AUDIT_HOOKED:
        sys.addaudithook(_audit)
        _AUDIT_HOOKED = True
    seen: list[tuple[str, str]] = []
    _AUDITED = seen
    try:
        yield seen
    finally:
        _AUDITED = None
