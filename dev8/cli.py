"""The ``dev8`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import trio

import dev8

from .app import Dev8
from .config import DEFAULT_CONFIG_PATH, ConfigError, config_to_dict, load_config
from .logs import configure_logging

EXIT_BAD_CONFIG = 2


def _default_config_path() -> str:
    return os.environ.get("DEV8_CONFIG", DEFAULT_CONFIG_PATH)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dev8", description="Workspace supervisor (PID 1).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the supervisor (as the container's init)")
    run.add_argument("--config", default=None, help=f"config file (default {DEFAULT_CONFIG_PATH})")

    config = commands.add_parser("config", help="check or show a configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_commands.add_parser("check", help="validate a config file without running")
    check.add_argument("file", nargs="?", default=None)
    show = config_commands.add_parser("show", help="print the effective config (secrets hidden)")
    show.add_argument("--config", default=None)

    commands.add_parser("version", help="print the version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(dev8.__version__)
        return 0
    if args.command == "config":
        path = (args.file if args.config_command == "check" else args.config) or (
            _default_config_path()
        )
        try:
            config = load_config(path)
        except ConfigError as error:
            print(f"dev8: {error}", file=sys.stderr)
            return EXIT_BAD_CONFIG
        if args.config_command == "check":
            print(f"{path}: ok ({len(config.services)} services)")
        else:
            print(json.dumps(config_to_dict(config), indent=2, default=str))
        return 0
    return _run(args.config or _default_config_path())


def _run(path: str) -> int:
    try:
        config = load_config(path)
    except ConfigError as error:
        print(f"dev8: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG

    configure_logging(
        level=config.log.level, environment_id=config.environment_id, user_id=config.user_id
    )
    return trio.run(Dev8(config, config_path=path).run)


if __name__ == "__main__":
    sys.exit(main())
