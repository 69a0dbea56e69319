"""Batch normalization in training mode: the forward step and its handwritten backward step.

Each channel is normalized by the mean and the biased variance of its own values over the
batch, then scaled and shifted by gamma and beta (proofs/batchnorm.md). x has the channels on
axis 1, PyTorch's convention: (N, C) for a dense layer (CS231n's ``batchnorm_forward``, x of
shape (N, D)), (N, C, H, W) for a convolution (CS231n's ``spatial_batchnorm_forward``), and any
(N, C, *spatial) alike. The layout decides the statistics, no flag: a channel's statistics run
over every axis but axis 1, its m = N H W values:

* (BN0) X = the (m, C) matrix whose rows are x's positions (n, h, w), one column per channel
* (BN1) mu = (1/m) sum_n X_n                    per channel
* (BN2) var = (1/m) sum_n (X_n - mu)^2          biased: 1/m, as CS231n and PyTorch's training mode
* (BN3) rstd = 1 / sqrt(var + eps)              eps inside the root
* (BN4) Xhat = (X - mu) rstd
* (BN5) out = Xhat * gamma + beta               and back to x's layout

and, from dout = dC/dout of x's shape (its rows dOut by (BN0)), the backward step

* (BN8) dXhat = dOut * gamma
* (BN9) dX = rstd (dXhat - mean_m(dXhat) - Xhat mean_m(dXhat Xhat))
* (BN10) dgamma = sum over the m rows of dOut * Xhat
* (BN11) dbeta = sum over the m rows of dOut

(BN6) and (BN7), the derivatives of rstd and Xhat with respect to X, are steps of the
derivation; no line computes them. This is layer normalization (``bpref.layers.layernorm``,
(LN1)-(LN11)) with the roles of the axes swapped: layernorm normalizes each row over its C
features and sums dw over the rows; batchnorm normalizes each channel over its m rows and sums
dgamma over the same m rows it normalized over. (BN9) written with dgamma and dbeta is CS231n's
``batchnorm_backward_alt`` (proofs/batchnorm.md section 3).

The spatial form is the dense form of the (m, C) matrix (BN0), as CS231n builds
``spatial_batchnorm_forward`` from ``batchnorm_forward``: the channel axis moved last, the rest
flattened. Where m = 1 (N = 1 without spatial axes) the variance is 0 and only eps is under the
root: out = beta, dx = 0 and dgamma = 0 exactly (PyTorch refuses m = 1 in training mode; CS231n
and bpref do not). The variance is computed in two passes, as layernorm's is; the cache holds
x, mu, rstd and gamma, and the backward step recomputes Xhat with the forward step's own
operations. Running statistics (evaluation mode) are not part of this layer.

``bounds`` gives the magnitude M of every output in the rounding model of proofs/batchnorm.md
section 6, (BN12)-(BN19): any standard correct float implementation (two-pass, Welford's or the
one-pass variance; the staged graph, the simplified formula or autodiff for the backward) errs, to
first order, by at most c u k M per entry, k = m + 2 (section 6 says where first order ends).

No JAX autodiff is used. ``forward``, ``backward``, ``grads`` and ``bounds`` check their
arguments before anything is traced; ``_forward``, ``_backward`` and ``_bounds`` are the
unchecked bodies.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from bpref.validation import cotangent_like, describe, floating_array, layer_eps, shaped_like

Array = jax.Array

LAYER = "batchnorm"
DEFAULT_EPS = 1e-5


class BatchNormCache(NamedTuple):
  """What the forward step saves for the backward step (C channels on axis 1 of x).

  Attributes:
    x: the input, shape (N, C, *spatial).
    mean: mu of each channel (BN1), shape (C,).
    rstd: 1 / sqrt(var + eps) of each channel (BN3), shape (C,).
    gamma: the scale gamma, shape (C,): (BN8) needs it, and CS231n's backward takes the cache alone.
  """
  x: Array
  mean: Array
  rstd: Array
  gamma: Array


class BatchNormBounds(NamedTuple):
  """The magnitude M of each output (proofs/batchnorm.md section 6), each of its output's shape.

  A correct implementation errs by at most c u k M per entry (BN19), k = m + 2.

  Attributes:
    out: M_out (BN16), x's shape.
    dx: M_dx (BN17), x's shape.
    dgamma: M_dgamma (BN18), shape (C,).
    dbeta: M_dbeta (BN18), shape (C,).
  """
  out: Array
  dx: Array
  dgamma: Array
  dbeta: Array


# ---------------------------------------------------------------- checks

def _array(v, what: str):
  return floating_array(v, what, layer=LAYER)  # v as an array of a floating dtype, else a TypeError


def _check_x(x, what: str = "x"):
  """x as an array of shape (N, C, *spatial), every axis at least 1 long."""
  x = _array(x, what)
  if x.ndim < 2 or 0 in x.shape:
    raise ValueError(f"{LAYER}: {what} must have shape (N, C) or (N, C, H, W) (channels on axis "
                     f"1, no empty axis); got {describe(x)} (add a batch axis of 1 to one example)")
  return x


def _check_channel_vector(v, name: str, x):
  """v (gamma, beta or a cached statistic) as an array of shape (C,) and x's dtype."""
  v = _array(v, name)
  C = x.shape[1]
  return shaped_like(v, (C,), x, layer=LAYER, name=name, must=f"shape ({C},), one entry per "
                     f"channel of x (axis 1 of shape {tuple(x.shape)})")


