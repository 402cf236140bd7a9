/* The sampling allocation hooks behind the heap and allocs profiles (see heap.h).
 *
 * Hooks the PYMEM_DOMAIN_OBJ and PYMEM_DOMAIN_MEM allocators (PEP 445). Every allocation
 * subtracts its size from a byte countdown; when the countdown runs out the allocation is
 * sampled and the countdown restarts from an exponentially distributed gap of mean `rate` bytes,
 * as Go's MemProfileRate. A sampled allocation records its Python stack (without allocating:
 * the interpreter's frames are read directly, as tracemalloc does) into a bucket keyed by
 * (stack, size), and its address is tracked until it is freed or reallocated.
 *
 * Frees are where the cost would be: every free would have to be looked up, and most frees are
 * of blocks that were never sampled. So when the allocators are pymalloc's (the default), a
 * sampled block is allocated from the raw domain instead, and the object and memory domains'
 * frees are not hooked at all: pymalloc hands every block that is not its own to PyMem_RawFree,
 * so the frees of sampled blocks all arrive at a hook on the raw domain, whose frees are far
 * rarer (only blocks over 512 bytes). Under any other allocator (debug hooks, PYTHONMALLOC,
 * tracemalloc already running) every free of the two domains is hooked and looked up.
 *
 * The object and memory domains are only ever called with the GIL held, which serializes the
 * sampling. The raw domain is called without it, so the table of tracked blocks and the free
 * counts are guarded by `tracked_mutex` too, and a raw free first asks a lock-free filter
 * whether its address can be tracked at all. The tables' own memory comes from the raw
 * allocator as it was before any hook; `in_hook` keeps anything the hook does from sampling
 * itself.
 */
#define PY_SSIZE_T_CLEAN
#include "heap.h"

#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "compat.h"
#include "contextread.h"
#include "frames.h"
#include "limits.h"
#include "ownthreads.h"
#include "random.h"

#define BUCKET_SLOTS (PPF_HEAP_MAX_BUCKETS * 2)
/* The label set of what pyprofiler's own threads allocate: no set's address, so that their
 * buckets stay apart from the program's, which its profiles show alone (heap_native.py). */
#define OWN_THREAD_LABELS ((uintptr_t)1)
#define MAX_TRACKED (1 << 20)        /* live sampled blocks */
#define MIN_TRACKED_SLOTS 4096
#define FILTER_BITS 15               /* counters in the filter of tracked addresses */
#define FILTER_SATURATED 255         /* a counter this high is never decremented again */

/* Declared for extensions up to 3.12, internal since; exported by every version. */
PyAPI_FUNC(const char *) _PyMem_GetCurrentAllocatorName(void);

typedef struct {
    uint64_t hash;
    size_t size;          /* the size class of its blocks (size_class) */
    uintptr_t labels;     /* the label set in force (contextread.h), or 0 */
    uint64_t last_sample; /* samples_taken when a block was last sampled into it */
    uint64_t allocs;
    uint64_t frees;
    uint64_t alloc_bytes; /* allocs * size, except in the overflow bucket, whose sizes vary */
    uint64_t free_bytes;
    int depth;
    ppf_frame_t frames[]; /* leaf first; each code object referenced until reset() */
} bucket_t;

typedef struct {
    void *ptr; /* NULL marks an empty slot */
    size_t size;
    uint32_t bucket;
} tracked_t;

typedef struct {
    PyMemAllocatorEx original;
    PyMemAllocatorDomain domain;
} hook_t;

static hook_t obj_hook = {.domain = PYMEM_DOMAIN_OBJ};
static hook_t mem_hook = {.domain = PYMEM_DOMAIN_MEM};
static hook_t raw_hook = {.domain = PYMEM_DOMAIN_RAW};
static PyMemAllocatorEx own_allocator; /* the raw domain before any hook */

static int hooked;
static int raw_sampling; /* sampled blocks come from the raw domain, and only its frees are seen */
static int in_hook;
static Py_ssize_t rate;
static Py_ssize_t countdown;

static bucket_t **buckets;        /* dense, in creation order; bucket 0 is the overflow bucket */
static uint32_t n_buckets;
static uint32_t *bucket_slots;    /* open addressing: index + 1 into buckets, 0 = empty */

static pthread_mutex_t tracked_mutex = PTHREAD_MUTEX_INITIALIZER;
static tracked_t *tracked;
static size_t tracked_slots;      /* power of two */
static size_t n_tracked;          /* written under tracked_mutex, read without it */
/* How many tracked blocks hash to each counter: zero means "certainly not tracked". */
static uint8_t tracked_filter[1 << FILTER_BITS];

