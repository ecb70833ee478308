"""``sqlite3.connect`` → traced connections; spans ``sqlite.query``."""

from __future__ import annotations

import os
from typing import Any

from contrib import _dbapi
from tracer._errors import guarded_wrapper
from tracer._patching import Target, integration_functions
from tracer.config import config

_EXECUTESCRIPT = guarded_wrapper(
    "sqlite3.executescript", _dbapi.statement_start("sql_script"), _dbapi.query_finish
)


class TracedSQLiteCursor(_dbapi.TracedCursor):
    def executescript(self, *args: Any, **kwargs: Any) -> Any:
        return _dbapi.traced_call(self, _EXECUTESCRIPT, "executescript", args, kwargs)

    # A sqlite3 cursor is its own iterator: keep iteration on the proxy.
    def __iter__(self) -> Any:
        result = iter(self.__wrapped__)
        return self if result is self.__wrapped__ else result

    def __next__(self) -> Any:
        return next(self.__wrapped__)


class TracedSQLiteConnection(_dbapi.TracedConnection):
    cursor_types = (TracedSQLiteCursor, _dbapi.fetch_variant(TracedSQLiteCursor))

    # The C shortcuts create their cursor internally, out of the proxy's reach;
    # doing the same through the proxy traces them and returns a traced cursor.
    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self.cursor().execute(*args, **kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        return self.cursor().executemany(*args, **kwargs)

    def executescript(self, *args: Any, **kwargs: Any) -> Any:
        return self.cursor().executescript(*args, **kwargs)

    def backup(self, target: Any, *args: Any, **kwargs: Any) -> Any:
        if issubclass(type(target), _dbapi.TracedConnection):
            target = target.__wrapped__
        return self.__wrapped__.backup(target, *args, **kwargs)


def _db_name(database: Any, uri: bool) -> str | None:
    if database is None:
        return None
    name = os.fsdecode(database) if isinstance(database, (bytes, os.PathLike)) else str(database)
    if uri and name.startswith("file:"):
        name = name[5:].split("?", 1)[0]
    if name in (":memory:", ""):
        return name or None
    return os.path.basename(name) or name


def _proxy(conn: Any, args: tuple, kwargs: dict) -> Any:
    database = args[0] if args else kwargs.get("database")
    info = _dbapi.make_info(
        prefix="sqlite",
        system="sqlite",
        component="sqlite3",
        service=config.sqlite_service,
        db=_db_name(database, bool(kwargs.get("uri"))),
        sql_kwarg=None,
        dbm=False,
    )
    return TracedSQLiteConnection(conn, info)


_wrapper = _dbapi.connect_wrapper(_proxy)
# sqlite3.connect is re-exported from sqlite3.dbapi2; both names are public.
TARGETS = (
    Target("sqlite3", "connect", _wrapper),
    Target("sqlite3.dbapi2", "connect", _wrapper),
)


patch, unpatch = integration_functions("sqlite3")
