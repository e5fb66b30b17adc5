"""Secret providers: where a named secret's current value and version come from.

A provider answers ``get(name)`` with a :class:`SecretValue`, or ``None`` when the secret does not
exist; anything else (network, authorization, throttling, timeout) is a :class:`SecretFetchError`.
The Azure Key Vault provider lives in :mod:`dev8.secrets.keyvault` so that the heavy SDK is only
imported when a vault is configured.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

from dev8.secrets.errors import SecretFetchError
from dev8.secrets.settings import SecretsConfig
from dev8.secrets.values import SecretValue, check_name

__all__ = [  # SecretValue and check_name live in .values (shared with .keyvault); kept here too
    "MAX_SECRET_BYTES",
    "DirectoryProvider",
    "EnvProvider",
    "NullProvider",
    "SecretProvider",
    "SecretValue",
    "build_provider",
    "check_name",
    "content_version",
]

#: Larger "secrets" are a misconfiguration (a wrong directory), not something to inject.
MAX_SECRET_BYTES = 256 * 1024


@runtime_checkable
class SecretProvider(Protocol):
    """What the rotator needs from a secret store."""

    async def get(self, name: str) -> SecretValue | None:
        """The current version of ``name``; ``None`` if it does not exist."""
        ...

    async def aclose(self) -> None:
        """Release connections and threads' resources."""
        ...


def content_version(data: bytes) -> str:
    """A version for stores that have none: changes exactly when the content does."""
    return hashlib.sha256(data).hexdigest()[:16]


class NullProvider:
    """No secret store configured: every secret is absent."""

    async def get(self, name: str) -> SecretValue | None:
        check_name(name)
        return None

    async def aclose(self) -> None:
        return None


class EnvProvider:
    """``DEV8_SECRET_<NAME>`` variables, for local runs.

    ``<NAME>`` is the secret name upper-cased with ``-`` as ``_``: ``DEV8_SECRET_GITHUB_TOKEN_X``.
    """

    prefix = "DEV8_SECRET_"

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    @classmethod
    def variable_for(cls, name: str) -> str:
        return cls.prefix + name.upper().replace("-", "_")

    async def get(self, name: str) -> SecretValue | None:
        check_name(name)
        value = self._environ.get(self.variable_for(name))
        if value is None:
            return None
        return SecretValue(name, value, content_version(value.encode()))

    async def aclose(self) -> None:
        return None


class DirectoryProvider:
    """One file per secret name, as a Kubernetes secret volume or a local setup provides.

    Reads are small and local, so they run inline rather than in a worker thread; that also keeps
    the rotator deterministic under a virtual clock. The version is a hash of the content.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._directory = Path(directory)

    async def get(self, name: str) -> SecretValue | None:
        check_name(name)
        path = self._directory / name
        failure: str | None = None
        data = b""
        try:
            # Secret volumes are symlinks into a ..data directory: following them is intended.
            with path.open("rb") as f:
                data = f.read(MAX_SECRET_BYTES + 1)
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            failure = "not_a_file"
        except OSError as e:
            failure = "permission_denied" if e.errno in (errno.EACCES, errno.EPERM) else "io_error"
        if failure is None and len(data) > MAX_SECRET_BYTES:
            failure = "too_large"
        if failure is None:
            try:
                return SecretValue(name, data.decode("utf-8"), content_version(data))
            except UnicodeDecodeError:
                failure = "not_utf8"
        raise SecretFetchError(name, failure)

    async def aclose(self) -> None:
        return None


def build_provider(config: SecretsConfig) -> SecretProvider:
    """The provider the configuration names. Nothing slow happens here: no SDK call, no I/O."""
    if config.provider == "keyvault":
        from dev8.secrets.keyvault import KeyVaultProvider  # noqa: PLC0415 - the SDK only when configured

        assert config.vault_url is not None
        return KeyVaultProvider(
            config.vault_url,
            fetch_timeout=config.fetch_timeout,
            sdk_retries=config.sdk_retries,
            verify_challenge_resource=config.verify_challenge_resource,
        )
    if config.provider == "directory":
        assert config.directory is not None
        return DirectoryProvider(config.directory)
    if config.provider == "env":
        return EnvProvider()
    return NullProvider()
