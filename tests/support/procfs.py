"""What /proc shows of another process: its environment and its name."""

from __future__ import annotations

import time
from pathlib import Path


def environ_of(pid: int) -> dict[str, str]:
    """The environment ``pid`` was started with. Right after an exec the kernel shows an empty
    one until the new program's stack is set up: a bounded poll waits that out."""
    deadline = time.monotonic() + 10
    while True:
        data = Path(f"/proc/{pid}/environ").read_bytes()
        if data or time.monotonic() > deadline:
            break
        time.sleep(0.001)  # a bounded poll of another process's exec
    entries = data.split(b"\0")
    return dict(entry.decode("utf-8", "replace").split("=", 1) for entry in entries if entry)


def comm_of(pid: int) -> str:
    """The process's name (its program's first 15 bytes), as ps shows it."""
    return Path(f"/proc/{pid}/comm").read_text().strip()
