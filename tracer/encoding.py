"""msgpack encoders for the Datadog trace intake: v0.4 (maps) and v0.5 (string table).

Shapes (DESIGN, "Wire compatibility"):

- v0.4: ``[[{trace_id, span_id, parent_id, service, name, resource, type, start,
  duration, error, meta, metrics}, ...], ...]`` — one array of span maps per trace.
- v0.5: ``[string_table, traces]``; each span an array of exactly 12: service,
  name, resource (string indices), trace_id, span_id, parent_id, start,
  duration, error, meta (index→index), metrics (index→number), type (index).

Input: chunks as the buffer hands them over, flat lists of span records
(``tracer.span.FinishedSpan`` names the fields), one chunk per ``put``.
``trace_id`` on the wire is the low 64 bits; the high half is already in meta
``_dd.p.tid`` (put there by ``tracer.processor``). ``None`` service/type become
``""``.

Speed (see docs/performance.md): ``tracer._cencode`` (C, built at install
when a compiler is there) encodes a chunk in one call, to the same bytes as
the Python code here (v0.4: the same maps; the Python code may put the
fields a large chunk's spans share right after ``trace_id``, and its first
and last spans apart from the others); without it, pure Python on msgpack's C packer. Each trace
is packed on its own and its span dicts/lists die right away; building every
span's dict for a whole payload first and packing once keeps ~100k tracked
containers alive and lets the cyclic GC's full collections dominate (measured
2× slower). v0.4 refills reusable span maps; v0.5 looks strings up in a plain
``dict`` (CPython's specialised path) and adds a missing one where the
``KeyError`` comes up.

A meta value past ``MAX_VALUE_LEN`` characters (the pure-Python
``set_tag`` keeps it whole) is cut to it here, in a copy of its span's
dict: a chunk whose packed bytes (v0.5: whose new strings) are that long
is looked at, and packed again if one is (``_cut_long_values``). The C
v0.4 encoder leaves such a value as it is (the C span cut it when set).

Called on the writer thread only (or by benchmarks/tests); not thread-safe.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

import msgpack

from tracer.span import MAX_VALUE_LEN, META, RECORD_LEN, FinishedSpan, iter_records, load_speedup, records

# The C encoders (tracer/_cencode.c), when built: the same bytes, ~5x faster.
_cencode = load_speedup("_cencode")

_MASK64 = (1 << 64) - 1
_ENCODE_ERRORS = (TypeError, ValueError, OverflowError, UnicodeEncodeError)
# v0.4 span map keys, in the order they go on the wire.
_V04_KEYS = (
    "trace_id",
    "span_id",
    "parent_id",
    "service",
    "name",
    "resource",
    "type",
    "start",
    "duration",
    "error",
    "meta",
    "metrics",
)


_V04_MAP_HEADER = bytes((0x80 | len(_V04_KEYS),))
# _encode_flat's stand-ins for each span's first key, trace id and second
# key: None, this float and False pack (c0, cb + 8 bytes, c2) at ~half the
# cost of the two keys and the id (~430 instructions a span less), and the
# split on those 11 bytes skips ~12 bytes a step (bytes the packed spans
# seldom hold: the search's filter keys on each byte's low 6 bits, which
# here are those of '@', 'B' and 'K' only), against ~3 instructions a byte
# on the key and the id. The join puts the real bytes back. c0 is nowhere
# else in them: two matches cannot overlap, so a stray one (the same bytes
# inside a value) always adds a piece, which the count of pieces tells.
_V04_MARK = struct.unpack(">d", bytes.fromhex("400b82808b02420b"))[0]
_V04_STAND_INS = (None, _V04_MARK, False)
_V04_SEARCHED = b"".join(map(msgpack.packb, _V04_STAND_INS))
# What the join puts in front of each span's span_id value: its map header,
# then (with the chunk's trace id packed in between) these two.
_V04_FIRST_KEY = _V04_MAP_HEADER + msgpack.packb(_V04_KEYS[0])
_V04_SECOND_KEY = msgpack.packb(_V04_KEYS[1])
# Below this many spans a chunk's span maps cost less (callgrind, per chunk:
# 1 span 20.9 k vs 29.4 k, 2 spans 39.2 k vs 40.4 k, 3 spans 52.6 k vs 51.4 k).
_V04_FLAT_MIN_SPANS = 3
_NEVER = 1 << 62

# _encode_flat folds a parent id, service, name, resource, type or error
# that every span of a chunk has (or every span but the last, usually the
# local root, which finishes last): the key and value are packed once, into
# the bytes the join puts after the trace id, and left out of the packed
# list (each one ~200 instructions a span). The fields that may fold, by their index in
# a record; a layout's number has bit i set when the i-th folds.
#
# The meta and metrics dicts fold too when every span between the first and
# the last has equal ones (an N+1 query's spans, tagged alike; the first
# span holds the chunk's sampling tags and the last, the local root, the
# process's): both ends then go as span maps of their own, one before the
# others and one after. Each dict folded saves packing its key, its header
# and its items a span (~1-2 k instructions) for a compare of them (~150).
_V04_SCALAR_FOLDS = tuple(_V04_KEYS.index(key) for key in ("parent_id", "service", "name", "resource", "type", "error"))
_V04_TAG_FOLDS = (_V04_KEYS.index("meta"), _V04_KEYS.index("metrics"))
_V04_FOLDS = _V04_SCALAR_FOLDS + _V04_TAG_FOLDS
_V04_SCALARS = (1 << len(_V04_SCALAR_FOLDS)) - 1  # a layout's scalar bits
_V04_PACKED_KEYS = [msgpack.packb(key) for key in _V04_KEYS]
# Folding stores the kept values column by column (a slice store each)
# and saves ~400 instructions a span for each field folded;
# looking costs ~5-10 k a chunk; a last span set apart is packed as one span
# map (~21 k). So chunks of _V04_FOLD_MIN_SPANS spans or more are looked at;
# they fold when the spans times the fields folded reach _V04_FOLD_MIN, and
# set their last span apart when that adds _V04_APART_MIN more. Callgrind,
# a chunk's encoding against no folding, children of one root that comes
# last: 101 spans of bench_spans.py -23.1 %, a request and 100 identical
# queries -22.9 %, 100 different queries -17.6 %; 40 spans -16.2 % and
# -11.9 %; 31 spans (not looked at) +0.4 %; nothing shared, values
# alternating (each column counted in full, equal strs of other objects
# compared) +9.1 % at 32 spans, +1.0 % at 101 (the twelfth session's
# figures; with meta, metrics and the column stores, against 67bfef6:
# bench_spans.py -33.5 %, 100 queries tagged alike -42.9 %, 100 different
# -28.1 %, nothing shared +0.1 %, docs/performance.md).
_V04_FOLD_MIN = 64
_V04_APART_MIN = 64
_V04_FOLD_MIN_SPANS = 32


class _Layout(NamedTuple):
    keyed: list[Any]  # one span's stand-ins and keys, None where its values go
    or_empty: tuple[int, ...]  # where service's and type's values go, when not folded ("" for None)
    columns: tuple[tuple[int, int], ...]  # (place in a span's items, field): each value kept but the trace id
    pairs: int  # fields folded
    searched: bytes  # the stand-ins' bytes, split on


def _v04_layout(fold: int) -> _Layout:
    folded = [field for i, field in enumerate(_V04_FOLDS) if fold >> i & 1]
    kept = [field for field in range(len(_V04_KEYS)) if field not in folded]
    keyed: list[Any] = [item for field in kept for item in (_V04_KEYS[field], None)]
    if not fold:
        keyed[:3] = _V04_STAND_INS
        places = [2 * i + 1 for i in range(len(kept))]
        searched = _V04_SEARCHED
    else:
        # The values are stored column by column, so the trace id's value
        # needs no place: the mark alone stands in for the first key, the
        # trace id and the second key (two objects a span fewer to pack).
        # Its 9 bytes have no border (no prefix of them is a suffix): two
        # matches cannot overlap, and a stray one still adds a piece.
        keyed[:3] = (_V04_MARK,)
        places = [2 * i - 1 for i in range(len(kept))]
        searched = msgpack.packb(_V04_MARK)
    or_empty = tuple(places[kept.index(field)] for field in _V04_OR_EMPTY_FIELDS if field in kept)
    columns = tuple((places[i], field) for i, field in enumerate(kept) if i)
    return _Layout(keyed, or_empty, columns, len(folded), searched)


# service and type: None (or any falsy value) is "" on the wire, and a None
# shared by every span folds as "".
_V04_OR_EMPTY_FIELDS = (_V04_KEYS.index("service"), _V04_KEYS.index("type"))
# Layout 0 (nothing folds): the keys at even places, a record's values at
# odd ones (the first key, the trace id and the second key as stand-ins).
_V04_LAYOUTS = [_v04_layout(fold) for fold in range(1 << len(_V04_FOLDS))]
# For each field that may fold: its bit, its index in a record, the exact
# type its value must have (ids and error: int), and whether None may fold
# (as "": service and type).
_V04_FOLD_FIELDS = tuple(
    (1 << i, field, int if _V04_KEYS[field] in ("parent_id", "error") else str, field in _V04_OR_EMPTY_FIELDS)
    for i, field in enumerate(_V04_SCALAR_FOLDS)
)
# For meta and metrics: the bit and the index in a record.
_V04_TAG_FOLD_FIELDS = tuple((1 << (len(_V04_SCALAR_FOLDS) + i), field) for i, field in enumerate(_V04_TAG_FOLDS))
# The folded fields' keys and values, packed, by (layout, the values): what
# _encode_flat joins without packing them for each chunk (a few services,
# names and types, error 0 or 1). Emptied when full.
_V04_FOLDED: dict[tuple[Any, ...], bytes] = {}
_V04_FOLDED_MAX = 256


def _v04_fold(chunk: list[Any], n: int) -> tuple[int, bytes, bool, bool]:
    """The layout (0: none), the packed keys and values of the fields that
    fold in ``chunk``, and whether its first and its last span are set
    apart (each packed as a span map of its own, the fields folded for the
    others).

    A field folds when every span (or every span but the last) has the
    first span's value there, an exact ``str`` (or None for service and
    type) or an exact ``int`` for parent_id and error; equal values of
    another type (``False`` or ``0.0`` for an error of ``0``) go on the wire
    as the first one. The next-to-last span's value is compared first, then
    the column's without the last span, then the last span's.

    meta and metrics fold when every span but the first and the last has a
    dict equal to the second span's (an equal value of another type, ``1.0``
    for ``1``, goes on the wire as the second span's); both ends are then
    set apart."""
    both = 0  # folds with the last span too
    head = 0  # folds without it
    shared = []
    for bit, field, cls, or_empty in _V04_FOLD_FIELDS:
        first = chunk[field]
        if (
            chunk[field - 2 * RECORD_LEN] == first
            and (type(first) is cls or (or_empty and first is None))
            and chunk[field : -RECORD_LEN : RECORD_LEN].count(first) == n - 1
        ):
            head |= bit
            shared.append(first)
            if chunk[field - RECORD_LEN] == first:
                both |= bit
        else:
            shared.append(None)
    tags = 0
    for bit, field in _V04_TAG_FOLD_FIELDS:
        second = chunk[RECORD_LEN + field]
        if (
            chunk[field - 2 * RECORD_LEN] == second
            and type(second) is dict
            and chunk[RECORD_LEN + field : -RECORD_LEN : RECORD_LEN].count(second) == n - 2
        ):
            tags |= bit
    pairs = _V04_LAYOUTS[both].pairs
    if tags:
        fold, first_apart, last_apart = head | tags, True, True
    elif (_V04_LAYOUTS[head].pairs - pairs) * (n - 1) >= _V04_APART_MIN:
        fold, first_apart, last_apart = head, False, True
    elif n * pairs >= _V04_FOLD_MIN:
        fold, first_apart, last_apart = both, False, False
    else:
        return 0, b"", False, False
    scalars = fold & _V04_SCALARS
    key = (scalars, *shared)
    packed = _V04_FOLDED.get(key)
    if packed is None:
        packed = b"".join(
            _V04_PACKED_KEYS[field] + msgpack.packb("" if value is None else value)
            for (bit, field, _, _), value in zip(_V04_FOLD_FIELDS, shared, strict=True)
            if scalars & bit
        )
        if len(_V04_FOLDED) >= _V04_FOLDED_MAX:
            _V04_FOLDED.clear()
        _V04_FOLDED[key] = packed
    if tags:  # dicts: packed for each chunk (~1 k instructions), not kept
        packed += b"".join(
            _V04_PACKED_KEYS[field] + msgpack.packb(chunk[RECORD_LEN + field])
            for bit, field in _V04_TAG_FOLD_FIELDS
            if tags & bit
        )
    return fold, packed, first_apart, last_apart


def _pack_loose(obj: Any) -> bytes:
    """msgpack's default packing (subclasses of str, int, dict, tuples), for
    what the v0.4 encoder's strict packer refused; raises as msgpack does."""
    return msgpack.packb(obj)  # type: ignore[no-any-return]


