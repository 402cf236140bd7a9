#include "procfiles.h"

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

static const char *const names[PPF_PROC_FILES] = {"stat", "sched", "syscall"};

void
ppf_proc_files_init(ppf_proc_files_t *files)
{
    for (int i = 0; i < PPF_PROC_THREADS; i++) {
        files->threads[i].tid = 0;
        for (int f = 0; f < PPF_PROC_FILES; f++) {
            files->threads[i].fds[f] = -1;
        }
    }
    files->own_sched = -1;
    files->reads = 0;
}

/* Forgotten before it is closed: a child forked in between inherits the file open and leaks
 * it, rather than closing a number that its own code may have reused. */
static void
close_fd(int *fd)
{
    int open_fd = *fd;
    *fd = -1;
    if (open_fd >= 0) {
        close(open_fd);
    }
}

static void
forget(ppf_proc_thread_t *thread)
{
    for (int f = 0; f < PPF_PROC_FILES; f++) {
        close_fd(&thread->fds[f]);
    }
    thread->tid = 0;
}

void
ppf_proc_files_close(ppf_proc_files_t *files)
{
    for (int i = 0; i < PPF_PROC_THREADS; i++) {
        forget(&files->threads[i]);
    }
    close_fd(&files->own_sched);
}

/* A /proc file is generated afresh by each read from its start. */
static ssize_t
read_whole(int fd, char *text, size_t size)
{
    ssize_t n = pread(fd, text, size - 1, 0);
    if (n <= 0) {
        return -1;
    }
    text[n] = 0;
    return n;
}

/* The entry of `tid`, or the one to reuse for it (a free one, else the least recently read). */
static ppf_proc_thread_t *
entry_for(ppf_proc_files_t *files, unsigned long tid)
{
    ppf_proc_thread_t *victim = &files->threads[0];
    for (int i = 0; i < PPF_PROC_THREADS; i++) {
        ppf_proc_thread_t *thread = &files->threads[i];
        if (thread->tid == tid) {
            return thread;
        }
        if (victim->tid != 0 && (thread->tid == 0 || thread->used < victim->used)) {
            victim = thread;
        }
    }
    forget(victim);
    victim->tid = tid;
    return victim;
}

ssize_t
ppf_proc_read(ppf_proc_files_t *files, unsigned long tid, int file, char *text, size_t size)
{
    ppf_proc_thread_t *thread = entry_for(files, tid);
    thread->used = ++files->reads;
    int *fd = &thread->fds[file];
    if (*fd >= 0) {
        ssize_t n = read_whole(*fd, text, size);
        if (n >= 0) {
            return n;
        }
        /* The thread it was opened for has exited: the id may be a new thread's now. */
        close_fd(fd);
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/task/%lu/%s", tid, names[file]);
    *fd = open(path, O_RDONLY | O_CLOEXEC);
    if (*fd < 0) {
        return -1;
    }
    return read_whole(*fd, text, size);
}

ssize_t
ppf_proc_read_own_sched(ppf_proc_files_t *files, char *text, size_t size)
{
    if (files->own_sched < 0) {
        files->own_sched = open("/proc/thread-self/sched", O_RDONLY | O_CLOEXEC);
        if (files->own_sched < 0) {
            return -1;
        }
    }
    return read_whole(files->own_sched, text, size);
}
