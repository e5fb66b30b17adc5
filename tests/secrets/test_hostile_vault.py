"""Issue #12, a bad day at Key Vault: throttling, a broken identity endpoint, hung calls, a required
secret that does not exist. The real Azure SDK talks HTTPS to support/keyvault_fake.py; requests are
counted at the fake. Each test failed on commit adf7061.
"""

from __future__ import annotations

import email.utils
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import yaml
from prometheus_client.parser import text_string_to_metric_families
from support.dev8_harness import Dev8Run, fail_after, open_dev8, python_service
from support.keyvault_fake import FakeImds, FakeKeyVault

from actors import Backoff, ChildContext, ChildSpec, ChildState, EventBus, Intensity, Supervisor
from dev8.secrets import Injector, Rotator, SecretFetchError
from dev8.secrets.keyvault import KeyVaultProvider

NAMES = [f"secret-{i}" for i in range(5)]


@pytest.fixture
def vault(vault: FakeKeyVault) -> Iterator[FakeKeyVault]:
    """The shared fake (conftest.py), holding NAMES."""
    for name in NAMES:
        vault.set_secret(name, f"value of {name}")
    yield vault
    vault.heal()


@pytest.fixture
def seed() -> int:
    value = int(os.environ.get("DEV8_TEST_SEED", random.randrange(2**32)))
    print(f"seed: {value} (DEV8_TEST_SEED={value} repeats this run)")
    return value


@pytest.fixture
async def provider(vault: FakeKeyVault) -> AsyncIterator[KeyVaultProvider]:
    """The production default: the SDK's transport retries on (sdk_retries=2)."""
    p = KeyVaultProvider(vault.url, fetch_timeout=5, sdk_retries=2, verify_challenge_resource=False)
    assert await p.get(NAMES[0]) is not None  # warm: SDK imported, token held
    yield p
    await p.aclose()


async def fetch_all(provider: KeyVaultProvider) -> dict[str, str]:
    """Every name at once, as a rotator pass does: name -> the value, or the failure's reason."""
    outcome: dict[str, str] = {}

    async def one(name: str) -> None:
        try:
            secret = await provider.get(name)
            outcome[name] = "absent" if secret is None else secret.value
        except SecretFetchError as error:
            outcome[name] = error.reason

    async with trio.open_nursery() as nursery:
        for name in NAMES:
            nursery.start_soon(one, name)
    return outcome


# ---- item 7: throttling, truthful reasons, bounded SDK waits ----------------------------------


@pytest.mark.parametrize(
    ("status", "retry_after", "reason"),
    [(429, "30", "throttled"), (503, "5", "server_error"), (500, None, "server_error"),
     (403, None, "forbidden")],
)  # fmt: skip
async def test_an_answer_is_sent_once_and_reported_as_it_was(
    vault: FakeKeyVault,
    provider: KeyVaultProvider,
    status: int,
    retry_after: str | None,
    reason: str,
) -> None:
    """The SDK does not retry (or sleep on) an answer: dev8's backoff does, so the reason and the
    status are the vault's, not a ``timeout`` after the SDK slept past fetch_timeout."""
    before = len(vault.authenticated_requests())
    vault.retry_after = retry_after or "0"
    vault.fail(status)
    started = time.monotonic()
    with pytest.raises(SecretFetchError) as caught:
        await provider.get(NAMES[1])
    assert (caught.value.reason, caught.value.status) == (reason, status)
    assert len(vault.authenticated_requests()) - before == 1
    assert time.monotonic() - started < 5  # well inside fetch_timeout
    assert caught.value.retry_after == (float(retry_after) if retry_after else None)


@pytest.mark.parametrize(
    ("header", "expected"),
    [("1e12", 3600.0), ("inf", None), ("nan", None), ("-5", None), ("soon", None),
     ("http-date+60", 60.0)],
)  # fmt: skip
async def test_an_untrusted_retry_after_is_clamped_or_ignored(
    vault: FakeKeyVault, provider: KeyVaultProvider, header: str, expected: float | None
) -> None:
    if header == "http-date+60":
        header = email.utils.formatdate(time.time() + 60, usegmt=True)
    vault.throttle(header)
    with pytest.raises(SecretFetchError) as caught:
        await provider.get(NAMES[1])
    assert (caught.value.reason, caught.value.status) == ("throttled", 429)
    if expected is None:
        assert caught.value.retry_after is None
    else:
        assert caught.value.retry_after == pytest.approx(expected, abs=2.0)


