"""requests: client spans against a real local HTTP server."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import tracer as tracer_pkg
from contrib._http import untraced
from tests.contrib.contract import IntegrationContract
from tests.utils import free_port, render_tree
from tracer import tracer
from tracer.config import config

TAGS = ("span.kind", "component", "http.method", "http.url", "http.status_code", "out.host", "network.destination.port")

_SERVER_CODE = '''
import http.server, json, threading

class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = {"/ok": 200, "/boom": 503, "/redirect": 302}.get(self.path.split("?")[0], 404)
        body = json.dumps({"path": self.path, "traceparent": "traceparent" in self.headers}).encode()
        self.send_response(code)
        if code == 302:
            self.send_header("Location", "/ok")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_POST = do_GET
    def log_message(self, *args):
        pass

_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
threading.Thread(target=_server.serve_forever, daemon=True).start()
BASE = "http://127.0.0.1:%d" % _server.server_address[1]
'''


class TestRequestsContract(IntegrationContract):
    integration = "requests"
    module = "requests"
    span_name = "requests.request"
    spans_per_exercise = 7  # 4 sends + a redirect (2 hops) + 1 failed connect
    exercise_code = _SERVER_CODE + '''
import socket

def exercise():
    import requests

    out = []
    for path in ("/ok?x=1", "/missing", "/boom"):
        r = requests.get(BASE + path, timeout=5)
        out.append([r.status_code, r.json()["path"]])
    r = requests.post(BASE + "/ok", data=b"abc", timeout=5)
    out.append([r.status_code, r.url.endswith("/ok")])
    r = requests.get(BASE + "/redirect", timeout=5)
    out.append([r.status_code, [h.status_code for h in r.history]])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    try:
        requests.get("http://127.0.0.1:%d/" % closed, timeout=5)
    except requests.ConnectionError as exc:
        out.append(type(exc).__name__)
    return out
'''


# -- in-process tests against a real server ------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        _Handler.seen.append({k.lower(): v for k, v in self.headers.items()})
        code = {"/ok": 200, "/boom": 500, "/teapot": 418}.get(self.path.split("?")[0], 404)
        body = json.dumps({"path": self.path}).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Server-Info", "local")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def requests_patched() -> Iterator[None]:
    tracer_pkg.patch(requests=True)
    _Handler.seen.clear()
    try:
        yield
    finally:
        tracer_pkg.unpatch(requests=True)


def _spans(sink: Any) -> list[dict[str, Any]]:
    return [
        {"name": s.name, "service": s.service, "resource": s.resource, "span_id": s.span_id, "parent_id": s.parent_id,
         "error": s.error, "meta": dict(s.meta), "metrics": dict(s.metrics), "start_ns": s.start_ns, "type": s.span_type}
        for s in sink.spans
    ]


def test_client_span_tags(traced: Any, requests_patched: None, server: str) -> None:
    """Read back from a real receiver: the whole tree with the tags of DESIGN's table."""
    import requests

    port = server.rsplit(":", 1)[1]
    with tracer.trace("caller", service="billing"):
        resp = requests.get(server.replace("http://", "http://user:pw@") + "/ok?id=3&api_key=s3cr3t#frag", timeout=5)
    assert resp.status_code == 200 and resp.json() == {"path": "/ok?id=3&api_key=s3cr3t"}
    tracer.flush()
    (row,) = traced.wait_traces(1, timeout=10, service="billing")
    spans = traced.spans(row["trace_id"])
    assert render_tree(spans, TAGS) == "\n".join([
        "caller billing 'caller'",
        f"  requests.request billing 'GET /ok' span.kind=client component=requests http.method=GET "
        f"http.url=http://127.0.0.1:{port}/ok?id=3&api_key=<redacted> http.status_code=200 out.host=127.0.0.1 "
        f"network.destination.port={port}",
    ])
    (span,) = [s for s in spans if s["name"] == "requests.request"]
    assert span["type"] == "http" and span["metrics"]["_dd.measured"] == 1
    # The server saw the client span as the parent of whatever it does.
    (headers,) = _Handler.seen
    assert headers["x-datadog-parent-id"] == str(int(span["span_id"], 16))


