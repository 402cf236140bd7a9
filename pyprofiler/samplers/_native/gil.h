/* Which thread holds the GIL, read without taking it. */
#ifndef PPF_GIL_H
#define PPF_GIL_H

#include <Python.h>
#include <stdint.h>

/* The address of the thread state that holds `interp`'s GIL now, or 0 when it is free. A hint
 * only, read without synchronisation: it may be stale by the time it is used. */
uintptr_t ppf_gil_holder(PyInterpreterState *interp);

#endif
