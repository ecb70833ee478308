"""Distributed headers: round trips for every style, 128-bit ids, W3C
tracestate of other vendors, B3, and malformed headers that never raise."""

from __future__ import annotations

from typing import Any

import pytest

from tracer import propagation, tracer
from tracer.config import config
from tracer.context import Context

TID = 0x640F3A2B00000000C0FFEE0123456789  # ddtrace shape: seconds, 32 zero bits, 64 random bits
LOW = TID & ((1 << 64) - 1)
SID = 0x00F067AA0BA902B7
ALL = ("datadog", "tracecontext", "b3multi", "b3")


@pytest.fixture
def styles(monkeypatch: pytest.MonkeyPatch) -> Any:
    def set_styles(extract: tuple[str, ...] = ALL, inject: tuple[str, ...] = ("datadog", "tracecontext")) -> None:
        monkeypatch.setattr(config, "propagation_style_extract", extract)
        monkeypatch.setattr(config, "propagation_style_inject", inject)

    set_styles()
    return set_styles


def ctx(**kw: Any) -> Context:
    base: dict[str, Any] = {"trace_id": TID, "span_id": SID, "sampling_priority": 2, "origin": "synthetics",
                            "dd_tags": {"_dd.p.dm": "-4", "_dd.p.usr.id": "baz64"}}
    base.update(kw)
    return Context(**base)


# -- round trips ------------------------------------------------------------------
@pytest.mark.parametrize("style", ["datadog", "tracecontext"])
def test_round_trip_keeps_everything(styles: Any, style: str) -> None:
    styles(extract=(style,), inject=(style,))
    sent = ctx(tracestate="congo=t61rcWkgMzE,rojo=00f067aa0ba902b7" if style == "tracecontext" else None)
    headers: dict[str, str] = {}
    propagation.inject(sent, headers)
    assert propagation.extract(headers) == sent


def test_datadog_headers_exact(styles: Any) -> None:
    styles(inject=("datadog",))
    headers: dict[str, str] = {}
    propagation.inject(ctx(), headers)
    assert headers == {
        "x-datadog-trace-id": str(LOW),
        "x-datadog-parent-id": str(SID),
        "x-datadog-sampling-priority": "2",
        "x-datadog-origin": "synthetics",
        "x-datadog-tags": "_dd.p.dm=-4,_dd.p.usr.id=baz64,_dd.p.tid=640f3a2b00000000",
    }


def test_tracecontext_headers_exact(styles: Any) -> None:
    styles(inject=("tracecontext",))
    headers: dict[str, str] = {}
    propagation.inject(ctx(origin="rum=x", tracestate="congo=t61rcWkgMzE"), headers)
    assert headers == {
        "traceparent": f"00-{TID:032x}-{SID:016x}-01",
        # our member first, '=' encoded as '~', other vendors after
        "tracestate": "dd=s:2;o:rum~x;t.dm:-4;t.usr.id:baz64,congo=t61rcWkgMzE",
    }
    assert propagation.extract(headers).origin == "rum=x"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("priority", "multi", "single"),
    [
        (2, {"x-b3-flags": "1"}, "-d"),
        (1, {"x-b3-sampled": "1"}, "-1"),
        (0, {"x-b3-sampled": "0"}, "-0"),
        (-1, {"x-b3-sampled": "0"}, "-0"),
        (None, {}, ""),
    ],
)
def test_b3_round_trips(styles: Any, priority: int | None, multi: dict[str, str], single: str) -> None:
    styles(inject=("b3multi", "b3"))
    headers: dict[str, str] = {}
    propagation.inject(ctx(sampling_priority=priority), headers)
    assert headers == {
        "x-b3-traceid": f"{TID:032x}",
        "x-b3-spanid": f"{SID:016x}",
        **multi,
        "b3": f"{TID:032x}-{SID:016x}{single}",
    }
    expected = Context(TID, SID, {-1: 0}.get(priority, priority))  # type: ignore[arg-type]
    for style, keys in (("b3multi", [k for k in headers if k.startswith("x-b3")]), ("b3", ["b3"])):
        styles(extract=(style,))
        assert propagation.extract({k: headers[k] for k in keys}) == expected


def test_b3_64_bit_ids_are_16_hex(styles: Any) -> None:
    styles(inject=("b3multi", "b3"))
    headers: dict[str, str] = {}
    propagation.inject(Context(LOW, SID, 1), headers)
    assert headers["x-b3-traceid"] == f"{LOW:016x}"
    assert headers["b3"] == f"{LOW:016x}-{SID:016x}-1"
    assert propagation.extract({"b3": headers["b3"] + "-" + "1" * 16}) == Context(LOW, SID, 1)


