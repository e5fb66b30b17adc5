"""Security checks on the real `dev8 run` (as root, with a real workspace user).

Covered elsewhere, not repeated: sshd offers only public keys, refuses passwords and root even
with an authorized key (tests/services/test_sshd.py: test_only_publickey_is_offered,
test_root_is_refused_even_with_an_authorized_key, test_permit_root_login_no_holds_on_its_own);
changes refused without a token when the API listens beyond loopback (tests/api/test_api.py);
symlink-safe writes (tests/secrets/test_secrets_injector.py); no secret value in any output of
a whole chaos run (tests/tree/test_chaos.py) or of the secrets flow
(tests/secrets/test_secrets_never_leak.py).
"""

from __future__ import annotations

import hmac
import json
import os
import pwd
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml
from support.dev8_harness import (
    NO_BACKOFF,
    Dev8Run,
    open_dev8,
    python_service,
    run_cli,
    throwaway_user,
    write_config,
)
from support.net import free_port
from support.procs import descendants

from actors import ChildContext, ChildSpec, EventBus, Registry, Supervisor
from dev8.api import create_app, serve_api
from dev8.control import Control
from dev8.services.process import ProcessActor

TOKEN = "sec-token-5b0c3f6e9a1d4e27"
VALUES = {
    "github-token-e2e-user": "ghp_SECURITYcanary0123456789abcdefXY",
    "copilot-token-e2e-user": "ghu_SECURITYcanary9876543210",
    "custom-env-vars-e2e-user": json.dumps({"SEC_VAR": "sec-env-canary-42"}),
}
# Prints its identity, then that of a child it spawns, then sleeps.
WHOAMI = """\
import json, os, subprocess, sys, time
def me(pid):
    status = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status").read().splitlines())
    return {k: status[k].split() for k in ("Uid", "Gid", "Groups")}
child = subprocess.Popen(["sleep", "1000"])
print(json.dumps({"self": me(os.getpid()), "child": me(child.pid),
                  "env": sorted(os.environ), "home": os.environ.get("HOME")}), flush=True)
time.sleep(1000)
"""


@pytest.fixture(scope="module")
def workspace_user() -> Iterator[pwd.struct_passwd]:
    """A real non-root user with a free uid, removed afterwards."""
    with throwaway_user("dev8sec") as user:
        yield user


def secured_config(
    tmp_path: Path, port: int, marker: str, user: pwd.struct_passwd
) -> tuple[Path, Path, Path]:
    """(config, workspace, profile dir): secrets from a directory, a token, a service."""
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    for name, value in VALUES.items():
        (secrets_dir / name).write_text(value)
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    os.chown(workspace, user.pw_uid, user.pw_gid)
    profile = tmp_path / "profile.d"
    profile.mkdir()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    config = write_config(
        tmp_path / "dev8.yaml",
        {
            "whoami": {
                # The system's Python: the test's venv may live where the user cannot read.
                **python_service(WHOAMI, marker, backoff=dict(NO_BACKOFF), cwd="/"),
                "command": ["/usr/bin/python3", "-c", WHOAMI, marker],
            }
        },
        port=port,
    )
    data = yaml.safe_load(config.read_text())
    data["workspace"] = {"dir": str(workspace), "user": user.pw_name}
    data["api"]["token_file"] = str(token_file)
    data["chaos"] = {"enabled": True}
    data["secrets"] = {
        "provider": "directory",
        "directory": str(secrets_dir),
        "profile_dir": str(profile),
        "required": ["github_token"],
    }
    config.write_text(yaml.safe_dump(data))
    return config, workspace, profile


