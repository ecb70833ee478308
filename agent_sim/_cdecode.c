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
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <limits.h>
#include <string.h>

#define MAX_DEPTH 512
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
} ctx;

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
    ctx c = {.p = view.buf, .end = (const unsigned char *)view.buf + view.len,
             .fill = (Py_ssize_t)(slots / 4 * 3), .mask = slots - 1,
             .cache = PyMem_Calloc(slots, sizeof(slot))};
    if (c.cache == NULL) {
        PyBuffer_Release(&view);
        Py_RETURN_NOTIMPLEMENTED;
    }
    PyObject *out = dec(&c, 0, 0);
    if (out != NULL && c.p != c.end)
        Py_CLEAR(out); /* extra bytes: msgpack's error */
    for (size_t i = 0; i < slots; i++)
        Py_XDECREF(c.cache[i].s);
    PyMem_Free(c.cache);
    PyBuffer_Release(&view);
    if (out == NULL) {
        PyErr_Clear();
        Py_RETURN_NOTIMPLEMENTED;
    }
    return out;
}

/* -- packing --------------------------------------------------------------
 * packb(obj) returns msgpack.packb(obj) (use_bin_type=True, float64, the
 * smallest int and length formats) for obj built of None, bool, int (int64 or
 * uint64), float, str, bytes, and exact dicts, lists and tuples of these; or
 * NotImplemented for anything else (subclasses, ints beyond 64 bits, strings
 * with lone surrogates, deep nesting): the caller then runs msgpack, which
 * packs or raises. The store encodes every stored trace chunk with it. No
 * Python code runs while packing (exact types only, no callbacks), so the
 * containers cannot change under the loops. */

typedef struct {
    char *buf;
    size_t len, cap;
    char small[16384];
} wbuf;

static int grow(wbuf *w, size_t need) {
    size_t cap = w->cap * 2;
    while (cap < w->len + need)
        cap *= 2;
    char *b;
    if (w->buf == w->small) {
        b = PyMem_Malloc(cap);
        if (b != NULL)
            memcpy(b, w->buf, w->len);
    } else {
        b = PyMem_Realloc(w->buf, cap);
    }
    if (b == NULL)
        return -1;
    w->buf = b;
    w->cap = cap;
    return 0;
}

#define ROOM(k)                                                    \
    do {                                                           \
        if (w->cap - w->len < (size_t)(k) && grow(w, (k)) < 0)     \
            return -1;                                             \
    } while (0)

static inline void put_be(wbuf *w, unsigned char tag, uint64_t v, int k) {
    char *o = w->buf + w->len;
    *o++ = (char)tag;
    for (int i = k - 1; i >= 0; i--)
        *o++ = (char)(v >> (8 * i));
    w->len += 1 + (size_t)k;
}

/* a length header: the fix form below fix_max, else the 1/2/4-byte forms
   from tag8 (str, bin) or the 2/4-byte forms from tag16 (array, map) */
static int put_len(wbuf *w, size_t n, unsigned char fix, size_t fix_max, int tag8, unsigned char tag16) {
    ROOM(5);
    if (n < fix_max)
        w->buf[w->len++] = (char)(fix | n);
    else if (tag8 >= 0 && n < 256)
        put_be(w, (unsigned char)tag8, n, 1);
    else if (n < 65536)
        put_be(w, tag16, n, 2);
    else if (n <= 0xffffffffu)
        put_be(w, (unsigned char)(tag16 + 1), n, 4);
    else
        return -1;
    return 0;
}

static int put_raw(wbuf *w, const char *p, size_t n) {
    ROOM(n);
    memcpy(w->buf + w->len, p, n);
    w->len += n;
    return 0;
}

static int enc(wbuf *w, PyObject *o, int depth);

static int enc_str(wbuf *w, PyObject *o) {
    const char *p;
    Py_ssize_t n;
    if (PyUnicode_IS_COMPACT_ASCII(o)) {
        p = (const char *)PyUnicode_DATA(o);
        n = PyUnicode_GET_LENGTH(o);
    } else if ((p = PyUnicode_AsUTF8AndSize(o, &n)) == NULL) {
        return -1;
    }
    if (put_len(w, (size_t)n, 0xa0, 32, 0xd9, 0xda) < 0)
        return -1;
    return put_raw(w, p, (size_t)n);
}

