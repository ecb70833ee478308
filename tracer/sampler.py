"""Trace sampling: decides once per trace whether it is kept, and how.

Precedence (DESIGN "Sampling"), first that applies:

1. a ``TRACER_SAMPLING_RULES`` rule matching the local root span (``*``/``?``
   globs on service, name, resource), then the ``TRACER_RATE_LIMIT`` token
   bucket, applied to rule-matched traces only;
2. an explicitly set ``TRACER_SAMPLE_RATE`` (not rate-limited);
3. the receiver's ``rate_by_service`` for the root's (service, env), else its
   default key ``service:,env:``;
4. keep (rate 1.0).

The keep decision is deterministic on the low 64 bits of the trace id, with
the hash Datadog's agent and tracers use, so every service of a distributed
trace that samples at the same rate reaches the same decision.

Priorities and ``_dd.p.dm`` mechanisms are ddtrace's: default and receiver
rates give AUTO_KEEP 1 / AUTO_REJECT 0 (mechanism 0 default, 1 receiver
rate); rules and the explicit rate give USER_KEEP 2 / USER_REJECT -1
(mechanism 3).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tracer.buffer import _Trace
    from tracer.span import Span

log = logging.getLogger("tracer")

USER_REJECT = -1
AUTO_REJECT = 0
AUTO_KEEP = 1
USER_KEEP = 2

MECHANISM_DEFAULT = 0
MECHANISM_AGENT_RATE = 1
MECHANISM_RULE = 3

KNUTH_FACTOR = 1111111111111111111
_MASK64 = (1 << 64) - 1
DEFAULT_KEY = "service:,env:"
_MEMO_MAX = 4096  # (service, env) pairs remembered per rates snapshot


def threshold(rate: float) -> int:
    """The hash bound for ``rate``: ddtrace compares ``hash <= rate * (2**64-1)``
    as a float, so rate 1.0 keeps every id and rate 0.0 keeps none. The hash
    is an int and Python compares int with float exactly, so the float's floor
    decides the same, and an int comparison costs a third of the time."""
    return math.floor(rate * _MASK64)


def keeps(trace_id: int, bound: int) -> bool:
    """The agent's deterministic decision for a trace id against ``threshold(rate)``."""
    return ((trace_id & _MASK64) * KNUTH_FACTOR) & _MASK64 <= bound


def _glob(pattern: Any) -> re.Pattern[str] | None:
    """Compile a ``*``/``?`` glob (case-insensitive, like ddtrace's matcher);
    ``None`` for a missing field or a bare ``*`` (matches everything)."""
    if pattern is None:
        return None
    pattern = str(pattern)
    if pattern.strip("*") == "" and pattern:
        return None
    parts = []
    for ch in pattern:
        if ch == "*":
            parts.append(".*")
        elif ch == "?":
            parts.append(".")
        else:
            parts.append(re.escape(ch))
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


class SamplingRule:
    """One entry of ``TRACER_SAMPLING_RULES``, matched against a root span."""

    __slots__ = ("service", "name", "resource", "rate", "bound")

    def __init__(self, sample_rate: float, service: Any = None, name: Any = None, resource: Any = None) -> None:
        self.rate = min(1.0, max(0.0, float(sample_rate)))
        self.bound = threshold(self.rate)
        self.service = _glob(service)
        self.name = _glob(name)
        self.resource = _glob(resource)

    def matches(self, root: Span) -> bool:
        for pattern, value in ((self.service, root.service), (self.name, root.name), (self.resource, root.resource)):
            if pattern is not None and pattern.fullmatch(value or "") is None:
                return False
        return True

    def __repr__(self) -> str:
        fields = {k: getattr(self, k) for k in ("service", "name", "resource")}
        shown = ", ".join(f"{k}={v.pattern!r}" for k, v in fields.items() if v is not None)
        return f"SamplingRule(rate={self.rate}{', ' if shown else ''}{shown})"


