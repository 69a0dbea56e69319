"""The exact referee of the transformer layers: the forward steps in mpmath, the gradients by
high-precision central differences.

For ``bpref.layers`` (layernorm, embedding, residual) the referee evaluates each layer's forward
step at ``dps`` significant digits (50 by default) on the inputs converted to ``mpmath.mpf``
exactly (a binary float is a rational number), and the gradient of

    phi(theta) = sum(dout * forward(theta))

with respect to every floating input by central differences,

    dphi/dtheta_j = (phi(theta + h e_j) - phi(theta - h e_j)) / (2 h),   h = 10^-25 max(1, |theta_j|),

at dps + 30 digits. The truncation error is h^2 |phi'''| / 6, about 1e-50 times the third
derivative, and the cancellation costs about 25 of the 80 digits, so the gradients are exact
to some 40 digits: far below float64's 16. Nothing here knows the backward formulas of
proofs/layers.md: a wrong formula there cannot be repeated here, and the forward steps are
written again from their definitions (no code is shared with ``bpref.layers``).

Caveats. At a kink of f (relu, leaky_relu, selu at z = 0 exactly) the central difference gives
the mean of the one-sided derivatives, not bpref's convention: keep such points out of the
cases. The cost is O(n^2) mpmath operations for n inputs (every entry is perturbed and the whole
forward step rerun): use it for a few dozen entries, C <= 4.

Arrays are NumPy object arrays of mpf; ``bpref.witnesses.referee.error`` and ``to_float``
compare and round them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import mpmath
import numpy as np

DEFAULT_DPS = 50
EXTRA_DIGITS = 30
"""Digits beyond ``dps`` at which the differences are taken: the step 10^-25 cancels about 25."""
STEP_EXPONENT = 25


class Exact(NamedTuple):
  """A layer's output and gradients at high precision (object arrays of mpf).

  Attributes:
    out: the forward step's output.
    grads: the gradients of sum(dout * out), one per floating input, in the order of the
      layer's arguments: (dx, dw, db), (dwte, dwpe) or (dx, dW, db).
  """
  out: np.ndarray
  grads: tuple


def _mp(a) -> np.ndarray:
  # float entries to mpf exactly (through float64, which holds float32 values exactly)
  a = np.asarray(a, np.float64)
  return np.vectorize(lambda v: mpmath.mpf(float(v)), otypes=[object])(a)


def _gradients(forward: Callable, inputs: list, dout: np.ndarray) -> tuple:
  """d sum(dout * forward(*inputs)) / d inputs[i], each of inputs[i]'s shape, by central differences."""
  def phi(args):
    return mpmath.fsum(d * o for d, o in zip(dout.ravel(), forward(*args).ravel()))

  grads = []
  for i, value in enumerate(inputs):
    grad = np.empty(value.shape, dtype=object)
    for j in np.ndindex(value.shape):
      h = mpmath.mpf(10) ** -STEP_EXPONENT * max(mpmath.mpf(1), abs(value[j]))
      sides = []
      for sign in (1, -1):
        moved = value.copy()
        moved[j] = value[j] + sign * h
        sides.append(phi(inputs[:i] + [moved] + inputs[i + 1:]))
      grad[j] = (sides[0] - sides[1]) / (2 * h)
    grads.append(grad)
  return tuple(grads)


def _evaluate(forward: Callable, inputs: list, dout, dps: int) -> Exact:
  with mpmath.workdps(dps + EXTRA_DIGITS):
    mp_inputs = [_mp(v) for v in inputs]
    mp_dout = _mp(dout)
    grads = _gradients(forward, mp_inputs, mp_dout)
  with mpmath.workdps(dps):
    out = forward(*[_mp(v) for v in inputs])
    grads = tuple(np.vectorize(lambda v: +v, otypes=[object])(g) for g in grads)  # rounded to dps
  return Exact(out, grads)


# ---------------------------------------------------------------- layernorm

def _layernorm_rows(x, w, b, eps):
  C = x.shape[-1]
  rows = x.reshape(-1, C)
  out = np.empty(rows.shape, dtype=object)
  for n, row in enumerate(rows):
    mu = mpmath.fsum(row) / C  # the mean of the row
    var = mpmath.fsum((v - mu) ** 2 for v in row) / C  # its biased variance
    rstd = 1 / mpmath.sqrt(var + eps)
    out[n] = [(v - mu) * rstd * wi + bi for v, wi, bi in zip(row, w, b)]
  return out.reshape(x.shape)


