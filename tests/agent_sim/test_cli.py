"""``agent-sim`` inspection commands: pure formatting, then the real CLI in
subprocesses against a real receiver seeded with known traces."""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from agent_sim import cli
from tests.agent_sim import seed as seeding
from tests.utils import REPO, free_port, stop_process, terminate, wait_for_port

# -- pure parts -------------------------------------------------------------------


def _span(span_id: str, parent: str | None, name: str, start_us: int, dur_us: int, error: int = 0,
          service: str = "svc", resource: str = "") -> dict[str, Any]:
    return {"trace_id": "0" * 32, "span_id": span_id, "parent_id": parent, "service": service, "name": name,
            "resource": resource or name, "type": "", "start_ns": start_us * 1000, "duration_ns": dur_us * 1000,
            "error": error, "meta": {}, "metrics": {}}


def test_fmt_duration_three_significant_digits() -> None:
    cases = {None: "-", 5: "5 ns", 1_500: "1.50 µs", 999_999: "1.00 ms", 16_200_000: "16.2 ms",
             99_960_000: "100 ms", 999_999_999: "1.00 s", 150_000_000_000: "150 s"}
    assert {ns: cli.fmt_duration(ns) for ns in cases} == cases


def test_waterfall_bars_scale_to_trace_and_orphans_become_roots() -> None:
    spans = [
        _span("c", "b", "leaf", 500, 250, error=1),
        _span("a", None, "root", 0, 1000),
        _span("b", "a", "child", 0, 500),
        _span("d", "a", "late", 750, 250),
        _span("x", "missing", "orphan", 900, 100, service="other"),
    ]
    assert cli.render_waterfall(spans, width=8, unicode=False) == "\n".join([
        "1.00 ms |########| root svc 'root'",
        " 500 µs |####....|   child svc 'child'",
        " 250 µs |....##..|     leaf svc 'leaf' [error]",
        " 250 µs |......##|   late svc 'late'",
        " 100 µs |.......#| orphan other 'orphan'",
    ])


def test_span_tree_handles_deep_chains_and_duplicate_ids() -> None:
    chain = [_span(f"{i:016x}", f"{i - 1:016x}" if i else None, f"s{i}", i, 1) for i in range(5000)]
    rows = cli.span_tree(chain + [dict(chain[1])])  # a duplicate span id is listed once
    assert len(rows) == 5000
    assert rows[-1][0] == 4999


def test_stats_table_is_aligned() -> None:
    rows = [
        {"service": "web", "name": "flask.request", "resource": "GET /a", "hits": 3, "errors": 0,
         "p50_ns": 1_000_000, "p95_ns": 2_500_000, "p99_ns": 12_000_000},
        {"service": "web", "name": "flask.request", "resource": "GET /long/resource", "hits": 120, "errors": 7,
         "p50_ns": 100_000, "p95_ns": None, "p99_ns": 250_000},
    ]
    assert cli.format_stats(rows) == "\n".join([
        "SERVICE  NAME           RESOURCE            HITS  ERRORS  P50 ms  P95 ms  P99 ms",
        "web      flask.request  GET /long/resource   120       7    0.10       -    0.25",
        "web      flask.request  GET /a                 3       0    1.00    2.50   12.00",
    ])


# -- the real CLI against a real receiver ----------------------------------------------


@pytest.fixture(scope="module")
def seeded() -> Iterator[seeding.Seeded]:
    from tests.receiver import RunningReceiver

    with RunningReceiver() as r:
        result = seeding.seed(r.url)
        r.wait_traces(result.count, timeout=10)
        yield result


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": REPO, "PYTHONIOENCODING": "utf-8"}
    full_env.pop("AGENT_SIM_URL", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "agent_sim", *args], env=full_env, capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def test_stats_table_against_receiver(seeded: seeding.Seeded) -> None:
    proc = run_cli("stats", "--url", seeded.url)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["SERVICE", "NAME", "RESOURCE", "HITS", "ERRORS", "P50", "ms", "P95", "ms", "P99", "ms"]
    got = {}
    for line in lines[1:]:
        service, name, rest = line.split(None, 2)
        resource, hits, errors = rest.rsplit(None, 5)[:3]
        got[(service, name, resource)] = (int(hits), int(errors))
    assert got == seeding.EXPECTED_STATS
    # Columns are aligned: every row's HITS column ends where the header's does.
    hits_end = lines[0].index("HITS") + len("HITS")
    assert all(line[hits_end - 1] != " " and line[hits_end] == " " for line in lines[1:])


