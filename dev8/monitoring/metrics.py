"""Prometheus metrics, computed from snapshots at scrape time (no second copy of the state)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from actors import ChildState
from dev8.control import Control
from dev8.health.probers import DURATION_BUCKETS, ProbeStats
from dev8.monitoring.webhooks import WebhookStats
from dev8.secrets.rotator import RotatorStats

_STATES = [state.value for state in ChildState]


class Dev8Collector(Collector):
    def __init__(self, control: Control) -> None:
        self._control = control

    def collect(self) -> Iterator[Metric]:
        control = self._control
        nodes = control.service_nodes()
        ready = control.readiness()
        up = GaugeMetricFamily(
            "dev8_service_up", "1 when the service's process is running.", labels=["service"]
        )
        is_ready = GaugeMetricFamily(
            "dev8_service_ready",
            "1 when the service is running and passes readiness.",
            labels=["service"],
        )
        state = GaugeMetricFamily(
            "dev8_service_state", "1 for the state the service is in.", labels=["service", "state"]
        )
        restarts = CounterMetricFamily(
            "dev8_service_restarts",
            "Restarts of the service, by reason.",
            labels=["service", "reason"],
        )
        since = GaugeMetricFamily(
            "dev8_service_state_since_seconds",
            "Unix time of the service's last state change.",
            labels=["service"],
        )
        for name, node in nodes.items():
            up.add_metric([name], 1.0 if node.state is ChildState.RUNNING else 0.0)
            is_ready.add_metric([name], 1.0 if ready.get(name) else 0.0)
            for value in _STATES:
                state.add_metric([name, value], 1.0 if node.state.value == value else 0.0)
            for reason, count in sorted(node.restart_reasons.items()):
                restarts.add_metric([name, reason], float(count))
            since.add_metric([name], node.since)
        yield from (up, is_ready, state, restarts, since)

        yield GaugeMetricFamily(
            "dev8_uptime_seconds", "Seconds since dev8 started.", value=control.uptime()
        )
        yield CounterMetricFamily(
            "dev8_events_published",
            "Events published on the bus.",
            value=float(control.bus.last_seq),
        )
        yield GaugeMetricFamily(
            "dev8_event_subscribers",
            "Current event stream subscribers (websocket clients and dev8's own).",
            value=control.bus.subscriber_count + control.websocket_clients,
        )
        yield CounterMetricFamily(
            "dev8_event_subscribers_dropped",
            "Subscribers cut off for falling behind.",
            value=float(control.bus.dropped_subscribers),
        )
        connections = control.connections()
        gauge = GaugeMetricFamily(
            "dev8_connections", "Established connections per service.", labels=["service"]
        )
        for name, info in connections.get("services", {}).items():
            gauge.add_metric([name], float(info.get("count", 0)))
        yield gauge
        yield GaugeMetricFamily(
            "dev8_websocket_clients",
            "Connected event stream clients.",
            value=float(connections.get("websocketClients", 0)),
        )
        if control.hooks.log_output is not None:
            output = control.hooks.log_output()
            yield CounterMetricFamily(
                "dev8_log_lines_dropped",
                "dev8's own log lines lost to a stalled, closed or full stdout.",
                value=float(output["lines_dropped"]),
            )
        if control.hooks.secrets_stats is not None:
            yield from secrets_metrics(control.hooks.secrets_stats(), control.secrets_waiting())
        yield from health_metrics(control)
        if control.hooks.webhook_stats is not None:
            yield from webhook_metrics(control.hooks.webhook_stats())
        if control.hooks.resources is not None:
            yield from resources_metrics(control.hooks.resources())


#: The fetch-failure reasons docs/secrets.md lists, exported at 0 before the first failure: the
#: counter is in every scrape, and rate()/increase() see a first failure as an increase.
FETCH_FAILURE_REASONS = (
    "throttled", "server_error", "unauthorized", "forbidden", "http_error",
    "credential", "network", "timeout", "busy", "missing", "internal_error",
    "not_a_file", "permission_denied", "too_large", "not_utf8", "io_error",
)  # fmt: skip


def secrets_metrics(stats: RotatorStats, waiting: Sequence[Mapping[str, Any]]) -> Iterator[Metric]:
    """The rotator's counters (docs/secrets.md), under Prometheus' naming."""
    yield CounterMetricFamily(
        "dev8_secrets_passes", "Secret check passes (fetch all, inject what changed).",
        value=float(stats.passes),
    )  # fmt: skip
    yield CounterMetricFamily(
        "dev8_secrets_failed_passes", "Passes in which at least one secret failed.",
        value=float(stats.failed_passes),
    )  # fmt: skip
    failures = CounterMetricFamily(
        "dev8_secrets_fetch_failures",
        "Failed secret fetches, by reason (throttled, timeout, credential, missing, ...).",
        labels=["reason"],
    )
    counts = {**dict.fromkeys(FETCH_FAILURE_REASONS, 0), **stats.fetch_failures_by_reason}
    for reason, count in sorted(counts.items()):
        failures.add_metric([reason], float(count))
    yield failures
    yield CounterMetricFamily(
        "dev8_secrets_rotations", "Secrets whose new version was written.",
        value=float(stats.rotations),
    )  # fmt: skip
    yield GaugeMetricFamily(
        "dev8_secrets_consecutive_failed_passes", "Failed passes since the last good one.",
        value=float(stats.consecutive_failed_passes),
    )  # fmt: skip
    yield GaugeMetricFamily(
        "dev8_secrets_last_fetch_duration_seconds", "Fetch time of the last pass.",
        value=stats.last_fetch_duration,
    )  # fmt: skip
    yield GaugeMetricFamily(
        "dev8_secrets_last_injection_duration_seconds", "Write time of the last injection.",
        value=stats.last_injection_duration,
    )  # fmt: skip
    yield GaugeMetricFamily(
        "dev8_secrets_last_success_timestamp_seconds",
        "Unix time of the last pass without any failure (0: none yet).",
        value=stats.last_success_time,
    )
    yield GaugeMetricFamily(
        "dev8_secrets_waiting", "Required secrets the services still wait for.",
        value=float(len(waiting)),
    )  # fmt: skip


# -- health checks, SSH logins, editor sessions (issue #16) ---------------------------------------


def health_metrics(control: Control) -> Iterator[Metric]:
    """Probe results and durations, failed SSH logins, VS Code sessions (each when wired)."""
    hooks = control.hooks
    if hooks.probe_stats is not None:
        yield from probe_metrics(hooks.probe_stats())
    if hooks.ssh_failed_auth is not None:
        yield CounterMetricFamily(
            "dev8_ssh_failed_auth",
            "Failed SSH authentications (refused keys, refused users), from sshd's log lines.",
            value=float(hooks.ssh_failed_auth()),
        )
    if hooks.vscode_sessions is not None:
        yield GaugeMetricFamily(
            "dev8_vscode_sessions",
            "Established client connections to code-server (its browser sessions' sockets).",
            value=float(hooks.vscode_sessions()),
        )


_go_float: Callable[[float], str] = floatToGoString  # untyped in prometheus-client
#: The histogram's ``le`` labels, as prometheus-client's own histograms write them.
_BOUNDS = [_go_float(bound) for bound in (*DURATION_BUCKETS, float("inf"))]


def probe_metrics(stats: Iterable[ProbeStats]) -> Iterator[Metric]:
    """The probers' board (dev8.health.probers), labelled by service and probe (readiness,
    liveness)."""
    labels = ["service", "probe"]
    checks = CounterMetricFamily(
        "dev8_probe_checks", "Health checks by result (pass, fail).", labels=[*labels, "result"]
    )
    consecutive = GaugeMetricFamily(
        "dev8_probe_consecutive_failures", "Failed checks since the last pass.", labels=labels
    )
    last = GaugeMetricFamily(
        "dev8_probe_last_duration_seconds", "Duration of the last check.", labels=labels
    )
    durations = HistogramMetricFamily(
        "dev8_probe_duration_seconds", "Duration of the health checks.", labels=labels
    )
    for probe in stats:
        key = [probe.service, probe.probe]
        checks.add_metric([*key, "pass"], float(probe.passed))
        checks.add_metric([*key, "fail"], float(probe.failed))
        consecutive.add_metric(key, float(probe.consecutive_failures))
        if probe.last_duration is not None:
            last.add_metric(key, probe.last_duration)
        cumulative = list(itertools.accumulate(probe.duration_counts))
        durations.add_metric(
            key,
            [(bound, float(count)) for bound, count in zip(_BOUNDS, cumulative, strict=True)],
            probe.duration_sum,
        )
    yield from (checks, consecutive, last, durations)


# -- webhooks (issue #16) -------------------------------------------------------------------------


def webhook_metrics(stats: WebhookStats) -> Iterator[Metric]:
    """The webhook notifier's counters (dev8.monitoring.webhooks)."""
    deliveries = CounterMetricFamily(
        "dev8_webhook_deliveries",
        "Alerts sent to webhooks, by result (delivered, rejected: a 4xx, failed: every try).",
        labels=["result"],
    )
    for result, count in sorted(stats.deliveries.items()):
        deliveries.add_metric([result], float(count))
    yield deliveries
    yield CounterMetricFamily(
        "dev8_webhook_dropped", "Alerts dropped because a webhook's queue was full.",
        value=float(stats.dropped),
    )  # fmt: skip
    yield CounterMetricFamily(
        "dev8_webhook_retries", "Webhook tries after the first (refused, timeout, 5xx, 429).",
        value=float(stats.retries),
    )  # fmt: skip
    yield GaugeMetricFamily(
        "dev8_webhook_queued", "Alerts waiting in the webhooks' queues.",
        value=float(stats.queued),
    )  # fmt: skip


