from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tracer import tracer
from tracer.context import ACTIVE_SPAN, set_active, wrap_context


def test_nested_spans_activate_and_restore(test_spans):
    assert tracer.current_span() is None
    with tracer.trace("a") as a:
        assert tracer.current_span() is a
        with tracer.trace("b") as b:
            assert tracer.current_span() is b
            assert tracer.current_root_span() is a
            assert b.parent_id == a.span_id and b.trace_id == a.trace_id
        assert tracer.current_span() is a
    assert tracer.current_span() is None


def test_start_span_does_not_read_active_span(test_spans):
    with tracer.trace("a") as a:
        other = tracer.start_span("b")
        child = tracer.start_span("c", child_of=a, activate=True)
        assert tracer.current_span() is child
        child.finish()
        assert tracer.current_span() is a
        other.finish()
    assert other.trace_id != a.trace_id and other.parent_id == 0
    assert child.parent_id == a.span_id


def test_each_thread_has_its_own_active_span(test_spans):
    seen = {}
    barrier = threading.Barrier(2)

    def work(name):
        with tracer.trace(name) as span:
            barrier.wait()
            seen[name] = (tracer.current_span() is span, span.parent_id)

    with tracer.trace("main"):
        threads = [threading.Thread(target=work, args=(n,)) for n in ("t1", "t2")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert seen == {"t1": (True, 0), "t2": (True, 0)}, "new threads start without the caller's span"


def test_asyncio_tasks_see_their_own_span(test_spans):
    async def child(name):
        with tracer.trace(name) as span:
            await asyncio.sleep(0.01)
            assert tracer.current_span() is span
            return span

    async def main():
        with tracer.trace("root") as root:
            a, b = await asyncio.gather(child("a"), child("b"))
            assert tracer.current_span() is root
        return root, a, b

    root, a, b = asyncio.run(main())
    assert a.parent_id == root.span_id and b.parent_id == root.span_id
    assert {s.name for s in test_spans.spans} == {"root", "a", "b"}


def test_wrap_context_carries_span_into_worker_threads(test_spans):
    def work():
        with tracer.trace("worker") as span:
            return span

    with tracer.trace("root") as root, ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(wrap_context(work)) for _ in range(4)]
        spans = [f.result() for f in futures]
    assert all(s.parent_id == root.span_id and s.trace_id == root.trace_id for s in spans)
    assert tracer.current_span() is None
    (chunk,) = [c for c in test_spans.chunks if root.span_id in [s.span_id for s in c]]
    assert len(chunk) == 5, "workers finished before the root, so one chunk holds all"


def test_plain_thread_starts_a_new_trace_unless_carried(test_spans):
    # The two documented ways (docs/integrations.md, "Plain threading.Thread").
    seen = {}

    def work(key):
        with tracer.trace("work") as span:
            seen[key] = span

    def work_of(parent):
        span = tracer.start_span("explicit", child_of=parent, activate=True)
        try:
            work("child_of")
        finally:
            span.finish()
        seen["explicit"] = span

    with tracer.trace("request") as request:
        threads = [
            threading.Thread(target=work, args=("plain",)),
            threading.Thread(target=wrap_context(work), args=("wrapped",)),
            threading.Thread(target=work_of, args=(request,)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    assert seen["plain"].trace_id != request.trace_id and seen["plain"].parent_id == 0
    assert (seen["wrapped"].trace_id, seen["wrapped"].parent_id) == (request.trace_id, request.span_id)
    assert (seen["explicit"].trace_id, seen["explicit"].parent_id) == (request.trace_id, request.span_id)
    assert (seen["child_of"].trace_id, seen["child_of"].parent_id) == (request.trace_id, seen["explicit"].span_id)


def test_wrap_context_without_active_span_returns_function(test_spans):
    def fn():
        return 1

    assert wrap_context(fn) is fn
    root = tracer.trace("root")
    tracer.trace("child").finish()  # the pure-Python end leaves it in the variable
    thread = threading.Thread(target=root.finish)  # finished elsewhere: still in the variable
    thread.start()
    thread.join()
    try:
        # Only finished spans there: nothing to carry.
        assert ACTIVE_SPAN.get() is not None and tracer.current_span() is None
        assert wrap_context(fn) is fn
    finally:
        set_active(None)


def test_wrap_context_after_a_childs_end_carries_its_parent(test_spans):
    with tracer.trace("root") as root:
        with tracer.trace("child"):
            pass
        carried = wrap_context(lambda: tracer.current_span())
        assert carried() is root
        with ThreadPoolExecutor(1) as pool:
            assert pool.submit(carried).result() is root


def test_wrap_decorator_sync_async_generators(test_spans):
    @tracer.wrap()
    def plain(x):
        return x + 1

    @tracer.wrap("named", service="svc", resource="res", span_type="custom")
    async def coro(x):
        await asyncio.sleep(0)
        return x * 2

    @tracer.wrap()
    def gen(n):
        yield from range(n)
        return "done"

    @tracer.wrap()
    async def agen(n):
        for i in range(n):
            yield i

    async def consume():
        return [i async for i in agen(3)]

    assert plain(1) == 2
    assert asyncio.run(coro(2)) == 4
    assert list(gen(3)) == [0, 1, 2]
    assert asyncio.run(consume()) == [0, 1, 2]
    names = [s.name for s in test_spans.spans]
    assert names == [
        f"{__name__}.test_wrap_decorator_sync_async_generators.<locals>.plain",
        "named",
        f"{__name__}.test_wrap_decorator_sync_async_generators.<locals>.gen",
        f"{__name__}.test_wrap_decorator_sync_async_generators.<locals>.agen",
    ]
    named = test_spans.spans[1]
    assert (named.service, named.resource, named.span_type) == ("svc", "res", "custom")
    assert plain.__name__ == "plain"


def test_wrap_marks_errors_and_reraises(test_spans):
    @tracer.wrap()
    def fails():
        raise ValueError("bad")

    with pytest.raises(ValueError, match="^bad$"):
        fails()
    (span,) = test_spans.spans
    assert span.error == 1 and span.meta["error.type"] == "builtins.ValueError"


def test_wrap_generator_stopped_early_is_not_an_error(test_spans):
    finished = []

    @tracer.wrap()
    def gen():
        try:
            yield from range(10)
        finally:
            finished.append(True)

    for i in gen():
        if i == 2:
            break
    g = gen()
    next(g)
    g.close()
    assert finished == [True, True]
    assert len(test_spans.spans) == 2
    for span in test_spans.spans:
        assert span.error == 0 and "error.type" not in span.meta
