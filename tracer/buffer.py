"""Per-trace buffer: spans grouped by trace until their chunk can leave.

A ``_Trace`` is shared by every span of one trace *in this process*. Its
chunk (the finished spans not yet sent) goes to the writer when

- the local root finishes (what is finished by then; spans that finish later
  leave as another chunk once nothing of the trace is open), or
- ``partial_flush_min_spans`` finished spans pile up in a trace still open.

Spans still open when the process shuts down are counted as lost, never sent
half-built. After ``fork()`` the child marks every inherited trace foreign:
the parent sends those, the child drops them (no span is delivered twice).

A finished span leaves its ``Span`` object behind: its fields are appended
to the trace's ``finished`` list as one flat record of ``RECORD_LEN`` values
(``tracer.span.RECORD_FIELDS``; ``tracer.span.records`` turns a chunk into
named views). The ``Span`` is then freed as soon as the app drops it, and a
chunk waiting for the writer is one list holding strings, ints and two
untracked tag dicts per span: nothing per span for the cyclic garbage
collector to promote and walk (a ``Span`` per queued span made full
collections cost ~0.5 µs per span in the benchmark).

Threading: spans of one trace may start and finish in different threads.
Starting and finishing are lock-free (atomic counts and appends under the
GIL); a chunk leaving takes one module lock. All of it runs on the
app's threads, so it does per-trace work once and per-span work minimal.
"""

from __future__ import annotations

import itertools
import threading
from typing import TYPE_CHECKING, Any, Protocol

from tracer.span import RECORD_LEN, FinishedSpan, _cspan

if TYPE_CHECKING:
    from tracer.span import Span


# Guards the rare path (a chunk leaving, shutdown). One lock for all traces:
# it is taken once per chunk, never per span, and creating a lock per trace
# cost more than the contention it would avoid.
_flush_lock = threading.Lock()


def _gc_untrack() -> Any:
    """CPython's ``PyObject_GC_UnTrack`` through ctypes (a call holding the
    GIL, ~2.9 k instructions), or None: with the C span built (it untracks
    its lists in C), or where ctypes or the C API is missing (PyPy)."""
    if _cspan is not None:
        return None
    try:
        import ctypes

        untrack = ctypes.pythonapi.PyObject_GC_UnTrack
        untrack.argtypes = (ctypes.py_object,)
        untrack.restype = None
    except Exception:  # no ctypes, no pythonapi: the lists stay tracked
        return None
    return untrack


# The pure-Python path's counterpart of _cspan.c untracking a trace's first
# chunk list: a list of span records (ints, strs and tag dicts) holds no
# cycle, and while tracked every young collection walks each value of every
# list not yet sent (the in-progress one and those queued for the writer):
# ~700 instructions a span on the benchmark's 101-span traces. What the list
# holds stays alive through its references (the GC counts them as outside
# references); a cycle through a tag dict is found once the chunk is freed.
# The call costs ~2.9 k instructions, so a trace pays it when its
# UNTRACK_AT-th span starts (tracer._tracer: small traces never do).
untrack_list = _gc_untrack()
UNTRACK_AT = 8 if untrack_list is not None else 0  # 0: next(starts) never gives it


def _taken(counter: itertools.count) -> int:
    """How many values ``counter`` (started at 1) has given, without advancing it.

    Read from its repr, ``count(N)`` (rare path: a chunk leaving, shutdown):
    ``count.__reduce__`` is deprecated since 3.12 and removed in 3.14."""
    return int(repr(counter)[6:-1]) - 1


class ChunkSink(Protocol):
    """Where finished chunks go (the writer). ``write`` is called on app
    threads, must not block or raise. A chunk is a flat list of span records
    (see the module docstring); its first record's trace is ``trace``."""

    def write(self, trace: _Trace, chunk: list[Any]) -> None: ...


# A trace's fields, as tracer/_cspan.c's TraceBase holds them (same names,
# same order). The Python class keeps the clock bases behind properties (their
# setters keep wall_offset, a span start's one addition, in step).
TRACE_FIELDS = (
    "trace_id",
    "buffer",
    "starts",
    "finishes",
    "finished",
    "root",
    "root_done",
    "priority",
    "mechanism",
    "origin",
    "dd_tags",
    "tracestate",
    "wall_base",
    "mono_base",
    "foreign",
    "remote_parent",
    "peeks",
)


