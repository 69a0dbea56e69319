"""The rounding model (T): how far a correct float computation may be from the exact one.

One function per quantity of the model (derived in proofs/tolerance.md): the unit roundoff u
(``unit_roundoff``, and ``precision_unit_roundoff`` of a reduced-precision matmul), the bound
(T) itself (``tolerance``; ``forward_tolerance`` for the forward pass alone), its magnitude
factor m (``magnitude``), (T) of one network with its terms read off the network
(``network_tolerance``), and the coarse per-dtype bound (``gradient_tolerance``). The error
measures the bounds are stated in are ``bpref.error``'s; the tolerance of a problem, which
runs its forward pass, is ``bpref.problems.problem_tolerance``.

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
largest entry of the exact array (``bpref.error.max_norm_error``): a coordinate of X that is off by a relative
1e-3 and is X's largest entry shows up as a normwise error of 1e-3 however big
X is. A coordinate a million times smaller than X's largest is measured at its
scale relative to X, as every normwise test must.

(T) assumes a well-conditioned loss: no cancellation between examples in a
batch-mean gradient and no catastrophic cancellation in dC/dy (the losses in
bpref.losses are written so that y near t costs no accuracy). Where a problem
is ill-conditioned the exact referee (bpref.witnesses.referee) decides instead.

``GRADIENT_BOUND`` keeps the single coarse bound per dtype used by
``bpref verify``'s table for well-conditioned nets of depth <= 4 and widths <= 8.

Reduced-precision matmuls (T')
------------------------------
The unit roundoff a matrix product really has depends on the dtype, the precision
setting and the backend. Every matmul in bpref passes an explicit ``precision``
(``jax.lax.Precision.HIGHEST`` unless the caller chooses another). What a precision level
means depends on the hardware, and only for float32 operands (JAX's ``jax.lax.Precision``
docstring):

========  =======================================  =========================================
backend   DEFAULT / HIGH                           HIGHEST
========  =======================================  =========================================
cpu       float32 (the setting is ignored)         float32
gpu       TF32 tensor cores (Ampere and later)     float32
tpu       1 bfloat16 pass / 3 bfloat16 passes      6 bfloat16 passes
========  =======================================  =========================================

For a product with operands rounded to a format of p significant bits and
accumulated in float32, each term a_i b_i carries the two operand errors, at most
2 u_op |a_i b_i| (to first order), where

* float32, and every precision on cpu: the operands are used as stored, u_op = 0;
* TF32 (10 fraction bits, p = 11): u_op = 2^-11 when the operands are rounded to
  nearest, and up to 2^-10 when the tensor cores truncate the 13 dropped bits,
  which they may do when fed float32 data directly; the model takes 2^-10;
* one bfloat16 pass (p = 8): u_op = 2^-8;
* three bfloat16 passes: a = a_1 + a_2 + r with |r| <= 2^-16 |a|, and the dropped
  cross term a_2 b_2 is below 2^-16 |a b|, so each term is off by at most
  3 * 2^-16 <= 2 * 2^-15: u_op = 2^-15;
* six bfloat16 passes: a = a_1 + a_2 + a_3 + r with |r| <= 2^-24 |a|, dropped
  a_2 b_3 + a_3 b_2 + a_3 b_3 below 2^-23 |a b|: each term off by at most
  4 * 2^-24 = 2 * 2^-23: u_op = 2^-23.

The sum of the k terms is then accumulated in float32. Tensor cores and matrix
units need not round each addition to nearest (NVIDIA's truncate the aligned
products), so the accumulation is charged u_acc = 2^-23, twice float32's u. One
product's error is therefore at most (2 u_op (1 + u_op) + k u_acc) sum_i |a_i b_i|,
and ``tolerance(..., precision=, backend=)`` puts that in place of k u in (T):

    c (2 L + 1) m (k u_acc + 2 u_op (1 + u_op))                                (T')

Operand rounding does not grow with the length of the sum, so (T') is about k / 2
times tighter than (T) evaluated at u = u_op (``tolerance_factor``'s cruder
bound, kept for comparison). With u_op = 0 and u_acc = u, (T') is (T).
``precision_unit_roundoff`` returns u_op where the operands are rounded and the
dtype's u where they are not.

No tolerance separates a relative bug of about u_op from rounding: one TF32
product is already off by up to 2 u_op ~ 2e-3, and bpref measured 7.8e-4 normwise
between DEFAULT and HIGHEST on an H200 (docs/scale.md).

float64, float16 and bfloat16 operands are not affected by the setting and keep
their own u (float64 on TPU is emulated in software; this model assumes the
emulation is accurate to float64's u, which bpref has not measured).

>>> import numpy as np, jax
>>> precision_unit_roundoff(np.float32, jax.lax.Precision.DEFAULT, "gpu") == 2.0 ** -10
True
>>> precision_unit_roundoff(np.float32, jax.lax.Precision.HIGHEST, "gpu") == 2.0 ** -24
True
"""

