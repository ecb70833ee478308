"""The span hot path has two versions: C (tracer/_cspan.c, built at install)
and pure Python (tracer.span._SpanBase, used when the C one is not built or
TRACER_PURE_PYTHON is set). The test command runs tests/tracer once with each;
the tests here target what differs between them: child spans (built by
``_cspan.trace_child``), tags set on them, and reference counting."""

from __future__ import annotations

import contextvars
import functools
import gc
import os
import sys
import threading
from typing import Any

import msgpack
import pytest

import tracer.span as span_module
from tests.utils import assert_clean_output, python_calls
from tracer import encoding, tracer
from tracer.context import ACTIVE_SPAN, Context
from tracer.span import MAX_KEY_LEN, MAX_VALUE_LEN, SPAN_FIELDS, _cspan

PURE = os.environ.get("TRACER_PURE_PYTHON", "").lower() in ("1", "true", "yes", "on")


def test_the_c_version_is_built_and_used(test_spans):
    # The test command installs a compiler; a silent fallback would leave the
    # C code untested (tests/tracer/test_cencode.py skips without it) and the
    # benchmarks slower.
    if PURE:
        assert _cspan is None and encoding._cencode is None
    else:
        assert _cspan is not None, "tracer._cspan did not build: see the pip install output"
        assert encoding._cencode is not None, "tracer._cencode did not build: see the pip install output"
        with tracer.trace("x") as span:
            assert type(span).__mro__[1] is _cspan.SpanBase


def test_child_spans_have_every_field_and_the_parents_ids(test_spans):
    with tracer.trace("root", service="svc", resource="R") as root:
        with tracer.trace("child") as child:
            assert tracer.current_span() is child
            with tracer.trace("grandchild", service="other", resource="res", span_type="sql") as grand:
                assert tracer.current_span() is grand
            assert tracer.current_span() is child
        assert tracer.current_span() is root
    assert tracer.current_span() is None
    for span in (root, child, grand):
        for field in SPAN_FIELDS:
            getattr(span, field)
    assert (child.trace_id, child.parent_id, child.service, child.resource) == (root.trace_id, root.span_id, "svc", "child")
    assert (grand.parent_id, grand.service, grand.resource, grand.span_type) == (child.span_id, "other", "res", "sql")
    assert child.span_id not in (0, root.span_id)
    assert root.start_ns <= child.start_ns <= grand.start_ns
    assert child.duration_ns >= grand.duration_ns >= 0
    by_name = {s.name: s for s in test_spans.spans}
    assert "_dd.top_level" not in by_name["child"].metrics, "same service as its parent"
    assert by_name["grandchild"].metrics == {"_dd.top_level": 1}


def test_empty_service_and_resource_fall_back_as_in_python(test_spans):
    with tracer.trace("root", service="svc"), tracer.trace("child", service="", resource="") as child:
        pass
    assert (child.service, child.resource) == ("svc", "child")


class Key(str):
    pass


def test_tags_on_a_child_span_follow_the_python_rules(test_spans):
    with tracer.trace("root"), tracer.trace("child") as span:
        span.set_tag("s", "v")
        span.set_tag("n", 3)
        span.set_tag("f", 1.5)
        span.set_tag("b", True)
        span.set_tag("http.status_code", 200)
        span.set_tag("o", ["x"])
        span.set_tag("k" * 500, "long key")
        span.set_tag("long", "v" * (MAX_VALUE_LEN + 1))
        span.set_tag("gone", "x")
        span.set_tag("gone", None)
        span.set_tag(Key("sub"), "str subclass key")  # not an exact str: the Python code stores it
        span.set_metric("m", 4)
        span.set_metric("m2", True)
        span.set_metric("m" * 300, 1)
        span.set_metric("bad", "not a number")
        span.set_metric("str", "2.5")
    assert span.meta == {
        "s": "v",
        "b": "true",
        "http.status_code": "200",
        "o": "['x']",
        "k" * MAX_KEY_LEN: "long key",
        # The C span cuts a long str value when set; the pure-Python one
        # keeps it whole, and its encoder cuts it (below).
        "long": "v" * (MAX_VALUE_LEN + 1 if _cspan is None else MAX_VALUE_LEN),
        "sub": "str subclass key",
    }
    assert span.metrics == {"n": 3, "f": 1.5, "m": 4, "m2": 1.0, "m" * MAX_KEY_LEN: 1, "str": 2.5}
    (sent,) = msgpack.unpackb(encoding.encode_v04([test_spans.raw[-1][1]]))
    assert {s["name"]: s["meta"] for s in sent}["child"]["long"] == "v" * MAX_VALUE_LEN
    with pytest.raises(TypeError):
        span.set_tag("only one argument")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        span.set_metric("k", 1, 2)  # type: ignore[call-arg]