static uint64_t samples_taken, dropped_stacks, dropped_blocks, truncated_stacks;
static int listing; /* buckets() is building Python objects from bucket pointers */
/* Buckets retired to make room (retire_idle_buckets): their counts, summed, and how many. */
static uint64_t retired_counts[4]; /* allocs, frees, alloc_bytes, free_bytes */
static uint64_t retired_buckets;
static uint32_t *free_indices; /* of retired buckets, for new ones */
static uint32_t n_free_indices;
/* Code objects that retired buckets referenced: released outside the hooks (release_retired). */
static PyObject **releasing;
static size_t n_releasing, releasing_capacity;
static int release_scheduled;
/* A full table of live buckets is not scanned again before this many more samples. */
#define RETIRE_EVERY 1024
static uint64_t retire_tried_at;
static size_t own_bytes;

/* ---- raw memory, counted ---------------------------------------------------------------- */

static void *
own_calloc(size_t n, size_t size)
{
    void *p = own_allocator.calloc(own_allocator.ctx, n, size);
    if (p != NULL) {
        own_bytes += n * size;
    }
    return p;
}

static void
own_free(void *p, size_t size)
{
    if (p != NULL) {
        own_bytes -= size;
        own_allocator.free(own_allocator.ctx, p);
    }
}

/* Blocks are counted by size class, as Go's runtime counts them: exact sizes would make a bucket
 * of every (stack, length) pair of strings and lists. pymalloc's 16-byte classes up to 512
 * bytes, then eight classes per doubling. */
static size_t
size_class(size_t size)
{
    if (size <= 512) {
        return (size + 15) & ~(size_t)15;
    }
    int top = 63 - __builtin_clzll((unsigned long long)(size - 1));
    size_t step = (size_t)1 << (top - 2);
    return (size + step - 1) & ~(step - 1);
}

static bucket_t *
new_bucket(uint64_t hash, size_t size, uintptr_t labels, const ppf_frame_t *frames, int depth)
{
    size_t bytes = sizeof(bucket_t) + (size_t)depth * sizeof(ppf_frame_t);
    bucket_t *b = own_calloc(1, bytes);
    if (b == NULL) {
        return NULL;
    }
    b->hash = hash;
    b->size = size;
    b->labels = labels;
    b->depth = depth;
    for (int i = 0; i < depth; i++) {
        b->frames[i] = frames[i];
        Py_INCREF(frames[i].code); /* Only ever released by reset(), outside any hook. */
    }
    return b;
}

static int
ensure_tables(void)
{
    if (buckets != NULL) {
        return 0;
    }
    buckets = own_calloc(PPF_HEAP_MAX_BUCKETS, sizeof(bucket_t *));
    bucket_slots = own_calloc(BUCKET_SLOTS, sizeof(uint32_t));
    free_indices = own_calloc(PPF_HEAP_MAX_BUCKETS, sizeof(uint32_t));
    tracked_t *table = own_calloc(MIN_TRACKED_SLOTS, sizeof(tracked_t));
    if (buckets == NULL || bucket_slots == NULL || free_indices == NULL || table == NULL) {
        own_free(table, MIN_TRACKED_SLOTS * sizeof(tracked_t));
        return -1;
    }
    pthread_mutex_lock(&tracked_mutex);
    tracked = table;
    tracked_slots = MIN_TRACKED_SLOTS;
    pthread_mutex_unlock(&tracked_mutex);
    /* Bucket 0 collects what no longer fits: reported as its own frame, never hidden. */
    buckets[0] = new_bucket(0, 0, 0, NULL, 0);
    if (buckets[0] == NULL) {
        return -1;
    }
    n_buckets = 1;
    return 0;
}

static void
remove_bucket_slot(uint32_t index)
{
    size_t mask = BUCKET_SLOTS - 1;
    size_t i = (size_t)buckets[index]->hash & mask;
    while (bucket_slots[i] != index + 1) {
        i = (i + 1) & mask;
    }
    /* Backward shift: pull later entries of the probe run into the hole. */
    size_t hole = i;
    for (size_t j = (i + 1) & mask; bucket_slots[j] != 0; j = (j + 1) & mask) {
        size_t home = (size_t)buckets[bucket_slots[j] - 1]->hash & mask;
        if (((j - home) & mask) >= ((j - hole) & mask)) {
            bucket_slots[hole] = bucket_slots[j];
            hole = j;
        }
    }
    bucket_slots[hole] = 0;
}

