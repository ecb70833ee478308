"""Log correlation (``TRACER_LOGS_INJECTION``): trace ids on ``logging`` records.

``install()`` wraps the ``logging`` record factory so every record gets
``trace_id`` (32 lowercase hex), ``span_id`` (16 hex), ``service``, ``env``
and ``version`` from the span active where the record is created, and empty
strings for all five outside a span (DESIGN "Ids"), so a format string such
as ``"%(message)s trace_id=%(trace_id)s"`` never fails.

It also sets ddtrace's names, so a format string written for
``DD_LOGS_INJECTION`` keeps working: ``dd.trace_id`` is what ddtrace writes
(32 lowercase hex when the id uses more than 64 bits, which ours do unless
an upstream sent a 64-bit id, else decimal), ``dd.span_id`` is decimal,
``"0"`` for both outside a span; ``dd.service`` is the span's service, else
the configured one; ``dd.env`` and ``dd.version`` the configured values (or
``""``), inside a span or not.

``install()`` runs from ``patch_all()`` when ``TRACER_LOGS_INJECTION`` /
``DD_LOGS_INJECTION`` is on, the one path both for ``tracer-run`` (whose
bootstrap calls ``patch_all()``) and for ``import tracer; tracer.patch_all()``.

Runs on whichever thread logs: one ContextVar read when no span is active.
``install()`` / ``uninstall()`` are idempotent; uninstalling after another
library wrapped the factory on top of ours leaves its wrapper in place and
turns ours into a pass-through.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from tracer.config import config as _config
from tracer.context import get_active, unfinished

_lock = threading.Lock()
_factory: Callable[..., logging.LogRecord] | None = None  # ours, while installed
_enabled = False
_MAX_64 = (1 << 64) - 1


def _make_factory(original: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    cfg = _config

    def record_with_trace_ids(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = original(*args, **kwargs)
        if not _enabled:
            return record
        span = get_active()
        if span is not None and span.duration_ns is not None:
            span = unfinished(span)  # a finished span reads as its nearest unfinished ancestor
        env = cfg.env or ""
        version = cfg.version or ""
        if span is None:
            record.trace_id = record.span_id = record.service = record.env = record.version = ""
            record.__dict__.update(
                {"dd.trace_id": "0", "dd.span_id": "0", "dd.service": cfg.service or "", "dd.env": env, "dd.version": version}
            )
        else:
            trace_id = span.trace_id
            record.trace_id = hex_trace_id = f"{trace_id:032x}"
            record.span_id = f"{span.span_id:016x}"
            record.service = service = span.service or ""
            record.env = env
            record.version = version
            record.__dict__.update(
                {
                    "dd.trace_id": hex_trace_id if trace_id > _MAX_64 else str(trace_id),
                    "dd.span_id": str(span.span_id),
                    "dd.service": service,
                    "dd.env": env,
                    "dd.version": version,
                }
            )
        return record

    record_with_trace_ids.__wrapped__ = original  # type: ignore[attr-defined]
    return record_with_trace_ids


def install() -> None:
    """Start adding trace ids to new log records (any thread; idempotent)."""
    global _factory, _enabled
    with _lock:
        _enabled = True
        if _factory is not None:
            return
        _factory = _make_factory(logging.getLogRecordFactory())
        logging.setLogRecordFactory(_factory)


def uninstall() -> None:
    """Stop adding trace ids (any thread; idempotent)."""
    global _factory, _enabled
    with _lock:
        _enabled = False
        if _factory is None:
            return
        if logging.getLogRecordFactory() is _factory:
            logging.setLogRecordFactory(_factory.__wrapped__)  # type: ignore[attr-defined]
            _factory = None
        # else: someone wrapped ours; keep it as a pass-through and reuse it on install().


def installed() -> bool:
    return _enabled

