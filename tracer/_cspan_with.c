/* tracer._cspan's SpanBase.__enter__ and __exit__ (see _cspan.h): the `with`
 * statement's two lookups without a builtin method each.
 *
 * `with tracer.trace(...) as span:` looks up type(span).__enter__ and
 * __exit__ and binds each to the span (CPython's _PyObject_LookupSpecial).
 * A method in tp_methods binds through the method descriptor's __get__, which
 * makes a builtin method (PyCMethod_New: a GC object with a module and a
 * weakref slot, freed through a trashcan): ≈ 400 instructions per lookup,
 * made and freed. SpanMethod is the same descriptor for these two methods,
 * whose __get__ makes a SpanBound: a GC object holding the span and the C
 * function, called by vectorcall. Same semantics (a new bound object per
 * lookup, holding the span, walked by the GC); called unbound
 * (`SpanBase.__exit__(span, ...)`, or `span.__exit__(...)`, which the
 * interpreter calls unbound: Py_TPFLAGS_METHOD_DESCRIPTOR) it checks its
 * first argument as a method descriptor does. */
#include "_cspan.h"

typedef PyObject *(*spanfunc)(PyObject *span, PyObject *const *args, size_t nargsf, PyObject *kwnames);

typedef struct {
    PyObject_HEAD
    spanfunc func;
    const char *name;
    vectorcallfunc vectorcall;
} SpanMethodObject;

typedef struct {
    PyObject_HEAD
    PyObject *span;
    SpanMethodObject *method; /* the descriptor: its function and name */
    vectorcallfunc vectorcall;
} SpanBoundObject;

static PyTypeObject SpanBound_Type;

static PyObject *
SpanBound_vectorcall(SpanBoundObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    return self->method->func(self->span, args, PyVectorcall_NARGS(nargsf), kwnames);
}

static int
SpanBound_traverse(SpanBoundObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->span);
    Py_VISIT(self->method);
    return 0;
}

static void
SpanBound_dealloc(SpanBoundObject *self)
{
    PyObject_GC_UnTrack(self);
    Py_DECREF(self->span);
    Py_DECREF(self->method);
    PyObject_GC_Del(self);
}

static PyObject *
SpanBound_repr(SpanBoundObject *self)
{
    return PyUnicode_FromFormat("<bound method SpanBase.%s of %R>", self->method->name, self->span);
}

/* Equal when bound to the same span by the same method, as bound methods
 * are (a new SpanBound is made per lookup). */
static PyObject *
SpanBound_richcompare(PyObject *self, PyObject *other, int op)
{
    if ((op != Py_EQ && op != Py_NE) || !Py_IS_TYPE(other, Py_TYPE(self)))
        Py_RETURN_NOTIMPLEMENTED;
    SpanBoundObject *a = (SpanBoundObject *)self, *b = (SpanBoundObject *)other;
    int eq = a->span == b->span && a->method == b->method;
    return PyBool_FromLong(op == Py_EQ ? eq : !eq);
}

static Py_hash_t
SpanBound_hash(SpanBoundObject *self)
{
    Py_hash_t h = _Py_HashPointer(self->span) ^ _Py_HashPointer(self->method);
    return h == -1 ? -2 : h;
}

static PyMemberDef SpanBound_members[] = {
    {"__self__", T_OBJECT, offsetof(SpanBoundObject, span), READONLY, NULL},
    {"__func__", T_OBJECT, offsetof(SpanBoundObject, method), READONLY, NULL},
    {NULL},
};

/* __name__ and __qualname__ (the closure): the method's, as a bound
 * method's are. */
static PyObject *
SpanBound_method_attr(SpanBoundObject *self, void *closure)
{
    return PyObject_GetAttrString((PyObject *)self->method, (const char *)closure);
}

static PyGetSetDef SpanBound_getset[] = {
    {"__name__", (getter)SpanBound_method_attr, NULL, NULL, "__name__"},
    {"__qualname__", (getter)SpanBound_method_attr, NULL, NULL, "__qualname__"},
    {NULL},
};

