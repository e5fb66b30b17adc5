"""dev8.config: loading, validation, error messages, env overrides, redaction."""

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dev8.config import (
    DEFAULT_CONFIG_PATH,
    ApiConfig,
    BackoffConfig,
    Config,
    ConfigError,
    ConnectionsConfig,
    IntensityConfig,
    LogConfig,
    ProbeConfig,
    ProbesConfig,
    ProbeType,
    RestartType,
    ServiceConfig,
    ShutdownConfig,
    TcpBind,
    UnixBind,
    WorkspaceConfig,
    config_to_dict,
    load_config,
    parse_bind,
    parse_config,
)

REPO = Path(__file__).resolve().parents[2]
WEB = "services:\n  web:\n    command: [python3, -m, http.server]\n"

FULL = """
environment_id: env-123
user_id: u-42
workspace:
  dir: /srv/work
  user: alice
api:
  bind: "0.0.0.0:9100"
  token_file: /run/dev8/token
log:
  level: debug
shutdown:
  timeout: 12.5
  kill_grace: 1
supervisor:
  intensity: {max_restarts: 7, window: 30}
services:
  web:
    command: ["python3", "-m", "http.server", "8000"]
    env: {GREETING: hello, GITHUB_TOKEN: ghp_supersecret}
    cwd: /srv/work/site
    user: bob
    restart: transient
    critical: true
    enabled: false
    stop_signal: SIGINT
    stop_timeout: 3
    start_timeout: 20.5
    backoff: {initial_delay: 0.5, min_delay: 1, max_delay: 9, factor: 3, jitter: 0.25,
              reset_after: 5}
    intensity: {max_restarts: 0, window: 0.5}
  code-server:
    command: [code-server]
    stop_signal: hup
"""


def parse(text: str, environ: dict[str, str] | None = None) -> Config:
    return parse_config(text, "test.yaml", {} if environ is None else environ)


def error_of(text: str, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text, environ)
    return info.value


# --------------------------------------------------------------------------- valid configs


def test_full_config_sets_every_key() -> None:
    config = parse(FULL)
    assert config.environment_id == "env-123"
    assert config.user_id == "u-42"
    assert config.workspace == WorkspaceConfig(dir="/srv/work", user="alice")
    assert config.api == ApiConfig(bind=TcpBind("0.0.0.0", 9100), token_file="/run/dev8/token")
    assert config.log == LogConfig(level="debug")
    assert config.shutdown == ShutdownConfig(timeout=12.5, kill_grace=1.0)
    assert config.supervisor.intensity == IntensityConfig(max_restarts=7, window=30.0)
    web = config.services["web"]
    assert web == ServiceConfig(
        command=("python3", "-m", "http.server", "8000"),
        env={"GREETING": "hello", "GITHUB_TOKEN": "ghp_supersecret"},
        cwd="/srv/work/site",
        user="bob",
        restart=RestartType.TRANSIENT,
        critical=True,
        enabled=False,
        stop_signal=signal.SIGINT,
        stop_timeout=3.0,
        start_timeout=20.5,
        backoff=BackoffConfig(0.5, 1.0, 9.0, 3.0, 0.25, 5.0),
        intensity=IntensityConfig(max_restarts=0, window=0.5),
    )
    assert isinstance(web.stop_timeout, float)
    assert config.services["code-server"].stop_signal is signal.SIGHUP
    assert list(config.services) == ["web", "code-server"]


def test_minimal_config_gets_the_documented_defaults() -> None:
    config = parse(WEB)
    assert config.environment_id == "local"
    assert config.user_id == "local"
    assert config.workspace == WorkspaceConfig(dir="/workspace", user="dev8")
    assert config.api.bind == TcpBind("127.0.0.1", 9000)
    assert config.api.token_file is None
    assert config.log.level == "info"
    assert (config.shutdown.timeout, config.shutdown.kill_grace) == (30.0, 2.0)
    assert config.supervisor.intensity == IntensityConfig(50, 60.0)
    web = config.services["web"]
    assert web.command == ("python3", "-m", "http.server")
    assert web.env == {}
    assert (web.cwd, web.user) == (None, None)
    assert web.restart is RestartType.PERMANENT
    assert (web.critical, web.enabled) == (False, True)
    assert web.stop_signal is signal.SIGTERM
    assert (web.stop_timeout, web.start_timeout) == (10.0, 60.0)
    assert web.backoff == BackoffConfig(
        initial_delay=0.0, min_delay=0.1, max_delay=30.0, factor=2.0, jitter=0.1, reset_after=10.0
    )
    assert web.intensity == IntensityConfig(max_restarts=10, window=60.0)
    assert DEFAULT_CONFIG_PATH == "/etc/dev8/supervisor.yaml"


def test_empty_mapping_and_empty_sections_mean_defaults() -> None:
    assert parse("{}") == Config()
    assert parse("api:\nlog:\nservices:\n") == Config()


