"""Alerts pushed as webhooks: a real HTTP receiver on loopback, and the real dev8 around it."""

from __future__ import annotations

import itertools
import json
import os
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
import yaml
from support.dev8_harness import open_dev8, python_service, run_cli, wait_until, write_config
from support.net import free_port
from support.webhook_receiver import HANG, serve, verify

from actors import EventBus
from dev8.config import WebhookConfig, config_to_dict, parse_config
from dev8.monitoring.alerts import AlertFired, AlertResolved
from dev8.monitoring.webhooks import WebhookKeyError, WebhookNotifier, read_webhook_key

KEY = b"k3y-for-the-tests-0123456789abcdef"


def _fired(name: str = "ServiceRestarted", service: str | None = "web") -> AlertFired:
    return AlertFired(
        source="dev8/alerts", alert=name, severity="warning", service=service,
        summary=f"{service} was restarted", labels={"scope": "service"},
    )  # fmt: skip


async def _notifier(
    nursery: trio.Nursery, bus: EventBus, key: bytes | None = KEY, **options: Any
) -> WebhookNotifier:
    notifier = WebhookNotifier(
        [WebhookConfig(**options)], [key], environment_id="env-42"
    )  # fmt: skip
    await nursery.start(lambda task_status: notifier.run(bus, task_status=task_status))
    return notifier


async def _wait(condition: Any, what: str, timeout: float = 20.0) -> None:
    await wait_until(condition, timeout=timeout, what=what, interval=0.01)


async def test_the_body_is_signed_json_with_every_documented_key() -> None:
    bus = EventBus()
    with serve() as receiver:
        async with trio.open_nursery() as nursery:
            notifier = await _notifier(nursery, bus, url=receiver.url)
            firing = bus.publish(_fired())
            bus.publish(AlertResolved(
                source="dev8/alerts", alert="WorkspaceIdle", severity="warning", service=None,
                summary="nobody connected", labels={},
            ))  # fmt: skip
            await _wait(lambda: notifier.stats.deliveries["delivered"] == 2, "two deliveries")
            nursery.cancel_scope.cancel()
    (headers, body), (_, second) = receiver.requests
    assert verify(KEY, headers, body)
    assert not verify(b"another key", headers, body)
    assert not verify(KEY, headers, body + b" ")  # the signature covers the exact bytes
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {
        "alert": "ServiceRestarted",
        "status": "firing",
        "severity": "warning",
        "service": "web",
        "summary": "web was restarted",
        "labels": {"scope": "service"},
        "time": firing.to_dict()["time"].replace("+00:00", "Z"),
        "bootId": bus.boot_id,
        "environmentId": "env-42",
    }
    assert json.loads(second)["status"] == "resolved"
    assert json.loads(second)["service"] is None
    assert notifier.stats.retries == notifier.stats.dropped == 0


async def test_no_key_no_signature() -> None:
    bus = EventBus()
    with serve() as receiver:
        async with trio.open_nursery() as nursery:
            notifier = await _notifier(nursery, bus, key=None, url=receiver.url)
            bus.publish(_fired())
            await _wait(lambda: notifier.stats.deliveries["delivered"] == 1, "a delivery")
            nursery.cancel_scope.cancel()
    assert "X-Dev8-Signature" not in receiver.requests[0][0]


async def test_a_500_is_tried_again_with_the_same_signed_body() -> None:
    bus = EventBus()
    with serve(plan=[500, 503]) as receiver:
        async with trio.open_nursery() as nursery:
            notifier = await _notifier(
                nursery, bus, url=receiver.url, retry_initial_delay=0.05, retry_max_delay=0.1
            )
            bus.publish(_fired())
            await _wait(lambda: notifier.stats.deliveries["delivered"] == 1, "a delivery")
            nursery.cancel_scope.cancel()
    assert receiver.count() == 3
    assert notifier.stats.retries == 2
    assert len({body for _, body in receiver.requests}) == 1
    assert all(verify(KEY, headers, body) for headers, body in receiver.requests)


async def test_a_refused_connection_is_tried_again_until_the_receiver_is_up() -> None:
    bus = EventBus()
    port = free_port()  # nothing listens there yet: connections are refused
    url = f"http://127.0.0.1:{port}/hook"
    async with trio.open_nursery() as nursery:
        notifier = await _notifier(
            nursery, bus, url=url, retry_initial_delay=0.2, retry_max_delay=0.2, max_attempts=100
        )
        bus.publish(_fired())
        await _wait(lambda: notifier.stats.retries >= 1, "a retry after a refused connection")
        assert notifier.stats.deliveries["delivered"] == 0
        with serve(port=port) as receiver:
            await _wait(lambda: notifier.stats.deliveries["delivered"] == 1, "the delivery")
        nursery.cancel_scope.cancel()
    assert receiver.count() == 1
    assert verify(KEY, *receiver.requests[0])


