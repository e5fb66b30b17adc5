"""The operator CLI (`dev8 status|restart|stop|start|logs|events|reload|secrets`).

End to end: the real `dev8` command (a subprocess) against a real running dev8, over TCP and a
Unix socket, with and without a token; every failure is one line on stderr and a non-zero exit.
The event stream's resume logic is also driven against a small scripted websocket server.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from quart import websocket
from quart_trio import QuartTrio
from support.dev8_harness import (
    DEV8,
    REPO_ROOT,
    Dev8Run,
    fail_after,
    open_dev8,
    python_service,
    shell_service,
    write_config,
)
from support.net import free_port

from dev8.cli import format_event, format_status
from dev8.client import (
    ApiError,
    Endpoint,
    Target,
    UsageError,
    endpoint_from_bind,
    follow_events,
    locate,
    parse_endpoint,
)
from dev8.config import TcpBind, UnixBind

TOKEN = "tok-7f3a9c1e-never-printed"
TICKER = (
    "import itertools, time\nfor i in itertools.count():\n    print('tick', i)\n    time.sleep(0.1)"
)

# ----------------------------------------------------------------------------- helpers


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without any DEV8_* variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEV8_")}
    return {**env, **(extra or {})}


async def cli(*args: str, env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    """`dev8 ARGS...` to completion: (exit code, stdout, stderr)."""
    with fail_after(30, f"dev8 {' '.join(args)}"):
        done = await trio.run_process(
            [*DEV8, *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=REPO_ROOT,
            env=cli_env(env),
            stdin=subprocess.DEVNULL,
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def assert_one_line_failure(result: tuple[int, str, str], expected: str) -> None:
    code, out, err = result
    assert code != 0, (code, out, err)
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.endswith("\n"), err
    assert "Traceback" not in err
    assert err.rstrip("\n") == expected


class Lines:
    """Lines of a running CLI's stdout as they come."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self._pending = b""
        self.seen: list[str] = []

    async def next(self, timeout: float = 15.0) -> str:
        assert self.process.stdout is not None
        with fail_after(timeout, "a line from the CLI"):
            while b"\n" not in self._pending:
                chunk = await self.process.stdout.receive_some()
                if not chunk:
                    raise AssertionError(f"the CLI's output ended; so far: {self.seen}")
                self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        self.seen.append(line.decode())
        return self.seen[-1]

    async def until(self, predicate: Callable[[str], bool], timeout: float = 15.0) -> str:
        with fail_after(timeout, "a matching line from the CLI"):
            while True:
                line = await self.next(timeout)
                if predicate(line):
                    return line

    async def stderr(self) -> str:
        assert self.process.stderr is not None
        data = b""
        while chunk := await self.process.stderr.receive_some():
            data += chunk
        return data.decode()


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.asynccontextmanager
async def cli_running(
    *args: str, env: Mapping[str, str] | None = None, sigint_ignored: bool = False
) -> AsyncIterator[Lines]:
    """A long-running `dev8 ARGS...` (events, logs -f); killed and reaped on the way out.

    ``sigint_ignored``: start it with SIGINT ignored, as a background job of a non-interactive
    shell (a CI runner) is.
    """
    process = await trio.lowlevel.open_process(
        [*DEV8, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
        env=cli_env(env),
        preexec_fn=_ignore_sigint if sigint_ignored else None,
    )
    try:
        yield Lines(process)
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    await stream.aclose()


def configure(
    path: Path,
    marker: str,
    *,
    port: int,
    bind: str | None = None,
    token_file: Path | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    services = {
        "web": python_service(TICKER, marker),
        "idle": shell_service("exec sleep 1000", marker),
        **(extra or {}),
    }
    write_config(path, services, port=port)
    data = yaml.safe_load(path.read_text())
    if bind is not None:
        data["api"]["bind"] = bind
    if token_file is not None:
        data["api"]["token_file"] = str(token_file)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


async def wait_for_pid_change(dev8: Dev8Run, name: str, old: int) -> dict[str, Any]:
    return await dev8.wait_service(
        name,
        lambda n: n["state"] == "running" and n["info"].get("pid") not in (None, old),
        what="running with a new pid",
    )


# ----------------------------------------------------------------------------- end to end


async def test_operator_commands_over_tcp(tmp_path: Path, api_port: int, marker: str) -> None:
    config = configure(tmp_path / "dev8.yaml", marker, port=api_port)
    api = f"127.0.0.1:{api_port}"
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        await dev8.wait_service("idle", lambda n: n["state"] == "running", what="running")
        web_pid = (await dev8.service_pids())["web"]

        code, out, err = await cli("status", "--api", api)
        assert (code, err) == (0, "")
        head, columns, *rows = out.splitlines()
        assert head.startswith("dev8 ")
        assert "environment e2e-env" in head
        assert columns.split() == [
            "SERVICE",
            "STATE",
            "READY",
            "PID",
            "RESTARTS",
            "LAST",
            "EXIT",
            "SINCE",
        ]
        assert [row.split()[:5] for row in rows] == [
            ["idle", "running", "yes", str((await dev8.service_pids())["idle"]), "0"],
            ["web", "running", "yes", str(web_pid), "0"],
        ]

        # The address from the environment; --json is the API's own document.
        code, out, _ = await cli("status", "--json", env={"DEV8_API": f"http://{api}"})
        assert code == 0
        assert set(json.loads(out)["services"]) == {"web", "idle"}

        # The address from the config file named by $DEV8_CONFIG.
        code, out, err = await cli("restart", "web", env={"DEV8_CONFIG": str(config)})
        assert (code, out, err) == (0, "web: running (restarts: 1)\n", "")
        node = await wait_for_pid_change(dev8, "web", web_pid)
        assert node["restarts"] == 1

        assert await cli("stop", "idle", "--config", str(config)) == (
            0,
            "idle: stopped (restarts: 0)\n",
            "",
        )
        assert (await dev8.service("idle"))["state"] == "stopped"
        code, out, _ = await cli("start", "idle", "--api", api)
        assert (code, out) == (0, "idle: running (restarts: 0)\n")
        assert (await dev8.service("idle"))["state"] == "running"

        code, out, _ = await cli("logs", "web", "-n", "3", "--api", api)
        assert code == 0
        assert [line.split()[0] for line in out.splitlines()] == ["tick"] * 3

        # -f keeps printing new lines, in order, none twice; Ctrl-C ends it quietly, even when
        # it was started with SIGINT ignored (as CI's background jobs are: it never ended then).
        follow_args = ("logs", "web", "-n", "1", "-f", "--api", api)
        async with cli_running(*follow_args, sigint_ignored=True) as follow:
            numbers = [int((await follow.next()).split()[1]) for _ in range(6)]
            assert numbers == list(range(numbers[0], numbers[0] + 6))
            follow.process.send_signal(signal.SIGINT)
            with fail_after(10, "logs -f to stop"):
                assert await follow.process.wait() == 130
            assert await follow.stderr() == ""

        # Reload: a service added to the file starts; the others are untouched.
        configure(
            config, marker, port=api_port, extra={"extra": shell_service("exec sleep 999", marker)}
        )
        code, out, _ = await cli("reload", "--api", api)
        assert code == 0
        assert out.splitlines()[:4] == [
            "added: extra",
            "removed: -",
            "changed: -",
            "unchanged: web, idle",
        ]
        assert out.splitlines()[4].startswith("reload 1 accepted: applying it (")
        await dev8.wait_service("extra", lambda n: n["state"] == "running", what="running")

        assert_one_line_failure(
            await cli("secrets", "refresh", "--api", api),
            "dev8: no secret provider is configured (HTTP 409 not_available)",
        )


async def test_every_failure_is_one_line_and_non_zero(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    closed = free_port()
    for args in (["status"], ["restart", "web"], ["events"]):
        assert_one_line_failure(
            await cli(*args, "--api", f"127.0.0.1:{closed}"),
            f"dev8: cannot reach the API at http://127.0.0.1:{closed}: connection refused",
        )
    assert_one_line_failure(
        await cli("status", env={"DEV8_API": f"unix:{tmp_path}/none.sock"}),
        f"dev8: cannot reach the API at unix:{tmp_path}/none.sock: no such file or directory",
    )
    bad = await cli("status", "--api", "ftp://x")
    assert_one_line_failure(
        bad, "dev8: bad API address 'ftp://x': expected http://HOST:PORT, HOST:PORT or unix:/PATH"
    )
    assert bad[0] == 2
    missing = await cli("status", "--config", str(tmp_path / "none.yaml"))
    assert_one_line_failure(missing, f"dev8: config error in {tmp_path}/none.yaml: file not found")
    assert missing[0] == 2

    config = configure(tmp_path / "dev8.yaml", marker, port=api_port)
    async with open_dev8(config, port=api_port, marker=marker):
        api = f"127.0.0.1:{api_port}"
        for args in (["stop", "nope"], ["logs", "nope", "-f"]):
            assert_one_line_failure(
                await cli(*args, "--api", api), "dev8: unknown service 'nope' (known: idle, web)"
            )
        # A broken config on reload is refused with the config's own message; nothing changes.
        config.write_text("services: [\n")
        code, out, err = await cli("reload", "--api", api)
        assert code == 1
        assert out == ""
        assert err.count("\n") == 1
        assert err.startswith(f"dev8: config error in {config}: invalid YAML")
        assert err.endswith("(HTTP 422 invalid_config)\n")


@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_token_and_unix_socket(
    tmp_path: Path, api_port: int, marker: str, transport: str
) -> None:
    token_file = tmp_path / "api-token"
    token_file.write_text(TOKEN + "\n")
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-token\n")
    bind = f"unix:{tmp_path}/api.sock" if transport == "unix" else f"127.0.0.1:{api_port}"
    config = configure(
        tmp_path / "dev8.yaml", marker, port=api_port, bind=bind, token_file=token_file
    )
    api = bind if transport == "unix" else f"http://{bind}"
    outputs: list[str] = []
    http = httpx.AsyncClient(
        base_url="http://localhost" if transport == "unix" else api,
        transport=httpx.AsyncHTTPTransport(uds=bind[5:]) if transport == "unix" else None,
        headers={"Authorization": f"Bearer {TOKEN}"},
    )

    async def service(name: str) -> dict[str, Any]:
        return dict((await http.get("/status")).json()["services"][name])

    async def run(*args: str, env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
        result = await cli(*args, env=env)
        outputs.extend(result[1:])
        return result

    async with http, open_dev8(config, port=api_port, marker=marker, wait_ready=False) as dev8:
        with_token = {"DEV8_API_TOKEN": TOKEN}
        with fail_after(20, "the API", dev8.tail):
            while (await cli("status", "--api", api, env=with_token))[0] != 0:  # noqa: ASYNC110
                await trio.sleep(0.1)

        # Reads need the token too; the address comes from the config's api.bind.
        code, out, _ = await run("status", "--api", api, env=with_token)
        assert code == 0
        assert "web" in out
        no_token = {"DEV8_API": api}
        code, _, err = await run("status", env=no_token)
        assert code != 0
        assert err.startswith("dev8: unauthorized: missing or wrong bearer token")
        assert_one_line_failure(
            await run("restart", "web", env=no_token),
            "dev8: unauthorized: missing or wrong bearer token "
            "(give it with --token-file or DEV8_API_TOKEN)",
        )
        assert_one_line_failure(
            await run("restart", "web", "--token-file", str(wrong), env=no_token),
            "dev8: unauthorized: missing or wrong bearer token",
        )
        assert_one_line_failure(
            await run("events", env={**no_token, "DEV8_API_TOKEN": "nope"}),
            # The stream starts from /status, which needs the token as well.
            "dev8: unauthorized: missing or wrong bearer token",
        )
        assert_one_line_failure(
            await run("restart", "web", "--token-file", str(tmp_path / "none"), env=no_token),
            f"dev8: cannot read the token file {tmp_path}/none: no such file or directory",
        )
        assert (await service("web"))["restarts"] == 0

        # The token from each of its three sources.
        assert await run("restart", "web", "--token-file", str(token_file), env=no_token) == (
            0,
            "web: running (restarts: 1)\n",
            "",
        )
        code, out, _ = await run("restart", "web", env={**no_token, "DEV8_API_TOKEN": TOKEN})
        assert (code, out) == (0, "web: running (restarts: 2)\n")
        code, out, _ = await run("stop", "idle", "--config", str(config))
        assert (code, out) == (0, "idle: stopped (restarts: 0)\n")
        assert (await service("idle"))["state"] == "stopped"
        assert (await service("web"))["restarts"] == 2

        # The event stream with the config's token, over the same transport.
        since = (await http.get("/status")).json()["lastEvent"]
        async with cli_running("events", "--since", str(since), "--config", str(config)) as events:
            await run("start", "idle", "--config", str(config))
            started = json.loads(await events.until(lambda line: "child_started" in line))
            assert started["source"] == "dev8/services/idle"
            assert started["seq"] > since
        assert all(TOKEN not in text for text in outputs)


async def test_events_follow_a_restart_and_resume_across_a_dev8_restart(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    config = configure(tmp_path / "dev8.yaml", marker, port=api_port)
    api = f"127.0.0.1:{api_port}"
    async with open_dev8(config, port=api_port, marker=marker) as first:
        await first.wait_service("idle", lambda n: n["state"] == "running", what="running")
        since = (await first.status())["lastEvent"]
        async with cli_running(
            "events", "--api", api, "--service", "web", "--since", str(since), "--retries", "4"
        ) as events:
            assert (await cli("restart", "web", "--api", api))[0] == 0
            started = json.loads(await events.until(lambda line: "child_started" in line))
            assert started["data"]["restarts"] == 1
            # Only web's events, each once, in order, from where we asked.
            seen = [json.loads(line) for line in events.seen]
            assert {e["source"] for e in seen} == {"dev8/services/web"}
            seqs = [e["seq"] for e in seen]
            assert seqs == sorted(set(seqs))
            assert seqs[0] > since

            # dev8 goes away and comes back on the same address: the stream resumes by itself,
            # announcing the new dev8 (its numbering starts again) with a resync.
            await first.signal(signal.SIGTERM)
            assert await first.wait_exit(20) == 0
            async with open_dev8(config, port=api_port, marker=marker) as second:
                line = await events.until(lambda line: '"resync"' in line, timeout=30)
                resync = json.loads(line)
                assert resync["data"]["pid"] == (await second.status())["pid"]
                assert (await cli("restart", "web", "--api", api))[0] == 0
                # (The new dev8's own first starts may follow the resync: the restart is web's.)
                again = json.loads(
                    await events.until(lambda line: "child_started" in line and _is_restart(line))
                )
                assert again["data"]["restarts"] == 1
                assert again["seq"] > resync["seq"]
            # And once it is gone for good, the CLI gives up with one line.
            with fail_after(30, "dev8 events to give up"):
                assert await events.process.wait() == 1
            err = await events.stderr()
            assert err.startswith(f"dev8: lost the event stream at http://{api}: ")
            assert err.endswith("(gave up after 4 retries)\n")
            assert err.count("\n") == 1


# ----------------------------------------------------------------------------- resume logic


class FakeEvents:
    """A scripted /status + /events server: each websocket connection plays the next script."""

    def __init__(self) -> None:
        self.started = "life-1"
        self.last_event = 0
        self.sinces: list[str | None] = []
        self.auth: list[str | None] = []
        self.scripts: list[Callable[[], Awaitable[None]]] = []
        app = QuartTrio("fake-events")

        @app.get("/status")
        async def status() -> dict[str, Any]:
            return {"bootId": self.started, "lastEvent": self.last_event, "services": {}}

        @app.websocket("/events")
        async def events() -> None:
            self.sinces.append(websocket.args.get("since"))
            self.auth.append(websocket.headers.get("Authorization"))
            script = self.scripts.pop(0) if self.scripts else None
            if script is not None:
                await script()
            else:
                await trio.sleep_forever()

        self.app = app


async def send(*seqs: int, kind: str = "child_started") -> None:
    await websocket.accept()
    for seq in seqs:
        event = {
            "seq": seq,
            "time": "2026-01-01T00:00:00+00:00",
            "kind": kind,
            "source": "s",
            "data": {},
        }
        await websocket.send(json.dumps(event))


def play(*seqs: int, close: int) -> Callable[[], Awaitable[None]]:
    async def script() -> None:
        await send(*seqs)
        await websocket.close(close, "scripted")

    return script


@contextlib.asynccontextmanager
async def serving(fake: FakeEvents) -> AsyncIterator[tuple[Endpoint, trio.CancelScope]]:
    """Serve `fake` on loopback; cancelling the scope stops the server (its port then refuses)."""
    port = free_port()
    config = HypercornConfig()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = config.errorlog = None
    config.graceful_timeout = 0.1
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def run(*, task_status: trio.TaskStatus[Any]) -> None:
            with scope:
                await serve(fake.app, config, task_status=task_status)

        await nursery.start(run)
        yield Endpoint(f"http://127.0.0.1:{port}"), scope
        scope.cancel()


async def collect(
    target: Target, received: list[dict[str, Any]], until: int, **options: Any
) -> None:
    """Follow until `until` events arrived."""
    with trio.CancelScope() as scope:

        def emit(event: dict[str, Any]) -> None:
            received.append(event)
            if len(received) >= until:
                scope.cancel()

        await follow_events(target, emit, **options)


async def test_resume_after_server_closes_loses_and_repeats_nothing() -> None:
    fake = FakeEvents()
    fake.last_event = 4
    fake.scripts = [
        play(5, 6, close=1011),  # a crash of the server side: resume after 6
        play(7, close=4001),  # told we lagged: resume at once after 7
        play(8, 9, close=1001),  # going away
        play(10, close=1000),
    ]
    received: list[dict[str, Any]] = []
    async with serving(fake) as (endpoint, _):
        with fail_after(10, "the events"):
            await collect(Target(endpoint, TOKEN), received, until=6, retry_delays=(0.01,) * 3)
    assert [e["seq"] for e in received] == [5, 6, 7, 8, 9, 10]
    assert fake.sinces == ["4", "6", "7", "9"]
    assert fake.auth == [f"Bearer {TOKEN}"] * 4


async def test_lagged_reconnects_without_waiting() -> None:
    fake = FakeEvents()
    fake.scripts = [play(1, close=4001), play(2, close=1000)]
    received: list[dict[str, Any]] = []
    async with serving(fake) as (endpoint, _):
        with fail_after(10, "a reconnection that does not wait out the 100 s delay"):
            await collect(Target(endpoint), received, until=2, retry_delays=(100.0,))
    assert fake.sinces == ["0", "1"]


async def test_a_restarted_server_is_announced_with_a_resync() -> None:
    fake = FakeEvents()
    fake.last_event = 40

    async def then_restart() -> None:
        await send(41)
        fake.started, fake.last_event = "life-2", 3  # numbering starts again
        await websocket.close(1001, "shutting down")

    async def server_resync() -> None:
        await websocket.accept()
        await websocket.send(json.dumps({"kind": "resync", "seq": 7, "data": {}}))
        await send(8)
        await websocket.close(1011)

    fake.scripts = [then_restart, play(4, close=1011), server_resync]
    received: list[dict[str, Any]] = []
    async with serving(fake) as (endpoint, _):
        with fail_after(10, "the events"):
            await collect(Target(endpoint), received, until=5, retry_delays=(0.01,) * 3)
    assert [(e["kind"], e["seq"]) for e in received] == [
        ("child_started", 41),
        ("resync", 3),
        ("child_started", 4),
        ("resync", 7),
        ("child_started", 8),
    ]
    assert received[1]["data"]["bootId"] == "life-2"
    assert received[1]["bootId"] == "life-2"
    assert fake.sinces == ["40", "3", "4"]


async def test_gives_up_after_the_retries_with_one_line() -> None:
    fake = FakeEvents()
    fake.scripts = [play(1, close=1011)]
    received: list[dict[str, Any]] = []
    async with serving(fake) as (endpoint, server):

        def emit(event: dict[str, Any]) -> None:
            received.append(event)
            server.cancel()  # the server goes away after the first event

        with pytest.raises(ApiError) as caught, fail_after(10, "giving up"):
            await follow_events(Target(endpoint), emit, retry_delays=(0.01, 0.02))
    assert str(caught.value) == (
        f"lost the event stream at {endpoint}: connection refused (gave up after 2 retries)"
    )
    assert [e["seq"] for e in received] == [1]


async def test_a_refused_stream_is_not_retried() -> None:
    fake = FakeEvents()

    async def refuse() -> None:
        await websocket.close(1008, "missing or wrong bearer token")

    fake.scripts = [refuse, play(1, close=1000)]
    async with serving(fake) as (endpoint, _):
        with pytest.raises(ApiError, match=r"^unauthorized: the event stream refused"):
            await follow_events(Target(endpoint), lambda e: None, retry_delays=(0.01,))
    assert len(fake.sinces) == 1


# ----------------------------------------------------------------------------- finding the API


def test_the_address_comes_from_option_then_env_then_config_then_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.yaml"
    token_file = tmp_path / "t"
    token_file.write_text(f"  {TOKEN}\n")
    write_config(config, {"s": {"command": ["true"]}}, port=9)
    data = yaml.safe_load(config.read_text())
    data["api"] = {"bind": "0.0.0.0:7001", "token_file": "t"}
    config.write_text(yaml.safe_dump(data))
    env = {"DEV8_API": "unix:/run/dev8.sock", "DEV8_CONFIG": str(config)}

    assert locate(api="h:1", environ=env).endpoint == Endpoint("http://h:1")
    assert locate(environ=env).endpoint == Endpoint("http://localhost", uds="/run/dev8.sock")
    # From the config: a wildcard bind is dialled on loopback; its relative token file is read.
    # DEV8_API_TOKEN is the CLI's, not a config override, even when empty.
    from_config = locate(environ={"DEV8_CONFIG": str(config), "DEV8_API": "", "DEV8_API_TOKEN": ""})
    assert from_config.endpoint == Endpoint("http://127.0.0.1:7001")
    assert from_config.token == TOKEN
    assert TOKEN not in repr(from_config)
    # /etc/dev8/supervisor.yaml when readable, else the default address.
    monkeypatch.setattr("dev8.client.discovery.DEFAULT_CONFIG_PATH", str(config))
    assert locate(environ={}).endpoint == Endpoint("http://127.0.0.1:7001")
    monkeypatch.setattr("dev8.client.discovery.DEFAULT_CONFIG_PATH", str(tmp_path / "absent.yaml"))
    assert locate(environ={}) == Target(Endpoint("http://127.0.0.1:9000"))
    # The token: option, then environment, then config.
    other = tmp_path / "other"
    other.write_text("from-file")
    assert locate(token_file=str(other), config=str(config), environ={}).token == "from-file"
    assert locate(config=str(config), environ={"DEV8_API_TOKEN": "env"}).token == "env"
    # A config token file the operator cannot read is no error until a change is refused.
    token_file.unlink()
    unreadable = locate(config=str(config), environ={})
    assert unreadable.token is None
    assert (
        unreadable.token_note
        == f"cannot read the token file {token_file}: no such file or directory"
    )
    with pytest.raises(UsageError, match="cannot read the token file"):
        locate(token_file=str(token_file), environ={})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9000", Endpoint("http://127.0.0.1:9000")),
        ("http://[::1]:9000", Endpoint("http://[::1]:9000")),
        ("unix:/run/dev8/api.sock", Endpoint("http://localhost", uds="/run/dev8/api.sock")),
    ],
)
def test_parse_endpoint(text: str, expected: Endpoint) -> None:
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize("text", ["localhost", "http://h:99999", "unix:relative", "https://h:1"])
def test_parse_endpoint_refuses(text: str) -> None:
    with pytest.raises(UsageError, match="bad API address"):
        parse_endpoint(text)


def test_endpoint_from_bind() -> None:
    assert endpoint_from_bind(TcpBind("::", 9000)) == Endpoint("http://[::1]:9000")
    assert endpoint_from_bind(TcpBind("10.1.2.3", 9)) == Endpoint("http://10.1.2.3:9")
    assert endpoint_from_bind(UnixBind("/s")) == Endpoint("http://localhost", uds="/s")


# ----------------------------------------------------------------------------- output


def test_status_table_and_pretty_events() -> None:
    status = {
        "version": "1.2.3",
        "pid": 1,
        "uptime": "1h2m3s",
        "environmentId": "env",
        "userId": "user",
        "lastEvent": 9,
        "services": {
            "web": {
                "state": "backoff",
                "ready": False,
                "pid": None,
                "restarts": 3,
                "lastExit": {
                    "reason": "error",
                    "details": {"signal": "SIGKILL", "exitCode": None},
                },
                "since": "2026-01-01T00:00:00+00:00",
            },
            "db": {
                "state": "running",
                "ready": True,
                "pid": 42,
                "restarts": 0,
                "lastExit": {"reason": "error", "details": {"signal": None, "exitCode": 3}},
                "since": "2026-01-01T00:59:00+00:00",
            },
        },
    }
    now = 1767229200.0  # 2026-01-01T01:00:00Z
    assert format_status(status, now=now).splitlines() == [
        "dev8 1.2.3  pid 1  up 1h2m3s  environment env  user user  last event 9",
        "SERVICE  STATE    READY  PID  RESTARTS  LAST EXIT       SINCE",
        "db       running  yes    42   0         exit 3          1m0s ago",
        "web      backoff  no     -    3         signal SIGKILL  1h0m0s ago",
    ]
    line = format_event(
        {
            "seq": 5,
            "time": "2026-01-01T00:00:00+00:00",
            "kind": "child_exited",
            "source": "dev8/services/web",
            "data": {"child": "web", "reason": "error", "error": None, "details": {"exitCode": 1}},
        }
    )
    assert line.split(" ", 1)[1] == (
        '#5 child_exited dev8/services/web reason=error details={"exitCode":1}'
    )


def _is_restart(line: str) -> bool:
    """An event line about web's process actor that is not its first start."""
    event = json.loads(line)
    return bool(event["source"] == "dev8/services/web" and event["data"]["restarts"] > 0)
