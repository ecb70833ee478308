/* processor.process_chunks' per-chunk loop body for the C v0.4 encoder
 * (defer=True) in C: describe_v04 turns the writer's (trace, chunk) pairs
 * into the descriptors _cencode_tags.c reads, as the Python body does, for
 * the usual entries: a list chunk, a trace already decided or decided by the
 * batch's default, exact int span ids. Anything else (a trace the sampler
 * must decide, an odd entry, an exception) stops the loop at that entry, and
 * processor.process_chunks runs its Python body on it (which raises, and
 * records the failure, as before), then calls this again from the next.
 *
 * The trace's fields are read and set as the interpreter's specialised
 * LOAD_ATTR_SLOT / STORE_ATTR_SLOT do for a type whose attributes are
 * __slots__ or C members (tracer.buffer._Trace, _cspan's trace): at the
 * member's offset, found once per call and type (PyObject_GetAttr and
 * SetAttr, ≈ 150 instructions each, cost more than the bytecode they
 * replace); other types go through PyObject_GetAttr. The root's record
 * (tracer.span.FinishedSpan, a tuple) is read by index.
 *
 * The attribute names and FinishedSpan come from the caller: no Python
 * objects in statics. */
#include "_cencode.h"
#include <structmember.h>

enum { N_ROOT, N_PRIORITY, N_MECHANISM, N_TRACE_ID, N_ORIGIN, N_DD_TAGS, N_SPAN_ID, N_DURATION, NAMES_LEN };
#define FIELDS (N_DD_TAGS + 1) /* the trace's */

typedef struct {
    PyTypeObject *type;        /* the traces' type (held for the call) */
    Py_ssize_t offset[FIELDS]; /* -1: through PyObject_GetAttr / SetAttr */
} Slots;

static void
resolve(Slots *s, PyTypeObject *type, PyObject *const *names)
{
    Py_XSETREF(s->type, (PyTypeObject *)Py_NewRef(type));
    int plain = type->tp_getattro == PyObject_GenericGetAttr && type->tp_setattro == PyObject_GenericSetAttr;
    for (int i = 0; i < FIELDS; i++) {
        s->offset[i] = -1;
#if PY_VERSION_HEX < 0x030E0000
        PyObject *d = plain ? _PyType_Lookup(type, names[i]) : NULL; /* borrowed; runs no Python code */
        /* (a member of another class put in this one's dict is read by getattr,
         * which raises for it: its offset is not this type's) */
        if (d != NULL && Py_IS_TYPE(d, &PyMemberDescr_Type) && PyType_IsSubtype(type, PyDescr_TYPE(d))) {
            PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
            if (m->type == T_OBJECT_EX && !(m->flags & READONLY))
                s->offset[i] = m->offset;
        }
#endif
    }
}

/* trace.<names[i]>: a new reference, or NULL with an error. */
static PyObject *
get_field(PyObject *obj, const Slots *s, int i, PyObject *const *names)
{
    if (s->offset[i] >= 0) {
        PyObject *value = *(PyObject **)((char *)obj + s->offset[i]);
        if (value != NULL)
            return Py_NewRef(value);
    }
    return PyObject_GetAttr(obj, names[i]); /* (an unset slot: its AttributeError) */
}

static int
set_field(PyObject *obj, const Slots *s, int i, PyObject *const *names, PyObject *value)
{
    if (s->offset[i] < 0)
        return PyObject_SetAttr(obj, names[i], value);
    PyObject **at = (PyObject **)((char *)obj + s->offset[i]);
    Py_XSETREF(*at, Py_NewRef(value)); /* as a member's setter (the old value freed last) */
    return 0;
}
#define SETTINGS_LEN 16 /* processor.process_chunks' settings: 6 values, 10 tag keys */

/* 1 when a == b for exact ints (no Python code runs), 0 when not, -1 when
 * either is not an exact int (the Python body compares those). */
static int
same_int(PyObject *a, PyObject *b)
{
    if (!PyLong_CheckExact(a) || !PyLong_CheckExact(b))
        return -1;
    return PyObject_RichCompareBool(a, b, Py_EQ);
}

