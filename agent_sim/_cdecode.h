/* Private to agent_sim._cdecode, whose C code is in three units compiled
 * into the one extension module (setup.py):
 *   _cdecode.c            msgpack unpacking (unpackb) and the module's init;
 *   _cdecode_pack.c       msgpack packing (packb);
 *   _cdecode_normalize.c  normalization's common case (clean_chunk,
 *                         normalize_clean) and stats.compute_groups;
 *   _cdecode_insights.c   the insights' common case (breakdown_chunk,
 *                         detect_clear);
 *   _cdecode_ingest.c     the receiver's duplicate span ids (count_duplicates)
 *                         and the store's index rows (index_rows);
 *   _cdecode_stats.c      stats.Sketch.add_many's loop (sketch_add).
 * What they share is declared here; functions one unit calls in another are
 * prefixed _cdecode_. */
#ifndef AGENT_SIM_CDECODE_H
#define AGENT_SIM_CDECODE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <limits.h>
#include <string.h>

/* What the units share stays inside the extension module (PyInit_ is
 * exported by PyMODINIT_FUNC itself), and links as a static would. */
#if defined(__GNUC__)
#pragma GCC visibility push(hidden)
#endif

#define MAX_DEPTH 512 /* nesting unpackb and packb leave to msgpack beyond */

/* PyLong_AsUnsignedLongLong's result and errors (TypeError for a non-int,
 * OverflowError when negative or beyond 64 bits). CPython 3.11's version
 * goes through _PyLong_AsByteArray for every int of two digits or more
 * (~300 instructions: every trace and span id); PyLong_AsUnsignedLong reads
 * the digits directly, and is the same function where long has 64 bits. */
static inline unsigned long long _cdecode_u64(PyObject *o) {
#if ULONG_MAX == ULLONG_MAX
    return PyLong_AsUnsignedLong(o);
#else
    return PyLong_AsUnsignedLongLong(o);
#endif
}

/* _cdecode_pack.c */
PyObject *_cdecode_packb(PyObject *self, PyObject *arg);

/* _cdecode_normalize.c */
PyObject *_cdecode_clean_chunk(PyObject *self, PyObject *spans);
PyObject *_cdecode_normalize_clean(PyObject *self, PyObject *args);
PyObject *_cdecode_compute_groups(PyObject *self, PyObject *args);
/* The interned keys and small ints of the two: 0, or -1 with an exception. */
int _cdecode_normalize_init(void);
/* m.CLEAN_LIMITS: the limits clean_chunk checks (for a test). */
int _cdecode_add_clean_limits(PyObject *m);

/* _cdecode_stats.c */
PyObject *_cdecode_sketch_add(PyObject *self, PyObject *args);

/* _cdecode_insights.c */
PyObject *_cdecode_breakdown_chunk(PyObject *self, PyObject *args);
PyObject *_cdecode_detect_clear(PyObject *self, PyObject *args);
int _cdecode_insights_init(void); /* its interned strings: 0, or -1 with an exception */

/* _cdecode_ingest.c */
PyObject *_cdecode_count_duplicates(PyObject *self, PyObject *args);
PyObject *_cdecode_index_rows(PyObject *self, PyObject *args);
int _cdecode_ingest_init(void); /* as _cdecode_insights_init */
int _cdecode_rows_init(void);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#endif
