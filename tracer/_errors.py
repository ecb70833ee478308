"""One guard for errors inside our own code.

Instrumentation never breaks the host application: wrappers run their own
pre- and post-work inside ``try``/``except Exception`` and hand the exception
to :func:`internal_error`, which logs it once per place and keeps it in
``swallowed`` so the test suite can fail on it (an autouse fixture re-raises).
"""

from __future__ import annotations

import logging

log = logging.getLogger("tracer")

#: Exceptions swallowed so far, newest last; bounded. Tests inspect and clear it.
swallowed: list[tuple[str, BaseException]] = []
_SWALLOWED_MAX = 100
_logged: set[tuple[str, str]] = set()


def internal_error(where: str, exc: BaseException | None = None) -> None:
    """Record an exception raised by tracer code at ``where``; never raises.

    Call from an ``except Exception`` block (``exc`` defaults to the one being
    handled). Logs with the traceback the first time a (place, type) pair is
    seen, then stays quiet for it.
    """
    try:
        if exc is None:
            import sys

            exc = sys.exc_info()[1]
        if exc is None:
            return
        if len(swallowed) < _SWALLOWED_MAX:
            swallowed.append((where, exc))
        key = (where, type(exc).__name__)
        if key not in _logged:
            _logged.add(key)
            log.error("tracer: internal error in %s (reported once): %r", where, exc, exc_info=exc)
    except Exception:  # pragma: no cover - logging itself failed; nothing left to do
        pass