/* The local root's record index in chunk, or -1 when absent; -2: leave the
 * entry to Python. Python's order: the first record, the last, then the
 * first match from the start. The chunk's size is read here: attribute
 * reads through getattr may have run Python code. */
static Py_ssize_t
root_index(PyObject *chunk, PyObject *span_id)
{
    Py_ssize_t n = PyList_GET_SIZE(chunk);
    if (n == 0 || n % RECORD_LEN)
        return -2;
    PyObject **items = PySequence_Fast_ITEMS(chunk);
    Py_ssize_t candidates[2] = {0, n - RECORD_LEN};
    for (int i = 0; i < 2; i++) {
        int eq = same_int(items[candidates[i] + 1], span_id); /* no Python code runs */
        if (eq != 0)
            return eq < 0 ? -2 : candidates[i];
    }
    for (Py_ssize_t at = 0; at < n; at += RECORD_LEN) {
        int eq = same_int(items[at + 1], span_id);
        if (eq != 0)
            return eq < 0 ? -2 : at;
    }
    return -1;
}

/* One entry: 0 done (batch[index] replaced), 1 left to Python, -1 error. */
static int
describe_one(PyObject *batch, Py_ssize_t index, PyObject *trace, PyObject *chunk, PyObject *settings,
             PyObject *dflt, PyObject *const *names, PyObject *record_type, Slots *slots, int send_dropped,
             Py_ssize_t *not_sent)
{
    if (!PyList_CheckExact(chunk))
        return 1;
    Py_ssize_t n = PyList_GET_SIZE(chunk);
    if (n == 0)
        return PyList_SetItem(batch, index, Py_NewRef(Py_None));
    if (n % RECORD_LEN)
        return 1;
    if (Py_TYPE(trace) != slots->type)
        resolve(slots, Py_TYPE(trace), names);
    /* Read and written in the Python body's order (root, priority, the
     * default's stores, the root's fields, root = None, the rest), so that an
     * entry failing part way leaves its trace as Python would. */
    PyObject *root_span = get_field(trace, slots, N_ROOT, names);
    if (root_span == NULL)
        return -1;
    PyObject *priority = get_field(trace, slots, N_PRIORITY, names);
    if (priority == NULL) {
        Py_DECREF(root_span);
        return -1;
    }
    if (priority == Py_None) {
        Py_DECREF(priority);
        if (dflt == Py_None) {
            Py_DECREF(root_span);
            return 1; /* sampler.decide(), in Python */
        }
        priority = Py_NewRef(PyTuple_GET_ITEM(dflt, 0));
        if (set_field(trace, slots, N_MECHANISM, names, PyTuple_GET_ITEM(dflt, 1)) < 0 ||
            set_field(trace, slots, N_PRIORITY, names, priority) < 0) {
            Py_DECREF(root_span);
            goto error;
        }
    }
    int overflow;
    long p = PyLong_CheckExact(priority) ? PyLong_AsLongAndOverflow(priority, &overflow) : 0;
    if (!PyLong_CheckExact(priority) || (p == -1 && PyErr_Occurred())) {
        Py_DECREF(root_span);
        Py_DECREF(priority);
        return PyErr_Occurred() ? -1 : 1;
    }
    int positive = overflow > 0 || (overflow == 0 && p > 0);
    Py_ssize_t root = -1;
    if (root_span != Py_None) {
        PyObject *duration, *span_id;
        int record = Py_TYPE(root_span) == (PyTypeObject *)record_type && PyTuple_GET_SIZE(root_span) == RECORD_LEN;
        duration = record ? Py_NewRef(PyTuple_GET_ITEM(root_span, 8)) : PyObject_GetAttr(root_span, names[N_DURATION]);
        int finished = duration != NULL && duration != Py_None;
        span_id = !finished ? NULL
                  : record  ? Py_NewRef(PyTuple_GET_ITEM(root_span, 1))
                            : PyObject_GetAttr(root_span, names[N_SPAN_ID]);
        Py_XDECREF(duration);
        Py_DECREF(root_span);
        if (PyErr_Occurred())
            goto error;
        if (finished) {
            root = root_index(chunk, span_id);
            Py_DECREF(span_id);
            if (root == -2) {
                Py_DECREF(priority);
                return 1;
            }
            /* found: nothing needs trace.root any more (see processor.py) */
            if (root >= 0 && set_field(trace, slots, N_ROOT, names, Py_None) < 0)
                goto error;
        }
    }
    else
        Py_DECREF(root_span);
    if (!positive && !send_dropped) {
        Py_DECREF(priority);
        *not_sent += PyList_GET_SIZE(chunk) / RECORD_LEN;
        return PyList_SetItem(batch, index, Py_NewRef(Py_None));
    }
    PyObject *item = PyTuple_New(8);
    if (item == NULL)
        goto error;
    PyTuple_SET_ITEM(item, 0, Py_NewRef(settings));
    PyTuple_SET_ITEM(item, 1, Py_NewRef(chunk));
    PyTuple_SET_ITEM(item, 2, priority); /* the reference is the tuple's now */
    PyObject *fields[4] = {root < 0 ? Py_NewRef(Py_None) : PyLong_FromSsize_t(root),
                           positive ? get_field(trace, slots, N_MECHANISM, names) : Py_NewRef(Py_None), NULL, NULL};
    for (int i = 0; i < 2; i++) /* trace_id, origin, dd_tags read after the others, as in Python */
        PyTuple_SET_ITEM(item, 3 + i, fields[i]);
    PyObject *rest[3] = {NULL, NULL, NULL};
    if (fields[0] != NULL && fields[1] != NULL) {
        for (int i = 0; i < 3; i++) {
            rest[i] = get_field(trace, slots, N_TRACE_ID + i, names);
            if (rest[i] == NULL)
                break;
        }
    }
    for (int i = 0; i < 3; i++)
        PyTuple_SET_ITEM(item, 5 + i, rest[i]);
    if (rest[2] == NULL) {
        Py_DECREF(item); /* Py_XDECREF of each item, NULLs included */
        return -1;
    }
    /* Referenced by the batch only (a local of the writer thread): part of no
     * cycle, so the GC need not walk it; a young collection during the batch
     * no longer promotes it (CPython never untracks a tuple holding a list). */
    PyObject_GC_UnTrack(item);
    return PyList_SetItem(batch, index, item);
error:
    Py_DECREF(priority);
    return -1;
}

