"""The workspace user against root, and bad input against PID 1 (issue #12, items 1-5 and 8).

dev8 is root; the user owns their home and sets the custom environment secret. Each test plays
one attack or one bad day with real users, real files, real FIFOs and links, real processes,
the real `dev8 run` as root, and the real Azure SDK against the HTTPS Key Vault stand-in
(tests/support/keyvault_fake.py). Random inputs are seeded; the seed is printed
(``DEV8_TEST_SEED=... pytest`` replays it).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import pwd
import random
import secrets
import shutil
import stat
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from support.dev8_harness import NO_BACKOFF, Dev8Run, Json, fail_after
from support.keyvault_fake import FakeKeyVault
from support.net import free_port
from support.procfs import comm_of, environ_of
from support.workspace_harness import (
    ROOT_RUNTIME_DIR,
    USER_ID,
    WorkspaceSecrets,
    WorkspaceUser,
    all_events,
    events_in,
    open_workspace,
    system_python_service,
    wait_healthy,
    workspace_config,
)

from actors import ChildContext, Event
from dev8.pid1.reaper import OwnPids
from dev8.secrets import (
    DirectoryProvider,
    Injector,
    Owner,
    Rotator,
    SecretsInjected,
    SecretValue,
)
from dev8.secrets.keyvault import KeyVaultProvider
from dev8.services.process import ProcessSettings, run_process

SEED = int(os.environ.get("DEV8_TEST_SEED", random.randrange(2**32)))
#: Built into the LD_PRELOAD library: it leaves a file named after the ids it ran with.
EVIL_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void pwn(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/ran-as-uid-%d", MARKS, (int)geteuid());
    int fd = open(path, O_WRONLY | O_CREAT, 0644);
    if (fd >= 0) close(fd);
}
"""


# ----------------------------------------------------------------------------- helpers


@pytest.fixture
def home(tmp_path: Path, user: pwd.struct_passwd) -> Path:
    """The user's home: theirs, as every file they put in it."""
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    os.chown(home, user.pw_uid, user.pw_gid)
    return home


def owner_of(user: pwd.struct_passwd) -> Owner:
    return Owner(user.pw_uid, user.pw_gid)


def put(home: Path, relative: str, data: bytes, user: pwd.struct_passwd) -> Path:
    """A file the user wrote (directories and file owned by them)."""
    path = home / relative
    for parent in reversed(path.relative_to(home).parents[:-1]):
        directory = home / parent
        directory.mkdir(mode=0o700, exist_ok=True)
        os.chown(directory, user.pw_uid, user.pw_gid)
    path.write_bytes(data)
    os.chown(path, user.pw_uid, user.pw_gid)
    return path


def facts(path: Path) -> tuple[bytes, int, int, int]:
    """Content, inode, owner and mode: what "left alone" means."""
    info = path.lstat()
    return path.read_bytes(), info.st_ino, info.st_uid, stat.S_IMODE(info.st_mode)


