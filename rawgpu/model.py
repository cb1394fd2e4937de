"""The network: input -> hidden (ReLU) -> classes, with its backward pass derived by hand.

Written once against the op interface (:mod:`rawgpu.ops`), so the same code runs on the ``cuda``,
``sim`` and ``numpy`` engines.
"""

from __future__ import annotations

import numpy as np

from rawgpu import engine as _engine
from rawgpu import ops

PARAM_NAMES = ("W1", "b1", "W2", "b2")


class FlatParams:
    """What the networks share: named parameters that are views into one flat buffer (so one SGD
    launch updates them all), and saving and loading them by name. A network sets
    ``param_names``, ``shapes``, ``params``, ``engine`` and ``describe()``."""

    param_names: tuple = ()
    eval_batch: int = 1000  # rows per batch of evaluate()

    def views(self, flat) -> dict:
        """Named views into a flat buffer laid out like the parameters (``param_names`` in order)."""
        out, start = {}, 0
        for name in self.param_names:
            size = int(np.prod(self.shapes[name]))
            out[name] = flat[start : start + size].reshape(self.shapes[name])
            start += size
        return out

    def state_dict(self) -> dict:
        """The parameters as NumPy float32 copies, under their names."""
        return {name: self.engine.to_host(self.params[name]).copy() for name in self.param_names}

    def load_state_dict(self, state: dict) -> None:
        """Copy parameters in from NumPy arrays; shapes must match this network exactly."""
        names = self.param_names
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict of arrays named {', '.join(names)}, got {type(state).__name__}")
        missing = [name for name in names if name not in state]
        if missing:
            raise ValueError(f"state_dict is missing {', '.join(missing)}")
        for name in names:
            want = tuple(self.params[name].shape)
            got = tuple(np.shape(state[name]))
            if got != want:
                raise ValueError(f"{name} has shape {got} but this network ({self.describe()}) needs {want}")
        for name in names:
            self.params[name][...] = self.engine.asarray(np.asarray(state[name], dtype=np.float32))


    def evaluate(self, x, labels, *, batch_size: int | None = None) -> tuple[float, float]:
        """Mean loss and accuracy over a whole set, in batches of ``batch_size`` (default
        ``eval_batch``); the gradients are left alone."""
        batch_size = self.eval_batch if batch_size is None else batch_size
        n = x.shape[0]
        if n == 0:
            raise ValueError("cannot evaluate on an empty set")
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        total_loss, correct = 0.0, 0
        for start in range(0, n, batch_size):
            xb, yb = x[start : start + batch_size], labels[start : start + batch_size]
            buf = self._work(xb.shape[0])
            loss = self._eval_batch(xb, yb, buf)
            total_loss += float(loss) * xb.shape[0]
            correct += ops.correct_count(buf["z"], yb)
        return total_loss / n, correct / n


