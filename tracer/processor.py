"""Trace-level processing of a chunk, on the writer thread (not the app's).

Decides sampling once per trace and puts trace-level tags on the chunk's
first span and the local root, as the Datadog intake expects them.
"""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING, Any

from tracer.config import config as _config
from tracer.span import META, METRICS, RECORD_LEN, FinishedSpan, load_speedup

if TYPE_CHECKING:
    from tracer.buffer import _Trace

# The C v0.4 encoder's module: its describe_v04 runs process_chunks' loop
# body for the usual entries when the tags are deferred to the encoder.
_cencode = load_speedup("_cencode")
# The attributes describe_v04 reads and sets (the names come from here: the
# C code holds no Python objects).
_TRACE_FIELDS = ("root", "priority", "mechanism", "trace_id", "origin", "dd_tags", "span_id", "duration_ns")

_runtime_id = uuid.uuid4().hex
_pid = os.getpid()


def _reset_after_fork() -> None:
    global _runtime_id, _pid
    _runtime_id = uuid.uuid4().hex
    _pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


# ``_dd.p.tid``: the high half holds the trace's start second, so consecutive
# traces share it: the last one formatted is kept (one format per second, not
# per trace, and no call per chunk). Replaced whole, so a reader on another
# thread sees a matching pair.
_last_tid: tuple[int, str] = (0, "")

# ``_dd.p.dm`` for the usual mechanisms, formatted once.
_DECISION_MAKERS = {mechanism: f"-{mechanism}" for mechanism in range(16)}


def runtime_id() -> str:
    return _runtime_id


def _root_index(chunk: list[Any], root_span_id: int) -> int | None:
    """Where the local root's record starts in ``chunk``, if it is there
    (``process_chunk`` has checked the first and the last record)."""
    try:
        return chunk[1::RECORD_LEN].index(root_span_id) * RECORD_LEN
    except ValueError:
        return None


def process_chunk(trace: _Trace, chunk: list[Any], sampler: Any) -> bool:
    """Tag one chunk (flat span records, see ``tracer.buffer``) in place;
    return False when it must not be sent (dropped by sampling and
    TRACER_WRITER_SEND_DROPPED=false). ``process_chunks`` for a batch."""
    batch: list[Any] = [(trace, chunk)]
    _, failed = process_chunks(batch, sampler)
    if failed:
        raise failed[0][2]
    return batch[0] is not None


# The per-batch settings of ``process_chunks``: the values, then the keys the
# tags go under (also the C encoder's, so that it holds no Python objects of
# its own).
_TAG_KEYS = (
    "env", "version", "language", "python", "runtime-id", "process_id",
    "_sampling_priority_v1", "_dd.p.dm", "_dd.p.tid", "_dd.origin",
)  # fmt: skip


