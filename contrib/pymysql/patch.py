"""PyMySQL ≥ 1.0: ``pymysql.connect`` / ``pymysql.Connect`` → traced connections."""

from __future__ import annotations

from typing import Any

from contrib import _dbapi
from tracer._patching import Target, integration_functions


def _proxy(conn: Any, args: tuple, kwargs: dict) -> Any:
    # conn.user and conn.db become bytes once the handshake has run.
    return _dbapi.traced_mysql_connection(
        conn,
        component="pymysql",
        db=conn.db,
        user=conn.user,
        host=conn.host,
        port=conn.port,
    )


_wrapper = _dbapi.connect_wrapper(_proxy)
# One table drives patch() and unpatch(). Connect and connect are both the
# Connection class; wrapping the module attributes leaves the class alone.
TARGETS = (
    Target("pymysql", "connect", _wrapper),
    Target("pymysql", "Connect", _wrapper),
)


patch, unpatch = integration_functions("pymysql")
