"""Tolerances from a rounding model, keyed by dtype, normwise per array.

The model
---------
Let u be the unit roundoff of the dtype (u = 2^-53 for float64, 2^-24 for
float32, 2^-11 for float16, 2^-8 for bfloat16). A network of depth L is
evaluated by L matrix products, each a sum of at most k terms (k is the
longest sum: the widest n_{l-1} in the forward pass, the widest n_l in the
backward pass, the batch B in dC/dW_l = delta_l^T A_{l-1}), and by elementwise
functions each correctly rounded to a few ulps. The standard inner-product
bound |fl(sum_i p_i) - sum_i p_i| <= k u sum_i |p_i| (Higham, Accuracy and
Stability of Numerical Algorithms, 2nd ed., section 3.1) applied once per
product, with one more step for the loss and one per elementwise function,
gives for every array X that bpref computes (y, C, dC/dW_l, delta_l, lambda_l)

    ||X_hat - X||_inf  <=  c * u * (2 L + 1) * k * m * ||X||_inf          (T)

to first order in u, where

* 2 L + 1 counts the steps from x to X: L layers forward, L backward, the loss;
* k is the longest sum, as above; the tolerance grows with the length of the
  sums, never with the number of entries of X (a bias gradient with 10^4
  entries is held to the same relative error as one with 1 entry);
* m >= 1 is the magnitude factor: m = max(1, max_l ||z_l||_inf). A rounding
  error of relative size e in z perturbs f'(z) by |f''(z) / f'(z)| |z| e,
  and for every activation in bpref |f''/f'| <= 2 once |z| > 1 (gelu's
  |f''/f'| grows like |z|, which m^2 would cover; see ``magnitude``), so m
  accounts for saturated units;
* c = 4 is a safety constant for the few ulps of the elementwise functions
  (exp, log1p, tanh and erfc are accurate to 1-2 ulps in XLA) and the
  cancellation-free forms of f' (bpref.activations).

The error is measured normwise per array in the infinity norm, relative to the
largest entry of the exact array: a coordinate of X that is off by a relative
1e-3 and is X's largest entry shows up as a normwise error of 1e-3 however big
X is. A coordinate a million times smaller than X's largest is measured at its
scale relative to X, as every normwise test must.

(T) assumes a well-conditioned loss: no cancellation between examples in a
batch-mean gradient and no catastrophic cancellation in dC/dy (the losses in
bpref.losses are written so that y near t costs no accuracy). Where a problem
is ill-conditioned the exact referee (bpref.witnesses.referee) decides instead.

``GRADIENT_BOUND`` keeps the single coarse bound per dtype used by
``bpref verify``'s table for well-conditioned nets of depth <= 4 and widths <= 8.
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np


_UNIT_ROUNDOFF = {
    np.dtype(np.float64): 2.0 ** -53,
    np.dtype(np.float32): 2.0 ** -24,
    np.dtype(np.float16): 2.0 ** -11,
}

SAFETY = 4.0
"""c in (T): the few ulps of the elementwise functions and of f'."""


def unit_roundoff(dtype) -> float:
  """u = eps / 2 of ``dtype`` (bfloat16 included): 2^-53, 2^-24, 2^-11, 2^-8."""
  dtype = np.dtype(dtype)
  if dtype in _UNIT_ROUNDOFF:
    return _UNIT_ROUNDOFF[dtype]
  import ml_dtypes  # bfloat16 and the other ML dtypes; installed with jax
  return float(ml_dtypes.finfo(dtype).eps) / 2


def normwise_error(actual, expected) -> float:
  """||actual - expected||_F / ||expected||_F (absolute error when expected is 0)."""
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  diff = float(np.linalg.norm((actual - expected).ravel()))
  scale = float(np.linalg.norm(expected.ravel()))
  return diff / scale if scale > 0 else diff


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


def tolerance(dtype, *, depth: int = 1, inner: int = 1, magnitude: float = 1.0) -> float:
  """The right-hand side of (T) divided by ||X||_inf: c u (2 L + 1) k m.

  Args:
    dtype: the dtype bpref computed in.
    depth: L, the number of layers.
    inner: k, the longest sum (largest width or batch size); not the array's size.
    magnitude: m >= 1, see ``magnitude``.
  """
  if depth < 1 or inner < 1:
    raise ValueError(f"depth and inner must be >= 1; got depth={depth}, inner={inner}")
  m = max(1.0, float(magnitude))
  return SAFETY * unit_roundoff(dtype) * (2 * depth + 1) * inner * m


def forward_tolerance(dtype, *, depth: int = 1, inner: int = 1, magnitude: float = 1.0) -> float:
  """(T) for the forward pass alone (y, z_l, a_l): c u (L + 1) k m, L layers and the loss."""
  if depth < 1 or inner < 1:
    raise ValueError(f"depth and inner must be >= 1; got depth={depth}, inner={inner}")
  return SAFETY * unit_roundoff(dtype) * (depth + 1) * inner * max(1.0, float(magnitude))


def magnitude(z_arrays, activations=()) -> float:
  """m of (T): max(1, max_l ||z_l||_inf), squared for layers whose f is gelu.

  Args:
    z_arrays: the pre-activations z_1..z_L of the forward pass (any float dtype).
    activations: the names f_1..f_L (optional; gelu's f'' / f' grows like |z|).
  """
  m = 1.0
  acts = tuple(activations) + (None,) * (len(z_arrays) - len(tuple(activations)))
  for z, act in zip(z_arrays, acts):
    z = np.asarray(z, np.float64)
    if z.size == 0:
      continue
    zmax = float(np.max(np.abs(z)))
    if not math.isfinite(zmax):
      return math.inf
    m = max(m, zmax * zmax if act == "gelu" else zmax)
  return m


