"""The real Azure SDK (SecretClient + DefaultAzureCredential) against the fake vault and IMDS."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing
from support.keyvault_fake import FakeImds, FakeKeyVault, TlsFiles

from actors import Event
from dev8.secrets import (
    Injector,
    Rotator,
    SecretFetchError,
    SecretRotated,
    build_provider,
    secrets_config_from,
)
from dev8.secrets.keyvault import KeyVaultProvider


@pytest.fixture
async def provider(vault: FakeKeyVault) -> AsyncIterator[KeyVaultProvider]:
    p = KeyVaultProvider(
        vault.url, fetch_timeout=10, sdk_retries=0, verify_challenge_resource=False
    )
    yield p
    await p.aclose()


async def test_first_fetch_goes_through_bearer_challenge_and_managed_identity(
    vault: FakeKeyVault, imds: FakeImds, provider: KeyVaultProvider
) -> None:
    version = vault.set_secret("github-token-alice", "ghp_first")

    secret = await provider.get("github-token-alice")

    assert secret is not None
    assert (secret.name, secret.value, secret.version) == (
        "github-token-alice",
        "ghp_first",
        version,
    )
    first, second = vault.secret_requests()
    assert first.path == "/secrets/github-token-alice/"  # latest: note the trailing slash
    assert "api-version" in first.query
    assert first.authorization is None  # the SDK's first request carries no token
    assert second.authorization is not None
    assert second.authorization.removeprefix("Bearer ") in imds.issued
    (token_request,) = imds.requests
    assert token_request.headers["metadata"] == "true"
    assert token_request.query["resource"] == ["https://vault.azure.net"]


async def test_a_new_version_is_what_the_next_get_returns(
    vault: FakeKeyVault, provider: KeyVaultProvider
) -> None:
    v1 = vault.set_secret("copilot-token-alice", "one")
    first = await provider.get("copilot-token-alice")
    v2 = vault.set_secret("copilot-token-alice", "two")
    second = await provider.get("copilot-token-alice")
    assert first is not None
    assert second is not None
    assert (first.version, first.value) == (v1, "one")
    assert (second.version, second.value) == (v2, "two")
    assert v1 != v2
    # One token for both: the challenge happened once.
    assert sum(r.authorization is None for r in vault.secret_requests()) == 1


async def test_fake_vault_serves_a_secret_by_version(vault: FakeKeyVault, tls: TlsFiles) -> None:
    """The fake's by-version route, read through the real SecretClient."""
    v1 = vault.set_secret("ssh-public-key-alice", "old")
    vault.set_secret("ssh-public-key-alice", "new")

    def read() -> tuple[str | None, str | None]:
        from azure.identity import DefaultAzureCredential
        from azure.keyvault.secrets import SecretClient

        with (
            DefaultAzureCredential() as credential,
            SecretClient(vault.url, credential, verify_challenge_resource=False) as client,
        ):
            secret = client.get_secret("ssh-public-key-alice", v1)
            return secret.value, secret.properties.version

    assert await trio.to_thread.run_sync(read) == ("old", v1)
    assert vault.secret_requests()[-1].path == f"/secrets/ssh-public-key-alice/{v1}"


async def test_a_missing_secret_is_none(vault: FakeKeyVault, provider: KeyVaultProvider) -> None:
    assert await provider.get("custom-env-vars-alice") is None
    assert vault.secret_requests()[-1].path == "/secrets/custom-env-vars-alice/"


@pytest.mark.parametrize(
    ("status", "reason"),
    [(401, "unauthorized"), (403, "forbidden"), (429, "throttled"), (500, "server_error")],
)
async def test_http_failures_become_value_free_errors(
    vault: FakeKeyVault, provider: KeyVaultProvider, status: int, reason: str
) -> None:
    vault.set_secret("github-token-alice", "ghp_value_abc")
    assert await provider.get("github-token-alice") is not None  # authenticated already
    # A server could echo anything in its error body: none of it may reach our message.
    vault.fail(status, message="echo ghp_value_abc")

    with pytest.raises(SecretFetchError) as caught:
        await provider.get("github-token-alice")

    error = caught.value
    assert (error.name, error.reason, error.status) == ("github-token-alice", reason, status)
    assert str(error) == f"fetching secret 'github-token-alice' failed: {reason} (HTTP {status})"
    assert "ghp_value_abc" not in repr(error)
    assert "echo" not in str(error)
    assert error.__context__ is None
    assert error.__cause__ is None


