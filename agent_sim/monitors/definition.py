"""A monitor definition in Datadog's own JSON, validated (pure).

Accepts a monitor exported from Datadog unchanged: keys we do not use
(``id``, ``tags``, ``priority``, ``created``, ``overall_state``, options such
as ``include_tags`` …) are kept and ignored. Each error names the field:
``options.thresholds.warning: …``.

Threshold rules (Datadog docs, "Monitors > Configuration > Thresholds"): the
query's number is the critical threshold; ``options.thresholds.critical``,
when given, must equal it. For ``>``/``>=`` monitors ``warning <
critical``, ``critical_recovery < critical`` and ``warning_recovery <
warning``; for ``<``/``<=`` the other way round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from agent_sim.monitors.query import MonitorError, Query, parse_query

TYPES = ("metric alert", "query alert")
RENOTIFY_STATUSES = ("alert", "warn", "no data")


@dataclass(frozen=True)
class Thresholds:
    critical: float
    warning: float | None = None
    critical_recovery: float | None = None
    warning_recovery: float | None = None


@dataclass
class Monitor:
    id: int
    name: str
    query: Query
    message: str
    thresholds: Thresholds
    notify_no_data: bool = False
    no_data_timeframe_s: int = 0  # 0 when notify_no_data is off
    renotify_interval_s: int = 0
    renotify_statuses: tuple[str, ...] = ("alert", "no data")
    new_group_delay_s: int = 0
    evaluation_delay_s: int = 0
    tags: tuple[str, ...] = ()
    created: float = 0.0
    raw: dict[str, Any] = field(default_factory=dict)  # the JSON as given, for export

    def to_json(self) -> dict[str, Any]:
        return {**self.raw, "id": self.id}


def _number(value: Any, name: str, *, required: bool = False) -> float | None:
    if value is None:
        if required:
            raise MonitorError(name, "required")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MonitorError(name, f"expected a number, got {value!r}")
    return float(value)


def _minutes(options: dict[str, Any], key: str, lo: float = 0) -> int:
    v = _number(options.get(key), f"options.{key}")
    if v is None:
        return 0
    if v < lo:
        raise MonitorError(f"options.{key}", f"expected minutes >= {lo:g}, got {v:g}")
    return int(v * 60)


def _seconds(options: dict[str, Any], key: str) -> int:
    v = _number(options.get(key), f"options.{key}")
    if v is not None and v < 0:
        raise MonitorError(f"options.{key}", f"expected seconds >= 0, got {v:g}")
    return int(v or 0)


def _thresholds(raw: Any, q: Query) -> Thresholds:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise MonitorError("options.thresholds", f"expected an object, got {type(raw).__name__}")
    vals = {k: _number(raw.get(k), f"options.thresholds.{k}")
            for k in ("critical", "warning", "critical_recovery", "warning_recovery")}
    crit = vals["critical"]
    if crit is not None and crit != q.threshold:
        raise MonitorError("options.thresholds.critical",
                           f"{crit:g} differs from the query's threshold {q.threshold:g} (Datadog requires them equal)")
    t = Thresholds(q.threshold, vals["warning"], vals["critical_recovery"], vals["warning_recovery"])
    above = q.comparator in (">", ">=")
    word = "below" if above else "above"

    def check(name: str, value: float | None, limit: float | None, limit_name: str) -> None:
        if value is not None and limit is not None and (value >= limit if above else value <= limit):
            raise MonitorError(f"options.thresholds.{name}",
                               f"{value:g} must be {word} {limit_name} {limit:g} for a '{q.comparator}' monitor")

    check("warning", t.warning, t.critical, "critical")
    check("critical_recovery", t.critical_recovery, t.critical, "critical")
    if t.warning_recovery is not None and t.warning is None:
        raise MonitorError("options.thresholds.warning_recovery", "needs options.thresholds.warning")
    check("warning_recovery", t.warning_recovery, t.warning, "warning")
    return t


def parse_monitor(data: Any, monitor_id: int, now: float = 0.0) -> Monitor:
    """A ``Monitor`` from Datadog's JSON, or ``MonitorError`` naming the bad field."""
    if not isinstance(data, dict):
        raise MonitorError("monitor", f"expected a JSON object, got {type(data).__name__}")
    kind = data.get("type", "metric alert")
    if kind not in TYPES:
        raise MonitorError("type", f"{kind!r} is not supported (only {' and '.join(repr(t) for t in TYPES)})")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise MonitorError("name", "required, a non-empty string")
    message = data.get("message", "")
    if not isinstance(message, str):
        raise MonitorError("message", f"expected a string, got {type(message).__name__}")
    q = parse_query(data.get("query"))
    options = data.get("options")
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise MonitorError("options", f"expected an object, got {type(options).__name__}")
    thresholds = _thresholds(options.get("thresholds"), q)
    notify_no_data = options.get("notify_no_data", False)
    if not isinstance(notify_no_data, bool):
        raise MonitorError("options.notify_no_data", f"expected true or false, got {notify_no_data!r}")
    # Datadog's default no-data timeframe is twice the evaluation window.
    no_data = _minutes(options, "no_data_timeframe", lo=1) or 2 * q.window_s
    statuses = options.get("renotify_statuses") or ["alert", "no data"]
    if not isinstance(statuses, list) or any(s not in RENOTIFY_STATUSES for s in statuses):
        raise MonitorError("options.renotify_statuses", f"expected a list of {', '.join(RENOTIFY_STATUSES)}")
    tags = data.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise MonitorError("tags", "expected a list of strings")
    return Monitor(
        id=monitor_id, name=name, query=q, message=message, thresholds=thresholds,
        notify_no_data=notify_no_data, no_data_timeframe_s=no_data if notify_no_data else 0,
        renotify_interval_s=_minutes(options, "renotify_interval"), renotify_statuses=tuple(statuses),
        new_group_delay_s=_seconds(options, "new_group_delay"), evaluation_delay_s=_seconds(options, "evaluation_delay"),
        tags=tuple(tags), created=now, raw=dict(data))
