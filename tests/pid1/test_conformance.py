"""Init conformance: what tini's and dumb-init's test suites check, for the real `dev8 run`.

Already covered elsewhere, not repeated here: exit statuses kept while orphans are reaped as PID 1
and SIGTERM stopping everything as PID 1 (test_dev8_pid1.py); orphans reaped as a subreaper and
the reaper never stealing our children (test_init.py); a missing command given up with a clear
error, a critical service exiting 3, SIGTERM reaching an escaped (setsid) grandchild, a second
SIGTERM skipping to the kill (test_dev8_run.py).

The signal policy under test (README, "Signals"): TERM and INT shut down gracefully (exit 0), HUP
reloads the config, and the other catchable signals that would kill or stop a process by default
(``dev8.pid1.reaper.IGNORED_SIGNALS``) are logged and ignored, never forwarded.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
from pathlib import Path

import pytest
import trio
import yaml
from support.dev8_harness import (
    UNSHARE_PID1,
    Dev8Run,
    fail_after,
    logged,
    open_dev8,
    pid_alive,
    pids_with_marker,
    printed,
    proc_state,
    python_service,
    run_cli,
    shell_service,
    wait_until,
    write_config,
)
from support.procs import descendants

from dev8.pid1.reaper import IGNORED_SIGNALS

SLEEPER = "import time\nprint('up', flush=True)\ntime.sleep(1000)\n"
# Says so if any signal reaches it (dev8 must not forward the ignored ones).
LISTENER = f"""\
import signal, time
def said(signum, frame):
    print("got", signal.Signals(signum).name, flush=True)
for number in {[int(s) for s in IGNORED_SIGNALS]}:
    signal.signal(number, said)
print("listening", flush=True)
while True:
    time.sleep(1)
"""
ORPHANS = 600
# Hundreds of short-lived grandchildren, each orphaned at once (its parent exits first): only
# dev8 can reap them. Each grandchild holds the write end of a pipe until it exits, so "storm
# over" is printed once the last of them has exited (not merely been forked: on a busy machine
# some are still running when their parents are all gone).
STORM = f"""\
import os, random, time
done, alive = os.pipe()
for i in range({ORPHANS}):
    if os.fork() == 0:
        if os.fork() == 0:
            os.close(done)
            time.sleep(random.random() * 0.05)
            os._exit(i % 7)
        os._exit(0)
    os.wait()
os.close(alive)
while os.read(done, 1):
    pass
