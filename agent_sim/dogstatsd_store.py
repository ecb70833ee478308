"""DogStatsD aggregates in the receiver's SQLite file, with the trace stats' retention.

One row per (metric, tags, width, bucket): 10 s buckets for 24 h, then folded
into 1 h buckets kept 30 days (``agent_sim.ingest.KEEP_10S_NS`` /
``KEEP_1H_NS``, the trace stats' rules). A row's ``data`` is the bucket's
*point state*, msgpack'd, per metric type:

    c       [sum]                         per-second rate = sum / width
    g       [last, sum, n]                10 s: last; 1 h: average of the 10 s values
    s       [sum of distinct counts, n]   average distinct count per 10 s bucket
    h, ms   [count, max, avg, median, p95]  count weighted by 1/rate
    d       a DDSketch (``Sketch.to_wire``)

``merge_state`` combines two states of one context (a late ``|T`` sample
arriving after its bucket was written, or a roll-up). Exact for c, g, d and
for the histograms' count/max/avg; a histogram's median and 95th percentile
and a set's distinct count are count-weighted averages once merged.

Thread model: every method takes ``Store.lock`` (through the ``Store``'s
connection), which trace ingest shares: ``write`` and ``rollup`` hold it per
page read and per chunk written, never for a whole flush or roll-up. Called from the maintenance thread (``write``,
``rollup``: one writer at a time) and the HTTP handler threads (``rows``,
``contexts``). SQLite errors propagate.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgpack

from agent_sim.stats import Sketch
from agent_sim.store import Store

Tags = tuple[str, ...]
State = Any  # a list as above, or a Sketch for distributions
Prepared = tuple[tuple[str, str, int, int], str, State, bytes]  # (primary key, kind, state, packed state)
CHUNK_ROWS = 1000  # rows written per transaction: ~5-10 ms of the lock trace ingest shares
READ_PAGE = 1000  # rows per paged read (the roll-up's, rows already stored)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS metric_points (
    name TEXT NOT NULL, tags TEXT NOT NULL, width INTEGER NOT NULL, bucket INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (name, tags, width, bucket)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS metric_points_age ON metric_points(width, bucket);
CREATE TABLE IF NOT EXISTS metric_contexts (
    name TEXT NOT NULL, tags TEXT NOT NULL, kind TEXT NOT NULL, PRIMARY KEY (name, tags)
) WITHOUT ROWID;
"""


def merge_state(kind: str, old: State, new: State) -> State:
    """``old`` then ``new`` (later) of one context; see the module docstring."""
    if kind == "d":
        old.merge(new)
        return old
    if kind == "c":
        return [old[0] + new[0]]
    if kind == "g":
        return [new[0], old[1] + new[1], old[2] + new[2]]
    if kind == "s":
        return [old[0] + new[0], old[1] + new[1]]
    count = old[0] + new[0]
    if count <= 0:
        return new

    def weighted(i: int) -> float:
        return (old[i] * old[0] + new[i] * new[0]) / count

    return [count, max(old[1], new[1]), weighted(2), weighted(3), weighted(4)]


def _pack(state: State) -> bytes:
    return msgpack.packb(state.to_wire() if isinstance(state, Sketch) else state)


def _unpack(kind: str, blob: bytes) -> State:
    data = msgpack.unpackb(blob, strict_map_key=False)
    return Sketch.from_wire(data) if kind == "d" else data


def _prepare(points: Iterable[tuple[str, Tags, str, int, int, State]]) -> list[Prepared]:
    return [((name, _join(tags), width, bucket), kind, state, _pack(state))
            for name, tags, kind, width, bucket, state in points]


def _join(tags: Tags) -> str:
    return ",".join(tags)


def _split(text: str) -> Tags:
    return tuple(text.split(",")) if text else ()


_INSERT = "INSERT OR REPLACE INTO metric_points VALUES (?, ?, ?, ?, ?)"


