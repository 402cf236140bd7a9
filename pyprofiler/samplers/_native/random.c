/* The random state shared by the heap hooks and the locks (see random.h). Only touched with the
 * GIL held, so it needs no lock. */
#include "random.h"

#include <math.h>
#include <time.h>
#include <unistd.h>

static uint64_t state = 0x9E3779B97F4A7C15ULL;

uint64_t
ppf_random(void)
{
    return ppf_xorshift(&state);
}

void
ppf_random_seed(void)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    state ^= (uint64_t)now.tv_nsec * 0xBF58476D1CE4E5B9ULL ^ (uint64_t)getpid();
    if (state == 0) {
        state = 0x9E3779B97F4A7C15ULL;
    }
}

void
ppf_random_after_fork(void)
{
    state ^= (uint64_t)getpid() * 0x9E3779B97F4A7C15ULL;
}

Py_ssize_t
ppf_next_gap(Py_ssize_t mean)
{
    if (mean <= 1) {
        return mean;
    }
    /* Uniform in (0, 1], so the log is finite. */
    double u = ((double)(ppf_random() >> 11) + 1.0) / 9007199254740992.0;
    double gap = -log(u) * (double)mean;
    if (gap > (double)PY_SSIZE_T_MAX / 2) {
        gap = (double)PY_SSIZE_T_MAX / 2;
    }
    return (Py_ssize_t)gap + 1;
}
