/* A v0.4 payload built in one buffer (see _cencode.h): PayloadV04 with the C
 * encoder encodes each chunk of the writer's batch straight onto the end of
 * its payload's buffer, and finish() copies it into the body once. Before,
 * each chunk was encoded into a buffer of its own (grown by realloc from
 * 4 KiB), copied into a bytes object, and the bytes joined into the body:
 * three copies of every byte and an allocation per chunk.
 *
 * The buffer is held by a capsule (``payload_v04()``) that only the payload
 * object refers to; it holds no Python objects. Its first 5 bytes are left
 * for the outer array header, written when the trace count is known. */
#include <time.h>

#include "_cencode.h"

#define CAPSULE "tracer._cencode.payload"
#define HEADER_ROOM 5
#define FIRST_CAP (64 * 1024) /* grown by doubling; from 128 KiB on, realloc moves pages, not bytes */

typedef struct {
    Out out;
    int busy; /* put_many_v04 is encoding into it (Python code may run meanwhile) */
} Payload;

static void
payload_free(PyObject *capsule)
{
    Payload *p = PyCapsule_GetPointer(capsule, CAPSULE);
    if (p != NULL) {
        PyMem_Free(p->out.buf);
        PyMem_Free(p);
    }
}

PyObject *
_cencode_payload_v04(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(unused))
{
    Payload *p = PyMem_Calloc(1, sizeof(Payload));
    if (p == NULL)
        return PyErr_NoMemory();
    if (reserve(&p->out, FIRST_CAP) < 0) {
        PyMem_Free(p);
        return NULL;
    }
    p->out.len = HEADER_ROOM;
    PyObject *capsule = PyCapsule_New(p, CAPSULE, payload_free);
    if (capsule == NULL) {
        PyMem_Free(p->out.buf);
        PyMem_Free(p);
    }
    return capsule;
}

/* The capsule's payload, open and not being encoded into; NULL with an error. */
static Payload *
open_payload(PyObject *capsule)
{
    Payload *p = PyCapsule_IsValid(capsule, CAPSULE) ? PyCapsule_GetPointer(capsule, CAPSULE) : NULL;
    if (p == NULL) {
        PyErr_SetString(PyExc_TypeError, "expected a payload from _cencode.payload_v04()");
        return NULL;
    }
    if (p->busy || p->out.buf == NULL) {
        PyErr_SetString(PyExc_RuntimeError, p->busy ? "the payload is being encoded into" : "the payload is finished");
        return NULL;
    }
    return p;
}

/* payload_append(payload, body: bytes): a chunk encoded elsewhere
 * (PayloadV04.put and its fallbacks). */
PyObject *
_cencode_payload_append(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    Payload *p = nargs == 2 ? open_payload(args[0]) : NULL;
    if (p == NULL || !PyBytes_Check(args[1])) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "payload_append(payload, body: bytes)");
        return NULL;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(args[1]);
    if (reserve(&p->out, n) < 0)
        return NULL;
    memcpy(p->out.buf + p->out.len, PyBytes_AS_STRING(args[1]), (size_t)n);
    p->out.len += n;
    Py_RETURN_NONE;
}

/* payload_finish(payload, traces) -> bytes: the array header for traces,
 * then what was added; the buffer is freed (the payload takes no more). */
PyObject *
_cencode_payload_finish(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    Payload *p = nargs == 2 ? open_payload(args[0]) : NULL;
    if (p == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "payload_finish(payload, traces)");
        return NULL;
    }
    Py_ssize_t traces = PyLong_AsSsize_t(args[1]);
    if (traces == -1 && PyErr_Occurred())
        return NULL;
    Out header = {NULL, 0, 0};
    if (traces < 0 || pack_header(&header, traces, 0x90, 0xdc, 0xdd) < 0) {
        PyMem_Free(header.buf);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "a trace count is >= 0");
        return NULL;
    }
    char *start = p->out.buf + HEADER_ROOM - header.len;
    memcpy(start, header.buf, (size_t)header.len);
    PyMem_Free(header.buf);
    PyObject *body = PyBytes_FromStringAndSize(start, p->out.len - HEADER_ROOM + header.len);
    if (body != NULL) {
        PyMem_Free(p->out.buf);
        p->out = (Out){NULL, 0, 0};
    }
    return body;
}

