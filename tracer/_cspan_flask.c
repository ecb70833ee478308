/* contrib/flask's three per-call methods in C, for their common case:
 *
 *   EnsureSync(fallback, state_type)     Flask.ensure_sync
 *   StartResponse(fallback, state_type)  RequestState.start_response
 *   Respond(fallback, state_type, closing_iterator, iter_encoded, closing_body)
 *                                        RequestState.respond
 *
 * `state_type` is contrib.flask._request.RequestState; the slots of it read
 * here are found by name once, at construction, and read by offset. Each
 * answers its common case without a Python frame and calls `fallback` (the
 * Python function it was made from) with the same arguments for everything
 * else, before changing anything: the Python code decides and reports as
 * without the C code.
 *
 * EnsureSync: Flask calls `self.ensure_sync(func)` before every user
 * function (each before/after/teardown hook, the view, error handlers):
 * three times a request in the usual app. Inside a request whose root span
 * is the active span, that span holds the request's state (`_request`),
 * whose `traced` dict maps the endpoint's functions to their traced
 * versions: looked up here (≈ 0.9 k instructions a call less). Not here: no
 * active span, a span the app left active, the URL rule not matched yet (the
 * request's first call), a function not traced yet, an error.
 *
 * StartResponse: the `start_response` Flask gets (bound to the request's
 * state, as a function would be): once the rule is matched, a status that is
 * not a 5xx, a matched route, exact str headers and values within the
 * limits, it records the status code and the response-header tags on the
 * root span and calls the server's. Not here: an `exc_info`, a 5xx (the
 * exception to record), no route (the "404" resource), anything unusual.
 *
 * Respond: Flask returned a plain body, Werkzeug's ClosingIterator
 * (`closing_iterator`) over a list or tuple, or over Response.iter_encoded's
 * generator (code `iter_encoded`) of a response holding one bytes chunk or
 * none: the request's state leaves its span, the server's context is given
 * back, and the body is wrapped in `closing_body` (ClosingBody). Not here:
 * any other body (a generator of the app's, a file, another Werkzeug).
 *
 * Method descriptors (Py_TPFLAGS_METHOD_DESCRIPTOR: `app.ensure_sync(func)`
 * makes no bound method) with a __dict__, so that tracer._patching's
 * functools.update_wrapper gives EnsureSync the original's name, qualname,
 * doc and __wrapped__, and its own marker. */
#include "_cspan.h"

/* The slots of RequestState read here. */
enum { SLOT_TRACED, SLOT_SPAN, SLOT_MATCHED, SLOT_HEADERS, SLOT_START_RESPONSE, SLOT_ENTRY, N_SLOTS };
static const char *const slot_names[N_SLOTS] = {"traced", "span", "matched", "headers", "_start_response", "entry"};
/* The slots each type reads, by bit. */
#define ENSURE_SYNC_SLOTS (1 << SLOT_TRACED)
#define START_RESPONSE_SLOTS ((1 << SLOT_SPAN) | (1 << SLOT_MATCHED) | (1 << SLOT_HEADERS) | (1 << SLOT_START_RESPONSE))
#define RESPOND_SLOTS ((1 << SLOT_SPAN) | (1 << SLOT_ENTRY))

typedef struct {
    PyObject_HEAD
    PyObject *fallback;   /* the Python function */
    PyObject *state_type; /* contrib.flask._request.RequestState */
    Py_ssize_t offsets[N_SLOTS];
    /* Respond only: Werkzeug's ClosingIterator, the code of Response's
     * _iter_encoded, and ClosingBody; NULL elsewhere. */
    PyObject *closing_iterator, *iter_encoded, *closing_body;
    PyObject *dict;
    vectorcallfunc vectorcall;
} MethodObject;

/* A slot of an instance of state_type (checked by the caller), or NULL. */
#define SLOT(self, state, i) (*(PyObject **)((char *)(state) + (self)->offsets[i]))

/* Interned, and the objects Respond compares with, at import (_cspan_flask_exec). */
static PyObject *s_route, *s_lower, *s_response, *s__next, *s_func, *s_args, *s_gi_code, *s__callbacks, *s_self;
static PyObject *partial_type, *builtin_next;

static PyTypeObject EnsureSync_Type, StartResponse_Type, Respond_Type; /* defined at the end */

/* -- EnsureSync ---------------------------------------------------------------- */

