/* tracer._cencode: the v0.4 and v0.5 chunk encoders in C (optional; the
 * pure-Python encoders in tracer/encoding.py do the same on msgpack's packer
 * and are used when this does not build).
 *
 * Both write exactly the bytes msgpack.Packer() writes for the structures the
 * Python encoders build (tests/tracer/test_cencode.py compares them): the
 * smallest int, str, array and map forms, floats as float64, use_bin_type
 * str8. A value msgpack could not pack (a type it does not know, an int
 * beyond 64 bits, a lone surrogate) raises the same exception types, so that
 * PayloadV04/V05.put() take their sanitizing path as before.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_cencode.h"
#include "_cmodule.h"

/* msgpack.Packer() (1.1 and later, in C and in its fallback.py:
 * DEFAULT_RECURSE_LIMIT) refuses objects nested deeper than 1024 levels from
 * the top object it packs. The Python encoders pack [span, ...] (v0.4: a span is a
 * map, its meta/metrics maps are values in it) or [[span fields], ...] (v0.5),
 * so a span field is 2 levels down: pack_obj counts depth from a span field,
 * and a v0.5 metric value is packed at depth 1, as inside its map. */
#define MAX_DEPTH (1024 - 2)

int
pack_uint(Out *o, uint64_t v)
{
    if (v < 0x80)
        return put1(o, (uint8_t)v);
    if (v <= 0xff)
        return put_be(o, 0xcc, v, 1);
    if (v <= 0xffff)
        return put_be(o, 0xcd, v, 2);
    if (v <= 0xffffffffULL)
        return put_be(o, 0xce, v, 4);
    return put_be(o, 0xcf, v, 8);
}

static int
pack_negative(Out *o, int64_t v)
{
    if (v >= -32)
        return put1(o, (uint8_t)(0xe0 | (v & 0x1f)));
    if (v >= -128)
        return put_be(o, 0xd0, (uint64_t)v, 1);
    if (v >= -32768)
        return put_be(o, 0xd1, (uint64_t)v, 2);
    if (v >= -2147483648LL)
        return put_be(o, 0xd2, (uint64_t)v, 4);
    return put_be(o, 0xd3, (uint64_t)v, 8);
}

static int
pack_int(Out *o, PyObject *obj)
{
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000 && PyLong_SHIFT == 30
    /* 3.11's layout (Py_SIZE: the signed digit count): a non-negative int
     * below 2**64 read inline, without a call (ids, times, counts). */
    const digit *d = ((PyLongObject *)obj)->ob_digit;
    switch (Py_SIZE(obj)) {
    case 0:
        return put1(o, 0);
    case 1:
        return pack_uint(o, d[0]);
    case 2:
        return pack_uint(o, d[0] | (uint64_t)d[1] << 30);
    case 3:
        if (d[2] < 16)
            return pack_uint(o, d[0] | (uint64_t)d[1] << 30 | (uint64_t)d[2] << 60);
    }
#endif
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow == 0)
        return v >= 0 ? pack_uint(o, (uint64_t)v) : pack_negative(o, v);
    if (overflow > 0) {
#if PY_VERSION_HEX < 0x030E0000
        /* A 64-bit id (half of them are >= 2**63): the mask is the value, read
         * without PyLong_AsUnsignedLongLong's _PyLong_AsByteArray (~190 instructions). */
        if (_PyLong_NumBits(obj) <= 64)
            return pack_uint(o, PyLong_AsUnsignedLongLongMask(obj));
#endif
        unsigned long long u = PyLong_AsUnsignedLongLong(obj); /* OverflowError past 2**64-1 */
        if (u == (unsigned long long)-1 && PyErr_Occurred())
            return -1;
        return pack_uint(o, u);
    }
    PyErr_SetString(PyExc_OverflowError, "int too big to convert");
    return -1;
}

int
pack_header(Out *o, Py_ssize_t n, uint8_t fix, uint8_t b16, uint8_t b32)
{
    if (n < 16)
        return put1(o, (uint8_t)(fix | n));
    if (n < 0x10000)
        return put_be(o, b16, (uint64_t)n, 2);
    if ((uint64_t)n > 0xffffffffULL) {
        PyErr_SetString(PyExc_ValueError, "too many items for msgpack");
        return -1;
    }
    return put_be(o, b32, (uint64_t)n, 4);
}

