/* Private to tracer._cencode, whose C code is in four units compiled into the
 * one extension module (setup.py):
 *   _cencode.c       msgpack packing, encode_v04 / encode_v04_item /
 *                    encode_v05, module init;
 *   _cencode_payload.c  PayloadV04's one buffer and put_many_v04 (the
 *                    batch loop);
 *   _cencode_process.c  processor.process_chunks' loop body (descriptors);
 *   _cencode_tags.c  the trace-level tags of a chunk (tracer/processor.py's
 *                    ``_tag``) written into the v0.4 output from the
 *                    writer's per-chunk descriptor, without touching the
 *                    span dicts.
 * None holds Python objects in statics beyond _cencode.c's "" (the packed
 * keys are C bytes): the tag keys and settings come in the descriptor (owned
 * by the caller), a payload's buffer in its capsule. */
#ifndef TRACER_CENCODE_H
#define TRACER_CENCODE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__)
#pragma GCC visibility push(hidden)
#endif

#define RECORD_LEN 12
#define META 10

typedef struct {
    char *buf;
    Py_ssize_t len;
    Py_ssize_t cap;
} Out;

static inline int
reserve(Out *o, Py_ssize_t n)
{
    if (o->len + n <= o->cap)
        return 0;
    Py_ssize_t cap = o->cap ? o->cap : 4096;
    while (cap < o->len + n) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        cap *= 2;
    }
    char *buf = PyMem_Realloc(o->buf, (size_t)cap);
    if (buf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    o->buf = buf;
    o->cap = cap;
    return 0;
}

static inline int
put1(Out *o, uint8_t b)
{
    if (reserve(o, 1) < 0)
        return -1;
    o->buf[o->len++] = (char)b;
    return 0;
}

/* A type byte and an n-byte big-endian number. */
static inline int
put_be(Out *o, uint8_t type, uint64_t value, int n)
{
    if (reserve(o, 1 + n) < 0)
        return -1;
    char *p = o->buf + o->len;
    p[0] = (char)type;
    for (int i = 0; i < n; i++)
        p[1 + i] = (char)(value >> (8 * (n - 1 - i)));
    o->len += 1 + n;
    return 0;
}

int pack_uint(Out *o, uint64_t v);
int pack_obj(Out *o, PyObject *obj, int depth);
int pack_header(Out *o, Py_ssize_t n, uint8_t fix, uint8_t b16, uint8_t b32);

/* Append one chunk (a v0.4 array of span maps) to o; item: the writer's
 * descriptor, whose trace-level tags are added, or NULL. -1 with an error
 * (then o->len is to be reset by the caller). */
int _cencode_chunk_v04(Out *o, PyObject *chunk, PyObject *const *item);
/* The same for a writer batch entry: (trace, chunk) or a descriptor. */
int _cencode_item_v04(Out *o, PyObject *item);
/* _cencode_payload.c: PayloadV04's buffer and its batch loop. */
PyObject *_cencode_payload_v04(PyObject *module, PyObject *unused);
PyObject *_cencode_payload_append(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *_cencode_payload_finish(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *_cencode_put_many_v04(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
/* A C loop over a writer batch returns paused after this long, so that the
 * caller's Python loop lets the interpreter hand the GIL to an app thread
 * (see put_many_v04): an app thread waits about 5-6 ms, as before. */
#define GIL_YIELD_NS 1000000
int64_t _cencode_monotonic_ns(void);
/* _cencode_process.c: processor.process_chunks' loop body (defer=True). */
PyObject *_cencode_describe_v04(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
/* The writer's flat queue as a batch of untracked (trace, chunk) pairs. */
PyObject *_cencode_pairs(PyObject *module, PyObject *flat);

/* One tag to add to a meta or metrics map, as processor._tag adds it: set
 * (``d[key] = value``), setdefault, or each item of a dict by setdefault
 * (config.tags, the trace's propagated dd_tags). A value is an object or a
 * short ASCII string formatted here (``_dd.p.dm``, ``_dd.p.tid``). */
enum { TAG_SET, TAG_SETDEFAULT, TAG_SETDEFAULT_ALL };
typedef struct {
    int kind;
    PyObject *key;   /* borrowed (the descriptor's); NULL for TAG_SETDEFAULT_ALL */
    PyObject *value; /* borrowed; the dict for TAG_SETDEFAULT_ALL; NULL: raw */
    char raw[24];
    int raw_len;
} Tag;

#define MAX_TAGS 8
typedef struct {
    Py_ssize_t root;       /* the local root's record index, or -1 */
    Tag root_meta[MAX_TAGS], first_meta[MAX_TAGS], root_metrics[1], first_metrics[1];
    int n_root_meta, n_first_meta;
} ChunkTags;

/* Read the writer's descriptor (see processor.process_chunks): 0, or -1 with
 * an exception (then the writer tags the chunk in Python). */
int _cencode_chunk_tags(PyObject *const *item, Py_ssize_t chunk_spans, ChunkTags *tags);
/* Pack `dict` (a span's meta or metrics) with the tags of a and then b added,
 * exactly as msgpack packs the dict they would make. */
int _cencode_pack_tagged(Out *o, PyObject *dict, const Tag *a, int na, const Tag *b, int nb);
/* 1 with an error set when Python code run meanwhile changed the chunk's
 * length or moved its items (the encoder reads them through `items`); 0. */
int _cencode_chunk_changed(PyObject *chunk, PyObject **items, Py_ssize_t size);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#endif
