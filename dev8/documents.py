"""The wire shapes of the management API, declared once.

Every JSON body and every event payload the API sends is one of these attrs classes. The same
declaration gives what the routes send (``to_jsonable``/``to_json``: keys in camelCase, every
key present, ``null`` when unknown) and the JSON schemas of ``/openapi.json`` (``Schemas``),
so the two cannot drift apart; the client, the dashboard and the Go agent (tests/go) read
those shapes, and tests hold real answers to the schemas.

Conventions: a time is an RFC 3339 UTC string (:data:`Timestamp`); a duration is a number of
seconds (a human string such as ``uptime`` may sit beside it). Logs (stdout) are not documents:
they keep the seed's snake_case fields.
"""

from __future__ import annotations

import collections
import enum
import functools
import json
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, NewType

import attrs

from actors import ChildState, Envelope, Event, ExitInfo, NodeStatus

#: An RFC 3339 UTC time (``2026-12-03T10:15:00.123456+00:00``).
Timestamp = NewType("Timestamp", str)

State = Literal["starting", "running", "backoff", "stopping", "stopped", "exited", "fatal"]


def timestamp(wall: float | None) -> Timestamp | None:
    """A wall-clock time (``time.time()``) as RFC 3339 UTC; None stays None."""
    if wall is None:
        return None
    return Timestamp(datetime.fromtimestamp(wall, tz=UTC).isoformat())


def timestamp_now() -> Timestamp:
    return Timestamp(datetime.now(tz=UTC).isoformat())


def camel(name: str) -> str:
    """``restart_reasons`` -> ``restartReasons``."""
    first, *rest = name.split("_")
    return first + "".join(part[:1].upper() + part[1:] for part in rest)


def _doc(description: str) -> dict[str, Any]:
    return {"description": description}


# ------------------------------------------------------------------------------------ errors


@attrs.frozen(kw_only=True)
class ErrorDetail:
    code: str = attrs.field(metadata=_doc("a stable machine word: bad_request, unauthorized..."))
    message: str = attrs.field(metadata=_doc("one line for a human"))
    parameter: str | None = attrs.field(
        default=None, metadata=_doc("the query parameter or header that was refused")
    )
    known: list[str] | None = attrs.field(
        default=None, metadata=_doc("the names that exist, when the one asked for does not")
    )
    state: str | None = attrs.field(
        default=None, metadata=_doc("the target's state, when it is in the wrong one")
    )


@attrs.frozen(kw_only=True)
class ErrorDocument:
    """Every 4xx (and 5xx) answer."""

    error: ErrorDetail


def error_document(
    code: str,
    message: str,
    *,
    parameter: str | None = None,
    known: Iterable[str] | None = None,
    state: str | None = None,
) -> ErrorDocument:
    return ErrorDocument(
        error=ErrorDetail(
            code=code,
            message=message,
            parameter=parameter,
            known=None if known is None else list(known),
            state=state,
        )
    )


@attrs.frozen(kw_only=True)
class WaitingSecret:
    """A required secret the services wait for, and why it is not there yet."""

    name: str
    reason: str = attrs.field(metadata=_doc("missing, throttled, timeout, credential, ..."))
    status: int | None = attrs.field(metadata=_doc("the store's HTTP status, when it answered"))
    retry_after: float | None = attrs.field(
        metadata=_doc("seconds the store asked to wait (Retry-After), when it did")
    )


def waiting_secrets(entries: Iterable[Mapping[str, Any]]) -> list[WaitingSecret]:
    return [
        WaitingSecret(
            name=str(entry.get("name")),
            reason=str(entry.get("reason")),
            status=entry.get("status"),
            retry_after=entry.get("retryAfter"),
        )
        for entry in entries
    ]


@attrs.frozen(kw_only=True)
class WaitingErrorDetail(ErrorDetail):
    waiting_for_secrets: list[WaitingSecret] = attrs.field(
        factory=list, metadata=_doc("what the services wait for before they start")
    )


