"""A residual connection around one dense layer: the forward step and its handwritten backward.

The input x fans out to two paths, the skip path and the branch F, and the two meet in a sum
(proofs/layers.md, section 4). Rows are positions, any leading axes batch axes; W is square,
(C, C) as (C_out, C_in), so that y has x's shape:

* (RES1) z = x W^T + b
* (RES2) a = f(z)
* (RES3) y = x + a

and, from dy = dC/dy of x's shape, the backward step

* (RES4) delta = dy f'(z)            (``bpref.activations.vjp``: dy times softmax's Jacobian for softmax)
* (RES5) dx = dy + delta W           the skip path plus the branch: x is used twice, its gradients add
* (RES6) dW = delta^T x              summed over the rows
* (RES7) db = sum over the rows of delta

The dense step is the network's own: ``bpref.network.layer_forward`` is (RES1)-(RES2),
``bpref.backprop.pull_back`` the delta W of (RES5) and ``bpref.backprop.layer_grads``
(RES6)-(RES7), each on the rows of x flattened to (N, C). What is new here is the fan-out: the
gradient of a value used twice is the sum of the gradients through each use.

No JAX autodiff is used. ``forward`` and ``backward`` check their arguments before anything is
traced; ``_forward`` and ``_backward`` are the unchecked bodies. The activation's name is
configuration: under ``jax.jit`` mark it static (``static_argnames="activation"``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from bpref import activations as _activations
from bpref.backprop import layer_grads, pull_back
from bpref.network import DEFAULT_PRECISION, layer_forward
from bpref.validation import check_precision, describe, floating_array, shaped_like

Array = jax.Array

LAYER = "residual"


class ResidualCache(NamedTuple):
  """What the forward step saves for the backward step, each of x's shape (..., C).

  Attributes:
    x: the input.
    z: the branch's pre-activation x W^T + b (RES1).
    a: the branch's output f(z) (RES2).
  """
  x: Array
  z: Array
  a: Array


# ---------------------------------------------------------------- checks

def _array(v, what: str):
  return floating_array(v, what, layer=LAYER)  # v as an array of a floating dtype, else a TypeError


def _check_x(x, what: str = "x"):
  x = _array(x, what)
  if x.ndim < 1 or x.shape[-1] < 1:
    raise ValueError(f"{LAYER}: {what} must have shape (..., C) with C >= 1 features last; got "
                     f"{describe(x)}")
  return x


def _check_like(v, what: str, shape: tuple, x, why: str):
  """v as an array of ``shape`` and x's dtype."""
  return shaped_like(_array(v, what), shape, x, layer=LAYER, name=what,
                     must=f"shape {shape} ({why})")


def _check_W(W, x):
  C = x.shape[-1]
  return _check_like(W, "W", (C, C), x, f"(C_out, C_in) = ({C}, {C}): the branch's output is added "
                     f"to x of shape {tuple(x.shape)}, so W must be square")


def _check_activation(activation) -> str:
  try:
    return _activations.get(activation).name
  except ValueError as err:
    raise ValueError(f"{LAYER}: {err}") from None


def _check_cache(cache):
  if not isinstance(cache, ResidualCache):
    raise TypeError(f"{LAYER}: cache must be the ResidualCache(x, z, a) that residual.forward "
                    f"returned; got {type(cache).__name__}")
  x = _check_x(cache.x, "cache.x")
  for name in ("z", "a"):
    _check_like(getattr(cache, name), f"cache.{name}", tuple(x.shape), x, "the shape of cache.x")
  return x


# ---------------------------------------------------------------- forward and backward

def forward(x, W, b, activation: str, *, precision=DEFAULT_PRECISION) -> tuple[Array, ResidualCache]:
  """y = x + f(x W^T + b), and the cache.

  Args:
    x: the input, shape (..., C): rows are positions, any leading axes batch axes.
    W: the branch's weights, shape (C, C) as (C_out, C_in).
    b: the branch's bias, shape (C,).
    activation: the name of f in ``bpref.activations`` (softmax: over the last axis).
    precision: matmul precision; ``jax.lax.Precision.HIGHEST`` by default.

  Returns:
    (y, cache): y of x's shape and dtype, ``ResidualCache(x, z, a)``.

  >>> import jax.numpy as jnp
  >>> from bpref.layers import residual
  >>> y, cache = residual.forward(jnp.array([[1., -2.]]), jnp.eye(2), jnp.zeros(2), "relu")
  >>> y.tolist()
  [[2.0, -2.0]]
  """
  x = _check_x(x)
  W = _check_W(W, x)
  b = _check_like(b, "b", (x.shape[-1],), x, "one entry per output of the branch")
  return _forward(x, W, b, _check_activation(activation), check_precision(precision))


def _rows(v, C: int):
  # the rows of v, flattened to (N, C): the network's dense steps take a batch of rows
  return jnp.reshape(v, (-1, C))


def _forward(x, W, b, activation: str, precision):
  C = x.shape[-1]
  f = _activations.get(activation).f
  z, a = layer_forward(W, b, _rows(x, C), f, precision=precision)  # (RES1)-(RES2): z = x W^T + b, a = f(z)
  z, a = jnp.reshape(z, x.shape), jnp.reshape(a, x.shape)
  y = x + a  # (RES3): y = x + f(z), the skip path plus the branch
  return y, ResidualCache(x, z, a)


def backward(cache: ResidualCache, W, activation: str, dout, *,
             precision=DEFAULT_PRECISION) -> tuple[Array, Array, Array]:
  """(dx, dW, db) from the cache of ``forward`` and dout = dC/dy.

  Args:
    cache: the ``ResidualCache`` that ``forward`` returned.
    W: the branch's weights of the forward step, shape (C, C).
    activation: the name of f, as in the forward step.
    dout: dC/dy, of x's shape (..., C).
    precision: matmul precision.

  Returns:
    dx of x's shape (RES5); dW of shape (C, C) (RES6) and db of shape (C,) (RES7), summed over
    every leading axis.

  >>> import jax.numpy as jnp
  >>> from bpref.layers import residual
  >>> x, W, b = jnp.array([[1., -2.]]), jnp.eye(2), jnp.zeros(2)
  >>> _, cache = residual.forward(x, W, b, "relu")
  >>> dx, dW, db = residual.backward(cache, W, "relu", jnp.ones((1, 2)))
  >>> dx.tolist(), db.tolist()
  ([[2.0, 1.0]], [1.0, 0.0])
  """
  x = _check_cache(cache)
  W = _check_W(W, x)
  dout = _check_like(dout, "dout", tuple(x.shape), x, "dC/dy has the shape of y, which is x's")
  return _backward(cache, W, _check_activation(activation), dout, check_precision(precision))


def _backward(cache: ResidualCache, W, activation: str, dout, precision):
  x, z, a = cache
  C = x.shape[-1]
  delta = _activations.vjp(activation, _rows(z, C), _rows(a, C), _rows(dout, C))  # (RES4): delta = dy f'(z)
  branch = pull_back(delta, W, precision=precision)  # delta W, the branch's share of dx
  dx = dout + jnp.reshape(branch, x.shape)  # (RES5): dx = dy + delta W, skip path plus branch
  dW, db = layer_grads(delta, _rows(x, C), precision=precision)  # (RES6), (RES7): delta^T x, sum delta
  return dx, dW, db
