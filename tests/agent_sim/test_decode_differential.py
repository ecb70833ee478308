"""agent-sim accepts (2xx) or rejects (4xx) a trace payload as Datadog does.

Hypothesis generates payload shapes — nil, ints, floats, bools, strings, bin,
maps and arrays at each level; nil traces and spans; missing fields and
fields of the wrong type; non-string span keys; v0.5 string tables with bad
entries and indexes; spans of the wrong length; trailing bytes — and each
body goes to a real ``agent-sim serve`` process and to Datadog's test agent
(``ddapm-test-agent``): v0.4 and v0.5 msgpack, and v0.4 JSON. The decisions
must agree; agent-sim never answers 500 and its 400s name the reason.

The test agent checks payloads with a test-only schema that is in places
stricter and in places looser than the Datadog Agent's own decoder
(``pkg/proto/pbgo/trace/decoder_bytes.go`` and ``decoder_v05.go`` in
DataDog/datadog-agent), which is what agent-sim follows. Those places are
the documented exceptions in ``EXCEPTIONS``: before asking the test agent,
``AgentView`` rewrites the payload the way the agent reads it (a nil field
becomes its zero value, ...) or decides "rejected" where the test agent does
not look (a string ``start``, ...). Every other disagreement fails the test.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from tests.agent_sim.test_cli import serving
from tests.agent_sim.test_fuzz import Client
from tests.tracer.test_wire_testagent import DatadogTestAgent
from tests.utils import real_part

EXCEPTIONS = {
    "nil-or-missing": "a nil or missing span field, meta value or metrics value, and a nil v0.5 string table "
                      "entry, take their zero value in the agent (parse*Bytes read nil as zero); the test agent "
                      "requires trace_id, span_id, name (and, when present, error, meta, metrics) to be set",
    "bin-or-bad-utf8": "strings may arrive as msgpack bin and invalid UTF-8 is repaired (parseStringBytes); the "
                       "test agent unpacks with raw=False and rejects both",
    "unknown-span-key": "the agent skips unknown span keys whatever they hold (msgp.Skip); the test agent's "
                        "unpack rejects a non-string map key or bad UTF-8 anywhere in the body",
    "start-duration-unchecked": "the agent reads start/duration with parseInt64Bytes (an integer or nil); the "
                                "test agent does not check them at all",
    "bool-is-not-an-integer": "the agent's integer readers reject a msgpack bool; the test agent's "
                              "isinstance(x, int) takes it (a Python bool is an int)",
    "v05-python-indexing": "a v0.5 string index is a uint32 for the agent; the test agent indexes a Python list, "
                           "so -1 means the last entry and True the second",
    "v05-non-array": "the agent reads the v0.5 string table, traces and each trace as arrays; the test agent "
                     "iterates whatever it gets (a string, a map)",
    "span-ids-renumbered": "not a decode difference: the test agent's trace printer loops forever (and stops "
                           "answering) on a span whose parent is itself, e.g. span_id 0 and parent_id 0; ids take no "
                           "part in the decision, so the test agent gets integer span ids 1, 2, ... and parent 0",
    "test-agent-crash": "the test agent answers 500 or drops the connection on a few JSON bodies (seen: a nil "
                        "trace beside a span whose metrics key is a lone surrogate escape): no reference decision "
                        "there, so only agent-sim's own rule holds (200, or 400 naming the reason; never 500)",
    "trailing-bytes": "agent-sim is stricter than both, deliberately: bytes after the payload mean the tracer's "
                      "framing is wrong (a count header that does not match what follows: the agent silently "
                      "drops the rest, the test agent logs an error and keeps what it decoded), so agent-sim "
                      "answers 400 naming them",
}
# Known differences where agent-sim agrees with the test agent but not with
# the agent (so they need no exception here): a bool metrics value is taken as
# 1.0/0.0 (the agent rejects it); start/duration/error beyond int64/int32 wrap
# (the agent rejects them); a v0.5 body must be exactly [strings, traces] (the
# agent ignores elements after the second); in JSON a negative id wraps to
# uint64 (Go's encoding/json rejects it).

INT64 = 1 << 63
IDS = ("trace_id", "span_id", "parent_id")
STRINGS = ("service", "name", "resource", "type")
ZERO: dict[str, Any] = {**dict.fromkeys(IDS, 0), **dict.fromkeys(STRINGS, ""), "start": 0, "duration": 0,
                        "error": 0, "meta": {}, "metrics": {}}
V05_INTEGERS = (*IDS, "start", "duration", "error")  # v0.5 span elements 3..8


class Rejected(Exception):
    """The agent rejects the payload where the test agent does not look."""


class AgentView:
    """The payload as the Datadog Agent reads it, in a form the test agent
    judges the same way (or Rejected); ``used`` names the exceptions applied."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def note(self, name: str) -> None:
        assert name in EXCEPTIONS, name  # each one documented
        self.used.add(name)

    def apply(self, name: str, value: Any) -> Any:
        self.note(name)
        return value

    def reject(self, name: str) -> Rejected:
        self.note(name)
        return Rejected(name)

    def string(self, value: Any) -> Any:
        if value is None:
            return self.apply("nil-or-missing", "")
        if type(value) is bytes:
            return self.apply("bin-or-bad-utf8", value.decode("utf-8", "replace"))
        return value  # a str, or what both reject

    def integer(self, field: str, value: Any) -> Any:
        if value is None:
            return self.apply("nil-or-missing", 0)
        if type(value) is bool:
            raise self.reject("bool-is-not-an-integer")
        if field in ("start", "duration") and type(value) is not int:
            raise self.reject("start-duration-unchecked")
        return value

    def metrics_value(self, value: Any) -> Any:
        return self.apply("nil-or-missing", 0.0) if value is None else value

    def v04(self, payload: Any) -> Any:
        if type(payload) is not list or any(type(t) is not list for t in payload):
            return payload  # both read the body and each trace as arrays
        return [[self.span_v04(span, i) for i, span in enumerate(trace)] for trace in payload]

    def renumber(self, span: Any, i: int, span_id: Any, parent_id: Any) -> Any:
        """``span`` (a copy) with span id i + 1 and parent 0 where both are integers."""
        if type(span[span_id]) is int and type(span[parent_id]) is int:
            if (span[span_id], span[parent_id]) != (i + 1, 0):
                self.note("span-ids-renumbered")
            span[span_id], span[parent_id] = i + 1, 0
        return span

    def span_v04(self, span: Any, i: int) -> Any:
        if type(span) is not dict or any(type(k) is not str for k in span):
            return span  # both reject
        if span.keys() - ZERO.keys():
            self.note("unknown-span-key")
        out = {}
        for field, zero in ZERO.items():
            value = span.get(field)
            if value is None:
                out[field] = self.apply("nil-or-missing", zero)
            elif field in STRINGS:
                out[field] = self.string(value)
            elif field == "meta" and type(value) is dict:
                out[field] = {self.string(k): self.string(v) for k, v in value.items()}
            elif field == "metrics" and type(value) is dict:
                out[field] = {self.string(k): self.metrics_value(v) for k, v in value.items()}
            elif field in ("meta", "metrics"):
                out[field] = value  # both reject
            else:
                out[field] = self.integer(field, value)
        return self.renumber(out, i, "span_id", "parent_id")

    def index(self, value: Any) -> Any:
        if type(value) is bool or (type(value) is int and value < 0):
            raise self.reject("v05-python-indexing")
        return value

    def v05(self, payload: Any) -> Any:
        if type(payload) is not list or len(payload) != 2:
            return payload  # both reject
        table, traces = payload
        if type(table) is not list or type(traces) is not list or any(type(t) is not list for t in traces):
            raise self.reject("v05-non-array")
        return [[self.string(s) for s in table], [[self.span_v05(span, i) for i, span in enumerate(trace)] for trace in traces]]

    def span_v05(self, span: Any, i: int) -> Any:
        if type(span) is not list or len(span) != 12:
            return span  # both reject
        meta, metrics = span[9], span[10]
        if type(meta) is dict:
            meta = {self.index(k): self.index(v) for k, v in meta.items()}
        if type(metrics) is dict:
            metrics = {self.index(k): self.metrics_value(v) for k, v in metrics.items()}
        out = [*map(self.index, span[:3]), *(self.integer(f, v) for f, v in zip(V05_INTEGERS, span[3:9], strict=True)),
               meta, metrics, self.index(span[11])]
        return self.renumber(out, i, 4, 5)