static int enc_int(wbuf *w, PyObject *o) {
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    ROOM(9);
    if (overflow == 0) {
        if (v == -1 && PyErr_Occurred())
            return -1;
        if (v < -(1LL << 5)) {
            if (v < -(1LL << 15))
                put_be(w, v < -(1LL << 31) ? 0xd3 : 0xd2, (uint64_t)v, v < -(1LL << 31) ? 8 : 4);
            else
                put_be(w, v < -(1LL << 7) ? 0xd1 : 0xd0, (uint64_t)v, v < -(1LL << 7) ? 2 : 1);
        } else if (v < (1LL << 7)) {
            w->buf[w->len++] = (char)v;
        } else if (v < (1LL << 16)) {
            put_be(w, v < (1LL << 8) ? 0xcc : 0xcd, (uint64_t)v, v < (1LL << 8) ? 1 : 2);
        } else {
            put_be(w, v < (1LL << 32) ? 0xce : 0xcf, (uint64_t)v, v < (1LL << 32) ? 4 : 8);
        }
        return 0;
    }
    if (overflow < 0)
        return -1;
    unsigned long long u = PyLong_AsUnsignedLongLong(o);
    if (u == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    put_be(w, 0xcf, u, 8);
    return 0;
}

static int enc_dict(wbuf *w, PyObject *o, int depth) {
    if (put_len(w, (size_t)PyDict_GET_SIZE(o), 0x80, 16, -1, 0xde) < 0)
        return -1;
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(o, &pos, &k, &v))
        if (enc(w, k, depth + 1) < 0 || enc(w, v, depth + 1) < 0)
            return -1;
    return 0;
}

static int enc(wbuf *w, PyObject *o, int depth) {
    if (depth > MAX_DEPTH)
        return -1;
    PyTypeObject *t = Py_TYPE(o);
    if (t == &PyUnicode_Type)
        return enc_str(w, o);
    if (t == &PyLong_Type)
        return enc_int(w, o);
    if (t == &PyDict_Type)
        return enc_dict(w, o, depth);
    if (t == &PyFloat_Type) {
        double d = PyFloat_AS_DOUBLE(o);
        uint64_t bits;
        memcpy(&bits, &d, 8);
        ROOM(9);
        put_be(w, 0xcb, bits, 8);
        return 0;
    }
    if (t == &PyList_Type || t == &PyTuple_Type) {
        Py_ssize_t n = PySequence_Fast_GET_SIZE(o);
        if (put_len(w, (size_t)n, 0x90, 16, -1, 0xdc) < 0)
            return -1;
        for (Py_ssize_t i = 0; i < n; i++)
            if (enc(w, PySequence_Fast_GET_ITEM(o, i), depth + 1) < 0)
                return -1;
        return 0;
    }
    ROOM(1);
    if (o == Py_None) {
        w->buf[w->len++] = (char)0xc0;
        return 0;
    }
    if (o == Py_True || o == Py_False) {
        w->buf[w->len++] = (char)(o == Py_True ? 0xc3 : 0xc2);
        return 0;
    }
    if (t == &PyBytes_Type) {
        if (put_len(w, (size_t)PyBytes_GET_SIZE(o), 0, 0, 0xc4, 0xc5) < 0)
            return -1;
        return put_raw(w, PyBytes_AS_STRING(o), (size_t)PyBytes_GET_SIZE(o));
    }
    return -1; /* anything else: msgpack's to pack or refuse */
}

static PyObject *packb(PyObject *self, PyObject *arg) {
    wbuf b, *w = &b; /* a trace chunk of ~10 spans fits in the 16 KiB on the stack */
    w->buf = w->small;
    w->len = 0;
    w->cap = sizeof(w->small);
    PyObject *out = NULL;
    if (enc(w, arg, 0) == 0)
        out = PyBytes_FromStringAndSize(w->buf, (Py_ssize_t)w->len);
    if (w->buf != w->small)
        PyMem_Free(w->buf);
    if (out == NULL) {
        PyErr_Clear();
        Py_RETURN_NOTIMPLEMENTED;
    }
    return out;
}

