/* tracer._cspan's span ids (see _cspan.h): random.getrandbits(64) or 1,
 * drawn from the random module's own generator without calling it.
 *
 * A span id is `random.getrandbits(64) or 1` (tracer/_tracer.py), so that
 * ids follow random.seed(), random.setstate() and the reseeding in a forked
 * child (random registers _inst.seed with os.register_at_fork). The call
 * costs ≈ 620 instructions, most of it making the int through a byte array
 * (_PyLong_FromByteArray). Here the same two 32-bit draws are taken from the
 * same Mersenne Twister state, in place (the state of `_random.Random`, whose
 * layout is {PyObject_HEAD; int index; uint32_t state[624];}), and the int is
 * made with PyLong_FromUnsignedLongLong: the same values, in the same order,
 * from the same stream, ≈ 60 instructions.
 *
 * Used only where it is proven equal: configure() checks that getrandbits is
 * the C method of a `_random.Random` of that size, then draws 1,300 values
 * (past two refills of the state) from two fresh generators seeded alike,
 * one by its getrandbits(64), one here; any difference, another generator,
 * a build without the GIL: getrandbits is called, as before. */
#include "_cspan.h"

#define MT_N 624
#define MT_SHIFT 397

typedef struct {
    PyObject_HEAD
    int index;
    uint32_t state[MT_N];
} MTObject;

/* Whether random_id may draw from getrandbits' generator (set by
 * _cspan_ids_configure; a C flag, the object is getrandbits' __self__). */
static int draw_in_place = 0;

/* The next 32 bits of the Mersenne Twister MT19937 (Matsumoto and
 * Nishimura, 1998), as `_random.Random` draws them: the 624 words renewed
 * together once used up, each word tempered when drawn. */
static uint32_t
mt_next(MTObject *mt)
{
    uint32_t *s = mt->state;
    if (mt->index >= MT_N || mt->index < 0) {
        /* Word i from words i and i + 1 (the last: 0, renewed) and word
         * i + 397 (past the end: from the start, renewed). */
#define MT_TWIST(i, next, far)                                               \
    do {                                                                     \
        uint32_t x = (s[i] & 0x80000000U) | (s[next] & 0x7fffffffU);        \
        s[i] = s[far] ^ (x >> 1) ^ ((x & 1U) ? 0x9908b0dfU : 0U);            \
    } while (0)
        int i = 0;
        for (; i < MT_N - MT_SHIFT; i++)
            MT_TWIST(i, i + 1, i + MT_SHIFT);
        for (; i < MT_N - 1; i++)
            MT_TWIST(i, i + 1, i + MT_SHIFT - MT_N);
        MT_TWIST(MT_N - 1, 0, MT_SHIFT - 1);
#undef MT_TWIST
        mt->index = 0;
    }
    uint32_t y = s[mt->index++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680U;
    y ^= (y << 15) & 0xefc60000U;
    y ^= y >> 18;
    return y;
}

/* getrandbits(64) of `mt`: the first draw is the low word. */
static unsigned long long
mt_64(MTObject *mt)
{
    unsigned long long low = mt_next(mt);
    return low | ((unsigned long long)mt_next(mt) << 32);
}

/* random.getrandbits(64) or 1: a span id, or a trace id's low half. */
PyObject *
_cspan_random_id(void)
{
    if (draw_in_place) {
        unsigned long long id = mt_64((MTObject *)PyCFunction_GET_SELF(getrandbits));
        return PyLong_FromUnsignedLongLong(id != 0 ? id : 1);
    }
    PyObject *id = PyObject_CallOneArg(getrandbits, int_64);
    if (id == NULL)
        return NULL;
    int zero = PyObject_Not(id);
    if (zero < 0) {
        Py_DECREF(id);
        return NULL;
    }
    if (zero)
        Py_SETREF(id, Py_NewRef(int_1));
    return id;
}

/* The `_random.Random` type under `obj`'s type whose C method `meth` is
 * getrandbits, borrowed; NULL (no error) if none. */
static PyTypeObject *
mt_type(PyObject *obj, PyCFunction meth)
{
    PyTypeObject *type = Py_TYPE(obj);
    while (type != NULL && strcmp(type->tp_name, "_random.Random") != 0)
        type = type->tp_base;
    if (type == NULL || type->tp_basicsize != (Py_ssize_t)sizeof(MTObject))
        return NULL;
    PyObject *descr = PyDict_GetItemString(type->tp_dict, "getrandbits");
    if (descr == NULL || !PyObject_TypeCheck(descr, &PyMethodDescr_Type) ||
        ((PyMethodDescrObject *)descr)->d_method->ml_meth != meth)
        return NULL;
    return type;
}

/* 1 if getrandbits(64) of a generator of `type` and mt_64 give the same
 * values, 0 if not, -1 on error. */
static int
same_stream(PyTypeObject *type)
{
    PyObject *seed = PyLong_FromLong(20240517);
    PyObject *theirs = seed ? PyObject_CallOneArg((PyObject *)type, seed) : NULL;
    PyObject *ours = seed ? PyObject_CallOneArg((PyObject *)type, seed) : NULL;
    PyObject *draw = theirs ? PyObject_GetAttrString(theirs, "getrandbits") : NULL;
    int same = -1;
    if (draw != NULL && ours != NULL) {
        same = 1;
        for (int i = 0; i < 1300 && same == 1; i++) {
            PyObject *value = PyObject_CallOneArg(draw, int_64);
            if (value == NULL) {
                same = -1;
                break;
            }
            unsigned long long expected = PyLong_AsUnsignedLongLong(value);
            Py_DECREF(value);
            if (expected == (unsigned long long)-1 && PyErr_Occurred())
                same = -1;
            else if (mt_64((MTObject *)ours) != expected)
                same = 0;
        }
    }
    Py_XDECREF(seed);
    Py_XDECREF(theirs);
    Py_XDECREF(ours);
    Py_XDECREF(draw);
    return same;
}

/* configure(): whether random_id may draw from `bits`'s generator in place. */
int
_cspan_ids_configure(PyObject *bits)
{
    draw_in_place = 0;
#ifndef Py_GIL_DISABLED
    if (!PyCFunction_Check(bits) || PyCFunction_GET_SELF(bits) == NULL)
        return 0;
    PyTypeObject *type = mt_type(PyCFunction_GET_SELF(bits), PyCFunction_GET_FUNCTION(bits));
    if (type == NULL)
        return 0;
    int same = same_stream(type);
    if (same < 0)
        return -1;
    draw_in_place = same;
#endif
    return 0;
}

/* ids_in_place() -> bool: whether span ids are drawn in place (tests). */
PyObject *
_cspan_ids_in_place(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(draw_in_place);
}
