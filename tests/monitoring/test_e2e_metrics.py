"""End to end: /metrics of the real `dev8 run` as root, with the built-in sshd, a probed service
and secrets from the Key Vault fake (the real Azure SDK over HTTPS, tests/keyvault_fake.py).

The scrape is read by prometheus-client's own parser and linted by `promtool check metrics`; real
ssh logins with a wrong key, an unknown user and root move `dev8_ssh_failed_auth_total`, good ones
do not.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from support.dev8_harness import NO_BACKOFF, Dev8Run, fail_after
from support.keyvault_fake import FakeKeyVault
from support.net import free_port
from support.workspace_harness import (
    ROOT_RUNTIME_DIR,
    USER_ID,
    WorkspaceSecrets,
    WorkspaceUser,
    open_workspace,
    run_tool,
    ssh_options,
    system_python_service,
    wait_healthy,
    workspace_config,
)

REPO = Path(__file__).resolve().parents[2]
SSH = f"ssh-{secrets.token_hex(3)}"
#: A web server whose readiness probe passes and whose liveness probe (a closed port) fails on
#: every check, without ever reaching its threshold.
WEB = """\
import http.server, sys
port = int(sys.argv[2])
http.server.HTTPServer(("127.0.0.1", port), http.server.SimpleHTTPRequestHandler).serve_forever()
"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(autouse=True)
def _no_leftover_sshd_config() -> Iterator[None]:
    yield
    (ROOT_RUNTIME_DIR / f"{SSH}_config").unlink(missing_ok=True)


def documented_secrets_metrics() -> set[str]:
    """The metric names docs/secrets.md's table promises."""
    text = (REPO / "docs" / "secrets.md").read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(dev8_secrets_\w+)", section, re.MULTILINE))


def parse(scrape: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(scrape)
        for sample in family.samples
    }


async def scrape(run: Dev8Run) -> str:
    response = await run.http.get("/metrics")
    assert response.status_code == 200
    return response.text


async def failed_auth(run: Dev8Run) -> float:
    return parse(await scrape(run))[("dev8_ssh_failed_auth_total", ())]


async def wait_failed_auth(run: Dev8Run, expected: float) -> None:
    """Bounded poll: sshd writes its log line when it wants, the count follows."""
    with fail_after(15, f"dev8_ssh_failed_auth_total to reach {expected}", run.tail):
        while (value := await failed_auth(run)) != expected:
            assert value < expected, f"counted {value}, more than the {expected} attempts made"
            await trio.sleep(0.1)


async def accepted_logins(run: Dev8Run) -> int:
    response = await run.http.get(f"/services/{SSH}/logs?lines=1000")
    return sum(entry["line"].startswith("Accepted publickey") for entry in response.json()["lines"])


async def good_login(run: Dev8Run, port: int, user: WorkspaceUser, key: Path, known: Path) -> None:
    """A key login that works, and its "Accepted" line in sshd's output (all of its lines are)."""
    before = await accepted_logins(run)
    result = await run_tool(
        ["ssh", "-p", str(port), *ssh_options(known, key), f"{user.name}@127.0.0.1", "true"]
    )
    assert result.returncode == 0, result.stderr
    with fail_after(15, "sshd to log the accepted login", run.tail):
        while await accepted_logins(run) == before:  # noqa: ASYNC110 - a real sshd's output
            await trio.sleep(0.1)


async def refused_login(port: int, login: str, key: Path, known: Path) -> None:
    result = await run_tool(
        ["ssh", "-p", str(port), *ssh_options(known, key), f"{login}@127.0.0.1", "true"]
    )
    assert result.returncode == 255
    assert b"Permission denied" in result.stderr


def config_for(tmp_path: Path, user: WorkspaceUser, api_port: int, ssh_port: int) -> Path:
    web_port, closed_port = free_port(), free_port()
    web = system_python_service(WEB, f"{SSH}-web", backoff=dict(NO_BACKOFF))
    web["command"].append(str(web_port))
    web["probes"] = {
        "readiness": {"type": "http", "url": f"http://127.0.0.1:{web_port}/", "interval": 0.2},
        "liveness": {
            "type": "tcp", "port": closed_port, "interval": 0.2, "failure_threshold": 100000,
        },
    }  # fmt: skip
    return workspace_config(
        tmp_path / "dev8.yaml",
        user=user,
        api_port=api_port,
        user_id=USER_ID,
        services={
            SSH: {
                "builtin": "sshd",
                "sshd": {"port": ssh_port, "listen": "127.0.0.1"},
                "backoff": dict(NO_BACKOFF),
            },
            "web": web,
        },
        secrets_section={
            "provider": "keyvault", "sdk_retries": 0, "fetch_timeout": 2.0,
            "rotation_jitter": 0, "verify_challenge_resource": False,
        },
    )  # fmt: skip


