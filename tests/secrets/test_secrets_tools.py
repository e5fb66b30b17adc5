"""Real git and ssh use what the injector wrote."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest
from support.keyvault_fake import (
    JsonHandler,
    ThreadedServer,
    TlsFiles,
    make_tls,
    server_context,
    serving,
)
from support.net import free_port

from dev8.secrets import Injector, SecretValue

SHA = "0123456789abcdef0123456789abcdef01234567"


def sv(value: str) -> SecretValue:
    return SecretValue("s", value, "v1")


def git_env(home: Path, **extra: str) -> dict[str, str]:
    return {
        "HOME": str(home),
        "PATH": os.environ["PATH"],
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        **extra,
    }


def test_git_credential_fill_returns_the_injected_token(home: Path) -> None:
    Injector(home=home, github_user="alice").inject({"github_token": sv("ghp_fill_me\n")})
    out = subprocess.run(
        ["git", "credential", "fill"], input="protocol=https\nhost=github.com\n\n",
        env=git_env(home), capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    assert out.stdout.splitlines() == [
        "protocol=https", "host=github.com", "username=alice", "password=ghp_fill_me",
    ]  # fmt: skip
    # No credentials for other hosts: the helper is scoped to GitHub.
    other = subprocess.run(
        ["git", "credential", "fill"], input="protocol=https\nhost=example.com\n\n",
        env=git_env(home), capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert other.returncode != 0
    assert "ghp_fill_me" not in other.stdout


class GitServer:
    """A dumb-HTTP git remote over HTTPS that wants Basic auth with one token."""

    def __init__(self, tls: TlsFiles) -> None:
        self.token = ""
        self.seen: list[str | None] = []
        server = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:
                auth = self.headers.get("Authorization")
                server.seen.append(auth)
                expected = "Basic " + base64.b64encode(f"alice:{server.token}".encode()).decode()
                if auth != expected:
                    body = b"auth required\n"
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                else:
                    path = self.path.split("?")[0]
                    if path.endswith("/info/refs"):
                        body = f"{SHA}\trefs/heads/main\n".encode()
                    elif path.endswith("/HEAD"):
                        body = b"ref: refs/heads/main\n"
                    else:
                        body = b"not found\n"
                        self.send_response(404)
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                        return
                    self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadedServer(Handler, server_context(tls))
        self.host = f"127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GitServer, TlsFiles]]:
    tls = make_tls(tmp_path_factory.mktemp("gittls"))
    remote = GitServer(tls)
    with serving(remote.server):
        yield remote, tls


def test_git_authenticates_with_the_token_and_follows_a_rotation(
    home: Path, git_server: tuple[GitServer, TlsFiles]
) -> None:
    remote, tls = git_server
    injector = Injector(home=home, github_user="alice", github_host=remote.host)
    env = git_env(home, GIT_SSL_CAINFO=str(tls.ca_cert))

    def ls_remote() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", "ls-remote", f"https://{remote.host}/repo.git"],
            env=env, capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip

    remote.token = "ghp_first"
    injector.inject({"github_token": sv("ghp_first")})
    first = ls_remote()
    assert first.returncode == 0, first.stderr
    assert f"{SHA}\trefs/heads/main" in first.stdout.splitlines()
    assert remote.seen[0] is None  # git asked anonymously first, then used the helper

    remote.token = "ghp_rotated"  # the old token stops working, as after a rotation
    assert ls_remote().returncode != 0
    injector.inject({"github_token": sv("ghp_rotated")})
    again = ls_remote()
    assert again.returncode == 0, again.stderr
    # git's store helper rewrote the file after the successful login (port colon as %3a):
    # the next injection still recognises the line as ours and keeps a single one.
    stored = (home / ".git-credentials").read_text()
    assert unquote(stored) == f"https://alice:ghp_rotated@{remote.host}\n"
    injector.inject({"github_token": sv("ghp_rotated")})
    assert (home / ".git-credentials").read_text() == f"https://alice:ghp_rotated@{remote.host}\n"
    assert ls_remote().returncode == 0


def test_ssh_logs_in_with_the_injected_key(home: Path, tmp_path: Path) -> None:
    if shutil.which("sshd") is None and not Path("/usr/sbin/sshd").exists():
        pytest.fail("openssh-server is required: apt-get install -y openssh-server")
    keys = tmp_path / "keys"
    keys.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", keys / "user"],
                   check=True, timeout=30)  # fmt: skip
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", keys / "host"],
                   check=True, timeout=30)  # fmt: skip
    # Only the private key is given: the public key and authorized_keys are derived from it.
    Injector(home=home).inject({"ssh_private_key": sv((keys / "user").read_text())})
    Path("/run/sshd").mkdir(exist_ok=True)
    port = free_port()
    config = tmp_path / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys / 'host'}\nPidFile none\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "PermitRootLogin prohibit-password\n"
        # The test home lives under /tmp (world-writable), which StrictModes rejects; the
        # modes themselves are asserted by the injector tests.
        "StrictModes no\n"
        f"AuthorizedKeysFile {home / '.ssh/authorized_keys'}\n"
    )
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", config], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "sshd did not start"
                time.sleep(0.02)
        out = subprocess.run(
            ["ssh", "-F", "/dev/null", "-i", home / ".ssh/id_ed25519", "-p", str(port),
             "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "LogLevel=ERROR", "root@127.0.0.1", "echo logged-in"],
            capture_output=True, text=True, check=False, timeout=30,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert out.stdout == "logged-in\n"
    finally:
        sshd.terminate()
        try:
            sshd.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sshd.kill()
            sshd.wait()
        assert sshd.stderr is not None
        sshd.stderr.close()
