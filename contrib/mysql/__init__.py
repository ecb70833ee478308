"""Tracing for mysql-connector-python (``patch(mysql=True)``):
``mysql.connector.connect`` and its alias ``mysql.connector.Connect`` return
traced connections (``contrib._dbapi``), for both the pure-Python connection
and the C extension's ``CMySQLConnection``. Connections built from the
classes directly (``MySQLConnection(...)``) or taken from a
``MySQLConnectionPool`` object are not traced; ``connect(pool_name=...)`` is.
Nothing is re-exported here, so ``contrib.mysql.patch`` stays the module.
"""

from tracer._patching import Integration

INTEGRATION = Integration("mysql", hooks_module="mysql.connector", dist="mysql-connector-python", supported=">=8.0")
