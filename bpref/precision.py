"""The unit roundoff a matrix product really has: dtype, precision setting and backend.

Every matmul in bpref passes an explicit ``precision`` (``jax.lax.Precision.HIGHEST``
unless the caller chooses another). What a precision level means depends on the
hardware, and only for float32 operands (JAX's ``jax.lax.Precision`` docstring):

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
and ``tolerance`` puts that in place of k u in (T):

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

import jax
import numpy as np

from bpref import tolerance as _tolerance
from bpref.network import DEFAULT_PRECISION

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
    return _tolerance.unit_roundoff(dtype)  # the setting applies to float32 operands only
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
  u_dtype = _tolerance.unit_roundoff(dtype)
  return max(u_matmul, u_dtype) / u_dtype


def tolerance(dtype, precision=DEFAULT_PRECISION, backend: str | None = None, *,
              depth: int = 1, inner: int = 1, magnitude: float = 1.0) -> float:
  """(T') of the module docstring: (T) with the matmuls' operand rounding and accumulation.

  Where the matmuls use the operands as stored (float64, float16, float32 on cpu or at
  HIGHEST on gpu) this is ``bpref.tolerance.tolerance``.

  >>> import numpy as np
  >>> tolerance(np.float32, "highest", "gpu", depth=2, inner=8) == _tolerance.tolerance(
  ...     np.float32, depth=2, inner=8)
  True
  >>> t = tolerance(np.float32, "default", "gpu", depth=2, inner=64)
  >>> t < _tolerance.tolerance(np.float32, depth=2, inner=64) * tolerance_factor(np.float32, "default", "gpu") / 16
  True
  """
  u_op = precision_unit_roundoff(dtype, precision, backend)
  u = _tolerance.unit_roundoff(dtype)
  if u_op <= u:
    return _tolerance.tolerance(dtype, depth=depth, inner=inner, magnitude=magnitude)
  if depth < 1 or inner < 1:
    raise ValueError(f"depth and inner must be >= 1; got depth={depth}, inner={inner}")
  u_acc = max(u, ACCUMULATION_UNIT_ROUNDOFF)
  m = max(1.0, float(magnitude))
  return _tolerance.SAFETY * (2 * depth + 1) * m * (inner * u_acc + 2 * u_op * (1 + u_op))


def problem_tolerance(params, x, precision=DEFAULT_PRECISION, backend: str | None = None) -> float:
  """(T') for every array of one problem, its L, k and m read off as ``bpref.tolerance`` does."""
  depth, inner, m = _tolerance.problem_terms(params, x)
  return tolerance(np.asarray(x).dtype, precision, backend, depth=depth, inner=inner, magnitude=m)
