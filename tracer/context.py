"""In-process context: which span is active, per thread and per asyncio task.

The active span lives in a :class:`contextvars.ContextVar`, so each asyncio task
(which copies the context when created) and each thread (which starts with an
empty context) sees its own. :func:`wrap_context` carries the caller's context
into code that runs elsewhere (a worker thread, a callback).

:class:`Context` is a *remote* parent: what ``propagation.extract`` returns
from incoming headers, usable as ``child_of=``.
"""

from __future__ import annotations

import functools
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:
    from tracer.span import Span

# Internal API, shared by tracer/ and the integrations in contrib/ (not public:
# apps use current_span()/wrap_context()): the active span of this thread or
# asyncio task. ``ACTIVE_SPAN.get()`` may return a finished span (a span
# finished elsewhere while its block is open; and with the pure-Python span, a
# child whose block ended, left there in its parent's place): readers treat it
# as its nearest unfinished ancestor (unfinished(), current_span()). Setting
# it is the integrations' business only, always paired with a reset, as in
# wrap_context.
ACTIVE_SPAN: ContextVar[Span | None] = ContextVar("tracer_active_span", default=None)
# Its methods, bound once, for hot paths in other modules: Python 3.11 and
# 3.12 compile ``ACTIVE_SPAN.get()`` on an *imported* name as an attribute
# load (LOAD_METHOD is kept for names the module defines), which binds a new
# method object on every call (~500 instructions); calling these does not.
get_active = ACTIVE_SPAN.get
set_active = ACTIVE_SPAN.set

F = TypeVar("F", bound=Callable[..., Any])


class Context:
    """A remote parent extracted from headers.

    ``dd_tags`` holds propagated ``_dd.p.*`` trace tags (including ``_dd.p.tid``
    for the high half of a 128-bit id only while parsing; ``trace_id`` is
    always the full 128-bit value). ``tracestate`` keeps W3C ``tracestate``
    members of other vendors, to be re-emitted unchanged.
    """

    __slots__ = ("trace_id", "span_id", "sampling_priority", "origin", "dd_tags", "tracestate", "baggage")

    def __init__(
        self,
        trace_id: int,
        span_id: int,
        sampling_priority: int | None = None,
        origin: str | None = None,
        dd_tags: dict[str, str] | None = None,
        tracestate: str | None = None,
        baggage: dict[str, str] | None = None,
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.sampling_priority = sampling_priority
        self.origin = origin
        self.dd_tags = dd_tags if dd_tags is not None else {}
        self.tracestate = tracestate
        self.baggage = baggage if baggage is not None else {}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Context):
            return NotImplemented
        return all(getattr(self, a) == getattr(other, a) for a in self.__slots__)

    def __repr__(self) -> str:
        return (
            f"Context(trace_id={self.trace_id:032x}, span_id={self.span_id:016x}, "
            f"sampling_priority={self.sampling_priority}, origin={self.origin!r}, "
            f"dd_tags={self.dd_tags!r}, tracestate={self.tracestate!r})"
        )


def unfinished(span: Span | None) -> Span | None:
    """``span``, or when it has finished its nearest unfinished ancestor (None
    if there is none): a span finished from another thread or context while
    its ``with`` block is still open stays in the variable until the block
    ends, and readers of the active span skip it (ddtrace's rule)."""
    while span is not None and span.duration_ns is not None:
        span = span._parent
    return span


def current_span() -> Span | None:
    span = ACTIVE_SPAN.get()
    if span is not None and span.duration_ns is not None:
        return unfinished(span)
    return span


def wrap_context(fn: F) -> F:
    """Return ``fn`` carrying the caller's active span: when it runs (in any
    thread, any number of times, even concurrently) that span is active, so
    spans it starts join the caller's trace.

    Only our own span is carried (not every context variable): a worker thread
    keeps the rest of its context, as ``ThreadPoolExecutor`` users expect."""
    span = current_span()
    if span is None:
        return fn

    @functools.wraps(fn)
    def run_with_span(*args: Any, **kwargs: Any) -> Any:
        token = ACTIVE_SPAN.set(span)
        try:
            return fn(*args, **kwargs)
        finally:
            ACTIVE_SPAN.reset(token)

    return run_with_span  # type: ignore[return-value]