async def test_retry_after_holds_every_request_until_it_has_passed(
    vault: FakeKeyVault, provider: KeyVaultProvider, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.rate = 1.0  # real-time deadlines, plus jumps over the 30 s
    vault.throttle("30")
    before = len(vault.authenticated_requests())
    with pytest.raises(SecretFetchError) as caught:
        await provider.get(NAMES[1])
    assert (caught.value.reason, caught.value.status) == ("throttled", 429)
    assert len(vault.authenticated_requests()) - before == 1
    assert caught.value.retry_after == 30.0
    vault.heal()  # the vault would answer now, but it asked for 30 s
    for _ in range(11):  # 27.5 s in steps: a forced refresh each time, every secret
        mock_clock.jump(2.5)
        assert set((await fetch_all(provider)).values()) == {"throttled"}
    assert len(vault.authenticated_requests()) - before == 1
    mock_clock.jump(3.0)
    assert await fetch_all(provider) == {name: f"value of {name}" for name in NAMES}
    assert len(vault.authenticated_requests()) - before == 1 + len(NAMES)


async def test_a_fleet_throttled_together_comes_back_spread_and_not_before_retry_after(
    vault: FakeKeyVault, tmp_path: Path, seed: int
) -> None:
    vault.throttle("30")
    delays = []
    for i in range(6):  # six workspaces, each with its own provider and rotator
        provider = KeyVaultProvider(
            vault.url, fetch_timeout=5, sdk_retries=0, verify_challenge_resource=False
        )
        rotator = Rotator(
            provider=provider,
            injector=Injector(home=tmp_path / f"home{i}"),
            names={"github_token": NAMES[0]},
            rng=random.Random(seed + i),
        )
        try:
            async with trio.open_nursery() as nursery:
                first = await nursery.start(rotator.run)
                nursery.cancel_scope.cancel()
        finally:
            await provider.aclose()
        assert first.failed["github_token"].reason == "throttled"
        delays.append(rotator.next_delay())
    print("delays:", delays)
    assert all(30.0 <= d <= 30.0 * 1.2 + 1.0 for d in delays)
    assert len(set(delays)) == len(delays)  # jittered: not one thundering herd


async def test_a_rotator_sends_nothing_while_throttled_and_a_refresh_says_why(
    vault: FakeKeyVault, tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """The rotator's loop under a frozen clock: after a 429 + Retry-After: 30 no request goes out
    for 30 s, whatever is asked; then the scheduled pass goes through."""
    provider = KeyVaultProvider(
        vault.url, fetch_timeout=5, sdk_retries=2, verify_challenge_resource=False
    )
    fetched = trio.Event()

    def publish(event: Any) -> None:
        if event.kind == "secret_fetched":
            fetched.set()

    rotator = Rotator(
        provider=provider,
        injector=Injector(home=tmp_path),
        names={"github_token": NAMES[0], "copilot_token": NAMES[1]},
        publish=publish,
        retry_initial_delay=1.0,
        retry_max_delay=20.0,
        rng=random.Random(7),
    )
    try:
        async with trio.open_nursery() as nursery:
            vault.throttle("30")
            first = await nursery.start(rotator.run)
            assert {f.reason for f in first.failed.values()} == {"throttled"}
            assert any(f.status == 429 for f in first.failed.values())
            sent = len(vault.authenticated_requests())
            assert sent <= 2
            vault.heal()
            for _ in range(9):  # 27 s of forced refreshes: none may reach the vault
                mock_clock.jump(3.0)
                again = await rotator.refresh()
                assert {f.reason for f in again.failed.values()} == {"throttled"}
                assert all(f.retry_after is not None for f in again.failed.values())
            assert len(vault.authenticated_requests()) == sent
            assert not fetched.is_set()
            mock_clock.jump(rotator.retry_max_delay + 40.0)  # past the scheduled retry
            with fail_after(30, "the pass after Retry-After"):
                await fetched.wait()
            assert len(vault.authenticated_requests()) == sent + 2
            nursery.cancel_scope.cancel()
    finally:
        await provider.aclose()


async def test_an_identity_endpoint_500_is_a_credential_failure_not_a_timeout(
    vault: FakeKeyVault, imds: FakeImds
) -> None:
    provider = KeyVaultProvider(
        vault.url, fetch_timeout=5, sdk_retries=2, verify_challenge_resource=False
    )
    imds.fail_status = 500
    try:
        started = time.monotonic()
        with pytest.raises(SecretFetchError) as caught:
            await provider.get(NAMES[0])
        elapsed = time.monotonic() - started
    finally:
        await provider.aclose()
    assert caught.value.reason == "credential"
    assert elapsed < 5  # the credential's own retries (5, up to 60 s apart) are off
    assert 1 <= len(imds.requests) <= 2
    assert vault.authenticated_requests() == []


async def test_calls_cut_at_fetch_timeout_do_not_keep_the_limiter(
    vault: FakeKeyVault, provider: KeyVaultProvider, mock_clock: trio.testing.MockClock
) -> None:
    """After a 429 + Retry-After, nothing may stay asleep in a worker thread holding the
    limiter: once the wait is over, the next pass sends every request and succeeds."""
    mock_clock.rate = 1.0
    vault.throttle("30")
    first = await fetch_all(provider)
    assert set(first.values()) == {"throttled"}
    vault.heal()
    mock_clock.jump(31.0)
    before = len(vault.authenticated_requests())
    second = await fetch_all(provider)
    assert second == {name: f"value of {name}" for name in NAMES}
    assert len(vault.authenticated_requests()) - before == len(NAMES)


async def test_a_hung_vault_cannot_starve_the_next_pass(vault: FakeKeyVault) -> None:
    """Calls abandoned at fetch_timeout (their threads still blocked) free their slot at once."""
    provider = KeyVaultProvider(
        vault.url, fetch_timeout=3, sdk_retries=0, verify_challenge_resource=False
    )
    try:
        assert await provider.get(NAMES[0]) is not None
        vault.hang(times=len(NAMES))  # these stay held; later requests are answered
        first = await fetch_all(provider)
        assert set(first.values()) == {"timeout"}
        before = len(vault.authenticated_requests())
        second = await fetch_all(provider)  # at once: the held threads are still blocked
        assert second == {name: f"value of {name}" for name in NAMES}
        assert len(vault.authenticated_requests()) - before == len(NAMES)
    finally:
        vault.heal()
        await provider.aclose()


# ---- item 8b: a restart for a changed secret is not a crash ----------------------------------


async def test_planned_restarts_never_count_toward_intensity() -> None:
    async def worker(ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
        task_status.started()
        await trio.sleep_forever()

    services = Supervisor(
        "services",
        [ChildSpec(name="app", start=worker, backoff=Backoff(min_delay=0.0),
                   intensity=Intensity(max_restarts=1, window=600.0))],
        bus=EventBus(),
        intensity=Intensity(max_restarts=1, window=600.0),
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        await nursery.start(services.run)
        for _ in range(5):
            node = await services.restart_child("app", reason="secret", planned=True)
            assert node.state is ChildState.RUNNING
        (node,) = services.children()
        assert node.state is ChildState.RUNNING
        assert dict(node.restart_reasons) == {"secret": 5}
        nursery.cancel_scope.cancel()


# ---- items 6, 4b, 8b, 9 through the real `dev8 run` -------------------------------------------

SERVICE = "import time\nprint('app up', flush=True)\ntime.sleep(1000)\n"


def dev8_config(tmp_path: Path, port: int, marker: str) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    app = python_service(SERVICE, marker, on_secret_change="restart",
                         intensity={"max_restarts": 1, "window": 600.0}, critical=True)  # fmt: skip
    data = {
        "environment_id": "hostile-env",
        "user_id": "u1",
        "workspace": {"dir": str(home), "user": "root"},
        "api": {"bind": f"127.0.0.1:{port}"},
        "log": {"level": "info"},
        "shutdown": {"timeout": 10.0, "kill_grace": 1.0},
        "secrets": {
            "provider": "keyvault", "sdk_retries": 0, "fetch_timeout": 3.0,
            "verify_challenge_resource": False, "profile_dir": None, "rotation_jitter": 0,
            "retry_initial_delay": 0.2, "retry_max_delay": 0.4, "required": ["github_token"],
        },
        "services": {"app": app},
    }  # fmt: skip
    path = tmp_path / "dev8.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


async def app_node(run: Dev8Run) -> dict[str, Any]:
    node: dict[str, Any] = (await run.status())["services"]["app"]
    return node


async def wait_for(run: Dev8Run, what: str, check: Any, *, timeout: float = 30.0) -> Any:
    """Bounded poll of dev8's API (a real process: it has no change notification to wait on)."""
    with fail_after(timeout, what, run.tail):
        while True:
            value = await check()
            if value:
                return value
            await trio.sleep(0.1)


async def test_a_missing_required_secret_holds_the_services_not_the_workspace(
    vault: FakeKeyVault, tmp_path: Path, api_port: int, marker: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    github = "github-token-u1"
    monkeypatch.setenv("AZURE_KEY_VAULT_URL", vault.url)
    config = dev8_config(tmp_path, api_port, marker)
    async with open_dev8(config, port=api_port, marker=marker) as run:
        # Item 6: services wait, /health and /status name the secret, dev8 keeps retrying.
        async def retried() -> bool:
            status = await run.status()
            return bool(status["secrets"]["stats"]["passes"] >= 8)

        await wait_for(run, "eight failed passes", retried)
        health = await run.http.get("/health")
        assert health.status_code == 503
        waiting = health.json()["waitingForSecrets"]
        assert [(w["name"], w["reason"]) for w in waiting] == [(github, "missing")]
        status = await run.status()
        assert status["waitingForSecrets"] == waiting
        assert status["secrets"]["ready"] is False
        node = await app_node(run)
        assert node["state"] != "running"
        assert node["pid"] is None
        assert run.process.returncode is None
        # Waiting is not wedged: the liveness probe never restarts the container for it.
        livez = await run.http.get("/livez")
        assert livez.status_code == 200, livez.text
        assert livez.json()["status"] == "alive"
        refused = await run.http.post("/secrets/refresh")
        assert refused.status_code == 409, refused.text
        error = refused.json()["error"]
        assert error["code"] == "secret_missing"
        assert github in error["message"]
        assert error["ok"] is False
        assert error["failed"]["github_token"]["reason"] == "missing"
        restart = await run.http.post("/services/app/restart")
        assert restart.status_code == 409, restart.text
        assert restart.json()["error"]["code"] == "waiting_for_secrets"
        assert github in restart.json()["error"]["message"]

        vault.set_secret(github, "ghp_first")

        async def healthy() -> bool:
            return (await run.http.get("/health")).status_code == 200

        await wait_for(run, "the app to start once the secret exists", healthy)
        assert (tmp_path / "home/.git-credentials").read_text().count("ghp_first") == 1
        assert (await app_node(run))["state"] == "running"


async def test_rotations_restart_without_using_up_intensity_failures_are_refused_and_counted(
    vault: FakeKeyVault, tmp_path: Path, api_port: int, marker: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    github = "github-token-u1"
    vault.set_secret(github, "ghp_first")
    monkeypatch.setenv("AZURE_KEY_VAULT_URL", vault.url)
    config = dev8_config(tmp_path, api_port, marker)
    async with open_dev8(config, port=api_port, marker=marker) as run:

        async def healthy() -> bool:
            return (await run.http.get("/health")).status_code == 200

        await wait_for(run, "the app to start", healthy)

        # Item 9: the secrets counters, in Prometheus' format, as promtool reads them.
        scrape = (await run.http.get("/metrics")).text
        check = await trio.run_process(
            ["promtool", "check", "metrics"], stdin=scrape.encode(), capture_stdout=True,
            capture_stderr=True, check=False,
        )  # fmt: skip
        assert check.returncode == 0, check.stdout + check.stderr
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(scrape)
            for s in family.samples
        }
        assert samples[("dev8_secrets_passes_total", ())] >= 1
        assert samples[("dev8_secrets_rotations_total", ())] == 0
        assert samples[("dev8_secrets_consecutive_failed_passes", ())] == 0
        assert samples[("dev8_secrets_waiting", ())] == 0
        assert samples[("dev8_secrets_last_fetch_duration_seconds", ())] > 0

        # Item 4b: a failed pass is not `ok: true` with the last versions, and says why.
        vault.fail(500)
        failed = await run.http.post("/secrets/refresh")
        assert failed.status_code == 503, failed.text
        error = failed.json()["error"]
        assert error["code"] == "secrets_unavailable"
        assert error["ok"] is False
        assert error["failed"]["github_token"] == {
            "name": github, "reason": "server_error", "status": 500, "retryAfter": None,
        }  # fmt: skip
        assert github in error["message"]
        assert "ghp_first" not in failed.text
        vault.heal()

        # Item 8b: rotations restart the app (intensity 1 in 600 s) and never exhaust it.
        for round_ in range(1, 4):
            vault.set_secret(github, f"ghp_rotated_{round_}")
            reply = await run.http.post("/secrets/refresh")
            assert reply.status_code == 200, reply.text
            assert reply.json()["ok"] is True
            assert reply.json()["changed"] == ["github_token"]

            async def restarted(count: int = round_) -> bool:
                node = await app_node(run)
                return bool(node["restartReasons"].get("secret") == count
                            and node["state"] == "running")  # fmt: skip

            await wait_for(run, f"secret restart {round_}", restarted)

        scrape = (await run.http.get("/metrics")).text
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(scrape)
            for s in family.samples
        }
        assert samples[("dev8_secrets_rotations_total", ())] == 3
        assert samples[("dev8_secrets_fetch_failures_total", (("reason", "server_error"),))] >= 1
        assert samples[("dev8_secrets_failed_passes_total", ())] >= 1

        # Items 6 and 4b: throttling fails the refresh with the wait, the workspace stays up.
        vault.throttle("30")
        outage = await run.http.post("/secrets/refresh")
        assert outage.status_code == 503, outage.text
        error = outage.json()["error"]
        assert error["code"] == "secrets_unavailable"
        assert {f["reason"] for f in error["failed"].values()} == {"throttled"}
        assert error["retryAfter"] == 30.0
        assert "ghp_rotated" not in outage.text
        assert (await run.http.get("/health")).status_code == 200
        assert (await app_node(run))["state"] == "running"
        assert run.process.returncode is None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