/* Runs the pending release of retired buckets' code objects, in the main thread. */
/* With the GIL, outside the hooks: drop the references retired buckets held. */
static void
release_retired(void)
{
    int was_in_hook = in_hook;
    in_hook = 1; /* A release may free and allocate; nothing it does is sampled. */
    while (n_releasing > 0) {
        PyObject *code = releasing[--n_releasing];
        Py_DECREF(code);
    }
    in_hook = was_in_hook;
}

static int
release_retired_pending(void *unused)
{
    release_scheduled = 0;
    release_retired();
    return 0;
}

/* Called with the table full, in a hook (with the GIL): makes room by retiring the buckets
 * that hold no live block and were sampled into least recently, at most a quarter of the table,
 * so that a new allocation site is seen after a week as on the first day. Their counts go to
 * one aggregate (the allocs profile keeps its totals); their code objects are released later,
 * outside the hooks. Returns how many were retired. */
static uint32_t
retire_idle_buckets(void)
{
    retire_tried_at = samples_taken;
    if (listing || n_releasing >= (size_t)PPF_HEAP_MAX_BUCKETS * PPF_HEAP_MAX_DEPTH) {
        return 0; /* buckets() holds pointers to them, or no release came for too long. */
    }
    uint64_t *ages = own_calloc(PPF_HEAP_MAX_BUCKETS, sizeof(uint64_t));
    if (ages == NULL) {
        return 0;
    }
    pthread_mutex_lock(&tracked_mutex); /* Raw frees update free counts without the GIL. */
    uint32_t n_idle = 0;
    for (uint32_t i = 1; i < n_buckets; i++) {
        if (buckets[i] != NULL && buckets[i]->allocs == buckets[i]->frees) {
            ages[n_idle++] = buckets[i]->last_sample;
        }
    }
    uint32_t wanted = n_idle < PPF_HEAP_MAX_BUCKETS / 4 ? n_idle : PPF_HEAP_MAX_BUCKETS / 4;
    uint64_t threshold = 0;
    if (wanted > 0) { /* The wanted-th oldest: quickselect. */
        uint32_t lo = 0, hi = n_idle - 1, k = wanted - 1;
        while (lo < hi) {
            uint64_t pivot = ages[lo + (hi - lo) / 2];
            uint32_t a = lo, b = hi;
            while (a <= b) {
                while (ages[a] < pivot) {
                    a++;
                }
                while (ages[b] > pivot) {
                    b--;
                }
                if (a <= b) {
                    uint64_t t = ages[a];
                    ages[a] = ages[b];
                    ages[b] = t;
                    a++;
                    if (b == 0) {
                        break;
                    }
                    b--;
                }
            }
            if (k <= b) {
                hi = b;
            }
            else if (k >= a) {
                lo = a;
            }
            else {
                break;
            }
        }
        threshold = ages[k];
    }
    uint32_t retired = 0;
    for (uint32_t i = 1; i < n_buckets && retired < wanted; i++) {
        bucket_t *b = buckets[i];
        if (b == NULL || b->allocs != b->frees || b->last_sample > threshold) {
            continue;
        }
        if (n_releasing + (size_t)b->depth > releasing_capacity) {
            size_t capacity = releasing_capacity * 2 + (size_t)PPF_HEAP_MAX_DEPTH * 64;
            PyObject **grown = own_calloc(capacity, sizeof(PyObject *));
            if (grown == NULL) {
                break; /* It keeps its bucket. */
            }
            memcpy(grown, releasing, n_releasing * sizeof(PyObject *));
            own_free(releasing, releasing_capacity * sizeof(PyObject *));
            releasing = grown;
            releasing_capacity = capacity;
        }
        for (int d = 0; d < b->depth; d++) {
            releasing[n_releasing++] = b->frames[d].code;
        }
        retired_counts[0] += b->allocs;
        retired_counts[1] += b->frees;
        retired_counts[2] += b->alloc_bytes;
        retired_counts[3] += b->free_bytes;
        remove_bucket_slot(i);
        own_free(b, sizeof(bucket_t) + (size_t)b->depth * sizeof(ppf_frame_t));
        buckets[i] = NULL;
        free_indices[n_free_indices++] = i;
        retired++;
    }
    pthread_mutex_unlock(&tracked_mutex);
    own_free(ages, PPF_HEAP_MAX_BUCKETS * sizeof(uint64_t));
    retired_buckets += retired;
    if (n_releasing > 0 && !release_scheduled) {
        release_scheduled = Py_AddPendingCall(release_retired_pending, NULL) == 0;
    }
    return retired;
}

/* The bucket for (stack, size class, label set); the overflow bucket when the table is full
 * and nothing in it can be retired. */
