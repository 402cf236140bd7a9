/* Reading every thread's Python stack without the GIL: see stackread.h.
 *
 * Layouts come from the headers of the Python being built for (offsetof, never hard-coded
 * offsets), so each of 3.9 to 3.13 reads its own structures:
 *   3.9, 3.10: thread state -> frame objects (f_back), line from co_lnotab / co_linetable;
 *   3.11, 3.12: thread state -> _PyCFrame -> interpreter frames (previous), location table;
 *   3.13: thread state -> interpreter frames, location table.
 * On 3.11+ most frames live in the thread's data stack: its used top is copied in one read, so
 * that the frames of a running thread come from one instant rather than one read each.
 */
#define PY_SSIZE_T_CLEAN
#include "stackread.h"

#include <pthread.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "frame_layout.h"

#ifdef Py_GIL_DISABLED
#  error "the free-threaded build keeps no GIL-bound frames to read: not supported"
#endif


/* A walk longer than this has met a cycle in memory that changed as it was read. */
#define MAX_WALK_STEPS 4096
/* Reading a thread's state and the top of its stack takes this long at most, but when the
 * sampler thread is descheduled in between. */
#define MAX_COPY_NS 50000

static int64_t
monotonic_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

static pid_t self_pid;

int
ppf_safe_read(uintptr_t address, void *out, size_t size)
{
    if (address < 4096) {
        return -1;
    }
    struct iovec local = {out, size};
    struct iovec remote = {(void *)address, size};
    return process_vm_readv(self_pid, &local, 1, &remote, 1, 0) == (ssize_t)size ? 0 : -1;
}

int
ppf_stackread_available(void)
{
    static const uint64_t probe = 0x5079707266696c65ULL;
    uint64_t copy = 0;
    self_pid = getpid(); /* Called as each sampler starts: a forked child reads its own memory. */
    return ppf_safe_read((uintptr_t)&probe, &copy, sizeof copy) == 0 && copy == probe;
}

PyObject *
ppf_stack_reads_available(PyObject *module, PyObject *unused)
{
    return PyBool_FromLong(ppf_stackread_available());
}

PyObject *
ppf_line_of(PyObject *module, PyObject *args)
{
    PyObject *code;
    int offset;
    if (!PyArg_ParseTuple(args, "O!i", &PyCode_Type, &code, &offset)) {
        return NULL;
    }
    ppf_code_info_t info;
    if (!ppf_stackread_available() || ppf_copy_code((uintptr_t)code, &info) < 0 ||
        ppf_pin_code(&info) < 0) {
        PyErr_SetString(PyExc_RuntimeError, "the code object could not be copied");
        return NULL;
    }
    int line = ppf_code_line(&info, offset);
    Py_DECREF(info.pinned);
    return PyLong_FromLong(line);
}

/* ---- thread states ------------------------------------------------------------------------ */

static int
from_state(const PyThreadState *ts, PyInterpreterState *interp, ppf_thread_copy_t *out)
{
    if (ts->interp != interp) {
        return -1;
    }
    out->next = (uintptr_t)ts->next;
    out->serial = ts->id;
    out->ident = ts->thread_id;
    out->region_start = out->region_end = 0;
#if PY_VERSION_HEX < 0x030B0000
    out->tid = 0;
    out->frame = (uintptr_t)ts->frame;
    out->frame_known = 1;
#else
    out->tid = ts->native_thread_id;
#  if PY_VERSION_HEX >= 0x030D0000
    out->frame = (uintptr_t)ts->current_frame;
    out->frame_known = 1;
#  else
    out->frame = (uintptr_t)ts->cframe; /* read by ppf_thread_frame() when it is needed */
    out->frame_known = ts->cframe == NULL;
#  endif
    if (ts->datastack_chunk != NULL) {
        uintptr_t data = (uintptr_t)ts->datastack_chunk + offsetof(_PyStackChunk, data);
        uintptr_t top = (uintptr_t)ts->datastack_top;
        if (top > data && top - data < ((uintptr_t)1 << 30)) {
            out->region_start =
                top - data > PPF_STACK_REGION_BYTES ? top - PPF_STACK_REGION_BYTES : data;
            out->region_end = top;
        }
    }
#endif
    return 0;
}

