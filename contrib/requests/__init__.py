"""requests integration: a ``requests.request`` client span per ``Session.send``.

Enable with ``tracer.patch(requests=True)`` or ``patch_all()`` (on by
default; ``TRACER_PATCH_REQUESTS=false`` turns it off). See ``patch.py``.
"""

from tracer._patching import Integration

INTEGRATION = Integration("requests", hooks_module="requests", dist="requests", supported=">=2.20,<3")