/* The traced version of `func` in the active span's request state, as a
 * new reference; NULL (no error set) when the fallback is to decide. */
static PyObject *
traced_of(MethodObject *self, PyObject *func)
{
    PyObject *span, *found = NULL;
    if (span_cls == NULL || PyContextVar_Get(active_var, NULL, &span) < 0) {
        PyErr_Clear();
        return NULL;
    }
    if (span == NULL)
        return NULL;
    if (Py_TYPE(span) == span_cls) {
        PyObject *state = ((SpanObject *)span)->_request;
        if (state != NULL && (PyObject *)Py_TYPE(state) == self->state_type) {
            PyObject *traced = SLOT(self, state, SLOT_TRACED);
            if (traced != NULL && PyDict_CheckExact(traced)) {
                /* Held: hashing `func` may run Python code (a callable
                 * object's __hash__), which may end the request meanwhile. */
                Py_INCREF(traced);
                found = PyDict_GetItemWithError(traced, func);
                if (found == Py_None) /* "not traced", as the Python wrapper reads it */
                    found = NULL;
                Py_XINCREF(found);
                Py_DECREF(traced);
                if (found == NULL)
                    PyErr_Clear(); /* the fallback's look-up raises it again, and reports it */
            }
        }
    }
    Py_DECREF(span);
    return found;
}

static PyObject *
call_fallback(MethodObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (self->fallback == NULL) { /* cleared by the GC */
        PyErr_SetString(PyExc_RuntimeError, "the method's fallback was cleared");
        return NULL;
    }
    /* Owned across the call: the function may replace it. */
    PyObject *fallback = Py_NewRef(self->fallback);
    PyObject *result = PyObject_Vectorcall(fallback, args, nargsf, kwnames);
    Py_DECREF(fallback);
    return result;
}

static PyObject *
EnsureSync_vectorcall(MethodObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) == 2 && kwnames == NULL) {
        PyObject *traced = traced_of(self, args[1]);
        if (traced != NULL)
            return traced;
    }
    return call_fallback(self, args, nargsf, kwnames);
}

/* -- StartResponse ------------------------------------------------------------- */

/* The response-header tags of `headers` (a list of (str, str) pairs) into
 * `meta`, by `tags` (lowercased header name -> tag). 0 done; -1 with or
 * without an error: the fallback is to do it (what was set here it sets
 * again, to the same values). */
static int
header_tags(PyObject *meta, PyObject *tags, PyObject *headers)
{
    if (!PyDict_CheckExact(tags) || !PyList_CheckExact(headers))
        return -1;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(headers); i++) {
        PyObject *pair = PyList_GET_ITEM(headers, i);
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2)
            return -1;
        PyObject *key = PyTuple_GET_ITEM(pair, 0), *value = PyTuple_GET_ITEM(pair, 1);
        if (!PyUnicode_CheckExact(key) || !PyUnicode_CheckExact(value) || PyUnicode_GET_LENGTH(value) > MAX_VALUE_LEN)
            return -1;
        /* Held (with its key and value): the look-up may run Python code
         * (a tag key's __eq__), which may change the list. */
        Py_INCREF(pair);
        PyObject *lower = PyObject_CallMethodNoArgs(key, s_lower);
        PyObject *tag = lower == NULL ? NULL : PyDict_GetItemWithError(tags, lower);
        Py_XINCREF(tag);
        Py_XDECREF(lower);
        int rc = tag == NULL ? (PyErr_Occurred() ? -1 : 0) : tag == Py_None ? 0 : PyDict_SetItem(meta, tag, value);
        Py_XDECREF(tag);
        Py_DECREF(pair);
        if (rc < 0)
            return -1;
    }
    return 0;
}

/* The common case's work (see the top of the file); 1 done, 0 (no error
 * set) for the fallback. */
