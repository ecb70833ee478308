"""Monitors, downtimes, webhooks, group states and events in the receiver's SQLite file,
so that a restarted ``agent-sim serve`` resumes where it stopped (no second
"Triggered" for a group already alerting, the events still listed).

Tables (created here, beside the receiver's): ``monitor_defs`` (kind, key,
JSON), ``monitor_groups`` (one JSON row per monitor: its groups' state
machine fields, without the chart samples), ``monitor_events`` (the newest
``MAX_EVENTS``). Written by the engine under its lock, then the store's lock
(that order only); one transaction per change or evaluation.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import Any

from agent_sim.monitors.state import Event, Group

MAX_EVENTS = 1000
HISTORY_KEPT = 20  # transitions per group kept across a restart
_SCHEMA = """
CREATE TABLE IF NOT EXISTS monitor_defs (kind TEXT NOT NULL, key TEXT NOT NULL, body TEXT NOT NULL,
                                         PRIMARY KEY (kind, key));
CREATE TABLE IF NOT EXISTS monitor_groups (monitor_id INTEGER PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS monitor_events (id INTEGER PRIMARY KEY, body TEXT NOT NULL);
"""


class MonitorStore:
    def __init__(self, store: Any) -> None:
        self.store = store
        with store.lock:
            store.db.executescript(_SCHEMA)

    def _write(self, statements: Iterable[tuple[str, tuple]]) -> None:
        with self.store.lock:
            db = self.store.db
            db.execute("BEGIN")
            try:
                for sql, args in statements:
                    db.execute(sql, args)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def put(self, kind: str, key: Any, body: dict[str, Any] | None) -> None:
        """Store (``body``) or forget (None) one definition."""
        if body is None:
            statements: list[tuple[str, tuple]] = [("DELETE FROM monitor_defs WHERE kind = ? AND key = ?",
                                                    (kind, str(key)))]
            if kind == "monitor":
                statements.append(("DELETE FROM monitor_groups WHERE monitor_id = ?", (key,)))
            self._write(statements)
        else:
            self._write([("INSERT OR REPLACE INTO monitor_defs VALUES (?, ?, ?)", (kind, str(key), json.dumps(body)))])

    def definitions(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        rows = self.store.execute("SELECT key, body FROM monitor_defs WHERE kind = ? ORDER BY rowid", (kind,))
        return [(key, json.loads(body)) for key, body in rows]

    def save_cycle(self, groups: dict[int, dict[str, Group]], events: list[Event]) -> None:
        """One evaluation's groups (their state machine fields, the last ``HISTORY_KEPT`` transitions) and events.
        A flat list per group: ``dataclasses.asdict`` of 34 k groups cost 3 s a cycle."""
        def group_row(g: Group) -> list[Any]:
            return [g.tags, g.first_seen, g.last_seen, g.state, g.value, g.last_change, g.last_notified,
                    g.muted_by, g.history[-HISTORY_KEPT:]]

        statements: list[tuple[str, tuple]] = [("INSERT OR REPLACE INTO monitor_groups VALUES (?, ?)",
                       (mid, json.dumps({k: group_row(g) for k, g in gs.items()}))) for mid, gs in groups.items()]
        statements += [("INSERT OR REPLACE INTO monitor_events VALUES (?, ?)", (e.id, json.dumps(dataclasses.asdict(e))))
                       for e in events]
        if events:
            statements.append(("DELETE FROM monitor_events WHERE id <= ?", (events[-1].id - MAX_EVENTS,)))
        self._write(statements)

    def groups(self) -> dict[int, dict[str, Group]]:
        out: dict[int, dict[str, Group]] = {}
        for mid, body in self.store.execute("SELECT monitor_id, body FROM monitor_groups"):
            out[mid] = {}
            for key, row in json.loads(body).items():
                tags, first, last, state, value, change, notified, muted, history = row
                out[mid][key] = Group(key, tags, first, last, state, value, change, notified, tuple(muted),
                                      [tuple(h) for h in history])
        return out

    def events(self) -> list[Event]:
        rows = self.store.execute("SELECT body FROM monitor_events ORDER BY id")
        return [Event(**json.loads(body)) for (body,) in rows]
