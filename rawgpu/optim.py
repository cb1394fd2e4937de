"""SGD with momentum, through the ``sgd_momentum_`` op (PyTorch's ``torch.optim.SGD`` rule)."""

from __future__ import annotations

import numpy as np

from rawgpu import ops


def _setting(name):
    """``opt.lr`` and its kin: read from ``opt.settings``; setting one (a schedule lowering the
    learning rate, say) checks the new settings once and takes effect at the next step."""

    def get(self):
        return getattr(self.settings, name)

    def set(self, value):
        self.settings = ops.sgd_settings(**{**self.settings._asdict(), name: value})

    return property(get, set, doc=f"The optimizer's {name}.")


class SGD:
    """Stochastic gradient descent with momentum, weight decay and optional Nesterov momentum.

    For each parameter ``p`` with gradient ``g`` and velocity ``v`` (zero at the start)::

        g = g + weight_decay * p
        v = momentum * v + g
        p = p - lr * (g + momentum * v)   if nesterov
        p = p - lr * v                    otherwise

    which is exactly ``torch.optim.SGD`` with ``dampening=0`` (PyTorch's first step sets
    ``v = g``, the same as ``momentum * 0 + g``).
    """

    def __init__(self, model, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, nesterov: bool = False):
        # Checked once, here (and again only when one is changed, below): every step passes them
        # on as they are.
        self.settings = ops.sgd_settings(lr, momentum, weight_decay, nesterov)
        self.model = model
        # One flat velocity, laid out like the model's flat parameters: one launch per step.
        self.flat_velocity = model.engine.zeros(model.flat_params.shape)
        self.velocity = model.views(self.flat_velocity)

    lr, momentum, weight_decay, nesterov = (_setting(name) for name in ops.SGDSettings._fields)

    def step(self) -> None:
        """Update every parameter in place from ``model.grads``: one kernel launch for all four."""
        ops.sgd_momentum_(self.model.flat_params, self.model.flat_grads, self.flat_velocity, self.settings)

    def state_dict(self) -> dict:
        """The velocities as NumPy copies, under the parameters' names."""
        return {name: self.model.engine.to_host(v).copy() for name, v in self.velocity.items()}

    def load_state_dict(self, state: dict) -> None:
        """Copy the velocities in from NumPy arrays named like the parameters."""
        names = tuple(self.velocity)  # the model's parameter names (the MLP's four, the CNN's ten)
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict of velocities named {', '.join(names)}, got {type(state).__name__}")
        for name in names:
            want = tuple(self.velocity[name].shape)
            if name not in state or tuple(np.shape(state[name])) != want:
                raise ValueError(f"optimizer state for {name} is missing or not of shape {want}")
            self.velocity[name][...] = self.model.engine.asarray(state[name])