def test_exceptions_leaving_a_child_block(test_spans):
    error = ValueError("boom")
    with pytest.raises(ValueError) as raised, tracer.trace("root"), tracer.trace("child") as child:
        raise error
    assert raised.value is error
    assert child.error == 1 and child.meta["error.type"] == "builtins.ValueError" and child.meta["error.message"] == "boom"
    assert tracer.current_span() is None


def test_a_failing_set_exc_info_does_not_mask_the_users_exception(test_spans):
    class Odd(Exception):
        def __str__(self) -> str:
            raise RuntimeError("unprintable")

    with pytest.raises(Odd), tracer.trace("root"), tracer.trace("child") as child:
        raise Odd()
    assert child.error == 1 and tracer.current_span() is None


def test_finish_then_block_end_and_block_end_twice_send_once(test_spans):
    with tracer.trace("root"):
        with tracer.trace("child") as child:
            child.finish()
            duration = child.duration_ns
        child.__exit__(None, None, None)
        assert child.duration_ns == duration
    assert sorted(s.name for s in test_spans.spans) == ["child", "root"]


def test_finish_restores_the_previous_span_only_where_it_is_active(test_spans):
    with tracer.trace("root") as root:
        child = tracer.trace("child")
        assert tracer.current_span() is child
        child.finish()
        assert tracer.current_span() is root and child.duration_ns >= 0
        child.finish()  # idempotent
        other = tracer.trace("other")
        elsewhere: list[object] = []
        # Finished from a context where it is not the active span: it stays in
        # this context's variable, but current_span() skips it for its
        # nearest unfinished ancestor (ddtrace's rule).
        thread = threading.Thread(target=lambda: (other.finish(), elsewhere.append(tracer.current_span())))
        thread.start()
        thread.join()
        assert elsewhere == [None] and tracer.current_span() is root and other.finished
        assert ACTIVE_SPAN.get() is other
        never_active = tracer.start_span("detached", child_of=root, activate=False)
        never_active.finish()
        assert tracer.current_span() is root
    assert sorted(s.name for s in test_spans.spans) == ["child", "detached", "other", "root"]


def test_finish_with_an_end_time(test_spans):
    with tracer.trace("root") as root:
        late = tracer.trace("late")
        late.finish(late.start_ns + 1234)
        early = tracer.trace("early")
        early.finish(finish_time_ns=early.start_ns - 5)  # before the start: zero, not negative
        unset = tracer.trace("unset")
        unset.finish(None)
        assert tracer.current_span() is root
        with pytest.raises(TypeError):
            root.finish(1, 2)  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            root.finish(when=1)  # type: ignore[call-arg]
        assert not root.finished
    assert (late.duration_ns, early.duration_ns) == (1234, 0)
    assert unset.duration_ns is not None and unset.duration_ns >= 0
    assert sorted(s.name for s in test_spans.spans) == ["early", "late", "root", "unset"]