# -- payload shapes ---------------------------------------------------------------
NOW = time.time_ns()
ATOM = st.one_of(st.none(), st.booleans(), st.integers(-INT64, 2**64 - 1),
                 st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=4), st.binary(max_size=4))
ANY = st.recursive(ATOM, lambda inner: st.lists(inner, max_size=3)
                   | st.dictionaries(st.one_of(st.text(max_size=3), st.integers(0, 3)), inner, max_size=3),
                   max_leaves=5)
TEXT = st.one_of(st.text(max_size=6), st.binary(max_size=4))  # bin: valid or invalid UTF-8
UINT = st.integers(-INT64, 2**64 - 1)
NUMBER = st.one_of(UINT, st.floats(allow_nan=False, allow_infinity=False), st.booleans())


def rare(draw: st.DrawFn, one_in: int, kinds: int = 1) -> int:
    """0 most of the time, else 1..kinds, each about once in ``one_in`` draws.
    The rare values sit in the middle of the range: hypothesis favours its ends."""
    choice = draw(st.integers(1, one_in)) - one_in // 2 + 1
    return choice if 1 <= choice <= kinds else 0


def rarely(odd: st.SearchStrategy, usual: st.SearchStrategy, one_in: int = 25) -> st.SearchStrategy:
    return st.composite(lambda draw: draw(odd) if rare(draw, one_in) else draw(usual))()


