"""End to end: the built-in sshd and code-server, and the probes and connection tracker, THROUGH
the real `dev8 run` as root, with a real workspace user and secrets from a directory provider.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from support.dev8_harness import NO_BACKOFF, Dev8Run, Json, fail_after, pid_alive
from support.net import free_port
from support.workspace_harness import (
    ROOT_RUNTIME_DIR,
    USER_ID,
    WorkspaceSecrets,
    WorkspaceUser,
    all_events,
    assert_no_leak,
    git_credential_fill,
    needles,
    open_workspace,
    pids_of_uid,
    run_tool,
    seen_or_wait,
    ssh_keyscan,
    ssh_options,
    system_python_service,
    wait_healthy,
    workspace_config,
)

#: The sshd service's name also names its generated config (/run/dev8/NAME_config), which is
#: shared by every dev8 on this host: a name of its own keeps parallel runs apart.
SSH = f"ssh-{secrets.token_hex(3)}"
CODE = "code-server"


@pytest.fixture
def secret_dir(material: WorkspaceSecrets, tmp_path: Path) -> Path:
    return material.write_directory(tmp_path / "secrets")


@pytest.fixture(autouse=True)
def _no_leftover_sshd_config() -> Iterator[None]:
    yield
    (ROOT_RUNTIME_DIR / f"{SSH}_config").unlink(missing_ok=True)


def sshd_service(port: int) -> Json:
    return {
        "builtin": "sshd",
        "sshd": {"port": port, "listen": "127.0.0.1"},
        "backoff": dict(NO_BACKOFF),
    }


def code_server_service(port: int, auth: str) -> Json:
    return {
        "builtin": "code-server",
        "code_server": {"bind": f"127.0.0.1:{port}", "auth": auth},
        "backoff": {**NO_BACKOFF, "min_delay": 0.2, "max_delay": 1.0},
    }


def config_for(
    tmp_path: Path, user: WorkspaceUser, api_port: int, secret_dir: Path, services: dict[str, Json]
) -> Path:
    return workspace_config(
        tmp_path / "dev8.yaml",
        user=user,
        api_port=api_port,
        user_id=USER_ID,
        services=services,
        secrets_section={"provider": "directory", "directory": str(secret_dir)},
    )


async def ssh(
    port: int, login: str, key: Path | None, known: Path, *args: str
) -> tuple[int, str, str]:
    result = await run_tool(
        ["ssh", "-p", str(port), *ssh_options(known, key), f"{login}@127.0.0.1", *args]
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def service_log_contains(run: Dev8Run, service: str, text: str, timeout: float) -> None:
    """Bounded poll of the service's captured output (a real sshd writes when it wants)."""
    with fail_after(timeout, f"{service} to print {text!r}", run.tail):
        while True:
            response = await run.http.get(f"/services/{service}/logs?lines=1000")
            if any(text in entry["line"] for entry in response.json()["lines"]):
                return
            await trio.sleep(0.1)


async def vscode_sessions(run: Dev8Run) -> float:
    """``dev8_vscode_sessions`` of a /metrics scrape, read by prometheus-client's parser."""
    text = (await run.http.get("/metrics")).text
    [family] = [f for f in text_string_to_metric_families(text) if f.name == "dev8_vscode_sessions"]
    return float(family.samples[0].value)


async def wait_ready_again(run: Dev8Run, name: str, old_pid: int, timeout: float) -> Json:
    """/status until the service runs, is ready and has a new pid."""
    with fail_after(timeout, f"{name} to be running and ready again", run.tail):
        while True:
            node: Json = (await run.status())["services"][name]
            if node["state"] == "running" and node["ready"] and node["pid"] not in (None, old_pid):
                return node
            await trio.sleep(0.1)


# ---- sshd ------------------------------------------------------------------------------------


