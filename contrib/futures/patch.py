"""Carry the caller's context into ``ThreadPoolExecutor`` workers.

``submit(fn, ...)`` (which ``map`` uses too) wraps ``fn`` with
``tracer.context.wrap_context``: the span active at submit time is the parent
of spans started by ``fn`` in the worker thread. No span is created; with no
active span ``fn`` is submitted untouched.
"""

from __future__ import annotations

from typing import Any

from tracer._errors import guarded_wrapper, keep_result
from tracer._patching import Target, integration_functions
from tracer.context import wrap_context


def _submit_start(instance: Any, args: tuple, kwargs: dict) -> tuple[None, tuple, dict] | None:
    if not args:
        return None
    return None, (wrap_context(args[0]), *args[1:]), kwargs


# concurrent.futures exposes ThreadPoolExecutor lazily; the class lives here.
TARGETS = (Target("concurrent.futures.thread", "ThreadPoolExecutor.submit", guarded_wrapper("futures.submit", _submit_start, keep_result)),)


patch, unpatch = integration_functions("futures")
