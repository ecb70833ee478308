/* The trace-level tags of a chunk written straight into the v0.4 output (see
 * _cencode.h): the same bytes as tracer/processor.py's ``_tag`` putting them
 * into the span dicts and the encoder packing those, without the dict
 * inserts (or their resizes), and the span dicts are left as they are.
 *
 * The writer's descriptor (processor.process_chunks with defer=True):
 *   (settings, chunk, priority, root, mechanism, trace_id, origin, dd_tags)
 *   settings = (env, version, tags, runtime_id, pid, send_dropped,
 *               "env", "version", "language", "python", "runtime-id",
 *               "process_id", "_sampling_priority_v1", "_dd.p.dm",
 *               "_dd.p.tid", "_dd.origin")
 * Anything unusual (a mechanism that is not an int, a trace id whose high
 * half is not in 1..2**64-1 or 0, tags that are not dicts, meta or metrics
 * that are not exact dicts) raises: the writer then tags that chunk in
 * Python and encodes it as before, so the outcome is Python's own. */
#include "_cencode.h"

enum { S_ENV, S_VERSION, S_TAGS, S_RUNTIME, S_PID, S_SEND_DROPPED, K_ENV, K_VERSION, K_LANGUAGE, V_PYTHON, K_RUNTIME,
       K_PID, K_PRIORITY, K_DM, K_TID, K_ORIGIN, SETTINGS_LEN };
enum { D_SETTINGS, D_CHUNK, D_PRIORITY, D_ROOT, D_MECHANISM, D_TRACE_ID, D_ORIGIN, D_DD_TAGS };

static Tag *
add_tag(Tag *tags, int *n, int kind, PyObject *key, PyObject *value)
{
    Tag *t = &tags[(*n)++];
    t->kind = kind;
    t->key = key;
    t->value = value;
    t->raw_len = 0;
    return t;
}

/* `if value:` in processor._tag. */
static int
truthy(PyObject *value)
{
    return value == Py_None ? 0 : PyObject_IsTrue(value);
}

/* config.tags / dd_tags: an exact dict when truthy, added by setdefault. */
static int
add_all(Tag *tags, int *n, PyObject *dict)
{
    int truth = truthy(dict);
    if (truth <= 0)
        return truth;
    if (!PyDict_CheckExact(dict)) {
        PyErr_SetString(PyExc_TypeError, "tags to add must be a dict");
        return -1;
    }
    add_tag(tags, n, TAG_SETDEFAULT_ALL, NULL, dict);
    return 0;
}

/* _dd.p.tid: f"{trace_id >> 64:016x}" when the high half is not 0. */
static int
add_tid(ChunkTags *c, PyObject *key, PyObject *trace_id)
{
    if (!PyLong_CheckExact(trace_id)) {
        PyErr_SetString(PyExc_TypeError, "trace id must be an int");
        return -1;
    }
    int overflow;
    long long small = PyLong_AsLongLongAndOverflow(trace_id, &overflow);
    if (small == -1 && PyErr_Occurred())
        return -1;
    if (!overflow && small >= 0)
        return 0; /* high half 0 */
    PyObject *shift = PyLong_FromLong(64);
    PyObject *high = shift == NULL ? NULL : PyNumber_Rshift(trace_id, shift);
    Py_XDECREF(shift);
    if (high == NULL)
        return -1;
    /* PyLong_AsUnsignedLongLong goes through _PyLong_AsByteArray in 3.11:
     * the usual high half (the start second) fits a signed long long. */
    long long signed_high = PyLong_AsLongLongAndOverflow(high, &overflow);
    unsigned long long h = (unsigned long long)signed_high;
    if (overflow > 0)
        h = PyLong_AsUnsignedLongLong(high); /* OverflowError beyond 64 bits */
    else if (signed_high < 0 && !PyErr_Occurred())
        PyErr_SetString(PyExc_OverflowError, "negative trace id");
    Py_DECREF(high);
    if (PyErr_Occurred())
        return -1;
    if (h == 0) /* an id in 2**63..2**64-1 */
        return 0;
    Tag *t = add_tag(c->first_meta, &c->n_first_meta, TAG_SET, key, NULL);
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++)
        t->raw[i] = hex[(h >> (60 - 4 * i)) & 0xf];
    t->raw_len = 16;
    return 0;
}