class TwoLayerMLP(FlatParams):
    """A two-layer perceptron: ``logits = relu(x @ W1 + b1) @ W2 + b2``.

    Shapes, for a batch of ``B`` rows, ``D`` inputs, ``H`` hidden units and ``C`` classes::

        x  (B, D)    W1 (D, H)   b1 (H,)    a = relu(x W1 + b1)   (B, H)
                     W2 (H, C)   b2 (C,)    z = a W2 + b2         (B, C)

    Weights are stored ``(in, out)`` so the forward pass is two plain matmuls. They start like
    PyTorch's ``nn.Linear`` default: every weight and bias uniform in ``+-1/sqrt(fan_in)``, drawn
    from a NumPy generator seeded with ``seed``, so the same seed gives the same network on every
    engine.

    The work buffers (activations, logits, their gradients) are allocated once per batch size
    and reused by every step.
    """

    param_names = PARAM_NAMES

    def __init__(self, in_features: int, hidden: int, classes: int, *, seed: int = 0):
        for name, value in (("in_features", in_features), ("hidden", hidden), ("classes", classes)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a whole number >= 0 (it seeds NumPy's generator), got {seed!r}")
        self.in_features, self.hidden, self.classes = int(in_features), int(hidden), int(classes)
        self.seed = seed
        self.engine = _engine.current()
        rng = np.random.default_rng(seed)
        host = {}
        for w, b, fan_in, fan_out in (("W1", "b1", self.in_features, self.hidden), ("W2", "b2", self.hidden, self.classes)):
            bound = 1.0 / np.sqrt(fan_in)
            host[w] = rng.uniform(-bound, bound, size=(fan_in, fan_out)).astype(np.float32)
            host[b] = rng.uniform(-bound, bound, size=(fan_out,)).astype(np.float32)
        # All four parameters live in one flat buffer, and so do their gradients: the named
        # arrays are views into it. One SGD launch then updates every parameter at once.
        self.shapes = {name: host[name].shape for name in PARAM_NAMES}
        self.flat_params = self.engine.asarray(np.concatenate([host[name].ravel() for name in PARAM_NAMES]))
        self.flat_grads = self.engine.zeros(self.flat_params.shape)
        self.params = self.views(self.flat_params)
        self.grads = self.views(self.flat_grads)
        self.stats = ops.StepStats(self.engine)  # the step's loss sums and divergence, kept on the device
        self._buffers: dict[int, dict] = {}

    # --- buffers ------------------------------------------------------------------------------

    def _work(self, batch: int) -> dict:
        """Activations and gradients for one batch size, made on first use and then reused."""
        buf = self._buffers.get(batch)
        if buf is None:
            e, H, C = self.engine, self.hidden, self.classes
            buf = self._buffers[batch] = {
                "a": e.empty((batch, H)),  # hidden activations relu(x W1 + b1)
                "z": e.empty((batch, C)),  # logits
                "dz": e.empty((batch, C)),  # dL/dz
                "dh": e.empty((batch, H)),  # dL/dh, the gradient at the ReLU's input
            }
        return buf

    def _check_batch(self, x):
        if getattr(x, "ndim", None) != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"x must have shape (batch, {self.in_features}), got {getattr(x, 'shape', type(x).__name__)}")

    # --- forward and backward ----------------------------------------------------------------

    def _forward_into(self, x, buf):
        p = self.params
        ops.linear_relu(x, p["W1"], p["b1"], out=buf["a"])  # a = relu(x W1 + b1)
        ops.matmul(buf["a"], p["W2"], out=buf["z"])
        ops.bias_add(buf["z"], p["b2"], out=buf["z"])  # z = a W2 + b2
        return buf["z"]

    def forward(self, x):
        """The logits for a batch ``x`` of shape ``(B, in_features)``, as a fresh array."""
        self._check_batch(x)
        return self._forward_into(x, self._work(x.shape[0])).copy()

    def loss_and_grads(self, x, labels):
        """Mean cross-entropy of the batch, as a 0-d array on the engine; fills ``self.grads``.

        Five kernel launches (the sixth of a training step is the optimizer's). With
        ``L = mean_i CE(z_i, y_i)``, ``h = x W1 + b1``, ``a = relu(h)``, ``z = a W2 + b2``, the
        chain rule gives, from the top down (``P`` the row-wise softmax of ``z``, ``Y`` the
        one-hot labels)::

            launch  op                    computes                              shape
            1       linear_relu           a      = relu(x W1 + b1)              (B, H)
            2       linear_softmax_ce     z      = a W2 + b2                    (B, C)
                                          L      = mean_i CE(z_i, y_i)
                                          dL/dz  = (P - Y) / B                  (B, C)
            3       weight_grad           dL/dW2 = a^T dL/dz                    (H, C)
                                          dL/db2 = sum over rows of dL/dz       (C,)
            4       linear_backward_relu  dL/da  = dL/dz W2^T                   (B, H)
                                          dL/dh  = dL/da * [a > 0]              (B, H)
            5       weight_grad           dL/dW1 = x^T dL/dh                    (D, H)
                                          dL/db1 = sum over rows of dL/dh       (H,)

        ``relu'(h) = 1`` exactly where ``a > 0``, so the ReLU's backward is a mask read from ``a``,
        applied as the epilogue of the ``dL/da`` matmul (launch 4) before anything is stored.
        The bias gradients are column sums because each bias is added to every row of the batch;
        they come out of the same kernels as the weight gradients. The transposes are read in
        place; nothing is copied. The loss is not read back here: the device keeps the sums and
        the first non-finite step in ``self.stats`` (``float(loss)`` reads this step's loss, at
        the price of waiting for the GPU).
        """
        self._check_batch(x)
        buf = self._work(x.shape[0])
        p, g = self.params, self.grads
        ops.linear_relu(x, p["W1"], p["b1"], out=buf["a"])
        loss = ops.linear_softmax_ce(buf["a"], p["W2"], p["b2"], labels, logits_out=buf["z"], grad_out=buf["dz"], stats=self.stats)
        ops.weight_grad(buf["a"], buf["dz"], w_out=g["W2"], b_out=g["b2"])
        ops.linear_backward_relu(buf["dz"], p["W2"], buf["a"], out=buf["dh"])
        ops.weight_grad(x, buf["dh"], w_out=g["W1"], b_out=g["b1"])
        return loss

    def _eval_batch(self, xb, yb, buf):
        """The loss of one evaluation batch, with its logits in ``buf["z"]``."""
        ops.linear_relu(xb, self.params["W1"], self.params["b1"], out=buf["a"])
        return ops.linear_softmax_ce(buf["a"], self.params["W2"], self.params["b2"], yb, logits_out=buf["z"], grad_out=buf["dz"])

    # --- saving and loading --------------------------------------------------------------------

    @property
    def architecture(self) -> dict:
        return {"in_features": self.in_features, "hidden": self.hidden, "classes": self.classes}

    def describe(self) -> str:
        return f"{self.in_features}-{self.hidden}-{self.classes}"
