"""The dashboard (`GET /`) in a real headless Chromium, driven by Selenium, on a real dev8.

Debian's chromium and chromium-driver, never a downloaded browser. Selenium is synchronous: its
calls run in a worker thread so that the harness keeps draining dev8's output meanwhile.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import trio
import yaml
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from support.dev8_harness import (
    Dev8Run,
    fail_after,
    open_dev8,
    pids_with_marker,
    shell_service,
    wait_until,
    write_config,
)
from support.net import free_port
from support.tree import walk

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
)
TOKEN = "dash-token-5b1e0c"
#: Two seconds in backoff after a crash: long enough to see the state from outside.
SLOW_BACKOFF = {"initial_delay": 2.0, "min_delay": 2.0, "max_delay": 2.0, "jitter": 0.0}

ROWS = """return Array.from(document.querySelectorAll('#services tr[data-service]'),
                      (row) => Object.assign({}, row.dataset));"""
LIVE = "return document.getElementById('live').dataset.state;"
MESSAGE = "return document.getElementById('message').textContent;"
EVENTS = """return Array.from(document.querySelectorAll('#events li'),
                      (item) => Object.assign({}, item.dataset));"""


class Page:
    """One browser tab; every Selenium call runs in a thread."""

    def __init__(self, driver: webdriver.Chrome) -> None:
        self.driver = driver

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(functools.partial(fn, *args))

    async def js(self, script: str) -> Any:
        return await self.call(self.driver.execute_script, script)

    async def rows(self) -> dict[str, dict[str, str]]:
        return {row["service"]: row for row in await self.js(ROWS)}

    async def wait(self, script: str, predicate: Callable[[Any], bool], what: str) -> Any:
        """Bounded poll of the page (the DOM has no change notification we can await here)."""
        with fail_after(20, f"the dashboard to show {what}"):
            while not predicate(value := await self.js(script)):  # noqa: ASYNC110 - a browser
                await trio.sleep(0.1)
        return value

    async def click(self, selector: str) -> None:
        def click() -> bool:
            try:
                self.driver.find_element(By.CSS_SELECTOR, selector).click()
            except StaleElementReferenceException:
                return False  # the rows were drawn again between finding and clicking
            return True

        with fail_after(20, f"a click on {selector}"):
            while not await self.call(click):  # noqa: ASYNC110 - a browser
                await trio.sleep(0.05)


def start_chromium(profile: Path) -> webdriver.Chrome:
    options = Options()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    # Both paths given: Selenium Manager has nothing to look up or download.
    service = Service(executable_path=CHROMEDRIVER, log_output=subprocess.DEVNULL)
    return webdriver.Chrome(options=options, service=service)


@contextlib.asynccontextmanager
async def open_page(url: str, profile: Path) -> AsyncIterator[Page]:
    """A headless Chromium on `url`; no browser process outlives the block."""
    driver = await trio.to_thread.run_sync(start_chromium, profile)
    try:
        page = Page(driver)
        await page.call(driver.get, url)
        yield page
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(driver.quit)
            await wait_until(
                lambda: not pids_with_marker(str(profile)), timeout=10, what="chromium to exit"
            )


def configure(path: Path, marker: str, port: int, *, token_file: Path | None = None) -> Path:
    services = {
        "web": shell_service("exec sleep 1000", marker, backoff=SLOW_BACKOFF),
        "other": shell_service("exec sleep 1000", marker),
    }
    write_config(path, services, port=port)
    if token_file is not None:
        data = yaml.safe_load(path.read_text())
        data["api"]["token_file"] = str(token_file)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


async def running_pids(dev8: Dev8Run) -> dict[str, int]:
    for name in ("web", "other"):
        await dev8.wait_service(name, lambda n: n["state"] == "running", what="running")
    return await dev8.service_pids()


async def test_dashboard_follows_a_crash_live_and_restarts_with_the_button(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    config = configure(tmp_path / "dev8.yaml", marker, api_port)
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        pids = await running_pids(dev8)
        async with open_page(f"http://127.0.0.1:{api_port}/", tmp_path / "profile") as page:
            rows = await page.wait(ROWS, lambda rows: len(rows) == 2, "both services")
            assert {(r["service"], r["state"], r["restarts"]) for r in rows} == {
                ("web", "running", "0"),
                ("other", "running", "0"),
            }
            await page.wait(LIVE, lambda state: state == "live", "the event stream connected")
            tree = await page.js(
                "return Array.from(document.querySelectorAll('#tree li'), (li) => li.dataset.path);"
            )
            # Every node of the supervision tree, in the tree's own order.
            assert tree == [node["path"] for node in walk((await dev8.status())["tree"])]
            assert "dev8/services/web" in tree

            # A crash: the page shows it as it happens, from the event stream.
            os.kill(pids["web"], signal.SIGKILL)
            await page.wait(
                ROWS,
                lambda rows: any(r["service"] == "web" and r["state"] == "backoff" for r in rows),
                "web in backoff",
            )
            rows = await page.wait(
                ROWS,
                lambda rows: any(
                    r["service"] == "web" and r["state"] == "running" and r["restarts"] == "1"
                    for r in rows
                ),
                "web running again",
            )
            web = next(r for r in rows if r["service"] == "web")
            assert web["pid"] == str((await dev8.service_pids())["web"]) != str(pids["web"])
            events = await page.js(EVENTS)
            assert {"kind": "child_exited", "source": "dev8/services/web"} in [
                {"kind": e["kind"], "source": e["source"]} for e in events
            ]
            assert await page.js(LIVE) == "live"  # never reconnected: it was the stream

            # The restart button: a real POST; the count goes up in /status and on the page.
            await page.click('button.restart[data-service="other"]')
            node = await dev8.wait_service(
                "other",
                lambda n: n["restarts"] == 1 and n["state"] == "running",
                what="restarted by the button",
            )
            assert node["info"]["pid"] != pids["other"]
            await page.wait(
                ROWS,
                lambda rows: any(
                    r["service"] == "other" and r["restarts"] == "1" and r["state"] == "running"
                    for r in rows
                ),
                "other restarted",
            )
            assert await page.js(MESSAGE) == "other: running (restarts: 1)"


async def test_the_dashboard_asks_for_the_token_and_sends_it(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    config = configure(tmp_path / "dev8.yaml", marker, api_port, token_file=token_file)
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        await running_pids(dev8)
        async with open_page(f"http://127.0.0.1:{api_port}/", tmp_path / "profile") as page:
            # Every read needs the token: the page shows nothing and asks for it.
            needed = "return document.getElementById('token').dataset.needed || '';"
            await page.wait(needed, lambda value: value == "true", "the token asked for")
            message = await page.wait(MESSAGE, lambda text: "unauthorized" in text, "a refusal")
            assert "missing or wrong bearer token" in message
            assert await page.rows() == {}
            await page.wait(LIVE, lambda state: state == "offline", "the stream refused")

            def enter_token() -> None:
                field = page.driver.find_element(By.ID, "token")
                field.clear()
                field.send_keys(TOKEN)
                page.driver.find_element(By.ID, "save-token").click()

            await page.call(enter_token)
            assert await page.js("return sessionStorage.getItem('dev8.token');") == TOKEN
            await page.wait(ROWS, lambda rows: len(rows) == 2, "both services")
            await page.wait(LIVE, lambda state: state == "live", "the event stream connected")
            await page.click('button.restart[data-service="web"]')
            await dev8.wait_service("web", lambda n: n["restarts"] == 1, what="restarted")
            await page.wait(MESSAGE, lambda text: text == "web: running (restarts: 1)", "success")


ATTACK_PAGE = """<!doctype html><html><body><script>
(async () => {
  const api = "http://127.0.0.1:%(port)d";
  const results = {};
  // A simple request (no preflight): a form-like POST a page of any origin may send.
  for (const [name, options] of Object.entries({
    text: { method: "POST", mode: "no-cors", body: "{}",
            headers: { "Content-Type": "text/plain" } },
    empty: { method: "POST", mode: "no-cors" },
    json: { method: "POST", body: "{}", headers: { "Content-Type": "application/json" } },
  })) {
    try { await fetch(api + "/services/web/restart", options); results[name] = "sent"; }
    catch (error) { results[name] = "error"; }
  }
  // The event stream: opened or refused?
  results.ws = await new Promise((resolve) => {
    const ws = new WebSocket("ws://127.0.0.1:%(port)d/events");
    ws.onmessage = () => resolve("message");
    ws.onopen = () => setTimeout(() => resolve("open"), 300);
    ws.onerror = () => resolve("refused");
  });
  document.body.dataset.done = JSON.stringify(results);
})();
</script></body></html>
"""


async def serve_page(html: str, *, task_status: trio.TaskStatus[int]) -> None:
    """A second origin: one static page on another loopback port (http.server in a thread)."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    try:
        task_status.started(server.server_address[1])
        await trio.to_thread.run_sync(server.serve_forever, abandon_on_cancel=True)
    finally:
        server.shutdown()
        server.server_close()