def uids_of(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[:4]


MANAGED = {  # relative to the home: mode (and the owner is the workspace user)
    ".git-credentials": 0o600,
    ".gitconfig": 0o600,
    ".config": 0o700,
    ".config/gh": 0o700,
    ".config/gh/hosts.yml": 0o600,
    ".config/github-copilot": 0o700,
    ".config/github-copilot/hosts.json": 0o600,
    ".config/dev8": 0o700,
    ".config/dev8/secrets.env": 0o600,
}


async def test_managed_files_services_and_environment(
    tmp_path: Path, api_port: int, marker: str, workspace_user: pwd.struct_passwd
) -> None:
    user = workspace_user
    config, home, profile = secured_config(tmp_path, api_port, marker, user)
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        said = await dev8.wait_log(lambda e: e.get("service") == "whoami", what="whoami")
        ids = json.loads(said["message"])

        # Every managed file and directory: the workspace user's, with its documented mode.
        found = {}
        for name in MANAGED:
            info = (home / name).lstat()
            found[name] = (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
            assert not stat.S_ISLNK(info.st_mode)
        assert found == {n: (m, user.pw_uid, user.pw_gid) for n, m in MANAGED.items()}
        hook = (profile / "dev8-secrets.sh").lstat()
        assert (stat.S_IMODE(hook.st_mode), hook.st_uid) == (0o644, 0)  # root's, for every shell
        # Nothing else in the home is world- or group-accessible, nothing is root's.
        for path in home.rglob("*"):
            info = path.lstat()
            assert info.st_uid == user.pw_uid, path
            assert stat.S_IMODE(info.st_mode) & 0o077 in (0, 0o044), path

        # The service and its child run as the workspace user: no root uid, gid or group.
        for who in ("self", "child"):
            assert ids[who]["Uid"] == [str(user.pw_uid)] * 4, ids
            assert ids[who]["Gid"] == [str(user.pw_gid)] * 4, ids
            assert "0" not in ids[who]["Groups"], ids
        assert ids["home"] == user.pw_dir
        # dev8's own settings and Azure credentials never reach a service.
        assert not [k for k in ids["env"] if k.startswith(("DEV8_", "AZURE_"))]
        host = await dev8.dev8_pid()
        for pid in descendants(host):
            assert uids_of(pid) == [str(user.pw_uid)] * 4, pid

        # No secret value in what dev8 shows: status, metrics, config show, logs.
        shown = [
            (await dev8.http.get("/status")).text,
            (await dev8.http.get("/metrics")).text,
            (await run_cli("config", "show", "--config", str(config))).stdout.decode(),
            *dev8.lines,
        ]
        for value in (VALUES["github-token-e2e-user"], VALUES["copilot-token-e2e-user"]):
            assert not [text for text in shown if value in text]


async def test_state_changes_need_the_token(
    tmp_path: Path, api_port: int, marker: str, workspace_user: pwd.struct_passwd
) -> None:
    config, _home, _profile = secured_config(tmp_path, api_port, marker, workspace_user)
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        await dev8.wait_log(lambda e: e.get("service") == "whoami", what="whoami")
        right = {"Authorization": f"Bearer {TOKEN}"}
        document = (await dev8.http.get("/openapi.json", headers=right)).json()
        changes = [
            path.replace("{name}", "whoami").replace("{service}", "whoami")
            .replace("{path}", "dev8/services/whoami")
            for path, item in document["paths"].items()
            if "post" in item
        ]  # fmt: skip
        assert len(changes) >= 8  # restart, stop, start, reload, secrets refresh, chaos...
        wrong = [
            {},
            {"Authorization": "Bearer"},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Bearer {TOKEN}x"},
            {"Authorization": f"Bearer {TOKEN[:-1]}"},
            {"Authorization": f"Token {TOKEN}"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": TOKEN},
            {"X-Token": TOKEN},
        ]
        before = (await dev8.http.get("/status", headers=right)).json()
        anonymous = httpx.AsyncClient(base_url=dev8.http.base_url)  # without the harness' token
        for path in changes:
            for headers in wrong:
                response = await anonymous.post(
                    path, headers=headers, params={"signal": "KILL", "token": TOKEN}
                )
                assert response.status_code == 401, (path, headers, response.text)
                assert response.json()["error"]["code"] == "unauthorized"
        after = (await dev8.http.get("/status", headers=right)).json()
        assert after["lastEvent"] == before["lastEvent"]  # nothing happened at all
        assert not dev8.messages("config_reloaded")
        assert not dev8.messages("chaos_fault_injected")
        # The event stream and every read too; only the probes answer without the token.
        await assert_events_refused(dev8, {})
        await assert_events_refused(dev8, {"Authorization": "Bearer wrong"})
        for probe in ("/health", "/livez", "/readyz"):
            assert (await anonymous.get(probe)).status_code in (200, 503), probe
        for read in ("/ready", "/status", "/metrics", "/openapi.json", "/connections"):
            assert (await anonymous.get(read)).status_code == 401, read
            assert (await dev8.http.get(read, headers=right)).status_code in (200, 503), read
        # With the token, a change goes through.
        restarted = await dev8.http.post("/services/whoami/restart", headers=right)
        assert restarted.status_code == 200
        assert restarted.json()["restarts"] == 1
        await anonymous.aclose()


async def assert_events_refused(dev8: Dev8Run, headers: dict[str, str]) -> None:
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    # On a connection of its own: the refusal closes it.
    with trio.fail_after(10):
        async with httpx.AsyncClient(base_url=dev8.http.base_url) as client:
            response = await client.get("/events", headers={**upgrade, **headers})
    assert response.status_code in (401, 403), response.status_code


# -- constant time --------------------------------------------------------------------------


async def _api_with_token(nursery: trio.Nursery) -> str:
    """The app with a token, served on a loopback port: its URL."""
    bus = EventBus()

    async def idle(ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
        task_status.started()
        await trio.sleep_forever()

    services = Supervisor("services", [ChildSpec(name="web", start=idle)], bus=bus)
    registry = Registry()  # the service's address: its process actor
    actor = ProcessActor(registry, name="web", path="dev8/services/web", services=services, bus=bus)
    root = Supervisor(
        "dev8", [ChildSpec(name="web.actor", start=actor.run), services.child_spec()], bus=bus
    )
    await nursery.start(root.run)
    control = Control(
        bus=bus, root=root, services=services, environment_id="e", user_id="u", registry=registry
    )
    app = create_app(control, token=TOKEN)
    ctx = ChildContext(name="api", path="dev8/api", attempt=0, publish=bus.publish)
    started = await nursery.start(serve_api, ctx, app, f"127.0.0.1:{free_port()}")
    url: str = started["binds"][0]
    return url


async def test_tokens_are_compared_with_hmac_compare_digest(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every check goes through hmac.compare_digest, whatever the length or prefix offered."""
    url = await _api_with_token(nursery)
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    offered = ["x", "wrong-but-the-same-length!", TOKEN[:-1] + "0", TOKEN + "extra", TOKEN]
    statuses = []
    async with httpx.AsyncClient(base_url=url) as client:
        for token in offered:
            response = await client.post(
                "/services/web/restart", headers={"Authorization": f"Bearer {token}"}
            )
            statuses.append(response.status_code)
    assert statuses == [401, 401, 401, 401, 200]
    # One constant-time comparison per request, on bytes, against the real token.
    assert [b for _a, b in calls] == [TOKEN.encode()] * len(offered)
    assert [a for a, _b in calls] == [t.encode() for t in offered]
    nursery.cancel_scope.cancel()