static PyTypeObject SpanBound_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tracer._cspan.SpanBound",
    .tp_basicsize = sizeof(SpanBoundObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "A SpanMethod bound to a span.",
    .tp_vectorcall_offset = offsetof(SpanBoundObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_repr = (reprfunc)SpanBound_repr,
    .tp_richcompare = SpanBound_richcompare,
    .tp_hash = (hashfunc)SpanBound_hash,
    .tp_traverse = (traverseproc)SpanBound_traverse,
    .tp_dealloc = (destructor)SpanBound_dealloc,
    .tp_members = SpanBound_members,
    .tp_getset = SpanBound_getset,
};

/* The span the unbound method was called on, or NULL with the TypeError a
 * method descriptor raises. */
static int
check_span(SpanMethodObject *self, PyObject *span)
{
    if (span != NULL && PyObject_TypeCheck(span, &_cspan_SpanBase_Type))
        return 0;
    if (span == NULL)
        PyErr_Format(PyExc_TypeError, "unbound method SpanBase.%s() needs an argument", self->name);
    else
        PyErr_Format(PyExc_TypeError, "descriptor '%s' for 'tracer._cspan.SpanBase' objects doesn't apply to a '%s' object",
                     self->name, Py_TYPE(span)->tp_name);
    return -1;
}

static PyObject *
SpanMethod_vectorcall(SpanMethodObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (check_span(self, nargs > 0 ? args[0] : NULL) < 0)
        return NULL;
    return self->func(args[0], args + 1, nargs - 1, kwnames);
}

static PyObject *
SpanMethod_get(SpanMethodObject *self, PyObject *obj, PyObject *Py_UNUSED(type))
{
    if (obj == NULL || obj == Py_None)
        return Py_NewRef(self);
    if (check_span(self, obj) < 0)
        return NULL;
    SpanBoundObject *bound = PyObject_GC_New(SpanBoundObject, &SpanBound_Type);
    if (bound == NULL)
        return NULL;
    bound->span = Py_NewRef(obj);
    bound->method = (SpanMethodObject *)Py_NewRef(self);
    bound->vectorcall = (vectorcallfunc)SpanBound_vectorcall;
    PyObject_GC_Track(bound);
    return (PyObject *)bound;
}

static PyObject *
SpanMethod_repr(SpanMethodObject *self)
{
    return PyUnicode_FromFormat("<method '%s' of 'tracer._cspan.SpanBase' objects>", self->name);
}

static PyObject *
SpanMethod_name(SpanMethodObject *self, void *Py_UNUSED(closure))
{
    return PyUnicode_FromString(self->name);
}

static PyObject *
SpanMethod_qualname(SpanMethodObject *self, void *Py_UNUSED(closure))
{
    return PyUnicode_FromFormat("SpanBase.%s", self->name);
}

static PyGetSetDef SpanMethod_getset[] = {
    {"__name__", (getter)SpanMethod_name, NULL, NULL, NULL},
    {"__qualname__", (getter)SpanMethod_qualname, NULL, NULL, NULL},
    {NULL},
};

static PyTypeObject SpanMethod_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tracer._cspan.SpanMethod",
    .tp_basicsize = sizeof(SpanMethodObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_METHOD_DESCRIPTOR | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "SpanBase.__enter__ and __exit__: a method descriptor whose binding is a SpanBound.",
    .tp_vectorcall_offset = offsetof(SpanMethodObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_repr = (reprfunc)SpanMethod_repr,
    .tp_descr_get = (descrgetfunc)SpanMethod_get,
    .tp_getset = SpanMethod_getset,
};

/* __enter__(): the span. */
static PyObject *
span_enter(PyObject *span, PyObject *const *Py_UNUSED(args), size_t nargs, PyObject *kwnames)
{
    if (nargs != 0 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_Format(PyExc_TypeError, "SpanBase.__enter__() takes no arguments (%zd given)",
                     (Py_ssize_t)nargs + (kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames)));
        return NULL;
    }
    return Py_NewRef(span);
}

/* Put __enter__ and __exit__ (_cspan_span.c) into SpanBase's dict (after
 * PyType_Ready). */
int
_cspan_add_with_methods(PyTypeObject *span_base)
{
    static const char *const names[2] = {"__enter__", "__exit__"};
    spanfunc funcs[2] = {span_enter, _cspan_span_exit};
    if (PyType_Ready(&SpanBound_Type) < 0 || PyType_Ready(&SpanMethod_Type) < 0)
        return -1;
    for (int i = 0; i < 2; i++) {
        SpanMethodObject *method = PyObject_New(SpanMethodObject, &SpanMethod_Type);
        if (method == NULL)
            return -1;
        method->func = funcs[i];
        method->name = names[i];
        method->vectorcall = (vectorcallfunc)SpanMethod_vectorcall;
        int rc = PyDict_SetItemString(span_base->tp_dict, names[i], (PyObject *)method);
        Py_DECREF(method);
        if (rc < 0)
            return -1;
    }
    PyType_Modified(span_base);
    return 0;
}