@attrs.frozen(kw_only=True)
class WaitingErrorDocument:
    """409 ``waiting_for_secrets``: a service action while the services wait for secrets."""

    error: WaitingErrorDetail


# ------------------------------------------------------------------------- probes and health


@attrs.frozen(kw_only=True)
class HealthDocument:
    """``GET /health``: the seed's shape, for humans and the agent."""

    healthy: bool
    last_check: Timestamp
    services: dict[str, State]
    uptime: str = attrs.field(metadata=_doc("human form of uptimeSeconds, e.g. 2h30m15s"))
    uptime_seconds: float
    waiting_for_secrets: list[WaitingSecret] = attrs.field(
        factory=list, metadata=_doc("required secrets the services wait for ([] when none)")
    )


@attrs.frozen(kw_only=True)
class LivenessDocument:
    """``GET /livez``: dev8 itself is alive (200) or wedged (503)."""

    status: Literal["alive", "wedged"]
    boot_id: str
    reason: str | None = attrs.field(default=None, metadata=_doc("why wedged; null when alive"))


@attrs.frozen(kw_only=True)
class ReadinessDocument:
    """``GET /readyz``: the workspace can take users (200) or not yet (503)."""

    status: Literal["ready", "notReady"]
    not_ready: list[str] = attrs.field(metadata=_doc("the critical services that are not ready"))


@attrs.frozen(kw_only=True)
class ReadyDocument:
    """``GET /ready``: readiness of every service."""

    ready: bool
    services: dict[str, bool]


@attrs.frozen(kw_only=True)
class ProbeDocument:
    type: Literal["process", "http", "tcp", "ssh-banner"]
    ok: bool | None = attrs.field(metadata=_doc("null until checked"))
    detail: str
    latency: float | None = attrs.field(metadata=_doc("seconds the last check took"))
    consecutive_failures: int
    consecutive_successes: int
    failure_threshold: int
    success_threshold: int
    checks: int
    last_check: Timestamp | None


@attrs.frozen(kw_only=True)
class ProbesDocument:
    readiness: ProbeDocument | None = attrs.field(metadata=_doc("null when not configured"))
    liveness: ProbeDocument | None = attrs.field(metadata=_doc("null when not configured"))


# ------------------------------------------------------------------------------------ status


@attrs.frozen(kw_only=True)
class ExitDetails:
    signal: str | None = attrs.field(default=None, metadata=_doc("e.g. SIGKILL, when killed"))
    exit_code: int | None = attrs.field(default=None, metadata=_doc("when it exited by itself"))
    last_output: list[str] | None = attrs.field(
        default=None, metadata=_doc("its last output lines, when it failed")
    )


@attrs.frozen(kw_only=True)
class ExitDocument:
    """Why a child's last incarnation ended."""

    reason: str = attrs.field(metadata=_doc("normal, shutdown, error, start_timeout, escalated"))
    abnormal: bool
    error: str | None
    details: ExitDetails
    shutdown: str | None = attrs.field(
        default=None, metadata=_doc("who stopped it (stop, restart, probe, ...) for a shutdown")
    )


@attrs.frozen(kw_only=True)
class NodeInfo:
    """What a node of the tree reports about itself; null where it does not apply."""

    pid: int | None = None
    user: str | None = None
    exit_code: int | None = None
    strategy: str | None = None
    service: str | None = None
    binds: list[str] | None = attrs.field(default=None, metadata=_doc("where the API listens"))


@attrs.frozen(kw_only=True)
class TreeNode:
    name: str
    path: str
    kind: Literal["worker", "supervisor"]
    state: State
    restarts: int
    restart_reasons: dict[str, int]
    last_exit: ExitDocument | None
    since: Timestamp = attrs.field(metadata=_doc("when it entered its current state"))
    info: NodeInfo
    children: list[TreeNode]


