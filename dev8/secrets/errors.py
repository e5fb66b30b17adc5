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

    def __init__(
        self, name: str, reason: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        self.name = name
        self.reason = reason
        self.status = status
        #: Seconds the store asked us to wait before the next request (``Retry-After``).
        self.retry_after = retry_after
        detail = f" (HTTP {status})" if status is not None else ""
        wait = f", retry after {retry_after:g} s" if retry_after is not None else ""
        super().__init__(f"fetching secret {name!r} failed: {reason}{detail}{wait}")

    def __reduce__(
        self,
    ) -> tuple[type[SecretFetchError], tuple[str, str, int | None, float | None]]:
        return (type(self), (self.name, self.reason, self.status, self.retry_after))


class MissingSecretError(SecretsError):
    """A secret marked required does not exist: workspace startup cannot go on without it."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = tuple(names)
        super().__init__("required secret(s) missing: " + ", ".join(self.names))

    def __reduce__(self) -> tuple[type[MissingSecretError], tuple[tuple[str, ...]]]:
        return (type(self), (self.names,))


class SecretInputError(SecretsError):
    """One item's input is unusable: a file in the user's home or a secret's content.

    It fails that item only (its file is left exactly as it was) and names the item and a short
    reason class (``too_large``, ``not_a_regular_file``, ``wrong_owner``, ``symlink``,
    ``too_deeply_nested``, ...), never a value. Injection failures of this kind appear in
    ``InjectionResult.failed`` with the reason as their error class, so a pass that met one is not
    ``ok``.
    """

    def __init__(self, item: str, reason: str) -> None:
        self.item = item
        self.reason = reason
        super().__init__(f"{item}: refused ({reason})")

    def __reduce__(self) -> tuple[type[SecretInputError], tuple[str, str]]:
        return (type(self), (self.item, self.reason))


class SecretsRefreshFailed(SecretsError):
    """A forced refresh did not succeed: what an API answers instead of ``ok: true``.

    ``status`` is 409 when the workspace's state is the problem (a required secret does not
    exist, a file could not be written) and 503 when the store is (down, throttling, refusing
    our identity, too slow). ``details`` is JSON-ready and value-free: names, reasons, versions.
    """

    def __init__(self, status: int, code: str, message: str, details: dict[str, object]) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        super().__init__(message)
