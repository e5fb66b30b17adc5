"""``python -m dev8`` and the ``dev8`` command.

For ``run``, the signals are caught before anything heavy is imported (see dev8.pid1.signals): as
PID 1, one that arrived during the imports would otherwise be lost. The cyclic garbage collector is
off until the tree has started (``Dev8.run`` collects once, freezes what exists and turns it back
on): start-up only adds objects that live as long as dev8, and the collector's passes over them
(each more expensive as the heap grows) cost about a tenth of the time to the API's first answer.
"""

import gc
import sys

from dev8.pid1.signals import SignalCatcher


def main() -> int:
    early = None
    if sys.argv[1:2] == ["run"]:
        early = SignalCatcher().install()
        gc.disable()
    from dev8.cli import main as cli_main  # noqa: PLC0415 - only once the signals are caught

    return cli_main(early_signals=early)


if __name__ == "__main__":
    sys.exit(main())
