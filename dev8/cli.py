"""The ``dev8`` command."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import trio

import dev8

if TYPE_CHECKING:  # the client (httpx, trio-websocket) is imported only by operator commands
    from dev8.client import ApiClient, Target
    from dev8.pid1.signals import SignalCatcher
    from dev8.services.preflight import Problem
from dev8.config import DEFAULT_CONFIG_PATH, Config, ConfigError, config_to_dict, load_config
from dev8.pid1.exit_codes import ExitCode

EXIT_FAILED = ExitCode.INTERNAL_ERROR  # an operator command that failed
EXIT_BAD_CONFIG = ExitCode.BAD_CONFIG
EXIT_API_UNAVAILABLE = ExitCode.API_UNAVAILABLE
EXIT_INTERRUPTED = ExitCode.INTERRUPTED
#: How often ``dev8 logs -f`` asks for new lines.
FOLLOW_INTERVAL = 0.5


def _default_config_path() -> str:
    return os.environ.get("DEV8_CONFIG", DEFAULT_CONFIG_PATH)


def _parser(*, operator_commands: bool = True) -> argparse.ArgumentParser:
    """`operator_commands=False`: without the commands that talk to a running dev8, which
    ``dev8 run`` does not need (argparse looks up a translation for every help string, a few
    ms before the API can answer)."""
    parser = argparse.ArgumentParser(prog="dev8", description="Workspace supervisor (PID 1).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # Every command takes the config the same way: --config, else $DEV8_CONFIG, else the default.
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help=f"config file ($DEV8_CONFIG, default {DEFAULT_CONFIG_PATH})",
    )

    commands.add_parser("run", parents=[where], help="run the supervisor (as the container's init)")

    config = commands.add_parser("config", help="check or show a configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_commands.add_parser(
        "check", parents=[where], help="validate a config file and this machine, without running"
    )
    check.add_argument("file", nargs="?", default=None, help="the config file (as --config)")
    check.add_argument(
        "--schema-only",
        action="store_true",
        help="check the file only, not this machine (users, directories, commands, port, token)",
    )
    config_commands.add_parser(
        "show", parents=[where], help="print the effective config (secrets hidden)"
    )

    commands.add_parser("version", help="print the version")
    if operator_commands:
        _add_operator_commands(commands)
    return parser


def _add_operator_commands(commands: Any) -> None:
    """The commands that talk to a running dev8 through its API."""
    api = argparse.ArgumentParser(add_help=False)
    where = api.add_argument_group("reaching the API")
    where.add_argument("--api", metavar="URL", help="http://HOST:PORT or unix:/PATH ($DEV8_API)")
    where.add_argument("--token-file", metavar="FILE", help="bearer token ($DEV8_API_TOKEN)")
    where.add_argument(
        "--config", metavar="FILE", help=f"config naming api.bind (default {DEFAULT_CONFIG_PATH})"
    )

    status = commands.add_parser("status", parents=[api], help="show every service")
    status.add_argument("--json", action="store_true", help="print /status as JSON")
    for action, what in (("restart", "restart"), ("stop", "stop"), ("start", "start")):
        command = commands.add_parser(action, parents=[api], help=f"{what} a service")
        command.add_argument("name", metavar="NAME")
    logs = commands.add_parser("logs", parents=[api], help="print a service's recent output")
    logs.add_argument("name", metavar="NAME")
    logs.add_argument("-n", "--lines", type=_lines, default=100, metavar="N")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    events = commands.add_parser("events", parents=[api], help="tail the event stream")
    events.add_argument("--kind", action="append", default=[], metavar="KIND")
    events.add_argument("--service", action="append", default=[], metavar="NAME")
    events.add_argument("--since", type=_whole, default=None, metavar="SEQ")
    events.add_argument("--pretty", action="store_true", help="one short line per event")
    events.add_argument(
        "--retries",
        type=_whole,
        default=None,
        metavar="N",
        help="reconnection attempts before giving up (default: one per step of the back-off)",
    )
    commands.add_parser("reload", parents=[api], help="re-read the config file")
    secrets = commands.add_parser("secrets", help="act on the secrets")
    secrets_commands = secrets.add_subparsers(dest="secrets_command", required=True)
    secrets_commands.add_parser("refresh", parents=[api], help="fetch the secrets now")
    chaos = commands.add_parser("chaos", help="inject a fault (needs chaos.enabled: true)")
    chaos_commands = chaos.add_subparsers(dest="chaos_command", required=True, metavar="ACTION")
    crash = chaos_commands.add_parser(
        "crash", parents=[api], help="make an actor fail (a path of `dev8 status --json`'s tree)"
    )
    crash.add_argument("path", metavar="PATH")
    send = chaos_commands.add_parser(
        "signal", parents=[api], help="send a signal to a service's process group"
    )
    send.add_argument("name", metavar="NAME")
    send.add_argument(
        "signal", metavar="SIG", type=str.upper, choices=["KILL", "STOP", "CONT", "TERM"]
    )


def _whole(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(text)


def _lines(text: str) -> int:
    value = _whole(text)
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError("expected a number of lines from 1 to 1000")
    return value


def main(argv: Sequence[str] | None = None, *, early_signals: SignalCatcher | None = None) -> int:
    """`early_signals`: the catcher ``dev8 run`` installed before its imports (dev8.__main__)."""
    words = sys.argv[1:] if argv is None else list(argv)
    args = _parser(operator_commands=words[:1] != ["run"]).parse_args(words)
    if args.command == "version":
        print(dev8.__version__)
        return 0
    if args.command == "config":
        return _config(args)
    if args.command == "run":
        return _run(args.config or _default_config_path(), early_signals)
    return _operate(args)


def _config(args: argparse.Namespace) -> int:
    if args.config_command == "check" and args.file and args.config:
        print("dev8: give the config file once (FILE or --config)", file=sys.stderr)
        return EXIT_BAD_CONFIG
    path = getattr(args, "file", None) or args.config or _default_config_path()
    try:
        config = load_config(path)
    except ConfigError as error:
        print(f"dev8: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if args.config_command == "check":
        return _check(path, config, schema_only=args.schema_only)
    print(json.dumps(config_to_dict(config), indent=2, default=str))
    return 0


def _one_line(path: str, problems: Sequence[Problem]) -> str:
    """The first problem as the config's one line, with how many more there are."""
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"dev8: {problems[0].error(path)}{more}"


