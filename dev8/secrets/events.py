"""Events the secrets actors publish. They carry names and versions, never values."""

from __future__ import annotations

from typing import ClassVar

import attrs

from actors import Event


@attrs.frozen(kw_only=True)
class SecretFetched(Event):
    """A secret was read for the first time by this rotator (startup, or it newly appeared)."""

    kind: ClassVar[str] = "secret_fetched"
    name: str
    role: str
    version: str


@attrs.frozen(kw_only=True)
class SecretRotated(Event):
    """A secret has a new version and its files have been rewritten."""

    kind: ClassVar[str] = "secret_rotated"
    name: str
    role: str
    version: str
    previous_version: str


@attrs.frozen(kw_only=True)
class SecretFetchFailed(Event):
    """A fetch failed; the last good files stay in place and the rotator backs off."""

    kind: ClassVar[str] = "secret_fetch_failed"
    name: str
    role: str
    #: A short class: timeout, network, credential, unauthorized, forbidden, throttled,
    #: server_error, http_error, missing (a required secret does not exist), busy, ...
    reason: str
    status: int | None = None
    #: Seconds the store asked to wait (its ``Retry-After``), when it did.
    retry_after: float | None = None


@attrs.frozen(kw_only=True)
class SecretsInjected(Event):
    """Files were (re)written: dependents that read them may want a reload."""

    kind: ClassVar[str] = "secrets_injected"
    paths: tuple[str, ...]
    roles: tuple[str, ...]
    duration: float


@attrs.frozen(kw_only=True)
class SecretsInjectionFailed(Event):
    """Files that could not be written in a pass; their last good content stays in place."""

    kind: ClassVar[str] = "secrets_injection_failed"
    paths: tuple[str, ...]
    #: The error class of each path, in the same order (``ENOSPC``, ``wrong_owner``, ...).
    reasons: tuple[str, ...]


@attrs.frozen(kw_only=True)
class SecretInputRefused(Event):
    """dev8 refused one piece of input and went on with the rest.

    ``item`` is a file path (a file in the user's home it would not read or rewrite) or a custom
    environment variable's name; never a value.
    """

    kind: ClassVar[str] = "secret_input_refused"
    role: str
    item: str
    #: too_large, not_a_regular_file, wrong_owner, symlink, too_deeply_nested, nul_byte,
    #: not_utf8, dangerous_name, reserved_name, ...
    reason: str
