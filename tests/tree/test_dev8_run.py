"""End to end: the real `dev8 run` as a subprocess, its JSON log, its HTTP API and its websocket."""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import trio
from support.dev8_harness import (
    NO_BACKOFF,
    Json,
    logged,
    open_dev8,
    pid_alive,
    pids_with_marker,
    printed,
    python_service,
    run_cli,
    shell_service,
    wait_until,
    write_config,
)

import dev8

SLEEPER = "import time\nprint('up', flush=True)\ntime.sleep(1000)\n"
TERM_IGNORER = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(1000)\n"
)
# Leaves a grandchild in a session of its own (out of reach of the service's process group);
# the grandchild writes its pid to $PIDFILE.
ESCAPER = """\
import os, time
child = os.fork()
if child == 0:
    os.setsid()
    if os.fork() == 0:
        with open(os.environ["PIDFILE"] + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(os.environ["PIDFILE"] + ".tmp", os.environ["PIDFILE"])
        time.sleep(1000)
    os._exit(0)
os.waitpid(child, 0)
time.sleep(1000)
"""
ONE_RESTART_A_MINUTE = {"max_restarts": 1, "window": 60.0}


async def test_sigkilled_child_is_restarted_and_reported(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    config = write_config(
        tmp_path / "dev8.yaml",
        {"victim": python_service(SLEEPER, marker, backoff=dict(NO_BACKOFF))},
        port=api_port,
    )
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        first = await dev8.wait_service("victim", lambda n: n["state"] == "running", what="up")
        old_pid = first["info"]["pid"]
        await dev8.wait_log(printed("victim", "up"), what="the victim's first line")
        async with dev8.events("service=victim") as events:
            os.kill(old_pid, signal.SIGKILL)
            exited = await events.wait_for("child_exited", child="victim")
            scheduled = await events.wait_for("restart_scheduled", child="victim")
            started = await events.wait_for("child_started", child="victim")

        assert exited["source"] == "dev8/services/victim"
        assert exited["data"]["abnormal"] is True
        assert exited["data"]["error"] == "ProcessExited: killed by SIGKILL"
        # Its last output comes with its exit (`lastOutput`): why it failed, at a glance.
        assert exited["data"]["details"] == {
            "signal": "SIGKILL",
            "exitCode": None,
            "lastOutput": ["up"],
        }
        assert scheduled["data"]["reason"] == "crash"
        assert scheduled["data"]["restarts"] == 1
        assert started["data"]["restarts"] == 1
        new_pid = started["data"]["info"]["pid"]
        assert new_pid != old_pid
        assert exited["seq"] < scheduled["seq"] < started["seq"]

        node = await dev8.service("victim")
        assert node["state"] == "running"
        assert node["restarts"] == 1
        assert node["restartReasons"] == {"crash": 1}
        assert node["info"]["pid"] == new_pid
        assert node["lastExit"]["details"]["signal"] == "SIGKILL"
        assert "killed by SIGKILL" in node["lastExit"]["error"]
        assert pid_alive(new_pid)
        assert not pid_alive(old_pid)
        logged = dev8.messages("child_exited", child="victim")
        assert [entry["details"]["signal"] for entry in logged] == ["SIGKILL"]

        # A manual restart over HTTP counts too, with its own reason.
        response = await dev8.http.post("/restart/victim")
        assert response.status_code == 200, response.text
        assert response.json()["restarts"] == 2
        node = await dev8.service("victim")
        assert node["restartReasons"] == {"crash": 1, "manual": 1}
        assert node["info"]["pid"] != new_pid
        assert not pid_alive(new_pid)


async def test_crash_loop_ends_fatal_and_dev8_keeps_running(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    config = write_config(
        tmp_path / "dev8.yaml",
        {
            "steady": python_service(SLEEPER, marker),
            "crasher": shell_service(
                "echo crashing; exit 7",
                marker,
                backoff=dict(NO_BACKOFF),
                intensity={"max_restarts": 3, "window": 60.0},
            ),
        },
        port=api_port,
    )
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        async with dev8.events("since=0&service=crasher") as events:
            gave_up = await events.wait_for("child_gave_up", child="crasher")
        assert gave_up["data"]["restarts"] == 3
        assert gave_up["data"]["maxRestarts"] == 3
        exits = events.of("child_exited", "crasher")
        assert [e["data"]["details"]["exitCode"] for e in exits] == [7, 7, 7, 7]
        assert len(events.of("child_started", "crasher")) == 4

        health = await dev8.http.get("/health")
        assert health.status_code == 503
        assert health.json()["services"] == {"steady": "running", "crasher": "fatal"}
        node = await dev8.service("crasher")
        assert (node["state"], node["restarts"]) == ("fatal", 3)
        assert dev8.process.returncode is None
        steady = await dev8.service("steady")
        assert steady["state"] == "running"
        assert pid_alive(steady["info"]["pid"])
        assert dev8.messages("child_gave_up", child="crasher")[0]["level"] == "warning"

        await dev8.signal(signal.SIGTERM)
        assert await dev8.wait_exit(15) == 0
    # It stayed given up: no start after the give-up.
    assert len(dev8.messages("child_started", child="crasher")) == 4


async def test_critical_service_failure_exits_3(tmp_path: Path, api_port: int, marker: str) -> None:
    config = write_config(
        tmp_path / "dev8.yaml",
        {
            "steady": python_service(SLEEPER, marker),
            "vital": shell_service(
                "exit 9",
                marker,
                critical=True,
                backoff=dict(NO_BACKOFF),
                intensity=ONE_RESTART_A_MINUTE,
            ),
        },
        port=api_port,
    )
    async with open_dev8(config, port=api_port, marker=marker, wait_ready=False) as dev8:
        assert await dev8.wait_exit(20) == 3
    assert len(dev8.messages("child_exited", child="vital")) == 2
    assert dev8.messages("child_gave_up", child="vital")
    assert dev8.messages("dev8_tree_failed")
    assert dev8.messages("dev8_exit")[-1]["exit_code"] == 3
    steady_pid = dev8.messages("child_started", child="steady")[0]["info"]["pid"]
    assert not pid_alive(steady_pid)
    assert pids_with_marker(marker) == []


@pytest.mark.parametrize(
    ("variant", "where"),
    [
        ("wrong_type", "services.broken.stop_timeout"),
        ("unknown_key", "services.broken.restrat"),
        ("bad_yaml", ""),
        ("missing_file", ""),
    ],
)
async def test_bad_config_is_one_clear_error_and_starts_nothing(
    tmp_path: Path, api_port: int, marker: str, variant: str, where: str
) -> None:
    started = tmp_path / "started"
    config = write_config(
        tmp_path / "dev8.yaml",
        {
            "toucher": shell_service(f"touch {started}; exec sleep 1000", marker),
            "broken": shell_service("exec sleep 1000", marker),
        },
        port=api_port,
    )
    text = config.read_text()
    if variant == "wrong_type":
        text = text.replace("broken:\n", "broken:\n    stop_timeout: soon\n")
    elif variant == "unknown_key":
        text = text.replace("broken:\n", "broken:\n    restrat: always\n")
    elif variant == "bad_yaml":
        text += "services: [unclosed\n"
    else:
        config = tmp_path / "absent.yaml"
    if variant != "missing_file":
        config.write_text(text)

    result = await run_cli("run", "--config", str(config))

    assert result.returncode == 2
    assert result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"dev8: config error in {config}: {where}")
    assert "Traceback" not in lines[0]
    assert not started.exists()
    assert pids_with_marker(marker) == []

    check = await run_cli("config", "check", str(config))
    assert check.returncode == 2
    assert check.stderr.decode().splitlines() == lines


async def test_config_check_show_and_version(tmp_path: Path, api_port: int, marker: str) -> None:
    secret = "ghp-e2e-not-to-be-seen-0123456789"
    config = write_config(
        tmp_path / "dev8.yaml",
        {
            "one": shell_service("exec sleep 1000", marker),
            "two": python_service(SLEEPER, marker, env={"GITHUB_TOKEN": secret, "COLOR": "blue"}),
        },
        port=api_port,
    )
    check = await run_cli("config", "check", str(config))
    assert (check.returncode, check.stderr) == (0, b"")
    assert check.stdout.decode().strip() == f"{config}: ok (2 services)"

    show = await run_cli("config", "show", "--config", str(config))
    assert show.returncode == 0, show.stderr
    assert secret.encode() not in show.stdout + show.stderr
    shown = json.loads(show.stdout)
    assert shown["services"]["two"]["env"]["GITHUB_TOKEN"] == "***"
    assert shown["services"]["two"]["env"]["COLOR"] == "blue"
    assert shown["api"]["bind"] == f"127.0.0.1:{api_port}"

    version = await run_cli("version")
    assert (version.returncode, version.stdout.decode().strip()) == (0, dev8.__version__)
    # The literal in dev8/__init__.py is what pyproject.toml installs (a dynamic version).
    assert dev8.__version__ == importlib.metadata.version("dev8")


#: Runs the tree with the old generations deferred, as `dev8 run` does (dev8.__main__), and
#: prints whether, once the tree started, the thresholds are back and start-up's objects frozen.
GC_AFTER_START_UP = """\
import gc, sys, trio
from dev8.app import Dev8
from dev8.config import load_config
from dev8.pid1.collector import defer_old_generations

async def main():
    run = Dev8(load_config(sys.argv[1]))
    async with trio.open_nursery() as nursery:
        await nursery.start(run.run)
        print("gc:", gc.get_threshold() == before, gc.get_freeze_count() > 0, flush=True)
        run.shutdown_requested.set()

before = gc.get_threshold()
defer_old_generations()
assert gc.get_threshold() != before
trio.run(main)
"""


async def test_the_collector_is_back_to_normal_once_the_tree_started(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    config = write_config(
        tmp_path / "dev8.yaml", {"one": shell_service("exec sleep 1000", marker)}, port=api_port
    )
    done = await trio.run_process(
        [sys.executable, "-c", GC_AFTER_START_UP, str(config)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    lines = [line for line in done.stdout.decode().splitlines() if line.startswith("gc:")]
    assert lines == ["gc: True True"]
    assert pids_with_marker(marker) == []


async def test_missing_command_gives_up_with_clear_error(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    program = "/nonexistent/dev8-no-such-program"
    steady = {"steady": python_service(SLEEPER, marker)}
    ghost = {
        "command": [program, marker],
        "backoff": {"initial_delay": 0.0, "min_delay": 0.2, "max_delay": 0.2},
        "intensity": {"max_restarts": 2, "window": 60.0},
    }
    config = write_config(tmp_path / "dev8.yaml", {**steady, "ghost": ghost}, port=api_port)
    # At start the pre-flight check refuses it (tests/services/test_preflight.py); added by a
    # reload, or gone after the start, it fails at spawn and is given up on.
    refused = await run_cli("run", "--config", str(config))
    assert (refused.returncode, refused.stderr.decode()) == (
        2,
        f"dev8: config error in {config}: services.ghost.command: {program!r} does not exist\n",
    )
    write_config(config, steady, port=api_port)
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        write_config(config, {**steady, "ghost": ghost}, port=api_port)
        async with dev8.events("service=ghost") as events:
            assert (await dev8.http.post("/reload")).status_code == 202
            await events.wait_for("child_gave_up", child="ghost")
        exits = events.of("child_exited", "ghost")
        assert len(exits) == 3
        expected = f"SpawnError: cannot start {program!r}: No such file or directory"
        assert {e["data"]["error"] for e in exits} == {expected}
        assert all(e["data"]["abnormal"] for e in exits)
        delays = [e["data"]["delay"] for e in events.of("restart_scheduled", "ghost")]
        assert len(delays) == 2
        assert delays[1] > 0  # the second restart waited in backoff
        assert events.of("child_started", "ghost") == []

        health = await dev8.http.get("/health")
        assert health.status_code == 503
        assert health.json()["services"] == {"steady": "running", "ghost": "fatal"}
        assert dev8.process.returncode is None
        assert (await dev8.service("steady"))["state"] == "running"
        assert [e["error"] for e in dev8.messages("child_exited", child="ghost")] == [expected] * 3
        await dev8.signal(signal.SIGTERM)
        assert await dev8.wait_exit(15) == 0


async def test_sigterm_stops_every_process_within_the_deadline(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    deadline = 5.0
    pidfile = tmp_path / "escapee.pid"
    config = write_config(
        tmp_path / "dev8.yaml",
        {
            "sleeper": python_service(SLEEPER, marker),
            "stubborn": python_service(TERM_IGNORER, marker, stop_timeout=0.5),
            "escaper": python_service(ESCAPER, marker, env={"PIDFILE": str(pidfile)}),
        },
        port=api_port,
        shutdown={"timeout": deadline, "kill_grace": 1.0},
    )
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        await dev8.wait_log(printed("stubborn", "ready"), what="stubborn ignoring SIGTERM")
        await wait_until(pidfile.exists, timeout=10, what="the escapee's pid file")
        escapee = int(pidfile.read_text())
        pids = await dev8.service_pids()
        assert set(pids) == {"sleeper", "stubborn", "escaper"}
        assert all(pid_alive(pid) for pid in [*pids.values(), escapee])

        started = trio.current_time()
        await dev8.signal(signal.SIGTERM)
        assert await dev8.wait_exit(deadline + 10) == 0
        elapsed = trio.current_time() - started

    assert elapsed < deadline + 2.0
    left = {name: pid for name, pid in [*pids.items(), ("escapee", escapee)] if pid_alive(pid)}
    assert left == {}
    assert pids_with_marker(marker) == []
    kills = dev8.messages("stop_timeout_kill", service="stubborn")
    assert [k["pid"] for k in kills] == [pids["stubborn"]]
    assert dev8.messages("dev8_swept")[0]["processes"] >= 1  # the escapee, out of the groups
    logs = dev8.logs()
    exit_at = next(i for i, e in enumerate(logs) if e.get("message") == "dev8_exit")
    stopped = {e["child"] for e in logs[:exit_at] if e.get("message") == "child_stopped"}
    assert {"sleeper", "stubborn", "escaper", "services", "api"} <= stopped
    assert logs[exit_at]["exit_code"] == 0


async def test_second_sigterm_skips_to_the_kill(tmp_path: Path, api_port: int, marker: str) -> None:
    stop_timeout = 30.0
    config = write_config(
        tmp_path / "dev8.yaml",
        {"stubborn": python_service(TERM_IGNORER, marker, stop_timeout=stop_timeout)},
        port=api_port,
        shutdown={"timeout": 60.0, "kill_grace": 2.0},
    )
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        await dev8.wait_log(printed("stubborn", "ready"), what="stubborn ignoring SIGTERM")
        pid = (await dev8.service_pids())["stubborn"]
        await dev8.signal(signal.SIGTERM)
        await dev8.wait_log(logged("child_stopping", child="stubborn"), what="stubborn stopping")
        assert pid_alive(pid)
        started = trio.current_time()
        await dev8.signal(signal.SIGTERM)
        code = await dev8.wait_exit(15)
        elapsed = trio.current_time() - started

    assert code == 0
    assert elapsed < 10.0  # well before stubborn's stop_timeout of 30 s
    assert not pid_alive(pid)
    assert pids_with_marker(marker) == []
    assert [e["action"] for e in dev8.messages("signal_received")] == ["shutdown", "kill"]
    assert dev8.messages("dev8_shutdown_forced")


async def test_service_output_becomes_json_log_lines(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    talker = (
        "import sys\n"
        "print('hello \"quoted\" world')\n"
        'print(\'{"message": "spoof", "service": "other"}\')\n'
        "sys.stdout.flush()\n"
        "sys.stdout.buffer.write(b'bad \\xff bytes\\n')\n"
        "sys.stdout.buffer.write(b'x' * 20000 + b'\\n')\n"
        "sys.stdout.flush()\n"
        "print('to stderr', file=sys.stderr)\n"
        "print('the end')\n"
    )
    config = write_config(
        tmp_path / "dev8.yaml",
        {"talker": python_service(talker, marker, restart="temporary")},
        port=api_port,
    )
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        await dev8.wait_log(printed("talker", "the end"), what="the talker's last line")
        await dev8.wait_log(printed("talker", "to stderr"), what="the talker's stderr")
        await dev8.signal(signal.SIGTERM)
        assert await dev8.wait_exit(15) == 0

    logs = dev8.logs()  # every line parses as a JSON object
    assert logs
    assert all(isinstance(e.get("message"), str) and "level" in e for e in logs)
    said = [e for e in logs if e.get("service") == "talker"]
    assert [(e["stream"], e["message"]) for e in said if e["stream"] == "stderr"] == [
        ("stderr", "to stderr")
    ]
    out: list[Json] = [e for e in said if e["stream"] == "stdout"]
    # A 20000-byte line comes out whole or split at the 16 KiB cap, never altered.
    shown = [m if set(m) != {"x"} else f"x*{len(m)}" for m in (e["message"] for e in out)]
    assert shown == [
        'hello "quoted" world',
        '{"message": "spoof", "service": "other"}',
        "bad \ufffd bytes",
        "x*16384",
        "x*3616",
        "the end",
    ]
    assert all(e["environment_id"] == "e2e-env" and e["user_id"] == "e2e-user" for e in said)
    assert not [e for e in logs if e.get("service") == "other"]
