/* StackSampler: the CPU and wall samplers as a native thread that reads stacks without the GIL.
 *
 * A sampler that holds the GIL to read stacks gets it mostly when the application gives it up
 * to block, so its instants lock onto the application's blocking points, and a thread that
 * computes between blocking calls is charged at the line where it blocks. This pthread wakes at
 * its own instants (spread at random around the period, so that they cannot lock onto a
 * periodic workload either; see wake_on_time() for the scheduler) and copies every thread's
 * stack as it stands at that instant (stackread.c), running or not, holding the GIL or
 * not.
 *
 * Each tick, for every thread that runs Python code:
 *   CPU:  its CPU clock is read before and after its stack is copied. A clock that moved across
 *         the copy means the thread was on a CPU at that instant, and so does waiting for the
 *         CPU that the sampler took from it by waking up (for the thread holding the GIL,
 *         waiting for any CPU): the stack is one observation. At
 *         stop, each thread's observations are scaled to the CPU its clock says it used in the
 *         window, so totals stay exact. The CPU of a thread never seen on a CPU (one that
 *         lived or computed for less than a period or two) is reported apart, stackless: its
 *         stack at the ticks would be wherever it blocks.
 *   wall: its stack, weighted by the wall time since the previous tick. A thread whose clock has
 *         not moved since then has not run, so its previous stack is counted again, uncopied.
 * The GIL is taken only to pin code objects met for the first time (they stay referenced until
 * stop(), so their addresses cannot be reused meanwhile), on 3.9 and 3.10 where glibc's
 * struct pthread could not be read, to learn a new thread's kernel id, and at a cut, to build
 * the window's result and empty the tables for the next. Samples that wait for a pin are held in
 * a small buffer until it is done.
 *
 * pyprofiler's own threads (named pyprofiler-*) are left out, unless a window wants them: they
 * are neither copied nor given a label, so that a server's request threads, one per request,
 * cost the sampler nothing (ownthreads.h).
 *
 * The pthread has one PyThreadState, for those pins; it never runs Python code. Every field but
 * the stop flag (under `mutex`) and include_own (atomic) belongs to the pthread while it runs,
 * and to the thread that calls start() and stop() before and after.
 */
#define PY_SSIZE_T_CLEAN
#include "sampler.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "compat.h"
#include "contextread.h"
#include "frames.h"
#include "gil.h"
#include "limits.h"
#include "ownthreads.h"
#include "procfiles.h"
#include "random.h"
#include "stackread.h"

/* At most MAX_ENTRIES (stack, thread) entries; then one overflow entry per thread. Threads
 * beyond MAX_LABELS share the label at index MAX_LABELS. */
#define MAX_ENTRIES PPF_SAMPLER_MAX_ENTRIES
#define MAX_LABELS PPF_SAMPLER_MAX_THREADS
#define ENTRY_CAPACITY (MAX_ENTRIES + MAX_LABELS + 1)
#define ENTRY_SLOTS 65536 /* power of two, over 3 x ENTRY_CAPACITY: short probe runs */
#define OVERFLOW_DEPTH (-1)

#define MAX_CODES 32768   /* pinned code objects */
#define CODE_SLOTS 65536  /* power of two, twice MAX_CODES */
#define MAX_CANDIDATES 256 /* code objects met for the first time in one tick */
#define MAX_PENDING 64     /* samples waiting for their code objects to be pinned */
#define LINE_SLOTS 4096    /* power of two: (code, offset) -> line */
#define MAX_LISTED 1000000 /* thread states in one walk: more means the list changed under it */
#define PUT_ON_CPU_SLACK_NS 50000

/* Linux's encoding of a thread's CPU clock from its kernel tid (MAKE_THREAD_CPUCLOCK). */
#define CPUCLOCK_PERTHREAD 4
#define CPUCLOCK_SCHED 2

typedef struct {
    unsigned long ident; /* threading.get_ident() */
    unsigned long tid;   /* kernel thread id */
    uint64_t serial;     /* the thread state's unique id: idents and tids get reused */
    int64_t observations; /* CPU: its samples in the table */
    int64_t cpu_ns;       /* CPU: what its clock says it used in the window */
    int own;              /* one of pyprofiler's threads */
} label_t;

typedef struct entry {
    uint64_t hash;
    int64_t value;
    int64_t count;
    int64_t first; /* wall: the weight of its first tick, in which the thread's stack became it */
    int32_t label;
    uintptr_t labels; /* the label set in force (contextread.h), or 0 */
    int depth;        /* OVERFLOW_DEPTH: the thread's samples that no longer fit */
    ppf_frame_t frames[]; /* leaf first; code objects pinned until stop() */
} entry_t;

typedef struct {
    uintptr_t address; /* of its thread state */
    uint64_t serial;
    unsigned long tid; /* 0 until known */
    int64_t cpu_ns;    /* its CPU clock at the previous reading; 0 before any, -1 unknown */
    int32_t label;     /* -1 until the thread's first sample */
    int sampled;       /* wall: its stack was taken at that clock reading, and went to `last` */
    entry_t *last;     /* (NULL: it ran no Python code then) */
    int own;           /* one of pyprofiler's threads, at the last reading that could tell */
    int ran;           /* CPU: its clock had moved at that reading, so it likely has again */
} thread_t;

typedef struct {
    thread_t *items;
    size_t count, capacity;
} thread_list_t;

typedef struct {
    int32_t label;
    uintptr_t labels;
    int64_t value;
    int depth;
    ppf_raw_frame_t frames[PPF_MAX_STACK_DEPTH];
} pending_t;

typedef struct {
    uintptr_t code;
    int32_t offset;
    int32_t line;
} line_slot_t;

enum { NEW, RUNNING, STOPPED };

/* A cut's steps: cut() asks for a reading; the pthread takes it, builds the window's result and
 * empties the tables, and hands the result over. The pthread does it, with the GIL that it
 * takes anyway for its pins, so that it never waits for cut() to get the GIL back: readings
 * stopped meanwhile would leave the trace a gap of that wait, tens of ms on a busy machine. */
enum { CUT_NONE, CUT_ASKED, CUT_HANDED_OVER };

