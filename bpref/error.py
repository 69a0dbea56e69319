"""How far an array is from the truth: the error measures the checks hold to a tolerance.

* ``normwise_error``: ||X - X_true||_F / ||M||_F, M a bound on the terms that were summed
  into X (the oracle's magnitude bound M_X, ``bpref verify``'s bounds) or X_true itself.
  Rounding errors scale with M, not with a result that may have cancelled, so a correct
  program stays within the rounding model's tol however the terms cancel (proofs/tolerance.md).
* ``max_norm_error``: ||X - X_true||_inf / ||X_true||_inf, the measure the rounding model (T)
  of ``bpref.tolerance`` is stated in: one coordinate off by a relative e at X's largest entry
  shows as e, however many entries X has.
* ``worst_error``: the largest ``max_norm_error`` over the arrays of two trees.

Each is absolute where its scale is 0. The exact referee measures against mpmath values with
its own ``bpref.witnesses.referee.error`` (``max_norm_error`` without rounding the exact
array to float64 first); the op oracle's ``bpref.oracle.ops.record.error`` is
``normwise_error`` with both norms rescaled by max |M| against overflow.

>>> import numpy as np
>>> normwise_error(np.array([3.0, 4.0]), np.zeros(2), np.array([0.0, 10.0]))
0.5
>>> max_norm_error(np.array([1.0, 2.002]), np.array([1.0, 2.0])) < 1.001e-3
True
"""

from __future__ import annotations

import math

import jax
import numpy as np


def normwise_error(actual, expected, bound=None) -> float:
  """||actual - expected||_F / ||bound||_F, ``bound`` defaulting to ``expected``.

  Args:
    actual: the array checked, any shape.
    expected: the true array, the same shape.
    bound: M, the same shape: a bound on the size of the terms summed into each entry
      (the oracle's M_X); None: ``expected`` (the relative error ||X - X_true|| / ||X_true||).

  Returns the absolute error ||actual - expected||_F where ||bound||_F is 0. Both arrays are
  compared in float64, both norms taken after scaling by the power of 2 nearest max |bound|
  from below (exact), so that entries near 1e200 do not overflow a sum of squares and entries
  near 1e-200 do not underflow it.
  """
  expected = np.asarray(expected, np.float64)
  diff = (np.asarray(actual, np.float64) - expected).ravel()
  bound = np.abs(np.asarray(expected if bound is None else bound, np.float64).ravel())
  top = float(np.max(bound)) if bound.size else 0.0
  if not (top > 0 and math.isfinite(top)):
    return float(np.linalg.norm(diff))
  step = math.ldexp(1.0, -math.frexp(top)[1])  # 2^-e with top < 2^e: an exact rescaling
  return float(np.linalg.norm(diff * step)) / float(np.linalg.norm(bound * step))


def max_norm_error(actual, expected) -> float:
  """||actual - expected||_inf / ||expected||_inf, the error measure of (T).

  Absolute when expected is all zero; ``inf`` when actual has a non-finite
  entry or a different shape. Both arrays are compared in float64.
  """
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  if actual.shape != expected.shape or not np.all(np.isfinite(actual)):
    return math.inf
  if actual.size == 0:
    return 0.0
  diff = float(np.max(np.abs(actual - expected)))
  scale = float(np.max(np.abs(expected)))
  return diff / scale if scale > 0 else diff


def worst_error(actual, expected) -> float:
  """The largest ``max_norm_error`` over the leaves of two trees of the same structure
  (``inf`` where the structures differ)."""
  leaves_a, tree_a = jax.tree_util.tree_flatten(actual)
  leaves_e, tree_e = jax.tree_util.tree_flatten(expected)
  if tree_a != tree_e:
    return math.inf
  return max((max_norm_error(a, e) for a, e in zip(leaves_a, leaves_e)), default=0.0)
