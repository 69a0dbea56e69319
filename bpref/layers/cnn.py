"""A small convolutional network, the layers composed, forward and handwritten backward.

The network is CS231n's convolutional classifier in its smallest form, conv - batchnorm - relu
- 2x2 max pool - affine - softmax, on N images x of shape (N, C, H, W) with one class label
per image:

* (CNN1) c = conv2d(x; w, b), stride 1, pad 1      w (F, C, HH, WW); c (N, F, H1, W1),
  H1 = H + 3 - HH (CV2)
* (CNN2) h = batchnorm(c; gamma, beta)             training mode, per channel over (N, H1, W1)
* (CNN3) r = relu(h)
* (CNN4) p = maxpool(r), 2 x 2 windows, stride 2   p (N, F, H2, W2), H2 = (H1 - 2) // 2 + 1
* (CNN5) s = p' W^T + b_fc                         p' = p flattened to (N, F H2 W2), channel
  first (C order); W (K, F H2 W2): the logits of K classes
* (CNN6) C = (1/N) sum_n -log softmax(s_n)[labels_n]

and the backward steps, each a layer of ``bpref.layers`` or the network's own dense step
(``bpref.backprop.pull_back``, ``bpref.backprop.layer_grads``), run them in reverse:

* (CNN7) ds = (1/N) (softmax(s) - t), t the one-hot rows of the labels (``bpref.losses``'s
  softmax_cross_entropy dC/dy, times dC/dC_n = 1/N)
* (CNN8) dp' = ds W, dW = ds^T p', db_fc = sum_n ds   (26), (39)
* (CNN9) dr = maxpool's backward of dp = dp' reshaped to (N, F, H2, W2)   (MP2), (MP3)
* (CNN10) dh = dr relu'(h)                         (34), relu'(0) = 0
* (CNN11) dc, dgamma, dbeta = batchnorm's backward of dh   (BN8)-(BN11)
* (CNN12) dx, dw, db = conv2d's backward of dc     (CV4)-(CV8)

Each value is used once, so the composition adds no sums; the reshapes of (CNN5) and (CNN9) are
each other's inverse, which is their whole derivative. ``STEPS`` names the backward steps in
the order they run, with what each is handed, which is what the op oracle's ``block`` kind
(``check_op("block", layers, name="cnn")``) uses to check someone's layer functions one at a
time on the network's own activations. The relu and dense steps are handed rows, (N, F H1 W1)
and (N, F H2 W2), as the ``activation`` and ``dense`` kinds take them.

The stages read like ``bpref.backprop``:

  C, cache = forward(params, x, labels)        # (CNN1)-(CNN6)
  dx, grads = backward(params, cache)          # (CNN7)-(CNN12), grads of params' structure
  given, got = steps(params, cache)            # the same, step by step

No JAX autodiff is used; ``tests/test_ops_cnn.py`` holds ``backward`` to ``jax.vjp`` of
``forward``. ``forward`` checks its arguments before anything is traced.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bpref import activations as _activations
from bpref import losses as _losses
from bpref.backprop import layer_grads, pull_back
from bpref.layers import batchnorm as _batchnorm
from bpref.layers import conv as _conv
from bpref.layers import pool as _pool
from bpref.layers.block import Step
from bpref.network import DEFAULT_PRECISION
from bpref.validation import describe, floating_array

Array = jax.Array

LAYER = "cnn"

STRIDE, PAD = 1, 1
"""The convolution's stride and zero padding (CNN1)."""

POOL, POOL_STRIDE = 2, 2
"""The max pooling's window side and stride (CNN4)."""

ACTIVATION = "relu"
LOSS = "softmax_cross_entropy"


class CNNParams(NamedTuple):
  """The network's parameters: w (F, C, HH, WW) and b (F,) of the convolution; gamma and beta
  (F,) of the batch normalization; W (K, F H2 W2) and b_fc (K,) of the dense layer (weights
  (out, in), as everywhere in bpref)."""
  w: Array
  b: Array
  gamma: Array
  beta: Array
  W: Array
  b_fc: Array


class CNNCache(NamedTuple):
  """The network's activations: x (N, C, H, W), labels (N,) and their one-hot rows t (N, K);
  c, h and r (N, F, H1, W1); p (N, F, H2, W2); s (N, K); and the layers' caches."""
  x: Array
  labels: Array
  t: Array
  c: Array
  h: Array
  r: Array
  p: Array
  s: Array
  conv: _conv.ConvCache
  bn: _batchnorm.BatchNormCache
  pool: _pool.MaxPoolCache


