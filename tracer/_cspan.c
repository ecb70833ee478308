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
 *
 * This unit: module state and init, configure(), starting spans (a child's
 * start is in _cspan_method.c); the others are listed in _cspan.h.
 */
#include "_cspan.h"
#include "_cmodule.h"

/* Set once by configure(): the Python Span class (a subclass of SpanBase),
 * the active-span ContextVar, the "not activated" sentinel and
 * random.getrandbits. */
PyTypeObject *span_cls = NULL;
PyObject *active_var = NULL;
PyObject *not_activated = NULL;
PyObject *getrandbits = NULL;

PyObject *s_foreign, *s_root_done, *s_starts, *s_finishes, *s_finished, *s_root, *s_trace_id,
    *s_buffer, *s_partial_flush_len, *s__flush, *s_start_span_late, *s_wall_base, *s_mono_base,
    *s_set_exc_info, *s__set_tag_slow, *s__set_metric_slow, *s__finish_slow, *s_top_level, *s_status_code;
PyObject *int_0, *int_1, *int_64;

/* A new span of `trace` with every field set, not yet counted nor active
 * (references are new; `resource` falls back to `name`). trace_child and
 * trace_root share it: the fields Python's Span.__init__ sets. Every
 * borrowed argument is owned before the first call that may run Python
 * code (getrandbits, a str subclass's __bool__). */
