"""Receiver behaviour that had no test: HEAD, a bug answered with 500 while the
server keeps serving, ``/v0.3`` with a body, bad ``--sample-rate`` values, a
JSON body with lone surrogate escapes (it was a 500)."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from agent_sim import server
from agent_sim.serve import serve_main
from tests.agent_sim.test_server import span
from tests.receiver import RunningReceiver


@pytest.fixture
def rx() -> Iterator[RunningReceiver]:
    with RunningReceiver() as running:
        yield running


def request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None) -> tuple[Any, bytes]:
    headers = {"Content-Type": "application/msgpack"} if body is not None else {}
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    return resp, resp.read()


def test_head_answers_gets_headers_without_a_body(rx: RunningReceiver) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", rx.port, timeout=10)
    try:
        get, get_body = request(conn, "GET", "/info")
        head, head_body = request(conn, "HEAD", "/info")  # same keep-alive connection
        assert (head.status, head_body) == (200, b"")
        assert head.getheader("Content-Type") == get.getheader("Content-Type") == "application/json"
        assert int(head.getheader("Content-Length")) > 0 and json.loads(get_body)["counters"] is not None
        missing, _ = request(conn, "HEAD", "/no/such/page")
        assert missing.status == 404
        after, after_body = request(conn, "GET", "/info")  # the connection is still in sync
        assert after.status == 200 and json.loads(after_body)
    finally:
        conn.close()


def test_a_bug_answers_500_once_and_the_server_keeps_serving(
    rx: RunningReceiver, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    # Fault injection: a route handler with a bug (no real input reaches one).
    def buggy(_h: Any, _arg: str) -> None:
        raise RuntimeError("boom")

    monkeypatch.setitem(server.ROUTES, ("GET", "/api/services"), buggy)
    conn = http.client.HTTPConnection("127.0.0.1", rx.port, timeout=10)
    try:
        resp, body = request(conn, "GET", "/api/services")
        assert resp.status == 500 and body == b"internal error: RuntimeError: boom\n"
        assert resp.getheader("Connection") == "close"
    finally:
        conn.close()
    assert "RuntimeError: boom" in capfd.readouterr().err  # the traceback, for whoever runs it
    assert rx.info()["counters"]["internal_errors"] == 1
    conn = http.client.HTTPConnection("127.0.0.1", rx.port, timeout=10)
    try:
        resp, _ = request(conn, "PUT", "/v0.4/traces", msgpack.packb([[span(4242, 1, service="after-500")]]))
        assert resp.status == 200
    finally:
        conn.close()
    assert rx.spans(4242)[0]["service"] == "after-500"  # the same server still ingests and answers


def test_v03_with_a_body_is_acknowledged_and_drained(rx: RunningReceiver) -> None:
    # ddtrace's old endpoint: acknowledged, not stored; the body is read so the
    # keep-alive connection stays in sync for the next request.
    conn = http.client.HTTPConnection("127.0.0.1", rx.port, timeout=10)
    try:
        resp, body = request(conn, "PUT", "/v0.3/traces", msgpack.packb([[span(3003, 1, service="v03")]] * 50))
        assert (resp.status, body) == (200, b"OK")
        resp, body = request(conn, "PUT", "/v0.4/traces", msgpack.packb([[span(3004, 1, service="v04")]]))
        assert resp.status == 200, body
    finally:
        conn.close()
    assert rx.traces(service="v03") == []
    assert [t["service"] for t in rx.traces(service="v04")] == ["v04"]


@pytest.mark.parametrize(
    "value, message",
    [
        ("2", "--sample-rate '2': rate must be within 0..1"),
        ("-0.1", "--sample-rate '-0.1': rate must be within 0..1"),
        ("api=half", "--sample-rate 'api=half': expected RATE or service=RATE"),
        ("", "--sample-rate '': expected RATE or service=RATE"),
    ],
)
def test_bad_sample_rate_is_a_clear_error(value: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert serve_main(["--port", "0", "--db", ":memory:", "--sample-rate", value]) == 2
    assert capsys.readouterr().err == f"agent-sim: {message}\n"


def test_json_with_lone_surrogate_escapes_is_stored_not_a_500(rx: RunningReceiver) -> None:
    body = json.dumps([[span(5150, 1, service="svc\ud800", meta={"k\udc00": "v"})]]).encode()
    assert b"\\ud800" in body  # json.dumps escapes it; json.loads brings the lone surrogate back
    conn = http.client.HTTPConnection("127.0.0.1", rx.port, timeout=10)
    try:
        conn.request("PUT", "/v0.4/traces", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert (resp.status, resp.read()[:1]) == (200, b"{")
    finally:
        conn.close()
    (stored,) = rx.spans(5150)
    assert (stored["service"], stored["meta"]["k\ufffd"]) == ("svc\ufffd", "v")
    assert rx.info()["counters"].get("internal_errors", 0) == 0
