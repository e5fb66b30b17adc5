"""Faults outside dev8 and PID-1 duties, tried against the real `dev8 run` (issue #12, 10-18).

A log reader that stalls, leaves or sits on a full disk; a crash streak past 1,024 restarts or
with no backoff at all; a SIGTERM during the imports; a stopped service; helpers that need their
grace; two SIGTERMs at once; signals nobody listed; thousands of live processes around the
reaper. dev8 runs as a real PID 1 (`unshare`) or as a subreaper, with real processes; backoff
runs on trio's MockClock.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing
from support.dev8_harness import (
    DEV8,
    NO_BACKOFF,
    REPO_ROOT,
    UNSHARE_PID1,
    Dev8Run,
    Json,
    _reap,
    fail_after,
    kill_marked,
    logged,
    open_dev8,
    pid_alive,
    pids_with_marker,
    printed,
    proc_state,
    python_service,
    shell_service,
    wait_until,
    write_config,
)

from actors import (
    Backoff,
    ChildContext,
    ChildSpec,
    Envelope,
    EventBus,
    Intensity,
    RestartScheduled,
    Supervisor,
)
from dev8.config import RESTART_DELAY_FLOOR, BackoffConfig
from dev8.monitoring.logs import BULK_SHARE, LineWriter
from dev8.pid1.signals import REALTIME_SIGNALS, signal_name
from dev8.services.factory import backoff_of

SLEEPER = "import time\nprint('up', flush=True)\ntime.sleep(1000)\n"
CHATTY_LINES = 15_000
# Far more lines than the log queue holds: with a reader that does not read, some must drop.
CHATTY = f"""\
import sys, time
for i in range({CHATTY_LINES}):
    print(f"line {{i}}")
sys.stdout.flush()
print("burst done", flush=True)
time.sleep(1000)
"""
TERM_IGNORER = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(1000)\n"
)
# Exits 0 from its SIGTERM handler, noting it in $DONE: it can only do that if it runs.
TERM_OBEYER = (
    "import os, signal, sys, time\n"
    "def bye(signum, frame):\n"
    "    open(os.environ['DONE'], 'w').write('term handled')\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, bye)\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    time.sleep(1)\n"
)


# ----------------------------------------------------------------------------- helpers


@contextlib.asynccontextmanager
async def open_raw_dev8(
    config: Path,
    *,
    port: int,
    prefix: Sequence[str],
    stdout: int,
    marker: str,
    stderr_path: Path,
) -> AsyncIterator[Dev8Run]:
    """`dev8 run` with stdout wherever the test says (a pipe it controls, /dev/full, ...);
    the `stdout` fd is closed here once dev8 has it."""
    try:
        with stderr_path.open("wb") as stderr:
            process = await trio.lowlevel.open_process(
                [*prefix, *DEV8, "run", "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                cwd=REPO_ROOT,
            )
    finally:
        os.close(stdout)
    run = Dev8Run(process, port=port, in_namespace=bool(prefix))
    try:
        async with run.http:
            await run.wait_ready()
            yield run
    finally:
        with trio.CancelScope(shield=True):
            await _reap(run)
        kill_marked(marker)


def shared_pending(pid: int) -> int:
    """The process-wide pending signals of `pid` (a bit mask, bit n-1 for signal n); 0 if gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0
    for line in status.splitlines():
        if line.startswith("ShdPnd:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no ShdPnd in /proc/{pid}/status")


async def send_delivered(pid: int, sig: int) -> bool:
    """Send `sig`, then wait until the kernel has handed it over (no longer pending).

    A standard signal sent while the same one is still pending is merged into it by the kernel:
    waiting for the hand-over makes each send a delivery of its own.
    """
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False  # gone already (the storm's first signals did their work)
    bit = 1 << (sig - 1)
    with fail_after(10, f"signal {sig} to be delivered to {pid}"):
        while shared_pending(pid) & bit:
            await trio.lowlevel.checkpoint()
    return True