class _Trace:
    __slots__ = tuple("_" + f if f in ("wall_base", "mono_base") else f for f in TRACE_FIELDS) + ("wall_offset",)

    def __init__(self, buffer: TraceBuffer, trace_id: int, wall_base: int, mono_base: int) -> None:
        self.trace_id = trace_id
        self.buffer = buffer
        # Lock-free counting on the hot path: under the GIL, next() on a count
        # and list.extend of a tuple are atomic. A span's record is appended to
        # `finished` *before* it takes its finish ordinal, so whoever takes the
        # ordinal equal to the number of starts knows every span of the trace
        # is in the list.
        self.starts = itertools.count(1)
        self.finishes = itertools.count(1)
        self.finished: list[Any] = []  # flat span records, RECORD_LEN values each
        self.root: Span | FinishedSpan | None = None  # local root (first span of the trace here); its record once sent
        self.root_done = False
        self.priority: int | None = None  # sampling priority, decided once (see sampler)
        self.mechanism: int | None = None  # sampling mechanism for _dd.p.dm
        self.origin: str | None = None
        self.dd_tags: dict[str, str] = {}  # propagated _dd.p.* tags (without _dd.p.tid)
        self.tracestate: str | None = None  # other vendors' W3C tracestate members
        self._wall_base = wall_base
        self._mono_base = mono_base
        self.wall_offset = wall_base - mono_base
        self.foreign = False
        self.remote_parent = False  # continued from propagated headers
        self.peeks = 0  # reads of `starts` by started_count()
        buffer._live.add(self)

    # The clock bases: start_ns = wall_base + (mono - mono_base), which a
    # span start computes as wall_offset + mono (one addition, one int less);
    # setting either base keeps wall_offset in step.
    @property
    def wall_base(self) -> int:
        """Epoch ns at ``mono_base``."""
        return self._wall_base

    @wall_base.setter
    def wall_base(self, value: int) -> None:
        self._wall_base = value
        self.wall_offset = value - self._mono_base

    @property
    def mono_base(self) -> int:
        """``perf_counter_ns()`` when the trace started here."""
        return self._mono_base

    @mono_base.setter
    def mono_base(self, value: int) -> None:
        self._mono_base = value
        self.wall_offset = self._wall_base - value

    def started_count(self) -> int:
        """How many spans of the trace started here. Under ``_flush_lock``
        only: it reads ``starts`` by advancing it (one ``next()``, ~5 times
        cheaper than ``_taken``'s repr), and ``peeks`` counts those reads."""
        self.peeks += 1
        return next(self.starts) - self.peeks

    def start_span_late(self) -> None:
        """A child started after the local root finished: the trace is live again."""
        self.buffer._live.add(self)

    def _flush(self, ordinal: int, root_finished: bool) -> None:
        """Rare path: the root just finished, a late span finished after it,
        or enough finished spans piled up for a partial flush. A finishing
        span appends its record to ``finished`` and takes its ``ordinal``
        from ``finishes`` itself (``Span.__exit__``, inlined there), then
        calls this."""
        with _flush_lock:
            if self.foreign:  # inherited across fork(): the parent sends it
                del self.finished[:]
                return
            complete = ordinal >= self.started_count()
            if root_finished and not complete:
                # A child may have taken a later ordinal before the root set
                # root_done (the pure-Python finish can switch threads between
                # the two): it did not flush, so the root counts every ordinal
                # taken, or the trace would stay live until shutdown.
                complete = _taken(self.finishes) >= self.started_count()
            if not (root_finished or complete or len(self.finished) >= self.buffer.partial_flush_len):
                return
            if complete:
                # Every span of the trace appended its record before taking
                # its ordinal: nothing can append to this list any more.
                chunk, self.finished = self.finished, []
                self.buffer._live.discard(self)
                root = self.root
                if root_finished and root is not None and chunk and chunk[1 - RECORD_LEN] == root.span_id:
                    # What the writer reads of the root, without the Span (and
                    # the trace <-> root cycle) waiting in its queue.
                    self.root = FinishedSpan._make(chunk[-RECORD_LEN:])
            else:
                # Slice then delete: an append racing with us lands past `n` and stays.
                n = len(self.finished)
                chunk = self.finished[:n]
                del self.finished[:n]
        if chunk:
            self.buffer.sink.write(self, chunk)


class TraceBuffer:
    """Owns the live traces and the sink their chunks go to."""

    def __init__(self, sink: ChunkSink, partial_flush_min_spans: int = 300) -> None:
        self.sink = sink
        self.partial_flush_min_spans = partial_flush_min_spans
        self._live: set[_Trace] = set()
        self.lost_spans = 0  # open at shutdown: counted, not sent

    @property
    def partial_flush_min_spans(self) -> int:
        return self.partial_flush_len // RECORD_LEN

    @partial_flush_min_spans.setter
    def partial_flush_min_spans(self, spans: int) -> None:
        self.partial_flush_len = spans * RECORD_LEN  # what the hot path compares: values, not spans

    def count_lost(self) -> int:
        """At shutdown: count the spans still open (and drop their finished
        siblings' pending chunks with them, counted as lost too)."""
        lost = 0
        for trace in list(self._live):
            with _flush_lock:
                trace.foreign = True
                finished = len(trace.finished) // RECORD_LEN
                sent = _taken(trace.finishes) - finished
                lost += trace.started_count() - sent
                del trace.finished[:]
        self._live.clear()
        self.lost_spans += lost
        return lost

    def after_fork_in_child(self) -> None:
        global _flush_lock
        _flush_lock = threading.Lock()  # the parent's may have been held at fork time
        for trace in list(self._live):
            trace.foreign = True
        self._live.clear()
