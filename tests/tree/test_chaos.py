"""Chaos: the real dev8, as PID 1 of its own PID and mount namespace, under seeded random faults.

Each round injects one fault through the chaos API (or the fake Key Vault's switches, or the disk),
waits for the workspace to recover, and checks the invariants (see ``ChaosRun.check``). The fault
sequence is a function of the seed alone: faults are paced against the tree's restart intensities
by *rounds* (every round lasts at least ``MIN_ROUND`` seconds), never by wall time, so a failure
reproduces from the printed seed. ``CHAOS_SEED`` and ``CHAOS_ROUNDS`` override the defaults;
``benchmarks/chaos_long.py`` runs the same thing for 1,000 rounds and more.

Also here: the chaos endpoints and CLI on their own (``dev8/chaos.py``, ``dev8/api/_chaos.py``).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import math
import os
import random
import secrets
import signal
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path

import attrs
import httpx
import pytest
import trio
import yaml
from support.dev8_harness import (
    NO_BACKOFF,
    UNSHARE_PID1,
    Dev8Run,
    Json,
    kill_marked,
    open_dev8,
    pid_alive,
    proc_state,
    python_service,
    run_cli,
    shell_service,
    wait_until,
    write_config,
)
from support.keyvault_fake import AZURE_ENV, FakeKeyVault, make_tls, open_fake_imds, open_fake_vault
from support.net import free_port
from support.procs import descendants, open_fds
from support.tree import walk
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from dev8 import chaos

#: Every round lasts at least this long: restart intensities (per seconds) become per rounds.
MIN_ROUND = 0.5
#: A fault must be repaired within this (the longest backoff in play is about 2 s).
RECOVERY_BOUND = 20.0
#: dev8's open fds may exceed the warm-up baseline by this much between rounds (sockets closing).
FD_SLACK = 48
#: Restart intensities of the tree, as dev8 sets them: (max restarts, window in seconds).
SUPERVISOR_LIMITS: Mapping[str, tuple[int, float]] = {
    "dev8": (10, 60.0),  # the root (dev8/tree.py)
    "dev8/services": (1000, 60.0),  # supervisor.intensity in the config below
}
DEFAULT_SUPERVISOR_LIMIT = (3, 5.0)  # actors.Intensity(): dev8/health and any newer supervisor
CHILD_LIMITS: Mapping[str, tuple[int, float]] = {"dev8/secrets": (5, 600.0)}  # secrets/runtime.py
FAULT_WEIGHTS: Mapping[str, int] = {
    "kill": 3,
    "stop_cont": 2,
    "crash": 4,
    "secret_fail": 1,
    "secret_hang": 1,
    "disk_full": 1,
    "api_burst": 2,
}
WEB = """\
import http.server, sys
class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Ok).serve_forever()
"""
# Short-lived children all the time, and an orphan (for dev8 to reap) every loop.
WORKER = "trap 'exit 0' TERM; while :; do (sleep 0.3 &); sleep 0.1 & wait $!; done"


# ----------------------------------------------------------------------------- /proc


def ns_pgid(pid: int) -> int | None:
    """The process group of host ``pid`` as its own PID namespace numbers it."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpgid:"):
                return int(line.split()[-1])
    except OSError:
        return None
    return None


@contextlib.contextmanager
def patched_environ(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, with None, remove) environment variables for the child dev8; restore them after."""
    saved = {key: os.environ.get(key) for key in values}
    try:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.asynccontextmanager
async def _sole_error() -> AsyncIterator[None]:
    """A nursery's group of one error becomes that error (ConnectionClosed, HandshakeError)."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