def test_without_a_parent_the_process_service_is_used(test_spans: Any, requests_patched: None, server: str) -> None:
    import requests

    requests.get(server + "/ok", timeout=5)
    (span,) = test_spans.spans
    assert span.service == tracer.service and span.parent_id == 0


def test_5xx_is_an_error_4xx_is_not(test_spans: Any, requests_patched: None, server: str) -> None:
    import requests

    assert requests.get(server + "/boom", timeout=5).status_code == 500
    assert requests.get(server + "/teapot", timeout=5).status_code == 418
    assert requests.get(server + "/nope", timeout=5).status_code == 404
    assert [(s.resource, s.error, s.meta["http.status_code"]) for s in test_spans.spans] == [
        ("GET /boom", 1, "500"), ("GET /teapot", 0, "418"), ("GET /nope", 0, "404"),
    ]


def test_exception_marks_the_span_and_propagates_unchanged(test_spans: Any, requests_patched: None) -> None:
    import requests

    port = free_port()  # nothing listens there
    with pytest.raises(requests.ConnectionError) as info:
        requests.get(f"http://127.0.0.1:{port}/x", timeout=5)
    (span,) = test_spans.spans
    assert span.error == 1
    assert span.meta["error.type"] == "requests.exceptions.ConnectionError"
    assert str(info.value) in span.meta["error.message"]
    assert "http.status_code" not in span.meta


def test_propagation_headers_carry_the_client_span(test_spans: Any, requests_patched: None, server: str) -> None:
    import requests

    with tracer.trace("caller"):
        requests.get(server + "/ok", timeout=5)
    (headers,) = _Handler.seen
    span = next(s for s in test_spans.spans if s.name == "requests.request")
    assert headers.get("x-datadog-trace-id") == str(span.trace_id & (2**64 - 1))
    assert headers.get("x-datadog-parent-id") == str(span.span_id)
    assert headers.get("traceparent", "").split("-")[1:3] == [f"{span.trace_id:032x}", f"{span.span_id:016x}"]


def test_header_tags(test_spans: Any, requests_patched: None, server: str) -> None:
    import requests

    previous = config.header_tags
    config.header_tags = {"x-request-id": None, "x-server-info": "server.info"}
    try:
        requests.get(server + "/ok", headers={"X-Request-Id": "r-1"}, timeout=5)
    finally:
        config.header_tags = previous
    (span,) = test_spans.spans
    assert span.meta["http.request.headers.x-request-id"] == "r-1"
    assert span.meta["server.info"] == "local"


def test_calls_to_the_receiver_and_untraced_blocks_are_not_traced(
    test_spans: Any, requests_patched: None, server: str
) -> None:
    import requests

    previous = config.agent_url
    config.agent_url = server
    try:
        requests.get(server + "/ok", timeout=5)
    finally:
        config.agent_url = previous
    with untraced():
        requests.get(server + "/ok", timeout=5)
    assert test_spans.spans == []
    assert "x-datadog-trace-id" not in _Handler.seen[0]


def test_unpatched_requests_make_no_spans(test_spans: Any, server: str) -> None:
    import requests

    tracer_pkg.patch(requests=True)
    tracer_pkg.unpatch(requests=True)
    requests.get(server + "/ok", timeout=5)
    assert test_spans.spans == []


def test_ids_in_the_path_are_quantized_in_the_resource_not_the_url(test_spans: Any, requests_patched: None,
                                                                    server: str) -> None:
    import requests

    uuid = "123e4567-e89b-12d3-a456-426614174000"
    for path in ("/stock/7", f"/orders/{uuid}/items", "/blob/0123456789abcdef0123", "/v2/users", "/ok"):
        requests.get(server + path, timeout=5)
    assert [(s.resource, s.meta["http.url"]) for s in test_spans.spans] == [
        ("GET /stock/?", server + "/stock/7"),
        ("GET /orders/?/items", server + f"/orders/{uuid}/items"),
        ("GET /blob/?", server + "/blob/0123456789abcdef0123"),
        ("GET /v2/users", server + "/v2/users"),
        ("GET /ok", server + "/ok"),
    ]
