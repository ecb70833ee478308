/* Optional C paths of the receiver's ingest, each giving exactly what the
 * Python code gives or handing the input back to it: msgpack unpacking for
 * decode.py (below), packing of stored chunks for store.py, the common case
 * of normalize.py (clean_chunk, normalize_clean) and stats.compute_groups
 * (see the sections further down).
 *
 * unpackb(body) returns what msgpack.unpackb(body, raw=False,
 * unicode_errors="replace", strict_map_key=False, use_list=False) returns
 * (arrays as tuples, maps as dicts, str with invalid UTF-8 replaced, bin as
 * bytes), or NotImplemented for anything it does not handle (ext types,
 * deep nesting, truncated or trailing bytes, an unhashable map key, a length
 * beyond the body, out of memory): the caller then runs msgpack itself, which
 * gives the result or the error. The difference is a per-call cache of short
 * strings: a payload's repeated keys and values (span keys, service, name,
 * meta keys and values) are built once and shared, and map keys are interned
 * as msgpack interns them. Equal results; fewer objects, fewer hashes.
 * Likewise a small map of scalars (str, bin, int, float, nil, bool) whose
 * exact bytes came earlier in the body (a payload's spans repeat their meta
 * and metrics maps) is a copy of the dict built then (PyDict_Copy: the same
 * keys in the same order, the same values), not built again.
 *
 * This unit: unpackb and the module's init; the others are listed in
 * _cdecode.h.
 */
#include "_cdecode.h"

#define CACHE_SLOTS 1024 /* at most (a power of two); fewer for a small body */
#define CACHE_MAX_LEN 128

typedef struct {
    const unsigned char *p;
    Py_ssize_t n;
    uint64_t h;
    PyObject *s;
    int interned;
} slot;

typedef struct {
    const unsigned char *p, *end;
    Py_ssize_t used, fill; /* stop adding past fill (3/4 of the slots) */
    size_t mask;
    slot *cache;
    Py_ssize_t map_used, map_fill; /* the same for maps (s: a dict) */
    size_t map_mask;
    slot *maps;
} ctx;

#define MAP_MAX_ITEMS 32  /* maps cached: at most this many entries ... */
#define MAP_MAX_LEN 2048  /* ... in at most this many bytes */

/* p[0..n) lies in a buffer ending at end */
static uint64_t hash_bytes(const unsigned char *p, Py_ssize_t n, const unsigned char *end) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)n, w;
    while (n >= 8) {
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
        p += 8;
        n -= 8;
    }
    w = 0;
#if PY_LITTLE_ENDIAN
    if (n && end - p >= 8) { /* one load, the bytes past the string masked off */
        memcpy(&w, p, 8);
        w &= ~0ull >> (64 - 8 * n);
    } else
#endif
        for (Py_ssize_t i = 0; i < n; i++)
            w |= (uint64_t)p[i] << (8 * i);
    h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 29);
}

static PyObject *make_str(ctx *c, const unsigned char *p, Py_ssize_t n, int key) {
    if (n > CACHE_MAX_LEN) {
        PyObject *s = PyUnicode_DecodeUTF8((const char *)p, n, "replace");
        if (s != NULL && key && PyUnicode_CheckExact(s))
            PyUnicode_InternInPlace(&s);
        return s;
    }
    uint64_t h = hash_bytes(p, n, c->end);
    size_t i = (size_t)h & c->mask;
    for (;;) {
        slot *e = &c->cache[i];
        if (e->s == NULL)
            break;
        if (e->h == h && e->n == n && memcmp(e->p, p, (size_t)n) == 0) {
            if (key && !e->interned) {
                PyUnicode_InternInPlace(&e->s);
                e->interned = 1;
            }
            Py_INCREF(e->s);
            return e->s;
        }
        i = (i + 1) & c->mask;
    }
    PyObject *s = PyUnicode_DecodeUTF8((const char *)p, n, "replace");
    if (s == NULL)
        return NULL;
    if (key)
        PyUnicode_InternInPlace(&s);
    if (c->used < c->fill) {
        slot *e = &c->cache[i];
        e->p = p;
        e->n = n;
        e->h = h;
        e->s = s;
        e->interned = key;
        Py_INCREF(s);
        c->used++;
    }
    return s;
}

