/* tracer._cspan's TraceBase (see _cspan.h) and the lone-root finish. */
#include "_cspan.h"

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

void
_cspan_Trace_dealloc(PyObject *self)
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
    {Py_tp_dealloc, _cspan_Trace_dealloc},
    {Py_tp_members, Trace_members},
    {Py_tp_new, PyType_GenericNew},
    {0, NULL},
};


PyType_Spec _cspan_Trace_spec = {
    .name = "tracer._cspan.TraceBase",
    .basicsize = sizeof(TraceObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = Trace_slots,
};

/* -- Objects the GC does not walk -----------------------------------------
 *
 * A finished trace waits in the writer's queue until the writer thread
 * takes it (up to a second): its tracked objects are walked by every young
 * collection meanwhile, promoted, and counted towards the next full one.
 * Two of them need no walking: the trace's two counts (Counter: a C integer,
 * not a container, so not tracked at all) and its first chunk list (records
 * of ints, strs and tag dicts: untracked, as a list holding no cycle; what a
 * record holds is kept alive by the list's references, which the GC counts
 * as outside references, so nothing is freed early; a cycle through a tag
 * dict is found once the chunk is sent and freed). */

/* Counter: itertools.count(1) for _Trace.starts and .finishes (what
 * tracer.buffer uses of it: next() and the repr `count(N)`), without the
 * GC header and the argument parsing of itertools.count. next() is atomic
 * under the GIL, as itertools.count's. */
typedef struct {
    PyObject_HEAD
    Py_ssize_t next;
} CounterObject;

PyObject *
_cspan_new_counter(PyObject *counter_type)
{
    CounterObject *c = PyObject_New(CounterObject, (PyTypeObject *)counter_type);
    if (c != NULL)
        c->next = 1;
    return (PyObject *)c;
}

static void
Counter_dealloc(PyObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_Free(self);
    Py_DECREF(type);
}

/* The counter's next value in *n, advanced; -1 at the end. */
static int
counter_advance(CounterObject *self, Py_ssize_t *n)
{
    if (self->next == PY_SSIZE_T_MAX) {
        PyErr_SetString(PyExc_OverflowError, "Counter overflow");
        return -1;
    }
    *n = self->next++;
    return 0;
}

static PyObject *
Counter_next(CounterObject *self)
{
    Py_ssize_t n;
    return counter_advance(self, &n) < 0 ? NULL : PyLong_FromSsize_t(n);
}

/* next(counter) without its int, for a Counter: 1 and its value in *n; 0
 * for another object; -1 at the end (as Counter_next). */
int
_cspan_counter_take(PyObject *counter, Py_ssize_t *n)
{
    if (Py_TYPE(counter)->tp_iternext != (iternextfunc)Counter_next)
        return 0;
    return counter_advance((CounterObject *)counter, n) < 0 ? -1 : 1;
}

static PyObject *
Counter_repr(CounterObject *self)
{
    return PyUnicode_FromFormat("count(%zd)", self->next);
}

static PyType_Slot Counter_slots[] = {
    {Py_tp_doc, "itertools.count(1) for a trace's starts and finishes: next() and repr() only."},
    {Py_tp_dealloc, Counter_dealloc},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, Counter_next},
    {Py_tp_repr, Counter_repr},
    {0, NULL},
};

