"""A 2-D convolution layer (CS231n's conv_forward_naive): the forward step and its handwritten
backward step.

x holds N images of C channels, H x W pixels; w holds F filters of C channels, HH x WW taps;
b one bias per filter. The layer is a cross-correlation, as in CS231n, PyTorch and XLA: the
kernel is not flipped. With stride S and zero padding P (proofs/conv.md, section 2):

* (CV1) xp = x padded with P zeros on each side of H and W          (N, C, H + 2P, W + 2P)
* (CV2) H' = 1 + (H + 2P - HH) // S,  W' = 1 + (W + 2P - WW) // S
* (CV3) out[n, f, i, j] = b[f] + sum_{c, p, q} w[f, c, p, q] xp[n, c, S i + p, S j + q]

When S does not divide H + 2P - HH, the last (H + 2P - HH) mod S rows of xp are read by no
window (likewise the columns): the forward step ignores them and their gradient is exactly 0.
From dout = dC/dout of shape (N, F, H', W') the backward step is

* (CV4) db[f] = sum_{n, i, j} dout[n, f, i, j]
* (CV5) dw[f, c, p, q] = sum_{n, i, j} dout[n, f, i, j] xp[n, c, S i + p, S j + q]
* (CV6) dpatch[n, c, i, j, p, q] = sum_f dout[n, f, i, j] w[f, c, p, q]
* (CV7) dxp[n, c, r, s] = sum of dpatch[n, c, i, j, p, q] over every (i, p, j, q) with
  S i + p = r and S j + q = s: the windows scatter-added back where they were read (col2im);
  overlapping windows (S < HH) add up
* (CV8) dx = dxp[:, :, P:P + H, P:P + W]: the padding's gradient dropped

(CV5) is a correlation of xp with dout, (CV6)-(CV8) the transposed correlation: written as a
correlation of the zero-dilated dout with the kernel, it needs the kernel rotated by 180
degrees. Both read the windows by the same index tables as the forward step (im2col by
gathering); nothing is flipped in the code.

The stages are public and read like ``bpref.backprop``:

  out, cache = forward(x, w, b, stride, pad)    # (CV1)-(CV3)
  dx, dw, db = backward(cache, dout)           # (CV4)-(CV8)
  dx, dw, db = grads(x, w, b, dout, stride, pad)

The layout is NCHW and w is (F, C, HH, WW), PyTorch's; an NHWC array is x.transpose(0, 3, 1, 2).
No JAX autodiff is used. ``forward``, ``backward`` and ``grads`` check their arguments before
anything is traced; stride and pad are configuration (Python ints, static under ``jax.jit``).
"""

from __future__ import annotations

import dataclasses
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from bpref.network import DEFAULT_PRECISION
from bpref.validation import describe, floating_array, same_dtype, shaped_like

Array = jax.Array

LAYER = "conv2d"


@dataclasses.dataclass(frozen=True)
class ConvCache:
  """What the forward step saves for the backward step: CS231n's (x, w, b, conv_param) less b.

  Attributes:
    x: the input, shape (N, C, H, W) (unpadded: the backward step pads it again, exactly).
    w: the filters, shape (F, C, HH, WW).
    stride: S, a Python int (static: not traced under ``jax.jit``).
    pad: P, a Python int (static).
  """
  x: Array
  w: Array
  stride: int
  pad: int


jax.tree_util.register_dataclass(ConvCache, data_fields=["x", "w"], meta_fields=["stride", "pad"])


# ---------------------------------------------------------------- checks

def _array(v, what: str):
  return floating_array(v, what, layer=LAYER)  # v as an array of a floating dtype, else a TypeError


def _check_int(v, name: str, least: int) -> int:
  if isinstance(v, (bool, np.bool_, jax.Array)) or not isinstance(
      v, (numbers.Integral, np.integer)):
    raise TypeError(f"{LAYER}: {name} must be a Python int, the layer's configuration; got "
                    f"{type(v).__name__} (under jax.jit mark it static: static_argnames="
                    f"('stride', 'pad'))")
  if v < least:
    raise ValueError(f"{LAYER}: {name} must be an integer >= {least}; got {v}")
  return int(v)