int
ppf_copy_thread(uintptr_t address, PyInterpreterState *interp, ppf_thread_copy_t *out)
{
    PyThreadState ts;
    if (ppf_safe_read(address, &ts, sizeof ts) < 0) {
        return -1;
    }
    return from_state(&ts, interp, out);
}

int
ppf_copy_threads(const uintptr_t *addresses, int n, PyInterpreterState *interp, void *scratch,
                 ppf_thread_copy_t *out, char *copied)
{
    PyThreadState *states = scratch;
    struct iovec remote[PPF_IOV_BATCH];
    memset(copied, 0, (size_t)n);
    if (n > PPF_IOV_BATCH) {
        n = PPF_IOV_BATCH;
    }
    int valid = 0;
    for (int i = 0; i < n; i++) {
        remote[i] = (struct iovec){(void *)addresses[i], sizeof(PyThreadState)};
    }
    struct iovec local = {states, (size_t)n * sizeof(PyThreadState)};
    /* Stops at the first state that cannot be read (the rest are left to ppf_copy_thread()). */
    ssize_t read = process_vm_readv(self_pid, &local, 1, remote, (unsigned long)n, 0);
    int complete = read < 0 ? 0 : (int)((size_t)read / sizeof(PyThreadState));
    for (int i = 0; i < complete; i++) {
        if (from_state(&states[i], interp, &out[i]) == 0) {
            copied[i] = 1;
            valid++;
        }
    }
    return valid;
}

int
ppf_thread_frame(ppf_thread_copy_t *thread)
{
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030D0000
    if (!thread->frame_known) {
        _PyCFrame cframe;
        if (ppf_safe_read(thread->frame, &cframe, sizeof cframe) < 0) {
            return -1;
        }
        thread->frame = (uintptr_t)cframe.current_frame;
        thread->frame_known = 1;
    }
#endif
    return 0;
}

void
ppf_thread_frames(ppf_thread_copy_t *threads, const char *wanted, int n)
{
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030D0000
    _PyCFrame cframes[PPF_IOV_BATCH];
    struct iovec local[PPF_IOV_BATCH], remote[PPF_IOV_BATCH];
    int index[PPF_IOV_BATCH];
    int k = 0;
    for (int i = 0; i < n && i < PPF_IOV_BATCH; i++) {
        if (wanted[i] && !threads[i].frame_known) {
            local[k] = (struct iovec){&cframes[k], sizeof(_PyCFrame)};
            remote[k] = (struct iovec){(void *)threads[i].frame, sizeof(_PyCFrame)};
            index[k++] = i;
        }
    }
    if (k == 0) {
        return;
    }
    /* Whole elements only: it stops at the first that cannot be read. */
    ssize_t read = process_vm_readv(self_pid, local, (unsigned long)k, remote, (unsigned long)k, 0);
    int complete = read < 0 ? 0 : (int)((size_t)read / sizeof(_PyCFrame));
    for (int j = 0; j < complete; j++) {
        threads[index[j]].frame = (uintptr_t)cframes[j].current_frame;
        threads[index[j]].frame_known = 1;
    }
#else
    (void)threads, (void)wanted, (void)n;
#endif
}

/* ---- code objects ------------------------------------------------------------------------- */

#if PY_VERSION_HEX >= 0x030B0000
#  define CODE_HEADER offsetof(PyCodeObject, co_code_adaptive)
#  define LINE_TABLE co_linetable
#elif PY_VERSION_HEX >= 0x030A0000
#  define CODE_HEADER sizeof(PyCodeObject)
#  define LINE_TABLE co_linetable
#else
#  define CODE_HEADER sizeof(PyCodeObject)
#  define LINE_TABLE co_lnotab
#endif

/* Freed memory keeps its old contents, so a copy that looks like a code object may be a dead
 * one: but a freed block's first word (the reference count) holds the allocator's free list
 * link (pymalloc, glibc), an address far above any count, or zero. (3.12+ immortal objects
 * count 2**32 - 1.) */
static int
live_object(const PyObject *copy)
{
    Py_ssize_t refcnt = copy->ob_refcnt;
    return refcnt > 0 && refcnt < ((Py_ssize_t)1 << 40);
}

