/* Private to tracer._cspan, whose C code is in ten units compiled into the
 * one extension module (setup.py):
 *   _cspan.c        module state and init, configure(), starting spans
 *                   (trace_root, the new span both starts build);
 *   _cspan_span.c   SpanBase: set_tag, set_metric, __enter__, __exit__,
 *                   finish, and appending a finished span to its trace;
 *   _cspan_trace.c  TraceBase, Counter and the lone-root finish;
 *   _cspan_method.c starting a child span (trace_child) and TraceMethod:
 *                   Tracer.trace as a C method descriptor;
 *   _cspan_with.c   SpanBase.__enter__ and __exit__ as descriptors whose
 *                   binding is cheaper than a builtin method's;
 *   _cspan_ids.c    span ids: random.getrandbits(64) drawn in place;
 *   _cspan_call.c   TracedCall: a function called in a child span;
 *   _cspan_queue.c  WriterQueue: the writer's pending queue, pushed to by
 *                   a finished trace's hand-over;
 *   _cspan_body.c   ClosingBody: contrib/flask's wrapper of a plain response
 *                   body whose span is a C span;
 *   _cspan_flask.c  EnsureSync, StartResponse and Respond: contrib/flask's
 *                   Flask.ensure_sync, RequestState.start_response and
 *                   RequestState.respond, their common case.
 * What they share is declared here: the structs, the process-wide globals
 * set by exec_module and configure() (defined in _cspan.c), the small field
 * helpers of the hot path (static inline, so that they stay inlined), and
 * the functions one unit calls in another (prefixed _cspan_). */
#ifndef TRACER_CSPAN_H
#define TRACER_CSPAN_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

/* What the units share stays inside the extension module (PyInit_ is
 * exported by PyMODINIT_FUNC itself), and links as a static would. */
#if defined(__GNUC__)
#pragma GCC visibility push(hidden)
#endif

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
    /* The state of the server request this span is the root of, while that
     * request runs (contrib/flask's RequestState: request_state in
     * contrib/flask/_request.py); None elsewhere. T_OBJECT_EX as the other
     * fields, so that Python's attribute access specializes for it. */
    PyObject *_request;
    /* C only: the tracer._cspan module, on a root span built by trace_root
     * (its state serves finish_lone_root); NULL elsewhere. */
    PyObject *_cmodule;
    /* C only: the ContextVar token of a child's activation, while its old
     * value was _prev (token_prev, kept alive by the token): the restore at
     * its end is then a reset, which makes no new token. */
    PyObject *_token;
    PyObject *_token_prev;
    /* C only: _mono as a C value while has_mono_ns (a span started in C:
     * no int made unless Python reads span._mono; setting it from Python
     * stores the object in _mono instead, read as before). */
    long long mono_ns;
    int has_mono_ns;
    /* C only: the clock _mark_end() read, while has_end_mono: an end with
     * no time given (finish(), __exit__) ends the span then. */
    long long end_mono_ns;
    int has_end_mono;
} SpanObject;

/* Per-module state, object references only (see module_traverse): what
 * finish_lone_root reads beyond the interned names below (tracer.buffer's
 * _Trace.peeks, TraceBuffer._live and .sink, the sink's write, and
 * itertools.count, the type of _Trace.starts). */
typedef struct {
    PyObject *s_peeks, *s_live, *s_sink, *s_write;
    PyObject *count_type;              /* itertools.count */
    PyObject *trace_base;              /* TraceBase */
    PyObject *counter;                 /* Counter */
    PyObject *finished_span;           /* tracer.span.FinishedSpan, read at the first root view */
    PyObject *s__cqueue, *s_enabled;   /* the sink's (Tracer's) _cqueue and enabled */
    PyObject *s_close;                 /* ClosingBody: the body's close */
    PyObject *internal_error;          /* ClosingBody: tracer._errors.internal_error, at its first error */
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
    /* C only (no member): the clocks' bases as C values for the exact ints
     * seen_wall and seen_mono they were read from (held, so that finding the
     * same objects in wall_base and mono_base means the same values): a
     * child's start without converting two ints (see base_clocks). */
    PyObject *seen_wall, *seen_mono;
    /* C only: buffer.partial_flush_len as a C value, read once per trace
     * (at the first finish that compares it) from seen_buffer, held: a
     * later change of the buffer's length applies to the traces that have
     * not read it yet; a replaced trace.buffer is read again. */
    PyObject *seen_buffer;
    long long wall_ns, mono_ns;
    Py_ssize_t flush_len;
} TraceObject;

/* The object fields (traversed and cleared as an array): up to wall_ns. */
#define TRACE_NFIELDS ((Py_ssize_t)((offsetof(TraceObject, wall_ns) - offsetof(TraceObject, trace_id)) / sizeof(PyObject *)))
#define TRACE_FIELDS(t) (&((TraceObject *)(t))->trace_id)

