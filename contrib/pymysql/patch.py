"""PyMySQL ≥ 1.0: ``pymysql.connect`` / ``pymysql.Connect`` → traced connections."""

from __future__ import annotations

import logging
import sys
from typing import Any

from contrib import _dbapi
from tracer._patching import Target, check_supported, patch_targets, unpatch_targets
from tracer.config import config

log = logging.getLogger("tracer")

SUPPORTED = ">=1.0"
NAME = "pymysql"


def get_version() -> str:
    import pymysql

    return str(pymysql.__version__)


def _proxy(conn: Any, args: tuple, kwargs: dict) -> Any:
    # conn.user and conn.db become bytes once the handshake has run.
    info = _dbapi.make_info(
        prefix="mysql",
        system="mysql",
        component="pymysql",
        service=config.mysql_service,
        db=conn.db,
        user=conn.user,
        host=conn.host,
        port=conn.port,
        sql_kwarg="query",
        dbm=True,
    )
    return _dbapi.TracedMySQLConnection(conn, info)


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
    if not check_supported(sys.modules[__name__], get_version()):
        log.warning("tracer: not patching %s %s: supported versions are %s", NAME, get_version(), SUPPORTED)
        return False
    return patch_targets("pymysql", TARGETS)


def unpatch() -> bool:
    return unpatch_targets("pymysql", TARGETS)
