"""Datadog's metric monitor query, parsed (pure).

Grammar (Datadog docs, "Metric Monitor", query in the API's ``query`` field)::

    time_agg(last_N{m,h,d}):space_agg:metric.name{scope} [by {tag,...}][.as_count()|.as_rate()] cmp threshold

``time_agg``: ``avg`` (on average), ``max`` / ``min`` (at least once / at all
times, as the UI maps them for an above-threshold monitor), ``sum`` (in
total), ``last``. ``space_agg``: ``avg sum min max`` or a percentile ``p50
p75 p90 p95 p99`` (distributions, and ``trace.<span>`` latency). ``scope``:
``*`` or comma-separated ``key:value`` / ``key`` tags, all required.
``cmp``: ``> >= < <=``. A bad query raises ``MonitorError`` naming ``query``
and what is wrong in it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

TIME_AGGS = ("avg", "max", "min", "sum", "last")
SPACE_AGGS = ("avg", "sum", "min", "max", "p50", "p75", "p90", "p95", "p99")
COMPARATORS = (">=", "<=", ">", "<")
UNITS = {"m": 60, "h": 3600, "d": 86400}
MAX_WINDOW_S = 86400  # the aggregator keeps a day of 10 s buckets

_HEAD = re.compile(r"\s*(\w+)\(\s*last_(\d+)([a-z])\s*\)\s*:\s*(\w+)\s*:\s*([A-Za-z][\w.\-]*)\s*\{([^}]*)\}\s*")
_BY = re.compile(r"by\s*\{([^}]*)\}\s*")
_FN = re.compile(r"\.(as_count|as_rate)\(\)\s*")
_TAIL = re.compile(r"(>=|<=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


class MonitorError(ValueError):
    """A bad monitor or downtime definition; the message starts with the field's path."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


@dataclass(frozen=True)
class Query:
    time_agg: str
    window_s: int
    space_agg: str
    metric: str
    scope: tuple[str, ...]  # () means '*'
    by: tuple[str, ...]
    as_count: bool
    comparator: str
    threshold: float
    text: str


def _tags(text: str, what: str) -> tuple[str, ...]:
    tags = tuple(t.strip() for t in text.split(",") if t.strip())
    for t in tags:
        if t.startswith("!") or "*" in t and t != "*":
            raise MonitorError("query", f"{what} {t!r}: negated and wildcard tags are not supported")
    return () if tags in ((), ("*",)) else tuple(sorted(set(tags)))


def parse_query(text: Any) -> Query:
    if not isinstance(text, str) or not text.strip():
        raise MonitorError("query", "required, e.g. 'avg(last_5m):avg:web.latency{env:dev} by {host} > 800'")
    m = _HEAD.match(text)
    if m is None:
        raise MonitorError("query", f"{text!r} does not start with time_agg(last_N<m|h|d>):space_agg:metric{{scope}}")
    time_agg, n, unit, space_agg, metric, scope = m.groups()
    if time_agg not in TIME_AGGS:
        raise MonitorError("query", f"time aggregation {time_agg!r} is not one of {', '.join(TIME_AGGS)}")
    if unit not in UNITS or int(n) <= 0:
        raise MonitorError("query", f"window last_{n}{unit}: expected last_N with N > 0 and unit m, h or d")
    window = int(n) * UNITS[unit]
    if not 60 <= window <= MAX_WINDOW_S:
        raise MonitorError("query", f"window last_{n}{unit}: must be between 1 minute and 1 day")
    if space_agg not in SPACE_AGGS:
        raise MonitorError("query", f"space aggregation {space_agg!r} is not one of {', '.join(SPACE_AGGS)}")
    pos = m.end()
    as_count = False
    f = _FN.match(text, pos)  # Datadog writes it after the scope or after the group-by
    if f is not None:
        as_count = f.group(1) == "as_count"
        pos = f.end()
    by: tuple[str, ...] = ()
    b = _BY.match(text, pos)
    if b is not None:
        by = _tags(b.group(1), "group-by")
        if not by or any(":" in t for t in by):
            raise MonitorError("query", f"by {{{b.group(1)}}}: expected tag keys, e.g. by {{host,env}}")
        pos = b.end()
    f = _FN.match(text, pos)
    if f is not None:
        as_count = f.group(1) == "as_count"
        pos = f.end()
    t = _TAIL.match(text, pos)
    if t is None:
        raise MonitorError("query", f"expected a comparator (> >= < <=) and a number after {text[:pos].strip()!r}, "
                                    f"got {text[pos:]!r}")
    return Query(time_agg, window, space_agg, metric, _tags(scope, "scope"), by, as_count, t.group(1),
                 float(t.group(2)), text)
