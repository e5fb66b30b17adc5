"""Azure Key Vault provider: the real ``SecretClient`` and ``DefaultAzureCredential``.

The SDK is synchronous and heavy. It is imported and built lazily, inside a worker thread, on the
first fetch; every call runs in ``trio.to_thread.run_sync`` under a ``fetch_timeout`` deadline, and
a call that outlives it is abandoned. dev8's own backoff owns retrying: the SDK (client and
credential) never retries an answer and never sleeps on a ``Retry-After``; its transport retries,
if any, and its socket timeouts are bounded by ``fetch_timeout``, so an abandoned thread ends soon
after. The concurrency limit is held by the waiting trio task, not by the thread: a timed-out call
frees its slot at once. A ``Retry-After`` (429, 503) holds every request of this provider until it
has passed.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import attrs
import structlog
import trio

from dev8.secrets.errors import SecretFetchError
from dev8.secrets.values import SecretValue, check_name

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


#: A store asking for more than this is treated as asking for this (its answer is untrusted).
MAX_RETRY_AFTER = 3600.0


def retry_after_of(response: Any) -> float | None:
    """The wait an answer asks for (``Retry-After``, ``retry-after-ms``, ...), read by the SDK's
    own parser, clamped to [0, MAX_RETRY_AFTER]; None when absent, unreadable or zero."""
    from azure.core.pipeline import PipelineResponse  # noqa: PLC0415 - heavy SDK
    from azure.core.pipeline.policies import RetryPolicy  # noqa: PLC0415

    try:
        seconds = RetryPolicy().get_retry_after(
            PipelineResponse(response.request, response, None)  # type: ignore[arg-type]
        )
    except Exception:  # an unreadable header is no wait, not a crash
        return None
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        return None
    return min(MAX_RETRY_AFTER, float(seconds))


@attrs.frozen
class _Failed:
    """A failed call, as the worker thread reports it (no exception crosses threads)."""

    reason: str
    status: int | None = None
    retry_after: float | None = None


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
        max_threads: int = 8,
        max_abandoned: int = 16,
    ) -> None:
        self.vault_url = vault_url
        self._fetch_timeout = fetch_timeout
        self._sdk_retries = sdk_retries
        self._verify_challenge_resource = verify_challenge_resource
        self._credential = credential
        self._owns_credential = credential is None
        self._connection_verify = connection_verify
        # Calls in flight: the waiting task holds the token, so a timed-out call frees it at once.
        self._limiter = trio.CapacityLimiter(max_threads)
        # Worker threads alive, abandoned ones included (they end with the SDK's bounded timeouts).
        self._threads = trio.CapacityLimiter(max_threads + max_abandoned)
        #: trio time before which no request is sent: the store's last Retry-After.
        self._not_before = -math.inf
        self._client: Any = None
        self._build_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"KeyVaultProvider({self.vault_url!r})"

    @property
    def throttled_for(self) -> float:
        """Seconds left of the store's last Retry-After (0 when none is in force)."""
        return max(0.0, self._not_before - trio.current_time())

    async def get(self, name: str) -> SecretValue | None:
        check_name(name)
        wait = self.throttled_for
        if wait > 0:  # the store asked us to wait: no request, not even for another secret
            raise SecretFetchError(name, "throttled", None, round(wait, 3))
        started = threading.Event()
        outcome: SecretValue | _Failed | None = _Failed("timeout")
        with trio.move_on_after(self._fetch_timeout):
            async with self._limiter:
                wait = self.throttled_for  # a call that finished meanwhile may have been told
                if wait > 0:
                    raise SecretFetchError(name, "throttled", None, round(wait, 3))
                outcome = await trio.to_thread.run_sync(
                    self._get_sync, name, started, abandon_on_cancel=True, limiter=self._threads
                )
        if not isinstance(outcome, _Failed):
            return outcome
        reason = outcome.reason
        if reason == "timeout" and not started.is_set():
            reason = "busy"  # no request was sent: earlier abandoned calls hold every thread
        if outcome.retry_after is not None:
            self._not_before = max(self._not_before, trio.current_time() + outcome.retry_after)
        raise SecretFetchError(name, reason, outcome.status, outcome.retry_after)

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

                bounded = self._sdk_options()
                if self._credential is None:
                    from azure.identity import DefaultAzureCredential  # noqa: PLC0415

                    # The identity endpoint's own retries (IMDS: 5, backing off up to 60 s, on
                    # 429/5xx) would sleep in our thread past fetch_timeout: bounded the same way.
                    self._credential = DefaultAzureCredential(**_EXCLUDED_CREDENTIALS, **bounded)
                options: dict[str, Any] = {
                    "verify_challenge_resource": self._verify_challenge_resource,
                    **bounded,
                }
                if self._connection_verify is not None:
                    options["connection_verify"] = self._connection_verify
                self._client = SecretClient(self.vault_url, self._credential, **options)
            return self._client

    def _sdk_options(self) -> dict[str, Any]:
        """Pipeline settings that keep every SDK wait inside ``fetch_timeout``.

        Answers (429, 5xx, ...) are never retried by the SDK (``retry_status=0``): dev8's backoff
        does that and honours Retry-After across secrets. ``sdk_retries`` only covers transport
        failures (a reset connection), with short backoffs, within the operation ``timeout``.
        """
        timeout = self._fetch_timeout
        return {
            "retry_total": self._sdk_retries,
            "retry_status": 0,
            "retry_backoff_factor": min(0.8, timeout / 8),
            "retry_backoff_max": max(0.0, timeout / 4),
            "timeout": timeout,
            "connection_timeout": timeout,
            "read_timeout": timeout,
        }

    def _get_sync(self, name: str, started: threading.Event) -> SecretValue | _Failed | None:
        """Runs in a worker thread. Maps every SDK failure to a value-free outcome."""
        started.set()
        from azure.core.exceptions import (  # noqa: PLC0415 - heavy SDK
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
            ServiceRequestError,
            ServiceRequestTimeoutError,
            ServiceResponseError,
            ServiceResponseTimeoutError,
        )

        status: int | None = None
        retry_after: float | None = None
        reason: str
        try:
            secret = self._build().get_secret(name)
        except ResourceNotFoundError:
            return None
        except ClientAuthenticationError as e:
            # Raised by the vault's 401 (with a status) and by the credential (without one: the
            # identity endpoint failed or has no identity for us).
            status = e.status_code
            reason = reason_for_status(status) if status is not None else "credential"
        except HttpResponseError as e:
            status = e.status_code
            reason = reason_for_status(status)
            retry_after = retry_after_of(e.response)
        except (ServiceRequestTimeoutError, ServiceResponseTimeoutError):
            reason = "timeout"
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
        # Built here, outside the except blocks: no SDK exception (its message can echo a
        # response body) rides along.
        return _Failed(reason, status, retry_after)


def _close_quietly(*closables: Any) -> None:
    for item in closables:
        if item is None:
            continue
        try:
            item.close()
        except Exception as e:  # closing must not mask the real outcome
            log.debug("secrets.keyvault.close_failed", error_type=type(e).__name__)
