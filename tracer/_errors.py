"""One guard for errors inside our own code.

Instrumentation never breaks the host application. Every integration wrapper
is built by :func:`guarded_wrapper` (guarded pre-work, the user's call
unguarded, guarded post-work), the way Sentry wraps its own work in
``capture_internal_exceptions``; the few guarded blocks outside a wrapper
hand their exception to :func:`internal_error` themselves. It logs once per
place and keeps the exception in ``swallowed`` so the test suite can fail on
it (an autouse fixture re-raises).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

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


#: ``start(instance, args, kwargs)``: the guarded pre-work. Returns None to
#: call the original untouched and do nothing after it, or ``(state, args,
#: kwargs)``: what ``finish`` gets and the arguments to call the original with.
Start = Callable[[Any, tuple, dict], "tuple[Any, tuple, dict] | None"]
#: ``finish(instance, state, result, exc)``: the guarded post-work, run after
#: the original returned (``exc`` None) or raised (``result`` None). Returns
#: what the caller gets on success: ``result`` unless it must be replaced
#: (a WSGI body that finishes the span on close, a traced function).
Finish = Callable[[Any, Any, Any, "BaseException | None"], Any]


def guarded_wrapper(where: str, start: Start, finish: Finish) -> Callable[[Callable[..., Any], Any, tuple, dict], Any]:
    """The one wrapper template, with wrapt's signature ``(wrapped, instance,
    args, kwargs)``: guarded pre-work, the original call unguarded (its
    return value and exceptions pass through untouched), guarded post-work.

    An exception in ``start`` is recorded (:func:`internal_error`, place
    ``<where>``) and the original still runs, with the caller's own
    arguments; one in ``finish`` is recorded (``<where>.finish``) and the
    original's result is returned, or its exception re-raised. Runs on the
    caller's thread; adds two Python calls to the wrapped one."""
    start_where = where
    finish_where = where + ".finish"

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
        try:
            prepared = start(instance, args, kwargs)
        except Exception:
            internal_error(start_where)
            return wrapped(*args, **kwargs)
        if prepared is None:
            return wrapped(*args, **kwargs)
        state, call_args, call_kwargs = prepared
        try:
            result = wrapped(*call_args, **call_kwargs)
        except BaseException as exc:
            try:
                finish(instance, state, None, exc)
            except Exception:
                internal_error(finish_where)
            raise
        try:
            return finish(instance, state, result, None)
        except Exception:
            internal_error(finish_where)
            return result

    return wrapper


def finish_span(instance: Any, span: Any, result: Any, exc: BaseException | None) -> Any:
    """The usual ``finish`` of :func:`guarded_wrapper`: the exception (if
    any) on the span, then ``span.finish()``; the result is returned as is."""
    if exc is not None:
        span.set_exc_info(type(exc), exc, exc.__traceback__)
    span.finish()
    return result


def guarded_call(where: str, fn: Callable[..., Any], *args: Any) -> None:
    """``fn(*args)`` as guarded work outside a wrapper (a span ended from
    ``close()`` or ``__del__``): an exception is recorded at ``where``, never
    raised. For places that are not :func:`guarded_wrapper`'s pre- or post-work."""
    try:
        fn(*args)
    except Exception:
        internal_error(where)


def keep_result(instance: Any, state: Any, result: Any, exc: BaseException | None) -> Any:
    """A ``finish`` with no post-work (the pre-work was all there was to do)."""
    return result