STEPS = (
    Step("loss", "loss", LOSS, ("z", "labels"), ("dz",)),
    Step("fc", "dense", None, ("x", "W", "b", "dout"), ("dx", "dW", "db")),
    Step("pool", "maxpool2d", f"p{POOL}s{POOL_STRIDE}", ("x", "dout"), ("dx",)),
    Step("relu", "activation", ACTIVATION, ("z", "dout"), ("dz",)),
    Step("bn", "batchnorm", None, ("x", "gamma", "beta", "dout"), ("dx", "dgamma", "dbeta")),
    Step("conv", "conv2d", f"s{STRIDE}p{PAD}", ("x", "w", "b", "dout"), ("dx", "dw", "db")),
)
"""The backward pass's steps in the order they run: the first wrong one is where a bug is."""


def shapes(x_shape, w_shape) -> tuple:
  """((N, F, H1, W1), (N, F, H2, W2)): the shapes of c and p for x and w of these shapes.

  >>> shapes((2, 3, 5, 4), (6, 3, 3, 3))
  ((2, 6, 5, 4), (2, 6, 2, 2))
  """
  conv = _conv.output_shape(x_shape, w_shape, STRIDE, PAD)  # (CV2)
  return conv, _pool.output_shape(conv, POOL, POOL_STRIDE)


# ---------------------------------------------------------------- checks

def _check(params, x, labels):
  """(params, x, labels) checked: the shapes of the module docstring, one floating dtype,
  integer labels in [0, K)."""
  if not isinstance(params, CNNParams):
    raise TypeError(f"{LAYER}: params must be CNNParams(w, b, gamma, beta, W, b_fc); got "
                    f"{type(params).__name__}")
  x = jnp.asarray(floating_array(x, "x", layer=LAYER))  # as JAX holds it: float32 without x64
  params = CNNParams(*(jnp.asarray(floating_array(v, name, layer=LAYER))
                       for name, v in zip(CNNParams._fields, params)))
  if x.ndim != 4:
    raise ValueError(f"{LAYER}: x must have shape (N, C, H, W); got {describe(x)}")
  if params.w.ndim != 4 or params.w.shape[1] != x.shape[1]:
    raise ValueError(f"{LAYER}: w must have shape (F, C, HH, WW) with C = {x.shape[1]}, x's "
                     f"channels; got {describe(params.w)}")
  F = params.w.shape[0]
  for name in ("b", "gamma", "beta"):
    v = getattr(params, name)
    if tuple(v.shape) != (F,):
      raise ValueError(f"{LAYER}: {name} must have shape ({F},), one entry per filter of w; got "
                       f"{describe(v)}")
  conv, pooled = shapes(x.shape, params.w.shape)
  if min(conv[2:]) < POOL:
    raise ValueError(f"{LAYER}: the convolution's output {conv[2:]} (H1 = H + {2 * PAD + 1} - HH) "
                     f"is smaller than one {POOL} x {POOL} pooling window for x {tuple(x.shape)} "
                     f"and w {tuple(params.w.shape)}; use larger images or a smaller filter")
  n_in = F * pooled[2] * pooled[3]
  if params.W.ndim != 2 or params.W.shape[1] != n_in:
    raise ValueError(f"{LAYER}: W must have shape (K, F H2 W2) = (K, {n_in}), one row per class "
                     f"over the pooled features; got {describe(params.W)}")
  K = params.W.shape[0]
  if tuple(params.b_fc.shape) != (K,):
    raise ValueError(f"{LAYER}: b_fc must have shape ({K},), one entry per row of W; got "
                     f"{describe(params.b_fc)}")
  for name, v in zip(CNNParams._fields, params):
    if v.dtype != x.dtype:
      raise TypeError(f"{LAYER}: {name} has dtype {v.dtype} but x has {x.dtype}; cast one of "
                      "them so that they agree")
  labels = jnp.asarray(labels)
  if labels.shape != (x.shape[0],) or not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"{LAYER}: labels must be integers of shape ({x.shape[0]},), one class index "
                     f"per image; got {describe(labels)}")
  if not isinstance(labels, jax.core.Tracer) and labels.size and (
      int(np.min(labels)) < 0 or int(np.max(labels)) >= K):
    raise ValueError(f"{LAYER}: labels must lie in [0, {K}), the rows of W; got values from "
                     f"{int(np.min(labels))} to {int(np.max(labels))}")
  return params, x, labels


# ---------------------------------------------------------------- forward and backward

def forward(params: CNNParams, x, labels, *, eps: float = _batchnorm.DEFAULT_EPS,
            precision=DEFAULT_PRECISION) -> tuple[Array, CNNCache]:
  """The mean loss C (CNN6) and the cache, for x (N, C, H, W) and integer labels (N,).

  Args:
    params: ``CNNParams``.
    x: the images, shape (N, C, H, W); H1 = H + 3 - HH and W1 at least 2.
    labels: one class index in [0, K) per image, shape (N,).
    eps: the batch normalization's epsilon, inside its square root.
    precision: matmul precision of the dense step.
  """
  params, x, labels = _check(params, x, labels)
  return _forward(params, x, labels, eps, precision)


