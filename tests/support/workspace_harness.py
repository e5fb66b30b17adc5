"""A real workspace for end-to-end runs of dev8 as root: a user, its secrets, and leak checks.

dev8 runs as root (as in the container) and starts its services as a freshly created workspace
user whose home is the workspace directory. That directory lives under /var/lib, never under
/tmp: sshd's StrictModes refuses keys below a group/world-writable directory.

Secret values are random and known to the test, so any byte sequence of them can be looked for
in everything dev8 says: its stdout/stderr, every API response body, every event.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio
import yaml
from trio_websocket import open_websocket_url

from support.dev8_harness import Dev8Run, EventStream, Json, fail_after, kill_marked, open_dev8

#: The workspace user cannot run the venv's Python (it lives under /root, mode 0700).
#: The platform user id of the workspace the end-to-end tests run: it names the secrets.
USER_ID = "u1"
SYSTEM_PYTHON = "/usr/bin/python3"
#: Where dev8 as root writes the generated sshd config (dev8.services.builtins.runtime_dir).
ROOT_RUNTIME_DIR = Path("/run/dev8")
#: Options of every ssh/scp client call: no user config, no prompts, a private known_hosts.
SSH_BASE_OPTIONS = ("-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes")


# ----------------------------------------------------------------------------- the user


@attrs.frozen
class WorkspaceUser:
    name: str
    uid: int
    gid: int
    #: The workspace directory, which is also the user's home.
    home: Path


def _free_uid(start: int) -> int:
    taken = {entry.pw_uid for entry in pwd.getpwall()}
    return next(uid for uid in range(start, 60000) if uid not in taken)


def pids_of_uid(uid: int) -> list[int]:
    """Live processes whose real uid is `uid`."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        match = re.search(r"^Uid:\s+(\d+)", text, re.MULTILINE)
        state = re.search(r"^State:\s+(\S)", text, re.MULTILINE)
        if match and int(match.group(1)) == uid and state and state.group(1) not in "ZX":
            found.append(int(status.parent.name))
    return found