async def test_a_live_scrape_is_valid_and_counts_probes_secrets_and_failed_ssh_logins(
    workspace: WorkspaceUser,
    material: WorkspaceSecrets,
    vault: FakeKeyVault,
    tmp_path: Path,
    api_port: int,
) -> None:
    for name, value in material.named().items():
        if not name.startswith("code-server-password"):
            vault.set_secret(name, value)
    ssh_port = free_port()
    known = tmp_path / "known_hosts"
    wrong_key = tmp_path / "wrong_key"
    keygen = await run_tool(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", str(wrong_key)])
    assert keygen.returncode == 0, keygen.stderr
    config = config_for(tmp_path, workspace, api_port, ssh_port)
    runtime_config = ROOT_RUNTIME_DIR / f"{SSH}_config"
    async with open_workspace(config, port=api_port, markers=[str(runtime_config), SSH]) as (
        run,
        _recorder,
    ):
        await wait_healthy(run)
        # Good logins are not failures (nor are the banner probes sshd logs meanwhile).
        await good_login(run, ssh_port, workspace, material.key_file, known)
        assert await failed_auth(run) == 0

        await refused_login(ssh_port, workspace.name, wrong_key, known)  # a key not authorized
        await wait_failed_auth(run, 1)
        await refused_login(ssh_port, f"nobody{secrets.token_hex(3)}", wrong_key, known)
        await wait_failed_auth(run, 2)
        await refused_login(ssh_port, "root", material.key_file, known)  # never root
        await wait_failed_auth(run, 3)
        await good_login(run, ssh_port, workspace, material.key_file, known)
        assert await failed_auth(run) == 3

        # sshd's readiness probe runs every 10 s, its first check one interval after the start.
        liveness = ("dev8_probe_consecutive_failures", (("probe", "liveness"), ("service", "web")))
        banner = ("dev8_probe_duration_seconds_count", (("probe", "readiness"), ("service", SSH)))
        with fail_after(30, "web's liveness to fail > 3 times, sshd's banner check", run.tail):
            while True:
                found = parse(text := await scrape(run))
                if found.get(liveness, 0) > 3 and found.get(banner, 0) >= 1:
                    break
                await trio.sleep(0.2)

    check = await run_tool(["promtool", "check", "metrics"], stdin=text.encode())
    assert check.returncode == 0, check.stdout + check.stderr
    samples = parse(text)
    names = {name for name, _ in samples}
    missing = documented_secrets_metrics() - names
    assert not missing, f"documented in docs/secrets.md but not scraped: {missing}"
    assert samples[("dev8_secrets_passes_total", ())] >= 1
    assert samples[("dev8_secrets_failed_passes_total", ())] == 0

    def sample(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    for service, probe in ((SSH, "readiness"), ("web", "readiness"), ("web", "liveness")):
        key = {"service": service, "probe": probe}
        checks = sample("dev8_probe_duration_seconds_count", **key)
        passed = sample("dev8_probe_checks_total", result="pass", **key)
        failed = sample("dev8_probe_checks_total", result="fail", **key)
        assert checks >= 1
        assert passed + failed == checks
        assert sample("dev8_probe_duration_seconds_bucket", le="+Inf", **key) == checks
        assert sample("dev8_probe_duration_seconds_bucket", le="0.5", **key) <= checks
        assert 0 < sample("dev8_probe_last_duration_seconds", **key) < 5
        assert sample("dev8_probe_duration_seconds_sum", **key) > 0
    assert sample("dev8_probe_checks_total", result="fail", service="web", probe="readiness") == 0
    assert sample("dev8_probe_checks_total", result="pass", service="web", probe="liveness") == 0
    assert sample("dev8_probe_consecutive_failures", service="web", probe="liveness") > 3
    assert sample("dev8_probe_consecutive_failures", service="web", probe="readiness") == 0
    assert sample("dev8_ssh_failed_auth_total") == 3
    assert sample("dev8_vscode_sessions") == 0
    assert sample("dev8_service_up", service=SSH) == 1
