"""A stand-in service for local runs of dev8 (standard library only).

It prints a line every `--interval` seconds and, with `--crash-every N`, exits with code 1 at a
random tick, on average every N seconds, so that restarts, backoff and intensity show up in dev8's
/status and /events. `--seed` makes the crash tick reproducible (each run of the same seed crashes
after the same number of ticks). SIGTERM or SIGINT end it cleanly with exit code 0.

    python3 examples/demo_service.py --name flaky --crash-every 20 --seed 7
"""

import argparse
import random
import signal
import sys
import time
from types import FrameType


class _Stop(Exception):
    """Raised from the signal handler to leave the sleep at once."""


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="demo", help="name printed on each line")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between lines")
    parser.add_argument(
        "--crash-every",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="mean seconds between crashes (exit code 1); 0 never crashes",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the crash draw")
    args = parser.parse_args(argv)
    if args.interval <= 0 or args.crash_every < 0:
        parser.error("--interval must be > 0 and --crash-every >= 0")

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    rng = random.Random(args.seed)  # noqa: S311 - crash timing of a demo, not cryptography
    crash_chance = min(1.0, args.interval / args.crash_every) if args.crash_every else 0.0
    tick = 0
    try:
        print(f"{args.name}: started (crash every ~{args.crash_every:g}s)", flush=True)
        while True:
            time.sleep(args.interval)
            tick += 1
            print(f"{args.name}: tick {tick}", flush=True)
            if rng.random() < crash_chance:
                print(
                    f"{args.name}: crashing on purpose at tick {tick}", file=sys.stderr, flush=True
                )
                return 1
    except _Stop as stop:
        print(f"{args.name}: stopping on {stop}", flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(main())
