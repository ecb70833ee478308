from __future__ import annotations

import pytest

from tracer import tracer
from tracer.span import MAX_KEY_LEN, MAX_STACK_LEN, MAX_VALUE_LEN, SPAN_FIELDS, _cspan


def test_set_tag_routes_by_type(test_spans):
    with tracer.trace("op") as span:
        span.set_tag("s", "v")
        span.set_tag("n", 3)
        span.set_tag("f", 1.5)
        span.set_tag("b", True)
        span.set_tag("http.status_code", 200)
        span.set_tag("o", object.__new__(type("Thing", (), {"__str__": lambda self: "thing"})))
        span.set_tags({"k1": "a", "k2": 2})
        span.set_metric("m", 4)
        span.set_metric("bad", "not a number")
    assert span.meta == {"s": "v", "b": "true", "http.status_code": "200", "o": "thing", "k1": "a"}
    assert span.metrics == {"n": 3, "f": 1.5, "k2": 2, "m": 4, "_dd.top_level": 1}, "a root is top-level"
    span.set_tag("s", None)
    assert "s" not in span.meta


def test_limits_truncate(test_spans):
    with tracer.trace("op") as span:
        span.set_tag("k" * 500, "v" * (MAX_VALUE_LEN + 10))
        span.set_metric("m" * 500, 1)
    ((key, value),) = span.meta.items()
    # The pure-Python span keeps a long str value whole; its encoder cuts it
    # (tests/tracer/test_encoding_cut.py).
    assert len(key) == MAX_KEY_LEN and len(value) == MAX_VALUE_LEN + (10 if _cspan is None else 0)
    assert list(span.metrics) == ["m" * MAX_KEY_LEN, "_dd.top_level"]


def test_resource_defaults_to_name_and_ids(test_spans):
    with tracer.trace("op", service="svc", span_type="web") as span:
        pass
    assert (span.name, span.resource, span.service, span.span_type) == ("op", "op", "svc", "web")
    assert span.trace_id >> 96 > 0, "upper 32 bits carry unix seconds"
    assert (span.trace_id >> 64) & 0xFFFFFFFF == 0
    assert 0 < span.span_id < 2**64 and span.parent_id == 0


def test_finish_is_idempotent_and_duration_monotonic(test_spans):
    span = tracer.start_span("op")
    span.finish()
    duration = span.duration_ns
    span.finish()
    assert span.duration_ns == duration >= 0
    assert [s.name for s in test_spans.spans] == ["op"]


def test_finish_with_explicit_time(test_spans):
    span = tracer.start_span("op")
    span.finish(finish_time_ns=span.start_ns + 1234)
    assert span.duration_ns == 1234


def test_exception_marks_span_and_propagates_unchanged(test_spans):
    error = KeyError("missing")
    with pytest.raises(KeyError) as info, tracer.trace("op") as span:
        raise error
    assert info.value is error
    assert span.error == 1
    assert span.meta["error.type"] == "builtins.KeyError"
    assert span.meta["error.message"] == "'missing'"
    assert "raise error" in span.meta["error.stack"]


def test_error_type_is_module_and_name_and_stack_bounded(test_spans):
    class Boom(Exception):
        pass

    def recurse(n):
        if n == 0:
            raise Boom("x" * 10000)
        recurse(n - 1)

    with pytest.raises(Boom), tracer.trace("op") as span:
        recurse(200)
    # ddtrace writes __module__.__name__ (not the __qualname__ of a nested class)
    assert span.meta["error.type"] == f"{__name__}.Boom"
    assert len(span.meta["error.stack"]) <= MAX_STACK_LEN + 3


def test_unprintable_exception_still_recorded(test_spans):
    class Weird(Exception):
        def __str__(self):
            raise RuntimeError("no")

    with pytest.raises(Weird), tracer.trace("op") as span:
        raise Weird()
    assert span.meta["error.message"] == "<unprintable exception>"


def test_every_slot_is_set_on_every_construction_path(test_spans):
    # Tracer.trace() builds child spans inline (no __init__ call): a slot it
    # forgets would raise AttributeError on first read.
    with tracer.trace("root") as root:
        with tracer.trace("child") as child:
            other = tracer.start_span("started", child_of=child)
            other.finish()
        fresh = tracer.start_span("new trace")
        fresh.finish()
    for span in (root, child, other, fresh):
        for field in SPAN_FIELDS:
            getattr(span, field)
    assert [s.name for s in test_spans.spans] == ["new trace", "started", "child", "root"]


