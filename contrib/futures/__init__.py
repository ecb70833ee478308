"""concurrent.futures integration: ``ThreadPoolExecutor.submit`` carries the
caller's active span into the worker thread. See ``patch.py``.
"""

from tracer._patching import Integration

INTEGRATION = Integration(
    name="futures",
    hooks_module="concurrent.futures",
    dist=None,
    default=True,
    supported="",  # stdlib: every Python this tracer runs on
    contrib_module="contrib.futures.patch",
)
