"""``agent-sim metrics`` (a real subprocess against a real receiver) and the
aggregated metrics in ``/metrics`` (OpenMetrics)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request

from agent_sim.metrics_cli import format_series, sparkline
from tests.agent_sim.test_dogstatsd import _value, _wait
from tests.receiver import RunningReceiver
from tests.utils import REPO


def test_sparkline() -> None:
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([0, 7], unicode=False) == "_@"
    assert sparkline([3, 3, 3]) == "▅▅▅"
    assert sparkline(list(range(100)), width=10) == "▁▁▂▃▄▅▆▇██"
    assert sparkline([]) == ""
    assert "no points for x" in format_series("x", [])


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent_sim", "metrics", "--url", url, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": REPO, "PYTHONIOENCODING": "utf-8"})


def test_metrics_cli_and_openmetrics() -> None:
    from datadog.dogstatsd import DogStatsd

    with RunningReceiver(statsd_port=0) as r:
        statsd = DogStatsd(host="127.0.0.1", port=r.server.statsd_port, disable_telemetry=True)
        for v in (5, 1, 9):
            statsd.histogram("web.latency", v, tags=["env:test", "route:/a"])
        statsd.histogram("web.latency", 2, tags=["env:test", "route:/b"])
        for v in range(1, 101):
            statsd.distribution("db.time", v, tags=["q:x"])
        statsd.increment("page.views", 20, tags=["env:test"])
        statsd.gauge("last", 1)
        statsd.close_socket()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the client would rewrite these characters
        sock.sendto(b'esc.aped:1|g|#k:a"b\\c,0x:y', ("127.0.0.1", r.server.statsd_port))
        sock.close()
        assert _wait(lambda: _value(r, "last"))

        listed = _cli(r.url)
        assert listed.returncode == 0, listed.stderr
        assert [line.split()[:2] for line in listed.stdout.splitlines() if "web.latency.max" in line] == [
            ["web.latency.max", "histogram"]]
        table = _cli(r.url, "web.latency.max", "--by", "route", "--since", "600")
        assert table.returncode == 0, table.stderr
        rows = {line.split()[0]: line.split()[1:] for line in table.stdout.splitlines()[1:]}
        assert rows["route:/a"][:4] == ["9", "9", "9", "9"] and rows["route:/b"][0] == "2"
        assert rows["route:/a"][4] in "▁▂▃▄▅▆▇█"
        raw = _cli(r.url, "page.views", "--agg", "sum", "--json")
        assert json.loads(raw.stdout)["series"][0]["points"][-1][1] == 2.0
        bad = _cli(r.url, "page.views", "--agg", "median")
        assert bad.returncode == 2 and "agg must be one of" in bad.stderr

        with urllib.request.urlopen(r.url + "/metrics") as resp:
            text = resp.read().decode()
    lines = text.splitlines()
    assert '# TYPE dogstatsd_web_latency_max gauge' in lines
    assert 'dogstatsd_web_latency_max{env="test",route="/a"} 9' in lines
    assert 'dogstatsd_web_latency_count{env="test",route="/b"} 0.1' in lines
    assert 'dogstatsd_page_views{env="test"} 2' in lines
    assert '# TYPE dogstatsd_db_time summary' in lines
    (median,) = [ln for ln in lines if ln.startswith('dogstatsd_db_time{q="x",quantile="0.5"} ')]
    assert abs(float(median.split()[-1]) - 50) < 1
    assert 'dogstatsd_db_time_count{q="x"} 100' in lines
    assert 'dogstatsd_esc_aped{k="a\\"b\\\\c",tag_0x="y"} 1' in lines
    # each family declared once, before its samples
    declared: list[str] = []
    for line in lines:
        if line.startswith("# TYPE "):
            declared.append(line.split()[2])
        elif line.startswith("dogstatsd_"):
            family = line.split("{")[0].split()[0]
            assert any(family == d or family in (f"{d}_sum", f"{d}_count") for d in declared[-1:]), line
    assert len(declared) == len(set(declared)) and text.endswith("# EOF\n")
