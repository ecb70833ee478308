#include "_cdecode.h"

/* -- the insights' common case ----------------------------------------------
 * breakdown_chunk(spans, out, bucket_ns) does insights.breakdown's common
 * chunk: exactly one endpoint span and no DB/HTTP client span cut from its
 * parent. Then it adds the chunk's exclusive time per (service, type) to
 * ``out`` in the same order and with the same keys as the Python code, and
 * returns True. For any other chunk, a span that is not an exact dict with
 * the types normalize leaves (uint64 ids, int64 start and duration, str
 * service, type and resource, dict meta), an int64 overflow or more than
 * MAX_SUMS (service, type) pairs, it returns False having changed nothing,
 * and the Python code decides.
 *
 * detect_clear(spans, slow_ns, least) is True when insights.detect cannot
 * find anything in the chunk (no error, no slow DB span, no parent with
 * ``least`` DB or HTTP client children of one resource), else False: the
 * Python detectors then run. Read only.
 *
 * Spans are looked up by id in a small open-addressing table; each function
 * reads only the fields it needs (the dict lookups are most of their cost). */

static PyObject *k_span_id, *k_parent_id, *k_service, *k_resource, *k_type, *k_name, *k_start, *k_duration,
    *k_error, *k_meta, *s_db_system, *s_span_kind, *s_client, *s_sql, *s_http, *fetch_suffixes[3];

typedef struct {
    uint64_t sid;
    Py_ssize_t last; /* index of the last span with this id; -1: empty slot */
    long long child_ns;
} Slot;

typedef struct {
    Slot *slots;
    size_t mask;
} Table;

static int table_init(Table *t, Py_ssize_t n) {
    size_t size = 8;
    while (size < (size_t)n * 2)
        size <<= 1;
    t->slots = PyMem_Malloc(size * sizeof(Slot));
    if (t->slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < size; i++)
        t->slots[i].last = -1;
    t->mask = size - 1;
    return 0;
}

static Slot *table_find(Table *t, uint64_t sid) { /* the slot of sid, or the empty one where it goes */
    size_t i = (size_t)((sid * 0x9E3779B97F4A7C15ULL) >> 17) & t->mask;
    while (t->slots[i].last >= 0 && t->slots[i].sid != sid)
        i = (i + 1) & t->mask;
    return &t->slots[i];
}

