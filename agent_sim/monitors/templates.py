"""Datadog's notification message template variables (pure).

``{{value}}``, ``{{threshold}}``, ``{{warn_threshold}}``, ``{{last_triggered_at}}``;
group tags as ``{{host.name}}`` (Datadog's form) or ``{{host}}``; sections
``{{#is_alert}}…{{/is_alert}}`` and negated ``{{^is_alert}}…{{/is_alert}}`` for
``is_alert is_warning is_recovery is_alert_recovery is_warning_recovery
is_no_data is_renotify``. Unknown variables render empty, as in Datadog.
"""

from __future__ import annotations

import re
import time
from typing import Any

from agent_sim.monitors.definition import Monitor
from agent_sim.monitors.state import ALERT, NO_DATA, OK, WARN, Event

_SECTION = re.compile(r"\{\{\s*([#^])\s*(\w+)\s*\}\}(.*?)\{\{\s*/\s*\2\s*\}\}", re.S)
_VAR = re.compile(r"\{\{\s*([\w.\-]+)\s*\}\}")


def _fmt(v: float | None) -> str:
    if v is None:
        return ""
    return f"{v:.6g}"


def context(m: Monitor, ev: Event) -> dict[str, Any]:
    t = m.thresholds
    flags = {
        "is_alert": ev.state == ALERT, "is_warning": ev.state == WARN, "is_no_data": ev.state == NO_DATA,
        "is_recovery": ev.state == OK, "is_alert_recovery": ev.state == OK and ev.previous == ALERT,
        "is_warning_recovery": ev.state == OK and ev.previous == WARN,
        "is_no_data_recovery": ev.state == OK and ev.previous == NO_DATA, "is_renotify": ev.kind != "transition",
    }
    threshold = t.warning if ev.state == WARN and t.warning is not None else t.critical
    ctx: dict[str, Any] = {**flags, "value": _fmt(ev.value), "threshold": _fmt(threshold),
                           "warn_threshold": _fmt(t.warning),
                           "last_triggered_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ev.time))}
    for k, v in ev.tags.items():
        ctx[k] = ctx[f"{k}.name"] = v
    return ctx


def render(template: str, ctx: dict[str, Any]) -> str:
    def section(m: re.Match[str]) -> str:
        on = bool(ctx.get(m.group(2)))
        return render(m.group(3), ctx) if on == (m.group(1) == "#") else ""

    text = _SECTION.sub(section, template)
    return _VAR.sub(lambda m: str(ctx.get(m.group(1), "")), text)


def title(m: Monitor, ev: Event) -> str:
    where = f" on {{{ev.group}}}" if ev.group != "*" else ""
    return f"[{ev.transition}{where}] {m.name}"