def process_chunks(
    batch: list[Any], sampler: Any, defer: bool = False, settings: tuple[Any, ...] | None = None
) -> tuple[int, list[tuple[int, int, Exception]]]:
    """Tag the ``(trace, chunk)`` pairs of ``batch`` (the writer's drained
    queue) in place, in one loop: no call per chunk, the settings read once.
    An entry that must not be sent (an empty chunk, dropped by sampling with
    TRACER_WRITER_SEND_DROPPED=false, or failing here) is replaced by None.
    Returns the spans not sent because of sampling, and ``(index, spans,
    exception)`` for each entry that failed (its chunk as it was when it raised).
    Top-level spans were marked when they finished; this adds the
    trace-level tags.

    With ``defer`` the span dicts are left as they are: each entry becomes a
    descriptor ``(settings, chunk, priority, root, mechanism, trace_id,
    origin, dd_tags)`` from which the C encoder writes the tags
    (``_cencode.encode_v04_item``); ``settle`` puts them in the dicts instead
    for a chunk that goes the Python way. Either way ``entry[1]`` is the chunk."""
    global _last_tid
    if settings is None:
        cfg = _config
        settings = (cfg.env, cfg.version, cfg.tags, _runtime_id, _pid, cfg.send_dropped, *_TAG_KEYS)
    env, version, tags, runtime, pid, send_dropped = settings[:6]
    decide = sampler.decide  # (settle's traces are decided)
    default = sampler.default_decision()
    makers = _DECISION_MAKERS
    not_sent = 0
    failed: list[tuple[int, int, Exception]] = []
    describe = _cencode.describe_v04 if defer and _cencode is not None else None
    lo = 0
    end = len(batch)
    while lo < end:
        stop = end
        if describe is not None:
            # The usual entries in C; the one it stops at (decide(), anything
            # unusual, an error) runs the body below, then C goes on.
            lo, dropped, paused, failure = describe(batch, lo, settings, default, _TRACE_FIELDS, FinishedSpan)
            not_sent += dropped
            if failure is not None:  # batch[lo] raised in C: recorded as the except below records it
                failed.append((lo, *failure))
                lo += 1
                continue
            if paused:  # every millisecond: this back edge lets an app thread take the GIL
                continue
            stop = min(lo + 1, end)
        for index in range(lo, stop):
            trace, chunk = batch[index]
            try:
                if not chunk:
                    batch[index] = None
                    continue
                root_span = trace.root
                priority = trace.priority
                if priority is None:
                    if default is None:
                        decide(trace, root_span or FinishedSpan._make(chunk[:RECORD_LEN]))
                        priority = trace.priority
                        if priority is None:
                            priority = 1
                    else:
                        # What decide() stores for this batch, without the call
                        # (nothing is called between the check and the stores).
                        priority = default[0]
                        trace.mechanism = default[1]
                        trace.priority = priority
                root = None
                if root_span is not None and root_span.duration_ns is not None:
                    # The root is usually the first record (a one-span chunk) or
                    # the last (it finishes last): both checked inline.
                    span_id = root_span.span_id
                    if chunk[1] == span_id:
                        root = 0
                    elif chunk[-RECORD_LEN + 1] == span_id:
                        root = len(chunk) - RECORD_LEN
                    else:
                        root = _root_index(chunk, span_id)
                    if root is not None:
                        # The sampling decision is made, so nothing needs
                        # trace.root any more: dropping it breaks the trace <->
                        # root reference cycle, and the root is freed by reference
                        # counting instead of waiting for (and lengthening) a
                        # cyclic garbage collection.
                        trace.root = None
                if priority <= 0 and not send_dropped:
                    not_sent += len(chunk) // RECORD_LEN
                    batch[index] = None
                    continue
                if defer:
                    batch[index] = (
                        settings, chunk, priority, root, trace.mechanism if priority > 0 else None, trace.trace_id,
                        trace.origin, trace.dd_tags,
                    )  # fmt: skip
                    continue
                if root is not None:
                    meta = chunk[root + META]
                    if env:
                        meta.setdefault("env", env)
                    if version:
                        meta.setdefault("version", version)
                    if tags:
                        for key, value in tags.items():
                            meta.setdefault(key, value)
                    meta["language"] = "python"
                    meta["runtime-id"] = runtime
                    chunk[root + METRICS]["process_id"] = pid
                meta = chunk[META]
                chunk[METRICS]["_sampling_priority_v1"] = priority
                mechanism = trace.mechanism
                if mechanism is not None and priority > 0:
                    try:
                        meta["_dd.p.dm"] = makers[mechanism]
                    except (KeyError, TypeError):
                        meta["_dd.p.dm"] = f"-{mechanism}"
                high = trace.trace_id >> 64
                if high:
                    tid = _last_tid
                    if tid[0] != high:
                        tid = _last_tid = (high, f"{high:016x}")
                    meta["_dd.p.tid"] = tid[1]
                if trace.origin:
                    meta["_dd.origin"] = trace.origin
                dd_tags = trace.dd_tags
                if dd_tags:
                    for key, value in dd_tags.items():
                        meta.setdefault(key, value)
                if env and root != 0:
                    meta.setdefault("env", env)
            except Exception as exc:
                failed.append((index, len(chunk) // RECORD_LEN, exc))
                batch[index] = None
        lo = stop
    return not_sent, failed


class _Root:
    __slots__ = ("span_id", "duration_ns")

    def __init__(self, span_id: int) -> None:
        self.span_id = span_id
        self.duration_ns = 0  # finished


class _Decided:
    """A chunk's trace as ``process_chunks`` reads it, rebuilt from a
    descriptor: decided, its root (if in the chunk) found by its span id."""

    __slots__ = ("root", "priority", "mechanism", "trace_id", "origin", "dd_tags")

    def __init__(self, item: tuple[Any, ...]) -> None:
        _, chunk, self.priority, root, self.mechanism, self.trace_id, self.origin, self.dd_tags = item
        self.root = None if root is None else _Root(chunk[root + 1])


class _NoSampler:
    def decide(self, trace: Any, root: Any) -> None:
        raise AssertionError("a descriptor's trace is decided")

    def default_decision(self) -> None:
        return None


_DECIDED = _NoSampler()


def settle(item: Any) -> list[Any]:
    """The chunk of a writer batch entry, with its trace-level tags in its
    span dicts: a descriptor's (``process_chunks`` with ``defer``) are put
    there by ``process_chunks`` itself, from the descriptor's settings; a
    ``(trace, chunk)`` pair has them. Raises what tagging raised."""
    chunk = item[1]
    if len(item) != 2:
        batch: list[Any] = [(_Decided(item), chunk)]
        _, failed = process_chunks(batch, _DECIDED, False, (*item[0][:5], True))
        if failed:
            raise failed[0][2]
    return chunk  # type: ignore[no-any-return]
