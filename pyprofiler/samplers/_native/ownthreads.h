/* pyprofiler's own threads (named pyprofiler-*: its server's, its samplers' Python threads):
 * the samplers leave them out of the CPU and wall profiles, and the heap recorder marks what
 * they allocate, unless a profile asks for them. */
#ifndef PPF_OWNTHREADS_H
#define PPF_OWNTHREADS_H

#include <Python.h>

/* 1 if the thread `ident` (kernel id `tid`, 0 if not known) is one of pyprofiler's, 0 if not,
 * -1 if the table changed at every try. Never waits and never needs the GIL. */
int ppf_own_thread(unsigned long ident, unsigned long tid);

/* The module's function set_own_threads(((ident, tid), ...)): pyprofiler's threads from now on.
 * Beyond 4 096, the rest count as the program's (and the samplers leave them out by name when
 * a window ends, if they still run). */
PyObject *ppf_set_own_threads(PyObject *module, PyObject *arg);

#endif
