"""``dogstatsd_query.WindowCache`` (closed buckets' values kept across monitor cycles)
never answers other than the uncached ``query`` over the data as it is now: after
late ``|T`` samples, new contexts, roll-ups and retention, over the real
``Aggregator`` (memory, and the real SQLite ``MetricStore``), through the
monitors' ``Engine``, and for trace metrics over the real ``Receiver``'s stats."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_sim.dogstatsd import Aggregator
from agent_sim.dogstatsd_query import Batch, WindowCache, _combine
from agent_sim.dogstatsd_store import MetricStore
from agent_sim.dogstatsd_trace import TraceMetrics
from agent_sim.ingest import Receiver
from agent_sim.monitors.engine import Engine
from agent_sim.monitors.notify import Notifier
from agent_sim.monitors.source import MetricSource
from agent_sim.store import Store

T0 = 1_700_000_000 // 3600 * 3600
HOSTS = ("a", "b", "c")
# (name, tags, window s, space aggregation, by): the shapes a monitors cycle asks
SHAPES = [("web.temp", (), 300, "avg", ""), ("web.temp", ("env:dev",), 60, "max", "host"),
          ("web.temp", ("host:b",), 600, "min", ""), ("web.hits", (), 300, "sum", "host"),
          ("web.lat.max", (), 120, "max", "host"), ("web.size", (), 300, "p95", ""),
          ("trace.web.hits", (), 300, "sum", "")]


def feed(agg: Aggregator, since: int, until: int, rng: random.Random, hosts: tuple[str, ...] = HOSTS) -> None:
    """One sample of each metric and host per 10 s bucket in [since, until), integers (sums exact in any order)."""
    for start in range(since, until, 10):
        lines = []
        for h in hosts:
            tags = f"#env:dev,host:{h}"
            lines += [f"web.temp:{rng.randrange(1000)}|g|{tags}", f"web.hits:{rng.randrange(50)}|c|{tags}",
                      f"web.lat:{rng.randrange(900)}|h|{tags}", f"web.size:{rng.randrange(5000)}|d|{tags}",
                      f"trace.web.hits:{rng.randrange(9)}|c|{tags}"]
        agg.ingest("\n".join(lines).encode(), start)
        agg.flush(start)


def cycle(agg: Aggregator, cache: WindowCache, now: float, shapes: list[tuple] = SHAPES) -> list[list[dict[str, Any]]]:
    """One monitors cycle through the cache; each answer must equal the uncached query's."""
    batch = Batch(agg, cache)
    answers = []
    for name, tags, window, fn, by in shapes:
        got = batch.query(name, tags, now - window, now, fn, by)
        assert got == agg.query(name, tags, now - window, now, fn, by), (name, tags, window, fn, by)
        answers.append(got)
    return answers


@pytest.fixture
def store(tmp_path: Any) -> Iterator[Store]:
    store = Store(str(tmp_path / "m.db"))
    yield store
    store.close()


@pytest.mark.parametrize("with_store", [False, True])
def test_cycles_with_late_samples_and_new_contexts_equal_the_uncached_query(with_store: bool, tmp_path: Any) -> None:
    store = Store(str(tmp_path / "m.db")) if with_store else None
    try:
        agg = Aggregator(store=MetricStore(store) if store is not None else None)
        rng = random.Random(3)
        cache = WindowCache()
        now = T0 + 600
        feed(agg, T0, now, rng)
        cycle(agg, cache, now)
        for step in range(12):  # 20 s of new data a cycle; now and then a late sample or a new host
            feed(agg, now, now + 20, rng)
            now += 20
            if step % 3 == 1:
                late = now - rng.randrange(30, 300)
                agg.ingest(f"web.temp:{rng.randrange(5000)}|g|#env:dev,host:a|T{late}\n"
                           f"web.hits:7|c|#env:dev,host:c|T{late}".encode(), now)
            if step % 4 == 2:
                agg.ingest(f"web.temp:4321|g|#env:dev,host:n{step}|T{now - 100}".encode(), now)
            cycle(agg, cache, now + rng.choice((0, 1, 5)))
        assert cache.hits > cache.misses > 0  # mostly served from the cache, and recomputed when it had to
    finally:
        if store is not None:
            store.close()