print("storm over", flush=True)
time.sleep(1000)
"""


def live_descendants(dev8_pid: int) -> dict[int, str]:
    return {pid: state for pid, state in descendants(dev8_pid).items() if state != "Z"}


async def no_zombie_below(dev8: Dev8Run, timeout: float) -> None:
    host = await dev8.dev8_pid()
    with fail_after(timeout, "every zombie below dev8 to be reaped", dev8.tail):
        while any(state == "Z" for state in descendants(host).values()):  # noqa: ASYNC110
            await trio.sleep(0.02)


async def test_hundreds_of_orphans_are_reaped_as_pid1_while_the_api_answers(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    config = write_config(
        tmp_path / "dev8.yaml",
        {"storm": python_service(STORM, marker), "steady": python_service(SLEEPER, marker)},
        port=api_port,
    )
    async with open_dev8(config, port=api_port, prefix=UNSHARE_PID1, marker=marker) as dev8:
        host = await dev8.dev8_pid()
        with fail_after(60, "the storm", dev8.tail):
            while not dev8.messages("storm over"):
                # The API keeps answering during the storm.
                with trio.fail_after(5):
                    health = await dev8.http.get("/health")
                assert health.status_code in (200, 503)
                await trio.sleep(0.1)
        await no_zombie_below(dev8, 10)
        # Only dev8's two services are left in the container: every orphan was reaped.
        pids = await dev8.service_pids()
        left = live_descendants(host)
        assert len(left) == 2, left
        assert (await dev8.status())["pid"] == 1
        assert all(pid_alive(pid) for pid in left)
        assert (await dev8.service("storm"))["restarts"] == 0
        assert len(pids) == 2


@pytest.mark.parametrize("pid1", [False, True], ids=["subreaper", "pid1"])
async def test_signals_are_handled_as_documented(
    tmp_path: Path, api_port: int, marker: str, pid1: bool
) -> None:
    config = write_config(
        tmp_path / "dev8.yaml", {"listener": python_service(LISTENER, marker)}, port=api_port
    )
    prefix = UNSHARE_PID1 if pid1 else ()
    async with open_dev8(config, port=api_port, prefix=prefix, marker=marker) as dev8:
        await dev8.wait_log(printed("listener", "listening"), what="the listener")
        pid = (await dev8.service_pids())["listener"]
        host = await dev8.dev8_pid()
        for sig in IGNORED_SIGNALS:
            await dev8.signal(sig)
            await dev8.wait_log(
                logged("signal_received", signal=sig.name, action="ignored"),
                what=f"{sig.name} logged as ignored",
            )
        assert dev8.process.returncode is None
        assert proc_state(host) in ("R", "S")
        assert (await dev8.service_pids())["listener"] == pid  # untouched
        assert not [e for e in dev8.logs() if str(e.get("message", "")).startswith("got ")]

        # HUP: the config is read again (unchanged here: nothing restarts).
        await dev8.signal(signal.SIGHUP)
        reloaded = await dev8.wait_log(logged("config_reloaded"), what="the reload")
        assert reloaded["unchanged"] == ["listener"]

        # INT (or TERM) shuts down gracefully: exit 0, nothing left.
        members = set(live_descendants(host))
        assert len(members) == 1
        await dev8.signal(signal.SIGTERM if pid1 else signal.SIGINT)
        assert await dev8.wait_exit(20) == 0
    assert not [p for p in members if pid_alive(p)]
    assert pids_with_marker(marker) == []
    actions = [(e["signal"], e["action"]) for e in dev8.messages("signal_received")]
    assert actions == [
        *[(sig.name, "ignored") for sig in IGNORED_SIGNALS],
        ("SIGHUP", "reload"),
        ("SIGTERM" if pid1 else "SIGINT", "shutdown"),
    ]


async def test_a_critical_failure_as_pid1_exits_3_and_leaves_nothing(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    # `vital` fails only once the test has seen the tree up (a file appears), never on a timer:
    # on a busy machine dev8 could otherwise be gone before the test reads its descendants.
    go = tmp_path / "fail-now"
    config = write_config(
        tmp_path / "dev8.yaml",
        {
            "steady": python_service(SLEEPER, marker),
            "vital": shell_service(
                f"while [ ! -e {go} ]; do sleep 0.05; done; exit 7",
                marker,
                critical=True,
                restart="transient",
                intensity={"max_restarts": 1, "window": 60.0},
            ),
        },
        port=api_port,
    )
    async with open_dev8(config, port=api_port, prefix=UNSHARE_PID1, marker=marker) as dev8:
        await dev8.wait_ready()
        for name in ("steady", "vital"):
            await dev8.wait_service(
                name, lambda node: node["info"]["pid"] is not None, what="to run"
            )
        members = set(live_descendants(await dev8.dev8_pid()))
        assert len(members) >= 2
        go.touch()
        code = await dev8.wait_exit(30)
    assert code == 3  # through unshare: PID 1's own exit code
    assert not [p for p in members if pid_alive(p)]
    assert pids_with_marker(marker) == []
    assert dev8.messages("dev8_exit", exit_code=3)


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        (
            {"command": ["{noexec}"]},
            (
                "cannot start '{noexec}': Permission denied",
                "services.broken.command: user '{me}' cannot execute {noexec}: not executable",
            ),
        ),
        (
            {"command": ["{dir}"]},
            (
                "cannot start '{dir}': Permission denied",
                "services.broken.command: '{dir}' is a directory",
            ),
        ),
        (
            {"command": ["sleep", "1000"], "cwd": "/nonexistent/dev8-dir"},
            (
                "cannot start 'sleep' in '/nonexistent/dev8-dir': No such file or directory",
                "services.broken.cwd: directory /nonexistent/dev8-dir does not exist",
            ),
        ),
        (
            {"command": ["sleep", "1000"], "user": "dev8-no-such-user"},
            (
                "user 'dev8-no-such-user' does not exist",
                "services.broken.user: user 'dev8-no-such-user' does not exist",
            ),
        ),
    ],
    ids=["not-executable", "a-directory", "missing-cwd", "missing-user"],
)
async def test_a_service_that_cannot_start_gives_up_clearly_and_dev8_stays(
    tmp_path: Path,
    api_port: int,
    marker: str,
    service: dict[str, object],
    expected: tuple[str, str],
) -> None:
    message, refusal = expected
    noexec = tmp_path / "script.sh"
    noexec.write_text("#!/bin/sh\nexit 0\n")
    noexec.chmod(0o644)
    fill = {
        "{noexec}": str(noexec),
        "{dir}": str(tmp_path),
        "{me}": pwd.getpwuid(os.geteuid()).pw_name,
    }
    text = yaml.safe_dump(service)
    for name, value in fill.items():
        text = text.replace(name, value)
        message = message.replace(name, value)
        refusal = refusal.replace(name, value)
    broken = {
        **yaml.safe_load(text),
        "env": {"MARK": marker},
        "intensity": {"max_restarts": 1, "window": 60.0},
    }
    steady = {"steady": python_service(SLEEPER, marker)}
    config = write_config(tmp_path / "dev8.yaml", {**steady, "broken": broken}, port=api_port)

    # At start, the pre-flight checks refuse it: one line naming the file and the key, exit 2.
    refused = await run_cli("run", "--config", str(config))
    assert refused.returncode == 2, refused.stderr
    [line] = refused.stderr.decode().splitlines()
    assert line.startswith(f"dev8: config error in {config}: {refusal}")
    assert pids_with_marker(marker) == []

    # Added later (a reload; or the file went away after start): given up on, dev8 stays.
    write_config(config, steady, port=api_port)
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        write_config(config, {**steady, "broken": broken}, port=api_port)
        async with dev8.events("service=broken") as events:
            reload = await dev8.http.post("/reload")
            assert reload.status_code == 202, reload.text
            await events.wait_for("child_gave_up", child="broken", timeout=20)
        errors = {e["data"]["error"] for e in events.of("child_exited", "broken")}
        assert errors == {f"SpawnError: {message}"}
        health = await dev8.http.get("/health")
        assert health.status_code == 503
        assert health.json()["services"] == {"steady": "running", "broken": "fatal"}
        assert dev8.process.returncode is None
        await dev8.signal(signal.SIGTERM)
        assert await dev8.wait_exit(15) == 0
    assert not [line for line in dev8.lines if "Traceback" in line]


# A group: the leader, a child that ignores SIGTERM, and its own child; pids in $PIDS.
FAMILY = """\
import os, signal, sys, time
pids = [os.getpid()]
for stubborn in (True, False):
    child = os.fork()
    if child == 0:
        if stubborn:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if os.fork() == 0:
                time.sleep(1000)
        time.sleep(1000)
    pids.append(child)
