"""``_cspan.trace_root(..., ctx, meta, metrics)``: a root span with tags
copied in C (contrib._dbapi's query outside any request). C only."""

from __future__ import annotations

import pytest

from tracer import tracer
from tracer._tracer import _RootTrace, _trace_root

pytestmark = pytest.mark.skipif(_trace_root is None, reason="the C span code is not in use")


def _root(*tags):
    return _trace_root(_RootTrace, tracer._buffer, "q", "svc", "SELECT 1", "sql", False, None, *tags)


def test_the_tags_are_copied_into_the_root_span(test_spans):
    meta, metrics = {"db.system": "mysql", "out.host": "h"}, {"_dd.measured": 1}
    span = _root(meta, metrics)
    assert tracer.current_span() is None, "not activated"
    assert span.meta == meta and span.meta is not meta
    assert span.metrics == metrics and span.metrics is not metrics
    span.set_tag("db.row_count", 3)
    span.finish()
    assert meta == {"db.system": "mysql", "out.host": "h"} and metrics == {"_dd.measured": 1}, "the originals unchanged"
    (sent,) = test_spans.spans
    assert sent.meta == meta
    assert sent.metrics == {"_dd.measured": 1, "db.row_count": 3, "_dd.top_level": 1}


def test_bad_tags_are_a_clear_error_and_start_no_span(test_spans):
    with pytest.raises(AttributeError, match="keys"):
        _root({"a": "b"}, 5)
    with pytest.raises(TypeError, match="takes 10 arguments"):
        _root({"a": "b"})
    assert tracer.current_span() is None
    tracer.flush()
    assert test_spans.spans == []
