"""Pre-flight checks (dev8/services/preflight.py): what can be known before anything starts.

`dev8 config check` and `dev8 run` refuse, in one line naming the file, the key and the problem
(exit 2), a config that cannot work on this machine: a user that does not exist, a working
directory that does not exist, a command that does not resolve or that the user it runs as may
not execute, an unreadable token file. A taken API port stops `dev8 run` at once (exit 5, one
line naming the address); `config check` only warns about it. Real users, files and sockets.
"""

from __future__ import annotations

import os
import pwd
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from subprocess import CompletedProcess

import pytest
import trio
from support.dev8_harness import (
    DEV8,
    REPO_ROOT,
    open_dev8,
    python_service,
    run_cli,
    shell_service,
    write_config,
)
from support.net import free_port

from dev8.config import ApiConfig, Config, ServiceConfig, TcpBind, WorkspaceConfig, parse_config
from dev8.services.preflight import Problem, check

SLEEPER = "import time\nprint('up', flush=True)\ntime.sleep(1000)\n"


def config_of(
    directory: Path, services: dict[str, ServiceConfig], *, api: ApiConfig | None = None
) -> Config:
    """A config running as root in ``directory``, its API on a free port."""
    return Config(
        workspace=WorkspaceConfig(dir=str(directory), user="root"),
        api=api or ApiConfig(bind=TcpBind("127.0.0.1", free_port())),
        services=services,
    )


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user may traverse (pytest's own tmp_path is root's alone)."""
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="dev8-preflight-") as name:
        path = Path(name)
        path.chmod(0o755)
        yield path


def problems(
    config: Config, *, as_root: bool = True, environ: dict[str, str] | None = None
) -> list[tuple[str, str]]:
    return [(p.key, p.message) for p in check(config, as_root=as_root, environ=environ)]


# ----------------------------------------------------------------------------- unit: check()


def test_a_config_that_can_run_has_no_problem(tmp_path: Path) -> None:
    config = config_of(tmp_path, {"web": ServiceConfig(command=("sleep", "1"), cwd=str(tmp_path))})
    assert check(config, as_root=True) == []


def test_the_default_workspace_user_that_does_not_exist_is_named(tmp_path: Path) -> None:
    # The crash loop of issue 15: no workspace.user, and no user dev8 outside the image.
    text = "workspace: {user: dev8-absent-user}\nservices:\n  web: {command: [sleep, '1']}\n"
    config = parse_config(text, "dev8.yaml", {})
    assert problems(config, as_root=True)[0] == (
        "workspace.user",
        "user 'dev8-absent-user' does not exist (set workspace.user or services.web.user)",
    )
    # Not root: services run as dev8's own user, the workspace user is not needed.
    assert [key for key, _ in problems(config, as_root=False)] in ([], ["api.bind"])


def test_missing_working_directory_and_command(tmp_path: Path) -> None:
    config = config_of(
        tmp_path,
        {
            "a": ServiceConfig(command=("sleep", "1"), cwd=str(tmp_path / "gone")),
            "b": ServiceConfig(command=("dev8-no-such-program-7c1",)),
            "c": ServiceConfig(command=("./run.sh",), cwd=str(tmp_path)),
        },
    )
    found = problems(config, as_root=True, environ={"PATH": "/usr/bin:/bin"})
    assert found == [
        ("services.a.cwd", f"directory {tmp_path / 'gone'} does not exist"),
        (
            "services.b.command",
            "'dev8-no-such-program-7c1' is not found in the PATH (/usr/bin:/bin)",
        ),
        ("services.c.command", "'./run.sh' does not exist"),
    ]


def test_a_command_its_user_may_not_execute(shared_dir: Path, user: pwd.struct_passwd) -> None:
    name = user.pw_name
    private = shared_dir / "private"
    private.mkdir(mode=0o700)
    program = private / "tool"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    script = shared_dir / "script"
    script.write_text(f"#!{program}\n")
    script.chmod(0o755)
    config = config_of(
        shared_dir,
        {
            "hidden": ServiceConfig(command=(str(program),), user=name),
            "interpreted": ServiceConfig(command=(str(script),), user=name),
            "as-root": ServiceConfig(command=(str(program),)),  # root may
        },
    )
    assert problems(config, as_root=True) == [
        (
            "services.hidden.command",
            f"user {name!r} cannot execute {program}: no search permission on {private}",
        ),
        (
            "services.interpreted.command",
            f"user {name!r} cannot execute {script}: its interpreter {program}: "
            f"no search permission on {private}",
        ),
    ]


def test_the_path_is_searched_as_the_user(shared_dir: Path, user: pwd.struct_passwd) -> None:
    """A program the user may not run is skipped for a later one in the PATH, as execvp does
    (the demo's python3: /root/.pyenv/shims before /usr/bin)."""
    name = user.pw_name
    private = shared_dir / "private"
    private.mkdir(mode=0o700)
    (private / "sleep").write_text("#!/bin/sh\nexit 0\n")
    (private / "sleep").chmod(0o755)
    config = config_of(shared_dir, {"app": ServiceConfig(command=("sleep", "1"), user=name)})
    path = f"{private}:/usr/bin:/bin"
    assert problems(config, as_root=True, environ={"PATH": path}) == []
    only_private = problems(config, as_root=True, environ={"PATH": str(private)})
    assert only_private == [
        (
            "services.app.command",
            f"user {name!r} cannot execute {private / 'sleep'}: no search permission on {private}",
        )
    ]


def test_an_unreadable_token_file_and_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        api = ApiConfig(bind=TcpBind("127.0.0.1", port), token_file=str(tmp_path / "no-token"))
        found = check(config_of(tmp_path, {}, api=api), as_root=True)
    assert found == [
        Problem(
            "api.token_file", f"cannot read {tmp_path / 'no-token'}: no such file or directory"
        ),
        Problem(
            "api.bind", f"cannot listen on 127.0.0.1:{port}: address already in use", fatal=False
        ),
    ]


# ----------------------------------------------------------------------------- the commands


async def test_config_check_and_run_refuse_in_one_line(tmp_path: Path, api_port: int) -> None:
    config = tmp_path / "dev8.yaml"
    config.write_text(
        f"api: {{bind: '127.0.0.1:{api_port}'}}\n"
        "workspace: {user: dev8-absent-user}\n"
        "services:\n  web: {command: [sleep, '1000']}\n"
    )
    expected = (
        f"dev8: config error in {config}: workspace.user: user 'dev8-absent-user' does not "
        "exist (set workspace.user or services.web.user)\n"
    )
    for args in (
        ("config", "check", str(config)),
        ("config", "check", "--config", str(config)),
        ("run", "--config", str(config)),
    ):
        result = await run_cli(*args)
        assert (result.returncode, result.stdout, result.stderr.decode()) == (2, b"", expected)


async def test_every_command_takes_the_config_the_same_way(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    config = write_config(
        tmp_path / "dev8.yaml", {"one": shell_service("exec sleep 1000", marker)}, port=api_port
    )
    env = {"DEV8_CONFIG": str(config)}
    ok = f"{config}: ok (1 services)\n".encode()
    for args, environ in (
        (("config", "check", str(config)), {}),
        (("config", "check", "--config", str(config)), {}),
        (("config", "check"), env),
    ):
        result = await _cli(args, environ)
        assert (result.returncode, result.stdout, result.stderr) == (0, ok, b""), args
    for args, environ in (
        (("config", "show", "--config", str(config)), {}),
        (("config", "show"), env),
    ):
        result = await _cli(args, environ)
        assert result.returncode == 0, result.stderr
        assert b'"bind": "127.0.0.1:' in result.stdout
    twice = await _cli(("config", "check", str(config), "--config", str(config)), {})
    assert (twice.returncode, twice.stderr) == (
        2,
        b"dev8: give the config file once (FILE or --config)\n",
    )


async def _cli(args: tuple[str, ...], environ: dict[str, str]) -> CompletedProcess[bytes]:
    """`dev8 ARGS` without the test's DEV8_* variables, with ``environ``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEV8_")}
    return await trio.run_process(
        [*DEV8, *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        cwd=REPO_ROOT,
        env={**env, **environ},
    )


async def test_a_taken_api_port_stops_run_at_once_and_check_warns(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    started = tmp_path / "started"
    config = write_config(
        tmp_path / "dev8.yaml",
        {"toucher": shell_service(f"touch {started}; exec sleep 1000", marker)},
        port=api_port,
    )
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", api_port))
        taken.listen()
        run = await run_cli("run", "--config", str(config))
        check_result = await run_cli("config", "check", str(config))
    assert (run.returncode, run.stdout) == (5, b"")
    assert run.stderr.decode() == (
        f"dev8: cannot listen on 127.0.0.1:{api_port}: address already in use\n"
    )
    assert not started.exists()
    assert check_result.returncode == 0
    assert check_result.stdout.decode() == f"{config}: ok (1 services)\n"
    assert check_result.stderr.decode() == (
        f"dev8: warning: config error in {config}: api.bind: cannot listen on "
        f"127.0.0.1:{api_port}: address already in use\n"
    )


async def test_a_service_failing_at_once_ends_fatal_with_its_last_output(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    # Both lines on stderr: lines of two pipes have no order between them.
    failing = shell_service(
        "echo starting >&2; echo 'error: cannot open /etc/dev8-nothing' >&2; exit 3",
        marker,
        backoff={"initial_delay": 0.0, "min_delay": 0.0, "max_delay": 0.0, "jitter": 0.0},
        intensity={"max_restarts": 2, "window": 60.0},
    )
    config = write_config(
        tmp_path / "dev8.yaml",
        {"steady": python_service(SLEEPER, marker), "bad": failing},
        port=api_port,
    )
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        node = await dev8.wait_service(
            "bad", lambda n: n["state"] == "fatal", timeout=30, what="fatal"
        )
        expected = ["starting", "error: cannot open /etc/dev8-nothing"]
        assert node["lastExit"]["details"]["lastOutput"] == expected
        status = await dev8.status()
        assert status["services"]["bad"]["lastExit"]["details"]["lastOutput"] == expected
        gave_up = await dev8.wait_log(lambda e: e.get("message") == "child_gave_up")
        exits = dev8.messages("child_exited", child="bad")
        assert len(exits) == 3
        assert exits[-1]["details"]["lastOutput"] == expected
        assert exits[-1]["seq"] < gave_up["seq"]
