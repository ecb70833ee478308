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
from contextvars import ContextVar
from typing import Any

from werkzeug.exceptions import HTTPException

import tracer as _pkg
from contrib.flask import _request
from contrib.flask._hooks import PHASES, Phase
from tracer._errors import Start, finish_span, guarded_wrapper, keep_result
from tracer._patching import Target, integration_functions
from tracer.context import _active

_tracer = _pkg.tracer
_current: ContextVar[Any] = ContextVar("tracer_flask_request", default=None)  # the RequestState


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


def _hook_start(name: str, resource: str) -> Start:
    def start(instance: Any, args: tuple, kwargs: dict) -> tuple[Any, tuple, dict]:
        span = _tracer.trace(name, None, resource, "web")
        span.meta["component"] = "flask"
        return span, args, kwargs

    return start


def _hook_finish(instance: Any, span: Any, result: Any, exc: BaseException | None) -> Any:
    if exc is not None and _is_error(exc):
        span.set_exc_info(type(exc), exc, exc.__traceback__)
        state = _current.get()
        if state is not None:
            state.exc = exc
    span.finish()
    return result


def _traced(func: Callable[..., Any], phase: Phase) -> Callable[..., Any]:
    wrapper = guarded_wrapper("flask.hook", _hook_start(phase.name, _resource_of(func)), _hook_finish)

    def traced_call(*args: Any, **kwargs: Any) -> Any:
        return wrapper(func, None, args, kwargs)

    traced_call.__wrapped__ = func  # type: ignore[attr-defined]
    return traced_call


# -- wrappers ------------------------------------------------------------------


def _wsgi_start(instance: Any, args: tuple, kwargs: dict) -> tuple[Any, tuple, dict] | None:
    if not _tracer.enabled or len(args) != 2 or kwargs:
        return None
    environ, start_response = args
    entry = _request.entry_context(_current.get())
    state = _request.start_request(instance, environ)
    traced_start_response = _request.wrap_start_response(state, start_response)
    return (state, _current.set(state), entry), (environ, traced_start_response), kwargs


def _wsgi_finish(instance: Any, started: Any, body: Any, exc: BaseException | None) -> Any:
    state, token, entry = started
    _current.reset(token)
    # The server's context is given back whatever the app left active
    # (a span it never finished), so nothing after this request joins it.
    _active.set(entry)
    if exc is not None:
        _request.escaped(state, exc)
        return None
    return _request.finish_on_close(state, body)


def _handle_exception_start(instance: Any, args: tuple, kwargs: dict) -> None:
    # The exception reached Flask's 500 path: it is what the root reports.
    state = _current.get()
    if state is not None:
        exc = args[0] if args else kwargs.get("e")
        if isinstance(exc, BaseException) and _is_error(exc):
            state.exc = exc
    return None


def _ensure_sync_start(instance: Any, args: tuple, kwargs: dict) -> tuple[Any, tuple, dict] | None:
    state = _current.get()
    if state is None:
        return None
    return (state, args[0] if args else kwargs.get("func")), args, kwargs


def _ensure_sync_finish(instance: Any, started: Any, func: Any, exc: BaseException | None) -> Any:
    if exc is not None:
        return None
    state, original = started
    if not state.matched:
        state.match_rule()
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
    Target("flask.app", "Flask.wsgi_app", guarded_wrapper("flask.wsgi_app", _wsgi_start, _wsgi_finish)),
    Target("flask.app", "Flask.ensure_sync", guarded_wrapper("flask.ensure_sync", _ensure_sync_start, _ensure_sync_finish)),
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
