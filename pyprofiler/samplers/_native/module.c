/* pyprofiler.samplers._native: the module that the parts below are assembled into.
 *
 * Each part owns its state and exports its Python-visible functions through its header; this
 * file only lists them, adds the types and the shared limits, and holds the one fork entry.
 * Nothing includes this file or calls into it, so that the parts' headers form a DAG:
 *   compat.h limits.h random.h gil.h (no dependencies of ours)
 *   ownthreads.h                     (pyprofiler's own threads, read without the GIL)
 *   frames.h stackread.h             (the current thread's stack; any thread's, without the GIL)
 *   contextread.h                    (any thread's context variable, over stackread.h)
 *   heap.h locks.h sampler.h         (the recorders, over the above)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "contextread.h"
#include "frames.h"
#include "heap.h"
#include "limits.h"
#include "locks.h"
#include "ownthreads.h"
#include "random.h"
#include "sampler.h"
#include "stackread.h"

/* In a forked child, every part starts clean; the sampler needs nothing (see sampler.h). The
 * random state first: the heap's new countdown is drawn from it. */
static PyObject *
after_fork_in_child(PyObject *module, PyObject *unused)
{
    ppf_random_after_fork();
    ppf_locks_after_fork();
    if (ppf_heap_after_fork() < 0) {
        return PyErr_NoMemory();
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"set_rate", ppf_heap_set_rate, METH_O,
     "Set the mean bytes between samples (0 removes the hooks); returns the previous rate."},
    {"get_rate", ppf_heap_get_rate, METH_NOARGS, "The current mean bytes between samples."},
    {"buckets", ppf_heap_buckets, METH_NOARGS,
     "Sampled allocations: [(frames, allocs, frees, alloc_bytes, free_bytes, labels, own)]."},
    {"stats", ppf_heap_stats, METH_NOARGS, "The sampler's own counters."},
    {"reset", ppf_heap_reset, METH_NOARGS, "Forget every sample."},
    {"frame_stack", ppf_frame_stack, METH_O,
     "frame_stack(frame): ((code, line), ...) from a frame outwards, without frame objects."},
    {"current_stack", ppf_current_stack, METH_O,
     "current_stack(skip): this thread's ((code, line), ...), leaf first, without frame objects."},
    {"suspended_line", ppf_suspended_line, METH_O,
     "The line a generator or coroutine is suspended at (None once finished), without "
     "creating its frame object."},
    {"stack_reads_available", ppf_stack_reads_available, METH_NOARGS,
     "Whether the sampler can copy this process's stacks without the GIL (process_vm_readv)."},
    {"learn_contexts", ppf_learn_contexts, METH_VARARGS,
     "learn_contexts(empty, full, var, value): read `var` in threads' contexts from now on."},
    {"thread_labels", ppf_thread_labels, METH_NOARGS,
     "{ident: address of the learnt variable's value} of every thread (0: none)."},
    {"line_of", ppf_line_of, METH_VARARGS,
     "line_of(code, offset): the line at a bytecode offset, as the sampler reads it."},
    {"set_own_threads", ppf_set_own_threads, METH_O,
     "set_own_threads(((ident, tid), ...)): pyprofiler's own threads, which StackSamplers leave "
     "out unless told otherwise and whose allocations the heap recorder marks."},
    {"set_lock_profiling", ppf_set_lock_profiling, METH_VARARGS,
     "set_lock_profiling(block_rate_ns, mutex_fraction, label_lock): what the Lock and RLock "
     "types record, and what labels a new entry (label_lock(lock) -> str, or None not to "
     "record)."},
    {"lock_contentions", ppf_lock_contentions, METH_O,
     "lock_contentions('block' or 'mutex'): [(((code, line), ...), label, count, delay_ns)]."},
    {"clear_lock_contentions", ppf_clear_lock_contentions, METH_NOARGS,
     "Forget every contention the Lock and RLock types recorded."},
    {"after_fork_in_child", after_fork_in_child, METH_NOARGS, "Clean state in a forked child."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "pyprofiler.samplers._native",
    "Sampling allocation hooks (heap, allocs), contention-reporting locks (block, mutex) and a "
    "sampler thread that reads stacks without the GIL (CPU, wall).",
    -1, methods,
};

static int
add_limits(PyObject *module)
{
#define ADD_LIMIT(name) PyModule_AddIntConstant(module, #name, PPF_##name) < 0 ||
    return PPF_LIMITS(ADD_LIMIT) 0 ? -1 : 0;
#undef ADD_LIMIT
}

PyMODINIT_FUNC
PyInit__native(void)
{
    ppf_heap_init();
    ppf_random_seed();
    PyObject *module = PyModule_Create(&module_def);
    if (module != NULL &&
        (add_limits(module) < 0 || ppf_locks_init(module) < 0 || ppf_sampler_init(module) < 0)) {
        Py_CLEAR(module);
    }
    return module;
}