PyType_Spec _cspan_Counter_spec = {
    .name = "tracer._cspan.Counter",
    .basicsize = sizeof(CounterObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = Counter_slots,
};

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
/* A count whose next() runs no Python code. */
static int
is_count(ModuleState *st, PyObject *count)
{
    return Py_TYPE(count) == (PyTypeObject *)st->counter || Py_TYPE(count) == (PyTypeObject *)st->count_type;
}

/* What a hand-over reads of a trace and its buffer (new references; a field
 * NULL until read). */
typedef struct {
    PyObject *foreign, *starts, *finishes, *peeks, *buffer, *live, *sink;
    Py_ssize_t npeeks;
} HandOver;

static void
handover_clear(HandOver *h)
{
    Py_CLEAR(h->foreign);
    Py_CLEAR(h->starts);
    Py_CLEAR(h->finishes);
    Py_CLEAR(h->peeks);
    Py_CLEAR(h->buffer);
    Py_CLEAR(h->live);
    Py_CLEAR(h->sink);
}

/* 1: `h` filled and the trace can be handed over here (not foreign, counts
 * whose next() runs no Python code, the live set a set); 0: the general
 * path; -1: error. */
static int
handover_read(ModuleState *st, PyObject *trace, HandOver *h)
{
    if ((h->foreign = TRACE_GET(trace, foreign)) == NULL || (h->starts = TRACE_GET(trace, starts)) == NULL ||
        (h->finishes = TRACE_GET(trace, finishes)) == NULL ||
        (h->peeks = trace_get(trace, st->s_peeks, offsetof(TraceObject, peeks))) == NULL ||
        (h->buffer = TRACE_GET(trace, buffer)) == NULL || (h->live = PyObject_GetAttr(h->buffer, st->s_live)) == NULL ||
        (h->sink = PyObject_GetAttr(h->buffer, st->s_sink)) == NULL)
        return -1;
    if (h->foreign != Py_False || !is_count(st, h->starts) || !is_count(st, h->finishes) ||
        !PyLong_CheckExact(h->peeks) || !PySet_CheckExact(h->live))
        return 0;
    h->npeeks = PyLong_AsSsize_t(h->peeks);
    return h->npeeks == -1 && PyErr_Occurred() ? -1 : 1;
}

/* _Trace.started_count(): one next() on `starts`, counted in `peeks`. How
 * many spans of the trace started here; -1 on error. */
static Py_ssize_t
handover_started(ModuleState *st, PyObject *trace, HandOver *h)
{
    PyObject *next = PyIter_Next(h->starts);
    Py_ssize_t taken = next == NULL ? -1 : PyLong_AsSsize_t(next);
    Py_XDECREF(next);
    PyObject *new_peeks = taken == -1 ? NULL : PyLong_FromSsize_t(h->npeeks + 1);
    if (new_peeks == NULL || trace_set(trace, st->s_peeks, offsetof(TraceObject, peeks), new_peeks) < 0) {
        Py_XDECREF(new_peeks);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "trace.starts is not a count");
        return -1;
    }
    Py_DECREF(new_peeks);
    return taken - (h->npeeks + 1);
}

/* The trace out of the buffer's live set, its chunk to the sink: straight
 * into the stock writer's queue where it can (_cspan_queue.c), else through
 * sink.write. */
static int
handover_send(ModuleState *st, PyObject *trace, HandOver *h, PyObject *chunk)
{
    if (PySet_Discard(h->live, trace) < 0)
        return -1;
    int queued = _cspan_queue_handover(st, h->sink, trace, chunk);
    if (queued == -2)
        return -1; /* queued; a KeyboardInterrupt or the like propagates */
    if (queued > 0)
        return queued;
    /* Not queued: sink.write decides and counts, as without the queue. An
     * Exception of the queue path (no memory) must not reach the app's
     * finish() with the trace lost uncounted. */
    if (queued < 0) {
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            return -1;
        PyErr_Clear();
    }
    PyObject *r = PyObject_CallMethodObjArgs(h->sink, st->s_write, trace, chunk, NULL);
    Py_XDECREF(r);
    return r == NULL ? -1 : 1;
}

/* trace.root becomes a tracer.span.FinishedSpan of the root's record (the
 * chunk's last, checked by its span id), untracked when none of its values
 * is tracked: what the writer reads of the root (the sampling decision, the
 * root's record) without the Span, which is then freed by reference
 * counting instead of waiting in the writer's queue in a trace <-> root
 * cycle, walked and promoted by young collections. 0 also when the view
 * does not apply (the Span stays); -1 on error. */