def _cut_long_values(chunk: list[Any]) -> list[Any] | None:
    """A copy of ``chunk`` whose meta values are cut to ``MAX_VALUE_LEN``
    characters (the dicts that hold a longer one copied, the span's own left
    as they are), or None when none is longer. The Datadog agent cuts them
    there too; ddtrace's encoder does as this one."""
    out = None
    for at in range(META, len(chunk), RECORD_LEN):
        meta = chunk[at].copy()  # atomic: a late set_tag on another thread does not break the loop
        for value in meta.values():
            if type(value) is str and len(value) > MAX_VALUE_LEN:
                if out is None:
                    out = chunk[:]
                out[at] = {k: v[:MAX_VALUE_LEN] if type(v) is str else v for k, v in meta.items()}
                break
    return out


class TraceTooBig(Exception):
    """One trace alone is larger than the payload limit."""


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return struct.pack(">BH", 0xDC, n)
    return struct.pack(">BI", 0xDD, n)


def _safe_str(value: Any) -> str:
    if type(value) is not str:
        try:
            value = str(value)
        except Exception:
            value = ""
    # msgpack refuses lone surrogates; replace them rather than lose the trace.
    return value.encode("utf-8", "replace").decode("utf-8")


def _safe_number(value: Any) -> float | int:
    if type(value) is int and -(1 << 63) <= value <= _MASK64:
        return value
    try:
        return float(value)
    except Exception:
        return 0.0


