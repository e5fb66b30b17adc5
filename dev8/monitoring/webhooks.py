"""Alerts pushed to webhooks: a signed JSON body per alert, retried with backoff, never blocking.

The notifier reads ``alert_fired`` / ``alert_resolved`` from the bus and puts one body per
receiver in that receiver's bounded queue; a full queue drops the alert and counts it. One task
per receiver sends its queue in order with httpx, retrying a refused connection, a timeout, a
408, 429 or 5xx answer after ``retry_initial_delay * 2**n`` seconds (at most
``retry_max_delay``), up to ``max_attempts`` tries. So a receiver that hangs, refuses or fails
costs its own queue and nothing else: publishing an alert never waits on the network.

The body is signed with HMAC-SHA256 under the receiver's key (``X-Dev8-Signature:
sha256=<hex>``, over the exact bytes sent). The key is read once at start from a root-owned
file; it is never logged, published or shown. Receivers are named in logs by scheme, host and
port only: a webhook URL often carries a token in its path.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
import urllib.parse
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import attrs
import structlog
import trio

from actors import ChildContext, ChildSpec, Envelope, EventBus, Restart, SubscriberLagged
from dev8.config import WebhookConfig
from dev8.monitoring.alerts import ALERT_KINDS

if TYPE_CHECKING:
    import httpx  # imported by run(): `dev8 config check` does not need an HTTP client

__all__ = [
    "SIGNATURE_HEADER",
    "WebhookKeyError",
    "WebhookNotifier",
    "WebhookStats",
    "alert_body",
    "read_webhook_key",
    "receiver_name",
    "sign",
]

SIGNATURE_HEADER = "X-Dev8-Signature"
#: A key is a few dozen bytes; a bigger file is a mistake.
MAX_KEY_BYTES = 4096
#: Answers worth another try: the receiver is busy or broken, not refusing this alert.
_RETRIED_STATUSES = frozenset({408, 425, 429})

log = structlog.get_logger("dev8.monitoring.webhooks")


class WebhookKeyError(Exception):
    """The key file cannot be used; ``str()`` says why, never what it holds."""


def read_webhook_key(path: str) -> bytes:
    """Read an HMAC key file: a regular file, not a link, owned by dev8's own user and writable
    by nobody else, at most ``MAX_KEY_BYTES``; surrounding whitespace is not part of the key.

    Blocking (a file): call it before trio runs, or in a thread.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise WebhookKeyError(f"cannot read {path}: {os.strerror(error.errno or 0)}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise WebhookKeyError(f"{path} is not a regular file")
        if info.st_uid != os.geteuid():
            raise WebhookKeyError(f"{path} is not owned by dev8's user (uid {os.geteuid()})")
        if info.st_mode & 0o022:
            raise WebhookKeyError(f"{path} is writable by its group or others")
        data = handle.read(MAX_KEY_BYTES + 1)
    if len(data) > MAX_KEY_BYTES:
        raise WebhookKeyError(f"{path} is larger than {MAX_KEY_BYTES} bytes")
    key = data.strip()
    if not key:
        raise WebhookKeyError(f"{path} is empty")
    return key


def sign(key: bytes, body: bytes) -> str:
    """The ``X-Dev8-Signature`` value of ``body``."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def receiver_name(url: str) -> str:
    """A receiver as logs show it: scheme, host and port, never its path or query."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def alert_body(envelope: Envelope, environment_id: str | None) -> bytes:
    """The JSON body of an ``alert_fired`` / ``alert_resolved`` event (docs/operations.md)."""
    data = envelope.event.data()
    document = {
        "alert": data["alert"],
        "status": "firing" if envelope.event.kind == "alert_fired" else "resolved",
        "severity": data["severity"],
        "service": data["service"],
        "summary": data["summary"],
        "labels": dict(data["labels"]),
        "time": datetime.fromtimestamp(envelope.time, tz=UTC).isoformat().replace("+00:00", "Z"),
        "bootId": envelope.boot_id,
        "environmentId": environment_id,
    }
    return json.dumps(document, separators=(",", ":")).encode()


_RESULTS = ("delivered", "rejected", "failed")


@attrs.define
class WebhookStats:
    """Counters for /metrics (``dev8_webhook_*``)."""

    #: delivered (2xx), rejected (another 4xx: not retried), failed (every try failed).
    deliveries: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(_RESULTS, 0))
    #: Alerts dropped because a receiver's queue was full.
    dropped: int = 0
    #: Tries after the first.
    retries: int = 0
    #: Alerts waiting, over all receivers.
    queued: int = 0


def httpx_error() -> type[Exception]:
    import httpx  # noqa: PLC0415 - loaded by then: run() made the client

    return httpx.HTTPError