def test_environment_and_user_ids_default_from_the_environment() -> None:
    config = parse("{}", {"ENVIRONMENT_ID": "env-9", "USER_ID": "u-1"})
    assert (config.environment_id, config.user_id) == ("env-9", "u-1")
    # The file wins over the plain variables; DEV8_* overrides win over both.
    config = parse("environment_id: from-file", {"ENVIRONMENT_ID": "env-9"})
    assert config.environment_id == "from-file"
    config = parse(
        "environment_id: from-file", {"ENVIRONMENT_ID": "env-9", "DEV8_ENVIRONMENT_ID": "ov"}
    )
    assert config.environment_id == "ov"


def test_environ_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEV8_LOG__LEVEL", "warning")
    assert parse_config("{}", "test.yaml").log.level == "warning"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9000", TcpBind("127.0.0.1", 9000)),
        ("0.0.0.0:1", TcpBind("0.0.0.0", 1)),
        ("localhost:65535", TcpBind("localhost", 65535)),
        ("ws-1.internal.example:9000", TcpBind("ws-1.internal.example", 9000)),
        ("[::1]:9000", TcpBind("::1", 9000)),
        ("[::]:80", TcpBind("::", 80)),
        ("unix:/run/dev8/api.sock", UnixBind("/run/dev8/api.sock")),
    ],
)
def test_bind_forms(text: str, expected: TcpBind | UnixBind) -> None:
    assert parse_bind(text) == expected
    assert str(expected) == text  # the form the config takes
    assert parse(f"api: {{bind: '{text}'}}").api.bind == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("TERM", signal.SIGTERM),
        ("SIGINT", signal.SIGINT),
        ("hup", signal.SIGHUP),
        ("QUIT", signal.SIGQUIT),
        ("KILL", signal.SIGKILL),
        ("usr1", signal.SIGUSR1),
    ],
)
def test_stop_signal_names(name: str, expected: signal.Signals) -> None:
    config = parse(WEB + f"    stop_signal: {name}\n")
    assert config.services["web"].stop_signal is expected


def test_service_user_falls_back_to_the_workspace_user_only_as_root() -> None:
    config = parse(WEB + "  ssh:\n    command: [sshd]\n    user: root\n")
    assert config.service_user("web", as_root=True) == "dev8"
    assert config.service_user("web", as_root=False) is None
    assert config.service_user("ssh", as_root=False) == "root"


def test_building_configs_in_code_is_validated_too() -> None:
    with pytest.raises(ValueError, match="expected an integer >= 0"):
        IntensityConfig(max_restarts=-1)
    with pytest.raises(ValueError, match="non-empty list of strings"):
        ServiceConfig(command=())
    with pytest.raises(ValueError, match=">= 1"):
        BackoffConfig(factor=0.5)


# --------------------------------------------------------------------------- errors


def test_unknown_key_names_the_path_and_suggests() -> None:
    err = error_of("services:\n  web:\n    comand: [python3]\n")
    assert (err.source, err.path) == ("test.yaml", "services.web.comand")
    assert err.message == "unknown key (did you mean 'command'?)"
    assert str(err) == (
        "config error in test.yaml: services.web.comand: unknown key (did you mean 'command'?)"
    )
    # Only the misspelling is reported: the check for a missing command needs a valid mapping.
    assert err.others == ()
    err = error_of("servics: {}\n")
    assert (err.path, err.message) == ("servics", "unknown key (did you mean 'services'?)")
    assert error_of("api: {bind: '127.0.0.1:1', colour: red}").message == "unknown key"


