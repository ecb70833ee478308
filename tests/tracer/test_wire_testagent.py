"""Wire format against Datadog's own validator, ``ddapm-test-agent`` (PyPI).

The test agent runs once per module on a free port with the header checks on;
a failing check answers the trace request with 400 (so ``flush()`` would be
False) and is pooled for ``/test/trace_check/failures``. Each test sends real
traces from the global tracer and compares what the test agent decoded with
the spans we sent, field by field.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from tests.utils import free_port, real_part
from tracer import tracer
from tracer.config import config
from tracer.processor import runtime_id
from tracer.version import __version__

_MASK64 = (1 << 64) - 1


class DatadogTestAgent:
    def __init__(self, executable: str,
                 checks: str = "trace_count_header,meta_tracer_version_header,trace_content_length") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "ENABLED_CHECKS": checks,
            "DD_POOL_TRACE_CHECK_FAILURES": "true",
        }
        # Its OTLP listeners default to 4317/4318: take free ports so that two
        # test agents (parallel runs on one machine) never collide.
        self.proc = subprocess.Popen(
            [executable, f"--port={self.port}", f"--otlp-http-port={free_port()}", f"--otlp-grpc-port={free_port()}"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                self.get("/info")
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("ddapm-test-agent did not start") from None
                time.sleep(0.1)

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def test_agent() -> Iterator[DatadogTestAgent]:
    executable = real_part("DDAPM_TEST_AGENT", ["/opt/ddapm-venv/bin/ddapm-test-agent", "ddapm-test-agent"], "ddapm-test-agent")
    agent = DatadogTestAgent(executable)
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture
def to_test_agent(test_agent: DatadogTestAgent) -> Iterator[Any]:
    saved = (config.agent_url, config.api_version, config.writer_interval)

    def use(version: str) -> None:
        config.agent_url, config.api_version, config.writer_interval = test_agent.url, version, 5.0
        tracer._reset_writer()

    assert test_agent.get("/test/session/start")[0] == 200
    try:
        yield use
    finally:
        tracer._reset_writer()
        config.agent_url, config.api_version, config.writer_interval = saved


def build_trace() -> list[Any]:
    """A small tree with every field kind: 128-bit trace id, unicode, empty
    values, an error, int and float metrics, a span without a type."""
    with tracer.trace("web.request", service="wire-svc", resource="GET /ünïcode/<id>", span_type="web") as root:
        root.set_tag("http.method", "GET")
        root.set_tag("empty", "")
        root.set_tag("emoji", "trace ✓ 🚀")
        root.set_metric("float.metric", 0.25)
        with tracer.trace("db.query", service="wire-db", resource="SELECT 1", span_type="sql") as db:
            db.set_metric("db.row_count", 3)
            with tracer.trace("inner") as inner:
                inner.set_tag("k", "v")
        try:
            with tracer.trace("failing") as failing:
                raise ValueError("bad ✗")
        except ValueError:
            pass
    return [root, db, inner, failing]


_TRACE_LEVEL = frozenset(("language", "runtime-id", "process_id", "_sampling_priority_v1", "_dd.p.dm", "_dd.p.tid"))


def _span_level(tags: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in tags.items() if k not in _TRACE_LEVEL}


def received_spans(agent: DatadogTestAgent, trace_id: int) -> list[dict[str, Any]]:
    status, body = agent.get("/test/session/traces")
    assert status == 200, body
    traces = json.loads(body)
    spans = [s for trace in traces for s in trace if s["trace_id"] == trace_id & _MASK64]
    assert spans, f"trace {trace_id:032x} not received; got {traces!r}"
    return spans


@pytest.mark.parametrize("version", ["v0.4", "v0.5"])
def test_test_agent_accepts_and_returns_the_same_spans(test_agent: DatadogTestAgent, to_test_agent: Any, version: str) -> None:
    to_test_agent(version)
    spans = build_trace()
    assert tracer.flush(10), tracer.writer.stats()  # 200: every enabled check passed
    assert tracer.writer.stats()["spans_sent"] == 4
    root = spans[0]
    assert root.trace_id >> 64, "the trace id has a high half"
    got = {s["span_id"]: s for s in received_spans(test_agent, root.trace_id)}
    assert sorted(got) == sorted(s.span_id for s in spans)
    for span in spans:
        wire = got[span.span_id]
        assert {
            "name": wire["name"],
            "service": wire["service"],
            "resource": wire["resource"],
            "type": wire.get("type") or "",
            "parent_id": wire.get("parent_id") or 0,
            "start": wire["start"],
            "duration": wire["duration"],
            "error": wire["error"],
            "meta": _span_level(wire["meta"]),
            "metrics": _span_level(wire["metrics"]),
        } == {
            "name": span.name,
            "service": span.service,
            "resource": span.resource,
            "type": span.span_type or "",
            "parent_id": span.parent_id,
            "start": span.start_ns,
            "duration": span.duration_ns,
            "error": span.error,
            "meta": _span_level(span.meta),
            "metrics": _span_level(span.metrics),
        }
    # The trace-level tags: on the wire whether the C encoder wrote them
    # (v0.4: the span dicts are left without them) or the processor put them
    # in the span dicts.
    def level(span: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in {**span["meta"], **span["metrics"]}.items() if k in _TRACE_LEVEL}

    chunk_level = {"_sampling_priority_v1": 1, "_dd.p.dm": "-0", "_dd.p.tid": f"{root.trace_id >> 64:016x}"}
    root_level = {"language": "python", "runtime-id": runtime_id(), "process_id": os.getpid()}
    firsts = [s for s in got.values() if "_dd.p.tid" in s["meta"]]
    assert len(firsts) == 1, "the chunk-level tags on the chunk's first span only"
    for span_id, wire in got.items():
        expected = {**(root_level if span_id == root.span_id else {}), **(chunk_level if wire is firsts[0] else {})}
        assert level(wire) == expected
    by_name = {s["name"]: s for s in got.values()}
    assert by_name["web.request"]["parent_id"] == 0
    assert by_name["db.query"]["parent_id"] == root.span_id
    assert by_name["inner"]["parent_id"] == spans[1].span_id
    assert by_name["failing"]["error"] == 1 and by_name["failing"]["meta"]["error.message"] == "bad ✗"
    assert by_name["web.request"]["meta"]["emoji"] == "trace ✓ 🚀"
    assert by_name["web.request"]["meta"]["empty"] == ""
    assert by_name["db.query"]["metrics"]["db.row_count"] == 3
    # the high half of the 128-bit id rides in _dd.p.tid on the chunk's first span
    tids = {s["meta"].get("_dd.p.tid") for s in got.values()} - {None}
    assert tids == {f"{root.trace_id >> 64:016x}"}
    status, body = test_agent.get("/test/trace_check/failures")
    assert status == 200, body


def send_queries(
    test_agent: DatadogTestAgent, to_test_agent: Any, service: str, n: int, tag: Any, span_type: str | None = None
) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
    """A request span with ``n`` children of one query (an N+1), each tagged
    by ``tag(child, i)``, sent as v0.4 to the test agent, which must accept
    it whole: the root, every span received, and the children received."""
    to_test_agent("v0.4")
    with tracer.trace("bulk.root", service=service, resource="GET /items") as root:
        for i in range(n):
            with tracer.trace("bulk.query", resource=QUERY, span_type=span_type) as child:
                tag(child, i)
    assert tracer.flush(10), tracer.writer.stats()
    got = received_spans(test_agent, root.trace_id)
    assert len(got) == n + 1
    status, body = test_agent.get("/test/trace_check/failures")
    assert status == 200, body
    return root, got, [s for s in got if s["parent_id"] == root.span_id]


QUERY = "SELECT * FROM items WHERE id = %s"


def test_a_large_trace_of_one_service_arrives_whole(test_agent: DatadogTestAgent, to_test_agent: Any) -> None:
    # 41 spans sharing service, type and error, the 40 children their name
    # and resource too (an N+1 query): the pure-Python encoder packs those
    # once and puts them after each child's trace_id, and sends the root (its
    # own name and resource) as a span map after them; the C encoder writes
    # the standard order. Either way the test agent reads every field.
    root, got, children = send_queries(test_agent, to_test_agent, "wire-bulk", 40, lambda child, i: child.set_tag("i", str(i)))
    assert {(s["service"], s.get("type") or "", s["error"]) for s in got} == {("wire-bulk", "", 0)}
    assert {(s["name"], s["resource"]) for s in children} == {("bulk.query", QUERY)}
    assert sorted(int(s["meta"]["i"]) for s in children) == list(range(40))
    assert [(s["name"], s["resource"]) for s in got if s["span_id"] == root.span_id] == [("bulk.root", "GET /items")]


def tag_as_a_query(child: Any, i: int) -> None:
    child.set_tag("db.system", "mysql")
    child.set_tag("component", "pymysql")
    child.set_metric("db.row_count", 1)


def test_a_trace_of_identically_tagged_queries_arrives_whole(test_agent: DatadogTestAgent, to_test_agent: Any) -> None:
    # An N+1 query as our integrations tag it: every child's meta and
    # metrics equal, the first child's sampling tags and the root's process
    # tags added by the writer. The pure-Python encoder packs the children's
    # dicts once (test_encoding_v04_fold.py) and sends the first and the last
    # span as span maps of their own; the test agent must read all 42.
    root, got, children = send_queries(test_agent, to_test_agent, "wire-tags", 41, tag_as_a_query, "sql")
    assert len(children) == 41
    assert all(s["meta"]["db.system"] == "mysql" and s["meta"]["component"] == "pymysql" for s in children)
    assert all(s["metrics"]["db.row_count"] == 1 for s in children)
    assert sum("_sampling_priority_v1" in s["metrics"] for s in got) == 1
    (rooted,) = [s for s in got if s["span_id"] == root.span_id]
    assert rooted["meta"]["language"] == "python" and "db.system" not in rooted["meta"]


def test_checks_are_really_on(test_agent: DatadogTestAgent) -> None:
    """Negative control: a payload whose X-Datadog-Trace-Count lies is refused,
    so the acceptance above means something."""
    assert test_agent.get("/test/session/start")[0] == 200
    body = msgpack.packb([[{"trace_id": 1, "span_id": 2, "parent_id": 0, "name": "x", "service": "s", "resource": "r",
                            "start": 1, "duration": 1, "error": 0, "meta": {}, "metrics": {}, "type": ""}]])
    conn = http.client.HTTPConnection("127.0.0.1", test_agent.port, timeout=10)
    conn.request("PUT", "/v0.4/traces", body, {
        "Content-Type": "application/msgpack",
        "X-Datadog-Trace-Count": "3",
        "Datadog-Meta-Tracer-Version": __version__,
    })
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status == 400
    status, reasons = test_agent.get("/test/trace_check/failures")
    assert status == 400
    assert b"count" in reasons.lower(), reasons
    test_agent.get("/test/session/start")
