/* The GIL's state lives in the runtime (3.9 to 3.11) or in the interpreter (3.12+), in internal
 * structures: this file alone is built as core code to read them, since their headers only
 * compile that way. */
#define Py_BUILD_CORE
#include "gil.h"

#if PY_VERSION_HEX >= 0x030C0000
#  include "internal/pycore_interp.h"
#else
#  include "internal/pycore_runtime.h"
#endif

uintptr_t
ppf_gil_holder(PyInterpreterState *interp)
{
#if PY_VERSION_HEX >= 0x030C0000
    struct _gil_runtime_state *gil = interp->ceval.gil;
    if (gil == NULL) {
        return 0;
    }
#else
    (void)interp;
    struct _gil_runtime_state *gil = &_PyRuntime.ceval.gil;
#endif
#if PY_VERSION_HEX >= 0x030D0000
    int locked = __atomic_load_n(&gil->locked, __ATOMIC_RELAXED);
    uintptr_t holder = (uintptr_t)__atomic_load_n(&gil->last_holder, __ATOMIC_RELAXED);
#else
    int locked = _Py_atomic_load_relaxed(&gil->locked);
    uintptr_t holder = _Py_atomic_load_relaxed(&gil->last_holder);
#endif
    return locked > 0 ? holder : 0;
}
