#include "_cdecode.h"

/* -- duplicate span ids -----------------------------------------------------
 * count_duplicates(traces, recent, first_seen) does the loop of
 * ingest.Receiver._count_duplicates: for each chunk, the span ids repeated
 * within it or found in recent[trace_id] (bytes of native uint64s) count as
 * duplicates, recent[trace_id] becomes the union, and a trace id not in
 * recent yet is appended to first_seen. Returns the count; or NotImplemented,
 * having changed nothing, for anything unusual (a chunk that is not a
 * non-empty list or tuple of exact dicts with uint64 span ids, a recent value
 * that is not such bytes), and the Python code decides. The union is written
 * sorted (the Python code writes set order): only its set of ids is read. */

static PyObject *k_trace_id, *k_span_id;

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static size_t sort_unique(uint64_t *v, size_t n) { /* v sorted, repeats dropped; the new length */
    if (n < 2)
        return n;
    qsort(v, n, sizeof(uint64_t), cmp_u64);
    size_t k = 1;
    for (size_t i = 1; i < n; i++)
        if (v[i] != v[k - 1])
            v[k++] = v[i];
    return k;
}

/* recent.get(tid): 1 with *out set (borrowed, NULL when absent), 0 when it
 * is not bytes of whole uint64s, -1 with an exception */
static int earlier_of(PyObject *recent, PyObject *tid, PyObject **out) {
    *out = PyDict_GetItemWithError(recent, tid);
    if (*out == NULL)
        return PyErr_Occurred() ? -1 : 1;
    return PyBytes_CheckExact(*out) && PyBytes_GET_SIZE(*out) % sizeof(uint64_t) == 0;
}

PyObject *_cdecode_count_duplicates(PyObject *self, PyObject *args) {
    PyObject *traces, *recent, *first_seen;
    if (!PyArg_ParseTuple(args, "OOO", &traces, &recent, &first_seen))
        return NULL;
    if (!PyList_CheckExact(traces) || !PyDict_CheckExact(recent) || !PyList_CheckExact(first_seen))
        Py_RETURN_NOTIMPLEMENTED;
    Py_ssize_t n_traces = PyList_GET_SIZE(traces), total = 0;
    /* pass 1: check everything (nothing changes yet) and read the ids */
    for (Py_ssize_t t = 0; t < n_traces; t++) {
        PyObject *spans = PyList_GET_ITEM(traces, t);
        if ((!PyList_CheckExact(spans) && !PyTuple_CheckExact(spans)) || PySequence_Fast_GET_SIZE(spans) == 0)
            Py_RETURN_NOTIMPLEMENTED;
        total += PySequence_Fast_GET_SIZE(spans);
    }
    uint64_t *ids = PyMem_Malloc((total ? total : 1) * sizeof(uint64_t));
    if (ids == NULL)
        return PyErr_NoMemory();
    PyObject *result = Py_NotImplemented, *earlier;
    Py_INCREF(result);
    Py_ssize_t at = 0;
    for (Py_ssize_t t = 0; t < n_traces; t++) {
        PyObject *spans = PyList_GET_ITEM(traces, t), **items = PySequence_Fast_ITEMS(spans), *tid;
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(spans); i++) {
            PyObject *sid = PyDict_CheckExact(items[i]) ? PyDict_GetItemWithError(items[i], k_span_id) : NULL;
            if (sid == NULL || !PyLong_CheckExact(sid)) {
                PyErr_Clear();
                goto done;
            }
            unsigned long long v = _cdecode_u64(sid);
            if (v == (unsigned long long)-1 && PyErr_Occurred()) {
                PyErr_Clear();
                goto done;
            }
            ids[at++] = v;
        }
        tid = PyDict_GetItemWithError(items[0], k_trace_id);
        if (tid == NULL) {
            PyErr_Clear();
            goto done;
        }
        int ok = earlier_of(recent, tid, &earlier); /* also checks tid is hashable */
        if (ok <= 0) {
            PyErr_Clear();
            goto done;
        }
    }
    /* pass 2: count and record, chunk by chunk (a later chunk of the same
       trace sees the union an earlier one wrote) */
    long long duplicates = 0;
    at = 0;
    for (Py_ssize_t t = 0; t < n_traces; t++) {
        PyObject *spans = PyList_GET_ITEM(traces, t);
        Py_ssize_t n = PySequence_Fast_GET_SIZE(spans);
        PyObject *tid = PyDict_GetItemWithError(PySequence_Fast_ITEMS(spans)[0], k_trace_id);
        if (tid == NULL || earlier_of(recent, tid, &earlier) < 0)
            goto error;
        uint64_t *mine = ids + at;
        at += n;
        size_t unique = sort_unique(mine, (size_t)n), old_n = 0, out_n = 0;
        duplicates += n - (Py_ssize_t)unique;
        uint64_t *old = NULL;
        if (earlier != NULL) {
            old_n = (size_t)PyBytes_GET_SIZE(earlier) / sizeof(uint64_t);
            old = PyMem_Malloc((old_n + unique) * sizeof(uint64_t) + 1);
            if (old == NULL) {
                PyErr_NoMemory();
                goto error;
            }
            memcpy(old, PyBytes_AS_STRING(earlier), old_n * sizeof(uint64_t));
            old_n = sort_unique(old, old_n);
        }
        PyObject *packed = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)((old_n + unique) * sizeof(uint64_t)));
        if (packed == NULL) {
            PyMem_Free(old);
            goto error;
        }
        uint64_t u[1];
        char *w = PyBytes_AS_STRING(packed);
        size_t i = 0, j = 0;
        while (i < old_n || j < unique) { /* merge: the union, and how many ids both hold */
            if (j == unique || (i < old_n && old[i] < mine[j]))
                u[0] = old[i++];
            else if (i == old_n || mine[j] < old[i])
                u[0] = mine[j++];
            else {
                u[0] = old[i++];
                j++;
                duplicates++;
            }
            memcpy(w + out_n++ * sizeof(uint64_t), u, sizeof(uint64_t));
        }
        PyMem_Free(old);
        if (_PyBytes_Resize(&packed, (Py_ssize_t)(out_n * sizeof(uint64_t))) < 0)
            goto error;
        int rc = PyDict_SetItem(recent, tid, packed);
        Py_DECREF(packed);
        if (rc < 0 || (earlier == NULL && PyList_Append(first_seen, tid) < 0))
            goto error;
    }
    Py_SETREF(result, PyLong_FromLongLong(duplicates));
