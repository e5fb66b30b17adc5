"""The health-check and SSH figures of /metrics, from their sources, through prometheus-client."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from dev8.config import ProbeConfig, ProbesConfig
from dev8.health.probers import HealthBoard
from dev8.health.probes import ProbeResult
from dev8.monitoring.metrics import probe_metrics
from dev8.services.sshd_log import FailedAuthCounter, SshdOutput, is_failed_auth

# Lines of OpenSSH 9.2 (`sshd -D -e`, LogLevel VERBOSE) as dev8 captured them.
FAILED = [
    "Failed publickey for dev8 from 127.0.0.1 port 40188 ssh2: ED25519 SHA256:Q+0iJPA2FPR2emh",
    "Failed password for invalid user admin from 10.0.0.7 port 51234 ssh2",
    "Failed keyboard-interactive/pam for dev8 from 10.0.0.7 port 51234 ssh2",
    "Invalid user nosuchuser from 127.0.0.1 port 40200",
    "User root from 127.0.0.1 not allowed because not listed in AllowUsers",
]
NOT_FAILED = [
    "Failed none for dev8 from 127.0.0.1 port 40182 ssh2",  # the client asking for methods
    "Accepted publickey for dev8 from 127.0.0.1 port 40182 ssh2: ED25519 SHA256:NmNCHSV0X",
    "Postponed publickey for dev8 from 127.0.0.1 port 40182 ssh2 [preauth]",
    "Connection closed by authenticating user dev8 127.0.0.1 port 40188 [preauth]",
    "Connection closed by invalid user nosuchuser 127.0.0.1 port 40200 [preauth]",
    "maximum authentication attempts exceeded for dev8 from 10.0.0.7 port 5 ssh2 [preauth]",
    'Connection from 127.0.0.1 port 40170 on 127.0.0.1 port 54015 rdomain ""',
    "kex_exchange_identification: Connection closed by remote host",
    "Server listening on 127.0.0.1 port 54015.",
    # A user name is the client's: it may read like a failure, but never starts the line.
    "Connection closed by invalid user Failed publickey for x from 1.2.3.4 port 1 [preauth]",
]


@pytest.mark.parametrize("line", FAILED)
def test_a_failed_authentication_is_counted(line: str) -> None:
    assert is_failed_auth(line)


@pytest.mark.parametrize("line", NOT_FAILED)
def test_other_sshd_lines_are_not(line: str) -> None:
    assert not is_failed_auth(line)


def test_the_sshd_output_ring_counts_into_one_counter_and_keeps_the_lines() -> None:
    counter = FailedAuthCounter()
    first, second = SshdOutput(counter), SshdOutput(counter)
    for line in FAILED + NOT_FAILED:
        first.append("stderr", line)
    second.append("stderr", FAILED[0])
    assert counter.count == len(FAILED) + 1
    assert [entry["line"] for entry in first.tail(1000)] == FAILED + NOT_FAILED


class _Probes(Collector):
    def __init__(self, board: HealthBoard) -> None:
        self.board = board

    def collect(self) -> Iterator[Metric]:
        yield from probe_metrics(self.board.probe_stats())


def scrape(board: HealthBoard) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(_Probes(board))
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_probe_results_become_counters_a_gauge_and_a_histogram_with_a_half_second_bound() -> None:
    board = HealthBoard()
    probe = ProbeConfig(type="tcp", port=1)
    board.add("web", ProbesConfig(readiness=probe, liveness=probe))
    results = [(True, 0.1), (True, 0.5), (False, 0.6), (False, 12.0), (False, 0.004)]
    for ok, latency in results:
        board._note("web", "liveness", ProbeResult(ok=ok, latency=latency, detail="x"))
    board._note("web", "readiness", ProbeResult(ok=True, latency=0.01, detail="x"))
    found = scrape(board)

    def sample(name: str, probe: str = "liveness", **labels: str) -> float:
        return found[(name, tuple(sorted({"service": "web", "probe": probe, **labels}.items())))]

    assert sample("dev8_probe_checks_total", result="pass") == 2
    assert sample("dev8_probe_checks_total", result="fail") == 3
    assert sample("dev8_probe_consecutive_failures") == 3
    assert sample("dev8_probe_last_duration_seconds") == 0.004
    assert sample("dev8_probe_duration_seconds_bucket", le="0.005") == 1
    assert sample("dev8_probe_duration_seconds_bucket", le="0.1") == 2
    assert sample("dev8_probe_duration_seconds_bucket", le="0.5") == 3  # 0.5 is "not slower"
    assert sample("dev8_probe_duration_seconds_bucket", le="0.75") == 4
    assert sample("dev8_probe_duration_seconds_bucket", le="10.0") == 4
    assert sample("dev8_probe_duration_seconds_bucket", le="+Inf") == 5
    assert sample("dev8_probe_duration_seconds_count") == 5
    assert sample("dev8_probe_duration_seconds_sum") == pytest.approx(13.204)
    assert sample("dev8_probe_checks_total", probe="readiness", result="pass") == 1
    assert sample("dev8_probe_consecutive_failures", probe="readiness") == 0

    # A new incarnation starts its consecutive count again; the counters keep counting.
    board._services["web"].probes["liveness"].reset("not checked yet")
    assert scrape(board)[
        ("dev8_probe_checks_total", (("probe", "liveness"), ("result", "fail"), ("service", "web")))
    ] == 3  # fmt: skip
    board.remove("web")
    assert not [name for name, _ in scrape(board) if name.startswith("dev8_probe_checks")]


def test_a_probe_never_checked_has_no_last_duration() -> None:
    board = HealthBoard()
    board.add("web", ProbesConfig(readiness=ProbeConfig(type="tcp", port=1)))
    found = scrape(board)
    labels = (("probe", "readiness"), ("service", "web"))
    assert ("dev8_probe_last_duration_seconds", labels) not in found
    assert found[("dev8_probe_duration_seconds_count", labels)] == 0