static int
root_view(ModuleState *st, SpanObject *root, PyObject *trace, PyObject *chunk)
{
    Py_ssize_t first = PyList_GET_SIZE(chunk) - RECORD_LEN;
    if (first < 0 || PyList_GET_ITEM(chunk, first + 1) != root->span_id)
        return 0;
    if (st->finished_span == NULL) { /* once: tracer.span imports this module */
        PyObject *module = PyImport_ImportModule("tracer.span");
        st->finished_span = module == NULL ? NULL : PyObject_GetAttrString(module, "FinishedSpan");
        Py_XDECREF(module);
        if (st->finished_span == NULL)
            return -1;
    }
    PyObject *cls = Py_NewRef(st->finished_span);
    int rc = 0;
    if (PyType_Check(cls) && PyType_IsSubtype((PyTypeObject *)cls, &PyTuple_Type)) {
        PyObject *view = ((PyTypeObject *)cls)->tp_alloc((PyTypeObject *)cls, RECORD_LEN);
        int tracked = 0;
        for (Py_ssize_t i = 0; view != NULL && i < RECORD_LEN; i++) {
            PyObject *value = PyList_GET_ITEM(chunk, first + i);
            tracked |= PyObject_GC_IsTracked(value);
            PyTuple_SET_ITEM(view, i, Py_NewRef(value));
        }
        if (view != NULL && !tracked)
            PyObject_GC_UnTrack(view); /* a record of flat values: part of no cycle */
        rc = view == NULL ? -1 : TRACE_SET(trace, root, view);
        Py_XDECREF(view);
    }
    Py_DECREF(cls);
    return rc;
}

/* After a complete trace's hand-over, the trace itself untracked when the
 * GC has nothing to find through it: a TraceBase with no other fields (no
 * __dict__, no added slots) whose values are untracked but for `buffer` (the
 * tracer's, reachable while the writer's thread runs; stop() empties the
 * queue). Then nothing the writer's queue holds for the chunk is tracked
 * (the queue is flat, no tuple per chunk: tracer/writer.py): none of it is
 * walked nor promoted while it waits (≈ 2.2 objects per Flask request
 * were). The root's record view holding a user's tracked tag value
 * keeps it tracked (that is the cycle a span referenced from its own tag
 * makes); the chunk and a late child's list are untracked records already.
 * Nothing untracked is re-tracked: fields set later (the writer's
 * priority and mechanism, a late child's counts) are ints and strs. */
static void
untrack_flat_trace(PyObject *trace)
{
    PyTypeObject *type = Py_TYPE(trace);
    if (!is_c_trace(trace) || type->tp_basicsize != (Py_ssize_t)sizeof(TraceObject) || type->tp_dictoffset != 0)
        return;
#ifdef Py_TPFLAGS_MANAGED_DICT
    if (type->tp_flags & Py_TPFLAGS_MANAGED_DICT)
        return;
#endif
    TraceObject *t = (TraceObject *)trace;
    for (Py_ssize_t i = 0; i < TRACE_NFIELDS; i++) {
        PyObject *value = TRACE_FIELDS(trace)[i];
        if (value != NULL && value != t->buffer && PyObject_GC_IsTracked(value))
            return;
    }
    PyObject_GC_UnTrack(trace);
}

int
_cspan_finish_lone_root_owned(SpanObject *self, ModuleState *st, PyObject *trace, PyObject *metrics,
                       PyObject *service)
{
    PyObject *root = NULL, *finished = NULL, *trace_id = NULL, *chunk = NULL;
    HandOver h = {0};
    int rc = -1;
    if (st == NULL || st->count_type == NULL || st->counter == NULL) /* the module's state cleared (shutdown) */
        return 0;
    /* Reads and checks first: nothing changes until every one passed. The
     * first two turn away a root with finished children (the usual trace). */
    if ((root = TRACE_GET(trace, root)) == NULL || (finished = TRACE_GET(trace, finished)) == NULL)
        goto done;
    rc = 0;
    if (root != (PyObject *)self || !PyList_CheckExact(finished) || PyList_GET_SIZE(finished) != 0)
        goto done;
    if ((trace_id = TRACE_GET(trace, trace_id)) == NULL || (rc = handover_read(st, trace, &h)) <= 0) {
        rc = trace_id == NULL ? -1 : rc;
        goto done;
    }
    rc = -1;
    PyObject *record[RECORD_LEN];
    span_record(self, trace_id, service, metrics, record);
    if ((chunk = PyList_New(RECORD_LEN)) == NULL)
        goto done;
    PyObject_GC_UnTrack(chunk); /* see "Objects the GC does not walk" */
    for (Py_ssize_t i = 0; i < RECORD_LEN; i++)
        PyList_SET_ITEM(chunk, i, Py_NewRef(record[i]));
    Py_ssize_t started = handover_started(st, trace, &h);
    if (started < 0)
        goto done;
    rc = 0;
    if (started != 1) /* other spans of the trace started here: the general path */
        goto done;
    PyObject *ordinal = PyIter_Next(h.finishes);
    if (ordinal == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "trace.finishes ended");
        rc = -1;
        goto done;
    }
    Py_DECREF(ordinal); /* only counted: the trace is complete */
    if (TRACE_SET(trace, root_done, Py_True) < 0 || root_view(st, self, trace, chunk) < 0) {
        rc = -1;
        goto done;
    }
    untrack_flat_trace(trace);
    rc = handover_send(st, trace, &h, chunk);