def main_thread_cpu_ns(pid: int) -> int:
    """Nanoseconds the main thread of `pid` has run on a CPU (0 once it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return 0


async def main_thread_ran(pid: int, ns: int) -> None:
    """Until the main thread of `pid` has run `ns` more on a CPU (or is gone).

    After a delivery, CPython runs the Python-level handler at its next bytecode in the main
    thread: a few milliseconds of running make sure it did, however busy the machine.
    """
    start = main_thread_cpu_ns(pid)
    with fail_after(30, f"the main thread of {pid} to run"):
        while 0 < main_thread_cpu_ns(pid) < start + ns:  # noqa: ASYNC110 - no notification
            await trio.sleep(0.001)


async def host_pid_of(marker: str, what: str) -> int:
    """The host pid of the one live process carrying `marker` (a service seen from outside)."""
    await wait_until(lambda: len(pids_with_marker(marker)) == 1, timeout=10, what=what)
    return pids_with_marker(marker)[0]


# ----------------------------------------------------------------------------- 10: stdout


async def _wait_log_output(dev8: Dev8Run, key: str, wanted: Any) -> Json:
    with fail_after(60, f"logOutput.{key} to become {wanted!r}"):
        while True:
            output: Json = (await dev8.status())["logOutput"]
            if output[key] == wanted or (wanted is True and output[key]):
                return output
            await trio.sleep(0.1)


@pytest.mark.parametrize("pid1", [True, False], ids=["pid1", "subreaper"])
@pytest.mark.parametrize("sink", ["closed", "stalled", "full"])
async def test_a_closed_stalled_or_full_stdout_never_stops_supervision_or_shutdown(
    tmp_path: Path, api_port: int, marker: str, pid1: bool, sink: str
) -> None:
    """`dev8 run | head -3`, `| sleep 1000`, stdout on a full disk: /health answers, lines are
    dropped and counted, and SIGTERM still ends in a clean shutdown with exit 0."""
    config = write_config(
        tmp_path / "dev8.yaml",
        {"chatty": python_service(CHATTY, marker), "steady": python_service(SLEEPER, marker)},
        port=api_port,
        shutdown={"timeout": 10.0, "kill_grace": 0.5},
    )
    prefix = UNSHARE_PID1 if pid1 else ()
    read_fd: int | None = None
    if sink == "full":
        write_fd = os.open("/dev/full", os.O_WRONLY)
    else:
        read_fd, write_fd = os.pipe()
    try:
        async with open_raw_dev8(
            config,
            port=api_port,
            prefix=prefix,
            stdout=write_fd,
            marker=marker,
            stderr_path=tmp_path / "stderr",
        ) as dev8:
            if sink == "closed":
                assert read_fd is not None
                # `| head -3`: three lines, then the reader is gone.
                seen = b""
                with fail_after(20, "three lines on stdout"):
                    while seen.count(b"\n") < 3:
                        seen += await trio.to_thread.run_sync(os.read, read_fd, 4096)
                os.close(read_fd)
                read_fd = None
                output = await _wait_log_output(dev8, "lastError", "EPIPE")
            elif sink == "full":
                output = await _wait_log_output(dev8, "lastError", "ENOSPC")
            else:
                output = await _wait_log_output(dev8, "linesDropped", True)
                assert output["lastError"] is None  # nothing failed: the reader just stalls
            assert output["linesDropped"] > 0
            print(f"{sink}: {output}")

            # Supervision goes on: both services come up and stay up, and the API answers.
            # (On a full disk the first failed write can come before the services are ready.)
            for name in ("chatty", "steady"):
                await dev8.wait_service(
                    name, lambda node: node["state"] == "running", timeout=30, what="running"
                )
            for _ in range(20):
                with trio.fail_after(5):
                    health = await dev8.http.get("/health")
                assert health.status_code == 200
            assert set(await dev8.service_pids()) == {"chatty", "steady"}
            metrics = await dev8.http.get("/metrics")
            dropped = [
                line
                for line in metrics.text.splitlines()
                if line.startswith("dev8_log_lines_dropped_total ")
            ]
            assert dropped
            assert float(dropped[0].split()[1]) > 0

            await dev8.signal(signal.SIGTERM)
            assert await dev8.wait_exit(30) == 0
    finally:
        if read_fd is not None:
            os.close(read_fd)
    assert pids_with_marker(marker) == []


def test_a_flooding_service_cannot_crowd_out_dev8s_own_lines() -> None:
    """The services' output may fill only part of the queue: with stdout stalled, dev8's own
    lines (signals, exits) still get in after a flood of bulk lines was dropped."""
    read_fd, write_fd = os.pipe()
    try:
        os.set_blocking(write_fd, False)
        with contextlib.suppress(BlockingIOError):
            while True:  # a reader that stalled: its pipe is full
                os.write(write_fd, b"x" * 65536)
        os.set_blocking(write_fd, True)
        writer = LineWriter(write_fd, capacity=100)
        for i in range(1000):
            writer.write(f"service line {i}\n", bulk=True)
        flooded = writer.stats()
        assert flooded["lines_dropped"] >= 1000 - 100
        assert flooded["lines_queued"] <= 100 * BULK_SHARE
        for i in range(10):
            writer.write(f"dev8 line {i}\n")
        assert writer.stats()["lines_dropped"] == flooded["lines_dropped"]  # none of ours
        assert writer.stats()["lines_queued"] >= flooded["lines_queued"] + 10 - 1
    finally:
        os.close(read_fd)  # the writer thread's blocked write fails (EPIPE) and it goes on
        assert writer.drain(10.0)  # every queued line tried (and failed) before the fd goes
        assert writer.stats()["last_error"] == "EPIPE"
        os.close(write_fd)


# ----------------------------------------------------------------------------- 11, 12: backoff


class Crasher:
    """A child that fails at once `lives` times, then stays up and sets `settled`."""

    def __init__(self, lives: int) -> None:
        self.lives = lives
        self.starts: list[float] = []
        self.settled = trio.Event()

    async def __call__(self, ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
        self.starts.append(trio.current_time())
        task_status.started()
        if len(self.starts) > self.lives:
            self.settled.set()
            await trio.sleep_forever()
        raise RuntimeError("crash")


async def _run_streak(backoff: Backoff, lives: int, seed: int) -> tuple[Crasher, list[float]]:
    bus = EventBus()
    delays: list[float] = []

    def listen(envelope: Envelope) -> None:
        if isinstance(envelope.event, RestartScheduled):
            delays.append(envelope.event.delay)

    bus.add_listener(listen)
    crasher = Crasher(lives)
    supervisor = Supervisor(
        "services",
        [ChildSpec(name="c", start=crasher, backoff=backoff)],
        bus=bus,
        intensity=Intensity(max_restarts=10 * lives, window=1.0),
        rng=random.Random(seed),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        await crasher.settled.wait()
        nursery.cancel_scope.cancel()
    return crasher, delays


def test_backoff_delay_never_overflows() -> None:
    backoff = Backoff(min_delay=0.1, factor=2.0, max_delay=30.0, jitter=0.1)
    rng = random.Random(0)
    for attempt in (1024, 1025, 1026, 5000, 10**9):
        assert 27.0 <= backoff.delay(attempt, rng) <= 30.0
    steep = Backoff(min_delay=1e-300, factor=1e300, max_delay=5.0, jitter=0.0)
    assert steep.delay(3, rng) == 5.0


async def test_a_crash_streak_past_1025_restarts_costs_only_its_capped_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seed = random.randrange(2**32)
    print(f"seed={seed}")
    lives = 1100
    backoff = Backoff(min_delay=0.001, factor=2.0, max_delay=0.01, jitter=0.2, reset_after=1e9)
    crasher, delays = await _run_streak(backoff, lives, seed)
    # The supervisor itself never failed: one child, restarted exactly once per crash.
    assert len(crasher.starts) == lives + 1
    assert len(delays) == lives
    assert all(0 <= d <= 0.01 for d in delays)
    assert delays[-100:] == pytest.approx([0.01] * 100, rel=0.2)
    gaps = [b - a for a, b in zip(crasher.starts, crasher.starts[1:], strict=False)]
    assert gaps == pytest.approx(delays, abs=1e-6)  # events carry microseconds


async def test_all_zero_backoff_is_held_to_the_documented_floor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seed = random.randrange(2**32)
    print(f"seed={seed}")
    zeros = BackoffConfig(
        initial_delay=0.0, min_delay=0.0, max_delay=0.0, factor=1.0, jitter=0.0, reset_after=0.0
    )
    backoff = backoff_of(zeros)
    assert backoff.floor == RESTART_DELAY_FLOOR > 0
    rng = random.Random(seed)
    assert {backoff.delay(n, rng) for n in range(100)} == {RESTART_DELAY_FLOOR}
    crasher, _delays = await _run_streak(backoff, 200, seed)
    gaps = [b - a for a, b in zip(crasher.starts, crasher.starts[1:], strict=False)]
    assert min(gaps) >= RESTART_DELAY_FLOOR - 1e-9
    # 200 crashes take at least 200 floors: at most 1 / floor restarts a second.
    assert crasher.starts[-1] - crasher.starts[0] >= 200 * RESTART_DELAY_FLOOR - 1e-6


class SlowCrasher(Crasher):
    """Like ``Crasher``, but each life lasts ``life`` seconds before it fails."""

    def __init__(self, lives: int, life: float) -> None:
        super().__init__(lives)
        self.life = life

    async def __call__(self, ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
        self.starts.append(trio.current_time())
        task_status.started()
        if len(self.starts) > self.lives:
            self.settled.set()
            await trio.sleep_forever()
        await trio.sleep(self.life)
        raise RuntimeError("crash")


@pytest.mark.parametrize("life", [0.0, 0.02, 0.05, 1.0])
async def test_the_floor_paces_starts_and_never_delays_a_child_that_ran_longer(
    autojump_clock: trio.testing.MockClock, life: float
) -> None:
    """The floor is the least time between two starts: a crash after a long life is restarted
    at once (crash-to-restart stays a few milliseconds), an instant crash loop is paced."""
    zeros = BackoffConfig(
        initial_delay=0.0, min_delay=0.0, max_delay=0.0, factor=1.0, jitter=0.0, reset_after=0.0
    )
    crasher = SlowCrasher(5, life)
    supervisor = Supervisor(
        "services",
        [ChildSpec(name="c", start=crasher, backoff=backoff_of(zeros))],
        bus=EventBus(),
        intensity=Intensity(max_restarts=100, window=1.0),
        rng=random.Random(0),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        await crasher.settled.wait()
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in zip(crasher.starts, crasher.starts[1:], strict=False)]
    assert gaps == pytest.approx([max(life, RESTART_DELAY_FLOOR)] * 5, abs=1e-9)


async def test_a_real_zero_backoff_crash_loop_is_paced_by_the_floor(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    config = write_config(
        tmp_path / "dev8.yaml",
        {
            "looper": shell_service(
                "exit 1",
                marker,
                backoff={**NO_BACKOFF, "factor": 1.0, "reset_after": 0.0},
                intensity={"max_restarts": 100_000, "window": 60.0},
            )
        },
        port=api_port,
    )
    async with open_dev8(config, port=api_port, prefix=UNSHARE_PID1, marker=marker) as dev8:
        async with dev8.events("since=0&service=looper") as events:
            with fail_after(30, "30 restarts of looper", dev8.tail):
                while len(events.of("child_started", "looper")) < 30:
                    await events.next()
        # Paced by the floor: each start comes at least the floor after the one before it.
        started = [
            datetime.fromisoformat(e["time"]).timestamp()
            for e in events.of("child_started", "looper")
        ]
        assert len(started) >= 30
        gaps = [b - a for a, b in itertools.pairwise(started)]
        assert min(gaps) >= RESTART_DELAY_FLOOR - 0.005  # wall clock against trio's: a little slack
        assert all(e["data"]["delay"] > 0 for e in events.of("restart_scheduled", "looper"))
        await dev8.signal(signal.SIGTERM)
        assert await dev8.wait_exit(20) == 0


# ----------------------------------------------------------------------------- 13: early TERM


def _maps_loaded(pid: int, name: str) -> bool:
    try:
        return name in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


async def test_a_sigterm_during_the_imports_is_not_lost_as_pid1(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    """`docker stop` right after the start: the SIGTERM arrives while dev8 imports trio (whose
    ssl module is a sign of it), long before the tree exists. It must end in exit 0."""
    config = write_config(
        tmp_path / "dev8.yaml", {"steady": python_service(SLEEPER, marker)}, port=api_port
    )
    process = await trio.lowlevel.open_process(
        [*UNSHARE_PID1, *DEV8, "run", "--config", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    run = Dev8Run(process, port=api_port, in_namespace=True)
    try:
        async with run.http, trio.open_nursery() as nursery:
            nursery.start_soon(run._pump_stdout)
            nursery.start_soon(run._pump_stderr)
            host = await run.dev8_pid()
            with fail_after(20, "dev8 to import trio (its _ssl module mapped)"):
                while not _maps_loaded(host, "_ssl."):
                    await trio.lowlevel.checkpoint()
            os.kill(host, signal.SIGTERM)
            assert await run.wait_exit(30) == 0
            early = run.messages("signal_received", signal="SIGTERM")
            assert [e["action"] for e in early] == ["shutdown"]
    finally:
        with trio.CancelScope(shield=True):
            await _reap(run)
        kill_marked(marker)
    assert pids_with_marker(marker) == []


# ----------------------------------------------------------------------------- 14: SIGCONT


async def test_a_stopped_service_gets_sigcont_with_its_stop_signal(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    stop_timeout = 60.0
    done = tmp_path / "done"
    config = write_config(
        tmp_path / "dev8.yaml",
        {
            "frozen": python_service(
                TERM_OBEYER, marker, stop_timeout=stop_timeout, env={"DONE": str(done)}
            )
        },
        port=api_port,
        shutdown={"timeout": 90.0, "kill_grace": 0.5},
    )
    async with open_dev8(config, port=api_port, prefix=UNSHARE_PID1, marker=marker) as dev8:
        await dev8.wait_log(printed("frozen", "ready"), what="the service")
        service = await host_pid_of(marker, "the service")
        os.kill(service, signal.SIGSTOP)
        await wait_until(lambda: proc_state(service) == "T", timeout=10, what="state T")
        await dev8.signal(signal.SIGTERM)
        # Well within stop_timeout: the handler ran, nothing waited for the SIGKILL.
        assert await dev8.wait_exit(stop_timeout / 3) == 0
    assert done.read_text() == "term handled"
    assert not dev8.messages("stop_timeout_kill")
    assert not pid_alive(service)


# ----------------------------------------------------------------------------- 15: the group


HELPER_CLEANUP = 1.0
# The leader (sh) dies of SIGTERM at once; its helper, in the same process group, needs a second
# for its cleanup and says when it is done.
FAMILY = f"""\
{sys.executable} -c '
import signal, sys, time
def cleanup(signum, frame):
    time.sleep({HELPER_CLEANUP})
    open(sys.argv[1], "w").write("cleaned")
    sys.exit(0)