def test_finish_with_an_end_time_runs_no_python_code_and_keeps_the_rules(test_spans):
    # finish(t) in C (contrib/mysql ends its spans at a time taken earlier):
    # no Python frame for an exact int end within +-2**62 ns; anything else
    # (past that bound, a float, a start_ns changed to a non-int) takes the
    # Python method, with the same results.
    ends = {}
    with tracer.trace("root") as root:
        for name, end in (("fast", 1 << 62), ("past", (1 << 62) + 1), ("float", 2.5), ("kw", 7)):
            span = tracer.trace(name)
            span.start_ns = 2 if name != "kw" else 10
            finish = functools.partial(span.finish, end) if name != "kw" else functools.partial(span.finish, finish_time_ns=end)
            _, calls = python_calls(finish)  # (a partial runs no Python frame of its own)
            ends[name] = (span.duration_ns, calls)
            assert tracer.current_span() is root
    assert ends["fast"][0] == (1 << 62) - 2 and ends["past"][0] == (1 << 62) - 1 and ends["float"][0] == 0.5
    assert ends["kw"][0] == 0  # before its start: zero, not negative
    if not PURE:
        assert ends["fast"][1] == ends["kw"][1] == [] and ends["past"][1] and ends["float"][1]
    assert sorted(s.name for s in test_spans.spans) == ["fast", "float", "kw", "past", "root"]


def test_durations_from_clock_values_of_every_size(test_spans):
    # The C span reads the clocks' ints (one to three 30-bit digits, and
    # negative ones) without PyLong_AsLongLong's byte-array path.
    with tracer.trace("root"):
        for back in (5, 2**31, 2**45, 2**61):
            span = tracer.trace("x")
            span._mono -= back
            span.finish()
            assert back <= span.duration_ns < back + 10**10
        span = tracer.trace("end")
        span.start_ns = -(2**50)
        span.finish(2**50)
        assert span.duration_ns == 2**51
        if not PURE:
            span = tracer.trace("huge")
            span._mono = 2**64
            with pytest.raises(OverflowError):
                span.finish()
            span._mono = 0
            span.finish()


def test_children_started_after_the_root_finished_leave_as_a_late_chunk(test_spans):
    def run() -> None:  # in a context of its own: it ends with the finished root active
        root = tracer.start_span("root", activate=True)
        child = tracer.trace("open child")
        root.finish()
        with tracer.trace("late"):
            pass
        child.finish()

    contextvars.copy_context().run(run)
    assert [[s.name for s in chunk] for chunk in test_spans.chunks] == [["root"], ["late", "open child"]]


def test_a_parent_from_before_fork_is_foreign_and_starts_a_new_trace(test_spans):
    with tracer.trace("root") as root:
        root._trace.foreign = True
        with tracer.trace("child") as child:
            pass
    assert child.trace_id == root.trace_id and child.parent_id == root.span_id
    assert child._trace is not root._trace, "continued as a remote parent, in a trace of its own"


