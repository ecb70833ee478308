"""The insight detectors on real apps: a Flask shop (tests/agent_sim/apps/
insights_app.py) under ``tracer-run``, on sqlite3 and on MariaDB (PyMySQL),
sending to a real agent_sim receiver; findings read from ``/api/insights``.

One app process per database serves every scenario; each test reads the
findings of its own endpoint. The sqlite3 app also traces cursor fetches
(``TRACER_DB_TRACE_FETCH``): fetch spans sit between the repeated queries and
carry the same SQL, and must neither hide the run nor be counted in it.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from agent_sim.insights import ERROR_GROUP, N_PLUS_ONE_DB, SLOW_QUERY, Thresholds
from tests.receiver import RunningReceiver
from tests.utils import REPO, free_port, stop_process, wait_for_port

APPS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "apps")
SERVICE = "insights-shop"
SLOW_MS = 100  # the receiver's slow-query threshold here; the app's slow query sleeps 150 ms


def _create_items(conn: Any, placeholder: str) -> None:
    cur = conn.cursor()
    cur.execute("DROP TABLE IF EXISTS insights_items")
    cur.execute("CREATE TABLE insights_items (id INTEGER PRIMARY KEY, name VARCHAR(20))")
    cur.executemany(f"INSERT INTO insights_items VALUES ({placeholder}, {placeholder})",
                    [(i, f"item{i}") for i in range(1, 21)])
    conn.commit()
    conn.close()


class App:
    """The shop under ``tracer-run flask run``, sending to its own receiver."""

    def __init__(self, db: str, extra_env: dict[str, str]) -> None:
        self.receiver = RunningReceiver(insight_limits=Thresholds(slow_query_ns=SLOW_MS * 1_000_000))
        self.port = free_port()
        self.db = db
        self.extra_env = extra_env
        self.proc: subprocess.Popen[str] | None = None
        self.requests = 0

    def __enter__(self) -> App:
        self.receiver.__enter__()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACER_", "DD_"))}
        env.update(PYTHONPATH=REPO + os.pathsep + APPS, TRACER_AGENT_URL=self.receiver.url,
                   TRACER_WRITER_INTERVAL="0.1", TRACER_SERVICE=SERVICE, INSIGHTS_DB=self.db,
                   PYTHONUNBUFFERED="1", **self.extra_env)
        run = shutil.which("tracer-run")
        cmd = ([run] if run else [sys.executable, "-m", "tracer.run"]) + [
            sys.executable, "-m", "flask", "--app", "insights_app", "run", "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, cwd=APPS, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        try:
            wait_for_port(self.port, timeout=20)
        except TimeoutError:
            raise AssertionError(stop_process(self.proc)) from None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.receiver.__exit__(*exc)

    def get(self, path: str) -> int:
        """GET ``path``; waits until its trace is stored (and its findings recorded)."""
        self.requests += 1
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as resp:
                status = resp.status
        except urllib.error.HTTPError as e:
            status = e.code
        self.receiver.wait_traces(self.requests, timeout=10, service=SERVICE, root=1)
        return status

    def findings(self, resource: str, kind: str | None = None) -> list[dict[str, Any]]:
        return self.receiver.get("/api/insights", service=SERVICE, resource=resource, kind=kind)


@pytest.fixture(scope="module", params=["sqlite", "mariadb"])
def app(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    tmp = tmp_path_factory.mktemp(f"insights-{request.param}")
    if request.param == "sqlite":
        path = tmp / "shop.db"
        _create_items(sqlite3.connect(path), "?")
        db, extra = f"sqlite:{path}", {"TRACER_DB_TRACE_FETCH": "true"}
    else:
        from tests.utils import require_module

        require_module("pymysql")
        import pymysql

        info = request.getfixturevalue("mariadb")
        _create_items(pymysql.connect(host=info.host, port=info.port, user=info.user, password=info.password,
                                      database=info.db), "%s")
        db, extra = f"mysql:{info.host}:{info.port}:{info.user}:{info.password}:{info.db}", {}
    with App(db, extra) as running:
        yield running


def test_n_plus_one_loop_of_twenty_is_one_finding_with_count_twenty(app: App) -> None:
    assert app.get("/orders") == 200
    (finding,) = app.findings("GET /orders")
    assert finding["kind"] == N_PLUS_ONE_DB
    assert finding["count"] == 20
    assert finding["detail"]["repeated"] == "SELECT name FROM insights_items WHERE id = ?"
    assert finding["detail"]["source"] == "SELECT id FROM insights_items ORDER BY id"
    assert len(finding["example_trace_ids"]) == 1
    # the repeated query's resource page lists the trace that contains it
    rows = app.receiver.traces(resource=finding["detail"]["repeated"])
    assert finding["example_trace_ids"][0] in [r["trace_id"] for r in rows]


def test_twenty_different_queries_or_four_identical_give_none(app: App) -> None:
    assert app.get("/report") == 200
    assert app.get("/few") == 200
    assert app.findings("GET /report") == []
    assert app.findings("GET /few") == []


def test_slow_query_found_with_the_right_count(app: App) -> None:
    for _ in range(3):
        assert app.get("/slow") == 200
    (finding,) = app.findings("GET /slow")
    assert finding["kind"] == SLOW_QUERY
    assert finding["count"] == 3
    assert finding["total_duration_ns"] >= 3 * 150_000_000
    assert "SLEEP" in finding["title"].upper() or "PAUSE" in finding["title"].upper()
    # where the endpoint's time goes: mostly the database's (3 × 150 ms of sleep)
    rows = app.receiver.get("/api/breakdown", service=SERVICE, resource="GET /slow")
    sql = [r for r in rows if r["span_type"] == "sql"]
    assert len(sql) == 1 and sql[0]["service"] != SERVICE and sql[0]["share"] > 0.5, rows
    assert sql[0]["exclusive_ns"] >= 3 * 150_000_000
    assert abs(sum(r["share"] for r in rows) - 1) < 0.001


def test_error_groups_by_exception_and_normalized_message(app: App) -> None:
    for path in ("/fail/key/1", "/fail/key/22", "/fail/key/333", "/fail/value/7", "/fail/value/8"):
        assert app.get(path) == 500
    groups = app.findings("GET /fail/<kind>/<int:order_id>", kind=ERROR_GROUP)
    by_type = {g["detail"]["error_type"]: g for g in groups}
    assert sorted(by_type) == ["builtins.KeyError", "builtins.ValueError"], groups
    assert by_type["builtins.KeyError"]["count"] == 3
    assert by_type["builtins.ValueError"]["count"] == 2
    assert len(by_type["builtins.KeyError"]["example_trace_ids"]) == 3
    # the message survives, ids and quoted values normalized
    assert by_type["builtins.KeyError"]["title"] == "builtins.KeyError: order ? not found"
    assert by_type["builtins.ValueError"]["title"] == "builtins.ValueError: quantity ? is not allowed for order ?"
