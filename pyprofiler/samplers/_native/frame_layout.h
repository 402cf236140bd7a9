/* The interpreter's frame structures, for the two files that read frames: frames.c (with the
 * GIL) and stackread.c (copies, without it). 3.9 and 3.10 keep frames as objects; from 3.11 they
 * are the internal _PyInterpreterFrame, read as Modules/_tracemalloc.c reads it. */
#ifndef PPF_FRAME_LAYOUT_H
#define PPF_FRAME_LAYOUT_H

#include <Python.h>

#if PY_VERSION_HEX < 0x030B0000
#  include <frameobject.h>
#else
#  define Py_BUILD_CORE
#  include "internal/pycore_frame.h"
#  undef Py_BUILD_CORE
#endif

#endif