int
ppf_copy_code(uintptr_t address, ppf_code_info_t *out)
{
    union {
        PyCodeObject code;
        unsigned char bytes[CODE_HEADER];
    } copy;
    if (ppf_safe_read(address, &copy, CODE_HEADER) < 0 || !live_object((PyObject *)&copy) ||
        Py_TYPE((PyObject *)&copy) != &PyCode_Type) {
        return -1;
    }
    PyCodeObject *co = &copy.code;
    memset(out, 0, sizeof *out);
    out->address = address;
    out->flags = co->co_flags;
    out->firstlineno = co->co_firstlineno;
    out->filename = (uintptr_t)co->co_filename;
    out->name = (uintptr_t)co->co_name;
    out->linetable = (uintptr_t)co->LINE_TABLE;
#if PY_VERSION_HEX >= 0x030B0000
    out->first_instr = address + offsetof(PyCodeObject, co_code_adaptive);
    out->size = (int32_t)(Py_SIZE((PyObject *)co) * (Py_ssize_t)sizeof(_Py_CODEUNIT));
    out->first_traceable = co->_co_firsttraceable * (int32_t)sizeof(_Py_CODEUNIT);
#  if PY_VERSION_HEX >= 0x030C0000
    out->frame_bytes = co->co_framesize * (int32_t)sizeof(PyObject *);
#  else /* what 3.11's _PyEvalFramePushAndInit() pushes */
    out->frame_bytes = (co->co_nlocalsplus + co->co_stacksize + (int32_t)FRAME_SPECIALS_SIZE) *
                       (int32_t)sizeof(PyObject *);
#  endif
#else
    PyVarObject bytecode;
    if (ppf_safe_read((uintptr_t)co->co_code, &bytecode, sizeof bytecode) < 0 ||
        bytecode.ob_base.ob_type != &PyBytes_Type) {
        return -1;
    }
    out->size = (int32_t)bytecode.ob_size;
#endif
    return out->size > 0 && out->linetable != 0 ? 0 : -1;
}

static int
same_code(const ppf_code_info_t *a, const ppf_code_info_t *b)
{
    return a->address == b->address && a->first_instr == b->first_instr && a->size == b->size &&
           a->first_traceable == b->first_traceable && a->firstlineno == b->firstlineno &&
           a->filename == b->filename && a->name == b->name && a->linetable == b->linetable;
}

int
ppf_pin_code(ppf_code_info_t *info)
{
    ppf_code_info_t now;
    /* Copied again, not read: unpinned, the object may have been freed since it was seen; once
     * it is live again, the GIL keeps it so. */
    if (ppf_copy_code(info->address, &now) < 0 || !same_code(&now, info)) {
        return -1;
    }
    PyCodeObject *code = (PyCodeObject *)info->address;
    PyObject *table = code->LINE_TABLE;
    if (!PyBytes_Check(table)) {
        return -1;
    }
    Py_INCREF(code);
    info->pinned = (PyObject *)code;
    info->table = (const unsigned char *)PyBytes_AS_STRING(table);
    info->table_size = PyBytes_GET_SIZE(table);
    return 0;
}

/* ---- kernel ids from pthread handles ---------------------------------------------------- */

/* Bytes of a struct pthread searched for the id: glibc keeps it a few hundred bytes in. */
#define PTHREAD_SCAN_WORDS 256

static int pthread_tid_offset = -1;

/* Which words of this thread's struct pthread hold its kernel id. */
static int
tid_words(uint8_t *hits)
{
    int32_t words[PTHREAD_SCAN_WORDS];
    if (ppf_safe_read((uintptr_t)pthread_self(), words, sizeof words) < 0) {
        return -1;
    }
    int32_t tid = (int32_t)syscall(SYS_gettid);
    for (int i = 0; i < PTHREAD_SCAN_WORDS; i++) {
        hits[i] = words[i] == tid;
    }
    return 0;
}

static void *
tid_words_in_thread(void *hits)
{
    return tid_words(hits) == 0 ? hits : NULL;
}

void
ppf_learn_pthread_tid(void)
{
    static int learnt;
    if (learnt || !ppf_stackread_available()) {
        return;
    }
    learnt = 1;
    /* The word that holds the id in two threads, and only one word: the main thread's id is
     * also the process's, which other words may hold. */
    uint8_t here[PTHREAD_SCAN_WORDS], there[PTHREAD_SCAN_WORDS];
    pthread_t thread;
    void *result = NULL;
    if (tid_words(here) < 0 || pthread_create(&thread, NULL, tid_words_in_thread, there) != 0) {
        return;
    }
    pthread_join(thread, &result);
    int found = -1, matches = 0;
    for (int i = 0; result != NULL && i < PTHREAD_SCAN_WORDS; i++) {
        if (here[i] && there[i]) {
            found = i * (int)sizeof(int32_t);
            matches++;
        }
    }
    pthread_tid_offset = matches == 1 ? found : -1;
}