def _existing(execute: Callable[[str, Any], list[tuple]], prepared: list[Prepared]) -> dict[tuple[str, str, int, int],
                                                                                             bytes]:
    """The stored rows of ``prepared``'s (width, bucket)s, read in pages. Rows already there
    are rare (a late sample, a restart mid-bucket, a roll-up into an hour already folded)."""
    existing: dict[tuple[str, str, int, int], bytes] = {}
    for width, bucket in {key[2:] for key, _kind, _state, _blob in prepared}:
        for name, tags, data in _paged(execute, "SELECT name, tags, data FROM metric_points WHERE width = ? "
                                       "AND bucket = ?{after} ORDER BY name, tags LIMIT ?", (width, bucket),
                                       "name, tags", lambda row: row[:2]):
            existing[(name, tags, width, bucket)] = data
    return existing


def _paged(execute: Callable[[str, Any], list[tuple]], sql: str, args: tuple, columns: str,
           key: Callable[[tuple], tuple]) -> list[tuple]:
    """Every row of ``sql`` (``{after}`` where a keyset condition goes, ``LIMIT ?`` last),
    ``READ_PAGE`` rows per ``execute``: each read holds the store's lock on its own.
    ``columns``, the ORDER BY, and ``key(row)``, their values, must identify a row."""
    rows = execute(sql.format(after=""), (*args, READ_PAGE))
    found = list(rows)
    while len(rows) == READ_PAGE:
        after = key(rows[-1])
        rows = execute(sql.format(after=f" AND ({columns}) > ({', '.join('?' * len(after))})"),
                       (*args, *after, READ_PAGE))
        found += rows
    return found


def _rows(prepared: list[Prepared], existing: dict[tuple[str, str, int, int], bytes]) -> list[tuple]:
    """``metric_points`` rows of ``prepared``, merged into the ``existing`` ones."""
    rows = []
    for key, kind, state, blob in prepared:
        old = existing.get(key)
        if old is not None:
            blob = _pack(merge_state(kind, _unpack(kind, old), state))
        rows.append((*key, blob))
    return rows