def test_a_late_sample_is_never_served_stale() -> None:
    agg = Aggregator()
    feed(agg, T0, T0 + 600, random.Random(1))
    cache = WindowCache()
    before = cycle(agg, cache, T0 + 600)
    assert cycle(agg, cache, T0 + 601) == before and cache.hits == 6  # the six DogStatsD shapes from the cache
    agg.ingest(f"web.temp:99999|g|#env:dev,host:b|T{T0 + 555}\nweb.lat:77777|h|#env:dev,host:a|T{T0 + 575}".encode(),
               T0 + 602)  # into closed buckets the cache holds (a histogram's only if not yet reduced)
    after = cycle(agg, cache, T0 + 602)  # equal to the uncached query: the new values, not the cached ones
    assert after[1] != before[1] and after[2] != before[2]
    assert [T0 + 550, 99999.0] in after[2][0]["points"]


def test_a_new_context_is_never_served_stale() -> None:
    agg = Aggregator()
    feed(agg, T0, T0 + 600, random.Random(2))
    cache = WindowCache()
    before = cycle(agg, cache, T0 + 600)
    agg.ingest(f"web.temp:5000|g|#env:dev,host:z|T{T0 + 500}\nweb.temp:6000|g|#env:dev,host:z".encode(), T0 + 600)
    after = cycle(agg, cache, T0 + 601)
    assert [s["tags"] for s in after[1]] == [{"host": h} for h in (*HOSTS, "z")] != [s["tags"] for s in before[1]]


def test_a_rollup_is_never_served_stale(store: Store) -> None:
    agg = Aggregator(store=MetricStore(store))
    now = T0 + 2 * 3600
    feed(agg, T0, now, random.Random(4), hosts=("a", "b"))
    cache = WindowCache()
    shapes = [("web.temp", (), 7200, "avg", "host"), ("web.temp", (), 1800, "max", "")]
    before = cycle(agg, cache, now, shapes)
    agg.rollup(now, 3600, 30 * 86400)  # the first hour's 10 s rows folded into one 1 h row each
    after = cycle(agg, cache, now + 1, shapes)
    assert after[0] != before[0] and after[0][0]["points"][0][0] == T0  # the 1 h point, not the cached 10 s ones
    assert after[1] == before[1] and cache.hits == 1  # a window after the roll-up is still served from the cache


def test_after_a_restart_the_1h_rows_of_the_earlier_run_are_never_missed(store: Store) -> None:
    first_run = Aggregator(store=MetricStore(store))
    now = T0 + 2 * 3600
    feed(first_run, T0, now, random.Random(8), hosts=("a",))
    first_run.rollup(now, 3600, 30 * 86400)  # a 1 h row at T0
    agg = Aggregator(store=MetricStore(store))  # restarted: no roll-up yet in this run
    agg.flush(now)
    cache = WindowCache()
    shapes = [("web.temp", (), 5400, "avg", ""), ("web.temp", (), 1800, "avg", "")]
    for at in (now, now + 1):
        answers = cycle(agg, cache, at, shapes)
        assert answers[0][0]["points"][0][0] == T0  # the 1 h point, which starts before the window
    assert cache.hits == 1  # the window after the 1 h rows is served from the cache


def test_retention_is_never_served_stale() -> None:
    agg = Aggregator(keep_s=600)
    rng = random.Random(5)
    feed(agg, T0, T0 + 600, rng)
    cache = WindowCache()
    shapes = [("web.temp", (), 900, "avg", "host")]
    cycle(agg, cache, T0 + 600, shapes)
    feed(agg, T0 + 600, T0 + 900, rng)  # buckets before T0 + 290 expire (the last flush at T0 + 890)
    after = cycle(agg, cache, T0 + 900, shapes)
    assert after[0][0]["points"][0][0] == T0 + 290


def test_the_cache_is_bounded_and_counts_its_evictions() -> None:
    agg = Aggregator()
    feed(agg, T0, T0 + 600, random.Random(6))
    cache = WindowCache(max_values=100)
    for now in (T0 + 600, T0 + 601):
        cycle(agg, cache, now)
        assert cache.values <= 100
    assert cache.evictions > 0 and cache.stats()["evictions"] == cache.evictions
    assert WindowCache().max_values > 0


def test_a_monitor_sees_a_late_sample_at_its_next_evaluation() -> None:
    agg = Aggregator()
    feed(agg, T0, T0 + 600, random.Random(7))
    e = Engine(MetricSource(agg), Notifier(log=lambda line: None), lambda: float(T0 + 600))
    e.put_monitor({"name": "hot", "query": "max(last_5m):max:web.temp{*} > 5000"})
    assert e.evaluate(T0 + 600)[0]["overall_state"] == "OK"
    assert e.evaluate(T0 + 601)[0]["overall_state"] == "OK" and e.source.cache.hits == 1
    agg.ingest(f"web.temp:7000|g|#env:dev,host:a|T{T0 + 400}".encode(), T0 + 602)
    assert e.evaluate(T0 + 602)[0]["overall_state"] == "Alert"


