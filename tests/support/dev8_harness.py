"""Drive the real `dev8 run` from tests: a subprocess, its JSON log, real HTTP and a real websocket.

Every service command a test writes carries a unique marker in its argv (`python_service`,
`shell_service`), so the processes of one test can be found, and killed if they leaked, from
outside by their command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import trio
import yaml
from trio_websocket import WebSocketConnection, open_websocket_url

from dev8.pid1.reaper import list_descendants
from support.tree import find_node
from support.waiting import fail_after, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
DEV8 = (sys.executable, "-m", "dev8")
#: Backoff that restarts at once, without jitter.
NO_BACKOFF: Mapping[str, float] = {
    "initial_delay": 0.0,
    "min_delay": 0.0,
    "max_delay": 0.0,
    "jitter": 0.0,
}
#: PID 1 of a fresh PID namespace; `--kill-child` takes the namespace down if unshare dies.
UNSHARE_PID1 = ("unshare", "--pid", "--fork", "--mount-proc", "--kill-child")

Json = dict[str, Any]


# ----------------------------------------------------------------------------- processes


def proc_state(pid: int) -> str | None:
    """The state letter of `pid` (R, S, Z, ...) from /proc, or None if there is no such pid."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].split()[0].decode()


def pid_alive(pid: int) -> bool:
    """Alive means it still runs: gone and zombie both count as dead."""
    return proc_state(pid) not in (None, "Z", "X")