def _forward(params, x, labels, eps, precision):
  N = x.shape[0]
  K = params.W.shape[0]
  t = (labels[:, None] == jnp.arange(K)[None, :]).astype(x.dtype)  # one-hot rows of the labels
  c, conv = _conv.forward(x, params.w, params.b, STRIDE, PAD)  # (CNN1)
  h, bn = _batchnorm.forward(c, params.gamma, params.beta, eps)  # (CNN2)
  r = _activations.get(ACTIVATION).f(h)  # (CNN3): r = relu(h)
  p, pool = _pool.forward(r, POOL, POOL_STRIDE)  # (CNN4)
  rows = jnp.reshape(p, (N, -1))  # (CNN5): p' = p flattened, channel first
  s = jnp.matmul(rows, params.W.T, precision=precision) + params.b_fc[None, :]  # (CNN5): s = p' W^T + b_fc
  loss = _losses.get(LOSS)
  C = _losses.reduce(loss.value(s, t), "mean")  # (CNN6): C = (1/N) sum_n -log softmax(s_n)[labels_n]
  return C, CNNCache(x, labels, t, c, h, r, p, s, conv, bn, pool)


def steps(params: CNNParams, cache: CNNCache, *,
          precision=DEFAULT_PRECISION) -> tuple[dict, dict]:
  """The backward pass, step by step: ({step: what it is handed}, {step: what it returns})."""
  N = cache.x.shape[0]
  given, got = {}, {}

  def run(name, handed, result):
    given[name], got[name] = handed, result
    return result

  scale = _losses.reduce_scale(N, "mean")
  (ds,) = run("loss", dict(z=cache.s, labels=cache.labels),
              (_losses.get(LOSS).dy(cache.s, cache.t) * scale,))  # (CNN7): ds = (softmax(s) - t) / N
  rows = jnp.reshape(cache.p, (N, -1))  # p' of (CNN5), the dense step's input
  dW, db_fc = layer_grads(ds, rows, precision=precision)  # (CNN8): dW = ds^T p', db_fc = sum_n ds
  drows = pull_back(ds, params.W, precision=precision)  # (CNN8): dp' = ds W
  run("fc", dict(x=rows, W=params.W, b=params.b_fc, dout=ds), (drows, dW, db_fc))
  dp = jnp.reshape(drows, cache.p.shape)  # (CNN9): (CNN5)'s flattening undone
  (dr,) = run("pool", dict(x=cache.r, dout=dp), (_pool.backward(cache.pool, dp),))  # (CNN9)
  h_rows, dr_rows = jnp.reshape(cache.h, (N, -1)), jnp.reshape(dr, (N, -1))  # rows, as the activation kind takes them
  (dh_rows,) = run("relu", dict(z=h_rows, dout=dr_rows),
                   (_activations.vjp(ACTIVATION, h_rows, jnp.reshape(cache.r, (N, -1)),
                                     dr_rows),))  # (CNN10): dh = dr relu'(h)
  dh = jnp.reshape(dh_rows, cache.h.shape)  # (CNN10) in h's shape
  dc, _, _ = run("bn", dict(x=cache.c, gamma=params.gamma, beta=params.beta, dout=dh),
                 _batchnorm.backward(cache.bn, dh))  # (CNN11)
  run("conv", dict(x=cache.x, w=params.w, b=params.b, dout=dc),
      _conv.backward(cache.conv, dc))  # (CNN12)
  return given, got


def backward(params: CNNParams, cache: CNNCache, *,
             precision=DEFAULT_PRECISION) -> tuple[Array, CNNParams]:
  """(dx, dparams): dC/dx of x's shape and dC/dparams, from the cache of ``forward``."""
  _, got = steps(params, cache, precision=precision)
  dx, dw, db = got["conv"]
  _, dgamma, dbeta = got["bn"]
  _, dW, db_fc = got["fc"]
  return dx, CNNParams(dw, db, dgamma, dbeta, dW, db_fc)


def value_and_grad(params: CNNParams, x, labels, *, eps: float = _batchnorm.DEFAULT_EPS,
                   precision=DEFAULT_PRECISION) -> tuple[Array, CNNParams]:
  """(C, dC/dparams): ``forward`` then ``backward``."""
  C, cache = forward(params, x, labels, eps=eps, precision=precision)
  return C, backward(params, cache, precision=precision)[1]
