"""SQLite persistence: traces (index row + appended msgpack chunks), stats
buckets and the stats journal.

Thread model: one connection, guarded by ``Store.lock``; the receiver calls
``ingest`` from handler threads and the maintenance methods from its
background thread. Every public method takes the lock itself and may block
on it; SQLite errors propagate.

Writes are appends: a trace that arrives in several chunks gets one chunk row
per chunk plus an upsert of its index row (done inside SQLite, no Python
read-modify-write). Chunk rows are numbered by arrival and the trace row
lists its chunk numbers, so chunks need no index of their own: inserts append
to one B-tree and eviction (oldest first) deletes from its beginning. The index row describes the root span (parent 0), or the
earliest span seen while no root has arrived.

Stats durability: each ingest appends the payload's stats groups to the
``journal`` table in the same transaction as its traces, so an acknowledged
payload's stats survive SIGKILL. The flusher folds live buckets into
``stats`` rows and deletes the journal rows it covered, in one transaction.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import msgpack

from agent_sim.model import Span, to_signed
from agent_sim.stats import HOUR_NS, Entry, Key

try:  # the optional C packer and index rows (setup.py builds them); msgpack and trace_row without them
    from agent_sim._cdecode import index_rows as _fast_rows
    from agent_sim._cdecode import packb as _fast_packb
except ImportError:  # pragma: no cover - no compiler at install time
    _fast_packb = _fast_rows = None

_SCHEMA = """
CREATE TABLE IF NOT EXISTS traces (
    seq INTEGER PRIMARY KEY,
    tid INTEGER NOT NULL UNIQUE,
    high TEXT,
    service TEXT NOT NULL,
    resource TEXT NOT NULL,
    name TEXT NOT NULL,
    start INTEGER NOT NULL,
    duration INTEGER NOT NULL,
    error INTEGER NOT NULL,
    span_count INTEGER NOT NULL,
    has_root INTEGER NOT NULL,
    received INTEGER NOT NULL,
    chunk_ids TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS traces_start ON traces(start);
CREATE TABLE IF NOT EXISTS chunks (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS stats (
    width INTEGER NOT NULL, bucket INTEGER NOT NULL,
    service TEXT NOT NULL, name TEXT NOT NULL, resource TEXT NOT NULL, type TEXT NOT NULL,
    span_kind TEXT NOT NULL, http_status INTEGER NOT NULL, is_root INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (width, bucket, service, name, resource, type, span_kind, http_status, is_root)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS journal (id INTEGER PRIMARY KEY, kind INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

_UPSERT = """
INSERT INTO traces (tid, high, service, resource, name, start, duration, error, span_count, has_root, received,
                    chunk_ids)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(tid) DO UPDATE SET
    span_count = span_count + excluded.span_count,
    chunk_ids = chunk_ids || ',' || excluded.chunk_ids,
    high = coalesce(high, excluded.high),
    service = CASE WHEN {r} THEN excluded.service ELSE service END,
    resource = CASE WHEN {r} THEN excluded.resource ELSE resource END,
    name = CASE WHEN {r} THEN excluded.name ELSE name END,
    duration = CASE WHEN {r} THEN excluded.duration ELSE duration END,
    error = CASE WHEN {r} THEN excluded.error ELSE error END,
    start = CASE WHEN {r} THEN excluded.start ELSE start END,
    has_root = max(has_root, excluded.has_root)
""".format(r="(excluded.has_root > has_root OR (has_root = 0 AND excluded.has_root = 0 AND excluded.start < start))")

CACHE_KIB = 1024  # SQLite page cache of the ingest connection (KiB)
JOURNAL_GROUPS = 1
JOURNAL_CLIENT_STATS = 2


def pack_chunk(spans: list[Span]) -> bytes:
    """``msgpack.packb(spans)``, the stored form of a trace chunk: by the C
    packer when it can (the same bytes in ~0.4 of msgpack's time, which
    spends ~1.5 µs a span on its generic per-object dispatch), else by msgpack
    (which packs, or raises on what it cannot)."""
    if _fast_packb is not None:
        out = _fast_packb(spans)
        if out is not NotImplemented:
            return out
    return msgpack.packb(spans)


def trace_row(spans: list[Span]) -> tuple:
    """The index-row values of one chunk: its root span, else its earliest span."""
    root = None
    for s in spans:
        if s["parent_id"] == 0:
            root = s
            break
    has_root = 1
    if root is None:
        has_root = 0
        root = min(spans, key=lambda s: s["start"])
    high = None
    meta = spans[0]["meta"]
    if meta:
        high = meta.get("_dd.p.tid")
    return (to_signed(root["trace_id"]), high, root["service"], root["resource"], root["name"],
            root["start"], root["duration"], root["error"], len(spans), has_root)


def index_rows(traces: list[list[Span]], now: int, first_id: int) -> list[tuple]:
    """The index rows of chunks numbered from ``first_id``: ``trace_row`` and
    the arrival second and chunk number (by the C code when it can)."""
    if _fast_rows is not None:
        rows = _fast_rows(traces, now, first_id)
        if rows is not NotImplemented:
            return rows
    return [(*trace_row(spans), now, str(cid)) for cid, spans in enumerate(traces, first_id)]


def window_select(table: str, columns: str, since_ns: int | None, until_ns: int | None,
                  equal: Iterable[tuple[str, str | None]]) -> tuple[str, list[Any]]:
    """SQL and arguments selecting ``columns`` of the rows of a bucketed
    table (``width``, ``bucket`` leading its primary key: the stats, the
    time breakdown) whose bucket overlaps the window and whose ``equal``
    columns have the given values (None or "": any). One part per width,
    so the primary key bounds each scan."""
    parts: list[str] = []
    args: list[Any] = []
    for width in (10, 3600):
        where = ["width = ?"]
        args.append(width)
        if since_ns is not None:
            where.append("bucket > ?")
            args.append(since_ns - width * 1_000_000_000)
        if until_ns is not None:
            where.append("bucket < ?")
            args.append(until_ns)
        for col, value in equal:
            if value:
                where.append(f"{col} = ?")
                args.append(value)
        parts.append(f"SELECT {columns} FROM {table} WHERE " + " AND ".join(where))
    return " UNION ALL ".join(parts), args


class Store:
    """The receiver's SQLite database (a file path, or ``":memory:"``)."""

    def __init__(self, path: str = ":memory:") -> None:
        import sqlite3

        self.path = path
        self.lock = threading.Lock()
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db = self.db
        if path != ":memory:":
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL: a commit is in the OS before we answer 200, so a
            # killed process loses nothing; only a power cut could.
            db.execute("PRAGMA synchronous=NORMAL")
        # A small page cache: inserts append to the ends of the B-trees, so a
        # few MB hold their hot pages; a 16 MB cache kept filling (RSS growth)
        # for minutes without making ingest faster.
        db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        # Debian's SQLite zeroes every deleted byte (secure_delete on): evicting
        # traces then rewrote each freed page through the WAL. FAST zeroes only
        # what is written anyway; eviction and checkpoints cost half as much.
        db.execute("PRAGMA secure_delete=FAST")
        db.executescript(_SCHEMA)
        self._checkpointer = None
        if path != ":memory:":
            # Checkpoints copy the WAL into the database and fsync: done by
            # ``checkpoint()`` on the maintenance thread's own connection,
            # outside the ingest path (sqlite3 releases the GIL meanwhile).
            db.execute("PRAGMA wal_autocheckpoint=0")
            db.execute("PRAGMA journal_size_limit=67108864")  # the WAL file shrinks back after bursts
            self._checkpointer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._checkpointer.execute("PRAGMA cache_size=-256")  # checkpoints copy pages, they need no cache
        self.trace_count = db.execute("SELECT count(*) FROM traces").fetchone()[0]
        self._next_chunk = db.execute("SELECT coalesce(max(id), 0) FROM chunks").fetchone()[0] + 1

    def close(self) -> None:
        with self.lock:
            if self._checkpointer is not None:
                self._checkpointer.close()
            if self.path != ":memory:":
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # leave a compact file behind
            self.db.close()

    def checkpoint(self) -> None:
        """Copy the WAL into the database and let it start over (maintenance thread).

        The PASSIVE pass copies the bulk beside ingest, without the lock. It
        can never finish under steady writes, and a WAL that is never fully
        copied is never reused: it grew by ~100 MB/s and ingest slowed as it
        did. So a RESTART pass follows under the lock, which only has the
        frames written meanwhile left to copy; the next commit then writes
        from the start of the WAL again."""
        if self._checkpointer is None:
            return
        self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
        with self.lock:
            self._checkpointer.execute("PRAGMA wal_checkpoint(RESTART)")

    # -- ingest ------------------------------------------------------------
    def ingest(self, traces: list[list[Span]], journal: list[tuple[int, bytes]], counters: dict[str, int]) -> None:
        """Commit traces (already normalized, priority > 0), journal rows and
        counter increments in one transaction. Returns once committed."""
        now = int(time.time())
        data = [pack_chunk(spans) for spans in traces]
        with self.lock:
            db = self.db
            first = self._next_chunk
            ids = range(first, first + len(traces))
            rows = index_rows(traces, now, first)
            blobs = list(zip(ids, data, strict=True))
            db.execute("BEGIN")
            try:
                if rows:
                    db.executemany(_UPSERT, rows)
                    db.executemany("INSERT INTO chunks (id, data) VALUES (?, ?)", blobs)
                if journal:
                    db.executemany("INSERT INTO journal (kind, data) VALUES (?, ?)", journal)
                for name, value in counters.items():
                    db.execute("INSERT INTO counters (name, value) VALUES (?, ?) "
                               "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (name, value))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._next_chunk = first + len(rows)
            self.trace_count += len(rows)

    # -- retention ---------------------------------------------------------
    def evict(self, max_traces: int, max_age_s: float) -> int:
        """Delete the oldest traces beyond ``max_traces`` or older than ``max_age_s``."""
        deleted = 0
        with self.lock:
            db = self.db
            cutoff = int(time.time() - max_age_s)
            db.execute("BEGIN")
            try:
                # Seqs are contiguous: rowids are assigned max + 1 (an upsert
                # that updates assigns none) and eviction deletes a prefix. So
                # each query below is a seek, never a scan of the whole table:
                # evicting ~10,000 traces a second at full load used to scan
                # 100,000 rows three times per pass.
                oldest, newest = db.execute("SELECT (SELECT min(seq) FROM traces), "
                                            "(SELECT max(seq) FROM traces)").fetchone()
                count = newest - oldest + 1 if newest is not None else 0
                limit_seq = newest - max_traces if count > max_traces else None
                # received grows with seq (both assigned under the lock): the
                # first row young enough is found from the start of the rowid
                # order, after as many rows as there are to delete.
                row = db.execute("SELECT seq FROM traces WHERE received >= ? ORDER BY seq LIMIT 1",
                                 (cutoff,)).fetchone()
                old = (row[0] if row else newest + 1) - 1 if count else None
                if old is not None and old >= oldest and (limit_seq is None or old > limit_seq):
                    limit_seq = old
                if limit_seq is not None:
                    # Chunk ids and trace seqs are both assigned in arrival
                    # order, so every chunk older than the first chunk of the
                    # oldest surviving trace belongs to an evicted trace: one
                    # range delete. Only later chunks of evicted multi-chunk
                    # traces (rare) are deleted one by one.
                    row = db.execute("SELECT chunk_ids FROM traces WHERE seq > ? ORDER BY seq LIMIT 1",
                                     (limit_seq,)).fetchone()
                    bound = int(row[0].split(",", 1)[0]) if row else self._next_chunk
                    db.execute("DELETE FROM chunks WHERE id < ?", (bound,))
                    multi = db.execute("SELECT chunk_ids FROM traces WHERE seq <= ? AND instr(chunk_ids, ',') > 0",
                                       (limit_seq,)).fetchall()
                    db.executemany("DELETE FROM chunks WHERE id = ?",
                                   ((c,) for (ids,) in multi for c in map(int, ids.split(",")) if c >= bound))
                    deleted = db.execute("DELETE FROM traces WHERE seq <= ?", (limit_seq,)).rowcount
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self.trace_count = count - deleted
        return deleted

    # -- trace queries -----------------------------------------------------
    def list_traces(self, service: str | None = None, resource: str | None = None, error: int | None = None,
                    min_duration: int | None = None, limit: int = 50, max_duration: int | None = None) -> list[tuple]:
        """Index rows of the newest traces whose root span (or earliest span,
        rootless) matches; ``scan_traces`` matches on any span."""
        where: list[str] = []
        args: list[Any] = []
        if service:
            where.append("service = ?")
            args.append(service)
        if resource:
            where.append("resource = ?")
            args.append(resource)
        if error is not None:
            where.append("error = ?" if error else "error = 0")
            if error:
                args.append(1)
        if min_duration:
            where.append("duration >= ?")
            args.append(min_duration)
        if max_duration is not None:
            where.append("duration <= ?")
            args.append(max_duration)
        sql = "SELECT tid, high, service, resource, name, start, duration, error, span_count FROM traces"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY start DESC, seq DESC LIMIT ?"
        args.append(limit)
        with self.lock:
            return self.db.execute(sql, args).fetchall()

    def scan_traces(self, match: Callable[[list[Span]], bool], limit: int, max_scan: int) -> list[tuple]:
        """Rows as ``list_traces`` of the newest traces whose spans ``match``,
        reading at most ``max_scan`` traces (newest first, pages of 256; the
        lock is held per page read, spans are unpacked and matched outside it)."""
        out: list[tuple] = []
        unpackb = msgpack.unpackb
        scanned = 0
        after = ""  # keyset paging: rows arriving meanwhile neither repeat nor shift a page
        last: tuple[int, int] = (0, 0)
        while len(out) < limit and scanned < max_scan:
            page = min(256, max_scan - scanned)
            with self.lock:
                rows = self.db.execute(
                    "SELECT tid, high, service, resource, name, start, duration, error, span_count, chunk_ids, seq"
                    f" FROM traces{after} ORDER BY start DESC, seq DESC LIMIT ?",
                    (*last, page) if after else (page,)).fetchall()
                ids = [int(c) for row in rows for c in row[9].split(",")]
                blobs: dict[int, bytes] = {}
                for first in range(0, len(ids), 500):  # under SQLite's bound-parameter limit
                    part = ids[first:first + 500]
                    blobs.update(self.db.execute(
                        f"SELECT id, data FROM chunks WHERE id IN ({','.join('?' * len(part))})", part).fetchall())
            for row in rows:
                spans: list[Span] = []
                for c in row[9].split(","):
                    blob = blobs.get(int(c))
                    if blob is not None:  # evicted meanwhile
                        spans.extend(unpackb(blob, raw=False, strict_map_key=False))
                if spans and match(spans):
                    out.append(row[:9])
                    if len(out) == limit:
                        break
            if len(rows) < page:
                break
            scanned += page
            after = " WHERE (start, seq) < (?, ?)"
            last = (rows[-1][5], rows[-1][10])
        return out

    def get_trace(self, low_signed: int) -> tuple[str | None, list[Span]] | None:
        with self.lock:
            row = self.db.execute("SELECT high, chunk_ids FROM traces WHERE tid = ?", (low_signed,)).fetchone()
            if row is None:
                return None
            ids = [int(c) for c in row[1].split(",")]
            marks = ",".join("?" * len(ids))
            blobs = self.db.execute(f"SELECT data FROM chunks WHERE id IN ({marks}) ORDER BY id", ids).fetchall()
        spans: list[Span] = []
        for (blob,) in blobs:
            spans.extend(msgpack.unpackb(blob, raw=False, strict_map_key=False))
        return row[0], spans

    def counters(self) -> dict[str, int]:
        with self.lock:
            return dict(self.db.execute("SELECT name, value FROM counters").fetchall())

    # -- stats -------------------------------------------------------------
    def journal_rows(self) -> list[tuple[int, int, bytes]]:
        with self.lock:
            return self.db.execute("SELECT id, kind, data FROM journal ORDER BY id").fetchall()

    def journal_max(self) -> int:
        with self.lock:
            return self.db.execute("SELECT coalesce(max(id), 0) FROM journal").fetchone()[0]

    def flush_stats(self, live: dict[int, dict[Key, Entry]], journal_upto: int, width: int = 10) -> None:
        """Merge live buckets into ``stats`` rows and drop the journal rows ≤ ``journal_upto``."""
        with self.lock:
            db = self.db
            db.execute("BEGIN")
            try:
                self._merge_rows(((width, b, k, e) for b, entries in live.items() for k, e in entries.items()))
                db.execute("DELETE FROM journal WHERE id <= ?", (journal_upto,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _merge_rows(self, items: Iterable[tuple[int, int, Key, Entry]]) -> None:
        db = self.db
        for width, bucket, key, entry in items:
            args = (width, bucket, *key)
            row = db.execute("SELECT data FROM stats WHERE width = ? AND bucket = ? AND service = ? AND name = ? "
                             "AND resource = ? AND type = ? AND span_kind = ? AND http_status = ? AND is_root = ?",
                             args).fetchone()
            if row is not None:
                merged = Entry.unpack(row[0])
                merged.merge(entry)
                entry = merged
            db.execute("INSERT OR REPLACE INTO stats VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (*args, entry.pack()))

    def stats_rows(self) -> list[tuple]:
        """Every ``(width, bucket, key..., data)`` row (start-up and roll-up
        rebuild the all-time totals from them; windows use ``window_rows``)."""
        with self.lock:
            return self.db.execute("SELECT * FROM stats").fetchall()

    def window_rows(self, since_ns: int | None, until_ns: int | None,
                    service: str | None) -> list[tuple[str, str, str, str, bytes]]:
        """``(service, name, resource, type, data)`` of the rows whose bucket
        overlaps the window; per width, so the primary key bounds the scan."""
        sql, args = window_select("stats", "service, name, resource, type, data", since_ns, until_ns,
                                  [("service", service)])
        with self.lock:
            return self.db.execute(sql, args).fetchall()

    def rollup(self, now_ns: int, keep_10s_ns: int, keep_1h_ns: int) -> bool:
        """Fold 10 s rows older than ``keep_10s_ns`` into 1 h rows; delete 1 h rows
        older than ``keep_1h_ns``. Returns True when rows were deleted for good."""
        with self.lock:
            db = self.db
            old = db.execute("SELECT * FROM stats WHERE width = 10 AND bucket < ?",
                             (now_ns - keep_10s_ns,)).fetchall()
            db.execute("BEGIN")
            try:
                hourly: dict[tuple, Entry] = {}
                for row in old:
                    hour = row[1] - row[1] % HOUR_NS
                    k = (hour, tuple(row[2:9]))
                    e = Entry.unpack(row[9])
                    if k in hourly:
                        hourly[k].merge(e)
                    else:
                        hourly[k] = e
                self._merge_rows(((3600, h, key, e) for (h, key), e in hourly.items()))
                db.execute("DELETE FROM stats WHERE width = 10 AND bucket < ?", (now_ns - keep_10s_ns,))
                gone = db.execute("DELETE FROM stats WHERE bucket < ?", (now_ns - keep_1h_ns,)).rowcount
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return gone > 0

    def execute(self, sql: str, args: Any = ()) -> list[tuple]:
        """A read-only query for views and tests."""
        with self.lock:
            return self.db.execute(sql, args).fetchall()
