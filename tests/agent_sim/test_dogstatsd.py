"""DogStatsD intake: the parser and aggregator (pure), then the real ``datadog``
client over UDP into a running receiver, checked through the HTTP API."""

from __future__ import annotations

import json
import os
import random
import socket
import time
import urllib.request
from typing import Any

import pytest

from agent_sim.dogstatsd import Aggregator, parse_packet
from tests.receiver import RunningReceiver
from tests.utils import terminate

T0 = 1_700_000_000  # a bucket boundary


def test_parse_full_line_events_and_service_checks() -> None:
    p = parse_packet(b"page.views:1:2|c|@0.5|#env:prod,a|c:abc|T1700000005\n"
                     b"_e{5,4}:title|t\\nx|p:low|#k:v\n"
                     b"_sc|db.up|2|h:web1|#k:v|m:down | really")
    assert not p.errors
    (s,) = p.samples
    assert (s.name, s.type, s.values, s.rate, s.tags, s.container, s.timestamp) == (
        "page.views", "c", [1.0, 2.0], 0.5, ("a", "env:prod"), "abc", 1700000005)
    (e,) = p.events
    assert (e.title, e.text, e.fields, e.tags) == ("title", "t\nx", {"p": "low"}, ("k:v",))
    (c,) = p.checks
    assert (c.name, c.status, c.fields, c.tags, c.message) == ("db.up", 2, {"h": "web1"}, ("k:v",), "down | really")


@pytest.mark.parametrize("line, reason", [
    (b"x:1|zz", "bad_type"), (b"x:abc|c", "bad_value"), (b"x:nan|g", "bad_value"), (b"x:1|c|@2", "bad_rate"),
    (b"x:1|c|@0", "bad_rate"), (b"x:1|c|Tsoon", "bad_timestamp"), (b"x1|c", "bad_format"), (b":1|c", "empty_name"),
    (b"_e{9,1}:ab|c", "bad_event"), (b"_sc|x|7", "bad_service_check"), (b"\xff\xfe", "not_utf8"),
    (b"x:1|c" + b"\n" * 9000, "oversized"),
])
def test_bad_lines_are_counted_by_reason(line: bytes, reason: str) -> None:
    p = parse_packet(line + b"\n" if reason != "oversized" else line)
    assert p.errors == {reason: 1} and not p.samples


def test_aggregator_buckets_types_and_query() -> None:
    agg = Aggregator()
    agg.ingest(b"c:1|c|@0.1|#k:a\nc:3|c|#k:b\ng:1|g\ng:7|g\ns:u1|s\ns:u2|s\ns:u1|s", T0 + 1)
    agg.ingest(b"h:" + b":".join(str(v).encode() for v in range(1, 101)) + b"|h", T0 + 2)
    agg.ingest(b"c:5|c|T" + str(T0 - 100).encode(), T0 + 3)  # its own (past) bucket
    assert agg.query("c", agg="sum") == [{"tags": {}, "points": [[T0 - 100, 0.5], [T0, 1.3]]}]
    assert agg.query("c", ("k:a",)) == [{"tags": {}, "points": [[T0, 1.0]]}]
    assert agg.query("c", by="k", since=T0) == [{"tags": {"k": "a"}, "points": [[T0, 1.0]]},
                                                  {"tags": {"k": "b"}, "points": [[T0, 0.3]]}]
    assert agg.query("g")[0]["points"] == [[T0, 7.0]]
    assert agg.query("s")[0]["points"] == [[T0, 2.0]]
    got = {f: agg.query(f"h.{f}")[0]["points"][0][1] for f in ("max", "median", "avg", "count", "95percentile")}
    assert got == {"max": 100, "median": 50, "avg": 50.5, "count": 10.0, "95percentile": 95}
    agg.expire(T0 + 15)  # the bucket is still open: nothing reduced
    assert len(agg.buckets[T0][("h", ())].values) == 100
    agg.expire(T0 + 21)  # closed: only the aggregates are kept, and they answer the same
    assert agg.buckets[T0][("h", ())].values == []
    assert {f: agg.query(f"h.{f}")[0]["points"][0][1] for f in got} == got
    agg.ingest(b"h:1000|h|T" + str(T0 + 1).encode(), T0 + 22)
    assert agg.counters["late_histogram_samples"] == 1 and agg.query("h.max")[0]["points"][0][1] == 100
    assert agg.query("c", since=T0 - 100, agg="sum", rollup=3600)[0]["points"] == [[T0 - T0 % 3600, pytest.approx(0.9)]]
    with pytest.raises(ValueError, match="agg must be"):
        agg.query("c", agg="median")
    with pytest.raises(ValueError, match="rollup"):
        agg.query("c", rollup=15)