unsigned long
ppf_pthread_tid(unsigned long ident)
{
    int32_t tid;
    if (pthread_tid_offset < 0 || ident == 0 ||
        ppf_safe_read((uintptr_t)ident + (uintptr_t)pthread_tid_offset, &tid, sizeof tid) < 0 ||
        tid <= 0) {
        return 0;
    }
    return (unsigned long)tid;
}

/* ---- stacks ------------------------------------------------------------------------------- */

/* A thread's stack starts with a function; one that seems to start with a generator or
 * coroutine was read as it yielded (its link to its caller cut), with the rest missing. */
static int
ends_in_generator(const ppf_code_info_t *bottom, uintptr_t next, int truncated)
{
    return bottom != NULL && next == 0 && !truncated &&
           (bottom->flags & (CO_GENERATOR | CO_COROUTINE | CO_ASYNC_GENERATOR));
}

/* Reads in one call, each made after the one before it. */
typedef struct {
    uintptr_t from;
    void *to;
    size_t size;
} read_part_t;

static int
safe_read_parts(const read_part_t *parts, int n)
{
    struct iovec local[3], remote[3];
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        if (parts[i].from < 4096) {
            return -1;
        }
        local[i] = (struct iovec){parts[i].to, parts[i].size};
        remote[i] = (struct iovec){(void *)parts[i].from, parts[i].size};
        total += parts[i].size;
    }
    return process_vm_readv(self_pid, local, (unsigned long)n, remote, (unsigned long)n, 0) ==
                   (ssize_t)total
               ? 0
               : -1;
}

static int
safe_read2(uintptr_t first, void *out_first, size_t first_size, uintptr_t second,
           void *out_second, size_t second_size)
{
    read_part_t parts[2] = {{first, out_first, first_size}, {second, out_second, second_size}};
    return safe_read_parts(parts, 2);
}

/* How a walk makes sure that what it copies held together, without stopping the thread:
 *   - a frame is only used if it points at an instruction inside its own code object, and that
 *     code object is one (ppf_copy_code, ppf_pin_code);
 *   - frames read one by one: each is read together with the link of the frame reached before
 *     it (its callee), read again after it; the callee must still be linked to it, so the two
 *     were caller and callee at once (a caller outlives its callee);
 *   - 3.11+: but a callee that has returned leaves its link behind in memory, so that the slot
 *     of its caller, since taken by another frame, still seems linked to it. A callee the
 *     thread pushed must therefore still lie below the top of its data stack, read after the
 *     caller (a callee in an older chunk is taken as live: the thread is deeper than it);
 *   - 3.11+: the top of the data stack is copied in one read, after the pointer to the thread's
 *     current frame. That copy is made a page at a time, lower pages first, so a frame is used
 *     from it only where it lies in one page with its callee; two frames the thread pushed
 *     itself are then adjacent, a callee starting where its caller's frame ends, which a frame
 *     left over in a slot since reused for another does not do; and a frame still being set up
 *     has no callee;
 *   - a stack that seems to start with a generator was read as it yielded. */

#if PY_VERSION_HEX >= 0x030B0000
#  define FRAME_HEADER offsetof(_PyInterpreterFrame, localsplus)
#  if PY_VERSION_HEX >= 0x030D0000
#    define FRAME_CODE_FIELD f_executable
#    define FRAME_INSTR(f) ((uintptr_t)(f).instr_ptr)
#    define TOP_FRAME(ts, address) ((address) + offsetof(PyThreadState, current_frame))
#  else
#    define FRAME_CODE_FIELD f_code
#    define FRAME_INSTR(f) ((uintptr_t)(f).prev_instr)
#    define TOP_FRAME(ts, address)                                                            \
        ((ts).cframe ? (uintptr_t)(ts).cframe + offsetof(_PyCFrame, current_frame) : 0)