typedef struct {
    PyObject_HEAD
    int64_t period_ns;
    int wall;
    int state;
    pid_t pid; /* of the process that started the pthread: a forked child has none to join */
    pthread_t thread;
    pthread_mutex_t mutex;
    pthread_cond_t wake;
    pthread_cond_t cut_done;
    int stopping;      /* under mutex */
    int include_own;   /* atomic: pyprofiler's own threads are sampled too */
    int cut_state;     /* under mutex: CUT_NONE, CUT_ASKED or CUT_HANDED_OVER */
    PyObject *cut_result;  /* under mutex: what the pthread handed over, NULL if it failed */
    PyObject *cut_error[3]; /* under mutex: the exception it failed with (type, value, tb) */
    int exited;        /* under mutex: the pthread has returned, or is about to */
    int64_t expires_ns; /* under mutex: CLOCK_MONOTONIC instant to end on its own at, or 0 */
    PyInterpreterState *interp;
    PyThreadState *tstate; /* the pthread's own */
    int64_t last_reading_ns;
    int64_t own_cpu_ns;
    int64_t cpu_at_sleep_ns; /* its own clock as it last went to sleep */
    int64_t put_on_cpu_ns;   /* sampler_put_on_cpu() this tick; 0: not read yet */
    ppf_proc_files_t proc;   /* the pthread's: closed as it exits (or by a forked child) */
    int preempted_found;     /* this tick: the thread that waking took the CPU from is known, */
    unsigned long preempted_tid;     /* this one; */
    unsigned long not_preempted_tid; /* and this one is known not to be it */
    uint64_t random;
    const char *error;
    thread_list_t seen, seeing; /* threads at the previous reading, and at this one */
    uint64_t max_serial;        /* the newest thread state at the previous reading */
    int need_tids;              /* 3.9, 3.10: a thread with frames has no kernel id yet */
    label_t *labels;
    uint32_t n_labels;
    entry_t **entries;
    uint32_t n_entries;
    uint32_t *slots; /* open addressing: index + 1 into entries, 0 = empty */
    ppf_code_info_t *codes;
    uint32_t n_codes;
    uint32_t *code_slots; /* index + 1 into codes */
    ppf_code_info_t candidates[MAX_CANDIDATES];
    uint32_t n_candidates;
    pending_t *pending;
    uint32_t n_pending;
    line_slot_t *lines;
    unsigned char *region;
    void *scratch; /* the previous reading's thread states, copied in one read: */
    uintptr_t *batch_addresses;
    ppf_thread_copy_t *batch;
    char *batch_copied;
    char *batch_wanted; /* CPU: whose frames to read with the batch */
    /* What the profile says of itself. */
    uint64_t dropped;       /* samples whose stack changed as it was read */
    uint64_t unpinned;      /* samples whose code objects could not be pinned (gone, no room) */
    uint64_t torn_readings; /* walks of the thread list that met a change */
    uint64_t gil_takes;
    int64_t max_gil_hold_ns;
    ppf_raw_frame_t raw[PPF_MAX_STACK_DEPTH];
    ppf_frame_t stack[PPF_MAX_STACK_DEPTH];
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
 * thread's own memory, so it cannot dangle. For a thread on a CPU it is exact to the moment. */
static int64_t
thread_cpu_ns(unsigned long tid)
{
    if (tid == 0) { /* Unknown; the clock of "tid 0" would be the calling thread's own. */
        return -1;
    }
    return clock_ns((clockid_t)((~(unsigned int)tid << 3) | CPUCLOCK_PERTHREAD | CPUCLOCK_SCHED));
}

/* A field of /proc/.../sched ("se.exec_start   :   3439375.217526", ms to the ns) in ns, or -1.
 * That file exists where the kernel has CONFIG_SCHED_DEBUG, as distributions' kernels do. */
static int64_t
sched_field_ns(const char *text, const char *name)
{
    const char *p = strstr(text, name);
    if (p == NULL || (p = strchr(p, ':')) == NULL) {
        return -1;
    }
    char *end;
    long long ms = strtoll(p + 1, &end, 10);
    if (*end != '.') {
        return -1;
    }
    long long ns = strtoll(end + 1, NULL, 10);
    return (int64_t)(ms * 1000000 + ns);
}

/* When the sampler thread was last put on its CPU, in its runqueue's task clock (the clock of
 * se.exec_start): -1 where the kernel does not say. While it runs, its se.exec_start minus its
 * se.sum_exec_runtime stays the same; putting it on a CPU moved its exec_start to that instant
 * and left its runtime at what its clock read as it went to sleep. */
static int64_t
sampler_put_on_cpu(SamplerObject *self)
{
    char text[4096];
    if (ppf_proc_read_own_sched(&self->proc, text, sizeof text) < 0) {
        return -1;
    }
    int64_t start = sched_field_ns(text, "se.exec_start");
    int64_t runtime = sched_field_ns(text, "se.sum_exec_runtime");
    if (start < 0 || runtime < 0) {
        return -1;
    }
    return start - (runtime - self->cpu_at_sleep_ns);
}

/* Whether the thread, off its CPU, was on it at this instant: it waits for the CPU this thread
 * runs on ('R' in /proc, last on this CPU) because the sampler took that CPU from it by waking
 * up. A thread waiting there for another reason (woken meanwhile, or preempted earlier by
 * another thread) was not on a CPU: counting it would charge the CPU of a busy machine to where
 * threads wake up, their blocking calls. The preempted one stopped running at the very instant
 * (in the runqueue's clock) at which the sampler was put on the CPU; where the kernel does not
 * say when, any thread waiting there counts. */
static int
read_preempted_by_sampler(SamplerObject *self, unsigned long tid)
{
    char text[4096];
    if (ppf_proc_read(&self->proc, tid, PPF_PROC_STAT, text, 512) < 0) {
        return 0;
    }
    const char *p = strrchr(text, ')'); /* after the command name, which may hold anything */
    if (p == NULL || strncmp(p, ") R ", 4) != 0) {
        return 0;
    }
    for (int field = 2; field < 39 && p != NULL; field++) { /* field 39: the last CPU */
        p = strchr(p + 1, ' ');
    }
    if (p == NULL || atoi(p + 1) != sched_getcpu()) {
        return 0;
    }
    if (self->put_on_cpu_ns == 0) { /* Once a tick, when first needed. */
        self->put_on_cpu_ns = sampler_put_on_cpu(self);
    }
    int64_t stopped = ppf_proc_read(&self->proc, tid, PPF_PROC_SCHED, text, sizeof text) < 0
                          ? -1
                          : sched_field_ns(text, "se.exec_start");
    if (self->put_on_cpu_ns < 0 || stopped < 0) {
        return 1;
    }
    /* The estimate is early by the little CPU the sampler used after reading its clock. */
    int64_t late = stopped - self->put_on_cpu_ns;
    if (late >= -PUT_ON_CPU_SLACK_NS && late <= PUT_ON_CPU_SLACK_NS) {
        self->preempted_found = 1;
        self->preempted_tid = tid;
        return 1;
    }
    return 0;
}

/* Waking up took the CPU from one thread at most: once that one is known, no other thread needs
 * the /proc reads above, which are most of the sampler's cost when threads share its CPU. */
static int
preempted_by_sampler(SamplerObject *self, unsigned long tid)
{
    if (self->preempted_found) {
        return tid == self->preempted_tid;
    }
    if (tid == self->not_preempted_tid) {
        return 0;
    }
    return read_preempted_by_sampler(self, tid);
}

/* Whether a thread of this process is runnable (on a CPU or waiting for one) rather than asleep:
 * its /proc `syscall` file says "running", or the system call it sleeps in. A third of the cost
 * of `stat`. -1 where the kernel does not say. */
static int
runnable(SamplerObject *self, unsigned long tid)
{
    char text[16];
    if (ppf_proc_read(&self->proc, tid, PPF_PROC_SYSCALL, text, sizeof text) < 0) {
        return -1;
    }
    if (strncmp(text, "running", 7) == 0) {
        return 1;
    }
    return (text[0] >= '0' && text[0] <= '9') || text[0] == '-' ? 0 : -1;
}

/* The thread that waking took the CPU from is most often the one running Python code, which
 * holds the GIL: asked before the walk, it spares the others their reads. Only a thread that
 * ran since the previous reading and is off its CPU now can have been preempted.
 * Holding the GIL, that thread ran Python code up to the instant it lost its CPU: runnable now,
 * it waits for one, preempted by the sampler's wake-up or shortly before by another thread, and
 * either way its stack is where it computes, never where it woke up (it ran to take the GIL).
 * So it counts as on a CPU without the exact test of read_preempted_by_sampler() and its three
 * /proc reads (a tenth of the sampler's CPU on a busy one). */
static void
ask_gil_holder_first(SamplerObject *self)
{
    self->preempted_found = 0;
    self->not_preempted_tid = 0;
    uintptr_t holder = ppf_gil_holder(self->interp);
    if (holder == 0 || holder == (uintptr_t)self->tstate) {
        return;
    }
    for (size_t i = 0; i < self->seen.count; i++) {
        const thread_t *thread = &self->seen.items[i];
        if (thread->address != holder) {
            continue;
        }
        if (thread->tid == 0 || thread->cpu_ns < 0 || thread->own) {
            return;
        }
        int64_t now = thread_cpu_ns(thread->tid);
        if (now <= thread->cpu_ns || thread_cpu_ns(thread->tid) > now) {
            return;
        }
        int waiting = runnable(self, thread->tid);
        if (waiting > 0) {
            self->preempted_found = 1;
            self->preempted_tid = thread->tid;
        }
        else if (waiting == 0 || !preempted_by_sampler(self, thread->tid)) {
            self->not_preempted_tid = thread->tid;
        }
        return;
    }
}

/* This thread's time slice, in ns (0: the default). Linux 6.12+ takes it from unprivileged
 * threads; older kernels refuse it and keep their default. */
static void
set_slice(uint64_t ns)
{
    struct {
        uint32_t size, policy;
        uint64_t flags;
        int32_t nice;
        uint32_t priority;
        uint64_t runtime, deadline, period;
    } attr = {sizeof attr, SCHED_OTHER, 0, 0, 0, ns, 0, 0};
    syscall(SYS_sched_setattr, 0, &attr, 0);
}

#define SHORTEST_SLICE_NS 100000

/* Shorter time slices than other threads', so that waking up on a busy CPU preempts its thread
 * at once instead of waiting for the end of that thread's slice: a wait that is short at the
 * start of a thread's burst of work and long later would move the instants away from the
 * start. No timer slack either: the kernel would otherwise wake this thread together with
 * timers expiring within 50 us of its own, such as the end of another thread's sleep, and the
 * instants would lock onto the start of what follows it. */
static void
wake_on_time(void)
{
    set_slice(SHORTEST_SLICE_NS);
    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
}

/* ---- the tables --------------------------------------------------------------------------- */

static int
alloc_tables(SamplerObject *self)
{
    self->labels = calloc(MAX_LABELS + 1, sizeof(label_t));
    self->entries = calloc(ENTRY_CAPACITY, sizeof(entry_t *));
    self->slots = calloc(ENTRY_SLOTS, sizeof(uint32_t));
    self->codes = calloc(MAX_CODES, sizeof(ppf_code_info_t));
    self->code_slots = calloc(CODE_SLOTS, sizeof(uint32_t));
    self->pending = calloc(MAX_PENDING, sizeof(pending_t));
    self->lines = calloc(LINE_SLOTS, sizeof(line_slot_t));
    self->region = malloc(PPF_STACK_REGION_BYTES);
    self->scratch = malloc(PPF_THREAD_SCRATCH_BYTES);
    self->batch_addresses = malloc(PPF_IOV_BATCH * sizeof(uintptr_t));
    self->batch = malloc(PPF_IOV_BATCH * sizeof(ppf_thread_copy_t));
    self->batch_copied = malloc(PPF_IOV_BATCH);
    self->batch_wanted = malloc(PPF_IOV_BATCH);
    return self->labels && self->entries && self->slots && self->codes && self->code_slots &&
                   self->pending && self->lines && self->region && self->scratch &&
                   self->batch_addresses && self->batch && self->batch_copied &&
                   self->batch_wanted
               ? 0
               : -1;
}

/* With the GIL: releases the pinned code objects. */
static void
free_tables(SamplerObject *self)
{
    for (uint32_t i = 0; i < self->n_entries; i++) {
        free(self->entries[i]);
    }
    for (uint32_t i = 0; i < self->n_codes; i++) {
        Py_DECREF(self->codes[i].pinned);
    }
    free(self->entries);
    free(self->slots);
    free(self->labels);
    free(self->codes);
    free(self->code_slots);
    free(self->pending);
    free(self->lines);
    free(self->region);
    free(self->scratch);
    free(self->batch_addresses);
    free(self->batch);
    free(self->batch_copied);
    free(self->batch_wanted);
    free(self->seen.items);
    free(self->seeing.items);
    self->entries = NULL;
    self->slots = self->code_slots = NULL;
    self->labels = NULL;
    self->codes = NULL;
    self->pending = NULL;
    self->lines = NULL;
    self->region = NULL;
    self->scratch = NULL;
    self->batch_addresses = NULL;
    self->batch = NULL;
    self->batch_copied = NULL;
    self->batch_wanted = NULL;
    self->seen = self->seeing = (thread_list_t){NULL, 0, 0};
    self->n_entries = self->n_labels = self->n_codes = self->n_pending = 0;
}

/* The entry for (stack, thread label, label set), created if need be; the thread's overflow
 * entry once the table is full; NULL only if even that cannot be allocated. */
static entry_t *
find_entry(SamplerObject *self, const ppf_frame_t *frames, int depth, int32_t label,
           uintptr_t labels)
{
    int stored = depth < 0 ? 0 : depth;
    if (depth < 0) {
        labels = 0; /* The overflow entries are per thread only. */
    }
    uint64_t hash = ppf_hash_stack(frames, stored, (size_t)label) ^ (uint64_t)(depth < 0) ^
                    ((uint64_t)labels * 0x9E3779B97F4A7C15ULL);
    size_t mask = ENTRY_SLOTS - 1;
    for (size_t i = (size_t)hash & mask;; i = (i + 1) & mask) {
        uint32_t index = self->slots[i];
        if (index != 0) {
            entry_t *e = self->entries[index - 1];
            if (e->hash == hash && e->label == label && e->labels == labels &&
                ppf_same_frames(e->frames, frames, e->depth, depth)) {
                return e;
            }
            continue;
        }
        if (depth >= 0 && self->n_entries >= MAX_ENTRIES) {
            return find_entry(self, NULL, OVERFLOW_DEPTH, label, 0);
        }
        entry_t *e = calloc(1, sizeof(entry_t) + (size_t)stored * sizeof(ppf_frame_t));
        if (e == NULL) {
            return depth < 0 ? NULL : find_entry(self, NULL, OVERFLOW_DEPTH, label, 0);
        }
        e->hash = hash;
        e->label = label;
        e->labels = labels;
        e->depth = depth;
        memcpy(e->frames, frames, (size_t)stored * sizeof(ppf_frame_t));
        self->entries[self->n_entries++] = e;
        self->slots[i] = self->n_entries;
        return e;
    }
}

/* ---- code objects ------------------------------------------------------------------------- */

static ppf_code_info_t *
pinned_code(SamplerObject *self, uintptr_t address)
{
    size_t mask = CODE_SLOTS - 1;
    for (size_t i = (size_t)((address >> 4) * 0x9E3779B97F4A7C15ULL >> 40) & mask;;
         i = (i + 1) & mask) {
        uint32_t index = self->code_slots[i];
        if (index == 0) {
            return NULL;
        }
        if (self->codes[index - 1].address == address) {
            return &self->codes[index - 1];
        }
    }
}

static void
add_pinned(SamplerObject *self, const ppf_code_info_t *info)
{
    size_t mask = CODE_SLOTS - 1;
    size_t i = (size_t)((info->address >> 4) * 0x9E3779B97F4A7C15ULL >> 40) & mask;
    while (self->code_slots[i] != 0) {
        i = (i + 1) & mask;
    }
    self->codes[self->n_codes++] = *info;
    self->code_slots[i] = self->n_codes;
}

/* The lookup a stack copy uses: a pinned code object, or one copied now to be pinned later. */
static const ppf_code_info_t *
lookup_code(void *context, uintptr_t address)
{
    SamplerObject *self = context;
    const ppf_code_info_t *pinned = pinned_code(self, address);
    if (pinned != NULL) {
        return pinned;
    }
    for (uint32_t i = 0; i < self->n_candidates; i++) {
        if (self->candidates[i].address == address) {
            return &self->candidates[i];
        }
    }
    if (self->n_candidates == MAX_CANDIDATES ||
        ppf_copy_code(address, &self->candidates[self->n_candidates]) < 0) {
        return NULL;
    }
    return &self->candidates[self->n_candidates++];
}

/* With the GIL. A candidate that is no longer the code object it was (freed since) is left
 * out, and so are the samples that met it. */
static void
pin_candidates(SamplerObject *self)
{
    for (uint32_t i = 0; i < self->n_candidates && self->n_codes < MAX_CODES; i++) {
        if (ppf_pin_code(&self->candidates[i]) == 0) {
            add_pinned(self, &self->candidates[i]);
        }
    }
    self->n_candidates = 0;
}

static int
line_at(SamplerObject *self, const ppf_code_info_t *code, int32_t offset)
{
    size_t i = (size_t)(((code->address >> 4) ^ ((uint64_t)(uint32_t)offset * 0x9E3779B1u)) &
                        (LINE_SLOTS - 1));
    line_slot_t *slot = &self->lines[i];
    if (slot->code != code->address || slot->offset != offset) {
        *slot = (line_slot_t){code->address, offset, ppf_code_line(code, offset)};
    }
    return slot->line;
}

/* (code, line) frames for raw ones; -1 while one of their code objects is not pinned. */
static int
resolve(SamplerObject *self, const ppf_raw_frame_t *raw, int depth)
{
    for (int d = 0; d < depth; d++) {
        const ppf_code_info_t *code = pinned_code(self, raw[d].code);
        if (code == NULL) {
            return -1;
        }
        self->stack[d].code = code->pinned;
        self->stack[d].lineno = raw[d].line != 0 ? raw[d].line : line_at(self, code, raw[d].offset);
    }
    return 0;
}

/* ---- samples ------------------------------------------------------------------------------ */

static entry_t *
count_sample(SamplerObject *self, int depth, int32_t label, uintptr_t labels, int64_t value)
{
    entry_t *e = find_entry(self, self->stack, depth, label, labels);
    if (e != NULL) {
        if (e->count == 0) {
            e->first = value;
        }
        e->count++;
        e->value += value;
        self->labels[label].observations++;
    }
    return e;
}

/* The entry the sample went to, or NULL when it waits for a pin (or was lost). */
static entry_t *
add_sample(SamplerObject *self, int depth, int32_t label, uintptr_t labels, int64_t value)
{
    if (resolve(self, self->raw, depth) == 0) {
        return count_sample(self, depth, label, labels, value);
    }
    if (self->n_pending == MAX_PENDING) {
        self->unpinned++;
        return NULL;
    }
    pending_t *p = &self->pending[self->n_pending++];
    p->label = label;
    p->labels = labels;
    p->value = value;
    p->depth = depth;
    memcpy(p->frames, self->raw, (size_t)depth * sizeof(ppf_raw_frame_t));
    return NULL;
}

static void
add_pending(SamplerObject *self)
{
    for (uint32_t i = 0; i < self->n_pending; i++) {
        pending_t *p = &self->pending[i];
        if (resolve(self, p->frames, p->depth) == 0) {
            count_sample(self, p->depth, p->label, p->labels, p->value);
        }
        else {
            self->unpinned++;
        }
    }
    self->n_pending = 0;
}

static int32_t
thread_label(SamplerObject *self, thread_t *thread, const ppf_thread_copy_t *copy)
{
    if (thread->label < 0) {
        if (self->n_labels < MAX_LABELS) {
            self->labels[self->n_labels] =
                (label_t){copy->ident, thread->tid, copy->serial, 0, 0, thread->own};
            thread->label = (int32_t)self->n_labels++;
        }
        else {
            thread->label = MAX_LABELS; /* zeroed: "thread table full" */
        }
    }
    return thread->label;
}

/* ---- readings ----------------------------------------------------------------------------- */

/* The previous reading of the thread state `serial`. Thread states are listed newest first and
 * their serials only grow, so the previous reading's threads come in the same order: one cursor
 * walks them. */
static int
find_thread(const thread_list_t *seen, size_t *cursor, uint64_t serial, thread_t *out)
{
    for (size_t i = *cursor; i < seen->count; i++) {
        if (seen->items[i].serial == serial) {
            *out = seen->items[i];
            *cursor = i + 1; /* Those skipped have exited. */
            return 1;
        }
        if (seen->items[i].serial < serial) {
            break;
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
            return; /* Unknown next time: its CPU is measured from then. */
        }
        list->items = items;
        list->capacity = capacity;
    }
    list->items[list->count++] = *thread;
}

static int
stack_of(SamplerObject *self, const thread_t *thread, uintptr_t *labels)
{
    int truncated = 0;
    uintptr_t contextvars = 0;
    int depth = ppf_copy_stack(thread->address, self->interp, lookup_code, self, self->region,
                               self->raw, PPF_MAX_STACK_DEPTH, &truncated, &contextvars);
    *labels = ppf_context_value(contextvars);
    return depth;
}

static void
read_cpu(SamplerObject *self, thread_t *thread, ppf_thread_copy_t *copy, int record)
{
    int64_t before = thread_cpu_ns(thread->tid);
    if (before < 0) {
        return; /* Exited. */
    }
    thread->ran = before != thread->cpu_ns;
    if (thread->cpu_ns < 0 || before == thread->cpu_ns || !record) {
        thread->cpu_ns = before; /* A baseline, or it did not run since the previous tick. */
        keep_thread(&self->seeing, thread);
        return;
    }
    if (ppf_thread_frame(copy) < 0 || copy->frame == 0) { /* No Python code to charge it to. */
        thread->cpu_ns = before;
        keep_thread(&self->seeing, thread);
        return;
    }
    /* On a CPU now if its clock moves across the copy of its stack, or if it waits for the CPU
     * that the sampler took from it. */
    int32_t label = thread_label(self, thread, copy);
    int64_t after = thread_cpu_ns(thread->tid);
    if (after > before || preempted_by_sampler(self, thread->tid)) {
        uintptr_t labels;
        int depth = stack_of(self, thread, &labels);
        int64_t later = thread_cpu_ns(thread->tid);
        after = later > after ? later : after;
        if (depth > 0) {
            add_sample(self, depth, label, labels, self->period_ns);
        }
        self->dropped += depth < 0; /* Its CPU goes to its other observations. */
    }
    if (after < before) {
        after = before;
    }
    self->labels[label].cpu_ns += after - thread->cpu_ns;
    thread->cpu_ns = after;
    keep_thread(&self->seeing, thread);
}

static void
read_wall(SamplerObject *self, thread_t *thread, ppf_thread_copy_t *copy, int64_t elapsed,
          int record)
{
    int64_t cpu = thread_cpu_ns(thread->tid);
    if (cpu < 0 && thread->tid != 0) {
        return; /* Exited. */
    }
    if (record) {
        if (cpu >= 0 && cpu == thread->cpu_ns && thread->sampled) {
            if (thread->last != NULL) { /* Has not run: the same stack. */
                thread->last->count++;
                thread->last->value += elapsed;
            }
        }
        else {
            uintptr_t labels;
            int depth = stack_of(self, thread, &labels);
            entry_t *entry = NULL;
            if (depth > 0) {
                entry = add_sample(self, depth, thread_label(self, thread, copy), labels, elapsed);
            }
            self->dropped += depth < 0;
            thread->sampled = depth == 0 || entry != NULL; /* Not while waiting for a pin. */
            thread->last = entry;
        }
    }
    thread->cpu_ns = cpu;
    keep_thread(&self->seeing, thread);
}

/* The samples under the thread's label are of one of pyprofiler's threads (not the label that
 * threads beyond the table share). */
static void
mark_own(SamplerObject *self, const thread_t *thread)
{
    if (thread->label >= 0 && thread->label < MAX_LABELS) {
        self->labels[thread->label].own = 1;
    }
}

/* The previous reading's thread states, copied in one read; each is used only if it is still
 * the same state (its serial) when the walk reaches its address. */
static void
copy_previous(SamplerObject *self)
{
    int n = self->seen.count < PPF_IOV_BATCH ? (int)self->seen.count : PPF_IOV_BATCH;
    for (int i = 0; i < n; i++) {
        self->batch_addresses[i] = self->seen.items[i].address;
    }
    if (n > 0) {
        ppf_copy_threads(self->batch_addresses, n, self->interp, self->scratch, self->batch,
                         self->batch_copied);
        if (!self->wall) { /* Those that ran will have their frames read: read them at once. */
            for (int i = 0; i < n; i++) {
                self->batch_wanted[i] = self->batch_copied[i] && self->seen.items[i].ran;
            }
            ppf_thread_frames(self->batch, self->batch_wanted, n);
        }
    }
}

static int
copy_at(SamplerObject *self, size_t cursor, uintptr_t address, ppf_thread_copy_t *out)
{
    /* The walk meets the previous reading's threads in their order: look a few ahead of the
     * cursor (those skipped have exited). */
    for (size_t i = cursor; i < cursor + 4 && i < self->seen.count && i < PPF_IOV_BATCH; i++) {
        if (self->seen.items[i].address == address) {
            if (self->batch_copied[i] && self->batch[i].serial == self->seen.items[i].serial) {
                *out = self->batch[i];
                return 0;
            }
            break;
        }
    }
    return ppf_copy_thread(address, self->interp, out);
}

/* One reading of every thread, without the GIL; `record` is 0 for the one a profile starts
 * from. */
static void
read_threads(SamplerObject *self, int record)
{
    int64_t now = clock_ns(CLOCK_MONOTONIC);
    int64_t elapsed = now - self->last_reading_ns;
    self->last_reading_ns = now;
    size_t cursor = 0;
    uint64_t max_serial = 0, previous_serial = UINT64_MAX;
    int torn = 0;
    self->seeing.count = 0;
    copy_previous(self);
    uintptr_t address = (uintptr_t)PyInterpreterState_ThreadHead(self->interp);
    for (size_t listed = 0; address != 0; listed++) {
        ppf_thread_copy_t copy;
        /* Serials fall along the list; anything else is a list that changed as it was read. */
        if (listed == MAX_LISTED || copy_at(self, cursor, address, &copy) < 0 ||
            copy.serial >= previous_serial) {
            torn = 1;
            break;
        }
        previous_serial = copy.serial;
        if (copy.serial > max_serial) {
            max_serial = copy.serial;
        }
        uintptr_t here = address;
        address = copy.next;
        if (here == (uintptr_t)self->tstate) {
            continue;
        }
        thread_t thread;
        if (!find_thread(&self->seen, &cursor, copy.serial, &thread)) {
            /* New since the previous reading: all its CPU is in the window. One older than that
             * reading's newest was missed by it: its CPU is measured from now on. */
            int64_t cpu = copy.serial > self->max_serial ? 0 : -1;
            thread = (thread_t){.address = here, .serial = copy.serial, .cpu_ns = cpu, .label = -1};
        }
        if (copy.frame_known && copy.frame == 0) {
            keep_thread(&self->seeing, &thread); /* Runs no Python code (or not yet). */
            continue;
        }
#if PY_VERSION_HEX >= 0x030B0000
        /* Trusted once the thread runs Python code: until then the state may carry its
         * creator's id (3.11, 3.12) or none (3.13). */
        if (copy.tid != thread.tid) {
            if (ppf_thread_frame(&copy) < 0) {
                keep_thread(&self->seeing, &thread);
                continue;
            }
            if (copy.frame != 0) {
                if (thread.tid != 0) {
                    thread.cpu_ns = -1;
                }
                thread.tid = copy.tid;
            }
        }
#else
        if (thread.tid == 0) {
            thread.tid = ppf_pthread_tid(copy.ident); /* The GIL's way (find_tids) if not. */
        }
        self->need_tids |= thread.tid == 0;
#endif
        if (thread.tid == 0 && !self->wall) {
            keep_thread(&self->seeing, &thread);
            continue;
        }
        if (thread.label >= 0 && thread.label < MAX_LABELS) {
            self->labels[thread.label].tid = thread.tid; /* Learnt since its first sample. */
        }
        int own = ppf_own_thread(copy.ident, thread.tid);
        if (own >= 0) {
            thread.own = own;
        }
        if (thread.own && !__atomic_load_n(&self->include_own, __ATOMIC_RELAXED)) {
            mark_own(self, &thread); /* Samples it gave before it was known to be ours. */
            /* Nothing kept of it: let in later, it is measured from then on. */
            thread.cpu_ns = -1;
            thread.sampled = 0;
            thread.last = NULL;
            keep_thread(&self->seeing, &thread);
            continue;
        }
        if (self->wall) {
            read_wall(self, &thread, &copy, elapsed, record);
        }
        else {
            read_cpu(self, &thread, &copy, record);
        }
        /* A thread of ours may have registered between the look-up above and the copy of its
         * stack, and be sampled in its own code: asked again now, it is known to be ours (it
         * registers before it runs that code), even if it ends before the next reading. */
        if (!thread.own && ppf_own_thread(copy.ident, thread.tid) > 0) {
            thread.own = 1;
        }
        if (thread.own) {
            mark_own(self, &thread);
        }
    }
    if (torn) {
        /* Those not reached yet are kept as they were. */
        self->torn_readings++;
        for (size_t i = cursor; i < self->seen.count; i++) {
            keep_thread(&self->seeing, &self->seen.items[i]);
        }
        if (self->max_serial > max_serial) {
            max_serial = self->max_serial;
        }
    }
    thread_list_t previous = self->seen;
    self->seen = self->seeing;
    self->seeing = previous;
    self->max_serial = max_serial;
}

/* With the GIL, on 3.9 and 3.10: kernel ids of threads that run Python code, from their pthread
 * (alive while its state is listed). `baseline`: also read their clocks now. */
static void
find_tids(SamplerObject *self, int baseline)
{
#if PY_VERSION_HEX < 0x030B0000
    if (!self->need_tids) {
        return;
    }
    self->need_tids = 0;
    for (PyThreadState *tstate = PyInterpreterState_ThreadHead(self->interp); tstate != NULL;
         tstate = PyThreadState_Next(tstate)) {
        if (tstate == self->tstate || tstate->frame == NULL) {
            continue;
        }
        for (size_t i = 0; i < self->seen.count; i++) {
            thread_t *thread = &self->seen.items[i];
            if (thread->serial != tstate->id || thread->tid != 0) {
                continue;
            }
            clockid_t clock;
            if (pthread_getcpuclockid((pthread_t)tstate->thread_id, &clock) == 0) {
                thread->tid = (unsigned long)(pid_t)~(clock >> 3);
                if (thread->label >= 0 && thread->label < MAX_LABELS) {
                    self->labels[thread->label].tid = thread->tid;
                }
                if (baseline) {
                    thread->cpu_ns = thread_cpu_ns(thread->tid);
                }
            }
            break;
        }
    }
#else
    (void)baseline;
    self->need_tids = 0;
#endif
}

static PyObject *window_result(SamplerObject *self);
static void start_window(SamplerObject *self);

/* With the GIL, in the pthread: the window's result for cut(), and the tables emptied. */
static void
hand_over_window(SamplerObject *self)
{
    add_pending(self);
    PyObject *result = window_result(self);
    if (result != NULL) {
        start_window(self);
    }
    else {
        PyErr_Fetch(&self->cut_error[0], &self->cut_error[1], &self->cut_error[2]);
    }
    pthread_mutex_lock(&self->mutex);
    self->cut_result = result;
    pthread_mutex_unlock(&self->mutex);
}

/* A tick of the pthread: the reading, then, if it met new code objects or threads, or a cut
 * wants the window, a short hold of the GIL to pin them and hand the window over. */
static void
tick(SamplerObject *self, int cut)
{
    self->put_on_cpu_ns = 0;
    if (!self->wall) {
        ask_gil_holder_first(self);
    }
    read_threads(self, 1);
    if (self->n_candidates > 0 || self->need_tids || cut) {
        if (ppf_finalizing()) { /* Taking the GIL now would end this thread on the spot. */
            self->n_candidates = 0; /* And a cut gets no window (cut_result stays NULL). */
        }
        else {
            /* The default slice while the GIL is held: the end of a short one would let other
             * threads take this CPU from the sampler, and the application wait for the GIL. */
            set_slice(0);
            PyEval_RestoreThread(self->tstate);
            int64_t start = clock_ns(CLOCK_MONOTONIC);
            pin_candidates(self);
            find_tids(self, 0);
            int64_t held = clock_ns(CLOCK_MONOTONIC) - start;
            if (cut) {
                hand_over_window(self);
            }
            PyEval_SaveThread();
            set_slice(SHORTEST_SLICE_NS);
            self->gil_takes++;
            if (held > self->max_gil_hold_ns) {
                self->max_gil_hold_ns = held;
            }
        }
    }
    add_pending(self);
}

/* ---- the pthread -------------------------------------------------------------------------- */

/* The next instant: the period on average, each gap uniform in [0.5, 1.5) periods. */
static int64_t
next_instant(SamplerObject *self, int64_t after)
{
    double u = (double)(ppf_xorshift(&self->random) >> 11) / 9007199254740992.0;
    return after + (int64_t)((0.5 + u) * (double)self->period_ns);
}

static void *
run(void *arg)
{
    SamplerObject *self = arg;
    wake_on_time();
    /* Named as pyprofiler's threads are, for `top -H` and /proc: its CPU is pyprofiler's. */
    prctl(PR_SET_NAME, self->wall ? "pyprofiler-wall" : "pyprofiler-cpu", 0UL, 0UL, 0UL);
    if (!ppf_finalizing()) {
        /* Needs no GIL (PyGILState_Ensure does the same); binds the state to this thread. */
        self->tstate = PyThreadState_New(self->interp);
        if (self->tstate == NULL) {
            self->error = "could not create a thread state for the sampler thread";
        }
    }
    int64_t next = next_instant(self, self->last_reading_ns);
    int expired = 0;
    while (self->tstate != NULL) {
        pthread_mutex_lock(&self->mutex);
        int64_t wake_at = self->expires_ns != 0 && self->expires_ns < next ? self->expires_ns
                                                                             : next;
        struct timespec deadline = {(time_t)(wake_at / 1000000000),
                                    (long)(wake_at % 1000000000)};
        self->cpu_at_sleep_ns = clock_ns(CLOCK_THREAD_CPUTIME_ID);
        while (!self->stopping && self->cut_state != CUT_ASKED &&
               pthread_cond_timedwait(&self->wake, &self->mutex, &deadline) != ETIMEDOUT) {
        }
        int last = self->stopping, cut = self->cut_state == CUT_ASKED;
        expired = !last && !cut && self->expires_ns != 0 &&
                  clock_ns(CLOCK_MONOTONIC) >= self->expires_ns;
        self->exited = expired; /* From here on cut() finds no window to take. */
        pthread_mutex_unlock(&self->mutex);
        if (expired) {
            break;
        }
        if (wake_at != next) {
            continue; /* Woke for an expiry that was put off meanwhile. */
        }
        tick(self, cut);
        if (cut) {
            pthread_mutex_lock(&self->mutex);
            self->cut_state = CUT_HANDED_OVER;
            pthread_cond_broadcast(&self->cut_done);
            pthread_mutex_unlock(&self->mutex);
            continue; /* The next instant stays where it was drawn. */
        }
        if (last) {
            break;
        }
        int64_t now = clock_ns(CLOCK_MONOTONIC);
        next = next_instant(self, next);
        if (next < now) { /* Fell behind (a long wait for the GIL): skip ticks, never burst. */
            next = next_instant(self, now);
        }
    }
    if (self->tstate != NULL && !ppf_finalizing()) {
        PyEval_RestoreThread(self->tstate);
        if (expired) { /* Nobody will take what it recorded: its memory and pins go now. */
            start_window(self);
        }
        PyThreadState_Clear(self->tstate);
        PyThreadState_DeleteCurrent();
    } /* While the interpreter finalizes, the state is left behind with the rest of it. */
    self->own_cpu_ns = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    ppf_proc_files_close(&self->proc);
    pthread_mutex_lock(&self->mutex);
    self->exited = 1;
    pthread_cond_broadcast(&self->cut_done);
    pthread_mutex_unlock(&self->mutex);
    return NULL;
}

/* ---- Python interface --------------------------------------------------------------------- */

static PyObject *
Sampler_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"hz", "wall", NULL};
    int hz, wall;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "ip", keywords, &hz, &wall)) {
        return NULL;
    }
    if (hz < 1 || hz > PPF_SAMPLER_MAX_HZ) {
        PyErr_Format(PyExc_ValueError, "hz must be between 1 and %d, not %d", PPF_SAMPLER_MAX_HZ,
                     hz);
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
    pthread_cond_init(&self->cut_done, NULL);
    pthread_mutex_init(&self->mutex, NULL);
    self->pid = getpid();
    ppf_proc_files_init(&self->proc);
    return (PyObject *)self;
}