@attrs.frozen(kw_only=True)
class ServiceResources:
    """A service's figures at the last sample, summed over its whole process tree."""

    cpu_seconds: float | None = attrs.field(metadata=_doc("CPU time of its live processes"))
    cpu_usage: float | None = attrs.field(metadata=_doc("cores used over the last interval"))
    memory_bytes: int | None = attrs.field(metadata=_doc("resident memory"))
    memory_limit_bytes: int | None = attrs.field(metadata=_doc("limits.memory; null: none"))
    cpu_limit_cores: float | None = attrs.field(metadata=_doc("limits.cpu; null: none"))
    threads: int | None
    open_fds: int | None
    processes: int | None
    oom_kills: int = attrs.field(metadata=_doc("of its processes, since dev8 started"))


@attrs.frozen(kw_only=True)
class ContainerResources:
    """The container's cgroup (v1 or v2); null where unknown or, for limits, unlimited."""

    memory_bytes: int | None
    memory_limit_bytes: int | None
    cpu_seconds: float | None
    cpu_usage: float | None = attrs.field(metadata=_doc("cores used over the last interval"))
    cpu_limit_cores: float | None = attrs.field(metadata=_doc("quota / period"))
    throttled_periods: int | None
    throttled_seconds: float | None
    oom_kills: int | None


@attrs.frozen(kw_only=True)
class ResourcesDocument:
    sampled_at: Timestamp | None = attrs.field(metadata=_doc("null before the first sample"))
    interval: float = attrs.field(metadata=_doc("seconds between samples"))
    container: ContainerResources


def resources_document(snapshot: Mapping[str, Any], interval: float) -> ResourcesDocument:
    return ResourcesDocument(
        sampled_at=timestamp(snapshot.get("sampledAt")),
        interval=interval,
        container=ContainerResources(**_snake(snapshot["container"])),
    )


def service_resources(figures: Mapping[str, Any] | None) -> ServiceResources | None:
    return None if figures is None else ServiceResources(**_snake(figures))


def _snake(data: Mapping[str, Any]) -> dict[str, Any]:
    return {"".join(f"_{c.lower()}" if c.isupper() else c for c in k): v for k, v in data.items()}


@attrs.frozen(kw_only=True)
class ServiceDocument:
    state: State
    ready: bool
    pid: int | None
    restarts: int
    restart_reasons: dict[str, int]
    last_exit: ExitDocument | None
    since: Timestamp | None
    probes: ProbesDocument | None = attrs.field(metadata=_doc("null when it has no probes"))
    resources: ServiceResources | None = attrs.field(
        default=None, metadata=_doc("null without a sampler; figures null until sampled")
    )


@attrs.frozen(kw_only=True)
class SecretsStats:
    passes: int
    failed_passes: int
    fetch_failures: int
    rotations: int
    consecutive_failed_passes: int
    last_fetch_duration: float = attrs.field(metadata=_doc("seconds"))
    last_injection_duration: float = attrs.field(metadata=_doc("seconds"))
    last_success: Timestamp | None = attrs.field(metadata=_doc("the last pass without failure"))


@attrs.frozen(kw_only=True)
class SecretsDocument:
    provider: str
    versions: dict[str, str] = attrs.field(metadata=_doc("role -> version (never a value)"))
    last_fetch: Timestamp | None
    next_check: Timestamp | None
    last_pass_ok: bool | None
    failed: list[str]
    missing: list[str]
    ready: bool = attrs.field(metadata=_doc("every required secret has been written"))
    waiting_for: list[WaitingSecret]
    stats: SecretsStats


@attrs.frozen(kw_only=True)
class LogOutputDocument:
    """dev8's own log lines: a stalled or closed stdout drops them, never stalls dev8."""

    lines_written: int
    lines_dropped: int
    lines_queued: int
    failed_writes: int
    last_error: str | None = attrs.field(metadata=_doc("EPIPE, ENOSPC, ... or null"))


@attrs.frozen(kw_only=True)
class StorageDocument:
    """Where /workspace lives, and whether file modes hold there (they do not on SMB)."""

    path: str
    kind: Literal["posix", "smb", "fixed-modes"]
    fs_type: str
    modes_hold: bool
    strict_files_in: str | None = attrs.field(
        metadata=_doc("where files that need strict modes are kept instead; null when in place")
    )


