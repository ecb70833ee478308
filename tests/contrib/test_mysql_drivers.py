"""The three MySQL drivers against a real MariaDB server, one parametrized suite.

Spans are read from the in-memory sink (``test_spans``) for exact tag
assertions; ``TestReceiver`` checks the same spans after a round trip through
a real agent_sim receiver. ``Test*Contract`` run the shared integration
contract (patch before/after import, twice, unpatch…) for each driver.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from contrib import _dbapi
from contrib._dbapi import TracedMySQLConnection, TracedMySQLCursor
from tests.contrib.apps.flask_helpers import patched_for_module
from tests.contrib.contract import IntegrationContract
from tests.mariadb import MariaDBInfo
from tests.utils import REPO, free_port, render_tree, wait_for_port
from tracer import _errors
from tracer import tracer as global_tracer
from tracer.config import config

pytestmark = [pytest.mark.mariadb, pytest.mark.usefixtures("spans_in_memory")]


@dataclass
class Driver:
    keyword: str  # tracer.patch(<keyword>=True)
    component: str
    module: Any
    connect: Callable[..., Any]  # (info, **extra) -> traced connection
    conn_class: type
    cursor_class: type
    cursors: dict[str, Callable[[Any], Any]]  # name -> conn -> cursor (server-side, dict, ...)
    sql_kwarg: str

    def __str__(self) -> str:
        return self.keyword

    def callproc_out(self, cur: Any, proc: str, args: tuple) -> Any:
        """Call ``proc(IN a, OUT b)`` and return b as the driver exposes it."""
        result = cur.callproc(proc, args)
        if self.keyword == "mysql":
            return result[1]  # mysql.connector returns the OUT values
        cur.execute(f"SELECT @_{proc}_1")  # the DB-API convention of PyMySQL and MySQLdb
        return cur.fetchone()[0]


def _pymysql() -> Driver:
    import pymysql
    import pymysql.cursors

    def connect(info: MariaDBInfo, **extra: Any) -> Any:
        return pymysql.connect(
            host=info.host, port=info.port, user=info.user, password=info.password, database=info.db, **extra
        )

    return Driver(
        "pymysql",
        "pymysql",
        pymysql,
        connect,
        pymysql.connections.Connection,
        pymysql.cursors.Cursor,
        {
            "SSCursor": lambda c: c.cursor(pymysql.cursors.SSCursor),
            "DictCursor": lambda c: c.cursor(pymysql.cursors.DictCursor),
            "SSDictCursor": lambda c: c.cursor(pymysql.cursors.SSDictCursor),
        },
        "query",
    )


def _mysqldb() -> Driver:
    import MySQLdb
    import MySQLdb.connections
    import MySQLdb.cursors

    def connect(info: MariaDBInfo, **extra: Any) -> Any:
        return MySQLdb.connect(
            host=info.host, port=info.port, user=info.user, password=info.password, database=info.db, **extra
        )

    return Driver(
        "mysqldb",
        "mysqldb",
        MySQLdb,
        connect,
        MySQLdb.connections.Connection,
        MySQLdb.cursors.Cursor,
        {
            "SSCursor": lambda c: c.cursor(MySQLdb.cursors.SSCursor),
            "DictCursor": lambda c: c.cursor(MySQLdb.cursors.DictCursor),
            "SSDictCursor": lambda c: c.cursor(MySQLdb.cursors.SSDictCursor),
        },
        "query",
    )


def _mysql_connector() -> Driver:
    import mysql.connector
    import mysql.connector.abstracts
    import mysql.connector.cursor

    def connect(info: MariaDBInfo, **extra: Any) -> Any:
        return mysql.connector.connect(
            host=info.host, port=info.port, user=info.user, password=info.password, database=info.db, **extra
        )

    return Driver(
        "mysql",
        "mysql-connector",
        mysql.connector,
        connect,
        mysql.connector.abstracts.MySQLConnectionAbstract,
        mysql.connector.abstracts.MySQLCursorAbstract,
        {
            "unbuffered": lambda c: c.cursor(buffered=False),
            "buffered": lambda c: c.cursor(buffered=True),
            "raw": lambda c: c.cursor(raw=True),
            "dictionary": lambda c: c.cursor(dictionary=True),
        },
        "operation",
    )


_BUFFERED_CURSORS = frozenset(("DictCursor", "buffered"))
DRIVERS = {"pymysql": _pymysql, "mysqldb": _mysqldb, "mysql": _mysql_connector}


@pytest.fixture(scope="module")
def patched() -> Iterator[None]:
    yield from patched_for_module("mysql", "pymysql", "mysqldb")


@pytest.fixture(params=list(DRIVERS))
def driver(request: pytest.FixtureRequest, patched: None) -> Driver:
    return DRIVERS[request.param]()


@pytest.fixture
def conn(driver: Driver, mariadb: MariaDBInfo) -> Iterator[Any]:
    c = driver.connect(mariadb)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def table(conn: Any, driver: Driver, request: pytest.FixtureRequest) -> str:
    name = re.sub(r"\W", "_", f"t_{driver.keyword}_{request.node.originalname}")[:60]
    cur = conn.cursor()
    cur.execute(f"DROP TABLE IF EXISTS {name}")
    cur.execute(f"CREATE TABLE {name} (id INT PRIMARY KEY, name VARCHAR(64)) ENGINE=InnoDB")
    cur.close()
    conn.commit()
    return name


def expected_meta(driver: Driver, info: MariaDBInfo) -> dict[str, str]:
    return {
        "component": driver.component,
        "span.kind": "client",
        "db.system": "mysql",
        "db.name": info.db,
        "db.user": info.user,
        "out.host": info.host,
        "peer.service": info.db,
    }


def spans_named(sink: Any, name: str = "mysql.query") -> list[Any]:
    return [s for s in sink.spans if s.name == name]


# -- the proxies are transparent -------------------------------------------------------
def test_connect_returns_traced_connection_that_passes_isinstance(driver: Driver, conn: Any) -> None:
    assert issubclass(type(conn), TracedMySQLConnection)
    assert isinstance(conn, driver.conn_class)
    cur = conn.cursor()
    assert issubclass(type(cur), TracedMySQLCursor)
    assert isinstance(cur, driver.cursor_class)
    cur.close()


def test_driver_specific_methods_and_attributes_pass_through(driver: Driver, conn: Any, test_spans: Any) -> None:
    # Only a few methods are the proxies' own; users call the rest of the
    # driver's API (mogrify, statement, server info...) through them.
    if driver.keyword == "mysql":  # its get_server_info() is deprecated for this property
        assert conn.server_info == conn.__wrapped__.server_info
    else:
        assert conn.get_server_info() == conn.__wrapped__.get_server_info()
    cur = conn.cursor()
    assert isinstance(cur, type(cur.__wrapped__))
    cur.arraysize = 7  # set on the driver's cursor, where the driver reads it
    assert cur.__wrapped__.arraysize == cur.arraysize == 7
    test_spans.reset()
    cur.execute("SELECT %s", (42,))
    assert [tuple(row) for row in cur.fetchall()] == [(42,)]
    assert cur.rowcount == cur.__wrapped__.rowcount == 1
    if driver.keyword == "mysql":
        assert cur.statement == "SELECT 42"
    else:
        assert cur.mogrify("SELECT %s", (42,)) in ("SELECT 42", b"SELECT 42")
    (span,) = spans_named(test_spans)
    assert span.resource == "SELECT %s"
    cur.close()


def test_create_insert_select_spans_with_every_tag(driver: Driver, conn: Any, table: str, mariadb: MariaDBInfo, test_spans: Any) -> None:
    test_spans.reset()
    cur = conn.cursor()
    cur.execute(f"INSERT INTO {table} (id, name) VALUES (%s, %s)", (1, "secret-param-alice"))
    cur.execute(f"INSERT INTO {table} (id, name) VALUES (%s, %s)", (2, "secret-param-bob"))
    cur.execute(f"SELECT id, name FROM {table} WHERE id >= %s ORDER BY id", (1,))
    assert list(cur.fetchall()) == [(1, "secret-param-alice"), (2, "secret-param-bob")]
    assert cur.lastrowid == cur.__wrapped__.lastrowid
    conn.commit()

    spans = spans_named(test_spans)
    assert [s.resource for s in spans] == [
        f"INSERT INTO {table} (id, name) VALUES (%s, %s)",
        f"INSERT INTO {table} (id, name) VALUES (%s, %s)",
        f"SELECT id, name FROM {table} WHERE id >= %s ORDER BY id",
    ]
    for span in spans:
        assert span.service == "mysql"
        assert span.span_type == "sql"
        assert span.error == 0
        assert span.meta == expected_meta(driver, mariadb)
        assert span.parent_id == 0
    # mysql.connector's default cursor is unbuffered: its SELECT span gets
    # the count once the rows are read (TracedConnectorCursor).
    assert [s.metrics for s in spans] == [
        {"_dd.measured": 1, "network.destination.port": mariadb.port, "db.row_count": n, "_dd.top_level": 1}
        for n in (1, 1, 2)
    ]
    # Parameters are never recorded, anywhere.
    for span in test_spans.spans:
        assert "secret-param" not in repr(span.meta) + span.resource
    (commit,) = spans_named(test_spans, "mysql.connection.commit")
    assert (commit.resource, commit.service, commit.span_type) == ("mysql.connection.commit", "mysql", "sql")
    assert commit.meta == expected_meta(driver, mariadb)


def test_execute_with_keyword_sql_and_return_value_untouched(driver: Driver, conn: Any, test_spans: Any) -> None:
    raw = conn.__wrapped__.cursor()
    expected = raw.execute("SELECT 1")
    raw.fetchall()
    cur = conn.cursor()
    test_spans.reset()
    assert cur.execute(**{driver.sql_kwarg: "SELECT 1"}) == expected
    assert list(cur.fetchall()) == [(1,)]
    (span,) = spans_named(test_spans)
    assert span.resource == "SELECT 1"


def test_executemany_1000_rows(driver: Driver, conn: Any, table: str, test_spans: Any) -> None:
    rows = [(i, f"name-{i}") for i in range(1000)]
    cur = conn.cursor()
    test_spans.reset()
    cur.executemany(f"INSERT INTO {table} (id, name) VALUES (%s, %s)", rows)
    conn.commit()
    (span,) = spans_named(test_spans)
    assert span.resource == f"INSERT INTO {table} (id, name) VALUES (%s, %s)"
    assert span.meta["sql.executemany"] == "true"
    assert span.metrics["db.row_count"] == 1000
    cur.execute(f"SELECT COUNT(*), MAX(id) FROM {table}")
    assert tuple(cur.fetchone()) == (1000, 999)


def test_callproc(driver: Driver, conn: Any, test_spans: Any) -> None:
    proc = f"double_{driver.keyword}"
    cur = conn.cursor()
    cur.execute(f"DROP PROCEDURE IF EXISTS {proc}")
    cur.execute(f"CREATE PROCEDURE {proc}(IN a INT, OUT b INT) BEGIN SET b = a * 2; END")
    test_spans.reset()
    assert driver.callproc_out(cur, proc, (21, 0)) == 42
    span = spans_named(test_spans)[0]
    assert span.resource == proc
    assert span.error == 0


@pytest.mark.parametrize(
    "sql, error",
    [("SELEC 1 FROM nowhere", "ProgrammingError"), ("INSERT INTO {table} (id, name) VALUES (1, 'x')", "IntegrityError")],
    ids=["syntax", "duplicate-key"],
)
def test_failing_query_raises_the_drivers_exception_unchanged(
    driver: Driver, conn: Any, table: str, test_spans: Any, sql: str, error: str
) -> None:
    sql = sql.format(table=table)
    cur = conn.cursor()
    cur.execute(f"INSERT INTO {table} (id, name) VALUES (1, 'x')")
    raw = conn.__wrapped__.cursor()
    with pytest.raises(Exception) as untraced:
        raw.execute(sql)
    test_spans.reset()
    with pytest.raises(Exception) as traced:
        cur.execute(sql)
    assert type(traced.value) is type(untraced.value)
    assert isinstance(traced.value, getattr(driver.module, error))
    assert traced.value.args == untraced.value.args
    # The driver's frame is still where the exception came from.
    tb = traced.value.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    assert tb is not None and "contrib" not in tb.tb_frame.f_code.co_filename
    (span,) = spans_named(test_spans)
    exc_type = type(traced.value)
    assert span.error == 1
    assert span.meta["error.type"] == f"{exc_type.__module__}.{exc_type.__qualname__}"
    assert span.meta["error.message"] == str(traced.value)
    assert exc_type.__qualname__ in span.meta["error.stack"]
    assert span.resource == sql
    conn.rollback()


def test_commit_and_rollback(driver: Driver, conn: Any, table: str, mariadb: MariaDBInfo, test_spans: Any) -> None:
    cur = conn.cursor()
    test_spans.reset()
    cur.execute(f"INSERT INTO {table} (id, name) VALUES (1, 'rolled back')")
    conn.rollback()
    cur.execute(f"INSERT INTO {table} (id, name) VALUES (2, 'committed')")
    conn.commit()
    other = driver.connect(mariadb)
    try:
        ocur = other.cursor()
        ocur.execute(f"SELECT id FROM {table}")
        assert [tuple(r) for r in ocur.fetchall()] == [(2,)]
    finally:
        other.close()
    names = [s.name for s in test_spans.spans if s.name != "mysql.query" or "INSERT" in s.resource]
    assert names == ["mysql.query", "mysql.connection.rollback", "mysql.query", "mysql.connection.commit"]
    rollback = spans_named(test_spans, "mysql.connection.rollback")[0]
    assert rollback.meta == expected_meta(driver, mariadb)
    assert rollback.metrics["_dd.measured"] == 1


def test_special_cursors(driver: Driver, conn: Any, table: str, test_spans: Any) -> None:
    setup = conn.cursor()
    setup.executemany(f"INSERT INTO {table} (id, name) VALUES (%s, %s)", [(1, "a"), (2, "b"), (3, "c")])
    conn.commit()
    for kind, make in driver.cursors.items():
        raw_type = type(make(conn.__wrapped__))
        cur = make(conn)
        assert isinstance(cur, raw_type), kind
        assert type(cur.__wrapped__) is raw_type, kind
        test_spans.reset()
        cur.execute(f"SELECT id, name FROM {table} ORDER BY id")
        rows = list(cur.fetchall())
        assert len(rows) == 3, kind
        first = rows[0]
        if "ict" in kind:
            assert dict(first) == {"id": 1, "name": "a"}, kind
        elif kind == "raw":
            assert tuple(first) == (b"1", b"a")
        else:
            assert tuple(first) == (1, "a"), kind
        (span,) = spans_named(test_spans)
        assert span.resource == f"SELECT id, name FROM {table} ORDER BY id", kind
        # Buffered cursors know the count when execute returns; mysql.connector's
        # unbuffered ones once the rows are read; PyMySQL's and mysqlclient's
        # server-side (SS) cursors do not say, and no count is invented.
        counted = kind in _BUFFERED_CURSORS or driver.keyword == "mysql"
        assert span.metrics.get("db.row_count") == (3 if counted else None), kind
        cur.close()


# -- mysql.connector's unbuffered cursor: the row count once the rows are read ----------
_READS: dict[str, Callable[[Any], list]] = {
    "fetchall": lambda cur: list(cur.fetchall()),
    "fetchone": lambda cur: list(iter(cur.fetchone, None)),
    "fetchmany": lambda cur: cur.fetchmany(2) + cur.fetchmany(2) + cur.fetchmany(2),
    "iteration": lambda cur: list(cur),
}


@pytest.fixture
def connector(mariadb: MariaDBInfo, patched: None) -> Iterator[Any]:
    c = _mysql_connector().connect(mariadb)
    cur = c.cursor()
    cur.execute("CREATE TEMPORARY TABLE rows3 (id INT PRIMARY KEY)")
    cur.execute("INSERT INTO rows3 VALUES (1), (2), (3)")
    cur.close()
    try:
        yield c
    finally:
        c.close()


@pytest.mark.parametrize("read", list(_READS))
def test_unbuffered_select_gets_the_row_count_once_read(connector: Any, test_spans: Any, read: str) -> None:
    cur = connector.cursor()  # mysql.connector's default: unbuffered
    assert type(cur.__wrapped__).__name__ == "MySQLCursor"
    test_spans.reset()
    with global_tracer.trace("parent"):
        cur.execute("SELECT id FROM rows3 ORDER BY id")
        time.sleep(0.2)  # not part of the query span: it keeps execute()'s duration
        assert spans_named(test_spans) == []  # rows unread: not handed over yet
        assert [tuple(row) for row in _READS[read](cur)] == [(1,), (2,), (3,)]
    (span,) = spans_named(test_spans)
    assert span.metrics["db.row_count"] == 3
    assert span.duration_ns < 200_000_000
    (parent,) = spans_named(test_spans, "parent")
    assert span.parent_id == parent.span_id
    cur.execute("SELECT id FROM rows3 WHERE id > 5")  # an empty result is a count too
    assert cur.fetchall() == []
    assert spans_named(test_spans)[-1].metrics["db.row_count"] == 0


@pytest.mark.parametrize("end", ["close", "next statement", "garbage"])
def test_unbuffered_select_left_unread_ends_without_a_count(
    connector: Any, mariadb: MariaDBInfo, test_spans: Any, end: str
) -> None:
    import mysql.connector

    if end == "next statement":  # mysql.connector then drops unread rows itself
        connector = _mysql_connector().connect(mariadb, consume_results=True)
    test_spans.reset()
    cur = connector.cursor()
    cur.execute("SELECT 1 UNION SELECT 2 UNION SELECT 3")
    assert tuple(cur.fetchone()) == (1,)
    if end == "close":
        with pytest.raises(mysql.connector.errors.InternalError, match="Unread result"):
            cur.close()  # the driver's own complaint, passed through unchanged
    elif end == "next statement":
        cur.execute("SELECT 1")
        cur.fetchall()
    else:
        del cur  # the proxy's last reference
    first = spans_named(test_spans)[0]
    assert first.resource == "SELECT 1 UNION SELECT 2 UNION SELECT 3"
    assert "db.row_count" not in first.metrics  # 1 of 3 read: no partial count
    connector.consume_results()
    if end == "next statement":
        connector.close()


def _cursor_classes() -> dict[str, type]:
    """mysql-connector cursor classes (its ``cursor_class=``) for the paths
    contrib/mysql reads a cursor by (``_kinds``): the driver's own reads
    (STOCK), its methods (OTHER: ``rowcount`` and ``_have_unread_result``
    overridden, same answers), none (NO: unhashable, its own ``__eq__``)."""
    from mysql.connector.cursor import MySQLCursor

    class Overridden(MySQLCursor):
        broken = False  # makes rowcount raise, as a bug in our settle would

        @property
        def rowcount(self) -> int:
            if self.broken:
                raise RuntimeError("tracer bug")
            return self._rowcount

        def _have_unread_result(self) -> bool:
            return bool(self._connection.unread_result)

    class Unhashable(MySQLCursor):
        def __eq__(self, other: object) -> bool:
            return other is self

    return {"stock": MySQLCursor, "overridden": Overridden, "unhashable": Unhashable}


@pytest.mark.internal_errors
@pytest.mark.parametrize("read", list(_READS))
def test_a_broken_settle_keeps_the_rows(connector: Any, test_spans: Any, read: str) -> None:
    cur = connector.cursor(cursor_class=_cursor_classes()["overridden"])
    test_spans.reset()
    cur.execute("SELECT id FROM rows3 ORDER BY id")
    cur.__wrapped__.broken = True  # after execute: its own count is read there
    assert [tuple(row) for row in _READS[read](cur)] == [(1,), (2,), (3,)]
    assert {where for where, _ in _errors.swallowed} == {"mysql.settle"}
    assert spans_named(test_spans) == []
    cur.__wrapped__.broken = False
    cur.close()  # the span still pending ends now, with its count
    assert spans_named(test_spans)[0].metrics["db.row_count"] == 3


@pytest.mark.parametrize("read", list(_READS))
def test_cursor_classes_read_directly_or_through_their_methods_give_the_same_spans(
    connector: Any, mariadb: MariaDBInfo, test_spans: Any, read: str
) -> None:
    # contrib/mysql reads MySQLCursor's unread flag and row count without its
    # methods (STOCK), a class that overrides them through them (OTHER): same
    # spans, kept until the rows are read. An unhashable class keeps none
    # (NO): its span ends at execute, without a count, and the lookups made
    # while another cursor keeps a span neither fail nor record errors.
    from contrib.mysql import patch as mysql_patch

    classes = _cursor_classes()
    spans = {}
    for name in ("stock", "overridden"):
        cur = connector.cursor(cursor_class=classes[name])
        test_spans.reset()
        cur.execute("SELECT id FROM rows3 ORDER BY id")
        assert list(mysql_patch._kept.values()) and spans_named(test_spans) == []
        assert [tuple(row) for row in _READS[read](cur)] == [(1,), (2,), (3,)]
        assert mysql_patch._kept == {}
        spans[name] = [(s.resource, s.metrics.get("db.row_count")) for s in spans_named(test_spans)]
        assert mysql_patch._kinds[classes[name]] == {"stock": mysql_patch.STOCK, "overridden": mysql_patch.OTHER}[name]
        cur.close()
    assert spans["stock"] == spans["overridden"] == [("SELECT id FROM rows3 ORDER BY id", 3)]

    keeping = connector.cursor()
    keeping.execute("SELECT 1 UNION SELECT 2")  # kept: _kept is not empty below
    other = _mysql_connector().connect(mariadb)
    try:
        test_spans.reset()
        cur = other.cursor(cursor_class=classes["unhashable"])
        for _ in range(2):  # the second execute looks the first span up
            cur.execute("SELECT 7 UNION SELECT 8")
            assert [tuple(row) for row in _READS[read](cur)] == [(7,), (8,)]
        cur.close()
        assert mysql_patch._kinds[classes["unhashable"]] == mysql_patch.NO
        assert [(s.resource, s.metrics.get("db.row_count")) for s in spans_named(test_spans)] == [
            ("SELECT 7 UNION SELECT 8", None)
        ] * 2
        assert _errors.swallowed == []
    finally:
        other.close()
    assert [tuple(row) for row in keeping.fetchall()] == [(1,), (2,)]
    keeping.close()


@pytest.mark.parametrize("cursor_class", ["stock", "overridden"])
def test_counts_at_execute_and_rows_taken_by_another_statement(
    mariadb: MariaDBInfo, patched: None, test_spans: Any, cursor_class: str
) -> None:
    # A statement without rows has its count at execute (0 is a count);
    # rows that another statement took (consume_results) leave the kept
    # span without one, ended at the fetch that found none.
    from contrib.mysql import patch as mysql_patch

    c = _mysql_connector().connect(mariadb, consume_results=True)
    try:
        cls = _cursor_classes()[cursor_class]
        cur, other = c.cursor(cursor_class=cls), c.cursor(cursor_class=cls)
        cur.execute("CREATE TEMPORARY TABLE rows2 (id INT PRIMARY KEY)")
        cur.execute("INSERT INTO rows2 VALUES (1), (2)")
        test_spans.reset()
        cur.execute("UPDATE rows2 SET id = id + 10 WHERE id > 5")
        cur.execute("UPDATE rows2 SET id = id + 10")
        cur.execute("SELECT id FROM rows2")
        other.execute("DO 1")  # the driver drops cur's unread rows first
        assert cur.fetchall() == []
        assert mysql_patch._kept == {}
        assert [(s.resource, s.metrics.get("db.row_count")) for s in spans_named(test_spans)] == [
            ("UPDATE rows2 SET id = id + 10 WHERE id > 5", 0),
            ("UPDATE rows2 SET id = id + 10", 2),
            ("DO 1", 0),
            ("SELECT id FROM rows2", None),
        ]
    finally:
        c.close()


def test_kept_spans_are_per_cursor_and_none_is_left_behind(connector: Any, mariadb: MariaDBInfo, test_spans: Any) -> None:
    # The kept spans live in contrib.mysql.patch._kept, keyed by the
    # driver's cursor (not on the proxy): two cursors with unread rows at
    # once (one per connection: the driver allows one unread result on a
    # connection) each end their own span with their own count, and no
    # entry outlives its span (read, close, collection).
    from contrib.mysql import patch as mysql_patch

    other = _mysql_connector().connect(mariadb)
    try:
        a, b = connector.cursor(), other.cursor()
        test_spans.reset()
        a.execute("SELECT id FROM rows3 WHERE id < 3 ORDER BY id")
        b.execute("SELECT 7 UNION SELECT 8 UNION SELECT 9")
        assert len(mysql_patch._kept) == 2
        assert [tuple(r) for r in b.fetchmany(2)] == [(7,), (8,)]
        assert len(mysql_patch._kept) == 2  # one row of b left unread: still kept
        assert [tuple(r) for r in a] == [(1,), (2,)]
        assert [tuple(r) for r in b.fetchall()] == [(9,)]
        assert mysql_patch._kept == {}
        assert [(s.resource, s.metrics.get("db.row_count")) for s in spans_named(test_spans)] == [
            ("SELECT id FROM rows3 WHERE id < 3 ORDER BY id", 2),
            ("SELECT 7 UNION SELECT 8 UNION SELECT 9", 3),
        ]
        for end in ("close", "garbage"):
            cur = connector.cursor()
            cur.execute("SELECT 1")
            assert len(mysql_patch._kept) == 1
            cur.fetchone()
            if end == "close":
                cur.close()
            else:
                del cur
            assert mysql_patch._kept == {}, end
        a.close()
        b.close()
    finally:
        other.close()


def test_threads_sharing_a_connection_or_with_their_own_get_their_own_spans(
    driver: Driver, conn: Any, mariadb: MariaDBInfo, test_spans: Any
) -> None:
    # Four threads take turns on one connection (a lock per query: the
    # drivers allow one result in flight on a connection), four more have a
    # connection each and run at once: each query's span has its own
    # statement and row count (mysql-connector: from the span kept for its
    # own cursor while the others keep theirs), and none is left kept.
    from contrib.mysql import patch as mysql_patch

    shared = threading.Lock()
    failures: list[BaseException] = []

    def work(n: int, c: Any, lock: Any) -> None:
        try:
            with lock:
                cur = c.cursor()
            sql = " UNION ALL ".join([f"SELECT {n}"] * n)  # n rows
            for i in range(20):
                with lock:
                    cur.execute(sql)
                    rows = cur.fetchall() if i % 2 else list(iter(cur.fetchone, None))
                assert [tuple(r) for r in rows] == [(n,)] * n
            with lock:
                cur.close()
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    own = [driver.connect(mariadb) for _ in range(4)]
    test_spans.reset()
    threads = [threading.Thread(target=work, args=(n, conn, shared)) for n in range(1, 5)]
    threads += [threading.Thread(target=work, args=(n, c, threading.Lock())) for n, c in zip(range(5, 9), own, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for c in own:
        c.close()
    assert failures == []
    spans = spans_named(test_spans)
    assert len(spans) == 8 * 20
    assert all(s.metrics["db.row_count"] == s.resource.count("SELECT") for s in spans)
    assert mysql_patch._kept == {}


@pytest.mark.parametrize("fetch_spans", [False, True])
def test_proxies_use_the_generic_lookup_and_stay_transparent(
    driver: Driver, conn: Any, test_spans: Any, monkeypatch: pytest.MonkeyPatch, fetch_spans: bool
) -> None:
    # The proxy types read attributes with object.__getattribute__ (wrapt's
    # is called through a method-wrapper, ≈ 0.8 k instructions more per
    # read); what wrapt's lookup adds, the wrapped object's __module__ and
    # __doc__, is kept, and the types' own names are unchanged.
    monkeypatch.setattr(config, "db_trace_fetch", fetch_spans)
    cur = conn.cursor()
    for proxy in (cur, conn):
        assert type(proxy).__getattribute__ is object.__getattribute__
        wrapped = proxy.__wrapped__
        assert (proxy.__module__, proxy.__doc__) == (wrapped.__module__, wrapped.__doc__)
        assert proxy.__class__ is type(wrapped)
        assert repr(type(proxy)) == f"<class '{type(proxy).__module__}.{type(proxy).__qualname__}'>"
        assert type(proxy).__module__.startswith("contrib.")
        with pytest.raises(AttributeError):
            proxy.no_such_attribute  # noqa: B018
    assert (TracedMySQLCursor.__doc__ or "").startswith("MySQL drivers' cursors also have ``callproc``")
    test_spans.reset()
    cur.execute("SELECT 1 UNION SELECT 2")
    assert cur.description[0][0] == "1"  # forwarded to the driver's cursor
    assert [tuple(r) for r in cur.fetchall()] == [(1,), (2,)]
    cur.close()
    spans = [s for s in spans_named(test_spans) if s.name == "mysql.query"]
    assert [(s.resource, s.metrics.get("db.row_count")) for s in spans] == [("SELECT 1 UNION SELECT 2", 2)]


def test_fetch_methods_pass_arguments_and_results_through(
    driver: Driver, conn: Any, table: str, test_spans: Any
) -> None:
    # fetch* are the proxy's own methods (cheaper than wrapt forwarding): same
    # rows and arguments as the driver's, no spans unless db_trace_fetch is on.
    cur = conn.cursor()
    cur.executemany(f"INSERT INTO {table} (id, name) VALUES (%s, %s)", [(i, f"n{i}") for i in range(1, 7)])
    test_spans.reset()
    cur.execute(f"SELECT id FROM {table} ORDER BY id")
    assert tuple(cur.fetchone()) == (1,)
    assert [tuple(r) for r in cur.fetchmany(2)] == [(2,), (3,)]
    assert [tuple(r) for r in cur.fetchmany(size=1)] == [(4,)]
    assert [tuple(r) for r in cur.fetchall()] == [(5,), (6,)]
    assert cur.fetchone() is None
    assert [s.name for s in test_spans.spans] == ["mysql.query"]
    # Assigning a fetch method sets it on the proxy, not on the driver's cursor.
    cur.fetchall = lambda: "replaced"
    assert cur.fetchall() == "replaced"
    assert "fetchall" not in vars(cur.__wrapped__)
    conn.rollback()


def test_cursor_context_manager_and_iteration(driver: Driver, conn: Any, table: str, test_spans: Any) -> None:
    with conn.cursor() as cur:
        assert issubclass(type(cur), TracedMySQLCursor)
        cur.executemany(f"INSERT INTO {table} (id, name) VALUES (%s, %s)", [(1, "a"), (2, "b")])
        test_spans.reset()
        cur.execute(f"SELECT id FROM {table} ORDER BY id")
        assert [tuple(row) for row in cur] == [(1,), (2,)]
        assert cur.rowcount == 2
        assert cur.description[0][0] == "id"
        assert spans_named(test_spans)[0].resource == f"SELECT id FROM {table} ORDER BY id"
    # Leaving the block closed the driver's cursor.
    with pytest.raises(driver.module.Error):
        cur.execute("SELECT 1")
    conn.rollback()


# Python calls of the integration's own code (contrib/, tracer/_errors.py)
# per query, once the cursor type's path is warm: (one cursor for every
# query, a cursor per query as `with conn.cursor() as cur:`). The core span
# and the writer are not counted (their own tests budget them).
# One cursor: execute (with _start's common case in its own frame), the
# count (_counted, or mysql-connector's _counted_or_kept, which keeps the
# span until fetchall ends it in its own frame), fetchall. A cursor per
# query adds cursor() and __enter__, and for mysql-connector __exit__ and
# __del__ (which end a still-pending span).
_CALL_BUDGET = {"pymysql": (3, 5), "mysqldb": (3, 5), "mysql": (3, 7)}


def _our_calls_per_query(run: Callable[[], None], n: int = 50) -> dict[str, float]:
    run()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        run()
    prof.disable()
    ours = (os.path.join(REPO, "contrib") + os.sep, os.path.join(REPO, "tracer", "_errors.py"))
    calls: dict[str, float] = {}
    for (path, _line, name), (_prim, ncalls, *_rest) in pstats.Stats(prof).stats.items():  # type: ignore[attr-defined]
        if path.startswith(ours[0]) or path == ours[1]:
            calls[name] = calls.get(name, 0) + ncalls / n
    return calls


def test_calls_our_code_adds_per_query(driver: Driver, conn: Any, test_spans: Any) -> None:
    cur = conn.cursor()

    def one_cursor() -> None:
        cur.execute("SELECT 1")
        cur.fetchall()

    def cursor_per_query() -> None:
        with conn.cursor() as c:
            c.execute("SELECT 1")
            c.fetchall()

    for run, budget in zip((one_cursor, cursor_per_query), _CALL_BUDGET[driver.keyword], strict=True):
        calls = _our_calls_per_query(run)
        pure = _dbapi._trace_root is None  # pure Python: the root span through _start, a call more
        assert sum(calls.values()) <= budget + pure, (run.__name__, calls)
    assert len(spans_named(test_spans)) == 2 * 51  # every query traced, warm-ups included
    cur.close()


def test_connection_context_manager(driver: Driver, mariadb: MariaDBInfo, test_spans: Any) -> None:
    with driver.connect(mariadb) as c:
        assert issubclass(type(c), TracedMySQLConnection)
        cur = c.cursor()
        cur.execute("SELECT 1")
        cur.fetchall()
        cur.close()
    assert [s.resource for s in spans_named(test_spans)] == ["SELECT 1"]


def test_queries_are_children_of_the_active_span(driver: Driver, conn: Any, test_spans: Any) -> None:
    cur = conn.cursor()
    test_spans.reset()
    with global_tracer.trace("web.request", service="web"):
        cur.execute("SELECT 1")
        cur.fetchall()
        cur.execute("SELECT 2")
        cur.fetchall()
    spans = [
        {"span_id": s.span_id, "parent_id": s.parent_id, "name": s.name, "service": s.service, "resource": s.resource, "start_ns": s.start_ns}
        for s in test_spans.spans
    ]
    assert render_tree(spans) == "\n".join(
        [
            "web.request web 'web.request'",
            "  mysql.query mysql 'SELECT 1'",
            "  mysql.query mysql 'SELECT 2'",
        ]
    )
    assert len({s.trace_id for s in test_spans.spans}) == 1


# -- configuration -------------------------------------------------------------------
def test_service_from_config(driver: Driver, mariadb: MariaDBInfo, test_spans: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "mysql_service", "orders-db")
    c = driver.connect(mariadb)
    try:
        cur = c.cursor()
        cur.execute("SELECT 1")
        cur.fetchall()
    finally:
        c.close()
    (span,) = spans_named(test_spans)
    assert span.service == "orders-db"
    assert span.meta["peer.service"] == mariadb.db


def test_fetch_spans_when_configured(driver: Driver, conn: Any, test_spans: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    cur = conn.cursor()
    cur.execute("SELECT 1")
    cur.fetchall()
    assert [s.name for s in test_spans.spans] == ["mysql.query"]
    monkeypatch.setattr(config, "db_trace_fetch", True)
    test_spans.reset()
    cur = conn.cursor()
    cur.execute("SELECT 1 UNION SELECT 2")
    assert tuple(cur.fetchone()) == (1,)
    assert [tuple(r) for r in cur.fetchall()] == [(2,)]
    # By start: mysql.connector's query span ends once its rows are read.
    assert [(s.name, s.resource) for s in sorted(test_spans.spans, key=lambda s: s.start_ns)] == [
        ("mysql.query", "SELECT 1 UNION SELECT 2"),
        ("mysql.query.fetchone", "SELECT 1 UNION SELECT 2"),
        ("mysql.query.fetchall", "SELECT 1 UNION SELECT 2"),
    ]


@pytest.mark.parametrize("mode", ["service", "full"])
def test_dbm_comment_reaches_the_server(driver: Driver, conn: Any, test_spans: Any, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    monkeypatch.setattr(config, "dbm_propagation", mode)
    monkeypatch.setattr(config, "env", "prod")
    monkeypatch.setattr(config, "version", "1.2 beta")
    sql = "SELECT INFO FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()"
    cur = conn.cursor()
    test_spans.reset()
    cur.execute(sql)
    seen = cur.fetchone()[0]
    if isinstance(seen, bytes):
        seen = seen.decode()
    (span,) = spans_named(test_spans)
    assert span.resource == sql
    base = f"dddbs='mysql',dde='prod',ddps='{global_tracer.service}',ddpv='1.2%20beta'"
    if mode == "service":
        assert seen == f"/*{base}*/ {sql}"
    else:
        ((trace, _),) = test_spans.raw
        flags = "01" if trace.priority > 0 else "00"
        assert seen == f"/*{base},traceparent='00-{span.trace_id:032x}-{span.span_id:016x}-{flags}'*/ {sql}"
        assert span.meta["_dd.dbm_trace_injected"] == "true"


def test_tracer_side_obfuscation(driver: Driver, conn: Any, table: str, test_spans: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "db_obfuscate", True)
    cur = conn.cursor()
    test_spans.reset()
    cur.execute(f"SELECT id FROM {table} WHERE id = 42 AND name = 'o''brien' OR id IN (1, 2, 3)")
    cur.fetchall()
    (span,) = spans_named(test_spans)
    assert span.resource == f"SELECT id FROM {table} WHERE id = ? AND name = ? OR id IN ( ? )"


# -- through a real receiver ------------------------------------------------------------
def test_spans_survive_the_wire(driver: Driver, conn: Any, mariadb: MariaDBInfo, traced: Any) -> None:
    cur = conn.cursor()
    with global_tracer.trace("web.request", service="web", resource="GET /users"):
        cur.execute("SELECT 1")
        cur.fetchall()
        cur.execute("SELECT %s AS v", ("secret-param",))
        cur.fetchall()
    assert global_tracer.flush(10)
    (row,) = traced.wait_traces(1, service="web")
    spans = traced.spans(row["trace_id"])
    tags = ("component", "span.kind", "db.system", "db.name", "db.user", "out.host", "network.destination.port", "peer.service", "_dd.measured")
    # Metrics come back as JSON numbers; whole floats print as ints here.
    text = re.sub(r"(port|measured)=(\d+)\.0\b", r"\1=\2", render_tree(spans, tags=tags))
    common = (
        f"component={driver.component} span.kind=client db.system=mysql db.name=testdb db.user=test "
        f"out.host=127.0.0.1 network.destination.port={mariadb.port} peer.service=testdb _dd.measured=1"
    )
    assert text == "\n".join(
        [
            "web.request web 'GET /users'",
            f"  mysql.query mysql 'SELECT ?' {common}",
            f"  mysql.query mysql 'SELECT ? AS v' {common}",
        ]
    )
    for span in spans:
        assert "secret-param" not in repr(span)
        if span["name"] == "mysql.query":
            assert span["type"] == "sql"


_FLASK_APP = """
import os
from flask import Flask
import {module}