#define pack_array_header(o, n) pack_header(o, n, 0x90, 0xdc, 0xdd)
#define pack_map_header(o, n) pack_header(o, n, 0x80, 0xde, 0xdf)

/* data with a 8/16/32-bit length header of types type8, type8 + 1, type8 + 2
 * (str: 0xd9..0xdb, bin: 0xc4..0xc6); fix >= 0: one byte fix | n below 32. */
static int
pack_sized(Out *o, const char *data, Py_ssize_t n, int fix, uint8_t type8)
{
    if ((uint64_t)n > 0xffffffffULL) {
        PyErr_SetString(PyExc_ValueError, "str or bytes too large for msgpack");
        return -1;
    }
    if (reserve(o, 5 + n) < 0) /* one reserve for the header and the data */
        return -1;
    if (fix >= 0 && n < 32)
        o->buf[o->len++] = (char)(fix | n);
    else if (n < 0x100)
        put_be(o, type8, (uint64_t)n, 1);
    else if (n < 0x10000)
        put_be(o, (uint8_t)(type8 + 1), (uint64_t)n, 2);
    else
        put_be(o, (uint8_t)(type8 + 2), (uint64_t)n, 4);
    memcpy(o->buf + o->len, data, (size_t)n);
    o->len += n;
    return 0;
}

static int
pack_str(Out *o, PyObject *obj)
{
    Py_ssize_t n;
    if (PyUnicode_IS_COMPACT_ASCII(obj)) /* its UTF-8 is its data (no call) */
        return pack_sized(o, (const char *)PyUnicode_DATA(obj), PyUnicode_GET_LENGTH(obj), 0xa0, 0xd9);
    const char *data = PyUnicode_AsUTF8AndSize(obj, &n); /* UnicodeEncodeError on a lone surrogate */
    if (data == NULL)
        return -1;
    return pack_sized(o, data, n, 0xa0, 0xd9);
}

/* bytes and bytearray: msgpack's use_bin_type bin 8/16/32. */
#define pack_bin(o, data, n) pack_sized(o, data, n, -1, 0xc4)

static int
pack_float(Out *o, double d)
{
    uint64_t bits;
    memcpy(&bits, &d, 8);
    return put_be(o, 0xcb, bits, 8);
}

/* Any value, as msgpack.Packer() (default options) packs it. */
int
pack_obj(Out *o, PyObject *obj, int depth)
{
    if (depth > MAX_DEPTH) {
        PyErr_SetString(PyExc_ValueError, "recursion limit exceeded");
        return -1;
    }
    /* The usual exact types first (PyFloat_Check on anything else calls
     * PyType_IsSubtype). */
    PyTypeObject *type = Py_TYPE(obj);
    if (type == &PyUnicode_Type)
        return pack_str(o, obj);
    if (type == &PyLong_Type)
        return pack_int(o, obj);
    if (type == &PyDict_Type)
        goto dict;
    if (PyUnicode_Check(obj))
        return pack_str(o, obj);
    if (obj == Py_None)
        return put1(o, 0xc0);
    if (obj == Py_True)
        return put1(o, 0xc3);
    if (obj == Py_False)
        return put1(o, 0xc2);
    if (PyLong_Check(obj))
        return pack_int(o, obj);
    if (PyFloat_Check(obj))
        return pack_float(o, PyFloat_AS_DOUBLE(obj));
    if (PyBytes_Check(obj))
        return pack_bin(o, PyBytes_AS_STRING(obj), PyBytes_GET_SIZE(obj));
    if (PyByteArray_Check(obj))
        return pack_bin(o, PyByteArray_AS_STRING(obj), PyByteArray_GET_SIZE(obj));
    if (PyDict_Check(obj)) {
    dict:
        if (pack_map_header(o, PyDict_GET_SIZE(obj)) < 0)
            return -1;
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (PyDict_Next(obj, &pos, &key, &value)) {
            if (pack_obj(o, key, depth + 1) < 0 || pack_obj(o, value, depth + 1) < 0)
                return -1;
        }
        return 0;
    }
    if (PyList_Check(obj) || PyTuple_Check(obj)) {
        Py_ssize_t n = PySequence_Fast_GET_SIZE(obj);
        if (pack_array_header(o, n) < 0)
            return -1;
        for (Py_ssize_t i = 0; i < n; i++) {
            /* No Python code runs while packing: the list cannot change size. */
            if (pack_obj(o, PySequence_Fast_GET_ITEM(obj, i), depth + 1) < 0)
                return -1;
        }
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "can not serialize '%.200s' object", Py_TYPE(obj)->tp_name);
    return -1;
}