/* -- normalization's common case -------------------------------------------
 * clean_chunk(spans) tells whether normalize.normalize_chunk has nothing to
 * do to a chunk but its SQL obfuscation and the copy of _dd.p.tid: False
 * unless every span is an exact dict of exactly the 12 wire fields with the
 * wire types (ids as uint64, one non-zero trace id, non-zero span ids), and
 * within the limits normalize checks without measuring bytes (service and name
 * 1..25 characters, type ..25, resource 1..1250, start from 2000 on with
 * start + duration in int64, error 0 or 1, meta keys ..50 and values ..6250
 * characters, an http.status_code of 100..599, metrics str -> int, float or
 * bool). Otherwise the chunk's _dd.p.tid (the first span's that has one) or
 * None. Read only; anything unusual is normalize's Python path to decide.
 * The limits are normalize.py's, a quarter of their bytes (UTF-8 has at most
 * 4 bytes a character); CLEAN_LIMITS exposes them to a test. */

#define SHORT_TEXT 25     /* MAX_SERVICE, MAX_NAME, MAX_TYPE // 4 */
#define SHORT_RESOURCE 1250 /* MAX_RESOURCE // 4 */
#define SHORT_META_KEY 50   /* MAX_META_KEY // 4 */
#define SHORT_META_VALUE 6250 /* MAX_META_VALUE // 4 */
#define YEAR_2000_NS 946684800000000000LL

enum { F_TRACE_ID, F_SPAN_ID, F_PARENT_ID, F_SERVICE, F_NAME, F_RESOURCE, F_TYPE, F_START, F_DURATION, F_ERROR,
       F_META, F_METRICS, N_FIELDS };
static const char *field_names[N_FIELDS] = {"trace_id", "span_id", "parent_id", "service", "name", "resource",
                                            "type", "start", "duration", "error", "meta", "metrics"};
static PyObject *field_keys[N_FIELDS], *key_status, *key_tid;

/* span[field_names[i]], borrowed; NULL with KeyError when missing */
static PyObject *field(PyObject *span, int i) {
    PyObject *v = PyDict_GetItemWithError(span, field_keys[i]);
    if (v == NULL && !PyErr_Occurred())
        PyErr_SetNone(PyExc_KeyError);
    return v;
}

static int uint64_of(PyObject *o, unsigned long long *out) {
    if (Py_TYPE(o) != &PyLong_Type)
        return 0;
    *out = PyLong_AsUnsignedLongLong(o); /* negative or beyond 64 bits: an error */
    if (*out == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

static int int64_of(PyObject *o, long long *out) {
    int overflow;
    if (Py_TYPE(o) != &PyLong_Type)
        return 0;
    *out = PyLong_AsLongLongAndOverflow(o, &overflow);
    return overflow == 0 && !(*out == -1 && PyErr_Occurred());
}

static int text_within(PyObject *o, Py_ssize_t lo, Py_ssize_t hi) {
    return Py_TYPE(o) == &PyUnicode_Type && PyUnicode_GET_LENGTH(o) >= lo && PyUnicode_GET_LENGTH(o) <= hi;
}

static int status_ok(PyObject *o) { /* "100".."599": the strings of normalize._VALID_STATUS */
    if (!PyUnicode_IS_COMPACT_ASCII(o) || PyUnicode_GET_LENGTH(o) != 3)
        return 0;
    const char *p = (const char *)PyUnicode_DATA(o);
    return p[0] >= '1' && p[0] <= '5' && p[1] >= '0' && p[1] <= '9' && p[2] >= '0' && p[2] <= '9';
}

static int clean_meta(PyObject *meta) {
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(meta, &pos, &k, &v))
        if (!text_within(k, 0, SHORT_META_KEY) || !text_within(v, 0, SHORT_META_VALUE))
            return 0;
    PyObject *status = PyDict_GetItemWithError(meta, key_status);
    return status == NULL ? !PyErr_Occurred() : status_ok(status);
}

static int clean_metrics(PyObject *metrics) {
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(metrics, &pos, &k, &v)) {
        PyTypeObject *t = Py_TYPE(v);
        if (Py_TYPE(k) != &PyUnicode_Type || (t != &PyLong_Type && t != &PyFloat_Type && t != &PyBool_Type))
            return 0;
    }
    return 1;
}