done:
    Py_XDECREF(root);
    Py_XDECREF(finished);
    Py_XDECREF(trace_id);
    Py_XDECREF(chunk);
    handover_clear(&h);
    return rc;
}

/* A local root finishing last in a trace with children (every traced
 * request): its record is already in `finished`, its ordinal taken and
 * root_done set by the caller. What _Trace._flush(ordinal, True) does for a
 * complete trace, without its Python call and lock: the chunk (the whole
 * `finished` list) to the sink, a new untracked list in its place (a late
 * child's chunk; a tracked one would wait in the writer's queue with the
 * trace, walked and promoted by young collections, see "Objects the GC does
 * not walk"), the trace out of the live set. 1 when done, 0 when the general
 * path must run (spans of the trace still open, a foreign trace, or the
 * chunk at the partial-flush length: another thread may be between its
 * partial flush's slice and delete, under the lock), -1 on error.
 *
 * Without the lock for the reason the lone root's finish gives: nothing here
 * runs Python code nor releases the GIL before the hand-over. The one flush
 * of the same trace that can be under way in another thread holding the
 * lock is a partial flush, which only runs with the list at its length. */
int
_cspan_flush_root_owned(SpanObject *root, ModuleState *st, PyObject *trace, Py_ssize_t nth)
{
    PyObject *finished = NULL, *limit = NULL, *fresh = NULL;
    HandOver h = {0};
    if (st == NULL || st->count_type == NULL || st->counter == NULL)
        return 0;
    int rc = handover_read(st, trace, &h);
    if (rc <= 0)
        goto done;
    rc = -1;
    if ((finished = TRACE_GET(trace, finished)) == NULL ||
        (limit = PyObject_GetAttr(h.buffer, s_partial_flush_len)) == NULL)
        goto done;
    Py_ssize_t max_len = PyLong_AsSsize_t(limit);
    if (max_len == -1 && PyErr_Occurred())
        goto done;
    rc = 0;
    /* Spans still open: the general path, the trace untouched (a Counter's
     * count read in place; started_count() advances it). */
    if (!PyList_CheckExact(finished) || PyList_GET_SIZE(finished) == 0 || PyList_GET_SIZE(finished) >= max_len ||
        Py_TYPE(h.starts) != (PyTypeObject *)st->counter ||
        nth < ((CounterObject *)h.starts)->next - 1 - h.npeeks)
        goto done;
    rc = -1;
    if (handover_started(st, trace, &h) < 0) /* as _flush leaves `peeks` */
        goto done;
    if ((fresh = PyList_New(0)) == NULL)
        goto done;
    PyObject_GC_UnTrack(fresh);
    PyObject_GC_UnTrack(finished); /* records only, referenced by nothing but the sink from now on */
    if (TRACE_SET(trace, finished, fresh) < 0 || root_view(st, root, trace, finished) < 0)
        goto done;
    untrack_flat_trace(trace);
    rc = handover_send(st, trace, &h, finished);

done:
    Py_XDECREF(finished);
    Py_XDECREF(limit);
    Py_XDECREF(fresh);
    handover_clear(&h);
    return rc;
}
