"""The demo shop: a small Flask app (``app.py``) and the inventory service it
calls (``inventory.py``), used by ``agent-sim demo``, the end-to-end tests
and as the example in ``examples/shop`` (a symlink to this directory).

It lives inside the ``agent_sim`` package so that ``agent-sim demo`` works
from a regular (non-editable) install, where a checkout's ``examples/`` is
absent. The app never imports the tracer: it is traced by ``tracer-run``.
"""
