/* Lock and RLock types with contention accounting, for the block and mutex profiles.
 *
 * Drop-in replacements for _thread.lock and _thread.RLock, installed in `threading` while a
 * block or mutex rate is set. An uncontended acquire is one non-blocking try of the underlying
 * lock, exactly as _thread's own fast path; only an acquire that has to wait reads the clock.
 *
 * Mutex delay: each lock integrates "number of waiters x time" while it has waiters. A release
 * charges what accrued since the previous charge to the releasing thread's stack, as Go charges
 * contention to the unlocker. Every field is only touched with the GIL held.
 */
#define PY_SSIZE_T_CLEAN
#include "locks.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "compat.h"
#include "contextread.h"
#include "frames.h"
#include "limits.h"
#include "random.h"

static int64_t block_rate;     /* ns; 0 = off */
static int64_t mutex_fraction; /* 1 in n; 0 = off */
static PyObject *label_lock;   /* callable(lock) -> str, or None not to record; NULL = off */

static int64_t
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- contention tables -------------------------------------------------------------------
 *
 * As Go's runtime does, an event is added to its (stack, lock type) entry where it happens,
 * without calling into Python: a block event is recorded while the waiter holds the lock it
 * waited for, so anything slow there lengthens the critical section and makes more contention.
 * Python is called only to label a new entry (locks._label_native), with the frames that
 * acquired or released the lock still there to read. Every field is only touched with the GIL
 * held. */

#define CONTENTION_SLOTS (PPF_LOCK_MAX_ENTRIES * 2)

typedef struct {
    uint64_t hash;
    PyObject *kind;  /* the lock's type: labels name it */
    PyObject *label; /* str; "" in the overflow entry */
    uintptr_t labels; /* the label set in force (contextread.h), or 0 */
    double count;    /* Go's unsampling makes both fractional until read */
    double delay_ns;
    int depth;
    ppf_frame_t frames[]; /* leaf first; each code object referenced */
} entry_t;

typedef struct {
    entry_t **entries; /* dense, in creation order; entries[0] collects what no longer fits */
    uint32_t used;
    uint32_t *slots; /* open addressing: index + 1 into entries, 0 = empty */
} table_t;

static table_t block_table, mutex_table;
static int listing; /* lock_contentions() is building Python objects from entry pointers */

static void
free_entry(entry_t *entry)
{
    for (int i = 0; i < entry->depth; i++) {
        Py_DECREF(entry->frames[i].code);
    }
    Py_XDECREF(entry->kind);
    Py_XDECREF(entry->label);
    PyMem_RawFree(entry);
}

static entry_t *
new_entry(uint64_t hash, PyObject *kind, PyObject *label, uintptr_t labels,
          const ppf_frame_t *frames, int depth)
{
    entry_t *entry = PyMem_RawCalloc(1, sizeof(entry_t) + (size_t)depth * sizeof(ppf_frame_t));
    if (entry == NULL) {
        return NULL;
    }
    entry->hash = hash;
    entry->kind = Py_XNewRef(kind);
    entry->label = Py_XNewRef(label);
    entry->labels = labels;
    entry->depth = depth;
    for (int i = 0; i < depth; i++) {
        entry->frames[i] = frames[i];
        Py_INCREF(frames[i].code);
    }
    return entry;
}

static int
ensure_table(table_t *t)
{
    if (t->entries != NULL) {
        return 0;
    }
    entry_t **entries = PyMem_RawCalloc(PPF_LOCK_MAX_ENTRIES + 1, sizeof(entry_t *));
    uint32_t *slots = PyMem_RawCalloc(CONTENTION_SLOTS, sizeof(uint32_t));
    PyObject *empty = PyUnicode_New(0, 0);
    entry_t *overflow = empty == NULL ? NULL : new_entry(0, NULL, empty, 0, NULL, 0);
    Py_XDECREF(empty);
    if (entries == NULL || slots == NULL || overflow == NULL) {
        PyMem_RawFree(entries);
        PyMem_RawFree(slots);
        PyMem_RawFree(overflow);
        return -1;
    }
    entries[0] = overflow;
    *t = (table_t){.entries = entries, .used = 1, .slots = slots};
    return 0;
}

/* The entry for (stack, kind, label set), or the overflow entry when the table is full; when
 * there is neither, one made with `label`, or NULL if `label` is NULL (the caller has one
 * computed: a full table then never costs a label per event). */
