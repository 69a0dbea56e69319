"""Max and average pooling over 2-D windows: the forward steps and their handwritten backward steps.

x has shape (N, C, H, W) (PyTorch's and CS231n's layout). The windows are pool x pool entries of
one channel, one starting every ``stride`` rows and columns, without padding; there are
H_out = (H - pool) // stride + 1 rows of them and W_out = (W - pool) // stride + 1 columns (rows
and columns past the last whole window belong to no window: PyTorch's ``ceil_mode=False``).
Window (i, j) holds x[n, c, i s + a, j s + b] for 0 <= a, b < pool, s = stride
(proofs/pool.md, section 2):

* (MP1) out[n, c, i, j] = max over 0 <= a, b < pool of x[n, c, i s + a, j s + b]

and, from dout = dC/dout of shape (N, C, H_out, W_out), the backward step

* (MP2) (a*, b*) of window (i, j) = the first (a, b) in row-major order (a, then b) with
  x[n, c, i s + a, j s + b] = out[n, c, i, j]                         the tie convention
* (MP3) dx[n, c, p, q] = sum of dout[n, c, i, j] over the windows (i, j) whose chosen maximum
  (MP2) is (p, q) = (i s + a*, j s + b*); 0 where no window chose (p, q)

Ties. Where a window holds its maximum more than once, out is not differentiable there, and each
tied entry's unit vector is a subgradient of the window's max. bpref sends the window's whole
dout to the first tied entry in row-major order, as ``np.argmax`` (CS231n's naive loops), PyTorch's
CPU ``max_pool2d`` and JAX's ``lax.reduce_window`` autodiff do; sending it to every tied entry is
a bug (the window's gradient counted once per tie), and ``jnp.max``'s autodiff, which splits it
evenly among the ties, follows another valid convention (proofs/pool.md, section 2).

Overlapping windows (stride < pool) share entries: an entry that is the chosen maximum of several
windows receives the sum of their dout (MP3), the chain rule for a value used several times.

The forward step saves x, pool and stride (``MaxPoolCache``); the backward step recomputes the
windows from x with the forward step's own slices, so it sees the same maxima bit for bit.

Average pooling (``avg_forward``, ``avg_backward``, ``avg_grads``) takes the same windows
(proofs/pool.md, section 5):

* (AP1) out[n, c, i, j] = (1 / pool^2) sum over 0 <= a, b < pool of x[n, c, i s + a, j s + b]
* (AP2) dx[n, c, p, q] = (1 / pool^2) sum of dout[n, c, i, j] over the windows (i, j) that hold
  (p, q); 0 where no window holds it

(PyTorch's ``avg_pool2d`` without padding, where ``count_include_pad`` changes nothing). Its
backward step needs no value of x, only the windows: ``AvgPoolCache`` keeps x's shape.

No JAX autodiff is used. ``forward``, ``backward``, ``grads`` and their ``avg_`` forms check
their arguments before anything is traced; ``_forward`` and ``_backward`` (``_avg_forward``,
``_avg_backward``) are the unchecked bodies.
"""

from __future__ import annotations

import dataclasses
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from bpref.validation import describe, floating_array, shaped_like

Array = jax.Array

LAYER = "maxpool2d"
AVG_LAYER = "avgpool2d"


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class MaxPoolCache:
  """What the forward step saves for the backward step.

  Attributes:
    x: the input, shape (N, C, H, W).
    pool: the window's side (static: part of the tree's structure, not a leaf).
    stride: the step between windows (static).
  """
  x: Array
  pool: int
  stride: int

  def tree_flatten(self):
    return (self.x,), (self.pool, self.stride)

  @classmethod
  def tree_unflatten(cls, config, children):
    return cls(children[0], *config)


