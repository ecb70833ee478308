/* tracer._cspan's SpanBase (see _cspan.h): the methods every span runs:
 * set_tag, set_metric, __enter__, __exit__ and finish, and appending the
 * finished span's record to its trace. */
#include "_cspan.h"

static int
Span_traverse(SpanObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->trace_id);
    Py_VISIT(self->span_id);
    Py_VISIT(self->parent_id);
    Py_VISIT(self->name);
    Py_VISIT(self->service);
    Py_VISIT(self->resource);
    Py_VISIT(self->span_type);
    Py_VISIT(self->start_ns);
    Py_VISIT(self->duration_ns);
    Py_VISIT(self->error);
    Py_VISIT(self->meta);
    Py_VISIT(self->metrics);
    Py_VISIT(self->_trace);
    Py_VISIT(self->_parent);
    Py_VISIT(self->_prev);
    Py_VISIT(self->_mono);
    Py_VISIT(self->_request);
    Py_VISIT(self->_cmodule);
    Py_VISIT(self->_token);
    return 0;
}

static int
Span_clear(SpanObject *self)
{
    Py_CLEAR(self->trace_id);
    Py_CLEAR(self->span_id);
    Py_CLEAR(self->parent_id);
    Py_CLEAR(self->name);
    Py_CLEAR(self->service);
    Py_CLEAR(self->resource);
    Py_CLEAR(self->span_type);
    Py_CLEAR(self->start_ns);
    Py_CLEAR(self->duration_ns);
    Py_CLEAR(self->error);
    Py_CLEAR(self->meta);
    Py_CLEAR(self->metrics);
    Py_CLEAR(self->_trace);
    Py_CLEAR(self->_parent);
    Py_CLEAR(self->_prev);
    Py_CLEAR(self->_mono);
    Py_CLEAR(self->_request);
    Py_CLEAR(self->_cmodule);
    Py_CLEAR(self->_token);
    return 0;
}

static void
Span_dealloc(SpanObject *self)
{
    PyObject_GC_UnTrack(self);
    /* A long chain of parents freed at once must not overflow the C stack. */
    Py_TRASHCAN_BEGIN(self, Span_dealloc)
    Span_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
    Py_TRASHCAN_END
}

/* -- tags ----------------------------------------------------------------- */

/* Bind a vectorcall's positional and keyword arguments to the n parameters
 * `names` of method `fn`, as Python does: out[i] is borrowed, NULL for an
 * optional parameter not given (the first `required` ones are required).
 * The hot path (positional only) costs one test. */
int
_cspan_bind_args(const char *fn, const char *const *names, Py_ssize_t n, Py_ssize_t required, PyObject *const *args,
                 size_t nargsf, PyObject *kwnames, PyObject **out)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (kwnames == NULL && nargs == n) {
        for (Py_ssize_t i = 0; i < n; i++)
            out[i] = args[i];
        return 0;
    }
    if (nargs > n) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd positional arguments but %zd were given", fn, n, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        out[i] = i < nargs ? args[i] : NULL;
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *kw = PyTuple_GET_ITEM(kwnames, k);
        Py_ssize_t i = 0;
        while (i < n && PyUnicode_CompareWithASCIIString(kw, names[i]) != 0)
            i++;
        if (i == n) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", fn, kw);
            return -1;
        }
        if (out[i] != NULL) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", fn, names[i]);
            return -1;
        }
        out[i] = args[nargs + k];
    }
    for (Py_ssize_t i = 0; i < required; i++) {
        if (out[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument: '%s'", fn, names[i]);
            return -1;
        }
    }
    return 0;
}

static const char *const key_value_names[] = {"key", "value"};
static const char *const exit_names[] = {"exc_type", "exc_value", "tb"};

static PyObject *
Span_set_tag(SpanObject *self, PyObject *const *argv, size_t nargsf, PyObject *kwnames)
{
    PyObject *out[2];
    PyObject *const *args = bind_args("set_tag", key_value_names, 2, 2, argv, nargsf, kwnames, out);
    if (args == NULL)
        return NULL;
    PyObject *key = args[0], *value = args[1];
    if (PyUnicode_CheckExact(key) && PyUnicode_GET_LENGTH(key) <= MAX_KEY_LEN && self->meta != NULL &&
        self->metrics != NULL) {
        PyTypeObject *cls = Py_TYPE(value);
        if (cls == &PyUnicode_Type) {
            if (PyUnicode_GET_LENGTH(value) <= MAX_VALUE_LEN) {
                if (PyDict_SetItem(self->meta, key, value) < 0)
                    return NULL;
                Py_RETURN_NONE;
            }
        }
        else if (cls == &PyLong_Type || cls == &PyFloat_Type) {
            int string_tag = PyUnicode_Compare(key, s_status_code) == 0;
            if (!string_tag) {
                if (PyDict_SetItem(self->metrics, key, value) < 0)
                    return NULL;
                Py_RETURN_NONE;
            }
        }
    }
    /* Everything else (truncation, None, bool, other types): the Python rules. */
    return PyObject_CallMethodObjArgs((PyObject *)self, s__set_tag_slow, key, value, NULL);
}