def _sanitized(chunk: list[Any]) -> list[Any]:
    """A copy of the flat chunk with every field coerced to its wire type
    (the slow path, taken only when packing the real records raised)."""
    out: list[Any] = []
    for r in records(chunk):
        out += (
            int(r.trace_id or 0),
            int(r.span_id or 0) & _MASK64,
            int(r.parent_id or 0) & _MASK64,
            _safe_str(r.service or ""),
            _safe_str(r.name or ""),
            _safe_str(r.resource or ""),
            _safe_str(r.span_type or ""),
            max(0, int(r.start_ns or 0)),
            max(0, int(r.duration_ns or 0)),
            1 if r.error else 0,
            {_safe_str(k): _safe_str(v) for k, v in dict(r.meta or {}).items()},
            {_safe_str(k): _safe_number(v) for k, v in dict(r.metrics or {}).items()},
        )
    return out


class PayloadV04:
    """Builds one v0.4 payload trace by trace, bounded by ``limit`` bytes."""

    version = "v0.4"

    __slots__ = ("limit", "size", "traces", "spans", "_parts", "_pack", "_rows", "_flat", "_flat_fold", "_out")

    def __init__(self, limit: int = 1 << 62) -> None:
        self.limit = limit
        self.size = 5  # room for the outer array header
        self.traces = 0
        self.spans = 0
        self._parts: list[bytes] = [b""]  # [0]: the array header, set by finish()
        # strict_types: exact str/int/float/dict/list only, which skips the
        # subclass checks msgpack makes for every other object (~10 % of the
        # encoding). What it refuses (a str or int subclass, a tuple) raises
        # TypeError and is packed again by ``_pack_loose``: the same bytes.
        self._pack = msgpack.Packer(strict_types=True).pack
        self._rows: list[dict[str, Any]] = []  # span maps reused by _encode, in wire key order
        self._flat: list[Any] = []  # _encode_flat's keys and values, reused for a chunk of the same size and layout
        self._flat_fold = 0  # the layout (folded fields) _flat was made for
        # With the C encoder the chunks go straight into one buffer (instead
        # of _parts), copied into the body once by finish().
        self._out = None if _cencode is None else _cencode.payload_v04()

    def _encode_flat(self, chunk: list[Any], n: int) -> bytes:
        """The chunk's array of span maps, packed in one call: the records'
        values interleaved with the constant keys (list slice stores, no
        Python code per span) pack as one array of key, value, key, ...,
        where each span's first key, trace id and second key are stand-ins
        (``_V04_SEARCHED``; in a folding layout the mark alone); one split on those and one join with the span's
        map header, first key, trace id and second key put the real bytes
        there, and the array header becomes the span count's. The same
        bytes as packing span maps (``_encode``), which this falls back to
        if the packed values hold the searched bytes too: the count of
        pieces tells. ~3.1 k instructions per span less than the span maps,
        ~11 k more per chunk (``_V04_FLAT_MIN_SPANS``).

        In a chunk of 32 spans or more, a parent id, service, name,
        resource, type or error that every span has (or every span but the
        last, which then goes as a span map of its own after the others),
        and meta or metrics that every span but the first and the last has
        (both then go as span maps of their own, before and after the
        others), is folded (``_v04_fold``): packed once, joined after each
        span's trace id, and left out of the list, whose values are then
        stored column by column. Those maps hold the same keys and values
        with the folded ones after ``trace_id`` (v0.4 maps are read by key:
        the agent, the test agent and agent_sim decode them alike)."""
        if n * RECORD_LEN != len(chunk):
            raise ValueError("a chunk is a whole number of span records")
        tid = chunk[0] & _MASK64  # the wire's trace_id: the low 64 bits
        fold, folded, first, last = _v04_fold(chunk, n) if n >= _V04_FOLD_MIN_SPANS else (0, b"", False, False)
        spans = n - first - last
        layout = _V04_LAYOUTS[fold]
        keyed, or_empty = layout.keyed, layout.or_empty
        width = len(keyed)
        flat = self._flat
        if len(flat) != spans * width or self._flat_fold != fold:
            # Only the values (odd places) are stored below: the keys of the
            # last chunk's list stay, and a chunk of its size and layout
            # reuses it (-17 ns per span of ~590: no list of 24 items per
            # span to fill and free).
            flat = self._flat = keyed * spans
            self._flat_fold = fold
        if fold:
            # Column by column, the ends left out: the folded ones are not
            # copied, and the trace id's stand-in stays where keyed put it.
            lo = RECORD_LEN if first else 0
            hi = len(chunk) - RECORD_LEN if last else len(chunk)
            for at, field in layout.columns:
                flat[at::width] = chunk[lo + field : hi : RECORD_LEN]
        else:
            flat[1::2] = chunk
            flat[1::width] = [_V04_MARK] * spans
        for at in or_empty:  # service, type: None (or any falsy value) is "" on the wire
            column = flat[at::width]
            if not all(column):
                # Usually None throughout (children without a type): no Python loop then.
                if column.count(None) == spans:
                    flat[at::width] = [""] * spans
                else:
                    flat[at::width] = [value or "" for value in column]
        # Packed inside a one-item list: the values sit as deep as in a span
        # map, so msgpack's nesting limit refuses the same ones.
        try:
            body = self._pack([flat])
        except TypeError:
            body = _pack_loose([flat])
        # Cut at each span's stand-ins, then join with the real bytes: one
        # search and one copy (bytes.replace searched twice, -35 ns per span
        # of ~625). The piece before the first span, the outer arrays'
        # headers ([array(24n)), becomes the chunk's header.
        pieces = body.split(layout.searched)
        if len(pieces) != spans + 1:
            return self._encode(chunk, _NEVER)
        # A value past MAX_VALUE_LEN characters makes its span's piece longer
        # than that (a character is a byte or more): one C pass over the
        # pieces' lengths, and only in a chunk that long.
        if len(body) + len(folded) > MAX_VALUE_LEN and max(len(folded), *map(len, pieces)) > MAX_VALUE_LEN:
            cut = _cut_long_values(chunk)
            if cut is not None:
                return self._encode_flat(cut, n)
        pieces[0] = _array_header(n)
        # The ends set apart: span maps (their one-byte array headers cut).
        if first:
            pieces[0] += self._encode(chunk[:RECORD_LEN], _NEVER)[1:]
        body = (_V04_FIRST_KEY + self._pack(tid) + folded + _V04_SECOND_KEY).join(pieces)
        if last:
            body += self._encode(chunk[-RECORD_LEN:], _NEVER)[1:]
        return body

    def _encode(self, chunk: list[Any], flat_from: int = _V04_FLAT_MIN_SPANS) -> bytes:
        """The chunk's array of span maps; from ``flat_from`` spans on, by
        ``_encode_flat`` (the span maps are in here, not in a method of
        their own: a call more costs a one-span chunk 3 %)."""
        tid = chunk[0] & _MASK64
        n = len(chunk) // RECORD_LEN
        if n >= flat_from:
            return self._encode_flat(chunk, n)
        rows = self._rows
        if len(rows) < n:
            rows.extend(dict.fromkeys(_V04_KEYS) for _ in range(n - len(rows)))
        # Refill reusable span maps rather than building a 12-key dict per span:
        # storing into an existing dict skips the allocation, hashing and
        # teardown (measured ~10 % faster for the whole encode). Every key is
        # assigned for each span, so nothing of a previous trace leaks through.
        spans = iter_records(chunk)
        for d, (
            _,
            span_id,
            parent_id,
            service,
            name,
            resource,
            span_type,
            start,
            duration,
            error,
            meta,
            metrics,
        ) in zip(
            rows,
            spans,
            strict=False,  # rows may outnumber the spans
        ):
            d["trace_id"] = tid
            d["span_id"] = span_id
            d["parent_id"] = parent_id
            d["service"] = service or ""
            d["name"] = name
            d["resource"] = resource
            d["type"] = span_type or ""
            d["start"] = start
            d["duration"] = duration
            d["error"] = error
            d["meta"] = meta
            d["metrics"] = metrics
        if len(rows) != n:
            rows = rows[:n]
        try:
            body = self._pack(rows)
        except TypeError:
            body = _pack_loose(rows)
        if len(body) > MAX_VALUE_LEN:
            cut = _cut_long_values(chunk)
            if cut is not None:
                return self._encode(cut, flat_from)
        return body

    def put(self, chunk: list[Any]) -> bool:
        """Add one trace chunk. False (nothing added) when it would push a
        non-empty payload past ``limit``; raises ``TraceTooBig`` when the
        chunk alone does not fit."""
        encode = self._encode if _cencode is None else _cencode.encode_v04
        try:
            body = encode(chunk)
        except _ENCODE_ERRORS:
            body = encode(_sanitized(chunk))
        size = self.size + len(body)
        if size > self.limit:
            if self.traces:
                return False
            raise TraceTooBig(len(body))
        if self._out is None:
            self._parts.append(body)
        else:
            _cencode.payload_append(self._out, body)
        self.size = size
        self.traces += 1
        self.spans += len(chunk) // RECORD_LEN
        return True

    def put_many(self, batch: list[Any], start: int = 0) -> int:
        """Add the chunks of ``batch[start:]`` (the writer's ``(trace, chunk)``
        pairs; None entries skipped) in one loop, until one does not fit or
        does not encode as it is. Returns that one's index (``len(batch)``
        when all were added): ``put`` handles it alone, with its fallbacks."""
        if self._out is not None:
            # The loop in C; it encodes each entry itself, onto the end of
            # the payload's buffer: a processor descriptor's trace-level tags
            # go straight into the output (processor.process_chunks).
            # It pauses every millisecond (_cencode.c, GIL_YIELD_NS): this
            # loop's back edge lets the interpreter hand the GIL to an app
            # thread that has waited its switch interval for it.
            paused = True
            while paused:
                start, self.size, self.traces, self.spans, paused = _cencode.put_many_v04(
                    batch, start, self._out, self.limit, self.traces, self.spans
                )
            return start
        encode = self._encode
        parts = self._parts
        limit = self.limit
        size = self.size
        traces = self.traces
        spans = self.spans
        index = start - 1
        for item in batch[start:] if start else batch:
            index += 1
            if item is None:
                continue
            chunk = item[1]
            try:
                body = encode(chunk)
            except Exception:
                break
            grown = size + len(body)
            if grown > limit:
                break
            parts.append(body)
            size = grown
            traces += 1
            spans += len(chunk) // RECORD_LEN
        else:
            index = len(batch)
        self.size = size
        self.traces = traces
        self.spans = spans
        return index

    def finish(self) -> bytes:
        """The body (one copy of the parts). Call once."""
        self._rows = []  # drop the last trace's meta/metrics references
        self._flat = []
        if self._out is not None:
            return _cencode.payload_finish(self._out, self.traces)  # type: ignore[no-any-return]
        self._parts[0] = _array_header(self.traces)
        return b"".join(self._parts)


