"""set_tag in pure Python, and the C span's slow path (``_set_tag_slow``):
a str value under a key already seen within MAX_KEY_LEN goes straight into
meta, by a set membership test instead of len() on the key
(tracer.span._SHORT_KEYS). The pure-Python set_tag keeps a str value whole
(its encoders cut one past MAX_VALUE_LEN); the slow path the C span calls
cuts it, as the C set_tag does. Checked against the rules written out
plainly, for every kind of key and value, with the set empty, filled and full."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tracer.span as span_module
from tracer.span import MAX_KEY_LEN, MAX_VALUE_LEN, Span, _SpanBase


class Key(str):
    pass


def rules(meta: dict[Any, Any], metrics: dict[Any, Any], key: Any, value: Any, whole: bool) -> None:
    """What set_tag does, as the docstring says it (no fast path); ``whole``:
    a str value is kept whole (the pure-Python set_tag)."""
    if len(key) > MAX_KEY_LEN:
        key = key[:MAX_KEY_LEN]
    if type(value) is str:
        meta[key] = value if whole else value[:MAX_VALUE_LEN]
    elif type(value) in (int, float) and key != "http.status_code":
        metrics[key] = value
    elif value is None:
        meta.pop(key, None)
        metrics.pop(key, None)
    elif type(value) is bool:
        meta[key] = "true" if value else "false"
    else:
        meta[key] = str(value)[:MAX_VALUE_LEN]


def bare_span() -> _SpanBase:
    span = _SpanBase.__new__(_SpanBase)
    span.meta = {}
    span.metrics = {}
    return span


short = st.text(min_size=0, max_size=4)
keys = st.one_of(
    short,
    st.sampled_from(["k" * (MAX_KEY_LEN - 1), "k" * MAX_KEY_LEN, "k" * (MAX_KEY_LEN + 1), "k" * 500]),
    short.map(Key),
    st.sampled_from(["http.status_code", Key("k" * (MAX_KEY_LEN + 1))]),
)
values = st.one_of(
    short,
    st.sampled_from(["v" * MAX_VALUE_LEN, "v" * (MAX_VALUE_LEN + 1)]),
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(
    pairs=st.lists(st.tuples(keys, values), max_size=12),
    limit=st.sampled_from([0, 2, 4096]),
    whole=st.booleans(),
)
def test_set_tag_follows_the_rules_whatever_keys_were_seen(
    pairs: list[tuple[Any, Any]], limit: int, whole: bool
) -> None:
    set_tag = _SpanBase.set_tag if whole else Span._set_tag_slow
    saved, before = span_module._SHORT_KEYS_MAX, set(span_module._SHORT_KEYS)
    span_module._SHORT_KEYS_MAX = limit
    try:
        # Twice over: the second time round every key has been seen once.
        span, meta, metrics = bare_span(), {}, {}
        for key, value in pairs + pairs:
            set_tag(span, key, value)
            rules(meta, metrics, key, value, whole)
            assert (span.meta, span.metrics) == (meta, metrics), (key, value)
            assert [type(k) for k in span.meta] == [type(k) for k in meta]
        assert all(type(k) is str and len(k) <= MAX_KEY_LEN for k in span_module._SHORT_KEYS)
        assert len(span_module._SHORT_KEYS) <= max(limit, len(before))
    finally:
        span_module._SHORT_KEYS_MAX = saved
        span_module._SHORT_KEYS.clear()
        span_module._SHORT_KEYS.update(before)


@pytest.mark.parametrize("key", ["x" * (MAX_KEY_LEN + 1), Key("k" * (MAX_KEY_LEN + 5))])
def test_a_long_key_is_cut_every_time(key: str) -> None:
    span = bare_span()
    for _ in range(3):
        span.set_tag(key, "v")
    assert span.meta == {key[:MAX_KEY_LEN]: "v"}
    assert key not in span_module._SHORT_KEYS


def test_a_seen_key_takes_the_common_path_and_the_set_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(span_module, "_SHORT_KEYS", set())
    monkeypatch.setattr(span_module, "_SHORT_KEYS_MAX", 2)
    span = bare_span()
    for key in ("a", "b", "c"):
        span.set_tag(key, "v")
    assert sorted(span_module._SHORT_KEYS) == ["a", "b"]
    # The common path calls no len() (it called it on the key, then on the
    # value); a key not in the set still has its length checked.
    assert c_calls(lambda: span.set_tag("a", "w")) == []
    assert c_calls(lambda: span.set_tag("c", "w")).count("len") == 3
    assert span.meta == {"a": "w", "b": "v", "c": "w"}


def c_calls(fn: Any) -> list[str]:
    """The builtins ``fn()`` called (set_tag runs as Python code here)."""
    names: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "c_call":
            names.append(arg.__name__)

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return [n for n in names if n != "setprofile"]