done:
    PyMem_Free(ids);
    return result;
error:
    PyMem_Free(ids);
    Py_DECREF(result);
    return NULL;
}

int _cdecode_ingest_init(void) {
    if ((k_trace_id = PyUnicode_InternFromString("trace_id")) == NULL)
        return -1;
    return (k_span_id = PyUnicode_InternFromString("span_id")) == NULL ? -1 : 0;
}

/* -- the traces' index rows -------------------------------------------------
 * index_rows(traces, now, first_id) is the rows Store.ingest upserts:
 * [(*store.trace_row(spans), now, str(first_id + i)) for i, spans in
 * enumerate(traces)], or NotImplemented for a chunk that is not a non-empty
 * list or tuple of exact dicts with int parent ids, an int trace id of 64
 * bits (the root's) and a dict meta (the first span's); field values are
 * passed through as trace_row does. A chunk without a root needs int starts
 * (the earliest span is its row's). */

static PyObject *k_parent_id, *k_start, *k_meta, *k_high, *k_error, *row_keys[5];

/* trace_row(spans) + (now, str(cid)): a new tuple, NULL with an exception,
   or NULL without one when Python must decide */
static PyObject *index_row(PyObject *spans, PyObject *now, long long cid) {
    if ((!PyList_CheckExact(spans) && !PyTuple_CheckExact(spans)) || PySequence_Fast_GET_SIZE(spans) == 0)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(spans);
    PyObject **items = PySequence_Fast_ITEMS(spans), *root = NULL, *earliest = NULL, *earliest_start = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pid, *start;
        if (!PyDict_CheckExact(items[i]) || !(pid = PyDict_GetItemWithError(items[i], k_parent_id))
            || !PyLong_CheckExact(pid))
            return NULL;
        int overflow;
        long long parent = PyLong_AsLongLongAndOverflow(pid, &overflow);
        if (parent == 0 && overflow == 0) { /* -1 with an error is not 0 */
            root = items[i];
            break;
        }
        if (!(start = PyDict_GetItemWithError(items[i], k_start)) || !PyLong_CheckExact(start))
            return NULL;
        if (earliest == NULL) {
            earliest = items[i];
            earliest_start = start;
        } else {
            int less = PyObject_RichCompareBool(start, earliest_start, Py_LT);
            if (less < 0)
                return NULL;
            if (less) {
                earliest = items[i];
                earliest_start = start;
            }
        }
    }
    int has_root = root != NULL;
    if (!has_root)
        root = earliest;
    PyObject *meta = PyDict_GetItemWithError(items[0], k_meta), *high = Py_None, *tid_obj;
    if (meta == NULL || !PyDict_CheckExact(meta))
        return NULL;
    if (PyDict_GET_SIZE(meta) && (high = PyDict_GetItemWithError(meta, k_high)) == NULL) {
        if (PyErr_Occurred())
            return NULL;
        high = Py_None;
    }
    if (!(tid_obj = PyDict_GetItemWithError(root, k_trace_id)) || !PyLong_CheckExact(tid_obj))
        return NULL;
    unsigned long long tid = _cdecode_u64(tid_obj);
    if (tid == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    PyObject *row = PyTuple_New(12);
    if (row == NULL)
        return NULL;
    PyObject *v = PyLong_FromLongLong((long long)tid); /* to_signed: uint64 -> int64 */
    if (v == NULL)
        goto fail;
    PyTuple_SET_ITEM(row, 0, v);
    PyTuple_SET_ITEM(row, 1, Py_NewRef(high));
    for (int k = 0; k < 5; k++) { /* service, resource, name, start, duration */
        if ((v = PyDict_GetItemWithError(root, row_keys[k])) == NULL)
            goto fail;
        PyTuple_SET_ITEM(row, 2 + k, Py_NewRef(v));
    }
    if ((v = PyDict_GetItemWithError(root, k_error)) == NULL)
        goto fail;
    PyTuple_SET_ITEM(row, 7, Py_NewRef(v));
    if ((v = PyLong_FromSsize_t(n)) == NULL)
        goto fail;
    PyTuple_SET_ITEM(row, 8, v);
    PyTuple_SET_ITEM(row, 9, PyLong_FromLong(has_root)); /* a small int: cannot fail */
    PyTuple_SET_ITEM(row, 10, Py_NewRef(now));
    if ((v = PyUnicode_FromFormat("%lld", cid)) == NULL)
        goto fail;
    PyTuple_SET_ITEM(row, 11, v);
    return row;
fail:
    Py_DECREF(row);
    return NULL;
}

