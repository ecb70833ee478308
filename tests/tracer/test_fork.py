"""fork(): a parent with open spans forks; the child gets a fresh, empty writer
and the parent keeps its own. Both deliver their traces, none twice."""

from __future__ import annotations

import http.server
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from tests.utils import run_python

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


class CountingIntake(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[dict[str, Any]] = []
        self.trace_counts: list[int] = []
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: CountingIntake

    def log_message(self, *args: Any) -> None:
        pass

    def do_PUT(self) -> None:
        traces = msgpack.unpackb(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.trace_counts.append(int(self.headers["X-Datadog-Trace-Count"]))
            self.server.spans.extend(span for trace in traces for span in trace)
        body = json.dumps({"rate_by_service": {}}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def intake() -> Iterator[CountingIntake]:
    server = CountingIntake()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


SCRIPT = r"""
import os, sys
from tracer import tracer
from tracer.config import config

config.agent_url = os.environ["INTAKE_URL"]
config.writer_interval = 0.05

with tracer.trace("before.fork", service="parent"):
    pass
assert tracer.flush(5)          # the parent's writer thread is running at fork time
root = tracer.trace("parent.open", service="parent")   # open across the fork
with tracer.trace("parent.finished.before.fork"):
    pass                        # finished, still buffered in the open trace
pid = os.fork()
if pid == 0:
    code = 1
    try:
        with tracer.trace("child.work", service="child"):   # the inherited active span is the parent's
            with tracer.trace("child.inner"):
                pass
        code = 0 if tracer.flush(5) else 3
    finally:
        os._exit(code)
with tracer.trace("parent.after.fork"):
    pass
root.finish()
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
assert tracer.flush(5)
print("child", pid, "parent", os.getpid())
"""


def test_fork_child_and_parent_deliver_their_own_traces_once(intake: CountingIntake) -> None:
    url = f"http://127.0.0.1:{intake.server_address[1]}"
    proc = run_python(SCRIPT, env={"INTAKE_URL": url, "TRACER_SERVICE": "forked"})
    _, child_pid, _, parent_pid = proc.stdout.split()
    names = sorted(s["name"] for s in intake.spans)
    assert names == sorted(
        [
            "before.fork",
            "parent.open",
            "parent.finished.before.fork",
            "parent.after.fork",
            "child.work",
            "child.inner",
        ]
    )
    ids = [s["span_id"] for s in intake.spans]
    assert len(ids) == len(set(ids)), "a span was delivered twice"
    by_name = {s["name"]: s for s in intake.spans}
    # Each process sent its own: the process_id metric on each local root says who.
    assert by_name["parent.open"]["metrics"]["process_id"] == int(parent_pid)
    assert by_name["child.work"]["metrics"]["process_id"] == int(child_pid)
    # The child's trace continues the parent's open span as a remote parent.
    assert by_name["child.work"]["trace_id"] == by_name["parent.open"]["trace_id"]
    assert by_name["child.work"]["parent_id"] == by_name["parent.open"]["span_id"]
    assert by_name["parent.after.fork"]["parent_id"] == by_name["parent.open"]["span_id"]
    assert sum(intake.trace_counts) == 3  # before.fork, the parent's trace, the child's chunk