def test_threads_each_see_their_own_child_spans(test_spans):
    errors: list[str] = []

    def work(i: int) -> None:
        for _ in range(200):
            with tracer.trace(f"root{i}") as root, tracer.trace("child") as child:
                if tracer.current_span() is not child or child.parent_id != root.span_id:
                    errors.append(f"thread {i}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(test_spans.spans) == 4 * 200 * 2


def test_no_reference_is_leaked_or_lost(test_spans):
    # Unique objects, so that their reference counts are ours alone.
    name, service, resource, kind = (f"{word}-{id(test_spans)}" for word in ("name", "svc", "res", "type"))
    key, value = f"key-{id(test_spans)}", f"value-{id(test_spans)}"
    before = [sys.getrefcount(o) for o in (name, service, resource, kind, key, value)]
    with tracer.trace("root") as root:
        root_refs = sys.getrefcount(root)
        for i in range(1000):
            with tracer.trace(name, service, resource, kind) as span:
                span.set_tag(key, value)
                span.set_metric(key, i)
                if i % 2:
                    span.set_tag(key, None)
            span = tracer.trace(name, service, resource, kind)
            span.finish()
        del span
        # The pure-Python end leaves the last child in the variable (until the
        # next activation; it reads as root): one reference, not one per child.
        left = ACTIVE_SPAN.get()
        assert (left is not root) == PURE and (left is root or (left._parent is root and left.finished))
        del left
        assert sys.getrefcount(root) == root_refs + PURE, "finished children are freed; their records hold ids, not spans"
    test_spans.raw.clear()
    gc.collect()
    span_module._SHORT_KEYS.discard(key)  # set_tag's bounded set of seen keys holds one
    after = [sys.getrefcount(o) for o in (name, service, resource, kind, key, value)]
    assert after == before


def _root_fields(span) -> dict:
    """What a root span and its trace hold, ids and clocks reduced to their rules."""
    trace = span._trace
    fields = {f: getattr(span, f) for f in ("name", "service", "resource", "span_type", "parent_id", "error")}
    fields.update(
        parent=span._parent,
        prev=span._prev,
        tid_rule=(span.trace_id >> 64 == (span.start_ns // 1_000_000_000) << 32, span.trace_id & (2**64 - 1) != 0),
        ids=(span.trace_id == trace.trace_id, span.span_id != 0),
        clocks=(trace.wall_base == span.start_ns, trace.mono_base == span._mono),
        open=(span.duration_ns, span.meta, span.metrics),
        trace=(trace.root is span, trace.started_count(), trace.root_done, trace.priority, trace.remote_parent),
        live=trace in trace.buffer._live,
        active=tracer.current_span() is span,
    )
    return fields


def _start_root(how: str, service, resource, span_type):
    if how == "trace":
        return tracer.trace("root", service, resource, span_type)
    return tracer.start_span("root", None, service, resource, span_type, activate=how == "start_span_active")


@pytest.mark.parametrize("how", ["trace", "start_span", "start_span_active"])
@pytest.mark.parametrize(
    ("service", "resource", "span_type"), [(None, None, None), ("svc", "res", "web"), ("", "", None)]
)
def test_root_spans_from_c_match_the_python_root_path(test_spans, how, service, resource, span_type):
    """``_cspan.trace_root`` (Tracer.trace() without an active span,
    Tracer.start_span() without a parent) builds what Tracer._start_trace
    builds for no parent."""
    tracer_module = sys.modules["tracer._tracer"]
    span = _start_root(how, service, resource, span_type)
    built = _root_fields(span)
    span.finish()
    saved, tracer_module._trace_root = tracer_module._trace_root, None
    try:
        span = tracer._trace_py("root", service, resource, span_type) if how == "trace" else _start_root(how, service, resource, span_type)
        expected = _root_fields(span)
        span.finish()
    finally:
        tracer_module._trace_root = saved
    assert built == expected
    assert expected["service"] == (service or tracer.service)
    assert [[s.name for s in chunk] for chunk in test_spans.chunks] == [["root"], ["root"]]


class _Tags(dict):
    """Propagated tags in a mapping that is not an exact dict."""


_CONTEXTS = {
    "datadog": lambda: Context(0xAB << 64 | 7, 9, 2, "synthetics", {"_dd.p.tid": "00000000000000ab", "_dd.p.dm": "-4"}),
    "tracecontext": lambda: Context(11, 12, 1, None, {"_dd.p.dm": "-0"}, "other=x", {"k": "v"}),
    "bare": lambda: Context(13, 14),
    "tag_mapping": lambda: Context(15, 16, 0, None, _Tags({"_dd.p.tid": "1", "_dd.p.a": "b"})),
    "decision_only": lambda: Context(0, 0, 1),  # a b3 "1": no parent, the Python path
}


@pytest.mark.parametrize("ctx", list(_CONTEXTS))
def test_traces_continued_from_headers_are_built_in_c_as_in_python(test_spans, ctx):
    """``start_span(child_of=Context)`` (a request with trace headers) builds
    in C what Tracer._start_trace builds, and sends the same chunk."""
    tracer_module = sys.modules["tracer._tracer"]

    def start() -> tuple[dict, Any]:
        context = _CONTEXTS[ctx]()
        span = tracer.start_span("req", context, "svc", None, "web", activate=True)
        trace = span._trace
        fields = _root_fields(span)
        del fields["tid_rule"]
        fields.update(
            ids=(span.trace_id, trace.trace_id == context.trace_id or not context.trace_id, span.parent_id),
            remote=(trace.origin, trace.dd_tags, type(trace.dd_tags), trace.tracestate, trace.mechanism),
        )
        span.finish()
        return fields, trace

    built, trace = start()
    saved, tracer_module._trace_root = tracer_module._trace_root, None
    try:
        expected, python_trace = start()
    finally:
        tracer_module._trace_root = saved
    if ctx == "decision_only":  # random trace ids
        built.pop("ids"), expected.pop("ids")
    assert built == expected
    if _cspan is not None:  # built in C, but for a decision only
        assert isinstance(trace, _cspan.TraceBase) == (ctx != "decision_only")
        assert not isinstance(python_trace, _cspan.TraceBase)
    first, second = ([s._replace(span_id=0, start_ns=0, duration_ns=0) for s in chunk] for chunk in test_spans.chunks)
    if ctx == "decision_only":
        first, second = ([s._replace(trace_id=0) for s in chunk] for chunk in (first, second))
    assert first == second and len(first) == 1


@pytest.mark.skipif(PURE, reason="the C span code")
def test_traces_continued_from_headers_leak_no_reference(test_spans):
    origin, tracestate, name = (f"{word}-{id(test_spans)}" for word in ("origin", "state", "name"))
    tags = {"_dd.p.tid": "00000000000000ab", "_dd.p.dm": "-4"}
    context = Context(id(test_spans) << 64 | 7, id(tags) << 1, 2, origin, tags, tracestate)
    objects = (context, origin, tracestate, name, tags, context.trace_id, context.span_id)
    test_spans.raw.clear()
    gc.collect()
    before = [sys.getrefcount(o) for o in objects]
    for _ in range(1000):
        tracer.start_span(name, child_of=context).finish()
    test_spans.raw.clear()
    gc.collect()
    assert [sys.getrefcount(o) for o in objects] == before
    assert tags == {"_dd.p.tid": "00000000000000ab", "_dd.p.dm": "-4"}, "the context's tags are copied, not changed"


@pytest.mark.skipif(PURE, reason="the C span code")
def test_trace_root_leaves_an_active_span_to_the_python_code(test_spans):
    with tracer.trace("root") as root:
        assert _cspan.trace_root(type(root._trace), root._trace.buffer, "x", "svc", None, None, True) is None
        assert tracer.current_span() is root


@pytest.mark.skipif(PURE, reason="the C span code")
def test_root_spans_leak_no_reference(test_spans):
    name, service, resource, kind = (f"{word}-{id(test_spans)}-root" for word in ("name", "svc", "res", "type"))
    before = [sys.getrefcount(o) for o in (name, service, resource, kind)]
    for _ in range(1000):
        with tracer.trace(name, service, resource, kind):
            pass
    test_spans.raw.clear()
    gc.collect()
    assert [sys.getrefcount(o) for o in (name, service, resource, kind)] == before


def test_import_never_fails_because_of_the_c_modules():
    # A free-threaded build warns (RuntimeWarning) that a C module re-enables
    # the GIL; under -W error that warning is raised from the import. Simulate
    # it on any build: a finder raises it for both C modules.
    import subprocess

    script = """
import sys, warnings

class GilWarning:
    def find_spec(self, name, path=None, target=None):
        if name in ("tracer._cspan", "tracer._cencode"):
            warnings.warn("The global interpreter lock (GIL) has been enabled to load module", RuntimeWarning)
        return None

sys.meta_path.insert(0, GilWarning())
import tracer
from tracer import encoding, span
assert span._cspan is None and encoding._cencode is None
with tracer.tracer.trace("works") as s:
    s.set_tag("k", "v")
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "TRACER_PURE_PYTHON"}
    run = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"
    assert_clean_output(run.stderr)
    assert "tracer._cspan not loaded" in run.stderr and "using pure Python" in run.stderr


_FIELDS_REPLACED_DURING_COMPARE = r"""
import gc
from tracer import tracer
from tracer.span import _cspan

assert _cspan is not None
spans = []

class Service(str):
    # Runs while finish_record compares the parent's service with the
    # child's: replaces the fields it was holding (freeing them).
    def __ne__(self, other):
        for span in spans:
            span.metrics = {"replaced": 1.0}
            span.service = "".join(["re", "placed"])
            span.meta = {}
        gc.collect()
        return True

    __hash__ = str.__hash__

with tracer.trace("root", service=Service("".join(["svc", "-a"]))) as root:
    child = tracer.trace("child", service=Service("".join(["svc", "-b"])))
    child.metrics = {"m" + str(i): float(i) for i in range(50)}
    spans.append(child)
    with child:
        pass
print("ok")
"""


@pytest.mark.skipif(PURE, reason="the C span code")
def test_finish_owns_the_fields_it_holds_across_a_service_comparison():
    # finish_record held borrowed metrics/service/parent service across
    # PyObject_RichCompareBool, which can run a str subclass's __ne__.
    import subprocess

    env = {**os.environ, "PYTHONMALLOC": "debug", "TRACER_AGENT_URL": "http://127.0.0.1:9"}
    run = subprocess.run(
        [sys.executable, "-X", "dev", "-c", _FIELDS_REPLACED_DURING_COMPARE],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert run.returncode == 0, (run.returncode, run.stderr[-3000:])
    assert run.stdout.strip() == "ok"
    assert_clean_output(run.stderr)


def test_a_span_finished_elsewhere_while_its_block_is_open(test_spans):
    """A span finished from another thread or context while its ``with``
    block is open: current_span() (and the parent of new spans) is its nearest
    unfinished ancestor, and the block still ends with the span active before
    it (issue 11)."""
    with tracer.trace("root") as root:
        with tracer.trace("outer") as outer:
            with tracer.trace("block") as block:
                thread = threading.Thread(target=block.finish)
                thread.start()
                thread.join()
                contextvars.Context().run(outer.finish)
                assert block.finished and outer.finished and tracer.current_span() is root
                with tracer.trace("inside") as inside:  # a child of root, never of a finished span
                    assert inside.parent_id == root.span_id and tracer.current_span() is inside
                # C restores the span before it; the pure-Python end leaves
                # the finished child there (its parent is root): both read as root.
                assert tracer.current_span() is root and ACTIVE_SPAN.get() is (inside if PURE else block)
            assert ACTIVE_SPAN.get() is (inside if PURE else outer) and tracer.current_span() is root
        assert ACTIVE_SPAN.get() is (inside if PURE else root) and tracer.current_span() is root
        late = tracer.trace("late")
        thread = threading.Thread(target=lambda: (late.finish(), root.finish()))
        thread.start()
        thread.join()
        # The whole trace finished: nothing is current, and a new span starts a new trace.
        assert tracer.current_span() is None
        with tracer.trace("next") as nxt:
            assert nxt.trace_id != root.trace_id and nxt.parent_id == 0 and tracer.current_span() is nxt
        assert ACTIVE_SPAN.get() is late
        late.__exit__(None, None, None)  # its block ends
        assert ACTIVE_SPAN.get() is root
    assert ACTIVE_SPAN.get() is None
    names = sorted(s.name for s in test_spans.spans)
    assert names == ["block", "inside", "late", "next", "outer", "root"]
