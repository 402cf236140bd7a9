/* Reading the current thread's Python stack with the GIL held (see frames.h).
 *
 * The interpreter's frames are read directly, as Modules/_tracemalloc.c reads them: no frame
 * object is created and nothing is allocated, so the allocation hooks may call this, and a
 * sampler walking thousands of stacks does not hand the collector new objects. A frame still
 * being set up (3.11+) or a C call's entry frame (3.12+) is no frame of the program's and is
 * skipped.
 */
#define PY_SSIZE_T_CLEAN
#include "frames.h"

#include "compat.h"
#include "limits.h"

#include "frame_layout.h"

#if PY_VERSION_HEX < 0x030B0000
typedef PyFrameObject walk_t;
#else
typedef _PyInterpreterFrame walk_t;
#endif

#if PY_VERSION_HEX >= 0x030B0000
/* Lines by (line table, first line, offset), on which alone a line depends. Resolving one walks
 * the code's line table from its start, and the heap and lock recorders resolve every frame of
 * every stack they capture: most of what they cost on a deep stack. Direct-mapped, touched only
 * with the GIL held. An entry holds no reference, and a freed table's address is soon reused
 * (pymalloc hands out the block freed last), so the table is also checked by its hash, which a
 * bytes object computes once and keeps. */
#  define LINE_CACHE_SLOTS 8192 /* power of two */

typedef struct {
    const PyObject *linetable;
    Py_hash_t hash;
    int firstlineno;
    int offset;
    int line;
} cached_line_t;

static cached_line_t line_cache[LINE_CACHE_SLOTS];

static int
line_of(PyCodeObject *code, int offset)
{
    PyObject *table = code->co_linetable;
    if (!PyBytes_CheckExact(table)) {
        return PyCode_Addr2Line(code, offset);
    }
    Py_hash_t hash = PyObject_Hash(table); /* A bytes object's: never fails, never allocates. */
    uintptr_t key = (uintptr_t)table ^ ((uintptr_t)offset * 0x9E3779B97F4A7C15ULL);
    cached_line_t *slot = &line_cache[(key >> 4) & (LINE_CACHE_SLOTS - 1)];
    if (slot->linetable == table && slot->hash == hash && slot->offset == offset &&
        slot->firstlineno == code->co_firstlineno) {
        return slot->line;
    }
    int line = PyCode_Addr2Line(code, offset);
    *slot = (cached_line_t){table, hash, code->co_firstlineno, offset, line};
    return line;
}
#endif

/* Frames from `f` outwards, leaf first, at most `max`; *truncated is set when there were more.
 * Reads the interpreter's frames: no allocation, no frame objects. */
static int
walk_frames(walk_t *f, ppf_frame_t *out, int max, int *truncated)
{
    int depth = 0;
#if PY_VERSION_HEX < 0x030B0000
    for (; f != NULL; f = f->f_back) {
        if (depth == max) {
            *truncated = 1;
            break;
        }
        out[depth].code = (PyObject *)f->f_code;
        out[depth].lineno = PyFrame_GetLineNumber(f);
        depth++;
    }
#else
    for (; f != NULL; f = f->previous) {
#  if PY_VERSION_HEX >= 0x030C0000
        if (f->owner == FRAME_OWNED_BY_CSTACK || _PyFrame_IsIncomplete(f)) {
            continue;
        }
#  else
        if (_PyFrame_IsIncomplete(f)) {
            continue;
        }
#  endif
        if (depth == max) {
            *truncated = 1;
            break;
        }
#  if PY_VERSION_HEX >= 0x030D0000
        PyCodeObject *code = _PyFrame_GetCode(f);
#  else
        PyCodeObject *code = f->f_code;
#  endif
        out[depth].code = (PyObject *)code;
        out[depth].lineno =
            line_of(code, _PyInterpreterFrame_LASTI(f) * (int)sizeof(_Py_CODEUNIT));
        depth++;
    }
#endif
    return depth;
}

/* The frame a thread is executing, or NULL when it runs no Python code. */
static walk_t *
top_frame(PyThreadState *tstate)
{
#if PY_VERSION_HEX < 0x030B0000
    return tstate->frame;
#elif PY_VERSION_HEX >= 0x030D0000
    return tstate->current_frame;
#else
    return tstate->cframe->current_frame;
#endif
}

#if PY_VERSION_HEX >= 0x030C0000
/* Whether a frame stands at the RESUME that starts its code, having run none of it. There the
 * interpreter instruments the code for sys.monitoring the first time it runs after any tool or
 * profile function was ever set (3.12+: the code then owns that memory), and handles its eval
 * breaker. Such allocations are the call's, charged to the call site: a heap bucket naming the
 * code would otherwise hold the code alive, and with it the very block that keeps the bucket in
 * use, so that neither is ever freed or retired. */