@contextlib.asynccontextmanager
async def websocket(
    port: int, resource: str, token: str, *, max_message_size: int = 1 << 20
) -> AsyncIterator[WebSocketConnection]:
    """A websocket client that owns its TCP stream: closed on every path (a refused handshake
    included, which trio-websocket's ``open_websocket_url`` may leave open)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        async with _sole_error(), trio.open_nursery() as nursery:
            ws = await wrap_client_stream(
                nursery,
                stream,
                "127.0.0.1",
                resource,
                extra_headers=[(b"authorization", f"Bearer {token}".encode())],
                max_message_size=max_message_size,
            )
            try:
                yield ws
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        await stream.aclose()


# ----------------------------------------------------------------------------- the event follower


class Follower:
    """A websocket subscriber that keeps up: every sequence number must follow the previous one.

    It reconnects with ``since=`` whenever the stream breaks (the API actor crashed, or it was
    told it lagged), so across a whole run it must see every event exactly once, in order.
    """

    def __init__(self, port: int, token: str, canaries: list[str], report: Callable[[str], None]):
        self.port = port
        self.token = token
        self.canaries = canaries
        self.report = report
        self.last_seq = 0
        self.seen = 0
        self.reconnects = 0
        self.lagged = 0
        self.events: list[Json] = []  # child_exited / restart_scheduled / child_gave_up
        self._moved = trio.Event()

    async def run(self) -> None:
        while True:
            resource = f"/events?since={self.last_seq}"
            try:
                async with websocket(self.port, resource, self.token) as ws:
                    while True:
                        self._take(await ws.get_message())
            except ConnectionClosed as closed:
                if closed.reason is not None and closed.reason.code == 4001:
                    self.lagged += 1
            except (HandshakeError, OSError):
                pass
            self.reconnects += 1
            await trio.sleep(0.05)

    def _take(self, message: str | bytes) -> None:
        text = message if isinstance(message, str) else message.decode()
        for canary in self.canaries:
            if canary in text:
                self.report(f"a secret value appeared in the event stream: {text[:120]}...")
        body = json.loads(text)
        for event in body if isinstance(body, list) else [body]:  # an array when behind
            if event["kind"] == "resync":
                self.report(f"events were lost: resync at {event['seq']} after {self.last_seq}")
                self.last_seq = event["seq"]
                continue
            if event["seq"] != self.last_seq + 1:
                self.report(f"event stream gap: {self.last_seq} then {event['seq']}")
            self.last_seq = event["seq"]
            self.seen += 1
            if event["kind"] in ("child_exited", "restart_scheduled", "child_gave_up"):
                self.events.append(event)
        self._moved.set()
        self._moved = trio.Event()

    async def wait_seq(self, seq: int, timeout: float) -> bool:
        with trio.move_on_after(timeout):
            while self.last_seq < seq:
                await self._moved.wait()
            return True
        return False


# ----------------------------------------------------------------------------- the run


@attrs.define
class ChaosReport:
    seed: int
    rounds: int
    faults: collections.Counter[str] = attrs.field(factory=collections.Counter)
    targets: collections.Counter[str] = attrs.field(factory=collections.Counter)
    violations: list[str] = attrs.field(factory=list)
    recovery: dict[str, float] = attrs.field(factory=dict)  # worst per fault kind
    recovery_total: dict[str, float] = attrs.field(factory=dict)
    duration: float = 0.0
    events_seen: int = 0
    reconnects: int = 0
    lagged: int = 0
    fd_baseline: int = 0
    fd_max: int = 0
    fd_end: int = 0
    exit_code: int | None = None
    requests: int = 0

    @property
    def worst_recovery(self) -> float:
        return max(self.recovery.values(), default=0.0)

    def summary(self) -> str:
        kinds = ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items()))
        return (
            f"chaos seed={self.seed} rounds={self.rounds} faults: {kinds}; "
            f"violations={len(self.violations)} worst recovery={self.worst_recovery:.3f}s "
            f"events={self.events_seen} reconnects={self.reconnects} "
            f"fds {self.fd_baseline}->{self.fd_max} (end {self.fd_end}) exit={self.exit_code} "
            f"in {self.duration:.1f}s"
        )


@attrs.define
class SecretSet:
    """The values in the fake vault, and what the files must hold."""

    user: str
    github: str
    copilot: str
    env_value: str
    private_key: str
    public_key: str

    def names(self) -> dict[str, str]:
        return {
            f"github-token-{self.user}": self.github,
            f"copilot-token-{self.user}": self.copilot,
            f"ssh-private-key-{self.user}": self.private_key,
            f"ssh-public-key-{self.user}": self.public_key,
            f"custom-env-vars-{self.user}": json.dumps({"CHAOS_VAR": self.env_value}),
        }

    def canaries(self) -> list[str]:
        lines = [line for line in self.private_key.splitlines() if len(line) >= 16]
        return [self.github, self.copilot, self.env_value, *[x for x in lines if "-----" not in x]]


def new_token(rng: random.Random, prefix: str) -> str:
    return prefix + "".join(
        rng.choices("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789", k=32)
    )


class ChaosRun:
    """One dev8 under chaos. Use :func:`run_chaos`."""

    def __init__(
        self,
        *,
        seed: int,
        rounds: int,
        dev8: Dev8Run,
        host_pid: int,
        http: httpx.AsyncClient,
        vault: FakeKeyVault,
        workspace: Path,
        token: str,
        values: SecretSet,
        progress: Callable[[str], None] | None,
    ) -> None:
        self.rng = random.Random(seed)
        self.report = ChaosReport(seed=seed, rounds=rounds)
        self.dev8 = dev8
        self.host_pid = host_pid
        self.http = http
        self.vault = vault
        self.home = Path(f"/proc/{host_pid}/root") / workspace.relative_to("/")
        self.token = token
        self.values = values
        self.canaries = [*values.canaries(), token]
        self.progress = progress
        self.round = 0
        self.fault = "setup"
        self.expected: dict[str, int] = {}
        self.charges: list[tuple[int, str]] = []
        self.follower = Follower(dev8.port, token, self.canaries, self.violation)

    # -- reporting -------------------------------------------------------------------------

    def violation(self, what: str) -> None:
        self.report.violations.append(f"round {self.round} ({self.fault}): {what}")

    def scan(self, where: str, text: str) -> None:
        for canary in self.canaries:
            if canary in text:
                self.violation(f"a secret value appeared in {where}")

    # -- API -------------------------------------------------------------------------------

    async def get(self, path: str, *, timeout: float = RECOVERY_BOUND) -> httpx.Response:
        """GET, riding out a restart of the API actor (connection errors) up to ``timeout``."""
        with trio.fail_after(timeout):
            while True:
                try:
                    response = await self.http.get(path)
                except httpx.TransportError:
                    await trio.sleep(0.05)
                    continue
                self.report.requests += 1
                self.scan(f"GET {path}", response.text)
                if response.status_code >= 500 and path != "/health":
                    self.violation(f"GET {path} answered {response.status_code}")
                return response

    async def post(self, path: str, **params: str) -> httpx.Response:
        response = await self.http.post(path, params=params)
        self.report.requests += 1
        self.scan(f"POST {path}", response.text)
        # A refresh whose vault failed is a 503 naming the failures (docs/secrets.md); any
        # other 5xx is a violation.
        expected_503 = path == "/secrets/refresh" and response.status_code == 503
        if response.status_code >= 500 and not expected_503:
            self.violation(f"POST {path} answered {response.status_code}: {response.text[:200]}")
        return response

    async def status(self) -> Json:
        body: Json = (await self.get("/status")).json()
        return body

    # -- the round loop --------------------------------------------------------------------

    async def run(self) -> ChaosReport:
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.follower.run)
            await self.settle("setup")
            tree = (await self.status())["tree"]
            self.expected = {node["path"]: node["restarts"] for node in walk(tree)}
            self.report.fd_baseline = self.report.fd_max = open_fds(self.host_pid)
            await self.check()
            for number in range(1, self.report.rounds + 1):
                self.round = number
                began = trio.current_time()
                await self.one_round()
                await trio.sleep_until(began + MIN_ROUND)
                if self.progress and self.round % 50 == 0:
                    self.report.events_seen = self.follower.seen
                    self.report.reconnects = self.follower.reconnects
                    self.progress(self.report.summary())
            self.fault = "end"
            await self.finish()
            nursery.cancel_scope.cancel()
        self.report.events_seen = self.follower.seen
        self.report.reconnects = self.follower.reconnects
        self.report.lagged = self.follower.lagged
        self.report.duration = trio.current_time() - started
        return self.report

    async def one_round(self) -> None:
        status = await self.status()
        kind, target = self.pick(status)
        self.fault = f"{kind} {target}" if target else kind
        self.report.faults[kind] += 1
        if target:
            self.report.targets[f"{kind} {target}"] += 1
        await getattr(self, f"fault_{kind}")(target)
        took = await self.settle(kind)  # from the end of the fault (a burst, a hang) on
        self.report.recovery[kind] = max(self.report.recovery.get(kind, 0.0), took)
        self.report.recovery_total[kind] = self.report.recovery_total.get(kind, 0.0) + took
        await self.check()

    def pick(self, status: Json) -> tuple[str, str]:
        """A fault and its target, from the seed and the rounds' history only."""
        nodes = sorted(node["path"] for node in walk(status["tree"]))[1:]  # not the root
        services = sorted(status["services"])
        kinds = sorted(FAULT_WEIGHTS)
        while True:
            kind = self.rng.choices(kinds, [FAULT_WEIGHTS[k] for k in kinds])[0]
            if kind in ("kill", "stop_cont"):
                target = self.rng.choice(services)
            elif kind == "crash":
                target = self.rng.choice(nodes)
            else:
                return kind, ""
            path = f"dev8/services/{target}" if kind != "crash" else target
            if kind == "stop_cont" or self.within_budget(path):
                if kind != "stop_cont":
                    self.charge(path)
                return kind, target

    def _charged_keys(self, path: str) -> list[tuple[str, tuple[int, float]]]:
        parent = path.rpartition("/")[0]
        keys = [(parent, SUPERVISOR_LIMITS.get(parent, DEFAULT_SUPERVISOR_LIMIT))]
        if path in CHILD_LIMITS:
            keys.append((path, CHILD_LIMITS[path]))
        return keys

    def within_budget(self, path: str) -> bool:
        """At most half of an intensity in any window, the window counted in rounds."""
        for key, (limit, window) in self._charged_keys(path):
            span = math.ceil(window / MIN_ROUND) + 1
            recent = sum(1 for r, k in self.charges if k == key and r > self.round - span)
            if recent + 1 > max(1, limit // 2):
                return False
        return True

    def charge(self, path: str) -> None:
        for key, _ in self._charged_keys(path):
            self.charges.append((self.round, key))

    # -- faults ----------------------------------------------------------------------------

    async def fault_kill(self, service: str) -> None:
        response = await self.post(f"/chaos/services/{service}/signal", signal="KILL")
        if response.status_code != 200:
            self.violation(f"kill answered {response.status_code}: {response.text[:200]}")
            return
        self.expected[f"dev8/services/{service}"] += 1
        await self.check_health_truthful()

    async def fault_stop_cont(self, service: str) -> None:
        response = await self.post(f"/chaos/services/{service}/signal", signal="STOP")
        if response.status_code != 200:
            self.violation(f"STOP answered {response.status_code}: {response.text[:200]}")
            return
        await trio.sleep(self.rng.uniform(0.05, 0.6))
        await self.check_health_truthful()
        response = await self.post(f"/chaos/services/{service}/signal", signal="CONT")
        if response.status_code != 200:
            self.violation(f"CONT answered {response.status_code}: {response.text[:200]}")

    async def fault_crash(self, path: str) -> None:
        response = await self.post(f"/chaos/actors/{path}/crash")
        if response.status_code not in (200, 202):
            self.violation(f"crash answered {response.status_code}: {response.text[:200]}")
            return
        self.expected[path] += 1

    async def refresh(self) -> Json:
        with trio.fail_after(70):
            response = await self.post("/secrets/refresh")
        if response.status_code in (409, 503):  # a failed pass: the reply is in the error
            error: Json = response.json()["error"]
            return error
        if response.status_code != 200:
            self.violation(f"refresh answered {response.status_code}: {response.text[:200]}")
            return {}
        body: Json = response.json()
        return body

    def rotate(self) -> str:
        """A new GitHub token in the vault (not yet in the files)."""
        token = new_token(self.rng, "ghp_chaos")
        self.canaries.append(token)
        self.vault.set_secret(f"github-token-{self.values.user}", token)
        return token

    async def _failed_refresh_keeps_files(self, what: str) -> None:
        result = await self.refresh()
        if result.get("ok") is not False:
            self.violation(f"a refresh with {what} did not report a failure: {result}")
        self.check_files()

    async def fault_secret_fail(self, _target: str) -> None:
        token = self.rotate()
        self.vault.fail(self.rng.choice([500, 503, 429, 403, 401]))
        await self._failed_refresh_keeps_files("a failing vault")
        self.vault.heal()
        await self._refresh_to(token)

    async def fault_secret_hang(self, _target: str) -> None:
        token = self.rotate()
        self.vault.hang()
        await self._failed_refresh_keeps_files("a hanging vault")
        self.vault.heal()
        await self._refresh_to(token)

    async def fault_disk_full(self, _target: str) -> None:
        filler = self.home / ".chaos-filler"
        await trio.to_thread.run_sync(fill_disk, filler)
        token = self.rotate()
        await self._failed_refresh_keeps_files("a full disk")
        filler.unlink()
        await self._refresh_to(token)

    async def _refresh_to(self, token: str) -> None:
        result = await self.refresh()
        if result.get("ok") is not True:
            self.violation(f"the refresh after healing failed: {result}")
            return
        self.values.github = token

    async def fault_api_burst(self, _target: str) -> None:
        requests = self.rng.randint(20, 60)
        sockets = self.rng.randint(5, 30)
        last = self.follower.last_seq
        limits = httpx.Limits(max_connections=requests, max_keepalive_connections=0)
        headers = {"Authorization": f"Bearer {self.token}"}
        base = str(self.http.base_url)
        async with (
            httpx.AsyncClient(base_url=base, limits=limits, headers=headers, timeout=15) as client,
            trio.open_nursery() as nursery,
        ):
            for index in range(requests):
                nursery.start_soon(self._one_request, client, index)
            for _ in range(sockets):
                nursery.start_soon(self._one_subscriber, max(0, last - self.rng.randint(0, 50)))

    async def _one_request(self, client: httpx.AsyncClient, index: int) -> None:
        choices: list[tuple[str, str, bytes | None, set[int]]] = [
            ("GET", "/status", None, {200}),
            ("GET", "/health", None, {200, 503}),
            ("GET", "/ready", None, {200, 503}),
            ("GET", "/metrics", None, {200}),
            ("GET", "/connections", None, {200}),
            ("GET", "/openapi.json", None, {200}),
            ("GET", "/services/web/logs?lines=50", None, {200}),
            ("GET", "/no/such/route", None, {404}),
            ("DELETE", "/status", None, {405}),
            ("POST", "/services/nope/restart", None, {404}),
            ("POST", "/services/web/restart", b"[1, 2]", {400}),
            ("POST", "/services/nope/stop", b"x" * 300_000, {413}),
            ("GET", "/status?pad=" + "a" * 30_000, None, {200, 400, 414, 431}),
        ]
        method, path, body, accepted = choices[index % len(choices)]
        try:
            with trio.fail_after(15):
                typed = {"Content-Type": "application/json"} if body is not None else None
                response = await client.request(method, path, content=body, headers=typed)
        except trio.TooSlowError:
            self.violation(f"{method} {path[:40]} did not answer within 15 s")
            return
        except httpx.TransportError as error:
            if path.startswith("/status?pad="):  # the server may close on an oversized head
                return
            self.violation(f"{method} {path[:40]} failed: {type(error).__name__}: {error}")
            return
        self.report.requests += 1
        self.scan(f"{method} {path[:40]}", response.text)
        if response.status_code not in accepted:
            self.violation(f"{method} {path[:40]} answered {response.status_code}")

    async def _one_subscriber(self, since: int) -> None:
        try:
            with trio.fail_after(15):
                async with websocket(self.dev8.port, f"/events?since={since}", self.token) as ws:
                    with trio.move_on_after(self.rng.uniform(0.0, 0.5)):
                        for _ in range(self.rng.randint(0, 20)):
                            text = await ws.get_message()
                            self.scan("a websocket burst", str(text))
        except trio.TooSlowError:
            self.violation("a websocket subscriber hung")
        except (HandshakeError, ConnectionClosed, OSError) as error:
            self.violation(f"a websocket subscriber failed: {type(error).__name__}")

    # -- recovery and invariants -----------------------------------------------------------

    async def settle(self, kind: str) -> float:
        """Wait until every actor runs, restart counts match the faults, and /health is 200."""
        began = trio.current_time()
        bound = RECOVERY_BOUND + (30.0 if kind == "setup" else 0.0)
        mismatch = ""
        with trio.move_on_at(began + bound):
            while True:
                status = await self.status()
                nodes = list(walk(status["tree"]))
                down = [f"{n['path']}={n['state']}" for n in nodes if n["state"] != "running"]
                counts = {
                    n["path"]: (n["restarts"], self.expected.get(n["path"], 0))
                    for n in nodes
                    if self.expected and n["restarts"] != self.expected.get(n["path"], 0)
                }
                health = await self.get("/health")
                if not down and not counts and health.status_code == 200:
                    return trio.current_time() - began
                mismatch = (
                    f"down: {down}; restarts (seen, expected): {counts}; "
                    f"/health {health.status_code}"
                )
                await trio.sleep(0.05)
        self.violation(f"not recovered within {bound:.0f} s: {mismatch}")
        status = await self.status()
        self.expected = {n["path"]: n["restarts"] for n in walk(status["tree"])}  # go on from here
        return trio.current_time() - began

    async def check(self) -> None:
        if self.dev8.process.returncode is not None:
            raise AssertionError(f"dev8 exited with {self.dev8.services.process.returncode}")
        status = await self.status()
        if status["pid"] != 1:
            self.violation(f"dev8 is not PID 1 of its namespace: {status['pid']}")
        await self.check_processes(status)
        fds = open_fds(self.host_pid)
        self.report.fd_max = max(self.report.fd_max, fds)
        if fds > self.report.fd_baseline + FD_SLACK:
            self.violation(f"dev8 holds {fds} fds (baseline {self.report.fd_baseline})")
        self.check_files()
        await self.check_health_truthful()
        if not await self.follower.wait_seq(status["lastEvent"], 5.0):
            self.violation(
                f"the subscriber is at {self.follower.last_seq}, dev8 at {status['lastEvent']}"
            )

    async def check_processes(self, status: Json) -> None:
        """No zombie stays; every process belongs to the process group of a running service."""
        groups = {s["pid"] for s in status["services"].values() if s["pid"] is not None}
        problem = ""
        with trio.move_on_after(5.0):
            while True:
                procs = descendants(self.host_pid)
                zombies = [pid for pid, state in procs.items() if state == "Z"]
                strays = [
                    pid for pid, state in procs.items()
                    if state != "Z" and ns_pgid(pid) not in groups and pid_alive(pid)
                ]  # fmt: skip
                if not zombies and not strays:
                    return
                problem = f"zombies {zombies}, processes outside the services' groups {strays}"
                await trio.sleep(0.05)
        self.violation(problem)

    def check_files(self) -> None:
        """Every managed file complete, with its mode; no temporary file left behind."""
        home, values = self.home, self.values
        modes = {
            ".git-credentials": 0o600,
            ".gitconfig": 0o600,
            ".config/gh/hosts.yml": 0o600,
            ".config/github-copilot/hosts.json": 0o600,
            ".ssh/id_ed25519": 0o600,
            ".ssh/id_ed25519.pub": 0o644,
            ".ssh/authorized_keys": 0o600,
            ".config/dev8/secrets.env": 0o600,
            ".ssh": 0o700,
            ".config/gh": 0o700,
            ".config/github-copilot": 0o700,
            ".config/dev8": 0o700,
        }
        try:
            for name, mode in modes.items():
                info = (home / name).lstat()
                if stat.S_IMODE(info.st_mode) != mode or info.st_uid != os.geteuid():
                    self.violation(f"{name}: mode {stat.S_IMODE(info.st_mode):o} uid {info.st_uid}")
            credentials = (home / ".git-credentials").read_text().splitlines()
            if f"https://x-access-token:{values.github}@github.com" not in credentials:
                self.violation(".git-credentials does not hold the current token")
            hosts = yaml.safe_load((home / ".config/gh/hosts.yml").read_text())
            if hosts["github.com"]["oauth_token"] != values.github:
                self.violation("gh's hosts.yml does not hold the current token")
            copilot = json.loads((home / ".config/github-copilot/hosts.json").read_text())
            if copilot["github.com"]["oauth_token"] != values.copilot:
                self.violation("copilot's hosts.json does not hold the token")
            if (home / ".ssh/id_ed25519").read_text().strip() != values.private_key.strip():
                self.violation("the private key file is not the key")
            if (home / ".ssh/id_ed25519.pub").read_text().strip() != values.public_key.strip():
                self.violation("the public key file is not the key")
            if values.env_value not in (home / ".config/dev8/secrets.env").read_text():
                self.violation("secrets.env does not hold the custom variable")
            leftovers = [
                str(path.relative_to(home))
                for directory in (home, home / ".ssh", home / ".config/gh", home / ".config/dev8")
                for path in directory.iterdir()
                if path.name.startswith(".dev8-tmp")
            ]
            if leftovers:
                self.violation(f"temporary files left: {leftovers}")
        except (OSError, ValueError, KeyError, TypeError) as error:
            self.violation(
                f"managed files unreadable or incomplete: {type(error).__name__}: {error}"
            )

    async def check_health_truthful(self) -> None:
        """/health agrees with itself and with /status, read right after it."""
        health = await self.get("/health")
        body = health.json()
        status = await self.status()
        states = body["services"]
        if health.status_code != (200 if body["healthy"] else 503):
            self.violation(f"/health said healthy={body['healthy']} with {health.status_code}")
        if body["healthy"] and any(state != "running" for state in states.values()):
            self.violation(f"/health healthy with services {states}")
        if set(states) != set(status["services"]):
            self.violation(f"/health lists {sorted(states)}, /status {sorted(status['services'])}")
        still_unhealthy = not status["services"] or any(
            not s["ready"] for s in status["services"].values()
        )
        if not body["healthy"] and not still_unhealthy:
            # It may have recovered in between: ask again, it must say so now.
            again = await self.get("/health")
            if again.status_code != 200:
                self.violation(f"/health 503 while /status shows every service ready: {states}")

    async def finish(self) -> None:
        """Everything released: fds back to the baseline, metrics clean, clean shutdown."""
        await self.check()
        self.scan("/metrics", (await self.get("/metrics")).text)
        with trio.move_on_after(5.0):
            while open_fds(self.host_pid) > self.report.fd_baseline + 4:  # noqa: ASYNC110
                await trio.sleep(0.05)
        self.report.fd_end = open_fds(self.host_pid)
        if self.report.fd_end > self.report.fd_baseline + 4:
            self.violation(f"fds leaked: {self.report.fd_baseline} -> {self.report.fd_end}")


def fill_disk(path: Path) -> None:
    """Write until the file system is full (ENOSPC)."""
    block = b"\0" * 65536
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, block[:size])
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- setup