from __future__ import annotations

import math

import jax
import numpy as np

from bpref.network import DEFAULT_PRECISION

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


# ---------------------------------------------------------------- matmul precision

Precision = jax.lax.Precision

TF32_UNIT_ROUNDOFF = 2.0 ** -10
"""TF32 operands (10 fraction bits), truncated or rounded: at most 2^-10."""

BF16_UNIT_ROUNDOFF = 2.0 ** -8
"""One bfloat16 pass (7 fraction bits, rounded to nearest)."""

BF16_3X_UNIT_ROUNDOFF = 2.0 ** -15
"""Three bfloat16 passes: operands split in two bfloat16 parts, a_2 b_2 dropped."""

BF16_6X_UNIT_ROUNDOFF = 2.0 ** -23
"""Six bfloat16 passes: operands split in three parts, the three smallest products dropped."""

_BACKENDS = {"cpu": "cpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu", "tpu": "tpu"}

# The effective u of a float32 product, by backend and level (see the table above).
_FLOAT32 = {
    "cpu": {Precision.DEFAULT: 2.0 ** -24, Precision.HIGH: 2.0 ** -24, Precision.HIGHEST: 2.0 ** -24},
    "gpu": {Precision.DEFAULT: TF32_UNIT_ROUNDOFF, Precision.HIGH: TF32_UNIT_ROUNDOFF,
            Precision.HIGHEST: 2.0 ** -24},
    "tpu": {Precision.DEFAULT: BF16_UNIT_ROUNDOFF, Precision.HIGH: BF16_3X_UNIT_ROUNDOFF,
            Precision.HIGHEST: BF16_6X_UNIT_ROUNDOFF},
}

ACCUMULATION_UNIT_ROUNDOFF = 2.0 ** -23
"""u_acc of a reduced-precision float32 product: float32 sums, not always rounded to nearest."""

_ORDER = (Precision.DEFAULT, Precision.HIGH, Precision.HIGHEST)


def precision_level(precision) -> Precision:
  """The ``jax.lax.Precision`` level a ``precision=`` argument asks for.

  Accepts a ``Precision``, one of its names (``"highest"``, ``"float32"``,
  ``"tensorfloat32"``, ``"bfloat16"``, ...), a pair (lhs, rhs) (the less precise
  one counts), or None, which means JAX's ``jax_default_matmul_precision``
  setting (DEFAULT when unset).
  """
  if precision is None:
    configured = jax.config.jax_default_matmul_precision
    return Precision.DEFAULT if configured is None else precision_level(configured)
  if isinstance(precision, Precision):
    return precision
  if isinstance(precision, (tuple, list)) and len(precision) == 2:
    return min((precision_level(p) for p in precision), key=_ORDER.index)
  if isinstance(precision, str):
    try:
      return Precision(precision)
    except ValueError:
      raise ValueError(f"unknown precision {precision!r}; use a jax.lax.Precision or one of "
                       "'default', 'high', 'highest', 'bfloat16', 'tensorfloat32', 'float32'") from None
  raise TypeError(f"precision must be a jax.lax.Precision, its name, a pair of them or None; got "
                  f"{precision!r}. (A jax.lax.DotAlgorithmPreset names its own input types; "
                  "its unit roundoff is that of its lhs type.)")