int
_cencode_chunk_tags(PyObject *const *item, Py_ssize_t spans, ChunkTags *c)
{
    PyObject *settings = item[D_SETTINGS];
    if (!PyTuple_CheckExact(settings) || PyTuple_GET_SIZE(settings) != SETTINGS_LEN) {
        PyErr_SetString(PyExc_TypeError, "bad chunk descriptor settings");
        return -1;
    }
    PyObject **s = &PyTuple_GET_ITEM(settings, 0);
    c->n_root_meta = c->n_first_meta = 0;
    c->root = -1;
    PyObject *root = item[D_ROOT];
    if (root != Py_None) {
        Py_ssize_t at = PyLong_Check(root) ? PyLong_AsSsize_t(root) : -1;
        if (at < 0 || at % RECORD_LEN || at / RECORD_LEN >= spans) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "the root is not a record of the chunk");
            return -1;
        }
        c->root = at / RECORD_LEN;
        Tag *m = c->root_meta;
        int *n = &c->n_root_meta, truth;
        if ((truth = truthy(s[S_ENV])) < 0)
            return -1;
        if (truth)
            add_tag(m, n, TAG_SETDEFAULT, s[K_ENV], s[S_ENV]);
        if ((truth = truthy(s[S_VERSION])) < 0)
            return -1;
        if (truth)
            add_tag(m, n, TAG_SETDEFAULT, s[K_VERSION], s[S_VERSION]);
        if (add_all(m, n, s[S_TAGS]) < 0)
            return -1;
        add_tag(m, n, TAG_SET, s[K_LANGUAGE], s[V_PYTHON]);
        add_tag(m, n, TAG_SET, s[K_RUNTIME], s[S_RUNTIME]);
        int one = 0;
        add_tag(c->root_metrics, &one, TAG_SET, s[K_PID], s[S_PID]);
    }
    int one = 0;
    add_tag(c->first_metrics, &one, TAG_SET, s[K_PRIORITY], item[D_PRIORITY]);
    PyObject *mechanism = item[D_MECHANISM];
    if (mechanism != Py_None) {
        long long m = PyLong_CheckExact(mechanism) ? PyLong_AsLongLong(mechanism) : -1;
        if (!PyLong_CheckExact(mechanism) || (m == -1 && PyErr_Occurred())) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "mechanism must be an int");
            return -1;
        }
        Tag *t = add_tag(c->first_meta, &c->n_first_meta, TAG_SET, s[K_DM], NULL);
        /* f"-{m}": "-", then m's sign and digits */
        char digits[24];
        int n = 0;
        unsigned long long u = m < 0 ? 0 - (unsigned long long)m : (unsigned long long)m;
        do
            digits[n++] = (char)('0' + u % 10);
        while (u /= 10);
        t->raw[t->raw_len++] = '-';
        if (m < 0)
            t->raw[t->raw_len++] = '-';
        while (n)
            t->raw[t->raw_len++] = digits[--n];
    }
    if (add_tid(c, s[K_TID], item[D_TRACE_ID]) < 0)
        return -1;
    int truth = truthy(item[D_ORIGIN]);
    if (truth < 0)
        return -1;
    if (truth)
        add_tag(c->first_meta, &c->n_first_meta, TAG_SET, s[K_ORIGIN], item[D_ORIGIN]);
    if (add_all(c->first_meta, &c->n_first_meta, item[D_DD_TAGS]) < 0)
        return -1;
    if (c->root != 0) {
        if ((truth = truthy(s[S_ENV])) < 0)
            return -1;
        if (truth)
            add_tag(c->first_meta, &c->n_first_meta, TAG_SETDEFAULT, s[K_ENV], s[S_ENV]);
    }
    return 0;
}

#define EACH_TAG(t, a, na, b, nb)                                                    \
    for (int _i = 0; _i < (na) + (nb); _i++)                                         \
        for (const Tag *t = _i < (na) ? &(a)[_i] : &(b)[_i - (na)]; t; t = NULL)

/* Whether key k of TAG_SETDEFAULT_ALL `self` is also one of the other tags'. */
static int
collides(PyObject *k, const Tag *self, const Tag *a, int na, const Tag *b, int nb)
{
    EACH_TAG(t, a, na, b, nb)
    {
        if (t == self)
            continue;
        int hit = t->kind == TAG_SETDEFAULT_ALL ? PyDict_Contains(t->value, k)
                                                : PyObject_RichCompareBool(k, t->key, Py_EQ);
        if (hit)
            return hit;
    }
    return 0;
}

static PyObject *
tag_value(const Tag *t)
{
    if (t->value != NULL)
        return Py_NewRef(t->value);
    return PyUnicode_FromStringAndSize(t->raw, t->raw_len);
}

/* The rare case (a tag already in the dict, or two tags with one key): the
 * dict processor._tag would make, built on a copy, and packed. */
