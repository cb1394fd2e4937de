"""rawgpu: train a two-layer network on an NVIDIA GPU with nothing but Numba kernels you can read.

    import rawgpu
    rawgpu.use("numpy")                 # or "cuda", "sim"; default: RAWGPU_DEVICE, else auto
    model = rawgpu.TwoLayerMLP(784, 128, 10, seed=0)
    opt = rawgpu.SGD(model, lr=0.01, momentum=0.9)
    loss = model.loss_and_grads(x, labels)
    opt.step()

The engine must be chosen before the first model is built; see :mod:`rawgpu.engine`.
"""

from rawgpu.engine import EngineError, current, use
from rawgpu.model import TwoLayerMLP
from rawgpu.optim import SGD

__version__ = "0.1.0"
__all__ = ["use", "current", "EngineError", "TwoLayerMLP", "SGD", "__version__"]