def precision_unit_roundoff(dtype, precision=DEFAULT_PRECISION, backend: str | None = None) -> float:
  """The unit roundoff u of a matmul on ``dtype`` operands at ``precision`` on ``backend``.

  Args:
    dtype: the operands' dtype.
    precision: the ``precision=`` given to bpref (see ``precision_level``).
    backend: ``"cpu"``, ``"gpu"`` (``"cuda"``, ``"rocm"``) or ``"tpu"``; default
      ``jax.default_backend()``.

  Returns:
    u to use in the rounding model of ``bpref.tolerance`` (see the module docstring).
  """
  backend = jax.default_backend() if backend is None else backend
  if backend not in _BACKENDS:
    raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(_BACKENDS)}")
  level = precision_level(precision)
  dtype = np.dtype(dtype)
  if dtype != np.dtype(np.float32):
    return unit_roundoff(dtype)  # the setting applies to float32 operands only
  return _FLOAT32[_BACKENDS[backend]][level]


def tolerance_factor(dtype, precision=DEFAULT_PRECISION, backend: str | None = None) -> float:
  """u_matmul / u_dtype (at least 1): multiply a tolerance of ``bpref.tolerance`` by it.

  The rounding model of ``bpref.tolerance`` charges every step at the dtype's u;
  charging all of them at the larger of the dtype's u and the matmul's keeps the
  bound safe when the matmuls run at reduced precision.

  >>> import numpy as np
  >>> tolerance_factor(np.float32, "default", "gpu") == 2.0 ** 14
  True
  """
  u_matmul = precision_unit_roundoff(dtype, precision, backend)
  u_dtype = unit_roundoff(dtype)
  return max(u_matmul, u_dtype) / u_dtype


# ---------------------------------------------------------------- (T) and (T')

def tolerance(dtype, *, depth: int = 1, inner: int = 1, magnitude: float = 1.0,
              precision=None, backend: str | None = None) -> float:
  """The right-hand side of (T) divided by ||X||_inf: c u (2 L + 1) k m; (T') with ``precision``
  (module docstring; proofs/tolerance.md states (T) for the oracle's normwise measure).

  Args:
    dtype: the dtype bpref computed in.
    depth: L, the number of layers.
    inner: k, the longest sum (largest width or batch size); not the array's size.
    magnitude: m >= 1, see ``magnitude``.
    precision: the ``jax.lax.Precision`` the matmuls ran at, with ``backend``: (T') charges
      their operand rounding and accumulation. None: the operands as stored, (T). Where the
      setting leaves the operands as stored (float64, float16, float32 on cpu or at HIGHEST
      on gpu) (T') is (T).

  >>> import numpy as np
  >>> tolerance(np.float32, depth=2, inner=8, precision="highest", backend="gpu") == tolerance(
  ...     np.float32, depth=2, inner=8)
  True
  >>> t = tolerance(np.float32, depth=2, inner=64, precision="default", backend="gpu")
  >>> t < tolerance(np.float32, depth=2, inner=64) * tolerance_factor(np.float32, "default", "gpu") / 16
  True
  """
  if depth < 1 or inner < 1:
    raise ValueError(f"depth and inner must be >= 1; got depth={depth}, inner={inner}")
  m = max(1.0, float(magnitude))
  u = unit_roundoff(dtype)
  u_op = u if precision is None else precision_unit_roundoff(dtype, precision, backend)
  if u_op <= u:
    return SAFETY * u * (2 * depth + 1) * inner * m  # (T)
  u_acc = max(u, ACCUMULATION_UNIT_ROUNDOFF)
  return SAFETY * (2 * depth + 1) * m * (inner * u_acc + 2 * u_op * (1 + u_op))  # (T')