#  endif
#  define FRAME_CODE(f) ((uintptr_t)(f).FRAME_CODE_FIELD)
#  if PY_VERSION_HEX >= 0x030C0000
#    define MAX_OWNER FRAME_OWNED_BY_CSTACK
#  else
#    define MAX_OWNER FRAME_OWNED_BY_FRAME_OBJECT
#  endif
/* The part of a frame that holds its code and its link to its caller. */
#  define LINK_START                                                                          \
      (offsetof(_PyInterpreterFrame, FRAME_CODE_FIELD) < offsetof(_PyInterpreterFrame, previous) \
           ? offsetof(_PyInterpreterFrame, FRAME_CODE_FIELD)                                 \
           : offsetof(_PyInterpreterFrame, previous))
#  define LINK_END (offsetof(_PyInterpreterFrame, previous) + sizeof(void *))

static uintptr_t
link_field(const unsigned char *link, size_t offset)
{
    uintptr_t value;
    memcpy(&value, link + (offset - LINK_START), sizeof value);
    return value;
}

/* The thread's current chunk of data stack: where it is, how far it is used, where it ends. */
typedef struct {
    uintptr_t chunk, top, limit;
} data_stack_t;

#  define DATA_STACK_FIELDS offsetof(PyThreadState, datastack_chunk)
_Static_assert(offsetof(PyThreadState, datastack_top) == DATA_STACK_FIELDS + sizeof(void *) &&
                   offsetof(PyThreadState, datastack_limit) ==
                       DATA_STACK_FIELDS + 2 * sizeof(void *),
               "data_stack_t mirrors the thread state's three data stack fields");

/* Whether a frame the thread pushed at `frame` was still in use when `stack` was read. */
static int
pushed_frame_live(uintptr_t frame, const data_stack_t *stack)
{
    uintptr_t data = stack->chunk + offsetof(_PyStackChunk, data);
    if (frame < data || frame >= stack->limit) {
        return 1; /* in an older chunk */
    }
    return frame + FRAME_HEADER <= stack->top;
}