@attrs.frozen(kw_only=True)
class StatusDocument:
    """``GET /status``, and the ``data`` of a ``resync`` event."""

    version: str
    pid: int
    boot_id: str = attrs.field(metadata=_doc("new at every start of dev8"))
    environment_id: str
    user_id: str
    started: Timestamp
    uptime: str = attrs.field(metadata=_doc("human form of uptimeSeconds"))
    uptime_seconds: float
    last_event: int = attrs.field(metadata=_doc("seq of the last event; resume with since="))
    services: dict[str, ServiceDocument]
    tree: TreeNode
    secrets: SecretsDocument | None = attrs.field(metadata=_doc("null without a provider"))
    waiting_for_secrets: list[WaitingSecret] = attrs.field(
        metadata=_doc("required secrets the services wait for before they start")
    )
    log_output: LogOutputDocument | None = attrs.field(
        metadata=_doc("dev8's own stdout; null when not logging through the writer")
    )
    storage: StorageDocument | None = attrs.field(metadata=_doc("the workspace's storage"))
    resources: ResourcesDocument | None = attrs.field(
        default=None, metadata=_doc("the container's figures; null without a sampler")
    )


# ------------------------------------------------------------------------------- connections


@attrs.frozen(kw_only=True)
class ServiceConnections:
    count: int
    ports: list[int]
    peers: list[str] = attrs.field(metadata=_doc("IP:PORT or [IPV6]:PORT of each client"))
    last_activity: Timestamp | None


@attrs.frozen(kw_only=True)
class ConnectionsDocument:
    """``GET /connections``."""

    services: dict[str, ServiceConnections]
    websocket_clients: int
    last_activity: Timestamp | None = attrs.field(metadata=_doc("null when nobody came yet"))


# ------------------------------------------------------------------------------------- logs


@attrs.frozen(kw_only=True)
class LogLine:
    seq: int = attrs.field(metadata=_doc("numbered per service; resume with since="))
    stream: Literal["stdout", "stderr"]
    line: str


@attrs.frozen(kw_only=True)
class LogsDocument:
    """``GET /services/{name}/logs``."""

    service: str
    lines: list[LogLine]


# ---------------------------------------------------------------------------------- actions


@attrs.frozen(kw_only=True)
class ActionDocument:
    """The answer to a restart, stop or start."""

    service: str
    state: State
    restarts: int


@attrs.frozen(kw_only=True)
class ReloadDocument:
    """``POST /reload`` (202): what the new config will change, answered before it is applied;
    the pass publishes ``reload_started``, then ``reload_finished`` or ``reload_failed``."""

    reload: int = attrs.field(
        metadata=_doc("this reload's number; the reload_* events of its pass carry it")
    )
    queued: bool = attrs.field(
        metadata=_doc(
            "a pass was running: this one follows it (reloads that arrive meanwhile are "
            "coalesced into one pass)"
        )
    )
    added: list[str]
    removed: list[str]
    changed: list[str]
    unchanged: list[str]
    restart_required_for: list[str] = attrs.field(
        metadata=_doc("config sections that take effect only at dev8's next start")
    )


@attrs.frozen(kw_only=True)
class FetchFailureDocument:
    name: str
    reason: str
    status: int | None
    retry_after: float | None


@attrs.frozen(kw_only=True)
class SecretsRefreshDocument:
    """``POST /secrets/refresh``."""

    ok: bool
    versions: dict[str, str]
    changed: list[str]
    missing: list[str]
    failed: dict[str, FetchFailureDocument]
    not_written: list[str] = attrs.field(metadata=_doc("files that could not be written"))
    retry_after: float | None
    duration: float = attrs.field(metadata=_doc("seconds"))


