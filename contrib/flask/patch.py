"""Patch Flask (2.2 to 3.x); ``patch()`` and ``unpatch()`` both
walk ``TARGETS``, so they cannot drift apart.

How the spans come about (Flask's classes are never replaced):

- ``Flask.wsgi_app``: the ``flask.request`` root span (``_request.py``).
  It and ``Flask.ensure_sync`` are replaced by plain functions (see
  "wrappers" below); the two rare targets keep wrapt.
- Flask calls every user function (view, before/after/teardown hook, error
  handler) through ``Flask.ensure_sync(func)(...)``. The ``ensure_sync``
  wrapper (with the C extension a ``_cspan.EnsureSync`` that answers the
  endpoint's next requests in C, see tracer/_cspan_flask.c) looks the
  function up in the endpoint's hook plan (``_hooks.py``)
  and returns a traced version of it (built once per function and cached),
  so each hook function gets its own span and Flask's own loops, ordering
  and early returns are untouched. Its first call in a request is also where
  the matched URL rule names the request (before any user function runs).
- ``Flask.handle_exception`` (the 500 path only) records the exception the
  request span reports.
- ``flask.templating._render`` (behind ``render_template`` and
  ``render_template_string``): ``flask.render_template``.

Every wrapper runs on the thread serving the request, has the guard shape
(guarded pre-work, the original call unguarded, guarded post-work) and never
changes what Flask returns or raises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from werkzeug.exceptions import HTTPException

import tracer as _pkg
from contrib.flask import _request
from contrib.flask._hooks import PHASES, Phase
from tracer._errors import finish_span, guarded_call, guarded_wrapper, internal_error, keep_result
from tracer._patching import Target, integration_functions
from tracer._tracer import _trace_child
from tracer.context import get_active
from tracer.span import _cspan

_tracer = _pkg.tracer
_request_state = _request.request_state


# -- traced user functions -------------------------------------------------------

_TRACED_CACHE_MAX = 4096  # functions per phase; apps built per test would grow it forever


def _is_error(exc: BaseException) -> bool:
    # HTTPException below 500 (abort(404), abort(403), redirects) is Flask's
    # normal control flow, not an error.
    code = getattr(exc, "code", None)
    return not (type(code) is int and code < 500 and isinstance(exc, HTTPException))


def _resource_of(func: Any) -> str:
    view_class = getattr(func, "view_class", None)  # View.as_view()
    target = view_class if view_class is not None else func
    target = getattr(target, "__func__", target)
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None)
    return name if name is not None else type(func).__qualname__


# The constant tags of a hook, view or handler span (TracedCall copies them).
_HOOK_TAGS = {"component": "flask"}


def _traced(func: Callable[..., Any], phase: Phase, user_func: Any = None) -> Callable[..., Any]:
    """``func`` in a span named after its phase: the guard shape (guarded
    pre-work, the call unguarded, guarded post-work), as this runs for every
    user function of every request. With the C extension it is a
    ``_cspan.TracedCall`` (no Python frame: the span started, tagged and
    finished in C, see tracer/_cspan_call.c) whose fallback, for a call with
    no C span to start, is ``traced_call`` below. ``user_func``: what the
    span is named after when ``func`` is Flask's sync wrapper of it (an
    async view or hook)."""
    name = phase.name
    resource = _resource_of(func if user_func is None else user_func)

    def traced_call(*args: Any, **kwargs: Any) -> Any:
        try:
            span = _trace_child(name, None, resource, "web") if _trace_child is not None else None
            if span is None:  # no active span, or the pure-Python tracer
                span = _tracer.trace(name, None, resource, "web")
            span.meta["component"] = "flask"
        except Exception:
            internal_error("flask.hook")
            return func(*args, **kwargs)
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            guarded_call("flask.hook.finish", _hook_failed, span, exc)
            raise
        try:
            span.finish()
        except Exception:
            internal_error("flask.hook.finish")
        return result

    traced_call.__wrapped__ = func  # type: ignore[attr-defined]
    if _cspan is None:
        return traced_call
    return _cspan.TracedCall(func, name, resource, "web", _HOOK_TAGS, traced_call, _traced_failed, _traced_error)


def _traced_failed(span: Any, exc: BaseException) -> None:
    # TracedCall: func raised exc (which then propagates unchanged).
    guarded_call("flask.hook.finish", _hook_failed, span, exc)


def _traced_error(exc: BaseException, finishing: bool) -> None:
    # TracedCall: its own work failed (the function still ran, or runs, once).
    internal_error("flask.hook.finish" if finishing else "flask.hook", exc)


def _hook_failed(span: Any, exc: BaseException) -> None:
    if _is_error(exc):
        span.set_exc_info(type(exc), exc, exc.__traceback__)
        state = _request_state(span)
        if state is not None:
            state.exc = exc
    span.finish()


# -- wrappers ------------------------------------------------------------------
#
# The two functions every request goes through (``wsgi_app`` once,
# ``ensure_sync`` once per user function) replace Flask's with plain
# functions of the same signature (``Target(..., replace=True)``): a wrapt
# wrapper on a method costs a bound-wrapper object and an args tuple per call
# (≈ 1.5 µs each, 4 per request). They keep the guard shape.


def _wsgi_app(original: Callable[..., Any]) -> Callable[..., Any]:
    _request.bind_werkzeug()
    _start_request = _request.start_request

    def wsgi_app(self: Any, environ: Any, start_response: Any) -> Any:
        if not _tracer.enabled:
            return original(self, environ, start_response)
        try:
            state = _start_request(self, environ, start_response)
        except Exception:
            internal_error("flask.wsgi_app")
            return original(self, environ, start_response)
        try:
            body = original(self, environ, state.start_response)
        except BaseException as exc:
            try:
                state.escaped(exc)
            except Exception:
                internal_error("flask.wsgi_app.finish")
            raise
        try:
            return state.respond(body)
        except Exception:
            internal_error("flask.wsgi_app.finish")
            return body

    return wsgi_app


def _ensure_sync(original: Callable[..., Any]) -> Callable[..., Any]:
    def ensure_sync(self: Any, func: Any) -> Any:
        # The request's state is on its root span, which is the active span
        # whenever Flask calls this (between user functions) unless the app
        # left one of its own active: then found from it (request_state).
        span = get_active()
        state: Any = None
        phase = None
        if span is not None:
            try:
                # The root's, or (the span the last function left in the
                # variable: the pure-Python span's end leaves it there) its
                # parent's: request_state's first two steps, without its call.
                state = span._request or ((up := span._parent) is not None and up._request) or _request_state(span)
                if state is not None:
                    # Only sync functions are in ``traced``: Flask's ensure_sync
                    # would return ``func`` itself (its coroutine check is
                    # skipped, ≈ 40 bytecodes per call).
                    traced = state.traced.get(func)
                    if traced is not None:
                        return traced
                    if not state.matched:
                        state.match_rule()
                        traced = state.traced.get(func)
                        if traced is not None:
                            return traced
                    phase = state.plan.get(func)
            except Exception:
                internal_error("flask.ensure_sync")
                phase = None
        result = original(self, func)
        if phase is None:
            return result
        try:
            if result is not func:  # async function: Flask made a new sync callable
                return _traced(result, phase, func)
            cache = phase.traced  # built once per function, whatever its endpoints
            traced = cache.get(func)
            if traced is None:
                if len(cache) >= _TRACED_CACHE_MAX:
                    cache.clear()
                traced = cache[func] = _traced(func, phase)
            state.traced[func] = traced  # the endpoint's next requests
            return traced
        except Exception:
            internal_error("flask.ensure_sync.finish")
            return result

    if _cspan is None:
        return ensure_sync
    # Its common case (the active span is the request's root and ``func``
    # is in its state's ``traced``) in C, without this function's frame;
    # the rest calls it (tracer/_cspan_flask.c).
    return _cspan.EnsureSync(ensure_sync, _request.RequestState)  # type: ignore[no-any-return]


def _handle_exception_start(instance: Any, args: tuple, kwargs: dict) -> None:
    # The exception reached Flask's 500 path: it is what the root reports.
    state = _request_state(get_active())
    if state is not None:
        exc = args[0] if args else kwargs.get("e")
        if isinstance(exc, BaseException) and _is_error(exc):
            state.exc = exc
    return None


def _render_start(instance: Any, args: tuple, kwargs: dict) -> tuple[Any, tuple, dict]:
    template = args[1] if len(args) > 1 else kwargs.get("template")
    name = getattr(template, "name", None) or "<string>"
    span = _tracer.trace("flask.render_template", None, name, "template")
    span.meta["component"] = "flask"
    span.meta["flask.template_name"] = name
    return span, args, kwargs


# -- the table -------------------------------------------------------------------

# What patch() wraps and unpatch() restores.
TARGETS: tuple[Target, ...] = (
    Target("flask.app", "Flask.wsgi_app", _wsgi_app, replace=True),
    Target("flask.app", "Flask.ensure_sync", _ensure_sync, replace=True),
    Target("flask.app", "Flask.handle_exception", guarded_wrapper("flask.handle_exception", _handle_exception_start, keep_result)),
    Target("flask.templating", "_render", guarded_wrapper("flask.render_template", _render_start, finish_span)),
)


patch, _unpatch = integration_functions("flask")


def unpatch() -> bool:
    """Restore the exact originals; True when it unpatched."""
    done = _unpatch()
    for phase in PHASES:
        phase.traced.clear()
    return done