def test_stats_json_and_service_filter(seeded: seeding.Seeded) -> None:
    # A proxy in the environment must not capture requests to a local receiver.
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    proc = run_cli("stats", "--url", seeded.url, "--service", "billing", "--json",
                   env={"http_proxy": dead_proxy, "HTTP_PROXY": dead_proxy})
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [(r["resource"], r["hits"], r["errors"]) for r in rows] == [("GET /invoices", 2, 2)]


def test_traces_filters(seeded: seeding.Seeded) -> None:
    proc = run_cli("traces", "--url", seeded.url, "--service", "web-store", "--resource", "POST /cart")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:4] == ["TRACE", "ID", "START", "SERVICE"]
    # newest first: the ids seeded last come first
    assert [line.split()[0] for line in lines[1:]] == list(reversed(seeding_ids(seeded, "POST /cart")))

    proc = run_cli("traces", "--url", seeded.url, "--errors", "--json")
    rows = json.loads(proc.stdout)
    assert sorted((r["service"], r["resource"]) for r in rows) == [
        ("billing", "GET /invoices"), ("billing", "GET /invoices"), ("web-store", "GET /users/<int:id>")]

    proc = run_cli("traces", "--url", seeded.url, "--min-ms", "15", "--limit", "1", "--json")
    (row,) = json.loads(proc.stdout)
    assert row["duration_ns"] >= 15_000_000


def seeding_ids(seeded: seeding.Seeded, resource: str) -> list[str]:
    return seeded.trace_ids[resource]


def test_show_renders_the_tree_as_a_waterfall(seeded: seeding.Seeded) -> None:
    trace_id = seeded.nested_error_id
    proc = run_cli("show", trace_id, "--url", seeded.url)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "\n".join([
        f"trace {trace_id}  web-store 'GET /users/<int:id>'  16.2 ms  5 spans  1 errors",
        "16.2 ms |██████████████████████████████| flask.request web-store 'GET /users/<int:id>' [error]",
        "10.0 ms |███████████████████···········|   flask.view web-store 'get_user'",
        "2.00 ms |████··························|     sqlite.query sqlite 'SELECT * FROM users WHERE id = ?'",
        "6.00 ms |·····███████████··············|     requests.request web-store 'GET /inventory'",
        "4.50 ms |······████████················|       flask.request inventory 'GET /stock'",
        "",
    ])
    # The 16-hex low half works too, and a terminal that cannot print blocks gets ASCII.
    proc = run_cli("show", trace_id[16:], "--url", seeded.url, "--width", "10", env={"PYTHONIOENCODING": "ascii"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[2] == "10.0 ms |######....|   flask.view web-store 'get_user'"


def test_rejected_query_names_the_reason(seeded: seeding.Seeded) -> None:
    proc = run_cli("traces", "--url", seeded.url, "--limit", "0")
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"agent-sim: {seeded.url} answered HTTP 400: ") and "limit" in line


def test_show_unknown_trace_exits_1(seeded: seeding.Seeded) -> None:
    proc = run_cli("show", "0" * 31 + "1", "--url", seeded.url)
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == f"agent-sim: no trace {'0' * 31 + '1'} at {seeded.url}\n"


def test_wait_reached_and_timeout(seeded: seeding.Seeded) -> None:
    proc = run_cli("wait", "--count", str(seeded.count), "--timeout", "5", env={"AGENT_SIM_URL": seeded.url})
    assert (proc.returncode, proc.stdout) == (0, f"{seeded.count} traces\n"), proc.stderr
    proc = run_cli("wait", "--count", "2", "--service", "billing", "--timeout", "5", "--url", seeded.url)
    assert proc.returncode == 0, proc.stderr

    started = time.monotonic()
    proc = run_cli("wait", "--count", "3", "--service", "billing", "--timeout", "0.5", "--url", seeded.url)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr
    assert "timed out after 0.5s with 2 of 3 traces" in proc.stderr
    assert elapsed < 10


def test_unreachable_receiver_is_one_line_and_exit_2() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["stats"], ["traces"], ["show", "abc"], ["wait", "--count", "1", "--timeout", "1"]):
        proc = run_cli(*args, "--url", url)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stdout == ""
        (line,) = proc.stderr.splitlines()
        assert line.startswith(f"agent-sim: no receiver at {url} (")
        assert line.endswith("start one with `agent-sim serve` or pass --url")