async def test_a_hanging_receiver_costs_only_its_own_bounded_queue() -> None:
    bus = EventBus()
    with serve(default=HANG) as receiver:
        async with trio.open_nursery() as nursery:
            notifier = await _notifier(
                nursery, bus, url=receiver.url, timeout=2.0, max_attempts=1, queue=2
            )
            bus.publish(_fired("first"))
            await _wait(lambda: receiver.count() == 1, "the first request")
            for index in range(10):
                bus.publish(_fired(f"alert{index}"))
            await trio.testing.wait_all_tasks_blocked()
            # The queue kept 2, dropped 8 and counted them.
            assert (notifier.stats.dropped, notifier.stats.queued) == (8, 2)
            await _wait(lambda: notifier.stats.deliveries["failed"] == 3, "three timeouts")
            nursery.cancel_scope.cancel()
    assert [body["alert"] for body in receiver.bodies()] == ["first", "alert0", "alert1"]


async def test_backoff_doubles_up_to_its_cap_on_the_mock_clock(
    autojump_clock: trio.abc.Clock,
) -> None:
    tried: list[float] = []
    answers = iter([503, 502, 500, 429, 500, 500, 500, 200, 400])

    async def handler(request: httpx.Request) -> httpx.Response:
        tried.append(trio.current_time())
        return httpx.Response(next(answers))

    notifier = WebhookNotifier(
        [WebhookConfig("http://receiver.test/", max_attempts=6, retry_initial_delay=1.0,
                       retry_max_delay=5.0)],
        [KEY],
        environment_id=None,
    )  # fmt: skip
    (receiver,) = notifier.receivers
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        assert await receiver.deliver(client, b"{}") == "failed"  # six tries, all failed
        waits = [round(b - a, 6) for a, b in itertools.pairwise(tried)]
        assert waits == [1.0, 2.0, 4.0, 5.0, 5.0]
        tried.clear()
        assert await receiver.deliver(client, b"{}") == "delivered"  # 500, then 200
        assert await receiver.deliver(client, b"{}") == "rejected"  # a 400: not tried again
    assert len(tried) == 3
    assert notifier.stats.retries == 6


# ------------------------------------------------------------------------------ key files


def test_key_files_must_be_plain_files_of_dev8s_user_that_nobody_else_can_write(
    tmp_path: Path,
) -> None:
    good = tmp_path / "key"
    good.write_bytes(b"  " + KEY + b"\n")
    good.chmod(0o600)
    assert read_webhook_key(str(good)) == KEY
    link = tmp_path / "link"
    link.symlink_to(good)
    writable = tmp_path / "writable"
    writable.write_bytes(KEY)
    writable.chmod(0o620)
    empty = tmp_path / "empty"
    empty.write_bytes(b"\n")
    big = tmp_path / "big"
    big.write_bytes(b"k" * 5000)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    problems = {
        link: "Too many levels of symbolic links",
        writable: "writable by its group or others",
        empty: "is empty",
        big: "larger than 4096 bytes",
        fifo: "not a regular file",
        tmp_path / "absent": "No such file or directory",
    }
    for path, problem in problems.items():
        with pytest.raises(WebhookKeyError, match=problem) as caught:
            read_webhook_key(str(path))
        assert KEY.decode() not in str(caught.value)


@pytest.mark.parametrize(
    ("section", "where", "expected"),
    [
        ({"alerts": {"webhooks": [{"url": "ftp://host/x"}]}}, "alerts.webhooks[0].url",
         "expected an http:// or https:// URL with a host"),
        ({"alerts": {"webhooks": [{"url": "http://h/", "queue": 0}]}}, "alerts.webhooks[0].queue",
         "expected an integer >= 1"),
        ({"alerts": {"webhooks": "http://h/"}}, "alerts.webhooks",
         "expected a list of webhooks"),
        ({"idle": {"after": -5}}, "idle.after", "expected a number > 0"),
        ({"idle": {"after": "soon"}}, "idle.after", "expected a number"),
        ({"alerts": {"webhooks": [{"url": "http://h/", "secret_file": "absent-key"}]}},
         "alerts.webhooks[0].secret_file", "cannot read"),
    ],
)  # fmt: skip
async def test_bad_alert_and_idle_settings_are_config_errors(  # noqa: PLR0917 - parametrized
    tmp_path: Path, api_port: int, marker: str, section: dict[str, Any], where: str, expected: str
) -> None:
    config = write_config(
        tmp_path / "dev8.yaml", {"one": python_service("pass", marker)}, port=api_port
    )
    data = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**data, **section}))
    result = await run_cli("run", "--config", str(config))
    assert result.returncode == 2
    (line,) = result.stderr.decode().splitlines()
    assert line.startswith(f"dev8: config error in {config}: {where}: "), line
    assert expected in line
    assert "do-not-log" not in line


