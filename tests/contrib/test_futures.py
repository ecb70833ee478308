"""concurrent.futures: the caller's span is the parent of work run in the pool."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import tracer as tracer_pkg
from tests.contrib.contract import IntegrationContract
from tracer import tracer


class TestFuturesContract(IntegrationContract):
    integration = "futures"
    module = "concurrent.futures"
    preloaded = True  # wrapt >= 2.5 imports asyncio, which imports concurrent.futures
    exercise_code = '''
def exercise():
    from concurrent.futures import ThreadPoolExecutor
    from tracer import tracer

    def work(x):
        with tracer.trace("futures.child"):
            return x * 2

    with tracer.trace("futures.parent"):
        with ThreadPoolExecutor(2) as pool:
            results = [pool.submit(work, i).result() for i in range(3)]
            results += list(pool.map(work, [5]))
            results.append(pool.submit(work, x=7).result())
    with ThreadPoolExecutor(1) as pool:
        try:
            pool.submit(lambda: 1 / 0).result()
            error = None
        except ZeroDivisionError as exc:
            error = type(exc).__name__
    return [results, error]
'''

    def check_spans(self, spans: list[dict[str, Any]], patched: bool) -> None:
        parents = [s for s in spans if s["name"] == "futures.parent"]
        children = [s for s in spans if s["name"] == "futures.child"]
        assert len(parents) == 1 and len(children) == 5, spans
        (parent,) = parents
        if patched:
            assert all(c["parent_id"] == parent["span_id"] and c["trace_id"] == parent["trace_id"] for c in children)
        else:
            assert all(c["parent_id"] == 0 and c["trace_id"] != parent["trace_id"] for c in children)


@pytest.fixture
def futures_patched() -> Iterator[None]:
    tracer_pkg.patch(futures=True)
    try:
        yield
    finally:
        tracer_pkg.unpatch(futures=True)


def test_worker_spans_join_the_callers_trace(test_spans: Any, futures_patched: None) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def work() -> int:
        with tracer.trace("child") as span:
            return span.parent_id

    with tracer.trace("request") as root, ThreadPoolExecutor(2) as pool:
        parent_ids = [f.result() for f in [pool.submit(work) for _ in range(4)]]
    assert parent_ids == [root.span_id] * 4
    (chunk,) = test_spans.chunks
    assert sorted(s.name for s in chunk) == ["child"] * 4 + ["request"]


def test_no_active_span_submits_the_function_untouched(test_spans: Any, futures_patched: None) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def work() -> Any:
        return tracer.current_span()

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(work).result() is None
    assert test_spans.chunks == []


def test_worker_context_does_not_leak_into_the_next_task(test_spans: Any, futures_patched: None) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        with tracer.trace("first"):
            pool.submit(lambda: None).result()
        assert pool.submit(tracer.current_span).result() is None
