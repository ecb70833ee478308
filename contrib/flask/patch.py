"""Patch Flask (2.2 to 3.x) with wrapt; ``patch()`` and ``unpatch()`` both
walk ``TARGETS``, so they cannot drift apart.

How the spans come about (Flask's classes are never replaced):

- ``Flask.wsgi_app``: the ``flask.request`` root span (``_request.py``).
- Flask calls every user function (view, before/after/teardown hook, error
  handler) through ``Flask.ensure_sync(func)(...)``. The ``ensure_sync``
  wrapper looks the function up in the endpoint's hook plan (``_hooks.py``)
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

import tracer as _pkg
from contrib.flask import _request
from contrib.flask._hooks import PHASES, Phase
from tracer._errors import internal_error
from tracer._patching import Target, dist_version, patch_targets, unpatch_targets
from tracer.context import _active

SUPPORTED = ">=2.2,<4"

_tracer = _pkg.tracer
_current: Any = None  # ContextVar[RequestState | None], created by patch()


def get_version() -> str:
    """The installed Flask version ("" when Flask is not installed)."""
    return dist_version("flask")


# -- traced user functions -------------------------------------------------------

_TRACED_CACHE_MAX = 4096  # functions per phase; apps built per test would grow it forever


_http_exception: Any = None  # werkzeug's HTTPException, set by patch()


def _is_error(exc: BaseException) -> bool:
    # HTTPException below 500 (abort(404), abort(403), redirects) is Flask's
    # normal control flow, not an error.
    code = getattr(exc, "code", None)
    return not (type(code) is int and code < 500 and _http_exception is not None and isinstance(exc, _http_exception))


def _resource_of(func: Any) -> str:
    view_class = getattr(func, "view_class", None)  # View.as_view()
    target = view_class if view_class is not None else func
    target = getattr(target, "__func__", target)
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None)
    return name if name is not None else type(func).__qualname__


def _traced(func: Callable[..., Any], phase: Phase) -> Callable[..., Any]:
    name = phase.name
    resource = _resource_of(func)
    trace = _tracer.trace
    current = _current

    def traced_call(*args: Any, **kwargs: Any) -> Any:
        try:
            span = trace(name, None, resource, "web")
            span.meta["component"] = "flask"
        except Exception:
            internal_error("flask.hook.start")
            return func(*args, **kwargs)
        try:
            rv = func(*args, **kwargs)
        except BaseException as exc:
            try:
                if _is_error(exc):
                    span.set_exc_info(type(exc), exc, exc.__traceback__)
                    state = current.get()
                    if state is not None:
                        state.exc = exc
                span.finish()
            except Exception:
                internal_error("flask.hook.error")
            raise
        try:
            span.finish()
        except Exception:
            internal_error("flask.hook.finish")
        return rv

    traced_call.__wrapped__ = func  # type: ignore[attr-defined]
    return traced_call


# -- wrappers ------------------------------------------------------------------


def _wsgi_app(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    if not _tracer.enabled or len(args) != 2 or kwargs:
        return wrapped(*args, **kwargs)
    environ, start_response = args
    try:
        entry = _request.entry_context(_current.get())
        state = _request.start_request(instance, environ)
        traced_start_response = _request.wrap_start_response(state, start_response)
    except Exception:
        internal_error("flask.wsgi_app.start")
        return wrapped(environ, start_response)
    token = _current.set(state)
    try:
        body = wrapped(environ, traced_start_response)
    except BaseException as exc:
        try:
            _request.escaped(state, exc)
        except Exception:
            internal_error("flask.wsgi_app.error")
        raise
    finally:
        _current.reset(token)
        # The server's context is given back whatever the app left active
        # (a span it never finished), so nothing after this request joins it.
        _active.set(entry)
    try:
        return _request.finish_on_close(state, body)
    except Exception:
        internal_error("flask.wsgi_app.finish")
        return body


def _handle_exception(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    # The exception reached Flask's 500 path: it is what the root reports.
    try:
        state = _current.get()
        if state is not None:
            exc = args[0] if args else kwargs.get("e")
            if isinstance(exc, BaseException) and _is_error(exc):
                state.exc = exc
    except Exception:
        internal_error("flask.handle_exception")
    return wrapped(*args, **kwargs)


def _ensure_sync(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    func = wrapped(*args, **kwargs)
    state = _current.get()
    if state is None:
        return func
    try:
        if not state.matched:
            state.match_rule()
        original = args[0] if args else kwargs.get("func")
        phase = state.plan.get(original)
        if phase is None:
            return func
        if func is not original:  # async function: Flask made a new sync callable
            return _traced(func, phase)
        cache = phase.traced
        traced = cache.get(func)
        if traced is None:
            if len(cache) >= _TRACED_CACHE_MAX:
                cache.clear()
            traced = cache[func] = _traced(func, phase)
        return traced
    except Exception:
        internal_error("flask.ensure_sync")
        return func


def _render(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    try:
        template = args[1] if len(args) > 1 else kwargs.get("template")
        name = getattr(template, "name", None) or "<string>"
        span = _tracer.trace("flask.render_template", None, name, "template")
        span.meta["component"] = "flask"
        span.meta["flask.template_name"] = name
    except Exception:
        internal_error("flask.render_template.start")
        return wrapped(*args, **kwargs)
    try:
        rv = wrapped(*args, **kwargs)
    except BaseException as exc:
        try:
            span.set_exc_info(type(exc), exc, exc.__traceback__)
            span.finish()
        except Exception:
            internal_error("flask.render_template.error")
        raise
    try:
        span.finish()
    except Exception:
        internal_error("flask.render_template.finish")
    return rv


# -- the table -------------------------------------------------------------------

# What patch() wraps and unpatch() restores.
TARGETS: tuple[Target, ...] = (
    Target("flask.app", "Flask.wsgi_app", _wsgi_app),
    Target("flask.app", "Flask.ensure_sync", _ensure_sync),
    Target("flask.app", "Flask.handle_exception", _handle_exception),
    Target("flask.templating", "_render", _render),
)


def patch() -> bool:
    """Wrap every target once (a second call does nothing); True when it
    patched. Called by the patch registry (``tracer.patch(flask=True)``)
    once ``flask`` is imported; imports the Flask submodules it wraps."""
    global _current, _http_exception
    if _current is None:
        from contextvars import ContextVar

        _current = ContextVar("tracer_flask_request", default=None)
    from werkzeug.exceptions import HTTPException

    _http_exception = HTTPException
    return patch_targets("flask", TARGETS)


def unpatch() -> bool:
    """Restore the exact originals; True when it unpatched."""
    done = unpatch_targets("flask", TARGETS)
    for phase in PHASES:
        phase.traced.clear()
    return done
