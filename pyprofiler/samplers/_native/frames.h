/* The current thread's Python stack, read with the GIL from the interpreter's own frames, and
 * stacks as keys: what the heap hooks and the locks record, and the sampler's entries hold. */
#ifndef PPF_FRAMES_H
#define PPF_FRAMES_H

#include <Python.h>
#include <stdint.h>

/* One Python frame of a captured stack. */
typedef struct {
    PyObject *code; /* borrowed while capturing; whoever keeps the frame holds a reference */
    int lineno;
} ppf_frame_t;

/* The current thread's Python stack, leaf first, at most `max` frames (*truncated is set when
 * there were more). Reads the interpreter's frames: no allocation, no frame objects, so that an
 * allocation hook can call it. */
int ppf_capture_stack(ppf_frame_t *out, int max, int *truncated);
/* ((code, line), ...) for frames, leaf first. */
PyObject *ppf_stack_tuple(const ppf_frame_t *frames, int depth);

/* A hash of the frames, mixed with `seed`, for tables keyed by stack. Inline: the heap hooks and
 * the sampler thread call it for every sample. */
static inline uint64_t
ppf_hash_stack(const ppf_frame_t *frames, int depth, size_t seed)
{
    uint64_t h = 1469598103934665603ULL ^ (uint64_t)seed;
    for (int i = 0; i < depth; i++) {
        h = (h ^ (uint64_t)(uintptr_t)frames[i].code) * 1099511628211ULL;
        h = (h ^ (uint64_t)(uint32_t)frames[i].lineno) * 1099511628211ULL;
    }
    return h;
}

/* Field by field: ppf_frame_t has padding, which memcmp would compare too. */
static inline int
ppf_same_frames(const ppf_frame_t *a, const ppf_frame_t *b, int depth, int other_depth)
{
    if (depth != other_depth) {
        return 0;
    }
    for (int i = 0; i < depth; i++) {
        if (a[i].code != b[i].code || a[i].lineno != b[i].lineno) {
            return 0;
        }
    }
    return 1;
}

/* The module's functions frame_stack(frame), current_stack(skip) and suspended_line(gen). */
PyObject *ppf_frame_stack(PyObject *module, PyObject *frame);
PyObject *ppf_current_stack(PyObject *module, PyObject *arg);
PyObject *ppf_suspended_line(PyObject *module, PyObject *gen);

#endif
