"""Checks of the machine a valid config will run on, made before anything starts.

``dev8.config`` says whether the file is well formed; this module says whether it can work
here: the users exist, the working directories exist, each command resolves and may be executed
by the user it will run as, the API's address is free and the token file is readable. ``dev8
config check`` and ``dev8 run`` both call :func:`check`, so a mistake is one line at start
(naming the file, the key and the problem) instead of a service crash-looping later.

Permissions are judged from mode bits, owner and groups as the kernel would for that user (ACLs
and capabilities aside): dev8 is root, so ``os.access`` would answer for root, not for them.
"""

from __future__ import annotations

import errno
import functools
import os
import pwd
import socket
import stat
from collections.abc import Mapping

import attrs

from dev8.config import Config, ConfigError, ServiceConfig, TcpBind, UnixBind
from dev8.monitoring.webhooks import WebhookKeyError, read_webhook_key
from dev8.pid1.reaper import OwnPids
from dev8.services.builtins import expand

_READ, _EXECUTE = 4, 1


@attrs.frozen
class Problem:
    """One thing that cannot work; ``fatal`` False is a warning (the port, in ``config check``)."""

    key: str
    message: str
    fatal: bool = True

    def error(self, source: str) -> ConfigError:
        """As the one line the CLI prints: ``config error in FILE: KEY: MESSAGE``."""
        return ConfigError(source, self.key, self.message)


@attrs.frozen
class Who:
    """The identity a check is made for (``groups``: primary and supplementary)."""

    name: str
    uid: int
    groups: frozenset[int]


class CommandProblem(Exception):
    """A command that would not run; ``errno`` is what the exec would fail with."""

    def __init__(self, message: str, error: int) -> None:
        super().__init__(message)
        self.errno = error


def check(
    config: Config, *, as_root: bool | None = None, environ: Mapping[str, str] | None = None
) -> list[Problem]:
    """Every problem found, in the order of the file (services, then the API)."""
    as_root = os.geteuid() == 0 if as_root is None else as_root
    environ = os.environ if environ is None else environ
    # Services share users, directories and programs: each is looked at once per check (a
    # thousand services would otherwise cost a second of start-up).
    for cached in (_who, _directory_problem, _command_problem):
        cached.cache_clear()
    problems: list[Problem] = []
    for name, service in config.services.items():
        if service.enabled:
            problems.extend(_check_service(name, service, config, as_root, environ))
    problems.extend(_check_api(config))
    problems.extend(_check_webhooks(config))
    return problems