@attrs.frozen(kw_only=True)
class SecretsRefreshErrorDetail(ErrorDetail):
    """A refresh whose pass failed: the error, with what the pass did beside it (no values)."""

    ok: bool = False
    versions: dict[str, str] = attrs.field(factory=dict)
    changed: list[str] = attrs.field(factory=list)
    missing: list[str] = attrs.field(factory=list)
    failed: dict[str, FetchFailureDocument] = attrs.field(factory=dict)
    not_written: list[str] = attrs.field(factory=list)
    retry_after: float | None = None
    duration: float | None = attrs.field(default=None, metadata=_doc("null when none finished"))
    waiting_for: list[WaitingSecret] = attrs.field(factory=list)


@attrs.frozen(kw_only=True)
class SecretsRefreshErrorDocument:
    """409/503 from ``POST /secrets/refresh``."""

    error: SecretsRefreshErrorDetail


@attrs.frozen(kw_only=True)
class CrashedDocument:
    """``POST /chaos/actors/{path}/crash``."""

    path: str
    state: State
    restarts: int


@attrs.frozen(kw_only=True)
class SignalledDocument:
    """``POST /chaos/services/{name}/signal``."""

    service: str
    signal: str
    pid: int


@attrs.frozen(kw_only=True)
class LaggedCloseDocument:
    """The reason (JSON text) of the websocket close 4001: the subscriber fell behind."""

    resume_from: int = attrs.field(metadata=_doc("reconnect with since= this"))
    boot_id: str


# ----------------------------------------------------------------------------- the documents


def exit_document(info: ExitInfo | None) -> ExitDocument | None:
    if info is None:
        return None
    details = info.details
    return ExitDocument(
        reason=info.reason.value,
        abnormal=info.abnormal,
        error=info.error,
        details=exit_details(details),
        shutdown=info.shutdown,
    )


def exit_details(details: Mapping[str, Any]) -> ExitDetails:
    last_output = details.get("lastOutput")
    return ExitDetails(
        signal=details.get("signal"),
        exit_code=details.get("exit_code"),
        last_output=None if last_output is None else [str(line) for line in last_output],
    )


def node_info(info: Mapping[str, Any]) -> NodeInfo:
    return NodeInfo(
        pid=info.get("pid"),
        user=info.get("user"),
        exit_code=info.get("exit_code"),
        strategy=info.get("strategy"),
        service=info.get("service"),
        binds=None if info.get("binds") is None else [str(b) for b in info["binds"]],
    )


def tree_node(node: NodeStatus) -> TreeNode:
    return TreeNode(
        name=node.name,
        path=node.path,
        kind="supervisor" if node.kind == "supervisor" else "worker",
        state=node.state.value,
        restarts=node.restarts,
        restart_reasons=dict(node.restart_reasons),
        last_exit=exit_document(node.last_exit),
        since=typing.cast(Timestamp, timestamp(node.since)),
        info=node_info(node.info),
        children=[tree_node(child) for child in node.children],
    )


def service_document(
    node: NodeStatus,
    *,
    ready: bool,
    probes: ProbesDocument | None,
    resources: ServiceResources | None = None,
) -> ServiceDocument:
    return ServiceDocument(
        state=node.state.value,
        ready=ready,
        pid=node.info.get("pid") if node.state is ChildState.RUNNING else None,
        restarts=node.restarts,
        restart_reasons=dict(node.restart_reasons),
        last_exit=exit_document(node.last_exit),
        since=timestamp(node.since),
        probes=probes,
        resources=resources,
    )