static int clean_span(PyObject *span, unsigned long long *trace_id, PyObject **tid) {
    PyObject *f[N_FIELDS];
    unsigned long long tr, id, parent;
    long long start, duration, error;
    if (Py_TYPE(span) != &PyDict_Type || PyDict_GET_SIZE(span) != N_FIELDS)
        return 0;
    for (int i = 0; i < N_FIELDS; i++)
        if ((f[i] = PyDict_GetItemWithError(span, field_keys[i])) == NULL) {
            PyErr_Clear();
            return 0;
        }
    if (!uint64_of(f[F_TRACE_ID], &tr) || !uint64_of(f[F_SPAN_ID], &id) || !uint64_of(f[F_PARENT_ID], &parent)
        || tr == 0 || id == 0 || (*trace_id != 0 && tr != *trace_id))
        return 0;
    *trace_id = tr;
    if (!int64_of(f[F_START], &start) || !int64_of(f[F_DURATION], &duration) || !int64_of(f[F_ERROR], &error)
        || duration < 0 || start < YEAR_2000_NS || start > LLONG_MAX - duration || (error != 0 && error != 1))
        return 0;
    if (!text_within(f[F_SERVICE], 1, SHORT_TEXT) || !text_within(f[F_NAME], 1, SHORT_TEXT)
        || !text_within(f[F_TYPE], 0, SHORT_TEXT) || !text_within(f[F_RESOURCE], 1, SHORT_RESOURCE))
        return 0;
    if (Py_TYPE(f[F_META]) != &PyDict_Type || Py_TYPE(f[F_METRICS]) != &PyDict_Type || !clean_meta(f[F_META])
        || !clean_metrics(f[F_METRICS]))
        return 0;
    if (*tid == NULL && (*tid = PyDict_GetItemWithError(f[F_META], key_tid)) == NULL && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

static PyObject *clean_chunk(PyObject *self, PyObject *spans) {
    if (Py_TYPE(spans) != &PyList_Type || PyList_GET_SIZE(spans) == 0)
        Py_RETURN_FALSE;
    unsigned long long trace_id = 0;
    PyObject *tid = NULL; /* borrowed: no Python code runs until it is returned */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(spans); i++)
        if (!clean_span(PyList_GET_ITEM(spans, i), &trace_id, &tid))
            Py_RETURN_FALSE;
    if (tid == NULL)
        Py_RETURN_NONE;
    Py_INCREF(tid);
    return tid;
}

/* normalize_clean(spans, obfuscate_sql) normalizes a chunk clean_chunk
 * accepts, as normalize.normalize_chunk would: each SQL span as our
 * integrations send it (none of sql.query, db.statement, error.message in
 * meta) gets resource = meta["sql.query"] = obfuscate_sql(resource), then
 * _dd.p.tid is copied to every span that lacks it. Returns False (not clean:
 * nothing changed), the tid or None (done), or (tid, todo) when some spans are
 * left to Python: index i for an SQL span of another shape (nothing done to
 * it), ~i for one whose obfuscated resource is past its limit; the tid is
 * then not copied yet (Python copies it after, keeping the key order). */
static PyObject *key_sql_query, *key_db_statement, *key_error_message;

static int copy_tid(PyObject *spans, PyObject *tid) {
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(spans); i++) {
        PyObject *meta = field(PyList_GET_ITEM(spans, i), F_META);
        if (meta == NULL)
            return -1;
        PyObject *have = PyDict_GetItemWithError(meta, key_tid);
        if (have == NULL && PyErr_Occurred())
            return -1;
        int differ = have == NULL ? 1 : PyObject_RichCompareBool(have, tid, Py_NE);
        if (differ < 0 || (differ && PyDict_SetItem(meta, key_tid, tid) < 0))
            return -1;
    }
    return 0;
}

