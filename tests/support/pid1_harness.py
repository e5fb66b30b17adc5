"""Exercise dev8.pid1.reaper as a real PID 1: run me under `unshare --pid --fork --mount-proc`.

Prints one JSON line of results and exits 0 only if every check held.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dev8.pid1.reaper import OwnPids, final_sweep, is_pid1, list_zombie_children, run_reaper

ROUNDS = 300
WORKERS = 3
TERM_IGNORER = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


async def spawn_own(own: OwnPids, argv: list[str], **kwargs: Any) -> trio.Process:
    with own.spawning():
        proc = await trio.lowlevel.open_process(argv, **kwargs)
        own.add(proc.pid)
    return proc


async def wait_own(own: OwnPids, proc: trio.Process) -> int:
    rc = await proc.wait()
    own.discard(proc.pid)
    return rc


async def exit5_worker(own: OwnPids, rounds: int, codes: list[int]) -> None:
    for _ in range(rounds):
        proc = await spawn_own(own, ["sh", "-c", "exit 5"])
        codes.append(await wait_own(own, proc))


async def orphan_maker(own: OwnPids, done: trio.Event) -> int:
    made = 0
    while not done.is_set():
        proc = await spawn_own(own, ["sh", "-c", "(exit 3) & (sleep 0.01; exit 4) & exit 0"])
        await wait_own(own, proc)
        made += 2
    return made


def other_processes() -> list[int]:
    return sorted(int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid())


async def wait_alone() -> list[int]:
    """As PID 1 nobody else can reap: once /proc holds only us, every orphan was reaped by us."""
    with trio.move_on_after(5.0):
        while other_processes():  # noqa: ASYNC110 - /proc has no change notification
            await trio.sleep(0.02)
    return other_processes()


async def main() -> dict[str, Any]:
    res: dict[str, Any] = {"pid": os.getpid(), "is_pid1": is_pid1()}
    own = OwnPids()
    reaped: list[int] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(run_reaper, own, on_reaped=lambda pid, _rc: reaped.append(pid)))

        codes: list[int] = []
        done = trio.Event()
        made: list[int] = []

        async def make_orphans() -> None:
            made.append(await orphan_maker(own, done))

        async with trio.open_nursery() as makers:
            makers.start_soon(make_orphans)
            async with trio.open_nursery() as workers:
                for _ in range(WORKERS):
                    workers.start_soon(exit5_worker, own, ROUNDS // WORKERS, codes)
            done.set()
        res["exit5_runs"] = len(codes)
        res["exit5_wrong"] = sorted({c for c in codes if c != 5})
        res["procs_left_after_race"] = await wait_alone()
        res["zombies_left"] = list_zombie_children()
        res["orphans_made"] = sum(made)
        res["orphans_reaped"] = len(reaped)
        res["own_left"] = len(own)

        # Final sweep: a child that ignores SIGTERM plus an orphan that obeys it.
        ignorer = await spawn_own(own, [sys.executable, "-c", TERM_IGNORER], stdout=subprocess.PIPE)
        assert ignorer.stdout is not None
        with trio.fail_after(10):
            ready = await ignorer.stdout.receive_some()
        res["ignorer_ready"] = ready.startswith(b"ready")
        maker = await spawn_own(own, ["sh", "-c", "sleep 60 & exit 0"])
        await wait_own(own, maker)
        res["before_sweep"] = len(other_processes())
        grace = 0.3
        t0 = trio.current_time()
        res["sweep_signalled"] = await final_sweep(grace=grace, own=own)
        res["sweep_elapsed"] = round(trio.current_time() - t0, 3)
        res["ignorer_rc"] = await wait_own(own, ignorer)
        await ignorer.stdout.aclose()
        res["procs_left"] = other_processes()
        res["zombies_after_sweep"] = list_zombie_children()
        nursery.cancel_scope.cancel()

    res["ok"] = bool(
        res["is_pid1"]
        and res["exit5_runs"] == ROUNDS
        and not res["exit5_wrong"]
        and not res["procs_left_after_race"]
        and not res["zombies_left"]
        and res["orphans_reaped"] > 0
        and res["own_left"] == 0
        and res["ignorer_ready"]
        and res["sweep_signalled"] == 2
        and grace <= res["sweep_elapsed"] < grace + 2.0
        and res["ignorer_rc"] == -signal.SIGKILL
        and not res["procs_left"]
        and not res["zombies_after_sweep"]
    )
    return res


if __name__ == "__main__":
    result = trio.run(main)
    print(json.dumps(result), flush=True)
    sys.exit(0 if result["ok"] else 1)
