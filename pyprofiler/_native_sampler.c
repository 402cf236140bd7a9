/* StackSampler: the CPU and wall samplers as a native thread.
 *
 * A Python sampler thread pays for a Python-level wake-up and for sys._current_frames() every
 * tick; this pthread wakes in C, holds the GIL only while it reads the other threads, and creates
 * no Python objects until stop() hands the table over.
 *
 * The pthread has one PyThreadState, made when it starts. Each tick it sleeps to the next
 * absolute deadline on a condition variable (stop() wakes it at once), takes the GIL, reads every
 * thread that runs Python code, and releases the GIL:
 *   CPU:  each thread's CPU clock; a thread that used CPU since the previous reading has its
 *         stack recorded, weighted by the nanoseconds used (a thread first seen: all its CPU);
 *   wall: every thread's stack, weighted by the wall time since the previous tick.
 * Sampler threads never run Python code, so they are skipped with every other frameless thread.
 * stop() wakes the pthread for a final reading, joins it and returns what was recorded.
 *
 * Every field but the stop flag (under `mutex`) is only touched with the GIL held, or by the
 * pthread before it is started and after it is joined.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "_native.h"

/* As stack_table.py: at most this many (stack, thread) entries; then one overflow entry per
 * thread. Threads beyond MAX_LABELS share the label at index MAX_LABELS. */
#define MAX_ENTRIES 10000
#define MAX_LABELS 10000
#define ENTRY_CAPACITY (MAX_ENTRIES + MAX_LABELS + 1)
#define ENTRY_SLOTS 65536 /* power of two, over 3 x ENTRY_CAPACITY: short probe runs */
#define OVERFLOW_DEPTH (-1)

/* Linux's encoding of a thread's CPU clock from its kernel tid (MAKE_THREAD_CPUCLOCK). */
#define CPUCLOCK_PERTHREAD 4
#define CPUCLOCK_SCHED 2

typedef struct {
    unsigned long ident; /* threading.get_ident() */
    unsigned long tid;   /* kernel thread id */
    uint64_t serial;     /* the thread state's unique id: idents and tids get reused */
} label_t;

typedef struct {
    uint64_t serial;
    unsigned long tid;
    int64_t cpu_ns; /* the CPU clock at the previous reading; 0 before any */
    int32_t label;  /* -1 until the thread's first sample */
} thread_t;

typedef struct {
    thread_t *items;
    size_t count, capacity;
} thread_list_t;

typedef struct {
    uint64_t hash;
    int64_t value;
    int64_t count;
    int32_t label;
    int depth;        /* OVERFLOW_DEPTH: the thread's samples that no longer fit */
    frame_t frames[]; /* leaf first; each code object referenced until stop() */
} entry_t;

enum { NEW, RUNNING, STOPPED };

typedef struct {
    PyObject_HEAD
    int64_t period_ns;
    int wall;
    int state;
    pid_t pid; /* of the process that started the pthread: a forked child has none to join */
    pthread_t thread;
    pthread_mutex_t mutex;
    pthread_cond_t wake;
    int stopping; /* under mutex */
    PyInterpreterState *interp;
    PyThreadState *tstate; /* the pthread's own */
    int64_t last_reading_ns;
    int64_t own_cpu_ns;
    const char *error;
    thread_list_t seen, seeing; /* threads at the previous reading, and at this one */
    uint64_t max_serial;        /* the newest thread state at the previous reading */
    label_t *labels;
    uint32_t n_labels;
    entry_t **entries;
    uint32_t n_entries;
    uint32_t *slots; /* open addressing: index + 1 into entries, 0 = empty */
    frame_t stack[MAX_SAMPLED_FRAMES];
} SamplerObject;

