/* pyprofiler's own threads (see ownthreads.h), as (ident, kernel tid) pairs: published by
 * Python code as each starts and ends (creation.py), read by every sampler pthread without the
 * GIL and by the heap hooks. A
 * sequence lock, so that neither side ever waits for the other: the writer (one at a time: it
 * holds the GIL) makes the sequence odd, rewrites the table, makes it even again; a reader that
 * saw it odd, or changed across its read, reads again, a few times at most, and otherwise keeps
 * what it knew. The table is static memory, so a read that overlaps a write may be wrong, which
 * the sequence tells, but never faults. An ident is matched with its tid where both are known:
 * idents are reused as soon as a thread ends, kernel tids only after a wrap of the pid space. */
#define PY_SSIZE_T_CLEAN
#include "ownthreads.h"

#include <stdint.h>
#include <stdlib.h>

#define MAX_OWN_THREADS 4096
#define OWN_READ_TRIES 8

typedef struct {
    unsigned long ident;
    unsigned long tid; /* 0: not known */
} own_thread_t;

static own_thread_t own_threads[MAX_OWN_THREADS]; /* sorted by ident */
static uint32_t n_own_threads;
static uint64_t own_sequence;

int
ppf_own_thread(unsigned long ident, unsigned long tid)
{
    for (int tries = 0; tries < OWN_READ_TRIES; tries++) {
        uint64_t before = __atomic_load_n(&own_sequence, __ATOMIC_ACQUIRE);
        if (before & 1) {
            continue;
        }
        uint32_t n = __atomic_load_n(&n_own_threads, __ATOMIC_RELAXED);
        uint32_t low = 0, high = n < MAX_OWN_THREADS ? n : MAX_OWN_THREADS;
        while (low < high) {
            uint32_t middle = low + (high - low) / 2;
            if (__atomic_load_n(&own_threads[middle].ident, __ATOMIC_RELAXED) < ident) {
                low = middle + 1;
            }
            else {
                high = middle;
            }
        }
        int found = 0;
        if (low < n && low < MAX_OWN_THREADS &&
            __atomic_load_n(&own_threads[low].ident, __ATOMIC_RELAXED) == ident) {
            unsigned long own_tid = __atomic_load_n(&own_threads[low].tid, __ATOMIC_RELAXED);
            found = own_tid == 0 || tid == 0 || own_tid == tid;
        }
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&own_sequence, __ATOMIC_RELAXED) == before) {
            return found;
        }
    }
    return -1;
}

static int
compare_own(const void *a, const void *b)
{
    unsigned long x = ((const own_thread_t *)a)->ident, y = ((const own_thread_t *)b)->ident;
    return (x > y) - (x < y);
}

PyObject *
ppf_set_own_threads(PyObject *module, PyObject *arg)
{
    PyObject *items = PySequence_Fast(arg, "expected a sequence of (ident, tid) pairs");
    if (items == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(items);
    own_thread_t *table = PyMem_Malloc((size_t)(n > 0 ? n : 1) * sizeof(own_thread_t));
    if (table == NULL) {
        Py_DECREF(items);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(items, i), "kk", &table[i].ident,
                              &table[i].tid)) {
            PyMem_Free(table);
            Py_DECREF(items);
            return NULL;
        }
    }
    Py_DECREF(items);
    qsort(table, (size_t)n, sizeof(own_thread_t), compare_own);
    uint32_t kept = n < MAX_OWN_THREADS ? (uint32_t)n : MAX_OWN_THREADS;
    uint64_t sequence = __atomic_load_n(&own_sequence, __ATOMIC_RELAXED);
    __atomic_store_n(&own_sequence, sequence + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    for (uint32_t i = 0; i < kept; i++) {
        __atomic_store_n(&own_threads[i].ident, table[i].ident, __ATOMIC_RELAXED);
        __atomic_store_n(&own_threads[i].tid, table[i].tid, __ATOMIC_RELAXED);
    }
    __atomic_store_n(&n_own_threads, kept, __ATOMIC_RELAXED);
    __atomic_store_n(&own_sequence, sequence + 2, __ATOMIC_RELEASE);
    PyMem_Free(table);
    Py_RETURN_NONE;
}
