"""Tracing for PyMySQL (``patch(pymysql=True)``): ``pymysql.connect`` and its
alias ``pymysql.Connect`` return traced connections (``contrib._dbapi``).

``pymysql.Connection`` is the connection class itself and stays untouched
(so subclassing and ``isinstance`` keep working): connections built by
calling the class directly are not traced.
Nothing is re-exported here, so ``contrib.pymysql.patch`` stays the module.
"""

from tracer._patching import Integration

INTEGRATION = Integration("pymysql", hooks_module="pymysql", dist="PyMySQL", supported=">=1.0")
