/* TracedCall: a user function called in a child span of the active one,
 * the wrapper an integration returns for a function it traces on every
 * request (contrib/flask: each hook, view and error handler), without the
 * Python frame of a wrapper (its packed arguments, the `span.meta` look-up,
 * the bound finish()).
 *
 *   TracedCall(func, name, resource, span_type, tags, fallback, failed, report)
 *
 * A call starts a child of the active span (as _cspan.trace_child: same
 * fields, counted, activated) whose meta starts as a copy of `tags` (the
 * constant tags of the function, one dict merge into the new span's empty
 * meta), calls func with the call's arguments (the guard shape: nothing
 * around that call changes what it returns or raises), then finishes the
 * span (Span.finish()). The rest goes to Python:
 *   - no C span can start here (nothing active, a foreign trace, the pure
 *     Python span class): fallback(*args, **kwargs), the integration's
 *     Python wrapper, does all of it;
 *   - func raised: failed(span, exc), which records the error and finishes
 *     the span (it must not raise: contrib guards it), then the exception
 *     propagates unchanged;
 *   - our own work failed (starting the span, its tags, its finish):
 *     report(exc, finishing) records it (tracer._errors.internal_error);
 *     func is still called, once, and its result returned.
 */
#include "_cspan.h"

typedef struct {
    PyObject_HEAD
    PyObject *func, *name, *resource, *span_type, *tags, *fallback, *failed, *report;
    vectorcallfunc vectorcall;
} TracedCallObject;

#define TC_NFIELDS 8
#define TC_FIELDS(o) (&((TracedCallObject *)(o))->func)

/* The exception set now, taken out normalized, its traceback attached to
 * the value (*value NULL only if normalizing failed). */
static void
fetch_normalized(PyObject **type, PyObject **value, PyObject **tb)
{
    PyErr_Fetch(type, value, tb);
    PyErr_NormalizeException(type, value, tb);
    if (*value != NULL && *tb != NULL)
        PyException_SetTraceback(*value, *tb);
}

/* report(exc, finishing) for the exception set now; the exception is
 * cleared (report never raises; if it does, that error is dropped too). */
static void
report_error(TracedCallObject *self, int finishing)
{
    PyObject *type, *value, *tb;
    fetch_normalized(&type, &value, &tb);
    PyObject *r = value == NULL ? NULL
                                : PyObject_CallFunctionObjArgs(self->report, value, finishing ? Py_True : Py_False,
                                                               NULL);
    if (r == NULL)
        PyErr_Clear();
    Py_XDECREF(r);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
}

static PyObject *call_traced(TracedCallObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames);

/* The fields are read-only, so they live as long as `self`: held here for
 * the call, however the caller holds it. */
static PyObject *
TracedCall_vectorcall(TracedCallObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_INCREF(self);
    PyObject *result = call_traced(self, args, nargsf, kwnames);
    Py_DECREF(self);
    return result;
}

static PyObject *
call_traced(TracedCallObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    int active; /* (trace_child's out-parameter; not read here) */
    PyObject *span = span_cls == NULL ? Py_NewRef(Py_None)
                                      : _cspan_trace_child(self->name, Py_None, self->resource, self->span_type,
                                                           &active);
    if (span == Py_None) {
        Py_DECREF(span);
        return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
    }
    if (span == NULL) { /* recorded; the function runs untraced */
        if (!PyErr_ExceptionMatches(PyExc_Exception)) /* as `except Exception`: KeyboardInterrupt goes on */
            return NULL;
        report_error(self, 0);
        return PyObject_Vectorcall(self->func, args, nargsf, kwnames);
    }
    if (PyDict_Update(((SpanObject *)span)->meta, self->tags) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            Py_DECREF(span); /* (left open, as the Python wrapper's would be) */
            return NULL;
        }
        report_error(self, 0); /* the span goes on without them */
    }
    PyObject *result = PyObject_Vectorcall(self->func, args, nargsf, kwnames);
    if (result == NULL) {
        PyObject *type, *value, *tb;
        fetch_normalized(&type, &value, &tb);
        if (value == NULL) { /* (normalizing failed: nothing to report) */
            Py_DECREF(span);
            PyErr_Restore(type, value, tb);
            return NULL;
        }
        PyObject *r = PyObject_CallFunctionObjArgs(self->failed, span, value, NULL);
        Py_DECREF(span);
        if (r == NULL) { /* a BaseException out of the guarded handler: raised
                            * while handling func's, which becomes its context */
            PyObject *t2, *v2, *tb2;
            fetch_normalized(&t2, &v2, &tb2);
            if (v2 != NULL && v2 != value && PyExceptionInstance_Check(v2)) {
                PyObject *context = PyException_GetContext(v2); /* (a new reference, or NULL) */
                if (context == NULL)
                    PyException_SetContext(v2, Py_NewRef(value)); /* (steals it) */
                Py_XDECREF(context);
            }
            PyErr_Restore(t2, v2, tb2);
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(tb);
            return NULL;
        }
        Py_DECREF(r);
        PyErr_Restore(type, value, tb);
        return NULL;
    }
    if (_cspan_span_finish((SpanObject *)span) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) { /* as `except Exception` */
            Py_DECREF(span);
            Py_DECREF(result);
            return NULL;
        }
        report_error(self, 1);
    }
    Py_DECREF(span);
    return result;
}

