/* The CPU and wall profiles' recorder: StackSampler, a native thread that reads every thread's
 * stack without the GIL (through stackread.h) at random instants around its period. */
#ifndef PPF_SAMPLER_H
#define PPF_SAMPLER_H

#include <Python.h>

/* Adds the StackSampler type to the module. A forked child needs no reset: each sampler knows
 * the pid that started its thread, and pyprofiler's own threads are published again. */
int ppf_sampler_init(PyObject *module);

#endif
