"""Flask integration: traces each request (``flask.request``), its view, its
before/after/teardown hooks, error handlers and template renders.

Enabled by ``tracer.patch(flask=True)`` / ``patch_all()`` / ``tracer-run``,
which call :func:`contrib.flask.patch.patch`. Supported: Flask 2.2 to 3.x.
Nothing is re-exported here, so ``contrib.flask.patch`` stays the module.
"""

from tracer._patching import Integration

INTEGRATION = Integration("flask", hooks_module="flask", dist="Flask", supported=">=2.2,<4")
