/* tracer._cspan's TraceMethod: Tracer.trace itself in C (see _cspan.h).
 *
 * `with tracer.trace("child") as span:` used to run a Python function that
 * called _cspan.trace_child: a Python frame per span. A TraceMethod is a
 * method descriptor (Py_TPFLAGS_METHOD_DESCRIPTOR: `tracer.trace(...)` makes
 * no bound method) with a vectorcall entry point: it binds
 * (self, name, service=None, resource=None, span_type=None) as Python would,
 * starts the child in C, and calls the Python function it was made from,
 * `fallback(self, name, service, resource, span_type)`, for everything else
 * (no active span, a foreign or finished one). tracer._tracer copies the
 * fallback's name, doc and signature onto it (functools.update_wrapper;
 * the instance has a __dict__), so inspect.signature() sees Tracer.trace's. */
#include "_cspan.h"

typedef struct {
    PyObject_HEAD
    PyObject *fallback;
    PyObject *dict;
    vectorcallfunc vectorcall;
} TraceMethodObject;

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
    PyObject *fallback;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) {
        PyErr_SetString(PyExc_TypeError, "TraceMethod() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_UnpackTuple(args, "TraceMethod", 1, 1, &fallback))
        return NULL;
    if (!PyCallable_Check(fallback)) {
        PyErr_Format(PyExc_TypeError, "TraceMethod(fallback): fallback must be callable, not %.100s",
                     Py_TYPE(fallback)->tp_name);
        return NULL;
    }
    TraceMethodObject *self = (TraceMethodObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->fallback = Py_NewRef(fallback);
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
    Py_VISIT(self->dict);
    return 0;
}

static int
TraceMethod_clear(TraceMethodObject *self)
{
    Py_CLEAR(self->fallback);
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
    .tp_doc = "TraceMethod(fallback): Tracer.trace, child spans started in C, the rest by fallback.",
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
