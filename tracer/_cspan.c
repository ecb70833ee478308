/* tracer._cspan: the span hot path in C (optional; tracer/span.py has the
 * same behaviour in pure Python and is used when this does not build).
 *
 * What is here is what every `with tracer.trace(...) as span:` runs per
 * span: creating and activating a child span, set_tag / set_metric on
 * ordinary keys and values, __enter__, and __exit__ (finish, restore the
 * previous active span, append the span's record to its trace); and
 * finish() without an end time, which integrations call. Anything
 * unusual (a non-str key, an over-long value, an exception leaving the block,
 * a chunk leaving the buffer) calls back into the Python code, so the rules
 * live in one place: tracer/span.py and tracer/buffer.py. A change to the
 * Python fast paths must be made here too; tests/tracer run against both
 * (TRACER_PURE_PYTHON=1 selects the Python code).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "_cmodule.h"

#define MAX_KEY_LEN 200
#define MAX_VALUE_LEN 25000

typedef struct {
    PyObject_HEAD
    /* Field order: tracer.span.SPAN_FIELDS. */
    PyObject *trace_id;
    PyObject *span_id;
    PyObject *parent_id;
    PyObject *name;
    PyObject *service;
    PyObject *resource;
    PyObject *span_type;
    PyObject *start_ns;
    PyObject *duration_ns;
    PyObject *error;
    PyObject *meta;
    PyObject *metrics;
    PyObject *_trace;
    PyObject *_parent;
    PyObject *_prev;
    PyObject *_mono;
    /* C only: the tracer._cspan module, on a root span built by trace_root
     * (its state serves finish_lone_root); NULL elsewhere. */
    PyObject *_cmodule;
} SpanObject;

/* Per-module state, object references only (see module_traverse): what
 * finish_lone_root reads beyond the interned names below (tracer.buffer's
 * _Trace.peeks, TraceBuffer._live and .sink, the sink's write, and
 * itertools.count, the type of _Trace.starts). */
typedef struct {
    PyObject *s_peeks, *s_live, *s_sink, *s_write;
    PyObject *count_type, *count_args; /* itertools.count, (1,) */
    PyObject *trace_base;              /* TraceBase */
} ModuleState;

/* TraceBase: the fields of tracer.buffer._Trace (in its __slots__ order) in
 * C, so that trace_root builds a new trace without running _Trace.__init__.
 * tracer._tracer makes the class it uses from it and _Trace's methods (the
 * rules stay in tracer/buffer.py); test_lone_root.py checks that the fields
 * are _Trace's and that a trace built here equals one built there. */
typedef struct {
    PyObject_HEAD
    PyObject *trace_id, *buffer, *starts, *finishes, *finished, *root, *root_done, *priority, *mechanism, *origin,
        *dd_tags, *tracestate, *wall_base, *mono_base, *foreign, *remote_parent, *peeks;
} TraceObject;

#define TRACE_NFIELDS ((Py_ssize_t)((sizeof(TraceObject) - offsetof(TraceObject, trace_id)) / sizeof(PyObject *)))
#define TRACE_FIELDS(t) (&((TraceObject *)(t))->trace_id)

/* Set once by configure(): the Python Span class (a subclass of SpanBase),
 * the active-span ContextVar, the "not activated" sentinel and
 * random.getrandbits. */
static PyTypeObject *span_cls = NULL;
static PyObject *active_var = NULL;
static PyObject *not_activated = NULL;
static PyObject *getrandbits = NULL;

static PyObject *s_foreign, *s_root_done, *s_starts, *s_finishes, *s_finished, *s_root, *s_trace_id,
    *s_buffer, *s_partial_flush_len, *s__flush, *s_start_span_late, *s_wall_base, *s_mono_base,
    *s_set_exc_info, *s__set_tag_slow, *s__set_metric_slow, *s__finish_slow, *s_top_level, *s_status_code;
static PyObject *int_0, *int_1, *int_64;

static PyTypeObject SpanBase_Type;

static int
Trace_traverse(PyObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    for (Py_ssize_t i = 0; i < TRACE_NFIELDS; i++)
        Py_VISIT(TRACE_FIELDS(self)[i]);
    return 0;
}

static int
Trace_clear(PyObject *self)
{
    for (Py_ssize_t i = 0; i < TRACE_NFIELDS; i++)
        Py_CLEAR(TRACE_FIELDS(self)[i]);
    return 0;
}

static void
Trace_dealloc(PyObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Trace_clear(self);
    type->tp_free(self);
    Py_DECREF(type);
}

#define TRACE_MEMBER(field) {#field, T_OBJECT_EX, offsetof(TraceObject, field), 0, NULL}