def test_command_as_a_string_is_refused_with_the_exact_message() -> None:
    err = error_of("services:\n  web:\n    command: python3 -m http.server\n")
    assert str(err) == (
        "config error in test.yaml: services.web.command: "
        "expected a non-empty list of strings, got 'python3 -m http.server'"
    )


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        ("services: {web: {}}", "services.web.command", "required key missing"),
        ("services: {web: }", "services.web.command", "required key missing"),
        ("services: {web: {command: []}}", "services.web.command", "non-empty list of strings"),
        ("services: {web: {command: ['']}}", "services.web.command", "non-empty list of strings"),
        ("services: {web: {command: [a, 8000]}}", "services.web.command[1]", "quote it"),
        ("services: {web: {command: [a], critical: 'yes'}}", "services.web.critical", "true or"),
        ("services: {web: {command: [a], enabled: 1}}", "services.web.enabled", "true or false"),
        ("services: {web: {command: [a], restart: forever}}", "services.web.restart", "one of"),
        (
            "services: {web: {command: [a], stop_signal: TERMINATE}}",
            "services.web.stop_signal",
            "signal name",
        ),
        (
            "services: {web: {command: [a], stop_signal: 15}}",
            "services.web.stop_signal",
            "signal name",
        ),
        ("services: {web: {command: [a], env: [A]}}", "services.web.env", "expected a mapping"),
        (
            "services: {web: {command: [a], env: {'A=B': x}}}",
            "services.web.env.A=B",
            "variable name",
        ),
        ("services: {Web: {command: [a]}}", "services.Web", "invalid service name"),
        ("services: {-web: {command: [a]}}", "services.-web", "invalid service name"),
        ("services: [web]", "services", "expected a mapping"),
        (
            "services: {web: {command: [a], stop_timeout: -1}}",
            "services.web.stop_timeout",
            "expected a number >= 0, got -1",
        ),
        (
            "services: {web: {command: [a], start_timeout: 0}}",
            "services.web.start_timeout",
            "expected a number > 0, got 0",
        ),
        (
            "services: {web: {command: [a], backoff: {factor: 0.5}}}",
            "services.web.backoff.factor",
            ">= 1",
        ),
        (
            "services: {web: {command: [a], backoff: {jitter: 1}}}",
            "services.web.backoff.jitter",
            "< 1",
        ),
        (
            "services: {web: {command: [a], backoff: {min_delay: 5, max_delay: 1}}}",
            "services.web.backoff.max_delay",
            ">= min_delay",
        ),
        (
            "services: {web: {command: [a], intensity: {max_restarts: 1.5}}}",
            "services.web.intensity.max_restarts",
            "expected an integer, got 1.5",
        ),
        (
            "services: {web: {command: [a], intensity: {max_restarts: -1}}}",
            "services.web.intensity.max_restarts",
            "expected an integer >= 0, got -1",
        ),
        (
            "services: {web: {command: [a], intensity: {window: 0}}}",
            "services.web.intensity.window",
            "> 0",
        ),
        ("shutdown: {timeout: -0.5}", "shutdown.timeout", "> 0"),
        ("shutdown: {kill_grace: -1}", "shutdown.kill_grace", ">= 0"),
        ("shutdown: {timeout: .inf}", "shutdown.timeout", "finite"),
        ("shutdown: {timeout: '30'}", "shutdown.timeout", "got '30'"),
        ("supervisor: {intensity: {window: -1}}", "supervisor.intensity.window", "> 0"),
        ("log: {level: verbose}", "log.level", "'debug', 'info', 'warning', 'error'"),
        ("workspace: {user: 'a b'}", "workspace.user", "without spaces"),
        ("workspace: {dir: ''}", "workspace.dir", "non-empty path"),
        ("api: 9000", "api", "expected a mapping, got 9000"),
        ("api: {token_file: 5}", "api.token_file", "expected a string"),
        ("environment_id: ''", "environment_id", "non-empty name"),
    ],
)
def test_each_kind_of_bad_value_names_its_path(text: str, path: str, message: str) -> None:
    err = error_of(text)
    assert err.source == "test.yaml"
    assert err.path == path
    assert message in err.message
    assert str(err) == f"config error in test.yaml: {path}: {err.message}"


@pytest.mark.parametrize(
    ("bind", "message"),
    [
        ("9000", "expected HOST:PORT"),
        ("localhost", "expected HOST:PORT"),
        (":9000", "expected HOST:PORT"),
        ("localhost:0", "port from 1 to 65535"),
        ("localhost:65536", "port from 1 to 65535"),
        ("localhost:http", "expected HOST:PORT"),
        ("::1:9000", "brackets"),
        ("[nope]:9000", "bad IPv6"),
        ("bad_host!:9000", "bad host"),
        ("999.1.1.1:9000", "bad host"),
        ("unix:", "must be absolute"),
        ("unix:relative.sock", "must be absolute"),
        ("unix:/" + "x" * 200, "at most 107 bytes"),
    ],
)
def test_bad_binds(bind: str, message: str) -> None:
    err = error_of(f"api: {{bind: '{bind}'}}")
    assert err.path == "api.bind"
    assert message in err.message
    with pytest.raises(ValueError, match=r"expected|port|socket"):
        parse_bind(bind)


def test_bind_that_is_not_a_string() -> None:
    assert error_of("api: {bind: 9000}").message.endswith("got 9000")


def test_mapping_key_that_yaml_made_a_boolean() -> None:
    err = error_of("services: {web: {command: [a], env: {on: x}}}")
    assert err.path == "services.web.env.True"
    assert err.message.startswith("invalid key: expected a string key")


def test_empty_file_comment_only_file_and_non_mapping() -> None:
    for text in ("", "\n\n", "# nothing here\n"):
        err = error_of(text)
        assert (err.source, err.path) == ("test.yaml", "")
        assert err.message == "the file is empty; expected a mapping of settings"
        assert (
            str(err)
            == "config error in test.yaml: the file is empty; expected a mapping of settings"
        )
    for text, kind in (
        ("- a\n- b\n", "a list"),
        ("just words\n", "a string"),
        ("42", "an integer"),
    ):
        err = error_of(text)
        assert (err.path, err.message) == ("", f"expected a mapping at the top level, got {kind}")


def test_yaml_syntax_error_gives_the_line() -> None:
    err = error_of("api:\n  bind: '127.0.0.1:9000'\nservices: [\n  web\n")
    assert err.path == ""
    assert err.message.startswith("invalid YAML at line 5, column 1:")
    err = error_of("log:\n  level: info\n   bad: indent\n")
    assert "line 3" in err.message


