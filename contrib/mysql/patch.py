"""mysql-connector-python ≥ 8.0: ``mysql.connector.connect`` / ``Connect`` → traced connections."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from contrib import _dbapi
from tracer._errors import internal_error
from tracer._patching import Target, integration_functions

#: The spans an unbuffered cursor keeps until its rows are read, by the
#: driver's cursor (the key itself: its hash is the object's address, read
#: in C, where ``id()`` raises an audit event, ≈ 0.3 k instructions a call);
#: the span's end time is recorded at ``execute``'s end (``span._mark_end()``).
#: A module dict rather than a proxy attribute: a read of a wrapt proxy's
#: attribute costs ≈ 0.4 k instructions (1.2 k before ``_dbapi._Proxy``), a
#: write ≈ 0.7 k, a dict lookup ≈ 0.1 k. The key holds the driver's cursor;
#: the proxy removes the entry when the span ends, at its next statement,
#: ``close``, ``__exit__`` or collection. Only cursor types with the
#: identity hash (``object.__hash__``: every mysql-connector cursor) keep spans.
_kept: dict[Any, Any] = {}


# How a driver cursor type is read, learnt once per type (``_kind``): NO, it
# keeps no span (no ``_have_unread_result``: the C extension's cursors; or a
# hash other than the object's own); STOCK, it reads the unread result and
# the row count as mysql-connector's ``MySQLCursor`` does, so they are read
# here where those methods read them, without their frames (≈ 2.5 k
# instructions a query): the cursor's ``_rowcount`` and its connection's
# ``_unread_result`` (behind the ``unread_result`` property, which no
# connection class of the driver overrides; ``connect()`` returns only
# those); OTHER, through its methods.
NO, STOCK, OTHER = 0, 1, 2
_kinds: dict[type, int] = {}
_IDENTITY_HASH = object.__hash__


def _kind(cls: type) -> int:
    """Learn how the driver cursor type ``cls`` is read (one entry per
    class: a program's cursor classes are few and live as long as it)."""
    unread = getattr(cls, "_have_unread_result", None)
    if unread is None or cls.__hash__ is not _IDENTITY_HASH:
        kind = NO
    else:
        from mysql.connector.cursor import MySQLCursor

        stock = unread is MySQLCursor._have_unread_result and getattr(cls, "rowcount", None) is MySQLCursor.rowcount
        kind = STOCK if stock else OTHER
    _kinds[cls] = kind
    return kind


def _counted_or_kept(cursor: Any, span: Any) -> bool:
    """The cursor type's ``counted_or_kept`` (see ``_dbapi.TracedCursor``):
    the row count when the driver knows it, else keep ``span`` (its end
    marked now) until the driver's ``cursor`` has its rows read."""
    try:
        kind = _kinds.get(type(cursor))
        if kind == STOCK:  # MySQLCursor's rowcount and _have_unread_result, read where they read
            rowcount = cursor._rowcount  # an int: -1 or a count
            if rowcount >= 0:
                span.metrics["db.row_count"] = rowcount
                return False
            try:
                unread = cursor._connection._unread_result
            except AttributeError:
                unread = False
        else:
            if kind is None:
                kind = _kind(type(cursor))
            rowcount = cursor.rowcount
            if type(rowcount) is int and 0 <= rowcount < _dbapi._MAX_ROWS:
                span.metrics["db.row_count"] = rowcount
                return False
            unread = kind != NO and cursor._have_unread_result()
        if not unread or cursor in _kept:
            return False
        span._mark_end()
        _kept[cursor] = span
        return True
    except Exception:
        internal_error("dbapi.rowcount")  # the span still ends: an unfinished one loses its trace
        return False


def _settle_kept(cursor: Any, read_to_end: bool) -> None:
    """End the span kept for the driver's ``cursor``, if any (guarded);
    ``read_to_end``: only if no row is left unread."""
    span = _kept_span(cursor)
    if span is not None:
        try:
            _end_pending(cursor, span, read_to_end)
        except Exception:
            internal_error("mysql.settle")


def _kept_span(cursor: Any) -> Any:
    """The span kept for the driver's ``cursor``, or None."""
    try:
        return _kept.get(cursor)
    except TypeError:  # an unhashable cursor type (its own __eq__): it keeps no span
        return None


def _end_pending(cursor: Any, span: Any, read_to_end: bool) -> None:
    """End the kept ``span`` of the driver's ``cursor`` unless rows are left
    and ``read_to_end``; with ``db.row_count`` only if none is left."""
    unread = cursor._have_unread_result()
    if unread and read_to_end:
        return
    rowcount = cursor.rowcount
    _kept.pop(cursor, None)
    if not unread and type(rowcount) is int and rowcount >= 0:
        span.metrics["db.row_count"] = rowcount
    span.finish()  # at the end _counted_or_kept marked


class TracedConnectorCursor(_dbapi.TracedMySQLCursor):
    """mysql-connector's default cursor is unbuffered: after a ``SELECT``
    its ``rowcount`` is -1 until the rows are read (PyMySQL's and
    mysqlclient's default cursors are buffered and know it at once). So the
    query span keeps ``execute``'s duration but is handed to its trace only
    when the rows are read to the end (then with ``db.row_count``), or, with
    no count, when the cursor runs its next statement, is closed, or is
    garbage-collected. Costs one dict lookup per fetch while spans are kept
    (``_kept``), a truth test otherwise."""

    def _settle(self, read_to_end: bool) -> None:
        """End the kept span, if any; ``read_to_end``: only if no row is left unread."""
        _settle_kept(self.__wrapped__, read_to_end)

    counted_or_kept = staticmethod(_counted_or_kept)
    execute = _dbapi.execute_method(kept=_kept, counted_or_kept=_counted_or_kept)

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        self._settle(False)
        return super().executemany(*args, **kwargs)

    def callproc(self, *args: Any, **kwargs: Any) -> Any:
        self._settle(False)
        return super().callproc(*args, **kwargs)

    # The driver's fetch* straight from the proxy (not through super(): a
    # frame less per read); with db_trace_fetch the mixin above still wraps
    # them. One lookup of ``_kept`` (none while it is empty) per fetch.
    def fetchone(self, *args: Any, **kwargs: Any) -> Any:
        cursor = self.__wrapped__
        row = cursor.fetchone(*args, **kwargs)
        if _kept:
            _settle_kept(cursor, True)
        return row

    def fetchmany(self, *args: Any, **kwargs: Any) -> Any:
        cursor = self.__wrapped__
        rows = cursor.fetchmany(*args, **kwargs)
        if _kept:
            _settle_kept(cursor, True)
        return rows

    def fetchall(self, *args: Any, **kwargs: Any) -> Any:
        cursor = self.__wrapped__
        rows = cursor.fetchall(*args, **kwargs)
        if _kept:
            # Every row read: a STOCK cursor's count is read here, in this frame.
            try:
                span = _kept.get(cursor)
            except TypeError:  # an unhashable cursor type: it keeps no span
                span = None
            if span is not None:
                try:
                    if _kinds.get(type(cursor)) == STOCK:
                        rowcount = cursor._rowcount
                        _kept.pop(cursor, None)  # after the count: a failed read leaves the span to close()
                        if rowcount >= 0:  # -1: no rows were left to read (another statement took them)
                            span.metrics["db.row_count"] = rowcount
                        span.finish()  # at the end _counted_or_kept marked
                    else:
                        _end_pending(cursor, span, False)
                except Exception:
                    internal_error("mysql.settle")
        return rows

    def __iter__(self) -> Iterator[Any]:
        # The driver's own iteration is iter(self.fetchone, None) on itself,
        # out of the proxy's reach; this one reads the same rows, without
        # fetch spans, and ends the query span after the last.
        yield from iter(self.__wrapped__.fetchone, None)
        self._settle(True)

    # Run for every cursor (a web app opens one per request), mostly with
    # nothing kept: the truth test first, without _settle's lookup and frame.
    def close(self, *args: Any, **kwargs: Any) -> Any:
        if _kept:
            self._settle(False)
        return self.__wrapped__.close(*args, **kwargs)

    def __exit__(self, *exc_info: Any) -> Any:
        if _kept:
            self._settle(False)
        return self.__wrapped__.__exit__(*exc_info)

    def __del__(self) -> None:
        if _kept:  # None once the module is torn down at exit
            self._settle(False)


class TracedConnectorConnection(_dbapi.TracedMySQLConnection):
    cursor_types = (TracedConnectorCursor, _dbapi.fetch_variant(TracedConnectorCursor))


def _proxy(conn: Any, args: tuple, kwargs: dict) -> Any:
    # Not conn.database: that property runs "SELECT DATABASE()" on the server.
    return _dbapi.traced_mysql_connection(
        conn,
        component="mysql-connector",
        db=kwargs.get("database") or kwargs.get("db") or getattr(conn, "_database", None),
        user=getattr(conn, "user", None) or kwargs.get("user"),
        host=getattr(conn, "server_host", None) or kwargs.get("host"),
        port=getattr(conn, "server_port", None) or kwargs.get("port"),
        sql_kwarg="operation",
        proxy_type=TracedConnectorConnection,
    )


_wrapper = _dbapi.connect_wrapper(_proxy)
TARGETS = (
    Target("mysql.connector", "connect", _wrapper),
    Target("mysql.connector", "Connect", _wrapper),
)


patch, unpatch = integration_functions("mysql")
