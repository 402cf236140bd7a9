"""Everything that records inside the host, as Go's runtime does for runtime/pprof: stack
sampling, heap recording, the lock recorder, thread and task listing, creation stacks, thread
clocks and the one raw-stack reader, each with its native and its Python backend.

The native/Python choice is made here, once: the extension (samplers/native.py, the only
importer of it) where it is built and usable, else the Python twin. Nothing here imports the
registry, the encoder, the renderers, HTTP or the profiles built from these records.
"""

from __future__ import annotations

from pyprofiler.samplers.heap import HeapBackend
from pyprofiler.samplers.heap_native import NativeHeap
from pyprofiler.samplers.heap_tracemalloc import TracemallocHeap
from pyprofiler.samplers.native import native as extension
from pyprofiler.samplers.stack_native import NativeStackBackend
from pyprofiler.samplers.stack_python import PythonStackBackend

# (`extension`, not `native`: that name is the submodule samplers/native.py.)
NATIVE = extension is not None
# The native stack sampler copies stacks with process_vm_readv, which a seccomp policy can deny.
NATIVE_STACK_READS = NATIVE and extension.stack_reads_available()

heap_recorder: HeapBackend = NativeHeap() if NATIVE else TracemallocHeap()
# The class of a StackSampler's backend (samplers/stack.py), made per session.
stack_backend: type[NativeStackBackend | PythonStackBackend] = (
    NativeStackBackend if NATIVE_STACK_READS else PythonStackBackend
)
