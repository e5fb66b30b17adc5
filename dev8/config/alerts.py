"""The `alerts:` section: webhooks that receive dev8's alerts."""

import urllib.parse
from typing import Any

import attrs

from dev8.config.checks import number, path_field
from dev8.config.errors import Invalid


def _check_webhook_url(_inst: Any, attribute: "attrs.Attribute[Any]", value: str) -> None:
    try:
        parts = urllib.parse.urlsplit(value)
        scheme, host = parts.scheme, parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        scheme, host = "", None
    if scheme not in ("http", "https") or not host or "\0" in value:
        # Never shown: a webhook URL often carries its own token in the path or query.
        raise Invalid("expected an http:// or https:// URL with a host", at=(attribute.name,))


@attrs.frozen
class WebhookConfig:
    """One receiver of dev8's alerts (docs/configuration.md, `alerts.webhooks`)."""

    url: str = attrs.field(validator=_check_webhook_url)
    #: A root-owned file holding the HMAC-SHA256 key that signs each body; no key, no signature.
    secret_file: str | None = path_field(None)
    timeout: float = attrs.field(default=5.0, validator=number(gt=0))
    #: Tries per alert, the first included; then the alert is dropped (and counted).
    max_attempts: int = attrs.field(default=5, validator=number(ge=1))
    retry_initial_delay: float = attrs.field(default=1.0, validator=number(gt=0))
    retry_max_delay: float = attrs.field(default=60.0, validator=number(gt=0))
    #: Alerts waiting for this receiver; beyond this they are dropped (and counted).
    queue: int = attrs.field(default=100, validator=number(ge=1))


@attrs.frozen
class AlertsConfig:
    """dev8's own alerts, pushed to webhooks (docs/operations.md, "Alerts")."""

    webhooks: tuple[WebhookConfig, ...] = ()
    #: An alert raised by a single happening (a restart, an OOM kill, throttling, a failed
    #: secrets pass) is resolved after this many seconds without another one.
    resolve_after: float = attrs.field(default=300.0, validator=number(gt=0))