def problem_tolerance(params, x, dtype=None, *, forward_only: bool = False) -> float:
  """(T) for every array of one problem: depth, longest sum and magnitude read off the problem.

  k is the longest sum anywhere in the problem (every width and the batch), so the
  bound holds for each array; an array fed only by shorter sums (dC/db_l of a very
  wide output layer, say) may be held to ``tolerance`` with its own k.

  The magnitude comes from a float64 forward pass of the same values (NumPy
  products, bpref's f), so it does not depend on the derivatives being checked.
  With ``forward_only`` the bound of ``forward_tolerance`` (for y and the tape).
  """
  x = np.asarray(x)
  dtype = np.dtype(dtype or x.dtype)
  depth, inner, m = problem_terms(params, x)
  bound = forward_tolerance if forward_only else tolerance
  return bound(dtype, depth=depth, inner=inner, magnitude=m)


@functools.partial(jax.jit, static_argnums=0)
def _apply(fn, *args):
  return fn(*args)


@functools.lru_cache(maxsize=None)
def _tables() -> dict:
  """fn -> (apply, i) for every elementwise f, f' and rho_f of ``bpref.activations``: one
  compiled function per role (the f's, the f''s, the rho_f's), ``apply(i, z, a)`` picking
  the i-th by ``jax.lax.switch``, so a role compiles once per length class for every
  activation, and a caller compiles only the roles it uses."""
  from bpref import activations as _activations

  elementwise = [(name, act) for name, act in _activations.ACTIVATIONS.items() if act.elementwise]
  roles = (
      [(act.f, lambda z, a, fn=act.f: fn(z)) for _, act in elementwise],
      [(act.df, lambda z, a, fn=act.df: fn(z)) for _, act in elementwise],
      [(r, r) for name, _ in elementwise
       for r in (_activations.rho(name, False), _activations.rho(name, True)) if r is not None],
  )
  found = {}
  for role in roles:
    branches = tuple(branch for _, branch in role)
    apply = jax.jit(lambda i, z, a, branches=branches: jax.lax.switch(i, branches, z, a))
    for i, (fn, _) in enumerate(role):
      found.setdefault(fn, (apply, i))
  return found


def pointwise(fn, *arrays) -> np.ndarray:
  """fn(*arrays) for an elementwise jnp function, in float64 whatever the caller's x64.

  The arrays are flattened and zero-padded to a power-of-two length (at least 64), so
  many problems compile once per length class rather than once per shape; bpref's f, f'
  and rho_f (``bpref.activations.rho``) share one compiled function per role and length class.
  """
  shape = np.shape(arrays[0])
  n = int(np.prod(shape, dtype=np.int64))
  size = max(64, 1 << max(n - 1, 0).bit_length())
  flat = [np.pad(np.asarray(a, np.float64).ravel(), (0, size - n)) for a in arrays]
  tables = _tables()
  with jax.enable_x64(True):
    if fn in tables and len(flat) <= 2:
      apply, i = tables[fn]
      out = apply(np.int32(i), flat[0], flat[-1])
    else:
      out = _apply(fn, *flat)
    out = np.asarray(out, np.float64)
  return out[:n].reshape(shape)


def rowwise(fn, z) -> np.ndarray:
  """fn(z) in float64 for a function of each row of z that gives an entry of -inf no weight
  (softmax), on rows and columns padded to powers of two (at least 8): one compilation per
  size class."""
  rows, cols = np.shape(z)
  size = lambda n: max(8, 1 << max(n - 1, 0).bit_length())  # noqa: E731
  padded = np.full((size(rows), size(cols)), -np.inf)
  padded[:rows, :cols] = z
  with jax.enable_x64(True):
    return np.asarray(_apply(fn, padded), np.float64)[:rows, :cols]


def problem_terms(params, x) -> tuple[int, int, float]:
  """(L, k, m) of (T) for one problem: depth, longest sum, magnitude (see ``problem_tolerance``)."""
  from bpref import activations as _activations

  x = np.asarray(x)
  x2 = x[None, :] if x.ndim == 1 else x
  a = x2.astype(np.float64)
  zs = []
  widths = [a.shape[1]]
  for layer in params:
    W = np.asarray(layer.W, np.float64)
    z = a @ W.T  # (7)
    if layer.b is not None:
      z = z + np.asarray(layer.b, np.float64)[None, :]
    zs.append(z)
    act = _activations.get(layer.activation)
    a = pointwise(act.f, z) if act.elementwise else rowwise(act.f, z)  # (8)
    widths.append(W.shape[0])
  inner = max(max(widths), x2.shape[0])
  return len(params), inner, magnitude(zs, [layer.activation for layer in params])


def worst_error(actual, expected) -> float:
  """The largest ``max_norm_error`` over the leaves of two trees of the same structure."""
  import jax

  leaves_a, tree_a = jax.tree_util.tree_flatten(actual)
  leaves_e, tree_e = jax.tree_util.tree_flatten(expected)
  if tree_a != tree_e:
    return math.inf
  return max((max_norm_error(a, e) for a, e in zip(leaves_a, leaves_e)), default=0.0)


GRADIENT_BOUND = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}
"""Largest normwise relative error accepted on well-conditioned nets (depth <= 4, widths <= 8)."""


def gradient_tolerance(dtype) -> float:
  """The accepted normwise relative error of a gradient array on a well-conditioned net."""
  return GRADIENT_BOUND[np.dtype(dtype)]
