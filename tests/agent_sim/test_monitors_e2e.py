"""End to end: a Flask app under ``tracer-run`` reports to a real receiver; a
p95 monitor on its trace metrics goes Warn then Alert as ``/checkout`` slows
down, then No Data once the app stops; a downtime mutes the Alert of the
restarted (slow) app, and the recovery after the downtime is sent. A real
local HTTP webhook receives the notifications.

Evaluations are driven through ``POST /api/monitors/evaluate`` with explicit
times: the data are real (their 10 s buckets are the app's clock); only the
evaluation's "now" is chosen, so no step waits for a wall-clock minute. A
window ``[now - 60, now]`` takes every bucket it overlaps (the metric query's
contract), so a bucket ``b`` has left it from ``now >= b + 70`` on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest

from tests.agent_sim.test_monitors_api import call
from tests.agent_sim.webhooks import WebhookSink
from tests.receiver import RunningReceiver
from tests.utils import REPO, assert_clean_output, free_port, require_program, stop_process, wait_for_port

pytestmark = pytest.mark.slow

APPS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "apps")
RESOURCE = "GET /checkout"
MONITOR = {
    "name": "Checkout p95", "type": "metric alert",
    "query": f"max(last_1m):p95:trace.flask.request{{service:shop,resource_name:{RESOURCE}}} > 0.3",
    "message": "{{#is_alert}}checkout p95 {{value}}s > {{threshold}}s{{/is_alert}}"
               "{{#is_warning}}checkout p95 {{value}}s > {{threshold}}s{{/is_warning}}"
               "{{#is_no_data}}no checkout traffic{{/is_no_data}}{{#is_recovery}}checkout is fast again{{/is_recovery}}"
               " @webhook-ops",
    "options": {"thresholds": {"critical": 0.3, "warning": 0.1}, "notify_no_data": True, "no_data_timeframe": 1},
}


class App:
    def __init__(self, receiver_url: str, delay_ms: int) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACER_", "DD_"))}
        env.update(PYTHONPATH=REPO, TRACER_AGENT_URL=receiver_url, TRACER_SERVICE="shop",
                   TRACER_WRITER_INTERVAL="0.2", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([require_program("tracer-run"), sys.executable, "monitor_app.py", str(self.port),
                                      str(delay_ms)], cwd=APPS, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        wait_for_port(self.port, timeout=20)

    def get(self, path: str) -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as resp:
            assert resp.read() == b"ok"

    def stop(self) -> str:
        return stop_process(self.proc, 2)


def hits(r: RunningReceiver) -> int:
    return sum(row["hits"] for row in r.stats(service="shop") if row["resource"] == RESOURCE)


def requests(r: RunningReceiver, app: App, n: int) -> float:
    """``n`` requests to /checkout, once the receiver counted them; the 10 s bucket they ended in."""
    want = hits(r) + n
    for _ in range(n):
        app.get("/checkout")
    done = time.time()
    deadline = time.monotonic() + 15
    while hits(r) < want:
        assert time.monotonic() < deadline, f"receiver counted {hits(r)} of {want} checkout hits"
        time.sleep(0.05)
    return done - done % 10


def next_bucket(after: float) -> None:
    """Block until the 10 s bucket after ``after`` begins (data must land in a later bucket)."""
    wait = after + 10 - time.time()
    if wait > 0:
        time.sleep(wait)


def evaluate(r: RunningReceiver, now: float) -> dict[str, Any]:
    status, rows = call(r.url, "POST", "/api/monitors/evaluate", {"now": now})
    assert status == 200, rows
    (row,) = rows
    assert "error" not in row, row
    return row


def test_p95_monitor_end_to_end() -> None:
    sink = WebhookSink()
    try:
        with RunningReceiver() as r:
            assert call(r.url, "POST", "/api/webhooks", {"name": "ops", "url": sink.url})[0] == 200
            status, created = call(r.url, "POST", "/api/monitors", MONITOR)
            assert status == 200, created
            app = App(r.url, delay_ms=5)
            try:
                requests(r, app, 5)
                assert evaluate(r, time.time())["overall_state"] == "OK"
                app.get("/delay/150")
                requests(r, app, 8)
                assert evaluate(r, time.time())["overall_state"] == "Warn"
                app.get("/delay/400")
                last_slow = requests(r, app, 4)
                assert evaluate(r, time.time())["overall_state"] == "Alert"
            finally:
                output = app.stop()
            assert_clean_output(output)
            warn, alert = sink.wait(2)
            assert (warn["alert_transition"], warn["body"].split(" > ")[1]) == ("Warn", "0.1s @webhook-ops")
            assert (alert["alert_transition"], alert["title"]) == ("Triggered", "[Triggered] Checkout p95")
            assert float(alert["body"].split()[2][:-1]) >= 0.4 * 0.99  # the 400 ms requests (sketch: 1 %)

            # the app stopped: No Data once its last bucket left the window and is a timeframe (1 minute) old
            no_data_at = last_slow + 70
            assert evaluate(r, no_data_at)["overall_state"] == "No Data"
            assert sink.wait(3)[2]["alert_transition"] == "No Data"

            # restarted slow inside a downtime: the Alert is muted
            next_bucket(last_slow)
            app = App(r.url, delay_ms=400)
            try:
                slow = requests(r, app, 3)
                at = max(no_data_at + 1, slow + 1)
                status, dt = call(r.url, "POST", "/api/downtimes", {"monitor_id": created["id"], "start": no_data_at,
                                                                    "end": at + 5})
                assert status == 200, dt
                assert evaluate(r, at)["overall_state"] == "Alert"
                # the downtime is over; the app is fast again (a later bucket): the recovery is sent
                app.get("/delay/5")
                next_bucket(slow)
                requests(r, app, 5)
                assert evaluate(r, max(slow + 70, at + 6))["overall_state"] == "OK"
            finally:
                output = app.stop()
            assert_clean_output(output)
            bodies = sink.wait(4)
            assert [b["alert_transition"] for b in bodies] == ["Warn", "Triggered", "No Data", "Recovered"]
            assert (bodies[3]["previous_state"], bodies[3]["body"]) == ("Alert", "checkout is fast again @webhook-ops")
            events = r.get("/api/monitors/events")
            assert [(e["alert_transition"], e["muted"]) for e in events] == [
                ("Warn", False), ("Triggered", False), ("No Data", False), ("Triggered", True), ("Recovered", False)]
            assert all(e["deliveries"] == {"ops": "HTTP 200"} for e in events if not e["muted"])
            assert len(sink.bodies) == 4, json.dumps(sink.bodies)  # deliveries all done: nothing else was sent
    finally:
        sink.close()
