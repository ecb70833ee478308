"""Trace search through a real receiver: ``/api/traces`` filters match a
trace when any one of its spans matches them all; ``root=1`` keeps the
root-only behaviour; ``tag=key:value`` repeats."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from tests.receiver import RunningReceiver

MS = 1_000_000
SQL = "SELECT * FROM items WHERE id = ?"


def _span(tid: int, sid: int, parent: int, service: str, resource: str, duration: int, error: int = 0,
          meta: dict | None = None, metrics: dict | None = None) -> dict:
    return {"trace_id": tid, "span_id": sid, "parent_id": parent, "service": service, "name": "op",
            "resource": resource, "type": "sql" if service == "sqlite" else "web", "start": 10**18 + tid * MS,
            "duration": duration, "error": error, "meta": meta or {}, "metrics": metrics or {}}


@pytest.fixture(scope="module")
def rx() -> Iterator[RunningReceiver]:
    traces = [
        # 1: the query fails and is slow; its root is fine
        [_span(1, 1, 0, "shop", "GET /orders", 400 * MS),
         _span(1, 2, 1, "sqlite", SQL, 300 * MS, error=1, meta={"db.name": "shop"})],
        # 2: a tagged root, a fast query
        [_span(2, 1, 0, "shop", "GET /home", 50 * MS, meta={"customer.tier": "gold"}, metrics={"retries": 3}),
         _span(2, 2, 1, "sqlite", "SELECT ?", 5 * MS)],
        # 3: another service, the root failed
        [_span(3, 1, 0, "other", "GET /x", 10 * MS, error=1)],
    ]
    with RunningReceiver() as running:
        req = urllib.request.Request(running.url + "/v0.4/traces", data=msgpack.packb(traces), method="PUT",
                                     headers={"Content-Type": "application/msgpack"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200
        yield running


def ids(rx: RunningReceiver, *pairs: tuple[str, Any]) -> list[int]:
    """Trace ids (low 64 bits) of ``/api/traces`` with these query pairs (repeats allowed), oldest first."""
    url = rx.url + "/api/traces?" + urllib.parse.urlencode(pairs)
    with urllib.request.urlopen(url, timeout=30) as resp:
        return sorted(int(r["trace_id"][-16:], 16) for r in json.loads(resp.read()))


def test_service_resource_and_error_match_any_span(rx: RunningReceiver) -> None:
    assert ids(rx) == [1, 2, 3]
    assert ids(rx, ("service", "sqlite")) == [1, 2]
    assert ids(rx, ("service", "sqlite"), ("root", "1")) == []
    # the resource page of a SQL query lists the traces containing it
    assert ids(rx, ("resource", SQL)) == [1]
    assert ids(rx, ("error", "1")) == [1, 3]
    assert ids(rx, ("error", "1"), ("root", "1")) == [3]
    # one span must match every filter: no span of "shop" failed
    assert ids(rx, ("service", "shop"), ("error", "1")) == []
    assert ids(rx, ("service", "sqlite"), ("error", "1")) == [1]


def test_durations(rx: RunningReceiver) -> None:
    assert ids(rx, ("min_duration_ns", 250 * MS)) == [1]
    assert ids(rx, ("min_duration_ns", 250 * MS), ("service", "sqlite")) == [1]
    assert ids(rx, ("max_duration_ns", 20 * MS)) == [2, 3]
    assert ids(rx, ("max_duration_ns", 20 * MS), ("root", "1")) == [3]
    assert ids(rx, ("min_duration_ns", 40 * MS), ("max_duration_ns", 60 * MS)) == [2]


def test_tags_repeat_and_match_meta_or_metrics(rx: RunningReceiver) -> None:
    assert ids(rx, ("tag", "customer.tier:gold")) == [2]
    assert ids(rx, ("tag", "customer.tier:gold"), ("tag", "retries:3")) == [2]
    assert ids(rx, ("tag", "customer.tier:gold"), ("tag", "retries:4")) == []
    assert ids(rx, ("tag", "customer.tier:silver"), ("tag", "retries:3")) == []  # every repeat counts
    assert ids(rx, ("tag", "customer.tier:silver")) == []
    assert ids(rx, ("tag", "customer.tier:gold"), ("root", "1")) == [2]
    assert ids(rx, ("tag", "db.name:shop")) == [1]
    assert ids(rx, ("tag", "db.name:shop"), ("root", "1")) == []  # on a child span only
    assert ids(rx, ("tag", "customer.tier:gold"), ("service", "sqlite")) == []


@pytest.mark.parametrize("pairs", [[("tag", "no-colon")], [("tag", ":x")], [("root", "yes")],
                                   [("max_duration_ns", "-1")]])
def test_bad_filters_answer_400_with_the_reason(rx: RunningReceiver, pairs: list) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        ids(rx, *pairs)
    body = json.loads(err.value.read())
    err.value.close()
    assert err.value.code == 400 and pairs[0][0] in body["error"]
