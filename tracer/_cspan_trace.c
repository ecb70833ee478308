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
int
_cspan_finish_lone_root_owned(SpanObject *self, ModuleState *st, PyObject *trace, PyObject *metrics,
                       PyObject *service)
{
    PyObject *root = NULL, *foreign = NULL, *finished = NULL, *starts = NULL, *finishes = NULL,
             *peeks = NULL, *trace_id = NULL, *buffer = NULL, *live = NULL, *sink = NULL, *chunk = NULL;
    int rc = -1;
    if (st == NULL || st->count_type == NULL) /* the module's state cleared (interpreter shutdown) */
        return 0;
    /* Reads and checks first: nothing changes until every one passed. The
     * first two turn away a root with finished children (the usual trace). */
    if ((root = TRACE_GET(trace, root)) == NULL || (finished = TRACE_GET(trace, finished)) == NULL)
        goto done;
    rc = 0;
    if (root != (PyObject *)self || !PyList_CheckExact(finished) || PyList_GET_SIZE(finished) != 0)
        goto done;
    rc = -1;
    if ((foreign = TRACE_GET(trace, foreign)) == NULL || (starts = TRACE_GET(trace, starts)) == NULL ||
        (finishes = TRACE_GET(trace, finishes)) == NULL ||
        (peeks = trace_get(trace, st->s_peeks, offsetof(TraceObject, peeks))) == NULL ||
        (trace_id = TRACE_GET(trace, trace_id)) == NULL || (buffer = TRACE_GET(trace, buffer)) == NULL ||
        (live = PyObject_GetAttr(buffer, st->s_live)) == NULL || (sink = PyObject_GetAttr(buffer, st->s_sink)) == NULL)
        goto done;
    rc = 0;
    if (foreign != Py_False || Py_TYPE(starts) != (PyTypeObject *)st->count_type ||
        Py_TYPE(finishes) != (PyTypeObject *)st->count_type || !PyLong_CheckExact(peeks) || !PySet_CheckExact(live))
        goto done;
    Py_ssize_t npeeks = PyLong_AsSsize_t(peeks);
    if (npeeks == -1 && PyErr_Occurred()) {
        rc = -1;
        goto done;
    }
    PyObject *record[RECORD_LEN];
    span_record(self, trace_id, service, metrics, record);
    if ((chunk = PyList_New(RECORD_LEN)) == NULL) {
        rc = -1;
        goto done;
    }
    for (Py_ssize_t i = 0; i < RECORD_LEN; i++)
        PyList_SET_ITEM(chunk, i, Py_NewRef(record[i]));
    /* _Trace.started_count(): one next() on `starts`, counted in `peeks`. */
    PyObject *next = PyIter_Next(starts);
    Py_ssize_t taken = next == NULL ? -1 : PyLong_AsSsize_t(next);
    Py_XDECREF(next);
    PyObject *new_peeks = taken == -1 ? NULL : PyLong_FromSsize_t(npeeks + 1);
    if (new_peeks == NULL || trace_set(trace, st->s_peeks, offsetof(TraceObject, peeks), new_peeks) < 0) {
        Py_XDECREF(new_peeks);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "trace.starts is not a count");
        rc = -1;
        goto done;
    }
    Py_DECREF(new_peeks);
    if (taken - (npeeks + 1) != 1) /* other spans of the trace started here: the general path */
        goto done;
    PyObject *ordinal = PyIter_Next(finishes);
    if (ordinal == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "trace.finishes ended");
        rc = -1;
        goto done;
    }
    Py_DECREF(ordinal); /* only counted: the trace is complete */
    if (TRACE_SET(trace, root_done, Py_True) < 0 || PySet_Discard(live, trace) < 0) {
        rc = -1;
        goto done;
    }
    PyObject *r = PyObject_CallMethodObjArgs(sink, st->s_write, trace, chunk, NULL);
    Py_XDECREF(r);
    rc = r == NULL ? -1 : 1;

done:
    Py_XDECREF(root);
    Py_XDECREF(foreign);
    Py_XDECREF(finished);
    Py_XDECREF(starts);
    Py_XDECREF(finishes);
    Py_XDECREF(peeks);
    Py_XDECREF(trace_id);
    Py_XDECREF(buffer);
    Py_XDECREF(live);
    Py_XDECREF(sink);
    Py_XDECREF(chunk);
    return rc;
}