def _check(path: str, config: Config, *, schema_only: bool) -> int:
    from dev8.services.preflight import check  # noqa: PLC0415 - the builtins are needed only here

    problems = [] if schema_only else check(config)
    errors = [problem for problem in problems if problem.fatal]
    if errors:
        print(_one_line(path, errors), file=sys.stderr)
        return EXIT_BAD_CONFIG
    for warning in problems:
        print(f"dev8: warning: {warning.error(path)}", file=sys.stderr)
    print(f"{path}: ok ({len(config.services)} services)")
    return 0


def _run(path: str, early_signals: SignalCatcher | None = None) -> int:
    # Imported here: the server stack costs the operator commands most of their start-up.
    from dev8.api import ApiBindError  # noqa: PLC0415
    from dev8.app import Dev8, api_auth_problem  # noqa: PLC0415
    from dev8.monitoring.logs import LOG_FLUSH_TIMEOUT, configure_logging  # noqa: PLC0415
    from dev8.services.preflight import check  # noqa: PLC0415

    try:
        config = load_config(path)
    except ConfigError as error:
        print(f"dev8: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    # What can be known before anything starts stops dev8 now, in one line, not in a crash loop.
    problems = check(config)
    errors = [problem for problem in problems if problem.key != "api.bind"]
    if errors:
        print(_one_line(path, errors), file=sys.stderr)
        return EXIT_BAD_CONFIG
    if problems:
        print(f"dev8: {problems[0].message}", file=sys.stderr)
        return EXIT_API_UNAVAILABLE
    problem = api_auth_problem(config)
    if problem is not None:
        print(f"dev8: {problem}", file=sys.stderr)
        return EXIT_BAD_CONFIG

    writer = configure_logging(
        level=config.log.level, environment_id=config.environment_id, user_id=config.user_id
    )
    try:
        dev8_run = Dev8(config, config_path=path, signals=early_signals, log_output=writer)
        code = trio.run(dev8_run.run)
    except ApiBindError as error:  # taken between the pre-flight check and the bind
        print(f"dev8: {error}", file=sys.stderr)
        code = EXIT_API_UNAVAILABLE
    except Exception:  # a bug: its traceback, and the exit code that says so
        traceback.print_exc()
        code = ExitCode.INTERNAL_ERROR
    # The tree is down and the processes swept: nothing is left to clean up. Tearing down the
    # interpreter's modules would only delay the container's exit (about 0.15 s).
    logging.shutdown()
    if writer is not None:  # a stalled stdout gets a bounded wait, not the container's exit
        writer.drain(LOG_FLUSH_TIMEOUT)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


# ----------------------------------------------------------------------------- operator commands


def _operate(args: argparse.Namespace) -> int:
    """Run one operator command; every failure is one line on stderr and a non-zero exit."""
    from dev8.client import ApiClient, ApiError, UsageError, locate  # noqa: PLC0415 - see above

    _exit_on_interrupt()
    try:
        target = locate(api=args.api, config=args.config, token_file=args.token_file)
        if args.command == "events":
            return _events(target, args)
        with ApiClient(target) as client:
            return _COMMANDS[args.command](client, args)
    except UsageError as error:
        print(f"dev8: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except ApiError as error:
        print(f"dev8: {error}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        # The reader went away (`dev8 events | head`): nothing left to say to anyone.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _exit_on_interrupt() -> None:
    """Ctrl-C ends an operator command at once: exit 130, nothing on stderr.

    A handler of our own, not Python's KeyboardInterrupt: a command started as a background job
    of a non-interactive shell (a CI runner) inherits SIGINT ignored, and Python then installs
    no handler, so ``dev8 logs -f`` never stopped. And ``os._exit``, not an exception: raised
    between any two bytecodes, KeyboardInterrupt can land in httpcore's ``with lock:`` after the
    lock is taken, and the request's clean-up then waits for it forever. Every line is flushed
    as it is printed, so nothing already shown is lost.
    """
    signal.signal(signal.SIGINT, lambda _signum, _frame: os._exit(EXIT_INTERRUPTED))


def _status(client: ApiClient, args: argparse.Namespace) -> int:
    status = client.status()
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(format_status(status))
    return 0


def _act(client: ApiClient, args: argparse.Namespace) -> int:
    result = client.act(args.command, args.name)
    print(f"{result['service']}: {result['state']} (restarts: {result['restarts']})")
    return 0


def _logs(client: ApiClient, args: argparse.Namespace) -> int:
    from dev8.client import RETRY_DELAYS, Unreachable  # noqa: PLC0415 - see the imports

    last = 0
    for entry in client.logs(args.name, lines=args.lines):
        print(entry["line"], flush=True)
        last = max(last, entry["seq"])
    failures = 0
    while args.follow:
        time.sleep(FOLLOW_INTERVAL)
        try:
            entries = client.logs(args.name, lines=1000, since=last)
        except Unreachable:
            # Ride out a short outage of the API (a restart), as `events` does.
            if failures >= len(RETRY_DELAYS):
                raise
            time.sleep(RETRY_DELAYS[failures])
            failures += 1
            continue
        failures = 0
        for entry in entries:
            print(entry["line"], flush=True)
            last = max(last, entry["seq"])
    return 0


def _reload(client: ApiClient, _args: argparse.Namespace) -> int:
    """Answered with the plan before it is applied: the pass goes on in dev8 (its progress is
    the reload_started / reload_finished / reload_failed events)."""
    result = client.reload()
    for key in ("added", "removed", "changed", "unchanged"):
        print(f"{key}: {', '.join(result.get(key, [])) or '-'}")
    if result.get("restartRequiredFor"):
        sections = ", ".join(result["restartRequiredFor"])
        print(f"needs a restart of dev8 to apply: {sections}")
    after = " after the reload being applied" if result.get("queued") else ""
    print(
        f"reload {result.get('reload')} accepted: applying it{after} "
        "(`dev8 events` shows reload_started, then reload_finished or reload_failed)"
    )
    return 0


def _secrets(client: ApiClient, _args: argparse.Namespace) -> int:
    print(json.dumps(client.refresh_secrets(), indent=2))
    return 0


def _chaos(client: ApiClient, args: argparse.Namespace) -> int:
    from dev8.client import ApiError  # noqa: PLC0415 - see the imports

    try:
        if args.chaos_command == "crash":
            result = client.chaos_crash(args.path)
            print(f"{result['path']}: crash injected (restarts before: {result['restarts']})")
        else:
            result = client.chaos_signal(args.name, args.signal)
            print(
                f"{result['service']}: SIG{result['signal']} sent to process group {result['pid']}"
            )
    except ApiError as error:
        if "(HTTP 404 not_found)" in str(error):
            raise ApiError("chaos mode is off: set chaos.enabled: true in the config") from None
        raise
    return 0


_COMMANDS: dict[str, Callable[[ApiClient, argparse.Namespace], int]] = {
    "status": _status,
    "restart": _act,
    "stop": _act,
    "start": _act,
    "logs": _logs,
    "reload": _reload,
    "secrets": _secrets,
    "chaos": _chaos,
}


def _events(target: Target, args: argparse.Namespace) -> int:
    from dev8.client import RETRY_DELAYS, follow_events  # noqa: PLC0415 - see the imports

    retries = len(RETRY_DELAYS) if args.retries is None else args.retries

    def emit(event: dict[str, Any]) -> None:
        line = format_event(event) if args.pretty else json.dumps(event)
        print(line, flush=True)

    async def follow() -> None:
        await follow_events(
            target,
            emit,
            since=args.since,
            kinds=args.kind,
            services=args.service,
            retry_delays=[RETRY_DELAYS[min(i, len(RETRY_DELAYS) - 1)] for i in range(retries)],
        )

    trio.run(follow)
    return 0  # not reached: the stream ends only by an error


def format_status(status: dict[str, Any], *, now: float | None = None) -> str:
    """The ``dev8 status`` table."""
    now = time.time() if now is None else now
    head = (
        f"dev8 {status.get('version', '?')}  pid {status.get('pid', '?')}  "
        f"up {status.get('uptime', '?')}  environment {status.get('environmentId', '-')}  "
        f"user {status.get('userId', '-')}  last event {status.get('lastEvent', 0)}"
    )
    rows = [("SERVICE", "STATE", "READY", "PID", "RESTARTS", "LAST EXIT", "SINCE")]
    for name, service in sorted(status.get("services", {}).items()):
        rows.append(
            (
                name,
                str(service.get("state", "?")),
                "yes" if service.get("ready") else "no",
                str(service.get("pid") or "-"),
                str(service.get("restarts", 0)),
                _last_exit(service.get("lastExit")),
                _ago(service.get("since"), now),
            )
        )
    if len(rows) == 1:
        return f"{head}\n(no services)"
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join([head, *lines])


def _last_exit(last: Any) -> str:
    if not isinstance(last, dict):
        return "-"
    details = last.get("details") or {}
    if details.get("signal"):
        return f"signal {details['signal']}"
    if details.get("exitCode") is not None:
        return f"exit {details['exitCode']}"
    return str(last.get("reason", "-"))


def _ago(when: Any, now: float) -> str:
    if not isinstance(when, str):
        return "-"
    try:
        seconds = max(0, int(now - datetime.fromisoformat(when).timestamp()))
    except ValueError:
        return when
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = (
        f"{hours}h{minutes}m{secs}s" if hours else f"{minutes}m{secs}s" if minutes else f"{secs}s"
    )
    return f"{text} ago"


def format_event(event: dict[str, Any]) -> str:
    """``12:30:01 #15 child_exited dev8/services/web reason=error abnormal=True``."""
    if event.get("kind") == "resync":
        return f"#{event.get('seq')} resync: events were missed; the stream goes on from here"
    try:
        clock = datetime.fromisoformat(str(event.get("time"))).astimezone().strftime("%H:%M:%S")
    except ValueError:
        clock = "--:--:--"
    data = event.get("data") or {}
    fields = " ".join(
        f"{key}={value if isinstance(value, str) else json.dumps(value, separators=(',', ':'))}"
        for key, value in data.items()
        if key != "child" and value not in (None, {}, [], "")
    )
    parts = [clock, f"#{event.get('seq')}", str(event.get("kind")), str(event.get("source"))]
    return " ".join(part for part in [*parts, fields] if part)


if __name__ == "__main__":
    sys.exit(main())
