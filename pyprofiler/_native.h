/* What the parts of pyprofiler._native share. */
#ifndef PYPROFILER_NATIVE_H
#define PYPROFILER_NATIVE_H

#include <Python.h>
#include <stdint.h>

/* A fast pseudo-random number for sampling decisions (call with the GIL held). */
uint64_t native_random(void);

/* One Python frame of a captured stack. */
typedef struct {
    PyObject *code; /* borrowed while capturing; whoever keeps the frame holds a reference */
    int lineno;
} frame_t;

/* The current thread's Python stack, leaf first, at most `max` frames (*truncated is set when
 * there were more). Reads the interpreter's frames: no allocation, no frame objects. */
int capture_stack(frame_t *out, int max, int *truncated);
/* The CPU and wall samplers' depth limit: Go's since 1.23; deeper stacks keep their innermost. */
#define MAX_SAMPLED_FRAMES 128
/* ((code, line), ...) for frames, leaf first. */
PyObject *stack_tuple(const frame_t *frames, int depth);
/* A hash of the frames, mixed with `seed`, and their equality, for tables keyed by stack. */
uint64_t hash_stack(const frame_t *frames, int depth, size_t seed);
int same_frames(const frame_t *a, const frame_t *b, int depth, int other_depth);

/* _native_locks.c: the Lock and RLock types, and the contention tables they record into. */
int locks_init(PyObject *module);
PyObject *set_lock_profiling(PyObject *module, PyObject *args);
PyObject *lock_contentions(PyObject *module, PyObject *arg);
PyObject *clear_lock_contentions(PyObject *module, PyObject *unused);
void locks_after_fork(void);

/* _native_sampler.c: the StackSampler type (a native CPU or wall sampler thread that reads
 * stacks without the GIL, through _native_stackread.c). */
int sampler_init(PyObject *module);

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

#endif