static int
entering_its_code(walk_t *f)
{
    if (f->owner == FRAME_OWNED_BY_CSTACK) {
        return 0; /* A C call's entry frame: no code (3.13 holds None in its place). */
    }
#  if PY_VERSION_HEX >= 0x030D0000
    PyCodeObject *code = _PyFrame_GetCode(f);
#  else
    PyCodeObject *code = f->f_code;
#  endif
    return _PyInterpreterFrame_LASTI(f) == code->_co_firsttraceable;
}
#endif

int
ppf_capture_stack(ppf_frame_t *out, int max, int *truncated)
{
    PyThreadState *tstate = ppf_thread_state_unchecked();
    if (tstate == NULL) {
        return 0;
    }
    walk_t *f = top_frame(tstate);
#if PY_VERSION_HEX >= 0x030C0000
    if (f != NULL && entering_its_code(f)) {
        f = f->previous;
    }
#endif
    return walk_frames(f, out, max, truncated);
}

PyObject *
ppf_stack_tuple(const ppf_frame_t *frames, int depth)
{
    PyObject *stack = PyTuple_New(depth);
    for (int i = 0; stack != NULL && i < depth; i++) {
        PyObject *frame = Py_BuildValue("(Oi)", frames[i].code, frames[i].lineno);
        if (frame == NULL) {
            Py_CLEAR(stack);
            break;
        }
        PyTuple_SET_ITEM(stack, i, frame);
    }
    return stack;
}

/* frame_stack(frame): ((code, line), ...) from a frame object outwards, leaf first, at most
 * 128 frames. For the CPU and wall samplers: walking f_back from Python would create a frame
 * object for every level on 3.11+. The GIL keeps the frames' thread from running meanwhile. */
PyObject *
ppf_frame_stack(PyObject *module, PyObject *frame)
{
    if (!PyFrame_Check(frame)) {
        PyErr_SetString(PyExc_TypeError, "expected a frame");
        return NULL;
    }
    ppf_frame_t frames[PPF_MAX_STACK_DEPTH];
    int truncated = 0;
#if PY_VERSION_HEX < 0x030B0000
    int depth = walk_frames((PyFrameObject *)frame, frames, PPF_MAX_STACK_DEPTH, &truncated);
#else
    int depth = walk_frames(((PyFrameObject *)frame)->f_frame, frames, PPF_MAX_STACK_DEPTH,
                            &truncated);
#endif
    return ppf_stack_tuple(frames, depth);
}

/* current_stack(skip): the calling thread's stack as ((code, line), ...), leaf first, without
 * its `skip` innermost frames; cheaper than walking sys._getframe(), which creates frame
 * objects on Python 3.11+. */
PyObject *
ppf_current_stack(PyObject *module, PyObject *arg)
{
    Py_ssize_t skip = PyLong_AsSsize_t(arg);
    if (skip == -1 && PyErr_Occurred()) {
        return NULL;
    }
    ppf_frame_t frames[PPF_HEAP_MAX_DEPTH];
    int truncated = 0;
    int depth = ppf_capture_stack(frames, PPF_HEAP_MAX_DEPTH, &truncated);
    if (skip < 0 || skip > depth) {
        skip = depth;
    }
    return ppf_stack_tuple(frames + skip, depth - (int)skip);
}

/* The line a suspended generator or coroutine stands at, read from its interpreter frame.
 * Asking Python for gi_frame/cr_frame instead would create a frame object per coroutine (3.11+),
 * and the collector would then have tens of thousands of new objects to traverse. */
PyObject *
ppf_suspended_line(PyObject *module, PyObject *gen)
{
    if (!PyGen_Check(gen) && !PyCoro_CheckExact(gen) && !PyAsyncGen_CheckExact(gen)) {
        PyErr_SetString(PyExc_TypeError, "expected a generator, coroutine or async generator");
        return NULL;
    }
    PyGenObject *g = (PyGenObject *)gen;
#if PY_VERSION_HEX >= 0x030B0000
    if (g->gi_frame_state >= FRAME_COMPLETED) {
        Py_RETURN_NONE;
    }
    _PyInterpreterFrame *frame = (_PyInterpreterFrame *)g->gi_iframe;
#  if PY_VERSION_HEX >= 0x030C0000
    int line = PyUnstable_InterpreterFrame_GetLine(frame);
#  else
    int line = PyCode_Addr2Line(frame->f_code,
                                _PyInterpreterFrame_LASTI(frame) * (int)sizeof(_Py_CODEUNIT));
#  endif
#else
    if (g->gi_frame == NULL) {
        Py_RETURN_NONE;
    }
    int line = PyFrame_GetLineNumber(g->gi_frame);
#endif
    return PyLong_FromLong(line);
}