def output_shape(shape, pool: int, stride: int) -> tuple:
  """(N, C, H_out, W_out) of the pooled output of an input of ``shape`` (N, C, H, W)."""
  N, C, H, W = shape
  return (N, C, (H - pool) // stride + 1, (W - pool) // stride + 1)


# ---------------------------------------------------------------- checks

def _check_size(n, name: str, layer: str = LAYER) -> int:
  """pool or stride as a Python int >= 1: configuration, static under jax.jit."""
  if isinstance(n, (bool, np.bool_)) or not isinstance(n, (numbers.Integral, np.integer)):
    raise TypeError(f"{layer}: {name} must be a Python integer, the layer's configuration; got "
                    f"{type(n).__name__} (under jax.jit mark it static: static_argnames='{name}')")
  if n < 1:
    raise ValueError(f"{layer}: {name} must be at least 1; got {n}")
  return int(n)


def _check_x(x, pool: int, what: str = "x", layer: str = LAYER):
  """x as an array of a floating dtype and shape (N, C, H, W) with H, W >= pool."""
  x = floating_array(x, what, layer=layer)
  if x.ndim != 4:
    raise ValueError(f"{layer}: {what} must have shape (N, C, H, W); got {describe(x)} (one image: "
                     f"x[None, None] or x[None]; for (N, H, W, C) use x.transpose(0, 3, 1, 2))")
  H, W = x.shape[2:]
  if H < pool or W < pool:
    raise ValueError(f"{layer}: {what} of shape {tuple(x.shape)} is smaller than one {pool} x {pool} "
                     f"window (H = {H}, W = {W}); pool needs H >= {pool} and W >= {pool} (no padding)")
  return x


def _check_dout(x, dout, pool: int, stride: int, layer: str = LAYER):
  dout = floating_array(dout, "dout", layer=layer)
  want = output_shape(x.shape, pool, stride)
  return shaped_like(dout, want, x, layer=layer, name="dout", what="dout = dC/dout",
                     must=f"the shape of the pooled output, {want} for x of shape "
                     f"{tuple(x.shape)} with pool {pool} and stride {stride}")


def _check_cache(cache):
  if not isinstance(cache, MaxPoolCache):
    raise TypeError(f"{LAYER}: cache must be the MaxPoolCache(x, pool, stride) that "
                    f"pool.forward returned; got {type(cache).__name__}")
  pool, stride = _check_size(cache.pool, "pool"), _check_size(cache.stride, "stride")
  return _check_x(cache.x, pool, "cache.x"), pool, stride


# ---------------------------------------------------------------- forward and backward

def _entries(x, a: int, b: int, stride: int, out_h: int, out_w: int):
  """Entry (a, b) of every window: x[n, c, i s + a, j s + b], shape (N, C, H_out, W_out)."""
  N, C = x.shape[:2]
  return jax.lax.slice(x, (0, 0, a, b), (N, C, a + (out_h - 1) * stride + 1,
                                         b + (out_w - 1) * stride + 1), (1, 1, stride, stride))


def _windows(x, pool: int, stride: int):
  """Every window's entries in row-major order (a, then b): shape (pool^2, N, C, H_out, W_out)."""
  _, _, out_h, out_w = output_shape(x.shape, pool, stride)
  return jnp.stack([_entries(x, a, b, stride, out_h, out_w)
                    for a in range(pool) for b in range(pool)])


def _placed(v, a: int, b: int, stride: int, shape):
  """v of shape (N, C, H_out, W_out) put at x[n, c, i s + a, j s + b], zeros elsewhere: the
  transpose of ``_entries``, a padding (interior stride - 1) that adds nothing."""
  _, _, H, W = shape
  out_h, out_w = v.shape[2:]
  zero = jnp.zeros((), v.dtype)
  return jax.lax.pad(v, zero, ((0, 0, 0), (0, 0, 0),
                               (a, H - a - (out_h - 1) * stride - 1, stride - 1),
                               (b, W - b - (out_w - 1) * stride - 1, stride - 1)))


def forward(x, pool: int = 2, stride: int = 2) -> tuple[Array, MaxPoolCache]:
  """out[n, c, i, j] = the largest entry of window (i, j) of x (MP1), and the cache.

  Args:
    x: the input, shape (N, C, H, W), H and W at least ``pool``.
    pool: the side of the square windows; a Python int (static under jax.jit).
    stride: the step between windows; a Python int. stride < pool overlaps the windows.

  Returns:
    (out, cache): out of shape (N, C, H_out, W_out) and x's dtype, ``MaxPoolCache(x, pool, stride)``.

  >>> import jax.numpy as jnp
  >>> from bpref.layers import pool
  >>> x = jnp.array([[[[1., 2., 0., 0.], [3., 4., 0., 5.], [0., 0., 1., 1.], [6., 0., 1., 1.]]]])
  >>> out, cache = pool.forward(x, 2, 2)
  >>> out.tolist()
  [[[[4.0, 5.0], [6.0, 1.0]]]]
  """
  pool, stride = _check_size(pool, "pool"), _check_size(stride, "stride")
  return _forward(_check_x(x, pool), pool, stride)


def _forward(x, pool: int, stride: int):
  out = jnp.max(_windows(x, pool, stride), axis=0)  # (MP1): out = max over the window's entries
  return out, MaxPoolCache(x, pool, stride)


def backward(cache: MaxPoolCache, dout) -> Array:
  """dx from the cache of ``forward`` and dout = dC/dout (MP2), (MP3).

  Args:
    cache: the ``MaxPoolCache`` that ``forward`` returned.
    dout: dC/dout, shape (N, C, H_out, W_out), of x's dtype.

  Returns:
    dx of x's shape and dtype: each window's dout at its first maximum in row-major order,
    summed where windows overlap; 0 at every entry that no window chose.

  >>> import jax.numpy as jnp
  >>> from bpref.layers import pool
  >>> x = jnp.array([[[[1., 1.], [0., 1.]]]])  # three tied maxima: the first gets dout
  >>> out, cache = pool.forward(x, 2, 2)
  >>> pool.backward(cache, jnp.array([[[[5.]]]])).tolist()
  [[[[5.0, 0.0], [0.0, 0.0]]]]
  """
  x, pool, stride = _check_cache(cache)
  return _backward(cache, _check_dout(x, dout, pool, stride))


def _backward(cache: MaxPoolCache, dout):
  x, pool, stride = cache.x, cache.pool, cache.stride
  first = jnp.argmax(_windows(x, pool, stride), axis=0)  # (MP2): the first maximum, row-major
  dx = jnp.zeros_like(x)
  for k in range(pool * pool):
    a, b = divmod(k, pool)
    chosen = jnp.where(first == k, dout, jnp.zeros((), dout.dtype))  # the windows that chose (a, b)
    dx = dx + _placed(chosen, a, b, stride, x.shape)  # (MP3): dx = sum of dout over those windows
  return dx


def grads(x, dout, pool: int = 2, stride: int = 2) -> Array:
  """dx: ``forward`` then ``backward``, for dout = dC/dout of the pooled output's shape.

  >>> import jax.numpy as jnp
  >>> from bpref.layers import pool
  >>> x = jnp.array([[[[0., 2., 1.], [1., 0., 2.], [0., 1., 0.]]]])  # stride 1: windows overlap
  >>> pool.grads(x, jnp.ones((1, 1, 2, 2)), pool=2, stride=1).tolist()  # x[0, 0, 0, 1] twice
  [[[[0.0, 2.0, 0.0], [1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]]]
  """
  pool, stride = _check_size(pool, "pool"), _check_size(stride, "stride")
  x = _check_x(x, pool)
  dout = _check_dout(x, dout, pool, stride)
  _, cache = _forward(x, pool, stride)
  return _backward(cache, dout)


# ---------------------------------------------------------------- average pooling

@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class AvgPoolCache:
  """What the average pooling's forward step saves for its backward step: the windows only.

  Attributes:
    shape: x's shape (N, C, H, W); pool, stride: the windows (all static: the tree has no leaf).
  """
  shape: tuple
  pool: int
  stride: int

  def tree_flatten(self):
    return (), (self.shape, self.pool, self.stride)

  @classmethod
  def tree_unflatten(cls, config, children):
    return cls(*config)


def avg_forward(x, pool: int = 2, stride: int = 2) -> tuple[Array, AvgPoolCache]:
  """out[n, c, i, j] = the mean of window (i, j) of x (AP1), and the cache.

  Args:
    x: the input, shape (N, C, H, W), H and W at least ``pool``.
    pool: the side of the square windows; a Python int (static under jax.jit).
    stride: the step between windows; a Python int. stride < pool overlaps the windows.

  Returns:
    (out, cache): out of shape (N, C, H_out, W_out) and x's dtype,
    ``AvgPoolCache(x.shape, pool, stride)``.

  >>> import jax.numpy as jnp
  >>> from bpref.layers import pool
  >>> x = jnp.array([[[[1., 2., 0., 0.], [3., 4., 0., 8.], [0., 0., 1., 1.], [6., 2., 1., 1.]]]])
  >>> out, cache = pool.avg_forward(x, 2, 2)
  >>> out.tolist()
  [[[[2.5, 2.0], [2.0, 1.0]]]]
  """
  pool = _check_size(pool, "pool", AVG_LAYER)
  stride = _check_size(stride, "stride", AVG_LAYER)
  return _avg_forward(_check_x(x, pool, layer=AVG_LAYER), pool, stride)


def _avg_forward(x, pool: int, stride: int):
  total = jnp.sum(_windows(x, pool, stride), axis=0)  # the window's sum, then (AP1): / pool^2
  return total / (pool * pool), AvgPoolCache(tuple(x.shape), pool, stride)


def avg_backward(cache: AvgPoolCache, dout) -> Array:
  """dx from the cache of ``avg_forward`` and dout = dC/dout (AP2).

  Args:
    cache: the ``AvgPoolCache`` that ``avg_forward`` returned.
    dout: dC/dout, shape (N, C, H_out, W_out), of x's dtype.

  Returns:
    dx of x's shape and dout's dtype: each window's dout / pool^2 at every entry of the window,
    summed where windows overlap; 0 at every entry that no window holds.

  >>> import jax.numpy as jnp
  >>> from bpref.layers import pool
  >>> out, cache = pool.avg_forward(jnp.zeros((1, 1, 3, 3)), 2, 1)  # 4 overlapping windows
  >>> pool.avg_backward(cache, jnp.full((1, 1, 2, 2), 4.)).tolist()  # the centre is in all 4
  [[[[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]]]
  """
  if not isinstance(cache, AvgPoolCache):
    raise TypeError(f"{AVG_LAYER}: cache must be the AvgPoolCache(shape, pool, stride) that "
                    f"pool.avg_forward returned; got {type(cache).__name__}")
  pool = _check_size(cache.pool, "pool", AVG_LAYER)
  stride = _check_size(cache.stride, "stride", AVG_LAYER)
  shape = cache.shape
  if not (isinstance(shape, tuple) and len(shape) == 4 and
          all(isinstance(n, (numbers.Integral, np.integer)) and n >= 1 for n in shape)):
    raise TypeError(f"{AVG_LAYER}: cache.shape must be x's shape (N, C, H, W); got {shape!r}")
  if shape[2] < pool or shape[3] < pool:
    raise ValueError(f"{AVG_LAYER}: cache.shape {shape} is smaller than one {pool} x {pool} window")
  dout = floating_array(dout, "dout", layer=AVG_LAYER)
  want = output_shape(shape, pool, stride)
  if tuple(dout.shape) != want:
    raise ValueError(f"{AVG_LAYER}: dout = dC/dout must have the shape of the pooled output, {want} "
                     f"for x of shape {shape} with pool {pool} and stride {stride}; got "
                     f"{describe(dout)}")
  return _avg_backward(cache, dout)


def _avg_backward(cache: AvgPoolCache, dout):
  pool, stride = cache.pool, cache.stride
  share = dout / (pool * pool)  # (AP2): each entry of a window gets dout / pool^2
  dx = jnp.zeros(cache.shape, dout.dtype)
  for a in range(pool):
    for b in range(pool):
      dx = dx + _placed(share, a, b, stride, cache.shape)  # summed over the windows that hold it
  return dx


def avg_grads(x, dout, pool: int = 2, stride: int = 2) -> Array:
  """dx: ``avg_forward`` then ``avg_backward``, for dout = dC/dout of the pooled output's shape.

  >>> import jax.numpy as jnp
  >>> from bpref.layers import pool
  >>> pool.avg_grads(jnp.zeros((1, 1, 3, 2)), jnp.ones((1, 1, 1, 1)), pool=2).tolist()  # row 3: no window
  [[[[0.25, 0.25], [0.25, 0.25], [0.0, 0.0]]]]
  """
  pool = _check_size(pool, "pool", AVG_LAYER)
  stride = _check_size(stride, "stride", AVG_LAYER)
  x = _check_x(x, pool, layer=AVG_LAYER)
  dout = _check_dout(x, dout, pool, stride, layer=AVG_LAYER)
  _, cache = _avg_forward(x, pool, stride)
  return _avg_backward(cache, dout)
