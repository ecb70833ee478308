"""Trace-level processing of a chunk, on the writer thread (not the app's).

Decides sampling once per trace, marks top-level spans, and puts trace-level
tags on the chunk's first span and the local root, as the Datadog intake
expects them.
"""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING, Any

from tracer.config import config as _config

if TYPE_CHECKING:
    from tracer.span import Span

_runtime_id = uuid.uuid4().hex
_pid = os.getpid()


def _reset_after_fork() -> None:
    global _runtime_id, _pid
    _runtime_id = uuid.uuid4().hex
    _pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def runtime_id() -> str:
    return _runtime_id


def process_chunk(chunk: list[Span], sampler: Any) -> bool:
    """Tag the chunk in place; return False when it must not be sent
    (dropped by sampling and TRACER_WRITER_SEND_DROPPED=false)."""
    cfg = _config
    first = chunk[0]
    trace = first._trace
    if trace.priority is None:
        sampler.decide(trace, trace.root or first)
    priority = trace.priority if trace.priority is not None else 1
    if priority <= 0 and not cfg.send_dropped:
        if any(span._parent is None for span in chunk):
            trace.root = None  # see below
        return False
    # The per-span loop only marks top-level spans: a span whose parent is in
    # the same service (most of them) costs one attribute compare. The local
    # root is the one span of the trace without a parent (see
    # Tracer._start_trace); it is tagged once, after the loop.
    root = None
    for span in chunk:
        parent = span._parent
        if parent is None:
            span.metrics["_dd.top_level"] = 1
            root = span
        elif parent.service != span.service:
            span.metrics["_dd.top_level"] = 1
    env = cfg.env
    if root is not None:
        meta = root.meta
        if env:
            meta.setdefault("env", env)
        if cfg.version:
            meta.setdefault("version", cfg.version)
        for key, value in cfg.tags.items():
            meta.setdefault(key, value)
        meta["language"] = "python"
        meta["runtime-id"] = _runtime_id
        root.metrics["process_id"] = _pid
        # The sampling decision is made, so nothing needs trace.root any more:
        # dropping it breaks the trace <-> root reference cycle, and the
        # spans are freed by reference counting as soon as they are sent,
        # instead of waiting for (and lengthening) cyclic garbage collections.
        trace.root = None
    meta = first.meta
    first.metrics["_sampling_priority_v1"] = priority
    if trace.mechanism is not None and priority > 0:
        meta["_dd.p.dm"] = f"-{trace.mechanism}"
    high = trace.trace_id >> 64
    if high:
        meta["_dd.p.tid"] = f"{high:016x}"
    if trace.origin:
        meta["_dd.origin"] = trace.origin
    for key, value in trace.dd_tags.items():
        meta.setdefault(key, value)
    if env and first is not root:
        meta.setdefault("env", env)
    return True