def test_bad_yaml_value_is_a_config_error() -> None:
    err = error_of("environment_id: 2024-02-30\n")
    assert err.message.startswith("invalid YAML value:")
    err = error_of("log: {level: info}\x07\n")
    assert err.message.startswith("invalid YAML: unacceptable character #x0007")
    assert error_of("[" * 600 + "]" * 600).message == "invalid YAML: nested too deeply"


def test_load_config_reads_a_file_and_resolves_relative_paths(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "dev8.yaml"
    path.parent.mkdir()
    path.write_text(WEB + "    cwd: ../site\napi:\n  token_file: token\n")
    config = load_config(path, {})
    assert config.services["web"].cwd == str(tmp_path / "site")
    assert config.api.token_file == str(tmp_path / "conf" / "token")
    assert config.workspace.dir == "/workspace"  # absolute paths stay as written
    # parse_config has no file: relative paths stay relative.
    assert parse(WEB + "    cwd: ../site\n").services["web"].cwd == "../site"


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing, {})
    assert (info.value.source, info.value.path) == (str(missing), "")
    assert str(info.value) == f"config error in {missing}: file not found"
    with pytest.raises(ConfigError, match="cannot read the file: Is a directory"):
        load_config(tmp_path, {})
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"environment_id: caf\xe9\n")
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load_config(latin, {})
    bad = tmp_path / "bad.yaml"
    bad.write_text(WEB + "    restart: always\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad, {})
    assert (info.value.source, info.value.path) == (str(bad), "services.web.restart")


# --------------------------------------------------------------------------- probes and ports

PROBED = """
connections: {interval: 2.5}
services:
  code-server:
    command: [code-server]
    ports: [8080]
    probes:
      readiness:
        type: http
        url: "http://127.0.0.1:8080/healthz"
        expect_status: 204
        interval: 10
        timeout: 2
        initial_delay: 0.5
        failure_threshold: 5
        success_threshold: 2
      liveness: {type: tcp, port: 8080, host: localhost}
  ssh:
    command: [sshd]
    ports: [2222, 22]
    probes:
      readiness: {type: ssh-banner, port: 2222}
      liveness: {type: process}
"""


def test_probes_ports_and_connections() -> None:
    config = parse(PROBED)
    assert config.connections == ConnectionsConfig(interval=2.5)
    code = config.services["code-server"]
    assert code.ports == (8080,)
    assert code.probes == ProbesConfig(
        readiness=ProbeConfig(
            type=ProbeType.HTTP,
            url="http://127.0.0.1:8080/healthz",
            expect_status=204,
            interval=10.0,
            timeout=2.0,
            initial_delay=0.5,
            failure_threshold=5,
            success_threshold=2,
        ),
        liveness=ProbeConfig(type=ProbeType.TCP, port=8080, host="localhost"),
    )
    ssh = config.services["ssh"]
    assert ssh.ports == (2222, 22)
    assert ssh.probes.readiness == ProbeConfig(type=ProbeType.SSH_BANNER, port=2222)
    assert ssh.probes.liveness == ProbeConfig(type=ProbeType.PROCESS)
    data = config_to_dict(config)
    assert data["services"]["ssh"]["probes"]["readiness"]["type"] == "ssh-banner"
    assert data["services"]["ssh"]["ports"] == [2222, 22]
    assert parse(yaml.safe_dump(data)) == config


def test_probe_defaults_follow_the_seed() -> None:
    probe = ProbeConfig(type=ProbeType.PROCESS)
    assert (probe.interval, probe.timeout, probe.initial_delay) == (30.0, 5.0, 0.0)
    assert (probe.failure_threshold, probe.success_threshold) == (3, 1)
    assert (probe.host, probe.port, probe.url, probe.expect_status) == (
        "127.0.0.1",
        None,
        None,
        200,
    )
    web = parse(WEB).services["web"]
    assert web.probes == ProbesConfig(readiness=None, liveness=None)
    assert web.ports == ()
    assert parse("{}").connections.interval == 5.0
    assert parse(WEB + "    probes:\n").services["web"].probes == ProbesConfig()


def with_probe(probe: str, kind: str = "readiness") -> str:
    return WEB + f"    probes: {{{kind}: {probe}}}\n"


PR = "services.web.probes.readiness"


@pytest.mark.parametrize(
    ("probe", "key", "message"),
    [
        ("{type: http}", "url", "required for an http probe"),
        ("{type: tcp}", "port", "required for a tcp probe"),
        ("{type: ssh-banner, url: 'http://x/'}", "port", "required for an ssh-banner probe"),
        ("{port: 80}", "type", "required key missing"),
        ("{type: exec}", "type", "expected one of 'process', 'http', 'tcp', 'ssh-banner'"),
        ("{type: http, url: 'ftp://x/'}", "url", "expected an http:// or https:// URL"),
        ("{type: http, url: '/healthz'}", "url", "URL with a host, got '/healthz'"),
        ("{type: http, url: 'http://x/', expect_status: 99}", "expect_status", "100 to 599"),
        ("{type: tcp, port: 65536}", "port", "expected a port from 1 to 65535"),
        ("{type: tcp, port: '80'}", "port", "expected an integer"),
        ("{type: tcp, port: 80, host: 'a b'}", "host", "IP address or a host name"),
        ("{type: process, interval: 0}", "interval", "expected a number > 0"),
        ("{type: process, timeout: -1}", "timeout", "expected a number > 0"),
        ("{type: process, initial_delay: -1}", "initial_delay", ">= 0"),
        ("{type: process, failure_threshold: 0}", "failure_threshold", ">= 1"),
        ("{type: process, success_threshold: 1.5}", "success_threshold", "an integer"),
        ("{type: process, period: 3}", "period", "unknown key"),
    ],
)
def test_a_bad_probe_names_the_key(probe: str, key: str, message: str) -> None:
    err = error_of(with_probe(probe))
    assert err.path == f"{PR}.{key}"
    assert message in err.message


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        (
            with_probe("{type: process, success_threshold: 2}", "liveness"),
            "services.web.probes.liveness.success_threshold",
            "expected 1 for a liveness probe, got 2",
        ),
        (
            WEB + "    probes: {startup: {type: process}}\n",
            "services.web.probes.startup",
            "unknown key",
        ),
        (WEB + "    ports: 8080\n", "services.web.ports", "expected a list of integers"),
        (WEB + "    ports: [8080, 0]\n", "services.web.ports[1]", "port from 1 to 65535"),
        (WEB + "    ports: [8080, '22']\n", "services.web.ports[1]", "expected an integer"),
        (WEB + "    ports: [22, 22]\n", "services.web.ports[1]", "already listed"),
        (
            WEB + "    ports: [22]\n  ssh:\n    command: [sshd]\n    ports: [2222, 22]\n",
            "services.ssh.ports[1]",
            "port 22 is already counted for service 'web'",
        ),
        ("connections: {interval: 0}", "connections.interval", "expected a number > 0"),
        ("connections: {every: 1}", "connections.every", "unknown key"),
    ],
)
def test_bad_probes_ports_and_connections_name_the_key(text: str, path: str, message: str) -> None:
    err = error_of(text)
    assert err.path == path
    assert message in err.message


