"""The shared DB-API layer: obfuscation, DBM comments, and the never-break-the-app guards.

Driver behaviour is tested per driver (test_mysql_drivers.py, test_sqlite3.py);
the guard tests here use sqlite3 as a real driver and sabotage our own code.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from contrib import _dbapi
from tests.contrib.apps.flask_helpers import patched_for_module
from tests.utils import REPO
from tracer import _errors
from tracer import tracer as global_tracer
from tracer.config import config

pytestmark = pytest.mark.usefixtures("spans_in_memory")


@pytest.fixture(scope="module", autouse=True)
def patched() -> Iterator[None]:
    yield from patched_for_module("sqlite3")


OBFUSCATION_CASES = [
    ("SELECT * FROM users WHERE id = 42", "SELECT * FROM users WHERE id = ?"),
    ("SELECT * FROM users WHERE id = %s", "SELECT * FROM users WHERE id = ?"),
    ("SELECT * FROM t1 WHERE name = 'it''s' AND x = -3.5e2", "SELECT * FROM t1 WHERE name = ? AND x = ?"),
    ("SELECT a FROM b WHERE c IN (1, 2, 3) AND d = \"q\\\"x\"", "SELECT a FROM b WHERE c IN ( ? ) AND d = ?"),
    ("UPDATE t SET blob = 0xDEADbeef WHERE id = %(id)s", "UPDATE t SET blob = ? WHERE id = ?"),
    ("SELECT col2, t.x3 FROM tbl9", "SELECT col2, t.x3 FROM tbl9"),
]


@pytest.mark.parametrize("sql, expected", OBFUSCATION_CASES)
def test_obfuscate_agrees_with_the_receiver_and_caches(sql: str, expected: str) -> None:
    from sql_obfuscation import obfuscate_sql

    assert _dbapi.obfuscate(sql) == obfuscate_sql(sql) == expected


def test_obfuscate_caches_per_statement_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    # The receiver's obfuscator has its own lru_cache, so identity of the
    # results proves nothing: count the calls that reach the implementation.
    calls: list[str] = []

    def counting(sql: str) -> str:
        calls.append(sql)
        return sql.replace("1", "?").replace("'a'", "?")

    monkeypatch.setattr(_dbapi, "_impl", counting)
    monkeypatch.setattr(_dbapi, "_obfuscated", {})
    for _ in range(3):
        assert _dbapi.obfuscate("SELECT 1") == "SELECT ?"
        assert _dbapi.obfuscate("SELECT 'a'") == "SELECT ?"
    assert calls == ["SELECT 1", "SELECT 'a'"]


def test_dbm_comment_quotes_values_as_sqlcommenter(monkeypatch: pytest.MonkeyPatch, test_spans: Any) -> None:
    monkeypatch.setattr(config, "env", "it's prod")
    monkeypatch.setattr(config, "version", "1.0/2")
    monkeypatch.setattr(global_tracer, "_service", "web app")
    with global_tracer.trace("q") as span:
        service = _dbapi.dbm_comment(span, "my db", "service")
        full = _dbapi.dbm_comment(span, "my db", "full")
    assert service == "/*dddbs='my%20db',dde='it%27s%20prod',ddps='web%20app',ddpv='1.0%2F2'*/ "
    assert full == service[:-3] + f",traceparent='00-{span.trace_id:032x}-{span.span_id:016x}-01'*/ "
    monkeypatch.setattr(config, "env", None)
    monkeypatch.setattr(config, "version", None)
    assert _dbapi.dbm_comment(span, "db", "service") == "/*dddbs='db',ddps='web%20app'*/ "


def test_make_info_leaves_out_unknown_values() -> None:
    info = _dbapi.make_info(prefix="mysql", system="mysql", component="x", service="mysql", db=b"shop", user=None, host="h", port="3307")
    assert info.meta == {"component": "x", "span.kind": "client", "db.system": "mysql", "db.name": "shop", "peer.service": "shop", "out.host": "h"}
    assert info.metrics == {"_dd.measured": 1, "network.destination.port": 3307}
    assert (info.query_name, info.commit_name, info.rollback_name) == ("mysql.query", "mysql.connection.commit", "mysql.connection.rollback")


def _take_swallowed() -> list[str]:
    places = [where for where, _ in _errors.swallowed]
    del _errors.swallowed[:]
    return places


def test_a_broken_tracer_never_breaks_the_query(monkeypatch: pytest.MonkeyPatch, test_spans: Any) -> None:
    conn = sqlite3.connect(":memory:")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("tracer bug")

    monkeypatch.setattr(global_tracer, "start_span", broken)
    monkeypatch.setattr(_dbapi, "_trace_root", broken)  # a query's root span is built without start_span
    cur = conn.cursor()
    assert cur.execute("SELECT 1") is cur
    assert cur.fetchall() == [(1,)]
    assert conn.execute("SELECT 2").fetchall() == [(2,)]
    conn.execute("CREATE TABLE t (x)")
    conn.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])
    conn.commit()
    conn.rollback()
    with pytest.raises(sqlite3.OperationalError):
        conn.execute("SELEC 1")
    assert test_spans.spans == []
    assert set(_take_swallowed()) == {"dbapi.execute", "dbapi.executemany", "dbapi.commit", "dbapi.rollback"}
    conn.close()


def test_a_broken_post_step_keeps_the_result(monkeypatch: pytest.MonkeyPatch, test_spans: Any) -> None:
    conn = sqlite3.connect(":memory:")
    cur = conn.cursor()
    monkeypatch.setattr(_dbapi, "_MAX_ROWS", None)  # makes the rowcount comparison raise
    assert cur.execute("CREATE TABLE t (x)") is cur
    cur.execute("INSERT INTO t VALUES (1)")
    assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
    assert set(_take_swallowed()) == {"dbapi.rowcount"}
    # The spans still finished (without a row count).
    assert [s.resource for s in test_spans.spans] == ["CREATE TABLE t (x)", "INSERT INTO t VALUES (1)", "SELECT x FROM t"]
    assert all("db.row_count" not in s.metrics for s in test_spans.spans)
    conn.close()


def test_execute_keeps_the_drivers_result_and_exception_when_our_post_step_breaks(
    monkeypatch: pytest.MonkeyPatch, test_spans: Any
) -> None:
    # execute() is guarded_wrapper's shape written out in one frame (the
    # hottest call): the same guarantee, checked on that frame itself.
    conn = sqlite3.connect(":memory:")
    cur = conn.cursor()
    raw = conn.__wrapped__.cursor()
    with pytest.raises(sqlite3.OperationalError) as untraced:
        raw.execute("SELEC 1")

    def broken(*args: Any) -> Any:
        raise RuntimeError("tracer bug")

    monkeypatch.setattr(_dbapi, "_counted", broken)  # after a query that ran
    monkeypatch.setattr(_dbapi, "query_finish", broken)  # after one that raised
    assert cur.execute("SELECT ?", (7,)) is cur
    assert cur.fetchall() == [(7,)]
    with pytest.raises(sqlite3.OperationalError) as traced:
        cur.execute("SELEC 1")
    assert traced.value.args == untraced.value.args
    assert _take_swallowed() == ["dbapi.execute.finish", "dbapi.execute.finish"]
    conn.close()


def test_cursor_keeps_the_drivers_cursor_and_exception_when_wrapping_breaks(
    monkeypatch: pytest.MonkeyPatch, test_spans: Any
) -> None:
    # cursor() is written out in one frame too (a web app opens a cursor per
    # request): the driver's call unguarded, the proxy's creation guarded.
    conn = sqlite3.connect(":memory:")

    class Rows(sqlite3.Cursor):
        pass

    cur = conn.cursor(Rows)  # arguments reach the driver
    assert type(cur.__wrapped__) is Rows and isinstance(cur, Rows)
    assert cur.execute("SELECT 1").fetchall() == [(1,)]
    assert test_spans.spans[-1].resource == "SELECT 1"

    def broken(cursor: Any) -> Any:
        raise RuntimeError("tracer bug")

    monkeypatch.setattr(type(conn), "cursor_types", (broken, broken))
    raw = conn.cursor()
    assert type(raw) is sqlite3.Cursor  # the driver's own, untraced but working
    assert raw.execute("SELECT 2").fetchall() == [(2,)]
    assert _take_swallowed() == ["dbapi.cursor.finish"]
    monkeypatch.undo()
    conn.close()
    with pytest.raises(sqlite3.ProgrammingError) as traced:
        conn.cursor()
    with pytest.raises(sqlite3.ProgrammingError) as untraced:
        conn.__wrapped__.cursor()
    assert traced.value.args == untraced.value.args
    assert _take_swallowed() == []


def test_proxies_use_the_wrapped_object_as_it_is_now(test_spans: Any) -> None:
    # The hot paths read the proxy's __wrapped__ each time, not a copy taken earlier.
    conn = sqlite3.connect(":memory:")
    first = conn.__wrapped__  # closed at the end: 3.13 warns of an unclosed sqlite3 connection
    cur = conn.cursor()
    other = sqlite3.connect(":memory:")
    cur.__wrapped__ = other.__wrapped__.cursor()
    other.__wrapped__.execute("CREATE TABLE only_here (x)")
    assert cur.execute("SELECT name FROM sqlite_master").fetchall() == [("only_here",)]
    conn.__wrapped__ = other.__wrapped__
    assert conn.cursor().execute("SELECT count(*) FROM only_here").fetchall() == [(0,)]
    assert [s.resource for s in test_spans.spans[-2:]] == ["SELECT name FROM sqlite_master", "SELECT count(*) FROM only_here"]
    other.close()
    first.close()


_PURE_WRAPT = """
import sqlite3, wrapt
import tracer
from contrib import _dbapi
assert not hasattr(wrapt.BaseObjectProxy, "__wrapped__"), "wrapt's C extension is in use"
chunks = []
class Sink:
    def write(self, trace, chunk): chunks.append(chunk)
    def flush(self, timeout=0): return True
    def stop(self, timeout=0): pass
    def stats(self): return {}
