"""Tolerances from a rounding model, keyed by dtype, normwise per array.

An array computed in floating point with unit roundoff u through a network of
depth L carries a normwise relative error of order c * u * (L + 1) when the
network is well conditioned. Tolerances are never scaled by an array's size.
"""

from __future__ import annotations

import numpy as np

_UNIT_ROUNDOFF = {
    np.dtype(np.float64): 2.0 ** -53,
    np.dtype(np.float32): 2.0 ** -24,
    np.dtype(np.float16): 2.0 ** -11,
}


def unit_roundoff(dtype) -> float:
  """u = eps / 2 of ``dtype`` (bfloat16 included)."""
  dtype = np.dtype(dtype)
  if dtype in _UNIT_ROUNDOFF:
    return _UNIT_ROUNDOFF[dtype]
  return float(np.finfo(dtype).eps) / 2


def normwise_error(actual, expected) -> float:
  """||actual - expected||_F / ||expected||_F (absolute error when expected is 0)."""
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  diff = float(np.linalg.norm((actual - expected).ravel()))
  scale = float(np.linalg.norm(expected.ravel()))
  return diff / scale if scale > 0 else diff


GRADIENT_BOUND = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}
"""Largest normwise relative error accepted on well-conditioned nets (depth <= 4, widths <= 8)."""


def gradient_tolerance(dtype) -> float:
  """The accepted normwise relative error of a gradient array on a well-conditioned net."""
  return GRADIENT_BOUND[np.dtype(dtype)]