static PyObject *
TracedCall_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *f[TC_NFIELDS];
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) {
        PyErr_SetString(PyExc_TypeError, "TracedCall() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_UnpackTuple(args, "TracedCall", TC_NFIELDS, TC_NFIELDS, &f[0], &f[1], &f[2], &f[3], &f[4], &f[5],
                           &f[6], &f[7]))
        return NULL;
    if (!PyUnicode_Check(f[1]) || !PyUnicode_Check(f[2]) || !PyUnicode_Check(f[3])) {
        PyErr_SetString(PyExc_TypeError, "TracedCall(): name, resource and span_type must be str");
        return NULL;
    }
    if (!PyDict_CheckExact(f[4])) {
        PyErr_SetString(PyExc_TypeError, "TracedCall(): tags must be a dict");
        return NULL;
    }
    for (int i = 0; i < TC_NFIELDS; i++)
        if (i != 1 && i != 2 && i != 3 && i != 4 && !PyCallable_Check(f[i])) {
            PyErr_Format(PyExc_TypeError, "TracedCall(): argument %d must be callable", i + 1);
            return NULL;
        }
    TracedCallObject *self = (TracedCallObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    for (int i = 0; i < TC_NFIELDS; i++)
        TC_FIELDS(self)[i] = Py_NewRef(f[i]);
    /* A copy: later changes to the caller's dict do not reach the spans. */
    Py_SETREF(self->tags, PyDict_Copy(f[4]));
    if (self->tags == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->vectorcall = (vectorcallfunc)TracedCall_vectorcall;
    return (PyObject *)self;
}

static int
TracedCall_traverse(PyObject *self, visitproc visit, void *arg)
{
    for (int i = 0; i < TC_NFIELDS; i++)
        Py_VISIT(TC_FIELDS(self)[i]);
    return 0;
}

static int
TracedCall_clear(PyObject *self)
{
    for (int i = 0; i < TC_NFIELDS; i++)
        Py_CLEAR(TC_FIELDS(self)[i]);
    return 0;
}

static void
TracedCall_dealloc(PyObject *self)
{
    PyObject_GC_UnTrack(self);
    TracedCall_clear(self);
    Py_TYPE(self)->tp_free(self);
}

static PyMemberDef TracedCall_members[] = {
    {"__wrapped__", T_OBJECT, offsetof(TracedCallObject, func), READONLY, NULL},
    {"fallback", T_OBJECT, offsetof(TracedCallObject, fallback), READONLY, NULL},
    {NULL},
};

PyTypeObject _cspan_TracedCall_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tracer._cspan.TracedCall",
    .tp_basicsize = sizeof(TracedCallObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "TracedCall(func, name, resource, span_type, tags, fallback, failed, report): func called in a "
              "child span of the active one (see tracer/_cspan_call.c).",
    .tp_vectorcall_offset = offsetof(TracedCallObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_traverse = TracedCall_traverse,
    .tp_clear = TracedCall_clear,
    .tp_dealloc = TracedCall_dealloc,
    .tp_members = TracedCall_members,
    .tp_new = TracedCall_new,
};