def test_span_injects_its_ids_priority_and_dm(styles: Any, test_spans: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracer, "_sampler", None)
    with tracer.trace("client") as span:
        assert span._trace.priority is None
        headers: dict[str, str] = {}
        propagation.inject(span, headers)
        # the decision was made once, before the headers left
        assert span._trace.priority == 1 and span._trace.mechanism == 0
    high = span.trace_id >> 64
    assert headers["x-datadog-trace-id"] == str(span.trace_id & ((1 << 64) - 1))
    assert headers["x-datadog-parent-id"] == str(span.span_id)
    assert headers["x-datadog-sampling-priority"] == "1"
    assert headers["x-datadog-tags"] == f"_dd.p.dm=-0,_dd.p.tid={high:016x}"
    assert headers["traceparent"] == f"00-{span.trace_id:032x}-{span.span_id:016x}-01"
    assert headers["tracestate"] == f"dd=s:1;p:{span.span_id:016x};t.dm:-0"
    got = propagation.extract(headers)
    assert got == Context(span.trace_id, span.span_id, 1, None, {"_dd.p.dm": "-0"})


def test_continued_trace_reinjects_upstream_state(styles: Any, test_spans: Any) -> None:
    incoming = {
        "traceparent": f"00-{TID:032x}-{SID:016x}-01",
        "tracestate": "dd=s:2;o:rum;t.dm:-4,congo=t61rcWkgMzE",
    }
    parent = propagation.extract(incoming)
    with tracer.start_span("server", child_of=parent, activate=True) as span, tracer.trace("client") as child:
        out: dict[str, str] = {}
        propagation.inject(child, out)
    assert span.parent_id == SID and child.trace_id == TID
    assert out["traceparent"] == f"00-{TID:032x}-{child.span_id:016x}-01"
    assert out["tracestate"] == f"dd=s:2;o:rum;p:{child.span_id:016x};t.dm:-4,congo=t61rcWkgMzE"
    assert out["x-datadog-sampling-priority"] == "2"
    assert out["x-datadog-origin"] == "rum"
    assert out["x-datadog-tags"] == "_dd.p.dm=-4,_dd.p.tid=640f3a2b00000000"
    (chunk,) = test_spans.processed()
    assert chunk[0].meta["_dd.p.dm"] == "-4"
    assert chunk[0].metrics["_sampling_priority_v1"] == 2


@pytest.mark.parametrize(("single", "priority"), [("0", 0), ("1", 1), ("d", 2), (" 0 ", 0)])
def test_b3_single_decision_only_starts_a_new_trace_that_keeps_it(
    styles: Any, test_spans: Any, single: str, priority: int
) -> None:
    parent = propagation.extract({"b3": single})
    assert parent == Context(0, 0, priority)
    with tracer.start_span("server", child_of=parent, activate=True) as span:
        out: dict[str, str] = {}
        propagation.inject(span, out)
    assert span.trace_id and span.parent_id == 0
    assert out["x-datadog-sampling-priority"] == str(priority)
    (chunk,) = test_spans.processed()
    assert chunk[0].metrics["_sampling_priority_v1"] == priority


# -- extraction rules ---------------------------------------------------------------
def test_case_insensitive_and_wsgi_keys(styles: Any) -> None:
    expected = Context(LOW, 5, 1)
    assert propagation.extract({"X-Datadog-Trace-Id": str(LOW), "X-DATADOG-PARENT-ID": "5",
                                "x-datadog-sampling-priority": "1"}) == expected
    assert propagation.extract({"HTTP_X_DATADOG_TRACE_ID": str(LOW), "HTTP_X_DATADOG_PARENT_ID": "5",
                                "HTTP_X_DATADOG_SAMPLING_PRIORITY": "1", "wsgi.input": object()}) == expected


@pytest.mark.parametrize("flags", ["00", "01", "03", "02", "ff"])
def test_w3c_accepts_any_flags_byte(styles: Any, flags: str) -> None:
    got = propagation.extract({"traceparent": f"00-{TID:032x}-{SID:016x}-{flags}"})
    assert got == Context(TID, SID, int(flags, 16) & 1)


@pytest.mark.parametrize(
    ("flags", "state", "priority"),
    [("01", "s:2", 2), ("01", "s:-1", 1), ("01", "s:0", 1), ("00", "s:2", 0), ("00", "s:-1", -1), ("00", "s:0", 0),
     ("01", "o:rum", None), ("00", "o:rum", None), ("01", "s:x", 1)],
)
def test_w3c_priority_reconciled_with_flags_like_ddtrace(styles: Any, flags: str, state: str, priority: Any) -> None:
    got = propagation.extract({"traceparent": f"00-{TID:032x}-{SID:016x}-{flags}", "tracestate": "dd=" + state})
    assert got is not None and got.sampling_priority == priority