static uint32_t
find_bucket(const ppf_frame_t *frames, int depth, size_t size, uintptr_t labels)
{
    size_t key = size_class(size);
    uint64_t hash = ppf_hash_stack(frames, depth, key) ^ ((uint64_t)labels * 0x9E3779B97F4A7C15ULL);
    size_t mask = BUCKET_SLOTS - 1;
    for (size_t i = (size_t)hash & mask;; i = (i + 1) & mask) {
        uint32_t index = bucket_slots[i];
        if (index == 0) {
            if (n_free_indices == 0 && n_buckets >= PPF_HEAP_MAX_BUCKETS &&
                samples_taken - retire_tried_at >= RETIRE_EVERY && retire_idle_buckets() > 0) {
                return find_bucket(frames, depth, size, labels); /* The probe run may have moved. */
            }
            int reuse = n_free_indices > 0;
            uint32_t at = reuse ? free_indices[n_free_indices - 1] : n_buckets;
            bucket_t *b = at < PPF_HEAP_MAX_BUCKETS ? new_bucket(hash, key, labels, frames, depth) : NULL;
            if (b == NULL) {
                dropped_stacks++;
                return 0;
            }
            n_free_indices -= reuse;
            n_buckets += !reuse;
            buckets[at] = b;
            bucket_slots[i] = at + 1;
            return at;
        }
        bucket_t *b = buckets[index - 1];
        if (b->hash == hash && b->size == key && b->labels == labels &&
            ppf_same_frames(b->frames, frames, depth, b->depth)) {
            return index - 1;
        }
    }
}

/* ---- tracked blocks: linear probing with backward-shift deletion ------------------------- */

static inline size_t
ptr_slot(void *ptr, size_t mask)
{
    uint64_t x = (uint64_t)(uintptr_t)ptr;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (size_t)x & mask;
}

static void
tracked_insert_raw(tracked_t *table, size_t slots, tracked_t entry)
{
    size_t mask = slots - 1;
    size_t i = ptr_slot(entry.ptr, mask);
    while (table[i].ptr != NULL) {
        i = (i + 1) & mask;
    }
    table[i] = entry;
}

static inline size_t
filter_slot(void *ptr)
{
    return (size_t)((((uint64_t)(uintptr_t)ptr >> 4) * 0x9E3779B97F4A7C15ULL) >> (64 - FILTER_BITS));
}

static void
filter_add(void *ptr)
{
    uint8_t *counter = &tracked_filter[filter_slot(ptr)];
    uint8_t value = __atomic_load_n(counter, __ATOMIC_RELAXED);
    if (value < FILTER_SATURATED) {
        __atomic_store_n(counter, value + 1, __ATOMIC_RELAXED);
    }
}

static void
filter_remove(void *ptr)
{
    uint8_t *counter = &tracked_filter[filter_slot(ptr)];
    uint8_t value = __atomic_load_n(counter, __ATOMIC_RELAXED);
    if (value != FILTER_SATURATED) {
        __atomic_store_n(counter, value - 1, __ATOMIC_RELAXED);
    }
}

static void
filter_clear(void)
{
    for (size_t i = 0; i < sizeof(tracked_filter); i++) {
        __atomic_store_n(&tracked_filter[i], 0, __ATOMIC_RELAXED);
    }
}

/* Under tracked_mutex. */
static int
track(void *ptr, size_t size, uint32_t bucket)
{
    if (n_tracked >= MAX_TRACKED || tracked == NULL) {
        return -1;
    }
    if ((n_tracked + 1) * 2 > tracked_slots) {
        size_t slots = tracked_slots * 2;
        tracked_t *table = own_calloc(slots, sizeof(tracked_t));
        if (table == NULL) {
            return -1;
        }
        for (size_t i = 0; i < tracked_slots; i++) {
            if (tracked[i].ptr != NULL) {
                tracked_insert_raw(table, slots, tracked[i]);
            }
        }
        own_free(tracked, tracked_slots * sizeof(tracked_t));
        tracked = table;
        tracked_slots = slots;
    }
    tracked_insert_raw(tracked, tracked_slots, (tracked_t){ptr, size, bucket});
    filter_add(ptr);
    __atomic_store_n(&n_tracked, n_tracked + 1, __ATOMIC_RELAXED);
    return 0;
}

