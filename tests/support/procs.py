"""Process trees seen from /proc (host pids), for tests that check what dev8 leaves behind."""

from __future__ import annotations

import collections
import os
from pathlib import Path


def _stat(pid: int) -> tuple[str, int] | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    return fields[0].decode(), int(fields[1])


def descendants(root: int) -> dict[int, str]:
    """Every process below ``root`` (host pids), zombies included: pid -> state."""
    table: dict[int, tuple[str, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            table[int(entry)] = st
    children: dict[int, list[int]] = collections.defaultdict(list)
    for pid, (_, ppid) in table.items():
        children[ppid].append(pid)
    found: dict[int, str] = {}
    stack = list(children[root])
    while stack:
        pid = stack.pop()
        if pid not in found and pid in table:
            found[pid] = table[pid][0]
            stack.extend(children[pid])
    return found


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