PyObject *_cdecode_index_rows(PyObject *self, PyObject *args) {
    PyObject *traces, *now;
    long long first;
    if (!PyArg_ParseTuple(args, "OOL", &traces, &now, &first))
        return NULL;
    if (!PyList_CheckExact(traces))
        Py_RETURN_NOTIMPLEMENTED;
    Py_ssize_t n = PyList_GET_SIZE(traces);
    PyObject *rows = PyList_New(n);
    if (rows == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *row = index_row(PyList_GET_ITEM(traces, i), now, first + i);
        if (row == NULL) {
            Py_DECREF(rows);
            if (PyErr_ExceptionMatches(PyExc_MemoryError))
                return NULL;
            PyErr_Clear();
            Py_RETURN_NOTIMPLEMENTED;
        }
        PyList_SET_ITEM(rows, i, row);
    }
    return rows;
}

int _cdecode_rows_init(void) {
    static const char *names[5] = {"service", "resource", "name", "start", "duration"};
    for (int k = 0; k < 5; k++)
        if ((row_keys[k] = PyUnicode_InternFromString(names[k])) == NULL)
            return -1;
    return (k_parent_id = PyUnicode_InternFromString("parent_id")) && (k_start = PyUnicode_InternFromString("start"))
                   && (k_meta = PyUnicode_InternFromString("meta")) && (k_high = PyUnicode_InternFromString("_dd.p.tid"))
                   && (k_error = PyUnicode_InternFromString("error"))
               ? 0
               : -1;
}
