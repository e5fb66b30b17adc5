"""Failed SSH authentications, counted from sshd's own log lines (``dev8_ssh_failed_auth_total``).

sshd runs with ``-e`` and ``LogLevel VERBOSE`` (dev8.services.sshd): its lines reach dev8
through the process actor's output pipes, and the service's output ring counts them as they
are appended.
What counts (OpenSSH's wording, at the start of a line):

- ``Failed METHOD for [invalid user] USER from ...``: one refused credential (a key sshd would not
  take, a password, ...); ``Failed none``, the client asking which methods exist, is not one.
- ``Invalid user USER from ...`` and ``User USER from ... not allowed because ...``: a login as a
  user who may not log in (no such user, root, not in AllowUsers). sshd logs no per-key line for
  such a user, so the refusal itself is the attempt.

Connection lines (``Connection closed by authenticating user``, ``maximum authentication attempts
exceeded``) are not counted: the attempts before them are. sshd escapes control characters in what
it logs, so a user name cannot start a line of its own.
"""

from __future__ import annotations

import re

from dev8.services.process import OutputRing

__all__ = ["FailedAuthCounter", "SshdOutput", "is_failed_auth"]

_FAILED_AUTH = re.compile(
    r"(?:Failed (?!none for )\S+ for .+ from"
    r"|Invalid user .* from"
    r"|User .+ from \S+ not allowed because )"
)


def is_failed_auth(line: str) -> bool:
    """Whether sshd's log line records one failed authentication attempt."""
    return _FAILED_AUTH.match(line) is not None


class FailedAuthCounter:
    """Failed authentications of every sshd service since dev8 started (restarts of sshd and
    config reloads keep the count; a restart of dev8 starts again at 0, as /metrics counters do)."""

    def __init__(self) -> None:
        self.count = 0


class SshdOutput(OutputRing):
    """An sshd service's output ring that also counts its failed authentications."""

    def __init__(self, counter: FailedAuthCounter, size: int = 1000) -> None:
        super().__init__(size)
        self.counter = counter

    def append(self, stream: str, line: str) -> None:
        super().append(stream, line)
        if is_failed_auth(line):
            self.counter.count += 1
