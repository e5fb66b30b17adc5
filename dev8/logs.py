"""Structured logs: one JSON object per line on stdout, every line carrying the workspace's ids."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from actors import Envelope

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR


def configure_logging(
    *,
    level: str = "info",
    environment_id: str = "local",
    user_id: str = "local",
    stream: TextIO | None = None,
) -> None:
    """Route structlog to JSON lines: timestamp, level, message, environment_id, user_id, ..."""

    def add_ids(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event.setdefault("environment_id", environment_id)
        event.setdefault("user_id", user_id)
        return event

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        add_ids,
    ]
    render: list[Any] = [
        structlog.processors.format_exc_info,
        structlog.processors.EventRenamer("message"),
        structlog.processors.JSONRenderer(sort_keys=False),
    ]
    output = stream or sys.stdout
    structlog.configure(
        processors=[*shared, *render],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.WriteLoggerFactory(output),
        cache_logger_on_first_use=False,
    )
    # Libraries (azure, httpx) and dev8.api log through the standard library: same JSON lines.
    handler = logging.StreamHandler(output)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(_LEVELS.get(level, logging.INFO), logging.INFO))
    for noisy in ("azure", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def log_event(envelope: Envelope) -> None:
    """Bus listener: every tree event also becomes a log line."""
    event = envelope.event
    data = event.data()
    level = "warning" if event.kind in _WARNING_KINDS or data.get("abnormal") else "info"
    logger = structlog.get_logger("dev8.events")
    getattr(logger, level)(event.kind, source=event.source, seq=envelope.seq, **data)


_WARNING_KINDS = frozenset(
    {"child_gave_up", "child_killed", "supervisor_escalated", "secret_fetch_failed"}
)
