"""The span: one timed operation, with string tags (meta) and numeric tags (metrics).

Spans are created by :class:`tracer._tracer.Tracer`, never directly. A span is
owned by the thread that created it until ``finish()``. Finishing copies its
fields into its trace's buffer as a flat record (``FinishedSpan`` names the
fields); the writer thread reads that record and the span's ``meta`` and
``metrics`` dicts, so code must not change a finished span: a later
``resource`` or ``service`` change is not sent, a tag change may or may not be.
"""

from __future__ import annotations

import importlib
import logging
import traceback
from collections.abc import Iterator, Sequence
from random import getrandbits
from time import perf_counter_ns
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from tracer.config import config as _config
from tracer.context import ACTIVE_SPAN, get_active, set_active

if TYPE_CHECKING:
    from tracer.buffer import _Trace

# Limits of the Datadog intake (the receiver truncates beyond them too).
MAX_KEY_LEN = 200
MAX_VALUE_LEN = 25000
MAX_STACK_LEN = 5000
MAX_STACK_FRAMES = 30

_NOT_ACTIVATED = object()
_S = TypeVar("_S", bound="_SpanBase")
# Numeric tags that Datadog expects as strings in meta.
_STRING_TAGS = frozenset(("http.status_code",))
# Tag keys seen so far that are exact str within MAX_KEY_LEN (at most
# _SHORT_KEYS_MAX of them; a key the dict store hashes anyway): set_tag's
# common path tests that the key is in here instead of calling len() on it
# (-50 instructions a call, -150 a benchmark span). Only its slow path adds.
_SHORT_KEYS: set[str] = set()
_SHORT_KEYS_MAX = 1024
# The pure-Python set_tag's limit on a str value: none (the encoders cut it).
_WHOLE = 1 << 62


class FinishedSpan(NamedTuple):
    """A read-only view of one finished span record (see ``records``).

    A finished span travels from the buffer to the writer as ``RECORD_LEN``
    consecutive values of a flat chunk list, in this order (the v0.4 wire
    order). ``trace_id`` is the full 128-bit id; ``_dd.top_level`` is already
    in ``metrics`` for top-level spans."""

    trace_id: int
    span_id: int
    parent_id: int
    service: str | None
    name: str
    resource: str
    span_type: str | None
    start_ns: int
    duration_ns: int
    error: int
    meta: dict[str, str]
    metrics: dict[str, float]


RECORD_FIELDS = FinishedSpan._fields
RECORD_LEN = len(RECORD_FIELDS)
META = RECORD_FIELDS.index("meta")
METRICS = RECORD_FIELDS.index("metrics")


def iter_records(chunk: list[Any]) -> Iterator[Sequence[Any]]:
    """The records of a flat chunk, one ``RECORD_LEN``-tuple at a time (what
    the encoders unpack; a chunk of the wrong length raises ValueError)."""
    if len(chunk) == RECORD_LEN:  # a one-span trace (a query outside any request): skip zip's set-up
        return iter((chunk,))
    it = iter(chunk)
    return zip(*[it] * RECORD_LEN, strict=True)


def records(chunk: list[Any]) -> list[FinishedSpan]:
    """The spans of a flat chunk, as named views (tests, debugging)."""
    return [FinishedSpan._make(record) for record in iter_records(chunk)]


# Every field of a span (the C version, tracer/_cspan.c, has the same, in this order).
SPAN_FIELDS = (
    "trace_id",
    "span_id",
    "parent_id",
    "name",
    "service",
    "resource",
    "span_type",
    "start_ns",
    "duration_ns",
    "error",
    "meta",
    "metrics",
    "_trace",
    "_parent",
    "_prev",
    "_mono",
    "_request",  # the state of the server request this span is the root of, while it runs; else None
)


class _MarkedStart(int):
    """A span's start clock after ``_mark_end()``: equal to the start, but
    ``now - it`` (an int minus this subclass runs ``__rsub__`` first) is the
    marked end minus the start, whatever ``now`` is."""

    end: int

    def __new__(cls, start: int, end: int) -> _MarkedStart:
        self = super().__new__(cls, start)
        self.end = end
        return self

    def __rsub__(self, other: int) -> int:
        return self.end - int(self)


