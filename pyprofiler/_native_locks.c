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
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "_native.h"

static int64_t block_rate;     /* ns; 0 = off */
static int64_t mutex_fraction; /* 1 in n; 0 = off */
static PyObject *on_block;     /* callable(delay_ns) or NULL */
static PyObject *on_mutex;

static int64_t
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Call hook(delay, lock); a hook that fails is reported and never raises into the app. */
static void
call_hook(PyObject *hook, int64_t delay, PyObject *lock)
{
    if (hook == NULL) {
        return;
    }
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    PyObject *result = PyObject_CallFunction(hook, "LO", (long long)delay, lock);
    if (result == NULL) {
        PyErr_WriteUnraisable(hook);
    }
    Py_XDECREF(result);
    PyErr_Restore(exc_type, exc_value, exc_tb);
}

static void
report_block(int64_t delay, PyObject *lock)
{
    /* Go's rule: events at least `rate` long always; shorter ones with probability d/rate. */
    if (block_rate <= 0 || delay <= 0) {
        return;
    }
    if (delay < block_rate &&
        (int64_t)(native_random() % (uint64_t)block_rate) >= delay) {
        return;
    }
    call_hook(on_block, delay, lock);
}

static void
report_mutex(int64_t delay, PyObject *lock)
{
    if (mutex_fraction <= 0 || delay <= 0) {
        return;
    }
    if (mutex_fraction > 1 && native_random() % (uint64_t)mutex_fraction != 0) {
        return;
    }
    call_hook(on_mutex, delay, lock);
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
locks_after_fork(void)
{
    fork_generation++;
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
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pyprofiler._native.Lock",
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
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pyprofiler._native.RLock",
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
set_lock_profiling(PyObject *module, PyObject *args)
{
    long long new_block_rate, new_mutex_fraction;
    PyObject *new_on_block, *new_on_mutex;
    if (!PyArg_ParseTuple(args, "LLOO:set_lock_profiling", &new_block_rate, &new_mutex_fraction,
                          &new_on_block, &new_on_mutex)) {
        return NULL;
    }
    block_rate = new_block_rate > 0 ? new_block_rate : 0;
    mutex_fraction = new_mutex_fraction > 0 ? new_mutex_fraction : 0;
    Py_XSETREF(on_block, new_on_block == Py_None ? NULL : Py_NewRef(new_on_block));
    Py_XSETREF(on_mutex, new_on_mutex == Py_None ? NULL : Py_NewRef(new_on_mutex));
    Py_RETURN_NONE;
}

int
locks_init(PyObject *module)
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
