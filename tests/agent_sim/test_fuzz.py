"""Bad input against a running receiver: each bad body gets a 4xx with a
reason, the server stays up, and a good payload afterwards is stored.

Property tests generate structured near-valid payloads (span maps whose
fields are sometimes of the wrong type, extra keys, nils, odd containers) and
mutate valid v0.4/v0.5 bodies byte-wise: random bytes alone would die at the
first byte and test nothing.
"""

from __future__ import annotations

import http.client
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.agent_sim.test_server import span
from tests.receiver import RunningReceiver

NOW = time.time_ns()
_ids = itertools.count(1_000_000)
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def rx() -> Iterator[RunningReceiver]:
    with RunningReceiver() as running:
        yield running


class Client:
    """One keep-alive connection, reopened after the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def put(self, path: str, body: bytes, content_type: str = "application/msgpack") -> tuple[int, bytes]:
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                self.conn.request("PUT", path, body, {"Content-Type": content_type})
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self.close()
                return resp.status, data
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@pytest.fixture(scope="module")
def client(rx: RunningReceiver) -> Iterator[Client]:
    c = Client(rx.port)
    yield c
    c.close()


def check_rejected(status: int, body: bytes) -> None:
    assert 400 <= status < 500, (status, body)
    assert len(body.strip()) > 5, "a 4xx must say why"


def check_good_still_stored(rx: RunningReceiver, client: Client) -> None:
    tid = next(_ids)
    status, body = client.put("/v0.4/traces", msgpack.packb([[span(tid, 1, service="after-bad")]]))
    assert status == 200, body
    assert rx.trace(str(tid))["spans"][0]["service"] == "after-bad"


BAD_BODIES = [
    ("/v0.4/traces", b"\x92\x91", "truncated"),
    ("/v0.4/traces", msgpack.packb({"a": 1}), "must be an array"),
    ("/v0.4/traces", msgpack.packb([[{"service": [1, 2]}]]), "service"),
    ("/v0.4/traces", msgpack.packb([[{"trace_id": "x", "span_id": 1}]]), "trace_id"),
    ("/v0.4/traces", b"\xdd\x7f\xff\xff\xff", "max_array_len"),
    ("/v0.4/traces", b"\x91\x91\xdf\x7f\xff\xff\xff", "max_map_len"),
    ("/v0.4/traces", b"\x91" * 100_000, "nesting"),
    ("/v0.5/traces", msgpack.packb([["a"], [[[9] + [0] * 8 + [{}, {}, 0]]]]), "out of range"),
    ("/v0.5/traces", msgpack.packb([["a"], [[[0] * 5]]]), "12 elements"),
    ("/v0.5/traces", msgpack.packb([[{}], []]), "string table entry"),
]


@pytest.mark.parametrize(("path", "body", "reason"), BAD_BODIES)
def test_bad_bodies(rx: RunningReceiver, client: Client, path: str, body: bytes, reason: str) -> None:
    status, reply = client.put(path, body)
    check_rejected(status, reply)
    assert reason.encode() in reply
    check_good_still_stored(rx, client)


def test_bad_json(rx: RunningReceiver, client: Client) -> None:
    status, reply = client.put("/v0.4/traces", b'[[{"trace_id": "1"}]', "application/json")
    check_rejected(status, reply)
    check_good_still_stored(rx, client)


def test_30_mib_body_is_413_and_server_stays_up(rx: RunningReceiver, client: Client) -> None:
    body = msgpack.packb([[span(1, 1, meta={"big": "x" * (30 * 1024 * 1024)})]])
    reply = b""
    with socket.create_connection(("127.0.0.1", rx.port), timeout=10) as sock:
        sock.sendall(b"PUT /v0.4/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))

        def pump() -> None:
            try:
                sock.sendall(body)
            except OSError:
                pass  # the server may close before taking it all; that is the point

        sender = threading.Thread(target=pump)
        sender.start()
        while True:  # until the server's FIN: it closes after a 413
            data = sock.recv(4096)
            if not data:
                break
            reply += data
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed by the server
        sender.join(10)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"payload too large" in reply
    check_good_still_stored(rx, client)


# -- property tests ------------------------------------------------------------
ANY = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
GOOD_FIELDS = {
    "trace_id": st.integers(min_value=0, max_value=2**64 - 1),
    "span_id": st.integers(min_value=0, max_value=2**64 - 1),
    "parent_id": st.integers(min_value=0, max_value=2**64 - 1),
    "service": st.text(max_size=120),
    "name": st.text(max_size=20),
    "resource": st.text(max_size=30),
    "type": st.sampled_from(["web", "sql", "", "http"]),
    "start": st.integers(min_value=-(2**63), max_value=2**63 - 1),
    "duration": st.integers(min_value=-(2**63), max_value=2**63 - 1),
    "error": st.integers(min_value=-5, max_value=5),
    "meta": st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=4),
    "metrics": st.dictionaries(st.text(max_size=10), st.integers(-(2**63), 2**64 - 1) | st.floats(), max_size=4),
}


@st.composite
def near_valid_span(draw: Any) -> dict[str, Any]:
    out: dict[Any, Any] = {}
    for field, good in GOOD_FIELDS.items():
        choice = draw(st.integers(0, 9))
        if choice == 0:
            continue  # missing
        out[field] = draw(ANY) if choice == 1 else draw(good)
    if draw(st.booleans()):
        out[draw(st.text(max_size=8))] = draw(ANY)
    return out


@st.composite
def near_valid_payload(draw: Any) -> Any:
    traces = draw(st.lists(st.lists(near_valid_span(), min_size=1, max_size=4), max_size=3))
    if draw(st.integers(0, 9)) == 0:
        return draw(ANY)
    if draw(st.integers(0, 9)) == 0 and traces:
        traces[0] = draw(ANY)
    return traces


def _accepted_or_rejected(rx: RunningReceiver, client: Client, path: str, body: bytes) -> None:
    status, reply = client.put(path, body)
    if status != 200:
        check_rejected(status, reply)


@SETTINGS
@given(payload=near_valid_payload())
def test_structured_near_valid_v04(rx: RunningReceiver, client: Client, payload: Any) -> None:
    _accepted_or_rejected(rx, client, "/v0.4/traces", msgpack.packb(payload, use_bin_type=True))
    check_good_still_stored(rx, client)


def _valid_v04() -> bytes:
    return msgpack.packb([[span(42, 1, meta={"http.status_code": "200", "_dd.p.tid": "0000aaaa00000000"},
                                metrics={"_dd.top_level": 1}),
                           span(42, 2, parent=1, service="db", type_="sql", resource="SELECT 1")]])


def _valid_v05() -> bytes:
    return msgpack.packb([["", "svc", "op", "res", "k", "v", "web"],
                          [[[1, 2, 3, 43, 1, 0, NOW, 5, 0, {4: 5}, {4: 1.0}, 6],
                            [1, 2, 3, 43, 2, 1, NOW, 5, 1, {}, {}, 6]]]])


MUTATION = st.tuples(st.sampled_from(["flip", "truncate", "insert", "delete", "set"]),
                     st.integers(0, 10_000), st.integers(0, 255))


def mutate(body: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(body)
    for op, pos, value in mutations:
        if not data:
            break
        i = pos % len(data)
        if op == "flip":
            data[i] ^= 1 << (value % 8)
        elif op == "truncate":
            del data[i:]
        elif op == "insert":
            data[i:i] = bytes([value])
        elif op == "delete":
            del data[i]
        else:
            data[i] = value
    return bytes(data)


@SETTINGS
@given(version=st.sampled_from(["v0.4", "v0.5"]), mutations=st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_valid_payloads(rx: RunningReceiver, client: Client, version: str,
                                mutations: list[tuple[str, int, int]]) -> None:
    body = mutate(_valid_v04() if version == "v0.4" else _valid_v05(), mutations)
    _accepted_or_rejected(rx, client, f"/{version}/traces", body)
    check_good_still_stored(rx, client)


def test_no_internal_errors_after_fuzzing(rx: RunningReceiver, client: Client) -> None:
    before = rx.info()["counters"].get("payloads_rejected", 0)
    path, body, _ = BAD_BODIES[0]
    check_rejected(*client.put(path, body))
    assert rx.info()["counters"].get("payloads_rejected", 0) == before + 1  # bad bodies reach the decoder
    rx.receiver.flush()  # stats built from fuzzed spans persist without error
    assert isinstance(rx.stats(), list)
    # Every 500 answered (and every failed maintenance pass) is counted: none
    # after everything this module threw at the receiver.
    assert rx.info()["counters"].get("internal_errors", 0) == 0
