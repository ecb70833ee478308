"""SQLite store: trace rows across chunks, retention, stats flush/roll-up/restart."""

from __future__ import annotations

import time
from typing import Any

from agent_sim.server import KEEP_1H_NS, KEEP_10S_NS, Receiver
from agent_sim.stats import BUCKET_NS, HOUR_NS
from agent_sim.store import Store

NOW = time.time_ns()


def mk(tid: int, sid: int, parent: int = 0, service: str = "svc", start: int = NOW, duration: int = 10,
       **kw: Any) -> dict:
    span = {"trace_id": tid, "span_id": sid, "parent_id": parent, "service": service, "name": "op",
            "resource": "res", "type": "web", "start": start, "duration": duration, "error": 0, "meta": {},
            "metrics": {"_dd.top_level": 1}}
    span.update(kw)
    return span


def test_chunks_append_and_root_row(tmp_path: Any) -> None:
    store = Store(str(tmp_path / "a.db"))
    store.ingest([[mk(7, 2, parent=1, start=NOW + 5, name="child")]], [], {})
    store.ingest([[mk(7, 3, parent=1, start=NOW + 1, name="early")]], [], {})
    (row,) = store.list_traces()
    assert (row[4], row[5], row[8]) == ("early", NOW + 1, 2)  # earliest while no root
    store.ingest([[mk(7, 1, start=NOW + 9, name="root", resource="GET /")]], [], {})
    store.ingest([[mk(7, 4, parent=1, start=NOW, name="late")]], [], {})  # a root stays the row
    (row,) = store.list_traces()
    assert (row[3], row[4], row[8]) == ("GET /", "root", 4)
    high, spans = store.get_trace(7)
    assert [s["name"] for s in spans] == ["child", "early", "root", "late"]
    assert store.get_trace(8) is None
    assert store.execute("SELECT count(*) FROM chunks")[0][0] == 4  # appended, never rewritten
    store.close()


def test_eviction_by_age_and_count(tmp_path: Any) -> None:
    store = Store(str(tmp_path / "b.db"))
    for i in range(10):
        store.ingest([[mk(100 + i, 1)]], [], {})
    store.db.execute("UPDATE traces SET received = received - 7200 WHERE tid < 104")
    assert store.evict(max_traces=1000, max_age_s=3600) == 4
    assert store.evict(max_traces=3, max_age_s=3600) == 3
    assert sorted(r[0] for r in store.list_traces()) == [107, 108, 109]
    assert store.execute("SELECT count(*) FROM chunks")[0][0] == 3
    assert store.trace_count == 3
    store.close()


def test_eviction_of_interleaved_multi_chunk_traces(tmp_path: Any) -> None:
    # chunks of old and surviving traces interleave: eviction deletes exactly
    # the evicted traces' chunks (range delete plus the later chunks)
    store = Store(str(tmp_path / "m.db"))
    store.ingest([[mk(1, 1)], [mk(2, 1)]], [], {})
    store.ingest([[mk(3, 1)], [mk(1, 2, parent=1)]], [], {})  # trace 1's second chunk after trace 3's first
    store.ingest([[mk(2, 2, parent=1)], [mk(3, 2, parent=1)], [mk(4, 1)]], [], {})
    assert store.evict(max_traces=2, max_age_s=3600) == 2
    assert sorted(r[0] for r in store.list_traces()) == [3, 4]
    assert [len(store.get_trace(t)[1]) for t in (3, 4)] == [2, 1]
    assert store.execute("SELECT count(*) FROM chunks")[0][0] == 3
    assert store.evict(max_traces=0, max_age_s=3600) == 2
    assert store.execute("SELECT count(*) FROM chunks")[0][0] == 0
    store.ingest([[mk(5, 1)]], [], {})  # numbering carries on after an empty table
    assert store.get_trace(5) is not None
    store.close()


def test_stats_survive_restart_and_journal_replays(tmp_path: Any) -> None:
    db = str(tmp_path / "c.db")
    rx = Receiver(db)
    rx.ingest([[mk(1, 1, duration=1000)], [mk(2, 1, duration=3000, error=1)]], False, False)
    rx.flush()
    rx.ingest([[mk(3, 1, duration=2000)]], False, False)  # journaled, not flushed
    rx.store.close()  # as if killed: no final flush
    rx2 = Receiver(db)
    ((key, e),) = rx2.stats_entries(None, None, None).items()
    assert key == ("svc", "op", "res", "web") and (e.hits, e.errors, e.duration) == (3, 1, 6000)
    rx2.close()
    rx3 = Receiver(db)  # a clean close flushed the journal: nothing counted twice
    ((_, e),) = rx3.stats_entries(None, None, None).items()
    assert e.hits == 3
    assert rx3.store.execute("SELECT count(*) FROM journal")[0][0] == 0
    rx3.close()


def test_rollup_to_hours_and_expiry(tmp_path: Any) -> None:
    rx = Receiver(str(tmp_path / "d.db"))
    hour = NOW - NOW % HOUR_NS
    old = hour - 30 * HOUR_NS  # > 24 h ago: rolled into 1 h buckets
    ancient = hour - 31 * 24 * HOUR_NS  # > 30 days: gone
    rx.ingest([[mk(1, 1, start=old + 5 * BUCKET_NS)], [mk(2, 1, start=old + 40 * BUCKET_NS)],
               [mk(3, 1, start=ancient)], [mk(4, 1, start=NOW)]], False, False)
    rx.maintain(now_ns=NOW, full=True)
    rows = rx.store.execute("SELECT width, bucket, data FROM stats ORDER BY bucket")
    assert [(w, b) for w, b, _ in rows] == [(3600, old), (10, (NOW + 10) - (NOW + 10) % BUCKET_NS)]
    ((_, e),) = rx.stats_entries(None, None, None).items()
    assert e.hits == 3  # the ancient one expired from the totals too
    since = (old - HOUR_NS) / 1e9
    window = rx.stats_entries(int(since * 1e9), int((old + HOUR_NS) * 1), None)
    assert sum(x.hits for x in window.values()) == 2
    assert KEEP_10S_NS == 24 * HOUR_NS and KEEP_1H_NS == 30 * 24 * HOUR_NS
    rx.close()


def test_memory_db_works_without_wal() -> None:
    store = Store(":memory:")
    store.ingest([[mk(1, 1)]], [], {})
    store.checkpoint()
    assert store.trace_count == 1
    store.close()
