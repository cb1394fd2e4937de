"""The network: input -> hidden (ReLU) -> classes, with its backward pass derived by hand.

Written once against the op interface (:mod:`rawgpu.ops`), so the same code runs on the ``cuda``,
``sim`` and ``numpy`` engines.
"""

from __future__ import annotations

import numpy as np

from rawgpu import engine as _engine
from rawgpu import ops

PARAM_NAMES = ("W1", "b1", "W2", "b2")


class TwoLayerMLP:
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
        self.params = {name: self.engine.asarray(host[name]) for name in PARAM_NAMES}
        self.grads = {name: self.engine.zeros(self.params[name].shape) for name in PARAM_NAMES}
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
                "da": e.empty((batch, H)),  # dL/da, then dL/d(pre-activation) in place
            }
        return buf

    def _check_batch(self, x):
        if getattr(x, "ndim", None) != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"x must have shape (batch, {self.in_features}), got {getattr(x, 'shape', type(x).__name__)}")

    # --- forward and backward ----------------------------------------------------------------

    def _forward_into(self, x, buf):
        p = self.params
        ops.matmul(x, p["W1"], out=buf["a"])
        ops.bias_relu(buf["a"], p["b1"], out=buf["a"])  # a = relu(x W1 + b1), in place
        ops.matmul(buf["a"], p["W2"], out=buf["z"])
        ops.bias_add(buf["z"], p["b2"], out=buf["z"])  # z = a W2 + b2
        return buf["z"]

    def forward(self, x):
        """The logits for a batch ``x`` of shape ``(B, in_features)``, as a fresh array."""
        self._check_batch(x)
        return self._forward_into(x, self._work(x.shape[0])).copy()

    def loss_and_grads(self, x, labels, *, check_labels: bool = True) -> float:
        """Mean cross-entropy of the batch; fills ``self.grads`` with its gradients.

        With ``L = mean_i CE(z_i, y_i)`` and the forward pass above, the chain rule gives, from
        the top down (``P`` the row-wise softmax of ``z``, ``Y`` the one-hot labels)::

            dL/dz  = (P - Y) / B                 fused with the loss in softmax_cross_entropy
            dL/dW2 = a^T dL/dz                   (H, C)  matmul(a, dz, trans_a=True)
            dL/db2 = sum over rows of dL/dz      (C,)    col_sum(dz)
            dL/da  = dL/dz W2^T                  (B, H)  matmul(dz, W2, trans_b=True)
            dL/dh  = dL/da * [a > 0]             (B, H)  relu_backward: h = x W1 + b1, and
                                                         relu'(h) = 1 exactly where a > 0
            dL/dW1 = x^T dL/dh                   (D, H)  matmul(x, dh, trans_a=True)
            dL/db1 = sum over rows of dL/dh      (H,)    col_sum(dh)

        The bias gradients are column sums because each bias is added to every row of the batch.
        The transposes are read in place by the matmul kernels; nothing is copied.
        ``check_labels=False`` skips the per-call range check of ``labels`` on the cuda engine
        (see ``ops.softmax_cross_entropy``): the training loop checks its labels once instead.
        """
        self._check_batch(x)
        buf = self._work(x.shape[0])
        p, g = self.params, self.grads
        z = self._forward_into(x, buf)
        loss, dz = ops.softmax_cross_entropy(z, labels, grad_out=buf["dz"], check_labels=check_labels)
        ops.matmul(buf["a"], dz, trans_a=True, out=g["W2"])
        ops.col_sum(dz, out=g["b2"])
        ops.matmul(dz, p["W2"], trans_b=True, out=buf["da"])
        dh = ops.relu_backward(buf["da"], buf["a"], out=buf["da"])
        ops.matmul(x, dh, trans_a=True, out=g["W1"])
        ops.col_sum(dh, out=g["b1"])
        return float(loss)

    def evaluate(self, x, labels, *, batch_size: int = 1000) -> tuple[float, float]:
        """Mean loss and accuracy over a whole set, in batches (the gradients are left alone)."""
        n = x.shape[0]
        if n == 0:
            raise ValueError("cannot evaluate on an empty set")
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        total_loss, correct = 0.0, 0
        for start in range(0, n, batch_size):
            xb, yb = x[start : start + batch_size], labels[start : start + batch_size]
            buf = self._work(xb.shape[0])
            z = self._forward_into(xb, buf)
            loss, _ = ops.softmax_cross_entropy(z, yb, grad_out=buf["dz"])
            total_loss += float(loss) * xb.shape[0]
            correct += ops.correct_count(z, yb)
        return total_loss / n, correct / n

    # --- saving and loading --------------------------------------------------------------------

    @property
    def architecture(self) -> dict:
        return {"in_features": self.in_features, "hidden": self.hidden, "classes": self.classes}

    def state_dict(self) -> dict:
        """The four parameters as NumPy float32 copies, under the names W1, b1, W2, b2."""
        return {name: self.engine.to_host(self.params[name]).copy() for name in PARAM_NAMES}

    def load_state_dict(self, state: dict) -> None:
        """Copy parameters in from NumPy arrays; shapes must match this network exactly."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict of arrays named {', '.join(PARAM_NAMES)}, got {type(state).__name__}")
        missing = [name for name in PARAM_NAMES if name not in state]
        if missing:
            raise ValueError(f"state_dict is missing {', '.join(missing)}")
        for name in PARAM_NAMES:
            want = tuple(self.params[name].shape)
            got = tuple(np.shape(state[name]))
            if got != want:
                raise ValueError(
                    f"{name} has shape {got} but this network ({self.in_features}-{self.hidden}-{self.classes}) needs {want}"
                )
        for name in PARAM_NAMES:
            self.params[name][...] = self.engine.asarray(np.asarray(state[name], dtype=np.float32))
