"""Every exit code of the ``dev8`` command, in one place (README.md and docs/troubleshooting.md
show this table; tests/tree/test_dev8_faults.py keeps them in step with it).

A leaf module: it imports nothing of dev8, so the CLI can use it without loading the rest.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """What ``dev8 run`` (and the operator commands) exit with."""

    #: ``dev8 run``: a graceful shutdown after SIGTERM/SIGINT; an operator command: done.
    OK = 0
    #: ``dev8 run``: an internal error (a bug; the traceback is on stderr). An operator
    #: command: the API refused or failed the request (one line on stderr).
    INTERNAL_ERROR = 1
    #: The config is refused, a pre-flight check failed, or the usage is wrong: nothing started.
    BAD_CONFIG = 2
    #: A ``critical: true`` service ended for good (fatal, or exited and not restarted).
    CRITICAL_SERVICE_FAILED = 3
    #: A supervisor of dev8's own tree kept failing past its restart intensity: the tree gave up.
    RESTART_INTENSITY_EXCEEDED = 4
    #: Before start: the API's address cannot be listened on (in use, or not this machine's).
    API_UNAVAILABLE = 5
    #: An operator command (``dev8 logs -f``, ``dev8 events``) was ended by Ctrl-C.
    INTERRUPTED = 130
