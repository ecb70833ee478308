/* WriterQueue: the pending queue of tracer.writer's AgentWriter in C, so
 * that a finished trace's hand-over (_cspan_trace.c) queues its chunk
 * without the two Python frames of Tracer.write and AgentWriter.write and
 * without the writer's lock.
 *
 *   WriterQueue(limit, batch)
 *
 * `items` is the flat queue (trace, chunk, trace, chunk, ...); `spans` the
 * spans it holds, `seq` the chunks ever accepted (tracer.writer: flush()
 * waits for a seq). Every change is one C call that runs no Python code
 * between its check and its appends, so it is atomic under the GIL: a push
 * from the hand-over needs no lock against the writer's Python code, whose
 * own pushes and take() are single calls too.
 *
 *   push(trace, chunk)  the chunk queued if it fits the limit (a quarter of
 *                       it while `down`): True when the writer thread is to
 *                       be woken (the batch threshold crossed since the last
 *                       take, not `down`), False when not; None when it did
 *                       not fit (nothing changed).
 *   take()              (items, seq before the first): the queue emptied.
 *   reset()             empty, counts 0, flags cleared (a forked child).
 *
 * The hand-over pushes only while `started` and not `stopped`, and calls
 * `wake` (the writer's Event.set) when told to; anything else (the first
 * chunk, a full queue, a stopped writer, a writer or tracer of another
 * kind) goes to the sink's Python write, which counts drops as before. */
#include "_cspan.h"

typedef struct {
    PyObject_HEAD
    PyObject *items; /* a list: trace, chunk, ... */
    PyObject *wake;  /* called with no arguments (the hand-over) when a push says so; None: not */
    Py_ssize_t spans, seq, limit, batch;
    char down, started, stopped, signalled;
} QueueObject;

static PyObject *
Queue_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"limit", "batch", NULL};
    Py_ssize_t limit, batch;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "nn:WriterQueue", names, &limit, &batch))
        return NULL;
    if (limit < 0 || batch < 0) {
        PyErr_SetString(PyExc_ValueError, "WriterQueue: limit and batch must be >= 0");
        return NULL;
    }
    QueueObject *self = (QueueObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->limit = limit;
    self->batch = batch;
    self->wake = Py_NewRef(Py_None);
    if ((self->items = PyList_New(0)) == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

/* 1 queued, 2 queued and the writer to be woken, 0 no room; -1 on error
 * (nothing queued). No Python code runs: list appends of untouched objects. */
static int
queue_push(QueueObject *self, PyObject *trace, PyObject *chunk, Py_ssize_t n)
{
    if (self->items == NULL) { /* cleared by the GC */
        PyErr_SetString(PyExc_RuntimeError, "WriterQueue cleared");
        return -1;
    }
    Py_ssize_t limit = self->down ? self->limit >> 2 : self->limit;
    if (self->spans + n > limit)
        return 0;
    Py_ssize_t len = PyList_GET_SIZE(self->items);
    if (PyList_Append(self->items, trace) < 0)
        return -1;
    if (PyList_Append(self->items, chunk) < 0) {
        PyList_SetSlice(self->items, len, PyList_GET_SIZE(self->items), NULL);
        return -1;
    }
    self->spans += n;
    self->seq += 1;
    if (self->spans < self->batch || self->down || self->signalled)
        return 1;
    self->signalled = 1;
    return 2;
}

static PyObject *
Queue_push(QueueObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "push() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    Py_ssize_t len = PyObject_Size(args[1]); /* a chunk of span records (tracer.buffer) */
    int rc = len < 0 ? -1 : queue_push(self, args[0], args[1], len / RECORD_LEN);
    if (rc < 0)
        return NULL;
    if (rc == 0)
        Py_RETURN_NONE;
    return PyBool_FromLong(rc == 2);
}

static PyObject *
Queue_take(QueueObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->items == NULL)
        return PyErr_Format(PyExc_RuntimeError, "WriterQueue cleared");
    /* Everything that can fail first: a failure leaves the queue as it was. */
    PyObject *fresh = PyList_New(0);
    PyObject *before = fresh == NULL ? NULL : PyLong_FromSsize_t(self->seq - PyList_GET_SIZE(self->items) / 2);
    PyObject *result = before == NULL ? NULL : PyTuple_New(2);
    if (result == NULL) {
        Py_XDECREF(fresh);
        Py_XDECREF(before);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, self->items); /* the queue's reference moves to the result */
    PyTuple_SET_ITEM(result, 1, before);
    self->items = fresh;
    self->spans = 0;
    self->signalled = 0;
    return result;
}

static PyObject *
Queue_reset(QueueObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL)
        return NULL;
    /* The counts and the new list first, the old list freed last: freeing it
     * may run finalizers (and switch threads) while the queue is consistent. */
    PyObject *old = self->items;
    self->items = fresh;
    self->spans = self->seq = 0;
    self->down = self->started = self->stopped = self->signalled = 0;
    Py_XDECREF(old);
    Py_RETURN_NONE;
}

static int
Queue_traverse(QueueObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->items);
    Py_VISIT(self->wake);
    return 0;
}

