from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import pytest

from tracer import processor, tracer
from tracer.config import config
from tracer.processor import process_chunk, runtime_id
from tracer.sampler import Sampler
from tracer.span import RECORD_LEN, records


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


@pytest.mark.parametrize("where", ["first", "middle", "last", "absent"])
@pytest.mark.parametrize("tags", [{}, {"team": "core"}])
def test_root_found_wherever_it_is_in_the_chunk(test_spans, monkeypatch, where, tags):
    """The local root gets the root-level tags whether its record is first
    (a one-span chunk), last (it finished last), in the middle, or not in
    this chunk at all; the chunk-level tags go on the first record."""
    monkeypatch.setattr(config, "tags", tags)
    with tracer.trace("web", service="web") as root:
        with tracer.trace("a"), tracer.trace("b"):
            pass
        root._trace.dd_tags["_dd.p.usr"] = "x"
    ((trace, chunk),) = test_spans.raw
    n = len(chunk) // RECORD_LEN
    ids = chunk[1::RECORD_LEN]
    at = ids.index(root.span_id)
    order = [i for i in range(n) if i != at]
    position = {"first": 0, "middle": 1, "last": n - 1, "absent": None}[where]
    if position is not None:
        order.insert(position, at)
    chunk[:] = [v for i in order for v in chunk[i * RECORD_LEN : (i + 1) * RECORD_LEN]]
    assert process_chunk(trace, chunk, tracer.sampler)
    spans = records(chunk)
    with_root_tags = [s.name for s in spans if s.meta.get("language") == "python"]
    assert with_root_tags == ([] if position is None else ["web"])
    assert [s.name for s in spans if "process_id" in s.metrics] == with_root_tags
    assert [s.name for s in spans if s.meta.get("team") == "core"] == (with_root_tags if tags else [])
    # Let go once its tags are on; until then, the root's record (a view of it
    # since the hand-over, see tracer/buffer.py).
    assert (trace.root.span_id if position is None else trace.root) == (root.span_id if position is None else None)
    first = spans[0]
    assert first.metrics["_sampling_priority_v1"] >= 1 and first.meta["_dd.p.usr"] == "x"
    assert [s.name for s in spans if "_sampling_priority_v1" in s.metrics] == [first.name]
    assert [s.name for s in spans if s.meta.get("_dd.p.usr")] == [first.name]


@pytest.mark.parametrize("mechanism", [0, 3, 99])
def test_trace_id_high_half_and_decision_maker_formatted_once(test_spans, monkeypatch, mechanism):
    """``_dd.p.tid`` comes from the last one formatted only when the high
    half matches (it changes every second); ``_dd.p.dm`` from a table, or
    formatted for a mechanism outside it."""
    monkeypatch.setattr(processor, "_last_tid", (1, "0000000000000001"))
    for _ in range(2):
        with tracer.trace("op") as span:
            span._trace.priority = 2
            span._trace.mechanism = mechanism
    for first, *_ in test_spans.processed():
        assert first.meta["_dd.p.tid"] == f"{first.trace_id >> 64:016x}" != "0000000000000001"
        assert first.meta["_dd.p.dm"] == f"-{mechanism}"
    assert processor._last_tid[0] == test_spans.chunks[-1][0].trace_id >> 64


def _mixed_batch(test_spans, broken: bool) -> list:
    """(trace, chunk) pairs: two-span trace, an empty chunk, a trace sampled
    out, a trace whose processing raises (``broken``), a one-span trace, and a
    chunk without its root (sent earlier: record taken out, ``trace.root`` None)."""
    test_spans.reset()
    with tracer.trace("a", service="web"), tracer.trace("a.child"):
        pass
    with tracer.trace("b", service="web") as b:
        b._trace.priority = 0
        b._trace.mechanism = 0
    with tracer.trace("c", service="web") as c:
        c._trace.dd_tags["_dd.p.usr"] = "x"
    with tracer.trace("d", service="web"):
        pass
    with tracer.trace("e", service="web") as e, tracer.trace("e.child"), tracer.trace("e.grandchild"):
        pass
    pairs = list(test_spans.raw)
    pairs.insert(1, (pairs[0][0], []))
    if broken:
        pairs[3][0].dd_tags = 5  # not a dict: processing this chunk raises
    trace, chunk = pairs[-1]
    at = chunk[1::RECORD_LEN].index(e.span_id) * RECORD_LEN
    del chunk[at : at + RECORD_LEN]
    trace.root = None  # as after an earlier chunk of this trace held the root
    return pairs