app = Flask("users_app")
KW = dict(host="127.0.0.1", port=int(os.environ["T_PORT"]), user=os.environ["T_USER"],
          password=os.environ["T_PASSWORD"], database=os.environ["T_DB"])


@app.route("/users/<int:user_id>")
def get_user(user_id):
    conn = {connect}(**KW)
    try:
        cur = conn.cursor()
        cur.execute("SELECT * FROM users WHERE id = %s", (user_id,))
        row = cur.fetchone()
        cur.execute("SELECT COUNT(*) FROM users")
        total = cur.fetchone()[0]
        cur.close()
    finally:
        conn.close()
    return {{"user": list(row) if row else None, "total": total}}


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ["APP_PORT"]))
"""


@pytest.mark.slow
def test_flask_app_under_tracer_run_shows_obfuscated_sql_stats(
    driver: Driver, mariadb: MariaDBInfo, receiver: Any, tmp_path: Any
) -> None:
    setup = driver.connect(mariadb)
    cur = setup.cursor()
    cur.execute("DROP TABLE IF EXISTS users")
    cur.execute("CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(32))")
    cur.executemany("INSERT INTO users VALUES (%s, %s)", [(1, "ada"), (2, "bob"), (3, "cy")])
    setup.commit()
    setup.close()
    connect = {"pymysql": "pymysql.connect", "mysqldb": "MySQLdb.connect", "mysql": "mysql.connector.connect"}[driver.keyword]
    module = {"pymysql": "pymysql", "mysqldb": "MySQLdb", "mysql": "mysql.connector"}[driver.keyword]
    (tmp_path / "users_app.py").write_text(textwrap.dedent(_FLASK_APP.format(module=module, connect=connect)))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACER_", "DD_"))}
    env.update(
        PYTHONPATH=REPO,
        PYTHONUNBUFFERED="1",
        TRACER_AGENT_URL=receiver.url,
        TRACER_WRITER_INTERVAL="0.1",
        APP_PORT=str(port),
        T_PORT=str(mariadb.port),
        T_USER=mariadb.user,
        T_PASSWORD=mariadb.password,
        T_DB=mariadb.db,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "tracer.run", sys.executable, "users_app.py"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_port(port, timeout=20)
        for user_id in (1, 2, 3, 2):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/users/{user_id}", timeout=10) as resp:
                assert resp.status == 200
                assert b'"total":3' in resp.read().replace(b" ", b"")
        rows = receiver.wait_traces(4, timeout=15, service="users_app")
        spans = receiver.spans(rows[0]["trace_id"])
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        output = proc.communicate(timeout=10)[0]
    assert "Traceback" not in output, output
    # One request span; the view's two queries are its descendants.
    queries = [s for s in spans if s["name"] == "mysql.query"]
    (request,) = [s for s in spans if s["name"] == "flask.request"]
    assert request["resource"] == "GET /users/<int:user_id>"
    by_id = {s["span_id"]: s for s in spans}

    def ancestors(span: dict[str, Any]) -> list[str]:
        out = []
        while span["parent_id"] in by_id:
            span = by_id[span["parent_id"]]
            out.append(span["name"])
        return out

    assert [q["resource"] for q in sorted(queries, key=lambda q: q["start_ns"])] == [
        "SELECT * FROM users WHERE id = ?",
        "SELECT COUNT(*) FROM users",
    ]
    for q in queries:
        assert ancestors(q)[-1] == "flask.request"
        assert q["service"] == "mysql"
        assert q["meta"]["component"] == driver.component
    stats = {(r["service"], r["resource"]): r for r in receiver.stats()}
    by_user = stats[("mysql", "SELECT * FROM users WHERE id = ?")]
    assert by_user["hits"] == 4
    assert by_user["name"] == "mysql.query"
    assert 0 < by_user["p50_ns"] <= by_user["max_ns"]
    assert stats[("mysql", "SELECT COUNT(*) FROM users")]["hits"] == 4
    assert stats[("users_app", "GET /users/<int:user_id>")]["hits"] == 4


# -- the shared integration contract ------------------------------------------------------
_CONTRACT_CODE = '''
import os
def exercise():
    import {module}
    kw = dict(host="127.0.0.1", port=int(os.environ["T_PORT"]), user=os.environ["T_USER"],
              password=os.environ["T_PASSWORD"], database=os.environ["T_DB"])
    conn = {connect}(**kw)
    cur = conn.cursor()
    out = []
    cur.execute("SELECT 1 + 1")
    out.append([list(r) for r in cur.fetchall()])
    try:
        cur.execute("SELEC nothing")
    except Exception as exc:
        out.append([type(exc).__name__, exc.args[0]])
    conn.commit()
    conn.close()
    return out
'''


class _MySQLContract(IntegrationContract):
    span_name = "mysql.query"
    spans_per_exercise = 2
    connect = ""

    @pytest.fixture(autouse=True)
    def _server(self, mariadb: MariaDBInfo) -> None:
        self._info = mariadb

    def subprocess_env(self) -> dict[str, str]:
        info = self._info
        return {"T_PORT": str(info.port), "T_USER": info.user, "T_PASSWORD": info.password, "T_DB": info.db}


class TestPyMySQLContract(_MySQLContract):
    integration = "pymysql"
    module = "pymysql"
    exercise_code = _CONTRACT_CODE.format(module="pymysql", connect="pymysql.connect")


class TestMySQLdbContract(_MySQLContract):
    integration = "mysqldb"
    module = "MySQLdb"
    exercise_code = _CONTRACT_CODE.format(module="MySQLdb", connect="MySQLdb.connect")


class TestMySQLConnectorContract(_MySQLContract):
    integration = "mysql"
    module = "mysql.connector"
    exercise_code = _CONTRACT_CODE.format(module="mysql.connector", connect="mysql.connector.connect")
