"""Notifications: a real local HTTP webhook receives the JSON; retries on 5xx;
a stalled webhook never delays an evaluation; the log line."""

from __future__ import annotations

import time

import pytest

from agent_sim.dogstatsd import Aggregator
from agent_sim.monitors.engine import Engine
from agent_sim.monitors.notify import Notifier
from agent_sim.monitors.source import MetricSource
from tests.agent_sim.webhooks import WebhookSink

T0 = 1_700_000_000
MESSAGE = ("{{#is_alert}}latency {{value}} above {{threshold}} on {{host.name}}{{/is_alert}}"
           "{{#is_recovery}}recovered{{/is_recovery}} @webhook-ops @webhook-nobody")


@pytest.fixture
def sink():
    s = WebhookSink(fail_first=2)
    yield s
    s.close()


def setup(url: str, **notifier: float) -> tuple[Aggregator, Engine, list[str]]:
    agg = Aggregator()
    log: list[str] = []
    e = Engine(MetricSource(agg), Notifier(log=log.append, backoff=0.01, **notifier), lambda: T0)
    e.webhooks["ops"] = url
    e.put_monitor({"name": "Latency", "query": "avg(last_1m):avg:lat{*} by {host} > 800", "message": MESSAGE})
    return agg, e, log


def test_webhook_json_with_retries(sink: WebhookSink) -> None:
    agg, e, log = setup(sink.url)
    agg.ingest(b"lat:912.5|g|#host:web1", T0 - 5)
    e.evaluate(T0)
    agg.ingest(b"lat:1|g|#host:web1", T0 + 55)
    e.evaluate(T0 + 60)
    alert, recovery = sink.wait(2)
    assert sink.attempts == 4  # two 500s, then the alert, then the recovery
    assert {k: alert[k] for k in ("title", "body", "alert_transition", "group", "state", "value", "monitor_name")} == {
        "title": "[Triggered on {host:web1}] Latency", "body": "latency 912.5 above 800 on web1 @webhook-ops "
        "@webhook-nobody", "alert_transition": "Triggered", "group": "host:web1", "state": "Alert", "value": 912.5,
        "monitor_name": "Latency"}
    assert (recovery["alert_transition"], recovery["previous_state"], recovery["body"][:9]) == (
        "Recovered", "Alert", "recovered")
    first = e.list_events()[0]
    assert first["deliveries"]["nobody"] == "unknown webhook"
    deadline = time.monotonic() + 5
    while e.list_events()[0]["deliveries"]["ops"] == "queued" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert e.list_events()[0]["deliveries"]["ops"] == "HTTP 200"
    assert log[0] == "agent-sim monitor: [Triggered on {host:web1}] Latency (value 912.5)"
    e.notifier.stop()


def test_a_stalled_webhook_never_delays_evaluation() -> None:
    slow = WebhookSink(delay=1.0)
    try:
        agg, e, log = setup(slow.url, timeout=0.2, attempts=2)
        agg.ingest(b"lat:900|g|#host:a\nlat:900|g|#host:b", T0 - 5)
        began = time.perf_counter()
        e.evaluate(T0)
        took = time.perf_counter() - began
        assert took < 0.1, took
        deadline = time.monotonic() + 10
        while any(ev["deliveries"]["ops"] == "queued" for ev in e.list_events()) and time.monotonic() < deadline:
            time.sleep(0.02)
        outcomes = {ev["deliveries"]["ops"] for ev in e.list_events()}
        assert outcomes == {"failed: timed out after 2 attempts"}, outcomes
        assert any("webhook ops" in line and "timed out" in line for line in log)
        e.notifier.stop()
    finally:
        slow.close()
