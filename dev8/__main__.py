"""``python -m dev8`` and the ``dev8`` command.

For ``run``, the signals are caught before anything heavy is imported (see dev8.pid1.signals): as
PID 1, one that arrived during the imports would otherwise be lost. Until the tree has started,
the garbage collector passes over the young generation only (see dev8.pid1.collector).
"""

import sys

from dev8.pid1.collector import defer_old_generations
from dev8.pid1.signals import SignalCatcher


def main() -> int:
    early = None
    if sys.argv[1:2] == ["run"]:
        early = SignalCatcher().install()
        defer_old_generations()
    from dev8.cli import main as cli_main  # noqa: PLC0415 - only once the signals are caught

    return cli_main(early_signals=early)


if __name__ == "__main__":
    sys.exit(main())