@contextlib.contextmanager
def workspace_user(prefix: str = "d8e") -> Iterator[WorkspaceUser]:
    """A new user whose home is a new `/var/lib/dev8-test-*` workspace; removed afterwards."""
    name = f"{prefix}{secrets.token_hex(4)}"
    home = Path(f"/var/lib/dev8-test-{secrets.token_hex(6)}")
    for attempt in range(5):  # other engineers create users too: a uid may be taken meanwhile
        result = subprocess.run(
            ["useradd", "-m", "-d", str(home), "-u", str(_free_uid(45000 + attempt * 97)),
             "-s", "/bin/bash", name],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode == 0:
            break
    else:
        raise RuntimeError(f"useradd failed: {result.stderr}")
    entry = pwd.getpwnam(name)
    try:
        yield WorkspaceUser(name, entry.pw_uid, entry.pw_gid, home)
    finally:
        for pid in pids_of_uid(entry.pw_uid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["userdel", "-r", "-f", name], check=False, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


# ----------------------------------------------------------------------------- the secrets


@attrs.frozen
class WorkspaceSecrets:
    """One user's secrets: values random, so that any of their bytes is recognisable."""

    user_id: str
    github_token: str = attrs.field(repr=False)
    copilot_token: str = attrs.field(repr=False)
    ssh_private_key: str = attrs.field(repr=False)
    ssh_public_key: str
    password: str = attrs.field(repr=False)
    env_vars: Mapping[str, str] = attrs.field(repr=False)
    #: The private key's file, for the ssh client (root-owned, 0600).
    key_file: Path

    def named(self) -> dict[str, str]:
        """Secret name -> value, in dev8's default naming."""
        return {
            f"github-token-{self.user_id}": self.github_token,
            f"copilot-token-{self.user_id}": self.copilot_token,
            f"ssh-private-key-{self.user_id}": self.ssh_private_key,
            f"ssh-public-key-{self.user_id}": self.ssh_public_key,
            f"code-server-password-{self.user_id}": self.password,
            f"custom-env-vars-{self.user_id}": json.dumps(dict(self.env_vars)),
        }

    def write_directory(self, directory: Path) -> Path:
        """A `provider: directory` source: one file per secret name."""
        directory.mkdir(mode=0o700, exist_ok=True)
        for name, value in self.named().items():
            (directory / name).write_text(value)
        return directory


def token(kind: str) -> str:
    return f"{kind}_{secrets.token_hex(16)}"


def make_secrets(directory: Path, user_id: str) -> WorkspaceSecrets:
    """Fresh values and an ed25519 key pair (made by ssh-keygen in `directory`)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = directory / f"id_ed25519_{secrets.token_hex(3)}"
    subprocess.run(
        ["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-C", "dev8-e2e", "-f", str(key)],
        check=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return WorkspaceSecrets(
        user_id=user_id,
        github_token=token("ghp"),
        copilot_token=token("ghu"),
        ssh_private_key=key.read_text(),
        ssh_public_key=Path(f"{key}.pub").read_text().strip(),
        password=f"pw {secrets.token_hex(16)}",
        env_vars={"E2E_API_KEY": token("apikey"), "E2E_DB_PASSWORD": token("dbpw")},
        key_file=key,
    )


def private_key_lines(key: str) -> list[str]:
    """The base64 body lines of an OpenSSH private key."""
    return [line for line in key.splitlines() if line and not line.startswith("-----")]


def random_core(value: str) -> bytes:
    """The random part of a test value: found even if only it leaked, or the value was cut."""
    core: str = re.findall(r"[0-9a-f]{16,}", value)[-1]
    return core.encode()


def needles(*sets: WorkspaceSecrets, extra: Iterable[str] = ()) -> dict[str, bytes]:
    """What must never appear: label -> bytes."""
    found: dict[str, bytes] = {}
    for number, s in enumerate(sets):
        values = {
            "github token": s.github_token,
            "copilot token": s.copilot_token,
            "password": s.password,
            **{f"env {key}": value for key, value in s.env_vars.items()},
        }
        for label, value in values.items():
            found[f"{label} #{number}"] = random_core(value)
        for index, line in enumerate(private_key_lines(s.ssh_private_key)):
            found[f"private key line {index} #{number}"] = line.encode()
    for index, value in enumerate(extra):
        found[f"extra value {index}"] = random_core(value)
    return found


# ----------------------------------------------------------------------------- config


def workspace_config(
    path: Path,
    *,
    user: WorkspaceUser,
    api_port: int,
    user_id: str,
    services: Mapping[str, Json],
    secrets_section: Json | None = None,
    connections_interval: float = 0.5,
) -> Path:
    """A complete config for dev8 as root with `user`'s home as the workspace."""
    data: Json = {
        "user_id": user_id,
        "environment_id": "e2e-env",
        "workspace": {"dir": str(user.home), "user": user.name},
        "api": {"bind": f"127.0.0.1:{api_port}"},
        "log": {"level": "info"},
        "shutdown": {"timeout": 10.0, "kill_grace": 1.0},
        "supervisor": {"intensity": {"max_restarts": 1000, "window": 60.0}},
        "connections": {"interval": connections_interval},
        # profile_dir null: a test must not leave a hook in the host's /etc/profile.d.
        "secrets": {"profile_dir": None, **(secrets_section or {})},
        "services": {name: dict(service) for name, service in services.items()},
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def system_python_service(code: str, marker: str, **options: Any) -> Json:
    """A service in the system Python (runnable by the workspace user), `marker` in its argv."""
    env = {"PYTHONUNBUFFERED": "1", **options.pop("env", {})}
    return {"command": [SYSTEM_PYTHON, "-c", code, marker], "env": env, **options}


# ----------------------------------------------------------------------------- running dev8


class ResponseRecorder:
    """Every body the API sent back to this test, kept for the leak check."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, bytes]] = []

    async def __call__(self, response: httpx.Response) -> None:
        await response.aread()
        self.bodies.append((str(response.request.url), response.content))


@contextlib.asynccontextmanager
async def open_workspace(
    config: Path, *, port: int, markers: Iterable[str] = ()
) -> AsyncIterator[tuple[Dev8Run, ResponseRecorder]]:
    """`open_dev8` with every API response recorded; leftovers carrying `markers` are killed."""
    recorder = ResponseRecorder()
    try:
        async with open_dev8(config, port=port) as run:
            run.http.event_hooks = {"request": [], "response": [recorder]}
            yield run, recorder
    finally:
        for marker in markers:
            kill_marked(marker)


async def seen_or_wait(
    stream: EventStream, kind: str, *, timeout: float = 10.0, **data: Any
) -> Json:
    """The first event of `kind` with these data fields, among those received or still to come."""
    for event in stream.seen:
        if event["kind"] == kind and all(event["data"].get(k) == v for k, v in data.items()):
            return event
    child = data.pop("child", None)
    return await stream.wait_for(kind, child=child, timeout=timeout, **data)


async def wait_healthy(run: Dev8Run, *, timeout: float = 60.0) -> Json:
    """Bounded poll of /health until every service is running and ready."""
    with fail_after(timeout, "/health to say healthy", run.tail):
        while True:
            response = await run.http.get("/health")
            if response.status_code == 200:
                body: Json = response.json()
                assert body["healthy"] is True
                return body
            await trio.sleep(0.1)


def events_in(messages: list[str]) -> list[dict[str, Any]]:
    """The events of raw event-stream messages (an array when the subscriber was behind)."""
    events: list[dict[str, Any]] = []
    for message in messages:
        body = json.loads(message)
        events.extend(body if isinstance(body, list) else [body])
    return events


async def all_events(run: Dev8Run, *, timeout: float = 10.0) -> list[str]:
    """Every event dev8 has published so far, as the raw websocket messages (replay from 0)."""
    last = (await run.status())["lastEvent"]
    messages: list[str] = []
    with fail_after(timeout, "the event replay", run.tail):
        auth = run.http.headers.get("Authorization")
        headers = [("Authorization", auth)] if auth else None
        url = f"ws://127.0.0.1:{run.port}/events?since=0"
        async with open_websocket_url(url, extra_headers=headers) as ws:
            while True:
                message = await ws.get_message()
                assert isinstance(message, str)
                messages.append(message)
                body = json.loads(message)
                for parsed in body if isinstance(body, list) else [body]:  # an array when behind
                    assert parsed["kind"] != "resync", "history was lost: the leak check needs it"
                    if parsed["seq"] >= last:
                        return messages


def assert_no_leak(
    secret_bytes: Mapping[str, bytes],
    *,
    run: Dev8Run,
    recorder: ResponseRecorder,
    events: Iterable[str],
    more: Iterable[tuple[str, bytes]] = (),
) -> int:
    """No secret's bytes in dev8's output, API bodies or events; returns how much was searched.

    The failure names the secret and the place, never the value.
    """
    places: list[tuple[str, bytes]] = [
        ("stdout", "\n".join(run.lines).encode()),
        ("stderr", bytes(run.stderr)),
        *((f"API {url}", body) for url, body in recorder.bodies),
        *((f"event {n}", e.encode()) for n, e in enumerate(events)),
        *more,
    ]
    for where, data in places:
        for label, needle in secret_bytes.items():
            assert needle not in data, f"{label} leaked into {where}"
    return sum(len(data) for _, data in places)


# ----------------------------------------------------------------------------- clients


def ssh_options(known_hosts: Path, key: Path | None) -> list[str]:
    options = [
        *SSH_BASE_OPTIONS,
        "-o", "StrictHostKeyChecking=no",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "ConnectTimeout=10",
    ]  # fmt: skip
    if key is not None:
        options += ["-i", str(key)]
    return options


async def run_tool(
    argv: list[str], *, timeout: float = 30.0, stdin: bytes = b"", **options: Any
) -> subprocess.CompletedProcess[bytes]:
    """A client program to completion, output captured, bounded."""
    with fail_after(timeout, " ".join(argv[:3])):
        return await trio.run_process(
            argv, stdin=stdin, capture_stdout=True, capture_stderr=True, check=False, **options
        )


async def ssh_keyscan(port: int) -> set[str]:
    """The host keys served on `port`, as `type base64` strings."""
    result = await run_tool(["ssh-keyscan", "-p", str(port), "-t", "ed25519,rsa", "127.0.0.1"])
    return {
        " ".join(line.split()[1:3])
        for line in result.stdout.decode().splitlines()
        if line and not line.startswith("#")
    }


async def git_credential_fill(user: WorkspaceUser, host: str = "github.com") -> list[str]:
    """`git credential fill` as the workspace user, from the workspace."""
    result = await run_tool(
        ["runuser", "-u", user.name, "--", "env", f"HOME={user.home}", "GIT_CONFIG_NOSYSTEM=1",
         "GIT_TERMINAL_PROMPT=0", "git", "credential", "fill"],
        stdin=f"protocol=https\nhost={host}\n\n".encode(),
        cwd=user.home,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.decode().splitlines()


def file_facts(path: Path) -> tuple[int, int, int]:
    """(mode, uid, gid) of the file itself (never a link's target)."""
    info = path.lstat()
    return info.st_mode & 0o7777, info.st_uid, info.st_gid