def make_values(rng: random.Random, directory: Path) -> SecretSet:
    key = directory / "chaos_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "chaos", "-f", str(key)],
        check=True,
        timeout=30,
    )
    return SecretSet(
        user="e2e-user",
        github=new_token(rng, "ghp_chaos"),
        copilot=new_token(rng, "ghu_chaos"),
        env_value=new_token(rng, "envchaos"),
        private_key=key.read_text(),
        public_key=(key.with_suffix(".pub")).read_text(),
    )


def chaos_config(directory: Path, *, port: int, marker: str, vault_url: str) -> tuple[Path, Path]:
    """The config (and the workspace dir): two services, one probed, secrets from the vault."""
    workspace = directory / "workspace"
    workspace.mkdir()
    web_port = free_port()
    services = {
        "web": {
            **python_service(WEB, marker),
            "command": [sys.executable, "-c", WEB, marker, str(web_port)],
            "backoff": {**NO_BACKOFF, "initial_delay": 0.3, "min_delay": 0.3, "max_delay": 0.3},
            "intensity": {"max_restarts": 10000, "window": 60.0},
            "ports": [web_port],
            "probes": {
                "readiness": {
                    "type": "http",
                    "url": f"http://127.0.0.1:{web_port}/",
                    "interval": 0.5,
                    "timeout": 2.0,
                }
            },
            "stop_timeout": 3.0,
        },
        "worker": shell_service(
            WORKER,
            marker,
            backoff=dict(NO_BACKOFF),
            intensity={"max_restarts": 10000, "window": 60.0},
            stop_timeout=3.0,
        ),
    }
    path = write_config(
        directory / "dev8.yaml",
        services,
        port=port,
        shutdown={"timeout": 20.0, "kill_grace": 1.0},
        supervisor_intensity={"max_restarts": 1000, "window": 60.0},
    )
    data = yaml.safe_load(path.read_text())
    token_file = directory / "api-token"
    token_file.write_text(secrets.token_urlsafe(24))
    token_file.chmod(0o600)
    data["workspace"]["dir"] = str(workspace)
    data["api"]["token_file"] = str(token_file)
    data["chaos"] = {"enabled": True}
    data["secrets"] = {
        "provider": "keyvault",
        "vault_url": vault_url,
        "verify_challenge_resource": False,
        "fetch_timeout": 1.5,
        "sdk_retries": 0,
        "retry_initial_delay": 1.0,
        "retry_max_delay": 5.0,
        "rotation_interval": 3600.0,
        "profile_dir": None,
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, workspace


@contextlib.asynccontextmanager
async def open_chaos(
    directory: Path, *, seed: int, rounds: int, progress: Callable[[str], None] | None = None
) -> AsyncIterator[ChaosRun]:
    """The fake vault, and dev8 as PID 1 with a small tmpfs as the workspace (its own mounts)."""
    rng = random.Random(seed ^ 0x5EED)
    marker = f"dev8-chaos-{seed}-{os.getpid()}"
    tls = make_tls(directory)
    values = make_values(rng, directory)
    with open_fake_imds() as imds, open_fake_vault(tls) as vault:
        vault.accepted_tokens = imds.issued
        for name, value in values.names().items():
            vault.set_secret(name, value)
        port = free_port()
        config, workspace = chaos_config(directory, port=port, marker=marker, vault_url=vault.url)
        token = (directory / "api-token").read_text()
        mount = 'mount -t tmpfs -o size=8m,mode=0755 dev8-chaos "$0" && exec "$@"'
        prefix = (*UNSHARE_PID1, "sh", "-c", mount, str(workspace))
        environ: dict[str, str | None] = {name: None for name in AZURE_ENV}
        environ |= {
            "AZURE_POD_IDENTITY_AUTHORITY_HOST": imds.url,
            "REQUESTS_CA_BUNDLE": str(tls.ca_cert),
        }
        try:
            with patched_environ(environ):
                dev8_cm = open_dev8(config, port=port, prefix=prefix, marker=marker)
                async with dev8_cm as dev8:
                    host_pid = await dev8.dev8_pid()
                    headers = {"Authorization": f"Bearer {token}"}
                    async with httpx.AsyncClient(
                        base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30
                    ) as http:
                        yield ChaosRun(
                            seed=seed,
                            rounds=rounds,
                            dev8=dev8,
                            host_pid=host_pid,
                            http=http,
                            vault=vault,
                            workspace=workspace,
                            token=token,
                            values=values,
                            progress=progress,
                        )
        finally:
            vault.heal()
            kill_marked(marker)


async def run_chaos(
    directory: Path, *, seed: int, rounds: int, progress: Callable[[str], None] | None = None
) -> ChaosReport:
    """Run the rounds, then stop dev8 with SIGTERM and check what it left and said."""
    async with open_chaos(directory, seed=seed, rounds=rounds, progress=progress) as run:
        report = await run.run()
        await run.dev8.signal(signal.SIGTERM)
        report.exit_code = await run.dev8.wait_exit(40)
        if report.exit_code != 0:
            run.violation(f"dev8 exited with {report.exit_code} after SIGTERM")
        for line in [*run.dev8.lines, run.dev8.stderr.decode(errors="replace")]:
            for canary in run.canaries:
                if canary in line:
                    run.violation(f"a secret value appeared in dev8's output: {line[:100]}...")
        if report.exit_code == 0 and not run.dev8.messages("dev8_exit", exit_code=0):
            run.violation("dev8 did not log its clean exit")
    return report


def seed_from_env() -> int:
    text = os.environ.get("CHAOS_SEED")
    return int(text) if text else secrets.randbelow(2**32)


# ----------------------------------------------------------------------------- the tests


@pytest.mark.slow
async def test_seeded_chaos_keeps_every_invariant(tmp_path: Path) -> None:
    seed = seed_from_env()
    rounds = int(os.environ.get("CHAOS_ROUNDS", "30"))
    print(f"chaos seed={seed} rounds={rounds} (reproduce: CHAOS_SEED={seed})", flush=True)
    report = await run_chaos(tmp_path, seed=seed, rounds=rounds)
    print(report.summary(), flush=True)
    assert report.violations == [], f"{report.summary()}\nreproduce with CHAOS_SEED={seed}"
    assert sum(report.faults.values()) == rounds
    assert report.exit_code == 0


def test_fault_sequence_is_a_function_of_the_seed() -> None:
    """Same seed, same faults (the pacing counts rounds, not seconds)."""

    def sequence(seed: int) -> list[tuple[str, str]]:
        run = ChaosRun.__new__(ChaosRun)
        run.rng = random.Random(seed)
        run.charges = []
        status = {
            "services": {"web": {}, "worker": {}},
            "tree": tree(
                "dev8",
                tree("dev8/api"),
                tree("dev8/secrets"),
                tree("dev8/services", tree("dev8/services/web"), tree("dev8/services/worker")),
                tree("dev8/health", tree("dev8/health/web")),
            ),
        }
        picked = []
        for run.round in range(1, 400):
            picked.append(run.pick(status))
        return picked

    first = sequence(7)
    assert first == sequence(7)
    assert first != sequence(8)
    kinds = collections.Counter(kind for kind, _ in first)
    assert set(kinds) == set(FAULT_WEIGHTS)
    # Pacing: never more than half of an intensity within its window (counted in rounds).
    root_crashes = [i for i, (k, t) in enumerate(first, 1) if k == "crash" and t.count("/") == 1]
    span = math.ceil(60 / MIN_ROUND) + 1
    assert all(sum(1 for r in root_crashes if i - span < r <= i) <= 5 for i in root_crashes)
    secrets_crashes = [
        i for i, (k, t) in enumerate(first, 1) if (k, t) == ("crash", "dev8/secrets")
    ]
    assert len(secrets_crashes) <= 2


def tree(path: str, *children: Json) -> Json:
    return {"path": path, "children": list(children)}


def test_parse_signal() -> None:
    assert chaos.parse_signal("kill") is signal.SIGKILL
    assert chaos.parse_signal("SIGSTOP") is signal.SIGSTOP
    assert chaos.parse_signal("Cont") is signal.SIGCONT
    for bad in ("HUP", "", "9", "SIGKILLX"):
        with pytest.raises(chaos.BadSignal, match="KILL, STOP, CONT, TERM"):
            chaos.parse_signal(bad)


SLEEPER = "import time\nprint('up', flush=True)\ntime.sleep(1000)\n"


def with_chaos(path: Path, enabled: bool) -> Path:
    data = yaml.safe_load(path.read_text())
    data["chaos"] = {"enabled": enabled}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


async def test_chaos_endpoints_and_cli(tmp_path: Path, api_port: int, marker: str) -> None:
    config = with_chaos(
        write_config(
            tmp_path / "dev8.yaml",
            {"sleeper": python_service(SLEEPER, marker, backoff=dict(NO_BACKOFF))},
            port=api_port,
        ),
        True,
    )
    api = ("--api", f"http://127.0.0.1:{api_port}")
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        paths = (await dev8.http.get("/openapi.json")).json()["paths"]
        assert {"/chaos/actors/{path}/crash", "/chaos/services/{name}/signal"} <= set(paths)

        # Crash a process actor: it fails with InjectedFault and its restart policy applies.
        pid = (await dev8.service_pids())["sleeper"]
        async with dev8.events("service=sleeper") as events:
            crashed = await dev8.http.post("/chaos/actors/dev8/services/sleeper/crash")
            assert crashed.status_code == 200
            assert crashed.json() == {
                "path": "dev8/services/sleeper",
                "state": "running",
                "restarts": 0,
            }
            exited = await events.wait_for("child_exited", child="sleeper")
            await events.wait_for("child_started", child="sleeper")
        assert exited["data"]["error"] == "InjectedFault: crashed on request"
        assert not pid_alive(pid)
        node = await dev8.service("sleeper")
        assert (node["restarts"], node["restartReasons"]) == (1, {"crash": 1})

        # Signal the service's group: KILL is a crash like any other.
        pid = (await dev8.service_pids())["sleeper"]
        signalled = await dev8.http.post(
            "/chaos/services/sleeper/signal", params={"signal": "KILL"}
        )
        assert signalled.json() == {"service": "sleeper", "signal": "KILL", "pid": pid}
        node = await dev8.wait_service(
            "sleeper", lambda n: n["restarts"] == 2 and n["state"] == "running", what="restarted"
        )
        assert node["lastExit"]["details"]["signal"] == "SIGKILL"

        # STOP then CONT: the same process, stopped then running again, not restarted.
        pid = node["info"]["pid"]
        for sig, state in (("STOP", "T"), ("CONT", "S")):
            answer = await dev8.http.post("/chaos/services/sleeper/signal", params={"signal": sig})
            assert answer.status_code == 200
            await wait_until(
                lambda state=state: proc_state(pid) == state, timeout=5, what=f"state {state}"
            )
        assert (await dev8.service("sleeper"))["restarts"] == 2

        # Errors: an unknown actor or service (404 with what exists), a bad signal (400).
        unknown = await dev8.http.post("/chaos/actors/dev8/nope/crash")
        assert unknown.status_code == 404
        assert "dev8/services/sleeper" in unknown.json()["error"]["known"]
        root = await dev8.http.post("/chaos/actors/dev8/crash")
        assert root.status_code == 404
        bad = await dev8.http.post("/chaos/services/sleeper/signal", params={"signal": "HUP"})
        assert (bad.status_code, bad.json()["error"]["code"]) == (400, "bad_request")
        missing = await dev8.http.post("/chaos/services/nope/signal", params={"signal": "KILL"})
        assert (missing.status_code, missing.json()["error"]["known"]) == (404, ["sleeper"])

        # Crashing the API itself: answered first (202), then the API actor restarts.
        api_node = await dev8.http.post("/chaos/actors/dev8/api/crash")
        assert api_node.status_code == 202
        with trio.fail_after(10):
            while True:
                with contextlib.suppress(httpx.TransportError):
                    tree = (await dev8.status())["tree"]
                    if next(n for n in walk(tree) if n["path"] == "dev8/api")["restarts"] == 1:
                        break
                await trio.sleep(0.05)

        # A stopped service has nothing to signal: 409.
        await dev8.http.post("/services/sleeper/stop")
        stopped = await dev8.http.post("/chaos/services/sleeper/signal", params={"signal": "KILL"})
        assert (stopped.status_code, stopped.json()["error"]["state"]) == (409, "stopped")
        await dev8.http.post("/services/sleeper/start")

        # The CLI: `dev8 chaos crash PATH` and `dev8 chaos signal NAME SIG`.
        crash = await run_cli("chaos", "crash", "dev8/services/sleeper", *api)
        assert (crash.returncode, crash.stderr) == (0, b"")
        assert crash.stdout.decode().startswith("dev8/services/sleeper: crash injected")
        await dev8.wait_service(
            "sleeper",
            lambda n: n["restarts"] == 3 and n["state"] == "running",
            what="crashed by the CLI",
        )
        kill = await run_cli("chaos", "signal", "sleeper", "kill", *api)
        assert kill.returncode == 0, kill.stderr
        assert "SIGKILL sent to process group" in kill.stdout.decode()
        wrong = await run_cli("chaos", "crash", "dev8/nope", *api)
        assert wrong.returncode == 1
        assert len(wrong.stderr.decode().strip().splitlines()) == 1

        faults = dev8.messages("chaos_fault_injected")
        assert [(f["fault"], f["target"]) for f in faults][:3] == [
            ("crash", "dev8/services/sleeper"),
            ("signal", "sleeper"),
            ("signal", "sleeper"),
        ]


async def test_chaos_is_off_by_default(tmp_path: Path, api_port: int, marker: str) -> None:
    config = write_config(
        tmp_path / "dev8.yaml", {"sleeper": python_service(SLEEPER, marker)}, port=api_port
    )
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        node = await dev8.wait_service("sleeper", lambda n: n["state"] == "running", what="up")
        pid = node["info"]["pid"]
        for path in ("/chaos/actors/dev8/services/sleeper/crash", "/chaos/services/sleeper/signal"):
            response = await dev8.http.post(path, params={"signal": "KILL"})
            assert response.status_code == 404
        paths = (await dev8.http.get("/openapi.json")).json()["paths"]
        assert not [p for p in paths if p.startswith("/chaos")]
        off = await run_cli(
            "chaos", "signal", "sleeper", "KILL", "--api", f"http://127.0.0.1:{api_port}"
        )
        assert off.returncode == 1
        assert (
            off.stderr.decode().strip()
            == "dev8: chaos mode is off: set chaos.enabled: true in the config"
        )
        assert pid_alive(pid)
        assert (await dev8.service("sleeper"))["restarts"] == 0


#: Ignores the stop signal: its stop takes its whole stop_timeout (then SIGKILL).
STUBBORN = (
    "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('up', flush=True)\ntime.sleep(1000)\n"
)


async def test_a_crash_of_a_process_actor_mid_call(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    """A stop waits on the service's process actor while the service takes its whole
    stop_timeout to stop; the chaos API crashes that actor: the stop's caller gets a clear 503 at
    once, the actor's supervisor restarts it, and the stop (asked for) still sticks."""
    config = with_chaos(
        write_config(
            tmp_path / "dev8.yaml",
            {"stubborn": python_service(STUBBORN, marker, stop_timeout=3.0)},
            port=api_port,
        ),
        True,
    )
    actor = "dev8/process-actors/stubborn.actor"
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        await dev8.wait_service("stubborn", lambda n: n["state"] == "running", what="up")
        answers: list[httpx.Response] = []
        async with dev8.events("since=0") as events, trio.open_nursery() as nursery:

            async def stop() -> None:
                answers.append(await dev8.http.post("/services/stubborn/stop", timeout=30))

            nursery.start_soon(stop)
            await events.wait_for("child_stopping", child="stubborn")
            crashed = await dev8.http.post(f"/chaos/actors/{actor}/crash")
            assert crashed.status_code == 200, crashed.text
            await events.wait_for("child_exited", child="stubborn.actor")
            await events.wait_for("child_started", child="stubborn.actor")
        (answer,) = answers
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "actor_unavailable"
        tree = (await dev8.status())["tree"]
        node = next(n for n in walk(tree) if n["path"] == actor)
        assert (node["state"], node["restarts"], node["restartReasons"]) == (
            "running",
            1,
            {"crash": 1},
        )
        # The stop goes on in the supervisor and sticks: nothing starts the service again.
        stopped = await dev8.wait_service(
            "stubborn", lambda n: n["state"] == "stopped", timeout=20, what="stopped"
        )
        assert stopped["restarts"] == 0
        logs = await dev8.http.get("/services/stubborn/logs")  # the restarted actor answers
        assert [line["line"] for line in logs.json()["lines"]] == ["up"]