int
ppf_copy_stack(uintptr_t tstate, PyInterpreterState *interp, ppf_code_lookup_t lookup,
               void *context, unsigned char *region, ppf_raw_frame_t *out, int max,
               int *truncated, uintptr_t *contextvars)
{
    PyThreadState ts;
    int64_t began = monotonic_ns();
    if (ppf_safe_read(tstate, &ts, sizeof ts) < 0 || ts.interp != interp) {
        return -1;
    }
    *contextvars = (uintptr_t)ts.context;
    ppf_thread_copy_t bounds;
    from_state(&ts, interp, &bounds);
    uintptr_t start = bounds.region_start, end = bounds.region_end;
    uintptr_t top = TOP_FRAME(ts, tstate), address = 0;
    if (top == 0) {
        return 0;
    }
    uintptr_t stack_fields = tstate + DATA_STACK_FIELDS;
    data_stack_t after_region = {0, 0, 0}; /* read after the copy of the region */
    if (end > start) {
        read_part_t parts[3] = {{top, &address, sizeof address},
                                {start, region, end - start},
                                {stack_fields, &after_region, sizeof after_region}};
        if (safe_read_parts(parts, 3) < 0) {
            start = end = 0; /* The chunk went away: every frame is read on its own. */
        }
    }
    if (end == start && ppf_safe_read(top, &address, sizeof address) < 0) {
        return -1;
    }
    /* A few microseconds unless this thread lost its CPU meanwhile: then the state, the pointer
     * to the current frame and the copy may be from far apart, too far to tell. */
    if (monotonic_ns() - began > MAX_COPY_NS) {
        return -1;
    }
    int depth = 0;
    const ppf_code_info_t *bottom = NULL;
    uintptr_t callee = 0, callee_code = 0;
    int callee_pushed = 0; /* the callee was pushed by the thread: its caller ends where it began */
    for (int steps = 0; address != 0; steps++) {
        if (steps == MAX_WALK_STEPS) {
            return -1;
        }
        _PyInterpreterFrame frame;
        /* The copy is made a page at a time, so that two pages of it may be from before and
         * after a change: a frame is taken from it only if it lies in one page, and in its
         * callee's. Others are read on their own. (Compared so that a garbage address cannot
         * wrap around.) */
        uintptr_t page = address & ~(uintptr_t)4095;
        int in_region = address >= start && address < end && end - address >= FRAME_HEADER &&
                        page == ((address + FRAME_HEADER - 1) & ~(uintptr_t)4095) &&
                        (callee == 0 || (callee_pushed && page == (callee & ~(uintptr_t)4095)));
        if (in_region) {
            memcpy(&frame, region + (address - start), FRAME_HEADER);
        }
        else if (callee == 0) {
            if (ppf_safe_read(address, &frame, FRAME_HEADER) < 0) {
                return -1;
            }
        }
        else {
            unsigned char link[LINK_END - LINK_START];
            data_stack_t after;
            read_part_t parts[3] = {{address, &frame, FRAME_HEADER},
                                    {callee + LINK_START, link, sizeof link},
                                    {stack_fields, &after, sizeof after}};
            if (safe_read_parts(parts, callee_pushed ? 3 : 2) < 0 ||
                link_field(link, offsetof(_PyInterpreterFrame, previous)) != address ||
                link_field(link, offsetof(_PyInterpreterFrame, FRAME_CODE_FIELD)) !=
                    callee_code ||
                (callee_pushed && !pushed_frame_live(callee, &after))) {
                return -1;
            }
        }
        if (in_region && callee_pushed && !pushed_frame_live(callee, &after_region)) {
            return -1;
        }
        if ((unsigned char)frame.owner > MAX_OWNER) {
            return -1;
        }
        uintptr_t here = address;
        address = (uintptr_t)frame.previous;
#  if PY_VERSION_HEX >= 0x030C0000
        if (frame.owner == FRAME_OWNED_BY_CSTACK) { /* the C call's entry frame: no code */
            callee = here;
            callee_code = FRAME_CODE(frame);
            callee_pushed = 0;
            continue;
        }
#  endif
        const ppf_code_info_t *code = lookup(context, FRAME_CODE(frame));
        if (code == NULL) {
            return -1;
        }
        if (in_region && callee_pushed && frame.owner == FRAME_OWNED_BY_THREAD &&
            callee != here + (uintptr_t)code->frame_bytes) {
            return -1;
        }
        /* An instruction outside its code: the frame changed as it was copied. (3.11 and 3.12
         * point at the unit before the next instruction: one before the first at the start.) */
        uintptr_t instr = FRAME_INSTR(frame);
        if (instr + sizeof(_Py_CODEUNIT) < code->first_instr ||
            instr > code->first_instr + (uintptr_t)code->size) {
            return -1;
        }
        callee = here;
        callee_code = FRAME_CODE(frame);
        callee_pushed = frame.owner == FRAME_OWNED_BY_THREAD;
        int32_t offset = (int32_t)((intptr_t)instr - (intptr_t)code->first_instr);
        if (frame.owner != FRAME_OWNED_BY_GENERATOR && offset < code->first_traceable) {
            /* A shim with no code of its own past its start (3.13 calls a specialized
             * __init__ through one) is no frame of the program's. */
            if (depth > 0 && code->first_traceable < code->size) {
                return -1; /* A frame still being set up has called nothing yet. */
            }
            continue; /* Not yet running its own code. */
        }
        if (depth == max) {
            *truncated = 1;
            break;
        }
        out[depth++] = (ppf_raw_frame_t){FRAME_CODE(frame), offset, 0};
        bottom = code;
    }
    return ends_in_generator(bottom, address, *truncated) ? -1 : depth;
}

#else /* 3.9 and 3.10: frame objects */

/* A frame object up to its link to its caller and its code. */
#  define LINK_END (offsetof(PyFrameObject, f_code) + sizeof(void *))

