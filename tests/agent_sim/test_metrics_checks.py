"""Custom checks (``agent-sim serve --checks``) and host metrics from /proc."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent_sim.checks import AgentCheck, ConfigError, read_config
from agent_sim.dogstatsd import Aggregator
from agent_sim.hostmetrics import HostMetrics
from tests.agent_sim.test_dogstatsd import _wait
from tests.agent_sim.test_durability import get
from tests.utils import REPO, free_port, terminate, wait_for_port

DOC = Path(REPO, "docs", "receiver.md").read_text()


def _docs_example() -> str:
    (code,) = re.findall(r"```python\n# checks.d/hello.py\n(.*?)```", DOC, re.S)
    return code


def _serve_checks(d: Path, port: int, interval: float, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "agent_sim", "serve", "--port", str(port), "--db", ":memory:",
                             "--statsd-port", "0", "--checks", str(d), "--check-interval", str(interval), *extra],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": REPO})


def test_checks_dir_runs_the_docs_example_and_survives_a_raising_check(tmp_path: Any) -> None:
    d = tmp_path / "checks.d"
    d.mkdir()
    (d / "hello.py").write_text(_docs_example())
    (d / "broken.py").write_text("from agent_sim.checks import AgentCheck\n\nclass Broken(AgentCheck):\n"
                                 "    def check(self, instance):\n        raise RuntimeError('boom')\n")
    (d / "typo.py").write_text("def check(:\n")
    (d / "counter.py").write_text(
        "from datadog_checks.base import AgentCheck\n\nclass Counter(AgentCheck):\n    n = 0\n\n"
        "    def check(self, instance):\n        Counter.n += 5\n"
        "        self.monotonic_count('counter.total', Counter.n)\n"
        "        self.service_check('counter.up', AgentCheck.WARNING, message='slow')\n")
    port, interval = free_port(), 1.0
    proc = _serve_checks(d, port, interval)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, timeout=20)
        started = time.monotonic()
        query = f"{base}/api/metrics/query?name=hello.world&tags=team:checks"
        series = _wait(lambda: get(query)["series"], timeout=2 * interval)
        assert series, f"hello.world not seen within two intervals ({time.monotonic() - started:.1f} s)"
        assert 0 <= series[0]["points"][0][1] <= 1000
        assert _wait(lambda: get(f"{base}/api/metrics/query?name=counter.total&agg=sum")["series"], timeout=3)
        assert _wait(lambda: get(f"{base}/api/metrics/query?name=system.load.1")["series"], timeout=3)
        time.sleep(2 * interval)  # the broken check is retried; the others keep running
        statuses = {(c["name"], tuple(c["tags"]), c["status"]) for c in get(f"{base}/api/checks")}
        assert ("datadog.agent.check_status", ("check:broken",), AgentCheck.CRITICAL) in statuses
        assert ("datadog.agent.check_status", ("check:typo",), AgentCheck.CRITICAL) in statuses
        assert ("datadog.agent.check_status", ("check:hello",), AgentCheck.OK) in statuses
        assert ("counter.up", (), AgentCheck.WARNING) in statuses
        runs = [c for c in get(f"{base}/api/checks") if c["tags"] == ["check:broken"]]
        assert len(runs) >= 3 and runs[-1]["message"] == "RuntimeError: boom"
        assert len(get(f"{base}/api/metrics/query?name=hello.world&rollup=10")["series"][0]["points"]) >= 1
    finally:
        _out, err = terminate(proc, timeout=20)
    assert proc.returncode == 0, err
    logged = [line for line in err.splitlines() if "check broken failed" in line]
    assert logged == ["agent_sim: check broken failed: RuntimeError: boom at broken.py:5; retried every 1 s"]
    assert "agent_sim: check typo failed: SyntaxError" in err and "not loaded" in err


def test_bad_checks_dir_is_a_clear_error(tmp_path: Any) -> None:
    out = subprocess.run([sys.executable, "-m", "agent_sim", "serve", "--port", str(free_port()), "--checks",
                          str(tmp_path / "nope"), "--check-interval", "1"], cwd=REPO, capture_output=True, text=True,
                         timeout=30, env={**os.environ, "PYTHONPATH": REPO})
    assert out.returncode == 2 and f"--checks {tmp_path / 'nope'}: not a directory" in out.stderr
    out = subprocess.run([sys.executable, "-m", "agent_sim", "serve", "--check-interval", "0"], cwd=REPO,
                         capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": REPO})
    assert out.returncode == 2 and "'0' is not a positive number of seconds" in out.stderr


def test_agent_check_methods() -> None:
    agg = Aggregator()
    check = AgentCheck("unit")
    check.aggregator = agg
    check.monotonic_count("m", 10)  # the first value only sets the base
    check.monotonic_count("m", 25)
    check.monotonic_count("m", 3)  # a reset: nothing counted
    check.count("c", 7, tags=["b", "a"])
    check.histogram("h", 4)
    check.rate("r", 100)
    time.sleep(0.05)
    check.rate("r", 101)
    now = time.time()
    assert agg.query("m", agg="sum", since=now - 20)[0]["points"][0][1] == 1.5
    assert agg.query("c", ("a", "b"), since=now - 20)[0]["points"][0][1] == 0.7
    assert agg.query("h.max", since=now - 20)[0]["points"][0][1] == 4
    assert 1 < agg.query("r", since=now - 20)[0]["points"][0][1] < 21
    for bad, message in (((None, 1), "metric name must be a non-empty string"), (("x", "1"), "value must be a finite"),
                         (("x", float("nan")), "value must be a finite")):
        with pytest.raises(ValueError, match=message):
            check.gauge(*bad)
    with pytest.raises(ValueError, match="tags must be a list of strings"):
        check.gauge("x", 1, tags="env:prod")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="status must be 0..3"):
        check.service_check("s", 7)


def test_host_metrics_from_proc() -> None:
    agg = Aggregator()
    check = HostMetrics()
    check.aggregator = agg
    check.check({})
    sum(range(2_000_000))  # some CPU time between the runs
    time.sleep(0.1)
    check.check({})

    def value(name: str, **kw: Any) -> float:
        return agg.query(name, since=time.time() - 30, **kw)[0]["points"][-1][1]

    cpu = [value(f"system.cpu.{k}") for k in ("user", "system", "iowait", "idle", "stolen")]
    assert all(0 <= v <= 100 for v in cpu) and 99 <= sum(cpu) <= 101
    assert value("system.load.1") >= 0 and value("system.load.15") >= 0
    assert 0 < value("system.mem.used") <= value("system.mem.total")
    assert value("system.mem.usable") <= value("system.mem.total")
    (root,) = agg.query("system.disk.in_use", ("mount:/",), since=time.time() - 30)
    assert 0 < root["points"][0][1] < 1
    devices = [line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:]]
    if any(d != "lo" for d in devices):
        assert value("system.net.bytes_rcvd", agg="sum") >= 0


def _docs_block(lang: str, after: str) -> str:
    (block,) = re.findall(rf"{re.escape(after)}.*?```{lang}\n(.*?)```", DOC, re.S)
    return block


def test_checks_read_instances_from_a_json_or_yaml_file_beside_them(tmp_path: Any) -> None:
    d = tmp_path / "checks.d"
    d.mkdir()
    (d / "hello.py").write_text(_docs_example())
    (d / "hello.json").write_text(_docs_block("json", "Configuration sits beside the check"))
    (d / "yamlcheck.py").write_text(_docs_example().replace("hello.world", "hello.yaml"))
    (d / "yamlcheck.yaml").write_text(_docs_block("yaml", "The same as `checks.d/hello.yaml`"))
    (d / "runs.py").write_text("from agent_sim.checks import AgentCheck\n\nclass Runs(AgentCheck):\n"
                               "    def check(self, instance):\n        self.count('runs', 1, tags=instance['tags'])\n")
    (d / "runs.json").write_text((d / "hello.json").read_text())
    (d / "bad.py").write_text(_docs_example().replace("hello.world", "hello.bad"))
    (d / "bad.json").write_text('{"instances": {"tags": []}}')
    port, interval = free_port(), 1.0
    proc = _serve_checks(d, port, interval, "--no-host-metrics")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, timeout=20)
        query = f"{base}/api/metrics/query?name=hello.world&by=site"
        series = _wait(lambda: s if len(s := get(query)["series"]) == 2 else None, timeout=2 * interval)
        assert series, get(query)
        assert sorted(s["tags"]["site"] for s in series) == ["a", "b"]
        time.sleep(2 * interval)
        statuses = {(c["name"], tuple(c["tags"]), c["status"]) for c in get(f"{base}/api/checks")}
        yaml_seen = get(f"{base}/api/metrics/query?name=hello.yaml&by=site")["series"]
        bad_seen = get(f"{base}/api/metrics/query?name=hello.bad")["series"]
        runs = {s["tags"]["site"]: round(10 * sum(v for _t, v in s["points"]))
                for s in get(f"{base}/api/metrics/query?name=runs&by=site&agg=sum")["series"]}
    finally:
        _out, err = terminate(proc, timeout=20)
    assert proc.returncode == 0, err
    assert runs["b"] == 1 and runs["a"] >= 3, runs  # site:b's min_collection_interval (30 s): one run so far
    assert ("datadog.agent.check_status", ("check:bad",), AgentCheck.CRITICAL) in statuses and bad_seen == []
    assert ("agent_sim: check bad failed: ConfigError: bad.json: instances must be a non-empty list of mappings, "
            "got {'tags': []}; not loaded") in err.splitlines()
    try:
        import yaml  # noqa: F401
    except ImportError:  # JSON only: the YAML file is a clear error, the other checks run on
        assert ("datadog.agent.check_status", ("check:yamlcheck",), AgentCheck.CRITICAL) in statuses
        assert ("agent_sim: check yamlcheck failed: ConfigError: yamlcheck.yaml: reading YAML needs PyYAML "
                "(pip install pyyaml); or write the same as yamlcheck.json; not loaded") in err.splitlines()
        assert yaml_seen == []
    else:
        assert sorted(s["tags"]["site"] for s in yaml_seen) == ["a", "b"]


@pytest.mark.parametrize(("files", "message"), [
    ({"c.json": "[1]"}, "c.json: expected a mapping with an instances list, got list"),
    ({"c.json": "{"}, "c.json: not JSON: "),
    ({"c.json": '{"instances": []}'}, "c.json: instances must be a non-empty list of mappings, got []"),
    ({"c.json": '{"init_config": [], "instances": [{}]}'}, "c.json: init_config must be a mapping, got list"),
    ({"c.json": '{"instances": [{"min_collection_interval": 0}]}'},
     "c.json: min_collection_interval must be a number of seconds > 0, got 0"),
    ({"c.json": "{}", "c.yaml": ""}, "both c.yaml and c.json: keep one")])
def test_bad_check_config_is_a_clear_error(tmp_path: Any, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as raised:
        read_config(str(tmp_path), "c")
    assert str(raised.value).startswith(message)
    assert read_config(str(tmp_path), "other") == ({}, [{}])
