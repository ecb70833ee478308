#include "_cdecode.h"
#include <math.h>

/* -- sketch bins ----------------------------------------------------------
 * sketch_add(bins, values, mult, offset, min_positive, zero, top) adds the
 * durations of one stats group to a sketch's bins, as stats.Sketch.add_many's
 * loop does:
 *     for v in values:
 *         if v > min_positive:
 *             k = ceil(log2(v) * mult) + offset
 *             bins[k] = bins.get(k, 0.0) + 1.0
 *             if v > top: top = v
 *         else:
 *             zero += 1.0
 * and returns (zero, top), or NotImplemented, with nothing changed, unless
 * bins is a dict, values a list of ints within int64, mult a float, offset an
 * int within +-2**20, min_positive a float in (0, 1) (so v > min_positive is
 * v >= 1) and zero a float. math.log2 of an int is log2 of the int converted
 * to the nearest double, as (double)v is; the same libm computes both. */

PyObject *_cdecode_sketch_add(PyObject *self, PyObject *args) {
    PyObject *bins, *values, *mult_obj, *offset_obj, *min_obj, *zero_obj, *top;
    if (!PyArg_ParseTuple(args, "OOOOOOO", &bins, &values, &mult_obj, &offset_obj, &min_obj, &zero_obj, &top))
        return NULL;
    if (!PyDict_CheckExact(bins) || !PyList_CheckExact(values) || !PyFloat_CheckExact(mult_obj)
        || !PyLong_CheckExact(offset_obj) || !PyFloat_CheckExact(min_obj) || !PyFloat_CheckExact(zero_obj)
        || !(PyFloat_CheckExact(top) || PyLong_CheckExact(top))) /* comparing with it runs no Python code */
        Py_RETURN_NOTIMPLEMENTED;
    double mult = PyFloat_AS_DOUBLE(mult_obj), min_positive = PyFloat_AS_DOUBLE(min_obj);
    if (!(fabs(mult) <= 1e6)) /* NaN, inf or huge: the bin key would not fit a long */
        Py_RETURN_NOTIMPLEMENTED;
    double zero = PyFloat_AS_DOUBLE(zero_obj);
    long offset = PyLong_AsLong(offset_obj);
    if ((offset == -1 && PyErr_Occurred()) || offset < -(1L << 20) || offset > (1L << 20) || !(min_positive > 0)
        || !(min_positive < 1)) {
        PyErr_Clear();
        Py_RETURN_NOTIMPLEMENTED;
    }
    Py_ssize_t n = PyList_GET_SIZE(values);
    for (Py_ssize_t i = 0; i < n; i++) { /* checked first: nothing changes when Python must do it */
        PyObject *v = PyList_GET_ITEM(values, i);
        int overflow;
        if (!PyLong_CheckExact(v))
            Py_RETURN_NOTIMPLEMENTED;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow || (x == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            Py_RETURN_NOTIMPLEMENTED;
        }
    }
    Py_INCREF(top);
    long long top_int = 0; /* top's value once top is one of the values */
    int top_is_value = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyList_GET_SIZE(values) != n || !PyLong_CheckExact(PyList_GET_ITEM(values, i))) {
            PyErr_SetString(PyExc_RuntimeError, "the durations changed while they were added");
            goto error;
        }
        PyObject *v = PyList_GET_ITEM(values, i);
        long long x = PyLong_AsLongLong(v);
        if (x < 1) {
            zero += 1.0;
            continue;
        }
        /* the new max first: v is borrowed, and a bins key's __eq__ (in
         * PyDict_SetItem below) could drop it from the list */
        int greater = top_is_value ? x > top_int : PyObject_RichCompareBool(v, top, Py_GT);
        if (greater < 0)
            goto error;
        if (greater) {
            Py_SETREF(top, Py_NewRef(v));
            top_int = x;
            top_is_value = 1;
        }
        PyObject *key = PyLong_FromLong((long)ceil(log2((double)x) * mult) + offset);
        if (key == NULL)
            goto error;
        PyObject *count = PyDict_GetItemWithError(bins, key), *sum;
        if (count == NULL && PyErr_Occurred()) {
            Py_DECREF(key);
            goto error;
        }
        if (count == NULL)
            sum = PyFloat_FromDouble(1.0);
        else if (PyFloat_CheckExact(count))
            sum = PyFloat_FromDouble(PyFloat_AS_DOUBLE(count) + 1.0);
        else { /* an int count (a merged client sketch's): Python's int + float */
            PyObject *one = PyFloat_FromDouble(1.0);
            sum = one == NULL ? NULL : PyNumber_Add(count, one);
            Py_XDECREF(one);
        }
        int rc = sum == NULL ? -1 : PyDict_SetItem(bins, key, sum);
        Py_DECREF(key);
        Py_XDECREF(sum);
        if (rc < 0)
            goto error;
    }
    return Py_BuildValue("(dN)", zero, top);
error:
    Py_DECREF(top);
    return NULL;
}