signal.signal(signal.SIGTERM, cleanup)
print("helper ready", flush=True)
while True:
    time.sleep(1)
' "$DONE" &
wait
"""


async def test_helpers_in_the_process_group_get_the_whole_stop_timeout(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    done = tmp_path / "helper-done"
    config = write_config(
        tmp_path / "dev8.yaml",
        {"family": shell_service(FAMILY, marker, stop_timeout=10.0, env={"DONE": str(done)})},
        port=api_port,
    )
    async with open_dev8(config, port=api_port, prefix=UNSHARE_PID1, marker=marker) as dev8:
        await dev8.wait_log(printed("family", "helper ready"), what="the helper")
        members = pids_with_marker(marker)
        assert len(members) == 1  # the helper's argv has no marker: only the leader
        with fail_after(30, "POST /services/family/stop"):
            response = await dev8.http.post("/services/family/stop")
        assert response.status_code == 200, response.text
        await dev8.wait_service(
            "family", lambda node: node["state"] == "stopped", what="stopped", timeout=30
        )
        # The stop waited for the group: the helper finished its cleanup and exited by itself.
        assert done.read_text() == "cleaned"
        assert not dev8.messages("stop_timeout_kill")
        await dev8.signal(signal.SIGTERM)
        assert await dev8.wait_exit(20) == 0


# ----------------------------------------------------------------------------- 16: two TERMs


# Keeps dev8's trio thread busy logging its output in long synchronous stretches (a 64 KiB read
# is thousands of lines): signals arriving together land in one stretch, before any task runs.
FLOOD = """\
import sys
print("flooding", flush=True)
while True:
    sys.stdout.write("x\\n" * 20000)
    sys.stdout.flush()