class _StringTable:
    """The v0.5 string table: ``index`` maps str → position in ``strings``.

    ``index`` is an exact ``dict`` so lookups take CPython's specialised
    dict-subscript path (a ``__missing__`` subclass measured ~25 % slower for
    the whole span); the encoder catches the rare ``KeyError`` (try blocks
    are free in 3.11 until something raises) and calls :meth:`add`."""

    __slots__ = ("index", "strings", "nbytes", "added")

    def __init__(self) -> None:
        # None (an unset service or type) is "" on the wire: mapping it here
        # saves the encoder an ``or ""`` per field.
        self.index: dict[Any, int] = {"": 0, None: 0}
        self.strings: list[str] = [""]
        self.nbytes = 0
        self.added: list[Any] = []  # keys inserted since the last mark, for rollback

    def add(self, value: Any) -> int:
        """The index of ``value``, added (as clean UTF-8 text) if new."""
        index = self.index
        position = index.get(value)
        if position is not None:
            return position
        text = value if type(value) is str else _safe_str(value)
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:  # lone surrogates: msgpack would refuse the whole table
            text = _safe_str(text)
            size = len(text.encode("utf-8"))
        position = index.get(text)
        if position is None:
            position = index[text] = len(self.strings)
            self.strings.append(text)
            self.nbytes += size + 5
            self.added.append(text)
        if text is not value:
            index[value] = position  # the original maps to its cleaned text
            self.added.append(value)
        return position

    def add_span(self, s: Any) -> None:
        """Add every string of span ``s`` (the encoder's miss path)."""
        index = self.index
        add = self.add
        for value in (s.service or "", s.name, s.resource, s.span_type or ""):
            if value not in index:
                add(value)
        for key, value in s.meta.items():
            if key not in index:
                add(key)
            if value not in index:
                add(value)
        for key in s.metrics:
            if key not in index:
                add(key)

    def mark(self) -> tuple[int, int]:
        self.added = []
        return len(self.strings), self.nbytes

    def rollback(self, mark: tuple[int, int]) -> None:
        """Forget the strings added since ``mark`` (a chunk that did not fit)."""
        for key in self.added:
            self.index.pop(key, None)
        self.added = []
        del self.strings[mark[0] :]
        self.nbytes = mark[1]