/* The globals below keep their short names in the code and link as
 * _cspan_<name> (not static: every unit reads them). */
#define span_cls _cspan_span_cls
#define active_var _cspan_active_var
#define not_activated _cspan_not_activated
#define getrandbits _cspan_getrandbits
#define s_foreign _cspan_s_foreign
#define s_root_done _cspan_s_root_done
#define s_starts _cspan_s_starts
#define s_finishes _cspan_s_finishes
#define s_finished _cspan_s_finished
#define s_root _cspan_s_root
#define s_trace_id _cspan_s_trace_id
#define s_buffer _cspan_s_buffer
#define s_partial_flush_len _cspan_s_partial_flush_len
#define s__flush _cspan_s__flush
#define s_start_span_late _cspan_s_start_span_late
#define s_wall_base _cspan_s_wall_base
#define s_mono_base _cspan_s_mono_base
#define s_set_exc_info _cspan_s_set_exc_info
#define s__set_tag_slow _cspan_s__set_tag_slow
#define s__set_metric_slow _cspan_s__set_metric_slow
#define s__finish_slow _cspan_s__finish_slow
#define s_top_level _cspan_s_top_level
#define s_status_code _cspan_s_status_code
#define int_0 _cspan_int_0
#define int_1 _cspan_int_1
#define int_64 _cspan_int_64

/* Set once by configure(): the Python Span class (a subclass of SpanBase),
 * the active-span ContextVar, the "not activated" sentinel and
 * random.getrandbits. */
extern PyTypeObject *span_cls;
extern PyObject *active_var;
extern PyObject *not_activated;
extern PyObject *getrandbits;

extern PyObject *s_foreign, *s_root_done, *s_starts, *s_finishes, *s_finished, *s_root, *s_trace_id,
    *s_buffer, *s_partial_flush_len, *s__flush, *s_start_span_late, *s_wall_base, *s_mono_base,
    *s_set_exc_info, *s__set_tag_slow, *s__set_metric_slow, *s__finish_slow, *s_top_level, *s_status_code;
extern PyObject *int_0, *int_1, *int_64;

extern PyTypeObject _cspan_SpanBase_Type;
extern PyType_Spec _cspan_Trace_spec, _cspan_Counter_spec;

void _cspan_Trace_dealloc(PyObject *self);

/* Built on TraceBase: tracer._tracer's _RootTrace (a subclass adding no field). */
static inline int
is_c_trace(PyObject *trace)
{
    for (PyTypeObject *type = Py_TYPE(trace); type != NULL; type = type->tp_base)
        if (type->tp_dealloc == _cspan_Trace_dealloc)
            return 1;
    return 0;
}

/* A field of a trace, as a new reference: from the struct where the trace is
 * built on TraceBase and the field is set, else by attribute (a _Trace built
 * in Python; the attribute's error for a deleted field). */
static inline PyObject *
trace_get(PyObject *trace, PyObject *name, size_t offset)
{
    if (is_c_trace(trace)) {
        PyObject *value = *(PyObject **)((char *)trace + offset);
        if (value != NULL)
            return Py_NewRef(value);
    }
    return PyObject_GetAttr(trace, name);
}

static inline int
trace_set(PyObject *trace, PyObject *name, size_t offset, PyObject *value)
{
    if (!is_c_trace(trace))
        return PyObject_SetAttr(trace, name, value);
    Py_XSETREF(*(PyObject **)((char *)trace + offset), Py_NewRef(value));
    return 0;
}

#define TRACE_GET(trace, field) trace_get((trace), s_##field, offsetof(TraceObject, field))
#define TRACE_SET(trace, field, value) trace_set((trace), s_##field, offsetof(TraceObject, field), (value))

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

/* PyLong_AsLongLong, cheaper for the clocks' multi-digit ints: on 3.11 and
 * 3.12 PyLong_AsLongLong converts any int of more than one digit through
 * _PyLong_AsByteArray (≈ 300 instructions; three per child span), while
 * the ...AndOverflow variant loops over its two or three digits. */
static inline long long
as_long_long(PyObject *value)
{
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow) {
        PyErr_SetString(PyExc_OverflowError, "Python int too large to convert to C long long");
        return -1;
    }
    return x;
}

#define RECORD_LEN 12

/* The span's record, borrowed: tracer.span.RECORD_FIELDS, in wire order
 * (fields the caller checked; `service` and `metrics` are the ones it owns). */
static inline void
span_record(SpanObject *self, PyObject *trace_id, PyObject *service, PyObject *metrics, PyObject **out)
{
    PyObject *record[RECORD_LEN] = {trace_id,          self->span_id, self->parent_id, service,
                                    self->name,        self->resource, self->span_type, self->start_ns,
                                    self->duration_ns, self->error,    self->meta,      metrics};
    memcpy(out, record, sizeof(record));
}

