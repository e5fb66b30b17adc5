"""End to end: secrets from Key Vault THROUGH the real `dev8 run` as root.

dev8 runs the real Azure SDK (SecretClient + DefaultAzureCredential with a managed identity)
against the fake Key Vault over HTTPS and the fake IMDS (support/keyvault_fake.py): only Azure's
cloud is faked, at the wire. The workspace is a real user's home; git reads what dev8 wrote.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml
from support.dev8_harness import NO_BACKOFF, Dev8Run, Json, fail_after, run_cli
from support.keyvault_fake import AZURE_ENV, FakeImds, FakeKeyVault
from support.tree import walk as walk_tree
from support.workspace_harness import (
    USER_ID,
    WorkspaceSecrets,
    WorkspaceUser,
    all_events,
    assert_no_leak,
    events_in,
    file_facts,
    git_credential_fill,
    needles,
    open_workspace,
    random_core,
    seen_or_wait,
    system_python_service,
    token,
    wait_healthy,
    workspace_config,
)

ROLES = ("github_token", "copilot_token", "ssh_private_key", "ssh_public_key", "custom_env_vars")
GITHUB = f"github-token-{USER_ID}"
#: A workspace service that shows it got the custom environment: a digest, never the value.
APP = """\
import hashlib, os, time
value = os.environ.get("E2E_API_KEY", "")
print("api key digest", hashlib.sha256(value.encode()).hexdigest()[:16], flush=True)
time.sleep(1000)
"""
#: Files dev8 writes in the home: mode, for the workspace user.
FILES = {
    ".git-credentials": 0o600,
    ".gitconfig": 0o600,
    ".config/gh/hosts.yml": 0o600,
    ".config/github-copilot/hosts.json": 0o600,
    ".ssh/id_ed25519": 0o600,
    ".ssh/id_ed25519.pub": 0o644,
    ".ssh/authorized_keys": 0o600,
    ".config/dev8/secrets.env": 0o600,
}
DIRS = (".ssh", ".config/gh", ".config/github-copilot", ".config/dev8")


def seed(vault: FakeKeyVault, material: WorkspaceSecrets, *, skip: tuple[str, ...] = ()) -> None:
    for name, value in material.named().items():
        if name not in skip and not name.startswith("code-server-password"):
            vault.set_secret(name, value)


def config_for(
    tmp_path: Path, user: WorkspaceUser, api_port: int, marker: str, **secrets_section: object
) -> Path:
    app = system_python_service(APP, marker, backoff=dict(NO_BACKOFF), on_secret_change="restart")
    return workspace_config(
        tmp_path / "dev8.yaml",
        user=user,
        api_port=api_port,
        user_id=USER_ID,
        services={"app": app},
        secrets_section={
            "provider": "keyvault", "sdk_retries": 0, "fetch_timeout": 2.0,
            "rotation_jitter": 0,
            # The test-only switch for a vault on 127.0.0.1, from the file: the environment's
            # DEV8_TEST_KEYVAULT_SKIP_CHALLENGE_CHECK is refused by `dev8 run` (see the last test).
            "verify_challenge_resource": False,
            **secrets_section,
        },
    )  # fmt: skip


def snapshot(home: Path) -> dict[str, tuple[bytes, int, int]]:
    """Content, inode and mtime of every managed file: what "left as it was" means."""
    found = {}
    for relative in FILES:
        info = (home / relative).stat()
        found[relative] = ((home / relative).read_bytes(), info.st_ino, info.st_mtime_ns)
    return found


async def refresh(run: Dev8Run) -> Json:
    response = await run.http.post("/secrets/refresh", timeout=30)
    assert response.status_code == 200, response.text
    body: Json = response.json()
    return body


async def failed_refresh(run: Dev8Run) -> Json:
    """A refresh whose pass failed: 503 (the vault's fault), the reply inside the error."""
    response = await run.http.post("/secrets/refresh", timeout=30)
    assert response.status_code == 503, response.text
    error: Json = response.json()["error"]
    assert error["code"] == "secrets_unavailable"
    return error


async def app_printed(run: Dev8Run, text: str) -> None:
    with fail_after(10, f"app to print {text!r}", run.tail):
        while True:
            lines = (await run.http.get("/services/app/logs?lines=50")).json()["lines"]
            if any(entry["line"] == text for entry in lines):
                return
            await trio.sleep(0.1)


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


async def test_keyvault_secrets_are_injected_rotated_and_kept_through_failures_without_leaking(
    *,
    vault: FakeKeyVault,
    imds: FakeImds,
    material: WorkspaceSecrets,
    workspace: WorkspaceUser,
    tmp_path: Path,
    api_port: int,
    marker: str,
) -> None:
    seed(vault, material)
    first_version = vault.latest_version(GITHUB)
    config = config_for(
        tmp_path, workspace, api_port, marker, rotation_interval=3600, retry_initial_delay=60
    )
    home = workspace.home
    new_token = token("ghp")
    async with open_workspace(config, port=api_port, markers=[marker]) as (run, recorder):
        await wait_healthy(run)

        # -- startup: every file, with its mode and owner, through the real SDK --
        for relative, mode in FILES.items():
            assert file_facts(home / relative) == (mode, workspace.uid, workspace.gid), relative
        for relative in DIRS:
            assert file_facts(home / relative) == (0o700, workspace.uid, workspace.gid), relative
        assert (home / ".git-credentials").read_text() == (
            f"https://x-access-token:{material.github_token}@github.com\n"
        )
        assert (home / ".ssh/id_ed25519").read_text() == material.ssh_private_key
        copilot = json.loads((home / ".config/github-copilot/hosts.json").read_text())
        assert copilot["github.com"]["oauth_token"] == material.copilot_token
        assert (await git_credential_fill(workspace))[-1] == f"password={material.github_token}"
        await app_printed(run, f"api key digest {digest(material.env_vars['E2E_API_KEY'])}")
        status = (await run.status())["secrets"]
        assert status["provider"] == "keyvault"
        assert status["versions"]["github_token"] == first_version
        assert set(status["versions"]) == set(ROLES)
        assert status["lastPassOk"] is True
        # Managed identity: the SDK took the challenge, then a token from the (fake) IMDS.
        assert imds.requests
        assert vault.secret_requests()[0].authorization is None
        assert all(
            r.authorization.removeprefix("Bearer ") in imds.issued
            for r in vault.secret_requests()[1:]
            if r.authorization is not None
        )

        app_pid = (await run.status())["services"]["app"]["pid"]
        async with run.events() as events:
            # -- rotation on demand --
            new_version = vault.set_secret(GITHUB, new_token)
            body = await refresh(run)
            assert body["ok"] is True
            assert body["changed"] == ["github_token"]
            assert body["versions"]["github_token"] == new_version
            assert (home / ".git-credentials").read_text() == (
                f"https://x-access-token:{new_token}@github.com\n"
            )
            assert file_facts(home / ".git-credentials") == (0o600, workspace.uid, workspace.gid)
            assert (await git_credential_fill(workspace))[-1] == f"password={new_token}"
            rotated = await seen_or_wait(events, "secret_rotated", name=GITHUB)
            assert rotated["data"] == {
                "name": GITHUB, "role": "github_token", "version": new_version,
                "previousVersion": first_version,
            }  # fmt: skip
            injected = await seen_or_wait(events, "secrets_injected")
            assert str(home / ".git-credentials") in injected["data"]["paths"]
            restart = await seen_or_wait(events, "restart_scheduled", child="app")
            assert restart["data"]["reason"] == "secret"
            await seen_or_wait(events, "child_started", child="app")
            node = (await run.status())["services"]["app"]
            assert node["restartReasons"] == {"secret": 1}
            assert node["pid"] != app_pid

            # -- the vault fails: last good files stay, failures are published --
            before = snapshot(home)
            vault.fail(500, message=f"echo {new_token}")  # a body echoing a value: not shown
            body = await failed_refresh(run)
            assert body["ok"] is False
            assert set(body["failed"]) == set(ROLES)
            assert body["failed"]["github_token"] == {
                "name": GITHUB, "reason": "server_error", "status": 500, "retryAfter": None,
            }  # fmt: skip
            failed = await seen_or_wait(events, "secret_fetch_failed", name=GITHUB)
            assert failed["data"] == {
                "name": GITHUB, "role": "github_token", "reason": "server_error", "status": 500,
                "retryAfter": None,
            }  # fmt: skip
            assert snapshot(home) == before
            vault.heal()

            # -- the vault hangs: the same, bounded by fetch_timeout; the API stays responsive --
            vault.hang()
            async with trio.open_nursery() as nursery:
                hung: list[Json] = []

                async def refresh_while_hanging() -> None:
                    hung.append(await failed_refresh(run))

                started = time.monotonic()
                nursery.start_soon(refresh_while_hanging)
                await trio.sleep(0.5)
                health = await run.http.get("/health")
                assert health.status_code == 200  # the SDK threads block, not dev8
                assert not hung
            assert time.monotonic() - started >= 2.0
            assert hung[0]["ok"] is False
            assert hung[0]["failed"]["github_token"]["reason"] == "timeout"
            timed_out = await seen_or_wait(
                events, "secret_fetch_failed", name=GITHUB, reason="timeout"
            )
            assert timed_out["data"]["status"] is None
            assert snapshot(home) == before
            vault.heal()

            # -- healed: a forced pass succeeds and rewrites nothing --
            body = await refresh(run)
            assert body["ok"] is True
            assert body["changed"] == []
            assert snapshot(home) == before
            node = (await run.status())["services"]["app"]
            assert node["restartReasons"] == {"secret": 1}  # failures restart nothing
        assert (await run.status())["secrets"]["stats"]["rotations"] == 1

        # Every read endpoint once more, for the leak check.
        for path in ("/health", "/ready", "/status", "/metrics", "/connections", "/openapi.json"):
            assert (await run.http.get(path)).status_code == 200
        assert (await run.http.get("/services/app/logs?lines=1000")).status_code == 200
        events_seen = await all_events(run)
    searched = assert_no_leak(
        needles(material, extra=[new_token]), run=run, recorder=recorder, events=events_seen
    )
    assert searched > 50_000
    assert any(e["kind"] == "secret_fetch_failed" for e in events_in(events_seen))


async def test_rotation_is_picked_up_on_the_interval_without_a_request(
    *,
    vault: FakeKeyVault,
    material: WorkspaceSecrets,
    workspace: WorkspaceUser,
    tmp_path: Path,
    api_port: int,
    marker: str,
) -> None:
    seed(vault, material)
    config = config_for(tmp_path, workspace, api_port, marker, rotation_interval=2)
    new_token = token("ghp")
    async with open_workspace(config, port=api_port, markers=[marker]) as (run, recorder):
        await wait_healthy(run)
        async with run.events("kind=secret_rotated,secrets_injected") as events:
            previous = vault.latest_version(GITHUB)
            version = vault.set_secret(GITHUB, new_token)
            rotated = await seen_or_wait(events, "secret_rotated", name=GITHUB, timeout=15)
        assert rotated["data"]["version"] == version
        assert rotated["data"]["previousVersion"] == previous
        assert (workspace.home / ".git-credentials").read_text() == (
            f"https://x-access-token:{new_token}@github.com\n"
        )
        assert [e["kind"] for e in events.seen].count("secret_rotated") == 1
        status = (await run.status())["secrets"]
        assert status["versions"]["github_token"] == version
        assert status["stats"]["passes"] >= 2
        assert all(r.method == "GET" for r in vault.secret_requests())
        events_seen = await all_events(run)
    assert_no_leak(
        needles(material, extra=[new_token]), run=run, recorder=recorder, events=events_seen
    )


async def test_a_missing_required_secret_is_named_and_waited_for(
    *,
    vault: FakeKeyVault,
    material: WorkspaceSecrets,
    workspace: WorkspaceUser,
    tmp_path: Path,
    api_port: int,
    marker: str,
) -> None:
    """The services wait for the secret (named by /health), dev8 keeps retrying, never exits."""
    seed(vault, material, skip=(GITHUB,))
    (workspace.home / ".git-credentials").unlink(missing_ok=True)
    config = config_for(tmp_path, workspace, api_port, marker, retry_initial_delay=0.2,
                        retry_max_delay=0.5)  # fmt: skip
    async with open_workspace(config, port=api_port, markers=[marker]) as (run, recorder):
        line = await run.wait_log(
            lambda e: e.get("message") == "services_waiting_for_secrets",
            timeout=30,
            what="the services waiting for the secret",
        )
        assert line["missing"] == [GITHUB]
        failures = 0

        def fourth_failure(entry: Json) -> bool:
            nonlocal failures
            if entry.get("message") == "secret_fetch_failed" and entry.get("name") == GITHUB:
                failures += 1
            return failures >= 4

        await run.wait_log(fourth_failure, timeout=30, what="four failed fetches of the secret")
        health = await run.http.get("/health")
        assert health.status_code == 503
        assert health.json()["waitingForSecrets"][0]["name"] == GITHUB
        assert (await run.status())["services"]["app"]["pid"] is None
        assert not (workspace.home / ".git-credentials").exists()
        assert run.process.returncode is None
        vault.set_secret(GITHUB, material.named()[GITHUB])
        await wait_healthy(run)
        assert (workspace.home / ".git-credentials").exists()
        assert run.messages("child_gave_up", child="secrets") == []
    assert_no_leak(needles(material), run=run, recorder=recorder, events=[])


@pytest.mark.parametrize(
    ("variable", "value", "section", "expected"),
    [
        pytest.param(
            "DEV8_TEST_KEYVAULT_SKIP_CHALLENGE_CHECK", "1", {"vault_url": "https://127.0.0.1:1"},
            {"provider": "keyvault", "verify_challenge_resource": False}, id="skip-check",
        ),
        pytest.param(
            "DEV8_SECRETS_PROVIDER", "none", {"vault_url": "https://127.0.0.1:1"},
            {"provider": "none"}, id="provider",
        ),
        pytest.param(
            "DEV8_SECRETS_DIR", "/srv/dev8-secrets", {},
            {"provider": "directory", "directory": "/srv/dev8-secrets"}, id="directory",
        ),
        pytest.param(
            "DEV8_SECRET_GITHUB_TOKEN_U1", token("ghp"), {}, {"provider": "env"}, id="env-value",
        ),
    ],
)  # fmt: skip
async def test_the_secrets_environment_variables_reach_dev8_run(
    *,
    variable: str,
    value: str,
    section: Json,
    expected: Json,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/secrets.md's variables are not `DEV8_<KEY>` config overrides (`dev8 run` loads the
    config, and with it the secrets section, exactly as `dev8 config show` does)."""
    for name in AZURE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, value)
    config = tmp_path / "dev8.yaml"
    config.write_text(yaml.safe_dump({"user_id": USER_ID, "secrets": section}))
    result = await run_cli("config", "show", "--config", str(config))
    assert result.returncode == 0, result.stderr.decode()
    shown = json.loads(result.stdout)["secrets"]
    assert {key: shown[key] for key in expected} == expected
    if variable.startswith("DEV8_SECRET_"):  # a value: never shown
        assert random_core(value) not in result.stdout + result.stderr


async def test_a_rotator_crashed_mid_refresh_answers_at_once_and_is_restarted(
    *,
    vault: FakeKeyVault,
    material: WorkspaceSecrets,
    workspace: WorkspaceUser,
    tmp_path: Path,
    api_port: int,
    marker: str,
) -> None:
    """Chaos at the actor level, as an operator would try it: while a refresh waits on a hung
    vault, the rotator (``dev8/secrets``) is crashed through the chaos API. The refresh is
    answered at once with a 503 naming the rotator (not a hang until the fetch timeout), the
    supervisor restarts the rotator, and the next refresh through the same address succeeds."""
    seed(vault, material)
    config = config_for(tmp_path, workspace, api_port, marker, fetch_timeout=30.0)
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data["chaos"] = {"enabled": True}
    config.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    async with open_workspace(config, port=api_port, markers=[marker]) as (run, _):
        await wait_healthy(run)
        async with run.events("kind=child_exited,child_started") as events:
            vault.hang()
            asked = len(vault.secret_requests())
            answers: list[tuple[float, Any]] = []

            async def refresh_on_a_hung_vault() -> None:
                response = await run.http.post("/secrets/refresh", timeout=60)
                answers.append((time.monotonic(), response))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(refresh_on_a_hung_vault)
                with fail_after(20, "the refresh's pass to reach the vault", run.tail):
                    # A bounded poll of the vault's request log (it runs in its own thread).
                    while len(vault.secret_requests()) < asked + len(ROLES):  # noqa: ASYNC110
                        await trio.sleep(0.05)
                assert not answers
                crashed = await run.http.post("/chaos/actors/dev8/secrets/crash")
                assert crashed.status_code == 200, crashed.text
                crashed_at = time.monotonic()
            vault.heal()
            [(answered_at, response)] = answers
            assert answered_at - crashed_at < 10.0  # at once: not the 30 s fetch timeout
            assert response.status_code == 503, response.text
            error = response.json()["error"]
            assert error["code"] == "actor_unavailable"
            assert "dev8/secrets" in error["message"]
            assert error["ok"] is False
            exited = await seen_or_wait(events, "child_exited", child="secrets")
            assert exited["data"]["reason"] == "error"
            await seen_or_wait(events, "child_started", child="secrets", timeout=30)
        body = await refresh(run)
        assert body["ok"] is True
        status = await run.status()
        [node] = [n for n in walk_tree(status["tree"]) if n["path"] == "dev8/secrets"]
        assert node["restarts"] == 1
        assert status["secrets"]["lastPassOk"] is True