def test_repeated_lines_hit_the_parse_cache_and_still_count() -> None:
    import agent_sim.dogstatsd as ds

    agg = Aggregator()
    for _ in range(3):
        agg.ingest(b"x:1|c\nx:1|c\nx:zz|c", T0)
    assert agg.query("x", agg="sum")[0]["points"] == [[T0, pytest.approx(0.6)]]
    assert agg.counters["bad_value"] == 3 and len(agg._parse_cache) == 2
    for i in range(ds.PARSE_CACHE_SIZE + 10):
        agg.ingest(b"y:1|c|#i:%d" % i, T0)
    assert len(agg._parse_cache) <= ds.PARSE_CACHE_SIZE and agg.counters["samples"] == 6 + ds.PARSE_CACHE_SIZE + 10


def test_context_cap_counts_overflow() -> None:
    agg = Aggregator(max_contexts=3)
    agg.ingest(b"\n".join(b"m:1|c|#i:%d" % i for i in range(5)), T0)
    assert len(agg.types) == 3 and agg.counters["contexts_overflowed"] == 2
    agg.ingest(b"m:1|c|#i:0", T0)  # a known context still counts
    assert agg.query("m", ("i:0",), agg="sum")[0]["points"] == [[T0, 0.2]]


# -- the real client over UDP ---------------------------------------------------