/* `value or ""`: service and type may be None. */
static int
pack_str_or_empty(Out *o, PyObject *obj)
{
    if (obj == Py_None)
        return put1(o, 0xa0);
    if (PyUnicode_CheckExact(obj)) /* its truth is its length (no call) */
        return pack_str(o, obj);
    int truth = PyObject_IsTrue(obj);
    if (truth < 0)
        return -1;
    return truth ? pack_obj(o, obj, 0) : put1(o, 0xa0);
}

static PyObject *
finish(Out *o, int ok)
{
    PyObject *result = ok ? PyBytes_FromStringAndSize(o->buf, o->len) : NULL;
    PyMem_Free(o->buf);
    return result;
}

/* Start encoding a chunk: its records (NULL on error), how many spans, the
 * wire trace id (the low 64 bits of the first record's), and the outer array
 * header appended to o. */
static PyObject **
begin_chunk(PyObject *chunk, Py_ssize_t *spans, uint64_t *tid, Out *o)
{
    if (!PyList_CheckExact(chunk) && !PyTuple_CheckExact(chunk)) {
        PyErr_SetString(PyExc_TypeError, "a chunk is a list of span records");
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(chunk);
    if (n == 0 || n % RECORD_LEN) {
        PyErr_SetString(PyExc_ValueError, "a chunk holds whole span records");
        return NULL;
    }
    *spans = n / RECORD_LEN;
    PyObject **items = PySequence_Fast_ITEMS(chunk);
    PyObject *first = Py_NewRef(items[0]); /* a non-int's __index__ may change the chunk: checked after */
    unsigned long long low = PyLong_AsUnsignedLongLongMask(first);
    Py_DECREF(first);
    if ((low == (unsigned long long)-1 && PyErr_Occurred()) || _cencode_chunk_changed(chunk, items, n))
        return NULL;
    *tid = low;
    return pack_array_header(o, *spans) < 0 ? NULL : items;
}

/* The v0.4 span map keys as msgpack fixstr (header byte, then the name),
 * in 16-byte slots: copied as one fixed-size move each. */
#define KEY_SLOT 16
static const char V04_KEYS[RECORD_LEN][KEY_SLOT] = {
    "\xa8" "trace_id", "\xa7" "span_id", "\xa9" "parent_id", "\xa7" "service", "\xa4" "name", "\xa8" "resource",
    "\xa4" "type",     "\xa5" "start",   "\xa8" "duration",  "\xa5" "error",   "\xa4" "meta", "\xa7" "metrics"};
static PyObject *empty_str; /* "" */

static inline int
put_key(Out *o, int i)
{
    if (reserve(o, KEY_SLOT) < 0)
        return -1;
    memcpy(o->buf + o->len, V04_KEYS[i], KEY_SLOT);
    o->len += 1 + (V04_KEYS[i][0] & 0x1f);
    return 0;
}

/* The meta (i == META) or metrics of record s, with the chunk's trace-level
 * tags when it is the local root or the first record. */
static int
pack_span_dict(Out *o, PyObject *dict, int i, Py_ssize_t s, const ChunkTags *tags)
{
    int root = s == tags->root, first = s == 0;
    if (!root && !first)
        return pack_obj(o, dict, 0);
    if (i == META)
        return _cencode_pack_tagged(o, dict, tags->root_meta, root ? tags->n_root_meta : 0, tags->first_meta,
                                    first ? tags->n_first_meta : 0);
    return _cencode_pack_tagged(o, dict, tags->root_metrics, root, tags->first_metrics, first);
}

int
_cencode_chunk_v04(Out *o, PyObject *chunk, PyObject *const *item)
{
    Py_ssize_t spans;
    uint64_t tid;
    PyObject **items = begin_chunk(chunk, &spans, &tid, o);
    if (items == NULL)
        return -1;
    ChunkTags tags;
    if (item != NULL && _cencode_chunk_tags(item, spans, &tags) < 0)
        return -1;
    /* Reading the descriptor and a tagged dict's keys can run Python code
     * (__eq__, __bool__) that changes the chunk: checked after each. */
    Py_ssize_t size = PySequence_Fast_GET_SIZE(chunk);
    if (item != NULL && _cencode_chunk_changed(chunk, items, size))
        return -1;
    for (Py_ssize_t s = 0; s < spans; s++) {
        PyObject **r = items + s * RECORD_LEN;
        if (put1(o, 0x80 | RECORD_LEN) < 0)
            return -1;
        for (int i = 0; i < RECORD_LEN; i++) {
            if (put_key(o, i) < 0)
                return -1;
            int rc;
            if (i == 0)
                rc = pack_uint(o, tid);
            else if (i == 3 || i == 6) { /* service, type */
                PyObject *v = Py_NewRef(r[i]); /* a non-str's __bool__ may change the chunk: checked after */
                rc = pack_str_or_empty(o, v);
                if (rc == 0 && v != Py_None && !PyUnicode_CheckExact(v) && _cencode_chunk_changed(chunk, items, size))
                    rc = -1;
                Py_DECREF(v);
            }
            else if (i >= META && item != NULL) {
                PyObject *dict = Py_NewRef(r[i]); /* held: see _cencode_chunk_changed */
                rc = pack_span_dict(o, dict, i, s, &tags);
                Py_DECREF(dict);
                if (rc == 0 && _cencode_chunk_changed(chunk, items, size))
                    rc = -1;
            }
            else
                rc = pack_obj(o, r[i], 0);
            if (rc < 0)
                return -1;
        }
    }
    return 0;
}

static PyObject *
encode_chunk_v04(PyObject *chunk, PyObject *const *item)
{
    Out o = {NULL, 0, 0};
    return finish(&o, _cencode_chunk_v04(&o, chunk, item) == 0);
}

/* encode_v04(chunk) -> bytes: one trace as a v0.4 array of span maps. */
static PyObject *
encode_v04(PyObject *Py_UNUSED(module), PyObject *chunk)
{
    return encode_chunk_v04(chunk, NULL);
}

int
_cencode_item_v04(Out *o, PyObject *item)
{
    Py_ssize_t n = PyTuple_CheckExact(item) ? PyTuple_GET_SIZE(item) : 0;
    if (n != 2 && n != 8) {
        PyErr_SetString(PyExc_TypeError, "encode_v04_item((trace, chunk) or a chunk descriptor)");
        return -1;
    }
    PyObject *const *fields = &PyTuple_GET_ITEM(item, 0);
    return _cencode_chunk_v04(o, fields[1], n == 8 ? fields : NULL);
}

/* encode_v04_item(item) -> bytes: an entry of the writer's batch, either
 * (trace, chunk) (tagged already) or the descriptor of processor.process_chunks
 * with defer=True, whose trace-level tags are written here (_cencode_tags.c). */
static PyObject *
encode_v04_item(PyObject *Py_UNUSED(module), PyObject *item)
{
    Out o = {NULL, 0, 0};
    return finish(&o, _cencode_item_v04(&o, item) == 0);
}

/* The string-table index of value: index[value], or add(value) (the Python
 * table's miss path: it cleans, counts and records the new string). */
static int
string_index(Out *o, PyObject *index, PyObject *add, PyObject *value, int pack)
{
    PyObject *position = PyDict_GetItemWithError(index, value); /* borrowed */
    PyObject *added = NULL;
    if (position == NULL) {
        if (PyErr_Occurred())
            return -1;
        added = position = PyObject_CallOneArg(add, value);
        if (position == NULL)
            return -1;
    }
    int rc = 0;
    if (pack)
        rc = PyLong_Check(position) ? pack_int(o, position) : pack_obj(o, position, 0);
    Py_XDECREF(added);
    return rc;
}

/* One span of encode_v05, from meta and metrics snapshots the caller owns:
 * the `add` callback runs Python code (and may release the GIL), so another
 * thread may change the span's own dicts meanwhile (a late set_tag on a
 * finished span). Reading only the snapshots, a late change is in the
 * payload or not, never half, and each map header matches its entries. */
static int
encode_v05_span(Out *o, PyObject *index, PyObject *add, PyObject **r, uint64_t tid, PyObject *meta,
                PyObject *metrics)
{
    /* Make sure every string is in the table first, in the Python order. */
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(meta, &pos, &key, &value)) {
        int has_value = PyDict_Contains(index, value); /* TypeError when unhashable, as st[v] */
        if (has_value < 0)
            return -1;
        int has_key = PyDict_Contains(index, key);
        if (has_key < 0)
            return -1;
        if (!has_key || !has_value) { /* as `ids[add(k)] = add(v)`: the value first */
            if (string_index(o, index, add, value, 0) < 0 || string_index(o, index, add, key, 0) < 0)
                return -1;
        }
    }
    pos = 0;
    while (PyDict_Next(metrics, &pos, &key, &value)) {
        if (string_index(o, index, add, key, 0) < 0)
            return -1;
    }
    /* As PayloadV05._encode: when service, name, resource and type are all in
     * the table, their entries; else its slow path (_v05_span), which sends
     * `service or ""`, `type or ""` and `duration or 0`. */
    int all_present = 1;
    for (int i = 3; i <= 6 && all_present; i++) {
        all_present = PyDict_Contains(index, r[i]); /* TypeError when unhashable, as st[x] */
        if (all_present < 0)
            return -1;
    }
    PyObject *fields[4] = {r[3], r[4], r[5], r[6]}; /* service, name, resource, type (borrowed) */
    int zero_duration = 0;
    if (!all_present) {
        int truth;
        for (int i = 0; i < 4; i += 3) {
            if ((truth = PyObject_IsTrue(fields[i])) < 0)
                return -1;
            if (!truth)
                fields[i] = empty_str;
        }
        if ((truth = PyObject_IsTrue(r[8])) < 0)
            return -1;
        zero_duration = !truth;
        for (int i = 0; i < 4; i++) { /* all present: nothing to add (no extra lookups) */
            if (string_index(o, index, add, fields[i], 0) < 0)
                return -1;
        }
    }
    /* The span: [service, name, resource, trace_id, span_id, parent_id,
     * start, duration, error, meta, metrics, type]. */
    if (put1(o, 0x90 | 12) < 0 || string_index(o, index, add, fields[0], 1) < 0 ||
        string_index(o, index, add, fields[1], 1) < 0 || string_index(o, index, add, fields[2], 1) < 0 ||
        pack_uint(o, tid) < 0 || pack_obj(o, r[1], 0) < 0 || pack_obj(o, r[2], 0) < 0 ||
        pack_obj(o, r[7], 0) < 0 || (zero_duration ? put1(o, 0) : pack_obj(o, r[8], 0)) < 0 ||
        pack_obj(o, r[9], 0) < 0)
        return -1;
    if (pack_map_header(o, PyDict_GET_SIZE(meta)) < 0)
        return -1;
    pos = 0;
    while (PyDict_Next(meta, &pos, &key, &value)) {
        if (string_index(o, index, add, key, 1) < 0 || string_index(o, index, add, value, 1) < 0)
            return -1;
    }
    if (pack_map_header(o, PyDict_GET_SIZE(metrics)) < 0)
        return -1;
    pos = 0;
    while (PyDict_Next(metrics, &pos, &key, &value)) {
        if (string_index(o, index, add, key, 1) < 0 || pack_obj(o, value, 1) < 0)
            return -1;
    }
    if (string_index(o, index, add, fields[3], 1) < 0)
        return -1;
    return 0;
}

