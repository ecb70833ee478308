"""A Flask shop with the performance problems the insight detectors look for,
served under ``tracer-run`` by tests/agent_sim/test_insights_apps.py.

It never imports the tracer. ``INSIGHTS_DB`` picks the database:
``sqlite:<path>`` (sqlite3) or ``mysql:<host>:<port>:<user>:<password>:<db>``
(PyMySQL against the suite's MariaDB). The table ``insights_items`` (ids
1..20) is created by the test before the app starts.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask

app = Flask(__name__)
app.config["PROPAGATE_EXCEPTIONS"] = False  # unhandled errors become a 500

_DB = os.environ.get("INSIGHTS_DB", "sqlite::memory:")
SLOW_S = float(os.environ.get("INSIGHTS_SLOW_S", "0.15"))
# 20 structurally different queries (aliases differ; obfuscation keeps them apart)
ALIASES = [f"col_{chr(ord('a') + i)}" for i in range(20)]


def connect() -> Any:
    kind, _, rest = _DB.partition(":")
    if kind == "sqlite":
        conn = sqlite3.connect(rest)
        conn.create_function("pause", 1, lambda s: time.sleep(s) or 1)
        return conn
    import pymysql

    host, port, user, password, db = rest.split(":")
    return pymysql.connect(host=host, port=int(port), user=user, password=password, database=db)


@contextmanager
def cursor() -> Iterator[Any]:
    """A cursor of a new connection, closed after the request."""
    conn = connect()
    try:
        yield conn.cursor()
    finally:
        conn.close()


def _slow_sql() -> str:
    return f"SELECT pause({SLOW_S})" if _DB.startswith("sqlite") else f"SELECT SLEEP({SLOW_S})"


@app.route("/orders")
def orders() -> str:
    """The N+1: one source query, then one query per row (20)."""
    with cursor() as cur:
        cur.execute("SELECT id FROM insights_items ORDER BY id")
        ids = [row[0] for row in cur.fetchall()]
        names = []
        for item_id in ids:
            cur.execute(f"SELECT name FROM insights_items WHERE id = {item_id}")
            names.append(cur.fetchone()[0])
        return ",".join(names)


@app.route("/report")
def report() -> str:
    """20 different queries under one parent: no N+1."""
    return _each([f"SELECT count(*) AS {alias} FROM insights_items" for alias in ALIASES])


@app.route("/few")
def few() -> str:
    """4 identical queries: under the default threshold of 5."""
    return _each([f"SELECT name FROM insights_items WHERE id = {item_id}" for item_id in range(1, 5)])


def _each(queries: list[str]) -> str:
    with cursor() as cur:
        for sql in queries:
            cur.execute(sql)
            cur.fetchone()
    return "ok"


@app.route("/slow")
def slow() -> str:
    with cursor() as cur:
        cur.execute(_slow_sql())
        cur.fetchone()
        cur.execute("SELECT count(*) FROM insights_items")
        return str(cur.fetchone()[0])


@app.route("/fail/<kind>/<int:order_id>")
def fail(kind: str, order_id: int) -> str:
    if kind == "key":
        raise KeyError(f"order {order_id} not found")
    raise ValueError(f"quantity {order_id} is not allowed for order 'A-{order_id}'")