def _v05_span(st: dict[Any, int], tid: int, s: Any) -> tuple[Any, ...]:
    """One v0.5 span array, after ``_StringTable.add_span(s)`` (the miss path;
    the hot loop in ``PayloadV05._encode`` inlines the same fields)."""
    try:
        return (
            st[s.service or ""],
            st[s.name],
            st[s.resource],
            tid,
            s.span_id,
            s.parent_id,
            s.start_ns,
            s.duration_ns or 0,
            s.error,
            {st[k]: st[v] for k, v in s.meta.items()},
            {st[k]: v for k, v in s.metrics.items()},
            st[s.span_type or ""],
        )
    except KeyError:
        raise ValueError("string table out of sync") from None


class PayloadV05:
    """Builds one v0.5 payload (its own string table), bounded by ``limit`` bytes."""

    version = "v0.5"

    __slots__ = ("limit", "traces", "spans", "_traces_size", "_parts", "_table", "_pack")

    def __init__(self, limit: int = 1 << 62) -> None:
        self.limit = limit
        self.traces = 0
        self.spans = 0
        self._traces_size = 0
        self._parts: list[bytes] = [b"", b""]  # [0]: "[", the string table; [1]: array header
        self._table = _StringTable()
        self._pack = msgpack.Packer().pack

    @property
    def size(self) -> int:
        return 16 + self._table.nbytes + self._traces_size

    def _encode(self, chunk: list[Any]) -> bytes:
        table = self._table
        st = table.index
        add = table.add
        tid = chunk[0] & _MASK64
        spans: list[tuple[Any, ...]] = []
        for (
            _,
            span_id,
            parent_id,
            service,
            name,
            resource,
            span_type,
            start,
            duration,
            error,
            meta,
            metrics,
        ) in iter_records(chunk):
            # Copies (atomic under the GIL): add() runs Python code, and another
            # thread may set a tag on this finished span meanwhile; the change
            # is then wholly in this payload or wholly out, as in C.
            meta = meta.copy()
            metrics = metrics.copy()
            try:
                # Inlined (a helper call per span costs ~100 ns); plain loops
                # because a comprehension is a function call in 3.11 and
                # map/zip over ``st.__getitem__`` measured slower for the 2-4
                # tags spans usually have. A tuple packs as an array.
                meta_ids = {}
                for k, v in meta.items():
                    try:
                        meta_ids[st[k]] = st[v]
                    except KeyError:  # typically a new value (a URL): add just this pair
                        meta_ids[add(k)] = add(v)
                metric_ids = {}
                for k, v in metrics.items():
                    try:
                        metric_ids[st[k]] = v
                    except KeyError:
                        metric_ids[add(k)] = v
                spans.append(
                    (
                        st[service],
                        st[name],
                        st[resource],
                        tid,
                        span_id,
                        parent_id,
                        start,
                        duration,
                        error,
                        meta_ids,
                        metric_ids,
                        st[span_type],
                    )
                )
            except KeyError:  # a new service, name, resource or type: rebuild the span the slow way
                s = FinishedSpan(
                    tid, span_id, parent_id, service, name, resource, span_type, start, duration, error, meta, metrics
                )
                table.add_span(s)
                spans.append(_v05_span(st, tid, s))
        return self._pack(spans)

    def put(self, chunk: list[Any]) -> bool:
        """As ``PayloadV04.put``; a refused chunk leaves the string table as it was."""
        table = self._table
        mark = table.mark()
        if _cencode is None:
            encode = self._encode
        else:
            def encode(chunk: list[Any]) -> bytes:
                return _cencode.encode_v05(chunk, table.index, table.add)  # type: ignore[no-any-return]
        try:
            body = encode(chunk)
        except _ENCODE_ERRORS:
            body = encode(_sanitized(chunk))
        if table.nbytes - mark[1] > MAX_VALUE_LEN:
            # A meta value past MAX_VALUE_LEN characters adds that many bytes
            # to the table (a cut one is what the table then holds): this
            # chunk's strings again, its long values cut.
            cut = _cut_long_values(chunk)
            if cut is not None:
                table.rollback(mark)
                mark = table.mark()
                try:
                    body = encode(cut)
                except _ENCODE_ERRORS:
                    body = encode(_sanitized(cut))
        if self.size + len(body) > self.limit:
            grown = table.nbytes - mark[1]
            table.rollback(mark)
            if self.traces:
                return False
            raise TraceTooBig(len(body) + grown)
        self._parts.append(body)
        self._traces_size += len(body)
        self.traces += 1
        self.spans += len(chunk) // RECORD_LEN
        return True

    def put_many(self, batch: list[Any], start: int = 0) -> int:
        """As ``PayloadV04.put_many`` (here a ``put`` per chunk: each has its
        own string table mark)."""
        index = start - 1
        for item in batch[start:] if start else batch:
            index += 1
            if item is None:
                continue
            try:
                if not self.put(item[1]):
                    return index
            except Exception:
                return index
        return len(batch)

    def finish(self) -> bytes:
        """The body (one copy of the parts). Call once."""
        self._parts[0] = b"\x92" + self._pack(self._table.strings)
        self._parts[1] = _array_header(self.traces)
        return b"".join(self._parts)