def _check_params(x, gamma, beta):
  x = _check_x(x)
  return x, _check_channel_vector(gamma, "gamma", x), _check_channel_vector(beta, "beta", x)


def _check_eps(eps) -> float:
  return layer_eps(eps, layer=LAYER)


def _check_dout(x, dout):
  return cotangent_like(x, dout, layer=LAYER)


def _check_cache(cache):
  if not isinstance(cache, BatchNormCache):
    raise TypeError(f"{LAYER}: cache must be the BatchNormCache(x, mean, rstd, gamma) that "
                    f"batchnorm.forward returned; got {type(cache).__name__}")
  x = _check_x(cache.x, "cache.x")
  for name in ("mean", "rstd", "gamma"):
    _check_channel_vector(getattr(cache, name), f"cache.{name}", x)
  return x


# ---------------------------------------------------------------- the (m, C) view (BN0)

def _rows(v):
  """(N, C, *spatial) as (m, C), m = N prod(spatial): the channel axis last, the rest flattened."""
  C = v.shape[1]
  return jnp.reshape(jnp.moveaxis(v, 1, -1), (-1, C))  # (BN0): row (n, h, w), column c


def _unrows(rows, shape):
  """``_rows``'s inverse: (m, C) back to ``shape`` = (N, C, *spatial)."""
  last = (shape[0],) + tuple(shape[2:]) + (shape[1],)
  return jnp.moveaxis(jnp.reshape(rows, last), -1, 1)  # (BN0), inverted


def _col(v):
  # a (C,) vector as (1, C), for rows of X (rank promotion is explicit)
  return jnp.reshape(v, (1,) + v.shape)


def _xhat(X, mean, rstd):
  return (X - _col(mean)) * _col(rstd)  # (BN4): Xhat = (X - mu) * rstd


# ---------------------------------------------------------------- forward and backward

def forward(x, gamma, beta, eps: float = DEFAULT_EPS) -> tuple[Array, BatchNormCache]:
  """out = (x - mu) / sqrt(var + eps) * gamma + beta per channel over the batch, and the cache.

  Args:
    x: the input, shape (N, C) or (N, C, H, W) (any (N, C, *spatial)): channels on axis 1;
      each channel's statistics run over every other axis.
    gamma: the scale gamma, shape (C,).
    beta: the shift beta, shape (C,).
    eps: added to the biased variance inside the square root (BN3); a Python number.

  Returns:
    (out, cache): out of x's shape and dtype, ``BatchNormCache(x, mean, rstd, gamma)``.

  >>> import numpy as np, jax.numpy as jnp
  >>> from bpref.layers import batchnorm
  >>> out, cache = batchnorm.forward(jnp.array([[1.], [2.], [3.]]), jnp.ones(1), jnp.zeros(1))
  >>> np.round(np.asarray(out), 4).tolist(), cache.mean.tolist()
  ([[-1.2247], [0.0], [1.2247]], [2.0])
  """
  x, gamma, beta = _check_params(x, gamma, beta)
  return _forward(x, gamma, beta, _check_eps(eps))


def _forward(x, gamma, beta, eps: float):
  X = _rows(x)
  mean = jnp.mean(X, axis=0)  # (BN1): mu = (1/m) sum_n X_n
  centred = X - _col(mean)
  var = jnp.mean(centred * centred, axis=0)  # (BN2): var = (1/m) sum_n (X_n - mu)^2, two passes
  rstd = jax.lax.rsqrt(var + eps)  # (BN3): rstd = 1 / sqrt(var + eps)
  Xhat = _xhat(X, mean, rstd)
  out = Xhat * _col(gamma) + _col(beta)  # (BN5): out = Xhat * gamma + beta
  return _unrows(out, x.shape), BatchNormCache(x, mean, rstd, gamma)


def backward(cache: BatchNormCache, dout) -> tuple[Array, Array, Array]:
  """(dx, dgamma, dbeta) from the cache of ``forward`` and dout = dC/dout.

  Args:
    cache: the ``BatchNormCache`` that ``forward`` returned.
    dout: dC/dout, of x's shape.

  Returns:
    dx of x's shape (BN9), dgamma and dbeta of shape (C,), summed over the batch and the
    spatial axes (BN10), (BN11).
  """
  x = _check_cache(cache)
  return _backward(cache, _check_dout(x, dout))


