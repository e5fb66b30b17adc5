"""Health probes: one bounded check of a service, and the wait for a starting service to be ready.

A probe never raises for an unhealthy service and never outlives its timeout: it returns a
``ProbeResult`` whose ``detail`` is safe to show (no URL, which may carry credentials). The
checks are Kubernetes' (process, HTTP status, TCP connect) plus the SSH identification line.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from dev8.config import ProbeConfig, ProbeType
from dev8.services.sshd import SshBannerError, read_ssh_banner

__all__ = [
    "ProbeResult",
    "process_state",
    "run_probe",
    "start_when_ready",
    "wait_ready",
]

#: What a failing check may raise; anything else is a bug and is not hidden as "unhealthy".
#: httpx's errors join on the first HTTP probe: it is imported then, not at dev8's start-up.
_CHECK_FAILURES: tuple[type[BaseException], ...] = (
    OSError,
    SshBannerError,
    trio.BrokenResourceError,
)
_GONE_STATES = ("Z", "X", "x")


@attrs.frozen(kw_only=True)
class ProbeResult:
    """One check: whether it passed, how long it took (seconds), and a line for humans."""

    ok: bool
    latency: float
    detail: str


def process_state(pid: int) -> str | None:
    """The state letter of ``pid`` (R, S, Z, ...) from /proc, or None when there is no such pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the state follows the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    return fields[0].decode() if fields else None


@functools.cache
def _unverified_tls() -> ssl.SSLContext:
    """Like Kubernetes, an HTTPS probe asks "does it answer?", not "who is it?"."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _check_process(probe: ProbeConfig, pid: int | None) -> tuple[bool, str]:
    await trio.lowlevel.checkpoint()
    if pid is None:
        return False, "no process"
    state = process_state(pid)
    if state is None:
        return False, f"process {pid} is gone"
    if state in _GONE_STATES:
        return False, f"process {pid} is a zombie"
    return True, f"process {pid} is alive ({state})"


def _httpx() -> Any:
    global _CHECK_FAILURES  # noqa: PLW0603 - widened once, on first use
    import httpx  # noqa: PLC0415 - lazy: see _CHECK_FAILURES

    if httpx.HTTPError not in _CHECK_FAILURES:
        _CHECK_FAILURES = (*_CHECK_FAILURES, httpx.HTTPError, httpx.InvalidURL)
    return httpx


async def _check_http(probe: ProbeConfig, pid: int | None) -> tuple[bool, str]:
    assert probe.url is not None  # the config requires it for this type
    httpx = _httpx()
    async with httpx.AsyncClient(
        verify=_unverified_tls(),
        trust_env=False,  # a proxy from the environment must not stand in for the service
        follow_redirects=False,
        # No connection is kept: an idle probe connection would count as user activity.
        limits=httpx.Limits(max_keepalive_connections=0),
        timeout=probe.timeout + 1.0,  # a backstop: the probe's own deadline comes first
    ) as client:
        request = client.build_request(
            "GET", probe.url, headers={"User-Agent": "dev8-probe", "Connection": "close"}
        )
        # The status is the answer: the body (maybe a stream) is not read.
        response = await client.send(request, stream=True)
        await response.aclose()
    status = response.status_code
    if status == probe.expect_status:
        return True, f"HTTP {status}"
    return False, f"HTTP {status} (expected {probe.expect_status})"


async def _check_tcp(probe: ProbeConfig, pid: int | None) -> tuple[bool, str]:
    assert probe.port is not None
    stream = await trio.open_tcp_stream(probe.host, probe.port)
    await stream.aclose()
    return True, f"connected to {probe.host}:{probe.port}"


async def _check_ssh_banner(probe: ProbeConfig, pid: int | None) -> tuple[bool, str]:
    assert probe.port is not None
    banner = await read_ssh_banner(probe.host, probe.port, probe.timeout)
    return True, banner[:120]


_CHECKS: dict[ProbeType, Callable[[ProbeConfig, int | None], Awaitable[tuple[bool, str]]]] = {
    ProbeType.PROCESS: _check_process,
    ProbeType.HTTP: _check_http,
    ProbeType.TCP: _check_tcp,
    ProbeType.SSH_BANNER: _check_ssh_banner,
}


def _describe(error: BaseException, probe: ProbeConfig) -> str:
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    if probe.url:
        text = text.replace(probe.url, "<url>")
    return text[:300]


async def run_probe(probe: ProbeConfig, *, pid: int | None) -> ProbeResult:
    """Run one check of ``probe``, bounded by its timeout. ``pid`` is for ``process`` probes."""
    started = trio.current_time()
    ok, detail = False, f"timed out after {probe.timeout:g} s"
    with trio.move_on_after(probe.timeout):
        try:
            ok, detail = await _CHECKS[probe.type](probe, pid)
        except _CHECK_FAILURES as error:
            ok, detail = False, _describe(error, probe)
    return ProbeResult(ok=ok, latency=trio.current_time() - started, detail=detail)


async def wait_ready(
    probe: ProbeConfig,
    *,
    pid_getter: Callable[[], int | None],
    first_poll: float = 0.05,
    max_poll: float = 1.0,
) -> ProbeResult:
    """Return the passing result once ``probe`` passes ``success_threshold`` times in a row.

    Starting is when speed matters: it polls every ``first_poll`` seconds, doubling up to
    ``max_poll`` (never slower than the probe's interval). It has no deadline of its own: the
    caller's (the supervisor's ``start_timeout``) turns "never ready" into a failed start.
    """
    await trio.sleep(probe.initial_delay)
    ceiling = min(probe.interval, max_poll)
    delay = min(first_poll, ceiling)
    passed = 0
    while True:
        result = await run_probe(probe, pid=pid_getter())
        passed = passed + 1 if result.ok else 0
        if passed >= probe.success_threshold:
            return result
        await trio.sleep(delay)
        delay = min(delay * 2, ceiling)


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception a nursery wrapped, so the supervisor sees it (and its details)."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


async def start_when_ready(
    run: Callable[..., Awaitable[object]],
    probe: ProbeConfig | None,
    *,
    pid_getter: Callable[[], int | None],
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``run(task_status=...)`` (a process actor) but report started only once ready.

    Whatever ``run`` reports started with is passed on. If it ends before the service is
    ready, its own exception (not a group) reaches the supervisor.
    """
    if probe is None:
        await run(task_status=task_status)
        return
    try:
        async with trio.open_nursery() as nursery:
            value = await nursery.start(run)
            await wait_ready(probe, pid_getter=pid_getter)
            task_status.started(value)
    except BaseExceptionGroup as group:
        raise _sole(group) from None