static int
record_status(MethodObject *self, PyObject *state, PyObject *status, PyObject *headers)
{
    if ((PyObject *)Py_TYPE(state) != self->state_type || !PyUnicode_CheckExact(status) ||
        PyUnicode_GET_LENGTH(status) < 3 || PyUnicode_READ_CHAR(status, 0) == '5')
        return 0;
    PyObject *span = SLOT(self, state, SLOT_SPAN), *plan = SLOT(self, state, SLOT_HEADERS);
    if (span == NULL || Py_TYPE(span) != span_cls || SLOT(self, state, SLOT_MATCHED) != Py_True || plan == NULL)
        return 0;
    PyObject *meta = ((SpanObject *)span)->meta;
    if (meta == NULL || !PyDict_CheckExact(meta))
        return 0;
    /* Held: the look-ups below may run Python code (a header name's
     * lower(), hashing), which may replace the span's meta or the plan. */
    Py_INCREF(span);
    Py_INCREF(meta);
    Py_INCREF(plan);
    int done = 0;
    int routed = PyDict_Contains(meta, s_route);
    PyObject *code = routed == 1 ? PyUnicode_Substring(status, 0, 3) : NULL;
    if (code != NULL && PyDict_SetItem(meta, s_status_code, code) == 0) {
        if (plan == Py_None)
            done = 1;
        else {
            PyObject *tags = PyObject_GetAttr(plan, s_response);
            done = tags != NULL && header_tags(meta, tags, headers) == 0;
            Py_XDECREF(tags);
        }
    }
    Py_XDECREF(code);
    Py_DECREF(plan);
    Py_DECREF(meta);
    Py_DECREF(span);
    if (!done)
        PyErr_Clear(); /* the fallback does it again, and reports what fails */
    return done;
}

static PyObject *
StartResponse_vectorcall(MethodObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) == 3 && kwnames == NULL && record_status(self, args[0], args[1], args[2])) {
        PyObject *server = SLOT(self, args[0], SLOT_START_RESPONSE);
        if (server != NULL) {
            /* Owned across the call: the server's code may change the state. */
            Py_INCREF(server);
            PyObject *result = PyObject_Vectorcall(server, args + 1, 2, NULL);
            Py_DECREF(server);
            return result;
        }
    }
    return call_fallback(self, args, nargsf, kwnames);
}

/* -- Respond --------------------------------------------------------------------- */

/* 1 when `items` (a response's body) is plain: a list or tuple of one bytes
 * chunk, or empty; 0 when not (or on an error, cleared). */
static int
plain_items(PyObject *items)
{
    if (!PyList_CheckExact(items) && !PyTuple_CheckExact(items))
        return 0;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(items);
    return n == 0 || (n == 1 && PyBytes_CheckExact(PySequence_Fast_GET_ITEM(items, 0)));
}

/* 1 when `body` is a plain body (see the top of the file), 0 when not; the
 * attributes read are Werkzeug's private ones, each checked, and an error
 * reading them is a "not" (cleared). */
static int
plain_body(MethodObject *self, PyObject *body)
{
    if ((PyObject *)Py_TYPE(body) != self->closing_iterator)
        return 0;
    int plain = 0;
    PyObject *produce = PyObject_GetAttr(body, s__next), *func = NULL, *args = NULL, *code = NULL,
             *callbacks = NULL, *response = NULL, *items = NULL;
    if (produce == NULL || (PyObject *)Py_TYPE(produce) != partial_type ||
        (func = PyObject_GetAttr(produce, s_func)) == NULL || func != builtin_next ||
        (args = PyObject_GetAttr(produce, s_args)) == NULL || !PyTuple_CheckExact(args) || PyTuple_GET_SIZE(args) < 1)
        goto done;
    PyObject *iterator = PyTuple_GET_ITEM(args, 0); /* held by args */
    if (Py_IS_TYPE(iterator, &PyListIter_Type) || Py_IS_TYPE(iterator, &PyTupleIter_Type)) {
        plain = 1;
        goto done;
    }
    /* Response.iter_encoded's generator over the response's own body; the
     * response is the last callback's (its close()). */
    if (!PyGen_CheckExact(iterator) || (code = PyObject_GetAttr(iterator, s_gi_code)) == NULL ||
        code != self->iter_encoded || (callbacks = PyObject_GetAttr(body, s__callbacks)) == NULL ||
        !PyList_CheckExact(callbacks) || PyList_GET_SIZE(callbacks) < 1)
        goto done;
    /* Held: its getattr may run Python code, which may change the list. */
    PyObject *last = Py_NewRef(PyList_GET_ITEM(callbacks, PyList_GET_SIZE(callbacks) - 1));
    response = PyObject_GetAttr(last, s_self);
    Py_DECREF(last);
    if (response == NULL || (items = PyObject_GetAttr(response, s_response)) == NULL)
        goto done;
    plain = plain_items(items);
done:
    Py_XDECREF(produce);
    Py_XDECREF(func);
    Py_XDECREF(args);
    Py_XDECREF(code);
    Py_XDECREF(callbacks);
    Py_XDECREF(response);
    Py_XDECREF(items);
    PyErr_Clear();
    return plain;
}

