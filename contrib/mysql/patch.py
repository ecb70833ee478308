"""mysql-connector-python ≥ 8.0: ``mysql.connector.connect`` / ``Connect`` → traced connections."""

from __future__ import annotations

import importlib
from typing import Any

from contrib import _dbapi
from tracer._patching import Target, patch_supported, unpatch_targets

SUPPORTED = ">=8.0"
NAME = "mysql"


def get_version() -> str:
    # From sys.modules: the post-import hook runs before the "mysql" package
    # has its "connector" attribute, so "mysql.connector.__version__" fails there.
    return str(importlib.import_module("mysql.connector").__version__)


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


def patch() -> bool:
    """Wrap the targets (idempotent); False if the version is unsupported or
    nothing changed. Imports ``mysql.connector``."""
    return patch_supported(__name__, "mysql.connector", TARGETS)


def unpatch() -> bool:
    return unpatch_targets("mysql.connector", TARGETS)
