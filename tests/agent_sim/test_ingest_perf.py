"""Shortcuts taken for ingest speed give what the plain rules give.

``insights.detect`` skips the N+1 run search for a parent whose DB/HTTP
children repeat no resource ``n_plus_one_min`` times; the N+1 findings must
still be exactly the runs that the rule (docs/receiver.md) defines, computed
here the plain way on random chunks.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent_sim.insights import N_PLUS_ONE_DB, N_PLUS_ONE_HTTP, Thresholds, detect

_KID = st.tuples(
    st.sampled_from([1, 2]),  # parent: the request or the view
    st.sampled_from(["sql", "http", "fetch", "web"]),
    st.sampled_from(["SELECT a", "SELECT b", "GET /x"]),
    st.sampled_from(["db", "db", "other"]),
    st.integers(0, 50),  # start
)


def _chunk(kids: list[tuple]) -> list[dict]:
    def span(sid: int, parent: int, name: str, resource: str, service: str, type_: str, start: int,
             meta: dict) -> dict:
        return {"trace_id": 9, "span_id": sid, "parent_id": parent, "service": service, "name": name,
                "resource": resource, "type": type_, "start": start, "duration": 10, "error": 0, "meta": meta,
                "metrics": {}}

    spans = [span(1, 0, "flask.request", "GET /o", "web", "web", 0, {}),
             span(2, 1, "flask.view", "o", "web", "web", 0, {})]
    for i, (parent, kind, resource, service, start) in enumerate(kids, start=3):
        if kind == "sql":
            spans.append(span(i, parent, "mysql.query", resource, service, "sql", start, {"db.system": "mysql"}))
        elif kind == "http":
            spans.append(span(i, parent, "requests.request", resource, service, "http", start,
                              {"span.kind": "client"}))
        elif kind == "fetch":
            spans.append(span(i, parent, "mysql.query.fetchall", resource, service, "sql", start, {}))
        else:
            spans.append(span(i, parent, "render", resource, service, "web", start, {}))
    return spans


def _plain_runs(spans: list[dict], least: int) -> list[tuple]:
    """(kind, parent, resource, count) of each run: per parent, its DB (else
    HTTP client) children by start, consecutive ones of one service and resource."""
    out = []
    for parent in {s["parent_id"] for s in spans}:
        kids = sorted((s for s in spans if s["parent_id"] == parent), key=lambda s: s["start"])
        for kind, type_ in ((N_PLUS_ONE_DB, "sql"), (N_PLUS_ONE_HTTP, "http")):
            seq = [s for s in kids if s["type"] == type_ and not s["name"].endswith(".fetchall")]
            run: list[dict] = []
            for s in [*seq, None]:
                if run and (s is None or (s["service"], s["resource"]) != (run[0]["service"], run[0]["resource"])):
                    if len(run) >= least:
                        out.append((kind, parent, run[0]["resource"], len(run)))
                    run = []
                if s is not None:
                    run.append(s)
    return sorted(out)


@settings(max_examples=400, deadline=None)
@given(st.lists(_KID, max_size=14), st.integers(1, 6))
def test_n_plus_one_findings_are_the_plain_runs(kids: list[tuple], least: int) -> None:
    spans = _chunk(kids)
    found = detect(spans, Thresholds(n_plus_one_min=least))
    got = sorted((f.kind, f.span_ids and next(s["parent_id"] for s in spans if s["span_id"] == f.span_ids[0]),
                  f.detail["repeated"], f.count) for f in found if f.kind in (N_PLUS_ONE_DB, N_PLUS_ONE_HTTP))
    assert got == _plain_runs(spans, least)
