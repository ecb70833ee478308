"""Tracing for the standard library's ``sqlite3`` (``patch(sqlite3=True)``):
``sqlite3.connect`` returns a traced connection (``contrib._dbapi``), whose
cursors and connection shortcuts ``execute`` / ``executemany`` /
``executescript`` make ``sqlite.query`` spans.

What cannot be transparent: C functions that type-check a connection
(``sqlite3.Cursor(conn)``, a custom ``factory``'s checks) need the real object,
``conn.__wrapped__``; ``Connection.backup(target)`` accepts a traced target
(it is unwrapped for you). ``with conn:`` commits or rolls back inside the C
code, so that commit has no span.
Nothing is re-exported here, so ``contrib.sqlite3.patch`` stays the module.
"""

from tracer._patching import Integration

# The range is Python's version: sqlite3 is part of the standard library.
INTEGRATION = Integration("sqlite3", hooks_module="sqlite3", dist=None, supported=">=3.8")
