"""Op backends: one per way of running the ops (NumPy, or the Numba kernels).

A backend implements the op interface of :mod:`rawgpu.ops` on arguments that the op layer has
already checked and outputs it has already allocated. :mod:`rawgpu.engine` picks which one is live.
"""
