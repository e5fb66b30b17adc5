"""End to end: the real `dev8 run` as PID 1 of a fresh PID namespace (`unshare`, we are root).

Inside the namespace nobody but dev8 can reap: an orphan not collected by dev8 stays a zombie
forever, and a child whose status dev8's reaper stole is reported with the wrong exit code.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import trio
from support.dev8_harness import (
    NO_BACKOFF,
    UNSHARE_PID1,
    Dev8Run,
    Json,
    fail_after,
    open_dev8,
    pid_alive,
    pids_with_marker,
    printed,
    python_service,
    shell_service,
    wait_until,
    write_config,
)

ORPHANS = 40
EXIT5_RESTARTS = 60

SLEEPER = "import time\nprint('up', flush=True)\ntime.sleep(1000)\n"
TERM_IGNORER = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(1000)\n"
)
# Double forks ORPHANS grandchildren; each waits to be adopted by PID 1, notes its new parent in
# $ADOPTED, and exits 3: a zombie that only dev8 can reap.
ORPHANER = f"""\
import os, time
for _ in range({ORPHANS}):
    if os.fork() == 0:
        if os.fork() == 0:
            deadline = time.monotonic() + 10
            while os.getppid() != 1 and time.monotonic() < deadline:
                time.sleep(0.005)
            with open(os.environ["ADOPTED"], "a") as f:
                f.write(f"{{os.getppid()}}\\n")
            os._exit(3)
        os._exit(0)
    os.wait()
print("orphans made", flush=True)
time.sleep(1000)
"""
# Exits 5 while leaving two orphans behind, one of them exiting at about the same moment.
EXIT5 = "(sleep 0.01 &) ; (exit 3 &) ; exit 5"
# Run inside the namespace's mount namespace: its /proc is the namespace's.
PROC_SCAN = """\
import json, os
found = []
for name in os.listdir("/proc"):
    if name.isdigit():
        try:
            data = open(f"/proc/{name}/stat", "rb").read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2 :].split()
        found.append([int(name), fields[0].decode(), int(fields[1])])
print(json.dumps(found))
"""


async def scan_namespace(dev8: Dev8Run) -> list[tuple[int, str, int]]:
    """(pid, state, ppid) of every process in dev8's PID namespace, as the namespace sees them."""
    host_pid = await dev8.dev8_pid()
    result = await trio.run_process(
        ["nsenter", "-t", str(host_pid), "-m", sys.executable, "-c", PROC_SCAN],
        capture_stdout=True,
    )
    return [(pid, state, ppid) for pid, state, ppid in json.loads(result.stdout)]


async def collect_exit5(dev8: Dev8Run) -> list[Json]:
    """Every child_exited of exit5 until it is given up (or ends in a way it should not)."""
    async with dev8.events("since=0&service=exit5") as events:
        with fail_after(40, "exit5 to be given up", dev8.tail):
            while True:
                event = await events.next()
                if event["kind"] == "child_gave_up":
                    break
                if event["kind"] == "child_exited" and event["data"]["reason"] != "error":
                    break  # reported as a normal exit: a transient service is not restarted
    return events.of("child_exited")


async def test_dev8_as_pid1_reaps_orphans_keeps_exit_codes_and_stops_all(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    deadline = 5.0
    adopted = tmp_path / "adopted"
    config = write_config(
        tmp_path / "dev8.yaml",
        {
            "sleeper": python_service(SLEEPER, marker),
            "stubborn": python_service(TERM_IGNORER, marker, stop_timeout=0.5),
            "orphans": python_service(ORPHANER, marker, env={"ADOPTED": str(adopted)}),
            "exit5": shell_service(
                EXIT5,
                marker,
                restart="transient",
                backoff=dict(NO_BACKOFF),
                intensity={"max_restarts": EXIT5_RESTARTS, "window": 60.0},
            ),
        },
        port=api_port,
        shutdown={"timeout": deadline, "kill_grace": 1.0},
    )
    async with open_dev8(config, port=api_port, prefix=UNSHARE_PID1, marker=marker) as dev8:
        assert (await dev8.status())["pid"] == 1
        assert dev8.messages("dev8_starting")[0]["pid1"] is True

        # Exit code 5, every time, while orphans are reaped around it.
        exits = await collect_exit5(dev8)
        codes = [(e["data"]["reason"], e["data"]["details"]["exitCode"]) for e in exits]
        assert codes == [("error", 5)] * (EXIT5_RESTARTS + 1)
        logged = [e["details"]["exit_code"] for e in dev8.messages("child_exited", child="exit5")]
        assert logged == [5] * (EXIT5_RESTARTS + 1)

        # The orphans were adopted by PID 1 (dev8), and none of them is left a zombie.
        await dev8.wait_log(printed("orphans", "orphans made"), what="the orphans")
        await wait_until(
            lambda: adopted.exists() and len(adopted.read_text().splitlines()) >= ORPHANS,
            timeout=10,
            what="every orphan to report its adoption",
        )
        assert adopted.read_text().splitlines() == ["1"] * ORPHANS
        with fail_after(10, "no zombie left in the namespace"):
            while True:
                processes = await scan_namespace(dev8)
                zombies = [p for p in processes if p[1] == "Z"]
                if not zombies:
                    break
                await trio.sleep(0.05)
        assert any(pid == 1 for pid, _, _ in processes)
        assert len(processes) >= 4  # dev8, sleeper, stubborn, orphans (seen from inside)

        # SIGTERM: everything stops within the deadline, the TERM-ignoring child included.
        await dev8.wait_log(printed("stubborn", "ready"), what="stubborn ignoring SIGTERM")
        host_pids = pids_with_marker(marker)
        assert len(host_pids) >= 3  # sleeper, stubborn, orphans
        started = trio.current_time()
        await dev8.signal(signal.SIGTERM)
        code = await dev8.wait_exit(deadline + 10)
        elapsed = trio.current_time() - started

    assert code == 0
    assert elapsed < deadline + 2.0
    assert [pid for pid in host_pids if pid_alive(pid)] == []
    assert pids_with_marker(marker) == []
    logs = dev8.logs()
    exit_at = next(i for i, e in enumerate(logs) if e.get("message") == "dev8_exit")
    assert logs[exit_at]["exit_code"] == 0
    before_exit = logs[:exit_at]
    kills = [e["service"] for e in before_exit if e.get("message") == "stop_timeout_kill"]
    assert kills == ["stubborn"]
    stopped = {e["child"] for e in before_exit if e.get("message") == "child_stopped"}
    assert {"sleeper", "stubborn", "orphans", "services", "api"} <= stopped
