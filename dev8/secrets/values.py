"""One version of one secret, and the names a store accepts: what every provider shares.

A leaf module (it imports only settings), so that the providers (dev8.secrets.providers, the Key
Vault one in dev8.secrets.keyvault) share it without importing one another.
"""

from __future__ import annotations

import attrs

from dev8.secrets.settings import SECRET_NAME_RE


@attrs.frozen
class SecretValue:
    """One version of one secret. Its repr and str never show the value."""

    name: str
    value: str = attrs.field(repr=False)
    version: str

    def __str__(self) -> str:
        return repr(self)


def check_name(name: str) -> None:
    """Reject names that are not Key Vault names (they also must not walk out of a directory)."""
    if not SECRET_NAME_RE.match(name):
        raise ValueError(f"invalid secret name {name!r}")
