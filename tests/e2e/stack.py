"""Real processes for the end-to-end tests: the receiver (``python -m
agent_sim serve``), the demo shop under ``tracer-run gunicorn -w 2
--preload``, its inventory service under ``tracer-run``, and the load client
(``tests/e2e/loadclient.py``). Nothing runs in the test's own process but the
assertions.

Every process is started by us and stopped by its PID (SIGTERM, SIGKILL after
a grace period); the receiver can be killed with SIGKILL and restarted on the
same port and database file.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.utils import REPO, assert_clean_output, free_port

LOADCLIENT = os.path.join(REPO, "tests", "e2e", "loadclient.py")
# Queries each route runs (the shop's code): what "its query spans as children" means per request.
QUERIES = {"/products": 1, "/products/3": 2, "/products/11": 2, "/products/999": 1, "/orders": 11, "/": 1,
           "/checkout?product_id=5": 1, "/checkout?product_id=2": 1}
EXPECTED_STATUS = {"/products/999": 404, "/checkout?product_id=5": 201, "/checkout?product_id=2": 201}


def base_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": REPO, "PYTHONUNBUFFERED": "1"}
    for name in ("TRACER_SERVICE", "DD_SERVICE", "TRACER_SAMPLE_RATE", "TRACER_ENABLED", "SHOP_DATABASE_URL"):
        env.pop(name, None)
    env.update(extra)
    return env


class Process:
    """One subprocess with its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logdir: str) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.log_path = os.path.join(logdir, f"{name}.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=os.path.dirname(self.log_path),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-chars:]
        except OSError:
            return "(no log)"

    def check_log(self) -> None:
        """Fails the test if the process logged an internal error or a traceback."""
        if os.path.exists(self.log_path):
            with open(self.log_path, errors="replace") as f:
                assert_clean_output(f.read())

    def wait_http(self, url: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise AssertionError(f"{self.name} exited ({self.proc and self.proc.returncode}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    resp.read()
                    return
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.name} not answering {url} after {timeout}s:\n{self.log_tail()}")
                time.sleep(0.05)

    def send(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, grace: float = 15) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


class Receiver(Process):
    """``python -m agent_sim serve`` on a fixed port and database file, so a
    restart after SIGKILL finds both again."""

    def __init__(self, logdir: str) -> None:
        self.port = free_port()
        self.db = os.path.join(logdir, "receiver.db")
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__("receiver", [sys.executable, "-m", "agent_sim", "serve", "--port", str(self.port),
                                      "--db", self.db], base_env(), logdir)

    def start(self) -> None:
        super().start()
        self.wait_http(self.url + "/info")

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def api(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        with urllib.request.urlopen(self.url + path + ("?" + query if query else ""), timeout=30) as resp:
            return json.loads(resp.read())

    def trace_ids(self) -> set[str]:
        return {row["trace_id"] for row in self.api("/api/traces", limit=10000)}


class Shop:
    """Inventory (dev server) and the shop (gunicorn -w 2 --preload), both under tracer-run."""

    def __init__(self, logdir: str, receiver_url: str, db_env: dict[str, str], workers: int = 2) -> None:
        self.worker_count = workers
        self.port, inventory_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.inventory_url = f"http://127.0.0.1:{inventory_port}"
        traced = {"TRACER_AGENT_URL": receiver_url, "TRACER_WRITER_INTERVAL": "0.2"}
        tracer_run = [sys.executable, "-m", "tracer.run", sys.executable]
        self.inventory = Process("inventory", [*tracer_run, "-m", "agent_sim.demo_shop.inventory", "--port",
                                               str(inventory_port)], base_env(**traced), logdir)
        self.gunicorn = Process(
            "gunicorn",
            [*tracer_run, "-m", "gunicorn", "-w", str(workers), "--preload", "-b", f"127.0.0.1:{self.port}",
             "--graceful-timeout", "10", "agent_sim.demo_shop.app:app"],
            base_env(INVENTORY_URL=self.inventory_url, **traced, **db_env),
            logdir,
        )

    def start(self) -> None:
        self.inventory.start()
        self.gunicorn.start()
        self.inventory.wait_http(self.inventory_url + "/healthz")
        self.gunicorn.wait_http(self.url + "/healthz")
        deadline = time.monotonic() + 20
        while len(self.workers()) < self.worker_count:  # /healthz answered: one worker is up, maybe not all
            assert time.monotonic() < deadline, f"gunicorn workers: {self.workers()}\n{self.gunicorn.log_tail()}"
            time.sleep(0.05)

    def workers(self) -> set[int]:
        """PIDs of gunicorn's current workers (children of the master)."""
        pid = self.gunicorn.pid
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return {int(p) for p in f.read().split()}

    def stop(self) -> None:
        self.gunicorn.stop()
        self.inventory.stop(signal.SIGINT)


class Load:
    """One run of the load client in its own process."""

    def __init__(self, logdir: str, url: str, run: str, count: int = 0, duration: float = 0,
                 concurrency: int = 2, paths: str | None = None) -> None:
        self.run = run
        self.out = os.path.join(logdir, f"load-{run}.jsonl")
        argv = [sys.executable, LOADCLIENT, "--url", url, "--run", run, "--count", str(count),
                "--duration", str(duration), "--concurrency", str(concurrency), "--out", self.out]
        if paths:
            argv += ["--paths", paths]
        self.proc = subprocess.Popen(argv, env=base_env(), stdin=subprocess.DEVNULL)

    def done_count(self) -> int:
        try:
            with open(self.out) as f:
                return sum(1 for _ in f)
        except FileNotFoundError:
            return 0

    def wait_progress(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.done_count() < n:
            assert self.proc.poll() is None or self.done_count() >= n, "load client ended early"
            assert time.monotonic() < deadline, f"load {self.run}: {self.done_count()} of {n} requests after {timeout}s"
            time.sleep(0.02)

    def finish(self, timeout: float = 120) -> list[dict[str, Any]]:
        assert self.proc.wait(timeout) == 0
        with open(self.out) as f:
            return [json.loads(line) for line in f]


@contextmanager
def running_stack(logdir: str, db_env: dict[str, str]) -> Iterator[tuple[Receiver, Shop, str]]:
    """The receiver, then the shop sending to it; both stopped on exit, then
    their logs checked for internal errors and tracebacks."""
    receiver = Receiver(logdir)
    receiver.start()
    shop = Shop(logdir, receiver.url, db_env)
    try:
        shop.start()
        yield receiver, shop, logdir
    finally:
        shop.stop()
        receiver.stop()
    for process in (shop.gunicorn, shop.inventory, receiver):
        process.check_log()


def p50(records: list[dict[str, Any]]) -> float:
    return statistics.median(r["ms"] for r in records)


def rid_of(span: dict[str, Any]) -> str | None:
    url = span.get("meta", {}).get("http.url", "")
    values = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).get("rid")
    return values[0] if values else None


def wait_for_rids(receiver: Receiver, rids: set[str], since_ns: int, timeout: float = 20) -> dict[str, list[dict]]:
    """Traces of the shop started at or after ``since_ns``, by request id, once
    every id in ``rids`` is there (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = [r for r in receiver.api("/api/traces", service="shop", limit=10000) if r["start_ns"] >= since_ns]
        if len(rows) >= len(rids) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    by_rid: dict[str, list[dict]] = {}
    for row in rows:
        trace = receiver.api(f"/api/traces/{row['trace_id']}")
        roots = [s for s in trace["spans"] if s["parent_id"] is None]
        rid = rid_of(roots[0]) if len(roots) == 1 else None
        by_rid.setdefault(rid or f"<no rid: {row['resource']}>", []).append(trace)
    missing = rids - set(by_rid)
    if missing and time.monotonic() <= deadline:
        time.sleep(0.5)
        return wait_for_rids(receiver, rids, since_ns, max(0.1, deadline - time.monotonic()))
    return by_rid


def check_trace(trace: dict[str, Any], path: str) -> list[str]:
    """Problems with one request's trace: one root ``flask.request`` of the
    shop, unique span ids, and the route's query spans all descending from
    that root. Empty when it is right."""
    spans = trace["spans"]
    problems = []
    ids = [s["span_id"] for s in spans]
    if len(ids) != len(set(ids)):
        problems.append("duplicate span ids")
    roots = [s for s in spans if s["parent_id"] is None]
    if len(roots) != 1 or roots[0]["name"] != "flask.request" or roots[0]["service"] != "shop":
        return problems + [f"roots: {[(s['service'], s['name']) for s in roots]}"]
    by_id = {s["span_id"]: s for s in spans}
    queries = [s for s in spans if s["name"].endswith(".query")]
    for q in queries:
        node, hops = q, 0
        while node["parent_id"] is not None and hops < 50:
            node, hops = by_id.get(node["parent_id"], {"parent_id": None, "span_id": "orphan"}), hops + 1
        if node is not roots[0]:
            problems.append(f"query span {q['resource']!r} not under the request")
    if len(queries) != QUERIES[path]:
        problems.append(f"{len(queries)} query spans, expected {QUERIES[path]}")
    return problems