#define NEED(k)                                \
    do {                                       \
        if ((size_t)(c->end - c->p) < (size_t)(k)) \
            return NULL;                       \
    } while (0)

static inline uint64_t be(const unsigned char *p, int k) {
    uint64_t v = 0;
    for (int i = 0; i < k; i++)
        v = (v << 8) | p[i];
    return v;
}

static PyObject *dec(ctx *c, int depth, int key);

/* The end of the k scalars (str, bin, int, float, nil, bool) from p, or NULL
   at anything else (a container, an ext type, 0xc1) or past end. */
static const unsigned char *skip_scalars(const unsigned char *p, const unsigned char *end, Py_ssize_t k) {
    static const unsigned char fixed[32] = { /* 0xc0..0xdf: bytes after the tag; 0xff: not a scalar */
        0, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 4, 8, 1, 2, 4, 8,
        1, 2, 4, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    while (k-- > 0) {
        if (p >= end)
            return NULL;
        unsigned char b = *p++;
        size_t n;
        if (b <= 0x7f || b >= 0xe0)
            continue;
        if (b >= 0xa0 && b <= 0xbf) {
            n = b & 0x1f;
        } else if (b < 0xc0) { /* fixmap, fixarray */
            return NULL;
        } else if (b == 0xd9 || b == 0xda || b == 0xdb || b == 0xc4 || b == 0xc5 || b == 0xc6) {
            int w = 1 << (b >= 0xd9 ? b - 0xd9 : b - 0xc4);
            if (end - p < w)
                return NULL;
            n = (size_t)be(p, w);
            p += w;
        } else if ((n = fixed[b - 0xc0]) == 0xff) {
            return NULL;
        }
        if ((size_t)(end - p) < n)
            return NULL;
        p += n;
    }
    return p;
}

/* The map of n entries at c->p as a copy of an equal map decoded earlier, or
   NULL (nothing consumed) when none was or it is not a small map of scalars:
   then *at and *len say where to remember it (*at NULL: not at all). */
static PyObject *cached_map(ctx *c, Py_ssize_t n, slot **at, Py_ssize_t *len) {
    *at = NULL;
    if (n == 0 || n > MAP_MAX_ITEMS)
        return NULL;
    const unsigned char *q = skip_scalars(c->p, c->end, 2 * n);
    if (q == NULL || q - c->p > MAP_MAX_LEN)
        return NULL;
    *len = q - c->p;
    uint64_t h = hash_bytes(c->p, *len, c->end) ^ (uint64_t)n;
    size_t i = (size_t)h & c->map_mask;
    for (;;) {
        slot *e = &c->maps[i];
        if (e->s == NULL)
            break;
        if (e->h == h && e->n == *len && memcmp(e->p, c->p, (size_t)*len) == 0) {
            PyObject *d = PyDict_Copy(e->s);
            if (d != NULL)
                c->p = q;
            return d; /* NULL: out of memory, unpackb's NotImplemented */
        }
        i = (i + 1) & c->map_mask;
    }
    if (c->map_used < c->map_fill) {
        *at = &c->maps[i];
        (*at)->h = h;
    }
    return NULL;
}

static PyObject *dec_array(ctx *c, Py_ssize_t n, int depth) {
    if (n > c->end - c->p)
        return NULL;
    PyObject *t = PyTuple_New(n);
    if (t == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = dec(c, depth + 1, 0);
        if (v == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, v);
    }
    return t;
}

static PyObject *dec_map(ctx *c, Py_ssize_t n, int depth) {
    if (n > (c->end - c->p) / 2)
        return NULL;
    slot *at;
    Py_ssize_t len;
    const unsigned char *start = c->p;
    PyObject *copy = cached_map(c, n, &at, &len);
    if (copy != NULL || PyErr_Occurred())
        return copy;
#if PY_VERSION_HEX < 0x030D0000
    PyObject *d = _PyDict_NewPresized(n);
#else
    PyObject *d = PyDict_New();
#endif
    if (d == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *k = dec(c, depth + 1, 1);
        if (k == NULL) {
            Py_DECREF(d);
            return NULL;
        }
        PyObject *v = dec(c, depth + 1, 0);
        if (v == NULL || PyDict_SetItem(d, k, v) < 0) {
            Py_DECREF(k);
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(k);
        Py_DECREF(v);
    }
    if (at != NULL) {
        at->p = start;
        at->n = len;
        at->s = Py_NewRef(d);
        c->map_used++;
    }
    return d;
}

static PyObject *dec(ctx *c, int depth, int key) {
    if (depth > MAX_DEPTH)
        return NULL;
    NEED(1);
    unsigned char b = *c->p++;
    Py_ssize_t n;
    if (b <= 0x7f)
        return PyLong_FromLong(b);
    if (b >= 0xe0)
        return PyLong_FromLong((long)(signed char)b);
    if (b >= 0xa0 && b <= 0xbf) {
        n = b & 0x1f;
        goto str;
    }
    if (b >= 0x90 && b <= 0x9f)
        return dec_array(c, b & 0x0f, depth);
    if (b >= 0x80 && b <= 0x8f)
        return dec_map(c, b & 0x0f, depth);
    switch (b) {
    case 0xc0:
        Py_RETURN_NONE;
    case 0xc2:
        Py_RETURN_FALSE;
    case 0xc3:
        Py_RETURN_TRUE;
    case 0xcc: case 0xcd: case 0xce: case 0xcf: {
        int k = 1 << (b - 0xcc);
        NEED(k);
        uint64_t v = be(c->p, k);
        c->p += k;
        return PyLong_FromUnsignedLongLong(v);
    }
    case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
        int k = 1 << (b - 0xd0);
        NEED(k);
        uint64_t v = be(c->p, k);
        c->p += k;
        int64_t s = k == 1 ? (int8_t)v : k == 2 ? (int16_t)v : k == 4 ? (int32_t)v : (int64_t)v;
        return PyLong_FromLongLong(s);
    }
    case 0xca: {
        NEED(4);
        uint32_t v = (uint32_t)be(c->p, 4);
        float f;
        memcpy(&f, &v, 4);
        c->p += 4;
        return PyFloat_FromDouble((double)f);
    }
    case 0xcb: {
        NEED(8);
        uint64_t v = be(c->p, 8);
        double f;
        memcpy(&f, &v, 8);
        c->p += 8;
        return PyFloat_FromDouble(f);
    }
    case 0xd9: case 0xda: case 0xdb: {
        int k = 1 << (b - 0xd9);
        NEED(k);
        n = (Py_ssize_t)be(c->p, k);
        c->p += k;
        goto str;
    }
    case 0xc4: case 0xc5: case 0xc6: {
        int k = 1 << (b - 0xc4);
        NEED(k);
        n = (Py_ssize_t)be(c->p, k);
        c->p += k;
        NEED(n);
        PyObject *o = PyBytes_FromStringAndSize((const char *)c->p, n);
        c->p += n;
        return o;
    }
    case 0xdc: case 0xdd: {
        int k = b == 0xdc ? 2 : 4;
        NEED(k);
        n = (Py_ssize_t)be(c->p, k);
        c->p += k;
        return dec_array(c, n, depth);
    }
    case 0xde: case 0xdf: {
        int k = b == 0xde ? 2 : 4;
        NEED(k);
        n = (Py_ssize_t)be(c->p, k);
        c->p += k;
        return dec_map(c, n, depth);
    }
    default: /* 0xc1 (never used) and the ext types: msgpack's to handle */
        return NULL;
    }
str:
    NEED(n);
    {
        const unsigned char *p = c->p;
        c->p += n;
        return make_str(c, p, n, key);
    }
}

static PyObject *unpackb(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear(); /* not bytes-like: msgpack's error */
        Py_RETURN_NOTIMPLEMENTED;
    }
    /* about one slot per 8 body bytes: clearing and sweeping the table
       must stay cheap for a one-span payload */
    size_t slots = 32;
    while (slots < CACHE_SLOTS && (Py_ssize_t)slots * 8 < view.len)
        slots *= 2;
    size_t map_slots = slots / 4; /* 8 to 256 */
    ctx c = {.p = view.buf, .end = (const unsigned char *)view.buf + view.len,
             .fill = (Py_ssize_t)(slots / 4 * 3), .mask = slots - 1,
             .cache = PyMem_Calloc(slots + map_slots, sizeof(slot)),
             .map_fill = (Py_ssize_t)(map_slots / 4 * 3), .map_mask = map_slots - 1};
    if (c.cache == NULL) {
        PyBuffer_Release(&view);
        Py_RETURN_NOTIMPLEMENTED;
    }
    c.maps = c.cache + slots;
    PyObject *out = dec(&c, 0, 0);
    if (out != NULL && c.p != c.end)
        Py_CLEAR(out); /* extra bytes: msgpack's error */
    for (size_t i = 0; i < slots + map_slots; i++)
        Py_XDECREF(c.cache[i].s);
    PyMem_Free(c.cache);
    PyBuffer_Release(&view);
    if (out == NULL) {
        PyErr_Clear();
        Py_RETURN_NOTIMPLEMENTED;
    }
    return out;
}

