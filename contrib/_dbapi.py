"""Shared DB-API 2.0 tracing: connection and cursor proxies for SQL drivers.

A driver integration (``contrib/mysql``, ``contrib/pymysql``,
``contrib/mysqldb``, ``contrib/sqlite3``) wraps its ``connect()`` functions
with :func:`patch_targets`; each call returns a :class:`TracedConnection`
(a ``wrapt.ObjectProxy``) whose ``cursor()`` returns a :class:`TracedCursor`.
Everything not traced here is forwarded by the proxy to the driver's object,
and ``isinstance(proxy, DriverClass)`` passes because the proxy forwards
``__class__``. What cannot be made transparent: ``type(proxy)`` is the proxy
type, and C code that type-checks its argument (``sqlite3.Cursor(conn)``)
needs the real object, which is ``proxy.__wrapped__``. ``cursor.connection``
is the driver's own (untraced) connection.

Per connection, :class:`DBInfo` holds everything that is the same for all of
its spans (names, service, tags), built once at ``connect()`` time; the
per-query work is one span, two ``dict.update`` calls and a ``rowcount``
read. Configuration read at ``connect()``: the service (``mysql_service`` /
``sqlite_service``) and ``db_trace_fetch`` (at ``cursor()``); read per query:
``dbm_propagation`` and ``db_obfuscate``.

Threading: proxies are used on the application's threads, exactly as the
driver objects are; they add no locking. Wrappers follow the project's
shape: guarded pre-work, the driver call unguarded (its return value and
exceptions pass through untouched), guarded post-work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ClassVar
from urllib.parse import quote

import wrapt

from tracer import tracer as _tracer
from tracer._errors import Start, finish_span, guarded_wrapper, internal_error
from tracer._tracer import _RootTrace, _trace_root
from tracer.config import config
from tracer.context import get_active, unfinished

log = logging.getLogger("tracer")

# rowcount beyond this is a C driver's (my_ulonglong)-1 meaning "unknown".
_MAX_ROWS = 1 << 63


class DBInfo:
    """What every span of one connection shares; built once per connection.

    ``meta`` / ``metrics`` are copied onto each span; never mutate them after
    the connection is created (spans of other threads copy them too)."""

    __slots__ = (
        "query_name",
        "commit_name",
        "rollback_name",
        "service",
        "meta",
        "metrics",
        "sql_kwarg",
        "dbm",
    )

    def __init__(
        self,
        prefix: str,
        service: str,
        meta: dict[str, str],
        metrics: dict[str, float],
        sql_kwarg: str | None,
        dbm: bool,
    ) -> None:
        self.query_name = prefix + ".query"
        self.commit_name = prefix + ".connection.commit"
        self.rollback_name = prefix + ".connection.rollback"
        self.service = service
        self.meta = meta
        self.metrics = metrics
        self.sql_kwarg = sql_kwarg  # the keyword name of the SQL argument, for execute(query=...)
        self.dbm = dbm  # whether SQL comment propagation applies (a server-side database)


def make_info(
    *,
    prefix: str,
    system: str,
    component: str,
    service: str,
    db: Any = None,
    user: Any = None,
    host: Any = None,
    port: Any = None,
    sql_kwarg: str | None = None,
    dbm: bool = False,
) -> DBInfo:
    """Build the per-connection tags; empty values are left out."""
    meta = {"component": component, "span.kind": "client", "db.system": system}
    db_name = _text(db) if db else None
    if db_name:
        meta["db.name"] = db_name
        meta["peer.service"] = db_name
    if user:
        meta["db.user"] = _text(user)
    if host:
        meta["out.host"] = _text(host)
    metrics: dict[str, float] = {"_dd.measured": 1}
    if port:
        try:
            metrics["network.destination.port"] = int(port)
        except (TypeError, ValueError):
            pass
    return DBInfo(prefix, service, meta, metrics, sql_kwarg, dbm)


def _text(value: Any) -> str:
    if type(value) is str:
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


# -- span helpers (hot path) --------------------------------------------------
def _start(info: DBInfo, name: str, sql: Any) -> Any:
    if type(sql) is not str:
        sql = _text(sql) if sql is not None else name
    resource = obfuscate(sql) if config.db_obfuscate else sql
    parent = get_active()
    if parent is not None and parent.duration_ns is not None:
        parent = unfinished(parent)  # a finished span reads as its nearest unfinished ancestor
    if parent is None and _trace_root is not None:
        # A query outside any request is a one-span trace: its root is built
        # in C, as start_span() would, without that call's Python frame, and
        # with the connection's tags copied in (no two dict.update calls).
        service = info.service or _tracer.service
        return _trace_root(_RootTrace, _tracer._buffer, name, service, resource, "sql", False, None, info.meta, info.metrics)
    span = _tracer.start_span(name, parent, info.service, resource, "sql")
    span.meta.update(info.meta)
    span.metrics.update(info.metrics)
    return span


def query_finish(proxy: Any, span: Any, result: Any, exc: BaseException | None) -> Any:
    """``finish`` of the query templates: the driver's ``rowcount`` (when it
    knows one) as ``db.row_count``, then the span's end."""
    if exc is not None:
        span.set_exc_info(type(exc), exc, exc.__traceback__)
    elif (type(proxy).counted_or_kept or _counted)(proxy.__wrapped__, span):
        return result  # the cursor ends the span once its rows are read
    span.finish()
    return result