static PyMemberDef Trace_members[] = {
    TRACE_MEMBER(trace_id),   TRACE_MEMBER(buffer),   TRACE_MEMBER(starts),        TRACE_MEMBER(finishes),
    TRACE_MEMBER(finished),   TRACE_MEMBER(root),     TRACE_MEMBER(root_done),     TRACE_MEMBER(priority),
    TRACE_MEMBER(mechanism),  TRACE_MEMBER(origin),   TRACE_MEMBER(dd_tags),       TRACE_MEMBER(tracestate),
    TRACE_MEMBER(wall_base),  TRACE_MEMBER(mono_base), TRACE_MEMBER(foreign),      TRACE_MEMBER(remote_parent),
    TRACE_MEMBER(peeks),      {NULL},
};

static PyType_Slot Trace_slots[] = {
    {Py_tp_doc, "The fields of tracer.buffer._Trace (see tracer._tracer)."},
    {Py_tp_traverse, Trace_traverse},
    {Py_tp_clear, Trace_clear},
    {Py_tp_dealloc, Trace_dealloc},
    {Py_tp_members, Trace_members},
    {Py_tp_new, PyType_GenericNew},
    {0, NULL},
};

/* Built on TraceBase: tracer._tracer's _RootTrace (a subclass adding no field). */
static int
is_c_trace(PyObject *trace)
{
    for (PyTypeObject *type = Py_TYPE(trace); type != NULL; type = type->tp_base)
        if (type->tp_dealloc == Trace_dealloc)
            return 1;
    return 0;
}

/* A field of a trace, as a new reference: from the struct where the trace is
 * built on TraceBase and the field is set, else by attribute (a _Trace built
 * in Python; the attribute's error for a deleted field). */
static PyObject *
trace_get(PyObject *trace, PyObject *name, size_t offset)
{
    if (is_c_trace(trace)) {
        PyObject *value = *(PyObject **)((char *)trace + offset);
        if (value != NULL)
            return Py_NewRef(value);
    }
    return PyObject_GetAttr(trace, name);
}

static int
trace_set(PyObject *trace, PyObject *name, size_t offset, PyObject *value)
{
    if (!is_c_trace(trace))
        return PyObject_SetAttr(trace, name, value);
    Py_XSETREF(*(PyObject **)((char *)trace + offset), Py_NewRef(value));
    return 0;
}

#define TRACE_GET(trace, field) trace_get((trace), s_##field, offsetof(TraceObject, field))
#define TRACE_SET(trace, field, value) trace_set((trace), s_##field, offsetof(TraceObject, field), (value))