def test_a_probe_url_with_a_password_is_never_echoed() -> None:
    err = error_of(with_probe("{type: http, url: 'htp://me:hunter2@host/'}"))
    assert err.path == f"{PR}.url"
    assert "hunter2" not in str(err)


def test_probes_and_ports_from_the_environment() -> None:
    config = parse(
        WEB,
        {
            "DEV8_SERVICES__WEB__PROBES__LIVENESS__TYPE": "http",
            "DEV8_SERVICES__WEB__PROBES__LIVENESS__URL": "http://127.0.0.1:8000/",
            "DEV8_SERVICES__WEB__PROBES__LIVENESS__INTERVAL": "7",
            "DEV8_SERVICES__WEB__PROBES__READINESS": "{type: tcp, port: 8000}",
            "DEV8_SERVICES__WEB__PORTS": "[8000]",
            "DEV8_CONNECTIONS__INTERVAL": "1",
        },
    )
    web = config.services["web"]
    assert web.probes.liveness == ProbeConfig(
        type=ProbeType.HTTP, url="http://127.0.0.1:8000/", interval=7.0
    )
    assert web.probes.readiness == ProbeConfig(type=ProbeType.TCP, port=8000)
    assert web.ports == (8000,)
    assert config.connections.interval == 1.0
    err = error_of(WEB, {"DEV8_SERVICES__WEB__PROBES__LIVENESS__TYPE": "tcp"})
    assert (err.source, err.path) == (
        "DEV8_SERVICES__WEB__PROBES__LIVENESS__TYPE",
        "services.web.probes.liveness.port",
    )


# --------------------------------------------------------------------------- env overrides


def test_override_a_scalar_a_bool_and_a_list() -> None:
    config = parse(
        WEB,
        {
            "DEV8_API__BIND": "0.0.0.0:9000",
            "DEV8_SERVICES__WEB__CRITICAL": "true",
            "DEV8_SERVICES__WEB__COMMAND": '["python3","-m","http.server","9001"]',
            "DEV8_SERVICES__WEB__STOP_TIMEOUT": "2.5",
            "DEV8_SHUTDOWN__TIMEOUT": "5",
            "DEV8_LOG__LEVEL": "debug",
        },
    )
    assert config.api.bind == TcpBind("0.0.0.0", 9000)
    web = config.services["web"]
    assert web.critical is True
    assert web.command == ("python3", "-m", "http.server", "9001")
    assert web.stop_timeout == 2.5
    assert config.shutdown.timeout == 5.0
    assert config.log.level == "debug"


def test_override_creates_a_new_service() -> None:
    config = parse(
        WEB,
        {
            "DEV8_SERVICES__EXTRA__COMMAND": "[sleep, '60']",
            "DEV8_SERVICES__EXTRA__RESTART": "temporary",
        },
    )
    assert config.services["extra"].command == ("sleep", "60")
    assert config.services["extra"].restart is RestartType.TEMPORARY
    assert config.services["web"].command == ("python3", "-m", "http.server")


