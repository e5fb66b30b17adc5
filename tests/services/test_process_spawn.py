"""How dev8.services.process spawns a service as its user: vfork, and ``setpriv`` for another
identity.

Real processes and a real user with a supplementary group; the identity a service ends up with is
read from ``/proc/PID/status``, and whether CPython vforked is read from ``strace``.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from support.dev8_harness import throwaway_user
from support.procfs import comm_of, environ_of

from actors import ChildContext
from dev8.pid1.reaper import OwnPids
from dev8.services.process import ProcessSettings, SpawnError, run_process

REPO = Path(__file__).resolve().parents[2]
#: What a switch of identity must set, and the old path (Popen user=/group=/extra_groups=) did.
IDENTITY_FIELDS = ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapAmb", "NoNewPrivs")


@pytest.fixture(scope="module")
def service_user() -> Iterator[pwd.struct_passwd]:
    """A real non-root user (free uid) in its own group and one supplementary group."""
    with throwaway_user("dev8sp", extra_group=True) as user:
        yield user


def status_of(pid: int) -> dict[str, list[str]]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    status = dict(line.split(":", 1) for line in lines)
    return {key: status[key].split() for key in IDENTITY_FIELDS}


def cmdline_of(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


@asynccontextmanager
async def service(settings: ProcessSettings) -> AsyncIterator[tuple[int, ChildContext]]:
    """Run the process actor once; yield (pid, ctx) once the command itself runs; stop it."""
    own = OwnPids()
    ctx = ChildContext(name="svc", path="test/svc", attempt=0, publish=lambda event: None)
    async with trio.open_nursery() as nursery:
        started = await nursery.start(lambda task_status: run_process(
            ctx, settings, own=own, task_status=task_status
        ))  # fmt: skip
        pid = started["pid"]
        name = Path(settings.command[0]).name[:15]
        with trio.fail_after(10):  # a bounded wait for a real exec (setpriv's, then the command's)
            while comm_of(pid) != name:  # noqa: ASYNC110 - another process's exec
                await trio.sleep(0.005)
        yield pid, ctx
        nursery.cancel_scope.cancel()
    assert len(own) == 0


def old_path_status(user: pwd.struct_passwd) -> dict[str, list[str]]:
    """The identity the spawn used to give: Popen's own user/group/extra_groups (a fork)."""
    groups = os.getgrouplist(user.pw_name, user.pw_gid)
    with subprocess.Popen(
        ["/bin/sleep", "60"], user=user.pw_uid, group=user.pw_gid, extra_groups=groups
    ) as proc:
        try:
            return status_of(proc.pid)
        finally:
            proc.kill()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the service's user may traverse (pytest's own tmp_path is root's alone)."""
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="dev8-spawn-") as name:
        path = Path(name)
        path.chmod(0o755)
        yield path


async def test_a_service_as_another_user_gets_its_uid_gid_groups_and_environment(
    service_user: pwd.struct_passwd,
) -> None:
    user = service_user
    supplementary = [g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem]
    assert len(supplementary) == 1
    settings = ProcessSettings(
        command=["sleep", "60"], user=user.pw_name, env={"GREETING": "hi"}, cwd="/"
    )
    async with service(settings) as (pid, ctx):
        status = status_of(pid)
        environ = environ_of(pid)
        cmdline = cmdline_of(pid)
        assert ctx.info["user"] == user.pw_name
    assert status["Uid"] == [str(user.pw_uid)] * 4  # real, effective, saved, filesystem
    assert status["Gid"] == [str(user.pw_gid)] * 4
    assert sorted(status["Groups"]) == sorted(str(g) for g in [user.pw_gid, *supplementary])
    assert status["CapPrm"] == status["CapEff"] == status["CapAmb"] == ["0000000000000000"]
    assert status == old_path_status(user)  # exactly what Popen's own switch gave
    assert cmdline == b"sleep\x0060\x00"  # setpriv replaced itself with the command
    for key, value in {
        "HOME": "/nonexistent-home",
        "USER": user.pw_name,
        "LOGNAME": user.pw_name,
        "SHELL": "/bin/sh",
        "GREETING": "hi",
    }.items():
        assert environ[key] == value
    assert not [key for key in environ if key.startswith(("DEV8_", "AZURE_"))]