def sourced(env_file: Path) -> dict[str, str]:
    """What a POSIX shell that sources the env file exports, as a login shell does."""
    out = subprocess.run(
        ["env", "-i", "sh", "-c", '. "$1" && exec env -0', "sh", str(env_file)],
        capture_output=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    pairs = [item.decode().partition("=") for item in out.split(b"\0") if item]
    return {name: value for name, _, value in pairs if name not in {"PWD", "SHLVL", "_"}}


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@asynccontextmanager
async def running(settings: ProcessSettings) -> AsyncIterator[int]:
    """The process actor once; yields the pid once the command itself runs; stops it."""
    own = OwnPids()
    ctx = ChildContext(name="svc", path="test/svc", attempt=0, publish=lambda event: None)
    async with trio.open_nursery() as nursery:
        started = await nursery.start(lambda task_status: run_process(
            ctx, settings, own=own, task_status=task_status
        ))  # fmt: skip
        pid: int = started["pid"]
        name = Path(settings.command[0]).name[:15]
        with trio.fail_after(10):  # a bounded wait for a real exec (setpriv's, then the command's)
            while comm_of(pid) != name:  # noqa: ASYNC110 - another process's exec
                await trio.sleep(0.005)
        yield pid
        nursery.cancel_scope.cancel()


@pytest.fixture
async def provider(vault: FakeKeyVault) -> AsyncIterator[KeyVaultProvider]:
    p = KeyVaultProvider(
        vault.url, fetch_timeout=10, sdk_retries=0, verify_challenge_resource=False
    )
    yield p
    await p.aclose()


@asynccontextmanager
async def rotating(rotator: Rotator) -> AsyncIterator[Any]:
    """The rotator running; yields its first pass's result."""
    async with trio.open_nursery() as nursery:
        with trio.fail_after(60):
            first = await nursery.start(rotator.run)
        yield first
        nursery.cancel_scope.cancel()


# ----------------------------------------------------------------------------- 1 and 2, e2e


@pytest.fixture(scope="module")
def evil_library() -> Iterator[tuple[Path, Path]]:
    """An LD_PRELOAD library that leaves ``MARKS/ran-as-uid-N`` wherever it is loaded."""
    directory = Path(tempfile.mkdtemp(prefix="dev8-test-evil-", dir="/var/tmp"))
    try:
        directory.chmod(0o755)
        marks = directory / "marks"
        marks.mkdir()
        marks.chmod(0o1777)
        source = directory / "evil.c"
        source.write_text(EVIL_C)
        library = directory / "evil.so"
        subprocess.run(
            ["gcc", "-shared", "-fPIC", f'-DMARKS="{marks}"', "-o", str(library), str(source)],
            check=True, timeout=120,
        )  # fmt: skip
        yield library, marks
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def restarted(run: Dev8Run, name: str, timeout: float = 30.0) -> int:
    """Restart a service through the API; its new pid once it runs and is ready."""
    old = (await run.status())["services"][name]["pid"]
    response = await run.http.post(f"/services/{name}/restart", timeout=timeout)
    assert response.status_code in (200, 202), response.text
    with fail_after(timeout, f"{name} to run again", run.tail):
        while True:
            node: Json = (await run.status())["services"][name]
            if node["state"] == "running" and node["ready"] and node["pid"] not in (None, old):
                pid: int = node["pid"]
                return pid
            await trio.sleep(0.1)


async def test_the_users_environment_never_reaches_root_nor_is_read_back_from_their_file(
    *,
    workspace: WorkspaceUser,
    material: WorkspaceSecrets,
    evil_library: tuple[Path, Path],
    tmp_path: Path,
    api_port: int,
    marker: str,
) -> None:
    library, marks = evil_library
    secret_dir = material.write_directory(tmp_path / "secrets")
    custom = {
        "LD_PRELOAD": str(library), "BASH_ENV": str(library), "GCONV_PATH": str(marks),
        "HOME": "/root", "E2E_OK": "fine", "E2E_HASH": "a#b",
    }  # fmt: skip
    (secret_dir / f"custom-env-vars-{USER_ID}").write_text(json.dumps(custom))
    ssh_name = f"ssh-{secrets.token_hex(3)}"
    idle = "import time; time.sleep(1000)"
    config = workspace_config(
        tmp_path / "dev8.yaml",
        user=workspace,
        api_port=api_port,
        user_id=USER_ID,
        services={
            "app": system_python_service(idle, marker, backoff=dict(NO_BACKOFF)),
            "rootsvc": system_python_service(idle, marker, user="root", backoff=dict(NO_BACKOFF)),
            ssh_name: {
                "builtin": "sshd",
                "sshd": {"port": free_port(), "listen": "127.0.0.1"},
                "backoff": dict(NO_BACKOFF),
            },
        },
        secrets_section={"provider": "directory", "directory": str(secret_dir)},
    )
    env_file = workspace.home / ".config/dev8/secrets.env"
    try:
        async with open_workspace(config, port=api_port, markers=[marker]) as (run, _recorder):
            await wait_healthy(run)
            services = (await run.status())["services"]
            app = environ_of(services["app"]["pid"])
            assert {k: app.get(k) for k in custom} == {
                "LD_PRELOAD": None, "BASH_ENV": None, "GCONV_PATH": None,
                "HOME": str(workspace.home), "E2E_OK": "fine", "E2E_HASH": "a#b",
            }  # fmt: skip
            root_env = environ_of(services["rootsvc"]["pid"])
            assert set(custom) & set(root_env) == {"HOME"}
            assert root_env["HOME"] == "/root"
            # sshd (root) retitles itself over its environment: the library is the witness.
            assert sorted(os.listdir(marks)) == []  # it never ran, as anyone
            refused = [
                event["data"]
                for event in events_in(await all_events(run))
                if event["kind"] == "secret_input_refused"
            ]
            assert {(e["item"], e["reason"]) for e in refused} == {
                ("LD_PRELOAD", "dangerous_name"), ("BASH_ENV", "dangerous_name"),
                ("GCONV_PATH", "dangerous_name"), ("HOME", "reserved_name"),
            }  # fmt: skip
            assert str(library) not in json.dumps(refused)  # names, never values

            # The user edits the file the env came from, then has every service restarted.
            with env_file.open("a") as handle:
                handle.write(f"export LD_PRELOAD={library}\nexport E2E_EDITED=1\n")
            for name in ("app", "rootsvc", ssh_name):
                pid = await restarted(run, name)
                if name != ssh_name:
                    env = environ_of(pid)
                    assert "LD_PRELOAD" not in env, name
                    assert "E2E_EDITED" not in env, name
            assert sorted(os.listdir(marks)) == []

            # A FIFO in its place: nothing opens it, so nothing waits on it.
            env_file.unlink()
            os.mkfifo(env_file, 0o600)
            os.chown(env_file, workspace.uid, workspace.gid)
            pid = await restarted(run, "app", timeout=20)
            assert environ_of(pid)["E2E_OK"] == "fine"
            assert (await run.http.get("/health", timeout=5)).status_code == 200

            # A link to a file only root may read: its lines never reach the user's services.
            hidden = Path(tempfile.mkdtemp(prefix="dev8-test-root-only-"))
            try:
                (hidden / "secret").write_text("E2E_STOLEN=root-only-data\n")
                env_file.unlink()
                env_file.symlink_to(hidden / "secret")
                pid = await restarted(run, "app")
                assert "E2E_STOLEN" not in environ_of(pid)
            finally:
                shutil.rmtree(hidden)
    finally:
        (ROOT_RUNTIME_DIR / f"{ssh_name}_config").unlink(missing_ok=True)


# ----------------------------------------------------------------------------- 3


#: What the SDK also reads but is no credential: Windows' own paths, the browser to open.
NOT_CREDENTIALS = frozenset({"SYSTEMROOT", "PROGRAMDATA", "LOCALAPPDATA", "BROWSER"})


def environment_reads(source: Path) -> set[str]:
    """Names a module reads from the environment (``os.environ[...]``, ``.get``, ``getenv``,
    ``in os.environ``, or an ``environ`` mapping passed in), literal or module constant."""
    tree = ast.parse(source.read_text(encoding="utf-8-sig"))
    constants = {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for target in node.targets
        if isinstance(target, ast.Name) and isinstance(node.value.value, str)
    }

    def name_of(node: ast.expr) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        return constants.get(node.id) if isinstance(node, ast.Name) else None

    def is_environ(node: ast.expr) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
            isinstance(node, ast.Name) and node.id == "environ"
        )

    found: set[str | None] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and is_environ(node.value):
            found.add(name_of(node.slice))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            call = node.func
            if (call.attr in ("get", "pop") and is_environ(call.value)) or call.attr == "getenv":
                found.add(name_of(node.args[0]))
        elif isinstance(node, ast.Compare) and any(is_environ(c) for c in node.comparators):
            found.add(name_of(node.left))
    return {name for name in found if name is not None}


