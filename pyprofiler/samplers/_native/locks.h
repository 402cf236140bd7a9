/* The block and mutex profiles' recorder: Lock and RLock types that stand in for _thread's and
 * record contention into two stack-keyed tables. */
#ifndef PPF_LOCKS_H
#define PPF_LOCKS_H

#include <Python.h>

/* Adds the Lock and RLock types to the module. */
int ppf_locks_init(PyObject *module);
/* In a forked child: waiters counted in the parent do not exist there. */
void ppf_locks_after_fork(void);

/* The module's functions set_lock_profiling(block_rate_ns, mutex_fraction, label_lock),
 * lock_contentions(name) and clear_lock_contentions(). */
PyObject *ppf_set_lock_profiling(PyObject *module, PyObject *args);
PyObject *ppf_lock_contentions(PyObject *module, PyObject *name);
PyObject *ppf_clear_lock_contentions(PyObject *module, PyObject *unused);

#endif