class _Receiver:
    """One webhook: its bounded queue and the task that empties it."""

    def __init__(self, config: WebhookConfig, key: bytes | None, stats: WebhookStats) -> None:
        self.config = config
        self._key = key
        self.name = receiver_name(config.url)
        self._stats = stats
        self._send, self._receive = trio.open_memory_channel[bytes](config.queue)

    def __repr__(self) -> str:  # never the key, never the URL's path
        return f"<webhook {self.name}>"

    def offer(self, body: bytes) -> bool:
        """Queue ``body`` without waiting; False (and counted) when the queue is full."""
        try:
            self._send.send_nowait(body)
        except trio.WouldBlock:
            self._stats.dropped += 1
            dropped = self._stats.dropped
            if dropped & (dropped - 1) == 0:  # the 1st, 2nd, 4th, 8th...: a flood logs little
                log.warning(
                    "webhook_alerts_dropped",
                    receiver=self.name,
                    queue=self.config.queue,
                    dropped=dropped,
                )
            return False
        self._stats.queued += 1
        return True

    def retry_delay(self, attempt: int) -> float:
        """Seconds before try ``attempt + 1`` (``attempt`` counts from 0)."""
        config = self.config
        try:
            return float(min(config.retry_max_delay, config.retry_initial_delay * 2.0**attempt))
        except OverflowError:
            return config.retry_max_delay

    async def run(self, client: httpx.AsyncClient) -> None:
        async for body in self._receive:
            self._stats.queued -= 1
            result = await self.deliver(client, body)
            self._stats.deliveries[result] += 1

    async def deliver(self, client: httpx.AsyncClient, body: bytes) -> str:
        headers = {"Content-Type": "application/json", "User-Agent": "dev8"}
        if self._key is not None:
            headers[SIGNATURE_HEADER] = sign(self._key, body)
        for attempt in range(self.config.max_attempts):
            if attempt:
                self._stats.retries += 1
                await trio.sleep(self.retry_delay(attempt - 1))
            problem = await self._try(client, body, headers)
            if problem is None:
                return "delivered"
            if problem == "rejected":
                return "rejected"
        log.warning("webhook_gave_up", receiver=self.name, attempts=self.config.max_attempts)
        return "failed"

    async def _try(
        self, client: httpx.AsyncClient, body: bytes, headers: Mapping[str, str]
    ) -> str | None:
        """One POST: None when delivered, ``rejected``, or why it should be tried again."""
        # httpx bounds each phase; the scope bounds the whole (a receiver trickling bytes).
        with trio.move_on_after(self.config.timeout * 2) as whole:
            try:
                response = await client.post(
                    self.config.url,
                    content=body,
                    headers=headers,
                    timeout=self.config.timeout,
                )
            except httpx_error() as error:
                log.info("webhook_try_failed", receiver=self.name, error=type(error).__name__)
                return type(error).__name__
        if whole.cancelled_caught:
            log.info("webhook_try_failed", receiver=self.name, error="timeout")
            return "timeout"
        status = response.status_code
        if 200 <= status < 300:
            return None
        retried = status in _RETRIED_STATUSES or status >= 500
        log.info("webhook_try_failed", receiver=self.name, status=status, retried=retried)
        return f"http_{status}" if retried else "rejected"


class WebhookNotifier:
    """Every configured receiver, fed from the bus."""

    def __init__(
        self,
        webhooks: Sequence[WebhookConfig],
        keys: Sequence[bytes | None],
        *,
        environment_id: str | None,
    ) -> None:
        self.stats = WebhookStats()
        self.receivers = [
            _Receiver(config, key, self.stats) for config, key in zip(webhooks, keys, strict=True)
        ]
        self.environment_id = environment_id

    @classmethod
    def from_config(
        cls, webhooks: Sequence[WebhookConfig], *, environment_id: str | None
    ) -> WebhookNotifier:
        """Read the key files now (blocking: before trio runs). Raises WebhookKeyError."""
        keys = [
            None if hook.secret_file is None else read_webhook_key(hook.secret_file)
            for hook in webhooks
        ]
        return cls(webhooks, keys, environment_id=environment_id)

    def offer(self, envelope: Envelope) -> None:
        body = alert_body(envelope, self.environment_id)
        for receiver in self.receivers:
            receiver.offer(body)

    async def run(
        self, bus: EventBus, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        import httpx  # noqa: PLC0415 - see the module's imports

        def is_alert(envelope: Envelope) -> bool:
            return envelope.event.kind in ALERT_KINDS

        async with (
            httpx.AsyncClient(trust_env=False, follow_redirects=False) as client,
            trio.open_nursery() as nursery,
        ):
            for receiver in self.receivers:
                nursery.start_soon(receiver.run, client)
            subscription = bus.open_subscription(accept=is_alert)
            try:
                task_status.started()
                while True:
                    try:
                        envelope = await subscription.receive()
                    except SubscriberLagged as lagged:  # resume from the bus's history
                        subscription.close()
                        subscription = bus.open_subscription(since=lagged.last_seq, accept=is_alert)
                        continue
                    self.offer(envelope)
            finally:
                subscription.close()


def make_webhooks_spec(
    notifier: WebhookNotifier, bus: EventBus, *, name: str = "webhooks"
) -> ChildSpec:
    """The notifier actor. Its queues belong to the notifier: they outlive a restart."""

    async def start(ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
        await notifier.run(bus, task_status=task_status)

    return ChildSpec(name=name, start=start, restart=Restart.PERMANENT, shutdown_timeout=1.0)