def azure_sdk_environment_variables() -> set[str]:
    """Every variable the installed azure-identity and MSAL (its managed-identity client) read,
    from their own sources: azure-identity's ``EnvironmentVariables`` table and every read of
    the environment in their modules (but MSAL's command-line sample)."""
    from azure.identity._constants import EnvironmentVariables

    names = {
        value
        for key, value in vars(EnvironmentVariables).items()
        if key.isupper() and isinstance(value, str)
    }
    for package in ("azure.identity", "msal"):
        spec = importlib.util.find_spec(package)
        assert spec is not None
        assert spec.origin is not None
        for source in Path(spec.origin).parent.rglob("*.py"):
            if source.name != "__main__.py":
                names |= environment_reads(source)
    return names - NOT_CREDENTIALS


async def test_no_service_inherits_a_credential_the_azure_sdk_reads(
    user: pwd.struct_passwd, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = azure_sdk_environment_variables()
    # The managed-identity styles the issue names, and the SDK's own table, are all in there.
    assert {"IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_SECRET", "MSI_ENDPOINT"} <= names
    assert {"IMDS_ENDPOINT", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE"} <= names
    assert "SYSTEM_OIDCREQUESTURI" in names
    for name in names:
        monkeypatch.setenv(name, f"dev8-credential-{name}")
    monkeypatch.setenv("DEV8_HOSTILE_KEPT", "x")  # stripped too: dev8's own settings
    monkeypatch.setenv("HOSTILE_PLAIN", "kept")
    settings = ProcessSettings(command=["/bin/sleep", "60"], user=user.pw_name)
    async with running(settings) as pid:
        env = environ_of(pid)
    leaked = sorted(name for name in env if name in names or name.startswith("DEV8_"))
    assert leaked == []
    assert env["HOSTILE_PLAIN"] == "kept"  # the rest of dev8's environment is passed on


# ----------------------------------------------------------------------------- 2


async def test_user_files_are_read_without_links_fifos_devices_foreign_owners_or_bounds(
    home: Path, user: pwd.struct_passwd, tmp_path: Path
) -> None:
    from dev8.secrets.errors import SecretInputError
    from dev8.secrets.userfiles import read_user_file

    uid = user.pw_uid
    root_only = tmp_path / "root-only"
    root_only.write_text("SECRET=root\n")
    root_only.chmod(0o600)
    put(home, ".config/dev8/plain.env", b"A=1\n", user)
    os.symlink(root_only, home / ".config/dev8/link.env")
    os.symlink("/dev/zero", home / ".config/dev8/zero.env")
    os.mkfifo(home / ".config/dev8/fifo.env")
    os.chown(home / ".config/dev8/fifo.env", uid, user.pw_gid)
    os.link(root_only, home / ".config/dev8/hardlink.env")  # a hard link to root's file
    os.mknod(home / ".config/dev8/device.env", stat.S_IFCHR | 0o600, os.makedev(1, 5))
    os.chown(home / ".config/dev8/device.env", uid, user.pw_gid)
    put(home, ".config/dev8/big.env", b"x" * 4097, user)
    os.symlink(tmp_path, home / ".linked")  # a directory on the way is a link
    (tmp_path / "inside").write_text("B=2\n")

    found = await read_user_file(home, ".config/dev8/plain.env", owner_uid=uid)
    assert found is not None
    assert found.data == b"A=1\n"
    assert await read_user_file(home, ".config/dev8/missing.env", owner_uid=uid) is None
    expected = {
        ".config/dev8/link.env": "symlink",
        ".config/dev8/zero.env": "symlink",
        ".config/dev8/fifo.env": "not_a_regular_file",
        ".config/dev8/device.env": "not_a_regular_file",
        ".config/dev8/hardlink.env": "wrong_owner",
        ".config/dev8/big.env": "too_large",
        ".linked/inside": "symlink",
    }
    for relative, reason in expected.items():
        with trio.fail_after(10):  # a FIFO never blocks the read (nor the loop)
            with pytest.raises(SecretInputError) as refused:
                await read_user_file(home, relative, owner_uid=uid, max_bytes=4096)
        assert refused.value.reason == reason, relative
        assert "root" not in str(refused.value).replace("root-only", "")


# ----------------------------------------------------------------------------- 4


async def test_deeply_nested_files_and_secret_fail_their_item_and_the_pass_goes_on(
    vault: FakeKeyVault, provider: KeyVaultProvider, home: Path, user: pwd.struct_passwd
) -> None:
    depth = 5000  # about 10 KB each
    hosts_yml = put(home, ".config/gh/hosts.yml", f"github.com: {nested(depth)}\n".encode(), user)
    hosts_json = put(
        home, ".config/github-copilot/hosts.json", f'{{"x": {nested(depth)}}}'.encode(), user
    )
    before = {path: facts(path) for path in (hosts_yml, hosts_json)}
    names = {"github_token": "gh-u", "copilot_token": "cp-u", "custom_env_vars": "env-u"}
    vault.set_secret("gh-u", "ghp_hostile")
    vault.set_secret("cp-u", "ghu_hostile")
    vault.set_secret("env-u", f'{{"A": {nested(depth)}}}')
    events: list[Event] = []
    injector = Injector(home=home, owner=owner_of(user), github_user="alice", publish=events.append)
    rotator = Rotator(provider=provider, injector=injector, names=names, publish=events.append)

    async with rotating(rotator) as first:
        assert first.ok is False  # a pass that failed an item never reports success
        assert first.injection is not None
        assert {(p.name, reason) for p, reason in first.injection.failed} == {
            ("hosts.yml", "too_deeply_nested"), ("hosts.json", "too_deeply_nested"),
            ("secrets.env", "too_deeply_nested"),
        }  # fmt: skip
        assert {path: facts(path) for path in before} == before
        assert not (home / ".config/dev8/secrets.env").exists()
        # The rest went on: git's files are written.
        assert (home / ".git-credentials").read_text() == "https://alice:ghp_hostile@github.com\n"
        assert "[credential" in (home / ".gitconfig").read_text()
        refused = {(e.item, e.reason) for e in events if e.kind == "secret_input_refused"}  # type: ignore[attr-defined]
        assert refused == {
            (str(hosts_yml), "too_deeply_nested"), (str(hosts_json), "too_deeply_nested"),
            (str(home / ".config/dev8/secrets.env"), "too_deeply_nested"),
        }  # fmt: skip
        # The actor is alive: the user fixes the files, the next pass succeeds.
        put(home, ".config/gh/hosts.yml", b"github.com:\n  git_protocol: ssh\n", user)
        put(home, ".config/github-copilot/hosts.json", b"{}", user)
        vault.set_secret("env-u", '{"A": "1"}')
        with trio.fail_after(60):
            second = await rotator.refresh()
        assert second.ok is True
        assert injector.custom_env() == {"A": "1"}
        assert "git_protocol: ssh" in hosts_yml.read_text()


# ----------------------------------------------------------------------------- 5


async def test_unusable_variables_are_refused_by_name_and_services_still_start(
    home: Path, user: pwd.struct_passwd
) -> None:
    events: list[Event] = []
    injector = Injector(home=home, owner=owner_of(user), publish=events.append)
    big = "x" * (128 * 1024)
    json_form = json.dumps({"NUL": "a\0b", "BIG": big, "SURROGATE": "\ud800", "OK": "fine"})
    dotenv_form = "NUL2=a\0b\nTOKEN=abc#def\nSPACED=x #comment\nCR='one\rtwo'\nexport Q='it#s'\n"

    for secret, expected in (
        (json_form, {"OK": "fine"}),
        (dotenv_form, {"TOKEN": "abc#def", "SPACED": "x", "CR": "one\rtwo", "Q": "it#s"}),
    ):
        result = injector.inject({"custom_env_vars": SecretValue("env-u", secret, "v1")})
        assert not result.failed
        assert injector.custom_env() == expected
        assert sourced(home / ".config/dev8/secrets.env") == expected  # a login shell agrees
        settings = ProcessSettings(
            command=["/bin/sleep", "60"], user=user.pw_name, env=injector.custom_env()
        )
        async with running(settings) as pid:  # the service starts
            env = environ_of(pid)
        assert {name: env.get(name) for name in expected} == expected
    refused = {(e.item, e.reason) for e in events if e.kind == "secret_input_refused"}  # type: ignore[attr-defined]
    assert refused == {
        ("NUL", "nul_byte"), ("BIG", "too_large"), ("SURROGATE", "not_utf8"),
        ("NUL2", "nul_byte"),
    }  # fmt: skip
    assert big not in repr(events)


REFUSED = {
    "LD_PRELOAD": "dangerous_name", "LD_LIBRARY_PATH": "dangerous_name",
    "LD_AUDIT": "dangerous_name", "GLIBC_TUNABLES": "dangerous_name",
    "GCONV_PATH": "dangerous_name", "MALLOC_CHECK_": "dangerous_name",
    "BASH_ENV": "dangerous_name", "ENV": "dangerous_name", "BASH_FUNC_ls": "dangerous_name",
    "PYTHONSTARTUP": "dangerous_name", "NODE_OPTIONS": "dangerous_name",
    "JAVA_TOOL_OPTIONS": "dangerous_name", "HOME": "reserved_name", "USER": "reserved_name",
    "DEV8_API_TOKEN": "reserved_name",
}  # fmt: skip
#: The user's own business in their own services.
ACCEPTED = ("PATH", "EDITOR", "TMPDIR", "PYTHONPATH", "AZURE_CLIENT_ID", "GIT_AUTHOR_NAME")


def test_the_refused_names_and_the_accepted_ones() -> None:
    from dev8.secrets import parse_custom_env

    checked = parse_custom_env(json.dumps(dict.fromkeys([*REFUSED, *ACCEPTED], "v")))
    assert {r.name: r.reason for r in checked.refused} == REFUSED
    assert sorted(checked.variables) == sorted(ACCEPTED)
    # The same names in the dotenv form, and a name no shell could load is only dropped.
    dotenv = "".join(f"{name}=v\n" for name in [*REFUSED, *ACCEPTED, "not-a-name"])
    assert parse_custom_env(dotenv) == checked


ALPHABET = "ab Z09_#'\"$`\\\r\n\t=;!*?é€{}[]"


def random_value(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 24)))


