/* tracer._cspan's child span start (_cspan_trace_child) and TraceMethod:
 * Tracer.trace itself in C (see _cspan.h).
 *
 * `with tracer.trace("child") as span:` used to run a Python function that
 * called _cspan.trace_child: a Python frame per span. A TraceMethod is a
 * method descriptor (Py_TPFLAGS_METHOD_DESCRIPTOR: `tracer.trace(...)` makes
 * no bound method) with a vectorcall entry point: it binds
 * (self, name, service=None, resource=None, span_type=None) as Python would,
 * starts the child in C, and calls the Python function it was made from,
 * `fallback(self, name, service, resource, span_type)`, for everything else
 * (a foreign or finished active span; no active span unless made with
 * trace_root: then a new trace is started in C as the fallback would).
 * tracer._tracer copies the fallback's name, doc and signature onto it
 * (functools.update_wrapper; the instance has a __dict__), so
 * inspect.signature() sees Tracer.trace's. */
#include "_cspan.h"

/* -- starting a child span ------------------------------------------------ */

/* trace.wall_base and trace.mono_base as C values. Kept in a C trace for
 * the exact ints they came from: the next child of the trace finds the same
 * objects and reads no int (~200 instructions less per child). */
static int
base_clocks(PyObject *trace, long long *wall, long long *mono)
{
    TraceObject *t = is_c_trace(trace) ? (TraceObject *)trace : NULL;
    if (t != NULL && t->seen_wall != NULL && t->seen_wall == t->wall_base && t->seen_mono == t->mono_base) {
        *wall = t->wall_ns;
        *mono = t->mono_ns;
        return 0;
    }
    PyObject *wall_obj = TRACE_GET(trace, wall_base);
    PyObject *mono_obj = wall_obj == NULL ? NULL : TRACE_GET(trace, mono_base);
    int rc = -1;
    if (mono_obj != NULL && !((*wall = as_long_long(wall_obj)) == -1 && PyErr_Occurred()) &&
        !((*mono = as_long_long(mono_obj)) == -1 && PyErr_Occurred())) {
        rc = 0;
        /* Kept only for exact ints still in place (converting another
         * object runs its __index__, which may change the fields). */
        if (t != NULL && PyLong_CheckExact(wall_obj) && PyLong_CheckExact(mono_obj) && wall_obj == t->wall_base &&
            mono_obj == t->mono_base) {
            Py_XSETREF(t->seen_wall, Py_NewRef(wall_obj));
            Py_XSETREF(t->seen_mono, Py_NewRef(mono_obj));
            t->wall_ns = *wall;
            t->mono_ns = *mono;
        }
    }
    Py_XDECREF(wall_obj);
    Py_XDECREF(mono_obj);
    return rc;
}

/* Tracer.trace() for the common case: start a child of the active span and
 * activate it. None when there is no active span or its trace is foreign
 * (inherited across fork): the caller starts a new trace then. *active
 * tells whether a value other than None was active (trace_root starts no
 * trace then). Arguments borrowed; span_cls is set (configure). */
PyObject *
_cspan_trace_child(PyObject *name, PyObject *service, PyObject *resource, PyObject *span_type, int *active)
{
    long long mono = perf_counter_ns();
    PyObject *parent_obj;
    *active = 1;
    if (PyContextVar_Get(active_var, Py_None, &parent_obj) < 0)
        return NULL;
    if (parent_obj == NULL || Py_TYPE(parent_obj) != span_cls) {
        *active = parent_obj != NULL && parent_obj != Py_None;
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
    if (base_clocks(trace, &wall_base, &mono_base) < 0)
        goto error;

    int has_service = PyObject_IsTrue(service);
    if (has_service < 0)
        goto error;
    span = _cspan_new_span(trace, parent->trace_id, parent->span_id, (PyObject *)parent, name,
                    has_service ? service : parent->service, resource, span_type, mono,
                    wall_base + (mono - mono_base), parent_obj);
    if (span == NULL)
        goto error;
    Py_CLEAR(trace);
    Py_CLEAR(parent_ref);
    Py_CLEAR(parent_obj);
    /* As Tracer._trace_py: counted, a late start noted, then activated. */
    if (_cspan_count_start(span->_trace) < 0)
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
    /* Activated with its token kept when the value it replaces is _prev
     * (code run above, a start_span_late or a str subclass's __bool__, may
     * have changed the active span). */
    PyObject *current;
    if (PyContextVar_Get(active_var, NULL, &current) < 0)
        goto error;
    Py_XDECREF(current); /* only compared */
    PyObject *token = PyContextVar_Set(active_var, (PyObject *)span);
    if (token == NULL)
        goto error;
    if (current != NULL && current == span->_prev) {
        span->_token = token;
        span->_token_prev = current;
    }
    else
        Py_DECREF(token);
    return (PyObject *)span;

error:
    Py_XDECREF(trace);
    Py_XDECREF(parent_ref);
    Py_XDECREF(parent_obj);
    Py_XDECREF(span);
    return NULL;
}

/* -- TraceMethod ---------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *fallback;
    /* Optional: trace_root (_cspan.trace_root) and trace_cls, for a new
     * trace started here (self._buffer and self.service read by name). */
    PyObject *trace_root, *trace_cls, *s_buffer_attr, *s_service_attr;
    PyObject *dict;
    vectorcallfunc vectorcall;
} TraceMethodObject;

/* trace_root(trace_cls, self._buffer, name, service or self.service,
 * resource, span_type, True): as the fallback's first step, without its
 * Python frame. `bound` as in TraceMethod_vectorcall; a new reference
 * (None: a span is active, the fallback decides). */