def layernorm(x, w, b, dout, eps=1e-5, *, dps: int = DEFAULT_DPS) -> Exact:
  """out = (x - mu) / sqrt(var + eps) * w + b per row, and (dx, dw, db) of sum(dout * out).

  eps is converted exactly from the float given: pass the value the computation used
  (``float(np.float32(1e-5))`` for a float32 layer that rounds eps to float32).
  """
  eps = mpmath.mpf(float(eps))
  return _evaluate(lambda x_, w_, b_: _layernorm_rows(x_, w_, b_, eps), [x, w, b], dout, dps)


# ---------------------------------------------------------------- embedding

def embedding(ids, wte, wpe, dout, *, dps: int = DEFAULT_DPS) -> Exact:
  """out[b, t] = wte[ids[b, t]] + wpe[t], and (dwte, dwpe) of sum(dout * out)."""
  ids = np.asarray(ids)
  vocab = np.shape(wte)[0]
  if ids.ndim != 2 or ids.min() < 0 or ids.max() >= vocab or ids.shape[1] > np.shape(wpe)[0]:
    raise ValueError(f"ids must be (B, T) in [0, {vocab}) with T <= {np.shape(wpe)[0]}; got "
                     f"shape {ids.shape}")

  def forward(wte_, wpe_):
    B, T = ids.shape
    out = np.empty((B, T, wte_.shape[1]), dtype=object)
    for b_, t in np.ndindex(B, T):
      out[b_, t] = [e + p for e, p in zip(wte_[ids[b_, t]], wpe_[t])]
    return out

  return _evaluate(forward, [wte, wpe], dout, dps)


# ---------------------------------------------------------------- residual

_SELU_ALPHA = mpmath.mpf("1.6732632423543772848170429916717")
_SELU_SCALE = mpmath.mpf("1.0507009873554804934193349852946")


def _sigma(z):
  return 1 / (1 + mpmath.exp(-z))


ACTIVATIONS = {
    "identity": lambda z: z,
    "relu": lambda z: z if z > 0 else mpmath.mpf(0),
    "leaky_relu": lambda z: z if z >= 0 else mpmath.mpf("0.01") * z,
    "elu": lambda z: z if z > 0 else mpmath.expm1(z),
    "selu": lambda z: _SELU_SCALE * (z if z > 0 else _SELU_ALPHA * mpmath.expm1(z)),
    "gelu": lambda z: z * mpmath.erfc(-z / mpmath.sqrt(2)) / 2,
    "gelu_tanh": lambda z: z * (1 + mpmath.tanh(mpmath.sqrt(2 / mpmath.pi)
                                                * (z + mpmath.mpf("0.044715") * z ** 3))) / 2,
    "silu": lambda z: z * _sigma(z),
    "mish": lambda z: z * mpmath.tanh(mpmath.log1p(mpmath.exp(z))),
    "softplus": lambda z: mpmath.log1p(mpmath.exp(z)),
    "sigmoid": _sigma,
    "tanh": mpmath.tanh,
    "softsign": lambda z: z / (1 + abs(z)),
    "sin": mpmath.sin,
    "softmax": None,  # over each row: exp(z_i) / sum_j exp(z_j)
}
"""Each activation f of bpref, written again from its definition (derivatives by differences)."""


def _activation(name, z):
  if name == "softmax":
    out = np.empty(z.shape, dtype=object)
    for j in np.ndindex(z.shape[:-1]):
      e = [mpmath.exp(v) for v in z[j]]
      s = mpmath.fsum(e)
      out[j] = [v / s for v in e]
    return out
  return np.vectorize(ACTIVATIONS[name], otypes=[object])(z)


def residual(x, W, b, activation: str, dout, *, dps: int = DEFAULT_DPS) -> Exact:
  """y = x + f(x W^T + b) over the rows of x, and (dx, dW, db) of sum(dout * y)."""
  if activation not in ACTIVATIONS:
    raise ValueError(f"the layers referee has no activation {activation!r}; known: "
                     f"{', '.join(ACTIVATIONS)}")

  def forward(x_, W_, b_):
    C = x_.shape[-1]
    rows = x_.reshape(-1, C)
    z = np.empty(rows.shape, dtype=object)
    for n, i in np.ndindex(rows.shape):
      z[n, i] = mpmath.fsum([rows[n, j] * W_[i, j] for j in range(C)] + [b_[i]])  # sum_j x_j W_ij + b_i
    return (rows + _activation(activation, z)).reshape(x_.shape)

  return _evaluate(forward, [x, W, b], dout, dps)
