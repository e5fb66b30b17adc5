"""The Prometheus alerting rules (containers/prometheus/dev8-alerts.yml), through promtool.

`promtool check rules` validates them; `promtool test rules` evaluates them on synthetic series
(dev8-alerts.test.yml), where every alert has a case that fires and a case that stays quiet. The
mutation tests show that those cases would catch a rule that never fires or always fires.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

RULES_DIR = Path(__file__).resolve().parents[2] / "containers" / "prometheus"
RULES = RULES_DIR / "dev8-alerts.yml"
UNIT_TESTS = RULES_DIR / "dev8-alerts.test.yml"
#: The alerts of issue #16 (the names dev8's own webhooks use too).
ALERTS = (
    "ServiceRestartLimitExceeded",
    "ServiceRestarted",
    "HealthCheckFailing",
    "HealthCheckSlow",
    "SecretInjectionFailed",
    "ContainerOutOfMemory",
    "CpuThrottling",
    "MemoryHigh",
    "CpuHigh",
)


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60
    )


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", RULES.name, cwd=RULES_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_every_alert_has_a_rule_with_a_severity_and_a_summary() -> None:
    found = rules()
    assert {rule["alert"] for rule in found} == set(ALERTS)
    for rule in found:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_every_alert_has_a_firing_case_and_a_quiet_case() -> None:
    cases = [
        case
        for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    for alert in ALERTS:
        mine = [case for case in cases if case["alertname"] == alert]
        assert any(case["exp_alerts"] for case in mine), f"{alert} is never shown to fire"
        assert any(not case["exp_alerts"] for case in mine), f"{alert} is never shown quiet"


def test_every_rule_fires_and_stays_quiet_as_the_unit_tests_expect() -> None:
    result = promtool("test", "rules", UNIT_TESTS.name, cwd=RULES_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _mutated(tmp_path: Path, alert: str, expr: str) -> Path:
    """The rules and their unit tests in ``tmp_path``, with ``alert``'s rules set to ``expr``."""
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == alert:
                rule["expr"] = expr
    (tmp_path / RULES.name).write_text(yaml.safe_dump(document))
    (tmp_path / UNIT_TESTS.name).write_text(UNIT_TESTS.read_text())
    return tmp_path


@pytest.mark.parametrize("alert", ALERTS)
@pytest.mark.parametrize(
    ("expr", "what"), [("vector(1) > 2", "never fires"), ("vector(1)", "always fires")]
)
def test_the_unit_tests_catch_a_rule_that(tmp_path: Path, alert: str, expr: str, what: str) -> None:
    result = promtool("test", "rules", UNIT_TESTS.name, cwd=_mutated(tmp_path, alert, expr))
    assert result.returncode != 0, f"a {alert} that {what} passed the unit tests"
    assert f"alertname: {alert}," in result.stdout + result.stderr