async def test_without_setpriv_the_switch_falls_back_to_popen(
    service_user: pwd.struct_passwd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no setpriv on dev8's PATH
    assert shutil.which("setpriv") is None
    settings = ProcessSettings(command=["/bin/sleep", "60"], user=service_user.pw_name)
    async with service(settings) as (pid, _ctx):
        status = status_of(pid)
    assert status == old_path_status(service_user)


async def test_a_service_as_dev8s_own_user_keeps_dev8s_identity() -> None:
    me = pwd.getpwuid(os.geteuid())
    settings = ProcessSettings(command=["sleep", "60"], user=me.pw_name)
    async with service(settings) as (pid, ctx):
        status = status_of(pid)
        environ = environ_of(pid)
    assert ctx.info["user"] == me.pw_name
    assert status["Uid"] == [str(me.pw_uid)] * 4
    assert status["Gid"] == [str(me.pw_gid)] * 4
    assert environ["HOME"] == me.pw_dir
    assert environ["USER"] == me.pw_name


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["no-such-program-5c1e"], "'no-such-program-5c1e': No such file or directory"),
        (["/nonexistent/prog"], "'/nonexistent/prog': No such file or directory"),
        (["./prog"], "'./prog': No such file or directory"),  # not in the working directory
        (["./data.txt"], "'./data.txt': Permission denied"),  # not executable
    ],
)
async def test_a_program_that_cannot_run_is_a_spawn_error_behind_setpriv(
    service_user: pwd.struct_passwd, tmp_path: Path, command: list[str], message: str
) -> None:
    (tmp_path / "data.txt").write_text("not a program")
    settings = ProcessSettings(command=command, user=service_user.pw_name, cwd=str(tmp_path))
    ctx = ChildContext(name="svc", path="test/svc", attempt=0, publish=lambda event: None)
    own = OwnPids()
    with pytest.raises(SpawnError) as caught:
        await run_process(ctx, settings, own=own)
    assert str(caught.value) == f"cannot start {message}"
    assert len(own) == 0


async def test_a_program_found_relative_to_the_working_directory_and_path_runs(
    service_user: pwd.struct_passwd, shared_dir: Path
) -> None:
    """Found as the exec will find it: relative to the service's cwd and in the service's PATH."""
    bin_dir = shared_dir / "bin"
    bin_dir.mkdir(mode=0o755)
    (bin_dir / "sleeper").symlink_to(shutil.which("sleep") or "/bin/sleep")
    for command, env in (
        (["./bin/sleeper", "60"], {}),
        (["sleeper", "60"], {"PATH": f"{bin_dir}:/usr/bin:/bin"}),
        (["sleeper", "60"], {"PATH": "bin:/usr/bin"}),  # a relative PATH entry: from the cwd
    ):
        settings = ProcessSettings(
            command=command, user=service_user.pw_name, cwd=str(shared_dir), env=env
        )
        async with service(settings) as (pid, _ctx):
            assert status_of(pid)["Uid"] == [str(service_user.pw_uid)] * 4