def _counted(cursor: Any, span: Any) -> bool:
    """A cursor type's ``counted_or_kept`` by default: the driver's
    ``rowcount`` (when it knows one) as ``db.row_count``; never keeps the span."""
    try:
        rowcount = cursor.rowcount
        if type(rowcount) is int and 0 <= rowcount < _MAX_ROWS:
            span.metrics["db.row_count"] = rowcount
    except Exception:
        internal_error("dbapi.rowcount")  # the span still ends: an unfinished one loses its trace
    return False


def execute_method(
    *, kept: dict[Any, Any] | None = None, counted_or_kept: Callable[[Any, Any], bool] | None = None
) -> Callable[..., Any]:
    """A traced cursor type's ``execute``, the hottest call: guarded_wrapper's
    shape written out in one frame, with its guarantee and place names
    (``dbapi.execute``, ``dbapi.execute.finish``, ``dbapi.rowcount``).
    ``counted_or_kept``: the cursor type's (default :func:`_counted`).
    ``kept``: the cursor type keeps spans (``counted_or_kept``) in this
    dict, keyed by the driver's cursor, and ends one
    (``_settle(False)``) before the next statement; an empty dict costs one
    truth test. Every read of a proxy attribute costs ≈ 0.4 k instructions
    (a wrapt proxy's attribute lookup is never specialised; see
    :class:`_Proxy`), so the path reads one."""

    def execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        wrapped = self.__wrapped__
        try:
            if kept:
                try:
                    pending = wrapped in kept
                except TypeError:  # an unhashable cursor type: it keeps no span
                    pending = False
                if pending:
                    self._settle(False)
            info = self._self_info
            sql = args[0] if args else kwargs.get(info.sql_kwarg or "")
            if type(sql) is str and _trace_root is not None and not config.db_obfuscate and get_active() is None:
                # _start's common case, without its frame: a query outside any
                # request, a one-span trace whose root is built in C.
                service = info.service or _tracer.service
                span = _trace_root(_RootTrace, _tracer._buffer, info.query_name, service, sql, "sql", False, None, info.meta, info.metrics)
            else:
                span = _start(info, info.query_name, sql)
            if info.dbm and config.dbm_propagation != "disabled":
                args, kwargs = _with_comment(info, span, args, kwargs)
        except Exception:
            internal_error("dbapi.execute")
            result = wrapped.execute(*args, **kwargs)
            return self if result is wrapped else result
        try:
            result = wrapped.execute(*args, **kwargs)
        except BaseException as exc:
            try:
                query_finish(self, span, None, exc)
            except Exception:
                internal_error("dbapi.execute.finish")
            raise
        try:
            if not (counted_or_kept or _counted)(wrapped, span):
                span.finish()
        except Exception:
            internal_error("dbapi.execute.finish")
        return self if result is wrapped else result

    return execute


def statement_start(sql_kwarg: str) -> Start:
    """``start`` of a traced cursor call (other than ``execute``, which has
    its own) whose first argument, or keyword ``sql_kwarg``, is the statement."""

    def start(proxy: Any, args: tuple, kwargs: dict) -> tuple[Any, tuple, dict]:
        info = proxy._self_info
        return _start(info, info.query_name, args[0] if args else kwargs.get(sql_kwarg)), args, kwargs

    return start


def _executemany_start(proxy: Any, args: tuple, kwargs: dict) -> tuple[Any, tuple, dict]:
    info = proxy._self_info
    span = _start(info, info.query_name, _sql_arg(info, args, kwargs))
    # No DBM comment: it would defeat the drivers' multi-row INSERT rewrite.
    span.meta["sql.executemany"] = "true"
    return span, args, kwargs


