"""The Tracer: starts spans, tracks the active one, owns buffer, sampler and writer.

Hot path: ``trace()`` / ``start_span()`` and ``Span.finish()``. Per-trace
work (ids, clocks, the trace object) happens once, on the trace's first span;
a child span costs one clock read, one random id and the slot writes, and its
finish appends a flat record (with its top-level mark) to the trace, without
a lock. Trace-level tags and sampling are applied by the writer thread
(``tracer.processor``), off the app's threads. Where
``tracer._cspan`` is built, ``trace()`` is ``_cspan.TraceMethod``: it starts
child spans and new traces in C (no Python frame), and ``_trace_py`` serves
the rest.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import logging
import os
import sys
import threading
import time
from random import getrandbits
from time import perf_counter_ns
from typing import Any, Callable, TypeVar

from tracer._service import service_name
from tracer.buffer import UNTRACK_AT, TraceBuffer, _Trace, untrack_list
from tracer.config import config as _config
from tracer.context import Context, current_span, get_active, set_active, unfinished
from tracer.span import Span, _cspan, new_span

log = logging.getLogger("tracer")

F = TypeVar("F", bound=Callable[..., Any])
_trace_child: Any = _cspan.trace_child if _cspan is not None else None
_trace_root: Any = _cspan.trace_root if _cspan is not None else None


def _alias(name: str) -> property:
    """A property reading and writing the field ``name``."""
    return property(lambda obj: getattr(obj, name), lambda obj, value: setattr(obj, name, value))


# The traces trace_root starts: _Trace's fields in C (_cspan.TraceBase, built
# there without running __init__), _Trace's methods (the rules stay there).
_RootTrace: Any = _Trace if _cspan is None else type(
    "_Trace",
    (_cspan.TraceBase,),
    {
        "__slots__": (),
        "__module__": _Trace.__module__,
        **{k: v for k, v in vars(_Trace).items() if inspect.isfunction(v)},
        # The C trace holds the bases themselves (TRACE_FIELDS): _Trace's
        # __init__ and properties reach them by these names, and _trace_py
        # (a fallback path here) reads the offset derived from them.
        "_wall_base": _alias("wall_base"),
        "_mono_base": _alias("mono_base"),
        "wall_offset": property(lambda trace: trace.wall_base - trace.mono_base, lambda trace, value: None),
    },
)

def default_service() -> str:
    """``TRACER_SERVICE``/``DD_SERVICE``, else the script or module name
    (the rule in ``tracer._service``)."""
    configured = _config.service
    if configured:
        return configured
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return service_name(sys.argv[0] if sys.argv else "", getattr(spec, "name", None))


class Tracer:
    """Creates spans. Thread-safe; one global instance is ``tracer.tracer``."""

    def __init__(self, writer: Any = None) -> None:
        cfg = _config
        self.enabled = cfg.enabled
        self._service: str | None = None
        self._writer = writer
        self._writer_lock = threading.Lock()
        self._sampler: Any = None
        self._buffer = TraceBuffer(self, cfg.partial_flush_min_spans)
        self._pid = os.getpid()
        self._shutdown = False
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork_in_child)
        atexit.register(self._atexit)

    # -- services & components, created lazily -------------------------------
    @property
    def service(self) -> str:
        if self._service is None:
            self._service = default_service()
        return self._service

    @service.setter
    def service(self, value: str) -> None:
        self._service = value

    @property
    def sampler(self) -> Any:
        if self._sampler is None:
            from tracer.sampler import Sampler

            self._sampler = Sampler(_config)
        return self._sampler

    @property
    def writer(self) -> Any:
        """The writer; created (not started) on first use. Its thread starts
        on the first write."""
        if self._writer_ is None:
            with self._writer_lock:
                if self._writer_ is None:
                    from tracer.writer import new_writer

                    self._writer = new_writer(_config, self)
        return self._writer_

    #: The stock writer's C queue while it is the writer and this class's
    #: write is Tracer.write: a trace's hand-over in C pushes its chunk
    #: there (tracer/_cspan_queue.c) instead of calling write(); None else.
    _cqueue: Any = None

    @property
    def _writer(self) -> Any:
        return self._writer_

    @_writer.setter
    def _writer(self, writer: Any) -> None:
        # Tests and benchmarks swap the writer by assigning it: the C path
        # follows (or stops) here.
        self._writer_ = writer
        kind = type(writer)
        in_c = getattr(kind, "_write_in_c", None) is not None and kind.write is kind._write_in_c
        self._cqueue = writer._queue if in_c and type(self).write is Tracer.write else None

    # ChunkSink for the buffer: hand finished chunks to the writer.
    def write(self, trace: _Trace, chunk: list[Any]) -> None:
        if not self.enabled:
            return
        try:
            (self._writer_ or self.writer).write(trace, chunk)  # the attribute, not the property: per trace
        except Exception:
            from tracer._errors import internal_error

            internal_error("writer.write")

    # -- spans -----------------------------------------------------------------
    def start_span(
        self,
        name: str,
        child_of: Span | Context | None = None,
        service: str | None = None,
        resource: str | None = None,
        span_type: str | None = None,
        activate: bool = False,
    ) -> Span:
        """Start a span whose parent is ``child_of`` (a Span or a propagated
        Context); without it the span starts a new trace (as ddtrace's
        ``start_span``: only ``trace()`` reads the active span). With
        ``activate=True`` it becomes the active span until it finishes. The
        caller must ``finish()`` it."""
        mono = perf_counter_ns()
        parent = child_of
        if type(parent) is Span and not parent._trace.foreign:
            trace = parent._trace
            span = new_span(
                trace,
                parent.trace_id,
                getrandbits(64) or 1,
                parent.span_id,
                parent,
                name,
                service or parent.service,
                resource,
                span_type,
                mono,
                # A C trace's bases are C members; a Python one's offset a slot.
                trace.wall_offset + mono if _cspan is None else trace.wall_base + (mono - trace.mono_base),
            )
            if next(trace.starts) == UNTRACK_AT:
                untrack_list(trace.finished)  # see tracer.buffer.UNTRACK_AT
            if trace.root_done:
                trace.start_span_late()
        elif _trace_root is not None and (parent is None or type(parent) is Context):
            # A new trace, or one continued from headers, built in C (None
            # for a context with a sampling decision only: _start_trace's).
            span = _trace_root(
                _RootTrace, self._buffer, name, service or self.service, resource, span_type, False, parent
            ) or self._start_trace(parent, name, service, resource, span_type, mono)
        else:
            span = self._start_trace(parent, name, service, resource, span_type, mono)
        if activate:
            span._prev = get_active()
            set_active(span)
        return span

    def _start_trace(
        self,
        parent: Span | Context | None,
        name: str,
        service: str | None,
        resource: str | None,
        span_type: str | None,
        mono: int,
    ) -> Span:
        wall = time.time_ns()
        decision_only = type(parent) is Context and not parent.trace_id
        if parent is None or decision_only:
            # As ddtrace: upper 32 bits unix seconds, 32 zero bits, 64 random bits.
            trace = _Trace(self._buffer, ((wall // 1_000_000_000) << 96) | (getrandbits(64) or 1), wall, mono)
            parent_id = 0
            if decision_only:  # a b3 "0"/"1"/"d" header: a sampling decision, no parent
                trace.priority = parent.sampling_priority  # type: ignore[union-attr]
        elif type(parent) is Span:
            # A span inherited across fork(): continue its trace as a remote parent.
            trace = _Trace(self._buffer, parent.trace_id, wall, mono)
            trace.priority = parent._trace.priority
            trace.mechanism = parent._trace.mechanism
            trace.origin = parent._trace.origin
            trace.dd_tags = dict(parent._trace.dd_tags)
            trace.remote_parent = True
            parent_id = parent.span_id
            if service is None:
                service = parent.service
        else:
            ctx: Context = parent  # type: ignore[assignment]
            trace = _Trace(self._buffer, ctx.trace_id, wall, mono)
            trace.priority = ctx.sampling_priority
            trace.origin = ctx.origin
            trace.dd_tags = {k: v for k, v in ctx.dd_tags.items() if k != "_dd.p.tid"}
            trace.tracestate = ctx.tracestate
            trace.remote_parent = True
            parent_id = ctx.span_id
        span = new_span(
            trace,
            trace.trace_id,
            getrandbits(64) or 1,
            parent_id,
            None,
            name,
            service or self.service,
            resource,
            span_type,
            mono,
            wall,
        )
        trace.root = span
        next(trace.starts)
        return span

    def _trace_py(
        self,
        name: str,
        service: str | None = None,
        resource: str | None = None,
        span_type: str | None = None,
    ) -> Span:
        """``trace()`` in pure Python (with the C span: its slow path, for a
        new trace or a foreign parent)."""
        mono = perf_counter_ns()
        active = parent = get_active()
        if parent is not None and parent.duration_ns is not None:
            parent = parent._parent
            if parent is not None and parent.duration_ns is not None:
                parent = unfinished(parent)  # finished elsewhere while its block is open
        if parent is not None and not (trace := parent._trace).foreign:
            # new_span(), inlined: the call alone was ~90 ns of a ~2 µs span.
            # Every slot is set here as there (tests/tracer/test_span.py checks).
            span = Span()
            span._trace = trace
            span.trace_id = parent.trace_id
            span.span_id = getrandbits(64) or 1
            span.parent_id = parent.span_id
            span._parent = parent
            span.name = name
            span.service = service or parent.service
            span.resource = resource or name
            span.span_type = span_type
            span._mono = mono
            span.start_ns = trace.wall_offset + mono
            span.duration_ns = None
            span.error = 0
            span.meta = {}
            span.metrics = {}
            span._prev = parent
            span._request = None
            if next(trace.starts) == UNTRACK_AT:
                untrack_list(trace.finished)  # see tracer.buffer.UNTRACK_AT
            if trace.root_done:
                trace.start_span_late()
        else:
            span = self._start_trace(parent, name, service, resource, span_type, mono)
            span._prev = active
        set_active(span)
        return span

    if _cspan is None:
        trace = _trace_py
    else:
        def trace(
            self,
            name: str,
            service: str | None = None,
            resource: str | None = None,
            span_type: str | None = None,
        ) -> Span:
            # What _cspan.TraceMethod (below) runs when it started no child in
            # C: no active span, a new trace (in C); or a foreign or finished one.
            span: Span | None = _trace_root(
                _RootTrace, self._buffer, name, service or self.service, resource, span_type, True
            )
            return span if span is not None else self._trace_py(name, service, resource, span_type)

    trace.__doc__ = """Start a span as a child of the active one and activate it. Use as a
        context manager: ``with tracer.trace("work") as span: ...``; an
        exception leaving the block marks the span and propagates unchanged."""
    if _cspan is not None:
        # Tracer.trace in C (a method descriptor, no Python frame per child
        # span), named and documented as the function above, its fallback.
        trace = functools.update_wrapper(_cspan.TraceMethod(trace, _trace_root, _RootTrace), trace)

    def current_span(self) -> Span | None:
        """The active span; never a finished one: a span finished from another
        thread or context gives way to its nearest unfinished ancestor."""
        return current_span()

    def current_root_span(self) -> Span | None:
        span = get_active()
        if span is None:
            return None
        # Walk up rather than read trace.root: the writer drops that reference
        # once the root is sent (see processor), and late children still ask.
        while span._parent is not None:
            span = span._parent
        return span

    # -- decorator -------------------------------------------------------------
    def wrap(
        self,
        name: str | None = None,
        service: str | None = None,
        resource: str | None = None,
        span_type: str | None = None,
    ) -> Callable[[F], F]:
        """Decorate a function (sync or async, generator or async generator)
        so that each call runs in a span named ``name`` (default: module.qualname)."""

        def decorator(fn: F) -> F:
            span_name = name or f"{fn.__module__}.{fn.__qualname__}"
            trace = self.trace

            if inspect.isasyncgenfunction(fn):

                @functools.wraps(fn)
                async def async_gen_wrapper(*args: Any, **kwargs: Any) -> Any:
                    with trace(span_name, service, resource, span_type):
                        async for item in fn(*args, **kwargs):
                            yield item

                return async_gen_wrapper  # type: ignore[return-value]

            if inspect.iscoroutinefunction(fn):

                @functools.wraps(fn)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    with trace(span_name, service, resource, span_type):
                        return await fn(*args, **kwargs)

                return async_wrapper  # type: ignore[return-value]

            if inspect.isgeneratorfunction(fn):

                @functools.wraps(fn)
                def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
                    # A caller that stops early (break, close()) raises
                    # GeneratorExit here: that is not an error of the span.
                    stopped: GeneratorExit | None = None
                    with trace(span_name, service, resource, span_type):
                        try:
                            return (yield from fn(*args, **kwargs))
                        except GeneratorExit as e:
                            stopped = e
                    if stopped is not None:
                        raise stopped

                return gen_wrapper  # type: ignore[return-value]

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                with trace(span_name, service, resource, span_type):
                    return fn(*args, **kwargs)

            return wrapper  # type: ignore[return-value]

        return decorator

    # -- flushing --------------------------------------------------------------
    def flush(self, timeout: float = 5.0) -> bool:
        """Block until every chunk finished before the call is sent (or
        dropped and counted), or ``timeout`` seconds pass. True if done."""
        if self._writer is None:
            return True
        try:
            return bool(self._writer.flush(timeout))
        except Exception:
            from tracer._errors import internal_error

            internal_error("tracer.flush")
            return False

    def shutdown(self, timeout: float = 5.0) -> None:
        """Count still-open spans as lost, send what is finished, stop the writer."""
        if self._shutdown:
            return
        self._shutdown = True
        lost = self._buffer.count_lost()
        if lost:
            log.info("tracer: %d span(s) still open at shutdown were not sent", lost)
        if self._writer is not None:
            try:
                self._writer.stop(timeout)
            except Exception:
                from tracer._errors import internal_error

                internal_error("tracer.shutdown")

    def _atexit(self) -> None:
        if os.getpid() == self._pid:
            self.shutdown(timeout=2.0)

    def _after_fork_in_child(self) -> None:
        # The parent keeps sending what it had; the child starts empty.
        self._pid = os.getpid()
        self._buffer.after_fork_in_child()
        self._writer_lock = threading.Lock()
        writer, self._writer = self._writer, None
        if writer is not None and hasattr(writer, "after_fork_in_child"):
            try:
                writer.after_fork_in_child()
            except Exception:
                pass
        if self._sampler is not None and hasattr(self._sampler, "after_fork_in_child"):
            self._sampler.after_fork_in_child()

    def _reset_writer(self) -> None:
        """Stop and forget the writer; the next chunk builds one from the
        current configuration (tests and ``tracer-run`` use this)."""
        writer, self._writer = self._writer, None
        self._sampler = None
        if writer is not None:
            try:
                writer.stop(1.0)
            except Exception:
                pass

    def stats(self) -> dict[str, int]:
        """Counters: spans lost at shutdown, and the writer's drops by reason."""
        out = {"spans_lost_open_at_shutdown": self._buffer.lost_spans}
        if self._writer is not None and hasattr(self._writer, "stats"):
            out.update(self._writer.stats())
        return out
