/* Pseudo-random numbers for sampling decisions: which allocation, which lock event, when the
 * sampler thread wakes. Statistically plenty for choosing sample points, and fast. */
#ifndef PPF_RANDOM_H
#define PPF_RANDOM_H

#include <Python.h>
#include <stdint.h>

/* xorshift64* over a state of the caller's: the sampler thread, which runs without the GIL,
 * keeps its own. `*state` must never be 0. */
static inline uint64_t
ppf_xorshift(uint64_t *state)
{
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return *state * 0x2545F4914F6CDD1DULL;
}

/* From the state shared by the heap hooks and the locks: call with the GIL held. */
uint64_t ppf_random(void);
/* Seed the shared state from the time and the pid (module init). */
void ppf_random_seed(void);
/* In a forked child: a state of its own, so that it does not sample where its parent does. */
void ppf_random_after_fork(void);
/* An exponentially distributed gap of mean `mean` (Go's MemProfileRate), at least 1; `mean`
 * itself when it is 0 or 1. */
Py_ssize_t ppf_next_gap(Py_ssize_t mean);

#endif