_EXECUTEMANY = guarded_wrapper("dbapi.executemany", _executemany_start, query_finish)


def traced_call(proxy: Any, template: Callable[..., Any], method: str, args: tuple, kwargs: dict) -> Any:
    """``proxy.__wrapped__.<method>(*args, **kwargs)`` through ``template``
    (a :func:`guarded_wrapper`); a driver method that returns its own cursor
    (sqlite3) returns the proxy instead."""
    wrapped = proxy.__wrapped__
    result = template(getattr(wrapped, method), proxy, args, kwargs)
    return proxy if result is wrapped else result


def _sql_arg(info: DBInfo, args: tuple, kwargs: dict) -> Any:
    if args:
        return args[0]
    return kwargs.get(info.sql_kwarg) if info.sql_kwarg else None


# -- DBM comments (sqlcommenter format) -----------------------------------------
_dbm_base_cache: dict[tuple, str] = {}


def _quote(value: str) -> str:
    # sqlcommenter URL-encodes values; with safe="" that also encodes "'" and
    # "*/", so a value can never end the comment early.
    return quote(value, safe="")


def dbm_comment(span: Any, db_service: str, mode: str) -> str:
    """``/*dddbs='…',dde='…',ddps='…',ddpv='…'[,traceparent='…']*/`` for
    ``mode`` ``service`` or ``full``; keys sorted as sqlcommenter does. In
    ``full`` mode the trace's sampling decision is made now (as for any
    propagation) so the ``traceparent`` flags are final."""
    key = (db_service, config.env, _tracer.service, config.version)
    base = _dbm_base_cache.get(key)
    if base is None:
        pairs = [("dddbs", db_service), ("dde", config.env), ("ddps", _tracer.service), ("ddpv", config.version)]
        base = ",".join(f"{k}='{_quote(v)}'" for k, v in pairs if v)
        if len(_dbm_base_cache) > 64:
            _dbm_base_cache.clear()
        _dbm_base_cache[key] = base
    if mode != "full":
        return f"/*{base}*/ "
    trace = span._trace
    if trace.priority is None:
        _tracer.sampler.decide(trace, trace.root or span)
    flags = "01" if (trace.priority or 0) > 0 else "00"
    span.meta["_dd.dbm_trace_injected"] = "true"
    traceparent = f"00-{span.trace_id:032x}-{span.span_id:016x}-{flags}"
    sep = "," if base else ""
    return f"/*{base}{sep}traceparent='{traceparent}'*/ "