/* encode_v05(chunk, index, add) -> bytes: one trace as a v0.5 array of span
 * arrays, strings as indices of the payload's string table (``index``: str ->
 * int; ``add``: the table's method for a string it does not have yet).
 *
 * Strings are added in the order PayloadV05._encode adds them (a span's meta
 * values and keys, its metric keys, then service, name, resource, type), so
 * both give the same table and the same bytes. */
static PyObject *
encode_v05(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyDict_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "encode_v05(chunk, index: dict, add)");
        return NULL;
    }
    PyObject *chunk = args[0], *index = args[1], *add = args[2];
    Py_ssize_t spans;
    uint64_t tid;
    Out o = {NULL, 0, 0};
    PyObject **items = begin_chunk(chunk, &spans, &tid, &o);
    if (items == NULL)
        return finish(&o, 0);
    for (Py_ssize_t s = 0; s < spans; s++) {
        PyObject **r = items + s * RECORD_LEN;
        if (!PyDict_Check(r[10]) || !PyDict_Check(r[11])) {
            PyErr_SetString(PyExc_TypeError, "meta and metrics must be dicts");
            return finish(&o, 0);
        }
        PyObject *meta = PyDict_Copy(r[10]), *metrics = meta == NULL ? NULL : PyDict_Copy(r[11]);
        int rc = metrics == NULL ? -1 : encode_v05_span(&o, index, add, r, tid, meta, metrics);
        Py_XDECREF(meta);
        Py_XDECREF(metrics);
        if (rc < 0)
            return finish(&o, 0);
    }
    return finish(&o, 1);
}

