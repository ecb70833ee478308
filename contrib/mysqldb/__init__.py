"""Tracing for mysqlclient's ``MySQLdb`` (``patch(mysqldb=True)``):
``MySQLdb.connect``, ``MySQLdb.Connect`` and ``MySQLdb.Connection`` (all three
are the same factory function in MySQLdb) return traced connections
(``contrib._dbapi``). ``MySQLdb.connections.Connection`` (the class) stays
untouched: instantiating it directly is not traced.
Nothing is re-exported here, so ``contrib.mysqldb.patch`` stays the module.
"""

from tracer._patching import Integration

INTEGRATION = Integration("mysqldb", hooks_module="MySQLdb", dist="mysqlclient", supported=">=2.0")