static int obfuscate_span(PyObject *span, PyObject *obfuscate, PyObject **todo, Py_ssize_t i) {
    PyObject *meta = field(span, F_META), *resource;
    int plain = PyDict_Contains(meta, key_sql_query) == 0 && PyDict_Contains(meta, key_db_statement) == 0
                && PyDict_Contains(meta, key_error_message) == 0; /* str keys: no errors */
    int left = !plain, rc = -1;
    if (plain) {
        Py_INCREF(span);
        Py_INCREF(meta);
        resource = PyObject_CallOneArg(obfuscate, field(span, F_RESOURCE));
        if (resource != NULL && PyDict_SetItem(span, field_keys[F_RESOURCE], resource) == 0
            && PyDict_SetItem(meta, key_sql_query, resource) == 0) {
            left = !text_within(resource, 1, SHORT_RESOURCE);
            i = ~i;
            rc = 0;
        }
        Py_XDECREF(resource);
        Py_DECREF(meta);
        Py_DECREF(span);
        if (rc < 0)
            return -1;
    }
    if (left) {
        PyObject *index = PyLong_FromSsize_t(i);
        if (index == NULL || (*todo == NULL && (*todo = PyList_New(0)) == NULL) || PyList_Append(*todo, index) < 0) {
            Py_XDECREF(index);
            return -1;
        }
        Py_DECREF(index);
    }
    return 0;
}

static PyObject *normalize_clean(PyObject *self, PyObject *args) {
    PyObject *spans, *obfuscate, *todo = NULL;
    if (!PyArg_ParseTuple(args, "OO", &spans, &obfuscate))
        return NULL;
    PyObject *tid = clean_chunk(self, spans);
    if (tid == Py_False)
        return tid;
    Py_INCREF(spans); /* obfuscate is Python code */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(spans); i++) {
        PyObject *span = PyList_GET_ITEM(spans, i), *type = field(span, F_TYPE);
        if (type == NULL || (PyUnicode_CompareWithASCIIString(type, "sql") == 0
                             && obfuscate_span(span, obfuscate, &todo, i) < 0))
            goto error;
    }
    Py_DECREF(spans);
    if (todo != NULL)
        return Py_BuildValue("(NN)", tid, todo);
    if (tid != Py_None && copy_tid(spans, tid) < 0) {
        Py_DECREF(tid);
        return NULL;
    }
    return tid;
error:
    Py_DECREF(spans);
    Py_DECREF(tid);
    Py_XDECREF(todo);
    return NULL;
}

/* -- stats groups --------------------------------------------------------
 * compute_groups(traces, client_top_level, bucket_ns) returns what
 * stats.compute_groups returns (same groups, same order, same types), or
 * NotImplemented for anything it does not handle (a span that is not an
 * exact dict with the fields normalize leaves, an end time beyond int64, an
 * http.status_code other than "100".."599"): stats.py then runs the Python
 * version, which gives the result or the error. */

static PyObject *key_top_level, *key_measured, *key_span_kind, *empty_str, *small_status[600];

/* truthiness of metrics.get(key); *found = 0 when that is None */
static int metric_true(PyObject *metrics, PyObject *key, int *found) {
    PyObject *v = PyDict_GetItemWithError(metrics, key);
    *found = v != NULL && v != Py_None; /* metrics.get(key) is None */
    if (v == NULL)
        return PyErr_Occurred() ? -1 : 0;
    return PyObject_IsTrue(v);
}