def children_of(pid: int) -> list[int]:
    """The direct children of `pid` (of its main thread), from /proc."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def pids_with_marker(marker: str) -> list[int]:
    """Live host processes whose command line holds `marker`."""
    found = []
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)


def kill_marked(marker: str) -> list[int]:
    """SIGKILL whatever still carries `marker`; returns what was found."""
    found = pids_with_marker(marker)
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return found


# ----------------------------------------------------------------------------- config


def python_service(code: str, marker: str, **options: Any) -> Json:
    """A service running `code` in Python, unbuffered, with `marker` in its argv."""
    env = {"PYTHONUNBUFFERED": "1", **options.pop("env", {})}
    return {"command": [sys.executable, "-c", code, marker], "env": env, **options}


def shell_service(script: str, marker: str, **options: Any) -> Json:
    """A service running `script` with sh; `marker` becomes its $0."""
    return {"command": ["sh", "-c", script, marker], **options}


def write_config(
    path: Path,
    services: Mapping[str, Json],
    *,
    port: int,
    shutdown: Mapping[str, float] | None = None,
    supervisor_intensity: Mapping[str, float] | None = None,
) -> Path:
    """A complete config: services run as the test's own user (no user switch)."""
    data: Json = {
        "environment_id": "e2e-env",
        "user_id": "e2e-user",
        "workspace": {"dir": str(path.parent), "user": pwd.getpwuid(os.geteuid()).pw_name},
        "api": {"bind": f"127.0.0.1:{port}"},
        "log": {"level": "info"},
        "shutdown": {"timeout": 10.0, "kill_grace": 1.0, **(shutdown or {})},
        "supervisor": {
            "intensity": dict(supervisor_intensity or {"max_restarts": 1000, "window": 60.0})
        },
        "services": {name: dict(service) for name, service in services.items()},
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def api_token(config: Path) -> str | None:
    """The token of the config's api.token_file, if it has one."""
    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except (OSError, ValueError):
        return None
    token_file = (data.get("api") or {}).get("token_file")
    if not token_file:
        return None
    try:
        return Path(token_file).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


async def run_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[bytes]:
    """`dev8 ARGS...` to completion, output captured."""
    with fail_after(timeout, f"dev8 {' '.join(args)}"):
        return await trio.run_process(
            [*DEV8, *args], capture_stdout=True, capture_stderr=True, check=False, cwd=REPO_ROOT
        )


# ----------------------------------------------------------------------------- a running dev8


def parse_log_line(line: str) -> Json:
    try:
        entry = json.loads(line)
    except ValueError:
        raise AssertionError(f"dev8 printed a line that is not JSON: {line!r}") from None
    if not isinstance(entry, dict):
        raise AssertionError(f"dev8 printed JSON that is not an object: {line!r}")
    return entry


def printed(service: str, message: str) -> Callable[[Json], bool]:
    """Matches the log line of `service` printing `message`."""
    return lambda entry: entry.get("service") == service and entry.get("message") == message


def logged(message: str, **fields: Any) -> Callable[[Json], bool]:
    """Matches dev8's own log line `message` with these fields."""
    return lambda entry: (
        entry.get("message") == message
        and all(entry.get(key) == value for key, value in fields.items())
    )


class Dev8Run:
    """A running `dev8 run`: its process, its output as it arrives, and its API."""

    def __init__(self, process: trio.Process, *, port: int, in_namespace: bool) -> None:
        self.process = process
        self.port = port
        self.in_namespace = in_namespace
        self.lines: list[str] = []
        self.stderr = bytearray()
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10.0)
        self._output = trio.Event()
        self._stdout_closed = False
        self._dev8_pid: int | None = None if in_namespace else process.pid

    # -- the process ------------------------------------------------------------------------

    async def dev8_pid(self) -> int:
        """dev8's host pid: the process itself, or unshare's child in a PID namespace."""
        if self._dev8_pid is None:
            pid = self.process.pid
            await wait_until(lambda: bool(children_of(pid)), timeout=10, what="unshare's child")
            self._dev8_pid = children_of(pid)[0]
        return self._dev8_pid

    async def signal(self, sig: signal.Signals) -> None:
        os.kill(await self.dev8_pid(), sig)

    async def wait_exit(self, timeout: float) -> int:
        with fail_after(timeout, "dev8 to exit", self.tail):
            return await self.process.wait()

    # -- output -----------------------------------------------------------------------------

    async def _pump_stdout(self) -> None:
        assert self.process.stdout is not None
        pending = b""
        async for chunk in self.process.stdout:
            pending += chunk
            *complete, pending = pending.split(b"\n")
            self.lines.extend(raw.decode("utf-8", errors="replace") for raw in complete)
            self._wake()
        if pending:
            self.lines.append(pending.decode("utf-8", errors="replace"))
        self._stdout_closed = True
        self._wake()

    async def _pump_stderr(self) -> None:
        assert self.process.stderr is not None
        async for chunk in self.process.stderr:
            self.stderr += chunk

    def _wake(self) -> None:
        self._output.set()
        self._output = trio.Event()

    def logs(self) -> list[Json]:
        """Every stdout line so far, parsed; fails on any line that is not a JSON object."""
        return [parse_log_line(line) for line in self.lines]

    def messages(self, message: str, **fields: Any) -> list[Json]:
        return [
            entry
            for entry in self.logs()
            if entry.get("message") == message
            and all(entry.get(key) == value for key, value in fields.items())
        ]

    async def wait_log(
        self, predicate: Callable[[Json], bool], *, timeout: float = 10.0, what: str = "a log line"
    ) -> Json:
        """The first log line (from the start) that matches, waiting for it as output arrives."""
        index = 0
        with fail_after(timeout, what, self.tail):
            while True:
                while index < len(self.lines):
                    entry = parse_log_line(self.lines[index])
                    index += 1
                    if predicate(entry):
                        return entry
                if self._stdout_closed:
                    raise AssertionError(f"dev8's output ended without {what}\n{self.tail()}")
                await self._output.wait()

    def tail(self, count: int = 30) -> str:
        err = self.stderr.decode(errors="replace")
        return "\n".join(self.lines[-count:]) + (f"\n--- stderr ---\n{err}" if err else "")

    # -- the API ----------------------------------------------------------------------------

    async def wait_ready(self, timeout: float = 20.0) -> None:
        """Until the API answers /health (200 or 503); fails at once if dev8 exits first."""
        with fail_after(timeout, "the API to answer", self.tail):
            while True:
                if self.process.returncode is not None:
                    raise AssertionError(
                        f"dev8 exited with {self.process.returncode}\n{self.tail()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    await self.http.get("/health")
                    return
                await trio.sleep(0.05)

    async def status(self) -> Json:
        response = await self.http.get("/status")
        assert response.status_code == 200, response.text
        body: Json = response.json()
        return body

    async def service(self, name: str) -> Json:
        """The /status node of one service."""
        return find_node((await self.status())["tree"], f"dev8/services/{name}")

    async def wait_service(
        self, name: str, predicate: Callable[[Json], bool], *, timeout: float = 10.0, what: str
    ) -> Json:
        """Bounded poll of /status until the service's node satisfies `predicate`."""
        with fail_after(timeout, f"service {name}: {what}", self.tail):
            while True:
                node = await self.service(name)
                if predicate(node):
                    return node
                await trio.sleep(0.05)

    async def service_pids(self) -> dict[str, int]:
        """The pid of every service that has one (as /status shows it)."""
        tree = (await self.status())["tree"]
        services = find_node(tree, "dev8/services")["children"]
        return {
            node["name"]: node["info"]["pid"]
            for node in services
            if node["info"]["pid"] is not None
        }

    @contextlib.asynccontextmanager
    async def events(self, query: str = "") -> AsyncIterator[EventStream]:
        """A real websocket client on /events (`query`: "since=0&service=web").

        Without `since` it resumes from /status's lastEvent: the subscription starts after the
        websocket handshake, so "from now" alone could miss what happens in between.
        """
        if "since=" not in query:
            since = (await self.status())["lastEvent"]
            query = f"since={since}&{query}" if query else f"since={since}"
        url = f"ws://127.0.0.1:{self.port}/events?{query}"
        auth = self.http.headers.get("Authorization")
        headers = [("Authorization", auth)] if auth else None
        async with open_websocket_url(url, extra_headers=headers) as ws:
            yield EventStream(ws, self.tail)


class EventStream:
    """Events as received over the websocket; `seen` keeps every one of them."""

    def __init__(self, ws: WebSocketConnection, tail: Callable[[], str]) -> None:
        self.ws = ws
        self.seen: list[Json] = []
        self._tail = tail
        self._queued: list[Json] = []

    async def next(self) -> Json:
        if not self._queued:
            body = json.loads(await self.ws.get_message())
            self._queued = body if isinstance(body, list) else [body]  # an array when behind
        event: Json = self._queued.pop(0)
        self.seen.append(event)
        return event

    async def wait_for(
        self, kind: str, *, child: str | None = None, timeout: float = 10.0, **data: Any
    ) -> Json:
        """The next event of `kind` (about `child`, with these data fields) as it arrives."""
        what = f"event {kind} child={child} {data}"
        with fail_after(timeout, what, self._tail):
            while True:
                event = await self.next()
                fields = event["data"]
                if (
                    event["kind"] == kind
                    and (child is None or fields.get("child") == child)
                    and all(fields.get(key) == value for key, value in data.items())
                ):
                    return event

    def of(self, kind: str, child: str | None = None) -> list[Json]:
        return [
            e
            for e in self.seen
            if e["kind"] == kind and (child is None or e["data"].get("child") == child)
        ]


@contextlib.asynccontextmanager
async def open_dev8(
    config: Path,
    *,
    port: int,
    prefix: Sequence[str] = (),
    wait_ready: bool = True,
    marker: str | None = None,
) -> AsyncIterator[Dev8Run]:
    """Start `dev8 run --config CONFIG` (behind `prefix`, e.g. UNSHARE_PID1); always reap it.

    On the way out a dev8 still running gets SIGTERM, then SIGKILL with all its descendants, and
    whatever still carries `marker` is killed too: no test leaves a process behind.
    """
    process = await trio.lowlevel.open_process(
        [*prefix, *DEV8, "run", "--config", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    run = Dev8Run(process, port=port, in_namespace=bool(prefix))
    token = api_token(config)
    if token is not None:  # every route but the probes needs it
        run.http.headers["Authorization"] = f"Bearer {token}"
    try:
        async with run.http, trio.open_nursery() as nursery:
            nursery.start_soon(run._pump_stdout)
            nursery.start_soon(run._pump_stderr)
            try:
                if wait_ready:
                    await run.wait_ready()
                yield run
            finally:
                with trio.CancelScope(shield=True):
                    await _reap(run)
                    # Output is drained unless a leaked grandchild still holds the pipes.
                    nursery.cancel_scope.deadline = trio.current_time() + 5.0
    finally:
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                await stream.aclose()
        if marker is not None:
            kill_marked(marker)


async def _reap(run: Dev8Run) -> None:
    await stop_process(run.process, terminate=lambda: run.signal(signal.SIGTERM))


async def stop_process(
    process: trio.Process,
    *,
    terminate: Callable[[], Awaitable[None]] | None = None,
    grace: float = 15.0,
) -> None:
    """`terminate` (SIGTERM to the process by default), up to `grace` seconds, then SIGKILL to
    it and everything below it; always waited for."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            if terminate is None:
                process.send_signal(signal.SIGTERM)
            else:
                await terminate()
        with trio.move_on_after(grace):
            await process.wait()
    if process.returncode is None:
        for pid in [process.pid, *list_descendants(process.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await process.wait()


@contextlib.contextmanager
def throwaway_user(prefix: str, *, extra_group: bool = False) -> Iterator[pwd.struct_passwd]:
    """A real non-root user with a free uid and its own group (and, if asked, one supplementary
    group), removed afterwards. Needs root, as dev8 has in a container."""
    assert os.geteuid() == 0, "switching identity needs root, as PID 1 of a container has"
    tag = uuid.uuid4().hex[:8]
    name, extra = f"{prefix}{tag}", f"{prefix}x{tag}"
    taken = {entry.pw_uid for entry in pwd.getpwall()}
    uid = next(u for u in range(23000, 60000) if u not in taken)
    groups = ["--groups", extra] if extra_group else []
    with contextlib.ExitStack() as cleanup:
        if extra_group:
            subprocess.run(["groupadd", extra], check=True, timeout=30)
            cleanup.callback(subprocess.run, ["groupdel", extra], check=False, timeout=30)
        subprocess.run(
            ["useradd", "--no-create-home", "--home-dir", "/nonexistent-home", "--uid", str(uid),
             "--user-group", *groups, "--shell", "/bin/sh", name],
            check=True,
            timeout=30,
        )  # fmt: skip
        cleanup.callback(subprocess.run, ["userdel", name], check=False, timeout=30)
        yield pwd.getpwnam(name)
