"""Operator-visible faults of the real `dev8 run`, kept fixed: stops that did not stick, a slow
reload that took dev8 down, and every exit code of `dev8 run` reached end to end."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

import httpx
import trio
import yaml
from support.dev8_harness import (
    REPO_ROOT,
    Dev8Run,
    EventStream,
    Json,
    fail_after,
    find_node,
    open_dev8,
    pid_alive,
    pids_with_marker,
    printed,
    python_service,
    shell_service,
    wait_until,
    write_config,
)
from support.net import free_port

from dev8.pid1.exit_codes import ExitCode

SLEEPER = "import time\nprint('up', flush=True)\ntime.sleep(1000)\n"
#: Restarts after the floor delay (0.05 s), without jitter.
QUICK_BACKOFF = {"initial_delay": 0.0, "min_delay": 0.05, "max_delay": 0.05, "jitter": 0.0}
#: Never given up on during a test.
PATIENT = {"max_restarts": 1000, "window": 60.0}
#: Life events of a service: none may follow an answered stop until the next start.
LIFE = ("child_started", "restart_scheduled", "child_stopping", "child_exited", "child_stopped")


def never_ready(marker: str) -> Json:
    """Runs, but its readiness probe (a port nobody listens on) never passes: it times out."""
    probe = {"type": "tcp", "port": free_port(), "interval": 0.1, "timeout": 0.5}
    return python_service(
        SLEEPER,
        marker,
        start_timeout=1.0,
        backoff=dict(QUICK_BACKOFF),
        intensity=dict(PATIENT),
        probes={"readiness": probe},
    )


def crash_looping(marker: str) -> Json:
    """Starts, runs for 0.3 s, fails; restarted after 0.05 s, again and again."""
    return shell_service(
        "echo up; sleep 0.3; exit 3",
        marker,
        backoff=dict(QUICK_BACKOFF),
        intensity=dict(PATIENT),
    )


async def wait_cycles(events: EventStream, witness: str, kind: str, count: int) -> None:
    """Until the witness service (paced like the stopped one) went through `count` more of
    `kind`: the stopped one would have been restarted meanwhile."""
    for _ in range(count):
        await events.wait_for(kind, child=witness, timeout=20.0)


def life_after(events: EventStream, service: str, seq: int) -> list[str]:
    return [
        event["kind"]
        for event in events.seen
        if event["seq"] > seq
        and event["kind"] in LIFE
        and event["source"] == f"dev8/services/{service}"  # not its prober (dev8/health/...)
    ]


async def assert_stop_sticks(dev8: Dev8Run, events: EventStream, name: str, round_: int) -> None:
    """Stop `name` (answered: stopped); while the pacer times out and restarts twice, as `name`
    would have, it stays stopped with no new life; then start it again."""
    stop = await dev8.http.post(f"/services/{name}/stop", timeout=30.0)
    assert stop.status_code == 200, stop.text
    assert stop.json()["state"] == "stopped", (round_, stop.json())
    answered = (await dev8.status())["lastEvent"]
    await wait_cycles(events, "pacer", "restart_scheduled", 2)
    node = await dev8.service(name)
    assert node["state"] == "stopped", (round_, node)
    assert life_after(events, name, answered) == [], round_
    start = await dev8.http.post(f"/services/{name}/start", timeout=30.0)
    assert start.status_code == 200, start.text


async def test_stopping_a_never_ready_service_sticks(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    """It answered `exited` (its start had just timed out) and was `starting` again: 5 of 5."""
    config = write_config(
        tmp_path / "dev8.yaml",
        {"lazy": never_ready(marker), "pacer": never_ready(marker)},
        port=api_port,
    )
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        async with dev8.events() as events:
            for round_ in range(5):
                await dev8.wait_service(
                    "lazy", lambda n: n["state"] == "starting", timeout=20, what="starting"
                )
                await assert_stop_sticks(dev8, events, "lazy", round_)
        assert dev8.process.returncode is None


async def test_stopping_a_crash_looping_service_sticks(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    """A stop that came as it crashed was lost (it went to backoff and started again).

    The pacer, a service whose starts time out, keeps its supervisor busy: the crasher's exits
    wait there to be dealt with, and the stops land on them.
    """
    config = write_config(
        tmp_path / "dev8.yaml",
        {"crasher": crash_looping(marker), "pacer": never_ready(marker)},
        port=api_port,
    )
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        async with dev8.events() as events:
            for round_ in range(5):
                # Mostly as it exits; once as it was just scheduled for a restart.
                moment = "restart_scheduled" if round_ == 2 else "child_exited"
                await events.wait_for(moment, child="crasher", timeout=20.0)
                await assert_stop_sticks(dev8, events, "crasher", round_)
        assert dev8.process.returncode is None


async def test_a_stopped_service_stays_stopped_when_its_supervisor_restarts(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    """The services supervisor, restarted (here crashed through the chaos API), starts its
    children again, but not the one an operator stopped: that one stays stopped."""
    held_marker = f"{marker}-held"
    config = write_config(
        tmp_path / "dev8.yaml",
        {"held": python_service(SLEEPER, held_marker), "other": python_service(SLEEPER, marker)},
        port=api_port,
    )
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    config.write_text(yaml.safe_dump({**data, "chaos": {"enabled": True}}), encoding="utf-8")
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        for name in ("held", "other"):
            await dev8.wait_service(name, lambda n: n["state"] == "running", what="running")
        other_pid = (await dev8.service_pids())["other"]
        stop = await dev8.http.post("/services/held/stop")
        assert (stop.status_code, stop.json()["state"]) == (200, "stopped")
        assert pids_with_marker(held_marker) == []
        async with dev8.events() as events:
            crash = await dev8.http.post("/chaos/actors/dev8/services/crash")
            assert crash.status_code == 200, crash.text
            await events.wait_for("child_started", child="other")
            await wait_running(dev8, "dev8/services", restarts=1)
        assert (await dev8.service_pids())["other"] != other_pid
        # Not started again by its supervisor: nothing ran.
        assert events.of("child_started", "held") == []
        assert pids_with_marker(held_marker) == []
        assert (await dev8.service("held"))["state"] == "stopped"
        start = await dev8.http.post("/services/held/start")
        assert (start.status_code, start.json()["state"]) == (200, "running")
        await wait_until(
            lambda: len(pids_with_marker(held_marker)) == 1, timeout=10, what="held's process"
        )


TERM_IGNORER = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(1000)\n"
)
#: How long the stubborn service takes to stop: its whole stop_timeout, then SIGKILL.
SLOW_STOP = 5.0


def slow_reload_configs(path: Path, port: int, marker: str) -> tuple[Json, Json, Json]:
    """The config before, the first reload (stubborn changed, fresh added) and the second one
    (steady changed too), each as services."""
    steady = python_service(SLEEPER, marker)
    stubborn = python_service(TERM_IGNORER, marker, stop_timeout=SLOW_STOP)
    before = {"steady": steady, "stubborn": stubborn}
    first = {
        "steady": steady,
        "stubborn": {**stubborn, "env": {**stubborn["env"], "GENERATION": "2"}},
        "fresh": python_service(SLEEPER, marker),
    }
    second = {**first, "steady": {**steady, "env": {**steady["env"], "GENERATION": "3"}}}
    write_config(path, before, port=port)
    return before, first, second


async def check_in_effect(dev8: Dev8Run, stubborn_pid: int, steady_pid: int) -> None:
    """The second config is in effect: every service runs, stubborn and steady anew."""
    for name in ("steady", "stubborn", "fresh"):
        await dev8.wait_service(name, lambda n: n["state"] == "running", what="running")
    pids = await dev8.service_pids()
    assert pids["stubborn"] != stubborn_pid
    assert pids["steady"] != steady_pid
    assert not pid_alive(stubborn_pid)
    assert dev8.process.returncode is None
    assert (await dev8.http.get("/livez")).status_code == 200


async def test_a_slow_reload_over_the_api_answers_at_once_and_keeps_dev8_up(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    """It answered 500 internal_error, and over SIGHUP dev8 exited 1 (a CallTimeout)."""
    config = tmp_path / "dev8.yaml"
    _, first, second = slow_reload_configs(config, api_port, marker)
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        await dev8.wait_log(printed("stubborn", "ready"), what="stubborn ignoring SIGTERM")
        pids = await dev8.service_pids()
        async with dev8.events() as events:
            write_config(config, first, port=api_port)
            answer = await dev8.http.post("/reload")
            # Answered while the stubborn service is still being stopped (it takes 5 s).
            assert pid_alive(pids["stubborn"])
            assert answer.status_code == 202, answer.text
            plan = answer.json()
            assert plan["added"] == ["fresh"]
            assert plan["changed"] == ["stubborn"]
            assert plan["removed"] == []
            assert plan["unchanged"] == ["steady"]
            assert plan["restartRequiredFor"] == []
            started = await events.wait_for("reload_started", reload=plan["reload"])
            assert started["data"]["changed"] == ["stubborn"]

            # A second reload while the first runs: queued behind it, planned against it.
            write_config(config, second, port=api_port)
            again = await dev8.http.post("/reload")
            assert again.status_code == 202, again.text
            assert pid_alive(pids["stubborn"])
            queued = again.json()
            assert queued["reload"] == plan["reload"] + 1
            assert (queued["changed"], queued["added"]) == (["steady"], [])
            assert queued["unchanged"] == ["stubborn", "fresh"]

            done = await events.wait_for("reload_finished", reload=plan["reload"], timeout=30)
            assert done["data"]["outcome"] == "applied"
            assert done["data"]["changed"] == ["stubborn"]
            last = await events.wait_for("reload_finished", reload=queued["reload"], timeout=30)
            assert last["data"]["changed"] == ["steady"]
            assert not events.of("reload_failed")
        await check_in_effect(dev8, pids["stubborn"], pids["steady"])


async def test_a_slow_reload_on_sighup_keeps_dev8_up(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    config = tmp_path / "dev8.yaml"
    _, first, second = slow_reload_configs(config, api_port, marker)
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        await dev8.wait_log(printed("stubborn", "ready"), what="stubborn ignoring SIGTERM")
        pids = await dev8.service_pids()
        async with dev8.events() as events:
            write_config(config, first, port=api_port)
            await dev8.signal(signal.SIGHUP)
            started = await events.wait_for("reload_started")
            assert started["data"]["changed"] == ["stubborn"]
            assert started["data"]["added"] == ["fresh"]
            await events.wait_for("child_stopping", child="stubborn")
            write_config(config, second, port=api_port)
            await dev8.signal(signal.SIGHUP)
            finished = [
                await events.wait_for("reload_finished", timeout=30),
                await events.wait_for("reload_finished", timeout=30),
            ]
            assert [e["data"]["changed"] for e in finished] == [["stubborn"], ["steady"]]
            assert {e["data"]["outcome"] for e in finished} == {"applied"}
        await check_in_effect(dev8, pids["stubborn"], pids["steady"])
        # The old stubborn process took its whole stop ladder (SIGKILL after stop_timeout).
        kills = dev8.messages("stop_timeout_kill", service="stubborn")
        assert [kill["pid"] for kill in kills] == [pids["stubborn"]]
        assert not dev8.messages("reload_failed")


# ------------------------------------------------------------------------------ exit codes


def exit_code_rows(path: Path) -> dict[int, str]:
    """The rows of the exit-code table under the heading about exit codes, by code."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#") and "Exit codes" in line)
    rows: dict[int, str] = {}
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].isdigit():
            assert int(cells[0]) not in rows, f"{path}: exit code {cells[0]} listed twice"
            rows[int(cells[0])] = " | ".join(cells[1:])
    return rows


