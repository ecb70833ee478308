"""Sampler: deterministic decision, rules, rate limit, receiver rates, precedence."""

from __future__ import annotations

import random
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from tracer.buffer import TraceBuffer, _Trace
from tracer.sampler import (
    AUTO_KEEP,
    AUTO_REJECT,
    USER_KEEP,
    USER_REJECT,
    RateLimiter,
    Sampler,
    keeps,
    threshold,
)
from tracer.span import Span, new_span

# Hashes worked out by hand from low64 * 1111111111111111111 mod 2**64, as a
# share of 2**64-1: id 1 -> 0.0602334540, id 10 -> 0.602334540, id 17 wraps
# around the modulus: 18888888888888888887 - 2**64 = 442144815179337271 -> 0.0239687.
HASH_SHARE = {1: 0.0602334540, 10: 0.602334540, 17: 0.0239687185}


class _Sink:
    def write(self, trace: Any, chunk: list[Any]) -> None:
        pass


def make_root(
    trace_id: int = 1,
    name: str = "web.request",
    service: str = "web",
    resource: str | None = None,
    env: str | None = None,
) -> tuple[_Trace, Span]:
    trace = _Trace(TraceBuffer(_Sink()), trace_id, 0, 0)
    span = new_span(trace, trace_id, 7, 0, None, name, service, resource, None, 0, 0)
    trace.root = span
    if env:
        span.meta["env"] = env
    return trace, span


def make_sampler(clock: Any = None, **settings: Any) -> Sampler:
    cfg = SimpleNamespace(sampling_rules=[], sample_rate=None, rate_limit=100.0, env=None)
    for key, value in settings.items():
        setattr(cfg, key, value)
    return Sampler(cfg) if clock is None else Sampler(cfg, clock=clock)


def decide(sampler: Sampler, trace_id: int = 1, **root: Any) -> tuple[int | None, int | None, dict[str, float]]:
    trace, span = make_root(trace_id, **root)
    sampler.decide(trace, span)
    return trace.priority, trace.mechanism, span.metrics


@pytest.mark.parametrize(
    ("trace_id", "rate", "kept"),
    [
        (1, 0.0603, True),
        (1, 0.0602, False),
        (10, 0.6024, True),
        (10, 0.6023, False),
        (17, 0.0240, True),  # the product wrapped modulo 2**64
        (17, 0.0239, False),
        ((5 << 64) | 1, 0.0603, True),  # only the low 64 bits count
        ((5 << 64) | 1, 0.0602, False),
    ],
)
def test_decision_matches_hand_computed_hash(trace_id: int, rate: float, kept: bool) -> None:
    assert keeps(trace_id, threshold(rate)) is kept
    priority, mechanism, metrics = decide(make_sampler(sample_rate=rate), trace_id)
    assert (priority, mechanism) == ((USER_KEEP if kept else USER_REJECT), 3)
    assert metrics["_dd.rule_psr"] == rate


def test_hash_shares_are_what_the_table_says() -> None:
    for trace_id, share in HASH_SHARE.items():
        assert keeps(trace_id, threshold(share + 1e-9))
        assert not keeps(trace_id, threshold(share - 1e-9))


def test_rate_bounds_keep_all_or_nothing_and_share_is_close_to_rate() -> None:
    rng = random.Random(42)
    ids = [rng.getrandbits(128) | 1 for _ in range(4000)]
    assert all(keeps(i, threshold(1.0)) for i in ids)
    assert not any(keeps(i, threshold(0.0)) for i in ids)
    kept = sum(keeps(i, threshold(0.25)) for i in ids) / len(ids)
    assert 0.22 < kept < 0.28


def test_default_keeps_with_auto_keep_and_mechanism_0() -> None:
    assert decide(make_sampler())[:2] == (AUTO_KEEP, 0)


