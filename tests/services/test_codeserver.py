"""dev8.services.codeserver with the real code-server, installed by scripts/install-code-server.sh.

The first run installs code-server into /opt/code-server (about 1-3 min cold); later runs reuse
it. code-server runs as a freshly created non-root user, as dev8 will run it.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import httpx
import pytest
import trio
from support.net import free_port
from support.workspace_harness import WorkspaceUser, pids_of_uid

from dev8.services.codeserver import (
    CODESERVER_SECRET_ENV,
    CodeServerSettings,
    codeserver_command,
    codeserver_env,
    prepare_codeserver_dirs,
)

REPO = Path(__file__).resolve().parents[2]
PREFIX = Path(os.environ.get("DEV8_CODE_SERVER_PREFIX", "/opt/code-server"))
PASSWORD = "correct horse " + secrets.token_hex(8)


# ---- the builders --------------------------------------------------------------------------


def test_command_has_the_options_and_never_the_password() -> None:
    settings = CodeServerSettings(auth="password", bind_addr="127.0.0.1:9999")
    argv = codeserver_command(settings)
    assert argv == [
        "/opt/code-server/bin/code-server",
        "--config",
        "/dev/null",
        "--bind-addr",
        "127.0.0.1:9999",
        "--auth",
        "password",
        "--disable-telemetry",
        "--disable-update-check",
        "--user-data-dir",
        "/workspace/.dev8/code-server/data",
        "--extensions-dir",
        "/workspace/.dev8/code-server/extensions",
        "/workspace",
    ]
    env = codeserver_env(settings, PASSWORD)
    assert env == {"PASSWORD": PASSWORD}
    assert not any(PASSWORD in arg for arg in argv)
    assert PASSWORD not in repr(settings)


def test_env_refuses_mismatched_auth() -> None:
    with pytest.raises(ValueError, match="no password"):
        codeserver_env(CodeServerSettings(auth="password"), None)
    with pytest.raises(ValueError, match="no password"):
        codeserver_env(CodeServerSettings(auth="password"), "")
    with pytest.raises(ValueError, match="auth is 'none'") as info:
        codeserver_env(CodeServerSettings(auth="none"), PASSWORD)
    assert PASSWORD not in str(info.value)
    assert codeserver_env(CodeServerSettings(auth="none"), None) == {}


@pytest.mark.parametrize("bind", ["8080", ":8080", "localhost:http", "0.0.0.0:70000"])
def test_bad_bind_addr_is_refused(bind: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        CodeServerSettings(bind_addr=bind)


def test_local_url_reaches_a_wildcard_bind_on_loopback() -> None:
    assert CodeServerSettings().local_url == "http://127.0.0.1:8080"
    assert CodeServerSettings(bind_addr="127.0.0.2:81").local_url == "http://127.0.0.2:81"
    with pytest.raises(ValueError):  # noqa: PT011 -- attrs' own message
        CodeServerSettings(auth="basic")  # type: ignore[arg-type]


# ---- the real code-server ------------------------------------------------------------------


@pytest.fixture(scope="module")
def binary() -> Path:
    subprocess.run(
        ["bash", str(REPO / "scripts/install-code-server.sh"), str(PREFIX)],
        check=True,
        timeout=1200,
    )
    return PREFIX / "bin/code-server"


@attrs.frozen
class Running:
    process: trio.Process
    settings: CodeServerSettings
    log: Path


@asynccontextmanager
async def run_codeserver(
    binary: Path, user: WorkspaceUser, auth: str, password: str | None
) -> AsyncIterator[Running]:
    workspace = user.home / "workspace"
    workspace.mkdir(exist_ok=True)
    os.chown(workspace, user.uid, user.gid)
    state = workspace / ".dev8" / "code-server"
    settings = CodeServerSettings(
        bind_addr=f"127.0.0.1:{free_port()}",
        auth=auth,  # type: ignore[arg-type]
        workspace_dir=workspace,
        user_data_dir=state / "data",
        extensions_dir=state / "extensions",
        binary=binary,
    )
    prepare_codeserver_dirs(settings, user.uid, user.gid)
    base = {
        "HOME": str(user.home),
        "USER": user.name,
        "LOGNAME": user.name,
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
    }
    assert not set(base) & set(CODESERVER_SECRET_ENV)
    log = user.home / f"code-server-{auth}.log"
    with log.open("wb") as log_file:
        process = await trio.lowlevel.open_process(
            codeserver_command(settings),
            env=base | codeserver_env(settings, password),
            cwd=workspace,
            user=user.uid,
            group=user.gid,
            extra_groups=[],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
        )
    try:
        yield Running(process, settings, log)
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
                await process.wait()
            for pid in pids_of_uid(user.uid):  # only the test user's: all started by this test
                os.kill(pid, signal.SIGKILL)


async def _wait_healthz(client: httpx.AsyncClient, url: str) -> float:
    start = trio.current_time()
    with trio.fail_after(60):
        while True:
            try:
                response = await client.get(f"{url}/healthz")
            except httpx.TransportError:
                await trio.sleep(0.05)  # a real process: bounded poll
                continue
            assert response.status_code == 200
            assert response.json()["status"] in ("expired", "alive")
            return trio.current_time() - start


async def _stop(running: Running, user: WorkspaceUser) -> float:
    start = trio.current_time()
    running.process.send_signal(signal.SIGTERM)
    with trio.fail_after(5):
        await running.process.wait()
    elapsed = trio.current_time() - start
    assert running.process.returncode == 0
    with trio.fail_after(5):
        while True:  # code-server's own child must go with it
            if not pids_of_uid(user.uid):
                break
            await trio.sleep(0.05)
    return elapsed


async def test_editor_serves_and_stops_promptly(binary: Path, workspace: WorkspaceUser) -> None:
    async with (
        run_codeserver(binary, workspace, "none", None) as running,
        httpx.AsyncClient(timeout=10) as client,
    ):
        url = running.settings.local_url
        ready_after = await _wait_healthz(client, url)
        status = await trio.Path(f"/proc/{running.process.pid}/status").read_text()
        assert re.search(rf"^Uid:\s+{workspace.uid}\s", status, re.MULTILINE)  # not root

        page = await client.get(f"{url}/", follow_redirects=True)
        assert page.status_code == 200
        assert "vscode-workbench-web-configuration" in page.text
        script = re.search(r'src="([^"]*workbench/workbench\.js)"', page.text)
        assert script is not None
        asset = await client.get(str(page.url.join(script.group(1))))
        assert asset.status_code == 200
        assert len(asset.content) > 1_000_000  # the real workbench bundle, not an error page

        data_dir = running.settings.user_data_dir
        assert (data_dir / "code-server-ipc.sock").exists()  # state goes to the workspace
        assert not (workspace.home / ".config/code-server/config.yaml").exists()

        stopped_after = await _stop(running, workspace)
    print(f"code-server ready after {ready_after:.2f} s, stopped after {stopped_after:.3f} s")


async def test_password_auth_takes_the_password_from_the_environment(
    binary: Path, workspace: WorkspaceUser
) -> None:
    async with (
        run_codeserver(binary, workspace, "password", PASSWORD) as running,
        httpx.AsyncClient(timeout=10) as client,
    ):
        url = running.settings.local_url
        await _wait_healthz(client, url)
        cmdline = await trio.Path(f"/proc/{running.process.pid}/cmdline").read_bytes()
        assert PASSWORD.encode() not in cmdline
        assert b"--auth\0password" in cmdline

        anonymous = await client.get(f"{url}/")
        assert anonymous.status_code == 302
        assert "login" in anonymous.headers["location"]

        wrong = await client.post(f"{url}/login", data={"password": "not it"})
        assert wrong.status_code != 302
        assert not wrong.cookies

        right = await client.post(f"{url}/login", data={"password": PASSWORD})
        assert right.status_code == 302
        assert right.cookies
        page = await client.get(f"{url}/", follow_redirects=True)  # the session cookie
        assert page.status_code == 200
        assert "vscode-workbench-web-configuration" in page.text

        await _stop(running, workspace)
    assert PASSWORD not in running.log.read_text()