/* put_many_v04(batch, start, payload, limit, traces, spans) ->
 * (index, size, traces, spans, paused): PayloadV04.put_many's loop in C. Each entry
 * of batch[start:] (None skipped) is encoded as encode_v04_item encodes it,
 * onto the end of payload, while the payload (size: its bytes so far, the
 * header's room included) stays within limit; index: the entry that did
 * not fit or raised an Exception (len(batch) when all were added; nothing
 * of it stays in the payload), or with paused true the next entry to encode
 * (see GIL_YIELD_NS). */
/* A batch can take tens of ms to encode: the Python loop this replaces let
 * the interpreter hand the GIL to an app thread that had waited its switch
 * interval (5 ms). So after GIL_YIELD_NS the loop returns paused and
 * PayloadV04.put_many calls it again, its eval loop handing the GIL over
 * in between (releasing it from here would not: a waiting thread woken before its
 * switch interval ran out restarts its wait, and can keep doing so). The
 * clock is read every GIL_CHECK_BYTES of output. */
#define GIL_CHECK_BYTES (64 * 1024)

int64_t
_cencode_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

PyObject *
_cencode_put_many_v04(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t start, limit, traces, spans;
    if (nargs != 6 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "put_many_v04(batch: list, start, payload, limit, traces, spans)");
        return NULL;
    }
    PyObject *numbers[4] = {args[1], args[3], args[4], args[5]};
    Py_ssize_t *values[4] = {&start, &limit, &traces, &spans};
    for (int i = 0; i < 4; i++) {
        *values[i] = PyLong_AsSsize_t(numbers[i]);
        if (*values[i] == -1 && PyErr_Occurred())
            return NULL;
    }
    PyObject *batch = args[0];
    Payload *p = open_payload(args[2]);
    if (p == NULL)
        return NULL;
    Out *o = &p->out;
    Py_ssize_t index = start < 0 ? 0 : start;
    Py_ssize_t checked = o->len; /* the output size when the clock was last read */
    int64_t since = _cencode_monotonic_ns();
    int paused = 0;
    p->busy = 1; /* the capsule (args[2]) is held by the caller for the call */
    for (; index < PyList_GET_SIZE(batch); index++) { /* encoding may run Python code: the size is read each time */
        if (o->len - checked >= GIL_CHECK_BYTES) {
            int64_t now = _cencode_monotonic_ns();
            checked = o->len;
            if (now - since >= GIL_YIELD_NS) {
                paused = 1;
                break;
            }
        }
        PyObject *item = PyList_GET_ITEM(batch, index);
        if (item == Py_None)
            continue;
        Py_ssize_t mark = o->len;
        Py_INCREF(item);
        int rc = _cencode_item_v04(o, item);
        /* encoded: item is a tuple, item[1] a list or tuple of records */
        Py_ssize_t n = rc < 0 ? 0 : PySequence_Fast_GET_SIZE(PyTuple_GET_ITEM(item, 1));
        Py_DECREF(item);
        if (rc < 0) {
            o->len = mark;
            if (!PyErr_ExceptionMatches(PyExc_Exception)) {
                p->busy = 0;
                return NULL; /* as put_many's `except Exception` */
            }
            PyErr_Clear();
            break;
        }
        if (o->len > limit) {
            o->len = mark;
            break;
        }
        traces += 1;
        spans += n / RECORD_LEN;
    }
    p->busy = 0;
    return Py_BuildValue("nnnnO", index, o->len, traces, spans, paused ? Py_True : Py_False);
}