class _SpanBase:
    """The span's fields and hot-path methods in pure Python. ``tracer._cspan``
    has the same in C (used when it is built, unless ``TRACER_PURE_PYTHON``
    is set); its slow paths call back into the methods here, so the rules
    (limits, value types) live here. Keep the two in step."""

    __slots__ = SPAN_FIELDS

    trace_id: int  # 128 bits; the low 64 go on the wire, the high half in meta _dd.p.tid
    span_id: int
    parent_id: int  # 0 for a root
    name: str
    service: str | None
    resource: str
    span_type: str | None
    start_ns: int  # epoch ns
    duration_ns: int | None  # None until finished
    error: int
    meta: dict[str, str]
    metrics: dict[str, float]
    _trace: _Trace
    _parent: Span | None  # None for the local root
    _prev: Any  # the span active before this one, _NOT_ACTIVATED if it never was active
    _mono: int  # perf_counter_ns() at the start
    _request: Any  # the server request's state while this root runs (contrib.flask), else None

    # -- tags -------------------------------------------------------------------
    def set_tag(self, key: str, value: Any) -> None:
        """Set a tag. Strings go to ``meta``; numbers to ``metrics`` (as ddtrace
        does), except a few keys Datadog reads as strings; other values are
        stored as ``str(value)``. ``None`` removes the tag.

        A str value is kept whole here; the encoders cut one past
        ``MAX_VALUE_LEN`` characters on the wire, as ddtrace's does (the
        check here cost the common path ~240 instructions a call). The C
        span cuts it here: its check costs nothing."""
        if type(value) is str and key in _SHORT_KEYS:
            self.meta[key] = value  # the common case, in the fewest steps
            return
        self._set_tag_checked(key, value, _WHOLE)

    def _set_tag_checked(self, key: str, value: Any, value_limit: int = MAX_VALUE_LEN) -> None:
        """``set_tag`` for a key not seen yet or a value not a str: the key
        cut to ``MAX_KEY_LEN``, a str value to ``value_limit`` (the C span's
        slow path: ``MAX_VALUE_LEN``), a value made a str to ``MAX_VALUE_LEN``."""
        if len(key) > MAX_KEY_LEN:
            key = key[:MAX_KEY_LEN]
        elif type(key) is str and len(_SHORT_KEYS) < _SHORT_KEYS_MAX:
            _SHORT_KEYS.add(key)
        cls = type(value)
        if cls is str:
            if len(value) > value_limit:
                value = value[:value_limit]
            self.meta[key] = value
        elif (cls is int or cls is float) and key not in _STRING_TAGS:
            self.metrics[key] = value
        elif value is None:
            self.meta.pop(key, None)
            self.metrics.pop(key, None)
        elif cls is bool:
            self.meta[key] = "true" if value else "false"
        else:
            try:
                text = str(value)
            except Exception:
                return
            self.meta[key] = text[:MAX_VALUE_LEN]

    def set_metric(self, key: str, value: float) -> None:
        if len(key) > MAX_KEY_LEN:
            key = key[:MAX_KEY_LEN]
        cls = type(value)
        if cls is not int and cls is not float:
            try:
                value = float(value)
            except (TypeError, ValueError):
                return
        self.metrics[key] = value

    def set_exc_info(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Mark the span as an error: error.type, error.message and a bounded
        error.stack (the innermost frames).

        error.type is ``module.Name`` for every exception, builtins included
        (``builtins.ValueError``), the way ddtrace writes it, so error groups
        and monitors keyed on it keep working after a migration."""
        if exc_type is None:
            return
        self.error = 1
        self.meta["error.type"] = f"{exc_type.__module__}.{exc_type.__name__}"
        try:
            message = str(exc_value) if exc_value is not None else ""
        except Exception:
            message = "<unprintable exception>"
        self.meta["error.message"] = message[:MAX_VALUE_LEN]
        try:
            stack = "".join(traceback.format_exception(exc_type, exc_value, tb, limit=-MAX_STACK_FRAMES))
        except Exception:
            stack = ""
        if len(stack) > MAX_STACK_LEN:
            stack = "..." + stack[-MAX_STACK_LEN:]
        self.meta["error.stack"] = stack

    # -- life cycle -------------------------------------------------------------
    def __enter__(self: _S) -> _S:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        tb: TracebackType | None,
        end_ns: int | None = None,
        restore: bool = True,
    ) -> None:
        """The end of a ``with`` block, and of ``finish()``, which passes its
        explicit end time (``end_ns``) and whether this span is the active
        one (``restore``). The record's hand-over to the trace is inlined
        here (a call per span costs ~400 instructions): ``tracer/_cspan.c``'s
        ``finish_record`` does the same, a change here goes there too."""
        if exc_type is not None:
            try:
                self.set_exc_info(exc_type, exc_value, tb)
            except Exception:  # never mask the user's exception
                pass
        if self.duration_ns is not None:
            # Finished before its block ended (finish(), or from another
            # thread or context, where this one stayed active): the block
            # still ends with the span active before it.
            if self._prev is not _NOT_ACTIVATED and get_active() is self:
                set_active(self._prev)
            return
        if end_ns is None:
            self.duration_ns = duration = perf_counter_ns() - self._mono
        else:
            self.duration_ns = duration = max(0, end_ns - self.start_ns)
        # The span active before this one becomes active again. When that is
        # this span's parent (every child trace() starts) and this span is
        # still the active one, the variable is left as it is: a finished
        # span there reads as its nearest unfinished ancestor (current_span,
        # trace(), unfinished()), which is the parent, so one ContextVar.set
        # a span is saved (~1 k instructions; ddtrace's context provider
        # leaves finished spans there too). The next activation in this
        # context replaces it; a root's end always sets.
        prev = self._prev
        parent = self._parent
        if (prev is not parent or prev is None or get_active() is not self) and prev is not _NOT_ACTIVATED and restore:
            set_active(prev)  # type: ignore[arg-type]
        trace = self._trace
        metrics = self.metrics
        service = self.service
        if parent is None or parent.service != service:
            metrics["_dd.top_level"] = 1
        finished = trace.finished
        # The record: RECORD_FIELDS, in wire order. Appended before the
        # finish ordinal is taken (see tracer.buffer).
        finished += (
            trace.trace_id,
            self.span_id,
            self.parent_id,
            service,
            self.name,
            self.resource,
            self.span_type,
            self.start_ns,
            duration,
            self.error,
            self.meta,
            metrics,
        )
        ordinal = next(trace.finishes)
        if self is trace.root:
            trace.root_done = True
            trace._flush(ordinal, True)
        elif trace.root_done or len(finished) >= trace.buffer.partial_flush_len:
            trace._flush(ordinal, False)

    def _mark_end(self) -> None:
        """Record the end time now: a later ``finish()`` (or block end) with
        no time given ends the span then, not when it is called. For a span
        whose end is known before it can be handed over (mysql-connector's
        unbuffered query, ended when its rows are read). The C span keeps the
        clock in a C field; here ``_mono`` becomes a ``_MarkedStart``, which
        is still the start but makes ``perf_counter_ns() - _mono`` the marked
        duration, so that the end paths pay nothing for it."""
        self._mono = _MarkedStart(self._mono, perf_counter_ns())

    def finish(self, finish_time_ns: int | None = None) -> None:
        """End the span (idempotent). If it is the active span, its previous
        active span becomes active again. Hands the span to its trace buffer."""
        if self.duration_ns is None:
            _SpanBase.__exit__(self, None, None, None, finish_time_ns, get_active() is self)


# The C modules' interface these Python files call (tracer/_cmodule.h's
# TRACER_C_ABI, exported by each module as ABI): bumped with it.
_C_ABI = 17
# A module refused as stale: its name -> the ABI it has (tracer-run --info says so).
stale_builds: dict[str, Any] = {}


def load_speedup(name: str) -> Any:
    """The C module ``tracer.<name>``, or None when it is not built (no
    compiler at install time) or ``TRACER_PURE_PYTHON`` is set: the caller
    then runs its pure-Python code. Importing ``tracer`` never fails because
    of the C code: any other error (a RuntimeWarning made an error by
    ``-W error``, as free-threaded builds warn that they re-enable the GIL)
    is logged and the pure-Python code runs too. So is a module built from
    other sources than these Python files (a checkout updated without
    rebuilding: its ``ABI`` differs from ``_C_ABI``), once, with the fix."""
    if _config.pure_python:
        return None
    try:
        module = importlib.import_module(f"tracer.{name}")
    except ImportError:
        return None
    except Exception as exc:  # Warning subclasses Exception
        logging.getLogger("tracer").warning("tracer.%s not loaded (%r): using pure Python", name, exc)
        return None
    abi = getattr(module, "ABI", None)
    if abi == _C_ABI:
        return module
    if name not in stale_builds:
        stale_builds[name] = abi
        logging.getLogger("tracer").warning(
            "tracer.%s was built from other sources (ABI %s, these files need %s): using pure Python;"
            " rebuild it: pip install -e . (or python setup.py build_ext --inplace)",
            name,
            abi,
            _C_ABI,
        )
    return None


_cspan = load_speedup("_cspan")
if TYPE_CHECKING:
    _Base = _SpanBase
else:
    _Base = _SpanBase if _cspan is None else _cspan.SpanBase


class Span(_Base):
    """One timed operation: created by ``Tracer``, never directly. Its fields
    and hot-path methods come from the C version when it is built, else from
    ``_SpanBase``."""

    __slots__ = ()

    # -- tags -------------------------------------------------------------------
    # The C set_tag/set_metric handle str keys and str or number values within
    # the limits, and call these for everything else.
    _set_tag_slow = _SpanBase._set_tag_checked  # cuts a str value to MAX_VALUE_LEN, as the C set_tag does
    _set_metric_slow = _SpanBase.set_metric
    set_exc_info = _SpanBase.set_exc_info  # the C __exit__ calls it when an exception leaves the block
    _finish_slow = _SpanBase.finish  # the C finish() calls it for an explicit end time

    def set_tags(self, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.set_tag(key, value)

    def get_tag(self, key: str) -> str | None:
        return self.meta.get(key)

    def get_metric(self, key: str) -> float | None:
        return self.metrics.get(key)

    def __copy__(self) -> Span:
        """``copy.copy(span)``: a shallow copy (the same meta and metrics
        dicts), as Python copies a slotted object; the C fields have no
        default pickling, so both versions copy here."""
        new = type(self).__new__(type(self))
        for field in SPAN_FIELDS:
            setattr(new, field, getattr(self, field))
        new._request = None  # a server request's state stays with its own root span
        return new

    # -- life cycle -------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.duration_ns is not None


    # -- helpers --------------------------------------------------------------
    def __repr__(self) -> str:
        return (
            f"Span(name={self.name!r}, service={self.service!r}, resource={self.resource!r}, "
            f"trace_id={self.trace_id:032x}, span_id={self.span_id:016x}, parent_id={self.parent_id:016x})"
        )


def new_span(
    trace: _Trace,
    trace_id: int,
    span_id: int,
    parent_id: int,
    parent: Span | None,
    name: str,
    service: str | None,
    resource: str | None,
    span_type: str | None,
    mono: int,
    start_ns: int,
) -> Span:
    """A span with every field set, not yet activated. ``Span`` has no
    ``__init__`` of its own: the pure-Python ``trace()`` makes each child by
    calling ``Span()`` (``object.__init__``, no argument tuple: ~200
    instructions less than ``object.__new__(Span)``) and stores the same
    fields as here."""
    span = Span()
    span._trace = trace
    span.trace_id = trace_id
    span.span_id = span_id
    span.parent_id = parent_id
    span._parent = parent
    span.name = name
    span.service = service
    span.resource = resource or name
    span.span_type = span_type
    span._mono = mono
    span.start_ns = start_ns
    span.duration_ns = None
    span.error = 0
    span.meta = {}
    span.metrics = {}
    span._prev = _NOT_ACTIVATED  # the span active before this one, once activated
    span._request = None
    return span


if _cspan is not None:
    _cspan.configure(Span, ACTIVE_SPAN, _NOT_ACTIVATED, getrandbits)