def api_bind_problem(config: Config) -> Problem | None:
    """Whether the API's address can be listened on now (None: it can)."""
    bind = config.api.bind
    if isinstance(bind, UnixBind):
        parent = os.path.dirname(bind.path) or "."
        if not os.path.isdir(parent):
            return Problem("api.bind", f"cannot listen on unix:{bind.path}: no directory {parent}")
        return None
    assert isinstance(bind, TcpBind)
    try:
        infos = socket.getaddrinfo(bind.host or None, bind.port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        return Problem("api.bind", f"cannot listen on {bind}: {error.strerror}")
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As the server will: a port in TIME_WAIT after a restart is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            reason = os.strerror(error.errno) if error.errno else str(error)
            return Problem("api.bind", f"cannot listen on {bind}: {reason.lower()}", fatal=False)
    return None


# ----------------------------------------------------------------------------- services


def _check_service(
    name: str, service: ServiceConfig, config: Config, as_root: bool, environ: Mapping[str, str]
) -> list[Problem]:
    where = f"services.{name}"
    user_key = f"{where}.user" if service.user is not None else "workspace.user"
    # A built-in's defaults (its command; sshd runs as root) as the service will have them.
    service = expand(name, service, config, own=OwnPids()).service
    user = (
        service.user if service.user is not None else (config.workspace.user if as_root else None)
    )
    who = _who(user)
    if who is None:
        hint = f" (set workspace.user or {where}.user)" if user_key == "workspace.user" else ""
        return [Problem(user_key, f"user {user!r} does not exist{hint}")]
    if not as_root and who.uid != os.geteuid():
        return [Problem(user_key, f"cannot run as {user!r}: dev8 is not running as root")]

    cwd = service.cwd
    if cwd is not None:
        problem = _directory_problem(cwd, who)
        if problem is not None:
            return [Problem(f"{where}.cwd", problem)]
    if not service.command:
        return []  # config.py already refused a plain service without one
    path = service.env.get("PATH", environ.get("PATH", os.defpath))
    problem = _command_problem(service.command[0], path, cwd or os.getcwd(), who)
    return [Problem(f"{where}.command", problem)] if problem is not None else []


@functools.cache
def _who(user: str | None) -> Who | None:
    """The identity of ``user`` (None: dev8's own), or None if there is no such user."""
    if user is None:
        return Who(pwd.getpwuid(os.geteuid()).pw_name, os.geteuid(), frozenset(os.getgroups()))
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    return Who(entry.pw_name, entry.pw_uid, frozenset(os.getgrouplist(user, entry.pw_gid)))


@functools.cache
def _command_problem(program: str, path: str, cwd: str, who: Who) -> str | None:
    try:
        resolve_command(program, path, cwd, who)
    except CommandProblem as problem:
        return str(problem)
    return None


@functools.cache
def _directory_problem(path: str, who: Who) -> str | None:
    if not os.path.exists(path):
        return f"directory {path} does not exist"
    if not os.path.isdir(path):
        return f"{path} is not a directory"
    blocked = _unsearchable(os.path.join(path, "."), who)
    if blocked is not None:
        return f"user {who.name!r} cannot enter {path}: no search permission on {blocked}"
    return None


def resolve_command(program: str, path: str, cwd: str, who: Who) -> str:
    """The file ``who`` would run for ``program``: searched as execvp does, as that user.

    A candidate the user may not execute is skipped, as execvp skips one it gets EACCES on.
    dev8 runs the result by its full path: behind ``setpriv`` the search would otherwise be made
    with root's permissions (it finds ``/root/.pyenv/shims/python3`` before ``/usr/bin/python3``)
    and the program then fail as the user (exit 126). Raises ``CommandProblem``.
    """
    if os.sep in program:
        candidates = [os.path.join(cwd, program)]
    else:
        candidates = [os.path.join(cwd, directory, program) for directory in path.split(os.pathsep)]
    found = [candidate for candidate in candidates if os.path.isfile(candidate)]
    if not found and os.sep in program and os.path.isdir(candidates[0]):
        raise CommandProblem(f"{program!r} is a directory", errno.EACCES)
    if not found:
        missing = "does not exist" if os.sep in program else f"is not found in the PATH ({path})"
        raise CommandProblem(f"{program!r} {missing}", errno.ENOENT)
    reasons = []
    for candidate in found:
        reason = _exec_problem(candidate, who)
        if reason is None:
            return os.path.normpath(candidate)
        reasons.append(reason)
    raise CommandProblem(
        f"user {who.name!r} cannot execute {os.path.normpath(found[0])}: {reasons[0]}",
        errno.EACCES,
    )


def _exec_problem(path: str, who: Who, *, depth: int = 0) -> str | None:
    blocked = _unsearchable(path, who)
    if blocked is not None:
        return f"no search permission on {blocked}"
    if not _allowed(path, who, _EXECUTE):
        return f"not executable by that user (mode {_mode(path)})"
    interpreter = _interpreter(path)
    if interpreter is None or depth > 0:
        return None
    if who.uid != 0 and not _allowed(path, who, _READ):
        return f"a script its user cannot read (mode {_mode(path)})"
    if not os.path.isfile(interpreter):
        return f"its interpreter {interpreter} does not exist"
    problem = _exec_problem(interpreter, who, depth=depth + 1)
    return None if problem is None else f"its interpreter {interpreter}: {problem}"


def _interpreter(path: str) -> str | None:
    """The program named by a ``#!`` line, if the file starts with one (read as root)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].split()
    return os.fsdecode(words[0]) if words else None


def _unsearchable(path: str, who: Who) -> str | None:
    """The first directory on the way to ``path`` (as written and resolved) ``who`` cannot enter."""
    for target in dict.fromkeys([os.path.abspath(path), os.path.realpath(path)]):
        directory = os.path.dirname(target)
        chain = []
        while True:
            chain.append(directory)
            parent = os.path.dirname(directory)
            if parent == directory:
                break
            directory = parent
        for directory in reversed(chain):
            if os.path.isdir(directory) and not _allowed(directory, who, _EXECUTE):
                return directory
    return None


def _allowed(path: str, who: Who, bit: int) -> bool:
    """Whether mode bits let ``who`` read (4) or execute/search (1) ``path``."""
    try:
        info = os.stat(path)
    except OSError:
        return False
    if who.uid == 0:
        return bit != _EXECUTE or stat.S_ISDIR(info.st_mode) or bool(info.st_mode & 0o111)
    if info.st_uid == who.uid:
        shift = 6
    elif info.st_gid in who.groups:
        shift = 3
    else:
        shift = 0
    return bool((info.st_mode >> shift) & bit)


def _mode(path: str) -> str:
    info = os.stat(path)
    try:
        owner = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        owner = str(info.st_uid)
    return f"{stat.S_IMODE(info.st_mode):04o}, owner {owner}"


# ----------------------------------------------------------------------------- the API


def _check_api(config: Config) -> list[Problem]:
    problems = []
    token_file = config.api.token_file
    if token_file is not None:
        try:
            with open(token_file, encoding="utf-8") as handle:
                handle.read(1)
        except OSError as error:
            reason = os.strerror(error.errno or errno.EIO).lower()
            problems.append(Problem("api.token_file", f"cannot read {token_file}: {reason}"))
        except UnicodeDecodeError:
            problems.append(Problem("api.token_file", f"{token_file} is not UTF-8 text"))
    bind = api_bind_problem(config)
    if bind is not None:
        problems.append(bind)
    return problems


# ----------------------------------------------------------------------------- webhooks


def _check_webhooks(config: Config) -> list[Problem]:
    problems = []
    for index, hook in enumerate(config.alerts.webhooks):
        if hook.secret_file is not None:
            try:
                read_webhook_key(hook.secret_file)
            except WebhookKeyError as error:
                problems.append(Problem(f"alerts.webhooks[{index}].secret_file", str(error)))
    return problems