static PyObject *
Span_set_metric(SpanObject *self, PyObject *const *argv, size_t nargsf, PyObject *kwnames)
{
    PyObject *out[2];
    PyObject *const *args = bind_args("set_metric", key_value_names, 2, 2, argv, nargsf, kwnames, out);
    if (args == NULL)
        return NULL;
    PyObject *key = args[0], *value = args[1];
    if (PyUnicode_CheckExact(key) && PyUnicode_GET_LENGTH(key) <= MAX_KEY_LEN && self->metrics != NULL &&
        (PyLong_CheckExact(value) || PyFloat_CheckExact(value))) {
        if (PyDict_SetItem(self->metrics, key, value) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    return PyObject_CallMethodObjArgs((PyObject *)self, s__set_metric_slow, key, value, NULL);
}

/* -- life cycle ----------------------------------------------------------- */

/* PyList_Append of each item of `items` to `list` (an exact list): stored
 * straight into the list's spare capacity where it has some, as
 * list.append does itself (PyListObject's ob_item and allocated), the rest
 * through PyList_Append, which grows it. ~8 instructions an item instead of
 * ~45 for the call. */
static int
list_append_all(PyObject *list, PyObject *const *items, Py_ssize_t n)
{
    PyListObject *l = (PyListObject *)list;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t size = Py_SIZE(l);
#ifndef Py_GIL_DISABLED
        if (size < l->allocated) {
            l->ob_item[size] = Py_NewRef(items[i]);
            Py_SET_SIZE(l, size + 1);
            continue;
        }
#endif
        if (PyList_Append(list, items[i]) < 0)
            return -1;
    }
    return 0;
}

/* Whether the trace's chunk leaves after this span's record (`length`
 * values in trace.finished): 2 for the root (root_done set), 1 for a late
 * span or a full partial chunk, 0 for none, -1 on error. */
static int
flush_kind(SpanObject *self, PyObject *trace, Py_ssize_t length)
{
    PyObject *root = TRACE_GET(trace, root);
    if (root == NULL)
        return -1;
    int is_root = root == (PyObject *)self;
    Py_DECREF(root);
    if (is_root)
        return TRACE_SET(trace, root_done, Py_True) < 0 ? -1 : 2;
    PyObject *root_done = TRACE_GET(trace, root_done);
    if (root_done == NULL)
        return -1;
    int late = PyObject_IsTrue(root_done);
    Py_DECREF(root_done);
    if (late != 0)
        return late;
    TraceObject *t = is_c_trace(trace) ? (TraceObject *)trace : NULL;
    if (t != NULL && t->seen_buffer != NULL && t->seen_buffer == t->buffer)
        return length >= t->flush_len;
    PyObject *buffer = TRACE_GET(trace, buffer);
    PyObject *limit = buffer ? PyObject_GetAttr(buffer, s_partial_flush_len) : NULL;
    if (limit == NULL) {
        Py_XDECREF(buffer);
        return -1;
    }
    Py_ssize_t max_len = PyLong_AsSsize_t(limit);
    Py_DECREF(limit);
    if (max_len == -1 && PyErr_Occurred()) {
        Py_DECREF(buffer);
        return -1;
    }
    /* Kept only for the buffer still in place (the getattr may run Python
     * code, a property, which may replace it). */
    if (t != NULL && buffer == t->buffer) {
        Py_XSETREF(t->seen_buffer, Py_NewRef(buffer));
        t->flush_len = max_len;
    }
    Py_DECREF(buffer);
    return length >= max_len;
}

/* Append the span's record to its trace and send the chunk if it can leave:
 * _Trace.finish_span, for a span whose duration is set. */
static int
finish_record_owned(SpanObject *self, PyObject *trace, PyObject *metrics, PyObject *service, PyObject *parent)
{
    int top_level;
    if (parent == Py_None)
        top_level = 1;
    else if (Py_TYPE(parent) == span_cls && ((SpanObject *)parent)->service != NULL) {
        PyObject *pservice = Py_NewRef(((SpanObject *)parent)->service);
        top_level = PyObject_RichCompareBool(pservice, service, Py_NE);
        Py_DECREF(pservice);
    }
    else {
        PyObject *pservice = PyObject_GetAttrString(parent, "service");
        if (pservice == NULL)
            return -1;
        top_level = PyObject_RichCompareBool(pservice, service, Py_NE);
        Py_DECREF(pservice);
    }
    if (top_level < 0)
        return -1;
    if (top_level && PyDict_SetItem(metrics, s_top_level, int_1) < 0)
        return -1;
    /* Read after the comparison (a str subclass's __ne__ runs Python code,
     * which may have changed or deleted fields). */
    if (self->span_id == NULL || self->parent_id == NULL || self->name == NULL || self->resource == NULL ||
        self->span_type == NULL || self->start_ns == NULL || self->duration_ns == NULL || self->error == NULL ||
        self->meta == NULL) {
        PyErr_SetString(PyExc_AttributeError, "span is missing a field");
        return -1;
    }
    if (parent == Py_None && self->_cmodule != NULL) {
        PyObject *module = Py_NewRef(self->_cmodule);
        int lone = _cspan_finish_lone_root_owned(self, PyModule_GetState(module), trace, metrics, service);
        Py_DECREF(module);
        if (lone != 0)
            return lone < 0 ? -1 : 0;
    }

    PyObject *finished = TRACE_GET(trace, finished);
    if (finished == NULL)
        return -1;
    if (!PyList_CheckExact(finished)) {
        Py_DECREF(finished);
        PyErr_SetString(PyExc_TypeError, "trace.finished is not a list");
        return -1;
    }
    PyObject *trace_id = TRACE_GET(trace, trace_id);
    if (trace_id == NULL) {
        Py_DECREF(finished);
        return -1;
    }
    PyObject *record[RECORD_LEN];
    span_record(self, trace_id, service, metrics, record);
    Py_ssize_t n = PyList_GET_SIZE(finished);
    int rc = list_append_all(finished, record, RECORD_LEN);
    Py_DECREF(trace_id);
    if (rc < 0) {
        /* Leave no half record behind. */
        PyList_SetSlice(finished, n, PyList_GET_SIZE(finished), NULL);
        Py_DECREF(finished);
        return -1;
    }
    Py_ssize_t length = PyList_GET_SIZE(finished);
    Py_DECREF(finished);

    /* The finish ordinal is taken now (after the append, as
     * _Trace.finish_span); its int is made only for a flush. */
    Py_ssize_t ordinal_n;
    PyObject *ordinal;
    if (take_count(trace, s_finishes, offsetof(TraceObject, finishes), &ordinal_n, &ordinal) < 0)
        return -1;
    int flush = flush_kind(self, trace, length);
    PyObject *result = NULL;
    if (flush == 2 && self->_cmodule != NULL) { /* a C-built root: hand over in C (_cspan_trace.c) */
        PyObject *module = Py_NewRef(self->_cmodule);
        int done = _cspan_flush_root_owned(self, PyModule_GetState(module), trace, ordinal_n);
        Py_DECREF(module);
        if (done != 0) {
            Py_XDECREF(ordinal);
            return done < 0 ? -1 : 0;
        }
    }
    if (flush > 0 && (ordinal != NULL || (ordinal = PyLong_FromSsize_t(ordinal_n)) != NULL))
        result = PyObject_CallMethodObjArgs(trace, s__flush, ordinal, flush == 2 ? Py_True : Py_False, NULL);
    Py_XDECREF(ordinal);
    if (flush <= 0)
        return flush;
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 0;
}

/* Owns what it uses across calls into Python (the service comparison, the
 * flush): a str subclass's __ne__ or a flush may replace the span's fields
 * and free the objects they held. */
static int
finish_record(SpanObject *self)
{
    PyObject *trace = self->_trace, *metrics = self->metrics, *service = self->service;
    PyObject *parent = self->_parent;
    if (trace == NULL || metrics == NULL || service == NULL || parent == NULL) {
        PyErr_SetString(PyExc_AttributeError, "span is missing a field");
        return -1;
    }
    Py_INCREF(trace);
    Py_INCREF(metrics);
    Py_INCREF(service);
    Py_INCREF(parent);
    int rc = finish_record_owned(self, trace, metrics, service, parent);
    Py_DECREF(trace);
    Py_DECREF(metrics);
    Py_DECREF(service);
    Py_DECREF(parent);
    return rc;
}

/* Make the span active before this one active again, if this one was
 * activated (with only_if_active, only where it is the active one). */
static int
restore_prev(SpanObject *self, int only_if_active)
{
    PyObject *prev = self->_prev;
    PyObject *token = self->_token; /* owned here: used once at most */
    self->_token = NULL;
    if (prev == NULL || prev == not_activated) {
        Py_XDECREF(token);
        return 0;
    }
    if (token != NULL && prev == self->_token_prev) {
        /* The reset restores prev as a set would, without a new token;
         * where it cannot (another context, or where this span is not the
         * active one for finish()), the general path below decides. */
        PyObject *current = NULL;
        if (!only_if_active || PyContextVar_Get(active_var, NULL, &current) < 0 || current == (PyObject *)self) {
            int rc = PyErr_Occurred() ? -1 : PyContextVar_Reset(active_var, token);
            Py_XDECREF(current);
            Py_DECREF(token);
            if (rc == 0)
                return 0;
            PyErr_Clear();
        }
        else {
            Py_XDECREF(current);
            Py_DECREF(token);
        }
    }
    else
        Py_XDECREF(token);
    if (only_if_active) {
        PyObject *current;
        if (PyContextVar_Get(active_var, NULL, &current) < 0)
            return -1;
        Py_XDECREF(current); /* only compared */
        if (current != (PyObject *)self)
            return 0;
    }
    return set_active(prev);
}

/* End the span unless it has ended: duration from the monotonic start, or
 * with an explicit end time (`end_ns`, epoch ns, not NULL) from the wall
 * start, never below 0 (as _SpanBase.__exit__); the previous span active
 * again (see restore_prev), the record to the trace. */
static int
end_span(SpanObject *self, int only_if_active, const long long *end_ns)
{
    if (self->duration_ns != NULL && self->duration_ns != Py_None)
        return 0;
    long long start;
    if (end_ns == NULL && self->_mono == NULL && self->has_mono_ns)
        start = self->mono_ns;
    else {
        PyObject *since = end_ns == NULL ? self->_mono : self->start_ns;
        if (since == NULL) {
            PyErr_SetString(PyExc_AttributeError, end_ns == NULL ? "_mono" : "start_ns");
            return -1;
        }
        start = as_long_long(since);
        if (start == -1 && PyErr_Occurred())
            return -1;
    }
    long long elapsed = end_ns != NULL ? *end_ns - start : (self->has_end_mono ? self->end_mono_ns : perf_counter_ns()) - start;
    PyObject *duration = PyLong_FromLongLong(end_ns != NULL && elapsed < 0 ? 0 : elapsed);
    if (duration == NULL)
        return -1;
    Py_XSETREF(self->duration_ns, duration);
    if (restore_prev(self, only_if_active) < 0)
        return -1;
    return finish_record(self);
}

/* __exit__(exc_type, exc_value, tb): SpanBase's through a SpanMethod
 * (_cspan_with.c). */
PyObject *
_cspan_span_exit(PyObject *span, PyObject *const *argv, size_t nargsf, PyObject *kwnames)
{
    SpanObject *self = (SpanObject *)span;
    PyObject *out[3];
    PyObject *const *args = bind_args("__exit__", exit_names, 3, 3, argv, nargsf, kwnames, out);
    if (args == NULL)
        return NULL;
    if (args[0] != Py_None) {
        PyObject *r = PyObject_CallMethodObjArgs((PyObject *)self, s_set_exc_info, args[0], args[1], args[2], NULL);
        if (r == NULL)
            PyErr_Clear(); /* never mask the user's exception */
        else
            Py_DECREF(r);
    }
    /* Finished before its block ended (finish(), or from another thread or
     * context, where this one stayed active): the block still ends with the
     * span active before it. */
    if (self->duration_ns != NULL && self->duration_ns != Py_None) {
        if (restore_prev(self, 1) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    /* The block ends in the context it began in, where this span is still
     * the active one: restore the previous one without reading the variable. */
    if (end_span(self, 0, NULL) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static const char *const finish_names[] = {"finish_time_ns"};

/* An exact int within ±2**62 (146 years of ns), so that end - start fits. */
static int
small_ns(PyObject *value, long long *out)
{
    int overflow = 1;
    if (value != NULL && PyLong_CheckExact(value))
        *out = PyLong_AsLongLongAndOverflow(value, &overflow);
    return !overflow && *out <= (1LL << 62) && *out >= -(1LL << 62);
}

/* finish() and finish(finish_time_ns): _SpanBase.finish. An end time or a
 * start that is not an exact int of that size goes to the Python method,
 * which states the rules. */
static PyObject *
Span_finish(SpanObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    PyObject *end = Py_None;
    long long end_ns = 0, start_ns = 0;
    if (PyVectorcall_NARGS(nargsf) != 0 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        if (_cspan_bind_args("finish", finish_names, 1, 1, args, nargsf, kwnames, &end) < 0)
            return NULL;
        if (end != Py_None && !(small_ns(end, &end_ns) && small_ns(self->start_ns, &start_ns))) {
            PyObject *slow = PyObject_GetAttr((PyObject *)self, s__finish_slow);
            if (slow == NULL)
                return NULL;
            PyObject *r = PyObject_Vectorcall(slow, args, nargsf, kwnames);
            Py_DECREF(slow);
            return r;
        }
    }
    /* Unlike a `with` block, finish() may run anywhere: restore the
     * previous span only where this one is the active one. */
    if (end_span(self, 1, end == Py_None ? NULL : &end_ns) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* finish() from C (a TracedCall's span): as Span_finish without arguments. */
int
_cspan_span_finish(SpanObject *self)
{
    return end_span(self, 1, NULL);
}

/* _mark_end(): _SpanBase._mark_end, the clock read now and kept in the
 * span (no int made): an end with no time given uses it. */
static PyObject *
Span_mark_end(SpanObject *self, PyObject *Py_UNUSED(ignored))
{
    self->end_mono_ns = perf_counter_ns();
    self->has_end_mono = 1;
    Py_RETURN_NONE;
}

/* -- starting a child span ------------------------------------------------ */

#define MEMBER(field) {#field, T_OBJECT_EX, offsetof(SpanObject, field), 0, NULL}

static PyMemberDef Span_members[] = {
    MEMBER(trace_id), MEMBER(span_id), MEMBER(parent_id), MEMBER(name),    MEMBER(service), MEMBER(resource),
    MEMBER(span_type), MEMBER(start_ns), MEMBER(duration_ns), MEMBER(error), MEMBER(meta),  MEMBER(metrics),
    MEMBER(_trace),   MEMBER(_parent),  MEMBER(_prev),       MEMBER(_request), {NULL},
};

/* _mono: the object set from Python, else the C value as an int (made at
 * each read: Python reads it only on rare paths). */
static PyObject *
Span_get_mono(SpanObject *self, void *Py_UNUSED(closure))
{
    if (self->_mono != NULL)
        return Py_NewRef(self->_mono);
    if (self->has_mono_ns)
        return PyLong_FromLongLong(self->mono_ns);
    PyErr_SetString(PyExc_AttributeError, "_mono");
    return NULL;
}

static int
Span_set_mono(SpanObject *self, PyObject *value, void *Py_UNUSED(closure))
{
    if (value == NULL && self->_mono == NULL && !self->has_mono_ns) {
        PyErr_SetString(PyExc_AttributeError, "_mono");
        return -1;
    }
    self->has_mono_ns = 0;
    Py_XSETREF(self->_mono, Py_XNewRef(value));
    return 0;
}

static PyGetSetDef Span_getset[] = {
    {"_mono", (getter)Span_get_mono, (setter)Span_set_mono, NULL, NULL},
    {NULL},
};

static PyMethodDef Span_methods[] = {
    {"set_tag", (PyCFunction)(void (*)(void))Span_set_tag, METH_FASTCALL | METH_KEYWORDS, "Set a tag (see Span.set_tag)."},
    {"set_metric", (PyCFunction)(void (*)(void))Span_set_metric, METH_FASTCALL | METH_KEYWORDS, "Set a numeric tag."},
    {"finish", (PyCFunction)(void (*)(void))Span_finish, METH_FASTCALL | METH_KEYWORDS,
     "End the span (see Span.finish)."},
    {"_mark_end", (PyCFunction)Span_mark_end, METH_NOARGS, "Record the end time now (see Span._mark_end)."},
    {NULL},
};

PyTypeObject _cspan_SpanBase_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tracer._cspan.SpanBase",
    .tp_basicsize = sizeof(SpanObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The fields and hot-path methods of tracer.span.Span.",
    .tp_traverse = (traverseproc)Span_traverse,
    .tp_clear = (inquiry)Span_clear,
    .tp_dealloc = (destructor)Span_dealloc,
    .tp_members = Span_members,
    .tp_getset = Span_getset,
    .tp_methods = Span_methods,
    .tp_new = PyType_GenericNew,
};
