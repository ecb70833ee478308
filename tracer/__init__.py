"""A lean APM tracer, wire-compatible with the Datadog trace intake.

``from tracer import tracer`` is the global :class:`Tracer`; see ``__all__``
for the whole public surface.
"""

from __future__ import annotations

from tracer import propagation
from tracer._patching import patch, patch_all, unpatch
from tracer._tracer import Tracer
from tracer.config import config
from tracer.context import Context
from tracer.span import Span
from tracer.version import __version__

tracer = Tracer()

__all__ = [
    "Context",
    "Span",
    "Tracer",
    "__version__",
    "config",
    "patch",
    "patch_all",
    "propagation",
    "tracer",
    "unpatch",
]
