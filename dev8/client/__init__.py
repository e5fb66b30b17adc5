"""A client of a running dev8's management API, for the operator commands of the CLI.

It finds the API (option, environment, config file, default), carries the token, and turns
every failure into one :class:`ApiError` whose ``str()`` is the single line the CLI prints.
One-shot calls are synchronous (httpx); the event stream runs on trio (trio-websocket) and
reconnects with ``?since=`` so that a drop loses and repeats nothing.

Its parts: ``endpoint`` (where the API is, the token), ``errors`` (failures as one line),
``discovery`` (finding the API and its token), ``calls`` (one-shot calls) and ``stream`` (the
event stream). Import from ``dev8.client``.
"""

from dev8.client.calls import ApiClient
from dev8.client.discovery import (
    API_ENV,
    CONFIG_ENV,
    DEFAULT_API,
    TOKEN_ENV,
    endpoint_from_bind,
    locate,
    parse_endpoint,
)
from dev8.client.endpoint import Endpoint, Target
from dev8.client.errors import ApiError, Unreachable, UsageError, refused, unreachable
from dev8.client.stream import (
    CLOSE_LAGGED,
    CLOSE_POLICY,
    MAX_MESSAGE_SIZE,
    RETRY_DELAYS,
    events_resource,
    follow_events,
)

__all__ = [
    "API_ENV",
    "CLOSE_LAGGED",
    "CLOSE_POLICY",
    "CONFIG_ENV",
    "DEFAULT_API",
    "MAX_MESSAGE_SIZE",
    "RETRY_DELAYS",
    "TOKEN_ENV",
    "ApiClient",
    "ApiError",
    "Endpoint",
    "Target",
    "Unreachable",
    "UsageError",
    "endpoint_from_bind",
    "events_resource",
    "follow_events",
    "locate",
    "parse_endpoint",
    "refused",
    "unreachable",
]