tracer.tracer._writer = Sink()
tracer.patch(sqlite3=True)
conn = sqlite3.connect(":memory:")
cur = conn.cursor()
assert cur.execute("SELECT 1").fetchall() == [(1,)]
assert conn.execute("SELECT 2").fetchone() == (2,)
assert len(chunks) == 2, chunks
print("ok")
"""


def test_the_integration_works_on_wrapts_pure_python_proxies() -> None:
    env = {**os.environ, "PYTHONPATH": REPO, "WRAPT_DISABLE_EXTENSIONS": "1"}
    proc = subprocess.run([sys.executable, "-c", _PURE_WRAPT], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_connect_failure_is_the_drivers(tmp_path: Any, test_spans: Any) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "x.db"
    with pytest.raises(sqlite3.OperationalError):
        sqlite3.connect(missing)
    assert test_spans.spans == []


def test_supported_ranges_and_version_strings() -> None:
    from tracer._patching import registry, version_in_range

    mysql, pymysql, mysqldb = (registry()[name] for name in ("mysql", "pymysql", "mysqldb"))
    assert version_in_range("8.0.33", mysql.supported)
    assert not version_in_range("2.1.7", mysql.supported)
    assert version_in_range("1.0.2", pymysql.supported)
    assert not version_in_range("0.10.1", pymysql.supported)
    assert version_in_range("2.0.0", mysqldb.supported)
    assert not version_in_range("1.4.6", mysqldb.supported)
    for entry in (mysql, pymysql, mysqldb):
        assert version_in_range(entry.installed_version() or "", entry.supported)
