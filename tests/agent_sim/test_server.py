"""agent_sim's HTTP intake and JSON API against a real server on a free port."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from tests.receiver import RunningReceiver
from tests.utils import render_tree, terminate

NOW = time.time_ns()


def span(tid: int, sid: int, parent: int = 0, service: str = "web", name: str = "web.request",
         resource: str = "GET /", type_: str = "web", start: int | None = None, duration: int = 1_000_000,
         error: int = 0, meta: dict | None = None, metrics: dict | None = None) -> dict[str, Any]:
    return {"trace_id": tid, "span_id": sid, "parent_id": parent, "service": service, "name": name,
            "resource": resource, "type": type_, "start": NOW if start is None else start, "duration": duration,
            "error": error, "meta": meta or {}, "metrics": metrics or {}}


def put(url: str, body: bytes, path: str = "/v0.4/traces", headers: dict[str, str] | None = None,
        method: str = "PUT") -> tuple[int, bytes]:
    req = urllib.request.Request(url + path, data=body, method=method,
                                 headers={"Content-Type": "application/msgpack", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def send(url: str, traces: list[list[dict]], **kw: Any) -> dict:
    status, body = put(url, msgpack.packb(traces), **kw)
    assert status == 200, body
    return json.loads(body)


@pytest.fixture(scope="module")
def rx() -> Iterator[RunningReceiver]:
    with RunningReceiver(sample_rates={"": 0.5, "checkout": 0.25}) as running:
        yield running


def get_status(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_our_tracer_end_to_end(traced: RunningReceiver) -> None:
    from tracer import tracer

    with tracer.trace("web.request", service="shop", resource="GET /cart", span_type="web") as root:
        root.set_tag("http.status_code", "200")
        with tracer.trace("sqlite.query", service="sqlite", resource="SELECT * FROM t WHERE id = 42",
                          span_type="sql") as q:
            q.set_metric("_dd.measured", 1)
        with tracer.trace("compute"):
            pass
    assert tracer.flush(5)
    (row,) = traced.wait_traces(1, service="shop")
    assert row["trace_id"] == f"{root.trace_id:032x}"
    assert row["span_count"] == 3 and row["resource"] == "GET /cart" and row["name"] == "web.request"
    spans = traced.spans(row["trace_id"])
    assert render_tree(spans) == (
        "web.request shop 'GET /cart'\n"
        "  sqlite.query sqlite 'SELECT * FROM t WHERE id = ?'\n"
        "  compute shop 'compute'"
    )
    by_name = {s["name"]: s for s in spans}
    assert by_name["web.request"]["parent_id"] is None
    assert by_name["compute"]["parent_id"] == f"{root.span_id:016x}"
    assert all(s["trace_id"] == row["trace_id"] for s in spans)
    assert by_name["sqlite.query"]["meta"]["sql.query"] == "SELECT * FROM t WHERE id = ?"
    stats = {(s["service"], s["resource"]): (s["hits"], s["top_level_hits"], s["errors"]) for s in traced.stats()}
    assert stats == {("shop", "GET /cart"): (1, 1, 0), ("sqlite", "SELECT * FROM t WHERE id = ?"): (1, 1, 0)}


def test_ids_as_strings_and_lookup_forms(rx: RunningReceiver) -> None:
    low = (1 << 63) + 12345  # above 2^53 and 2^63: precision and sign traps
    high = "6543210f00000000"
    send(rx.url, [[span(low, 7, meta={"_dd.p.tid": high}), span(low, 8, parent=7, name="child")]])
    full = high + f"{low:016x}"
    for form in (full, f"{low:016x}", str(low), full.upper()):
        trace = rx.trace(form)
        assert trace["trace_id"] == full
    spans = {s["name"]: s for s in trace["spans"]}
    assert spans["web.request"]["parent_id"] is None and spans["web.request"]["span_id"] == "0000000000000007"
    assert spans["child"]["parent_id"] == "0000000000000007"
    assert spans["child"]["meta"]["_dd.p.tid"] == high  # copied to every span
    assert get_status(rx.url + "/api/traces/" + "0" * 31 + "1")[0] == 404
    decimal16 = 1234567890123456  # 16 decimal digits: also a valid-looking hex id
    send(rx.url, [[span(decimal16, 1, service="dec16")]])
    assert rx.trace(str(decimal16))["trace_id"] == f"{decimal16:032x}"
    status, body = get_status(rx.url + "/api/traces/not-an-id")
    assert status == 400 and "not a trace id" in body["error"]


def test_rate_by_service_reply(rx: RunningReceiver) -> None:
    reply = send(rx.url, [[span(101, 1, service="checkout", meta={"env": "prod"})]])
    rates = reply["rate_by_service"]
    assert rates["service:,env:"] == 0.5
    assert rates["service:checkout,env:prod"] == 0.25
    reply = send(rx.url, [[span(102, 1, service="other", meta={"env": "prod"})]])
    assert reply["rate_by_service"]["service:other,env:prod"] == 0.5


def test_chunks_of_one_trace_are_one_trace(rx: RunningReceiver) -> None:
    tid = 555_000
    # a partial flush: children first, the root last (as a tracer's partial flush sends them)
    send(rx.url, [[span(tid, 2, parent=1, name="db", service="svc-chunks", start=NOW + 10),
                   span(tid, 3, parent=1, name="db", service="svc-chunks", start=NOW + 5)]])
    (row,) = rx.traces(service="svc-chunks")
    assert row["name"] == "db" and row["start_ns"] == NOW + 5  # earliest span until the root arrives
    send(rx.url, [[span(tid, 1, name="root", service="svc-chunks", resource="GET /chunks", duration=99)]])
    (row,) = rx.traces(service="svc-chunks")
    assert (row["name"], row["resource"], row["span_count"], row["duration_ns"]) == ("root", "GET /chunks", 3, 99)
    assert len(rx.spans(row["trace_id"])) == 3


def test_priority_zero_counted_not_stored(rx: RunningReceiver) -> None:
    send(rx.url, [[span(777, 1, service="p0", metrics={"_sampling_priority_v1": 0, "_dd.top_level": 1})],
                  [span(778, 1, service="p0", metrics={"_sampling_priority_v1": 2})]])
    assert [t["trace_id"][-16:] for t in rx.traces(service="p0")] == [f"{778:016x}"]
    (row,) = rx.stats(service="p0")
    assert row["hits"] == 2


def test_client_computed_stats_not_counted_twice_and_v06_merged(rx: RunningReceiver) -> None:
    send(rx.url, [[span(880, 1, service="cstats", metrics={"_dd.top_level": 1})]],
         headers={"Datadog-Client-Computed-Stats": "yes"})
    assert rx.traces(service="cstats")  # stored...
    assert rx.stats(service="cstats") == []  # ...not counted
    payload = {"Hostname": "h", "Env": "prod", "Version": "1", "Stats": [{"Start": NOW - NOW % 10**10,
               "Duration": 10**10, "Stats": [{"Service": "cstats", "Name": "web.request", "Resource": "GET /",
                                             "Type": "web", "HTTPStatusCode": 200, "Hits": 7, "TopLevelHits": 7,
                                             "Errors": 2, "Duration": 7_000_000, "OkSummary": None,
                                             "ErrorSummary": None}]}]}
    status, body = put(rx.url, msgpack.packb(payload), path="/v0.6/stats")
    assert status == 200, body
    (row,) = rx.stats(service="cstats")
    assert (row["hits"], row["errors"], row["top_level_hits"], row["duration_ns"]) == (7, 2, 7, 7_000_000)
    status, body = put(rx.url, msgpack.packb({"Stats": "nope"}), path="/v0.6/stats")
    assert status == 400 and b"Stats" in body


def test_v05_and_json_and_v03(rx: RunningReceiver) -> None:
    strings = ["", "v05svc", "op", "res", "web", "k", "v", "m"]
    body = msgpack.packb([strings, [[[1, 2, 3, 990, 1, 0, NOW, 1000, 0, {5: 6}, {7: 1.5}, 4]]]])
    assert put(rx.url, body, path="/v0.5/traces")[0] == 200
    (s,) = rx.spans(990)
    assert (s["service"], s["name"], s["resource"], s["type"], s["meta"], s["metrics"]) == (
        "v05svc", "op", "res", "web", {"k": "v"}, {"m": 1.5})
    js = json.dumps([[span(991, 1, service="jsonsvc")]]).encode()
    assert put(rx.url, js, headers={"Content-Type": "application/json"}, method="POST")[0] == 200
    assert rx.traces(service="jsonsvc")
    assert put(rx.url, b"\x90", path="/v0.3/traces") == (200, b"OK")


def test_trace_filters_and_wait(rx: RunningReceiver) -> None:
    send(rx.url, [[span(1001, 1, service="filt", resource="A", duration=10)],
                  [span(1002, 1, service="filt", resource="B", duration=5000, error=1)],
                  [span(1003, 1, service="filt", resource="A", duration=7000, start=NOW + 1)]])
    rows = rx.traces(service="filt")
    assert [r["trace_id"][-4:] for r in rows] == ["03eb", "03ea", "03e9"]  # newest first
    assert {r["resource"] for r in rx.traces(service="filt", resource="A")} == {"A"}
    assert [r["error"] for r in rx.traces(service="filt", error=1)] == [1]
    assert len(rx.traces(service="filt", error=0)) == 2
    assert len(rx.traces(service="filt", min_duration_ns=5000)) == 2
    assert len(rx.traces(service="filt", limit=1)) == 1
    t0 = time.monotonic()
    rows = rx.get("/api/traces", service="filt", wait=5, timeout=0.3)
    assert len(rows) == 3 and 0.25 < time.monotonic() - t0 < 5
    with pytest.raises(AssertionError):
        rx.wait_traces(4, timeout=0.2, service="filt")
    assert get_status(rx.url + "/api/traces?limit=x")[0] == 400


def test_wait_wakes_up_on_ingest(rx: RunningReceiver) -> None:
    import threading

    timer = threading.Timer(0.2, lambda: send(rx.url, [[span(1101, 1, service="waiter")]]))
    timer.start()
    t0 = time.monotonic()
    rows = rx.wait_traces(1, timeout=5, service="waiter")
    assert len(rows) == 1 and time.monotonic() - t0 < 2
    timer.join()


def test_duplicate_span_ids_counted(rx: RunningReceiver) -> None:
    before = rx.info()["duplicate_span_ids"]
    send(rx.url, [[span(1201, 1, service="dup"), span(1201, 1, parent=0, service="dup")]])
    send(rx.url, [[span(1201, 1, service="dup")]])  # a resend of the same span
    assert rx.info()["duplicate_span_ids"] == before + 2
    assert f"agent_sim_duplicate_span_ids_total {before + 2}" in rx.metrics()


def test_info_and_metrics(rx: RunningReceiver) -> None:
    info = rx.info()
    for endpoint in ("/v0.4/traces", "/v0.5/traces", "/v0.6/stats", "/info"):
        assert endpoint in info["endpoints"]
    send(rx.url, [[span(1301, 1, service="met\"rics", resource="GET /m", error=1,
                        metrics={"_dd.top_level": 1})]])
    text = rx.metrics()
    assert 'agent_sim_hits_total{service="met\\"rics",resource="GET /m"} 1' in text
    assert 'agent_sim_errors_total{service="met\\"rics",resource="GET /m"} 1' in text
    assert 'agent_sim_duration_seconds{service="met\\"rics",resource="GET /m",quantile="0.95"}' in text
    assert text.endswith("# EOF\n")


def test_stats_rows_shape_and_window(rx: RunningReceiver) -> None:
    durations = [1_000_000 * (i + 1) for i in range(100)]
    send(rx.url, [[span(2000 + i, 1, service="lat", resource="GET /lat", duration=d,
                        metrics={"_dd.top_level": 1})] for i, d in enumerate(durations)])
    (row,) = rx.stats(service="lat")
    assert set(row) == {"service", "name", "resource", "type", "hits", "top_level_hits", "errors", "duration_ns",
                        "p50_ns", "p75_ns", "p90_ns", "p95_ns", "p99_ns", "max_ns"}
    assert row["hits"] == 100 and row["duration_ns"] == sum(durations) and row["max_ns"] == 100_000_000
    assert abs(row["p50_ns"] - 50_000_000) <= 0.02 * 50_000_000
    assert abs(row["p99_ns"] - 99_000_000) <= 0.02 * 99_000_000
    now_s = NOW / 1e9
    assert rx.stats(service="lat", since=now_s - 60, until=now_s + 60)[0]["hits"] == 100
    assert rx.stats(service="lat", since=now_s + 3600) == []
    rx.receiver.flush()  # the same answers from persisted buckets
    assert rx.stats(service="lat", since=now_s - 60)[0]["hits"] == 100
    assert rx.stats(service="lat")[0]["hits"] == 100
    (svc,) = [s for s in rx.services() if s["service"] == "lat"]
    assert svc["hits"] == 100 and abs(svc["p95_ns"] - 95_000_000) <= 0.02 * 95_000_000


def test_static_files(rx: RunningReceiver) -> None:
    assert get_status(rx.url + "/static/../server.py")[0] == 404
    assert get_status(rx.url + "/static/nope.js")[0] == 404
    assert get_status(rx.url + "/nope")[0] == 404
    assert get_status(rx.url + "/info".replace("info", "v0.4/traces"))[0] == 405


def _raw(port: int, request: bytes, read: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        if not read:
            return b""
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


def test_body_over_25_mib_is_413_without_reading_it(rx: RunningReceiver) -> None:
    with socket.create_connection(("127.0.0.1", rx.port), timeout=10) as sock:
        sock.sendall(b"PUT /v0.4/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack\r\n"
                     b"Content-Length: %d\r\n\r\n" % (30 * 1024 * 1024))
        sock.sendall(b"\x00" * 65536)  # a little of the 30 MiB; the answer must not wait for the rest
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413"), reply
    send(rx.url, [[span(3001, 1, service="after413")]])
    assert rx.traces(service="after413")


def test_missing_length_and_chunked(rx: RunningReceiver) -> None:
    reply = _raw(rx.port, b"PUT /v0.4/traces HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 411")
    body = msgpack.packb([[span(3101, 1, service="chunked")]])
    req = (b"PUT /v0.4/traces HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
           + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
    assert _raw(rx.port, req).startswith(b"HTTP/1.1 200")
    assert rx.traces(service="chunked")


def test_retention_by_count_evicts_oldest() -> None:
    with RunningReceiver(retention_traces=5) as small:
        for i in range(12):
            send(small.url, [[span(4000 + i, 1, service="ret", start=NOW + i)]])
        small.receiver.maintain(full=True)
        rows = small.traces(service="ret")
        assert [int(r["trace_id"], 16) for r in rows] == [4011, 4010, 4009, 4008, 4007]
        assert get_status(small.url + "/api/traces/4000")[0] == 404
        (stat,) = small.stats(service="ret")
        assert stat["hits"] == 12  # stats outlive evicted traces


def test_serve_without_the_agent_extra_says_what_to_install() -> None:
    import subprocess
    import sys

    from tests.utils import REPO

    code = ("import sys; sys.modules['ddsketch'] = None; sys.modules['ddsketch.mapping'] = None\n"
            "from agent_sim.serve import serve_main\nsys.exit(serve_main(['--port', '0']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "pip install 'tracer-apm[agent]'" in proc.stderr and "Traceback" not in proc.stderr


def test_serve_main_runs_and_stops_on_sigterm(tmp_path: Any) -> None:
    import os
    import subprocess
    import sys

    from tests.utils import REPO, assert_clean_output, free_port, wait_for_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from agent_sim.serve import serve_main; "
                             f"sys.exit(serve_main(['--port', '{port}', '--db', ':memory:', "
                             "'--sample-rate', '0.3', '--sample-rate', 'api=0.1']))"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": REPO})
    try:
        wait_for_port(port)
        reply = send(f"http://127.0.0.1:{port}", [[span(1, 1, service="api")]])
        assert reply["rate_by_service"] == {"service:,env:": 0.3, "service:api,env:": 0.1}
    finally:
        out, err = terminate(proc, timeout=10)
    assert proc.returncode == 0, err
    assert_clean_output(err)
    assert f"listening on http://127.0.0.1:{port}" in out