def test_the_exit_code_tables_list_exactly_the_codes_in_the_code() -> None:
    codes = {int(code) for code in ExitCode}
    for doc in ("README.md", "docs/troubleshooting.md"):
        rows = exit_code_rows(REPO_ROOT / doc)
        assert set(rows) == codes, doc
        for code in ExitCode:  # each row names its member, so the table reads like the code
            assert f"`{code.name}`" in rows[int(code)], (doc, code)


async def wait_running(dev8: Dev8Run, path: str, *, restarts: int) -> None:
    """Until the actor at `path` runs, restarted `restarts` times."""
    with fail_after(10, f"{path} running after {restarts} restarts", dev8.tail):
        while True:
            node = find_node((await dev8.status())["tree"], path)
            if (node["state"], node["restarts"]) == ("running", restarts):
                return
            await trio.sleep(0.05)


async def test_the_tree_giving_up_exits_4(tmp_path: Path, api_port: int, marker: str) -> None:
    """Children of dev8's own supervisor failing past its intensity (10 restarts a minute):
    here, crashed through the chaos API 11 times, in turn (each one's backoff stays short)."""
    config = write_config(
        tmp_path / "dev8.yaml", {"steady": python_service(SLEEPER, marker)}, port=api_port
    )
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    config.write_text(yaml.safe_dump({**data, "chaos": {"enabled": True}}), encoding="utf-8")
    victims = ("connections", "secret-watch", "reloader", "health")
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        await dev8.wait_service("steady", lambda n: n["state"] == "running", what="running")
        steady_pid = (await dev8.service_pids())["steady"]
        for crash in range(11):
            path = f"dev8/{victims[crash % len(victims)]}"
            # Each crash once its victim runs again (the last ends the tree: no answer then).
            with contextlib.suppress(httpx.TransportError):
                await wait_running(dev8, path, restarts=crash // len(victims))
                answer = await dev8.http.post(f"/chaos/actors/{path}/crash")
                assert answer.status_code == 200, answer.text
        assert await dev8.wait_exit(30) == ExitCode.RESTART_INTENSITY_EXCEEDED == 4
    escalated = dev8.messages("supervisor_escalated")
    assert escalated[-1]["source"] == "dev8"
    assert escalated[-1]["reason"] == "restart intensity exceeded"
    assert dev8.messages("dev8_exit")[-1]["exit_code"] == 4
    assert not pid_alive(steady_pid)
    assert pids_with_marker(marker) == []