async def test_sdk_retries_cover_transport_failures_only(
    vault: FakeKeyVault, tls: TlsFiles
) -> None:
    """``sdk_retries`` retry a dropped connection; an answer (500) is left to dev8.s backoff."""
    vault.set_secret("github-token-alice", "x")
    provider = KeyVaultProvider(
        vault.url, fetch_timeout=10, sdk_retries=2, verify_challenge_resource=False
    )
    try:
        assert await provider.get("github-token-alice") is not None
        before = len(vault.secret_requests())
        vault.drop(times=2)  # two connections closed unanswered, then the third try succeeds
        secret = await provider.get("github-token-alice")
        assert secret is not None
        assert secret.value == "x"
        assert len(vault.secret_requests()) - before == 3
        vault.fail(500, times=2)
        with pytest.raises(SecretFetchError) as caught:
            await provider.get("github-token-alice")
        assert (caught.value.reason, caught.value.status) == ("server_error", 500)
        assert len(vault.secret_requests()) - before == 4
    finally:
        await provider.aclose()


async def test_a_hanging_vault_times_out_without_blocking_trio(vault: FakeKeyVault) -> None:
    vault.set_secret("github-token-alice", "x")
    provider = KeyVaultProvider(
        vault.url, fetch_timeout=0.5, sdk_retries=0, verify_challenge_resource=False
    )
    try:
        # The first fetch (challenge, token, TLS) may itself exceed 0.5 s on a busy machine:
        # wait until one gets through, so that only the hang below is timed out.
        with trio.fail_after(60):
            while True:
                with contextlib.suppress(SecretFetchError):
                    assert await provider.get("github-token-alice") is not None
                    break
        vault.hang()
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await trio.sleep(0.01)
                ticks += 1

        start = time.monotonic()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            with pytest.raises(SecretFetchError) as caught:
                await provider.get("github-token-alice")
            nursery.cancel_scope.cancel()
        elapsed = time.monotonic() - start
        assert caught.value.reason == "timeout"
        assert caught.value.status is None
        assert 0.5 <= elapsed < 5.0  # the 0.5 s timeout held; the SDK call hangs for good
        assert ticks >= 3  # the loop kept running while the SDK thread was stuck
    finally:
        vault.heal()
        await provider.aclose()


async def test_managed_identity_failure_is_a_credential_error(
    vault: FakeKeyVault, imds: FakeImds, provider: KeyVaultProvider
) -> None:
    imds.fail_status = 400  # "no identity assigned to this resource"
    vault.set_secret("github-token-alice", "x")
    with pytest.raises(SecretFetchError) as caught:
        await provider.get("github-token-alice")
    assert caught.value.reason == "credential"
    assert caught.value.status is None


async def test_production_challenge_check_refuses_a_loopback_vault(vault: FakeKeyVault) -> None:
    """The test-only switch is needed for 127.0.0.1; production keeps the SDK's check."""
    vault.set_secret("github-token-alice", "x")
    provider = KeyVaultProvider(vault.url, fetch_timeout=10, sdk_retries=0)
    try:
        with pytest.raises(SecretFetchError) as caught:
            await provider.get("github-token-alice")
        assert caught.value.reason == "error"
        assert all(r.authorization is None for r in vault.secret_requests())
    finally:
        await provider.aclose()