def output_shape(x_shape, w_shape, stride: int = 1, pad: int = 0) -> tuple:
  """(N, F, H', W') of out for x of shape (N, C, H, W) and w of shape (F, C, HH, WW) (CV2).

  >>> output_shape((2, 3, 5, 4), (6, 3, 3, 3), stride=2, pad=1)
  (2, 6, 3, 2)
  """
  N, _, H, W = x_shape
  F, _, HH, WW = w_shape
  return (N, F, 1 + (H + 2 * pad - HH) // stride,  # (CV2): H' = 1 + (H + 2P - HH) // S
          1 + (W + 2 * pad - WW) // stride)


def _check_params(x, w, b, stride, pad):
  """(x, w, b, stride, pad) checked: x (N, C, H, W), w (F, C, HH, WW), b (F,), one dtype, the
  filter no larger than the padded input."""
  x, w, b = _array(x, "x"), _array(w, "w"), _array(b, "b")
  stride, pad = _check_int(stride, "stride", 1), _check_int(pad, "pad", 0)
  if x.ndim != 4 or min(x.shape) < 1:
    raise ValueError(f"{LAYER}: x must have shape (N, C, H, W), NCHW with every size >= 1 (an "
                     f"NHWC array is x.transpose(0, 3, 1, 2)); got {describe(x)}")
  if w.ndim != 4 or min(w.shape) < 1:
    raise ValueError(f"{LAYER}: w must have shape (F, C, HH, WW), one (C, HH, WW) filter per "
                     f"output channel, every size >= 1; got {describe(w)}")
  N, C, H, W = x.shape
  F, Cw, HH, WW = w.shape
  if Cw != C:
    raise ValueError(f"{LAYER}: w has C = {Cw} input channels (shape {tuple(w.shape)}) but x has "
                     f"C = {C} (shape {tuple(x.shape)}); w must be (F, C, HH, WW)")
  if tuple(b.shape) != (F,):
    raise ValueError(f"{LAYER}: b must have shape ({F},), one entry per filter of w (shape "
                     f"{tuple(w.shape)}); got {describe(b)}")
  for name, v in (("w", w), ("b", b)):
    same_dtype(v, x, name, layer=LAYER)
  for axis, size, k in (("H", H, HH), ("W", W, WW)):
    if size + 2 * pad < k:
      raise ValueError(f"{LAYER}: the filter is larger than the padded input along {axis}: "
                       f"{k} taps but {axis} + 2 pad = {size} + 2 * {pad} = {size + 2 * pad} "
                       f"(x {tuple(x.shape)}, w {tuple(w.shape)}); pad more or use a smaller "
                       "filter")
  return x, w, b, stride, pad


def _check_cache(cache) -> tuple:
  if not isinstance(cache, ConvCache):
    raise TypeError(f"{LAYER}: cache must be the ConvCache(x, w, stride, pad) that conv.forward "
                    f"returned; got {type(cache).__name__}")
  x, w = _array(cache.x, "cache.x"), _array(cache.w, "cache.w")
  if x.ndim != 4 or w.ndim != 4 or x.shape[1] != w.shape[1]:
    raise ValueError(f"{LAYER}: cache.x must be (N, C, H, W) and cache.w (F, C, HH, WW); got "
                     f"{describe(x)} and {describe(w)}")
  if w.dtype != x.dtype:
    raise TypeError(f"{LAYER}: cache.w has dtype {w.dtype} but cache.x has {x.dtype}")
  return x, w


def _check_dout(x, w, stride, pad, dout):
  dout = _array(dout, "dout")
  want = output_shape(x.shape, w.shape, stride, pad)
  return shaped_like(dout, want, x, layer=LAYER, name="dout", what="dout = dC/dout",
                     must=f"the shape of out, (N, F, H', W') = {want} for x {tuple(x.shape)}, "
                     f"w {tuple(w.shape)}, stride {stride}, pad {pad}")


# ---------------------------------------------------------------- the windows

def _windows(taps: int, out: int, stride: int) -> np.ndarray:
  """The (out, taps) table of padded rows each window reads: row S i + p for window i, tap p."""
  return stride * np.arange(out)[:, None] + np.arange(taps)[None, :]


def _tables(x_shape, w_shape, stride: int, pad: int):
  """Index tables for xp[:, :, rows, cols] -> (N, C, H', W', HH, WW) (static NumPy arrays)."""
  _, _, Ho, Wo = output_shape(x_shape, w_shape, stride, pad)
  rows = _windows(w_shape[2], Ho, stride)
  cols = _windows(w_shape[3], Wo, stride)
  return rows[:, None, :, None], cols[None, :, None, :]


def _padded(x, pad: int):
  return jnp.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))  # (CV1): xp = x with P zeros around


def _patches(x, w_shape, stride: int, pad: int):
  """patch[n, c, i, j, p, q] = xp[n, c, S i + p, S j + q] (im2col, by gathering)."""
  rows, cols = _tables(x.shape, w_shape, stride, pad)
  return _padded(x, pad)[:, :, rows, cols]


