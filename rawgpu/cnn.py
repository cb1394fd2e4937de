"""The CIFAR-10 example's small CNN, with its backward pass derived by hand.

    Conv2d(C, 32, 5, padding=2) -> MaxPool2d(2) -> Conv2d(32, 32, 5, padding=2) -> MaxPool2d(2)
    -> Conv2d(32, 64, 5, padding=2) -> MaxPool2d(2) -> Flatten -> Linear(F, 64) -> Linear(64, 10)

Written once against the op interface (:mod:`rawgpu.ops`), like :class:`rawgpu.TwoLayerMLP`, so
the same code runs on the ``cuda``, ``sim`` and ``numpy`` engines. No autograd and no layer
graph: the forward pass is a list of op calls, and so is the backward pass, beside its table.
"""

from __future__ import annotations

import numpy as np

from rawgpu import engine as _engine
from rawgpu import ops
from rawgpu.model import FlatParams

PARAM_NAMES = ("W1", "b1", "W2", "b2", "W3", "b3", "W4", "b4", "W5", "b5")
ACTIVATIONS = ("none", "relu")
KERNEL, PAD = 5, 2  # every conv: 5x5, 'same' padding, stride 1
CHANNELS = (32, 32, 64)  # the seed's conv widths


#: Images per evaluation batch: smaller than the MLP's 1000, because a conv net's activations
#: per image are many (the first stage alone is 32 x 32 x 32 floats for a CIFAR-10 image).
EVAL_BATCH = 256


def stage_shapes(in_shape, channels) -> list:
    """The (channels, height, width) of each conv's output: the convs keep the image size
    ('same' padding), and each 2x2 pool halves it, rounding down."""
    _, h, w = in_shape
    shapes = []
    for c in channels:
        shapes.append((c, h, w))
        h, w = h // 2, w // 2
    return shapes


