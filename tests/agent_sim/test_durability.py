"""Durability: acknowledged traces and their stats survive SIGKILL of the
receiver process and a restart on the same database file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any

import msgpack

from tests.agent_sim.test_server import put, span
from tests.utils import REPO, assert_clean_output, free_port, wait_for_port


def start(db: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "agent_sim", "serve", "--db", db, "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    try:
        wait_for_port(port, timeout=20)
    except TimeoutError:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"receiver did not start: {out!r} {err!r}")
    return proc


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
    """Stop the receiver with ``sig`` (if it still runs); its exit status.
    Its stderr must show no internal error or traceback."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        _out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
    assert_clean_output((err or b"").decode(errors="replace"))
    return proc.returncode


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def test_sigkill_after_acknowledged_payloads_loses_nothing(tmp_path: Any) -> None:
    db = str(tmp_path / "agent.db")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start(db, port)
    now = time.time_ns()
    expected = set()
    try:
        for i in range(30):
            tid = 10_000 + i
            traces = [[span(tid, 1, service="durable", resource=f"GET /d{i % 3}", error=int(i % 5 == 0),
                            start=now + i, metrics={"_dd.top_level": 1}),
                       span(tid, 2, parent=1, service="durable-db", name="q", type_="sql",
                            resource=f"SELECT * FROM t WHERE secret = 'hunter{i}'")]]
            status, body = put(url, msgpack.packb(traces))
            assert status == 200, body
            expected.add(f"{tid:032x}")
        # the last acknowledged payload went out just now: no flush interval has passed
    finally:
        stop(proc, signal.SIGKILL)

    proc = start(db, port)
    try:
        rows = get(url + "/api/traces?service=durable&limit=100")
        assert {r["trace_id"] for r in rows} == expected
        assert all(r["span_count"] == 2 for r in rows)
        stats = {(s["service"], s["resource"]): (s["hits"], s["errors"]) for s in get(url + "/api/stats")}
        assert stats == {
            ("durable", "GET /d0"): (10, 2),  # errors at i = 0, 15
            ("durable", "GET /d1"): (10, 2),  # i = 10, 25
            ("durable", "GET /d2"): (10, 2),  # i = 5, 20
            ("durable-db", "SELECT * FROM t WHERE secret = ?"): (30, 0),
        }
        # a clean stop (SIGTERM) flushes; a third start still sees the same
        assert stop(proc) == 0
    finally:
        stop(proc, signal.SIGKILL)
    raw = b""
    for path in (db, db + "-wal"):
        if os.path.exists(path):
            with open(path, "rb") as f:
                raw += f.read()
    assert b"durable" in raw  # the check below reads the right files
    assert b"hunter" not in raw  # raw SQL literals never reach the disk

    proc = start(db, port)
    try:
        stats = {(s["service"], s["resource"]): s["hits"] for s in get(url + "/api/stats")}
        assert stats[("durable", "GET /d0")] == 10
        assert len(get(url + "/api/traces?service=durable&limit=100")) == 30
    finally:
        stop(proc)
