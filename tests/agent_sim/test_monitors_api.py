"""Monitors through a running receiver: the definitions file (JSON and YAML,
reloaded on change), /api/monitors CRUD and evaluate, /api/downtimes, and
``agent-sim monitors`` as a subprocess. DogStatsD arrives over real UDP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.agent_sim.test_dogstatsd import _wait
from tests.receiver import RunningReceiver
from tests.utils import REPO

MONITOR = {"name": "Latency", "type": "metric alert", "query": "avg(last_5m):avg:web.latency{env:dev} by {host} > 800",
           "message": "{{#is_alert}}slow {{host.name}}{{/is_alert}}",
           "options": {"thresholds": {"critical": 800, "warning": 500}, "notify_no_data": True}}


def call(url: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(url + path, data, {"Content-Type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def send_statsd(port: int, line: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(line.encode(), ("127.0.0.1", port))


def until(check: Any) -> Any:
    """Poll ``check`` until it returns something truthy (data crossing a thread or a file watcher)."""
    return _wait(check, timeout=10.0)


def test_file_loaded_evaluated_and_reloaded(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "monitors.json"
    path.write_text(json.dumps({"monitors": [MONITOR, {**MONITOR, "name": "Broken", "query": "avg(last_5m):x > 1"}],
                                "downtimes": [{"scope": "host:b"}], "webhooks": {"ops": "http://127.0.0.1:9/x"}}))
    with RunningReceiver(statsd_port=0, monitors=str(path)) as r:
        assert "monitors[1] query: " in capsys.readouterr().err  # reported; the valid monitor is loaded
        send_statsd(r.server.statsd_port, "web.latency:900|g|#env:dev,host:a\nweb.latency:600|g|#env:dev,host:b")
        assert until(lambda: r.get("/api/metrics/query", name="web.latency")["series"])
        status, rows = call(r.url, "POST", "/api/monitors/evaluate")
        assert status == 200
        (row,) = rows
        assert {k: row[k] for k in ("name", "query", "overall_state", "groups")} == {
            "name": "Latency", "query": MONITOR["query"], "overall_state": "Alert",
            "groups": {"host:a": "Alert", "host:b": "Warn"}}
        events = r.get("/api/monitors/events")
        assert [(e["group"], e["alert_transition"], e["muted"]) for e in events] == [
            ("host:a", "Triggered", False), ("host:b", "Warn", True)]
        assert r.get("/api/downtimes")[0]["active"] is True
        # no data: the clock moved past the 10-minute default timeframe
        status, rows = call(r.url, "POST", "/api/monitors/evaluate", {"offset": 900})
        assert rows[0]["groups"] == {"host:a": "No Data", "host:b": "No Data"}
        # the file changes: reloaded by the running server; a monitor is known by its name (or its "id")
        changed = {**MONITOR, "query": MONITOR["query"].replace("800", "1000"), "options": {}}
        path.write_text(json.dumps({"monitors": [changed]}))
        assert until(lambda: r.get("/api/monitors")[0]["query"] == changed["query"])
        assert r.get("/api/downtimes") == []  # the file's downtime went with it
        assert r.get("/api/monitors")[0]["id"] == row["id"]  # same monitor, same id


def test_yaml_file_or_a_clear_error_without_pyyaml(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "monitors.yaml"
    path.write_text("monitors:\n  - name: Errors\n    type: metric alert\n"
                    "    query: 'sum(last_5m):sum:errors{*}.as_count() > 10'\n"
                    "    options: {thresholds: {critical: 10, warning: 5}}\n")
    try:
        import yaml  # noqa: F401  (optional: the receiver's extra does not require it)
    except ImportError:
        with RunningReceiver(monitors=str(path)) as r:
            assert r.get("/api/monitors") == []
        assert "YAML needs PyYAML (pip install pyyaml), or use JSON" in capsys.readouterr().err
        return
    with RunningReceiver(monitors=str(path)) as r:
        assert [(m["name"], m["overall_state"]) for m in r.get("/api/monitors")] == [("Errors", "No Data")]


def test_crud_and_bad_input(tmp_path) -> None:
    with RunningReceiver() as r:
        status, created = call(r.url, "POST", "/api/monitors", MONITOR)
        assert status == 200 and created["name"] == "Latency" and isinstance(created["id"], int)
        mid = created["id"]
        assert call(r.url, "POST", "/api/monitors", {**MONITOR, "options": {"thresholds": {"warning": 900}}}) == (
            400, {"error": "options.thresholds.warning: 900 must be below critical 800 for a '>' monitor"})
        assert call(r.url, "POST", "/api/monitors", b"{nope")[0] == 400
        assert call(r.url, "PUT", f"/api/monitors/{mid}", {**MONITOR, "name": "Renamed"})[1]["name"] == "Renamed"
        status, detail = call(r.url, "GET", f"/api/monitors/{mid}")
        assert detail["thresholds"] == {"critical": 800, "warning": 500, "critical_recovery": None,
                                        "warning_recovery": None}
        assert call(r.url, "GET", "/api/monitors/999")[0] == 404
        assert call(r.url, "DELETE", f"/api/monitors/{mid}")[0] == 200
        assert call(r.url, "GET", "/api/monitors") == (200, [])
        status, d = call(r.url, "POST", "/api/downtimes", {"scope": ["host:a"], "end": time.time() + 60})
        assert status == 200 and d["active"] is True
        assert call(r.url, "POST", "/api/downtimes", {"timezone": "Nowhere/Town"}) == (
            400, {"error": "timezone: unknown time zone 'Nowhere/Town' (an IANA name such as Europe/Paris)"})
        assert call(r.url, "DELETE", f"/api/downtimes/{d['id']}") == (200, {"canceled_downtime_id": d["id"]})
        assert call(r.url, "DELETE", f"/api/downtimes/{d['id']}")[0] == 404
        assert call(r.url, "POST", "/api/webhooks", {"name": "ops", "url": "ftp://x"})[0] == 400
        assert call(r.url, "POST", "/api/monitors/evaluate", {"now": "later"})[0] == 400


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO}
    env.pop("AGENT_SIM_URL", None)
    return subprocess.run([sys.executable, "-m", "agent_sim", *args], env=env, capture_output=True, text=True,
                          timeout=30, cwd=REPO)


def test_cli_list_and_eval() -> None:
    with RunningReceiver(statsd_port=0) as r:
        call(r.url, "POST", "/api/monitors", MONITOR)
        listed = run_cli("monitors", "--url", r.url)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.split("\n")[1].split()[:3] == ["1", "No", "Data"]
        send_statsd(r.server.statsd_port, "web.latency:900|g|#env:dev,host:a")
        assert until(lambda: r.get("/api/metrics/query", name="web.latency")["series"])
        evaluated = run_cli("monitors", "eval", "--url", r.url)
        assert evaluated.returncode == 0, evaluated.stderr
        assert "Alert" in evaluated.stdout and "host:a=Alert" in evaluated.stdout
        as_json = json.loads(run_cli("monitors", "list", "--json", "--url", r.url).stdout)
        assert as_json[0]["groups"] == {"host:a": "Alert"}


def test_the_service_evaluates_on_its_interval(tmp_path) -> None:
    from agent_sim.dogstatsd import Aggregator
    from agent_sim.monitors.service import MonitorService

    path = tmp_path / "m.json"
    path.write_text(json.dumps([MONITOR]))
    service = MonitorService(Aggregator(), None, str(path), interval=1.0)
    assert service.engine.last_evaluation is None
    service.start()
    try:
        assert until(lambda: service.engine.last_evaluation is not None)
        assert service.engine.list_monitors()[0]["overall_state"] == "No Data"
    finally:
        service.stop()


def test_a_restarted_receiver_resumes(tmp_path) -> None:
    db = str(tmp_path / "agent_sim.db")
    with RunningReceiver(db=db) as r:
        r.server.statsd.ingest(b"web.latency:900|g|#env:dev,host:a", time.time())
        mid = call(r.url, "POST", "/api/monitors", MONITOR)[1]["id"]
        call(r.url, "POST", "/api/webhooks", {"name": "ops", "url": "http://127.0.0.1:9/x"})
        dt = call(r.url, "POST", "/api/downtimes", {"scope": "host:zzz"})[1]
        assert call(r.url, "POST", "/api/monitors/evaluate")[1][0]["groups"] == {"host:a": "Alert"}
    with RunningReceiver(db=db) as r:
        (row,) = r.get("/api/monitors")
        assert (row["id"], row["name"], row["overall_state"], row["groups"]) == (mid, "Latency", "Alert",
                                                                                 {"host:a": "Alert"})
        assert [(e["group"], e["alert_transition"]) for e in r.get("/api/monitors/events")] == [("host:a", "Triggered")]
        assert [d["id"] for d in r.get("/api/downtimes")] == [dt["id"]] and r.get("/api/webhooks") == {
            "ops": "http://127.0.0.1:9/x"}
        r.server.statsd.ingest(b"web.latency:900|g|#env:dev,host:a", time.time())
        call(r.url, "POST", "/api/monitors/evaluate")
        assert len(r.get("/api/monitors/events")) == 1  # still alerting: not triggered a second time
        assert call(r.url, "POST", "/api/monitors", {**MONITOR, "name": "Other"})[1]["id"] not in (mid, dt["id"])
        assert call(r.url, "DELETE", f"/api/monitors/{mid}")[0] == 200
    with RunningReceiver(db=db) as r:
        assert [m["name"] for m in r.get("/api/monitors")] == ["Other"]
