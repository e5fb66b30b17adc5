"""The three supervisors under test, configured for the same programs.

Each tool gets the same list of programs and writes its own configuration. Variants:
``defaults`` is what an operator gets without tuning; ``fastest`` is each tool's fastest restart
(dev8: no backoff; supervisord: ``startsecs=0``, ``autorestart=true``; Circus: ``respawn``,
``warmup_delay=0`` and ``check_delay=0.1``, its poll interval, 5 s by default in a config file).
"""

from __future__ import annotations

import json
import os
import pwd
import socket
from dataclasses import dataclass
from pathlib import Path

from .envs import Env

CLIENTS = Path(__file__).resolve().parent.parent / "clients"
TOOLS = ("dev8", "supervisord", "circus")
CIRCUS_FAST_CHECK_DELAY = 0.1


@dataclass(frozen=True)
class Program:
    name: str
    argv: list[str]
    #: seconds between the stop signal and SIGKILL; None: the tool's default.
    stop_timeout: float | None = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Tool:
    name = ""

    def __init__(self, env: Env) -> None:
        self.env = env

    def argv(self, run_dir: Path, programs: list[Program], *, variant: str, port: int) -> list[str]:
        raise NotImplementedError

    def client(self, port: int, *args: str) -> list[str]:
        """The status client, run with this tool's own Python and client library."""
        return [
            str(self.env.python),
            str(CLIENTS / "status_client.py"),
            self.name,
            str(port),
            *args,
        ]


class Dev8(Tool):
    name = "dev8"

    def argv(self, run_dir: Path, programs: list[Program], *, variant: str, port: int) -> list[str]:
        user = pwd.getpwuid(os.geteuid()).pw_name
        services: dict[str, object] = {}
        for program in programs:
            service: dict[str, object] = {"command": program.argv, "user": user}
            if program.stop_timeout is not None:
                service["stop_timeout"] = program.stop_timeout
            if variant == "fastest":
                service["backoff"] = {"initial_delay": 0, "min_delay": 0, "reset_after": 0}
                service["intensity"] = {"max_restarts": 1000, "window": 1}
            services[program.name] = service
        config: dict[str, object] = {
            "api": {"bind": f"127.0.0.1:{port}"},
            "workspace": {"dir": str(run_dir), "user": user},
            "services": services,
        }
        if variant == "fastest":
            config["supervisor"] = {"intensity": {"max_restarts": 100000, "window": 1}}
        path = run_dir / "dev8.yaml"
        path.write_text(json.dumps(config, indent=1))  # JSON is YAML
        return [str(self.env.bin("dev8")), "run", "--config", str(path)]


class Supervisord(Tool):
    name = "supervisord"

    def argv(self, run_dir: Path, programs: list[Program], *, variant: str, port: int) -> list[str]:
        logs = run_dir / "childlogs"
        logs.mkdir(exist_ok=True)
        lines = [
            "[supervisord]",
            "nodaemon=true",
            f"logfile={run_dir / 'supervisord.log'}",
            f"pidfile={run_dir / 'supervisord.pid'}",
            f"childlogdir={logs}",
            "[inet_http_server]",
            f"port=127.0.0.1:{port}",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        ]
        for program in programs:
            lines += [f"[program:{program.name}]", "command=" + " ".join(program.argv)]
            if program.stop_timeout is not None:
                lines.append(f"stopwaitsecs={program.stop_timeout:g}")
            if variant == "fastest":
                lines += ["startsecs=0", "autorestart=true"]
        path = run_dir / "supervisord.conf"
        path.write_text("\n".join(lines) + "\n")
        return [str(self.env.bin("supervisord")), "-n", "-c", str(path)]


class Circus(Tool):
    name = "circus"

    def argv(self, run_dir: Path, programs: list[Program], *, variant: str, port: int) -> list[str]:
        lines = [
            "[circus]",
            f"endpoint = tcp://127.0.0.1:{port}",
            f"pubsub_endpoint = tcp://127.0.0.1:{free_port()}",
            "multicast_endpoint =",  # no UDP multicast discovery socket: loopback only
            "statsd = False",
        ]
        if variant == "fastest":
            lines.append(f"check_delay = {CIRCUS_FAST_CHECK_DELAY}")
        for program in programs:
            lines += [
                f"[watcher:{program.name}]",
                f"cmd = {program.argv[0]}",
                "args = " + " ".join(program.argv[1:]),
                "numprocesses = 1",
            ]
            if program.stop_timeout is not None:
                lines.append(f"graceful_timeout = {program.stop_timeout:g}")
            if variant == "fastest":
                lines += ["respawn = True", "warmup_delay = 0"]
        path = run_dir / "circus.ini"
        path.write_text("\n".join(lines) + "\n")
        return [str(self.env.bin("circusd")), str(path)]


def make_tools(envs: dict[str, Env]) -> dict[str, Tool]:
    return {
        "dev8": Dev8(envs["dev8"]),
        "supervisord": Supervisord(envs["supervisord"]),
        "circus": Circus(envs["circus"]),
    }