SpanObject *
_cspan_new_span(PyObject *trace, PyObject *trace_id, PyObject *parent_id, PyObject *parent, PyObject *name,
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
    span->_request = Py_NewRef(Py_None);
    int has_resource = PyObject_IsTrue(resource);
    if (has_resource < 0)
        goto error;
    if (!has_resource)
        Py_SETREF(span->resource, Py_NewRef(name));
    if ((span->span_id = _cspan_random_id()) == NULL)
        goto error;
    span->mono_ns = mono;
    span->has_mono_ns = 1;
    if ((span->start_ns = PyLong_FromLongLong(start_ns)) == NULL)
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
int
_cspan_count_start(PyObject *trace)
{
    Py_ssize_t n;
    PyObject *started;
    int rc = take_count(trace, s_starts, offsetof(TraceObject, starts), &n, &started);
    Py_XDECREF(started); /* only counted */
    return rc;
}

/* trace_child(name, service, resource, span_type) -> Span | None */
static PyObject *
trace_child(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (callable_now("trace_child", nargs, 4) < 0)
        return NULL;
    int active;
    return _cspan_trace_child(args[0], args[1], args[2], args[3], &active);
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
    if ((t->starts = _cspan_new_counter(st->counter)) == NULL ||
        (t->finishes = _cspan_new_counter(st->counter)) == NULL || (t->finished = PyList_New(0)) == NULL ||
        (t->dd_tags = PyDict_New()) == NULL)
        goto error;
    /* The first chunk is this list: not walked by the cyclic GC while it waits
     * for the writer (see _cspan_trace.c, "Objects the GC does not walk"). */
    PyObject_GC_UnTrack(t->finished);
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

/* A field of a new trace: in the struct for a trace built on TraceBase, else
 * by attribute. Steals `value` (NULL: an error is set). */
static int
set_new_field(PyObject *trace, const char *name, size_t offset, PyObject *value)
{
    if (value == NULL)
        return -1;
    if (is_c_trace(trace)) {
        Py_XSETREF(*(PyObject **)((char *)trace + offset), value);
        return 0;
    }
    int rc = PyObject_SetAttrString(trace, name, value);
    Py_DECREF(value);
    return rc;
}

/* ctx.dd_tags without _dd.p.tid (a new dict), as Tracer._start_trace. */
static PyObject *
propagated_tags(PyObject *ctx)
{
    static const char tid[] = "_dd.p.tid";
    PyObject *tags = PyObject_GetAttrString(ctx, "dd_tags");
    if (tags == NULL)
        return NULL;
    PyObject *copy = NULL;
    if (PyDict_CheckExact(tags))
        copy = PyDict_Copy(tags);
    else {
        PyObject *items = PyMapping_Items(tags);
        if (items != NULL && (copy = PyDict_New()) != NULL && PyDict_MergeFromSeq2(copy, items, 1) < 0)
            Py_CLEAR(copy);
        Py_XDECREF(items);
    }
    Py_DECREF(tags);
    /* Looked up only in a non-empty dict. */
    if (copy != NULL && PyDict_GET_SIZE(copy) != 0 && PyDict_GetItemString(copy, tid) != NULL &&
        PyDict_DelItemString(copy, tid) < 0)
        Py_CLEAR(copy);
    return copy;
}

/* A trace continued from `ctx` (a tracer.context.Context): the fields
 * Tracer._start_trace copies from it. */
static int
continue_trace(PyObject *trace, PyObject *ctx)
{
#define FIELD(name, value) set_new_field(trace, #name, offsetof(TraceObject, name), (value))
    if (FIELD(priority, PyObject_GetAttrString(ctx, "sampling_priority")) < 0 ||
        FIELD(origin, PyObject_GetAttrString(ctx, "origin")) < 0 || FIELD(dd_tags, propagated_tags(ctx)) < 0 ||
        FIELD(tracestate, PyObject_GetAttrString(ctx, "tracestate")) < 0 ||
        FIELD(remote_parent, Py_NewRef(Py_True)) < 0)
        return -1;
#undef FIELD
    return 0;
}

/* trace_root(trace_cls, buffer, name, service, resource, span_type, activate[, ctx[, meta, metrics]]) -> Span | None
 *
 * A new trace and its root span: Tracer.trace() without an active span, and
 * Tracer.start_span() without a parent (a query outside any request) or
 * with a propagated Context `ctx` (a request with trace headers). With
 * `activate` the span becomes the active one, and None is returned when a
 * span is active already (the caller's Python code decides then); None too
 * for a `ctx` whose trace_id is not a non-zero int (a decision-only b3
 * header). As Tracer._start_trace, which stays the statement of the rules:
 * a change there goes here too. `trace_cls(buffer, trace_id, wall, mono)` is
 * tracer.buffer._Trace; `service` is already the default if empty. `meta`
 * and `metrics` (mappings) are copied into the span's (a query's
 * per-connection tags: no two dict.update calls from Python). */
static PyObject *
trace_root(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    static PyObject *int_96 = NULL;
    PyObject *ctx = nargs >= 8 ? args[7] : Py_None;
    if (callable_now("trace_root", nargs, nargs >= 8 ? (nargs >= 9 ? 10 : 8) : 7) < 0)
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
    PyObject *trace = NULL, *trace_id = NULL, *wall_obj = NULL, *mono_obj = NULL, *parent_id = NULL;
    SpanObject *span = NULL;
    if (ctx != Py_None) {
        if ((trace_id = PyObject_GetAttrString(ctx, "trace_id")) == NULL)
            return NULL;
        if (!PyLong_CheckExact(trace_id) || !PyObject_IsTrue(trace_id)) {
            Py_DECREF(trace_id);
            Py_RETURN_NONE;
        }
        if ((parent_id = PyObject_GetAttrString(ctx, "span_id")) == NULL)
            goto done;
        goto ids_done;
    }
    /* As ddtrace: upper 32 bits unix seconds, 32 zero bits, 64 random bits. */
    PyObject *seconds = PyLong_FromLongLong(wall / 1000000000);
    if (seconds == NULL)
        return NULL;
    PyObject *high = PyNumber_Lshift(seconds, int_96);
    Py_DECREF(seconds);
    if (high == NULL)
        return NULL;
    PyObject *low = _cspan_random_id();
    if (low == NULL) {
        Py_DECREF(high);
        return NULL;
    }
    trace_id = PyNumber_Or(high, low);
    Py_DECREF(high);
    Py_DECREF(low);
    parent_id = Py_NewRef(int_0);

ids_done:
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
    if (trace == NULL || (ctx != Py_None && continue_trace(trace, ctx) < 0))
        goto done;
    span = _cspan_new_span(trace, trace_id, parent_id, Py_None, args[2], args[3], args[4], args[5], mono, wall,
                    activating ? Py_None : not_activated);
    if (span == NULL)
        goto done;
    if (nargs == 10 && (PyDict_Update(span->meta, args[8]) < 0 || PyDict_Update(span->metrics, args[9]) < 0)) {
        Py_CLEAR(span);
        goto done;
    }
    span->_cmodule = Py_NewRef(module);
    if (TRACE_SET(trace, root, (PyObject *)span) < 0 || _cspan_count_start(trace) < 0 ||
        (activating && set_active((PyObject *)span) < 0))
        Py_CLEAR(span);

done:
    Py_XDECREF(trace);
    Py_XDECREF(trace_id);
    Py_XDECREF(parent_id);
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
    if (!PyType_Check(args[0]) || !PyType_IsSubtype((PyTypeObject *)args[0], &_cspan_SpanBase_Type)) {
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
    /* The old getrandbits is released only after the in-place flag agrees
     * with the new one: its release can run Python code (a generator's
     * __del__) that starts a span. */
    PyObject *old_bits = getrandbits;
    getrandbits = Py_NewRef(args[3]);
    int rc = _cspan_ids_configure(getrandbits);
    Py_XDECREF(old_bits);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"trace_child", (PyCFunction)(void (*)(void))trace_child, METH_FASTCALL,
     "trace_child(name, service, resource, span_type): a new active child of the active span, or None."},
    {"trace_root", (PyCFunction)(void (*)(void))trace_root, METH_FASTCALL,
     "trace_root(trace_cls, buffer, name, service, resource, span_type, activate[, ctx[, meta, metrics]]): a new root "
     "span, or None."},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL, NULL},
    {"ids_in_place", _cspan_ids_in_place, METH_NOARGS,
     "ids_in_place(): whether span ids are random.getrandbits(64) drawn from its generator in place (_cspan_ids.c)."},
    {NULL},
};


/* Runs at each import (see _cmodule.h: the main interpreter only). */
static int
exec_module(PyObject *m)
{
    if (main_interpreter_only(m, "tracer._cspan", "the pure-Python span code") < 0)
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
    INTERN(st->s__cqueue, "_cqueue");
    INTERN(st->s_enabled, "enabled");
    INTERN(st->s_close, "close");
    PyObject *itertools = PyImport_ImportModule("itertools");
    if (itertools == NULL)
        return -1;
    st->count_type = PyObject_GetAttrString(itertools, "count");
    Py_DECREF(itertools);
    if (st->count_type == NULL)
        return -1;
    if ((st->trace_base = PyType_FromModuleAndSpec(m, &_cspan_Trace_spec, NULL)) == NULL ||
        PyModule_AddObjectRef(m, "TraceBase", st->trace_base) < 0 ||
        (st->counter = PyType_FromModuleAndSpec(m, &_cspan_Counter_spec, NULL)) == NULL ||
        PyModule_AddObjectRef(m, "Counter", st->counter) < 0)
        return -1;
    if (PyType_Ready(&_cspan_TraceMethod_Type) < 0 ||
        PyModule_AddObjectRef(m, "TraceMethod", (PyObject *)&_cspan_TraceMethod_Type) < 0)
        return -1;
    if (PyType_Ready(&_cspan_TracedCall_Type) < 0 ||
        PyModule_AddObjectRef(m, "TracedCall", (PyObject *)&_cspan_TracedCall_Type) < 0)
        return -1;
    PyObject *body_type = PyType_FromModuleAndSpec(m, &_cspan_Body_spec, NULL);
    if (body_type == NULL || PyModule_AddObject(m, "ClosingBody", body_type) < 0) {
        Py_XDECREF(body_type);
        return -1;
    }
    if (_cspan_flask_exec(m) < 0)
        return -1;
    if (PyType_Ready(&_cspan_WriterQueue_Type) < 0 ||
        PyModule_AddObjectRef(m, "WriterQueue", (PyObject *)&_cspan_WriterQueue_Type) < 0)
        return -1;
    if (PyType_Ready(&_cspan_SpanBase_Type) < 0 || _cspan_add_with_methods(&_cspan_SpanBase_Type) < 0)
        return -1;
    Py_INCREF(&_cspan_SpanBase_Type);
    if (PyModule_AddObject(m, "SpanBase", (PyObject *)&_cspan_SpanBase_Type) < 0) {
        Py_DECREF(&_cspan_SpanBase_Type);
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