def forward_tolerance(dtype, *, depth: int = 1, inner: int = 1, magnitude: float = 1.0) -> float:
  """(T) for the forward pass alone (y, z_l, a_l): c u (L + 1) k m, L layers and the loss
  (module docstring; proofs/tolerance.md (R1): the forward pass's rounding of z)."""
  if depth < 1 or inner < 1:
    raise ValueError(f"depth and inner must be >= 1; got depth={depth}, inner={inner}")
  return SAFETY * unit_roundoff(dtype) * (depth + 1) * inner * max(1.0, float(magnitude))


def magnitude(z_arrays, activations=()) -> float:
  """m of (T): max(1, max_l ||z_l||_inf), squared for layers whose f is gelu (module docstring;
  proofs/tolerance.md (R1) derives the |f''| terms the oracle adds beside it).

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


def network_tolerance(dtype, sizes, batch: int, z, activations, *, forward_only: bool = False,
                      precision=None, backend: str | None = None) -> float:
  """(T) of one network, its terms read off it: L = len(sizes) - 1 layers, k the longest sum
  anywhere in it (the widest layer or the batch), m = ``magnitude(z, activations)``
  (proofs/tolerance.md). The one tolerance of a case: the oracle's judge, ``bpref verify``
  and ``bpref.problems.problem_tolerance`` call it.

  k is the longest sum anywhere, so the bound holds for each array of the network; an
  array fed only by shorter sums (dC/db_l of a very wide output layer, say) may be held to
  ``tolerance`` with its own k.

  Args:
    dtype: the dtype the network was computed in.
    sizes: the widths (n_0, ..., n_L).
    batch: B, the number of examples.
    z: the pre-activations z_1..z_L of its forward pass (any float dtype; float64 for the
      magnitude of the exact computation).
    activations: the names f_1..f_L.
    forward_only: ``forward_tolerance`` (for y and the tape) instead of ``tolerance``.
    precision, backend: (T') of the matmuls at that setting (see ``tolerance``).

  >>> import numpy as np
  >>> network_tolerance(np.float64, (3, 8, 2), 5, [np.ones((5, 8)), np.ones((5, 2))],
  ...                   ("tanh", "identity")) == tolerance(np.float64, depth=2, inner=8)
  True
  """
  depth, inner = len(sizes) - 1, max(max(sizes), batch)
  m = magnitude(z, activations)
  if forward_only:
    return forward_tolerance(dtype, depth=depth, inner=inner, magnitude=m)
  return tolerance(dtype, depth=depth, inner=inner, magnitude=m, precision=precision, backend=backend)


GRADIENT_BOUND = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}
"""Largest normwise relative error accepted on well-conditioned nets (depth <= 4, widths <= 8)."""


def gradient_tolerance(dtype) -> float:
  """The accepted normwise relative error of a gradient array on a well-conditioned net."""
  return GRADIENT_BOUND[np.dtype(dtype)]


# ---------------------------------------------------------------- names that moved out

_MOVED = {"normwise_error": "bpref.error", "worst_error": "bpref.error",
          "max_norm_error": "bpref.error", "pointwise": "bpref.tables",
          "rowwise": "bpref.tables", "rho_function": "bpref.tables",
          "problem_tolerance": "bpref.problems"}
"""Names of this module's earlier jobs and the modules that have them now."""


def __getattr__(name: str):
  # ``from bpref.tolerance import normwise_error`` of earlier versions: the name, with a warning
  if name in _MOVED:
    import importlib
    import warnings

    warnings.warn(f"bpref.tolerance.{name} is now {_MOVED[name]}.{name}; import it from there",
                  DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(_MOVED[name]), name)
  raise AttributeError(f"module 'bpref.tolerance' has no attribute {name!r}")
