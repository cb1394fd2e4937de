"""Device code: Numba ``@cuda.jit`` kernels and their launchers, one file per op family.

Installed as ``rawgpu.kernels``. Nothing here imports rawgpu or CuPy: the kernels take NumPy
arrays in Numba's simulator and Numba device arrays (or anything with
``__cuda_array_interface__``) on a GPU. Importing a module here imports ``numba.cuda``, so the
engine (``rawgpu.engine``) decides simulator-or-GPU before any of them is imported.
"""
