"""mysqlclient ≥ 2.0 (``MySQLdb``): ``connect`` / ``Connect`` / ``Connection`` → traced connections."""

from __future__ import annotations

from typing import Any

from contrib import _dbapi
from tracer._patching import Target, integration_functions

# MySQLdb.connect(host, user, passwd, db, port, ...): the positional order.
_POSITIONAL = ("host", "user", "passwd", "db", "port")


def _proxy(conn: Any, args: tuple, kwargs: dict) -> Any:
    params = dict(zip(_POSITIONAL, args, strict=False))
    params.update(kwargs)
    # mysqlclient ≥ 2.2 keeps host/user/database/port on the connection; older
    # versions only have what connect() was given.
    return _dbapi.traced_mysql_connection(
        conn,
        component="mysqldb",
        db=getattr(conn, "database", None) or params.get("database") or params.get("db"),
        user=getattr(conn, "user", None) or params.get("user"),
        host=getattr(conn, "host", None) or params.get("host") or "localhost",
        port=getattr(conn, "port", None) or params.get("port") or 3306,
    )


_wrapper = _dbapi.connect_wrapper(_proxy)
TARGETS = (
    Target("MySQLdb", "connect", _wrapper),
    Target("MySQLdb", "Connect", _wrapper),
    Target("MySQLdb", "Connection", _wrapper),
)


patch, unpatch = integration_functions("mysqldb")