async def test_a_page_of_another_origin_cannot_drive_the_api(
    tmp_path: Path, api_port: int, marker: str, nursery: trio.Nursery
) -> None:
    """No token (loopback): a page on another origin may neither restart a service nor read
    the event stream; the dashboard on the API's own origin still can."""
    config = configure(tmp_path / "dev8.yaml", marker, api_port)
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        await running_pids(dev8)
        page_port = await nursery.start(serve_page, ATTACK_PAGE % {"port": api_port})
        # "localhost" and "127.0.0.1" are different origins, on another port too.
        async with open_page(f"http://localhost:{page_port}/", tmp_path / "profile") as page:
            done = "return document.body.dataset.done || '';"
            results = json.loads(await page.wait(done, bool, "the attack page to finish"))
        assert results["ws"] == "refused", results
        assert (await dev8.service("web"))["restarts"] == 0, results
        assert not dev8.messages("child_stopping")
        refused = [line for line in dev8.lines if "cross_site" in line]
        assert refused == [], "refusals are answers, not log lines"
        nursery.cancel_scope.cancel()


SPARKS = """return Array.from(document.querySelectorAll('#services tr[data-service]'), (row) => ({
  service: row.dataset.service,
  cpu: row.querySelector('td.cpu svg.spark').dataset.points,
  memory: row.querySelector('td.memory svg.spark').dataset.points,
  memoryPoints: row.querySelector('td.memory polyline').getAttribute('points').split(' ').length,
  memoryText: row.querySelector('td.memory').textContent,
}));"""
CONTAINER = """const box = document.getElementById('container');
return {memory: box.dataset.memory, limit: box.dataset.limit,
        text: document.getElementById('container-memory-text').textContent,
        meterHidden: document.getElementById('container-memory').hidden,
        oom: document.getElementById('container-oom').textContent};"""


