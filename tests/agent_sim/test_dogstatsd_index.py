"""The aggregator's index (by name and tag) and ``dogstatsd_query.Batch`` against a brute-force scan.

The reference below reads every context of every bucket (memory and the real
SQLite store) and keeps what the query asks for; the indexed path and the
per-cycle ``Batch`` must give the same series (values equal up to float
summation order: contexts are visited in another order).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_sim.dogstatsd import HISTOGRAM_FIELDS, Aggregator, point_state
from agent_sim.dogstatsd_query import Batch, _combine, point_value
from agent_sim.dogstatsd_store import MetricStore, merge_state
from agent_sim.store import Store

T0 = 1_700_000_000 // 3600 * 3600
NAMES = {"web.hits": "c", "web.temp": "g", "web.lat": "h", "web.size": "d", "web.users": "s"}
TAGS = ["env:dev", "env:prod", "host:a", "host:b", "host:c", "zone:x"]
AGGS = ["avg", "sum", "min", "max", "p50", "p95"]

sample = st.tuples(st.sampled_from(sorted(NAMES)), st.lists(st.sampled_from(TAGS), max_size=3),
                   st.integers(0, 30), st.integers(0, 1000), st.sampled_from([1.0, 0.5]))
question = st.tuples(st.sampled_from([*NAMES, "web.lat.max", "web.lat.count", "web.lat.95percentile", "nope"]),
                     st.lists(st.sampled_from(TAGS), max_size=2), st.integers(-5, 320), st.integers(0, 330),
                     st.sampled_from(AGGS), st.sampled_from(["", "env", "host", "zone"]), st.sampled_from([10, 30, 60]))


def brute(agg: Aggregator, name: str, tags: list[str], since: float, until: float, fn: str, by: str,
          rollup: int) -> list[dict[str, Any]]:
    """Every context of every bucket: memory, then the store's rows of every name."""
    base, _, suffix = name.rpartition(".")
    hist = suffix in HISTOGRAM_FIELDS and any(n == base and k in ("h", "ms") for (n, _t), k in agg.types.items())
    base, what = (base, suffix) if hist else (name, "")
    points: dict[tuple, tuple[str, Any]] = {}
    if agg.store is not None:
        for n in {n for n, _t in agg.types}:
            for ctags, kind, width, start, state in agg.store.rows(n, 0, math.inf):
                if n == base:
                    points[(ctags, width, start)] = (kind, state)
    for start, bucket in agg.buckets.items():
        for (n, ctags), live in bucket.items():
            if n == base:
                kind = agg.types[(n, ctags)]
                old = points.get((ctags, 10, start))  # stored too (a late sample): stored, then memory
                state = point_state(kind, live)
                points[(ctags, 10, start)] = (kind, state if old is None else merge_state(kind, old[1], state))
    groups: dict[str, dict[int, list[Any]]] = {}
    for (ctags, width, start), (kind, state) in points.items():
        if set(tags) <= set(ctags) and since <= start + width - 1 and start <= until:
            group = next((t.split(":", 1)[1] for t in ctags if t.split(":", 1)[0] == by), "") if by else ""  # the first
            groups.setdefault(group, {}).setdefault(start, []).append(point_value(kind, state, width, what))
    out = []
    for group in sorted(groups):
        windows: dict[int, list[Any]] = {}
        for start in sorted(groups[group]):
            windows.setdefault(start - start % rollup, []).append(groups[group][start])
        out.append({"tags": {by: group} if by else {}, "points": [[w, _combine(v, fn)] for w, v in sorted(windows.items())]})
    return out


