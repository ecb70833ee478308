"""The demo shop (``examples/shop`` = ``agent_sim/demo_shop``) under a real
``tracer-run``, and ``agent-sim demo`` end to end, in real processes.

- ``shop``: the shop and its inventory service as two ``tracer-run python
  examples/shop/....py`` subprocesses sending to a real receiver; each route
  gives the trace tree a newcomer should see (distributed /checkout, N+1
  /orders, an error on /flaky, a template on /).
- ``agent-sim demo --no-serve`` with its port taken: says so, uses a free
  port, prints the stats table, and leaves every trace in its database file.
- The same shop on MariaDB through PyMySQL (``SHOP_DATABASE_URL``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.clients import status_line_then_reset, well_behaved
from tests.receiver import RunningReceiver
from tests.utils import REPO, assert_clean_output, free_port, render_tree

SHOP = os.path.join(REPO, "examples", "shop")
# The one traceback the shop logs on purpose (Flask logs the exception of /flaky).
FLAKY = ("FlakyError: the flaky endpoint failed",)


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        exc.read()
        exc.close()
        return exc.code


class Apps:
    """The shop and inventory under ``tracer-run``, stopped with SIGINT (so
    their tracers flush at exit), then SIGKILL."""

    def __init__(self, receiver_url: str, tmp: str, extra_env: dict[str, str] | None = None) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": REPO,
            "TRACER_AGENT_URL": receiver_url,
            "TRACER_WRITER_INTERVAL": "0.1",
        }
        for name in ("TRACER_SERVICE", "DD_SERVICE", "SHOP_DATABASE_URL"):
            env.pop(name, None)
        self.inventory_port, self.shop_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.shop_port}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[str] = []
        self._start("inventory.py", self.inventory_port, env, tmp)
        shop_env = {
            **env,
            "INVENTORY_URL": f"http://127.0.0.1:{self.inventory_port}",
            "SHOP_DB_PATH": os.path.join(tmp, "shop.db"),
            **(extra_env or {}),
        }
        self._start("app.py", self.shop_port, shop_env, tmp)
        for port in (self.inventory_port, self.shop_port):
            self._wait(port)

    def _start(self, script: str, port: int, env: dict[str, str], tmp: str) -> None:
        log = os.path.join(tmp, script + ".log")
        self.logs.append(log)
        with open(log, "wb") as out:
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tracer.run", sys.executable, os.path.join(SHOP, script), "--port", str(port)],
                    env=env, cwd=tmp, stdout=out, stderr=subprocess.STDOUT,
                )
            )

    def _wait(self, port: int, timeout: float = 30) -> None:
        import time

        deadline = time.monotonic() + timeout
        while True:
            for proc, log in zip(self.procs, self.logs, strict=True):
                if proc.poll() is not None:
                    raise AssertionError(f"{log} exited {proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop both; fails if either logged an internal error or an unexpected traceback."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(2)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self.logs:
            with open(log, encoding="utf-8", errors="replace") as f:
                assert_clean_output(f.read(), allow=FLAKY)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Apps, RunningReceiver]]:
    with RunningReceiver() as receiver:
        apps = Apps(receiver.url, str(tmp_path_factory.mktemp("shop")))
        try:
            yield apps, receiver
        finally:
            apps.stop()


def one_trace(receiver: RunningReceiver, resource: str, span_count: int = 1) -> list[dict[str, Any]]:
    """The one shop trace of ``resource``, once it has ``span_count`` spans
    (the chunks of a distributed trace arrive from each process on its own)."""
    import time

    try:
        (row,) = receiver.wait_traces(1, service="shop", resource=resource)
    except AssertionError:
        rows = receiver.traces(limit=100)
        raise AssertionError(f"no {resource!r} trace of shop; stored: {rows}, info: {receiver.info()}") from None
    deadline = time.monotonic() + 10
    while True:
        spans = receiver.spans(row["trace_id"])
        if len(spans) >= span_count or time.monotonic() > deadline:
            return spans
        time.sleep(0.05)


def test_checkout_is_one_distributed_trace(shop: tuple[Apps, RunningReceiver]) -> None:
    apps, receiver = shop
    assert get(apps.url + "/checkout?product_id=3") == 201
    spans = one_trace(receiver, "GET /checkout", span_count=7)
    assert render_tree(spans, tags=["http.status_code"]) == "\n".join([
        "flask.request shop 'GET /checkout' http.status_code=201",
        "  flask.view shop 'checkout'",
        "    requests.request shop 'GET /stock/?' http.status_code=200",
        "      flask.request inventory 'GET /stock/<int:product_id>' http.status_code=200",
        "        flask.view inventory 'stock'",
        "    sqlite.query sqlite 'INSERT INTO orders (product_id, quantity, created_at) VALUES ( ? )'",
        "    sqlite.connection.commit sqlite 'sqlite.connection.commit'",
    ])


def test_orders_shows_n_plus_one(shop: tuple[Apps, RunningReceiver]) -> None:
    apps, receiver = shop
    assert get(apps.url + "/orders") == 200
    spans = one_trace(receiver, "GET /orders", span_count=13)
    per_order = "    sqlite.query sqlite 'SELECT name, price_cents FROM products WHERE id = ?'"
    assert render_tree(spans) == "\n".join([
        "flask.request shop 'GET /orders'",
        "  flask.view shop 'orders'",
        "    sqlite.query sqlite 'SELECT id, product_id, quantity FROM orders ORDER BY id DESC LIMIT ?'",
        *[per_order] * 10,
    ])
    (finding,) = receiver.get("/api/insights", kind="n_plus_one_db", resource="GET /orders")
    assert finding["detail"]["repeated"] == "SELECT name, price_cents FROM products WHERE id = ?"
    assert finding["detail"]["source"] == "SELECT id, product_id, quantity FROM orders ORDER BY id DESC LIMIT ?"
    assert finding["service"] == "shop" and finding["count"] >= 10 and finding["count"] % 10 == 0


def test_flaky_failure_and_template_page(shop: tuple[Apps, RunningReceiver]) -> None:
    apps, receiver = shop
    assert get(apps.url + "/flaky?fail=1") == 500
    assert get(apps.url + "/") == 200
    assert get(apps.url + "/products/999") == 404
    assert render_tree(one_trace(receiver, "GET /flaky"), tags=["http.status_code", "error.type"]) == "\n".join([
        "flask.request shop 'GET /flaky' [error] http.status_code=500 error.type=__main__.FlakyError",
        "  flask.view shop 'flaky' [error] error.type=__main__.FlakyError",
    ])
    assert render_tree(one_trace(receiver, "GET /")) == "\n".join([
        "flask.request shop 'GET /'",
        "  flask.view shop 'index'",
        "    sqlite.query sqlite 'SELECT id, name, price_cents, description FROM products ORDER BY price_cents DESC LIMIT ?'",
        "    flask.render_template shop 'index.html'",
    ])
    (error,) = receiver.get("/api/insights", kind="error_group", resource="GET /flaky")
    assert error["detail"]["error_type"] == "__main__.FlakyError" and error["count"] >= 1
    (missing,) = receiver.wait_traces(1, service="shop", resource="GET /products/<int:product_id>")
    assert missing["error"] == 0  # a 404 is not an error


def test_shop_on_mariadb(mariadb: Any, tmp_path: Any) -> None:
    url = f"mysql://{mariadb.user}:{mariadb.password}@{mariadb.host}:{mariadb.port}/{mariadb.db}"
    with RunningReceiver() as receiver:
        apps = Apps(receiver.url, str(tmp_path), {"SHOP_DATABASE_URL": url})
        try:
            assert get(apps.url + "/orders") == 200
            spans = one_trace(receiver, "GET /orders", span_count=13)
            (finding,) = receiver.get("/api/insights", resource="GET /orders")
            assert (finding["kind"], finding["count"]) == ("n_plus_one_db", 10)
        finally:
            apps.stop()
    per_order = "    mysql.query mysql 'SELECT name, price_cents FROM products WHERE id = ?' component=pymysql"
    assert render_tree(spans, tags=["component"]) == "\n".join([
        "flask.request shop 'GET /orders' component=flask",
        "  flask.view shop 'orders' component=flask",
        "    mysql.query mysql 'SELECT id, product_id, quantity FROM orders ORDER BY id DESC LIMIT ?' component=pymysql",
        *[per_order] * 10,
    ])
    assert {s["meta"].get("db.name") for s in spans if s["name"] == "mysql.query"} == {mariadb.db}


def test_demo_no_serve_on_a_taken_port(tmp_path: Any) -> None:
    db = str(tmp_path / "demo.db")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "agent_sim", "demo", "--port", str(port), "--db", db, "--no-serve", "--requests", "120"],
            env={**os.environ, "PYTHONPATH": REPO}, cwd=str(tmp_path), capture_output=True, text=True, timeout=120,
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_clean_output(proc.stdout + proc.stderr, allow=FLAKY)
    out = proc.stdout
    assert f"port {port} is taken" in out and "using free port" in out
    assert "120/120 requests" in out
    table = out[out.index("SERVICE"):]
    for needle in ("GET /products/<int:product_id>", "GET /checkout", "GET /stock/<int:product_id>", "sqlite.query"):
        assert needle in table
    assert "web page:  http://127.0.0.1:" in out
    assert "the shop's DogStatsD: 120 web.page_views" in out  # sent with the datadog client
    assert "route:/products/:product_id" in out[out.index("metrics (the shop's"):]
    # Everything stopped; the traces stay in the named database file.
    with RunningReceiver(db=db) as receiver:
        services = {row["service"] for row in receiver.services()}
        assert {"shop", "inventory"} <= services
        checkout = receiver.traces(service="shop", resource="GET /checkout", limit=1)
        assert checkout, "no GET /checkout trace"
        # A checkout of an out-of-stock product has no insert; the inventory is always called.
        assert "inventory" in {s["service"] for s in receiver.spans(checkout[0]["trace_id"])}
        hits = sum(r["hits"] for r in receiver.stats(service="shop") if r["name"] == "flask.request"
                   and not r["resource"].endswith("/healthz"))
        assert hits == 120
        views = receiver.get("/api/metrics/query", name="web.page_views", agg="sum", since=0, tags="service:shop")
        assert round(sum(p[1] for s in views["series"] for p in s["points"]) * 10) == 120  # stored on exit


def test_demo_serves_until_ctrl_c_then_stops_everything(tmp_path: Any) -> None:
    import re
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "agent_sim", "demo", "--port", str(free_port()), "--db", str(tmp_path / "d.db"),
         "--requests", "40"],
        env={**os.environ, "PYTHONPATH": REPO}, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops them all" in line:
                break
        out = "".join(lines)
        assert "Ctrl-C stops them all" in out, out
        page = re.search(r"web page:\s+(\S+)", out).group(1)  # type: ignore[union-attr]
        shop = re.search(r"shop:\s+(\S+)", out).group(1).rstrip("/")  # type: ignore[union-attr]
        inventory = re.search(r"inventory:\s+(http://[\d.:]+)", out).group(1)  # type: ignore[union-attr]
        with urllib.request.urlopen(page, timeout=10) as resp:
            assert b"<html" in resp.read().lower()
        assert get(shop + "/products") == 200  # still serving: browse it while the demo runs
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out + rest
    assert_clean_output(out + rest, allow=FLAKY)
    for url in (page, shop, inventory):
        with pytest.raises(OSError):
            urllib.request.urlopen(url, timeout=2)


def test_flaky_is_counted_under_clients_that_hang_up(tmp_path: Any) -> None:
    """Issue 11: a 500 read up to its status line by a client that then resets
    the connection (a closed tab, a load balancer's timeout) is still one hit
    and one error."""
    with RunningReceiver() as receiver:
        apps = Apps(receiver.url, str(tmp_path))
        try:
            port = apps.shop_port
            for _ in range(10):
                assert status_line_then_reset(port, "/flaky?fail=1")[9:12] == b"500"
            for _ in range(2):
                assert well_behaved(port, "/flaky?fail=1")[9:12] == b"500"
            deadline = time.monotonic() + 15
            while True:
                rows = [r for r in receiver.stats(service="shop") if r["resource"] == "GET /flaky"]
                if (rows and rows[0]["hits"] >= 12) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        finally:
            apps.stop()
        assert [(r["hits"], r["errors"]) for r in rows] == [(12, 12)], apps.logs