async def test_dashboard_draws_cpu_and_memory_sparklines_and_the_container(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    config = configure(tmp_path / "dev8.yaml", marker, api_port)
    data = yaml.safe_load(config.read_text())
    data["resources"] = {"interval": 0.3}
    data["services"]["web"]["limits"] = {"memory": "64M"}
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        await running_pids(dev8)
        async with open_page(f"http://127.0.0.1:{api_port}/", tmp_path / "profile") as page:
            # The page polls /status at the sampler's interval: the lines grow sample by sample.
            sparks = await page.wait(
                SPARKS,
                lambda rows: len(rows) == 2 and all(int(r["memory"]) >= 3 for r in rows),
                "three samples in each service's memory sparkline",
            )
            for row in sparks:
                assert int(row["cpu"]) >= 2  # CPU needs two samples for its first figure
                assert row["memoryPoints"] == int(row["memory"])
            web = next(r for r in sparks if r["service"] == "web")
            assert web["memoryText"].endswith(" / 64.0 MiB")
            other = next(r for r in sparks if r["service"] == "other")
            assert "/" not in other["memoryText"]  # no limit, none shown
            container = await page.js(CONTAINER)
            status = await dev8.status()
            figures = status["resources"]["container"]
            assert int(container["memory"]) > 0
            assert container["oom"] == str(figures["oomKills"])
            if figures["memoryLimitBytes"] is None:  # this machine's cgroup: unlimited
                assert container["limit"] == ""
                assert container["meterHidden"]
                assert container["text"].endswith("(no limit)")
            else:
                assert int(container["limit"]) == figures["memoryLimitBytes"]
                assert not container["meterHidden"]
                assert " of " in container["text"]


TIMELINE = """return Array.from(document.querySelectorAll('#timeline li'), (item) => ({
  ...item.dataset, text: item.textContent}));"""
ALERTS = """return Array.from(document.querySelectorAll('#alerts li'), (item) => ({
  ...item.dataset, text: item.textContent,
  summary: item.querySelector('.summary').textContent,
  elements: item.querySelectorAll('*').length}));"""
#: Restarts at once, three at most: then the service is fatal (ServiceRestartLimitExceeded).
CRASH_FAST = {"initial_delay": 0.05, "min_delay": 0.05, "max_delay": 0.05, "jitter": 0.0}


async def test_dashboard_shows_the_restart_timeline_and_the_active_alerts(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    """Alerts fired before the page opened are replayed from the bus's history; a live restart
    fires ServiceRestarted, which resolves (`alerts.resolve_after`) and leaves the page."""
    config = configure(tmp_path / "dev8.yaml", marker, api_port)
    data = yaml.safe_load(config.read_text())
    data["services"]["crashy"] = shell_service(
        "echo '<img src=x onerror=alert(1)>' >&2; exit 3",
        marker,
        backoff=CRASH_FAST,
        intensity={"max_restarts": 3, "window": 60},
    )
    data["alerts"] = {"resolve_after": 1.0}
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        pids = await running_pids(dev8)
        await dev8.wait_service("crashy", lambda n: n["state"] == "fatal", what="crashy fatal")

        def crashy_alert(message: str, alert: str) -> Callable[[dict[str, Any]], bool]:
            return lambda e: (
                e.get("message") == message
                and e.get("alert") == alert
                and e.get("service") == "crashy"
            )

        await dev8.wait_log(
            crashy_alert("alert_fired", "ServiceRestartLimitExceeded"), what="the limit alert"
        )
        # Its restarts' alert fired and resolved before the page opened: the page must not show it.
        await dev8.wait_log(
            crashy_alert("alert_resolved", "ServiceRestarted"), what="the restart alert resolved"
        )
        async with open_page(f"http://127.0.0.1:{api_port}/", tmp_path / "profile") as page:
            await page.wait(LIVE, lambda state: state == "live", "the event stream connected")
            alerts = await page.wait(
                ALERTS,
                lambda items: any(a["alert"] == "ServiceRestartLimitExceeded" for a in items),
                "the restart-limit alert, replayed",
            )
            assert [(a["alert"], a["severity"], a["service"]) for a in alerts] == [
                ("ServiceRestartLimitExceeded", "critical", "crashy")
            ]
            assert alerts[0]["summary"] == "crashy gave up after 3 restarts within 60.0 s"

            # The timeline: crashy's three restarts, each exit, and its giving up; newest first.
            timeline = await page.wait(
                TIMELINE,
                lambda items: any(i["kind"] == "child_gave_up" for i in items),
                "crashy's restarts",
            )
            crashy = [i for i in timeline if i["service"] == "crashy"]
            assert [int(i["seq"]) for i in timeline] == sorted(
                (int(i["seq"]) for i in timeline), reverse=True
            )
            assert crashy[0]["kind"] == "child_gave_up"
            assert "gave up after 3 restarts" in crashy[0]["text"]
            scheduled = [i for i in crashy if i["kind"] == "restart_scheduled"]
            logged = dev8.messages("restart_scheduled", child="crashy")
            assert len(scheduled) == len(logged) == 3
            assert [i["reason"] for i in scheduled] == [e["reason"] for e in reversed(logged)]
            assert [i["text"].split(" in ")[0].split()[-1] for i in scheduled] == ["#3", "#2", "#1"]
            exits = [i for i in crashy if i["kind"] == "child_exited"]
            assert len(exits) == 4  # the first run and three restarts
            assert all("(exit 3)" in i["text"] for i in exits), exits

            # A live restart: ServiceRestarted fires for web, shows, then resolves and goes.
            os.kill(pids["web"], signal.SIGKILL)
            alerts = await page.wait(
                ALERTS,
                lambda items: any(
                    a["alert"] == "ServiceRestarted" and a["service"] == "web" for a in items
                ),
                "web's restart alert",
            )
            web = next(a for a in alerts if a["alert"] == "ServiceRestarted")
            assert web["severity"] == "warning"
            assert web["summary"] == "web was restarted"
            # Critical first.
            assert [a["alert"] for a in alerts] == [
                "ServiceRestartLimitExceeded",
                "ServiceRestarted",
            ]
            timeline = await page.js(TIMELINE)
            newest_web = next(i for i in timeline if i["service"] == "web")
            assert newest_web["kind"] in {"restart_scheduled", "child_exited"}
            assert any(
                i["service"] == "web" and i["kind"] == "child_exited" and "signal" in i["text"]
                for i in timeline
            )
            await dev8.wait_log(
                lambda e: e.get("message") == "alert_resolved" and e.get("service") == "web",
                what="web's restart alert resolved",
            )
            alerts = await page.wait(
                ALERTS,
                lambda items: not any(a["service"] == "web" for a in items),
                "web's restart alert gone",
            )
            assert [a["alert"] for a in alerts] == ["ServiceRestartLimitExceeded"]
            # Text only: nothing in an alert or the timeline became markup.
            assert all(a["elements"] <= 6 for a in alerts)
            assert await page.js("return document.querySelectorAll('img').length;") == 0


#: A port that answers every connection with markup instead of an SSH banner.
HOSTILE_BANNER = b"SSH-1.5-<img src=x onerror=window.pwned=1>"
HOSTILE_SERVER = f"""
import socket, sys
server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
while True:
    client, _ = server.accept()
    client.sendall({HOSTILE_BANNER!r} + b"\\r\\n")
    client.close()
"""


async def test_the_dashboard_shows_an_untrusted_alert_summary_as_text(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    """A service's answer reaches an alert's summary (the probe's detail): it stays text."""
    config = configure(tmp_path / "dev8.yaml", marker, api_port)
    data = yaml.safe_load(config.read_text())
    port = free_port()
    data["services"]["hostile"] = {
        "command": ["python3", "-c", HOSTILE_SERVER, str(port), marker],
        "probes": {
            # Started once it listens: every liveness check then reads the hostile line.
            "readiness": {"type": "tcp", "port": port},
            "liveness": {
                "type": "ssh-banner",
                "port": port,
                "interval": 0.1,
                "failure_threshold": 1000,
            },
        },
    }
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        await running_pids(dev8)
        async with open_page(f"http://127.0.0.1:{api_port}/", tmp_path / "profile") as page:
            alerts = await page.wait(
                ALERTS,
                lambda items: any(a["alert"] == "HealthCheckFailing" for a in items),
                "the failing-probe alert",
            )
            failing = next(a for a in alerts if a["alert"] == "HealthCheckFailing")
            assert failing["service"] == "hostile"
            assert "<img src=x onerror=window.pwned=1>" in failing["summary"]
            assert "probe=liveness" in failing["text"]
            assert failing["elements"] <= 6
            assert await page.js("return document.querySelectorAll('img').length;") == 0
            assert await page.js("return window.pwned === undefined;") is True