static entry_t *
find_entry(table_t *t, uint64_t hash, PyObject *kind, uintptr_t labels, const ppf_frame_t *frames,
           int depth, PyObject *label)
{
    if (ensure_table(t) < 0) {
        return NULL;
    }
    for (size_t i = (size_t)hash % CONTENTION_SLOTS;; i = (i + 1) % CONTENTION_SLOTS) {
        uint32_t index = t->slots[i];
        if (index == 0) {
            if (t->used > PPF_LOCK_MAX_ENTRIES) {
                return t->entries[0];
            }
            if (label == NULL) {
                return NULL;
            }
            entry_t *entry = new_entry(hash, kind, label, labels, frames, depth);
            if (entry == NULL) {
                return t->entries[0];
            }
            t->entries[t->used++] = entry;
            t->slots[i] = t->used;
            return entry;
        }
        entry_t *entry = t->entries[index - 1];
        if (entry->hash == hash && entry->kind == kind && entry->labels == labels &&
            ppf_same_frames(entry->frames, frames, depth, entry->depth)) {
            return entry;
        }
    }
}

/* The label for a new entry from locks._label_native(lock), or NULL not to record the event
 * (its own waits, or a failure, which is reported and never raised into the program). */
static PyObject *
label_of(PyObject *lock)
{
    if (label_lock == NULL) {
        return NULL;
    }
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    PyObject *function = Py_NewRef(label_lock); /* It may be replaced while it runs. */
    PyObject *label = PyObject_CallOneArg(function, lock);
    if (label == NULL) {
        PyErr_WriteUnraisable(function);
    }
    else if (!PyUnicode_Check(label)) {
        Py_CLEAR(label);
    }
    Py_DECREF(function);
    PyErr_Restore(exc_type, exc_value, exc_tb);
    return label;
}

/* Add one event, already scaled by Go's rules, to the calling thread's stack's entry. */
static void
record(table_t *t, PyObject *lock, double count, double delay_ns)
{
    ppf_frame_t frames[PPF_LOCK_MAX_DEPTH];
    int truncated = 0;
    int depth = ppf_capture_stack(frames, PPF_LOCK_MAX_DEPTH, &truncated);
    PyObject *kind = (PyObject *)Py_TYPE(lock);
    uintptr_t labels = ppf_context_value_here();
    uint64_t hash = ppf_hash_stack(frames, depth, (size_t)(uintptr_t)kind) ^
                    ((uint64_t)labels * 0x9E3779B97F4A7C15ULL);
    entry_t *entry = find_entry(t, hash, kind, labels, frames, depth, NULL);
    if (entry == NULL) {
        /* Other threads may record meanwhile: find_entry looks again before adding. The
         * frames stay valid, as this thread is still running in them. */
        PyObject *label = label_of(lock);
        if (label == NULL) {
            return;
        }
        entry = find_entry(t, hash, kind, labels, frames, depth, label);
        Py_DECREF(label);
        if (entry == NULL) {
            return;
        }
    }
    entry->count += count;
    entry->delay_ns += delay_ns;
}

static void
report_block(int64_t delay, PyObject *lock)
{
    /* Go's rule: events at least `rate` long always; shorter ones with probability d/rate,
     * then standing for rate/d events and `rate` nanoseconds. */
    if (block_rate <= 0 || delay <= 0) {
        return;
    }
    if (delay >= block_rate) {
        record(&block_table, lock, 1, (double)delay);
    }
    else if ((int64_t)(ppf_random() % (uint64_t)block_rate) < delay) {
        record(&block_table, lock, (double)block_rate / (double)delay, (double)block_rate);
    }
}

static void
report_mutex(int64_t delay, PyObject *lock)
{
    /* 1 in `fraction`, counted `fraction` times. */
    if (mutex_fraction <= 0 || delay <= 0) {
        return;
    }
    if (mutex_fraction > 1 && ppf_random() % (uint64_t)mutex_fraction != 0) {
        return;
    }
    record(&mutex_table, lock, (double)mutex_fraction, (double)delay * (double)mutex_fraction);
}

/* ---- shared contention state ------------------------------------------------------------ */

typedef struct {
    int waiters;
    int64_t accrued_ns; /* waiter-nanoseconds since the last charge */
    int64_t since_ns;
    uint64_t generation; /* fork_generation when last used */
} contention_t;

