"""Stress (issue 12): threads start, tag and finish nested spans while others
set tags on spans that already finished, and the writer flushes every 50 ms
with partial flushes, on both wire versions. Runs in a subprocess under
``-X dev`` and ``PYTHONMALLOC=debug`` (a crash is a return code, not a dead
suite); a real HTTP sink on 127.0.0.1 decodes every payload with msgpack and
every span is accounted for."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_SCRIPT = r"""
import http.server, sys, threading, time
import msgpack

bodies, lock = [], threading.Lock()

class Sink(http.server.BaseHTTPRequestHandler):
    def do_PUT(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with lock:
            bodies.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")
    do_POST = do_PUT
    def log_message(self, *a):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
threading.Thread(target=server.serve_forever, daemon=True).start()
import os
os.environ["TRACER_AGENT_URL"] = "http://127.0.0.1:%d" % server.server_address[1]

from tracer import tracer

sys.setswitchinterval(1e-5)
finished, started, stop = [], [], threading.Event()
WORKERS, TRACES = 6, 60

def work(w):
    for t in range(TRACES):
        with tracer.trace("root", service="svc%d" % (t % 3)) as root:
            started.append(root.span_id)
            for c in range(3):
                with tracer.trace("child", resource="r%d" % c) as child:
                    started.append(child.span_id)
                    child.set_tag("w", str(w))
                    child.set_metric("c", c)
                    with tracer.trace("grand", service="other") as grand:
                        started.append(grand.span_id)
                        grand.set_tag(key="k%d" % t, value="v" * (t % 7))
                    finished.append(grand)
                finished.append(child)
        finished.append(root)

def late():
    i = 0
    while not stop.is_set():
        if finished:
            span = finished[-1 - i % min(len(finished), 24)]  # the newest: likely being encoded
            span.set_tag("late%d" % (i % 13), "x%d" % i)
            span.set_metric("late_m%d" % (i % 5), i)
            span.meta.pop("late%d" % ((i + 6) % 13), None)
        i += 1

lates = [threading.Thread(target=late) for _ in range(3)]
workers = [threading.Thread(target=work, args=(w,)) for w in range(WORKERS)]
for t in lates + workers:
    t.start()
for t in workers:
    t.join(120)
stop.set()
for t in lates:
    t.join(60)
assert tracer.flush(timeout=60), tracer.stats()
tracer.shutdown(timeout=30)
server.shutdown()

seen = []
for path, body in bodies:
    payload = msgpack.unpackb(body, strict_map_key=False)
    if path.endswith("v0.5/traces"):
        strings, traces = payload
        for trace in traces:
            for span in trace:
                assert len(span) == 12, span
                assert all(isinstance(k, int) and k < len(strings) for k in span[9]), span[9]
                seen.append(span[4])
    else:
        for trace in payload:
            for span in trace:
                seen.append(span["span_id"])
assert len(seen) == len(set(seen)), "a span was sent twice"
assert sorted(seen) == sorted(started), (len(seen), len(started), tracer.stats())
print("ok", len(seen), len(bodies))
"""


@pytest.mark.parametrize("version", ["v0.4", "v0.5"])
def test_threads_late_tags_and_partial_flushes_under_debug_malloc(version: str) -> None:
    env = {
        **os.environ,
        "PYTHONMALLOC": "debug",
        "TRACER_API_VERSION": version,
        "TRACER_WRITER_INTERVAL": "0.05",
        "TRACER_PARTIAL_FLUSH_MIN_SPANS": "5",
    }
    run = subprocess.run(
        [sys.executable, "-X", "dev", "-c", _SCRIPT], capture_output=True, text=True, timeout=600, env=env
    )
    assert run.returncode == 0, (run.returncode, run.stdout[-2000:], run.stderr[-4000:])
    assert run.stdout.startswith("ok "), run.stdout