static PyObject *status_code(PyObject *meta) {
    PyObject *status = PyDict_GetItemWithError(meta, key_status);
    if (status == NULL)
        return PyErr_Occurred() ? NULL : small_status[0];
    if (Py_TYPE(status) == &PyUnicode_Type && status_ok(status)) {
        const char *p = (const char *)PyUnicode_DATA(status);
        return small_status[(p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0')];
    }
    PyErr_SetNone(PyExc_NotImplementedError); /* int(" 200") and the like: Python's */
    return NULL;
}

static int add_span(PyObject *groups, PyObject *s, PyObject *services, int client_top_level, long long bucket_ns) {
    PyObject *metrics = field(s, F_METRICS), *service, *parent, *meta, *start, *duration, *error;
    if (metrics == NULL || Py_TYPE(metrics) != &PyDict_Type)
        return -1;
    if (PyDict_GET_SIZE(metrics) == 0 && client_top_level)
        return 0;
    int found, top = metric_true(metrics, key_top_level, &found);
    if (top < 0 || (service = field(s, F_SERVICE)) == NULL || (parent = field(s, F_PARENT_ID)) == NULL)
        return -1;
    if (!found && !client_top_level) {
        PyObject *parent_service = PyDict_GetItemWithError(services, parent);
        if (parent_service == NULL && PyErr_Occurred())
            return -1;
        top = parent_service == NULL ? 1 : PyObject_RichCompareBool(parent_service, service, Py_NE);
        if (top < 0)
            return -1;
    }
    if (!top) {
        int measured = metric_true(metrics, key_measured, &found);
        if (measured <= 0)
            return measured;
    }
    long long st, du, er;
    if ((meta = field(s, F_META)) == NULL || Py_TYPE(meta) != &PyDict_Type || (start = field(s, F_START)) == NULL
        || (duration = field(s, F_DURATION)) == NULL || (error = field(s, F_ERROR)) == NULL
        || !int64_of(start, &st) || !int64_of(duration, &du) || !int64_of(error, &er)
        || (du > 0 ? st > LLONG_MAX - du : st < LLONG_MIN - du) || Py_TYPE(parent) != &PyLong_Type
        || st + du < LLONG_MIN + bucket_ns) /* its bucket start below int64 */
        return -1;
    long long end = st + du, rem = end % bucket_ns;
    if (rem < 0)
        rem += bucket_ns; /* Python's floor modulo */
    PyObject *kind = PyDict_GetItemWithError(meta, key_span_kind);
    PyObject *code = status_code(meta);
    if ((kind == NULL && PyErr_Occurred()) || code == NULL)
        return -1;
    int is_root = PyObject_RichCompareBool(parent, small_status[0], Py_EQ);
    if (is_root < 0)
        return -1;
    PyObject *key = Py_BuildValue("(LOOOOOOO)", end - rem, service, field(s, F_NAME), field(s, F_RESOURCE),
                                  field(s, F_TYPE), kind ? kind : empty_str, code, is_root ? Py_True : Py_False);
    if (key == NULL)
        return -1;
    PyObject *g = PyDict_GetItemWithError(groups, key);
    if (g == NULL) {
        PyObject *rest = PyErr_Occurred() ? NULL : PyTuple_GetSlice(key, 1, 8);
        PyObject *rest_list = rest ? PySequence_List(rest) : NULL;
        Py_XDECREF(rest);
        g = rest_list ? Py_BuildValue("[ONiiiiNN]", PyTuple_GET_ITEM(key, 0), rest_list, 0, 0, 0, 0, PyList_New(0),
                                      PyList_New(0)) : NULL;
        if (g == NULL || PyDict_SetItem(groups, key, g) < 0) {
            Py_XDECREF(g);
            Py_DECREF(key);
            return -1;
        }
        Py_DECREF(g); /* the dict holds it */
    }
    Py_DECREF(key);
    /* g[2] += 1; g[3] += top; g[5] += duration; g[4] += error; durations to g[7] or g[6] */
    static const int slots[3] = {2, 3, 5};
    PyObject *adds[3] = {small_status[1], top ? small_status[1] : NULL, duration};
    for (int i = 0; i < 3; i++) {
        if (adds[i] == NULL)
            continue;
        PyObject *sum = PyNumber_Add(PyList_GET_ITEM(g, slots[i]), adds[i]);
        if (sum == NULL)
            return -1;
        PyList_SetItem(g, slots[i], sum);
    }
    if (er) {
        PyObject *sum = PyNumber_Add(PyList_GET_ITEM(g, 4), small_status[1]);
        if (sum == NULL)
            return -1;
        PyList_SetItem(g, 4, sum);
    }
    return PyList_Append(PyList_GET_ITEM(g, er ? 7 : 6), duration);
}

static PyObject *compute_groups(PyObject *self, PyObject *args) {
    PyObject *traces;
    int client_top_level;
    long long bucket_ns;
    if (!PyArg_ParseTuple(args, "OpL", &traces, &client_top_level, &bucket_ns))
        return NULL;
    if (Py_TYPE(traces) != &PyList_Type || bucket_ns <= 0)
        Py_RETURN_NOTIMPLEMENTED;
    PyObject *groups = PyDict_New(), *services = NULL;
    if (groups == NULL)
        return NULL;
    for (Py_ssize_t t = 0; t < PyList_GET_SIZE(traces); t++) {
        PyObject *spans = PyList_GET_ITEM(traces, t);
        if (Py_TYPE(spans) != &PyList_Type)
            goto fallback;
        Py_ssize_t n = PyList_GET_SIZE(spans);
        for (Py_ssize_t i = 0; i < n; i++)
            if (Py_TYPE(PyList_GET_ITEM(spans, i)) != &PyDict_Type)
                goto fallback;
        Py_CLEAR(services);
        if (!client_top_level) { /* {span_id: service}, the last span of an id winning */
            if ((services = PyDict_New()) == NULL)
                goto fallback;
            for (Py_ssize_t i = 0; i < n; i++) {
                PyObject *s = PyList_GET_ITEM(spans, i), *id = field(s, F_SPAN_ID), *service = field(s, F_SERVICE);
                if (id == NULL || service == NULL || PyDict_SetItem(services, id, service) < 0)
                    goto fallback;
            }
        }
        for (Py_ssize_t i = 0; i < n; i++)
            if (add_span(groups, PyList_GET_ITEM(spans, i), services, client_top_level, bucket_ns) < 0)
                goto fallback;
    }
    Py_XDECREF(services);
    PyObject *out = PyDict_Values(groups);
    Py_DECREF(groups);
    return out;
fallback:
    Py_XDECREF(services);
    Py_DECREF(groups);
    PyErr_Clear();
    Py_RETURN_NOTIMPLEMENTED;
}

static PyMethodDef methods[] = {
    {"unpackb", unpackb, METH_O,
     "unpackb(body) -> msgpack.unpackb(body, raw=False, unicode_errors='replace', strict_map_key=False, "
     "use_list=False), or NotImplemented when msgpack itself must decide."},
    {"packb", packb, METH_O,
     "packb(obj) -> msgpack.packb(obj) for plain data (None, bool, int, float, str, bytes, dict, list, tuple), "
     "or NotImplemented when msgpack itself must decide."},
    {"clean_chunk", clean_chunk, METH_O,
     "clean_chunk(spans) -> False when normalize must check the chunk span by span, else its _dd.p.tid or None."},
    {"normalize_clean", normalize_clean, METH_VARARGS,
     "normalize_clean(spans, obfuscate_sql) -> False, the chunk's tid or None, or (tid, spans left to Python)."},
    {"compute_groups", compute_groups, METH_VARARGS,
     "compute_groups(traces, client_top_level, bucket_ns) -> stats.compute_groups's result, or NotImplemented."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "agent_sim._cdecode", NULL, -1, methods};

PyMODINIT_FUNC PyInit__cdecode(void) {
    for (int i = 0; i < N_FIELDS; i++)
        if ((field_keys[i] = PyUnicode_InternFromString(field_names[i])) == NULL)
            return NULL;
    if ((key_status = PyUnicode_InternFromString("http.status_code")) == NULL
        || (key_tid = PyUnicode_InternFromString("_dd.p.tid")) == NULL
        || (key_top_level = PyUnicode_InternFromString("_dd.top_level")) == NULL
        || (key_measured = PyUnicode_InternFromString("_dd.measured")) == NULL
        || (key_span_kind = PyUnicode_InternFromString("span.kind")) == NULL
        || (empty_str = PyUnicode_InternFromString("")) == NULL
        || (key_sql_query = PyUnicode_InternFromString("sql.query")) == NULL
        || (key_db_statement = PyUnicode_InternFromString("db.statement")) == NULL
        || (key_error_message = PyUnicode_InternFromString("error.message")) == NULL)
        return NULL;
    for (int i = 0; i < 600; i++)
        if ((small_status[i] = PyLong_FromLong(i)) == NULL)
            return NULL;
    PyObject *m = PyModule_Create(&module);
    PyObject *limits = Py_BuildValue("(iiiiL)", SHORT_TEXT, SHORT_RESOURCE, SHORT_META_KEY, SHORT_META_VALUE,
                                     YEAR_2000_NS);
    if (m != NULL && (limits == NULL || PyModule_AddObjectRef(m, "CLEAN_LIMITS", limits) < 0))
        Py_CLEAR(m);
    Py_XDECREF(limits);
    return m;
}