@pytest.mark.parametrize("fn", ["avg", "sum", "min", "max", "p50", "p99"])
def test_a_group_of_one_context_gets_what_combining_its_values_gives(fn: str) -> None:
    """The one-context path of ``_series`` (most groups of a ``by {host}`` monitor) answers as ``_combine``, -0.0 included."""
    agg = Aggregator()
    values = [-0.0, 0.0, 2.5, -7.0]
    for i, v in enumerate(values):
        agg.ingest(f"g:{v}|g|#host:a|T{T0 + 10 * i}\ng:{v}|g|#host:b|T{T0 + 10 * i}".encode(), T0 + 40)
    got = agg.query("g", (), T0, T0 + 39, fn, "host")
    want = [_combine([[v]], fn) for v in values]
    for series in got:
        assert [repr(v) for _t, v in series["points"]] == [repr(v) for v in want] == ["0.0", "0.0", "2.5", "-7.0"]


def trace(tid: int, end_s: float) -> list[dict[str, Any]]:
    return [{"trace_id": tid, "span_id": tid, "parent_id": 0, "service": "shop", "name": "flask.request",
             "resource": "GET /a", "type": "web", "start": int(end_s * 1e9) - 10**8, "duration": 10**8, "error": 0,
             "meta": {}, "metrics": {"_dd.top_level": 1}}]


def test_trace_metrics_are_never_served_from_the_cache() -> None:
    """The trace stats have no change marker: a monitor on ``trace.*`` sees spans arriving for closed buckets."""
    rx = Receiver(":memory:")
    try:
        rx.ingest([trace(i + 1, T0 + i + 0.5) for i in range(20)], False, True)
        rx.flush()
        agg = Aggregator(traces=TraceMetrics(rx))
        agg.flush(T0 + 100)  # buckets before T0 + 80 closed: the cache would keep them
        e = Engine(MetricSource(agg), Notifier(log=lambda line: None), lambda: float(T0 + 100))
        e.put_monitor({"name": "hits", "query": "sum(last_5m):sum:trace.flask.request.hits{service:shop}.as_count() > 25"})
        assert e.evaluate(T0 + 100)[0]["overall_state"] == "OK"
        rx.ingest([trace(100 + i, T0 + 30 + i + 0.5) for i in range(10)], False, True)  # spans of a closed bucket
        rx.flush()
        assert e.evaluate(T0 + 101)[0]["overall_state"] == "Alert"
        assert e.source.cache.stats()["shapes"] == 0
    finally:
        rx.close()


KINDS = {"web.temp": "g", "web.hits": "c", "web.lat": "h", "web.size": "d", "web.users": "s"}
# each step: (seconds the clock moves on, [(name, host or new host, value, seconds back for a |T sample or None)])
step = st.tuples(st.sampled_from([1, 10, 20, 60]),
                 st.lists(st.tuples(st.sampled_from(sorted(KINDS)), st.sampled_from(["a", "b", "c", "new"]),
                                    st.integers(-50, 500), st.none() | st.integers(0, 30) | st.integers(0, 400)),
                                   max_size=12))
shape = st.tuples(st.sampled_from([*KINDS, "web.lat.max", "web.lat.count", "web.lat.95percentile"]),
                  st.sampled_from([(), ("host:a",), ("env:dev",)]), st.sampled_from([30, 60, 300, 900]),
                  st.sampled_from(["avg", "sum", "min", "max", "p50", "p95"]), st.sampled_from(["", "host"]))


@settings(max_examples=120, deadline=None, derandomize=True, database=None)
@given(steps=st.lists(step, min_size=1, max_size=10), shapes=st.lists(shape, min_size=1, max_size=5))
def test_any_history_of_samples_answers_as_the_uncached_query(steps: list[tuple], shapes: list[tuple]) -> None:
    """Random intake between cycles (every type, late ``|T`` samples, new hosts, clocks moving 1-60 s)."""
    agg = Aggregator(keep_s=600)
    feed(agg, T0, T0 + 300, random.Random(9))
    cache = WindowCache()
    now = T0 + 300
    cycle(agg, cache, now, shapes)
    for i, (gap, samples) in enumerate(steps):
        now += gap
        lines = [f"{name}:{value}|{KINDS[name]}|#env:dev,host:{f'n{i}' if host == 'new' else host}"
                 + (f"|T{now - back}" if back is not None else "") for name, host, value, back in samples]
        if lines:
            agg.ingest("\n".join(lines).encode(), now)
        agg.flush(now)
        cycle(agg, cache, now, shapes)
