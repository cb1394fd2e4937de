"""What a kernel module tells the compile report (``rawgpu kernels``) about the kernels it launches.

Every module of ``rawgpu.kernels`` that launches kernels has a function ``compile_targets()`` that
returns one :class:`CompileTarget` per kernel *as the ``cuda`` engine and the benchmarks launch
it*: the same compile-time configuration (tile sizes, threads per block, flags) and the exact
argument types. The report compiles each one through NVVM and ptxas for a given architecture,
with no GPU, and reads off registers, spills, shared memory and occupancy.
"""

from __future__ import annotations

from typing import NamedTuple


class CompileTarget(NamedTuple):
    kernel: str  # the kernel's name, e.g. "regblock"
    config: str  # its compile-time configuration in words, e.g. "bm=64 bn=64 bk=8 tm=4 tn=4 NN"
    dispatcher: object  # the @cuda.jit dispatcher (its .py_func is what gets compiled)
    signature: str  # the argument types it is launched with, e.g. "void(float32[:, ::1], ...)"
    threads_per_block: int  # threads in one block at launch