def secrets_document(status: Mapping[str, Any]) -> SecretsDocument:
    """From the secrets runtime's own status (its keys are its business)."""
    stats = status.get("stats") or {}
    return SecretsDocument(
        provider=str(status.get("provider")),
        versions=dict(status.get("versions") or {}),
        last_fetch=status.get("last_fetch"),
        next_check=status.get("next_check"),
        last_pass_ok=status.get("last_pass_ok"),
        failed=list(status.get("failed") or ()),
        missing=list(status.get("missing") or ()),
        ready=bool(status.get("ready", True)),
        waiting_for=waiting_secrets(status.get("waitingFor") or ()),
        stats=SecretsStats(
            passes=stats.get("passes", 0),
            failed_passes=stats.get("failed_passes", 0),
            fetch_failures=stats.get("fetch_failures", 0),
            rotations=stats.get("rotations", 0),
            consecutive_failed_passes=stats.get("consecutive_failed_passes", 0),
            last_fetch_duration=stats.get("last_fetch_duration", 0.0),
            last_injection_duration=stats.get("last_injection_duration", 0.0),
            last_success=timestamp(stats.get("last_success_time") or None),
        ),
    )


def storage_document(storage: Mapping[str, Any]) -> StorageDocument:
    return StorageDocument(
        path=str(storage.get("path")),
        kind=storage.get("kind", "posix"),
        fs_type=str(storage.get("fsType")),
        modes_hold=bool(storage.get("modesHold")),
        strict_files_in=storage.get("strictFilesIn"),
    )


def secrets_refresh_document(result: Mapping[str, Any]) -> SecretsRefreshDocument:
    return SecretsRefreshDocument(
        ok=bool(result.get("ok")),
        versions=dict(result.get("versions") or {}),
        changed=list(result.get("changed") or ()),
        missing=list(result.get("missing") or ()),
        failed=fetch_failures(result.get("failed") or {}),
        not_written=list(result.get("notWritten") or ()),
        retry_after=result.get("retryAfter"),
        duration=float(result.get("duration") or 0.0),
    )


def fetch_failures(failed: Mapping[str, Mapping[str, Any]]) -> dict[str, FetchFailureDocument]:
    return {
        role: FetchFailureDocument(
            name=failure.get("name", role),
            reason=failure.get("reason", "unknown"),
            status=failure.get("status"),
            retry_after=failure.get("retryAfter"),
        )
        for role, failure in failed.items()
    }


def secrets_refresh_error(
    code: str, message: str, reply: Mapping[str, Any]
) -> SecretsRefreshErrorDocument:
    """What a failed refresh answers: the error, and the pass's outcome (``reply``) in it."""
    duration = reply.get("duration")
    return SecretsRefreshErrorDocument(
        error=SecretsRefreshErrorDetail(
            code=code,
            message=message,
            ok=False,
            versions=dict(reply.get("versions") or {}),
            changed=list(reply.get("changed") or ()),
            missing=list(reply.get("missing") or ()),
            failed=fetch_failures(reply.get("failed") or {}),
            not_written=list(reply.get("notWritten") or ()),
            retry_after=reply.get("retryAfter"),
            duration=None if duration is None else float(duration),
            waiting_for=waiting_secrets(reply.get("waitingFor") or ()),
        )
    )


def reload_document(result: Mapping[str, Any]) -> ReloadDocument:
    return ReloadDocument(
        reload=int(result.get("reload") or 0),
        queued=bool(result.get("queued")),
        added=list(result.get("added") or ()),
        removed=list(result.get("removed") or ()),
        changed=list(result.get("changed") or ()),
        unchanged=list(result.get("unchanged") or ()),
        restart_required_for=list(result.get("restart_required_for") or ()),
    )


def connections_document(snapshot: Mapping[str, Any]) -> ConnectionsDocument:
    """From the connection board's snapshot (already camelCase, but typed here)."""
    return ConnectionsDocument(
        services={
            name: ServiceConnections(
                count=entry["count"],
                ports=list(entry["ports"]),
                peers=list(entry["peers"]),
                last_activity=entry.get("lastActivity"),
            )
            for name, entry in snapshot.get("services", {}).items()
        },
        websocket_clients=snapshot.get("websocketClients", 0),
        last_activity=snapshot.get("lastActivity"),
    )