"""


@pytest.mark.parametrize("count", [2, 100], ids=["pair", "storm"])
async def test_two_sigterms_together_skip_to_the_kill(
    tmp_path: Path, api_port: int, marker: str, count: int
) -> None:
    """Each SIGTERM is sent once the one before was delivered and handed to the Python handler
    (else the kernel or CPython merges them), a few milliseconds apart, while the loop is busy in
    one synchronous stretch: every delivery counts, not every wake-up of the loop."""
    stop_timeout = 60.0
    config = write_config(
        tmp_path / "dev8.yaml",
        {
            "stubborn": python_service(TERM_IGNORER, marker, stop_timeout=stop_timeout),
            "flood": python_service(FLOOD, marker),
        },
        port=api_port,
        shutdown={"timeout": 90.0, "kill_grace": 0.5},
    )
    async with open_dev8(config, port=api_port, prefix=UNSHARE_PID1, marker=marker) as dev8:
        await dev8.wait_log(printed("stubborn", "ready"), what="the service")
        await dev8.wait_log(printed("flood", "x"), what="the flood")
        host = await dev8.dev8_pid()
        sent = 0
        while sent < count and await send_delivered(host, signal.SIGTERM):
            sent += 1
            # Long enough for CPython to hand the delivery to dev8's handler, far too short for
            # the loop to finish the synchronous stretch it is in (thousands of lines).
            await main_thread_ran(host, 5_000_000)
        assert sent >= 2
        # One SIGTERM would wait out the stubborn service's 60 s: the second skipped to the kill.
        assert await dev8.wait_exit(stop_timeout / 3) == 0
    # The flood fills the log queue, but only its bulk share: dev8's own lines all got through.
    ours = [e for e in dev8.logs() if e.get("service") != "flood"]  # parsed once: it is long
    actions = [
        e["action"]
        for e in ours
        if e.get("message") == "signal_received" and e.get("signal") == "SIGTERM"
    ]
    assert actions[0] == "shutdown"
    assert len(actions) >= 2
    assert set(actions[1:]) == {"kill"}
    assert [e for e in ours if e.get("message") == "dev8_shutdown_forced"]
    assert pids_with_marker(marker) == []


# ----------------------------------------------------------------------------- 17: any signal


async def test_every_catchable_signal_is_acted_on_or_ignored_when_not_pid1(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    seed = random.randrange(2**32)
    print(f"seed={seed}")
    rng = random.Random(seed)
    unlisted = [signal.SIGTRAP, signal.SIGSYS, signal.SIGXCPU, signal.SIGSTKFLT, signal.SIGABRT]
    signals = [*unlisted, *REALTIME_SIGNALS]
    rng.shuffle(signals)
    config = write_config(
        tmp_path / "dev8.yaml", {"steady": python_service(SLEEPER, marker)}, port=api_port
    )
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        await dev8.wait_log(printed("steady", "up"), what="the service")
        before = await dev8.service_pids()
        for number in signals:
            await dev8.signal(number)  # type: ignore[arg-type]
            await dev8.wait_log(
                logged("signal_received", signal=signal_name(number), action="ignored"),
                what=f"{signal_name(number)} logged as ignored",
            )
        assert dev8.process.returncode is None
        assert await dev8.service_pids() == before
        await dev8.signal(signal.SIGTERM)
        assert await dev8.wait_exit(20) == 0
    assert pids_with_marker(marker) == []


# ----------------------------------------------------------------------------- 18: the reaper


LIVE_ORPHANS = 1000
EXITING_ORPHANS = 40
# Runs as PID 1 of a new namespace: LIVE_ORPHANS sleeping orphans (their parent exits), then the
# reaper collects EXITING_ORPHANS more while every file it opens is recorded.
REAPER_UNDER_LOAD = f"""\
import json, os, subprocess, sys
from functools import partial
import trio
sys.path.insert(0, {str(REPO_ROOT)!r})
from dev8.pid1.reaper import OwnPids, run_reaper, list_zombie_children