def test_override_matches_dashed_service_names_and_keeps_env_names() -> None:
    text = "services:\n  code-server:\n    command: [code-server]\n    env: {Path: x}\n"
    config = parse(
        text,
        {
            "DEV8_SERVICES__CODE_SERVER__ENABLED": "false",
            "DEV8_SERVICES__CODE_SERVER__ENV__MY_Var": "08",
            "DEV8_SERVICES__CODE_SERVER__ENV__PATH": "/usr/bin",
        },
    )
    service = config.services["code-server"]
    assert service.enabled is False
    # Environment names are case-sensitive; string values are taken verbatim (not YAML: "08").
    assert service.env == {"Path": "x", "MY_Var": "08", "PATH": "/usr/bin"}
    assert list(config.services) == ["code-server"]


def test_string_overrides_are_verbatim_and_empty_unsets_optional_strings() -> None:
    config = parse(
        WEB + "    cwd: /somewhere\n",
        {
            "DEV8_WORKSPACE__USER": "1000",
            "DEV8_ENVIRONMENT_ID": "true",
            "DEV8_SERVICES__WEB__CWD": "",
            "DEV8_API__BIND": "[::1]:9000",
            "DEV8_SERVICES__WEB__STOP_SIGNAL": "INT",
        },
    )
    assert config.workspace.user == "1000"
    assert config.environment_id == "true"
    assert config.services["web"].cwd is None
    assert config.api.bind == TcpBind("::1", 9000)
    assert config.services["web"].stop_signal is signal.SIGINT


def test_override_of_a_whole_section_and_ordering_by_depth() -> None:
    config = parse(
        "{}",
        {
            "DEV8_SERVICES__WEB__ENABLED": "false",
            "DEV8_SERVICES": "{web: {command: [a]}, db: {command: [b]}}",
        },
    )
    assert config.services["web"].enabled is False  # the deeper variable applies on top
    assert config.services["db"].command == ("b",)


def test_override_does_not_leak_through_yaml_aliases() -> None:
    text = "services:\n  a: &svc {command: [x]}\n  b: *svc\n"
    config = parse(text, {"DEV8_SERVICES__A__ENABLED": "false"})
    assert config.services["a"].enabled is False
    assert config.services["b"].enabled is True


def test_reserved_and_foreign_variables_are_ignored() -> None:
    config = parse(WEB, {"DEV8_CONFIG": "/etc/other.yaml", "dev8_api__bind": "x", "HOME": "/r"})
    assert config == parse(WEB)


@pytest.mark.parametrize(
    ("environ", "source", "path", "message"),
    [
        ({"DEV8_API__BIND": "nope"}, "DEV8_API__BIND", "api.bind", "expected HOST:PORT"),
        ({"DEV8_API_BIND": "x"}, "DEV8_API_BIND", "api_bind", "unknown key (did you mean 'api'?)"),
        (
            {"DEV8_SERVICES__WEB__COMAND": "[a]"},
            "DEV8_SERVICES__WEB__COMAND",
            "services.web.comand",
            "did you mean 'command'?",
        ),
        (
            {"DEV8_SERVICES__NEW__ENABLED": "true"},
            "DEV8_SERVICES__NEW__ENABLED",
            "services.new.command",
            "required key missing",
        ),
        (
            {"DEV8_SERVICES__WEB__COMMAND": "[a, b"},
            "DEV8_SERVICES__WEB__COMMAND",
            "services.web.command",
            "not a valid YAML flow value",
        ),
        (
            {"DEV8_SERVICES__WEB__CRITICAL": "maybe"},
            "DEV8_SERVICES__WEB__CRITICAL",
            "services.web.critical",
            "expected true or false, got 'maybe'",
        ),
        ({"DEV8_API____BIND": "x"}, "DEV8_API____BIND", "", "malformed name"),
        ({"DEV8_": "x"}, "DEV8_", "", "malformed name"),
        ({"DEV8_API__BIND__HOST": "x"}, "DEV8_API__BIND__HOST", "api.bind", "cannot set a key"),
        (
            {"DEV8_SERVICES__WEB__COMMAND__0": "x"},
            "DEV8_SERVICES__WEB__COMMAND__0",
            "services.web.command",
            "cannot set a key",
        ),
        (
            {"DEV8_SERVICES__WEB__ENV__TOKEN": "a\0b"},
            "DEV8_SERVICES__WEB__ENV__TOKEN",
            "services.web.env.TOKEN",
            "no NUL",
        ),
        ({"ENVIRONMENT_ID": "has space"}, "ENVIRONMENT_ID", "environment_id", "without spaces"),
    ],
)
def test_bad_override_names_the_variable(
    environ: dict[str, str], source: str, path: str, message: str
) -> None:
    err = error_of(WEB, environ)
    assert (err.source, err.path) == (source, path)
    assert message in err.message
    assert str(err).startswith(f"config error in {source}: ")


def test_two_variables_for_one_key_is_an_error() -> None:
    err = error_of(WEB, {"DEV8_API__BIND": "127.0.0.1:1", "DEV8_api__bind": "127.0.0.1:2"})
    assert err.path == "api.bind"
    assert {err.source, err.message} == {"DEV8_api__bind", "also set by DEV8_API__BIND"}