async def test_the_path_is_searched_as_the_user_not_as_root(
    service_user: pwd.struct_passwd, shared_dir: Path
) -> None:
    """A program first in the PATH that only root may reach is skipped, as the user's own exec
    would. setpriv searched with root's permissions: the demo's `python3` was root's pyenv shim
    under /root (0700), and every start exited 126."""
    private = shared_dir / "private"
    private.mkdir(mode=0o700)
    (private / "sleep").write_text("#!/bin/sh\nexit 99\n")
    (private / "sleep").chmod(0o755)
    settings = ProcessSettings(
        command=["sleep", "60"],
        user=service_user.pw_name,
        cwd=str(shared_dir),
        env={"PATH": f"{private}:/usr/bin:/bin"},
    )
    async with service(settings) as (pid, _ctx):
        assert status_of(pid)["Uid"] == [str(service_user.pw_uid)] * 4
        assert cmdline_of(pid).split(b"\x00")[0] in (b"/usr/bin/sleep", b"/bin/sleep")


async def test_a_missing_working_directory_is_still_reported_as_such(
    service_user: pwd.struct_passwd, tmp_path: Path
) -> None:
    missing = tmp_path / "gone"
    settings = ProcessSettings(command=["true"], user=service_user.pw_name, cwd=str(missing))
    ctx = ChildContext(name="svc", path="test/svc", attempt=0, publish=lambda event: None)
    with pytest.raises(SpawnError, match=re.escape(f"in '{missing}': No such file or directory")):
        await run_process(ctx, settings, own=OwnPids())


# -- vfork, seen from strace ---------------------------------------------------------------------

SPAWN_ONCE = """
import os, sys, trio
from actors import ChildContext
from dev8.pid1.reaper import OwnPids
from dev8.services.process import ProcessSettings, run_process

os.setgroups(os.getgrouplist("root", 0))  # as dev8 in a container: root's own groups
if sys.argv[2]:
    os.environ["PATH"] = sys.argv[2]
ctx = ChildContext(name="svc", path="t/svc", attempt=0, publish=lambda event: None)
settings = ProcessSettings(command=["/bin/true"], user=sys.argv[1])
trio.run(lambda: run_process(ctx, settings, own=OwnPids()))
"""


def spawn_syscalls(user: str, path: str, trace: Path) -> list[str]:
    """How a dev8 running one service once created the service's process: the syscall that made
    each process whose first exec was setpriv or the service (threads and helpers left out)."""
    subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=vfork,fork,clone,clone3,execve", "-o", str(trace),
         sys.executable, "-c", SPAWN_ONCE, user, path],
        check=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    created: dict[str, str] = {}  # child pid -> the call that created it
    unfinished: dict[str, str] = {}
    first_exec: dict[str, str] = {}
    for line in trace.read_text().splitlines():
        pid, _, call = line.partition(" ")
        call = call.lstrip()
        if (started := re.match(r"(vfork|fork|clone3?)\(", call)) and "CLONE_THREAD" not in call:
            if call.endswith("<unfinished ...>"):
                unfinished[pid] = started[1]
            else:
                created[call.rsplit("= ", 1)[1]] = started[1]
        elif (resumed := re.match(r"<\.\.\. \w+ resumed>.*= (\d+)$", call)) and pid in unfinished:
            created[resumed[1]] = unfinished.pop(pid)
        elif executed := re.match(r'execve\("([^"]+)"', call):
            first_exec.setdefault(pid, executed[1])
    targets = ("/bin/true", shutil.which("setpriv"))
    return [how for child, how in created.items() if first_exec.get(child) in targets]


@pytest.mark.parametrize(
    ("who", "setpriv_on_path", "expected"),
    [
        ("self", True, ["vfork"]),  # dev8's own identity: nothing to switch
        ("other", True, ["vfork"]),  # another user: setpriv, after a vfork
        ("other", False, ["clone"]),  # no setpriv: Popen switches, and must fork
    ],
)
def test_the_spawn_vforks_unless_popen_must_switch_identity(
    service_user: pwd.struct_passwd,
    tmp_path: Path,
    who: str,
    setpriv_on_path: bool,
    expected: list[str],
) -> None:
    user = "root" if who == "self" else service_user.pw_name
    path = "" if setpriv_on_path else str(tmp_path)
    assert spawn_syscalls(user, path, tmp_path / "trace") == expected
