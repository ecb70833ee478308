"""Stats: concentrator keys and counting rules, sketches, client stats."""

from __future__ import annotations

import random
import struct

import msgpack

from agent_sim.stats import BUCKET_NS, Concentrator, Entry, Sketch, apply_client_stats, compute_groups, summarize


def mk(sid: int, parent: int = 0, service: str = "web", top: bool | None = None, measured: bool = False,
       error: int = 0, start: int = 10**18, duration: int = 100, **meta: str) -> dict:
    metrics: dict = {}
    if top is not None:
        metrics["_dd.top_level"] = 1 if top else 0
    if measured:
        metrics["_dd.measured"] = 1
    return {"trace_id": 1, "span_id": sid, "parent_id": parent, "service": service, "name": "op",
            "resource": "r", "type": "web", "start": start, "duration": duration, "error": error,
            "meta": dict(meta), "metrics": metrics}


def totals(groups: list) -> dict:
    out = {}
    for bucket, key, hits, tl, errors, duration, ok, err in groups:
        out[(bucket, *key)] = (hits, tl, errors, duration, len(ok), len(err))
    return out


def test_counted_spans_computed_top_level() -> None:
    trace = [mk(1), mk(2, parent=1), mk(3, parent=1, service="db"), mk(4, parent=2, measured=True),
             mk(5, parent=99)]  # 5: parent not in the chunk
    groups = totals(compute_groups([trace], client_top_level=False))
    b = 10**18 + 100 - (10**18 + 100) % BUCKET_NS
    assert groups == {
        (b, "web", "op", "r", "web", "", 0, True): (1, 1, 0, 100, 1, 0),  # root
        (b, "db", "op", "r", "web", "", 0, False): (1, 1, 0, 100, 1, 0),  # service change
        (b, "web", "op", "r", "web", "", 0, False): (2, 1, 0, 200, 2, 0),  # 4 measured, 5 orphan top-level
    }


def test_client_marks_win_when_client_computed_top_level() -> None:
    trace = [mk(1, top=True), mk(2, parent=1, service="db"), mk(3, parent=1, service="db", top=True)]
    groups = totals(compute_groups([trace], client_top_level=True))
    assert sum(v[0] for v in groups.values()) == 2  # span 2 is not marked: not counted


def test_key_has_kind_status_root_and_bucket_by_end() -> None:
    end_in_next = BUCKET_NS * 10**8 - 50
    trace = [mk(1, start=end_in_next, duration=100, **{"span.kind": "server", "http.status_code": "503"},
                error=1)]
    ((bucket, key, hits, tl, errors, duration, ok, err),) = compute_groups([trace], False)
    assert bucket == BUCKET_NS * 10**8  # by end time, not start
    assert key == ["web", "op", "r", "web", "server", 503, True]
    assert (hits, tl, errors, ok, err) == (1, 1, 1, [], [100])


def test_sketch_accuracy_merge_and_wire() -> None:
    rng = random.Random(5)
    values = [rng.randint(1, 10**10) for _ in range(5000)]
    a, b = Sketch(), Sketch()
    a.add_many(values[:2500])
    b.add_many(values[2500:])
    a.merge(b)
    values.sort()
    for q in (0.5, 0.9, 0.99):
        exact = values[int(q * (len(values) - 1))]
        assert abs(a.quantile(q) - exact) <= 0.0101 * exact
    assert a.max == values[-1] and a.count == 5000
    c = Sketch.from_wire(a.to_wire())
    assert c.quantiles((0.5, 0.99)) == a.quantiles((0.5, 0.99))
    empty = Sketch()
    assert empty.quantile(0.5) == 0.0 and empty.quantiles((0.5, 0.9)) == [0.0, 0.0]
    z = Sketch()
    z.add_many([0, 0, 5])
    assert z.quantile(0.5) == 0.0


def test_entry_pack_roundtrip_and_saturation() -> None:
    e = Entry()
    e.hits, e.errors, e.duration = 3, 1, 2**70
    e.ok.add_many([5, 6])
    back = Entry.unpack(e.pack())
    assert (back.hits, back.errors, back.duration) == (3, 1, 2**64 - 1)
    assert back.ok.count == 2


def test_summarize_rows() -> None:
    c = Concentrator()
    trace = [mk(i + 1, duration=(i + 1) * 1000, error=int(i == 0)) for i in range(10)]
    for s in trace:
        s["trace_id"] = s["span_id"]
    c.apply(compute_groups([[s] for s in trace], False))
    merged: dict = {}
    for entries in c.live.values():
        for key, entry in entries.items():
            merged.setdefault(key[:4], Entry()).merge(entry)
    (row,) = summarize(merged)
    assert (row["hits"], row["errors"], row["top_level_hits"], row["duration_ns"]) == (10, 1, 10, 55000)
    assert row["max_ns"] == 10000 and abs(row["p50_ns"] - 5000) <= 60