def test_finish_and_with_block_give_the_same_record(test_spans):
    # The C Span.__exit__ repeats _SpanBase.__exit__ (_cspan.c finish_record), and finish()
    # goes through the Python one (the C span's too, given an end time): both must build the same record.
    with tracer.trace("root", service="a") as root:
        with tracer.trace("with", service="b", resource="r", span_type="t") as inside:
            inside.set_tag("k", "v")
            inside.set_metric("m", 2)
        other = tracer.start_span("finish", child_of=root, service="b", resource="r", span_type="t")
        other.set_tag("k", "v")
        other.set_metric("m", 2)
        other.finish()
    by_name = {s.name: s for s in test_spans.spans}
    via_with, via_finish = by_name["with"], by_name["finish"]
    assert via_with._replace(name="", span_id=0, start_ns=0, duration_ns=0) == via_finish._replace(
        name="", span_id=0, start_ns=0, duration_ns=0
    )
    assert via_with.metrics == {"m": 2, "_dd.top_level": 1}, "service differs from the parent's"
    assert by_name["root"].metrics["_dd.top_level"] == 1


def test_methods_take_keyword_arguments_and_copy_works_in_both_versions(test_spans):
    # The C methods (tracer/_cspan.c) took positional arguments only, and
    # copy.copy failed on the C span: the same calls must work on both paths.
    import copy

    with tracer.trace("kw") as span:
        span.set_tag(key="k", value="v")
        span.set_tag("k2", value=2)
        span.set_metric(value=1.5, key="m")
        with pytest.raises(TypeError, match="multiple values|unexpected"):
            span.set_tag("a", key="b")
        with pytest.raises(TypeError, match="unexpected keyword"):
            span.set_tag("a", vaue="b")
        with pytest.raises(TypeError, match="missing"):
            span.set_metric("a")
        with pytest.raises(TypeError):
            span.set_tag("a", "b", "c")
        twin = copy.copy(span)
        assert type(twin) is type(span)
        assert (twin.span_id, twin.trace_id, twin.name, twin.meta) == (span.span_id, span.trace_id, "kw", span.meta)
        assert twin.meta is span.meta, "shallow, as Python copies a slotted object"
    inner = tracer.trace("exit-kw")
    inner.__enter__()
    inner.__exit__(exc_type=None, exc_value=None, tb=None)
    assert inner.finished
    [chunk] = test_spans.chunks[-1:]
    assert chunk[0].name == "exit-kw"
    kw = [s for c in test_spans.chunks for s in c if s.name == "kw"][0]
    assert kw.meta["k"] == "v" and kw.metrics["k2"] == 2 and kw.metrics["m"] == 1.5


class _Text(str):
    pass


def test_set_tag_fast_path_follows_the_rules_at_every_limit(test_spans):
    # Differential: set_tag's fast path (a str value within both limits) and
    # its slow path against the rules written out, on each side of each limit.
    keys = ["k" * n for n in (1, MAX_KEY_LEN - 1, MAX_KEY_LEN, MAX_KEY_LEN + 1)]
    values = ["", "v"] + ["v" * n for n in (MAX_VALUE_LEN - 1, MAX_VALUE_LEN, MAX_VALUE_LEN + 1)]
    with tracer.trace("op") as span:
        for key in keys:
            for value in values + [_Text(v) for v in values]:
                span.meta.clear()
                span.metrics.clear()
                span.metrics[key[:MAX_KEY_LEN]] = 1  # a str tag leaves a metric of the same key alone
                span.set_tag(key, value)
                # The pure-Python span keeps an exact str whole (the encoder
                # cuts it); a str subclass is made a str, and that is cut.
                kept = value if _cspan is None and type(value) is str else value[:MAX_VALUE_LEN]
                assert span.meta == {key[:MAX_KEY_LEN]: kept}, (len(key), len(value), type(value))
                assert type(span.meta[key[:MAX_KEY_LEN]]) is str
                assert span.metrics == {key[:MAX_KEY_LEN]: 1}


def test_hot_paths_read_the_active_span_without_binding_a_method():
    # ACTIVE_SPAN.get() in a module that imports ACTIVE_SPAN compiles (3.11,
    # 3.12) to an attribute load that binds a new method object per call; the
    # pure-Python hot paths call tracer.context.get_active/set_active instead.
    import dis

    from tracer._tracer import Tracer
    from tracer.span import _SpanBase

    for fn in (_SpanBase.__exit__, _SpanBase.finish, Tracer._trace_py):
        loads = [i.argval for i in dis.get_instructions(fn) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")]
        assert "ACTIVE_SPAN" not in loads, fn.__qualname__
        assert "get_active" in loads or "set_active" in loads, fn.__qualname__
