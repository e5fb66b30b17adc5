"""Regression tests on the real `dev8 run`: supervision faults of the old design, tried as an
operator would.

- 20 non-critical services crash-looping used to trip the `services` supervisor's own intensity:
  it restarted a service that never failed, then dev8 exited 4. Each now becomes `fatal` alone.
- While one service took ~8 s to become ready, a service exiting every 0.5 s was not restarted
  once and a restart of an unrelated service waited for the slow start. Starts now run in the
  child's own task.

Assertions are on order and conditions (event sequence numbers, pids), never on elapsed time;
the `fail_after` bounds are generous limits for a busy machine.
"""

from __future__ import annotations

from pathlib import Path

import trio
from support.dev8_harness import (
    NO_BACKOFF,
    Json,
    open_dev8,
    python_service,
    shell_service,
    write_config,
)
from support.net import free_port

SLEEPER = "import time\nprint('up', flush=True)\ntime.sleep(1000)\n"
#: Listens at once the first time; on every later start, only after 8 s (a slow start).
SLOW_READY = """\
import os, socket, sys, time
flag = os.environ["FLAG"]
if os.path.exists(flag):
    time.sleep(8)
open(flag, "w").close()
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(os.environ["PORT"])))
server.listen()
print("listening", flush=True)
time.sleep(1000)
"""
CRASH_LOOPS = 20


async def test_crash_looping_services_give_up_alone_and_a_steady_service_is_untouched(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    services: dict[str, Json] = {"steady": python_service(SLEEPER, marker)}
    for n in range(CRASH_LOOPS):
        services[f"loop{n:02d}"] = shell_service(
            "exit 1",
            marker,
            backoff=dict(NO_BACKOFF),
            intensity={"max_restarts": 3, "window": 600.0},
        )
    # The services supervisor's own intensity is far below the loops' restarts (20 x 3):
    # it bounds only children without an intensity of their own, so it never trips.
    config = write_config(
        tmp_path / "dev8.yaml",
        services,
        port=api_port,
        supervisor_intensity={"max_restarts": 5, "window": 600.0},
    )
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        steady = await dev8.wait_service(
            "steady", lambda n: n["state"] == "running", timeout=60, what="running"
        )
        pid = steady["info"]["pid"]
        async with dev8.events("since=0") as events:
            gave_up: set[str] = set()
            while len(gave_up) < CRASH_LOOPS:
                event = await events.wait_for("child_gave_up", timeout=120)
                gave_up.add(event["data"]["child"])
        assert gave_up == {f"loop{n:02d}" for n in range(CRASH_LOOPS)}
        assert events.of("supervisor_escalated") == []
        # The steady service was never stopped, restarted or replaced.
        assert [e for e in events.seen if e["data"].get("child") == "steady"] == [
            e for e in events.of("child_started", "steady")
        ]
        status = await dev8.status()
        assert dev8.process.returncode is None
        node = await dev8.service("steady")
        assert (node["state"], node["restarts"], node["info"]["pid"]) == ("running", 0, pid)
        for n in range(CRASH_LOOPS):
            loop = await dev8.service(f"loop{n:02d}")
            assert (loop["state"], loop["restarts"]) == ("fatal", 3)
        services_node = next(c for c in status["tree"]["children"] if c["path"] == "dev8/services")
        assert (services_node["state"], services_node["restarts"]) == ("running", 0)
        assert dev8.messages("dev8_tree_failed") == []


async def test_a_slow_start_holds_up_neither_restarts_nor_commands(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "dev8.yaml",
        {
            "steady": python_service(SLEEPER, marker),
            "flapper": shell_service(
                "sleep 0.5; exit 1",
                marker,
                backoff={
                    "initial_delay": 0.1,
                    "min_delay": 0.1,
                    "max_delay": 0.2,
                    "jitter": 0.0,
                },
                intensity={"max_restarts": 1000, "window": 60.0},
            ),
            "slow": python_service(
                SLOW_READY,
                marker,
                env={"FLAG": str(tmp_path / "started-once"), "PORT": str(port)},
                start_timeout=60.0,
                probes={"readiness": {"type": "tcp", "port": port, "interval": 0.2}},
            ),
        },
        port=api_port,
    )
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        await dev8.wait_service("slow", lambda n: n["state"] == "running", timeout=60, what="up")
        steady_pid = (await dev8.service("steady"))["info"]["pid"]
        answers: dict[str, Json] = {}

        async def restart(name: str) -> None:
            response = await dev8.http.post(f"/services/{name}/restart", timeout=90)
            assert response.status_code == 200, response.text
            answers[name] = response.json()

        async with dev8.events() as events, trio.open_nursery() as nursery:
            # Its next start takes ~8 s to become ready.
            nursery.start_soon(restart, "slow")
            await events.wait_for("child_stopped", child="slow", timeout=30)
            # While it starts: the flapper keeps being restarted...
            for _ in range(3):
                await events.wait_for("child_started", child="flapper", timeout=30)
            # ...and an unrelated restart is answered, all before the slow one is ready.
            await restart("steady")
            slow_ready = await events.wait_for("child_started", child="slow", timeout=60)
        assert (answers["steady"]["state"], answers["steady"]["restarts"]) == ("running", 1)
        assert (await dev8.service("steady"))["info"]["pid"] != steady_pid
        assert answers["slow"]["state"] == "running"
        restarted = events.of("child_started", "steady")
        assert len(restarted) == 1
        assert restarted[0]["seq"] < slow_ready["seq"]
        flapper_starts = [
            e for e in events.of("child_started", "flapper") if e["seq"] < slow_ready["seq"]
        ]
        assert len(flapper_starts) >= 3
        scheduled = [
            e for e in events.of("restart_scheduled", "flapper") if e["seq"] < slow_ready["seq"]
        ]
        assert {e["data"]["delay"] for e in scheduled} <= {0.1, 0.2}
        assert dev8.process.returncode is None
