/* Every bound that the Python side knows too, defined once here and exported by module.c as
 * the module's integer constants of the same names without the prefix (PPF_LIMITS). */
#ifndef PPF_LIMITS_H
#define PPF_LIMITS_H

/* Go's stack depth for its profiles since 1.23; deeper stacks keep their innermost frames. */
#define PPF_MAX_STACK_DEPTH 128
/* The CPU and wall samplers: (stack, thread) entries in a window, then one overflow entry per
 * thread; threads with labels of their own, the rest sharing one; the highest rate. */
#define PPF_SAMPLER_MAX_ENTRIES 10000
#define PPF_SAMPLER_MAX_THREADS 10000
#define PPF_SAMPLER_MAX_HZ 1000
/* The block and mutex tables: entries in each, and frames per entry (as creation stacks). */
#define PPF_LOCK_MAX_ENTRIES 4096
#define PPF_LOCK_MAX_DEPTH 32
/* The heap profile: frames per sampled allocation (and per current_stack()), and distinct
 * (stack, size class) buckets. */
#define PPF_HEAP_MAX_DEPTH 64
#define PPF_HEAP_MAX_BUCKETS 16384

/* X(name) for each limit above, for module.c to export them all. */
#define PPF_LIMITS(X)                                                                         \
    X(MAX_STACK_DEPTH)                                                                        \
    X(SAMPLER_MAX_ENTRIES)                                                                    \
    X(SAMPLER_MAX_THREADS)                                                                    \
    X(SAMPLER_MAX_HZ)                                                                         \
    X(LOCK_MAX_ENTRIES)                                                                       \
    X(LOCK_MAX_DEPTH)                                                                         \
    X(HEAP_MAX_DEPTH)                                                                         \
    X(HEAP_MAX_BUCKETS)

#endif