def _tags(chunk: list) -> list:
    return [(s.name, {k: v for k, v in s.meta.items() if k != "_dd.p.tid"}, s.metrics) for s in records(chunk)]


def test_a_batch_tags_each_chunk_as_one_chunk_calls_do(test_spans, monkeypatch):
    """``process_chunks`` over a mixed batch: each chunk gets exactly the tags
    ``process_chunk`` gives it alone; entries not to be sent become None
    (empty, sampled out, failed), a failure stops nothing after it, and the
    spans not sent and the failure are reported."""
    monkeypatch.setattr(config, "env", "prod")
    monkeypatch.setattr(config, "version", "1.2")
    monkeypatch.setattr(config, "send_dropped", False)
    alone = [(trace, chunk) for trace, chunk in _mixed_batch(test_spans, broken=False) if chunk]
    expected = [_tags(chunk) if process_chunk(trace, chunk, tracer.sampler) else None for trace, chunk in alone]
    expected.insert(1, None)  # the empty chunk
    assert [e is None for e in expected] == [False, True, True, False, False, False]

    batch = _mixed_batch(test_spans, broken=False)
    assert processor.process_chunks(batch, tracer.sampler) == (1, [])
    assert [None if item is None else _tags(item[1]) for item in batch] == expected

    batch = _mixed_batch(test_spans, broken=True)
    spans = len(batch[3][1]) // RECORD_LEN
    not_sent, failed = processor.process_chunks(batch, tracer.sampler)
    assert not_sent == 1
    assert [(index, n, type(exc)) for index, n, exc in failed] == [(3, spans, AttributeError)]
    expected[3] = None
    assert [None if item is None else _tags(item[1]) for item in batch] == expected


class _CountingSampler(Sampler):
    """The real sampler, counting its decide() calls."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.calls = 0

    def decide(self, trace: Any, root: Any) -> None:
        self.calls += 1
        super().decide(trace, root)


@pytest.mark.parametrize("setting", ["none", "receiver rates", "rules", "explicit rate"])
def test_a_batch_applies_the_default_decision_as_decide_does(test_spans, setting):
    """Without rules, an explicit rate or receiver rates, every trace gets
    decide()'s keep (priority 1, mechanism 0) from one read per batch, no call
    per trace; with any of them, decide() runs per trace, as before."""
    cfg = SimpleNamespace(sampling_rules=[], sample_rate=None, rate_limit=100.0, env=None)
    if setting == "rules":
        cfg.sampling_rules = [{"service": "web", "sample_rate": 0}]
    if setting == "explicit rate":
        cfg.sample_rate = 0.0
    sampler = _CountingSampler(cfg)
    if setting == "receiver rates":
        sampler.update_rates({"service:,env:": 0.0})
    for _ in range(3):
        with tracer.trace("op", service="web"):
            pass
    batch = list(test_spans.raw)
    assert all(trace.priority is None for trace, _ in batch)
    assert processor.process_chunks(batch, sampler) == (0, [])
    traces = [trace for trace, _ in test_spans.raw]
    expected = {"none": (1, 0), "receiver rates": (0, 1), "rules": (-1, 3), "explicit rate": (-1, 3)}[setting]
    assert {(trace.priority, trace.mechanism) for trace in traces} == {expected}
    assert sampler.calls == (0 if setting == "none" else 3)
    assert [records(item[1])[0].metrics["_sampling_priority_v1"] for item in batch] == [expected[0]] * 3