def test_rules_match_globs_on_root_service_name_resource() -> None:
    rules = [
        {"service": "pay?ents", "sample_rate": 0.0},
        {"name": "flask.*", "resource": "GET /health*", "sample_rate": 0.0},
        {"resource": "POST /users/<int:id>", "sample_rate": 1.0},
    ]
    sampler = make_sampler(sampling_rules=rules)
    assert decide(sampler, service="payments")[:2] == (USER_REJECT, 3)
    assert decide(sampler, service="PAYMENTS")[:2] == (USER_REJECT, 3)  # case-insensitive, like ddtrace
    assert decide(sampler, service="paymentss")[:2] == (AUTO_KEEP, 0)
    assert decide(sampler, name="flask.request", resource="GET /healthz")[:2] == (USER_REJECT, 3)
    assert decide(sampler, name="flask.request", resource="GET /users")[:2] == (AUTO_KEEP, 0)
    priority, mechanism, metrics = decide(sampler, resource="POST /users/<int:id>")
    assert (priority, mechanism, metrics["_dd.rule_psr"]) == (USER_KEEP, 3, 1.0)
    assert metrics["_dd.limit_psr"] == 1.0
    # resource defaults to the name, and regex metacharacters in globs are literal
    assert decide(make_sampler(sampling_rules=[{"resource": "a.b", "sample_rate": 0}]), name="axb")[0] == AUTO_KEEP


def test_first_matching_rule_wins() -> None:
    rules = [{"service": "web", "sample_rate": 0.0}, {"service": "*", "sample_rate": 1.0}]
    assert decide(make_sampler(sampling_rules=rules), service="web")[0] == USER_REJECT
    assert decide(make_sampler(sampling_rules=rules), service="db")[0] == USER_KEEP


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limit_applies_to_rule_matched_traces_only() -> None:
    clock = FakeClock()
    sampler = make_sampler(clock, sampling_rules=[{"service": "web", "sample_rate": 1.0}], rate_limit=3.0)
    results = [decide(sampler, i + 1, service="web")[0] for i in range(5)]
    assert results == [USER_KEEP] * 3 + [USER_REJECT] * 2
    *_, metrics = decide(sampler, 99, service="web")
    assert metrics["_dd.limit_psr"] == pytest.approx(3 / 6)
    # other services are not limited
    assert [decide(sampler, i + 1, service="other")[0] for i in range(5)] == [AUTO_KEEP] * 5
    # the bucket refills at rate_limit tokens per second
    clock.now += 1 / 3
    assert decide(sampler, 7, service="web")[0] == USER_KEEP
    assert decide(sampler, 8, service="web")[0] == USER_REJECT
    clock.now += 10  # never banks more than one second's worth
    assert [decide(sampler, i + 1, service="web")[0] for i in range(4)] == [USER_KEEP] * 3 + [USER_REJECT]


def test_rule_rejected_traces_do_not_spend_tokens() -> None:
    clock = FakeClock()
    sampler = make_sampler(clock, sampling_rules=[{"sample_rate": 0.05}], rate_limit=1.0)
    assert decide(sampler, 1)[0] == USER_REJECT  # hash share 0.060 > 0.05
    priority, _, metrics = decide(sampler, 17)  # share 0.024: kept, spends the only token
    assert priority == USER_KEEP and "_dd.limit_psr" in metrics
    assert decide(sampler, 17)[0] == USER_REJECT


def test_rate_limit_zero_rejects_rule_matches() -> None:
    assert decide(make_sampler(sampling_rules=[{"sample_rate": 1}], rate_limit=0.0))[0] == USER_REJECT


def test_explicit_rate_is_not_rate_limited() -> None:
    sampler = make_sampler(sample_rate=1.0, rate_limit=1.0)
    assert [decide(sampler, i + 1)[0] for i in range(5)] == [USER_KEEP] * 5


def test_receiver_rates_by_service_and_env_then_default_key() -> None:
    sampler = make_sampler(env="prod")
    sampler.update_rates({"service:web,env:prod": 0.0, "service:web,env:dev": 1.0, "service:,env:": 0.5})
    priority, mechanism, metrics = decide(sampler, service="web")
    assert (priority, mechanism, metrics["_dd.agent_psr"]) == (AUTO_REJECT, 1, 0.0)
    # the root's own env tag beats the configured one
    assert decide(sampler, service="web", env="dev")[:2] == (AUTO_KEEP, 1)
    # unknown service: default key at 0.5 (id 1 hashes to 0.06: kept, id 10 to 0.60: dropped)
    assert decide(sampler, 1, service="db")[:2] == (AUTO_KEEP, 1)
    *_, metrics = decide(sampler, 10, service="db")
    assert metrics["_dd.agent_psr"] == 0.5
    assert decide(sampler, 10, service="db")[:2] == (AUTO_REJECT, 1)