def probes_document(details: Mapping[str, Any] | None) -> ProbesDocument | None:
    """From the health board's details of one service (None: it has no probes)."""
    if not details or not details.get("probes"):
        return None
    probes = details["probes"]

    def one(kind: str) -> ProbeDocument | None:
        probe = probes.get(kind)
        if probe is None:
            return None
        return ProbeDocument(
            type=probe["type"],
            ok=probe["ok"],
            detail=probe["detail"],
            latency=probe["latency"],
            consecutive_failures=probe["consecutiveFailures"],
            consecutive_successes=probe["consecutiveSuccesses"],
            failure_threshold=probe["failureThreshold"],
            success_threshold=probe["successThreshold"],
            checks=probe["checks"],
            last_check=probe["lastCheck"],
        )

    return ProbesDocument(readiness=one("readiness"), liveness=one("liveness"))


# ------------------------------------------------------------------------------------ events


#: Fields of events whose declared type is too loose for the wire, and what they become.
_EVENT_FIELD_TYPES: dict[str, Any] = {"info": NodeInfo, "details": ExitDetails}


def _event_value(name: str, value: Any) -> Any:
    if name == "info" and isinstance(value, Mapping):
        return node_info(value)
    if name == "details" and isinstance(value, Mapping):
        return exit_details(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def event_data(event: Event) -> dict[str, Any]:
    """An event's own fields (without ``source``), in the wire's shape."""
    return {
        camel(field.name): to_jsonable(_event_value(field.name, getattr(event, field.name)))
        for field in attrs.fields(type(event))
        if field.name != "source"
    }


def event_document(envelope: Envelope, boot_id: str) -> dict[str, Any]:
    """The JSON-ready event as ``/events`` sends it."""
    return {
        "seq": envelope.seq,
        "bootId": boot_id,
        "time": timestamp(envelope.time),
        "kind": envelope.event.kind,
        "source": envelope.event.source,
        "data": event_data(envelope.event),
    }


class EventEncoder:
    """Each event's wire JSON, made once however many subscribers send it.

    Subscribers that keep up are sent the same recent events at about the same time: the last
    ``size`` texts are kept for them (by seq: one encoder serves one bus). One that is further
    behind has its events encoded again (a few microseconds each) rather than the cache holding
    the history a second time.
    """

    def __init__(self, boot_id: str, size: int = 256) -> None:
        self.boot_id = boot_id
        self._texts: collections.OrderedDict[int, str] = collections.OrderedDict()
        self._size = size

    def __call__(self, envelope: Envelope) -> str:
        text = self._texts.get(envelope.seq)
        if text is None:
            text = json.dumps(event_document(envelope, self.boot_id))
            self._texts[envelope.seq] = text
            if len(self._texts) > self._size:
                self._texts.popitem(last=False)
        return text


def resync_document(
    *, seq: int, boot_id: str, time: float, status: StatusDocument
) -> dict[str, Any]:
    """Sent first when the resume point is gone (too old, or from another boot of dev8)."""
    return {
        "seq": seq,
        "bootId": boot_id,
        "time": timestamp(time),
        "kind": "resync",
        "source": "dev8",
        "data": to_jsonable(status),
    }


# ---------------------------------------------------------------------------------- to JSON


@functools.cache
def _wire_names(cls: type[Any]) -> tuple[tuple[str, str], ...] | None:
    """(attribute, JSON key) of a document class; None for anything else. Once per class."""
    if not attrs.has(cls):
        return None
    return tuple((field.name, camel(field.name)) for field in attrs.fields(cls))


def to_jsonable(value: Any) -> Any:
    """A document (or anything inside one) as plain JSON data with camelCase keys."""
    if value is None or isinstance(value, str | int | float):
        return value
    names = _wire_names(type(value))  # type: ignore[arg-type] # classes are hashable
    if names is not None:
        return {key: to_jsonable(getattr(value, name)) for name, key in names}
    if isinstance(value, dict):
        return {key: to_jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(item) for item in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


def to_json(document: Any) -> bytes:
    return json.dumps(to_jsonable(document)).encode()


# ----------------------------------------------------------------------------- JSON schemas

_SCALARS: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    Timestamp: {"type": "string", "format": "date-time"},
}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        return {"allOf": [schema], "nullable": True}
    return {**schema, "nullable": True}


class Schemas:
    """Collects the component schemas (``#/components/schemas/NAME``) as types are walked."""

    def __init__(self) -> None:
        self.components: dict[str, dict[str, Any]] = {}

    def ref(self, name: str) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{name}"}

    def of(self, tp: Any) -> dict[str, Any]:  # noqa: PLR0911 - one answer per kind of type
        """The schema of a type: a ``$ref`` for a document class."""
        if tp in _SCALARS:
            return dict(_SCALARS[tp])
        if attrs.has(tp):
            return self.document(tp)
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return {"type": "string", "enum": [member.value for member in tp]}
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            rest = [arg for arg in args if arg is not type(None)]
            if len(rest) == 1 and len(args) == 2:
                return _nullable(self.of(rest[0]))
            return {"anyOf": [self.of(arg) for arg in args]}
        if origin is Literal:
            return {"type": "string", "enum": list(args)}
        if origin in (list, Sequence, tuple):
            return {"type": "array", "items": self.of(args[0])}
        if origin in (dict, Mapping):
            return {"type": "object", "additionalProperties": self.of(args[1])}
        raise TypeError(f"no schema for {tp!r}")

    def document(self, cls: type[Any], *, name: str | None = None) -> dict[str, Any]:
        name = name or cls.__name__
        if name not in self.components:
            self.components[name] = {}  # a placeholder ends recursion (TreeNode)
            self.components[name] = self._object(cls, attrs.fields(cls))
        return self.ref(name)

    def _object(
        self, cls: type[Any], fields: Iterable[attrs.Attribute[Any]], overrides: Any = None
    ) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        properties: dict[str, Any] = {}
        for field in fields:
            tp = (overrides or {}).get(field.name, hints[field.name])
            prop = self.of(tp)
            if "description" in field.metadata:
                if "$ref" in prop:
                    prop = {"allOf": [prop]}
                prop = {**prop, "description": field.metadata["description"]}
            properties[camel(field.name)] = prop
        schema: dict[str, Any] = {
            "type": "object",
            "required": list(properties),
            "properties": properties,
            "additionalProperties": False,
        }
        if cls.__doc__:
            schema["description"] = " ".join(cls.__doc__.split())
        return schema

    def event(self, cls: type[Event]) -> dict[str, Any]:
        """The schema of a whole event of one kind (the envelope with its typed ``data``)."""
        data_name = f"{cls.__name__}Data"
        if data_name not in self.components:
            fields = [f for f in attrs.fields(cls) if f.name != "source"]
            hints = typing.get_type_hints(cls)
            overrides = {
                f.name: _EVENT_FIELD_TYPES[f.name]
                for f in fields
                if f.name in _EVENT_FIELD_TYPES and typing.get_origin(hints[f.name]) is Mapping
            }
            overrides.update(
                {f.name: list[str] for f in fields if typing.get_origin(hints[f.name]) is tuple}
            )
            self.components[data_name] = self._object(cls, fields, overrides)
        return self._envelope(cls.kind, self.ref(data_name), name=f"{cls.__name__}Event")

    def resync(self) -> dict[str, Any]:
        return self._envelope("resync", self.document(StatusDocument), name="ResyncEvent")

    def _envelope(self, kind: str, data: dict[str, Any], *, name: str) -> dict[str, Any]:
        self.components[name] = {
            "type": "object",
            "required": ["seq", "bootId", "time", "kind", "source", "data"],
            "properties": {
                "seq": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "never goes backwards on a connection; resume with since=",
                },
                "bootId": {"type": "string", "description": "new at every start of dev8"},
                "time": {"type": "string", "format": "date-time"},
                "kind": {"type": "string", "enum": [kind]},
                "source": {
                    "type": "string",
                    "description": "path of the actor it is about; dev8 for resync",
                },
                "data": data,
            },
            "additionalProperties": False,
        }
        return self.ref(name)
