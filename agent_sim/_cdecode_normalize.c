#include "_cdecode.h"

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

/* 1 with span's 12 field values (borrowed) in f when span is a dict of
   exactly the 12 fields in SPAN_FIELDS order, keyed by the interned names
   (what the decoder builds from the usual wire order): one pass over the
   dict instead of 12 lookups. Else 0, f undefined: the caller looks up. */
static int fields_in_order(PyObject *span, PyObject **f) {
    if (Py_TYPE(span) != &PyDict_Type || PyDict_GET_SIZE(span) != N_FIELDS)
        return 0;
    Py_ssize_t pos = 0;
    PyObject *k;
    for (int i = 0; i < N_FIELDS; i++)
        if (!PyDict_Next(span, &pos, &k, &f[i]) || k != field_keys[i])
            return 0;
    return 1;
}

static int uint64_of(PyObject *o, unsigned long long *out) {
    if (Py_TYPE(o) != &PyLong_Type)
        return 0;
    *out = _cdecode_u64(o); /* negative or beyond 64 bits: an error */
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
    if (!fields_in_order(span, f))
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

PyObject *_cdecode_clean_chunk(PyObject *self, PyObject *spans) {
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

/* normalize_clean(spans, obfuscate_sql, memo=None) normalizes a chunk clean_chunk
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

/* obfuscate(raw), or memo[raw] (memo: a dict the caller keeps for a payload,
   filled here; NULL: none). The function must be pure: a payload's spans
   repeat a few statements, and a call of the Python function costs ~1 k
   instructions where a lookup of a str costs ~50. */
static PyObject *obfuscated(PyObject *obfuscate, PyObject *memo, PyObject *raw) {
    PyObject *out = memo ? PyDict_GetItemWithError(memo, raw) : NULL;
    if (out != NULL || PyErr_Occurred())
        return Py_XNewRef(out);
    Py_INCREF(raw);
    out = PyObject_CallOneArg(obfuscate, raw);
    if (out != NULL && memo != NULL && PyDict_SetItem(memo, raw, out) < 0)
        Py_CLEAR(out);
    Py_DECREF(raw);
    return out;
}

static int obfuscate_span(PyObject *span, PyObject *obfuscate, PyObject *memo, PyObject **todo, Py_ssize_t i) {
    PyObject *meta = field(span, F_META), *resource;
    int plain = PyDict_Contains(meta, key_sql_query) == 0 && PyDict_Contains(meta, key_db_statement) == 0
                && PyDict_Contains(meta, key_error_message) == 0; /* str keys: no errors */
    int left = !plain, rc = -1;
    if (plain) {
        Py_INCREF(span);
        Py_INCREF(meta);
        resource = obfuscated(obfuscate, memo, field(span, F_RESOURCE));
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

PyObject *_cdecode_normalize_clean(PyObject *self, PyObject *args) {
    PyObject *spans, *obfuscate, *memo = NULL, *todo = NULL;
    if (!PyArg_ParseTuple(args, "OO|O", &spans, &obfuscate, &memo))
        return NULL;
    if (memo == Py_None)
        memo = NULL;
    else if (memo != NULL && !PyDict_CheckExact(memo))
        return PyErr_Format(PyExc_TypeError, "normalize_clean: memo must be a dict or None, not %.100s",
                            Py_TYPE(memo)->tp_name);
    PyObject *tid = _cdecode_clean_chunk(self, spans);
    if (tid == Py_False)
        return tid;
    Py_INCREF(spans); /* obfuscate is Python code */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(spans); i++) {
        PyObject *span = PyList_GET_ITEM(spans, i), *type = field(span, F_TYPE);
        if (type == NULL || (PyUnicode_CompareWithASCIIString(type, "sql") == 0
                             && obfuscate_span(span, obfuscate, memo, &todo, i) < 0))
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

/* A group's counts, kept in C while the call runs (the lists get them at
   its end); a duration sum beyond int64 hands the call back to Python. */
typedef struct {
    long long hits, top, errors, duration;
} counts;

typedef struct {
    PyObject *groups, *order; /* {key: index}, [group lists] in first-seen order */
    counts *acc;
    Py_ssize_t cap;
    long long bucket; /* the last bucket start and its int */
    PyObject *bucket_obj;
} grouping;

/* the index of key's group (a new group at the end when it has none); -1 on error */
static Py_ssize_t group_of(grouping *g, PyObject *key) {
    PyObject *at = PyDict_GetItemWithError(g->groups, key);
    if (at != NULL)
        return PyLong_AsSsize_t(at);
    if (PyErr_Occurred())
        return -1;
    Py_ssize_t n = PyList_GET_SIZE(g->order);
    if (n == g->cap) {
        Py_ssize_t cap = g->cap ? 2 * g->cap : 16;
        counts *acc = PyMem_Realloc(g->acc, (size_t)cap * sizeof(counts));
        if (acc == NULL)
            return -1;
        g->acc = acc;
        g->cap = cap;
    }
    PyObject *rest = PyTuple_GetSlice(key, 1, 8), *rest_list = rest ? PySequence_List(rest) : NULL;
    Py_XDECREF(rest);
    PyObject *list = rest_list ? Py_BuildValue("[ONiiiiNN]", PyTuple_GET_ITEM(key, 0), rest_list, 0, 0, 0, 0,
                                                PyList_New(0), PyList_New(0)) : NULL;
    PyObject *index = list ? PyLong_FromSsize_t(n) : NULL;
    int rc = index == NULL || PyList_Append(g->order, list) < 0 || PyDict_SetItem(g->groups, key, index) < 0;
    Py_XDECREF(list);
    Py_XDECREF(index);
    if (rc)
        return -1;
    memset(&g->acc[n], 0, sizeof(counts));
    return n;
}

static int add_span(grouping *g, PyObject *s, PyObject *services, int client_top_level, long long bucket_ns) {
    PyObject *f[N_FIELDS];
    int in_order = fields_in_order(s, f);
#define FIELD(i) (in_order ? f[i] : field(s, i))
    PyObject *metrics = FIELD(F_METRICS), *service, *parent, *meta, *start, *duration, *error;
    if (metrics == NULL || Py_TYPE(metrics) != &PyDict_Type)
        return -1;
    if (PyDict_GET_SIZE(metrics) == 0 && client_top_level)
        return 0;
    int found, top = metric_true(metrics, key_top_level, &found);
    if (top < 0 || (service = FIELD(F_SERVICE)) == NULL || (parent = FIELD(F_PARENT_ID)) == NULL)
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
    if ((meta = FIELD(F_META)) == NULL || Py_TYPE(meta) != &PyDict_Type || (start = FIELD(F_START)) == NULL
        || (duration = FIELD(F_DURATION)) == NULL || (error = FIELD(F_ERROR)) == NULL
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
    if (g->bucket_obj == NULL || g->bucket != end - rem) {
        Py_XSETREF(g->bucket_obj, PyLong_FromLongLong(end - rem));
        if (g->bucket_obj == NULL)
            return -1;
        g->bucket = end - rem;
    }
    PyObject *key = PyTuple_New(8), *items[8] = {g->bucket_obj, service, FIELD(F_NAME), FIELD(F_RESOURCE),
                                                   FIELD(F_TYPE), kind ? kind : empty_str, code,
                                                   is_root ? Py_True : Py_False};
    if (key == NULL)
        return -1;
    for (int i = 0; i < 8; i++) {
        if (items[i] == NULL) { /* a name, resource or type missing: KeyError */
            Py_DECREF(key);
            return -1;
        }
        PyTuple_SET_ITEM(key, i, Py_NewRef(items[i]));
    }
    Py_ssize_t at = group_of(g, key);
    Py_DECREF(key);
    if (at < 0)
        return -1;
    counts *c = &g->acc[at]; /* g[2] += 1; g[3] += top; g[5] += duration; g[4] += error */
    c->hits++;
    c->top += top != 0;
    c->errors += er != 0;
    if (__builtin_add_overflow(c->duration, du, &c->duration))
        return -1;
    PyObject *list = PyList_GET_ITEM(g->order, at);
    return PyList_Append(PyList_GET_ITEM(list, er ? 7 : 6), duration);
}
#undef FIELD

PyObject *_cdecode_compute_groups(PyObject *self, PyObject *args) {
    PyObject *traces;
    int client_top_level;
    long long bucket_ns;
    if (!PyArg_ParseTuple(args, "OpL", &traces, &client_top_level, &bucket_ns))
        return NULL;
    if (Py_TYPE(traces) != &PyList_Type || bucket_ns <= 0)
        Py_RETURN_NOTIMPLEMENTED;
    grouping g = {.groups = PyDict_New(), .order = PyList_New(0)};
    PyObject *services = NULL;
    if (g.groups == NULL || g.order == NULL)
        goto fallback;
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
            if (add_span(&g, PyList_GET_ITEM(spans, i), services, client_top_level, bucket_ns) < 0)
                goto fallback;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(g.order); i++) {
        PyObject *list = PyList_GET_ITEM(g.order, i);
        long long values[4] = {g.acc[i].hits, g.acc[i].top, g.acc[i].errors, g.acc[i].duration};
        for (int k = 0; k < 4; k++) {
            PyObject *v = PyLong_FromLongLong(values[k]);
            if (v == NULL)
                goto fallback;
            PyList_SetItem(list, 2 + k, v);
        }
    }
    Py_XDECREF(services);
    Py_XDECREF(g.bucket_obj);
    Py_DECREF(g.groups);
    PyMem_Free(g.acc);
    return g.order;
fallback:
    Py_XDECREF(services);
    Py_XDECREF(g.bucket_obj);
    Py_XDECREF(g.groups);
    Py_XDECREF(g.order);
    PyMem_Free(g.acc);
    PyErr_Clear();
    Py_RETURN_NOTIMPLEMENTED;
}

int _cdecode_normalize_init(void) {
    for (int i = 0; i < N_FIELDS; i++)
        if ((field_keys[i] = PyUnicode_InternFromString(field_names[i])) == NULL)
            return -1;
    if ((key_status = PyUnicode_InternFromString("http.status_code")) == NULL
        || (key_tid = PyUnicode_InternFromString("_dd.p.tid")) == NULL
        || (key_top_level = PyUnicode_InternFromString("_dd.top_level")) == NULL
        || (key_measured = PyUnicode_InternFromString("_dd.measured")) == NULL
        || (key_span_kind = PyUnicode_InternFromString("span.kind")) == NULL
        || (empty_str = PyUnicode_InternFromString("")) == NULL
        || (key_sql_query = PyUnicode_InternFromString("sql.query")) == NULL
        || (key_db_statement = PyUnicode_InternFromString("db.statement")) == NULL
        || (key_error_message = PyUnicode_InternFromString("error.message")) == NULL)
        return -1;
    for (int i = 0; i < 600; i++)
        if ((small_status[i] = PyLong_FromLong(i)) == NULL)
            return -1;
    return 0;
}

int _cdecode_add_clean_limits(PyObject *m) {
    PyObject *limits = Py_BuildValue("(iiiiL)", SHORT_TEXT, SHORT_RESOURCE, SHORT_META_KEY, SHORT_META_VALUE,
                                     YEAR_2000_NS);
    int rc = limits == NULL ? -1 : PyModule_AddObjectRef(m, "CLEAN_LIMITS", limits);
    Py_XDECREF(limits);
    return rc;
}
