"""mysql-connector-python ≥ 8.0: ``mysql.connector.connect`` / ``Connect`` → traced connections."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from contrib import _dbapi
from tracer._errors import guarded_call, internal_error
from tracer._patching import Target, integration_functions

#: The spans an unbuffered cursor keeps until its rows are read, by ``id()``
#: of the driver's cursor: ``(cursor, span, that id)``; the span's end time
#: is recorded at ``execute``'s end (``span._mark_end()``). A module dict rather than a proxy attribute: a read of
#: a wrapt proxy's attribute costs ≈ 0.4 k instructions (1.2 k before
#: ``_dbapi._Proxy``), a write ≈ 0.7 k, a dict lookup ≈ 0.1 k (``id()``
#: ≈ 0.2 k: an audit event), and the common ``execute(); fetchall()`` did six. The
#: entry holds the driver's cursor, so its id cannot be reused while the
#: entry exists; the proxy removes it when the span ends, at its next
#: statement, ``close``, ``__exit__`` or collection.
_kept: dict[int, tuple[Any, Any, int]] = {}


class TracedConnectorCursor(_dbapi.TracedMySQLCursor):
    """mysql-connector's default cursor is unbuffered: after a ``SELECT``
    its ``rowcount`` is -1 until the rows are read (PyMySQL's and
    mysqlclient's default cursors are buffered and know it at once). So the
    query span keeps ``execute``'s duration but is handed to its trace only
    when the rows are read to the end (then with ``db.row_count``), or, with
    no count, when the cursor runs its next statement, is closed, or is
    garbage-collected. Costs one dict lookup per fetch while spans are kept
    (``_kept``), a truth test otherwise."""

    def _keep_until_read(self, cursor: Any, span: Any) -> bool:
        key = id(cursor)
        unread = getattr(cursor, "_have_unread_result", None)
        if key in _kept or unread is None or not unread():
            return False
        span._mark_end()
        _kept[key] = (cursor, span, key)
        return True

    defer_finish = _keep_until_read

    def _settle(self, read_to_end: bool) -> None:
        """End the kept span, if any; ``read_to_end``: only if no row is left unread."""
        cursor = self.__wrapped__
        kept = _kept.get(id(cursor))
        if kept is not None:
            guarded_call("mysql.settle", _end_pending, cursor, kept, read_to_end, False)

    execute = _dbapi.execute_method(kept=_kept)

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        self._settle(False)
        return super().executemany(*args, **kwargs)

    def callproc(self, *args: Any, **kwargs: Any) -> Any:
        self._settle(False)
        return super().callproc(*args, **kwargs)

    # The driver's fetch* straight from the proxy (not through super(): a
    # frame less per read); with db_trace_fetch the mixin above still wraps them.
    def fetchone(self, *args: Any, **kwargs: Any) -> Any:
        cursor = self.__wrapped__
        row = cursor.fetchone(*args, **kwargs)
        if _kept and id(cursor) in _kept:
            self._settle(True)
        return row

    def fetchmany(self, *args: Any, **kwargs: Any) -> Any:
        cursor = self.__wrapped__
        rows = cursor.fetchmany(*args, **kwargs)
        if _kept and id(cursor) in _kept:
            self._settle(True)
        return rows

    def fetchall(self, *args: Any, **kwargs: Any) -> Any:
        cursor = self.__wrapped__
        rows = cursor.fetchall(*args, **kwargs)
        if _kept:
            kept = _kept.get(id(cursor))
            if kept is not None:
                # fetchall read every row: no need to ask the driver (nor for _settle's call)
                try:
                    _end_pending(cursor, kept, True, True)
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


def _end_pending(cursor: Any, kept: tuple[Any, Any, int], read_to_end: bool, drained: bool) -> None:
    """End the ``kept`` span of the driver's ``cursor``; ``drained``: the
    caller knows no row is left unread (``fetchall``)."""
    unread = False if drained else cursor._have_unread_result()
    if unread and read_to_end:
        return
    _, span, key = kept
    _kept.pop(key, None)
    rowcount = cursor.rowcount
    if not unread and type(rowcount) is int and rowcount >= 0:
        span.metrics["db.row_count"] = rowcount
    span.finish()  # at the end _keep_until_read marked


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
