/* What the parts of pyprofiler._native share. */
#ifndef PYPROFILER_NATIVE_H
#define PYPROFILER_NATIVE_H

#include <Python.h>
#include <stdint.h>

/* A fast pseudo-random number for sampling decisions (call with the GIL held). */
uint64_t native_random(void);

/* _native_locks.c: the Lock and RLock types, and the function that sets their hooks. */
int locks_init(PyObject *module);
PyObject *set_lock_profiling(PyObject *module, PyObject *args);
void locks_after_fork(void);

#if PY_VERSION_HEX < 0x030A0000
static inline PyObject *
Py_NewRef(PyObject *obj)
{
    Py_INCREF(obj);
    return obj;
}
#endif

#endif