def test_receiver_rates_replaced_whole_and_bad_entries_skipped() -> None:
    sampler = make_sampler()
    sampler.update_rates({"service:web,env:": 0.0})
    assert decide(sampler, service="web")[0] == AUTO_REJECT
    sampler.update_rates({"service:web,env:": "nope", "service:,env:": 7})  # type: ignore[dict-item]
    assert decide(sampler, service="web")[:2] == (AUTO_KEEP, 0)
    sampler.update_rates(None)  # type: ignore[arg-type]
    assert decide(sampler, service="web")[:2] == (AUTO_KEEP, 0)


def test_precedence_rule_then_explicit_rate_then_receiver() -> None:
    sampler = make_sampler(sampling_rules=[{"service": "web", "sample_rate": 1.0}], sample_rate=0.0)
    sampler.update_rates({"service:,env:": 1.0})
    assert decide(sampler, service="web")[0] == USER_KEEP  # rule
    priority, _, metrics = decide(sampler, service="db")  # explicit rate beats the receiver
    assert (priority, metrics) == (USER_REJECT, {"_dd.rule_psr": 0.0})


def test_priority_set_by_headers_is_left_alone() -> None:
    trace, span = make_root()
    trace.priority = USER_REJECT
    make_sampler(sample_rate=1.0).decide(trace, span)
    assert (trace.priority, trace.mechanism, span.metrics) == (USER_REJECT, None, {})


def test_decide_once_per_trace_across_threads() -> None:
    clock = FakeClock()
    sampler = make_sampler(clock, sampling_rules=[{"sample_rate": 1.0}], rate_limit=5.0)
    trace, span = make_root()
    barrier = threading.Barrier(8)

    def run() -> None:
        barrier.wait()
        sampler.decide(trace, span)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert trace.priority == USER_KEEP
    # exactly one token was spent: four more traces still fit in the bucket of five
    assert [decide(sampler, i + 2)[0] for i in range(5)] == [USER_KEEP] * 4 + [USER_REJECT]


def test_limiter_after_fork_resets() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1.0, clock)
    assert limiter.allow() and not limiter.allow()
    limiter.after_fork_in_child()
    assert limiter.allow()


def test_invalid_rule_in_a_hand_built_config_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    sampler = make_sampler(sampling_rules=[{"service": "web"}, {"service": "web", "sample_rate": 0}])
    assert len(sampler.rules) == 1
    assert "ignoring sampling rule" in caplog.text