def test_w3c_future_version_with_extra_fields_is_accepted(styles: Any) -> None:
    assert propagation.extract({"traceparent": f"cc-{TID:032x}-{SID:016x}-01-what-the-future"}) == Context(TID, SID, 1)


def test_tracestate_members_limited_and_kept_in_order(styles: Any) -> None:
    others = [f"v{i}=x{i}" for i in range(40)]
    headers = {"traceparent": f"00-{TID:032x}-{SID:016x}-01", "tracestate": " , ".join(["dd=s:1", *others])}
    got = propagation.extract(headers)
    assert got is not None and got.tracestate == ",".join(others[:31])
    out: dict[str, str] = {}
    styles(inject=("tracecontext",))
    propagation.inject(got, out)
    assert out["tracestate"].split(",") == ["dd=s:1", *others[:31]]


def test_first_style_wins_but_w3c_tracestate_and_parent_are_kept(styles: Any) -> None:
    headers = {
        "x-datadog-trace-id": str(LOW),
        "x-datadog-parent-id": "7",
        "x-datadog-sampling-priority": "2",
        "x-datadog-tags": "_dd.p.dm=-3,_dd.p.tid=640f3a2b00000000",
        "traceparent": f"00-{TID:032x}-{SID:016x}-01",
        "tracestate": "dd=s:1;p:0000000000000007,congo=t61rcWkgMzE",
        "x-b3-traceid": "1" * 32,
        "x-b3-spanid": "2" * 16,
    }
    got = propagation.extract(headers)
    assert got == Context(TID, SID, 2, None, {"_dd.p.dm": "-3", "_dd.parent_id": "0000000000000007"},
                          "congo=t61rcWkgMzE")
    # another trace in traceparent: ignored entirely
    headers["traceparent"] = f"00-{TID + 1:032x}-{SID:016x}-01"
    assert propagation.extract(headers) == Context(TID, 7, 2, None, {"_dd.p.dm": "-3"})
    # style order decides
    styles(extract=("b3multi", "datadog"))
    assert propagation.extract(headers) == Context(int("1" * 32, 16), int("2" * 16, 16), None)
    styles(extract=())
    assert propagation.extract(headers) is None


def test_datadog_without_tid_adopts_w3c_high_bits(styles: Any) -> None:
    headers = {"x-datadog-trace-id": str(LOW), "x-datadog-parent-id": str(SID),
               "traceparent": f"00-{TID:032x}-{SID:016x}-01", "tracestate": "rojo=1"}
    assert propagation.extract(headers) == Context(TID, SID, None, None, {}, "rojo=1")


def test_datadog_origin_only_synthetics_parent_zero(styles: Any) -> None:
    got = propagation.extract({"x-datadog-trace-id": "12", "x-datadog-origin": "synthetics"})
    assert got == Context(12, 0, None, "synthetics")


# -- malformed headers: never raise, ignore the bad part ------------------------------
@pytest.mark.parametrize(
    "headers",
    [
        {"x-datadog-trace-id": "abc", "x-datadog-parent-id": "1"},
        {"x-datadog-trace-id": "-5", "x-datadog-parent-id": "1"},
        {"x-datadog-trace-id": "0", "x-datadog-parent-id": "1"},
        {"x-datadog-trace-id": str(1 << 64), "x-datadog-parent-id": "1"},
        {"x-datadog-trace-id": "١٢٣", "x-datadog-parent-id": "1"},  # non-ASCII digits
        {"x-datadog-trace-id": "1", "x-datadog-parent-id": "0x10"},
        {"x-datadog-trace-id": ""},
        {"traceparent": "garbage"},
        {"traceparent": f"ff-{TID:032x}-{SID:016x}-01"},
        {"traceparent": f"00-{TID:032x}-{SID:016x}-01-extra"},
        {"traceparent": f"00-{0:032x}-{SID:016x}-01"},
        {"traceparent": f"00-{TID:032x}-{0:016x}-01"},
        {"traceparent": f"00-{TID:032X}-{SID:016x}-01"},
        {"traceparent": f"00-{TID:032x}"[:-1] + f"-{SID:016x}-01"},
        {"traceparent": f"00-{TID:032x}-{SID:016x}-1"},
        {"x-b3-traceid": "xyz", "x-b3-spanid": "1" * 16},
        {"x-b3-traceid": "1" * 20, "x-b3-spanid": "1" * 16},
        {"x-b3-traceid": "0" * 16, "x-b3-spanid": "1" * 16},
        {"x-b3-traceid": "1" * 16},
        {"b3": "x"},
        {"b3": "1-2"},
        {"b3": "-".join(["1" * 16] * 5)},
        {"b3": ""},
        {},
    ],
)
def test_malformed_headers_give_no_context(styles: Any, headers: dict[str, str]) -> None:
    assert propagation.extract(headers) is None


