#include "_cdecode.h"

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
        if (n < 32) { /* a fixstr, the usual key or tag: header and bytes in one reservation */
            ROOM(1 + n);
            char *out = w->buf + w->len;
            *out = (char)(0xa0 | n);
            memcpy(out + 1, p, (size_t)n);
            w->len += 1 + (size_t)n;
            return 0;
        }
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
    unsigned long long u = _cdecode_u64(o);
    if (u == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    put_be(w, 0xcf, u, 8);
    return 0;
}

static int enc_dict(wbuf *w, PyObject *o, int depth) {
    Py_ssize_t size = PyDict_GET_SIZE(o);
    if (size < 16) {
        ROOM(1);
        w->buf[w->len++] = (char)(0x80 | size);
    } else if (put_len(w, (size_t)size, 0x80, 16, -1, 0xde) < 0) {
        return -1;
    }
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(o, &pos, &k, &v)) /* keys are str but for odd payloads: no dispatch for them */
        if ((Py_TYPE(k) == &PyUnicode_Type ? enc_str(w, k) : enc(w, k, depth + 1)) < 0 || enc(w, v, depth + 1) < 0)
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

PyObject *_cdecode_packb(PyObject *self, PyObject *arg) {
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