/* Bumped in a forked child: waiters counted in the parent do not exist there. */
static uint64_t fork_generation;

void
ppf_locks_after_fork(void)
{
    fork_generation++;
    listing = 0; /* Whoever was listing is not in the child. */
}

static void
integrate(contention_t *c, int64_t now)
{
    if (c->generation != fork_generation) {
        *c = (contention_t){.since_ns = now, .generation = fork_generation};
    }
    if (c->waiters > 0) {
        c->accrued_ns += (int64_t)c->waiters * (now - c->since_ns);
    }
    c->since_ns = now;
}

/* Take the underlying lock, waiting if need be. Returns 1 acquired, 0 timed out, -1 error. */
static int
acquire_timed(PyObject *owner, PyThread_type_lock lock, contention_t *c, int blocking,
              PyObject *timeout_obj)
{
    /* Arguments first, as _thread checks them: a free lock does not make a bad call good. */
    double timeout = -1;
    if (timeout_obj != NULL) {
        timeout = PyFloat_AsDouble(timeout_obj);
        if (timeout == -1 && PyErr_Occurred()) {
            return -1;
        }
    }
    if (!blocking && timeout != -1) {
        PyErr_SetString(PyExc_ValueError, "can't specify a timeout for a non-blocking call");
        return -1;
    }
    if (timeout < 0 && timeout != -1) {
        PyErr_SetString(PyExc_ValueError, "timeout value must be a non-negative number");
        return -1;
    }
    if (timeout > (double)PY_TIMEOUT_MAX / 1e6) {
        PyErr_SetString(PyExc_OverflowError, "timeout value is too large");
        return -1;
    }
    if (PyThread_acquire_lock_timed(lock, 0, 0) == PY_LOCK_ACQUIRED) {
        return 1;
    }
    if (!blocking) {
        return 0;
    }
    int64_t start = now_ns();
    int64_t deadline = timeout < 0 ? -1 : start + (int64_t)(timeout * 1e9);
    integrate(c, start);
    c->waiters++;
    PyLockStatus status;
    for (;;) {
        PY_TIMEOUT_T microseconds = -1;
        if (deadline >= 0) {
            int64_t left = deadline - now_ns();
            microseconds = left > 0 ? (PY_TIMEOUT_T)(left / 1000) : 0;
        }
        Py_BEGIN_ALLOW_THREADS
        status = PyThread_acquire_lock_timed(lock, microseconds, 1);
        Py_END_ALLOW_THREADS
        if (status != PY_LOCK_INTR) {
            break;
        }
        /* Interrupted by a signal: run its handlers, as _thread does, then wait on. */
        if (Py_MakePendingCalls() < 0) {
            break;
        }
    }
    int64_t end = now_ns();
    integrate(c, end);
    c->waiters--;
    if (status == PY_LOCK_INTR) {
        return -1;
    }
    if (status == PY_LOCK_ACQUIRED) {
        report_block(end - start, owner);
        return 1;
    }
    return 0;
}

static void
release_accounted(PyObject *owner, PyThread_type_lock lock, contention_t *c)
{
    if (c->generation != fork_generation) {
        *c = (contention_t){.generation = fork_generation};
    }
    if (c->waiters == 0 && c->accrued_ns == 0) {
        PyThread_release_lock(lock);
        return;
    }
    integrate(c, now_ns());
    int64_t delay = c->accrued_ns;
    c->accrued_ns = 0;
    PyThread_release_lock(lock);
    report_mutex(delay, owner);
}

static int
parse_acquire(PyObject *args, PyObject *kwargs, int *blocking, PyObject **timeout)
{
    static char *keywords[] = {"blocking", "timeout", NULL};
    *blocking = 1;
    *timeout = NULL;
    return PyArg_ParseTupleAndKeywords(args, kwargs, "|pO:acquire", keywords, blocking, timeout);
}

/* ---- what Lock and RLock share ------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyThread_type_lock lock;
    contention_t contention;
    PyObject *weakreflist;
} BaseLock;

static PyObject *
base_new(PyTypeObject *type)
{
    BaseLock *self = (BaseLock *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->lock = PyThread_allocate_lock();
    if (self->lock == NULL) {
        Py_DECREF(self);
        PyErr_SetString(PyExc_RuntimeError, "can't allocate lock");
        return NULL;
    }
    return (PyObject *)self;
}

static void
base_dealloc(BaseLock *self, int held)
{
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    if (self->lock != NULL) {
        if (held) {
            PyThread_release_lock(self->lock);
        }
        PyThread_free_lock(self->lock);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* After fork only this thread exists: whoever held the lock, or waited for it, is gone. */