def test_malformed_parts_are_dropped_not_the_context(styles: Any) -> None:
    base = {"x-datadog-trace-id": "12", "x-datadog-parent-id": "34"}
    assert propagation.extract({**base, "x-datadog-sampling-priority": "high"}) == Context(12, 34)
    assert propagation.extract({**base, "x-datadog-origin": "\x00bad"}) == Context(12, 34)
    assert propagation.extract({**base, "x-datadog-tags": "_dd.p.a=1,no-equals"}) == Context(
        12, 34, dd_tags={"_dd.propagation_error": "decoding_error"})
    assert propagation.extract({**base, "x-datadog-tags": "_dd.p.a=1,other=2"}) == Context(
        12, 34, dd_tags={"_dd.propagation_error": "decoding_error"})
    assert propagation.extract({**base, "x-datadog-tags": "_dd.p.a=" + "x" * 600}) == Context(
        12, 34, dd_tags={"_dd.propagation_error": "extract_max_size"})
    assert propagation.extract({**base, "x-datadog-tags": "_dd.p.tid=XYZ,_dd.p.dm=-1"}) == Context(
        12, 34, dd_tags={"_dd.p.dm": "-1", "_dd.propagation_error": "malformed_tid XYZ"})
    tp = f"00-{TID:032x}-{SID:016x}-01"
    assert propagation.extract({"traceparent": tp, "tracestate": "dd=s:2,\x7fbad=1"}) == Context(TID, SID, 1)
    assert propagation.extract({"traceparent": tp, "tracestate": "dd=s;o:;junk,a=b"}) == Context(
        TID, SID, 1, None, {}, "a=b")
    assert propagation.extract({"x-b3-traceid": "1" * 16, "x-b3-spanid": "2" * 16, "x-b3-sampled": "maybe"}) == Context(
        int("1" * 16, 16), int("2" * 16, 16))


def test_non_string_and_odd_mappings_never_raise(styles: Any) -> None:
    class Weird(dict):  # type: ignore[type-arg]
        def items(self) -> Any:
            raise RuntimeError("boom")

    assert propagation.extract({1: 2, "x-datadog-trace-id": None}) is None  # type: ignore[dict-item]
    assert propagation.extract(None) is None  # type: ignore[arg-type]
    # a mapping that fails is a bug-shaped input: reported as an internal error, not raised
    from tracer import _errors

    assert propagation.extract(Weird(a=1)) is None
    assert _errors.swallowed and _errors.swallowed[-1][0] == "propagation.extract"
    del _errors.swallowed[:]
    styles(inject=("datadog", "tracecontext", "b3multi", "b3"))
    for bad in ("not a span", None, 123, {"trace_id": 1}):
        headers = {"accept": "*/*"}
        propagation.inject(bad, headers)  # type: ignore[arg-type]
        assert headers == {"accept": "*/*"}, bad  # nothing written, nothing removed
    assert not _errors.swallowed  # a wrong argument is the caller's mistake, not our internal error


def test_oversized_datadog_tags_not_injected(styles: Any) -> None:
    styles(inject=("datadog",))
    headers: dict[str, str] = {}
    propagation.inject(ctx(dd_tags={"_dd.p.big": "x" * 600}), headers)
    assert "x-datadog-tags" not in headers and headers["x-datadog-trace-id"] == str(LOW)


def test_only_dd_p_tags_propagate(styles: Any) -> None:
    styles(inject=("datadog", "tracecontext"))
    headers: dict[str, str] = {}
    propagation.inject(ctx(trace_id=LOW, dd_tags={"_dd.p.dm": "-4", "_dd.propagation_error": "x",
                                                  "_dd.parent_id": "00000000000000aa"}), headers)
    assert headers["x-datadog-tags"] == "_dd.p.dm=-4"
    assert headers["tracestate"] == "dd=s:2;o:synthetics;t.dm:-4"


def test_no_inject_styles_writes_nothing(styles: Any) -> None:
    styles(inject=())
    headers: dict[str, str] = {}
    propagation.inject(ctx(), headers)
    assert headers == {}