/* The exception set, taken (normalized, with its traceback) and cleared. */
static PyObject *
raised_exception(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
#endif
}

/* describe_v04(batch, start, settings, default, names, record_type) -> (index, not_sent, paused):
 * from batch[start], each (trace, chunk) becomes its descriptor (or None:
 * empty, or not sent because of sampling: not_sent counts those spans) until
 * one is left to Python: index is that one (len(batch) when none was), or
 * with paused true the next entry to describe (GIL_YIELD_NS); failure: None,
 * or (spans, exception) when batch[index] raised (it is None then, as the
 * Python body's except leaves it).
 * record_type: tracer.span.FinishedSpan. */
PyObject *
_cencode_describe_v04(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6 || !PyType_Check(args[5]) || !PyType_IsSubtype((PyTypeObject *)args[5], &PyTuple_Type) ||
        !PyList_CheckExact(args[0]) || !PyTuple_CheckExact(args[2]) ||
        PyTuple_GET_SIZE(args[2]) != SETTINGS_LEN || !PyTuple_CheckExact(args[4]) ||
        PyTuple_GET_SIZE(args[4]) != NAMES_LEN ||
        (args[3] != Py_None && (!PyTuple_CheckExact(args[3]) || PyTuple_GET_SIZE(args[3]) != 2))) {
        PyErr_SetString(PyExc_TypeError,
                        "describe_v04(batch: list, start, settings: tuple, default: (priority, mechanism) | None, "
                        "names: tuple, record_type)");
        return NULL;
    }
    PyObject *batch = args[0], *settings = args[2], *dflt = args[3];
    Py_ssize_t index = PyLong_AsSsize_t(args[1]);
    if (index == -1 && PyErr_Occurred())
        return NULL;
    if (dflt != Py_None && !PyLong_CheckExact(PyTuple_GET_ITEM(dflt, 0)))
        dflt = Py_None; /* (every trace goes to Python then) */
    int send_dropped = PyObject_IsTrue(PyTuple_GET_ITEM(settings, 5));
    if (send_dropped < 0)
        return NULL;
    PyObject *const *names = &PyTuple_GET_ITEM(args[4], 0);
    Py_ssize_t not_sent = 0;
    PyObject *failure = Py_NewRef(Py_None); /* or (spans, exception) of batch[index] */
    Slots slots = {NULL};
    int64_t since = _cencode_monotonic_ns();
    int paused = 0;
    Py_ssize_t start = index = index < 0 ? 0 : index;
    for (; index < PyList_GET_SIZE(batch); index++) {
        if ((index & 63) == 63 && index > start && _cencode_monotonic_ns() - since >= GIL_YIELD_NS) {
            paused = 1; /* (see GIL_YIELD_NS) */
            break;
        }
        PyObject *entry = PyList_GET_ITEM(batch, index);
        if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 2)
            break;
        Py_INCREF(entry); /* attribute reads can run Python code that changes the batch */
        int rc = describe_one(batch, index, PyTuple_GET_ITEM(entry, 0), PyTuple_GET_ITEM(entry, 1), settings, dflt,
                              names, args[5], &slots, send_dropped, &not_sent);
        Py_DECREF(entry);
        if (rc > 0)
            break;
        if (rc < 0) {
            /* Recorded as the Python body's except records it (the entry is
             * not run again: its trace may be partly changed). */
            PyObject *exc = PyErr_ExceptionMatches(PyExc_Exception) ? raised_exception() : NULL;
            if (exc == NULL) {
                Py_XDECREF(slots.type);
                Py_DECREF(failure);
                return NULL;
            }
            entry = PyList_GET_ITEM(batch, index);
            PyObject *chunk = PyTuple_CheckExact(entry) && PyTuple_GET_SIZE(entry) == 2 ? PyTuple_GET_ITEM(entry, 1) : NULL;
            Py_ssize_t spans = chunk != NULL && PyList_CheckExact(chunk) ? PyList_GET_SIZE(chunk) / RECORD_LEN : 0;
            Py_SETREF(failure, Py_BuildValue("nN", spans, exc));
            if (failure == NULL || PyList_SetItem(batch, index, Py_NewRef(Py_None)) < 0) {
                Py_XDECREF(slots.type);
                Py_XDECREF(failure);
                return NULL;
            }
            break;
        }
    }
    Py_XDECREF(slots.type);
    return Py_BuildValue("nnON", index, not_sent, paused ? Py_True : Py_False, failure);
}

/* pairs(flat) -> [(flat[0], flat[1]), (flat[2], flat[3]), ...]: the writer's
 * queue (trace, chunk, trace, chunk, ...: writer.write appends no tuple, so
 * nothing of it is tracked while it waits; the chunk and the handed-over
 * trace are untracked already) as the batch of pairs its consumers read.
 * Each pair is untracked: referenced by the batch only, it is part of no
 * cycle (its trace and chunk stay tracked or not on their own). */
PyObject *
_cencode_pairs(PyObject *Py_UNUSED(module), PyObject *flat)
{
    if (!PyList_CheckExact(flat) || PyList_GET_SIZE(flat) % 2) {
        PyErr_SetString(PyExc_TypeError, "pairs(flat: list of even length)");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(flat) / 2;
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) { /* no Python code runs: flat's size stays */
        PyObject *pair = PyTuple_Pack(2, PyList_GET_ITEM(flat, 2 * i), PyList_GET_ITEM(flat, 2 * i + 1));
        if (pair == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyObject_GC_UnTrack(pair);
        PyList_SET_ITEM(out, i, pair);
    }
    return out;
}