static int
base_at_fork_reinit(BaseLock *self)
{
    PyThread_type_lock lock = PyThread_allocate_lock();
    if (lock == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "can't allocate lock");
        return -1;
    }
    PyThread_free_lock(self->lock);
    self->lock = lock;
    self->contention = (contention_t){0};
    return 0;
}

/* ---- Lock --------------------------------------------------------------------------------- */

typedef struct {
    BaseLock base;
    int locked;
} LockObject;

static PyObject *
Lock_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    return base_new(type);
}

static void
Lock_dealloc(LockObject *self)
{
    base_dealloc(&self->base, self->locked);
}

static PyObject *
Lock_acquire(LockObject *self, PyObject *args, PyObject *kwargs)
{
    int blocking;
    PyObject *timeout;
    if (!parse_acquire(args, kwargs, &blocking, &timeout)) {
        return NULL;
    }
    BaseLock *base = &self->base;
    int acquired =
        acquire_timed((PyObject *)self, base->lock, &base->contention, blocking, timeout);
    if (acquired < 0) {
        return NULL;
    }
    if (acquired) {
        self->locked = 1;
    }
    return PyBool_FromLong(acquired);
}

static PyObject *
Lock_release(LockObject *self, PyObject *unused)
{
    if (!self->locked) {
        PyErr_SetString(PyExc_RuntimeError, "release unlocked lock");
        return NULL;
    }
    self->locked = 0;
    release_accounted((PyObject *)self, self->base.lock, &self->base.contention);
    Py_RETURN_NONE;
}

static PyObject *
Lock_exit(LockObject *self, PyObject *args)
{
    return Lock_release(self, NULL);
}

static PyObject *
Lock_locked(LockObject *self, PyObject *unused)
{
    return PyBool_FromLong(self->locked);
}

static PyObject *
Lock_at_fork_reinit(LockObject *self, PyObject *unused)
{
    if (base_at_fork_reinit(&self->base) < 0) {
        return NULL;
    }
    self->locked = 0;
    Py_RETURN_NONE;
}

static PyObject *
Lock_repr(LockObject *self)
{
    return PyUnicode_FromFormat("<%s %s object at %p>", self->locked ? "locked" : "unlocked",
                                Py_TYPE(self)->tp_name, self);
}

static PyMethodDef Lock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))Lock_acquire, METH_VARARGS | METH_KEYWORDS, NULL},
    {"acquire_lock", (PyCFunction)(void (*)(void))Lock_acquire, METH_VARARGS | METH_KEYWORDS,
     NULL},
    {"release", (PyCFunction)Lock_release, METH_NOARGS, NULL},
    {"release_lock", (PyCFunction)Lock_release, METH_NOARGS, NULL},
    {"locked", (PyCFunction)Lock_locked, METH_NOARGS, NULL},
    {"locked_lock", (PyCFunction)Lock_locked, METH_NOARGS, NULL},
    {"__enter__", (PyCFunction)(void (*)(void))Lock_acquire, METH_VARARGS | METH_KEYWORDS,
     NULL},
    {"__exit__", (PyCFunction)Lock_exit, METH_VARARGS, NULL},
    {"_at_fork_reinit", (PyCFunction)Lock_at_fork_reinit, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LockType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pyprofiler.samplers._native.Lock",
    .tp_basicsize = sizeof(LockObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A threading.Lock that reports contention to the block and mutex profiles.",
    .tp_new = Lock_new,
    .tp_dealloc = (destructor)Lock_dealloc,
    .tp_repr = (reprfunc)Lock_repr,
    .tp_methods = Lock_methods,
    .tp_weaklistoffset = offsetof(LockObject, base.weakreflist),
};

/* ---- RLock -------------------------------------------------------------------------------- */

typedef struct {
    BaseLock base;
    unsigned long owner;
    unsigned long count;
} RLockObject;

static PyObject *
RLock_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    return base_new(type);
}

static void
RLock_dealloc(RLockObject *self)
{
    base_dealloc(&self->base, self->count > 0);
}