def same(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [s["tags"] for s in got] == [s["tags"] for s in want]
    for g, w in zip(got, want, strict=True):
        assert [t for t, _v in g["points"]] == [t for t, _v in w["points"]]
        assert [v for _t, v in g["points"]] == pytest.approx([v for _t, v in w["points"]], rel=1e-9, abs=1e-12)


def load(agg: Aggregator, samples: list[tuple]) -> None:
    for name, tags, bucket, value, rate in samples:
        tag_part = "|#" + ",".join(tags) if tags else ""
        agg.ingest(f"{name}:{value}|{NAMES[name]}|@{rate}{tag_part}|T{T0 + bucket * 10}".encode(), T0)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(samples=st.lists(sample, max_size=60), questions=st.lists(question, min_size=1, max_size=6))
def test_indexed_query_and_batch_equal_a_full_scan(samples: list[tuple], questions: list[tuple]) -> None:
    agg = Aggregator()
    load(agg, samples)
    agg.expire(T0 + 400)  # histograms of closed buckets keep their aggregates only, as in a running receiver
    batch = Batch(agg)  # one cycle: windows in any order, shared reads extended as they grow
    for name, tags, lo, hi, fn, by, rollup in questions:
        for since in (T0 + lo + 95, T0 + lo):  # the second read extends the first, as last_1m then last_5m
            until = T0 + hi
            want = brute(agg, name, tags, since, until, fn, by, rollup)
            same(agg.query(name, tuple(tags), since, until, fn, by, rollup), want)
            same(batch.query(name, tuple(tags), since, until, fn, by, rollup), want)


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(contexts=st.lists(st.lists(st.sampled_from(TAGS), max_size=3), min_size=1, max_size=6), buckets=st.integers(1, 8),
       values=st.lists(st.integers(-50, 1000), min_size=1), questions=st.lists(question, min_size=1, max_size=4))
def test_dense_contexts_every_bucket_filled(contexts: list[list[str]], buckets: int, values: list[int],
                                            questions: list[tuple]) -> None:
    """Every context in every bucket, as monitors over live hosts see them (the by-column path)."""
    agg = Aggregator()
    cells = [(name, tags, b) for name in ("web.temp", "web.hits", "web.lat") for tags in contexts for b in range(buckets)]
    load(agg, [(n, t, b, values[i % len(values)], 1.0) for i, (n, t, b) in enumerate(cells)])
    agg.expire(T0 + 400)
    batch = Batch(agg)
    for name, tags, lo, hi, fn, by, rollup in questions:
        since, until = T0 + lo % (buckets * 10), T0 + hi
        want = brute(agg, name, tags, since, until, fn, by, rollup)
        same(agg.query(name, tuple(tags), since, until, fn, by, rollup), want)
        same(batch.query(name, tuple(tags), since, until, fn, by, rollup), want)


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(samples=st.lists(sample, max_size=40), later=st.lists(sample, max_size=20), questions=st.lists(question, min_size=1, max_size=4))
def test_with_the_store_memory_and_sqlite_equal_a_full_scan(tmp_path_factory: pytest.TempPathFactory, samples: list[tuple],
                                                            later: list[tuple], questions: list[tuple]) -> None:
    store = Store(str(tmp_path_factory.mktemp("idx") / "m.db"))
    try:
        agg = Aggregator(store=MetricStore(store))
        load(agg, samples)
        agg.flush(T0 + 400)  # every bucket into SQLite
        late = [(n, t, b, v + 1, r) for n, t, b, v, r in samples[::2]]  # into buckets already in SQLite
        load(agg, late + [(n, t, b + 3, v, r) for n, t, b, v, r in later])  # in memory: late and newer buckets
        for name, tags, lo, hi, fn, by, rollup in questions:
            since, until = T0 + lo, T0 + hi
            want = brute(agg, name, tags, since, until, fn, by, rollup)
            same(agg.query(name, tuple(tags), since, until, fn, by, rollup), want)
            same(Batch(agg).query(name, tuple(tags), since, until, fn, by, rollup), want)
    finally:
        store.close()


@pytest.fixture
def store(tmp_path: Any) -> Iterator[Store]:
    store = Store(str(tmp_path / "m.db"))
    yield store
    store.close()


def test_the_index_follows_contexts_that_come_and_go(store: Store) -> None:
    agg = Aggregator(store=MetricStore(store))
    agg.ingest(b"a:1|g|#host:x,env:dev\na:2|g|#host:y\nb:3|g|#host:x", T0)
    assert agg.contexts("a") == [("env:dev", "host:x"), ("host:y",)]
    assert agg.contexts("a", ("host:x",)) == [("env:dev", "host:x")]
    assert agg.contexts("a", ("host:x", "env:prod")) == [] and agg.contexts("nope") == []
    agg.flush(T0 + 30)
    assert Aggregator(store=MetricStore(store)).contexts("a", ("host:y",)) == [("host:y",)]  # rebuilt at start
    agg.rollup(T0 + 30 + 48 * 3600, 24 * 3600, 24 * 3600)  # every row expired: contexts forgotten
    assert agg.types == {} and agg.contexts("a") == [] and agg._by_tag == {}
    agg.ingest(b"a:5|g|#host:y", T0 + 50 * 3600)
    assert agg.query("a", ("host:y",), T0 + 50 * 3600 - 10) == [{"tags": {}, "points": [[T0 + 50 * 3600, 5.0]]}]


def test_a_late_sample_is_merged_after_the_stored_bucket(store: Store) -> None:
    agg = Aggregator(store=MetricStore(store))
    agg.ingest(f"g:1|g|#h:x|T{T0}\nc:2|c|#h:x|T{T0}".encode(), T0)
    agg.flush(T0 + 30)
    agg.ingest(f"g:7|g|#h:x|T{T0 + 5}\nc:3|c|#h:x|T{T0 + 5}".encode(), T0 + 30)  # late: that bucket is in SQLite
    for query in (agg.query, Batch(agg).query):
        assert query("g", ("h:x",), T0, T0 + 9, "avg", "", 10) == [{"tags": {}, "points": [[T0, 7.0]]}]
        assert query("c", ("h:x",), T0, T0 + 9, "avg", "", 10) == [{"tags": {}, "points": [[T0, 0.5]]}]