def dotenv_quoted(value: str) -> str:
    """Single-quoted dotenv: only backslash and the quote are escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def test_random_values_round_trip_through_the_secret_memory_and_a_shell(
    home: Path, user: pwd.struct_passwd
) -> None:
    print(f"seed {SEED}")
    rng = random.Random(SEED)
    injector = Injector(home=home, owner=owner_of(user))
    for round_ in range(40):
        wanted = {f"V{i}_{round_}": random_value(rng) for i in range(rng.randrange(1, 6))}
        if rng.random() < 0.5:
            secret = json.dumps(wanted)
        else:
            secret = "".join(
                f"{rng.choice(['', 'export '])}{k}={dotenv_quoted(v)}\n" for k, v in wanted.items()
            )
        result = injector.inject({"custom_env_vars": SecretValue("env-u", secret, str(round_))})
        assert not result.failed, (SEED, round_)
        assert injector.custom_env() == wanted, (SEED, round_)
        assert sourced(home / ".config/dev8/secrets.env") == wanted, (SEED, round_)


# ----------------------------------------------------------------------------- 8


def test_a_large_gitconfig_is_merged_whole_and_one_over_the_bound_is_left_alone(
    home: Path, user: pwd.struct_passwd
) -> None:
    from dev8.secrets.atomic import MAX_READ_BYTES

    aliases = "".join(f"\ta{i} = !echo {i:08d}\n" for i in range(80_000))
    text = f"[user]\n\tname = Old\n[alias]\n{aliases}[core]\n\teditor = vim\n"
    assert 1.8 * 2**20 < len(text) < 2 * 2**20  # 1.9 MiB, as the user's
    gitconfig = put(home, ".gitconfig", text.encode(), user)
    injector = Injector(
        home=home, owner=owner_of(user), git_user_name="Alice", git_user_email="a@example.com"
    )
    result = injector.inject({"github_token": SecretValue("gh-u", "ghp_one", "v1")})
    assert not result.failed
    merged = gitconfig.read_text()
    assert merged.startswith("[user]\n\tname = Alice\n\temail = a@example.com\n[alias]\n")
    assert aliases + "[core]\n\teditor = vim\n" in merged  # every line of the user's kept

    oversized = text + "#" * (MAX_READ_BYTES + 1 - len(text))
    put(home, ".gitconfig", oversized.encode(), user)
    before = facts(gitconfig)
    result = injector.inject({"github_token": SecretValue("gh-u", "ghp_two", "v2")})
    assert result.failed == ((gitconfig, "too_large"),)
    assert facts(gitconfig) == before  # over the bound: not rewritten from a part
    assert (home / ".git-credentials").read_text() == "https://x-access-token:ghp_two@github.com\n"


def test_a_hard_link_to_a_root_file_is_never_read_into_the_users_files(
    home: Path, user: pwd.struct_passwd, tmp_path: Path
) -> None:
    private = tmp_path / "root-private"
    private.write_text("[user]\n\tsigningkey = root-only-material\n")
    private.chmod(0o600)
    os.link(private, home / ".gitconfig")
    result = Injector(home=home, owner=owner_of(user), git_user_name="Alice").inject(
        {"github_token": SecretValue("gh-u", "ghp_one", "v1")}
    )
    assert result.failed == ((home / ".gitconfig", "wrong_owner"),)
    assert private.read_text() == "[user]\n\tsigningkey = root-only-material\n"
    assert os.stat(home / ".gitconfig").st_ino == private.stat().st_ino
    for path in home.rglob("*"):
        if path.is_file() and path.stat().st_ino != private.stat().st_ino:
            assert b"root-only-material" not in path.read_bytes(), path


def test_a_name_swapped_for_a_hard_link_after_the_read_gets_no_chown(
    home: Path, user: pwd.struct_passwd, tmp_path: Path
) -> None:
    """The mode/owner fix of an unchanged file re-checks what the name is now."""
    from dev8.secrets.atomic import fix_metadata, open_dir
    from dev8.secrets.errors import SecretInputError

    private = tmp_path / "root-private"
    private.write_text("root only\n")
    private.chmod(0o600)
    os.link(private, home / ".git-credentials")  # swapped in after dev8 read the user's file
    with open_dir(home, enforce_leaf=False) as dir_fd, pytest.raises(SecretInputError) as refused:
        fix_metadata(dir_fd, ".git-credentials", mode=0o600, owner=owner_of(user))
    assert refused.value.reason == "wrong_owner"
    assert (private.stat().st_uid, stat.S_IMODE(private.stat().st_mode)) == (0, 0o600)


def test_code_servers_state_dirs_are_not_made_through_the_users_links(
    home: Path, user: pwd.struct_passwd, tmp_path: Path
) -> None:
    from dev8.services.codeserver import CodeServerSettings, prepare_codeserver_dirs

    state = home / ".dev8" / "code-server"
    settings = CodeServerSettings(
        workspace_dir=home, user_data_dir=state / "data", extensions_dir=state / "extensions"
    )
    target = tmp_path / "roots"  # somewhere only root writes
    target.mkdir(mode=0o755)
    put(home, ".dev8/placeholder", b"", user)
    state.symlink_to(target)
    with pytest.raises(OSError):  # noqa: PT011 - ENOTDIR or ELOOP, by the kernel's choice
        prepare_codeserver_dirs(settings, user.pw_uid, user.pw_gid)
    assert list(target.iterdir()) == []
    assert target.stat().st_uid == 0

    state.unlink()
    prepare_codeserver_dirs(settings, user.pw_uid, user.pw_gid)  # the normal case still works
    for directory in (state / "data", state / "extensions"):
        info = directory.lstat()
        assert (stat.S_ISDIR(info.st_mode), info.st_uid, stat.S_IMODE(info.st_mode)) == (
            True, user.pw_uid, 0o700,
        )  # fmt: skip


def ssh_key_pair(directory: Path) -> tuple[str, str]:
    key = directory / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice@laptop", "-f", str(key)],
        check=True, timeout=30,
    )  # fmt: skip
    return key.read_text(), Path(f"{key}.pub").read_text()


async def test_a_failed_public_key_fetch_changes_no_file(
    home: Path, user: pwd.struct_passwd, tmp_path: Path
) -> None:
    private, public = ssh_key_pair(tmp_path)
    store = tmp_path / "store"
    store.mkdir()
    (store / "ssh-private-key-u").write_text(private)
    (store / "ssh-public-key-u").write_text(public)
    events: list[Event] = []
    rotator = Rotator(
        provider=DirectoryProvider(store),
        injector=Injector(home=home, owner=owner_of(user)),
        names={"ssh_private_key": "ssh-private-key-u", "ssh_public_key": "ssh-public-key-u"},
        publish=events.append,
    )
    async with rotating(rotator) as first:
        assert first.ok
        pub = home / ".ssh/id_ed25519.pub"
        assert pub.read_text() == public  # with the user's comment
        before = {path: facts(path) for path in (home / ".ssh").iterdir()}
        (store / "ssh-public-key-u").unlink()
        (store / "ssh-public-key-u").mkdir()  # its fetch fails (not a file)
        events.clear()
        with trio.fail_after(30):
            result = await rotator.refresh()
    assert set(result.failed) == {"ssh_public_key"}
    assert result.injection is not None
    assert result.injection.written == ()
    assert {path: facts(path) for path in (home / ".ssh").iterdir()} == before
    assert not [e for e in events if isinstance(e, SecretsInjected)]


# ----------------------------------------------------------------------------- helpers' checks


def test_the_environment_probe_reads_what_a_process_got() -> None:
    """``environ_of`` sees an environment a process really has (so absence above means absence)."""
    process = subprocess.Popen(
        ["/bin/sleep", "30"], env={"PROBE_ME": "yes"}, stdin=subprocess.DEVNULL
    )
    try:
        assert environ_of(process.pid) == {"PROBE_ME": "yes"}
    finally:
        process.kill()
        process.wait()