static PyType_Spec Trace_spec = {
    .name = "tracer._cspan.TraceBase",
    .basicsize = sizeof(TraceObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = Trace_slots,
};

static inline long long
clock_ns(int wall)
{
    /* The clocks of time.perf_counter_ns() and (wall) time.time_ns(): Python
     * code reads them too (start_span, the Python root path), and durations
     * mix the two. */
#if PY_VERSION_HEX >= 0x030D0000
    PyTime_t t;
    (void)(wall ? PyTime_TimeRaw(&t) : PyTime_PerfCounterRaw(&t));
    return (long long)t;
#else
    return (long long)(wall ? _PyTime_GetSystemClock() : _PyTime_GetPerfCounter());
#endif
}

#define perf_counter_ns() clock_ns(0)

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
    Py_VISIT(self->_cmodule);
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
    Py_CLEAR(self->_cmodule);
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
 * `names` of method `fn` (all required), as Python does: out[i] is borrowed.
 * The hot path (positional only) costs one test. */
static int
bind_args(const char *fn, const char *const *names, Py_ssize_t n, PyObject *const *args, size_t nargsf,
          PyObject *kwnames, PyObject **out)
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
    for (Py_ssize_t i = 0; i < n; i++) {
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
    PyObject *args[2];
    if (bind_args("set_tag", key_value_names, 2, argv, nargsf, kwnames, args) < 0)
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
    PyObject *args[2];
    if (bind_args("set_metric", key_value_names, 2, argv, nargsf, kwnames, args) < 0)
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

static PyObject *
Span_enter(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(self);
}

/* The active span becomes `span`. */
static int
set_active(PyObject *span)
{
    PyObject *token = PyContextVar_Set(active_var, span);
    if (token == NULL)
        return -1;
    Py_DECREF(token);
    return 0;
}

/* next(getattr(trace, name)): trace.starts or trace.finishes (itertools.count). */
static PyObject *
next_count(PyObject *trace, PyObject *name, size_t offset)
{
    PyObject *counter = trace_get(trace, name, offset);
    if (counter == NULL)
        return NULL;
    PyObject *value = PyIter_Next(counter);
    Py_DECREF(counter);
    if (value == NULL && !PyErr_Occurred())
        PyErr_Format(PyExc_RuntimeError, "trace.%U ended", name);
    return value;
}

#define RECORD_LEN 12

/* The span's record, borrowed: tracer.span.RECORD_FIELDS, in wire order
 * (fields the caller checked; `service` and `metrics` are the ones it owns). */
static void
span_record(SpanObject *self, PyObject *trace_id, PyObject *service, PyObject *metrics, PyObject **out)
{
    PyObject *record[RECORD_LEN] = {trace_id,          self->span_id, self->parent_id, service,
                                    self->name,        self->resource, self->span_type, self->start_ns,
                                    self->duration_ns, self->error,    self->meta,      metrics};
    memcpy(out, record, sizeof(record));
}

/* A local root finishing with nothing else of its trace ever started here
 * (every query outside a request, every request without children): its
 * record is the whole trace. It goes to the sink as a chunk of its own,
 * without _Trace._flush (a Python call, the flush lock, started_count(), the
 * chunk swap) and without passing through trace.finished. The state it
 * leaves is the one _Trace.finish_span and _flush leave: the record counted
 * in `finishes`, the read of `starts` in `peeks`, root_done set, the trace
 * out of the buffer's live set, then buffer.sink.write(trace, chunk).
 * 1 when done; 0 when it does not apply (the caller's general path runs);
 * -1 on error.
 *
 * Without tracer.buffer's _flush_lock, and safe so: from the first read to
 * the hand-over nothing here runs Python code nor releases the GIL (slot and
 * attribute reads, exact-type checks, itertools.count's next, a set discard
 * by identity hash), so no other thread sees the trace half-done. A span
 * started on the trace before (`starts` > 1) sends this one the general way;
 * one started after sees root_done and leaves as a late chunk. count_lost()
 * (shutdown) marks the trace foreign under the lock before it counts, and a
 * foreign trace takes the general path, which waits for the lock. */
static int
finish_lone_root_owned(SpanObject *self, ModuleState *st, PyObject *trace, PyObject *metrics,
                       PyObject *service)
{
    PyObject *root = NULL, *foreign = NULL, *finished = NULL, *starts = NULL, *finishes = NULL,
             *peeks = NULL, *trace_id = NULL, *buffer = NULL, *live = NULL, *sink = NULL, *chunk = NULL;
    int rc = -1;
    if (st == NULL || st->count_type == NULL) /* the module's state cleared (interpreter shutdown) */
        return 0;
    /* Reads and checks first: nothing changes until every one passed. The
     * first two turn away a root with finished children (the usual trace). */
    if ((root = TRACE_GET(trace, root)) == NULL || (finished = TRACE_GET(trace, finished)) == NULL)
        goto done;
    rc = 0;
    if (root != (PyObject *)self || !PyList_CheckExact(finished) || PyList_GET_SIZE(finished) != 0)
        goto done;
    rc = -1;
    if ((foreign = TRACE_GET(trace, foreign)) == NULL || (starts = TRACE_GET(trace, starts)) == NULL ||
        (finishes = TRACE_GET(trace, finishes)) == NULL ||
        (peeks = trace_get(trace, st->s_peeks, offsetof(TraceObject, peeks))) == NULL ||
        (trace_id = TRACE_GET(trace, trace_id)) == NULL || (buffer = TRACE_GET(trace, buffer)) == NULL ||
        (live = PyObject_GetAttr(buffer, st->s_live)) == NULL || (sink = PyObject_GetAttr(buffer, st->s_sink)) == NULL)
        goto done;
    rc = 0;
    if (foreign != Py_False || Py_TYPE(starts) != (PyTypeObject *)st->count_type ||
        Py_TYPE(finishes) != (PyTypeObject *)st->count_type || !PyLong_CheckExact(peeks) || !PySet_CheckExact(live))
        goto done;
    Py_ssize_t npeeks = PyLong_AsSsize_t(peeks);
    if (npeeks == -1 && PyErr_Occurred()) {
        rc = -1;
        goto done;
    }
    PyObject *record[RECORD_LEN];
    span_record(self, trace_id, service, metrics, record);
    if ((chunk = PyList_New(RECORD_LEN)) == NULL) {
        rc = -1;
        goto done;
    }
    for (Py_ssize_t i = 0; i < RECORD_LEN; i++)
        PyList_SET_ITEM(chunk, i, Py_NewRef(record[i]));
    /* _Trace.started_count(): one next() on `starts`, counted in `peeks`. */
    PyObject *next = PyIter_Next(starts);
    Py_ssize_t taken = next == NULL ? -1 : PyLong_AsSsize_t(next);
    Py_XDECREF(next);
    PyObject *new_peeks = taken == -1 ? NULL : PyLong_FromSsize_t(npeeks + 1);
    if (new_peeks == NULL || trace_set(trace, st->s_peeks, offsetof(TraceObject, peeks), new_peeks) < 0) {
        Py_XDECREF(new_peeks);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "trace.starts is not a count");
        rc = -1;
        goto done;
    }
    Py_DECREF(new_peeks);
    if (taken - (npeeks + 1) != 1) /* other spans of the trace started here: the general path */
        goto done;
    PyObject *ordinal = PyIter_Next(finishes);
    if (ordinal == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "trace.finishes ended");
        rc = -1;
        goto done;
    }
    Py_DECREF(ordinal); /* only counted: the trace is complete */
    if (TRACE_SET(trace, root_done, Py_True) < 0 || PySet_Discard(live, trace) < 0) {
        rc = -1;
        goto done;
    }
    PyObject *r = PyObject_CallMethodObjArgs(sink, st->s_write, trace, chunk, NULL);
    Py_XDECREF(r);
    rc = r == NULL ? -1 : 1;

done:
    Py_XDECREF(root);
    Py_XDECREF(foreign);
    Py_XDECREF(finished);
    Py_XDECREF(starts);
    Py_XDECREF(finishes);
    Py_XDECREF(peeks);
    Py_XDECREF(trace_id);
    Py_XDECREF(buffer);
    Py_XDECREF(live);
    Py_XDECREF(sink);
    Py_XDECREF(chunk);
    return rc;
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
        int lone = finish_lone_root_owned(self, PyModule_GetState(module), trace, metrics, service);
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
    int rc = 0;
    for (int i = 0; i < RECORD_LEN && rc == 0; i++)
        rc = PyList_Append(finished, record[i]);
    Py_DECREF(trace_id);
    if (rc < 0) {
        /* Leave no half record behind. */
        PyList_SetSlice(finished, n, PyList_GET_SIZE(finished), NULL);
        Py_DECREF(finished);
        return -1;
    }
    Py_ssize_t length = PyList_GET_SIZE(finished);
    Py_DECREF(finished);

    PyObject *ordinal = next_count(trace, s_finishes, offsetof(TraceObject, finishes));
    if (ordinal == NULL)
        return -1;

    PyObject *root = TRACE_GET(trace, root);
    if (root == NULL) {
        Py_DECREF(ordinal);
        return -1;
    }
    int is_root = root == (PyObject *)self;
    Py_DECREF(root);
    PyObject *result = NULL;
    if (is_root) {
        if (TRACE_SET(trace, root_done, Py_True) < 0) {
            Py_DECREF(ordinal);
            return -1;
        }
        result = PyObject_CallMethodObjArgs(trace, s__flush, ordinal, Py_True, NULL);
    }
    else {
        PyObject *root_done = TRACE_GET(trace, root_done);
        if (root_done == NULL) {
            Py_DECREF(ordinal);
            return -1;
        }
        int flush = PyObject_IsTrue(root_done);
        Py_DECREF(root_done);
        if (flush == 0) {
            PyObject *buffer = TRACE_GET(trace, buffer);
            PyObject *limit = buffer ? PyObject_GetAttr(buffer, s_partial_flush_len) : NULL;
            Py_XDECREF(buffer);
            if (limit == NULL) {
                Py_DECREF(ordinal);
                return -1;
            }
            Py_ssize_t max_len = PyLong_AsSsize_t(limit);
            Py_DECREF(limit);
            if (max_len == -1 && PyErr_Occurred()) {
                Py_DECREF(ordinal);
                return -1;
            }
            flush = length >= max_len;
        }
        if (flush < 0) {
            Py_DECREF(ordinal);
            return -1;
        }
        if (!flush) {
            Py_DECREF(ordinal);
            return 0;
        }
        result = PyObject_CallMethodObjArgs(trace, s__flush, ordinal, Py_False, NULL);
    }
    Py_DECREF(ordinal);
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
    if (prev == NULL || prev == not_activated)
        return 0;
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

/* End the span unless it has ended: duration from the monotonic start, the
 * previous span active again (see restore_prev), the record to the trace. */
static int
end_span(SpanObject *self, int only_if_active)
{
    if (self->duration_ns != NULL && self->duration_ns != Py_None)
        return 0;
    if (self->_mono == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_mono");
        return -1;
    }
    long long mono = PyLong_AsLongLong(self->_mono);
    if (mono == -1 && PyErr_Occurred())
        return -1;
    PyObject *duration = PyLong_FromLongLong(perf_counter_ns() - mono);
    if (duration == NULL)
        return -1;
    Py_XSETREF(self->duration_ns, duration);
    if (restore_prev(self, only_if_active) < 0)
        return -1;
    return finish_record(self);
}

static PyObject *
Span_exit(SpanObject *self, PyObject *const *argv, size_t nargsf, PyObject *kwnames)
{
    PyObject *args[3];
    if (bind_args("__exit__", exit_names, 3, argv, nargsf, kwnames, args) < 0)
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
    if (end_span(self, 0) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* finish(): _SpanBase.finish without an explicit end time (which goes to
 * the Python method). */
static PyObject *
Span_finish(SpanObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 0 || kwnames != NULL) {
        PyObject *slow = PyObject_GetAttr((PyObject *)self, s__finish_slow);
        if (slow == NULL)
            return NULL;
        PyObject *r = PyObject_Vectorcall(slow, args, nargsf, kwnames);
        Py_DECREF(slow);
        return r;
    }
    /* Unlike a `with` block, finish() may run anywhere: restore the
     * previous span only where this one is the active one. */
    if (end_span(self, 1) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* -- starting a child span ------------------------------------------------ */

static int
get_ll(PyObject *trace, PyObject *name, size_t offset, long long *out)
{
    PyObject *v = trace_get(trace, name, offset);
    if (v == NULL)
        return -1;
    *out = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* random.getrandbits(64) or 1: a span id, or a trace id's low half. */
static PyObject *
random_id(void)
{
    PyObject *id = PyObject_CallOneArg(getrandbits, int_64);
    if (id == NULL)
        return NULL;
    int zero = PyObject_Not(id);
    if (zero < 0) {
        Py_DECREF(id);
        return NULL;
    }
    if (zero)
        Py_SETREF(id, Py_NewRef(int_1));
    return id;
}

/* A new span of `trace` with every field set, not yet counted nor active
 * (references are new; `resource` falls back to `name`). trace_child and
 * trace_root share it: the fields Python's Span.__init__ sets. Every
 * borrowed argument is owned before the first call that may run Python
 * code (getrandbits, a str subclass's __bool__). */
static SpanObject *
new_span(PyObject *trace, PyObject *trace_id, PyObject *parent_id, PyObject *parent, PyObject *name,
         PyObject *service, PyObject *resource, PyObject *span_type, long long mono, long long start_ns,
         PyObject *prev)
{
    SpanObject *span = (SpanObject *)span_cls->tp_alloc(span_cls, 0);
    if (span == NULL)
        return NULL;
    span->_trace = Py_NewRef(trace);
    span->trace_id = Py_NewRef(trace_id);
    span->parent_id = Py_NewRef(parent_id);
    span->_parent = Py_NewRef(parent);
    span->name = Py_NewRef(name);
    span->service = Py_NewRef(service);
    span->resource = Py_NewRef(resource);
    span->span_type = Py_NewRef(span_type);
    span->_prev = Py_NewRef(prev);
    int has_resource = PyObject_IsTrue(resource);
    if (has_resource < 0)
        goto error;
    if (!has_resource)
        Py_SETREF(span->resource, Py_NewRef(name));
    if ((span->span_id = random_id()) == NULL)
        goto error;
    if ((span->_mono = PyLong_FromLongLong(mono)) == NULL || (span->start_ns = PyLong_FromLongLong(start_ns)) == NULL)
        goto error;
    span->duration_ns = Py_NewRef(Py_None);
    span->error = Py_NewRef(int_0);
    if ((span->meta = PyDict_New()) == NULL || (span->metrics = PyDict_New()) == NULL)
        goto error;
    return span;

error:
    Py_DECREF(span);
    return NULL;
}

/* The checks trace_child and trace_root start with. */
static int
callable_now(const char *fn, Py_ssize_t nargs, Py_ssize_t expected)
{
    if (nargs != expected) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", fn, expected, nargs);
        return -1;
    }
    if (span_cls == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "tracer._cspan is not configured");
        return -1;
    }
    return 0;
}

/* next(trace.starts) */
static int
count_start(PyObject *trace)
{
    PyObject *started = next_count(trace, s_starts, offsetof(TraceObject, starts));
    Py_XDECREF(started); /* only counted */
    return started == NULL ? -1 : 0;
}

/* trace_child(name, service, resource, span_type) -> Span | None
 *
 * Tracer.trace() for the common case: start a child of the active span and
 * activate it. None when there is no active span or its trace is foreign
 * (inherited across fork): the caller starts a new trace then. */
static PyObject *
trace_child(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (callable_now("trace_child", nargs, 4) < 0)
        return NULL;
    PyObject *name = args[0], *service = args[1], *resource = args[2], *span_type = args[3];
    long long mono = perf_counter_ns();
    PyObject *parent_obj;
    if (PyContextVar_Get(active_var, Py_None, &parent_obj) < 0)
        return NULL;
    if (parent_obj == NULL || Py_TYPE(parent_obj) != span_cls) {
        Py_XDECREF(parent_obj);
        Py_RETURN_NONE;
    }
    /* A span finished from another thread or context stays active until its
     * block ends: the parent is its nearest unfinished ancestor (ddtrace's
     * rule, tracer.context.unfinished). parent_obj stays the span to restore. */
    SpanObject *parent = (SpanObject *)parent_obj;
    while (parent->duration_ns != NULL && parent->duration_ns != Py_None) {
        PyObject *up = parent->_parent;
        if (up == NULL || Py_TYPE(up) != span_cls) { /* none unfinished: the Python code starts a trace */
            Py_DECREF(parent_obj);
            Py_RETURN_NONE;
        }
        parent = (SpanObject *)up;
    }
    PyObject *trace = parent->_trace;
    if (trace == NULL || parent->trace_id == NULL || parent->span_id == NULL || parent->service == NULL) {
        Py_DECREF(parent_obj);
        Py_RETURN_NONE;
    }
    PyObject *parent_ref = Py_NewRef((PyObject *)parent); /* span->_parent takes it */
    Py_INCREF(trace);
    SpanObject *span = NULL;
    PyObject *foreign = TRACE_GET(trace, foreign);
    if (foreign == NULL)
        goto error;
    int is_foreign = PyObject_IsTrue(foreign);
    Py_DECREF(foreign);
    if (is_foreign < 0)
        goto error;
    if (is_foreign) {
        Py_DECREF(trace);
        Py_DECREF(parent_ref);
        Py_DECREF(parent_obj);
        Py_RETURN_NONE;
    }
    long long wall_base, mono_base;
    if (get_ll(trace, s_wall_base, offsetof(TraceObject, wall_base), &wall_base) < 0 ||
        get_ll(trace, s_mono_base, offsetof(TraceObject, mono_base), &mono_base) < 0)
        goto error;

    int has_service = PyObject_IsTrue(service);
    if (has_service < 0)
        goto error;
    span = new_span(trace, parent->trace_id, parent->span_id, (PyObject *)parent, name,
                    has_service ? service : parent->service, resource, span_type, mono,
                    wall_base + (mono - mono_base), parent_obj);
    if (span == NULL)
        goto error;
    Py_CLEAR(trace);
    Py_CLEAR(parent_ref);
    Py_CLEAR(parent_obj);
    /* As Tracer._trace_py: counted, a late start noted, then activated. */
    if (count_start(span->_trace) < 0)
        goto error;
    PyObject *root_done = TRACE_GET(span->_trace, root_done);
    if (root_done == NULL)
        goto error;
    int late = PyObject_IsTrue(root_done);
    Py_DECREF(root_done);
    if (late < 0)
        goto error;
    if (late) {
        PyObject *r = PyObject_CallMethodNoArgs(span->_trace, s_start_span_late);
        if (r == NULL)
            goto error;
        Py_DECREF(r);
    }
    if (set_active((PyObject *)span) < 0)
        goto error;
    return (PyObject *)span;

error:
    Py_XDECREF(trace);
    Py_XDECREF(parent_ref);
    Py_XDECREF(parent_obj);
    Py_XDECREF(span);
    return NULL;
}

/* What _Trace.__init__(buffer, trace_id, wall_base, mono_base) makes, for
 * a class built on TraceBase: every field set, the trace in buffer._live. */
static PyObject *
new_trace(ModuleState *st, PyTypeObject *cls, PyObject *buffer, PyObject *trace_id, PyObject *wall_base,
          PyObject *mono_base)
{
    PyObject *trace = cls->tp_alloc(cls, 0);
    if (trace == NULL)
        return NULL;
    TraceObject *t = (TraceObject *)trace;
    t->trace_id = Py_NewRef(trace_id);
    t->buffer = Py_NewRef(buffer);
    t->root = Py_NewRef(Py_None);
    t->root_done = Py_NewRef(Py_False);
    t->priority = Py_NewRef(Py_None);
    t->mechanism = Py_NewRef(Py_None);
    t->origin = Py_NewRef(Py_None);
    t->tracestate = Py_NewRef(Py_None);
    t->wall_base = Py_NewRef(wall_base);
    t->mono_base = Py_NewRef(mono_base);
    t->foreign = Py_NewRef(Py_False);
    t->remote_parent = Py_NewRef(Py_False);
    t->peeks = Py_NewRef(int_0);
    if ((t->starts = PyObject_Call(st->count_type, st->count_args, NULL)) == NULL ||
        (t->finishes = PyObject_Call(st->count_type, st->count_args, NULL)) == NULL ||
        (t->finished = PyList_New(0)) == NULL || (t->dd_tags = PyDict_New()) == NULL)
        goto error;
    PyObject *live = PyObject_GetAttr(buffer, st->s_live);
    if (live == NULL)
        goto error;
    int rc = -1;
    if (PySet_Check(live))
        rc = PySet_Add(live, trace);
    else
        PyErr_SetString(PyExc_TypeError, "buffer._live is not a set");
    Py_DECREF(live);
    if (rc == 0)
        return trace;

error:
    Py_DECREF(trace);
    return NULL;
}

/* trace_root(trace_cls, buffer, name, service, resource, span_type, activate) -> Span | None
 *
 * A new trace and its root span: Tracer.trace() without an active span, and
 * Tracer.start_span() without a parent (a query outside any request). With
 * `activate` the span becomes the active one, and None is returned when a
 * span is active already (the caller's Python code decides then). As
 * Tracer._start_trace for no parent, which stays the statement of the rules:
 * a change there goes here too. `trace_cls(buffer, trace_id, wall, mono)` is
 * tracer.buffer._Trace; `service` is already the default if empty. */
static PyObject *
trace_root(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    static PyObject *int_96 = NULL;
    if (callable_now("trace_root", nargs, 7) < 0)
        return NULL;
    if (int_96 == NULL && (int_96 = PyLong_FromLong(96)) == NULL)
        return NULL;
    long long mono = perf_counter_ns();
    int activating = PyObject_IsTrue(args[6]);
    if (activating < 0)
        return NULL;
    if (activating) {
        PyObject *active;
        if (PyContextVar_Get(active_var, Py_None, &active) < 0)
            return NULL;
        if (active != Py_None) {
            Py_XDECREF(active);
            Py_RETURN_NONE;
        }
        Py_DECREF(active);
    }
    long long wall = clock_ns(1);
    PyObject *trace = NULL, *trace_id = NULL, *wall_obj = NULL, *mono_obj = NULL;
    SpanObject *span = NULL;
    /* As ddtrace: upper 32 bits unix seconds, 32 zero bits, 64 random bits. */
    PyObject *seconds = PyLong_FromLongLong(wall / 1000000000);
    if (seconds == NULL)
        return NULL;
    PyObject *high = PyNumber_Lshift(seconds, int_96);
    Py_DECREF(seconds);
    if (high == NULL)
        return NULL;
    PyObject *low = random_id();
    if (low == NULL) {
        Py_DECREF(high);
        return NULL;
    }
    trace_id = PyNumber_Or(high, low);
    Py_DECREF(high);
    Py_DECREF(low);
    if (trace_id == NULL || (wall_obj = PyLong_FromLongLong(wall)) == NULL ||
        (mono_obj = PyLong_FromLongLong(mono)) == NULL)
        goto done;
    ModuleState *st = PyModule_GetState(module);
    if (st->trace_base != NULL && PyType_Check(args[0]) &&
        PyType_IsSubtype((PyTypeObject *)args[0], (PyTypeObject *)st->trace_base))
        trace = new_trace(st, (PyTypeObject *)args[0], args[1], trace_id, wall_obj, mono_obj);
    else {
        PyObject *trace_args[4] = {args[1], trace_id, wall_obj, mono_obj};
        trace = PyObject_Vectorcall(args[0], trace_args, 4, NULL);
    }
    if (trace == NULL)
        goto done;
    span = new_span(trace, trace_id, int_0, Py_None, args[2], args[3], args[4], args[5], mono, wall,
                    activating ? Py_None : not_activated);
    if (span == NULL)
        goto done;
    span->_cmodule = Py_NewRef(module);
    if (TRACE_SET(trace, root, (PyObject *)span) < 0 || count_start(trace) < 0 ||
        (activating && set_active((PyObject *)span) < 0))
        Py_CLEAR(span);

done:
    Py_XDECREF(trace);
    Py_XDECREF(trace_id);
    Py_XDECREF(wall_obj);
    Py_XDECREF(mono_obj);
    return (PyObject *)span;
}

static PyObject *
configure(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "configure(span_cls, active_var, not_activated, getrandbits)");
        return NULL;
    }
    if (!PyType_Check(args[0]) || !PyType_IsSubtype((PyTypeObject *)args[0], &SpanBase_Type)) {
        PyErr_SetString(PyExc_TypeError, "span_cls must be a subclass of SpanBase");
        return NULL;
    }
    if (!PyContextVar_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "active_var must be a ContextVar");
        return NULL;
    }
    Py_XSETREF(span_cls, (PyTypeObject *)Py_NewRef(args[0]));
    Py_XSETREF(active_var, Py_NewRef(args[1]));
    Py_XSETREF(not_activated, Py_NewRef(args[2]));
    Py_XSETREF(getrandbits, Py_NewRef(args[3]));
    Py_RETURN_NONE;
}