static void
Sampler_dealloc(SamplerObject *self)
{
    /* Never RUNNING here: the pthread holds a reference until stop() joins it. */
    if (self->pid == getpid()) { /* A child's copies may be held by a thread it does not have. */
        pthread_cond_destroy(&self->wake);
        pthread_cond_destroy(&self->cut_done);
        pthread_mutex_destroy(&self->mutex);
    }
    free_tables(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Sampler_start(SamplerObject *self, PyObject *unused)
{
    if (self->state != NEW) {
        PyErr_SetString(PyExc_RuntimeError, "a StackSampler can only be started once");
        return NULL;
    }
    if (!ppf_stackread_available()) {
        PyErr_SetString(PyExc_OSError,
                        "this process cannot read its own memory with process_vm_readv");
        return NULL;
    }
    if (alloc_tables(self) < 0) {
        free_tables(self);
        return PyErr_NoMemory();
    }
    self->interp = PyThreadState_GetInterpreter(PyThreadState_Get());
#if PY_VERSION_HEX < 0x030B0000
    ppf_learn_pthread_tid();
#endif
    self->random = ((uint64_t)clock_ns(CLOCK_MONOTONIC) ^ (uint64_t)(uintptr_t)self) |
                   1; /* never 0 */
    self->last_reading_ns = clock_ns(CLOCK_MONOTONIC);
    read_threads(self, 0);
    find_tids(self, 1);
    self->pid = getpid();
    self->stopping = self->exited = 0;
    self->cut_state = CUT_NONE;
    self->expires_ns = 0;
    Py_INCREF(self); /* The pthread's, released by stop(). */
    int rc = pthread_create(&self->thread, NULL, run, self);
    if (rc != 0) {
        Py_DECREF(self);
        free_tables(self);
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    self->state = RUNNING;
    Py_RETURN_NONE;
}

/* An entry's value in the profile: CPU observations scaled to their thread's clock. */
static int64_t
entry_value(const SamplerObject *self, const entry_t *e)
{
    if (self->wall) {
        return e->value;
    }
    const label_t *label = &self->labels[e->label];
    return (int64_t)((double)e->count * (double)label->cpu_ns / (double)label->observations);
}

static PyObject *
append(PyObject *list, PyObject *item)
{
    if (list != NULL && (item == NULL || PyList_Append(list, item) < 0)) {
        Py_CLEAR(list);
    }
    Py_XDECREF(item);
    return list;
}

/* The window's samples: ([(stack, ident, tid, alive, own, value_ns, count, labels, first_ns)],
 * [(ident, tid, alive, own, cpu_ns)], stats), in the order each entry was first met. stack is
 * ((code, line), ...) leaf first, or None for the samples of a thread that no longer fit in the
 * table; labels is the address of the label set in force (0: none), which labelsets.resolve()
 * names; alive says whether the thread still ran at the last reading (its ident may since be
 * another's); own, whether it is one of pyprofiler's; first_ns (wall), the weight of the entry's
 * first tick. The second list: CPU of threads never seen on a CPU. stats["reading_ns"] is when
 * the window's last reading was taken (CLOCK_MONOTONIC): where the window really ends, later
 * than cut() was called when the pthread was busy. */
static PyObject *
window_result(SamplerObject *self)
{
    char *alive = calloc(MAX_LABELS + 1, 1);
    PyObject *records = alive == NULL ? PyErr_NoMemory() : PyList_New(0);
    PyObject *unseen = records == NULL ? NULL : PyList_New(0);
    for (size_t i = 0; alive != NULL && i < self->seen.count; i++) {
        if (self->seen.items[i].label >= 0) {
            alive[self->seen.items[i].label] = 1;
        }
    }
    for (uint32_t i = 0; records != NULL && i < self->n_entries; i++) {
        entry_t *e = self->entries[i];
        const label_t *label = &self->labels[e->label];
        PyObject *stack = e->depth < 0 ? Py_NewRef(Py_None) : ppf_stack_tuple(e->frames, e->depth);
        PyObject *thread_alive = alive[e->label] ? Py_True : Py_False;
        PyObject *own = label->own ? Py_True : Py_False;
        records = append(records, stack == NULL ? NULL
                                                : Py_BuildValue("(NkkOOLLKL)", stack, label->ident,
                                                                label->tid, thread_alive, own,
                                                                (long long)entry_value(self, e),
                                                                (long long)e->count,
                                                                (unsigned long long)e->labels,
                                                                (long long)e->first));
    }
    for (uint32_t i = 0; !self->wall && unseen != NULL && i <= MAX_LABELS; i++) {
        const label_t *label = &self->labels[i];
        if (label->observations == 0 && label->cpu_ns > 0) {
            unseen = append(unseen, Py_BuildValue("(kkOOL)", label->ident, label->tid,
                                                  alive[i] ? Py_True : Py_False,
                                                  label->own ? Py_True : Py_False,
                                                  (long long)label->cpu_ns));
        }
    }
    free(alive);
    PyObject *stats =
        records == NULL || unseen == NULL
            ? NULL
            : Py_BuildValue("{s:K,s:K,s:K,s:K,s:L,s:I,s:L}", "dropped",
                            (unsigned long long)self->dropped, "unpinned",
                            (unsigned long long)self->unpinned, "torn_readings",
                            (unsigned long long)self->torn_readings, "gil_takes",
                            (unsigned long long)self->gil_takes, "max_gil_hold_ns",
                            (long long)self->max_gil_hold_ns, "code_objects", self->n_codes,
                            "reading_ns", (long long)self->last_reading_ns);
    if (stats == NULL) {
        Py_XDECREF(records);
        Py_XDECREF(unseen);
        return NULL;
    }
    return Py_BuildValue("(NNN)", records, unseen, stats); /* Takes the references. */
}

/* With the GIL: code objects that none of the window's samples met are released (pinned again
 * if met later); the others stay pinned, so a steady program's are not pinned anew each window. */
static void
keep_codes_in_entries(SamplerObject *self)
{
    char *used = calloc(self->n_codes + 1, 1);
    for (uint32_t i = 0; used != NULL && i < self->n_entries; i++) {
        const entry_t *e = self->entries[i];
        for (int d = 0; d < e->depth; d++) {
            const ppf_code_info_t *code = pinned_code(self, (uintptr_t)e->frames[d].code);
            if (code != NULL) {
                used[code - self->codes] = 1;
            }
        }
    }
    uint32_t kept = 0;
    for (uint32_t i = 0; i < self->n_codes; i++) {
        if (used != NULL && used[i]) {
            self->codes[kept++] = self->codes[i];
        }
        else {
            Py_DECREF(self->codes[i].pinned);
        }
    }
    free(used);
    memset(self->code_slots, 0, CODE_SLOTS * sizeof(uint32_t));
    self->n_codes = 0;
    for (uint32_t i = 0; i < kept; i++) {
        ppf_code_info_t code = self->codes[i];
        add_pinned(self, &code); /* Back at index i. */
    }
    /* A released code object's address may be another's when next met. */
    memset(self->lines, 0, LINE_SLOTS * sizeof(line_slot_t));
}

/* With the GIL, the pthread held back (CUT_HANDED_OVER) or gone: empties the table for the next
 * window. The threads' clocks stay as read, so the next window starts where this one ends.
 * Labels of threads that have exited are recycled, and code objects no longer met are released,
 * so that a sampler that runs for days stays within its bounds. */
static void
start_window(SamplerObject *self)
{
    keep_codes_in_entries(self);
    for (uint32_t i = 0; i < self->n_entries; i++) {
        free(self->entries[i]);
    }
    self->n_entries = 0;
    memset(self->slots, 0, ENTRY_SLOTS * sizeof(uint32_t));
    label_t *kept = calloc(MAX_LABELS + 1, sizeof(label_t));
    uint32_t n_kept = 0;
    for (size_t i = 0; i < self->seen.count; i++) {
        thread_t *thread = &self->seen.items[i];
        thread->last = NULL;
        thread->sampled = 0;
        if (thread->label >= 0 && thread->label < MAX_LABELS && kept != NULL) {
            kept[n_kept] = self->labels[thread->label];
            kept[n_kept].observations = kept[n_kept].cpu_ns = 0;
            thread->label = (int32_t)n_kept++;
        }
        else {
            thread->label = -1;
        }
    }
    if (kept != NULL) {
        free(self->labels);
        self->labels = kept;
        self->n_labels = n_kept;
    }
    else { /* Keeps the old labels, emptied. */
        for (uint32_t i = 0; i <= MAX_LABELS; i++) {
            self->labels[i].observations = self->labels[i].cpu_ns = 0;
        }
    }
    self->dropped = self->unpinned = 0;
}

/* The window since start() or the previous cut(), as stop() returns it but for own_cpu_ns
 * and error; sampling goes on without a gap, and any expiry is called off. None once the
 * sampler has ended on its own (expire_after). */
static PyObject *
Sampler_cut(SamplerObject *self, PyObject *unused)
{
    if (self->state != RUNNING || self->pid != getpid()) {
        PyErr_SetString(PyExc_RuntimeError, "the StackSampler is not running");
        return NULL;
    }
    int expired, handed_over = 0;
    PyObject *result = NULL, *error[3] = {NULL, NULL, NULL};
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->mutex);
    while (self->cut_state != CUT_NONE && !self->exited) { /* Another thread's cut. */
        pthread_cond_wait(&self->cut_done, &self->mutex);
    }
    self->expires_ns = 0;
    expired = self->exited;
    if (!expired) {
        self->cut_state = CUT_ASKED;
        pthread_cond_signal(&self->wake);
        while (self->cut_state == CUT_ASKED && !self->exited) {
            pthread_cond_wait(&self->cut_done, &self->mutex);
        }
        handed_over = self->cut_state == CUT_HANDED_OVER;
        result = self->cut_result;
        memcpy(error, self->cut_error, sizeof error);
        self->cut_result = NULL;
        memset(self->cut_error, 0, sizeof self->cut_error);
        self->cut_state = CUT_NONE;
        pthread_cond_broadcast(&self->cut_done);
    }
    pthread_mutex_unlock(&self->mutex);
    Py_END_ALLOW_THREADS
    if (handed_over) {
        if (result == NULL && error[0] == NULL) { /* The interpreter is finalizing. */
            result = Py_NewRef(Py_None);
        }
        PyErr_Restore(error[0], error[1], error[2]);
        return result;
    }
    if (expired) {
        return Py_NewRef(Py_None);
    }
    /* The pthread ended without taking the reading: its tables are this thread's now. */
    result = window_result(self);
    if (result != NULL) {
        start_window(self);
    }
    return result;
}

/* The sampler ends on its own `seconds` from now, discarding what it recorded since the last
 * cut, unless cut() or stop() comes first. */
static PyObject *
Sampler_expire_after(SamplerObject *self, PyObject *arg)
{
    double seconds = PyFloat_AsDouble(arg);
    if (seconds == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    if (self->state != RUNNING || self->pid != getpid()) {
        PyErr_SetString(PyExc_RuntimeError, "the StackSampler is not running");
        return NULL;
    }
    int64_t at = clock_ns(CLOCK_MONOTONIC) + (int64_t)(seconds * 1e9);
    pthread_mutex_lock(&self->mutex);
    self->expires_ns = at > 0 ? at : 1;
    pthread_cond_signal(&self->wake);
    pthread_mutex_unlock(&self->mutex);
    Py_RETURN_NONE;
}

/* Whether pyprofiler's own threads are sampled from the next reading on (by default not). */
static PyObject *
Sampler_include_own_threads(SamplerObject *self, PyObject *arg)
{
    int include = PyObject_IsTrue(arg);
    if (include < 0) {
        return NULL;
    }
    __atomic_store_n(&self->include_own, include, __ATOMIC_RELAXED);
    Py_RETURN_NONE;
}

/* (records, unseen, own_cpu_ns, error, stats): the window since start() or the previous cut(),
 * as window_result() describes it, once the final reading is taken and the thread stopped. */
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
    }
    else { /* A forked child: the pthread stayed in the parent; the table is as it was at fork. */
        ppf_proc_files_close(&self->proc);
    }
    PyObject *window = window_result(self);
    free_tables(self);
    PyObject *result = NULL;
    if (window != NULL) {
        result = Py_BuildValue("(OOLzO)", PyTuple_GET_ITEM(window, 0),
                               PyTuple_GET_ITEM(window, 1), (long long)self->own_cpu_ns,
                               self->error, PyTuple_GET_ITEM(window, 2));
        Py_DECREF(window);
    }
    Py_DECREF(self); /* The pthread's reference. */
    return result;
}

static PyMethodDef Sampler_methods[] = {
    {"start", (PyCFunction)Sampler_start, METH_NOARGS,
     "Take the first reading and start the sampler thread."},
    {"cut", (PyCFunction)Sampler_cut, METH_NOARGS,
     "Take a reading, return the window since start() or the previous cut() as (records, "
     "unseen, stats), and go on sampling into a new window that starts there."},
    {"expire_after", (PyCFunction)Sampler_expire_after, METH_O,
     "End on its own after `seconds`, discarding what was recorded since the last cut(), "
     "unless cut() or stop() comes first."},
    {"stop", (PyCFunction)Sampler_stop, METH_NOARGS,
     "Take a final reading, stop the thread and return ([(stack, ident, tid, alive, own, "
     "value_ns, count)], [(ident, tid, alive, own, cpu_ns) of threads never seen on a CPU], "
     "own_cpu_ns, error, stats)."},
    {"include_own_threads", (PyCFunction)Sampler_include_own_threads, METH_O,
     "Whether pyprofiler's own threads (set_own_threads) are sampled from now on."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SamplerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pyprofiler.samplers._native.StackSampler",
    .tp_basicsize = sizeof(SamplerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "StackSampler(hz, wall): a native thread sampling every thread's stack without the "
              "GIL, weighted by CPU used (wall=False) or by wall time (wall=True).",
    .tp_new = Sampler_new,
    .tp_dealloc = (destructor)Sampler_dealloc,
    .tp_methods = Sampler_methods,
};

int
ppf_sampler_init(PyObject *module)
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
