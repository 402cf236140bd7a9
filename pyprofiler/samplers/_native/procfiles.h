/* The scheduler's files of this process's threads under /proc, read with the files kept open:
 * opening /proc/self/task/TID/stat walks five path components, which cost more than the read. */
#ifndef PPF_PROCFILES_H
#define PPF_PROCFILES_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Threads whose files stay open at once (a descriptor per file): the least recently read go. */
#define PPF_PROC_THREADS 32

enum { PPF_PROC_STAT, PPF_PROC_SCHED, PPF_PROC_SYSCALL, PPF_PROC_FILES };

typedef struct {
    unsigned long tid; /* 0: a free entry */
    int fds[PPF_PROC_FILES];
    uint64_t used;
} ppf_proc_thread_t;

/* Owned by one thread at a time (the sampler's pthread while it runs). */
typedef struct {
    ppf_proc_thread_t threads[PPF_PROC_THREADS];
    int own_sched; /* /proc/thread-self/sched of the thread that first read it */
    uint64_t reads;
} ppf_proc_files_t;

void ppf_proc_files_init(ppf_proc_files_t *files);

/* Closes every file kept open (also in a forked child, which inherited them). */
void ppf_proc_files_close(ppf_proc_files_t *files);

/* The file (PPF_PROC_STAT, PPF_PROC_SCHED, PPF_PROC_SYSCALL) of thread `tid` of this process,
 * whole, NUL-ended in `text`; its length, or -1 (the thread has exited, or /proc cannot be
 * read). */
ssize_t ppf_proc_read(ppf_proc_files_t *files, unsigned long tid, int file, char *text,
                      size_t size);

/* The calling thread's own sched file, the same way. */
ssize_t ppf_proc_read_own_sched(ppf_proc_files_t *files, char *text, size_t size);

#endif