def test_file_errors_still_name_the_file_when_overrides_exist() -> None:
    err = error_of(WEB + "    restart: always\n", {"DEV8_API__BIND": "127.0.0.1:1"})
    assert (err.source, err.path) == ("test.yaml", "services.web.restart")


# --------------------------------------------------------------------------- secrets


SECRET = "ghp_s3cr3t_value_1234"


def test_secret_values_stay_out_of_repr_and_errors() -> None:
    config = parse(WEB + f"    env: {{GITHUB_TOKEN: {SECRET}, MODE: dev}}\n")
    assert SECRET not in repr(config)
    assert "'MODE': 'dev'" in repr(config)
    # A wrong value under env is described by its kind, not shown.
    err = error_of(WEB + "    env: {API_TOKEN: 123456789}\n")
    assert err.path == "services.web.env.API_TOKEN"
    assert err.message == "expected a string (quote it), got an integer"
    err = error_of(WEB + "    env: {PLAIN: [a, b]}\n")
    assert err.message == "expected a string, got a list"
    err = error_of("{}", {"DEV8_SERVICES__WEB__ENV__DB_PASSWORD": f"{SECRET}\0"})
    assert SECRET not in str(err)


def test_config_to_dict_redacts_secret_looking_env_values() -> None:
    config = parse(
        WEB
        + "    env: {GITHUB_TOKEN: a, db_password: b, AWS_SECRET: c, SSH_KEY: d,"
        + " AZURE_CREDENTIALS: e, api_passwd: f, MODE: dev}\n"
    )
    shown = config_to_dict(config)
    assert shown["services"]["web"]["env"] == {
        "GITHUB_TOKEN": "***",
        "db_password": "***",
        "AWS_SECRET": "***",
        "SSH_KEY": "***",
        "AZURE_CREDENTIALS": "***",
        "api_passwd": "***",
        "MODE": "dev",
    }
    assert config_to_dict(config, redact=False)["services"]["web"]["env"]["GITHUB_TOKEN"] == "a"
    assert config.services["web"].env["GITHUB_TOKEN"] == "a"  # the config itself is untouched


def test_config_to_dict_is_plain_data_that_loads_back() -> None:
    config = parse(FULL)
    data = config_to_dict(config, redact=False)
    assert data["api"]["bind"] == "0.0.0.0:9100"
    assert data["services"]["web"]["restart"] == "transient"
    assert data["services"]["web"]["stop_signal"] == "SIGINT"
    assert data["services"]["web"]["command"] == ["python3", "-m", "http.server", "8000"]
    assert parse(yaml.safe_dump(data)) == config
    unix = parse("api: {bind: 'unix:/run/dev8/api.sock'}")
    assert config_to_dict(unix)["api"]["bind"] == "unix:/run/dev8/api.sock"


# --------------------------------------------------------------------------- the example


def test_example_local_config_loads_and_points_at_real_files() -> None:
    config = load_config(REPO / "examples" / "local.yaml", {})
    assert config.api.bind == TcpBind("127.0.0.1", 9000)
    assert set(config.services) == {"web", "flaky"}
    assert not any(s.critical for s in config.services.values())
    flaky = config.services["flaky"]
    assert flaky.cwd == str(REPO)
    assert flaky.command[:2] == ("python3", "examples/demo_service.py")
    assert (Path(flaky.cwd) / flaky.command[1]).is_file()
    assert "--crash-every" in flaky.command
    web = config.services["web"]
    assert web.command[:3] == ("python3", "-m", "http.server")
    assert "127.0.0.1" in web.command


async def test_demo_service_crashes_with_exit_code_1() -> None:
    script = str(REPO / "examples" / "demo_service.py")
    cmd = [sys.executable, script, "--interval", "0.02", "--crash-every", "0.1", "--seed", "3"]
    with trio.fail_after(10):
        result = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 1
    assert b"tick 1" in result.stdout
    assert b"crashing on purpose" in result.stderr
    # Same seed, same crash tick.
    with trio.fail_after(10):
        again = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)
    assert again.stdout == result.stdout


async def test_demo_service_stops_cleanly_on_sigterm() -> None:
    script = str(REPO / "examples" / "demo_service.py")
    cmd = [sys.executable, script, "--name", "steady", "--interval", "0.05"]
    proc = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    seen = b""
    try:
        with trio.fail_after(10):
            while b"tick 1" not in seen:
                chunk = await proc.stdout.receive_some()
                assert chunk, "the demo service exited early"
                seen += chunk
            proc.send_signal(signal.SIGTERM)
            while chunk := await proc.stdout.receive_some():
                seen += chunk
            assert await proc.wait() == 0
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await proc.stdout.aclose()
    assert b"steady: stopping on SIGTERM" in seen


# --------------------------------------------------------------------------- property