/* Under tracked_mutex. */
static void
untrack(void *ptr)
{
    size_t mask = tracked_slots - 1;
    size_t i = ptr_slot(ptr, mask);
    for (; tracked[i].ptr != ptr; i = (i + 1) & mask) {
        if (tracked[i].ptr == NULL) {
            return; /* not sampled: the common case, one or two probes */
        }
    }
    bucket_t *b = buckets[tracked[i].bucket];
    b->frees++;
    b->free_bytes += tracked[i].size;
    filter_remove(ptr);
    __atomic_store_n(&n_tracked, n_tracked - 1, __ATOMIC_RELAXED);
    /* Backward shift: pull later entries of the probe run into the hole. */
    size_t hole = i;
    for (size_t j = (i + 1) & mask; tracked[j].ptr != NULL; j = (j + 1) & mask) {
        size_t home = ptr_slot(tracked[j].ptr, mask);
        if (((j - home) & mask) >= ((j - hole) & mask)) {
            tracked[hole] = tracked[j];
            hole = j;
        }
    }
    tracked[hole].ptr = NULL;
}

/* ---- the hooks -------------------------------------------------------------------------- */

static void
sample(void *ptr, size_t size)
{
    ppf_frame_t frames[PPF_HEAP_MAX_DEPTH];
    in_hook = 1;
    samples_taken++;
    int truncated = 0;
    int depth = ppf_capture_stack(frames, PPF_HEAP_MAX_DEPTH, &truncated);
    truncated_stacks += truncated;
    uintptr_t labels = ppf_own_thread(PyThread_get_thread_ident(), 0) > 0
                           ? OWN_THREAD_LABELS
                           : ppf_context_value_here();
    uint32_t bucket = find_bucket(frames, depth, size, labels);
    bucket_t *b = buckets[bucket];
    b->last_sample = samples_taken;
    b->allocs++;
    b->alloc_bytes += size;
    pthread_mutex_lock(&tracked_mutex);
    if (track(ptr, size, bucket) < 0) {
        /* Its free would go unseen: count it as freed now so in-use never drifts upward. */
        b->frees++;
        b->free_bytes += size;
        dropped_blocks++;
    }
    pthread_mutex_unlock(&tracked_mutex);
    countdown = ppf_next_gap(rate);
    in_hook = 0;
}

/* Whether an allocation of `size` bytes is the one to sample: the byte countdown ran out. */
static inline int
take_sample(size_t size)
{
    countdown -= (Py_ssize_t)size;
    return countdown <= 0 && !in_hook && rate != 0;
}

static inline void
on_alloc(void *ptr, size_t size)
{
    if (ptr != NULL && take_sample(size)) {
        sample(ptr, size);
    }
}

/* Called before the block is released, so that its address cannot be handed out (and
 * sampled) again before it is untracked. */
static inline void
on_free(void *ptr)
{
    if (ptr != NULL && __atomic_load_n(&n_tracked, __ATOMIC_RELAXED) != 0 &&
        __atomic_load_n(&tracked_filter[filter_slot(ptr)], __ATOMIC_RELAXED) != 0) {
        pthread_mutex_lock(&tracked_mutex);
        if (tracked != NULL && n_tracked != 0) {
            untrack(ptr);
        }
        pthread_mutex_unlock(&tracked_mutex);
    }
}

static void *
hook_malloc(void *ctx, size_t size)
{
    hook_t *hook = ctx;
    void *ptr = hook->original.malloc(hook->original.ctx, size);
    on_alloc(ptr, size);
    return ptr;
}

static void *
hook_calloc(void *ctx, size_t nelem, size_t elsize)
{
    hook_t *hook = ctx;
    void *ptr = hook->original.calloc(hook->original.ctx, nelem, elsize);
    on_alloc(ptr, nelem * elsize);
    return ptr;
}

static void *
hook_realloc(void *ctx, void *old, size_t size)
{
    hook_t *hook = ctx;
    /* A reallocation is a free of the old block and an allocation of the new one. (Should it
     * fail, the old block is counted as freed though it lives on: rare, and never an error.) */
    on_free(old);
    void *ptr = hook->original.realloc(hook->original.ctx, old, size);
    if (ptr != NULL) {
        on_alloc(ptr, size);
    }
    return ptr;
}

static void
hook_free(void *ctx, void *ptr)
{
    hook_t *hook = ctx;
    on_free(ptr);
    hook->original.free(hook->original.ctx, ptr);
}

/* ---- the hooks over pymalloc: sampled blocks from the raw domain ---------------------------
 *
 * Installed with the original allocator's context and its own free, so that a free of these
 * domains runs exactly as without the profiler. */

static void *
sampled_alloc(size_t nelem, size_t elsize, int zeroed)
{
    size_t size = nelem * elsize;
    void *ptr = zeroed ? PyMem_RawCalloc(nelem, elsize) : PyMem_RawMalloc(size);
    if (ptr != NULL) {
        sample(ptr, size);
    }
    return ptr;
}

