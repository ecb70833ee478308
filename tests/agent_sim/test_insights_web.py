"""Findings, time breakdown and the errors-only filter on the receiver's web
page, in real headless Chromium (the browser and page fixtures of
test_web.py); screenshots go to ``test-artifacts/web-insights-*.png``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from tests.agent_sim.test_findings import put
from tests.agent_sim.test_web import browser, page, problems, ready, shot  # noqa: F401  (fixtures)
from tests.receiver import RunningReceiver

pytestmark = pytest.mark.browser

REPEATED = "SELECT name FROM items WHERE id = ?"
MS = 1_000_000


class Site:
    def __init__(self, url: str, n_plus_one_id: str) -> None:
        self.url = url
        self.n_plus_one_id = n_plus_one_id


def _trace(tid: int, resource: str, queries: list[str], error: str | None = None) -> list[dict]:
    start = time.time_ns() - 5_000 * MS
    root = {"trace_id": tid, "span_id": 1, "parent_id": 0, "service": "shop", "name": "flask.request",
            "resource": resource, "type": "web", "start": start, "duration": 100 * MS, "error": int(bool(error)),
            "meta": {"error.type": error, "error.message": f"order {tid} not found"} if error else {},
            "metrics": {"_sampling_priority_v1": 1}}
    spans = [root]
    for i, sql in enumerate(queries):
        spans.append({"trace_id": tid, "span_id": 10 + i, "parent_id": 1, "service": "sqlite",
                      "name": "sqlite.query", "resource": sql, "type": "sql", "start": start + (1 + 4 * i) * MS,
                      "duration": 3 * MS, "error": 0, "meta": {"db.system": "sqlite"}, "metrics": {}})
    return spans


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    with RunningReceiver() as rx:
        put(rx.url, [
            _trace(101, "GET /orders", ["SELECT id FROM items"] + [REPEATED.replace("?", str(i)) for i in range(20)]),
            _trace(102, "GET /home", ["SELECT 1"]),
            _trace(103, "GET /fail", [], error="KeyError"),
            _trace(104, "GET /fail", [], error="KeyError"),
        ])
        (row,) = rx.traces(resource="GET /orders")
        yield Site(rx.url, row["trace_id"])


def test_findings_breakdown_and_highlighted_waterfall(page: Any, site: Site) -> None:  # noqa: F811
    page.goto(site.url + "/")
    ready(page, "services")
    rows = page.locator("[data-testid=finding-row]")
    kinds = rows.evaluate_all("rs => rs.map(r => r.dataset.kind)")
    assert sorted(kinds) == ["error_group", "n_plus_one_db"]
    n1 = page.locator("[data-testid=finding-row][data-kind=n_plus_one_db]")
    assert n1.locator("[data-testid=finding-count]").inner_text() == "20"
    assert n1.locator("[data-testid=finding-title]").inner_text() == f"N+1 queries: {REPEATED}"
    shot(page, "insights-1-landing")

    page.goto(site.url + "/#/service/shop")
    ready(page, "service")
    assert page.locator("[data-testid=finding-row]").count() == 2
    shot(page, "insights-2-service")

    page.click("[data-testid=finding-row][data-kind=n_plus_one_db] [data-testid=finding-endpoint]")
    ready(page, "resource")
    assert page.url.endswith("#/service/shop/resource/" + quote("GET /orders", safe=""))
    segments = page.locator("[data-testid=breakdown-segment]")
    shares = {(s.get_attribute("data-service"), s.get_attribute("data-type")): float(s.get_attribute("data-share"))
              for s in segments.all()}
    # 100 ms request, 21 queries of 3 ms: 63 % in sqlite
    assert shares == {("shop", "web"): 0.37, ("sqlite", "sql"): 0.63}
    assert [f.get_attribute("data-kind") for f in page.locator("[data-testid=finding-row]").all()] == ["n_plus_one_db"]
    shot(page, "insights-3-resource")

    page.click("[data-testid=finding-example]")
    ready(page, "trace")
    (item,) = page.locator("[data-testid=trace-finding]").all()
    assert item.inner_text().startswith(f"N+1 queries N+1 queries: {REPEATED}")
    marked = page.locator("[data-testid=span-row].in-finding")
    assert marked.count() == 20
    assert marked.first.get_attribute("title") == f"N+1 queries: {REPEATED}"
    assert page.locator("[data-testid=span-row]").count() == 22
    item.locator("a").click()  # selects the run's first span
    # The detail panel may still show the span selected before (the root's
    # "GET /orders") when the click lands: wait for the new selection's.
    page.locator("[data-testid=detail-resource]", has_text=REPEATED).wait_for()
    assert page.locator("[data-testid=detail-resource]").inner_text() == REPEATED
    shot(page, "insights-4-waterfall")


def test_errors_only_filter_and_resource_page_of_a_query(page: Any, site: Site) -> None:  # noqa: F811
    page.goto(site.url + "/")
    ready(page, "services")
    assert page.locator("[data-testid=trace-row]").count() == 4
    page.check("[data-testid=errors-only]")
    page.wait_for_function("document.querySelectorAll('[data-testid=trace-row]').length === 2")
    assert page.locator("[data-testid=trace-row].is-error").count() == 2
    assert page.locator("[data-testid=errors-only]").is_checked()
    shot(page, "insights-5-errors-only")
    page.uncheck("[data-testid=errors-only]")
    page.wait_for_function("document.querySelectorAll('[data-testid=trace-row]').length === 4")

    # the repeated query's resource page lists the trace containing it (its spans are not roots)
    page.goto(site.url + "/#/service/sqlite/resource/" + quote(REPEATED, safe=""))
    ready(page, "resource")
    ids = page.locator("[data-testid=trace-row]").evaluate_all("rs => rs.map(r => r.dataset.traceId)")
    assert ids == [site.n_plus_one_id]
    assert page.locator("[data-testid=no-breakdown]").count() == 1
    shot(page, "insights-6-query-resource")