static PyObject *
new_trace(TraceMethodObject *self, PyObject **bound)
{
    PyObject *buffer = PyObject_GetAttr(bound[0], self->s_buffer_attr);
    if (buffer == NULL)
        return NULL;
    int has_service = PyObject_IsTrue(bound[2]);
    PyObject *service = has_service < 0    ? NULL
                        : has_service ? Py_NewRef(bound[2])
                                      : PyObject_GetAttr(bound[0], self->s_service_attr);
    PyObject *span = NULL;
    if (service != NULL) {
        /* Owned across the call: the getattrs above may have replaced them. */
        PyObject *root = Py_NewRef(self->trace_root), *cls = Py_NewRef(self->trace_cls);
        PyObject *args[7] = {cls, buffer, bound[1], service, bound[3], bound[4], Py_True};
        span = PyObject_Vectorcall(root, args, 7, NULL);
        Py_DECREF(root);
        Py_DECREF(cls);
    }
    Py_DECREF(buffer);
    Py_XDECREF(service);
    return span;
}

static const char *const trace_names[] = {"self", "name", "service", "resource", "span_type"};

static PyObject *
TraceMethod_vectorcall(TraceMethodObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    PyObject *out[5];
    PyObject *const *given = bind_args("trace", trace_names, 5, 2, args, nargsf, kwnames, out);
    if (given == NULL)
        return NULL;
    PyObject *bound[5];
    for (int i = 0; i < 5; i++)
        bound[i] = given[i] != NULL ? given[i] : Py_None;
    if (span_cls != NULL) {
        int active;
        PyObject *span = _cspan_trace_child(bound[1], bound[2], bound[3], bound[4], &active);
        if (span != Py_None)
            return span; /* the child, or NULL with an error */
        Py_DECREF(span);
        /* With a span active (foreign, finished), trace_root would return
         * None: the fallback decides without that call. */
        if (self->trace_root != NULL && !active) {
            /* Owned: the getattrs in new_trace may run Python code. */
            Py_INCREF(self);
            span = new_trace(self, bound);
            Py_DECREF(self);
            if (span != Py_None)
                return span;
            Py_DECREF(span);
        }
    }
    /* Owned across the call: the function may replace it. */
    PyObject *fallback = Py_NewRef(self->fallback);
    PyObject *span = PyObject_Vectorcall(fallback, bound, 5, NULL);
    Py_DECREF(fallback);
    return span;
}

static PyObject *
TraceMethod_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *fallback, *trace_root = NULL, *trace_cls = NULL;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) {
        PyErr_SetString(PyExc_TypeError, "TraceMethod() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_UnpackTuple(args, "TraceMethod", 1, 3, &fallback, &trace_root, &trace_cls))
        return NULL;
    if (!PyCallable_Check(fallback) || (trace_root != NULL && (trace_cls == NULL || !PyCallable_Check(trace_root)))) {
        PyErr_SetString(PyExc_TypeError, "TraceMethod(fallback[, trace_root, trace_cls]): callables expected");
        return NULL;
    }
    TraceMethodObject *self = (TraceMethodObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->fallback = Py_NewRef(fallback);
    if (trace_root != NULL) {
        self->trace_root = Py_NewRef(trace_root);
        self->trace_cls = Py_NewRef(trace_cls);
        if ((self->s_buffer_attr = PyUnicode_InternFromString("_buffer")) == NULL ||
            (self->s_service_attr = PyUnicode_InternFromString("service")) == NULL) {
            Py_DECREF(self);
            return NULL;
        }
    }
    self->vectorcall = (vectorcallfunc)TraceMethod_vectorcall;
    return (PyObject *)self;
}

/* As a function's __get__: the method bound to `obj`, the descriptor on the
 * class (TraceMethod's, and _cspan_flask.c's method descriptors'). */
PyObject *
_cspan_bind_method(PyObject *self, PyObject *obj, PyObject *Py_UNUSED(type))
{
    if (obj == NULL || obj == Py_None)
        return Py_NewRef(self);
    return PyMethod_New(self, obj);
}

static int
TraceMethod_traverse(TraceMethodObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->fallback);
    Py_VISIT(self->trace_root);
    Py_VISIT(self->trace_cls);
    Py_VISIT(self->dict);
    return 0;
}

static int
TraceMethod_clear(TraceMethodObject *self)
{
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->trace_root);
    Py_CLEAR(self->trace_cls);
    Py_CLEAR(self->s_buffer_attr);
    Py_CLEAR(self->s_service_attr);
    Py_CLEAR(self->dict);
    return 0;
}

static void
TraceMethod_dealloc(TraceMethodObject *self)
{
    PyObject_GC_UnTrack(self);
    TraceMethod_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef TraceMethod_members[] = {
    {"fallback", T_OBJECT, offsetof(TraceMethodObject, fallback), READONLY, NULL},
    {NULL},
};

static PyGetSetDef TraceMethod_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL},
};

PyTypeObject _cspan_TraceMethod_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tracer._cspan.TraceMethod",
    .tp_basicsize = sizeof(TraceMethodObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_METHOD_DESCRIPTOR | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "TraceMethod(fallback[, trace_root, trace_cls]): Tracer.trace, child spans (and with trace_root "
              "new traces) started in C, the rest by fallback.",
    .tp_vectorcall_offset = offsetof(TraceMethodObject, vectorcall),
    .tp_dictoffset = offsetof(TraceMethodObject, dict),
    .tp_call = PyVectorcall_Call,
    .tp_descr_get = _cspan_bind_method,
    .tp_traverse = (traverseproc)TraceMethod_traverse,
    .tp_clear = (inquiry)TraceMethod_clear,
    .tp_dealloc = (destructor)TraceMethod_dealloc,
    .tp_members = TraceMethod_members,
    .tp_getset = TraceMethod_getset,
    .tp_new = TraceMethod_new,
};