async def test_provider_from_environment_as_the_agent_passes_it(
    vault: FakeKeyVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault.set_secret("github-token-u42", "ghp_env")
    environ = {
        "AZURE_KEY_VAULT_URL": vault.url,
        "USER_ID": "u42",
        "DEV8_TEST_KEYVAULT_SKIP_CHALLENGE_CHECK": "1",
    }
    config = secrets_config_from({"sdk_retries": 0}, environ)
    assert config.provider == "keyvault"
    provider = build_provider(config)
    try:
        secret = await provider.get(config.resolved_names()["github_token"])
        assert secret is not None
        assert secret.value == "ghp_env"
    finally:
        await provider.aclose()


def test_importing_secrets_does_not_load_the_azure_sdk() -> None:
    code = (
        "import sys, dev8.secrets\n"
        "from dev8.secrets import build_provider, secrets_config_from\n"
        "cfg = secrets_config_from({}, {'AZURE_KEY_VAULT_NAME': 'myvault', 'USER_ID': 'u'})\n"
        "p = build_provider(cfg)\n"
        "print(type(p).__name__, p.vault_url, any(m.startswith('azure') for m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["KeyVaultProvider", "https://myvault.vault.azure.net", "False"]


# ---- the rotator over the real SDK, on a virtual clock (frozen until the test jumps it) ------


async def _wait_real(event: threading.Event, timeout: float = 20) -> None:
    """Wait for a thread-side event in real time (the trio clock is frozen here)."""
    assert await trio.to_thread.run_sync(event.wait, timeout)


async def test_rotation_is_picked_up_on_the_next_interval(
    mock_clock: trio.testing.MockClock,
    vault: FakeKeyVault,
    provider: KeyVaultProvider,
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    v1 = vault.set_secret("github-token-alice", "ghp_one")
    events: list[Event] = []
    rotated = threading.Event()

    def publish(event: Event) -> None:
        events.append(event)
        if isinstance(event, SecretRotated):
            rotated.set()

    rotator = Rotator(
        provider=provider,
        injector=Injector(home=home, github_user="alice"),
        names={"github_token": "github-token-alice", "copilot_token": "copilot-token-alice"},
        required=["github_token"],
        publish=publish,
        rotation_interval=3600,
        rotation_jitter=0,
    )
    async with trio.open_nursery() as nursery:
        first = await nursery.start(rotator.run)
        assert first.versions == {"github_token": v1}
        assert first.missing == ("copilot_token",)  # optional and absent: not an error
        assert first.ok
        assert (home / ".git-credentials").read_text() == "https://alice:ghp_one@github.com\n"
        await trio.testing.wait_all_tasks_blocked()
        requests_after_start = len(vault.secret_requests())

        v2 = vault.set_secret("github-token-alice", "ghp_two")
        mock_clock.jump(3599)
        await trio.testing.wait_all_tasks_blocked()
        assert len(vault.secret_requests()) == requests_after_start  # not due yet
        mock_clock.jump(1)
        await _wait_real(rotated)

        assert (home / ".git-credentials").read_text() == "https://alice:ghp_two@github.com\n"
        assert rotator.versions == {"github_token": v2}
        rotation = [e for e in events if isinstance(e, SecretRotated)]
        assert [(e.name, e.version, e.previous_version) for e in rotation] == [
            ("github-token-alice", v2, v1)
        ]
        assert rotator.last_result is not None
        assert rotator.last_result.changed == ("github_token",)
        nursery.cancel_scope.cancel()


async def test_a_missing_required_secret_is_waited_for_naming_it(
    vault: FakeKeyVault, provider: KeyVaultProvider, tmp_path: Path
) -> None:
    """Startup goes on (nothing raises); ``ready`` waits for the secret, which is named."""
    rotator = Rotator(
        provider=provider,
        injector=Injector(home=tmp_path),
        names={"github_token": "github-token-nobody"},
        required=["github_token"],
        retry_initial_delay=3600.0,
    )
    async with trio.open_nursery() as nursery:
        first = await nursery.start(rotator.run)
        assert not first.ok
        assert first.failed["github_token"].reason == "missing"
        assert not rotator.ready.is_set()
        assert [(f.name, f.reason) for f in rotator.waiting_for()] == [
            ("github-token-nobody", "missing")
        ]
        assert not (tmp_path / ".git-credentials").exists()
        vault.set_secret("github-token-nobody", "ghp_late")
        assert (await rotator.refresh()).ok
        assert rotator.ready.is_set()
        assert rotator.waiting_for() == []
        nursery.cancel_scope.cancel()
    assert (tmp_path / ".git-credentials").exists()