def _with_comment(info: DBInfo, span: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    mode = config.dbm_propagation
    if mode == "disabled" or not info.dbm:
        return args, kwargs
    if args:
        sql = args[0]
        if type(sql) is str:
            return (dbm_comment(span, info.service, mode) + sql,) + args[1:], kwargs
    elif info.sql_kwarg and type(kwargs.get(info.sql_kwarg)) is str:
        kwargs = dict(kwargs)
        kwargs[info.sql_kwarg] = dbm_comment(span, info.service, mode) + kwargs[info.sql_kwarg]
    return args, kwargs


# -- tracer-side obfuscation (opt-in) -----------------------------------------------
# The receiver's obfuscator (the leaf package sql_obfuscation, stdlib only,
# shipped in the same distribution), so both sides agree. Imported on first
# use: only apps with TRACER_DB_OBFUSCATE on pay for it.
_obfuscated: dict[str, str] = {}
_OBFUSCATED_MAX = 2048
_impl: Callable[[str], str] | None = None


def obfuscate(sql: str) -> str:
    """The SQL with literals replaced by ``?``, cached per statement (apps
    send the same few statements over and over). Only called when
    ``db_obfuscate`` is on: for users whose receiver does not obfuscate."""
    global _impl
    found = _obfuscated.get(sql)
    if found is not None:
        return found
    if _impl is None:
        from sql_obfuscation import obfuscate_sql

        _impl = obfuscate_sql
    out = _impl(sql)
    if len(_obfuscated) >= _OBFUSCATED_MAX:
        _obfuscated.clear()
    _obfuscated[sql] = out
    return out


# -- proxies ----------------------------------------------------------------------
class _Proxy(wrapt.ObjectProxy):
    """``wrapt.ObjectProxy`` with the generic attribute lookup.

    A Python subclass of wrapt's proxy gets ``slot_tp_getattr_hook`` (wrapt's
    type has a ``__getattr__``), which calls wrapt's ``__getattribute__``
    through a method-wrapper made and freed on every read: ≈ 1.2 k
    instructions per attribute or method read on the proxy
    (``cursor.execute``, ``self._self_info``, ``cursor.fetchall``: three per
    query). With ``object.__getattribute__`` the hook runs the generic
    lookup itself, then wrapt's ``__getattr__`` (which forwards to the
    wrapped object) for a name the proxy does not have: ≈ 0.4 k. What
    wrapt's lookup does besides, the wrapped object's ``__module__`` and
    ``__doc__``, the generic one finds too: wrapt's ``__init__`` copies both
    into the proxy's own dict (and its ``__setattr__`` keeps them current)."""

    __getattribute__ = object.__getattribute__


class TracedCursor(_Proxy):
    """A driver cursor whose ``execute``/``executemany`` make query spans.

    Per query, everything here is on the application's critical path, so the
    path is kept short: the bound driver method is passed down (no lookup by
    name), the proxy's own attributes are read once each (≈ 0.4 k
    instructions a read, see :class:`_Proxy`), and ``fetch*`` are methods of the proxy
    rather than forwarded (see below)."""

    # No __init__ of its own: TracedConnection.cursor() builds it with
    # wrapt's (C) one and sets ``_self_info`` (the connection's DBInfo)
    # after, a Python frame and a super() call less per cursor.
    _self_info: DBInfo

    #: ``counted_or_kept(cursor, span) -> bool`` (``cursor``: the driver's;
    #: a staticmethod, given to ``execute_method`` too; None: :func:`_counted`),
    #: run after a query: the row count as ``db.row_count`` when the driver
    #: knows it; True if the cursor keeps ``span`` and ends it later
    #: (contrib/mysql's streaming cursor), False: end it now. It records its
    #: own errors (place ``dbapi.rowcount``) and then returns False.
    counted_or_kept: ClassVar[Callable[..., bool] | None] = None

    execute = execute_method()

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        return traced_call(self, _EXECUTEMANY, "executemany", args, kwargs)

    # Forwarded by wrapt, ``cursor.fetchall`` costs ~0.45 µs (the proxy's own
    # lookup fails, raising AttributeError, before ``__getattr__`` runs); as
    # methods here, ~0.3 µs a call. Assigning ``cursor.fetchall = …`` still
    # works: wrapt stores names the proxy type has on the proxy itself.
    def fetchone(self, *args: Any, **kwargs: Any) -> Any:
        return self.__wrapped__.fetchone(*args, **kwargs)

    def fetchmany(self, *args: Any, **kwargs: Any) -> Any:
        return self.__wrapped__.fetchmany(*args, **kwargs)

    def fetchall(self, *args: Any, **kwargs: Any) -> Any:
        return self.__wrapped__.fetchall(*args, **kwargs)

    def __enter__(self) -> Any:
        wrapped = self.__wrapped__
        result = wrapped.__enter__()
        return self if result is wrapped else result


class _FetchTracing:
    """Mixin for cursors created while ``db_trace_fetch`` is on: ``fetch*``
    calls get spans named ``<query name>.<method>``, resource the last SQL."""

    _self_info: DBInfo
    __wrapped__: Any

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        self._self_last_sql = _sql_arg(self._self_info, args, kwargs)
        return super().execute(*args, **kwargs)  # type: ignore[misc]

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        self._self_last_sql = _sql_arg(self._self_info, args, kwargs)
        return super().executemany(*args, **kwargs)  # type: ignore[misc]

    # Through super(): a cursor type below this mixin sees the fetch too.
    def fetchone(self, *args: Any, **kwargs: Any) -> Any:
        return _FETCH["fetchone"](super().fetchone, self, args, kwargs)  # type: ignore[misc]

    def fetchmany(self, *args: Any, **kwargs: Any) -> Any:
        return _FETCH["fetchmany"](super().fetchmany, self, args, kwargs)  # type: ignore[misc]

    def fetchall(self, *args: Any, **kwargs: Any) -> Any:
        return _FETCH["fetchall"](super().fetchall, self, args, kwargs)  # type: ignore[misc]


def _fetch_start(method: str) -> Start:
    def start(proxy: Any, args: tuple, kwargs: dict) -> tuple[Any, tuple, dict]:
        info = proxy._self_info
        return _start(info, f"{info.query_name}.{method}", getattr(proxy, "_self_last_sql", None)), args, kwargs

    return start


_FETCH = {m: guarded_wrapper("dbapi." + m, _fetch_start(m), query_finish) for m in ("fetchone", "fetchmany", "fetchall")}


def fetch_variant(cursor_type: type) -> type:
    """The ``fetch*``-tracing variant of a cursor proxy type."""
    return type("Fetch" + cursor_type.__name__, (_FetchTracing, cursor_type), {})


class TracedConnection(_Proxy):
    """A driver connection whose ``cursor()`` returns traced cursors and whose
    ``commit``/``rollback`` make spans. Subclasses name their cursor proxy
    types in ``cursor_types = (plain, with fetch spans)``."""

    cursor_types: tuple[type, type]

    def __init__(self, conn: Any, info: DBInfo) -> None:
        super().__init__(conn)
        self._self_info = info

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        # guarded_wrapper's shape in one frame (a web app opens a cursor per
        # request): the driver's call unguarded, then the proxy, guarded
        # (place ``dbapi.cursor.finish``); a failure returns the driver's cursor.
        cursor = self.__wrapped__.cursor(*args, **kwargs)
        try:
            proxy = type(self).cursor_types[1 if config.db_trace_fetch else 0](cursor)
            proxy._self_info = self._self_info
            return proxy
        except Exception:
            internal_error("dbapi.cursor.finish")
            return cursor

    def commit(self, *args: Any, **kwargs: Any) -> Any:
        return _COMMIT(self.__wrapped__.commit, self, args, kwargs)

    def rollback(self, *args: Any, **kwargs: Any) -> Any:
        return _ROLLBACK(self.__wrapped__.rollback, self, args, kwargs)

    def __enter__(self) -> Any:
        result = self.__wrapped__.__enter__()
        return self if result is self.__wrapped__ else result


TracedConnection.cursor_types = (TracedCursor, fetch_variant(TracedCursor))


def _transaction_start(attr: str) -> Start:
    def start(proxy: Any, args: tuple, kwargs: dict) -> tuple[Any, tuple, dict]:
        name = getattr(proxy._self_info, attr)
        return _start(proxy._self_info, name, name), args, kwargs

    return start


_COMMIT = guarded_wrapper("dbapi.commit", _transaction_start("commit_name"), finish_span)
_ROLLBACK = guarded_wrapper("dbapi.rollback", _transaction_start("rollback_name"), finish_span)


class TracedMySQLCursor(TracedCursor):
    """MySQL drivers' cursors also have ``callproc`` (resource: the procedure name)."""

    def callproc(self, *args: Any, **kwargs: Any) -> Any:
        return traced_call(self, _CALLPROC, "callproc", args, kwargs)


_CALLPROC = guarded_wrapper("dbapi.callproc", statement_start("procname"), query_finish)


class TracedMySQLConnection(TracedConnection):
    cursor_types = (TracedMySQLCursor, fetch_variant(TracedMySQLCursor))


def traced_mysql_connection(
    conn: Any,
    *,
    component: str,
    db: Any,
    user: Any,
    host: Any,
    port: Any,
    sql_kwarg: str = "query",
    proxy_type: type[TracedMySQLConnection] = TracedMySQLConnection,
) -> TracedMySQLConnection:
    """``conn`` as a traced connection (``proxy_type``) with what every MySQL
    driver shares: ``mysql.*`` span names, ``db.system=mysql``, the
    ``TRACER_MYSQL_SERVICE`` service and DBM comments."""
    info = make_info(
        prefix="mysql",
        system="mysql",
        component=component,
        service=config.mysql_service,
        db=db,
        user=user,
        host=host,
        port=port,
        sql_kwarg=sql_kwarg,
        dbm=True,
    )
    return proxy_type(conn, info)


# -- patching ---------------------------------------------------------------------
def connect_wrapper(make_proxy: Callable[[Any, tuple, dict], Any]) -> Callable[..., Any]:
    """A wrapt wrapper for a driver's ``connect``: the driver connects
    (unguarded), then ``make_proxy(conn, args, kwargs)`` wraps the result."""

    def start(instance: Any, args: tuple, kwargs: dict) -> tuple[Any, tuple, dict]:
        return (args, kwargs), args, kwargs

    def finish(instance: Any, called: tuple[tuple, dict], conn: Any, exc: BaseException | None) -> Any:
        if exc is not None or issubclass(type(conn), TracedConnection):
            return conn  # failed, or already traced (an alias wrapping another alias)
        return make_proxy(conn, *called)

    return guarded_wrapper("dbapi.connect", start, finish)
