"""``Engine``: the monitors, downtimes and webhooks of one receiver, and their evaluation.

Thread-safety: one lock. The HTTP handler threads (API), the evaluation
thread (``runner.py``) and the file watcher call in; an evaluation holds the
lock for its whole cycle (reads of the data source included) so states and
events stay consistent; notifications are only queued (``notify.py``).

An invalid monitor never stops the others: a definition error is refused
(API: 400 naming the field; file: reported, the rest loaded) and an error
while evaluating one monitor is recorded on it (``error``) while the
others are evaluated.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from agent_sim.monitors.definition import Monitor, parse_monitor
from agent_sim.monitors.downtimes import Downtime, parse_downtime
from agent_sim.monitors.notify import Notifier
from agent_sim.monitors.persist import MonitorStore
from agent_sim.monitors.query import MonitorError
from agent_sim.monitors.source import MetricSource
from agent_sim.monitors.state import Event, Group, GroupData, overall_state, step
from agent_sim.monitors.templates import context, render, title

MAX_EVENTS = 1000
_MENTION = re.compile(r"@webhook-([\w.\-]+)")


class Engine:
    def __init__(self, source: MetricSource, notifier: Notifier | None = None,
                 clock: Callable[[], float] = time.time, persist: MonitorStore | None = None) -> None:
        self.source = source
        self.persist = persist
        self.notifier = notifier or Notifier()
        self.clock = clock
        self.lock = threading.RLock()
        self.monitors: dict[int, Monitor] = {}
        self.origin: dict[int, str] = {}  # monitor id -> "api" or "file"
        self.groups: dict[int, dict[str, Group]] = {}
        self.errors: dict[int, str] = {}
        self.downtimes: dict[int, Downtime] = {}
        self.webhooks: dict[str, str] = {}
        self.events: deque[Event] = deque(maxlen=MAX_EVENTS)
        self.last_evaluation: float | None = None
        self._next_id = 1
        self._next_event = 1

    # -- definitions -------------------------------------------------------------
    def restore(self) -> None:
        """Load what ``persist`` holds (a restarted receiver); a definition that no longer parses is skipped."""
        if self.persist is None:
            return
        with self.lock:
            for key, body in self.persist.definitions("monitor"):
                try:
                    m = parse_monitor(body["raw"], int(key), body["created"])
                except MonitorError:
                    continue
                self.monitors[m.id], self.origin[m.id] = m, body["origin"]
            for key, body in self.persist.definitions("downtime"):
                try:
                    d = parse_downtime(body["raw"], int(key), 0.0)
                except MonitorError:
                    continue
                d.canceled = body["canceled"]
                self.downtimes[d.id] = d
            self.webhooks.update({name: body["url"] for name, body in self.persist.definitions("webhook")})
            self.groups = {mid: gs for mid, gs in self.persist.groups().items() if mid in self.monitors}
            self.events.extend(self.persist.events())
            self._next_id = max([0, *self.monitors, *self.downtimes]) + 1
            self._next_event = max([0, *(e.id for e in self.events)]) + 1

    def _save(self, kind: str, key: Any, body: dict[str, Any] | None) -> None:
        if self.persist is not None:
            self.persist.put(kind, key, body)

    def set_webhook(self, name: str, url: str) -> None:
        with self.lock:
            self.webhooks[name] = url
            self._save("webhook", name, {"url": url})
    def _new_id(self, wanted: Any = None) -> int:
        if isinstance(wanted, int) and not isinstance(wanted, bool) and wanted > 0 and wanted not in self.monitors:
            self._next_id = max(self._next_id, wanted + 1)
            return wanted
        while self._next_id in self.monitors or self._next_id in self.downtimes:
            self._next_id += 1
        self._next_id += 1
        return self._next_id - 1

    def put_monitor(self, data: Any, monitor_id: int | None = None, origin: str = "api") -> Monitor:
        """Create (``monitor_id`` None) or replace a monitor; ``MonitorError`` names a bad field.
        Group states survive a change that keeps the query."""
        with self.lock:
            now = self.clock()
            if monitor_id is None:
                wanted = data.get("id") if isinstance(data, dict) and origin == "file" else None
                mid = self._new_id(wanted)
            else:
                mid = monitor_id
            m = parse_monitor(data, mid, now)
            old = self.monitors.get(mid)
            if old is not None:
                m.created = old.created
                if old.query != m.query:
                    self.groups.pop(mid, None)
            self.monitors[mid] = m
            self.origin[mid] = origin
            self.groups.setdefault(mid, {})
            self.errors.pop(mid, None)
            self._save("monitor", mid, {"raw": m.raw, "created": m.created, "origin": origin})
            return m

    def delete_monitor(self, monitor_id: int) -> bool:
        with self.lock:
            for table in (self.origin, self.groups, self.errors):
                table.pop(monitor_id, None)
            self._save("monitor", monitor_id, None)
            return self.monitors.pop(monitor_id, None) is not None

    def put_downtime(self, data: Any, origin: str = "api") -> Downtime:
        with self.lock:
            did = self._new_id()
            d = parse_downtime(data, did, self.clock())
            d.raw["origin"] = origin
            if d.raw.get("start") is None:
                d.raw["start"] = d.start  # "from now" means from its creation, after a restart too
            self.downtimes[did] = d
            self._save("downtime", did, {"raw": d.raw, "canceled": None})
            return d

    def cancel_downtime(self, downtime_id: int) -> bool:
        with self.lock:
            d = self.downtimes.get(downtime_id)
            if d is None or d.canceled is not None:
                return False
            d.canceled = self.clock()
            self._save("downtime", downtime_id, {"raw": d.raw, "canceled": d.canceled})
            return True

    def load(self, doc: Any) -> list[str]:
        """Replace what came from the definitions file with ``doc``
        (``{"monitors": [...], "downtimes": [...], "webhooks": {name: url}}`` or a list of monitors).
        Returns one error line per definition left out; the others are loaded."""
        if isinstance(doc, list):
            doc = {"monitors": doc}
        if not isinstance(doc, dict):
            return [f"expected an object with monitors/downtimes/webhooks or a list of monitors, got {type(doc).__name__}"]
        errors: list[str] = []
        with self.lock:
            keep = {mid for mid, o in self.origin.items() if o == "file"}
            by_name = {self.monitors[mid].name: mid for mid in keep}
            loaded: set[int] = set()
            for i, data in enumerate(doc.get("monitors") or []):
                try:
                    name = data.get("name") if isinstance(data, dict) else None
                    mid = data.get("id") if isinstance(data, dict) and isinstance(data.get("id"), int) else None
                    mid = mid if mid in keep else by_name.get(name) if isinstance(name, str) else None
                    loaded.add(self.put_monitor(data, mid, origin="file").id)
                except MonitorError as exc:
                    errors.append(f"monitors[{i}] {exc}")
            for mid in keep - loaded:
                self.delete_monitor(mid)
            for did in [d.id for d in self.downtimes.values() if d.raw.get("origin") == "file"]:
                del self.downtimes[did]  # reloaded below; a file's downtime removed is gone, not cancelled
                self._save("downtime", did, None)
            for i, data in enumerate(doc.get("downtimes") or []):
                try:
                    self.put_downtime(data, origin="file")
                except MonitorError as exc:
                    errors.append(f"downtimes[{i}] {exc}")
            hooks = doc.get("webhooks") or {}
            if isinstance(hooks, dict) and all(isinstance(u, str) for u in hooks.values()):
                for name, url in hooks.items():
                    self.set_webhook(name, url)
            else:
                errors.append("webhooks: expected an object of name: url")
        return errors

    # -- evaluation --------------------------------------------------------------
    def evaluate(self, now: float | None = None) -> list[dict[str, Any]]:
        """Evaluate every monitor at ``now`` (default: the clock); returns ``list_monitors``."""
        with self.lock, self.source.cycle():
            now = self.clock() if now is None else now
            cache: dict[tuple, GroupData] = {}
            active = [d for d in self.downtimes.values() if d.active(now)]
            first_event = self._next_event
            for m in list(self.monitors.values()):
                try:
                    self._evaluate(m, now, cache, active)
                    self.errors.pop(m.id, None)
                except Exception as exc:  # this monitor only: the others still run
                    self.errors[m.id] = f"{type(exc).__name__}: {exc}"
            self.last_evaluation = now
            if self.persist is not None:
                self.persist.save_cycle(self.groups, [e for e in self.events if e.id >= first_event])
            return self.list_monitors(now)

    def _evaluate(self, m: Monitor, now: float, cache: dict[tuple, GroupData], active: list[Downtime]) -> None:
        q = m.query
        until = now - m.evaluation_delay_s
        key = (q.metric, q.scope, q.space_agg, q.by, q.as_count, until - q.window_s, until)
        data = cache.get(key)
        if data is None:
            data = cache[key] = self.source.fetch(q, until - q.window_s, until)
        scope_tags = set(q.scope)
        mine = [d for d in active if d.covers(m.id, m.tags, None)]

        def muted_by(g: Group) -> tuple[int, ...]:
            if not mine:
                return ()
            tags = scope_tags | {f"{k}:{v}" for k, v in g.tags.items()}
            return tuple(d.id for d in mine if set(d.scope).issubset(tags))

        def ended(downtime_id: int) -> bool:
            d = self.downtimes.get(downtime_id)
            return d is not None and d.canceled is None

        for ev in step(m, self.groups.setdefault(m.id, {}), data, now, muted_by, ended):
            ev.id, self._next_event = self._next_event, self._next_event + 1
            ev.title = title(m, ev)
            ev.body = render(m.message, context(m, ev))
            self.events.append(ev)
            if not ev.muted:
                hooks = {n: self.webhooks.get(n, "") for n in dict.fromkeys(_MENTION.findall(ev.body))}
                for name in [n for n, url in hooks.items() if not url]:
                    ev.deliveries[name] = "unknown webhook"
                    del hooks[name]
                self.notifier.send(ev, hooks)

    # -- views -------------------------------------------------------------------
    def list_monitors(self, now: float | None = None) -> list[dict[str, Any]]:
        with self.lock:
            now = self.clock() if now is None else now
            return [self._row(m, now) for m in self.monitors.values()]

    def _row(self, m: Monitor, now: float) -> dict[str, Any]:
        groups = self.groups.get(m.id, {})
        live = {k: g for k, g in groups.items() if now - g.first_seen >= m.new_group_delay_s}
        row = {"id": m.id, "name": m.name, "query": m.query.text, "type": m.raw.get("type", "metric alert"),
               "overall_state": overall_state(groups, m, now), "groups": {k: g.state for k, g in live.items()}}
        if m.id in self.errors:
            row["error"] = self.errors[m.id]
        return row

    def monitor_detail(self, monitor_id: int) -> dict[str, Any] | None:
        with self.lock:
            m = self.monitors.get(monitor_id)
            if m is None:
                return None
            now = self.clock()
            t = m.thresholds
            return {**m.to_json(), **self._row(m, now), "origin": self.origin.get(m.id, "api"),
                    "thresholds": {"critical": t.critical, "warning": t.warning,
                                   "critical_recovery": t.critical_recovery, "warning_recovery": t.warning_recovery},
                    "group_details": {k: g.to_json() for k, g in self.groups.get(m.id, {}).items()}}

    def list_events(self, monitor_id: int | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [e.to_json() for e in self.events if monitor_id is None or e.monitor_id == monitor_id]

    def list_downtimes(self) -> list[dict[str, Any]]:
        with self.lock:
            now = self.clock()
            return [d.to_json(now) for d in self.downtimes.values()]