def _proto_sketch(gamma: float, bins: dict[int, float], zero: float = 0) -> bytes:
    def varint(n: int) -> bytes:
        out = b""
        while True:
            b = n & 0x7F
            n >>= 7
            if n:
                out += bytes([b | 0x80])
            else:
                return out + bytes([b])

    def zz(n: int) -> int:
        return (n << 1) ^ (n >> 63)

    mapping = b"\x09" + struct.pack("<d", gamma)
    store = b""
    for k, c in bins.items():
        entry = b"\x08" + varint(zz(k)) + b"\x11" + struct.pack("<d", c)
        store += b"\x0a" + varint(len(entry)) + entry
    return (b"\x0a" + varint(len(mapping)) + mapping + b"\x12" + varint(len(store)) + store
            + b"\x21" + struct.pack("<d", zero))


def test_client_stats_sketch_decoded() -> None:
    import math

    gamma = 1.02
    key = math.ceil(math.log(1_000_000) / math.log(gamma))
    c = Concentrator()
    apply_client_stats(c, {"Stats": [{"Start": 20 * BUCKET_NS, "Duration": BUCKET_NS, "Stats": [
        {"Service": "s", "Name": "n", "Resource": "r", "Type": "web", "HTTPStatusCode": 200, "Hits": 4,
         "TopLevelHits": 4, "Errors": 0, "Duration": 4_000_000,
         "OkSummary": _proto_sketch(gamma, {key: 3.0}, zero=1.0), "ErrorSummary": b""}]}]})
    ((bucket, entries),) = c.live.items()
    ((k, e),) = entries.items()
    assert bucket == 20 * BUCKET_NS and k == ("s", "n", "r", "web", "", 200, False)
    assert e.hits == 4 and e.ok.count == 4 and e.ok.zero == 1
    assert abs(e.ok.quantile(0.99) - 1_000_000) <= 0.03 * 1_000_000


def test_merge_wire_equals_merge_of_unpacked_entry() -> None:
    a, b = Entry(), Entry()
    a.hits, a.errors, a.duration = 3, 1, 600
    a.ok.add_many([100, 200])
    a.err.add_many([300])
    b.hits, b.top_level_hits, b.duration = 2, 2, 1500
    b.ok.add_many([0, 1500])
    via_wire, via_entry = Entry(), Entry()
    for e in (a, b):
        via_wire.merge_wire(msgpack.unpackb(e.pack()))
        via_entry.merge(Entry.unpack(e.pack()))
    assert via_wire.to_wire() == via_entry.to_wire()
    assert (via_wire.hits, via_wire.top_level_hits, via_wire.errors, via_wire.duration) == (5, 2, 1, 2100)
    assert via_wire.err.count == 1 and via_wire.ok.max == 1500 and via_wire.ok.zero == 1


def test_stats_keys_are_capped_with_exact_service_hits_and_a_counted_overflow(tmp_path) -> None:
    from agent_sim.ingest import Receiver
    from agent_sim.stats import OVERFLOW

    def trace(tid: int, service: str, resource: str) -> list:
        span = mk(tid, service=service)
        span.update(trace_id=tid, resource=resource)
        return [span]

    db = str(tmp_path / "r.db")
    rx = Receiver(db)
    rx.concentrator.max_keys = 3
    rx.ingest([trace(i + 1, "web", f"GET /r{i}") for i in range(8)], False, False)
    rx.flush()

    def by_key(rx: Receiver) -> dict:
        return {k: e.hits for k, e in rx.stats_entries(None, None, None).items()}

    kept = {("web", "op", f"GET /r{i}", "web"): 1 for i in range(3)}
    assert by_key(rx) == {**kept, ("web", "op", OVERFLOW, "web"): 5}, "per-service hits stay exact"
    assert rx.counters()["stats_keys_overflowed"] == 5
    # Past twice the limit, new services share one overflow key.
    rx.ingest([trace(100 + i, f"svc{i}", "x") for i in range(4)], False, False)
    rx.flush()
    keys = by_key(rx)
    assert keys[("svc0", "op", OVERFLOW, "web")] == 1 and keys[("svc1", "op", OVERFLOW, "web")] == 1
    assert keys[(OVERFLOW, OVERFLOW, OVERFLOW, "")] == 2 and len(keys) == 7
    assert rx.counters()["stats_keys_overflowed"] == 9
    rx.close()
    # A restart remembers the keys it holds: a new resource still overflows.
    again = Receiver(db)
    again.concentrator.max_keys = 3
    again.ingest([trace(200, "web", "GET /new")], False, False)
    again.flush()
    assert by_key(again)[("web", "op", OVERFLOW, "web")] == 6
    assert again.counters()["stats_keys_overflowed"] == 10
    again.close()