static PyObject *
RLock_acquire(RLockObject *self, PyObject *args, PyObject *kwargs)
{
    int blocking;
    PyObject *timeout;
    if (!parse_acquire(args, kwargs, &blocking, &timeout)) {
        return NULL;
    }
    unsigned long me = PyThread_get_thread_ident();
    if (self->count > 0 && self->owner == me) {
        if (self->count == ULONG_MAX) {
            PyErr_SetString(PyExc_OverflowError, "Internal lock count overflowed");
            return NULL;
        }
        self->count++;
        Py_RETURN_TRUE;
    }
    BaseLock *base = &self->base;
    int acquired =
        acquire_timed((PyObject *)self, base->lock, &base->contention, blocking, timeout);
    if (acquired < 0) {
        return NULL;
    }
    if (acquired) {
        self->owner = me;
        self->count = 1;
    }
    return PyBool_FromLong(acquired);
}

static PyObject *
RLock_release(RLockObject *self, PyObject *unused)
{
    if (self->count == 0 || self->owner != PyThread_get_thread_ident()) {
        PyErr_SetString(PyExc_RuntimeError, "cannot release un-acquired lock");
        return NULL;
    }
    if (--self->count == 0) {
        self->owner = 0;
        release_accounted((PyObject *)self, self->base.lock, &self->base.contention);
    }
    Py_RETURN_NONE;
}

static PyObject *
RLock_exit(RLockObject *self, PyObject *args)
{
    return RLock_release(self, NULL);
}

static PyObject *
RLock_is_owned(RLockObject *self, PyObject *unused)
{
    return PyBool_FromLong(self->count > 0 && self->owner == PyThread_get_thread_ident());
}

static PyObject *
RLock_recursion_count(RLockObject *self, PyObject *unused)
{
    unsigned long me = PyThread_get_thread_ident();
    return PyLong_FromUnsignedLong(self->owner == me ? self->count : 0);
}

/* Condition.wait support: give the lock up entirely, then take it back with the same state. */
static PyObject *
RLock_release_save(RLockObject *self, PyObject *unused)
{
    if (self->count == 0) {
        PyErr_SetString(PyExc_RuntimeError, "cannot release un-acquired lock");
        return NULL;
    }
    unsigned long count = self->count, owner = self->owner;
    self->count = 0;
    self->owner = 0;
    release_accounted((PyObject *)self, self->base.lock, &self->base.contention);
    return Py_BuildValue("(kk)", count, owner);
}

static PyObject *
RLock_acquire_restore(RLockObject *self, PyObject *args)
{
    unsigned long count, owner;
    if (!PyArg_ParseTuple(args, "(kk):_acquire_restore", &count, &owner)) {
        return NULL;
    }
    if (acquire_timed((PyObject *)self, self->base.lock, &self->base.contention, 1, NULL) < 0) {
        return NULL;
    }
    self->owner = owner;
    self->count = count;
    Py_RETURN_NONE;
}

static PyObject *
RLock_at_fork_reinit(RLockObject *self, PyObject *unused)
{
    if (base_at_fork_reinit(&self->base) < 0) {
        return NULL;
    }
    self->owner = 0;
    self->count = 0;
    Py_RETURN_NONE;
}

static PyObject *
RLock_repr(RLockObject *self)
{
    return PyUnicode_FromFormat("<%s %s object owner=%lu count=%lu at %p>",
                                self->count ? "locked" : "unlocked", Py_TYPE(self)->tp_name,
                                self->owner, self->count, self);
}

