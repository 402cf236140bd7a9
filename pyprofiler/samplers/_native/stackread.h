/* Reading every thread's Python stack without the GIL, as an outside profiler reads a process.
 *
 * The sampler thread copies the interpreter's thread states, frames and code objects with
 * process_vm_readv on its own process: a read of memory that was freed and unmapped meanwhile
 * fails instead of faulting. What was copied is validated (types, the instruction inside its
 * code), so a frame pushed or popped as it is read yields an invalid stack, never a crash. Code
 * objects are only dereferenced directly once pinned (referenced, with the GIL) by the sampler.
 */
#ifndef PPF_STACKREAD_H
#define PPF_STACKREAD_H

#include <Python.h>
#include <stddef.h>
#include <stdint.h>

/* Whether copies can be made here at all (seccomp can deny process_vm_readv); call before each
 * sampler starts (a forked child has a pid of its own). */
int ppf_stackread_available(void);
/* The module's functions: stack_reads_available() and line_of(code, offset), the line that the
 * sampler's own reading of the line table gives (tested against the interpreter's). */
PyObject *ppf_stack_reads_available(PyObject *module, PyObject *unused);
PyObject *ppf_line_of(PyObject *module, PyObject *args);

/* Copy `size` bytes at `address` of this process; 0, or -1 if any of it is not mapped. */
int ppf_safe_read(uintptr_t address, void *out, size_t size);

/* A thread state as copied. */
typedef struct {
    uintptr_t next;         /* the next thread state of the interpreter's list */
    uint64_t serial;        /* the thread state's unique id */
    unsigned long ident;    /* threading.get_ident() */
    unsigned long tid;      /* kernel thread id where the state says it (3.11+); else 0 */
    uintptr_t frame;        /* the frame it executes (0: no Python code), once frame_known */
    int frame_known;        /* 3.11 and 3.12 read it elsewhere: ppf_thread_frame() */
    uintptr_t region_start; /* 3.11+: the used part of its current data stack chunk */
    uintptr_t region_end;
} ppf_thread_copy_t;

/* 0, or -1 when the state could not be copied or is not one of `interp`'s. */
int ppf_copy_thread(uintptr_t tstate, PyInterpreterState *interp, ppf_thread_copy_t *out);
/* Up to PPF_IOV_BATCH thread states in one read: copied[i] says whether out[i] holds
 * addresses[i]'s. `scratch` has room for PPF_IOV_BATCH states. Returns how many were copied. */
#define PPF_IOV_BATCH 1024
#define PPF_THREAD_SCRATCH_BYTES (PPF_IOV_BATCH * sizeof(PyThreadState))
int ppf_copy_threads(const uintptr_t *addresses, int n, PyInterpreterState *interp,
                     void *scratch, ppf_thread_copy_t *out, char *copied);
/* Fill in thread->frame; -1 when it could not be read. */
int ppf_thread_frame(ppf_thread_copy_t *thread);
/* The same for those of threads[0..n) with wanted[i] set, in one read: a read each would cost
 * a system call each. Those it could not read are left for ppf_thread_frame(). */
void ppf_thread_frames(ppf_thread_copy_t *threads, const char *wanted, int n);

/* 3.9 and 3.10 keep no kernel thread id in the thread state, only the pthread handle (`ident`):
 * glibc keeps the id in the struct pthread that the handle points to. ppf_learn_pthread_tid()
 * finds where, once, from two threads of its own; then ppf_pthread_tid() reads a thread's id
 * there without the GIL (0 where it was not learnt or cannot be read). */
void ppf_learn_pthread_tid(void);
unsigned long ppf_pthread_tid(unsigned long ident);

/* What a stack walk needs of a code object, and what identifies it while it is not pinned. */
typedef struct {
    uintptr_t address;
    PyObject *pinned;        /* referenced by the sampler; NULL until then */
    uintptr_t first_instr;   /* 3.11+: address of its first code unit */
    int32_t size;            /* bytes of bytecode */
    int32_t first_traceable; /* 3.11+: bytes before the first traceable instruction */
    int32_t frame_bytes;     /* 3.11+: what a frame of it takes on the data stack */
    int32_t firstlineno;
    int32_t flags;           /* co_flags */
    uintptr_t filename, name, linetable; /* the object's own fields: its identity */
    const unsigned char *table;          /* the line table's bytes, once pinned */
    Py_ssize_t table_size;
} ppf_code_info_t;

/* Copy and validate the code object at `address`; 0, or -1 if it is not one. */
int ppf_copy_code(uintptr_t address, ppf_code_info_t *out);
/* With the GIL: reference the code object if it is still the one `info` was copied from. */
int ppf_pin_code(ppf_code_info_t *info);

/* One frame of a stack as copied: the code's address and where in it execution stands. */
typedef struct {
    uintptr_t code;
    int32_t offset; /* bytes into the bytecode, as PyCode_Addr2Line takes it */
    int32_t line;   /* the frame's own line number (3.9 and 3.10 while tracing), or 0 */
} ppf_raw_frame_t;

/* The code object at an address, pinned or newly copied, or NULL if there is none. */
typedef const ppf_code_info_t *(*ppf_code_lookup_t)(void *context, uintptr_t address);

/* Room for the top of a thread's data stack, copied in one read (3.11+). */
#define PPF_STACK_REGION_BYTES 16384

/* The frames of the thread whose state is at `tstate`, read afresh, leaf first, at most `max`
 * (*truncated set when there were more); -1 when what was copied does not hold together.
 * `region` has PPF_STACK_REGION_BYTES of room. *contextvars is the contextvars context the
 * thread ran in as its current frame was read: an event loop's task switches between one copy
 * of its state and the next. */
int ppf_copy_stack(uintptr_t tstate, PyInterpreterState *interp, ppf_code_lookup_t lookup,
                   void *context, unsigned char *region, ppf_raw_frame_t *out, int max,
                   int *truncated, uintptr_t *contextvars);

/* The line of a pinned code object at a byte offset, as PyCode_Addr2Line gives it. */
int ppf_code_line(const ppf_code_info_t *info, int offset);

#endif
