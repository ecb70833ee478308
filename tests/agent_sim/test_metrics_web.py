"""The web page's Metrics view and a service page's metrics panel, in real
headless Chromium (Python Playwright driving Debian's chromium), fed by the
real ``datadog`` client; screenshots go to ``test-artifacts/``."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from tests.agent_sim import seed as seeding
from tests.agent_sim.test_dogstatsd import _value, _wait
from tests.agent_sim.test_web import browser, ready, shot  # noqa: F401 (browser: the module's Chromium fixture)
from tests.receiver import RunningReceiver

pytestmark = pytest.mark.browser


def test_metrics_view_and_service_panel(browser: Any) -> None:  # noqa: F811
    from datadog.dogstatsd import DogStatsd

    with RunningReceiver(statsd_port=0) as r:
        seeding.send_v04(r.url, [seeding.simple_trace(time.time_ns(), random.Random(1), "shop", "GET /a", 900,
                                                      False).spans])
        statsd = DogStatsd(host="127.0.0.1", port=r.server.statsd_port, disable_telemetry=True)
        statsd.gauge("queue.depth", 3, tags=["service:shop", "shard:a"])
        statsd.gauge("queue.depth", 7, tags=["service:shop", "shard:b"])
        for v in (5, 15):
            statsd.histogram("web.latency", v, tags=["service:shop", "route:/a"])
        statsd.gauge("other.thing", 1, tags=["service:elsewhere"])
        statsd.close_socket()
        assert _wait(lambda: _value(r, "other.thing"))

        context = browser.new_context(viewport={"width": 1300, "height": 800})
        problems: list[str] = []
        try:
            pg = context.new_page()
            pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            pg.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
            pg.set_default_timeout(10_000)
            pg.goto(r.url + "/")
            ready(pg, "services")
            pg.click("[data-testid=nav-metrics]")
            ready(pg, "metrics")
            options = pg.locator("[data-testid=metric-name] option").evaluate_all("os => os.map(o => o.value)")
            assert {"queue.depth", "web.latency.95percentile", "trace.flask.request.hits"} <= set(options)
            pg.select_option("[data-testid=metric-name]", "queue.depth")
            pg.wait_for_selector("[data-testid=metric-chart]")
            assert pg.evaluate("location.hash") == "#/metrics/queue.depth/-/avg/1h"
            (only,) = pg.locator("[data-testid=metric-series]").evaluate_all("ls => ls.map(l => l.dataset.last)")
            assert float(only) == 5  # the average of the two shards
            pg.select_option("[data-testid=metric-by]", "shard")
            pg.wait_for_function("location.hash === '#/metrics/queue.depth/shard/avg/1h'")
            ready(pg, "metrics")
            pg.wait_for_selector("[data-testid=metric-series][data-group='shard:b']")
            series = pg.locator("[data-testid=metric-series]").evaluate_all(
                "ls => ls.map(l => [l.dataset.group, Number(l.dataset.last)])")
            assert series == [["shard:a", 3], ["shard:b", 7]]
            assert pg.locator("[data-testid=metric-chart] circle, [data-testid=metric-chart] polyline").count() == 2
            pg.select_option("[data-testid=metric-agg]", "max")
            pg.wait_for_function("location.hash === '#/metrics/queue.depth/shard/max/1h'")
            shot(pg, "metrics")

            pg.goto(r.url + "/#/service/shop")
            ready(pg, "service")
            pg.wait_for_selector("[data-testid=service-metric][data-name='queue.depth']")
            names = pg.locator("[data-testid=service-metric]").evaluate_all("ds => ds.map(d => d.dataset.name)")
            assert "web.latency.max" in names and "other.thing" not in names
            assert not [n for n in names if n.startswith("trace.")]
            shot(pg, "service-metrics")
            pg.click("[data-testid=service-metric][data-name='queue.depth'] a")
            ready(pg, "metrics")
            assert pg.evaluate("location.hash") == "#/metrics/queue.depth/-/avg/1h"
        finally:
            context.close()
        assert problems == []
