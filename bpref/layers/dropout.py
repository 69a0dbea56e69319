"""Inverted dropout with a given mask: the forward step and its handwritten backward step.

Training-time dropout keeps each unit with probability 1 - p and scales what it keeps by
1 / (1 - p), so that the output's expectation is x ("inverted" dropout, PyTorch's
``nn.Dropout`` and CS231n's). bpref draws nothing: the 0/1 mask m is an input, the one the
forward step's random draw produced, and p is the drop probability (proofs/pool.md, section 3):

* (DO1) out = x * m / (1 - p)

and, from dout = dC/dout of x's shape, the backward step

* (DO2) dx = dout * m / (1 - p)

(DO2) uses the forward step's own mask: a unit the forward step dropped (m = 0) gets an exact 0,
a kept unit gets dout / (1 - p). The backward step needs no x, so there is no cache: the mask
and p are what it needs, and the caller holds both. At test time (no dropout) the layer is the
identity; that is p = 0 with a mask of ones, where both steps return their input.

The mask may be boolean or of x's floating dtype, with entries 0 and 1 only (checked where it
is concrete; a traced mask cannot be). CS231n's mask is pre-scaled, (rand < q) / q, and its p
is the keep probability q = 1 - p of this module: pass ``mask != 0`` and ``p = 1 - q``.

No JAX autodiff is used. ``forward``, ``backward`` and ``grads`` check their arguments before
anything is traced; ``_forward`` and ``_backward`` are the unchecked bodies.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from bpref.validation import as_array, describe, same_dtype

Array = jax.Array

LAYER = "dropout"


# ---------------------------------------------------------------- checks

def _check_x(x, what: str = "x"):
  x = as_array(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{LAYER}: {what} must have a floating dtype; got {describe(x)}")
  return x


def _check_p(p) -> float:
  """p as a Python float in [0, 1), given as configuration (not a traced array)."""
  if isinstance(p, (jax.Array, bool, np.bool_)) or not isinstance(
      p, (numbers.Real, np.floating, np.integer)):
    raise TypeError(f"{LAYER}: p must be a Python or NumPy number, the drop probability; got "
                    f"{type(p).__name__} (under jax.jit mark it static: static_argnames='p')")
  p = float(p)
  if not (math.isfinite(p) and 0 <= p < 1):
    raise ValueError(f"{LAYER}: p, the probability of dropping a unit, must lie in [0, 1); got {p} "
                     "(p = 1 drops every unit and 1 / (1 - p) is infinite; for CS231n's keep "
                     "probability q pass p = 1 - q)")
  return p


def _check_mask(mask, x):
  """mask as an array of x's shape, boolean or of x's dtype, with entries 0 and 1 (checked where
  concrete)."""
  mask = as_array(mask)
  if tuple(mask.shape) != tuple(x.shape):
    raise ValueError(f"{LAYER}: mask must have the shape of x, {tuple(x.shape)}, one 0 or 1 per "
                     f"unit; got {describe(mask)}")
  if mask.dtype != jnp.bool_ and mask.dtype != x.dtype:
    raise TypeError(f"{LAYER}: mask must be boolean or of x's dtype {x.dtype}; got {describe(mask)} "
                    f"(cast it: mask.astype(bool))")
  if mask.dtype != jnp.bool_ and not isinstance(mask, jax.core.Tracer):
    values = np.asarray(mask)
    bad = (values != 0) & (values != 1)
    if bad.any():
      where = tuple(int(i) for i in np.argwhere(bad)[0])
      raise ValueError(f"{LAYER}: mask must hold 0 (dropped) or 1 (kept) only; mask{list(where)} = "
                       f"{values[where]!r}. A mask already scaled by 1 / (1 - p), as CS231n's "
                       "(rand < q) / q, is not one: pass mask != 0")
  return mask


def _check_dout(x, dout):
  dout = _check_x(dout, "dout")
  if tuple(dout.shape) != tuple(x.shape):
    raise ValueError(f"{LAYER}: dout = dC/dout must have the shape of the mask and of x, "
                     f"{tuple(x.shape)}; got {describe(dout)}")
  return dout


def _kept(mask, dtype):
  # the mask as 0.0 and 1.0 of the given dtype (a bool mask converted exactly)
  return mask.astype(dtype)


# ---------------------------------------------------------------- forward and backward

def forward(x, mask, p: float) -> Array:
  """out = x * mask / (1 - p) (DO1).

  Args:
    x: the input, any shape.
    mask: 1 where the unit is kept, 0 where it is dropped; x's shape, boolean or x's dtype.
    p: the probability of dropping a unit, in [0, 1); a Python number.

  Returns:
    out, of x's shape and dtype.

  >>> import jax.numpy as jnp
  >>> from bpref.layers import dropout
  >>> dropout.forward(jnp.array([1., 2., 3., 4.]), jnp.array([True, False, True, True]), 0.5).tolist()
  [2.0, 0.0, 6.0, 8.0]
  """
  x = _check_x(x)
  return _forward(x, _check_mask(mask, x), _check_p(p))


def _forward(x, mask, p: float):
  return x * _kept(mask, x.dtype) * (1.0 / (1.0 - p))  # (DO1): out = x * m / (1 - p)


def backward(mask, p: float, dout) -> Array:
  """dx = dout * mask / (1 - p) (DO2), with the forward step's mask and p.

  Args:
    mask: the forward step's mask, boolean or of dout's dtype, dout's shape.
    p: the forward step's drop probability, in [0, 1).
    dout: dC/dout, of the forward step's output shape.

  Returns:
    dx of dout's shape and dtype: exactly 0 at every dropped unit.

  >>> import jax.numpy as jnp
  >>> from bpref.layers import dropout
  >>> dropout.backward(jnp.array([1., 0.]), 0.75, jnp.array([1., 1.])).tolist()
  [4.0, 0.0]
  """
  dout = _check_x(dout, "dout")
  return _backward(_check_mask(mask, dout), _check_p(p), dout)


def _backward(mask, p: float, dout):
  return dout * _kept(mask, dout.dtype) * (1.0 / (1.0 - p))  # (DO2): dx = dout * m / (1 - p)


def grads(x, mask, p: float, dout) -> Array:
  """dx: the forward step's arguments checked, then ``backward`` (which needs no x).

  >>> import jax.numpy as jnp
  >>> from bpref.layers import dropout
  >>> dropout.grads(jnp.ones(3), jnp.array([0., 1., 1.]), 0.0, jnp.array([5., 6., 7.])).tolist()
  [0.0, 6.0, 7.0]
  """
  x = _check_x(x)
  mask = _check_mask(mask, x)
  p = _check_p(p)
  dout = _check_dout(x, dout)
  same_dtype(dout, x, "dout", layer=LAYER)
  return _backward(mask, p, dout)