static PyMethodDef RLock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))RLock_acquire, METH_VARARGS | METH_KEYWORDS, NULL},
    {"release", (PyCFunction)RLock_release, METH_NOARGS, NULL},
    {"__enter__", (PyCFunction)(void (*)(void))RLock_acquire, METH_VARARGS | METH_KEYWORDS,
     NULL},
    {"__exit__", (PyCFunction)RLock_exit, METH_VARARGS, NULL},
    {"_is_owned", (PyCFunction)RLock_is_owned, METH_NOARGS, NULL},
    {"_recursion_count", (PyCFunction)RLock_recursion_count, METH_NOARGS, NULL},
    {"_release_save", (PyCFunction)RLock_release_save, METH_NOARGS, NULL},
    {"_acquire_restore", (PyCFunction)RLock_acquire_restore, METH_VARARGS, NULL},
    {"_at_fork_reinit", (PyCFunction)RLock_at_fork_reinit, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RLockType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pyprofiler.samplers._native.RLock",
    .tp_basicsize = sizeof(RLockObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A threading.RLock that reports contention to the block and mutex profiles.",
    .tp_new = RLock_new,
    .tp_dealloc = (destructor)RLock_dealloc,
    .tp_repr = (reprfunc)RLock_repr,
    .tp_methods = RLock_methods,
    .tp_weaklistoffset = offsetof(RLockObject, base.weakreflist),
};

/* ---- module functions -------------------------------------------------------------------- */

PyObject *
ppf_set_lock_profiling(PyObject *module, PyObject *args)
{
    long long new_block_rate, new_mutex_fraction;
    PyObject *new_label_lock;
    if (!PyArg_ParseTuple(args, "LLO:set_lock_profiling", &new_block_rate, &new_mutex_fraction,
                          &new_label_lock)) {
        return NULL;
    }
    block_rate = new_block_rate > 0 ? new_block_rate : 0;
    mutex_fraction = new_mutex_fraction > 0 ? new_mutex_fraction : 0;
    Py_XSETREF(label_lock, new_label_lock == Py_None ? NULL : Py_NewRef(new_label_lock));
    Py_RETURN_NONE;
}

static table_t *
table_named(PyObject *name)
{
    const char *chosen = PyUnicode_Check(name) ? PyUnicode_AsUTF8(name) : NULL;
    if (chosen != NULL && strcmp(chosen, "block") == 0) {
        return &block_table;
    }
    if (chosen != NULL && strcmp(chosen, "mutex") == 0) {
        return &mutex_table;
    }
    PyErr_Clear();
    PyErr_SetString(PyExc_ValueError, "expected 'block' or 'mutex'");
    return NULL;
}

/* lock_contentions(name): [(((code, line), ...), label, count, delay_ns, labels)] of the
 * "block" or "mutex" table, labels the address of the label set in force (0: none); the overflow entry, if it was used, has no frames and the label "". */
PyObject *
ppf_lock_contentions(PyObject *module, PyObject *name)
{
    table_t *t = table_named(name);
    if (t == NULL) {
        return NULL;
    }
    PyObject *list = PyList_New(0);
    listing++;
    /* Building objects may run other threads (a collection's finalizers), which may add
     * entries: `used` is read at each step. */
    for (uint32_t i = 0; list != NULL && t->entries != NULL && i < t->used; i++) {
        entry_t *entry = t->entries[i];
        if (entry->count == 0) {
            continue;
        }
        PyObject *stack = ppf_stack_tuple(entry->frames, entry->depth);
        PyObject *item = stack == NULL ? NULL
                                       : Py_BuildValue("(NOddK)", stack, entry->label,
                                                       entry->count, entry->delay_ns,
                                                       (unsigned long long)entry->labels);
        if (item == NULL || PyList_Append(list, item) < 0) {
            Py_CLEAR(list);
        }
        Py_XDECREF(item);
    }
    listing--;
    return list;
}

static void
clear_table(table_t *t)
{
    table_t old = *t;
    *t = (table_t){0}; /* Detached first: releasing references may run code that records. */
    for (uint32_t i = 0; i < old.used; i++) {
        free_entry(old.entries[i]);
    }
    PyMem_RawFree(old.entries);
    PyMem_RawFree(old.slots);
}

/* Forget every recorded contention (tests start from empty tables). */
PyObject *
ppf_clear_lock_contentions(PyObject *module, PyObject *unused)
{
    if (listing) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot clear while lock_contentions() runs in another thread");
        return NULL;
    }
    clear_table(&block_table);
    clear_table(&mutex_table);
    Py_RETURN_NONE;
}

int
ppf_locks_init(PyObject *module)
{
    if (PyType_Ready(&LockType) < 0 || PyType_Ready(&RLockType) < 0) {
        return -1;
    }
    Py_INCREF(&LockType);
    if (PyModule_AddObject(module, "Lock", (PyObject *)&LockType) < 0) {
        Py_DECREF(&LockType);
        return -1;
    }
    Py_INCREF(&RLockType);
    if (PyModule_AddObject(module, "RLock", (PyObject *)&RLockType) < 0) {
        Py_DECREF(&RLockType);
        return -1;
    }
    return 0;
}
