"""Structured logs: one JSON object per line on stdout, every line carrying the workspace's ids.

Whatever reads stdout is outside dev8: it may stall (``| sleep 1000``), go away (``| head -3``:
EPIPE) or sit on a full disk (ENOSPC). Log calls therefore never write: they put the line in a
bounded queue, and one thread writes the queue to the file descriptor. A full queue drops the
line and counts it (`LineWriter.stats`, shown in ``/status`` and ``/metrics``); a failed write
counts its lines as dropped and the writer goes on. Supervision and shutdown never wait for stdout.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import select
import sys
import threading
import time
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from actors import Envelope

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR

#: Lines waiting for a slow stdout; beyond this they are dropped (and counted).
LOG_QUEUE_LINES = 10_000
#: The share of the queue the services' output may fill: dev8's own lines (signals, exits,
#: restarts) keep the rest, so a service flooding its output cannot crowd them out.
BULK_SHARE = 0.8
#: Loggers whose lines are bulk: the services' output (dev8.services.process.SERVICE_OUTPUT_LOGGER).
BULK_LOGGERS = frozenset({"dev8.output"})
#: At exit, how long the lines still queued may take to reach stdout.
LOG_FLUSH_TIMEOUT = 2.0
#: Lines written in one system call at most (fewer calls when the reader is fast).
_BATCH_BYTES = 64 * 1024


class LineWriter:
    """A file-like sink (``write`` / ``flush``) that never blocks its caller.

    Thread-safe: structlog writes from the trio thread, the standard library's loggers from
    worker threads too.
    """

    def __init__(self, fd: int, *, capacity: int = LOG_QUEUE_LINES) -> None:
        self._fd = fd
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=capacity)
        self._bulk_limit = int(capacity * BULK_SHARE)
        #: The same sink for bulk lines (the services' output), which may use only part of it.
        self.bulk = _BulkSink(self)
        self._lock = threading.Lock()
        self._dropped = 0
        self._written = 0
        self._failed_writes = 0
        self._last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="dev8-log-writer", daemon=True)
        self._thread.start()

    def write(self, text: str, *, bulk: bool = False) -> int:
        try:
            if bulk and self._queue.qsize() >= self._bulk_limit:
                raise queue.Full
            self._queue.put_nowait(text.encode("utf-8", errors="replace"))
        except queue.Full:
            with self._lock:
                self._dropped += 1
        return len(text)

    def flush(self) -> None:
        """Nothing to do: the writer thread writes as fast as the reader reads."""

    def stats(self) -> dict[str, Any]:
        """Lines written and dropped so far, and the last write error (``EPIPE``, ``ENOSPC``)."""
        with self._lock:
            return {
                "lines_written": self._written,
                "lines_dropped": self._dropped,
                "lines_queued": self._queue.qsize(),
                "failed_writes": self._failed_writes,
                "last_error": self._last_error,
            }

    def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` for the queue to reach stdout (at exit); True if it did."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            size = len(batch[0])
            while size < _BATCH_BYTES:
                try:
                    line = self._queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(line)
                size += len(line)
            try:
                self._write_all(b"".join(batch), len(batch))
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _write_all(self, data: bytes, lines: int) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = os.write(self._fd, view)
            except BlockingIOError:  # a non-blocking stdout: wait until it takes more
                poller = select.poll()
                poller.register(self._fd, select.POLLOUT)
                poller.poll(1000)
                continue
            except InterruptedError:
                continue
            except OSError as error:
                # EPIPE (the reader left), ENOSPC (a full disk), EIO...: these lines are lost,
                # the next ones are tried again (a disk can be freed, a reader cannot come back
                # but costs nothing to try).
                lost = min(lines, view.tobytes().count(b"\n") or 1)
                with self._lock:
                    self._dropped += lost
                    self._written += lines - lost
                    self._failed_writes += 1
                    self._last_error = errno.errorcode.get(error.errno or 0, str(error))
                return
            view = view[sent:]
        with self._lock:
            self._written += lines


class _BulkSink:
    """`LineWriter.write(..., bulk=True)` as a file-like object, for structlog's WriteLogger."""

    def __init__(self, writer: LineWriter) -> None:
        self._writer = writer

    def write(self, text: str) -> int:
        return self._writer.write(text, bulk=True)

    def flush(self) -> None:
        """Nothing to do (see LineWriter.flush)."""


def configure_logging(
    *,
    level: str = "info",
    environment_id: str = "local",
    user_id: str = "local",
    stream: TextIO | None = None,
) -> LineWriter | None:
    """Route structlog to JSON lines: timestamp, level, message, environment_id, user_id, ...

    Without `stream`, lines go to stdout through a `LineWriter`, which is returned.
    """

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
    writer = None if stream is not None else LineWriter(sys.stdout.fileno())
    output: Any = stream if stream is not None else writer
    structlog.configure(
        processors=[*shared, *render],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=_logger_factory(output, writer),
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
    return writer


def _logger_factory(output: Any, writer: LineWriter | None) -> Any:
    """structlog's WriteLogger on `output`; the services' output on the writer's bulk sink."""

    def make(*args: Any) -> structlog.WriteLogger:
        name = args[0] if args else None
        if writer is not None and name in BULK_LOGGERS:
            return structlog.WriteLogger(writer.bulk)  # type: ignore[arg-type]
        return structlog.WriteLogger(output)

    return make


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