def test_global_tracer_chunks_carry_priority_and_mechanism(test_spans: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from tracer import tracer

    monkeypatch.setattr(tracer, "_sampler", None)  # a fresh sampler from the (default) config
    tracer.sampler.update_rates({"service:svc-dropped,env:": 0.0})
    with tracer.trace("root", service="svc-kept"), tracer.trace("child"):
        pass
    with tracer.trace("root", service="svc-dropped"):
        pass
    kept, dropped = test_spans.processed()
    assert [s.name for s in kept] == ["child", "root"]
    assert kept[0].metrics["_sampling_priority_v1"] == AUTO_KEEP
    assert kept[0].meta["_dd.p.dm"] == "-0"
    assert dropped[0].metrics["_sampling_priority_v1"] == AUTO_REJECT
    assert dropped[0].metrics["_dd.agent_psr"] == 0.0
    assert "_dd.p.dm" not in dropped[0].meta


@pytest.mark.parametrize(
    "rates",
    [{}, {"service:web,env:": 0.5}, {"service:,env:": 0.3}, {"service:web,env:prod": 0.0, "service:,env:": 1.0}],
)
def test_default_decisions_without_the_lock_are_the_general_ones(rates: dict[str, float]) -> None:
    """No rules and no explicit rate: ``decide`` takes its lock-free path and
    reaches what the general (locked) computation reaches, metrics included."""
    sampler = make_sampler()
    sampler.update_rates(rates)
    for trace_id in [1, 10, 17, (5 << 64) | 3, *range(1000, 1400, 7)]:
        for service, env in [("web", None), ("web", "prod"), ("db", None)]:
            trace, span = make_root(trace_id, service=service, env=env)
            sampler.decide(trace, span)
            _, general = make_root(trace_id, service=service, env=env)
            assert (trace.priority, trace.mechanism) == sampler._decide(trace_id, general)
            assert span.metrics == general.metrics


@pytest.mark.parametrize("settings", [{}, {"sample_rate": 0.5}, {"sampling_rules": [{"sample_rate": 1.0}]}])
def test_only_rules_and_an_explicit_rate_take_the_lock(settings: dict[str, Any]) -> None:
    """While another thread holds the sampler's lock, a default decision is
    made at once; one with rules or an explicit rate waits for the lock."""
    sampler = make_sampler(**settings)
    sampler.update_rates({"service:,env:": 1.0})
    trace, span = make_root()
    thread = threading.Thread(target=sampler.decide, args=(trace, span))
    with sampler._lock:
        thread.start()
        thread.join(0.5)
        waited = thread.is_alive()
    thread.join(5)
    assert waited is bool(settings)
    assert trace.priority is not None


def test_concurrent_default_decisions_agree_while_the_rates_change() -> None:
    """Threads deciding the same traces while the receiver's rates flip
    between keep-all and drop-all: each trace gets one decision, the one
    every caller reads right after its own ``decide`` (never replaced)."""
    import sys

    sampler = make_sampler()
    traces = [make_root(trace_id) for trace_id in range(1, 3001)]
    seen: list[list[int | None]] = [[] for _ in range(4)]
    stop = threading.Event()
    barrier = threading.Barrier(5)

    def flip() -> None:
        barrier.wait()
        while not stop.is_set():
            sampler.update_rates({"service:,env:": 0.0})
            sampler.update_rates({"service:,env:": 1.0})

    def run(out: list[int | None]) -> None:
        barrier.wait()
        for trace, span in traces:
            sampler.decide(trace, span)
            out.append(trace.priority)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=flip)] + [threading.Thread(target=run, args=(out,)) for out in seen]
        for t in threads:
            t.start()
        for t in threads[1:]:
            t.join()
        stop.set()
        threads[0].join()
    finally:
        sys.setswitchinterval(interval)
    final = [trace.priority for trace, _ in traces]
    assert all(out == final for out in seen)
    assert set(final) <= {AUTO_KEEP, AUTO_REJECT}


@pytest.mark.parametrize("rate", [0.0, 1e-12, 0.1, 1 / 3, 0.5, 0.7, 0.999999, 1.0])
def test_integer_bound_decides_as_ddtraces_float_comparison(rate: float) -> None:
    """``threshold`` is the floor of ``rate * (2**64-1)``: for the hashes at,
    just below and just above it, the decision is ddtrace's float comparison."""
    inverse = pow(1111111111111111111, -1, 1 << 64)
    bound = rate * ((1 << 64) - 1)
    edge = int(bound)
    for h in (edge - 1, edge, edge + 1, 0, (1 << 64) - 1):
        h %= 1 << 64
        trace_id = (h * inverse) % (1 << 64)
        assert (trace_id * 1111111111111111111) % (1 << 64) == h
        assert keeps(trace_id, threshold(rate)) is (h <= bound), (rate, h)
        assert keeps((3 << 64) | trace_id, threshold(rate)) is (h <= bound)


def test_rate_lookups_are_remembered_per_rates_snapshot() -> None:
    """The (service, env) lookups made in the receiver's rates are kept with
    those rates only: new rates are looked up again; an unhashable env tag is
    looked up each time."""
    sampler = make_sampler()
    sampler.update_rates({"service:web,env:": 0.0, "service:,env:": 1.0})
    assert [decide(sampler, service="web")[0] for _ in range(2)] == [AUTO_REJECT] * 2
    sampler.update_rates({"service:web,env:": 1.0, "service:,env:": 0.0})
    assert decide(sampler, service="web")[:2] == (AUTO_KEEP, 1)
    assert decide(sampler, service="db")[:2] == (AUTO_REJECT, 1)
    trace, span = make_root(service="web")
    span.meta["env"] = ["not", "hashable"]  # type: ignore[assignment]
    for _ in range(2):
        trace.priority = None
        sampler.decide(trace, span)
        assert (trace.priority, span.metrics["_dd.agent_psr"]) == (AUTO_REJECT, 0.0)