static int64_t
clock_ns(clockid_t clock)
{
    struct timespec ts;
    if (clock_gettime(clock, &ts) != 0) {
        return -1;
    }
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* CPU time of a thread of this process by kernel tid; -1 once it has exited. Never touches the
 * thread's own memory, so it cannot dangle. */
static int64_t
thread_cpu_ns(unsigned long tid)
{
    if (tid == 0) { /* Unknown; the clock of "tid 0" would be the calling thread's own. */
        return -1;
    }
    return clock_ns((clockid_t)((~(unsigned int)tid << 3) | CPUCLOCK_PERTHREAD | CPUCLOCK_SCHED));
}

static unsigned long
thread_tid(PyThreadState *tstate)
{
#if PY_VERSION_HEX >= 0x030B0000
    return tstate->native_thread_id;
#else
    /* No native id before 3.11: decode it from the pthread's CPU clock id (the same encoding).
     * Safe with the GIL held: a listed thread state's thread has not exited. */
    clockid_t clock;
    if (pthread_getcpuclockid((pthread_t)tstate->thread_id, &clock) != 0) {
        return 0;
    }
    return (unsigned long)(pid_t)~(clock >> 3);
#endif
}

static int
finalizing(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsFinalizing();
#else
    return _Py_IsFinalizing();
#endif
}

/* ---- the table --------------------------------------------------------------------------- */

static int
alloc_table(SamplerObject *self)
{
    self->labels = calloc(MAX_LABELS + 1, sizeof(label_t));
    self->entries = calloc(ENTRY_CAPACITY, sizeof(entry_t *));
    self->slots = calloc(ENTRY_SLOTS, sizeof(uint32_t));
    return self->labels != NULL && self->entries != NULL && self->slots != NULL ? 0 : -1;
}

/* With the GIL: releases the code objects. */
static void
free_table(SamplerObject *self)
{
    for (uint32_t i = 0; i < self->n_entries; i++) {
        entry_t *e = self->entries[i];
        for (int d = 0; d < e->depth; d++) {
            Py_DECREF(e->frames[d].code);
        }
        free(e);
    }
    free(self->entries);
    free(self->slots);
    free(self->labels);
    free(self->seen.items);
    free(self->seeing.items);
    self->entries = NULL;
    self->slots = NULL;
    self->labels = NULL;
    self->seen = self->seeing = (thread_list_t){NULL, 0, 0};
    self->n_entries = self->n_labels = 0;
}

/* The entry for (stack, label), created if need be; the label's overflow entry once the table
 * is full; NULL only if even that cannot be allocated. */
static entry_t *
find_entry(SamplerObject *self, const frame_t *frames, int depth, int32_t label)
{
    uint64_t hash = hash_stack(frames, depth < 0 ? 0 : depth, (size_t)label) ^ (uint64_t)(depth < 0);
    size_t mask = ENTRY_SLOTS - 1;
    for (size_t i = (size_t)hash & mask;; i = (i + 1) & mask) {
        uint32_t index = self->slots[i];
        if (index != 0) {
            entry_t *e = self->entries[index - 1];
            if (e->hash == hash && e->label == label &&
                same_frames(e->frames, frames, e->depth, depth)) {
                return e;
            }
            continue;
        }
        if (depth >= 0 && self->n_entries >= MAX_ENTRIES) {
            return find_entry(self, NULL, OVERFLOW_DEPTH, label);
        }
        int stored = depth < 0 ? 0 : depth;
        entry_t *e = calloc(1, sizeof(entry_t) + (size_t)stored * sizeof(frame_t));
        if (e == NULL) {
            return depth < 0 ? NULL : find_entry(self, NULL, OVERFLOW_DEPTH, label);
        }
        e->hash = hash;
        e->label = label;
        e->depth = depth;
        for (int d = 0; d < stored; d++) {
            e->frames[d] = frames[d];
            Py_INCREF(frames[d].code);
        }
        self->entries[self->n_entries++] = e;
        self->slots[i] = self->n_entries;
        return e;
    }
}

static void
add_sample(SamplerObject *self, PyThreadState *tstate, thread_t *thread, int64_t value)
{
    int truncated = 0;
    int depth = thread_stack(tstate, self->stack, MAX_SAMPLED_FRAMES, &truncated);
    if (depth == 0) { /* Only frames still being set up: nothing to attribute it to yet. */
        return;
    }
    if (thread->label < 0) {
        if (self->n_labels < MAX_LABELS) {
            self->labels[self->n_labels] =
                (label_t){tstate->thread_id, thread->tid, (uint64_t)tstate->id};
            thread->label = (int32_t)self->n_labels++;
        }
        else {
            thread->label = MAX_LABELS; /* zeroed: "thread table full" */
        }
    }
    entry_t *e = find_entry(self, self->stack, depth, thread->label);
    if (e != NULL) {
        e->count++;
        e->value += value;
    }
}

/* ---- readings ---------------------------------------------------------------------------- */

/* The previous reading of the thread state `serial`. Thread states are listed newest first and
 * their serials only grow, so the previous reading's threads come in the same order: one cursor
 * walks them, and a serial above the previous maximum is a thread that is new since. */
static int
find_thread(const thread_list_t *seen, size_t *cursor, uint64_t serial, uint64_t max_serial,
            thread_t *out)
{
    if (serial > max_serial) {
        return 0;
    }
    for (size_t i = *cursor; i < seen->count; i++) {
        if (seen->items[i].serial == serial) {
            *out = seen->items[i];
            *cursor = i + 1; /* Those skipped have exited. */
            return 1;
        }
    }
    return 0;
}

static void
keep_thread(thread_list_t *list, const thread_t *thread)
{
    if (list->count == list->capacity) {
        size_t capacity = list->capacity ? list->capacity * 2 : 64;
        thread_t *items = realloc(list->items, capacity * sizeof(thread_t));
        if (items == NULL) {
            return; /* Seen as new next time: at worst its CPU is counted from its start. */
        }
        list->items = items;
        list->capacity = capacity;
    }
    list->items[list->count++] = *thread;
}

/* One reading of every thread, with the GIL held; `record` is 0 for the one a profile starts
 * from. */
static void
read_threads(SamplerObject *self, int record)
{
    int64_t now = clock_ns(CLOCK_MONOTONIC);
    int64_t elapsed = now - self->last_reading_ns;
    self->last_reading_ns = now;
    size_t cursor = 0;
    uint64_t max_serial = 0;
    self->seeing.count = 0;
    for (PyThreadState *tstate = PyInterpreterState_ThreadHead(self->interp); tstate != NULL;
         tstate = PyThreadState_Next(tstate)) {
        if (tstate == self->tstate) {
            continue;
        }
        uint64_t serial = (uint64_t)tstate->id;
        thread_t thread;
        if (!find_thread(&self->seen, &cursor, serial, self->max_serial, &thread)) {
            thread = (thread_t){serial, thread_tid(tstate), 0, -1};
        }
        else if (thread.tid == 0) {
            /* Listed before its thread ran (3.13 makes the state in the starting thread): the
             * native id is set once the new thread binds it. */
            thread.tid = thread_tid(tstate);
        }
        if (serial > max_serial) {
            max_serial = serial;
        }
        if (thread_has_frames(tstate)) {
            if (self->wall) {
                if (record) {
                    add_sample(self, tstate, &thread, elapsed);
                }
            }
            else {
                int64_t cpu = thread_cpu_ns(thread.tid);
                if (cpu > thread.cpu_ns) {
                    if (record) {
                        add_sample(self, tstate, &thread, cpu - thread.cpu_ns);
                    }
                    thread.cpu_ns = cpu;
                }
            }
        }
        keep_thread(&self->seeing, &thread);
    }
    thread_list_t previous = self->seen;
    self->seen = self->seeing;
    self->seeing = previous;
    self->max_serial = max_serial;
}

/* ---- the pthread ------------------------------------------------------------------------- */

static void *
run(void *arg)
{
    SamplerObject *self = arg;
    if (!finalizing()) {
        /* Needs no GIL (PyGILState_Ensure does the same); binds the state to this thread. */
        self->tstate = PyThreadState_New(self->interp);
        if (self->tstate == NULL) {
            self->error = "could not create a thread state for the sampler thread";
        }
    }
    int64_t next = self->last_reading_ns + self->period_ns;
    while (self->tstate != NULL) {
        struct timespec deadline = {(time_t)(next / 1000000000), (long)(next % 1000000000)};
        pthread_mutex_lock(&self->mutex);
        while (!self->stopping &&
               pthread_cond_timedwait(&self->wake, &self->mutex, &deadline) != ETIMEDOUT) {
        }
        int last = self->stopping;
        pthread_mutex_unlock(&self->mutex);
        /* Taking the GIL while the interpreter finalizes would end this thread on the spot. */
        if (finalizing()) {
            break;
        }
        PyEval_RestoreThread(self->tstate);
        read_threads(self, 1);
        PyEval_SaveThread();
        if (last) {
            break;
        }
        next += self->period_ns;
        int64_t now = clock_ns(CLOCK_MONOTONIC);
        if (next < now) { /* Fell behind (a long GIL hold): skip ticks, never burst. */
            next = now + self->period_ns;
        }
    }
    if (self->tstate != NULL && !finalizing()) {
        PyEval_RestoreThread(self->tstate);
        PyThreadState_Clear(self->tstate);
        PyThreadState_DeleteCurrent();
    } /* While the interpreter finalizes, the state is left behind with the rest of it. */
    self->own_cpu_ns = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    return NULL;
}

/* ---- Python interface -------------------------------------------------------------------- */

static PyObject *
Sampler_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"hz", "wall", NULL};
    int hz, wall;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "ip", keywords, &hz, &wall)) {
        return NULL;
    }
    if (hz < 1 || hz > 1000) {
        PyErr_Format(PyExc_ValueError, "hz must be between 1 and 1000, not %d", hz);
        return NULL;
    }
    SamplerObject *self = (SamplerObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->period_ns = 1000000000 / hz;
    self->wall = wall;
    self->state = NEW;
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&self->wake, &attr);
    pthread_condattr_destroy(&attr);
    pthread_mutex_init(&self->mutex, NULL);
    self->pid = getpid();
    return (PyObject *)self;
}