def param_shapes(in_shape, channels, hidden, classes) -> dict:
    """Every parameter's shape, by name: convs (out, in, K, K), linear layers (in, out)."""
    shapes = {}
    for i, (cin, cout) in enumerate(zip((in_shape[0], *channels[:2]), channels), start=1):
        shapes[f"W{i}"], shapes[f"b{i}"] = (cout, cin, KERNEL, KERNEL), (cout,)
    c, h, w = stage_shapes(in_shape, channels)[-1]
    shapes["W4"], shapes["b4"] = (c * (h // 2) * (w // 2), hidden), (hidden,)
    shapes["W5"], shapes["b5"] = (hidden, classes), (classes,)
    return shapes


def image_shape(pixels_shape) -> tuple:
    """(channels, height, width) of a dataset's images from the shape of one image as the
    loaders give it: (28, 28) or (784,) -> (1, 28, 28); CIFAR-10's (3072,) (stored channel by
    channel) -> (3, 32, 32). Raises ValueError for anything else."""
    shape = tuple(int(v) for v in pixels_shape)
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) == 3:
        return shape
    pixels = shape[0] if len(shape) == 1 else 0
    for chans in (1, 3):
        side = int(round((pixels / chans) ** 0.5))
        if pixels and side * side * chans == pixels:
            return (chans, side, side)
    raise ValueError(f"--model cnn needs square images of 1 or 3 channels; cannot tell the image shape of {pixels} values per image")


def _positive(name, value):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class SmallCNN(FlatParams):
    """Three conv + 2x2 max-pool stages, then two linear layers: the seed's CIFAR-10 network.

    Shapes, for a batch of ``B`` images of ``C x H x W`` (CIFAR-10: 3 x 32 x 32; MNIST and
    Fashion-MNIST: 1 x 28 x 28), widths ``c1, c2, c3 = 32, 32, 64``, ``hidden = 64``, ``K = 5``::

        x   (B, C, H, W)                  W1 (c1, C, K, K)    b1 (c1,)
        h1  (B, c1, H, W)      conv       W2 (c2, c1, K, K)   b2 (c2,)
        p1  (B, c1, H/2, W/2)  pool       W3 (c3, c2, K, K)   b3 (c3,)
        h2, p2, h3, p3 likewise           W4 (F, hidden)      b4 (hidden,)
        f   (B, F)             flatten    W5 (hidden, classes) b5 (classes,)
        a4  (B, hidden)        a4 = f W4 + b4
        z   (B, classes)       z  = a4 W5 + b5

    where ``/2`` rounds down (an odd row or column is dropped by the pool) and ``F = c3 * (H/8)
    * (W/8)``, worked out from the image shape: 1024 for 3 x 32 x 32, 576 for 1 x 28 x 28. Conv
    weights are stored like PyTorch's ``(out, in, K, K)``; linear weights ``(in, out)`` like
    TwoLayerMLP's, so the forward pass is plain matmuls. The flatten is a free view of the
    contiguous NCHW ``p3``, in PyTorch's ``Flatten`` order.

    ``activation="none"`` (the default) is the seed's network exactly: no activation functions,
    max-pooling its only non-linearity. ``"relu"`` puts a ReLU after each conv (fused into the
    conv kernel's epilogue) and after the first linear layer.

    Every weight and bias starts like PyTorch's ``nn.Conv2d`` and ``nn.Linear`` defaults, uniform
    in ``+-1/sqrt(fan_in)`` (``fan_in = in * K * K`` for a conv), drawn from a NumPy generator
    seeded with ``seed``. All ten parameters live in one flat buffer, and so do their gradients,
    so one SGD launch updates them all (:class:`rawgpu.SGD` works as for the MLP). The
    activations are allocated once per batch size and reused.
    """

    def __init__(self, in_shape=(3, 32, 32), classes: int = 10, *, activation: str = "none", seed: int = 0,
                 channels=CHANNELS, hidden: int = 64):
        if len(tuple(in_shape)) != 3:
            raise ValueError(f"in_shape must be (channels, height, width), got {in_shape!r}")
        self.in_shape = tuple(_positive(n, v) for n, v in zip(("channels", "height", "width"), in_shape))
        if self.in_shape[1] < 8 or self.in_shape[2] < 8:
            raise ValueError(f"images must be at least 8x8 (three 2x2 poolings), got {self.in_shape[1]}x{self.in_shape[2]}")
        if len(tuple(channels)) != 3:
            raise ValueError(f"channels must be three conv widths, got {channels!r}")
        self.channels = tuple(_positive("channels", c) for c in channels)
        self.hidden, self.classes = _positive("hidden", hidden), _positive("classes", classes)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        self.relu = activation == "relu"
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a whole number >= 0 (it seeds NumPy's generator), got {seed!r}")
        self.seed = seed
        self.stage_shapes = stage_shapes(self.in_shape, self.channels)
        c, h, w = self.stage_shapes[-1]
        self.flat_features = c * (h // 2) * (w // 2)
        self.engine = _engine.current()

        rng = np.random.default_rng(seed)
        shapes = self.shapes = param_shapes(self.in_shape, self.channels, self.hidden, self.classes)
        host = {}
        for i in range(1, 6):
            wshape = shapes[f"W{i}"]
            fan_in = int(np.prod(wshape[1:])) if len(wshape) == 4 else wshape[0]
            bound = 1.0 / np.sqrt(fan_in)
            host[f"W{i}"] = rng.uniform(-bound, bound, size=wshape).astype(np.float32)
            host[f"b{i}"] = rng.uniform(-bound, bound, size=shapes[f"b{i}"]).astype(np.float32)
        self.flat_params = self.engine.asarray(np.concatenate([host[name].ravel() for name in PARAM_NAMES]))
        self.flat_grads = self.engine.zeros(self.flat_params.shape)
        self.params = self.views(self.flat_params)
        self.grads = self.views(self.flat_grads)
        self.stats = ops.StepStats(self.engine)
        self._buffers: dict[int, dict] = {}

    param_names = PARAM_NAMES
    eval_batch = EVAL_BATCH

    @property
    def num_params(self) -> int:
        return int(self.flat_params.size)

    # --- buffers ------------------------------------------------------------------------------

    def _work(self, batch: int) -> dict:
        """Activations and their gradients for one batch size, made on first use and reused."""
        buf = self._buffers.get(batch)
        if buf is None:
            e = self.engine
            buf = {}
            for i, (c, h, w) in enumerate(self.stage_shapes, start=1):
                buf[f"h{i}"] = e.empty((batch, c, h, w))  # conv output (after the ReLU, if any)
                buf[f"dh{i}"] = e.empty((batch, c, h, w))  # dL/dh_i
                buf[f"p{i}"] = e.empty((batch, c, h // 2, w // 2))  # pooled
                buf[f"arg{i}"] = e.empty((batch, c, h // 2, w // 2), np.int32)  # what the pool picked
                buf[f"dp{i}"] = e.empty((batch, c, h // 2, w // 2))  # dL/dp_i
            buf["a4"] = e.empty((batch, self.hidden))
            buf["dh4"] = e.empty((batch, self.hidden))
            buf["z"] = e.empty((batch, self.classes))
            buf["dz"] = e.empty((batch, self.classes))
            self._buffers[batch] = buf
        return buf

    def _images(self, x):
        """``x`` as (B, C, H, W): image batches pass as they are, rows of C*H*W values (as the
        data loaders give them) are viewed as images, for free."""
        c, h, w = self.in_shape
        shape = getattr(x, "shape", None)
        if shape is not None and len(shape) == 2 and shape[1] == c * h * w:
            return x.reshape(shape[0], c, h, w)
        if shape is None or tuple(shape[1:]) != self.in_shape:
            raise ValueError(f"x must have shape (batch, {c}, {h}, {w}) or (batch, {c * h * w}), got {shape if shape is not None else type(x).__name__}")
        return x

    # --- forward and backward ----------------------------------------------------------------

    def _features(self, x, buf):
        """The three conv stages and the flatten: launches 1-6 of the table below."""
        p = self.params
        inp = x
        for i in (1, 2, 3):
            ops.conv2d(inp, p[f"W{i}"], p[f"b{i}"], pad=PAD, relu=self.relu, out=buf[f"h{i}"])
            ops.maxpool2x2(buf[f"h{i}"], out=buf[f"p{i}"], argmax_out=buf[f"arg{i}"])
            inp = buf[f"p{i}"]
        return inp.reshape(inp.shape[0], self.flat_features)

    def _hidden(self, f, buf):
        """``a4 = [relu](f W4 + b4)``: launch 7 (with ReLU) or 7-8 (without)."""
        p = self.params
        if self.relu:
            ops.linear_relu(f, p["W4"], p["b4"], out=buf["a4"])
        else:
            ops.matmul(f, p["W4"], out=buf["a4"])
            ops.bias_add(buf["a4"], p["b4"], out=buf["a4"])
        return buf["a4"]

    def forward(self, x):
        """The logits for a batch of images, as a fresh array."""
        x = self._images(x)
        buf = self._work(x.shape[0])
        a4 = self._hidden(self._features(x, buf), buf)
        ops.matmul(a4, self.params["W5"], out=buf["z"])
        ops.bias_add(buf["z"], self.params["b5"], out=buf["z"])
        return buf["z"].copy()

    def loss_and_grads(self, x, labels):
        """Mean cross-entropy of the batch, as a 0-d array on the engine; fills ``self.grads``.

        With ``L = mean_i CE(z_i, y_i)``, ``P`` the row-wise softmax of ``z`` and ``Y`` the one-hot
        labels, ``[.]`` the ReLU and its mask only with ``activation="relu"``, from the top down::

            op                      computes                                          shape
            forward
            conv2d (+ReLU)          h1 = [conv(x, W1) + b1]                           (B, c1, H, W)
            maxpool2x2              p1 = pool(h1), arg1 = where each max came from    (B, c1, H/2, W/2)
            conv2d, maxpool2x2      h2, p2 from p1;  h3, p3 from p2 likewise
            (view)                  f  = p3 flattened                                 (B, F)
            linear_relu / matmul    a4 = [f W4 + b4]                                  (B, hidden)
            linear_softmax_ce       z  = a4 W5 + b5, L, dL/dz = (P - Y) / B           (B, classes)
            backward
            weight_grad             dL/dW5 = a4^T dL/dz,  dL/db5 = sum_rows dL/dz     (hidden, classes)
            linear_backward_relu    dL/dh4 = dL/dz W5^T [* (a4 > 0)]                  (B, hidden)
              / matmul
            weight_grad             dL/dW4 = f^T dL/dh4,  dL/db4 = sum_rows dL/dh4    (F, hidden)
            matmul                  dL/df  = dL/dh4 W4^T = dL/dp3 (a view)            (B, F)
            maxpool2x2_backward     dL/dh3 = dL/dp3 sent to arg3, 0 elsewhere         (B, c3, H/4, W/4)
            [relu_backward]         dL/dh3 *= (h3 > 0)
            conv2d_weight_grad      dL/dW3 = corr(p2, dL/dh3), dL/db3 = sum dL/dh3    (c3, c2, K, K)
            conv2d_input_grad       dL/dp2 = conv(dL/dh3, flipped W3)                 (B, c2, H/4, W/4)
            ... and the same for stage 2 (down to dL/dp1), then stage 1 (W1, b1 only: nothing
            needs dL/dx).

        Why each line: a linear layer's gradients are as in TwoLayerMLP. A max-pool passes each
        window's gradient to the one input it picked (the others did not change the output).
        A conv's input gradient is a convolution of ``dL/dh`` with the kernel flipped in both
        spatial axes (and its channel axes swapped): input pixel ``(h, w)`` reached output ``(h +
        pad - i, w + pad - j)`` through ``W[o, c, i, j]``. Its weight gradient is a correlation
        of the layer's input with ``dL/dh``: ``W[o, c, i, j]`` multiplied ``x[n, c, y + i - pad,
        x + j - pad]`` into every output pixel ``(n, o, y, x)``. Its bias gradient sums ``dL/dh``
        over images and pixels. (Derived in full, and checked in float64, in rawgpu/reference.py.)
        With the ReLU, ``h > 0`` exactly where the ReLU was open, so ``h`` (kept by the forward
        pass) is the mask.
        """
        x = self._images(x)
        buf = self._work(x.shape[0])
        p, g = self.params, self.grads
        f = self._features(x, buf)
        a4 = self._hidden(f, buf)
        loss = ops.linear_softmax_ce(a4, p["W5"], p["b5"], labels, logits_out=buf["z"], grad_out=buf["dz"], stats=self.stats)
        ops.weight_grad(a4, buf["dz"], w_out=g["W5"], b_out=g["b5"])
        if self.relu:
            ops.linear_backward_relu(buf["dz"], p["W5"], a4, out=buf["dh4"])
        else:
            ops.matmul(buf["dz"], p["W5"], trans_b=True, out=buf["dh4"])
        ops.weight_grad(f, buf["dh4"], w_out=g["W4"], b_out=g["b4"])
        dp3 = buf["dp3"]
        ops.matmul(buf["dh4"], p["W4"], trans_b=True, out=dp3.reshape(dp3.shape[0], self.flat_features))
        for i in (3, 2, 1):
            dh, h = buf[f"dh{i}"], buf[f"h{i}"]
            ops.maxpool2x2_backward(buf[f"dp{i}"], buf[f"arg{i}"], out=dh)
            if self.relu:
                rows = dh.shape[0]
                ops.relu_backward(dh.reshape(rows, -1), h.reshape(rows, -1), out=dh.reshape(rows, -1))
            inp = buf[f"p{i - 1}"] if i > 1 else x
            ops.conv2d_weight_grad(inp, dh, pad=PAD, w_out=g[f"W{i}"], b_out=g[f"b{i}"])
            if i > 1:
                ops.conv2d_input_grad(dh, p[f"W{i}"], pad=PAD, out=buf[f"dp{i - 1}"])
        return loss

    def evaluate(self, x, labels, *, batch_size: int | None = None) -> tuple[float, float]:
        """Mean loss and accuracy over a whole set, in batches of ``EVAL_BATCH`` images by default."""
        return super().evaluate(self._images(x), labels, batch_size=batch_size)

    def _eval_batch(self, xb, yb, buf):
        a4 = self._hidden(self._features(xb, buf), buf)
        return ops.linear_softmax_ce(a4, self.params["W5"], self.params["b5"], yb, logits_out=buf["z"], grad_out=buf["dz"])

    # --- saving and loading --------------------------------------------------------------------

    @property
    def architecture(self) -> dict:
        return {"model": "cnn", "in_shape": list(self.in_shape), "channels": list(self.channels),
                "hidden": self.hidden, "classes": self.classes, "activation": self.activation}

    def describe(self) -> str:
        return f"cnn on {'x'.join(map(str, self.in_shape))} images"