static PyObject *
Respond_vectorcall(MethodObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) == 2 && kwnames == NULL && (PyObject *)Py_TYPE(args[0]) == self->state_type) {
        PyObject *span = SLOT(self, args[0], SLOT_SPAN), *entry = SLOT(self, args[0], SLOT_ENTRY);
        if (span != NULL && Py_TYPE(span) == span_cls && entry != NULL) {
            /* What the Python method does first, in its order: the state
             * leaves the span (no cycle is left), the server's context is
             * given back. For a body that is not plain, the fallback then
             * does both again, to the same effect. */
            span = Py_NewRef(span);
            Py_XSETREF(((SpanObject *)span)->_request, Py_NewRef(Py_None));
            PyObject *token = PyContextVar_Set(active_var, entry);
            if (token == NULL) {
                Py_DECREF(span);
                return NULL;
            }
            Py_DECREF(token);
            PyObject *wrapped = NULL;
            if (plain_body(self, args[1]))
                wrapped = _cspan_closing_body((PyTypeObject *)self->closing_body, args[1], span);
            Py_DECREF(span);
            if (wrapped != NULL || PyErr_Occurred())
                return wrapped;
        }
    }
    return call_fallback(self, args, nargsf, kwnames);
}

/* -- the types ------------------------------------------------------------------- */

/* The offset of `name`, a slot of `type`'s own holding an object; -1 with
 * a TypeError when it is not one. */
static Py_ssize_t
slot_offset(PyObject *type, const char *name)
{
    PyObject *member = PyObject_GetAttrString(type, name);
    if (member == NULL)
        return -1;
    int ok = Py_IS_TYPE(member, &PyMemberDescr_Type) &&
             ((PyMemberDescrObject *)member)->d_common.d_type == (PyTypeObject *)type &&
             (((PyMemberDescrObject *)member)->d_member->type == T_OBJECT_EX ||
              ((PyMemberDescrObject *)member)->d_member->type == T_OBJECT);
    Py_ssize_t offset = ok ? ((PyMemberDescrObject *)member)->d_member->offset : -1;
    Py_DECREF(member);
    if (!ok)
        PyErr_Format(PyExc_TypeError, "%s.%s must be a slot of its own", ((PyTypeObject *)type)->tp_name, name);
    return offset;
}

static PyObject *
Method_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *fallback, *state_type, *werkzeug[3] = {NULL, NULL, NULL};
    int respond = type == &Respond_Type;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) {
        PyErr_Format(PyExc_TypeError, "%s() takes no keyword arguments", type->tp_name);
        return NULL;
    }
    if (!PyArg_UnpackTuple(args, type->tp_name, respond ? 5 : 2, respond ? 5 : 2, &fallback, &state_type, &werkzeug[0],
                           &werkzeug[1], &werkzeug[2]))
        return NULL;
    if (!PyCallable_Check(fallback) || !PyType_Check(state_type) ||
        (respond && (!PyType_Check(werkzeug[0]) || !PyCode_Check(werkzeug[1]) || !PyType_Check(werkzeug[2])))) {
        PyErr_Format(PyExc_TypeError,
                     respond ? "%s(fallback, state_type, closing_iterator, iter_encoded, closing_body): a callable, "
                               "a class, a class, a code object and a class expected"
                             : "%s(fallback, state_type): a callable and a class expected",
                     type->tp_name);
        return NULL;
    }
    int wanted = type == &EnsureSync_Type ? ENSURE_SYNC_SLOTS : respond ? RESPOND_SLOTS : START_RESPONSE_SLOTS;
    Py_ssize_t offsets[N_SLOTS];
    for (int i = 0; i < N_SLOTS; i++) {
        offsets[i] = 0;
        if ((wanted & (1 << i)) && (offsets[i] = slot_offset(state_type, slot_names[i])) < 0)
            return NULL;
    }
    MethodObject *self = (MethodObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->fallback = Py_NewRef(fallback);
    self->state_type = Py_NewRef(state_type);
    memcpy(self->offsets, offsets, sizeof(offsets));
    self->closing_iterator = Py_XNewRef(werkzeug[0]);
    self->iter_encoded = Py_XNewRef(werkzeug[1]);
    self->closing_body = Py_XNewRef(werkzeug[2]);
    self->vectorcall = (vectorcallfunc)(type == &EnsureSync_Type ? EnsureSync_vectorcall
                                        : respond                         ? Respond_vectorcall
                                                                          : StartResponse_vectorcall);
    return (PyObject *)self;
}

