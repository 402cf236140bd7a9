/* The heap profile's recorder: sampling hooks on CPython's allocators (PEP 445) that record the
 * stack of about one allocation per `rate` bytes, and follow the sampled blocks until freed. */
#ifndef PPF_HEAP_H
#define PPF_HEAP_H

#include <Python.h>

/* At module init, before any hook: the raw allocator that the tables' own memory comes from. */
void ppf_heap_init(void);
/* In a forked child: empty tables, a new countdown. 0, or -1 when out of memory. */
int ppf_heap_after_fork(void);

/* The module's functions set_rate(bytes), get_rate(), buckets(), stats() and reset(). */
PyObject *ppf_heap_set_rate(PyObject *module, PyObject *arg);
PyObject *ppf_heap_get_rate(PyObject *module, PyObject *unused);
PyObject *ppf_heap_buckets(PyObject *module, PyObject *unused);
PyObject *ppf_heap_stats(PyObject *module, PyObject *unused);
PyObject *ppf_heap_reset(PyObject *module, PyObject *unused);

#endif