static void
Sampler_dealloc(SamplerObject *self)
{
    /* Never RUNNING here: the pthread holds a reference until stop() joins it. */
    if (self->pid == getpid()) { /* A child's copies may be held by a thread it does not have. */
        pthread_cond_destroy(&self->wake);
        pthread_mutex_destroy(&self->mutex);
    }
    free_table(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Sampler_start(SamplerObject *self, PyObject *unused)
{
    if (self->state != NEW) {
        PyErr_SetString(PyExc_RuntimeError, "a StackSampler can only be started once");
        return NULL;
    }
    if (alloc_table(self) < 0) {
        free_table(self);
        return PyErr_NoMemory();
    }
    self->interp = PyThreadState_GetInterpreter(PyThreadState_Get());
    self->last_reading_ns = clock_ns(CLOCK_MONOTONIC);
    read_threads(self, 0);
    self->pid = getpid();
    self->stopping = 0;
    Py_INCREF(self); /* The pthread's, released by stop(). */
    int rc = pthread_create(&self->thread, NULL, run, self);
    if (rc != 0) {
        Py_DECREF(self);
        free_table(self);
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    self->state = RUNNING;
    Py_RETURN_NONE;
}

/* ([(stack, ident, tid, alive, value_ns, count)], own_cpu_ns, error): stack is ((code, line),
 * ...) leaf first, or None for the samples of a thread that no longer fit in the table; alive
 * says whether the thread still ran at the final reading (its ident may since be another's). */
static PyObject *
Sampler_stop(SamplerObject *self, PyObject *unused)
{
    if (self->state != RUNNING) {
        PyErr_SetString(PyExc_RuntimeError, "the StackSampler is not running");
        return NULL;
    }
    self->state = STOPPED;
    if (self->pid == getpid()) {
        pthread_mutex_lock(&self->mutex);
        self->stopping = 1;
        pthread_cond_signal(&self->wake);
        pthread_mutex_unlock(&self->mutex);
        Py_BEGIN_ALLOW_THREADS
        pthread_join(self->thread, NULL);
        Py_END_ALLOW_THREADS
    } /* else a forked child: the pthread stayed in the parent; the table is as it was at fork. */
    char *alive = calloc(MAX_LABELS + 1, 1);
    PyObject *records = alive == NULL ? PyErr_NoMemory() : PyList_New(0);
    for (size_t i = 0; records != NULL && i < self->seen.count; i++) {
        if (self->seen.items[i].label >= 0) {
            alive[self->seen.items[i].label] = 1;
        }
    }
    for (uint32_t i = 0; records != NULL && i < self->n_entries; i++) {
        entry_t *e = self->entries[i];
        const label_t *label = &self->labels[e->label];
        PyObject *stack = e->depth < 0 ? Py_NewRef(Py_None) : stack_tuple(e->frames, e->depth);
        PyObject *record =
            stack == NULL ? NULL
                          : Py_BuildValue("(NkkOLL)", stack, label->ident, label->tid,
                                          alive[e->label] ? Py_True : Py_False,
                                          (long long)e->value, (long long)e->count);
        if (record == NULL || PyList_Append(records, record) < 0) {
            Py_CLEAR(records);
        }
        Py_XDECREF(record);
    }
    free(alive);
    free_table(self);
    PyObject *result = records == NULL ? NULL
                                       : Py_BuildValue("(NLz)", records,
                                                       (long long)self->own_cpu_ns, self->error);
    Py_DECREF(self); /* The pthread's reference. */
    return result;
}

static PyMethodDef Sampler_methods[] = {
    {"start", (PyCFunction)Sampler_start, METH_NOARGS,
     "Take the first reading and start the sampler thread."},
    {"stop", (PyCFunction)Sampler_stop, METH_NOARGS,
     "Take a final reading, stop the thread and return ([(stack, ident, tid, alive, value_ns, "
     "count)], own_cpu_ns, error)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SamplerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pyprofiler._native.StackSampler",
    .tp_basicsize = sizeof(SamplerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "StackSampler(hz, wall): a native thread sampling every thread's stack, weighted "
              "by CPU used (wall=False) or by wall time (wall=True).",
    .tp_new = Sampler_new,
    .tp_dealloc = (destructor)Sampler_dealloc,
    .tp_methods = Sampler_methods,
};

int
sampler_init(PyObject *module)
{
    if (PyType_Ready(&SamplerType) < 0) {
        return -1;
    }
    Py_INCREF(&SamplerType);
    if (PyModule_AddObject(module, "StackSampler", (PyObject *)&SamplerType) < 0) {
        Py_DECREF(&SamplerType);
        return -1;
    }
    return 0;
}
