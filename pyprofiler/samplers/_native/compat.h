/* Shims over the CPython versions pyprofiler builds for (3.9 to 3.13), so that the other files
 * call one name whatever the version. Frame layouts are not here but in frame_layout.h, which
 * only frames.c and stackread.c include. */
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

/* PyThreadState_GetUnchecked(): the calling thread's state, or NULL, without the fatal error
 * of PyThreadState_Get(). Py_IsFinalizing(): a thread that takes the GIL then is ended on the
 * spot. Both public since 3.13. */
#if PY_VERSION_HEX >= 0x030D0000
#  define ppf_thread_state_unchecked PyThreadState_GetUnchecked
#  define ppf_finalizing Py_IsFinalizing
#else
#  define ppf_thread_state_unchecked _PyThreadState_UncheckedGet
#  define ppf_finalizing _Py_IsFinalizing
#endif

#endif