static int
Queue_clear(QueueObject *self)
{
    Py_CLEAR(self->items);
    Py_CLEAR(self->wake);
    return 0;
}

static void
Queue_dealloc(QueueObject *self)
{
    PyObject_GC_UnTrack(self);
    Queue_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* `items` is never NULL but after a clear by the GC: read-only, checked. */
static PyMemberDef Queue_members[] = {
    {"items", T_OBJECT_EX, offsetof(QueueObject, items), READONLY, "The flat queue: trace, chunk, ..."},
    {"wake", T_OBJECT, offsetof(QueueObject, wake), 0, "Called by the hand-over when a push says to wake."},
    {"spans", T_PYSSIZET, offsetof(QueueObject, spans), READONLY, "Spans queued."},
    {"seq", T_PYSSIZET, offsetof(QueueObject, seq), READONLY, "Chunks accepted so far."},
    {"limit", T_PYSSIZET, offsetof(QueueObject, limit), 0, "Most spans queued (a quarter while down)."},
    {"batch", T_PYSSIZET, offsetof(QueueObject, batch), 0, "Spans that make a push wake the writer."},
    {"down", T_BOOL, offsetof(QueueObject, down), 0, "The receiver is down: a quarter of the limit, no wake."},
    {"started", T_BOOL, offsetof(QueueObject, started), 0, "The writer thread runs: the hand-over may push."},
    {"stopped", T_BOOL, offsetof(QueueObject, stopped), 0, "The writer stopped: the hand-over does not push."},
    {NULL},
};

static PyMethodDef Queue_methods[] = {
    {"push", (PyCFunction)(void (*)(void))Queue_push, METH_FASTCALL,
     "push(trace, chunk): True/False (wake the writer or not) when queued, None when it did not fit."},
    {"take", (PyCFunction)Queue_take, METH_NOARGS, "take() -> (items, seq before the first); the queue emptied."},
    {"reset", (PyCFunction)Queue_reset, METH_NOARGS, "Empty the queue, counts 0, flags cleared."},
    {NULL},
};

PyTypeObject _cspan_WriterQueue_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tracer._cspan.WriterQueue",
    .tp_basicsize = sizeof(QueueObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "WriterQueue(limit, batch): tracer.writer's pending queue (see tracer/_cspan_queue.c).",
    .tp_traverse = (traverseproc)Queue_traverse,
    .tp_clear = (inquiry)Queue_clear,
    .tp_dealloc = (destructor)Queue_dealloc,
    .tp_members = Queue_members,
    .tp_methods = Queue_methods,
    .tp_new = Queue_new,
};

/* An attribute of the sink, NULL without an error when it has none. */
static PyObject *
optional_attr(PyObject *obj, PyObject *name)
{
    PyObject *value = NULL;
#if PY_VERSION_HEX >= 0x030D0000
    (void)PyObject_GetOptionalAttr(obj, name, &value);
#else
    (void)_PyObject_LookupAttr(obj, name, &value);
#endif
    return value;
}

/* The chunk queued straight into the sink's WriterQueue (the tracer's
 * `_cqueue`, set only while its writer is the stock AgentWriter and the
 * tracer's write is Tracer.write) when the tracer is enabled (exactly True),
 * the writer thread runs, is not stopped and the queue has room; then the
 * writer woken if the push says so. 1 done; 0 not queued (the caller calls
 * sink.write, which decides as before); -1 on error (nothing queued); -2
 * queued, and the wake-up raised a BaseException (set). */
int
_cspan_queue_handover(ModuleState *st, PyObject *sink, PyObject *trace, PyObject *chunk)
{
    PyObject *queue = optional_attr(sink, st->s__cqueue);
    if (queue == NULL || Py_TYPE(queue) != &_cspan_WriterQueue_Type || !PyList_CheckExact(chunk)) {
        Py_XDECREF(queue);
        return PyErr_Occurred() ? -1 : 0;
    }
    QueueObject *q = (QueueObject *)queue;
    PyObject *enabled = optional_attr(sink, st->s_enabled);
    int rc = enabled == Py_True && q->started && !q->stopped ? queue_push(q, trace, chunk, PyList_GET_SIZE(chunk) / RECORD_LEN) : 0;
    Py_XDECREF(enabled);
    if (rc == 0 && PyErr_Occurred())
        rc = -1;
    if (rc == 2) {
        rc = 1;
        PyObject *wake = Py_XNewRef(q->wake);
        PyObject *r = wake == NULL || wake == Py_None ? Py_NewRef(Py_None) : PyObject_CallNoArgs(wake);
        /* The chunk is queued whatever set() does (a fallback to sink.write
         * would queue it twice). An Exception from it (no memory) is
         * dropped: the writer still wakes at its interval. A BaseException
         * (KeyboardInterrupt from a signal handler) propagates, as it does
         * through AgentWriter.write: -2. */
        if (r == NULL) {
            if (PyErr_ExceptionMatches(PyExc_Exception))
                PyErr_Clear();
            else
                rc = -2;
        }
        Py_XDECREF(r);
        Py_XDECREF(wake);
    }
    Py_DECREF(queue);
    return rc;
}
