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

/* 0 in the main interpreter, else -1 with an ImportError naming what runs instead. */
static int
main_interpreter_only(const char *module, const char *instead)
{
    if (PyInterpreterState_Get() == PyInterpreterState_Main())
        return 0;
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
