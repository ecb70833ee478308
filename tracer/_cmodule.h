/* Shared by tracer/_cspan.c and tracer/_cencode.c. Their state (the Span
 * class and ContextVar given to configure(), interned names, packed keys) is
 * process-wide, so they load in the main interpreter only: a sub-interpreter
 * (mod_wsgi runs applications in them) gets an ImportError and the tracer
 * runs its pure-Python code there (tests/tracer/test_subinterp.py).
 * Multi-phase init (PEP 489), so that the check runs at each import, in each
 * interpreter; single-phase modules are copied into sub-interpreters without
 * running their init. */
#ifndef TRACER_CMODULE_H
#define TRACER_CMODULE_H

/* The Python code these modules were written for: each module exports it as
 * ABI and tracer.span.load_speedup refuses a module whose ABI differs from
 * tracer/span.py's _C_ABI (a checkout updated without rebuilding: its old .so
 * would lack functions the new Python calls). Bump both when a module's
 * Python-visible interface changes; tests/tracer/test_c_abi.py fails until
 * the sources' digest in tracer/_c_abi.txt is updated with it. */
#define TRACER_C_ABI 17

/* 0 in the main interpreter (the module's ABI added), else -1 with an
 * ImportError naming what runs instead. */
static int
main_interpreter_only(PyObject *m, const char *module, const char *instead)
{
    if (PyInterpreterState_Get() == PyInterpreterState_Main())
        return PyModule_AddIntConstant(m, "ABI", TRACER_C_ABI);
    PyErr_Format(PyExc_ImportError,
                 "%s loads in the main interpreter only (its state is process-wide); sub-interpreters run %s",
                 module, instead);
    return -1;
}

/* The module's slots: `exec` runs at each import. From 3.12 the interpreter
 * also knows (and isolated sub-interpreters refuse the module themselves). */
#ifdef Py_mod_multiple_interpreters
#define MAIN_INTERPRETER_SLOTS(exec)                                                                   \
    {{Py_mod_exec, (exec)}, {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED}, \
     {0, NULL}}
#else
#define MAIN_INTERPRETER_SLOTS(exec) {{Py_mod_exec, (exec)}, {0, NULL}}
#endif

#endif
