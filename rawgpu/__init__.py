"""rawgpu: train a two-layer network on an NVIDIA GPU with nothing but Numba kernels you can read.

    import rawgpu
    rawgpu.use("numpy")                 # or "cuda", "sim"; default: RAWGPU_DEVICE, else auto
    model = rawgpu.TwoLayerMLP(784, 128, 10, seed=0)
    opt = rawgpu.SGD(model, lr=0.01, momentum=0.9)
    loss = model.loss_and_grads(x, labels)
    opt.step()

The engine must be chosen before the first model is built; see :mod:`rawgpu.engine`.
"""

import importlib

__version__ = "0.1.0"
__all__ = ["use", "current", "EngineError", "TwoLayerMLP", "SmallCNN", "SGD", "__version__"]

# The names above load on first use, not at ``import rawgpu``: the ``rawgpu`` command imports
# this package before anything else, and keeping that import instant means a Ctrl-C in the first
# moments lands in the command's own handler (one line, exit 130) rather than in NumPy's import.
_LAZY = {
    "use": "rawgpu.engine", "current": "rawgpu.engine", "EngineError": "rawgpu.engine",
    "TwoLayerMLP": "rawgpu.model", "SmallCNN": "rawgpu.cnn", "SGD": "rawgpu.optim",
}


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rawgpu' has no attribute {name!r}")
