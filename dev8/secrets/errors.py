"""Errors of the secrets package: they name secrets, never carry their values."""

from __future__ import annotations

from collections.abc import Iterable


class SecretsError(Exception):
    """Base of every error raised by dev8.secrets."""


class SecretsConfigError(SecretsError, ValueError):
    """The ``secrets:`` configuration is invalid (exit code 2 territory)."""


class SecretFetchError(SecretsError):
    """A provider could not say whether a secret exists, or what it holds.

    The message is built here from the secret's name, a short reason class and an HTTP status,
    so that nothing a server echoed back (which could include a value) ever reaches a log.
    """

    def __init__(self, name: str, reason: str, status: int | None = None) -> None:
        self.name = name
        self.reason = reason
        self.status = status
        detail = f" (HTTP {status})" if status is not None else ""
        super().__init__(f"fetching secret {name!r} failed: {reason}{detail}")

    def __reduce__(self) -> tuple[type[SecretFetchError], tuple[str, str, int | None]]:
        return (type(self), (self.name, self.reason, self.status))


class MissingSecretError(SecretsError):
    """A secret marked required does not exist: workspace startup cannot go on without it."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = tuple(names)
        super().__init__("required secret(s) missing: " + ", ".join(self.names))

    def __reduce__(self) -> tuple[type[MissingSecretError], tuple[tuple[str, ...]]]:
        return (type(self), (self.names,))