# ----------------------------------------------------------------------------- resources


_SERVICE_FIGURES = (
    # (name, help, key in the snapshot, counter?)
    ("dev8_service_cpu_seconds", "CPU seconds of the service's process tree.", "cpuSeconds", True),
    ("dev8_service_memory_bytes", "Resident memory of the service's process tree.", "memoryBytes",
     False),
    ("dev8_service_memory_limit_bytes", "The service's limits.memory.", "memoryLimitBytes", False),
    ("dev8_service_threads", "Threads of the service's process tree.", "threads", False),
    ("dev8_service_open_fds", "Open file descriptors of the service's process tree.", "openFds",
     False),
    ("dev8_service_processes", "Processes in the service's tree.", "processes", False),
    ("dev8_service_oom_kills", "The service's processes killed by the OOM killer.", "oomKills",
     True),
)  # fmt: skip

_CONTAINER_FIGURES = (
    ("dev8_container_memory_bytes", "Memory in use in the container's cgroup.", "memoryBytes",
     False),
    ("dev8_container_memory_limit_bytes", "The container's memory limit.", "memoryLimitBytes",
     False),
    ("dev8_container_cpu_seconds", "CPU seconds used by the container.", "cpuSeconds", True),
    ("dev8_container_cpu_limit_cores", "The container's CPU quota in cores.", "cpuLimitCores",
     False),
    ("dev8_container_cpu_throttled_periods", "CFS periods in which the container was throttled.",
     "throttledPeriods", True),
    ("dev8_container_cpu_throttled_seconds", "Time the container was throttled.",
     "throttledSeconds", True),
    ("dev8_container_oom_kills", "OOM kills in the container's cgroup.", "oomKills", True),
)  # fmt: skip


def resources_metrics(snapshot: Mapping[str, Any]) -> Iterator[Metric]:
    """The sampler's figures (docs/operations.md); a figure that is unknown has no series."""
    services: Mapping[str, Mapping[str, Any]] = snapshot.get("services", {})
    for name, text, key, counter in _SERVICE_FIGURES:
        family = (CounterMetricFamily if counter else GaugeMetricFamily)(
            name, text, labels=["service"]
        )
        for service, figures in sorted(services.items()):
            if figures.get(key) is not None:
                family.add_metric([service], float(figures[key]))
        yield family
    container: Mapping[str, Any] = snapshot.get("container", {})
    for name, text, key, counter in _CONTAINER_FIGURES:
        family = (CounterMetricFamily if counter else GaugeMetricFamily)(name, text, labels=[])
        if container.get(key) is not None:
            family.add_metric([], float(container[key]))
        yield family


def make_registry(control: Control) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(Dev8Collector(control))
    ProcessCollector(registry=registry)  # dev8's own RSS, CPU seconds, open fds
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