static PyMethodDef methods[] = {
    {"unpackb", unpackb, METH_O,
     "unpackb(body) -> msgpack.unpackb(body, raw=False, unicode_errors='replace', strict_map_key=False, "
     "use_list=False), or NotImplemented when msgpack itself must decide."},
    {"packb", _cdecode_packb, METH_O,
     "packb(obj) -> msgpack.packb(obj) for plain data (None, bool, int, float, str, bytes, dict, list, tuple), "
     "or NotImplemented when msgpack itself must decide."},
    {"clean_chunk", _cdecode_clean_chunk, METH_O,
     "clean_chunk(spans) -> False when normalize must check the chunk span by span, else its _dd.p.tid or None."},
    {"normalize_clean", _cdecode_normalize_clean, METH_VARARGS,
     "normalize_clean(spans, obfuscate_sql, memo=None) -> False, the chunk's tid or None, or (tid, spans left to Python)."},
    {"compute_groups", _cdecode_compute_groups, METH_VARARGS,
     "compute_groups(traces, client_top_level, bucket_ns) -> stats.compute_groups's result, or NotImplemented."},
    {"sketch_add", _cdecode_sketch_add, METH_VARARGS,
     "sketch_add(bins, values, mult, offset, min_positive, zero, top) -> (zero, top) after adding values to bins "
     "as stats.Sketch.add_many does, or NotImplemented (nothing changed)."},
    {"breakdown_chunk", _cdecode_breakdown_chunk, METH_VARARGS,
     "breakdown_chunk(spans, out, bucket_ns) -> True after adding insights.breakdown's common chunk to out, "
     "else False (out unchanged)."},
    {"detect_clear", _cdecode_detect_clear, METH_VARARGS,
     "detect_clear(spans, slow_ns, least) -> True when insights.detect cannot find anything in the chunk."},
    {"count_duplicates", _cdecode_count_duplicates, METH_VARARGS,
     "count_duplicates(traces, recent, first_seen) -> Receiver._count_duplicates's loop, or NotImplemented."},
    {"index_rows", _cdecode_index_rows, METH_VARARGS,
     "index_rows(traces, now, first_id) -> the traces' index rows as store.Store.ingest builds them, "
     "or NotImplemented."},
    {NULL, NULL, 0, NULL},
};

/* Bump with agent_sim/__init__.py's _CDECODE_ABI when a function's interface changes. */
#define CDECODE_ABI 1

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "agent_sim._cdecode", NULL, -1, methods};

PyMODINIT_FUNC PyInit__cdecode(void) {
    if (_cdecode_normalize_init() < 0 || _cdecode_insights_init() < 0 || _cdecode_ingest_init() < 0
        || _cdecode_rows_init() < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    /* ABI: the Python code this module was written for (agent_sim/__init__.py's
     * _CDECODE_ABI refuses another: a checkout updated without rebuilding). */
    if (m != NULL && (_cdecode_add_clean_limits(m) < 0 || PyModule_AddIntConstant(m, "ABI", CDECODE_ABI) < 0))
        Py_CLEAR(m);
    return m;
}