def _wait(fn: Any, timeout: float = 5.0, until: Any = None) -> Any:
    """fn()'s value once it is truthy (or equals ``until``: datagrams sent
    together may be counted in more than one flush of the aggregator)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if (value == until if until is not None else value) or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


def _value(r: RunningReceiver, name: str, agg: str = "avg", **params: Any) -> Any:
    series = r.get("/api/metrics/query", name=name, agg=agg, rollup=3600, **params)["series"]
    return series[0]["points"][0][1] if series else None


def test_datadog_client_aggregates_over_udp() -> None:
    from datadog.dogstatsd import DogStatsd

    with RunningReceiver(statsd_port=0) as r:
        statsd = DogStatsd(host="127.0.0.1", port=r.server.statsd_port, disable_telemetry=True)
        # the bucket must not change mid-test: the rates below are per bucket
        while time.time() % 10 > 7:
            time.sleep(0.2)
        for _ in range(40):
            statsd.increment("web.page_views", tags=["env:test"], sample_rate=0.5)
        statsd.increment("web.page_views", 3, tags=["env:test"])
        statsd.gauge("queue.size", 4)
        statsd.gauge("queue.size", 9)
        for v in (5, 1, 9, 3, 7):
            statsd.histogram("web.latency", v, tags=["env:test", "route:/a"])
        for v in range(1, 101):
            statsd.distribution("db.time", v)
        for user in ("u1", "u2", "u1", "u3"):
            statsd.set("users", user)
        statsd.event("deploy", "v2 out", tags=["env:test"])
        statsd.service_check("app.ok", 0, message="fine")
        statsd.gauge("last", 1)
        statsd.close_socket()
        assert _wait(lambda: _value(r, "last"))
        sampled = r.server.statsd.counters["samples"]
        # DogStatsd drops ~half of the @0.5 increments client-side; each that arrives counts as 2
        sent = sampled - 1 - 2 - 5 - 100 - 4 - 1
        assert _value(r, "web.page_views", tags="env:test") == pytest.approx((sent * 2 + 3) / 10)
        assert _value(r, "queue.size") == 9
        assert _value(r, "users") == 3
        assert [_value(r, f"web.latency.{f}") for f in ("max", "median", "avg", "count", "95percentile")] == \
            [9, 5, 5, 0.5, 9]
        assert _value(r, "db.time", agg="p50") == pytest.approx(50, rel=0.02)
        assert _value(r, "db.time", agg="p99") == pytest.approx(99, rel=0.02)
        assert _value(r, "db.time", agg="avg") == pytest.approx(50.5)
        listed = {(m["name"], m["type"]): m["tag_keys"] for m in r.get("/api/metrics")}
        assert listed[("web.latency.95percentile", "histogram")] == ["env", "route"]
        assert listed[("db.time", "distribution")] == []
        assert [(e["title"], e["text"], e["tags"]) for e in r.get("/api/events")] == [("deploy", "v2 out", ["env:test"])]
        assert [(c["name"], c["status"], c["message"]) for c in r.get("/api/checks")] == [("app.ok", 0, "fine")]


@pytest.mark.parametrize("buffered", [True, False])
def test_datadog_client_over_unix_socket(tmp_path: Any, buffered: bool) -> None:
    from datadog.dogstatsd import DogStatsd

    path = str(tmp_path / "dsd.sock")
    with RunningReceiver(statsd_socket=path) as r:
        statsd = DogStatsd(socket_path=path, disable_telemetry=True, disable_buffering=not buffered)
        for v in (2, 4, 6):
            statsd.histogram("uds.latency", v, tags=["via:uds"])
        statsd.flush()
        statsd.close_socket()
        assert _wait(lambda: _value(r, "uds.latency.count"), until=0.3) == 0.3
        assert _value(r, "uds.latency.avg", tags="via:uds") == 4
    assert not os.path.exists(path)  # removed on stop


def test_statsd_socket_never_replaces_a_regular_file(tmp_path: Any) -> None:
    path = tmp_path / "not-a-socket"
    path.write_text("precious")
    with pytest.raises(OSError):
        RunningReceiver(statsd_socket=str(path))
    assert path.read_text() == "precious"


def test_fuzz_never_stops_the_intake(capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(15)
    junk = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) for _ in range(300)]
    junk += [b"a:1|c|@x", b"a:|g", b"_e{1,1}", b"_sc|", b"|||", b":::", b"a:1|c|T-1", b"a:1|h|#\xff", b"x" * 9000]
    with RunningReceiver(statsd_port=0) as r:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for packet in junk:
            sock.sendto(packet, ("127.0.0.1", r.server.statsd_port))
        sock.sendto(b"good:42|g|#after:fuzz", ("127.0.0.1", r.server.statsd_port))
        sock.close()
        assert _wait(lambda: _value(r, "good", tags="after:fuzz")) == 42
        counters = r.server.statsd.counters
        assert counters["packets"] == len(junk) + 1
        assert counters["oversized"] == 1 and counters["bad_rate"] >= 1 and counters["not_utf8"] >= 1
        with urllib.request.urlopen(r.url + "/metrics") as resp:
            text = resp.read().decode()
        assert f"agent_sim_statsd_bad_rate_total {counters['bad_rate']}" in text and text.endswith("# EOF\n")
    logged = [line for line in capsys.readouterr().err.splitlines() if "bad DogStatsD datagram" in line]
    assert len(logged) == 1 and "logged at most once a minute" in logged[0]


def test_query_rejects_bad_parameters() -> None:
    import urllib.error

    with RunningReceiver() as r:
        for query in ("", "name=x&agg=median", "name=x&rollup=abc", "name=x&since=yesterday", "name=x&since=nan",
                      "name=x&since=inf", "name=x&until=nan", "name=trace.web.request&since=inf"):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(f"{r.url}/api/metrics/query?{query}")
            assert info.value.code == 400
            info.value.close()


def test_serve_statsd_port_flag_and_bad_port() -> None:
    import os
    import subprocess
    import sys

    from tests.utils import REPO, assert_clean_output, free_port, wait_for_port

    port, udp = free_port(), free_port()
    bad = subprocess.run([sys.executable, "-m", "agent_sim", "serve", "--port", str(port), "--statsd-port", "70000"],
                         cwd=REPO, capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": REPO})
    assert bad.returncode == 2 and "'70000' is not a port (0..65535; 0 disables DogStatsD)" in bad.stderr
    proc = subprocess.Popen([sys.executable, "-m", "agent_sim", "serve", "--port", str(port), "--db", ":memory:",
                             "--statsd-port", str(udp), "--no-host-metrics"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": REPO})
    try:
        wait_for_port(port)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.sendto(b"cli.gauge:3|g", ("127.0.0.1", udp))
        sock.close()

        def fetched() -> Any:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/metrics") as resp:
                return json.loads(resp.read())

        assert _wait(fetched) == [{"name": "cli.gauge", "type": "gauge", "tag_keys": []}]
    finally:
        out, err = terminate(proc, timeout=10)
    assert proc.returncode == 0, err
    assert_clean_output(err)
    assert f"DogStatsD udp://127.0.0.1:{udp}" in out

    # the default DogStatsD port (here from the environment) taken: traces are still served, the
    # intake is off with one clear line (a port given with --statsd-port is exit 2: test_cli)
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", udp))
    proc = subprocess.Popen([sys.executable, "-m", "agent_sim", "serve", "--port", str(port), "--db", ":memory:"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": REPO, "AGENT_SIM_STATSD_PORT": str(udp)})
    try:
        wait_for_port(port)
    finally:
        out, err = terminate(proc, timeout=10)
        taken.close()
    assert proc.returncode == 0, err
    assert_clean_output(err)
    assert f"agent-sim: DogStatsD intake off, cannot listen on UDP {udp}: Address already in use" in err
    assert "DogStatsD udp" not in out