class RateLimiter:
    """Token bucket: ``rate`` tokens per second, at most ``rate`` banked.

    Thread-safe. ``effective_rate()`` is the share of requests allowed over
    the current and previous one-second windows (ddtrace's ``_dd.limit_psr``).
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._tokens = self.rate
        self._last = self._clock()
        self._window = int(self._last)
        self._allowed = 0
        self._total = 0
        self._prev_rate: float | None = None

    def allow(self) -> bool:
        with self._lock:
            now = self._clock()
            if self.rate <= 0:
                allowed = False
            else:
                elapsed = now - self._last
                if elapsed > 0:
                    self._tokens = min(self.rate, self._tokens + elapsed * self.rate)
                self._last = now
                allowed = self._tokens >= 1.0
                if allowed:
                    self._tokens -= 1.0
            window = int(now)
            if window != self._window:
                # Only the window just before counts; an idle gap forgets history.
                if window == self._window + 1 and self._total:
                    self._prev_rate = self._allowed / self._total
                else:
                    self._prev_rate = None
                self._window = window
                self._allowed = 0
                self._total = 0
            self._total += 1
            if allowed:
                self._allowed += 1
            return allowed

    def effective_rate(self) -> float:
        with self._lock:
            current = self._allowed / self._total if self._total else 1.0
            if self._prev_rate is None:
                return current
            return (current + self._prev_rate) / 2

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # the parent's may have been held at fork time
        self._reset()


class Sampler:
    """The per-process sampler, built from the configuration at creation.

    ``decide`` runs on the writer thread (``tracer.processor``) or on an app
    thread (``propagation.inject`` needs the decision before sending headers);
    it never blocks beyond two short locks (none in the default case) and
    never raises for bad input.
    """

    def __init__(self, config: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.rules: list[SamplingRule] = []
        for raw in getattr(config, "sampling_rules", None) or ():
            try:
                self.rules.append(
                    SamplingRule(raw["sample_rate"], raw.get("service"), raw.get("name"), raw.get("resource"))
                )
            except Exception as exc:  # config validated it; a hand-built config may not be
                log.warning("tracer: ignoring sampling rule %r: %s", raw, exc)
        rate = getattr(config, "sample_rate", None)
        self.sample_rate: float | None = None if rate is None else min(1.0, max(0.0, float(rate)))
        self._sample_bound = threshold(self.sample_rate) if self.sample_rate is not None else 0
        self.env: str | None = getattr(config, "env", None)
        self.limiter = RateLimiter(float(getattr(config, "rate_limit", 100.0)), clock)
        # The receiver's rates, key -> (rate, bound), and the lookups made in
        # them, keyed (service, env): replaced whole by update_rates, read
        # and filled without a lock.
        self._rates: tuple[dict[str, tuple[float, int]], dict[Any, tuple[float, int] | None]] = ({}, {})
        self._lock = threading.Lock()

    def decide(self, trace: _Trace, root: Span) -> None:
        """Set ``trace.priority`` and ``trace.mechanism`` unless already set
        (by propagated headers or an earlier call). Exactly once per trace:
        with rules or an explicit rate, the sampler's lock makes concurrent
        callers agree and the rate limiter sees each trace once. Without them
        (the default) the decision needs no lock: it depends only on the trace
        id, the root and the receiver's rates, an immutable snapshot (see
        below). Sampling metrics go on ``root.metrics``."""
        if trace.priority is not None:
            return
        if self.rules or self.sample_rate is not None:
            # The rate limiter must see each trace once: one decision at a time.
            with self._lock:
                if trace.priority is not None:
                    return
                priority, mechanism = self._decide(trace.trace_id, root)
                trace.mechanism = mechanism
                trace.priority = priority  # last: readers check priority without the lock
            return
        # The default: no rules, no explicit rate, no rate limiter. Callers on
        # two threads (the writer, an app thread's ``inject``) compute the same
        # decision from the same snapshot; the check and the two stores below
        # call nothing, so no other thread runs between them (GIL), and a
        # decision already made is never replaced.
        rates = self._rates
        if rates[0]:
            priority, mechanism = self._by_rates(rates, trace.trace_id, root)
        else:
            priority, mechanism = AUTO_KEEP, MECHANISM_DEFAULT
        if trace.priority is None:
            trace.mechanism = mechanism
            trace.priority = priority

    def default_decision(self) -> tuple[int, int] | None:
        """``(priority, mechanism)`` that ``decide`` gives every undecided
        trace while the sampler is as it is now, when that does not depend on
        the trace (no rules, no explicit rate, no receiver rates: keep);
        else None. The writer reads it once per batch: it is the thread that
        updates the rates, between batches."""
        if self.rules or self.sample_rate is not None or self._rates[0]:
            return None
        return AUTO_KEEP, MECHANISM_DEFAULT

    def _decide(self, trace_id: int, root: Span) -> tuple[int, int]:
        metrics = root.metrics
        for rule in self.rules:
            if rule.matches(root):
                metrics["_dd.rule_psr"] = rule.rate
                if not keeps(trace_id, rule.bound):
                    return USER_REJECT, MECHANISM_RULE
                allowed = self.limiter.allow()
                metrics["_dd.limit_psr"] = self.limiter.effective_rate()
                return (USER_KEEP if allowed else USER_REJECT), MECHANISM_RULE
        if self.sample_rate is not None:
            metrics["_dd.rule_psr"] = self.sample_rate
            return (USER_KEEP if keeps(trace_id, self._sample_bound) else USER_REJECT), MECHANISM_RULE
        rates = self._rates
        if rates[0]:
            return self._by_rates(rates, trace_id, root)
        return AUTO_KEEP, MECHANISM_DEFAULT

    def _by_rates(self, rates: tuple[dict[str, Any], dict[Any, Any]], trace_id: int, root: Span) -> tuple[int, int]:
        """The decision by the receiver's rates (a non-empty snapshot, with
        the lookups already made in it: no key formatted per trace)."""
        service = root.service
        env = root.meta.get("env") or self.env or ""
        try:
            found = rates[1][service, env]
        except (KeyError, TypeError):
            found = self._rate_for(rates, service, env)
        if found is None:
            return AUTO_KEEP, MECHANISM_DEFAULT
        rate, bound = found
        root.metrics["_dd.agent_psr"] = rate
        return (AUTO_KEEP if keeps(trace_id, bound) else AUTO_REJECT), MECHANISM_AGENT_RATE

    @staticmethod
    def _rate_for(rates: tuple[dict[str, Any], dict[Any, Any]], service: Any, env: Any) -> tuple[float, int] | None:
        """The rate for ``service:S,env:E``, else the default key; remembered
        for the next trace (up to _MEMO_MAX pairs, hashable ones only)."""
        by_key, memo = rates
        found = by_key.get(f"service:{service or ''},env:{env}") or by_key.get(DEFAULT_KEY)
        try:
            if len(memo) < _MEMO_MAX:
                memo[service, env] = found
        except TypeError:  # an unhashable tag value: looked up each time
            pass
        return found  # type: ignore[no-any-return]

    def update_rates(self, rate_by_service: dict[str, float]) -> None:
        """Adopt the receiver's ``rate_by_service`` (writer thread). Bad
        entries are skipped; an empty reply clears the rates."""
        rates: dict[str, tuple[float, int]] = {}
        try:
            items = list(rate_by_service.items())
        except Exception:
            log.debug("tracer: ignoring rate_by_service %r", rate_by_service)
            return
        for key, value in items:
            try:
                rate = float(value)
            except (TypeError, ValueError):
                continue
            if isinstance(key, str) and 0.0 <= rate <= 1.0:
                rates[key] = (rate, threshold(rate))
        self._rates = (rates, {})

    @property
    def _agent_rates(self) -> dict[str, tuple[float, int]]:
        """The receiver's rates: key -> (rate, bound)."""
        return self._rates[0]

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # the parent's may have been held at fork time
        self.limiter.after_fork_in_child()

    def __repr__(self) -> str:
        rates = {k: r for k, (r, _) in self._agent_rates.items()}
        return f"Sampler(rules={self.rules!r}, sample_rate={self.sample_rate}, agent_rates={rates!r})"
