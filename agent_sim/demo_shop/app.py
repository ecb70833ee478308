"""The demo shop: a small Flask app with the usual shapes of a slow endpoint.

    python app.py [--port 5000]                       (sqlite3, ./shop.db)
    tracer-run python app.py                          (the same, traced)
    tracer-run gunicorn -w 2 --preload app:app        (from this directory)

Routes:
    /                          a template page (featured products)
    /products                  list (JSON)
    /products/<int:product_id> detail with a path parameter (404 when unknown)
    /checkout?product_id=N     calls the inventory service with ``requests``, then writes an order
    /orders                    the N+1 query pattern: one query for the orders, one per order for its product
    /slow                      sleeps 200–300 ms
    /flaky                     a 500 about 10 % of the time (``?fail=1`` always)
    /healthz                   no database

Environment:
    SHOP_DATABASE_URL  ``mysql://user:pass@host:port/db`` to use MySQL (PyMySQL); unset: sqlite3
    SHOP_DB_PATH       the sqlite3 file (default ``shop.db`` in the working directory)
    INVENTORY_URL      the inventory service (default ``http://127.0.0.1:5001``)
    DD_DOGSTATSD_PORT  when set (and the ``datadog`` package is installed), every request also sends
                       ``web.page_views`` (a counter) and ``web.latency`` (a histogram, ms) with the
                       ``datadog`` client, tagged ``service:shop``, ``route`` and ``status``
                       (``DD_AGENT_HOST``, default 127.0.0.1, names the host)

The schema is created and seeded at import (idempotent, safe when several
gunicorn workers start at once). No tracer imports: run it under
``tracer-run`` and every request, query and outbound call is traced.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import time
import urllib.parse
from typing import Any

import requests
from flask import Flask, abort, g, jsonify, render_template, request, request_finished, request_started

try:
    from datadog.dogstatsd import DogStatsd
except ImportError:  # metrics are optional: the shop runs without the datadog package
    DogStatsd = None  # type: ignore[misc,assignment]

HERE = os.path.dirname(os.path.abspath(__file__))

# An explicit import name makes the service name "shop" however the file is
# loaded (script, ``-m``, gunicorn); root_path finds templates/ next to it.
app = Flask("shop", root_path=HERE)

PRODUCTS = [
    (1, "Espresso cup", 850, "Thick porcelain, 80 ml."),
    (2, "Pour-over kettle", 4900, "Gooseneck, 1 l."),
    (3, "Hand grinder", 6500, "Conical steel burrs."),
    (4, "Paper filters", 450, "100 pieces, size 02."),
    (5, "Scale", 2900, "0.1 g resolution, timer."),
    (6, "Dripper", 2300, "Ceramic, size 02."),
    (7, "Milk jug", 1800, "Stainless steel, 350 ml."),
    (8, "Tamper", 3400, "58 mm, flat base."),
    (9, "Beans: Ethiopia", 1600, "Washed, light roast, 250 g."),
    (10, "Beans: Colombia", 1400, "Natural, medium roast, 250 g."),
    (11, "Cleaning tablets", 900, "For espresso machines."),
    (12, "Travel mug", 2100, "Vacuum insulated, 300 ml."),
]
SEED_ORDERS = [(i, 1 + (i * 5) % len(PRODUCTS), 1 + i % 3) for i in range(1, 21)]


# -- database: sqlite3 by default, MySQL (PyMySQL) when SHOP_DATABASE_URL is set ------------
class Database:
    """Where the shop's data lives; ``connect()`` returns a DB-API connection.

    SQL in this file is written with ``?`` placeholders (sqlite3's style);
    ``sql()`` turns them into ``%s`` for PyMySQL."""

    def __init__(self, url: str | None, sqlite_path: str) -> None:
        self.mysql = None
        self.sqlite_path = sqlite_path
        if url:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("mysql", "mysql+pymysql"):
                raise ValueError(f"SHOP_DATABASE_URL: expected mysql://user:pass@host:port/db, got {url!r}")
            self.mysql = {
                "host": parts.hostname or "127.0.0.1",
                "port": parts.port or 3306,
                "user": urllib.parse.unquote(parts.username or "root"),
                "password": urllib.parse.unquote(parts.password or ""),
                "database": parts.path.lstrip("/") or "shop",
            }

    @property
    def kind(self) -> str:
        return "mysql" if self.mysql else "sqlite"

    def connect(self) -> Any:
        if self.mysql:
            import pymysql

            return pymysql.connect(**self.mysql, autocommit=False, connect_timeout=5)
        import sqlite3

        return sqlite3.connect(self.sqlite_path, timeout=10)

    def sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.mysql else statement

    def init(self) -> None:
        """Create and seed the tables; idempotent (INSERT OR IGNORE on fixed ids)."""
        if self.mysql:
            ddl = [
                "CREATE TABLE IF NOT EXISTS products (id INT PRIMARY KEY, name VARCHAR(100) NOT NULL,"
                " price_cents INT NOT NULL, description TEXT)",
                "CREATE TABLE IF NOT EXISTS orders (id INT AUTO_INCREMENT PRIMARY KEY, product_id INT NOT NULL,"
                " quantity INT NOT NULL, created_at DOUBLE NOT NULL)",
            ]
            insert = "INSERT IGNORE INTO"
        else:
            ddl = [
                "CREATE TABLE IF NOT EXISTS products (id INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                " price_cents INTEGER NOT NULL, description TEXT)",
                "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY AUTOINCREMENT, product_id INTEGER NOT NULL,"
                " quantity INTEGER NOT NULL, created_at REAL NOT NULL)",
            ]
            insert = "INSERT OR IGNORE INTO"
        conn = self.connect()
        try:
            if not self.mysql:
                conn.execute("PRAGMA journal_mode=WAL")  # readers never wait for the checkout writes
            cur = conn.cursor()
            for statement in ddl:
                cur.execute(statement)
            cur.executemany(self.sql(f"{insert} products (id, name, price_cents, description) VALUES (?, ?, ?, ?)"), PRODUCTS)
            now = time.time()
            cur.executemany(
                self.sql(f"{insert} orders (id, product_id, quantity, created_at) VALUES (?, ?, ?, ?)"),
                [(i, p, q, now) for i, p, q in SEED_ORDERS],
            )
            conn.commit()
        finally:
            conn.close()


db = Database(os.environ.get("SHOP_DATABASE_URL"), os.environ.get("SHOP_DB_PATH", "shop.db"))
db.init()
INVENTORY_URL = os.environ.get("INVENTORY_URL", "http://127.0.0.1:5001").rstrip("/")


def conn() -> Any:
    """This request's connection, opened on first use and closed at teardown."""
    if "db" not in g:
        g.db = db.connect()
    return g.db


def query(statement: str, args: tuple = ()) -> list[tuple]:
    cur = conn().cursor()
    try:
        cur.execute(db.sql(statement), args)
        return list(cur.fetchall())
    finally:
        cur.close()


# What the people this demo is modelled on did: count page views and time requests with DogStatsD.
statsd = DogStatsd(disable_telemetry=True) if DogStatsd is not None and os.environ.get("DD_DOGSTATSD_PORT") else None


def start_timer(_sender: Flask, **_extra: Any) -> None:
    g.started = time.perf_counter()


def send_metrics(_sender: Flask, response: Any, **_extra: Any) -> None:
    if statsd is not None and "started" in g and request.path != "/healthz":  # probes are not page views
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        rule = re.sub(r"<(?:\w+:)?(\w+)>", r":\1", rule)  # /products/:product_id (the client drops '<')
        tags = ["service:shop", f"route:{rule}", f"status:{response.status_code}"]
        statsd.increment("web.page_views", tags=tags)
        statsd.histogram("web.latency", (time.perf_counter() - g.started) * 1000, tags=tags)


if statsd is not None:
    # Signals, not before/after_request hooks: the Flask integration traces hooks as spans of their own.
    request_started.connect(start_timer, app)
    request_finished.connect(send_metrics, app)


@app.teardown_appcontext
def close_db(_exc: BaseException | None) -> None:
    connection = g.pop("db", None)
    if connection is not None:
        connection.close()


def product_dict(row: tuple) -> dict[str, Any]:
    return {"id": row[0], "name": row[1], "price_cents": row[2], "description": row[3]}


# -- routes ---------------------------------------------------------------------------------------
@app.get("/")
def index():  # type: ignore[no-untyped-def]
    rows = query("SELECT id, name, price_cents, description FROM products ORDER BY price_cents DESC LIMIT 4")
    return render_template("index.html", products=[product_dict(r) for r in rows], database=db.kind)


@app.get("/products")
def products():  # type: ignore[no-untyped-def]
    rows = query("SELECT id, name, price_cents, description FROM products ORDER BY id")
    return jsonify([product_dict(r) for r in rows])


@app.get("/products/<int:product_id>")
def product(product_id: int):  # type: ignore[no-untyped-def]
    rows = query("SELECT id, name, price_cents, description FROM products WHERE id = ?", (product_id,))
    if not rows:
        abort(404)
    (count,) = query("SELECT COUNT(*) FROM orders WHERE product_id = ?", (product_id,))[0]
    return jsonify({**product_dict(rows[0]), "orders": count})


@app.route("/checkout", methods=["GET", "POST"])
def checkout():  # type: ignore[no-untyped-def]
    product_id = request.values.get("product_id", type=int) or random.randint(1, len(PRODUCTS))
    quantity = request.values.get("quantity", default=1, type=int)
    try:
        reply = requests.get(f"{INVENTORY_URL}/stock/{product_id}", timeout=5)
        reply.raise_for_status()
        stock = reply.json()
    except requests.RequestException as exc:
        return jsonify(error=f"inventory unavailable: {exc}"), 502
    if not stock.get("in_stock"):
        return jsonify(error="out of stock", product_id=product_id), 409
    cur = conn().cursor()
    try:
        cur.execute(
            db.sql("INSERT INTO orders (product_id, quantity, created_at) VALUES (?, ?, ?)"),
            (product_id, quantity, time.time()),
        )
        order_id = cur.lastrowid
    finally:
        cur.close()
    conn().commit()
    return jsonify(order_id=order_id, product_id=product_id, quantity=quantity), 201


@app.get("/orders")
def orders():  # type: ignore[no-untyped-def]
    # Deliberately N+1: one query per order for its product, instead of a JOIN.
    rows = query("SELECT id, product_id, quantity FROM orders ORDER BY id DESC LIMIT 10")
    out = []
    for order_id, product_id, quantity in rows:
        name, price = query("SELECT name, price_cents FROM products WHERE id = ?", (product_id,))[0]
        out.append({"id": order_id, "product": name, "quantity": quantity, "total_cents": price * quantity})
    return jsonify(out)


@app.get("/slow")
def slow():  # type: ignore[no-untyped-def]
    delay = random.uniform(0.2, 0.3)
    time.sleep(delay)  # a slow downstream nobody traced
    return jsonify(slept_ms=round(delay * 1000))


class FlakyError(RuntimeError):
    """The simulated failure of ``/flaky``."""


@app.get("/flaky")
def flaky():  # type: ignore[no-untyped-def]
    if request.args.get("fail") == "1" or random.random() < 0.1:
        raise FlakyError("the flaky endpoint failed, as it does one time in ten")
    return jsonify(ok=True)


@app.get("/healthz")
def healthz():  # type: ignore[no-untyped-def]
    return "ok"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="the demo shop (see the module docstring)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "5000")))
    args = parser.parse_args(argv)
    app.run(host=args.host, port=args.port, threaded=True)


if __name__ == "__main__":
    main()
