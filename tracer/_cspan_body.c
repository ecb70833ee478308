/* ClosingBody: contrib/flask's response wrapper for a plain body (a list or
 * tuple iterator of one bytes chunk or none: what a view returning str, a
 * dict or a template gets; it runs no code of the app and cannot fail)
 * whose request span is a C span. The Python wrapper (_ClosingBody with
 * itertools.chain and _BodyEnd, contrib/flask/_request.py) costs four Python
 * frames per request (__iter__, _BodyEnd.__iter__, close, __del__); this
 * type does the same work in C.
 *
 *   ClosingBody(body, span)
 *
 * iter() returns the object itself; the first iter() (or next()) takes the
 * body's iterator and marks the body "started" (the server began sending
 * it). next() reads the body's iterator; at its end the span finishes (the
 * span is not active: no ContextVar is touched unless it is). close() calls
 * the body's close() (its exception propagates, after the span has ended),
 * then ends the span unless it has ended, tagged http.client_disconnected
 * when started. A wrapper dropped without close() ends its span the same
 * way from tp_finalize. Our own failures (the finish, the tag) go to
 * tracer._errors.internal_error, as the Python wrapper's guarded calls do;
 * an exception of the body's iterator propagates (the span stays open until
 * close(), as with chain). */
#include "_cspan.h"

typedef struct {
    PyObject_HEAD
    PyObject *body, *span, *it; /* it: the body's iterator, NULL before the first iter() */
    char started, done;
} BodyObject;

static int
span_ended(PyObject *span)
{
    PyObject *d = ((SpanObject *)span)->duration_ns;
    return d != NULL && d != Py_None;
}

/* internal_error(where, exc) for the exception set now (cleared): an
 * Exception is recorded; anything else (KeyboardInterrupt) stays set and
 * -1 is returned, as the Python wrapper's `except Exception` lets it out. */
static int
report_error(PyObject *self, const char *where)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value != NULL && tb != NULL)
        PyException_SetTraceback(value, tb);
    ModuleState *st = PyType_GetModuleState(Py_TYPE(self));
    PyObject *r = NULL;
    if (st != NULL && st->internal_error == NULL) {
        PyObject *errors = PyImport_ImportModule("tracer._errors");
        if (errors != NULL) {
            st->internal_error = PyObject_GetAttrString(errors, "internal_error");
            Py_DECREF(errors);
        }
    }
    if (st != NULL && st->internal_error != NULL && value != NULL) {
        PyObject *text = PyUnicode_FromString(where);
        if (text != NULL)
            r = PyObject_CallFunctionObjArgs(st->internal_error, text, value, NULL);
        Py_XDECREF(text);
    }
    if (r == NULL)
        PyErr_Clear(); /* internal_error never raises; if it did, dropped */
    Py_XDECREF(r);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return 0;
}

/* The end of a span whose body was neither exhausted nor failed (closed,
 * or dropped): contrib.flask._request._end. `span` held by the caller. */
static int
end_span(PyObject *self, PyObject *span, int started, const char *where)
{
    if (span_ended(span))
        return 0;
    int rc = 0;
    if (started) {
        PyObject *meta = ((SpanObject *)span)->meta;
        PyObject *key = PyUnicode_InternFromString("http.client_disconnected");
        PyObject *value = key == NULL ? NULL : PyUnicode_InternFromString("true");
        if (meta == NULL)
            PyErr_SetString(PyExc_AttributeError, "meta");
        rc = meta == NULL || value == NULL ? -1 : PyObject_SetItem(meta, key, value);
        Py_XDECREF(key);
        Py_XDECREF(value);
    }
    if (rc == 0)
        rc = _cspan_span_finish((SpanObject *)span);
    return rc < 0 ? report_error(self, where) : 0;
}

static PyObject *
Body_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *body, *span;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) {
        PyErr_SetString(PyExc_TypeError, "ClosingBody() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OO:ClosingBody", &body, &span))
        return NULL;
    return _cspan_closing_body(type, body, span);
}

/* ClosingBody(body, span) without the argument tuple (_cspan_flask.c's
 * Respond): `type` is ClosingBody. */