KEYS = [
    "environment_id",
    "user_id",
    "workspace",
    "dir",
    "user",
    "api",
    "bind",
    "token_file",
    "log",
    "level",
    "shutdown",
    "timeout",
    "kill_grace",
    "supervisor",
    "intensity",
    "max_restarts",
    "window",
    "services",
    "web",
    "code-server",
    "command",
    "env",
    "cwd",
    "restart",
    "critical",
    "enabled",
    "stop_signal",
    "stop_timeout",
    "start_timeout",
    "backoff",
    "initial_delay",
    "min_delay",
    "max_delay",
    "factor",
    "jitter",
    "reset_after",
    "probes",
    "readiness",
    "liveness",
    "type",
    "url",
    "port",
    "ports",
    "interval",
    "connections",
    "TOKEN",
    "Web",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["TERM", "permanent", "127.0.0.1:9000", "unix:/x", "info", "[::1]:1", "0"]),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers(-3, 3), st.booleans())
data = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)
    ),
    max_leaves=25,
)


def _section(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Known keys with plausible values, each sometimes replaced by arbitrary data."""
    return st.fixed_dictionaries({}, optional={k: st.one_of(v, data) for k, v in fields.items()})


numbers = st.one_of(st.integers(-2, 100), st.floats(-1, 100))
words = st.text(max_size=8)
intensity = _section(max_restarts=st.integers(-1, 20), window=numbers)
probe_section = _section(
    type=st.sampled_from(["process", "http", "tcp", "ssh-banner", "exec"]),
    url=st.one_of(st.sampled_from(["http://127.0.0.1:8080/healthz", "https://[::1]/", "x"]), words),
    expect_status=st.integers(0, 700),
    host=st.one_of(st.sampled_from(["127.0.0.1", "::1", "localhost"]), words),
    port=st.integers(-1, 70000),
    interval=numbers,
    timeout=numbers,
    initial_delay=numbers,
    failure_threshold=st.integers(-1, 5),
    success_threshold=st.integers(-1, 3),
)
service = _section(
    command=st.lists(words, max_size=3),
    env=st.dictionaries(words, words, max_size=3),
    cwd=words,
    user=words,
    restart=st.sampled_from(["permanent", "transient", "temporary", "always"]),
    critical=st.booleans(),
    enabled=st.booleans(),
    stop_signal=st.sampled_from(["TERM", "int", "SIGKILL", "usr2", "NOPE"]),
    stop_timeout=numbers,
    start_timeout=numbers,
    backoff=_section(
        initial_delay=numbers,
        min_delay=numbers,
        max_delay=numbers,
        factor=numbers,
        jitter=st.floats(0, 1.5),
        reset_after=numbers,
    ),
    intensity=intensity,
    ports=st.lists(st.integers(-1, 70000), max_size=3),
    probes=_section(readiness=probe_section, liveness=probe_section),
)
config_like = _section(
    environment_id=words,
    user_id=words,
    workspace=_section(dir=words, user=words),
    api=_section(
        bind=st.one_of(st.sampled_from(["127.0.0.1:9000", "[::1]:1", "unix:/x", "h:0"]), words),
        token_file=st.one_of(st.none(), words),
    ),
    log=_section(level=st.sampled_from(["debug", "info", "warning", "error", "loud"])),
    shutdown=_section(timeout=numbers, kill_grace=numbers),
    supervisor=_section(intensity=intensity),
    connections=_section(interval=numbers),
    services=st.dictionaries(
        st.sampled_from(["web", "code-server", "Web", "x" * 64]), service, max_size=3
    ),
)
env_names = st.lists(st.sampled_from(KEYS), min_size=0, max_size=4).map(
    lambda parts: "DEV8_" + "__".join(p.upper() for p in parts)
)
environs = st.dictionaries(
    env_names, st.text(max_size=20).filter(lambda s: "\0" not in s), max_size=3
)


def _outcome(text: str, environ: dict[str, str]) -> Config | ConfigError:
    result: Config | ConfigError
    try:
        result = parse_config(text, "fuzz.yaml", environ)
    except ConfigError as err:
        result = err
    if isinstance(result, ConfigError):
        assert result.source in ("fuzz.yaml", *environ, "ENVIRONMENT_ID", "USER_ID")
        assert str(result).startswith(f"config error in {result.source}: ")
    return result


@settings(
    derandomize=True, max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(data=st.one_of(config_like, data), environ=environs)
def test_any_yaml_data_gives_a_config_or_a_config_error(data: Any, environ: dict[str, str]) -> None:
    text = yaml.safe_dump(data)
    result = _outcome(text, environ)
    if isinstance(result, Config):  # whatever loads must survive show-and-reload
        assert parse(yaml.safe_dump(config_to_dict(result, redact=False))) == result


@settings(derandomize=True, max_examples=300, deadline=None)
@given(text=st.text(max_size=200))
def test_any_text_gives_a_config_or_a_config_error(text: str) -> None:
    _outcome(text, {})


def test_os_environ_is_not_modified(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEV8_SERVICES__X__COMMAND", "[a]")
    before = dict(os.environ)
    parse_config(WEB, "test.yaml")
    assert dict(os.environ) == before