static int
pack_applied(Out *o, PyObject *dict, const Tag *a, int na, const Tag *b, int nb)
{
    PyObject *copy = PyDict_Copy(dict);
    if (copy == NULL)
        return -1;
    int rc = 0;
    EACH_TAG(t, a, na, b, nb)
    {
        if (rc < 0)
            break;
        if (t->kind == TAG_SETDEFAULT_ALL) {
            Py_ssize_t pos = 0;
            PyObject *k, *v;
            while (rc == 0 && PyDict_Next(t->value, &pos, &k, &v)) {
                Py_INCREF(k);
                Py_INCREF(v);
                rc = PyDict_SetDefault(copy, k, v) == NULL ? -1 : 0;
                Py_DECREF(k);
                Py_DECREF(v);
            }
            continue;
        }
        PyObject *value = tag_value(t);
        if (value == NULL)
            rc = -1;
        else if (t->kind == TAG_SET)
            rc = PyDict_SetItem(copy, t->key, value);
        else
            rc = PyDict_SetDefault(copy, t->key, value) == NULL ? -1 : 0;
        Py_XDECREF(value);
    }
    if (rc == 0)
        rc = pack_obj(o, copy, 0);
    Py_DECREF(copy);
    return rc;
}

int
_cencode_pack_tagged(Out *o, PyObject *dict, const Tag *a, int na, const Tag *b, int nb)
{
    if (!PyDict_CheckExact(dict)) {
        PyErr_SetString(PyExc_TypeError, "meta and metrics to tag must be dicts");
        return -1;
    }
    /* The usual case: every tag is new to the dict and to the other tags,
     * so the dict packs as it is, the tags after its entries in their order. */
    Py_ssize_t size = PyDict_GET_SIZE(dict), n = size, sizes = 0;
    int fresh = 1;
    EACH_TAG(t, a, na, b, nb)
    {
        if (t->kind != TAG_SETDEFAULT_ALL) {
            n++;
            int has = PyDict_Contains(dict, t->key);
            if (has < 0)
                return -1;
            fresh &= !has;
            continue;
        }
        n += PyDict_GET_SIZE(t->value);
        sizes += PyDict_GET_SIZE(t->value);
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (fresh && PyDict_Next(t->value, &pos, &k, &v)) {
            int has = PyDict_Contains(dict, k);
            if (has == 0)
                has = collides(k, t, a, na, b, nb);
            if (has < 0)
                return -1;
            fresh = !has;
        }
    }
    if (!fresh)
        return pack_applied(o, dict, a, na, b, nb);
    /* The lookups above can run a key's __eq__, which could change the
     * dicts: the header must count what is packed below (no Python code). */
    EACH_TAG(t, a, na, b, nb)
    {
        if (t->kind == TAG_SETDEFAULT_ALL)
            sizes -= PyDict_GET_SIZE(t->value);
    }
    if (PyDict_GET_SIZE(dict) != size || sizes != 0) {
        PyErr_SetString(PyExc_RuntimeError, "a span dict changed while it was encoded");
        return -1;
    }
    if (pack_header(o, n, 0x80, 0xde, 0xdf) < 0)
        return -1;
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(dict, &pos, &k, &v)) {
        if (pack_obj(o, k, 1) < 0 || pack_obj(o, v, 1) < 0)
            return -1;
    }
    EACH_TAG(t, a, na, b, nb)
    {
        if (t->kind == TAG_SETDEFAULT_ALL) {
            pos = 0;
            while (PyDict_Next(t->value, &pos, &k, &v)) {
                if (pack_obj(o, k, 1) < 0 || pack_obj(o, v, 1) < 0)
                    return -1;
            }
            continue;
        }
        if (pack_obj(o, t->key, 1) < 0)
            return -1;
        if (t->value != NULL) {
            if (pack_obj(o, t->value, 1) < 0)
                return -1;
        }
        else { /* short ASCII: a fixstr */
            if (reserve(o, 1 + t->raw_len) < 0)
                return -1;
            o->buf[o->len++] = (char)(0xa0 | t->raw_len);
            memcpy(o->buf + o->len, t->raw, (size_t)t->raw_len);
            o->len += t->raw_len;
        }
    }
    return 0;
}

int
_cencode_chunk_changed(PyObject *chunk, PyObject **items, Py_ssize_t size)
{
    if (PySequence_Fast_GET_SIZE(chunk) == size && PySequence_Fast_ITEMS(chunk) == items)
        return 0;
    PyErr_SetString(PyExc_RuntimeError, "a chunk changed while it was encoded");
    return 1;
}