async def test_sshd_lets_the_injected_key_in_only_and_keeps_its_identity_across_a_crash(
    workspace: WorkspaceUser,
    material: WorkspaceSecrets,
    secret_dir: Path,
    tmp_path: Path,
    api_port: int,
) -> None:
    port = free_port()
    known = tmp_path / "known_hosts"
    config = config_for(tmp_path, workspace, api_port, secret_dir, {SSH: sshd_service(port)})
    runtime_config = ROOT_RUNTIME_DIR / f"{SSH}_config"
    async with open_workspace(config, port=api_port, markers=[str(runtime_config)]) as (
        run,
        recorder,
    ):
        await wait_healthy(run)
        node = (await run.status())["services"][SSH]
        pid = node["pid"]
        # sshd retitles itself: "sshd: /usr/sbin/sshd -D -e -f CONFIG [listener] ...".
        title = await trio.Path(f"/proc/{pid}/cmdline").read_bytes()
        assert f"/usr/sbin/sshd -D -e -f {runtime_config} [listener]".encode() in title
        assert "PasswordAuthentication no\n" in runtime_config.read_text()
        assert node["probes"]["readiness"]["type"] == "ssh-banner"
        # The key came from the secret, through the injected authorized_keys.
        authorized = (workspace.home / ".ssh/authorized_keys").read_text()
        key_type, key_body, _comment = material.ssh_public_key.split()
        assert f"{key_type} {key_body} dev8-managed\n" in authorized

        code, out, err = await ssh(
            port, workspace.name, material.key_file, known, "echo ok; id -un"
        )
        assert code == 0, err
        assert out.split() == ["ok", workspace.name]

        code, _, err = await ssh(
            port, workspace.name, None, known,
            "-o", "PreferredAuthentications=password,keyboard-interactive",
            "-o", "PubkeyAuthentication=no", "true",
        )  # fmt: skip
        assert code == 255
        assert "Permission denied (publickey)." in err

        code, out, err = await ssh(port, "root", material.key_file, known, "echo pwned")
        assert code == 255
        assert "pwned" not in out
        await service_log_contains(
            run, SSH, "User root from 127.0.0.1 not allowed because not listed in AllowUsers", 10
        )

        payload = secrets.token_bytes(100_000)
        (tmp_path / "up.bin").write_bytes(payload)
        scp = ["scp", "-q", "-P", str(port), *ssh_options(known, material.key_file)]
        up = await run_tool([*scp, str(tmp_path / "up.bin"), f"{workspace.name}@127.0.0.1:up.bin"])
        assert up.returncode == 0, up.stderr
        assert (workspace.home / "up.bin").read_bytes() == payload
        assert (workspace.home / "up.bin").stat().st_uid == workspace.uid
        down = await run_tool(
            [*scp, f"{workspace.name}@127.0.0.1:up.bin", str(tmp_path / "down.bin")]
        )
        assert down.returncode == 0, down.stderr
        assert (tmp_path / "down.bin").read_bytes() == payload

        identity = await ssh_keyscan(port)
        key_dir = workspace.home / ".dev8/ssh"
        served = {
            " ".join(
                (await trio.Path(f"{key_dir}/ssh_host_{kind}_key.pub").read_text()).split()[:2]
            )
            for kind in ("ed25519", "rsa")
        }
        assert identity == served  # the persisted host keys in the workspace

        async with run.events(f"service={SSH}") as events:
            os.kill(pid, signal.SIGKILL)
            exited = await events.wait_for("child_exited", child=SSH, timeout=10)
            scheduled = await events.wait_for("restart_scheduled", child=SSH, timeout=10)
            await events.wait_for("child_started", child=SSH, timeout=30)
        assert exited["data"]["details"]["signal"] == "SIGKILL"
        assert scheduled["data"]["reason"] == "crash"
        node = await wait_ready_again(run, SSH, pid, timeout=30)
        assert node["restarts"] == 1
        assert node["restartReasons"] == {"crash": 1}
        assert not pid_alive(pid)

        assert await ssh_keyscan(port) == identity
        code, out, err = await ssh(port, workspace.name, material.key_file, known, "echo again")
        assert code == 0, err
        assert out == "again\n"

        # What git asks for on a push: the token injected from the secret.
        assert await git_credential_fill(workspace) == [
            "protocol=https", "host=github.com", "username=x-access-token",
            f"password={material.github_token}",
        ]  # fmt: skip
        await run.http.get(f"/services/{SSH}/logs?lines=1000")
        events_seen = await all_events(run)
    assert_no_leak(needles(material), run=run, recorder=recorder, events=events_seen)
    assert not pids_of_uid(workspace.uid)


# ---- code-server -----------------------------------------------------------------------------


