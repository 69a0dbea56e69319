"""Layer normalization: the forward step and its handwritten backward step.

Each row x (the C features of one position; any leading axes are batch axes) is normalized
by its own mean and biased variance, then scaled and shifted by w and b, shared by all rows
(proofs/layers.md, section 2):

* (LN1) mu = (1/C) sum_i x_i
* (LN2) var = (1/C) sum_i (x_i - mu)^2          biased: 1/C, not 1/(C - 1)
* (LN3) rstd = 1 / sqrt(var + eps)              eps inside the root, as PyTorch and llm.c
* (LN4) xhat = (x - mu) rstd
* (LN5) out = xhat * w + b

and, from dout = dC/dout of x's shape, the backward step

* (LN8) dxhat = dout * w
* (LN9) dx = rstd (dxhat - mean_C(dxhat) - xhat mean_C(dxhat xhat))
* (LN10) dw = sum over the rows of dout * xhat
* (LN11) db = sum over the rows of dout

(LN6) and (LN7), the derivatives of rstd and of xhat with respect to x, are steps of the
derivation in proofs/layers.md; no line computes them.

The variance is computed in two passes (the mean first, then the mean square of x - mu): the
one-pass form mean(x^2) - mu^2 cancels catastrophically for rows with a large mean and a small
spread (proofs/layers.md, section 5). The cache holds x, mu and rstd, two numbers per row as in
llm.c; the backward step recomputes xhat from them with the forward step's own operations, so it
is the same array bit for bit.

No JAX autodiff is used. ``forward``, ``backward`` and ``grads`` check their arguments before
anything is traced; ``_forward`` and ``_backward`` are the unchecked bodies.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from bpref.validation import cotangent_like, describe, floating_array, layer_eps, shaped_like

Array = jax.Array

LAYER = "layernorm"
DEFAULT_EPS = 1e-5


class LayerNormCache(NamedTuple):
  """What the forward step saves for the backward step (leading axes ``...`` as x's).

  Attributes:
    x: the input, shape (..., C).
    mean: mu of each row (LN1), shape (...).
    rstd: 1 / sqrt(var + eps) of each row (LN3), shape (...).
  """
  x: Array
  mean: Array
  rstd: Array


# ---------------------------------------------------------------- checks

def _array(v, what: str):
  return floating_array(v, what, layer=LAYER)  # v as an array of a floating dtype, else a TypeError


def _check_params(x, w, b):
  """(x, w, b) as arrays: x of shape (..., C) with C >= 1, w and b of shape (C,), one dtype."""
  x = _array(x, "x")
  if x.ndim < 1 or x.shape[-1] < 1:
    raise ValueError(f"{LAYER}: x must have shape (..., C) with C >= 1 features last; got {describe(x)}")
  return x, _check_feature_vector(w, "w", x), _check_feature_vector(b, "b", x)


def _check_feature_vector(v, name: str, x):
  """v (w or b) as an array of shape (C,) and x's dtype, C the last axis of x."""
  v = _array(v, name)
  C = x.shape[-1]
  return shaped_like(v, (C,), x, layer=LAYER, name=name, must=f"shape ({C},), one entry per "
                     f"feature of x (shape {tuple(x.shape)})")


def _check_eps(eps) -> float:
  return layer_eps(eps, layer=LAYER)


def _check_dout(x, dout, what: str = "dout"):
  return cotangent_like(x, dout, what, layer=LAYER)


def _check_cache(cache):
  if not isinstance(cache, LayerNormCache):
    raise TypeError(f"{LAYER}: cache must be the LayerNormCache(x, mean, rstd) that "
                    f"layernorm.forward returned; got {type(cache).__name__}")
  x = _array(cache.x, "cache.x")
  if x.ndim < 1 or x.shape[-1] < 1:
    raise ValueError(f"{LAYER}: cache.x must have shape (..., C) with C >= 1; got {describe(x)}")
  rows = tuple(x.shape[:-1])
  for name in ("mean", "rstd"):
    v = _array(getattr(cache, name), f"cache.{name}")
    if tuple(v.shape) != rows:
      raise ValueError(f"{LAYER}: cache.{name} must have shape {rows}, one entry per row of "
                       f"cache.x (shape {tuple(x.shape)}); got {describe(v)}")
    if v.dtype != x.dtype:
      raise TypeError(f"{LAYER}: cache.{name} has dtype {v.dtype} but cache.x has {x.dtype}")
  return x


# ---------------------------------------------------------------- forward and backward

def forward(x, w, b, eps: float = DEFAULT_EPS) -> tuple[Array, LayerNormCache]:
  """out = (x - mu) / sqrt(var + eps) * w + b over the last axis, and the cache.

  Args:
    x: the input, shape (..., C): rows are positions, any leading axes batch axes.
    w: the scale w, shape (C,).
    b: the shift b, shape (C,).
    eps: added to the biased variance inside the square root (LN3); a Python number.

  Returns:
    (out, cache): out of x's shape and dtype, ``LayerNormCache(x, mean, rstd)``.

  >>> import numpy as np, jax.numpy as jnp
  >>> from bpref.layers import layernorm
  >>> out, cache = layernorm.forward(jnp.array([[1., 2., 3.]]), jnp.ones(3), jnp.zeros(3))
  >>> np.round(np.asarray(out), 4).tolist()
  [[-1.2247, 0.0, 1.2247]]
  """
  x, w, b = _check_params(x, w, b)
  return _forward(x, w, b, _check_eps(eps))


def _row(v, ndim: int):
  # a (C,) parameter as (1, ..., 1, C), for rows of rank ndim (rank promotion is explicit)
  return jnp.reshape(v, (1,) * (ndim - 1) + v.shape)


def _xhat(x, mean, rstd):
  return (x - mean[..., None]) * rstd[..., None]  # (LN4): xhat = (x - mu) * rstd


def _forward(x, w, b, eps: float):
  mean = jnp.mean(x, axis=-1)  # (LN1): mu = (1/C) sum_i x_i
  centred = x - mean[..., None]
  var = jnp.mean(centred * centred, axis=-1)  # (LN2): var = (1/C) sum_i (x_i - mu)^2, two passes
  rstd = jax.lax.rsqrt(var + eps)  # (LN3): rstd = 1 / sqrt(var + eps)
  xhat = _xhat(x, mean, rstd)
  out = xhat * _row(w, x.ndim) + _row(b, x.ndim)  # (LN5): out = xhat * w + b
  return out, LayerNormCache(x, mean, rstd)


def backward(cache: LayerNormCache, w, dout) -> tuple[Array, Array, Array]:
  """(dx, dw, db) from the cache of ``forward`` and dout = dC/dout.

  Args:
    cache: the ``LayerNormCache`` that ``forward`` returned.
    w: the scale w of the forward step, shape (C,).
    dout: dC/dout, of x's shape (..., C).

  Returns:
    dx of x's shape (LN9), dw and db of shape (C,), summed over every leading axis
    (LN10), (LN11).
  """
  x = _check_cache(cache)
  return _backward(cache, _check_feature_vector(w, "w", x), _check_dout(x, dout))


def _backward(cache: LayerNormCache, w, dout):
  x, mean, rstd = cache
  rows = tuple(range(x.ndim - 1))  # every leading axis
  xhat = _xhat(x, mean, rstd)  # recomputed: the forward step's own operations
  db = jnp.sum(dout, axis=rows)  # (LN11): db = sum over the rows of dout
  dw = jnp.sum(dout * xhat, axis=rows)  # (LN10): dw = sum over the rows of dout * xhat
  dxhat = dout * _row(w, x.ndim)  # (LN8): dxhat = dout * w
  mean_dxhat = jnp.mean(dxhat, axis=-1, keepdims=True)  # mean_C(dxhat)
  mean_dxhat_xhat = jnp.mean(dxhat * xhat, axis=-1, keepdims=True)  # mean_C(dxhat * xhat)
  dx = rstd[..., None] * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat)  # (LN9): dx = rstd (dxhat - ...)
  return dx, dw, db


def grads(x, w, b, dout, eps: float = DEFAULT_EPS) -> tuple[Array, Array, Array]:
  """(dx, dw, db): ``forward`` then ``backward``, for dout = dC/dout of x's shape.

  >>> import jax.numpy as jnp
  >>> from bpref.layers import layernorm
  >>> dx, dw, db = layernorm.grads(jnp.ones((2, 4)), jnp.ones(4), jnp.zeros(4), jnp.ones((2, 4)))
  >>> dx.shape, dw.shape, db.tolist()
  ((2, 4), (4,), [2.0, 2.0, 2.0, 2.0])
  """
  x, w, b = _check_params(x, w, b)
  dout = _check_dout(x, dout)
  _, cache = _forward(x, w, b, _check_eps(eps))
  return _backward(cache, w, dout)
