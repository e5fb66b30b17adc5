"""Azure Key Vault provider: the real ``SecretClient`` and ``DefaultAzureCredential``.

The SDK is synchronous and heavy. It is imported and built lazily, inside a worker thread, on the
first fetch; every call runs in ``trio.to_thread.run_sync`` under ``trio.fail_after``, and a call
that outlives its deadline is abandoned (its thread ends when the SDK's own read timeout does).
"""

from __future__ import annotations

import threading
from typing import Any

import structlog
import trio

from .errors import SecretFetchError
from .providers import SecretValue, check_name

log = structlog.get_logger(__name__)

#: Developer-machine credentials make no sense in a workspace's PID 1, and some spawn CLIs.
_EXCLUDED_CREDENTIALS = {
    "exclude_cli_credential": True,
    "exclude_developer_cli_credential": True,
    "exclude_powershell_credential": True,
    "exclude_shared_token_cache_credential": True,
    "exclude_visual_studio_code_credential": True,
    "exclude_interactive_browser_credential": True,
}


def reason_for_status(status: int | None) -> str:
    """A short, value-free reason class for an HTTP status."""
    if status is None:
        return "error"
    return {401: "unauthorized", 403: "forbidden", 404: "not_found", 429: "throttled"}.get(
        status, "server_error" if status >= 500 else "http_error"
    )


class KeyVaultProvider:
    """Secrets from one Azure Key Vault.

    ``verify_challenge_resource=False`` is a TEST-ONLY switch: it lets a vault on 127.0.0.1
    answer the bearer challenge with ``resource="https://vault.azure.net"``. Production keeps the
    check, which stops a rogue endpoint from obtaining a token for the real vault.
    """

    def __init__(
        self,
        vault_url: str,
        *,
        fetch_timeout: float = 10.0,
        sdk_retries: int = 2,
        verify_challenge_resource: bool = True,
        credential: Any = None,
        connection_verify: str | bool | None = None,
        max_threads: int = 4,
    ) -> None:
        self.vault_url = vault_url
        self._fetch_timeout = fetch_timeout
        self._sdk_retries = sdk_retries
        self._verify_challenge_resource = verify_challenge_resource
        self._credential = credential
        self._owns_credential = credential is None
        self._connection_verify = connection_verify
        # Abandoned (timed-out) calls keep their token until their thread ends: this bounds them.
        self._limiter = trio.CapacityLimiter(max_threads)
        self._client: Any = None
        self._build_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"KeyVaultProvider({self.vault_url!r})"

    async def get(self, name: str) -> SecretValue | None:
        check_name(name)
        try:
            with trio.fail_after(self._fetch_timeout):
                return await trio.to_thread.run_sync(
                    self._get_sync, name, abandon_on_cancel=True, limiter=self._limiter
                )
        except trio.TooSlowError:
            pass
        # Raised outside the except block so that no SDK exception rides along as context.
        raise SecretFetchError(name, "timeout")

    async def aclose(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        credential = self._credential if self._owns_credential else None
        if client is None and credential is None:
            return
        with trio.move_on_after(self._fetch_timeout) as scope:
            scope.shield = True
            await trio.to_thread.run_sync(_close_quietly, client, credential)

    def _build(self) -> Any:
        with self._build_lock:
            if self._client is None:
                if self._closed:
                    raise RuntimeError("KeyVaultProvider is closed")
                from azure.keyvault.secrets import SecretClient  # noqa: PLC0415 - heavy SDK

                if self._credential is None:
                    from azure.identity import DefaultAzureCredential  # noqa: PLC0415

                    self._credential = DefaultAzureCredential(**_EXCLUDED_CREDENTIALS)
                options: dict[str, Any] = {
                    "verify_challenge_resource": self._verify_challenge_resource,
                    "retry_total": self._sdk_retries,
                    "connection_timeout": self._fetch_timeout,
                    "read_timeout": self._fetch_timeout,
                }
                if self._connection_verify is not None:
                    options["connection_verify"] = self._connection_verify
                self._client = SecretClient(self.vault_url, self._credential, **options)
            return self._client

    def _get_sync(self, name: str) -> SecretValue | None:
        """Runs in a worker thread. Maps every SDK failure to a value-free error."""
        from azure.core.exceptions import (  # noqa: PLC0415 - heavy SDK
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
            ServiceRequestError,
            ServiceResponseError,
        )

        status: int | None = None
        reason: str
        try:
            secret = self._build().get_secret(name)
        except ResourceNotFoundError:
            return None
        except ClientAuthenticationError as e:
            # Raised by the vault's 401 (with a status) and by the credential (without one).
            status = e.status_code
            reason = reason_for_status(status) if status is not None else "credential"
        except HttpResponseError as e:
            status = e.status_code
            reason = reason_for_status(status)
        except (ServiceRequestError, ServiceResponseError):
            reason = "network"
        except Exception as e:  # any SDK failure becomes a fetch error
            reason = "error"
            log.debug("secrets.keyvault.unexpected_error", name=name, error_type=type(e).__name__)
        else:
            value, version = secret.value, secret.properties.version
            if value is None:
                return None
            return SecretValue(name, value, version or "")
        raise SecretFetchError(name, reason, status)


def _close_quietly(*closables: Any) -> None:
    for item in closables:
        if item is None:
            continue
        try:
            item.close()
        except Exception as e:  # closing must not mask the real outcome
            log.debug("secrets.keyvault.close_failed", error_type=type(e).__name__)