def test_serve_on_a_taken_port_names_the_fix(tmp_path: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli("serve", "--port", str(port), "--db", str(tmp_path / "t.db"))
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"agent-sim: cannot listen on 127.0.0.1:{port}: ")
    assert "another agent-sim already running there?" in line and "--port N" in line


def test_help_lists_subcommands() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    for command in ("serve", "stats", "traces", "show", "wait", "demo"):
        assert command in proc.stdout


def test_bare_agent_sim_serves_the_page_and_api() -> None:
    """``agent-sim`` with only flags means ``serve``: a real receiver process
    that serves the web page and answers the inspection commands."""
    import urllib.request

    from tests.utils import wait_for_port

    port = free_port()
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.Popen([sys.executable, "-m", "agent_sim", "--port", str(port), "--db", ":memory:"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        wait_for_port(port, timeout=15)
        url = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(url + "/", timeout=5) as resp:
            html = resp.read().decode()
        assert '<script src="/static/app.js"></script>' in html
        for name in ("app.js", "style.css"):
            with urllib.request.urlopen(f"{url}/static/{name}", timeout=5) as resp:
                assert resp.status == 200 and len(resp.read()) > 1000
        seeding.send_v04(url, [seeding.simple_trace(time.time_ns(), __import__("random").Random(7), "solo",
                                                    "GET /one", 1_000, False).spans])
        done = run_cli("wait", "--count", "1", "--timeout", "5", "--url", url)
        assert done.returncode == 0, done.stderr
        listed = run_cli("traces", "--url", url)
        assert "solo" in listed.stdout and "GET /one" in listed.stdout
    finally:
        out, err = terminate(proc, timeout=15)
    assert proc.returncode == 0, err
    assert f"listening on http://127.0.0.1:{port}" in out


def test_show_json_is_the_api_trace(seeded: seeding.Seeded) -> None:
    trace_id = seeded.nested_error_id
    proc = run_cli("show", trace_id, "--url", seeded.url, "--json")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    trace = json.loads(proc.stdout)
    with urllib.request.urlopen(f"{seeded.url}/api/traces/{trace_id}", timeout=10) as resp:
        assert trace == json.loads(resp.read())
    assert trace["trace_id"] == trace_id
    assert sorted(s["name"] for s in trace["spans"]) == [
        "flask.request", "flask.request", "flask.view", "requests.request", "sqlite.query"]


@contextlib.contextmanager
def serving(*args: str, host: str = "127.0.0.1") -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A real ``agent-sim serve`` process (DogStatsD off); on exit it must stop
    cleanly with no traceback or internal error in its output."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "agent_sim", "serve", "--host", host, "--port", str(port),
                             "--statsd-port", "0", *args], env={**os.environ, "PYTHONPATH": REPO}, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = ""
    try:
        wait_for_port(port, timeout=20, host=host)
        yield proc, f"http://{host}:{port}"
    finally:
        output = stop_process(proc)
    assert proc.returncode == 0, output
    assert f"listening on http://{host}:{port}" in output
    assert "Traceback" not in output and "internal error" not in output, output


def resources(url: str) -> list[str]:
    with urllib.request.urlopen(f"{url}/api/traces?limit=100", timeout=10) as resp:
        return [row["resource"] for row in json.loads(resp.read())]


def send_one(url: str, resource: str) -> None:
    seeding.send_v04(url, [seeding.simple_trace(time.time_ns(), random.Random(resource), "kept", resource, 1_000,
                                                False).spans])


def test_serve_retention_hours_evicts_traces_received_earlier(tmp_path: Any) -> None:
    db = str(tmp_path / "retention.db")
    with serving("--db", db) as (_proc, url):
        send_one(url, "GET /old")
        assert resources(url) == ["GET /old"]
    time.sleep(4.5)  # GET /old is now older than 0.001 h (3.6 s)
    with serving("--db", db, "--retention-hours", "0.001") as (_proc, url):
        send_one(url, "GET /new")
        # the first maintenance pass (after ~1 s) evicts by age; /new is younger
        deadline = time.monotonic() + 10
        while resources(url) != ["GET /new"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert resources(url) == ["GET /new"]


def test_serve_host_binds_that_address_only() -> None:
    with serving("--db", ":memory:", host="127.0.0.2") as (_proc, url):
        with urllib.request.urlopen(url + "/info", timeout=10) as resp:
            assert resp.status == 200
        port = int(url.rsplit(":", 1)[1])
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    # an address this machine does not have: one line naming it, exit 2
    proc = run_cli("serve", "--host", "192.0.2.1", "--port", str(free_port()), "--db", ":memory:",
                   "--statsd-port", "0")
    assert (proc.returncode, proc.stdout) == (2, ""), proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("agent-sim: cannot listen on 192.0.2.1:") and "assign requested address" in line


@pytest.mark.parametrize("args", [["serve", "--sample-rate", "2"], ["--sample-rate", "2"],
                                  ["serve", "--sample-rate", "api=1", "--sample-rate", "web=x"]])
def test_bad_sample_rate_is_one_line_and_exit_2(args: list[str]) -> None:
    proc = run_cli(*args, "--port", str(free_port()), "--db", ":memory:", "--statsd-port", "0")
    assert (proc.returncode, proc.stdout) == (2, ""), proc.stderr
    bad = args[-1]
    expected = "rate must be within 0..1" if bad == "2" else "expected RATE or service=RATE"
    assert proc.stderr == f"agent-sim: --sample-rate {bad!r}: {expected}\n"


@pytest.mark.parametrize(("flag", "value", "what"), [("--retention-hours", "-1", "number of hours"),
                                                     ("--retention-hours", "nan", "number of hours"),
                                                     ("--retention-traces", "0", "whole number of traces"),
                                                     ("--retention-traces", "1.5", "whole number of traces")])
def test_bad_retention_is_one_line_and_exit_2(flag: str, value: str, what: str) -> None:
    proc = run_cli("serve", flag, value, "--port", str(free_port()), "--db", ":memory:", "--statsd-port", "0")
    assert (proc.returncode, proc.stdout) == (2, ""), proc.stderr
    # argparse's usage, then its one error line naming the flag and the value
    assert proc.stderr.splitlines()[-1].endswith(f"error: argument {flag}: {value!r} is not a positive {what}")


# Runs ``agent-sim serve`` logging each socket bind: its type, its address and whether
# the SIGTERM handler was in by then (an audit hook observes; nothing is replaced).
_SERVE_LOGGING_BINDS = """
import signal, socket, sys
log = open(sys.argv[1], "w", buffering=1)

def hook(event, args):
    if event == "socket.bind":
        kind = "tcp" if args[0].type == socket.SOCK_STREAM else "udp"
        log.write(f"{kind} {args[1][1]} {signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL}\\n")

sys.addaudithook(hook)
from agent_sim.serve import serve_main
sys.exit(serve_main(sys.argv[2:]))
"""


def _connections_accepted(port: int, stop: threading.Event, accepted: list[int]) -> None:
    while not stop.is_set():
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            accepted.append(port)
        time.sleep(0.001)


def test_serve_binds_every_socket_after_its_signal_handlers_and_a_taken_statsd_port_is_exit_2(
        tmp_path: Any) -> None:
    log = tmp_path / "binds"
    port, udp = free_port(), free_port()
    cmd = [sys.executable, "-c", _SERVE_LOGGING_BINDS, str(log), "--port", str(port), "--db", ":memory:",
           "--statsd-port", str(udp), "--no-host-metrics"]
    env = {**os.environ, "PYTHONPATH": REPO}
    # a DogStatsD port asked for and taken: one line, exit 2, the HTTP port never opened
    stop, accepted = threading.Event(), []
    prober = threading.Thread(target=_connections_accepted, args=(port, stop, accepted))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", udp))
        prober.start()
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30, cwd=REPO)
        finally:
            stop.set()
            prober.join()
    assert (proc.returncode, proc.stdout) == (2, ""), proc.stderr
    assert proc.stderr == (f"agent-sim: cannot listen for DogStatsD on UDP {udp}: Address already in use (pick another "
                           "with --statsd-port N / --statsd-socket PATH, or --statsd-port 0 for none)\n")
    assert log.read_text() == f"udp {udp} True\n"  # no TCP bind at all
    assert accepted == []
    # free: DogStatsD, then HTTP, both once the handler is in; a SIGTERM as soon as the
    # HTTP port answers is a clean shutdown
    proc2 = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        wait_for_port(port, timeout=20)
    finally:
        out, err = terminate(proc2, timeout=20)
    assert proc2.returncode == 0, err
    assert out.splitlines()[-1] == "agent-sim stopped"
    assert log.read_text() == f"udp {udp} True\ntcp {port} True\n"