#define MEMBER(field) {#field, T_OBJECT_EX, offsetof(SpanObject, field), 0, NULL}

static PyMemberDef Span_members[] = {
    MEMBER(trace_id), MEMBER(span_id), MEMBER(parent_id), MEMBER(name),    MEMBER(service), MEMBER(resource),
    MEMBER(span_type), MEMBER(start_ns), MEMBER(duration_ns), MEMBER(error), MEMBER(meta),  MEMBER(metrics),
    MEMBER(_trace),   MEMBER(_parent),  MEMBER(_prev),       MEMBER(_mono), {NULL},
};

static PyMethodDef Span_methods[] = {
    {"set_tag", (PyCFunction)(void (*)(void))Span_set_tag, METH_FASTCALL | METH_KEYWORDS, "Set a tag (see Span.set_tag)."},
    {"set_metric", (PyCFunction)(void (*)(void))Span_set_metric, METH_FASTCALL | METH_KEYWORDS, "Set a numeric tag."},
    {"__enter__", Span_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))Span_exit, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"finish", (PyCFunction)(void (*)(void))Span_finish, METH_FASTCALL | METH_KEYWORDS,
     "End the span (see Span.finish)."},
    {NULL},
};

static PyTypeObject SpanBase_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tracer._cspan.SpanBase",
    .tp_basicsize = sizeof(SpanObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The fields and hot-path methods of tracer.span.Span.",
    .tp_traverse = (traverseproc)Span_traverse,
    .tp_clear = (inquiry)Span_clear,
    .tp_dealloc = (destructor)Span_dealloc,
    .tp_members = Span_members,
    .tp_methods = Span_methods,
    .tp_new = PyType_GenericNew,
};