static int
Method_traverse(MethodObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->fallback);
    Py_VISIT(self->state_type);
    Py_VISIT(self->closing_iterator);
    Py_VISIT(self->iter_encoded);
    Py_VISIT(self->closing_body);
    Py_VISIT(self->dict);
    return 0;
}

static int
Method_clear(MethodObject *self)
{
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->state_type);
    Py_CLEAR(self->closing_iterator);
    Py_CLEAR(self->iter_encoded);
    Py_CLEAR(self->closing_body);
    Py_CLEAR(self->dict);
    return 0;
}

static void
Method_dealloc(MethodObject *self)
{
    PyObject_GC_UnTrack(self);
    Method_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef Method_members[] = {
    {"fallback", T_OBJECT, offsetof(MethodObject, fallback), READONLY, "the Python function that does what is not done here"},
    {NULL},
};

static PyGetSetDef Method_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL},
};

#define METHOD_TYPE(c_name, py_name, doc)                                                                        \
    static PyTypeObject c_name = {                                                                                      \
        PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tracer._cspan." py_name,                                       \
        .tp_basicsize = sizeof(MethodObject),                                                                     \
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_METHOD_DESCRIPTOR | Py_TPFLAGS_HAVE_VECTORCALL, \
        .tp_doc = doc,                                                                                            \
        .tp_vectorcall_offset = offsetof(MethodObject, vectorcall),                                               \
        .tp_dictoffset = offsetof(MethodObject, dict),                                                            \
        .tp_call = PyVectorcall_Call,                                                                              \
        .tp_descr_get = _cspan_bind_method,                                                                               \
        .tp_traverse = (traverseproc)Method_traverse,                                                             \
        .tp_clear = (inquiry)Method_clear,                                                                        \
        .tp_dealloc = (destructor)Method_dealloc,                                                                 \
        .tp_members = Method_members,                                                                             \
        .tp_getset = Method_getset,                                                                               \
        .tp_new = Method_new,                                                                                     \
    }

METHOD_TYPE(EnsureSync_Type, "EnsureSync",
            "EnsureSync(fallback, state_type): Flask.ensure_sync, the active request's traced functions looked "
            "up in C, the rest by fallback.");
METHOD_TYPE(StartResponse_Type, "StartResponse",
            "StartResponse(fallback, state_type): RequestState.start_response, its common case in C, the rest "
            "by fallback.");
METHOD_TYPE(Respond_Type, "Respond",
            "Respond(fallback, state_type, closing_iterator, iter_encoded, closing_body): RequestState.respond, a "
            "plain Werkzeug body wrapped in C, the rest by fallback.");

int
_cspan_flask_exec(PyObject *m)
{
    INTERN(s_route, "http.route");
    INTERN(s_lower, "lower");
    INTERN(s_response, "response");
    INTERN(s__next, "_next");
    INTERN(s_func, "func");
    INTERN(s_args, "args");
    INTERN(s_gi_code, "gi_code");
    INTERN(s__callbacks, "_callbacks");
    INTERN(s_self, "__self__");
    PyObject *functools = PyImport_ImportModule("functools"), *builtins = PyImport_ImportModule("builtins");
    Py_XSETREF(partial_type, functools == NULL ? NULL : PyObject_GetAttrString(functools, "partial"));
    Py_XSETREF(builtin_next, builtins == NULL ? NULL : PyObject_GetAttrString(builtins, "next"));
    Py_XDECREF(functools);
    Py_XDECREF(builtins);
    if (partial_type == NULL || builtin_next == NULL)
        return -1;
    if (PyType_Ready(&EnsureSync_Type) < 0 || PyModule_AddObjectRef(m, "EnsureSync", (PyObject *)&EnsureSync_Type) < 0 ||
        PyType_Ready(&StartResponse_Type) < 0 ||
        PyModule_AddObjectRef(m, "StartResponse", (PyObject *)&StartResponse_Type) < 0 ||
        PyType_Ready(&Respond_Type) < 0 || PyModule_AddObjectRef(m, "Respond", (PyObject *)&Respond_Type) < 0)
        return -1;
    return 0;
}