# -- interoperability with the real ddtrace (in its own process) -----------------------
_DDTRACE_SCRIPT = r"""
import json, sys
from ddtrace.propagation.http import HTTPPropagator
from ddtrace.trace import Context
req = json.loads(sys.stdin.read())
injected = []
for c in req["inject"]:
    headers = {}
    HTTPPropagator.inject(Context(trace_id=int(c["trace_id"]), span_id=int(c["span_id"]),
                                  sampling_priority=c["priority"], dd_origin=c["origin"], meta=c["tags"]), headers)
    injected.append(headers)
extracted = []
for headers in req["extract"]:
    x = HTTPPropagator.extract(headers)
    extracted.append({"trace_id": str(x.trace_id or 0), "span_id": str(x.span_id or 0), "priority": x.sampling_priority,
                      "origin": x.dd_origin, "tags": {k: v for k, v in x._meta.items() if k.startswith("_dd.p.")}})
print(json.dumps({"injected": injected, "extracted": extracted}))
"""

INTEROP = [
    Context(TID, SID, 2, "synthetics", {"_dd.p.dm": "-4", "_dd.p.usr.id": "baz64"}),
    Context(LOW, SID, 0),
    Context(TID, 12345, -1, None, {"_dd.p.dm": "-3"}),
    Context(TID, SID, 1, "rum", {"_dd.p.dm": "-1"}),
]
STYLE_KEYS = {
    "datadog": ("x-datadog-",),
    "tracecontext": ("traceparent", "tracestate"),
    "b3multi": ("x-b3-",),
    "b3": ("b3",),
}


def only(style: str, headers: dict[str, str]) -> dict[str, str]:
    keys = STYLE_KEYS[style]
    return {k: v for k, v in headers.items() if k.startswith(keys) and (style != "b3" or k == "b3")}


def expected_after(style: str, sent: Context) -> Context:
    """What survives a trip through ``style``: B3 knows ids and keep/drop (plus debug) only."""
    if style in ("b3multi", "b3"):
        priority = sent.sampling_priority
        return Context(sent.trace_id, sent.span_id, 0 if priority is not None and priority < 0 else priority)
    return Context(sent.trace_id, sent.span_id, sent.sampling_priority, sent.origin, dict(sent.dd_tags))


@pytest.fixture(scope="module")
def ddtrace_round() -> dict[str, Any]:
    import json
    import os
    import subprocess
    import sys

    from tests.utils import require_module

    require_module("ddtrace")
    ours: list[dict[str, str]] = []
    saved = (config.propagation_style_inject,)
    config.propagation_style_inject = ALL
    try:
        for sent in INTEROP:
            headers: dict[str, str] = {}
            propagation.inject(sent, headers)
            ours.append(headers)
    finally:
        (config.propagation_style_inject,) = saved
    request = {
        "inject": [{"trace_id": str(c.trace_id), "span_id": str(c.span_id), "priority": c.sampling_priority,
                    "origin": c.origin, "tags": c.dd_tags} for c in INTEROP],
        "extract": [only(style, h) for h in ours for style in ALL],
    }
    env = {**os.environ, "DD_TRACE_PROPAGATION_STYLE": ",".join(ALL), "DD_TRACE_ENABLED": "false",
           "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false", "DD_REMOTE_CONFIGURATION_ENABLED": "false"}
    done = subprocess.run([sys.executable, "-c", _DDTRACE_SCRIPT], input=json.dumps(request), env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("style", ALL)
def test_we_extract_what_ddtrace_injects(styles: Any, ddtrace_round: dict[str, Any], style: str) -> None:
    styles(extract=(style,))
    for sent, headers in zip(INTEROP, ddtrace_round["injected"], strict=True):
        assert propagation.extract(only(style, headers)) == expected_after(style, sent), (style, headers)


@pytest.mark.parametrize("style", ALL)
def test_ddtrace_extracts_what_we_inject(ddtrace_round: dict[str, Any], style: str) -> None:
    results = iter(ddtrace_round["extracted"])
    by_style = [{s: next(results) for s in ALL} for _ in INTEROP]
    for sent, got in zip(INTEROP, by_style, strict=True):
        want = expected_after(style, sent)
        assert (int(got[style]["trace_id"]), int(got[style]["span_id"]), got[style]["priority"], got[style]["origin"],
                {k: v for k, v in got[style]["tags"].items() if k != "_dd.p.tid"}) == (
            want.trace_id, want.span_id, want.sampling_priority, want.origin, want.dd_tags), style