static PyMethodDef module_methods[] = {
    {"trace_child", (PyCFunction)(void (*)(void))trace_child, METH_FASTCALL,
     "trace_child(name, service, resource, span_type): a new active child of the active span, or None."},
    {"trace_root", (PyCFunction)(void (*)(void))trace_root, METH_FASTCALL,
     "trace_root(trace_cls, buffer, name, service, resource, span_type, activate): a new root span, or None."},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL, NULL},
    {NULL},
};

#define INTERN(var, text)                                    \
    if ((var = PyUnicode_InternFromString(text)) == NULL)    \
        return -1;

/* Runs at each import (see _cmodule.h: the main interpreter only). */
static int
exec_module(PyObject *m)
{
    if (main_interpreter_only("tracer._cspan", "the pure-Python span code") < 0)
        return -1;
    INTERN(s_foreign, "foreign");
    INTERN(s_root_done, "root_done");
    INTERN(s_starts, "starts");
    INTERN(s_finishes, "finishes");
    INTERN(s_finished, "finished");
    INTERN(s_root, "root");
    INTERN(s_trace_id, "trace_id");
    INTERN(s_buffer, "buffer");
    INTERN(s_partial_flush_len, "partial_flush_len");
    INTERN(s__flush, "_flush");
    INTERN(s_start_span_late, "start_span_late");
    INTERN(s_wall_base, "wall_base");
    INTERN(s_mono_base, "mono_base");
    INTERN(s_set_exc_info, "set_exc_info");
    INTERN(s__finish_slow, "_finish_slow");
    INTERN(s__set_tag_slow, "_set_tag_slow");
    INTERN(s__set_metric_slow, "_set_metric_slow");
    INTERN(s_top_level, "_dd.top_level");
    INTERN(s_status_code, "http.status_code");
    if ((int_0 = PyLong_FromLong(0)) == NULL || (int_1 = PyLong_FromLong(1)) == NULL ||
        (int_64 = PyLong_FromLong(64)) == NULL)
        return -1;
    ModuleState *st = PyModule_GetState(m);
    INTERN(st->s_peeks, "peeks");
    INTERN(st->s_live, "_live");
    INTERN(st->s_sink, "sink");
    INTERN(st->s_write, "write");
    PyObject *itertools = PyImport_ImportModule("itertools");
    if (itertools == NULL)
        return -1;
    st->count_type = PyObject_GetAttrString(itertools, "count");
    Py_DECREF(itertools);
    if (st->count_type == NULL || (st->count_args = PyTuple_Pack(1, int_1)) == NULL)
        return -1;
    if ((st->trace_base = PyType_FromModuleAndSpec(m, &Trace_spec, NULL)) == NULL ||
        PyModule_AddObjectRef(m, "TraceBase", st->trace_base) < 0)
        return -1;
    if (PyType_Ready(&SpanBase_Type) < 0)
        return -1;
    Py_INCREF(&SpanBase_Type);
    if (PyModule_AddObject(m, "SpanBase", (PyObject *)&SpanBase_Type) < 0) {
        Py_DECREF(&SpanBase_Type);
        return -1;
    }
    return 0;
}

/* ModuleState holds object references only: walked as an array. */
#define STATE_NFIELDS ((Py_ssize_t)(sizeof(ModuleState) / sizeof(PyObject *)))

static int
module_traverse(PyObject *m, visitproc visit, void *arg)
{
    PyObject **fields = (PyObject **)PyModule_GetState(m);
    for (Py_ssize_t i = 0; fields != NULL && i < STATE_NFIELDS; i++)
        Py_VISIT(fields[i]);
    return 0;
}

static int
module_clear(PyObject *m)
{
    PyObject **fields = (PyObject **)PyModule_GetState(m);
    for (Py_ssize_t i = 0; fields != NULL && i < STATE_NFIELDS; i++)
        Py_CLEAR(fields[i]);
    return 0;
}

static void
module_free(void *m)
{
    module_clear((PyObject *)m);
}

static PyModuleDef_Slot module_slots[] = MAIN_INTERPRETER_SLOTS(exec_module);

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tracer._cspan",
    .m_doc = "The span hot path in C (see tracer/span.py).",
    .m_size = sizeof(ModuleState),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC
PyInit__cspan(void)
{
    return PyModuleDef_Init(&module_def);
}