def _backward(cache: BatchNormCache, dout):
  x, mean, rstd, gamma = cache
  X, dOut = _rows(x), _rows(dout)  # (BN0)
  Xhat = _xhat(X, mean, rstd)  # recomputed: the forward step's own operations
  dbeta = jnp.sum(dOut, axis=0)  # (BN11): dbeta = sum over the rows of dOut
  dgamma = jnp.sum(dOut * Xhat, axis=0)  # (BN10): dgamma = sum over the rows of dOut * Xhat
  dXhat = dOut * _col(gamma)  # (BN8): dXhat = dOut * gamma
  mean_dxhat = jnp.mean(dXhat, axis=0, keepdims=True)  # mean_m(dXhat)
  mean_dxhat_xhat = jnp.mean(dXhat * Xhat, axis=0, keepdims=True)  # mean_m(dXhat * Xhat)
  dX = _col(rstd) * (dXhat - mean_dxhat - Xhat * mean_dxhat_xhat)  # (BN9): dX = rstd (dXhat - ...)
  return _unrows(dX, x.shape), dgamma, dbeta


def grads(x, gamma, beta, dout, eps: float = DEFAULT_EPS) -> tuple[Array, Array, Array]:
  """(dx, dgamma, dbeta): ``forward`` then ``backward``, for dout = dC/dout of x's shape.

  >>> import jax.numpy as jnp
  >>> from bpref.layers import batchnorm
  >>> dx, dgamma, dbeta = batchnorm.grads(jnp.ones((2, 3, 4, 4)), jnp.ones(3), jnp.zeros(3),
  ...                                     jnp.ones((2, 3, 4, 4)))
  >>> dx.shape, dgamma.tolist(), dbeta.tolist()
  ((2, 3, 4, 4), [0.0, 0.0, 0.0], [32.0, 32.0, 32.0])
  """
  x, gamma, beta = _check_params(x, gamma, beta)
  dout = _check_dout(x, dout)
  _, cache = _forward(x, gamma, beta, _check_eps(eps))
  return _backward(cache, dout)


# ---------------------------------------------------------------- rounding model

def bounds(cache: BatchNormCache, beta, dout) -> BatchNormBounds:
  """The magnitude M of out, dx, dgamma and dbeta (proofs/batchnorm.md section 6).

  A correct implementation errs by at most c u k M per entry (BN19), k = m + 2 (m = N H W, the
  values of one channel), c u k as ``bpref.tolerance.tolerance(dtype, depth=1, inner=k)`` for
  two implementations that both err. Compute the cache with ``forward`` in float64 from the
  values handed to the implementation; the underflow floor of proofs/tolerance.md (U) is the
  caller's to add.

  >>> import jax.numpy as jnp
  >>> _, cache = forward(jnp.array([[0.], [2.]]), jnp.ones(1), jnp.zeros(1))
  >>> M = bounds(cache, jnp.zeros(1), jnp.array([[1.], [0.]]))
  >>> M.dbeta.tolist(), M.dx.shape
  ([1.0], (2, 1))
  """
  x = _check_cache(cache)
  return _bounds(cache, _check_channel_vector(beta, "beta", x), _check_dout(x, dout))


def _bounds(cache: BatchNormCache, beta, dout) -> BatchNormBounds:
  x, mean, rstd, gamma = cache
  X, dOut = _rows(x), _rows(dout)  # (BN0)
  dx, _, _ = _backward(cache, dout)
  mean, rstd = _col(mean), _col(rstd)
  d = X - mean
  Xhat = d * rstd
  absX, absXhat, absd = jnp.abs(X), jnp.abs(Xhat), jnp.abs(d)
  M_d = absX + jnp.mean(absX, axis=0, keepdims=True)  # (BN12): M_d = |X| + mean_m |X|
  M_var = (jnp.mean(2 * absd * M_d, axis=0, keepdims=True) + jnp.mean(X * X, axis=0, keepdims=True)
           + mean * mean)  # (BN13): M_var = mean_m(2 |d| M_d) + mean_m(X^2) + mu^2
  M_r = rstd * (1 + M_var * rstd * rstd / 2)  # (BN14): M_r = rstd (1 + M_var / (2 (var + eps)))
  M_xhat = M_d * rstd + absd * M_r + absXhat  # (BN15): M_xhat = M_d rstd + |d| M_r + |Xhat|
  M_out = M_xhat * jnp.abs(_col(gamma)) + jnp.abs(_col(beta))  # (BN16): M_out = M_xhat |gamma| + |beta|
  g = dOut * _col(gamma)
  M_g = jnp.abs(dOut) * jnp.abs(_col(gamma))
  m2 = jnp.mean(g * Xhat, axis=0, keepdims=True)
  M_m2 = jnp.mean(M_g * absXhat + jnp.abs(g) * M_xhat, axis=0, keepdims=True)
  M_dx = M_r * jnp.abs(_rows(dx)) / rstd + rstd * (
      M_g + jnp.mean(M_g, axis=0, keepdims=True) + M_xhat * jnp.abs(m2) + absXhat * M_m2)  # (BN17): M_dx
  M_dgamma = jnp.sum(jnp.abs(dOut) * M_xhat, axis=0)  # (BN18): M_dgamma = sum_m |dOut| M_xhat
  M_dbeta = jnp.sum(jnp.abs(dOut), axis=0)  # (BN18): M_dbeta = sum_m |dOut|
  return BatchNormBounds(_unrows(M_out, x.shape), _unrows(M_dx, x.shape), M_dgamma, M_dbeta)
