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

import contextlib
import contextvars
import functools
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
  """The right-hand side of (T) divided by ||X||_inf: c u (2 L + 1) k m; (T') with ``precision``.

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


def problem_tolerance(params, x, dtype=None, *, forward_only: bool = False, precision=None,
                      backend: str | None = None) -> float:
  """(T) for every array of one problem: depth, longest sum and magnitude read off the problem.

  k is the longest sum anywhere in the problem (every width and the batch), so the
  bound holds for each array; an array fed only by shorter sums (dC/db_l of a very
  wide output layer, say) may be held to ``tolerance`` with its own k.

  The magnitude comes from a float64 forward pass of the same values (NumPy
  products, bpref's f), so it does not depend on the derivatives being checked.
  With ``forward_only`` the bound of ``forward_tolerance`` (for y and the tape); with
  ``precision`` and ``backend``, (T') of the matmuls at that setting.
  """
  x = np.asarray(x)
  dtype = np.dtype(dtype or x.dtype)
  depth, inner, m = problem_terms(params, x)
  if forward_only:
    return forward_tolerance(dtype, depth=depth, inner=inner, magnitude=m)
  return tolerance(dtype, depth=depth, inner=inner, magnitude=m, precision=precision, backend=backend)


@functools.partial(jax.jit, static_argnums=0)
def _apply(fn, *args):
  return fn(*args)


_DECLARED = contextvars.ContextVar("bpref_tolerance_declared", default=None)


@contextlib.contextmanager
def declared(activations=None, losses=None):
  """Within it, ``pointwise`` evaluates through tables (and the oracle's loss terms through
  its table) that hold only these activations (and losses), None meaning every name: a
  search that declares 4 of the 14 activations compiles a table of 4 branches, not 14
  (measured: 0.25 s against 0.86 s for the f' table). A function outside them still gets
  its value, from the table of every name. Outside any such block each function compiles
  on its own: one network with three activations compiles three small programs, not a
  table of all of them."""
  token = _DECLARED.set((None if activations is None else tuple(sorted(set(activations))),
                         None if losses is None else tuple(sorted(set(losses)))))
  try:
    yield
  finally:
    _DECLARED.reset(token)


def declared_activations():
  """The activations of the innermost ``declared`` block, or None (every activation)."""
  found = _DECLARED.get()
  return None if found is None else found[0]


def declared_losses():
  """The losses of the innermost ``declared`` block, or None (every loss)."""
  found = _DECLARED.get()
  return None if found is None else found[1]


@functools.lru_cache(maxsize=None)
def rho_function(name: str, forms: bool = True):
  """rho_f of activation ``name`` as one function (z, a) -> units of u, or None where it is 0:
  the record's ``d2f`` plus, with ``forms``, its ``df_forms`` (derived in proofs/tolerance.md).
  The same function object for the same arguments, so that compiled uses of it are shared."""
  from bpref import activations as _activations

  act = _activations.get(name)
  parts = [f for f in (act.d2f, act.df_forms if forms else None) if f is not None]
  if not parts:
    return None
  return parts[0] if len(parts) == 1 else (lambda z, a: parts[0](z, a) + parts[1](z, a))


@functools.lru_cache(maxsize=None)
def _tables(names=None) -> dict:
  """fn -> (apply, i) for every elementwise f, f' and rho_f of ``bpref.activations`` (of
  ``names`` alone if given): one compiled function per role (the f's, the f''s, the
  rho_f's), ``apply(i, z, a)`` picking the i-th by ``jax.lax.switch``, so a role compiles
  once per length class for every activation, and a caller compiles only the roles it uses."""
  from bpref import activations as _activations

  elementwise = [(name, act) for name, act in _activations.ACTIVATIONS.items()
                 if act.elementwise and (names is None or name in names)]
  roles = (
      [(act.f, lambda z, a, fn=act.f: fn(z)) for _, act in elementwise],
      [(act.df, lambda z, a, fn=act.df: fn(z)) for _, act in elementwise],
      [(r, r) for name, _ in elementwise
       for r in (rho_function(name, False), rho_function(name, True)) if r is not None],
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
  many problems compile once per length class rather than once per shape. Inside a
  ``declared`` block, bpref's f, f' and rho_f (``rho_function``) share one compiled
  function per role and length class; outside, ``fn`` compiles alone.
  """
  shape = np.shape(arrays[0])
  n = int(np.prod(shape, dtype=np.int64))
  size = max(64, 1 << max(n - 1, 0).bit_length())
  flat = [np.pad(np.asarray(a, np.float64).ravel(), (0, size - n)) for a in arrays]
  tables = {}  # outside a declared block, fn compiles alone
  if _DECLARED.get() is not None:
    tables = _tables(declared_activations())
    if fn not in tables:
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