PAYLOADS: dict[str, type[PayloadV04] | type[PayloadV05]] = {"v0.4": PayloadV04, "v0.5": PayloadV05}


def encode_v04(chunks: list[list[Any]]) -> bytes:
    """Encode finished, processed chunks (one trace chunk each) as a v0.4 body."""
    payload = PayloadV04()
    for chunk in chunks:
        payload.put(chunk)
    return payload.finish()


def encode_v05(chunks: list[list[Any]]) -> bytes:
    """Encode finished, processed chunks as a v0.5 body."""
    payload = PayloadV05()
    for chunk in chunks:
        payload.put(chunk)
    return payload.finish()


def v05_to_v04(body: bytes) -> bytes:
    """Re-encode a v0.5 body as v0.4 (used once, when a receiver refuses v0.5)."""
    strings, traces = msgpack.unpackb(body, strict_map_key=False, raw=False)

    def text(index: int) -> str:
        return strings[index]

    out = []
    for trace in traces:
        spans = []
        for s in trace:
            spans.append(
                {
                    "trace_id": s[3],
                    "span_id": s[4],
                    "parent_id": s[5],
                    "service": text(s[0]),
                    "name": text(s[1]),
                    "resource": text(s[2]),
                    "type": text(s[11]),
                    "start": s[6],
                    "duration": s[7],
                    "error": s[8],
                    "meta": {text(k): text(v) for k, v in s[9].items()},
                    "metrics": {text(k): v for k, v in s[10].items()},
                }
            )
        out.append(spans)
    return msgpack.packb(out)