/* A sampled reallocation: the original did the copying; the result moves to the raw domain. */
static void *
sampled_realloc(hook_t *hook, void *ctx, void *ptr, size_t size)
{
    void *raw = PyMem_RawMalloc(size);
    if (raw == NULL) {
        return ptr; /* Not sampled after all: the block is the program's either way. */
    }
    memcpy(raw, ptr, size);
    hook->original.free(ctx, ptr);
    sample(raw, size);
    return raw;
}

#define RAW_SAMPLING_HOOKS(NAME, HOOK)                                                       \
    static void *NAME##_malloc(void *ctx, size_t size)                                       \
    {                                                                                        \
        if (take_sample(size)) {                                                             \
            return sampled_alloc(1, size, 0);                                                \
        }                                                                                    \
        return HOOK.original.malloc(ctx, size);                                              \
    }                                                                                        \
    static void *NAME##_calloc(void *ctx, size_t nelem, size_t elsize)                       \
    {                                                                                        \
        if ((elsize == 0 || nelem <= PY_SSIZE_T_MAX / elsize) && take_sample(nelem * elsize)) { \
            return sampled_alloc(nelem, elsize, 1);                                          \
        }                                                                                    \
        return HOOK.original.calloc(ctx, nelem, elsize);                                     \
    }                                                                                        \
    static void *NAME##_realloc(void *ctx, void *old, size_t size)                           \
    {                                                                                        \
        /* A sampled old block is raw, so pymalloc passes it on to the raw hook, which       \
         * untracks it. */                                                                   \
        void *ptr = HOOK.original.realloc(ctx, old, size);                                   \
        if (ptr != NULL && take_sample(size)) {                                              \
            ptr = sampled_realloc(&HOOK, ctx, ptr, size);                                    \
        }                                                                                    \
        return ptr;                                                                          \
    }

RAW_SAMPLING_HOOKS(obj, obj_hook)
RAW_SAMPLING_HOOKS(mem, mem_hook)

static void *
raw_realloc(void *ctx, void *old, size_t size)
{
    on_free(old);
    return raw_hook.original.realloc(ctx, old, size);
}

static void
raw_free(void *ctx, void *ptr)
{
    on_free(ptr);
    raw_hook.original.free(ctx, ptr);
}

/* ---- installing and removing ------------------------------------------------------------ */

static void
install(hook_t *hook)
{
    PyMem_GetAllocator(hook->domain, &hook->original);
    PyMemAllocatorEx alloc = {hook, hook_malloc, hook_calloc, hook_realloc, hook_free};
    if (raw_sampling) {
        void *ctx = hook->original.ctx;
        if (hook == &obj_hook) {
            alloc = (PyMemAllocatorEx){ctx, obj_malloc, obj_calloc, obj_realloc,
                                       hook->original.free};
        }
        else if (hook == &mem_hook) {
            alloc = (PyMemAllocatorEx){ctx, mem_malloc, mem_calloc, mem_realloc,
                                       hook->original.free};
        }
        else {
            alloc = (PyMemAllocatorEx){ctx, hook->original.malloc, hook->original.calloc,
                                       raw_realloc, raw_free};
        }
    }
    PyMem_SetAllocator(hook->domain, &alloc);
}

/* Remove the hook if it is still the outermost one; otherwise (tracemalloc was started on top
 * of it) it stays as a pass-through, since restoring our original would drop the other hook. */
static int
uninstall(hook_t *hook)
{
    PyMemAllocatorEx current;
    PyMem_GetAllocator(hook->domain, &current);
    int ours = current.ctx == hook || current.malloc == obj_malloc ||
               current.malloc == mem_malloc || current.free == raw_free;
    if (!ours) {
        return 0;
    }
    PyMem_SetAllocator(hook->domain, &hook->original);
    return 1;
}

/* Frees went unseen while the hooks were out: count every block still tracked from before as
 * freed, so that none stays "in use" after its memory was released without us. Until the hooks
 * come back, the profile keeps showing what was live when they were removed. */
static void
forget_tracked(void)
{
    pthread_mutex_lock(&tracked_mutex);
    for (size_t i = 0; i < tracked_slots; i++) {
        if (tracked[i].ptr != NULL) {
            bucket_t *b = buckets[tracked[i].bucket];
            b->frees++;
            b->free_bytes += tracked[i].size;
            tracked[i].ptr = NULL;
        }
    }
    filter_clear();
    __atomic_store_n(&n_tracked, 0, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&tracked_mutex);
}