# ---------------------------------------------------------------- forward and backward

def forward(x, w, b, stride: int = 1, pad: int = 0) -> tuple[Array, ConvCache]:
  """out[n, f] = b[f] + sum_c xp[n, c] correlated with w[f, c], with stride S and padding P.

  Args:
    x: the input, shape (N, C, H, W).
    w: the filters, shape (F, C, HH, WW); not flipped (cross-correlation, as PyTorch's conv2d).
    b: the biases, shape (F,).
    stride: S >= 1, the step between windows along H and W; a Python int.
    pad: P >= 0, the zeros added on each side of H and W; a Python int.

  Returns:
    (out, cache): out of shape (N, F, H', W') with H' = 1 + (H + 2P - HH) // S (CV2) and x's
    dtype, and ``ConvCache(x, w, stride, pad)``.

  >>> import numpy as np
  >>> from bpref.layers import conv
  >>> x = np.arange(9.0).reshape(1, 1, 3, 3)
  >>> out, cache = conv.forward(x, np.ones((1, 1, 2, 2)), np.zeros(1))
  >>> np.asarray(out).tolist()
  [[[[8.0, 12.0], [20.0, 24.0]]]]
  """
  x, w, b, stride, pad = _check_params(x, w, b, stride, pad)
  return _forward(x, w, b, stride, pad)


def _forward(x, w, b, stride: int, pad: int):
  patch = _patches(x, w.shape, stride, pad)  # (CV1), (CV2): the windows of xp
  out = jnp.einsum("nchwpq,fcpq->nfhw", patch, w, precision=DEFAULT_PRECISION) \
      + jnp.reshape(b, (1, -1, 1, 1))  # (CV3): out = b + sum_{c,p,q} w xp[S i + p, S j + q]
  return out, ConvCache(x, w, stride, pad)


def backward(cache: ConvCache, dout) -> tuple[Array, Array, Array]:
  """(dx, dw, db) from the cache of ``forward`` and dout = dC/dout.

  Args:
    cache: the ``ConvCache`` that ``forward`` returned.
    dout: dC/dout, of out's shape (N, F, H', W').

  Returns:
    dx of x's shape (CV8), dw of w's shape (CV5), db of shape (F,) (CV4).
  """
  x, w = _check_cache(cache)
  stride, pad = _check_int(cache.stride, "cache.stride", 1), _check_int(cache.pad, "cache.pad", 0)
  return _backward(cache, _check_dout(x, w, stride, pad, dout))


def _backward(cache: ConvCache, dout):
  x, w, stride, pad = cache.x, cache.w, cache.stride, cache.pad
  H, W = x.shape[2], x.shape[3]
  patch = _patches(x, w.shape, stride, pad)  # recomputed: the forward step's own windows
  db = jnp.sum(dout, axis=(0, 2, 3))  # (CV4): db[f] = sum_{n,i,j} dout[n, f, i, j]
  dw = jnp.einsum("nfhw,nchwpq->fcpq", dout, patch,
                  precision=DEFAULT_PRECISION)  # (CV5): dw = sum_{n,i,j} dout xp[S i + p, S j + q]
  dpatch = jnp.einsum("nfhw,fcpq->nchwpq", dout, w,
                      precision=DEFAULT_PRECISION)  # (CV6): dpatch = sum_f dout[n, f, i, j] w[f]
  rows, cols = _tables(x.shape, w.shape, stride, pad)
  dxp = jnp.zeros(x.shape[:2] + (H + 2 * pad, W + 2 * pad), x.dtype).at[:, :, rows, cols].add(
      dpatch)  # (CV7): dxp[S i + p, S j + q] += dpatch, every window added where it was read
  dx = dxp[:, :, pad:pad + H, pad:pad + W]  # (CV8): dx = dxp without the padding
  return dx, dw, db


def grads(x, w, b, dout, stride: int = 1, pad: int = 0) -> tuple[Array, Array, Array]:
  """(dx, dw, db): ``forward`` then ``backward``, for dout = dC/dout of out's shape.

  >>> import numpy as np
  >>> from bpref.layers import conv
  >>> dx, dw, db = conv.grads(np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)), np.zeros(1),
  ...                         np.ones((1, 1, 2, 2)))
  >>> np.asarray(dx)[0, 0].tolist(), np.asarray(db).tolist()
  ([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], [4.0])
  """
  x, w, b, stride, pad = _check_params(x, w, b, stride, pad)
  dout = _check_dout(x, w, stride, pad, dout)
  _, cache = _forward(x, w, b, stride, pad)
  return _backward(cache, dout)