static PyMethodDef module_methods[] = {
    {"encode_v04", (PyCFunction)encode_v04, METH_O, "encode_v04(chunk) -> bytes: one trace, v0.4."},
    {"put_many_v04", (PyCFunction)(void (*)(void))_cencode_put_many_v04, METH_FASTCALL,
     "put_many_v04(batch, start, payload, limit, traces, spans) -> (index, size, traces, spans, paused)."},
    {"describe_v04", (PyCFunction)(void (*)(void))_cencode_describe_v04, METH_FASTCALL,
     "describe_v04(batch, start, settings, default, names, record_type) -> (index, not_sent, paused)."},
    {"pairs", (PyCFunction)_cencode_pairs, METH_O,
     "pairs(flat) -> [(flat[0], flat[1]), ...]: the writer's queue as its batch (untracked pairs)."},
    {"payload_v04", _cencode_payload_v04, METH_NOARGS, "payload_v04() -> a v0.4 payload buffer (PayloadV04)."},
    {"payload_append", (PyCFunction)(void (*)(void))_cencode_payload_append, METH_FASTCALL,
     "payload_append(payload, body: bytes): add an encoded chunk."},
    {"payload_finish", (PyCFunction)(void (*)(void))_cencode_payload_finish, METH_FASTCALL,
     "payload_finish(payload, traces) -> bytes: the body; the buffer is freed."},
    {"encode_v04_item", (PyCFunction)encode_v04_item, METH_O,
     "encode_v04_item(item) -> bytes: a writer batch entry, v0.4, with its trace-level tags."},
    {"encode_v05", (PyCFunction)(void (*)(void))encode_v05, METH_FASTCALL,
     "encode_v05(chunk, index, add) -> bytes: one trace, v0.5, strings through the payload's table."},
    {NULL},
};

/* Runs at each import (see _cmodule.h: the main interpreter only). */
static int
exec_module(PyObject *m)
{
    if (main_interpreter_only(m, "tracer._cencode", "the pure-Python encoders") < 0)
        return -1;
    Py_XSETREF(empty_str, PyUnicode_FromStringAndSize("", 0));
    return empty_str == NULL ? -1 : 0;
}

static PyModuleDef_Slot module_slots[] = MAIN_INTERPRETER_SLOTS(exec_module);

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "tracer._cencode", "The v0.4/v0.5 chunk encoders in C (see tracer/encoding.py).", 0,
    module_methods, module_slots,
};

PyMODINIT_FUNC
PyInit__cencode(void)
{
    return PyModuleDef_Init(&module_def);
}