/* ---- Python interface ------------------------------------------------------------------- */

PyObject *
ppf_heap_set_rate(PyObject *module, PyObject *arg)
{
    Py_ssize_t new_rate = PyLong_AsSsize_t(arg);
    if (new_rate == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (new_rate < 0) {
        PyErr_SetString(PyExc_ValueError, "the memory profile rate must be 0 or more bytes");
        return NULL;
    }
    Py_ssize_t previous = rate;
    if (new_rate > 0 && ensure_tables() < 0) {
        return PyErr_NoMemory();
    }
    rate = new_rate;
    countdown = ppf_next_gap(rate);
    if (new_rate > 0 && !hooked) {
        forget_tracked();
        const char *allocator = _PyMem_GetCurrentAllocatorName();
        raw_sampling = allocator != NULL && strcmp(allocator, "pymalloc") == 0;
        if (raw_sampling) {
            install(&raw_hook);
        }
        install(&mem_hook);
        install(&obj_hook);
        hooked = 1;
    }
    else if (new_rate == 0 && hooked) {
        /* All or none: half the hooks would see allocations without their frees. */
        if (uninstall(&obj_hook)) {
            if (!uninstall(&mem_hook)) {
                install(&obj_hook);
            }
            else if (raw_sampling && !uninstall(&raw_hook)) {
                install(&mem_hook);
                install(&obj_hook);
            }
            else {
                hooked = 0;
            }
        }
    }
    return PyLong_FromSsize_t(previous);
}

PyObject *
ppf_heap_get_rate(PyObject *module, PyObject *unused)
{
    return PyLong_FromSsize_t(rate);
}

/* The buckets as a list of (frames, allocs, frees, alloc_bytes, free_bytes, labels, own);
 * frames is a tuple of (code, line), leaf first, labels the address of the label set in force
 * (0: none), own 1 for what pyprofiler's own threads allocated. The overflow bucket is the one
 * with frames None, and the counts of retired buckets, summed, the one with frames "retired". */
PyObject *
ppf_heap_buckets(PyObject *module, PyObject *unused)
{
    if (buckets == NULL) {
        return PyList_New(0);
    }
    release_retired();
    /* Copy first: building Python objects allocates, which may sample and add buckets. */
    uint32_t count = n_buckets;
    bucket_t **copy = PyMem_RawMalloc(count * sizeof(bucket_t *));
    uint64_t (*counts)[4] = PyMem_RawMalloc(count * sizeof(*counts));
    if (copy == NULL || counts == NULL) {
        PyMem_RawFree(copy);
        PyMem_RawFree(counts);
        return PyErr_NoMemory();
    }
    pthread_mutex_lock(&tracked_mutex); /* Raw frees update the free counts without the GIL. */
    for (uint32_t i = 0; i < count; i++) {
        copy[i] = buckets[i];
        if (copy[i] == NULL) {
            counts[i][0] = 0;
            continue;
        }
        counts[i][0] = buckets[i]->allocs;
        counts[i][1] = buckets[i]->frees;
        counts[i][2] = buckets[i]->alloc_bytes;
        counts[i][3] = buckets[i]->free_bytes;
    }
    uint64_t retired[4];
    memcpy(retired, retired_counts, sizeof retired);
    pthread_mutex_unlock(&tracked_mutex);
    listing++;
    PyObject *result = PyList_New(0);
    for (uint32_t i = 0; result != NULL && i < count; i++) {
        bucket_t *b = copy[i];
        if (counts[i][0] == 0) {
            continue;
        }
        PyObject *frames = i == 0 ? Py_NewRef(Py_None) : ppf_stack_tuple(b->frames, b->depth);
        int own = b->labels == OWN_THREAD_LABELS;
        PyObject *item =
            frames == NULL
                ? NULL
                : Py_BuildValue("(NKKKKKi)", frames, (unsigned long long)counts[i][0],
                                (unsigned long long)counts[i][1], (unsigned long long)counts[i][2],
                                (unsigned long long)counts[i][3],
                                (unsigned long long)(own ? 0 : b->labels), own);
        if (item == NULL || PyList_Append(result, item) < 0) {
            Py_XDECREF(item);
            Py_CLEAR(result);
            break;
        }
        Py_DECREF(item);
    }
    listing--;
    PyMem_RawFree(copy);
    PyMem_RawFree(counts);
    if (result != NULL && retired[0] > 0) {
        PyObject *item = Py_BuildValue("(sKKKKii)", "retired", (unsigned long long)retired[0],
                                       (unsigned long long)retired[1],
                                       (unsigned long long)retired[2],
                                       (unsigned long long)retired[3], 0, 0);
        if (item == NULL || PyList_Append(result, item) < 0) {
            Py_CLEAR(result);
        }
        Py_XDECREF(item);
    }
    return result;
}

PyObject *
ppf_heap_stats(PyObject *module, PyObject *unused)
{
    return Py_BuildValue(
        "{s:n,s:K,s:n,s:K,s:K,s:K,s:n,s:K,s:n,s:s}", "rate", rate, "samples",
        (unsigned long long)samples_taken, "tracked_blocks", (Py_ssize_t)n_tracked,
        "dropped_blocks", (unsigned long long)dropped_blocks, "dropped_stacks",
        (unsigned long long)dropped_stacks, "truncated_stacks",
        (unsigned long long)truncated_stacks, "buckets",
        (Py_ssize_t)(n_buckets - n_free_indices), "retired_buckets",
        (unsigned long long)retired_buckets, "own_bytes",
        (Py_ssize_t)own_bytes, "frees_seen", raw_sampling ? "raw domain" : "every free");
}

/* Callers set in_hook first: releasing code objects may allocate and free. */
static void
free_tables(int release_code)
{
    /* Detach everything before releasing anything, so that frees this causes see no table. */
    pthread_mutex_lock(&tracked_mutex);
    bucket_t **old = buckets;
    uint32_t count = n_buckets;
    tracked_t *old_tracked = tracked;
    size_t old_tracked_slots = tracked_slots;
    buckets = NULL;
    own_free(bucket_slots, BUCKET_SLOTS * sizeof(uint32_t));
    bucket_slots = NULL;
    tracked = NULL;
    n_buckets = 0;
    tracked_slots = 0;
    __atomic_store_n(&n_tracked, 0, __ATOMIC_RELAXED);
    filter_clear();
    pthread_mutex_unlock(&tracked_mutex);
    own_free(old_tracked, old_tracked_slots * sizeof(tracked_t));
    samples_taken = dropped_stacks = dropped_blocks = truncated_stacks = 0;
    retire_tried_at = retired_buckets = 0;
    memset(retired_counts, 0, sizeof retired_counts);
    own_free(free_indices, PPF_HEAP_MAX_BUCKETS * sizeof(uint32_t));
    free_indices = NULL;
    n_free_indices = 0;
    if (release_code) {
        release_retired();
    }
    n_releasing = 0; /* In a forked child, left referenced: see after_fork_in_child(). */
    for (uint32_t i = 0; i < count; i++) {
        bucket_t *b = old[i];
        if (b == NULL) { /* retired */
            continue;
        }
        for (int d = 0; release_code && d < b->depth; d++) {
            Py_DECREF(b->frames[d].code);
        }
        own_free(b, sizeof(bucket_t) + (size_t)b->depth * sizeof(ppf_frame_t));
    }
    own_free(old, PPF_HEAP_MAX_BUCKETS * sizeof(bucket_t *));
}

/* Forget every sample; sampling goes on at the current rate. */
PyObject *
ppf_heap_reset(PyObject *module, PyObject *unused)
{
    if (listing) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reset while buckets() runs in another thread");
        return NULL;
    }
    in_hook = 1;
    free_tables(1);
    int failed = rate > 0 && ensure_tables() < 0;
    in_hook = 0;
    if (failed) {
        return PyErr_NoMemory();
    }
    Py_RETURN_NONE;
}

/* In a forked child: start from clean tables. The code objects the parent's buckets hold stay
 * referenced (a small leak) because releasing them here could run arbitrary finalizers. */
int
ppf_heap_after_fork(void)
{
    in_hook = 1;
    listing = 0;
    free_tables(0);
    int failed = rate > 0 && ensure_tables() < 0;
    in_hook = 0;
    if (failed) {
        return -1;
    }
    countdown = ppf_next_gap(rate);
    return 0;
}

/* Whoever holds tracked_mutex at fork (a raw free in another thread) is not in the child. */
static void
lock_tracked(void)
{
    pthread_mutex_lock(&tracked_mutex);
}

static void
unlock_tracked(void)
{
    pthread_mutex_unlock(&tracked_mutex);
}

void
ppf_heap_init(void)
{
    static int initialized; /* Once: later, the raw domain may be our own hook. */
    if (!initialized) {
        PyMem_GetAllocator(PYMEM_DOMAIN_RAW, &own_allocator);
        pthread_atfork(lock_tracked, unlock_tracked, unlock_tracked);
        initialized = 1;
    }
}