TRAILING = rarely(st.binary(min_size=1, max_size=3), st.just(b""), one_in=10)


@st.composite
def shaped(draw: st.DrawFn, good: st.SearchStrategy, odd: int = 30) -> Any:
    """Mostly ``good``; one time in ``odd`` nil, and one in ``odd`` anything at all."""
    choice = rare(draw, odd, kinds=2)
    return None if choice == 1 else draw(ANY) if choice == 2 else draw(good)


ERROR = rarely(st.booleans(), st.integers(-1, 2), one_in=8)
V04_FIELDS = {
    **dict.fromkeys(IDS, UINT), **dict.fromkeys(STRINGS, TEXT),
    "start": st.integers(NOW - 10**12, NOW), "duration": st.integers(0, 10**9), "error": ERROR,
    "meta": st.dictionaries(st.one_of(TEXT, st.none()), st.one_of(TEXT, st.none()), max_size=3),
    "metrics": st.dictionaries(st.one_of(TEXT, st.none()), st.one_of(NUMBER, st.none()), max_size=3),
}


@st.composite
def span_v04(draw: st.DrawFn) -> Any:
    span: dict[Any, Any] = {}
    for field, good in V04_FIELDS.items():
        if not rare(draw, 20):  # else missing
            span[field] = draw(shaped(good))
    extra = rare(draw, 10, kinds=2)
    if extra == 1:
        span[draw(st.text(max_size=4))] = draw(ANY)  # an unknown key
    elif extra == 2:
        span[draw(st.integers(0, 3))] = draw(ANY)  # a key that is not a string
    return span


@st.composite
def listed(draw: st.DrawFn, item: st.SearchStrategy, max_size: int = 3) -> Any:
    """An array of ``item`` (each one sometimes anything), or sometimes not an array."""
    if rare(draw, 15):
        return draw(ANY)
    return draw(st.lists(shaped(item, odd=20), max_size=max_size))


PAYLOAD_V04 = listed(listed(span_v04()))


@st.composite
def payload_v05(draw: st.DrawFn) -> Any:
    table = draw(listed(TEXT, max_size=5))
    n = len(table) if type(table) is list else 2
    valid = st.integers(0, n - 1) if n else st.just(0)
    index = rarely(st.sampled_from([n, -1, -n, True, None]), valid)  # out of range, negative, bool, nil
    ints = [UINT] * 3 + [st.integers(NOW - 10**12, NOW), st.integers(0, 10**9), ERROR]
    span = st.tuples(*[shaped(index)] * 3, *map(shaped, ints),
                     shaped(st.dictionaries(index, index, max_size=2)),
                     shaped(st.dictionaries(index, st.one_of(NUMBER, st.none()), max_size=2)),
                     shaped(index)).map(list)
    span = st.one_of(span, span, span, span, span.map(lambda s: s[: len(s) - 1]))  # sometimes 11 elements
    payload = [table, draw(listed(listed(span)))]
    extra = rare(draw, 30, kinds=3)
    if extra == 1:
        return draw(ANY)
    return payload[:1] if extra == 2 else payload + [0] if extra == 3 else payload


SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# -- the two receivers ------------------------------------------------------------
class Receivers:
    def __init__(self, agent_sim: Client, test_agent: Client) -> None:
        self.agent_sim, self.test_agent = agent_sim, test_agent


@pytest.fixture(scope="module")
def receivers() -> Iterator[Receivers]:
    executable = real_part("DDAPM_TEST_AGENT", ["/opt/ddapm-venv/bin/ddapm-test-agent", "ddapm-test-agent"],
                           "ddapm-test-agent")
    test_agent = DatadogTestAgent(executable, checks="")  # its schema alone decides, no header checks
    try:
        with serving("--db", ":memory:") as (_proc, url):  # a real agent-sim process
            ours, theirs = Client(int(url.rsplit(":", 1)[1])), Client(test_agent.port)
            try:
                yield Receivers(ours, theirs)
            finally:
                ours.close()
                theirs.close()
            with urllib.request.urlopen(url + "/info", timeout=10) as resp:
                counters = json.loads(resp.read())["counters"]
            assert counters.get("internal_errors", 0) == 0 and counters.get("payloads_rejected", 0) > 0, counters
    finally:
        test_agent.stop()


MSGPACK = "application/msgpack"


