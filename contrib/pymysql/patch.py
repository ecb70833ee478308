"""PyMySQL ≥ 1.0: ``pymysql.connect`` / ``pymysql.Connect`` → traced connections."""

from __future__ import annotations

from typing import Any

from contrib import _dbapi
from tracer._patching import Target, patch_supported, unpatch_targets

SUPPORTED = ">=1.0"
NAME = "pymysql"


def get_version() -> str:
    import pymysql

    return str(pymysql.__version__)


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


def patch() -> bool:
    """Wrap the targets (idempotent); False if the version is unsupported or
    nothing changed. Imports ``pymysql``."""
    return patch_supported(__name__, "pymysql", TARGETS)


def unpatch() -> bool:
    return unpatch_targets("pymysql", TARGETS)
