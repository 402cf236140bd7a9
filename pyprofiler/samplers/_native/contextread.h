/* The value of one context variable in a thread's current context, read without the GIL (as
 * stackread.c reads stacks): how the sampler knows the labels in force on each thread. */
#ifndef PPF_CONTEXTREAD_H
#define PPF_CONTEXTREAD_H

#include <Python.h>
#include <stdint.h>

/* learn_contexts(empty, full, var, value): with the GIL, once. `empty` is a new Context, `full`
 * one where `var` is `value` among enough other variables that its mapping has grown past one
 * node. Learns the mapping's node types from them and checks that a read of `var` in `full`
 * finds `value`; returns whether it did (otherwise every read answers 0). */
PyObject *ppf_learn_contexts(PyObject *module, PyObject *args);

/* The address of the value of the learnt variable in the context at `context` (a thread
 * state's current context), or 0: none, or not learnt, or a context that changed as it was
 * read. Never calls Python code or allocates. */
uintptr_t ppf_context_value(uintptr_t context);

/* thread_labels(): {ident: value address} for every thread of the interpreter, with the GIL. */
PyObject *ppf_thread_labels(PyObject *module, PyObject *unused);

/* With the GIL: the same for the calling thread, as the recorders that run in it read it (the
 * heap hooks, the locks). Neither allocates nor runs Python code. */
uintptr_t ppf_context_value_here(void);

#endif