PyObject *
_cspan_closing_body(PyTypeObject *type, PyObject *body, PyObject *span)
{
    if (span_cls == NULL || Py_TYPE(span) != span_cls) {
        PyErr_Format(PyExc_TypeError, "ClosingBody: span must be a tracer.span.Span in C, not %.100s",
                     Py_TYPE(span)->tp_name);
        return NULL;
    }
    BodyObject *self = PyObject_GC_New(BodyObject, type);
    if (self == NULL)
        return NULL;
    self->body = Py_NewRef(body);
    self->span = Py_NewRef(span);
    self->it = NULL;
    self->started = self->done = 0;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static int
Body_start(BodyObject *self)
{
    if (self->body == NULL) { /* cleared by the GC: nothing left to read */
        PyErr_SetString(PyExc_ValueError, "ClosingBody: cleared");
        return -1;
    }
    if (self->it == NULL) {
        self->started = 1; /* as _it set by the Python wrapper's iter() */
        PyObject *it = PyObject_GetIter(self->body);
        if (it == NULL)
            return -1;
        Py_XSETREF(self->it, it);
    }
    return 0;
}

static PyObject *
Body_iter(BodyObject *self)
{
    if (Body_start(self) < 0)
        return NULL;
    return Py_NewRef(self);
}

static PyObject *
Body_next(BodyObject *self)
{
    if (self->done || Body_start(self) < 0)
        return NULL;
    if (self->it == NULL) /* cleared by the GC */
        return NULL;
    PyObject *it = Py_NewRef(self->it); /* held: the body's next() may run anything */
    PyObject *chunk = PyIter_Next(it);
    Py_DECREF(it);
    if (chunk != NULL || PyErr_Occurred())
        return chunk;
    /* The body's end: the span ends (_BodyEnd.__iter__). */
    self->done = 1;
    PyObject *span = Py_NewRef(self->span);
    if (!span_ended(span) && _cspan_span_finish((SpanObject *)span) < 0)
        (void)report_error((PyObject *)self, "flask.response.end"); /* not an Exception: left set, raised */
    Py_DECREF(span);
    return NULL; /* no error set: StopIteration */
}

/* close(): the body's close() (its exception propagates), then the span's
 * end. Everything is held for the call: the body's close() may call back
 * into this object (or drop the server's reference to it). */
static PyObject *
Body_close(BodyObject *self, PyObject *Py_UNUSED(ignored))
{
    ModuleState *st = PyType_GetModuleState(Py_TYPE(self));
    if (st == NULL)
        return NULL;
    if (self->body == NULL || self->span == NULL) /* cleared by the GC (a cycle's finalizer calling close()) */
        Py_RETURN_NONE;
    PyObject *body = Py_NewRef(self->body), *span = Py_NewRef(self->span);
    PyObject *r = NULL;
    /* getattr(body, "close", None) */
    PyObject *close = PyObject_GetAttr(body, st->s_close);
    int failed = 0;
    if (close == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError))
            PyErr_Clear();
        else
            failed = 1;
    }
    if (close != NULL) {
        r = PyObject_CallNoArgs(close);
        Py_DECREF(close);
        failed = r == NULL;
        Py_XDECREF(r);
    }
    PyObject *type = NULL, *value = NULL, *tb = NULL;
    if (failed)
        PyErr_Fetch(&type, &value, &tb);
    if (end_span((PyObject *)self, span, self->started, "flask.response.close") < 0) {
        /* not an Exception (KeyboardInterrupt): it wins, as in a finally */
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        failed = 1;
    } else if (failed)
        PyErr_Restore(type, value, tb);
    Py_DECREF(body);
    Py_DECREF(span);
    if (failed)
        return NULL;
    Py_RETURN_NONE;
}

/* Dropped without close() (a server that skipped it): the span ends, as
 * _ClosingBody.__del__ ends it. Any exception set now is kept. */
static void
Body_finalize(PyObject *op)
{
    BodyObject *self = (BodyObject *)op;
    if (self->span == NULL || span_ended(self->span))
        return;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *span = Py_NewRef(self->span);
    if (end_span(op, span, self->started, "flask.response.dropped") < 0)
        PyErr_WriteUnraisable(op);
    Py_DECREF(span);
    PyErr_Restore(type, value, tb);
}

static int
Body_traverse(BodyObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->body);
    Py_VISIT(self->span);
    Py_VISIT(self->it);
    return 0;
}

static int
Body_clear(BodyObject *self)
{
    Py_CLEAR(self->body);
    Py_CLEAR(self->span);
    Py_CLEAR(self->it);
    return 0;
}

static void
Body_dealloc(BodyObject *self)
{
    if (PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0)
        return; /* resurrected */
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Body_clear(self);
    PyObject_GC_Del(self);
    Py_DECREF(type);
}

static PyObject *
Body_get_started(BodyObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->started);
}

/* _ClosingBody's flags, for code that reads them: a plain body, read
 * without its span active. */
static PyObject *
Body_get_plain(BodyObject *Py_UNUSED(self), void *Py_UNUSED(closure))
{
    Py_RETURN_TRUE;
}

static PyObject *
Body_get_activate(BodyObject *Py_UNUSED(self), void *Py_UNUSED(closure))
{
    Py_RETURN_FALSE;
}

static PyMethodDef Body_methods[] = {
    {"close", (PyCFunction)Body_close, METH_NOARGS, "Close the app's body, then end the request span."},
    {NULL},
};

static PyMemberDef Body_members[] = {
    {"_body", T_OBJECT, offsetof(BodyObject, body), READONLY, NULL},
    {"_span", T_OBJECT, offsetof(BodyObject, span), READONLY, NULL},
    {NULL},
};

static PyGetSetDef Body_getset[] = {
    {"started", (getter)Body_get_started, NULL, "Whether the server took the body's iterator.", NULL},
    {"_plain", (getter)Body_get_plain, NULL, NULL, NULL},
    {"_activate", (getter)Body_get_activate, NULL, NULL, NULL},
    {NULL},
};

static PyType_Slot Body_slots[] = {
    {Py_tp_doc, "ClosingBody(body, span): a plain response body whose end, close() or drop ends the span."},
    {Py_tp_new, Body_new},
    {Py_tp_iter, Body_iter},
    {Py_tp_iternext, Body_next},
    {Py_tp_finalize, Body_finalize},
    {Py_tp_traverse, Body_traverse},
    {Py_tp_clear, Body_clear},
    {Py_tp_dealloc, Body_dealloc},
    {Py_tp_methods, Body_methods},
    {Py_tp_members, Body_members},
    {Py_tp_getset, Body_getset},
    {0, NULL},
};

PyType_Spec _cspan_Body_spec = {
    .name = "tracer._cspan.ClosingBody",
    .basicsize = sizeof(BodyObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_FINALIZE,
    .slots = Body_slots,
};
