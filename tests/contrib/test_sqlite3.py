"""sqlite3 through the shared DB-API layer: cursors and the connection shortcuts."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from tests.contrib.apps.flask_helpers import patched_for_module
from tests.contrib.contract import IntegrationContract
from tests.utils import render_tree
from tracer import tracer as global_tracer
from tracer.config import config

META = {"component": "sqlite3", "span.kind": "client", "db.system": "sqlite", "db.name": ":memory:", "peer.service": ":memory:"}


pytestmark = pytest.mark.usefixtures("spans_in_memory")


@pytest.fixture(scope="module", autouse=True)
def patched() -> Iterator[None]:
    yield from patched_for_module("sqlite3")


@pytest.fixture
def conn() -> Iterator[Any]:
    c = sqlite3.connect(":memory:")
    c.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT UNIQUE)")
    try:
        yield c
    finally:
        c.close()


def queries(sink: Any) -> list[Any]:
    return [s for s in sink.spans if s.name == "sqlite.query"]


def test_connect_returns_a_transparent_proxy(conn: Any) -> None:
    assert type(conn).__name__ == "TracedSQLiteConnection"
    assert isinstance(conn, sqlite3.Connection)
    cur = conn.cursor()
    assert isinstance(cur, sqlite3.Cursor)
    assert type(cur).__name__ == "TracedSQLiteCursor"
    other = sqlite3.dbapi2.connect(":memory:")
    assert type(other).__name__ == "TracedSQLiteConnection"
    other.close()


def test_cursor_execute_spans_with_every_tag(conn: Any, test_spans: Any) -> None:
    cur = conn.cursor()
    test_spans.reset()
    assert cur.execute("INSERT INTO users (id, name) VALUES (?, ?)", (1, "secret-alice")) is cur
    cur.execute("SELECT id, name FROM users WHERE id = ?", (1,))
    assert cur.fetchall() == [(1, "secret-alice")]
    insert, select = queries(test_spans)
    assert (insert.resource, select.resource) == ("INSERT INTO users (id, name) VALUES (?, ?)", "SELECT id, name FROM users WHERE id = ?")
    for span in (insert, select):
        assert (span.service, span.span_type, span.error) == ("sqlite", "sql", 0)
        assert span.meta == META
    assert insert.metrics == {"_dd.measured": 1, "db.row_count": 1, "_dd.top_level": 1}
    assert select.metrics == {"_dd.measured": 1, "_dd.top_level": 1}  # sqlite3 reports rowcount -1 for SELECT
    assert "secret-alice" not in repr([s.meta for s in test_spans.spans])


def test_connection_shortcuts_are_traced(conn: Any, test_spans: Any) -> None:
    test_spans.reset()
    conn.executemany("INSERT INTO users (id, name) VALUES (?, ?)", [(i, f"n{i}") for i in range(100)])
    conn.executescript("UPDATE users SET name = name || '!' WHERE id < 3; DELETE FROM users WHERE id > 50;")
    cur = conn.execute("SELECT COUNT(*) FROM users")
    assert isinstance(cur, sqlite3.Cursor)
    assert cur.fetchone() == (51,)
    many, script, count = queries(test_spans)
    assert many.meta["sql.executemany"] == "true"
    assert many.metrics["db.row_count"] == 100
    assert script.resource == "UPDATE users SET name = name || '!' WHERE id < 3; DELETE FROM users WHERE id > 50;"
    assert count.resource == "SELECT COUNT(*) FROM users"
    # The returned cursor is traced too: executing on it again makes a span.
    cur.execute("SELECT 1")
    assert queries(test_spans)[-1].resource == "SELECT 1"


def test_iteration_row_factory_and_description(conn: Any, test_spans: Any) -> None:
    conn.executemany("INSERT INTO users (id, name) VALUES (?, ?)", [(1, "a"), (2, "b")])
    conn.row_factory = sqlite3.Row
    cur = conn.execute("SELECT id, name FROM users ORDER BY id")
    assert iter(cur) is cur
    rows = [dict(row) for row in cur]
    assert rows == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    assert [d[0] for d in cur.description] == ["id", "name"]
    assert next(iter(conn.execute("SELECT 7")))[0] == 7
    assert cur.lastrowid == cur.__wrapped__.lastrowid


def test_errors_propagate_unchanged(conn: Any, test_spans: Any) -> None:
    conn.execute("INSERT INTO users (id, name) VALUES (1, 'a')")
    raw = conn.__wrapped__
    for sql in ("SELEC 1", "INSERT INTO users (id, name) VALUES (2, 'a')"):
        with pytest.raises(sqlite3.Error) as untraced:
            raw.execute(sql)
        test_spans.reset()
        with pytest.raises(sqlite3.Error) as traced:
            conn.execute(sql)
        assert type(traced.value) is type(untraced.value)
        assert traced.value.args == untraced.value.args
        (span,) = queries(test_spans)
        assert span.error == 1
        assert span.meta["error.type"] == f"sqlite3.{type(traced.value).__name__}"
        assert span.meta["error.message"] == str(traced.value)


def test_commit_rollback_and_transaction_context(tmp_path: Any, test_spans: Any) -> None:
    path = os.path.join(tmp_path, "app.db")
    conn = sqlite3.connect(path)
    try:
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.rollback()
        conn.execute("INSERT INTO t VALUES (2)")
        conn.commit()
        with conn as same:  # commits on exit; returns the traced connection
            assert same is conn
            same.execute("INSERT INTO t VALUES (3)")
        assert conn.execute("SELECT x FROM t ORDER BY x").fetchall() == [(2,), (3,)]
    finally:
        conn.close()
    names = [s.name for s in test_spans.spans if s.name != "sqlite.query"]
    assert names == ["sqlite.connection.rollback", "sqlite.connection.commit"]
    assert {s.meta["db.name"] for s in test_spans.spans} == {"app.db"}
    assert {s.service for s in test_spans.spans} == {"sqlite"}


def tree(sink: Any) -> str:
    """The sink's spans as an indented tree (tests.utils.render_tree)."""
    spans = [
        {"span_id": s.span_id, "parent_id": s.parent_id, "name": s.name, "service": s.service, "resource": s.resource, "start_ns": s.start_ns}
        for s in sink.spans
    ]
    return render_tree(spans)


