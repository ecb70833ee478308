from __future__ import annotations

import threading

from tracer import tracer
from tracer.config import config
from tracer.context import Context


def names(chunk):
    return [s.name for s in chunk]


def test_chunk_leaves_when_local_root_finishes(test_spans):
    with tracer.trace("root"):
        with tracer.trace("a"):
            pass
        assert test_spans.chunks == []
        with tracer.trace("b"):
            pass
    assert [names(c) for c in test_spans.chunks] == [["a", "b", "root"]]


def test_late_children_leave_as_their_own_chunk(test_spans):
    root = tracer.start_span("root")
    late = tracer.start_span("late", child_of=root)
    root.finish()
    assert [names(c) for c in test_spans.chunks] == [["root"]]
    later = tracer.start_span("later", child_of=late)
    late.finish()
    assert len(test_spans.chunks) == 1, "'later' is still open"
    later.finish()
    assert [names(c) for c in test_spans.chunks] == [["root"], ["late", "later"]]
    assert root._trace not in tracer._buffer._live


def test_partial_flush(test_spans, monkeypatch):
    monkeypatch.setattr(tracer._buffer, "partial_flush_min_spans", 10)
    with tracer.trace("root"):
        for _ in range(25):
            with tracer.trace("child"):
                pass
        assert [len(c) for c in test_spans.chunks] == [10, 10]
    assert [len(c) for c in test_spans.chunks] == [10, 10, 6]
    assert sum(len(c) for c in test_spans.chunks) == 26


def test_partial_flush_threshold_from_config():
    assert config.partial_flush_min_spans == 300
    assert tracer._buffer.partial_flush_min_spans == config.partial_flush_min_spans


def test_spans_finishing_in_many_threads_are_each_sent_once(test_spans):
    root = tracer.start_span("root")
    spans_per_thread, threads_count = 500, 8
    barrier = threading.Barrier(threads_count)

    def work():
        barrier.wait()
        for _ in range(spans_per_thread):
            tracer.start_span("child", child_of=root).finish()

    threads = [threading.Thread(target=work) for _ in range(threads_count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    root.finish()
    sent = [s for c in test_spans.chunks for s in c]
    assert len(sent) == spans_per_thread * threads_count + 1
    assert len({id(s) for s in sent}) == len(sent)
    assert root._trace not in tracer._buffer._live


def test_root_finishing_while_threads_finish_children(test_spans):
    for _ in range(20):
        test_spans.reset()
        root = tracer.start_span("root")
        children = [tracer.start_span("c", child_of=root) for _ in range(200)]
        start = threading.Barrier(3)

        def finish(part, start=start):
            start.wait()
            for c in part:
                c.finish()

        threads = [threading.Thread(target=finish, args=(children[i::2],)) for i in range(2)]
        for t in threads:
            t.start()
        start.wait()
        root.finish()
        for t in threads:
            t.join()
        sent = [s for c in test_spans.chunks for s in c]
        assert len(sent) == 201 and len({id(s) for s in sent}) == 201


def test_open_spans_at_shutdown_are_counted_lost_not_sent(test_spans):
    from tracer._tracer import Tracer

    local = Tracer(writer=test_spans)
    root = local.start_span("root")
    local.start_span("open-child", child_of=root)
    done = local.start_span("done-child", child_of=root)
    done.finish()
    local.shutdown()
    assert test_spans.chunks == []
    assert local.stats()["spans_lost_open_at_shutdown"] == 3
    root.finish()
    assert test_spans.chunks == [], "a trace lost at shutdown is never sent half-built"


def test_remote_parent_continues_trace(test_spans):
    ctx = Context(trace_id=(5 << 64) | 7, span_id=11, sampling_priority=2, origin="synthetics",
                  dd_tags={"_dd.p.dm": "-4", "_dd.p.tid": "0000000000000005"})
    span = tracer.start_span("server", child_of=ctx, activate=True)
    with tracer.trace("inner") as inner:
        pass
    span.finish()
    assert span.trace_id == (5 << 64) | 7 and span.parent_id == 11
    assert inner.parent_id == span.span_id
    trace = span._trace
    assert (trace.priority, trace.origin, trace.dd_tags) == (2, "synthetics", {"_dd.p.dm": "-4"})
    (chunk,) = test_spans.processed()
    first = chunk[0]
    assert first.metrics["_sampling_priority_v1"] == 2
    assert first.meta["_dd.origin"] == "synthetics"
    assert first.meta["_dd.p.tid"] == "0000000000000005"
    assert first.meta["_dd.p.dm"] == "-4"


def _newer_pythons():
    """pyenv's CPython >= 3.12 on this machine (where count.__reduce__ warns)."""
    import glob
    import os

    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = []
    for path in sorted(glob.glob(os.path.join(root, "versions", "3.*", "bin", "python3"))):
        minor = int(os.path.basename(os.path.dirname(os.path.dirname(path))).split(".")[1])
        if minor >= 12:
            found.append(path)
    return found


def test_taken_counts_without_advancing_and_without_deprecated_calls():
    import inspect
    import itertools
    import subprocess
    import sys

    from tracer.buffer import _taken

    counter = itertools.count(1)
    assert _taken(counter) == 0
    for _ in range(5):
        next(counter)
    assert _taken(counter) == 5
    assert _taken(counter) == 5, "reading does not advance"
    big = itertools.count(2**70)
    assert _taken(big) == 2**70 - 1
    # On 3.12+, count.__reduce__ warns (removed in 3.14): run the function there under -W error.
    source = "from __future__ import annotations\nimport itertools\n" + inspect.getsource(_taken)
    check = source + "\nc = itertools.count(1)\nnext(c); next(c)\nassert _taken(c) == 2, _taken(c)\n"
    for python in [sys.executable, *_newer_pythons()]:
        run = subprocess.run([python, "-W", "error", "-c", check], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, (python, run.stderr)
