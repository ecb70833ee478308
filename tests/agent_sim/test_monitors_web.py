"""The monitors view (#/monitors, static/monitors.js) in real headless Chromium: states,
the chart's threshold lines and group lines, the state strip, the events, and
"Evaluate now"."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from tests.agent_sim.test_monitors_api import call
from tests.receiver import RunningReceiver
from tests.utils import REPO, real_part

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def test_monitors_page() -> None:
    executable = real_part("CHROMIUM", ["chromium"], "headless Chromium")
    from playwright.sync_api import sync_playwright

    with RunningReceiver() as r:
        now = int(time.time()) // 10 * 10
        status, m = call(r.url, "POST", "/api/monitors", {
            "name": "Latency", "query": "avg(last_1m):avg:lat{*} by {host} > 800", "message": "{{host.name}} slow",
            "options": {"thresholds": {"warning": 500, "critical_recovery": 700}}})
        assert status == 200
        for minute, (a, b) in enumerate([(100, 100), (600, 100), (900, 100)]):
            t = now - 180 + 60 * minute
            r.server.statsd.ingest(f"lat:{a}|g|#host:a\nlat:{b}|g|#host:b".encode(), t - 5)
            call(r.url, "POST", "/api/monitors/evaluate", {"now": t})
        problems: list[str] = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
            try:
                page: Any = browser.new_page(viewport={"width": 1200, "height": 900})
                page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
                page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
                page.goto(r.url + "/")
                page.click("[data-testid=nav-monitors]")
                page.wait_for_selector("body[data-state=ready][data-view=monitors]")
                assert page.locator("[data-testid=monitor] h2").inner_text() == "Alert Latency"
                assert page.locator("[data-testid=monitor-groups]").inner_text() == "host:a Alert · host:b OK"
                lines = page.locator("[data-testid=threshold-line]")
                assert sorted(lines.evaluate_all("ls => ls.map(l => l.dataset.threshold)")) == [
                    "critical", "critical_recovery", "warning"]
                assert page.locator("[data-testid=group-line]").count() == 2
                cells = page.locator("[data-testid=state-cell]").evaluate_all("cs => cs.map(c => c.dataset.state)")
                assert cells == ["OK", "Warn", "Alert", "OK", "OK", "OK"]  # host:a's strip, then host:b's
                assert page.locator("[data-testid=event-row]").all_inner_texts()[0].split("\t")[1:3] == [
                    "[Triggered on {host:a}] Latency", "a slow"]
                os.makedirs(os.path.join(REPO, "test-artifacts"), exist_ok=True)
                page.screenshot(path=os.path.join(REPO, "test-artifacts", "web-monitors.png"), full_page=True)
                page.click("[data-testid=evaluate]")  # evaluates now: the data are old by then, the state stays
                page.wait_for_selector("body[data-state=ready][data-view=monitors]")
                assert page.locator("[data-testid=state-cell]").count() == 8
            finally:
                browser.close()
        assert problems == []