def test_parentage_and_service_override(test_spans: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "sqlite_service", "local-db")
    conn = sqlite3.connect(":memory:")
    with global_tracer.trace("web.request", service="web"):
        conn.execute("SELECT 1").fetchall()
        conn.execute("SELECT 2").fetchall()
    conn.close()
    assert tree(test_spans) == "web.request web 'web.request'\n  sqlite.query local-db 'SELECT 1'\n  sqlite.query local-db 'SELECT 2'"


def test_a_query_after_a_sibling_span_is_a_child_of_the_request(test_spans: Any) -> None:
    # The pure-Python span's end leaves it (finished) in the active variable;
    # the query reads that as its parent, the request, never as the sibling.
    conn = sqlite3.connect(":memory:")
    with global_tracer.trace("web.request", service="web"):
        with global_tracer.trace("render"):
            pass
        conn.execute("SELECT 1").fetchall()
    conn.close()
    assert tree(test_spans) == "web.request web 'web.request'\n  render web 'render'\n  sqlite.query sqlite 'SELECT 1'"


def test_backup_accepts_a_traced_target(conn: Any) -> None:
    conn.execute("INSERT INTO users (id, name) VALUES (1, 'a')")
    conn.commit()
    target = sqlite3.connect(":memory:")
    try:
        conn.backup(target)
        assert target.execute("SELECT name FROM users").fetchall() == [("a",)]
    finally:
        target.close()  # Python 3.13 warns (ResourceWarning) about an unclosed one
    # C code that type-checks needs the real connection (documented).
    assert isinstance(sqlite3.Cursor(conn.__wrapped__), sqlite3.Cursor)


