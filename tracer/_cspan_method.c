/* tracer._cspan's TraceMethod: Tracer.trace itself in C (see _cspan.h).
 *
 * `with tracer.trace("child") as span:` used to run a Python function that
 * called _cspan.trace_child: a Python frame per span. A TraceMethod is a
 * method descriptor (Py_TPFLAGS_METHOD_DESCRIPTOR: `tracer.trace(...)` makes
 * no bound method) with a vectorcall entry point: it binds
 * (self, name, service=None, resource=None, span_type=None) as Python would,
 * starts the child in C, and calls the Python function it was made from,
 * `fallback(self, name, service, resource, span_type)`, for everything else
 * (a foreign or finished active span; no active span unless made with
 * trace_root: then a new trace is started in C as the fallback would). tracer._tracer copies the
 * fallback's name, doc and signature onto it (functools.update_wrapper;
 * the instance has a __dict__), so inspect.signature() sees Tracer.trace's. */
#include "_cspan.h"

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
    PyObject *bound[5];
    if (_cspan_bind_args("trace", trace_names, 5, 2, args, nargsf, kwnames, bound) < 0)
        return NULL;
    for (int i = 2; i < 5; i++)
        if (bound[i] == NULL)
            bound[i] = Py_None;
    if (span_cls != NULL) {
        PyObject *span = _cspan_trace_child(bound[1], bound[2], bound[3], bound[4]);
        if (span != Py_None)
            return span; /* the child, or NULL with an error */
        Py_DECREF(span);
        if (self->trace_root != NULL) {
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

/* As a function's __get__: the method bound to `obj`, the descriptor on the class. */
static PyObject *
TraceMethod_get(PyObject *self, PyObject *obj, PyObject *Py_UNUSED(type))
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
    .tp_descr_get = TraceMethod_get,
    .tp_traverse = (traverseproc)TraceMethod_traverse,
    .tp_clear = (inquiry)TraceMethod_clear,
    .tp_dealloc = (destructor)TraceMethod_dealloc,
    .tp_members = TraceMethod_members,
    .tp_getset = TraceMethod_getset,
    .tp_new = TraceMethod_new,
};