class MetricStore:
    """The DogStatsD tables inside a receiver's ``Store``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        with store.lock:
            store.db.executescript(_SCHEMA)
        self._stored: set[tuple[str, str]] = set()  # contexts in metric_contexts: only new ones are written
        # name -> stored tags text -> (its Tags, once split; kind): ``rows`` neither joins
        # metric_contexts nor splits tags per row. Filled before a context's rows are written.
        self._known: dict[str, dict[str, tuple[Tags, str]]] = {}

    def contexts(self) -> dict[tuple[str, Tags], str]:
        """Every stored (name, tags) -> type (start-up: the aggregator's known contexts)."""
        rows = self.store.execute("SELECT name, tags, kind FROM metric_contexts")
        self._stored = {(name, tags) for name, tags, _kind in rows}
        self._known = {}
        for name, tags, kind in rows:
            self._know(name, tags, kind)
        return {(name, known[0]): known[1] for name, by_text in self._known.items() for known in by_text.values()}

    def _know(self, name: str, tags: str, kind: str) -> tuple[Tags, str]:
        by_text = self._known.setdefault(name, {})
        known = by_text.get(tags)
        if known is None:
            known = by_text[tags] = (_split(tags), kind)
        return known

    def write(self, points: list[tuple[str, Tags, str, int, int, State]]) -> None:
        """Merge ``(name, tags, kind, width, bucket, state)`` into the stored rows and their
        contexts (a context is stored with its points, never ahead of them).

        Trace ingest shares ``Store.lock``, so the rows are packed before taking
        it and written in transactions of ``CHUNK_ROWS``, each holding the lock
        only for its own inserts: a 10,000-series flush held it ~0.1 s in one
        transaction, and every trace payload arriving meanwhile waited that long.
        ``points`` is consumed: a committed chunk is deleted from it, so after an
        error it holds exactly what is left to write (retrying never counts a
        point twice). One writer at a time (the ``Aggregator``'s flush lock):
        the rows already stored are read once, before the chunks."""
        prepared = _prepare(points)
        existing = _existing(self.store.execute, prepared)  # the store's lock per read, not across
        for first in range(0, len(prepared), CHUNK_ROWS):
            chunk = prepared[first:first + CHUNK_ROWS]
            new = {(key[0], key[1], kind) for key, kind, _state, _blob in chunk if key[:2] not in self._stored}
            rows = _rows(chunk, existing)
            for name, tags, kind in new:
                self._know(name, tags, kind)
            with self._transaction() as db:
                db.executemany("INSERT OR IGNORE INTO metric_contexts VALUES (?, ?, ?)", new)
                db.executemany(_INSERT, rows)
            self._stored.update((n, t) for n, t, _k in new)
            del points[:len(chunk)]

    def rows(self, name: str, since: float, until: float) -> list[tuple[Tags, str, int, int, State]]:
        """``(tags, kind, width, bucket, state)`` of ``name`` whose bucket starts within [since, until].

        The rows of each of the name's contexts (``metric_contexts``: a row without one is not a
        point) are a range of the primary key that SQLite seeks: a window costs its own rows, not
        every row of the name (0.15 s a name with a day of 10 s rows of 100 contexts)."""
        rows = self.store.execute(
            "SELECT c.tags, c.kind, p.width, p.bucket, p.data FROM metric_contexts AS c "
            "CROSS JOIN (SELECT 10 AS width, ? AS lo UNION ALL SELECT 3600, ?) AS w CROSS JOIN metric_points AS p "
            "ON p.name = c.name AND p.tags = c.tags AND p.width = w.width AND p.bucket >= w.lo AND p.bucket <= ? "
            "WHERE c.name = ?", (math.floor(since) - 9, math.floor(since) - 3599, until, name))
        known = self._known.get(name, {})
        out = []
        for tags, kind, width, bucket, data in rows:
            if since <= bucket + width - 1 and bucket <= until:
                found = known.get(tags)
                if found is None:  # a context another MetricStore of the file wrote: learn it
                    found = self._know(name, tags, kind)
                    known = self._known[name]
                out.append((found[0], found[1], width, bucket,
                            _unpack("d", data) if found[1] == "d" else msgpack.unpackb(data)))  # no call per row
        return out

    def rolled_until(self) -> int:
        """Where the newest 1 h row ends (0 without any): a window from there on sees only 10 s rows."""
        rows = self.store.execute("SELECT max(bucket) FROM metric_points WHERE width = 3600")
        return int(rows[0][0]) + 3600 if rows and rows[0][0] is not None else 0

    def latest(self, since: float) -> list[tuple[str, Tags, str, int, State]]:
        """``(name, tags, kind, bucket, state)`` of each context's newest 10 s row since ``since``."""
        rows = self.store.execute(
            "SELECT p.name, p.tags, c.kind, max(p.bucket), p.data FROM metric_points p "
            "JOIN metric_contexts c ON c.name = p.name AND c.tags = p.tags "
            "WHERE p.width = 10 AND p.bucket >= ? GROUP BY p.name, p.tags", (int(since),))
        return [(name, _split(tags), kind, bucket, _unpack(kind, data)) for name, tags, kind, bucket, data in rows]

    def rollup(self, now_s: float, keep_10s_s: float, keep_1h_s: float) -> list[tuple[str, Tags]]:
        """Fold 10 s rows older than ``keep_10s_s`` into 1 h rows; delete 1 h rows older
        than ``keep_1h_s`` and the contexts left without rows (returned, so the
        aggregator forgets them too).

        As ``write``, with the lock held per page read and per chunk written, not
        across: with 10,000 contexts one transaction held it ~1.3 s every minute.
        A context's 1 h rows and the deletion of its folded 10 s rows commit
        together, so a failure midway neither loses nor double-counts a point."""
        cut = now_s - keep_10s_s
        hourly: dict[tuple[str, str, int], tuple[str, State]] = {}
        folded: dict[tuple[str, str], int] = {}  # 10 s rows per context: each is a row deleted
        for name, tags, kind, bucket, data in self._old_rows(cut):
            folded[(name, tags)] = folded.get((name, tags), 0) + 1
            k = (name, tags, bucket - bucket % 3600)
            state = _unpack(kind, data)
            if kind == "g":  # a 1 h gauge point is the average of its 10 s points
                state = [state[0], state[0], 1]
            prev = hourly.get(k)
            hourly[k] = (kind, state if prev is None else merge_state(kind, prev[1], state))
        prepared = _prepare([(n, _split(t), kind, 3600, h, s) for (n, t, h), (kind, s) in hourly.items()])
        prepared.sort(key=lambda p: p[0])  # a context's hours together: chunks split between contexts
        existing = _existing(self.store.execute, prepared)
        first = 0
        while first < len(prepared):  # chunks of about CHUNK_ROWS rows written or deleted, whole contexts
            end, cost = first, 0
            while end < len(prepared) and (cost < CHUNK_ROWS or prepared[end][0][:2] == prepared[end - 1][0][:2]):
                if end == first or prepared[end][0][:2] != prepared[end - 1][0][:2]:
                    cost += folded[prepared[end][0][:2]]
                cost += 1
                end += 1
            chunk = prepared[first:end]
            rows = _rows(chunk, existing)
            with self._transaction() as db:
                db.executemany(_INSERT, rows)
                db.executemany("DELETE FROM metric_points WHERE name = ? AND tags = ? AND width = 10 AND bucket < ?",
                               [(n, t, cut) for n, t in dict.fromkeys(key[:2] for key, _k, _s, _b in chunk)])
            first = end
        # Expired 1 h rows, then contexts left without rows: keys read in pages, deleted
        # CHUNK_ROWS per transaction (one DELETE of every context held the lock 40-75 ms at
        # 3,000 contexts, the longest step of the roll-up).
        expired = _paged(self.store.execute, "SELECT name, tags, bucket FROM metric_points WHERE width = 3600 "
                         "AND bucket < ?{after} ORDER BY bucket, name, tags LIMIT ?", (now_s - keep_1h_s,),
                         "bucket, name, tags", lambda row: (row[2], row[0], row[1]))
        for i in range(0, len(expired), CHUNK_ROWS):
            with self._transaction() as db:
                db.executemany("DELETE FROM metric_points WHERE name = ? AND tags = ? AND width = 3600 AND bucket = ?",
                               expired[i:i + CHUNK_ROWS])
        keys = _paged(self.store.execute, "SELECT name, tags FROM metric_contexts WHERE 1{after} "
                      "ORDER BY name, tags LIMIT ?", (), "name, tags", lambda row: row)
        gone = []
        for i in range(0, len(keys), CHUNK_ROWS):
            low, high = keys[i], keys[min(i + CHUNK_ROWS, len(keys)) - 1]
            with self._transaction() as db:  # re-checked under the lock: a write may have added a row since
                gone += db.execute("DELETE FROM metric_contexts AS c WHERE (c.name, c.tags) BETWEEN (?, ?) AND (?, ?) "
                                   "AND NOT EXISTS (SELECT 1 FROM metric_points p WHERE p.name = c.name "
                                   "AND p.tags = c.tags) RETURNING name, tags", (*low, *high)).fetchall()
        self._stored.difference_update(gone)
        for name, tags in gone:
            self._known.get(name, {}).pop(tags, None)
        return [(n, _split(t)) for n, t in gone]

    def _old_rows(self, cut: float) -> list[tuple]:
        """``(name, tags, kind, bucket, data)`` of the 10 s rows before ``cut``, oldest bucket first."""
        return _paged(self.store.execute, "SELECT p.name, p.tags, c.kind, p.bucket, p.data FROM metric_points p "
                      "JOIN metric_contexts c ON c.name = p.name AND c.tags = p.tags WHERE p.width = 10 "
                      "AND p.bucket < ?{after} ORDER BY p.bucket, p.name, p.tags LIMIT ?", (cut,),
                      "p.bucket, p.name, p.tags", lambda row: (row[3], row[0], row[1]))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction under the store's lock, rolled back if the block raises."""
        with self.store.lock:
            db = self.store.db
            db.execute("BEGIN")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
