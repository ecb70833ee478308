"""mysql-connector-python ≥ 8.0: ``mysql.connector.connect`` / ``Connect`` → traced connections."""

from __future__ import annotations

from typing import Any

from contrib import _dbapi
from tracer._patching import Target, integration_functions


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
    )


_wrapper = _dbapi.connect_wrapper(_proxy)
TARGETS = (
    Target("mysql.connector", "connect", _wrapper),
    Target("mysql.connector", "Connect", _wrapper),
)


patch, unpatch = integration_functions("mysql")
