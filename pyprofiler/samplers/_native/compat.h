/* Shims over the CPython versions pyprofiler builds for (3.9 to 3.13), so that the other files
 * call one name whatever the version. Frame layouts are not here: only frames.c and stackread.c
 * read them, each through the headers of the Python being built for. */
#ifndef PPF_COMPAT_H
#define PPF_COMPAT_H

#include <Python.h>

#if PY_VERSION_HEX < 0x030A0000
static inline PyObject *
Py_NewRef(PyObject *obj)
{
    Py_INCREF(obj);
    return obj;
}

static inline PyObject *
Py_XNewRef(PyObject *obj)
{
    Py_XINCREF(obj);
    return obj;
}
#endif

/* The calling thread's state, or NULL, without the fatal error PyThreadState_Get() raises. */
static inline PyThreadState *
ppf_thread_state_unchecked(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    return PyThreadState_GetUnchecked();
#else
    return _PyThreadState_UncheckedGet();
#endif
}

/* Whether the interpreter is finalizing: a thread that takes the GIL then is ended on the spot. */
static inline int
ppf_finalizing(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsFinalizing();
#else
    return _Py_IsFinalizing();
#endif
}

#endif