async def test_code_server_serves_the_editor_behind_the_secret_password_and_recovers_from_kill(
    workspace: WorkspaceUser,
    material: WorkspaceSecrets,
    secret_dir: Path,
    tmp_path: Path,
    api_port: int,
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = config_for(
        tmp_path, workspace, api_port, secret_dir, {CODE: code_server_service(port, "password")}
    )
    async with (
        open_workspace(config, port=api_port, markers=[str(workspace.home)]) as (run, recorder),
        httpx.AsyncClient(timeout=10) as browser,
    ):
        await wait_healthy(run, timeout=90)
        node = (await run.status())["services"][CODE]
        pid = node["pid"]
        assert node["probes"]["readiness"]["type"] == "http"
        status = await trio.Path(f"/proc/{pid}/status").read_text()
        assert re.search(rf"^Uid:\s+{workspace.uid}\s", status, re.MULTILINE)  # not root
        cmdline = await trio.Path(f"/proc/{pid}/cmdline").read_bytes()
        assert material.password.encode() not in cmdline
        assert b"--auth\0password" in cmdline

        healthz = await browser.get(f"{url}/healthz")
        assert healthz.status_code == 200
        anonymous = await browser.get(f"{url}/")
        assert anonymous.status_code == 302
        assert "login" in anonymous.headers["location"]
        wrong = await browser.post(f"{url}/login", data={"password": "not it"})
        assert wrong.status_code != 302
        right = await browser.post(f"{url}/login", data={"password": material.password})
        assert right.status_code == 302
        page = await browser.get(f"{url}/", follow_redirects=True)
        assert page.status_code == 200
        assert "vscode-workbench-web-configuration" in page.text

        async with run.events(f"service={CODE}") as events:
            os.kill(pid, signal.SIGKILL)
            exited = await events.wait_for("child_exited", child=CODE, timeout=10)
            scheduled = await events.wait_for("restart_scheduled", child=CODE, timeout=10)
        assert exited["data"]["details"]["signal"] == "SIGKILL"
        assert scheduled["data"]["reason"] in ("crash", "probe")
        node = await wait_ready_again(run, CODE, pid, timeout=90)
        assert node["restarts"] >= 1
        assert set(node["restartReasons"]) <= {"crash", "probe"}  # a crash, or its port still held
        assert not pid_alive(pid)
        await wait_healthy(run)
        assert (await browser.get(f"{url}/healthz")).status_code == 200
        page = await browser.get(f"{url}/", follow_redirects=True)  # the session cookie still works
        assert page.status_code == 200
        assert "vscode-workbench-web-configuration" in page.text

        await run.http.get(f"/services/{CODE}/logs?lines=1000")
        events_seen = await all_events(run)
    assert_no_leak(needles(material), run=run, recorder=recorder, events=events_seen)
    assert not pids_of_uid(workspace.uid)


# ---- connections -----------------------------------------------------------------------------


async def test_connections_count_ssh_sessions_and_editor_connections_until_they_close(
    workspace: WorkspaceUser,
    material: WorkspaceSecrets,
    secret_dir: Path,
    tmp_path: Path,
    api_port: int,
) -> None:
    ssh_port, code_port = free_port(), free_port()
    known = tmp_path / "known_hosts"
    config = config_for(
        tmp_path,
        workspace,
        api_port,
        secret_dir,
        {SSH: sshd_service(ssh_port), CODE: code_server_service(code_port, "none")},
    )
    runtime_config = ROOT_RUNTIME_DIR / f"{SSH}_config"
    markers = [str(runtime_config), str(workspace.home)]
    async with open_workspace(config, port=api_port, markers=markers) as (run, recorder):
        await wait_healthy(run, timeout=90)
        before = (await run.http.get("/connections")).json()
        assert before["services"][SSH]["count"] == 0  # dev8's own probes do not count
        assert before["services"][CODE]["count"] == 0
        assert before["services"][SSH]["ports"] == [ssh_port]
        assert before["services"][CODE]["ports"] == [code_port]

        async with run.events("kind=connection_opened,connection_closed") as events:
            session = await trio.lowlevel.open_process(
                ["ssh", "-p", str(ssh_port), *ssh_options(known, material.key_file),
                 f"{workspace.name}@127.0.0.1", "sleep 30"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                # One keep-alive connection, as a browser tab holds it; code-server drops idle
                # ones after 5 s, so it is kept busy until the test closes it.
                browser = httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{code_port}",
                    timeout=10,
                    limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                )
                async with browser, trio.open_nursery() as nursery:
                    page = await browser.get("/", follow_redirects=True)  # auth none
                    assert page.status_code == 200
                    assert "vscode-workbench-web-configuration" in page.text
                    stream = page.extensions["network_stream"]
                    editor_peer = f"127.0.0.1:{stream.get_extra_info('client_addr')[1]}"

                    async def keep_busy() -> None:
                        while True:
                            await trio.sleep(1.0)
                            ping = await browser.get("/healthz")
                            assert ping.status_code == 200
                            client = ping.extensions["network_stream"].get_extra_info("client_addr")
                            assert f"127.0.0.1:{client[1]}" == editor_peer  # the same one

                    nursery.start_soon(keep_busy)
                    opened_ssh = await seen_or_wait(
                        events, "connection_opened", service=SSH, timeout=30
                    )
                    opened_code = await seen_or_wait(
                        events, "connection_opened", service=CODE, peer=editor_peer, timeout=10
                    )
                    assert opened_ssh["data"]["port"] == ssh_port
                    assert opened_ssh["data"]["peer"].startswith("127.0.0.1:")
                    assert opened_code["data"]["port"] == code_port
                    board = (await run.http.get("/connections")).json()
                    assert board["services"][SSH]["count"] == 1
                    assert board["services"][SSH]["peers"] == [opened_ssh["data"]["peer"]]
                    assert board["services"][CODE]["count"] == 1
                    assert board["services"][CODE]["peers"] == [editor_peer]
                    for name in (SSH, CODE):
                        assert board["services"][name]["lastActivity"] is not None
                    assert board["lastActivity"] is not None
                    assert await vscode_sessions(run) == 1  # the editor's, not sshd's
                    nursery.cancel_scope.cancel()
                closed_code = await seen_or_wait(
                    events, "connection_closed", service=CODE, peer=editor_peer, timeout=10
                )
                assert closed_code["data"]["duration"] > 0
                closed = [e["data"]["service"] for e in events.of("connection_closed")]
                assert closed == [CODE]  # the SSH session is still open
            finally:
                session.terminate()
                with trio.move_on_after(10):
                    await session.wait()
                if session.returncode is None:
                    session.kill()
                    await session.wait()
            await seen_or_wait(
                events, "connection_closed", service=SSH, peer=opened_ssh["data"]["peer"],
                timeout=10,
            )  # fmt: skip
        after = (await run.http.get("/connections")).json()
        assert await vscode_sessions(run) == 0
        for name in (SSH, CODE):
            assert (after["services"][name]["count"], after["services"][name]["peers"]) == (0, [])
            # Still known: the platform stops idle workspaces from it.
            assert (
                after["services"][name]["lastActivity"] >= board["services"][name]["lastActivity"]
            )
        events_seen = await all_events(run)
    assert_no_leak(needles(material), run=run, recorder=recorder, events=events_seen)


# ---- a hung service --------------------------------------------------------------------------

#: Answers its first two requests, then keeps accepting and never answers again: alive, hung.
HANGS_AFTER_TWO = """\
import socket, sys
port = int(sys.argv[2])
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(64)
print("listening", flush=True)
held = []
answered = 0
while True:
    conn, _ = listener.accept()
    if answered < 2:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok")
        conn.close()
        answered += 1
    else:
        held.append(conn)
"""


async def test_a_hung_service_is_restarted_by_its_liveness_probe(
    *,
    workspace: WorkspaceUser,
    material: WorkspaceSecrets,
    secret_dir: Path,
    tmp_path: Path,
    api_port: int,
    marker: str,
) -> None:
    port = free_port()
    service = system_python_service(
        HANGS_AFTER_TWO,
        marker,
        backoff=dict(NO_BACKOFF),
        probes={
            "liveness": {
                "type": "http", "url": f"http://127.0.0.1:{port}/", "interval": 0.3,
                "timeout": 0.3, "failure_threshold": 2,
            }
        },
    )  # fmt: skip
    service["command"].append(str(port))
    config = config_for(tmp_path, workspace, api_port, secret_dir, {"hung": service})
    async with open_workspace(config, port=api_port, markers=[marker]) as (run, recorder):
        first = await run.wait_service(
            "hung", lambda n: n["state"] == "running", timeout=20, what="running"
        )
        old_pid = first["info"]["pid"]
        async with run.events("since=0&service=hung") as events:
            failed = await events.wait_for("liveness_failed", timeout=20)
            scheduled = await events.wait_for("restart_scheduled", child="hung", timeout=10)
            exited = await seen_or_wait(events, "child_exited", child="hung")
            started = await events.wait_for("child_started", child="hung", timeout=10)
        # Two failures in a row (a slow first start may add an earlier one, then a recovery).
        last_two = events.of("probe_failed")[-2:]
        assert [e["data"]["failures"] for e in last_two] == [1, 2]
        for event in last_two:
            assert event["data"]["probe"] == "liveness"
            assert event["data"]["detail"] == "timed out after 0.3 s"
        assert failed["data"]["failures"] == 2
        assert scheduled["data"]["reason"] == "probe"
        assert (exited["data"]["reason"], exited["data"]["shutdown"]) == ("shutdown", "probe")
        assert started["data"]["info"]["pid"] != old_pid
        assert not pid_alive(old_pid)  # a hung process is stopped, not left behind
        node = (await run.status())["services"]["hung"]
        assert node["restartReasons"].get("probe", 0) >= 1
        assert set(node["restartReasons"]) == {"probe"}
        assert node["probes"]["liveness"]["failureThreshold"] == 2
        events_seen = await all_events(run)
    assert_no_leak(needles(material), run=run, recorder=recorder, events=events_seen)
