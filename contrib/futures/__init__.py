"""concurrent.futures integration: ``ThreadPoolExecutor.submit`` carries the
caller's active span into the worker thread. See ``patch.py``.
"""

from tracer._patching import Integration

# Standard library: every Python this tracer runs on.
INTEGRATION = Integration("futures", hooks_module="concurrent.futures", dist=None, supported="")