def decide(rx: Receivers, version: str, payload: Any, bin_type: bool, trailing: bytes) -> None:
    body = msgpack.packb(payload, use_bin_type=bin_type) + trailing
    compare(rx, version, payload, body, MSGPACK, f"bin_type={bin_type}, trailing={trailing!r}", trailing != b"")


def compare(rx: Receivers, version: str, payload: Any, body: bytes, content_type: str, how: str,
            trailing: bool = False) -> None:
    """agent-sim's answer to ``body`` (``payload`` encoded) = the test agent's to the agent's view of it."""
    ours, reason = rx.agent_sim.put(f"/{version}/traces", body, content_type)
    assert ours == 200 or (ours == 400 and reason.startswith(f"{version}".encode())), (ours, reason)
    view = AgentView()
    try:
        if trailing:
            raise view.reject("trailing-bytes")
        seen = view.v04(payload) if version == "v0.4" else view.v05(payload)
    except Rejected:
        theirs, why = 400, b"(a documented exception: the agent rejects it)"
    else:
        if view.used:
            body = msgpack.packb(seen, use_bin_type=True) if content_type == MSGPACK else json.dumps(seen).encode()
        try:
            theirs, why = rx.test_agent.put(f"/{version}/traces", body, content_type)
        except (ConnectionError, http.client.HTTPException):
            theirs, why = 500, b"(connection dropped)"
        if theirs not in (200, 400):
            event("exception test-agent-crash")  # no reference decision; ours was checked above
            return
    for name in sorted(view.used):
        event(f"exception {name}")
    event(f"{'accepted' if theirs == 200 else 'rejected'}")
    assert ours == theirs, (f"{version} {content_type} {payload!r} ({how}): agent-sim {ours} {reason[:200]!r}, "
                            f"Datadog {theirs} {why[:200]!r}; exceptions {sorted(view.used)}")


def jsonable(value: Any) -> Any:
    """``value`` for json.dumps: bin becomes str, invalid UTF-8 as lone surrogates
    (sent as \\udcXX escapes); non-string map keys become JSON's strings."""
    if type(value) is bytes:
        return value.decode("utf-8", "surrogateescape")
    if type(value) is list:
        return [jsonable(v) for v in value]
    if type(value) is dict:
        return {jsonable(k): jsonable(v) for k, v in value.items()}
    return value


# Shapes that once disagreed, always tried (the first: a msgpack nil body).
SPAN = {"trace_id": 1, "span_id": 1, "parent_id": 0, "service": "s", "name": "n", "resource": "r", "type": "",
        "start": NOW, "duration": 1, "error": 0, "meta": {"k": "v"}, "metrics": {"m": 1}}
V04_SEEN = [None, [None], [[SPAN], None], [[{**SPAN, "trace_id": 1.0}]], [[{**SPAN, 7: "x"}]],
            [[{**SPAN, "error": True}]], [[{**SPAN, "start": "1"}]]]
TABLE = ["", "s", "n", "r", "k", "v", "m"]
SPAN_V05 = [1, 2, 3, 1, 1, 0, NOW, 1, 0, {4: 5}, {6: 1}, 0]
V05_SEEN = [[TABLE, [[[*SPAN_V05[:i], odd, *SPAN_V05[i + 1:]]]]]
            for i, odd in [(0, None), (9, None), (10, None), (3, 1.0), (8, True), (0, -1), (2, True)]]


def seen(shapes: list[Any], **fixed: Any) -> Any:
    def decorate(test: Any) -> Any:
        for shape in shapes:
            test = example(payload=shape, **fixed)(test)
        return test
    return decorate


@SETTINGS
@seen(V04_SEEN, bin_type=True, trailing=b"")
@given(payload=PAYLOAD_V04, bin_type=st.booleans(), trailing=TRAILING)
def test_v04_decisions_agree(receivers: Receivers, payload: Any, bin_type: bool, trailing: bytes) -> None:
    decide(receivers, "v0.4", payload, bin_type, trailing)


@SETTINGS
@seen(V05_SEEN, bin_type=True, trailing=b"")
@given(payload=payload_v05(), bin_type=st.booleans(), trailing=TRAILING)
def test_v05_decisions_agree(receivers: Receivers, payload: Any, bin_type: bool, trailing: bytes) -> None:
    decide(receivers, "v0.5", payload, bin_type, trailing)


@settings(SETTINGS, max_examples=150)
@seen([*V04_SEEN, [[{**SPAN, "service": "\ud800"}]]])  # a lone surrogate escape was a 500
@given(payload=PAYLOAD_V04)
def test_v04_json_decisions_agree(receivers: Receivers, payload: Any) -> None:
    body = json.dumps(jsonable(payload)).encode()
    compare(receivers, "v0.4", json.loads(body), body, "application/json", "json")