/* The active span becomes `span`. */
static inline int
set_active(PyObject *span)
{
    PyObject *token = PyContextVar_Set(active_var, span);
    if (token == NULL)
        return -1;
    Py_DECREF(token);
    return 0;
}

int _cspan_counter_take(PyObject *counter, Py_ssize_t *n); /* _cspan_trace.c */

/* next(getattr(trace, name)): trace.starts or trace.finishes. A Counter
 * gives its value in *n and *value is NULL (no int made); another iterator
 * (itertools.count of a trace built in Python) gives *value. -1 on error. */
static inline int
take_count(PyObject *trace, PyObject *name, size_t offset, Py_ssize_t *n, PyObject **value)
{
    PyObject *counter = trace_get(trace, name, offset);
    *value = NULL;
    *n = -1; /* (not a Counter: *value holds the count) */
    if (counter == NULL)
        return -1;
    int rc = _cspan_counter_take(counter, n);
    if (rc == 0) {
        *value = PyIter_Next(counter);
        rc = *value != NULL ? 1 : -1;
        if (*value == NULL && !PyErr_Occurred())
            PyErr_Format(PyExc_RuntimeError, "trace.%U ended", name);
    }
    Py_DECREF(counter);
    return rc < 0 ? -1 : 0;
}

/* _cspan.c */
SpanObject *_cspan_new_span(PyObject *trace, PyObject *trace_id, PyObject *parent_id, PyObject *parent,
                            PyObject *name, PyObject *service, PyObject *resource, PyObject *span_type,
                            long long mono, long long start_ns, PyObject *prev);
int _cspan_count_start(PyObject *trace);

/* _cspan_method.c */
PyObject *_cspan_trace_child(PyObject *name, PyObject *service, PyObject *resource, PyObject *span_type,
                             int *active);

/* _cspan_span.c */
int _cspan_span_finish(SpanObject *self);
int _cspan_bind_args(const char *fn, const char *const *names, Py_ssize_t n, Py_ssize_t required,
                     PyObject *const *args, size_t nargsf, PyObject *kwnames, PyObject **out);

/* The arguments bound as _cspan_bind_args binds them, with its common case
 * inlined: all positional (≈ 30 instructions less a call). The caller's
 * array itself when every parameter was passed, else `out`; NULL on error. */
static inline PyObject *const *
bind_args(const char *fn, const char *const *names, Py_ssize_t n, Py_ssize_t required, PyObject *const *args,
          size_t nargsf, PyObject *kwnames, PyObject **out)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (kwnames == NULL && nargs >= required && nargs <= n) {
        if (nargs == n)
            return args;
        for (Py_ssize_t i = 0; i < n; i++)
            out[i] = i < nargs ? args[i] : NULL;
        return out;
    }
    return _cspan_bind_args(fn, names, n, required, args, nargsf, kwnames, out) < 0 ? NULL : out;
}

extern PyTypeObject _cspan_TraceMethod_Type;
PyObject *_cspan_bind_method(PyObject *self, PyObject *obj, PyObject *type);
PyObject *_cspan_span_exit(PyObject *span, PyObject *const *args, size_t nargsf, PyObject *kwnames);

/* _cspan_call.c */
extern PyTypeObject _cspan_TracedCall_Type;

/* _cspan_queue.c */
extern PyTypeObject _cspan_WriterQueue_Type;
int _cspan_queue_handover(ModuleState *st, PyObject *sink, PyObject *trace, PyObject *chunk);

/* _cspan_body.c */
extern PyType_Spec _cspan_Body_spec;
PyObject *_cspan_closing_body(PyTypeObject *type, PyObject *body, PyObject *span);

/* _cspan_flask.c: interns its names and adds EnsureSync, StartResponse and
 * Respond to the module `m` (exec_module); -1 with an error. */
int _cspan_flask_exec(PyObject *m);

/* The modules' exec functions: `var` = the interned `text`, or return -1. */
#define INTERN(var, text)                                 \
    if ((var = PyUnicode_InternFromString(text)) == NULL) \
        return -1;

/* _cspan_ids.c */
PyObject *_cspan_random_id(void);
int _cspan_ids_configure(PyObject *getrandbits);
PyObject *_cspan_ids_in_place(PyObject *module, PyObject *ignored);

/* _cspan_with.c */
int _cspan_add_with_methods(PyTypeObject *span_base);

/* _cspan_trace.c */
PyObject *_cspan_new_counter(PyObject *counter_type);
int _cspan_finish_lone_root_owned(SpanObject *self, ModuleState *st, PyObject *trace, PyObject *metrics,
                                  PyObject *service);
int _cspan_flush_root_owned(SpanObject *root, ModuleState *st, PyObject *trace, Py_ssize_t nth);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#endif
