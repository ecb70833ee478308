from __future__ import annotations

import os

from tracer import tracer
from tracer.config import config
from tracer.processor import runtime_id


def test_trace_level_tags_on_root_and_top_level_marks(test_spans, monkeypatch):
    monkeypatch.setattr(config, "env", "prod")
    monkeypatch.setattr(config, "version", "1.2")
    monkeypatch.setattr(config, "tags", {"team": "core"})
    with tracer.trace("web", service="web") as root, tracer.trace("inner"), tracer.trace("db", service="mysql"):
        pass
    (chunk,) = test_spans.processed()
    by_name = {s.name: s for s in chunk}
    assert root.meta["env"] == "prod" and root.meta["version"] == "1.2" and root.meta["team"] == "core"
    assert root.meta["language"] == "python" and root.meta["runtime-id"] == runtime_id()
    assert root.metrics["process_id"] == os.getpid()
    assert by_name["web"].metrics["_dd.top_level"] == 1
    assert "_dd.top_level" not in by_name["inner"].metrics
    assert by_name["db"].metrics["_dd.top_level"] == 1, "a service change makes a span top-level"
    first = chunk[0]
    assert first.metrics["_sampling_priority_v1"] >= 1
    assert first.meta["_dd.p.tid"] == f"{root.trace_id >> 64:016x}"
    assert "language" not in by_name["inner"].meta


def test_dropped_traces_not_sent_when_configured(test_spans, monkeypatch):
    with tracer.trace("op") as span:
        span._trace.priority = 0
        span._trace.mechanism = 0
    assert len(test_spans.processed()) == 1, "priority 0 is sent by default (the receiver counts it)"
    monkeypatch.setattr(config, "send_dropped", False)
    assert test_spans.processed() == []