def test_fetch_spans_and_uri_database_name(test_spans: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setattr(config, "db_trace_fetch", True)
    path = os.path.join(tmp_path, "data.sqlite")
    sqlite3.connect(path).close()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        cur = conn.execute("SELECT 1")
        assert cur.fetchall() == [(1,)]
    finally:
        conn.close()
    assert [(s.name, s.resource, s.meta["db.name"]) for s in test_spans.spans] == [
        ("sqlite.query", "SELECT 1", "data.sqlite"),
        ("sqlite.query.fetchall", "SELECT 1", "data.sqlite"),
    ]


def test_no_dbm_comment_for_sqlite(conn: Any, test_spans: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # A local file has no server-side logs to join: the SQL is sent as written.
    monkeypatch.setattr(config, "dbm_propagation", "full")
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    conn.execute("SELECT 1")
    assert seen == ["SELECT 1"]
    assert queries(test_spans)[-1].resource == "SELECT 1"


def test_sqlite_spans_through_the_receiver(traced: Any, tmp_path: Any) -> None:
    conn = sqlite3.connect(os.path.join(tmp_path, "shop.db"))
    with global_tracer.trace("web.request", service="shop", resource="GET /cart"):
        conn.execute("CREATE TABLE cart (sku TEXT, qty INTEGER)")
        conn.execute("INSERT INTO cart VALUES ('ab-12', 3)")
        conn.commit()
    conn.close()
    assert global_tracer.flush(10)
    (row,) = traced.wait_traces(1, service="shop")
    spans = traced.spans(row["trace_id"])
    text = render_tree(spans, tags=("component", "db.system", "db.name", "peer.service", "span.kind"))
    common = "component=sqlite3 db.system=sqlite db.name=shop.db peer.service=shop.db span.kind=client"
    assert text == "\n".join(
        [
            "web.request shop 'GET /cart'",
            f"  sqlite.query sqlite 'CREATE TABLE cart (sku TEXT, qty INTEGER)' {common}",
            f"  sqlite.query sqlite 'INSERT INTO cart VALUES ( ? )' {common}",
            f"  sqlite.connection.commit sqlite 'sqlite.connection.commit' {common}",
        ]
    )
    stats = {(r["name"], r["resource"]): r for r in traced.stats(service="sqlite")}
    assert stats[("sqlite.query", "INSERT INTO cart VALUES ( ? )")]["hits"] == 1


OBFUSCATE_APP = """
import sqlite3
conn = sqlite3.connect(":memory:")
conn.execute("CREATE TABLE users (id INTEGER, name TEXT)")
conn.cursor().execute("SELECT id FROM users WHERE name = 'secret-alice' AND id IN (1, 2, 3)").fetchall()
conn.executemany("INSERT INTO users VALUES (?, 'pw-' || ?)", [(1, 'a'), (2, 'b')])
conn.execute('UPDATE users SET name = "hunter2" WHERE id = 0x1F')
conn.close()
"""


@pytest.mark.parametrize(
    ("raw", "resources"),
    [
        ("true", ["SELECT id FROM users WHERE name = ? AND id IN ( ? )", "INSERT INTO users VALUES (?, ? || ?)",
                  "UPDATE users SET name = ? WHERE id = ?"]),
        ("false", ["SELECT id FROM users WHERE name = 'secret-alice' AND id IN (1, 2, 3)",
                   "INSERT INTO users VALUES (?, 'pw-' || ?)", 'UPDATE users SET name = "hunter2" WHERE id = 0x1F']),
    ],
)
def test_db_obfuscate_under_tracer_run(tmp_path: Any, raw: str, resources: list[str]) -> None:
    # A raw intake, not agent_sim: the receiver obfuscates on its side and would
    # hide whether the tracer did.
    from tests.tracer.test_run import tracer_run
    from tests.tracer.test_writer import Intake

    (tmp_path / "dbapp.py").write_text(OBFUSCATE_APP)
    intake = Intake()
    try:
        env = {"TRACER_AGENT_URL": intake.url, "TRACER_DB_OBFUSCATE": raw, "TRACER_SERVICE": "dbapp"}
        proc = tracer_run(["python", "dbapp.py"], env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        spans = intake.spans()
    finally:
        intake.close()
    by_name: dict[str, list[str]] = {}
    for span in sorted(spans, key=lambda s: s["start"]):
        by_name.setdefault(span["name"], []).append(span["resource"])
    assert by_name == {"sqlite.query": ["CREATE TABLE users (id INTEGER, name TEXT)", *resources]}


class TestSQLite3Contract(IntegrationContract):
    integration = "sqlite3"
    module = "sqlite3"
    span_name = "sqlite.query"
    spans_per_exercise = 4
    exercise_code = '''
def exercise():
    import sqlite3
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)")
    conn.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])
    cur = conn.cursor()
    cur.execute("SELECT x FROM t ORDER BY x")
    out = [list(r) for r in cur.fetchall()]
    try:
        conn.execute("INSERT INTO t VALUES (1)")
    except sqlite3.IntegrityError as exc:
        out.append(["IntegrityError", exc.args[0]])
    conn.close()
    return out
'''