opened = []
recording = False
def audit(event, args):
    if recording and event in ("open", "os.listdir", "os.scandir"):
        opened.append(str(args[0]))
sys.addaudithook(audit)

def others():
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != 1]

async def main():
    global recording
    own = OwnPids()
    reaped = []
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(run_reaper, own, on_reaped=lambda pid, rc: reaped.append(rc)))
        with own.spawning():
            subprocess.run(["sh", "-c", "for i in $(seq {LIVE_ORPHANS}); do sleep 1000 & done"],
                           check=True)
        while len(others()) < {LIVE_ORPHANS}:
            await trio.sleep(0.05)
        reaped.clear()
        recording = True
        with own.spawning():
            subprocess.run(["sh", "-c", "for i in $(seq {EXITING_ORPHANS}); do (exit 7) & done"],
                           check=True)
        with trio.fail_after(30):
            while len(reaped) < {EXITING_ORPHANS}:
                await trio.sleep(0.01)
        recording = False
        result = {{
            "reaped": reaped,
            "opened_proc": [p for p in opened if p.startswith("/proc")],
            "live": len(others()),
            "zombies": list_zombie_children(),
        }}
        nursery.cancel_scope.cancel()
    print(json.dumps(result), flush=True)

trio.run(main)
"""


async def run_script_as_pid1(script: str, what: str) -> Json:
    """Run `script` as PID 1 of a new PID namespace; its last stdout line is its JSON result."""
    with fail_after(120, what):
        result = await trio.run_process(
            [*UNSHARE_PID1, sys.executable, "-c", script],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    found: Json = json.loads(result.stdout.decode().splitlines()[-1])
    return found


async def test_reaping_does_not_scan_proc_whatever_the_number_of_live_processes() -> None:
    found = await run_script_as_pid1(REAPER_UNDER_LOAD, "the reaper under load")
    assert found["reaped"] == [7] * EXITING_ORPHANS
    assert found["live"] >= LIVE_ORPHANS
    assert found["zombies"] == []
    # The kernel said who exited: no stat file of any of the live orphans was read.
    assert found["opened_proc"] == []


ROUNDS_TOGETHER = 10
# Leaves a zombie child behind when it exits 5: that zombie is orphaned (to PID 1) at the very
# moment this process itself becomes a zombie.
LEAVES_A_ZOMBIE = (
    "import os\n"
    "if os.fork() == 0:\n"
    "    os._exit(3)\n"
    "os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)  # exited, not collected: a zombie\n"
    "os._exit(5)\n"
)
# PID 1 again: a child of ours exits 5 at the moment its own child (orphaned, so ours to reap)
# is already a zombie. The kernel lists ours first; trio collects it only once both are zombies;
# the reaper must still find the orphan with no SIGCHLD left to wake it, even while ours is
# still in OwnPids (as during a service's stop).
EXITING_TOGETHER = f"""\
import json, os, subprocess, sys
from functools import partial
import trio
sys.path.insert(0, {str(REPO_ROOT)!r})
from dev8.pid1.reaper import OwnPids, run_reaper, list_zombie_children