with open(os.environ["PIDS"], "w") as f:
    f.write(" ".join(map(str, pids)))
print("family", flush=True)
time.sleep(1000)
"""


async def test_stopping_a_service_takes_its_whole_process_group(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    pids_file = tmp_path / "pids"
    config = write_config(
        tmp_path / "dev8.yaml",
        {"family": python_service(FAMILY, marker, env={"PIDS": str(pids_file)}, stop_timeout=1)},
        port=api_port,
    )
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        await dev8.wait_log(printed("family", "family"), what="the family")
        host = await dev8.dev8_pid()
        # The leader prints once its children exist; the grandchild may be a moment later.
        await wait_until(lambda: len(live_descendants(host)) == 4, timeout=5, what="the grandchild")
        members = set(live_descendants(host))
        assert len(members) == 4  # leader, two children, one grandchild
        started = trio.current_time()
        stopped = await dev8.http.post("/services/family/stop")
        assert stopped.json()["state"] == "stopped"
        await wait_until(
            lambda: not any(pid_alive(p) for p in members), timeout=30, what="the group gone"
        )
        # The whole group had its stop_timeout (issue #12, 15), then SIGKILL took the stubborn.
        assert trio.current_time() - started >= 1.0
        # Logged as the SIGKILL is sent: stdout may bring it a moment after the group is gone.
        await dev8.wait_log(
            lambda entry: entry.get("message") == "stop_timeout_kill", what="stop_timeout_kill"
        )
        assert live_descendants(host) == {}
        await no_zombie_below(dev8, 5)


# Exits 1 leaving a grandchild that ignores SIGTERM, in its process group; appends its pid.
LEAVER = """(trap '' TERM; exec sleep 1000) & echo $! >> "$PIDS"; sleep 0.2; exit 1"""


async def test_what_an_exited_service_leaves_behind_is_cleared(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    """Regression: leftovers got SIGTERM only, so a TERM-ignoring one piled up at each restart."""
    pids_file = tmp_path / "pids"
    config = write_config(
        tmp_path / "dev8.yaml",
        {
            "leaver": shell_service(
                LEAVER,
                marker,
                env={"PIDS": str(pids_file)},
                stop_timeout=0.5,
                restart="transient",
                intensity={"max_restarts": 2, "window": 60.0},
            ),
        },
        port=api_port,
    )
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        async with dev8.events("since=0&service=leaver") as events:
            await events.wait_for("child_gave_up", child="leaver", timeout=30)
        leftovers = [int(p) for p in pids_file.read_text().split()]
        assert len(leftovers) == 3
        await wait_until(
            lambda: not any(pid_alive(p) for p in leftovers), timeout=5, what="leftovers gone"
        )
        # Each clearing is logged once its group is gone: the line may trail the kill.
        await wait_until(
            lambda: len(dev8.messages("leftovers_killed", stop_timeout=0.5)) >= 3,
            timeout=10,
            what="three leftovers_killed lines",
        )
        assert len(dev8.messages("leftovers_killed", stop_timeout=0.5)) == 3
        assert live_descendants(await dev8.dev8_pid()) == {}


async def test_shutdown_as_pid1_also_stops_processes_it_did_not_start(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    """Like `docker exec`: a process joined the container from outside; the sweep stops it."""
    config = write_config(
        tmp_path / "dev8.yaml",
        {"steady": python_service(SLEEPER, marker)},
        port=api_port,
        shutdown={"timeout": 10.0, "kill_grace": 3.0},
    )
    async with open_dev8(config, port=api_port, prefix=UNSHARE_PID1, marker=marker) as dev8:
        host = await dev8.dev8_pid()
        async with trio.open_nursery() as nursery:
            joined = await nursery.start(
                run_joined, ["nsenter", "-t", str(host), "-p", "-m", "--", "sleep", "1000"]
            )
            await wait_until(
                lambda: bool(pids_with_marker("1000") and joined.pid), timeout=5, what="joined"
            )
            await dev8.signal(signal.SIGTERM)
            assert await dev8.wait_exit(20) == 0
            with fail_after(5, "the joined process to end"):
                code = await joined.wait()
    # Stopped by dev8's sweep (SIGTERM), not by the namespace's end (SIGKILL).
    assert code in (-signal.SIGTERM, 128 + signal.SIGTERM)
    assert dev8.messages("dev8_swept")[0]["processes"] >= 1
    assert pids_with_marker(marker) == []


async def run_joined(
    argv: list[str], *, task_status: trio.TaskStatus[trio.Process] = trio.TASK_STATUS_IGNORED
) -> None:
    process = await trio.lowlevel.open_process(argv, stdin=subprocess.DEVNULL)
    try:
        task_status.started(process)
        await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