static int as_u64(PyObject *o, uint64_t *out) {
    if (!PyLong_CheckExact(o))
        return 0;
    unsigned long long v = _cdecode_u64(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    *out = v;
    return 1;
}

static int as_i64(PyObject *o, long long *out) {
    int overflow;
    if (!PyLong_CheckExact(o))
        return 0;
    *out = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (*out == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return overflow == 0;
}

static int str_eq(PyObject *a, PyObject *b) { /* both exact str */
    return a == b || (PyUnicode_GET_LENGTH(a) == PyUnicode_GET_LENGTH(b) && PyUnicode_Compare(a, b) == 0);
}

typedef struct {
    PyObject *span, *service, *type, *meta;
    uint64_t sid, pid;
    long long duration;
} View;

/* spans[i][key], borrowed; NULL without an exception when missing (a
 * KeyError, or a failed __eq__, that Python raises again) */
static PyObject *get(PyObject *span, PyObject *key) {
    PyObject *v = PyDict_GetItemWithError(span, key);
    if (v == NULL)
        PyErr_Clear();
    return v;
}

/* The fields breakdown reads of every span (borrowed); 0 when Python must decide. */
static int view_of(PyObject *span, View *v) {
    PyObject *o;
    if (!PyDict_CheckExact(span))
        return 0;
    v->span = span;
    return (o = get(span, k_span_id)) && as_u64(o, &v->sid) && (o = get(span, k_parent_id)) && as_u64(o, &v->pid)
           && (o = get(span, k_duration)) && as_i64(o, &v->duration) && (v->service = get(span, k_service))
           && PyUnicode_CheckExact(v->service) && (v->type = get(span, k_type)) && PyUnicode_CheckExact(v->type)
           && (v->meta = get(span, k_meta)) && PyDict_CheckExact(v->meta);
}

/* meta.get("span.kind") == "client": 1, 0, or -1 with an exception */
static int kind_is_client(PyObject *meta) {
    PyObject *kind = PyDict_GetItemWithError(meta, s_span_kind);
    if (kind == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (PyUnicode_CheckExact(kind))
        return str_eq(kind, s_client);
    return PyObject_RichCompareBool(kind, s_client, Py_EQ);
}

/* insights._is_client: type "sql", a db.system tag or span.kind client */
static int is_client(View *v) {
    if (str_eq(v->type, s_sql))
        return 1;
    int has = PyDict_Contains(v->meta, s_db_system);
    if (has != 0)
        return has;
    return kind_is_client(v->meta);
}

static View *views_of(PyObject *spans, Py_ssize_t *n) {
    if (!PyList_CheckExact(spans) && !PyTuple_CheckExact(spans))
        return NULL;
    *n = PySequence_Fast_GET_SIZE(spans);
    View *views = PyMem_Malloc((*n ? *n : 1) * sizeof(View));
    if (views == NULL)
        return NULL;
    PyObject **items = PySequence_Fast_ITEMS(spans);
    for (Py_ssize_t i = 0; i < *n; i++) {
        if (!view_of(items[i], &views[i])) {
            PyMem_Free(views);
            return NULL;
        }
    }
    return views;
}

#define MAX_SUMS 64

typedef struct {
    PyObject *service, *type; /* borrowed */
    long long ns;
} Sum;

PyObject *_cdecode_breakdown_chunk(PyObject *self, PyObject *args) {
    PyObject *spans, *out;
    long long bucket_ns;
    if (!PyArg_ParseTuple(args, "OO!L", &spans, &PyDict_Type, &out, &bucket_ns))
        return NULL;
    if (bucket_ns <= 0 || !PyDict_CheckExact(out))
        Py_RETURN_FALSE;
    Py_ssize_t n;
    View *v = views_of(spans, &n);
    if (v == NULL) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_FALSE;
    }
    PyObject *result = Py_False;
    Table t = {NULL, 0};
    Sum *sums = NULL;
    Py_ssize_t n_sums = 0, entry = -1;
    if (table_init(&t, n) < 0)
        goto error;
    for (Py_ssize_t i = 0; i < n; i++) { /* by_id: the last span of each id */
        Slot *s = table_find(&t, v[i].sid);
        s->sid = v[i].sid;
        s->last = i;
        s->child_ns = 0;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Slot *p = table_find(&t, v[i].pid);
        int client = is_client(&v[i]);
        if (client < 0)
            goto error;
        if (p->last < 0) {
            if (client || entry >= 0)
                goto done; /* a stray client span or a second endpoint: Python's general case */
            entry = i;
            continue;
        }
        if (__builtin_add_overflow(p->child_ns, v[i].duration, &p->child_ns))
            goto done;
        if (!str_eq(v[p->last].service, v[i].service) && !str_eq(v[i].type, s_sql) && !client) {
            if (entry >= 0)
                goto done;
            entry = i;
        }
    }
    if (entry < 0)
        goto done;
    PyObject *start_obj = get(v[entry].span, k_start), *resource = get(v[entry].span, k_resource);
    long long start, end, bucket;
    if (start_obj == NULL || !as_i64(start_obj, &start) || resource == NULL || !PyUnicode_CheckExact(resource)
        || __builtin_add_overflow(start, v[entry].duration, &end))
        goto done;
    bucket = end % bucket_ns; /* Python's floor modulo */
    if (bucket < 0)
        bucket += bucket_ns;
    bucket = end - bucket;
    sums = PyMem_Malloc(MAX_SUMS * sizeof(Sum));
    if (sums == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long long exclusive;
        if (__builtin_sub_overflow(v[i].duration, table_find(&t, v[i].sid)->child_ns, &exclusive))
            goto done;
        if (exclusive <= 0)
            continue;
        Py_ssize_t k = 0;
        while (k < n_sums && !(str_eq(sums[k].service, v[i].service) && str_eq(sums[k].type, v[i].type)))
            k++;
        if (k == n_sums) {
            if (n_sums == MAX_SUMS)
                goto done; /* many (service, type) pairs: Python's dict, not a quadratic search */
            sums[n_sums].service = v[i].service;
            sums[n_sums].type = v[i].type;
            sums[n_sums++].ns = 0;
        }
        if (__builtin_add_overflow(sums[k].ns, exclusive, &sums[k].ns))
            goto done;
    }
    /* nothing can send us back to Python from here: write into out */
    PyObject *bucket_obj = PyLong_FromLongLong(bucket);
    if (bucket_obj == NULL)
        goto error;
    for (Py_ssize_t k = 0; k < n_sums; k++) {
        PyObject *key = PyTuple_Pack(5, bucket_obj, v[entry].service, resource, sums[k].service,
                                     sums[k].type);
        PyObject *ns = key ? PyLong_FromLongLong(sums[k].ns) : NULL;
        PyObject *old = ns ? PyDict_GetItemWithError(out, key) : NULL;
        PyObject *total = NULL;
        if (ns != NULL && (old != NULL || !PyErr_Occurred()))
            total = old ? PyNumber_Add(old, ns) : (Py_INCREF(ns), ns);
        int rc = total ? PyDict_SetItem(out, key, total) : -1;
        Py_XDECREF(key);
        Py_XDECREF(ns);
        Py_XDECREF(total);
        if (rc < 0) {
            Py_DECREF(bucket_obj);
            goto error;
        }
    }
    Py_DECREF(bucket_obj);
    result = Py_True;
done:
    PyMem_Free(sums);
    PyMem_Free(t.slots);
    PyMem_Free(v);
    return Py_NewRef(result);
error:
    PyMem_Free(sums);
    PyMem_Free(t.slots);
    PyMem_Free(v);
    return NULL;
}

/* insights._is_db: type "sql" or a db.system tag, and not a cursor fetch span */
static int is_db(PyObject *type, PyObject *meta, PyObject *name) {
    int db = str_eq(type, s_sql) || PyDict_Contains(meta, s_db_system);
    if (db <= 0)
        return db;
    for (int k = 0; k < 3; k++) {
        Py_ssize_t tail = PyUnicode_Tailmatch(name, fetch_suffixes[k], 0, PY_SSIZE_T_MAX, 1);
        if (tail != 0)
            return tail < 0 ? -1 : 0;
    }
    return 1;
}

typedef struct {
    uint64_t pid;
    PyObject *resource; /* borrowed; NULL: empty slot */
    Py_ssize_t count;
} Run;

PyObject *_cdecode_detect_clear(PyObject *self, PyObject *args) {
    PyObject *spans, *slow_ns, *least_obj;
    long long least;
    if (!PyArg_ParseTuple(args, "OOO", &spans, &slow_ns, &least_obj))
        return NULL;
    if (!as_i64(least_obj, &least))
        Py_RETURN_FALSE;
    if (least < 1)
        least = 1; /* every parent in detect's ``children`` has a child */
    if (!PyList_CheckExact(spans) && !PyTuple_CheckExact(spans))
        Py_RETURN_FALSE;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(spans);
    PyObject **items = PySequence_Fast_ITEMS(spans), *result = Py_False;
    size_t size = 8;
    while (size < (size_t)n * 2)
        size <<= 1;
    Run *runs = PyMem_Calloc(size, sizeof(Run));
    if (runs == NULL)
        return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *span = items[i], *error, *type, *meta, *name, *resource, *pid_obj;
        if (!PyDict_CheckExact(span) || !(error = get(span, k_error)) || !(type = get(span, k_type))
            || !PyUnicode_CheckExact(type) || !(meta = get(span, k_meta)) || !PyDict_CheckExact(meta)
            || !(name = get(span, k_name)) || !PyUnicode_CheckExact(name))
            goto done;
        int failed = PyObject_IsTrue(error);
        if (failed != 0) {
            if (failed < 0)
                PyErr_Clear();
            goto done;
        }
        int kid = is_db(type, meta, name);
        if (kid < 0)
            goto error;
        if (kid) {
            PyObject *d = get(span, k_duration);
            int slow = d ? PyObject_RichCompareBool(d, slow_ns, Py_GE) : 1;
            if (slow != 0) {
                if (slow < 0)
                    goto error;
                goto done;
            }
        } else if (str_eq(type, s_http)) {
            kid = kind_is_client(meta);
            if (kid < 0)
                goto error;
        }
        if (!kid)
            continue;
        uint64_t pid;
        if (!(pid_obj = get(span, k_parent_id)) || !as_u64(pid_obj, &pid) || !(resource = get(span, k_resource))
            || !PyUnicode_CheckExact(resource))
            goto done;
        Py_hash_t h = PyObject_Hash(resource);
        if (h == -1)
            goto error;
        size_t j = (size_t)(((uint64_t)h ^ (pid * 0x9E3779B97F4A7C15ULL)) >> 7) & (size - 1);
        while (runs[j].resource != NULL && !(runs[j].pid == pid && str_eq(runs[j].resource, resource)))
            j = (j + 1) & (size - 1);
        if (runs[j].resource == NULL) {
            runs[j].pid = pid;
            runs[j].resource = resource;
        }
        if (++runs[j].count >= least)
            goto done; /* a possible N+1: the Python detectors look */
    }
    result = Py_True;
done:
    PyMem_Free(runs);
    return Py_NewRef(result);
error:
    PyMem_Free(runs);
    return NULL;
}

int _cdecode_insights_init(void) {
    static const char *suffixes[3] = {".fetchone", ".fetchmany", ".fetchall"};
    struct {
        PyObject **slot;
        const char *text;
    } names[] = {{&k_span_id, "span_id"},   {&k_parent_id, "parent_id"}, {&k_service, "service"},
                 {&k_resource, "resource"}, {&k_type, "type"},           {&k_name, "name"},
                 {&k_start, "start"},       {&k_duration, "duration"},   {&k_error, "error"},
                 {&k_meta, "meta"},         {&s_db_system, "db.system"}, {&s_span_kind, "span.kind"},
                 {&s_client, "client"},     {&s_sql, "sql"},             {&s_http, "http"}};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if ((*names[i].slot = PyUnicode_InternFromString(names[i].text)) == NULL)
            return -1;
    for (int k = 0; k < 3; k++)
        if ((fetch_suffixes[k] = PyUnicode_InternFromString(suffixes[k])) == NULL)
            return -1;
    return 0;
}