def test_config_show_hides_the_webhook_urls_path_and_query() -> None:
    config = parse_config(
        "alerts:\n  webhooks:\n    - url: https://hooks.example.com:8443/T0/B1/s3cr3t?x=1\n",
        "test.yaml",
        environ={},
    )
    assert config.alerts.webhooks[0].url.endswith("s3cr3t?x=1")  # dev8 itself uses all of it
    shown = config_to_dict(config)["alerts"]["webhooks"][0]["url"]
    assert shown == "https://hooks.example.com:8443/***"
    assert config_to_dict(config, redact=False)["alerts"]["webhooks"][0]["url"].endswith("x=1")


# ------------------------------------------------------------------------- the real dev8

LISTENER = """
import socket
server = socket.create_server(("127.0.0.1", {port}))
peers = []
while True:
    peer, _ = server.accept()
    peers.append(peer)
"""


def _with_alerts(config: Path, section: dict[str, Any]) -> None:
    data = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**data, **section}))


async def test_a_hanging_receiver_changes_nothing_in_the_tree(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    key = tmp_path / "webhook.key"
    key.write_bytes(KEY)
    key.chmod(0o600)
    with serve(default=HANG) as receiver:
        config = write_config(
            tmp_path / "dev8.yaml",
            {
                "steady": python_service("import time; time.sleep(1000)", marker),
                # Exits at once, again and again: an alert (and its resolution) per restart.
                "flaky": python_service(
                    "pass", marker, backoff={"min_delay": 0.2, "max_delay": 0.2, "jitter": 0}
                ),
            },
            port=api_port,
        )
        _with_alerts(config, {
            "alerts": {
                "resolve_after": 0.05,
                "webhooks": [{"url": receiver.url, "secret_file": str(key), "timeout": 30,
                              "queue": 3}],
            },
            "idle": {"after": None},
        })  # fmt: skip
        async with open_dev8(config, port=api_port, marker=marker) as dev8:
            node = await dev8.wait_service(
                "steady", lambda node: node["info"]["pid"] is not None, what="running"
            )
            steady = node["info"]["pid"]

            def dropped() -> float:
                return _metric(metrics_text[0], "dev8_webhook_dropped_total")

            metrics_text = [""]
            with trio.fail_after(30):
                while True:
                    response = await dev8.http.get("/metrics")
                    metrics_text[0] = response.text
                    if dropped() >= 5:
                        break
                    await trio.sleep(0.1)
            # The tree went on: the same steady process, the API answering, flaky restarting.
            assert (await dev8.http.get("/livez")).status_code == 200
            health = await dev8.http.get("/health")  # 503 whenever flaky is between runs
            assert health.json()["services"]["steady"] == "running"
            assert (await dev8.service_pids())["steady"] == steady
            assert _metric(metrics_text[0], "dev8_webhook_queued") == 3
            restarts = len(dev8.messages("child_started", child="flaky"))
            await dev8.wait_log(
                lambda e: (
                    e.get("message") == "child_started"
                    and e.get("child") == "flaky"
                    and e.get("restarts", 0) > restarts
                ),
                what="another restart of flaky",
            )
            assert receiver.count() == 1  # the one it is still waiting for
            # The receiver's URL carries a token: logs name scheme, host and port only.
            assert "do-not-log-me" not in "\n".join(dev8.lines)
            assert KEY.decode() not in "\n".join(dev8.lines)


def _metric(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no {name} {labels} in the scrape")


async def test_idle_active_idle_reaches_the_webhook(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    port = free_port()
    with serve() as receiver:
        config = write_config(
            tmp_path / "dev8.yaml",
            {"web": {**python_service(LISTENER.format(port=port), marker), "ports": [port]}},
            port=api_port,
        )
        _with_alerts(config, {
            "alerts": {"webhooks": [{"url": receiver.url}]},
            "idle": {"after": 1.0},
            "connections": {"interval": 0.1},
        })  # fmt: skip

        def idle_bodies() -> list[str]:
            return [b["status"] for b in receiver.bodies() if b["alert"] == "WorkspaceIdle"]

        async with open_dev8(config, port=api_port, marker=marker) as dev8:
            await _wait(lambda: idle_bodies() == ["firing"], "WorkspaceIdle firing")
            with socket.create_connection(("127.0.0.1", port)):
                await _wait(lambda: idle_bodies() == ["firing", "resolved"], "it resolved")
            await _wait(lambda: idle_bodies() == ["firing", "resolved", "firing"], "idle again")
            # An event-stream client on the API counts as someone connected too.
            async with dev8.events():
                await _wait(lambda: len(idle_bodies()) == 4, "resolved by an API client")
            await _wait(lambda: len(idle_bodies()) == 5, "idle once the client left")
            assert idle_bodies() == ["firing", "resolved", "firing", "resolved", "firing"]
            # The log lines come through dev8's stdout, which may trail the webhook a little.
            await _wait(lambda: len(dev8.messages("workspace_idle")) == 3, "the third idle line")
            active = dev8.messages("workspace_active")
            assert [entry.get("by") for entry in active] == ["web", "api"]
    first = next(b for b in receiver.bodies() if b["alert"] == "WorkspaceIdle")
    assert first["environmentId"] == "e2e-env"
    assert first["service"] is None