int
ppf_copy_stack(uintptr_t tstate, PyInterpreterState *interp, ppf_code_lookup_t lookup,
               void *context, unsigned char *region, ppf_raw_frame_t *out, int max,
               int *truncated, uintptr_t *contextvars)
{
    PyThreadState ts;
    int64_t began = monotonic_ns();
    if (ppf_safe_read(tstate, &ts, sizeof ts) < 0 || ts.interp != interp) {
        return -1;
    }
    *contextvars = (uintptr_t)ts.context;
    int depth = 0;
    const ppf_code_info_t *bottom = NULL;
    uintptr_t address = (uintptr_t)ts.frame, callee = 0, callee_code = 0;
    for (int steps = 0; address != 0; steps++) {
        PyFrameObject frame;
        if (steps == MAX_WALK_STEPS) {
            return -1;
        }
        if (callee == 0) {
            /* As on 3.11+, the state and its current frame are read close together or not at
             * all. */
            if (ppf_safe_read(address, &frame, offsetof(PyFrameObject, f_localsplus)) < 0 ||
                monotonic_ns() - began > MAX_COPY_NS) {
                return -1;
            }
        }
        else {
            PyFrameObject link;
            if (safe_read2(address, &frame, offsetof(PyFrameObject, f_localsplus), callee, &link,
                           LINK_END) < 0 ||
                !live_object((PyObject *)&link) || (uintptr_t)link.f_back != address ||
                (uintptr_t)link.f_code != callee_code) {
                return -1;
            }
        }
        if (!live_object((PyObject *)&frame) || Py_TYPE((PyObject *)&frame) != &PyFrame_Type) {
            return -1;
        }
        const ppf_code_info_t *code = lookup(context, (uintptr_t)frame.f_code);
        if (code == NULL) {
            return -1;
        }
#  if PY_VERSION_HEX >= 0x030A0000
        int32_t offset = frame.f_lasti * (int32_t)sizeof(_Py_CODEUNIT);
        int32_t line = frame.f_lineno; /* Non-zero only while tracing, and then right. */
#  else
        int32_t offset = frame.f_lasti;
        int32_t line = frame.f_trace != NULL ? frame.f_lineno : 0;
#  endif
        if (offset < -2 || offset >= code->size) {
            return -1;
        }
        callee = address;
        callee_code = (uintptr_t)frame.f_code;
        address = (uintptr_t)frame.f_back;
        if (depth == max) {
            *truncated = 1;
            break;
        }
        out[depth++] = (ppf_raw_frame_t){callee_code, offset, line};
        bottom = code;
    }
    return ends_in_generator(bottom, address, *truncated) ? -1 : depth;
}

#endif

/* ---- line numbers ------------------------------------------------------------------------- */

#if PY_VERSION_HEX >= 0x030B0000

/* The location table (Objects/locations.md): entries of a first byte 1CCCCLLL (code C, L+1
 * code units) and a code-dependent tail of 6-bit varints. */
static unsigned int
read_varint(const unsigned char **p, const unsigned char *end)
{
    unsigned int value = 0, shift = 0;
    while (*p < end) {
        unsigned int byte = *(*p)++;
        value |= (byte & 63) << shift;
        shift += 6;
        if (!(byte & 64) || shift > 30) {
            break;
        }
    }
    return value;
}

int
ppf_code_line(const ppf_code_info_t *info, int offset)
{
    if (offset < 0) {
        return info->firstlineno;
    }
    const unsigned char *p = info->table, *end = info->table + info->table_size;
    int line = info->firstlineno;
    int address = 0;
    while (p < end) {
        unsigned int first = *p++;
        int kind = (first >> 3) & 15;
        int length = ((first & 7) + 1) * (int)sizeof(_Py_CODEUNIT);
        if (kind == 13 || kind == 14) { /* no columns, or the long form */
            unsigned int delta = read_varint(&p, end);
            line += (delta & 1) ? -(int)(delta >> 1) : (int)(delta >> 1);
        }
        else if (kind >= 10 && kind <= 12) { /* one line, 0 to 2 below */
            line += kind - 10;
        }
        while (p < end && !(*p & 128)) { /* the rest of the entry: columns */
            p++;
        }
        address += length;
        if (offset < address) {
            return kind == 15 ? -1 : line;
        }
    }
    return -1;
}

#elif PY_VERSION_HEX >= 0x030A0000

/* PEP 626's table: (bytes, line delta) pairs, a delta of -128 meaning "no line". */
int
ppf_code_line(const ppf_code_info_t *info, int offset)
{
    if (offset < 0) {
        return info->firstlineno;
    }
    int line = info->firstlineno, end = 0;
    for (Py_ssize_t i = 0; i + 1 < info->table_size; i += 2) {
        int delta = (signed char)info->table[i + 1];
        end += info->table[i];
        if (delta != -128) {
            line += delta;
        }
        if (offset < end) {
            return delta == -128 ? -1 : line;
        }
    }
    return -1;
}

#else

/* co_lnotab: (bytes, line delta) pairs. */
int
ppf_code_line(const ppf_code_info_t *info, int offset)
{
    int line = info->firstlineno, address = 0;
    for (Py_ssize_t i = 0; i + 1 < info->table_size; i += 2) {
        address += info->table[i];
        if (address > offset) {
            break;
        }
        line += (signed char)info->table[i + 1];
    }
    return line;
}

#endif