def state(pid):
    data = open(f"/proc/{{pid}}/stat", "rb").read()
    return data[data.rfind(b")") + 2 :].split()[0].decode()

async def main():
    own = OwnPids()
    reaped = []
    codes = []
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(run_reaper, own, on_reaped=lambda pid, rc: reaped.append(rc)))
        for round in range({ROUNDS_TOGETHER}):
            # Spawned from this thread (trio would use a worker), so that the kernel lists it
            # before the orphan it leaves: both under this thread, ours first.
            with own.spawning():
                proc = subprocess.Popen([sys.executable, "-c", {LEAVES_A_ZOMBIE!r}])
                own.add(proc.pid)
            with trio.fail_after(10):
                # Both are zombies, and the reaper's pass on their SIGCHLD stopped at ours.
                while state(proc.pid) != "Z" or own._blocked_by != proc.pid:
                    await trio.sleep(0.005)
            codes.append(proc.wait())  # collected, as trio would
            with trio.fail_after(10):
                while len(reaped) <= round:
                    await trio.sleep(0.005)
            own.discard(proc.pid)
        result = {{"codes": codes, "reaped": reaped, "zombies": list_zombie_children()}}
        nursery.cancel_scope.cancel()
    print(json.dumps(result), flush=True)

trio.run(main)
"""


async def test_a_zombie_of_ours_never_hides_an_orphan_that_exited_with_it() -> None:
    found = await run_script_as_pid1(EXITING_TOGETHER, "the rounds")
    assert found["codes"] == [5] * ROUNDS_TOGETHER  # ours: never stolen by the reaper
    assert found["reaped"] == [3] * ROUNDS_TOGETHER  # theirs: each found without a discard
    assert found["zombies"] == []


async def test_services_start_with_a_clean_signal_mask_and_default_dispositions(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    """dev8 catches nearly every signal from its first lines: none of that reaches a service
    (exec resets caught signals; nothing is blocked; Python's own SIG_IGN of PIPE and XFSZ is
    undone at spawn)."""
    config = write_config(
        tmp_path / "dev8.yaml",
        {
            "masks": shell_service(
                "exec grep -E '^Sig(Blk|Ign):' /proc/self/status", marker, restart="transient"
            )
        },
        port=api_port,
    )
    async with open_dev8(config, port=api_port, prefix=UNSHARE_PID1, marker=marker) as dev8:
        blocked = await dev8.wait_log(
            lambda e: e.get("service") == "masks" and str(e.get("message")).startswith("SigBlk"),
            what="the service's SigBlk",
        )
        ignored = await dev8.wait_log(
            lambda e: e.get("service") == "masks" and str(e.get("message")).startswith("SigIgn"),
            what="the service's SigIgn",
        )
        assert int(blocked["message"].split()[1], 16) == 0
        assert int(ignored["message"].split()[1], 16) == 0
        await dev8.signal(signal.SIGTERM)
        assert await dev8.wait_exit(20) == 0
