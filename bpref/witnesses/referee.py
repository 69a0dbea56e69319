"""The exact referee: forward and backward passes in high precision with mpmath.

When two witnesses disagree (bpref and ``jax.grad``, or either and a finite
difference), the referee decides. Every float64/float32 input is converted to an
``mpmath.mpf`` exactly (a binary float is a rational number), and the forward
pass (4)-(10), the loss, the delta recursion (34), (37), the gradients (39) and
the lambda recursion (27), (30) are evaluated at ``dps`` significant decimal
digits (50 by default). At 50 digits the referee's own error is about 1e-50
relative for the small nets it is meant for (widths and batches up to a few
tens), so rounding its results to float64 gives the exact answer correctly
rounded: an error of at most u = 2^-53 relative per entry.

The derivatives are written here again in mpmath, in their textbook forms
(sigma' = sigma (1 - sigma), tanh' = sech^2, softmax Jacobian diag(a) - a a^T):
at 50 digits cancellation that would ruin float64 costs nothing, and mpf has no
overflow, so no stable rewriting is needed. They share no code with
``bpref.activations`` or ``bpref.losses``. ``check_derivatives`` compares each
f' with ``mpmath.diff`` (a high-precision numerical derivative), so the
referee's f' are themselves checked independently.

Arrays are NumPy object arrays of mpf with rows as examples, as in bpref. The
cost is O(B * sum_l n_l n_{l-1}) Python operations at high precision: use it
for nets with a few thousand parameters at most.
"""

from __future__ import annotations

from typing import NamedTuple

import mpmath
import numpy as np

from bpref.structures import Layer

DEFAULT_DPS = 50

LEAKY_RELU_SLOPE = mpmath.mpf("0.01")
SELU_ALPHA = mpmath.mpf("1.6732632423543772848170429916717")
SELU_SCALE = mpmath.mpf("1.0507009873554804934193349852946")
GELU_K = mpmath.mpf("0.044715")


def _gelu_c():
  return mpmath.sqrt(2 / mpmath.pi)


def _sig(z):
  return 1 / (1 + mpmath.exp(-z))


# ---------------------------------------------------------------- f and f' in high precision
# Each entry: name -> (f, f'). Kinks use bpref's conventions: relu'(0) = 0,
# leaky_relu'(0) = 1, elu'(0) = 1, selu'(0) = scale * alpha.

def _phi(z):
  return mpmath.exp(-z * z / 2) / mpmath.sqrt(2 * mpmath.pi)


def _Phi(z):
  return mpmath.erfc(-z / mpmath.sqrt(2)) / 2


def _gelu_tanh_u(z):
  return _gelu_c() * (z + GELU_K * z ** 3)


def _nan_or(z, value):
  # NaN stays NaN (IEEE, torch.relu): a branch on z > 0 is False at NaN and would give a constant.
  return z if mpmath.isnan(z) else value


_SCALAR = {
    "identity": (lambda z: z, lambda z: _nan_or(z, mpmath.mpf(1))),
    "relu": (lambda z: _nan_or(z, z if z > 0 else mpmath.mpf(0)),
             lambda z: _nan_or(z, mpmath.mpf(1) if z > 0 else mpmath.mpf(0))),
    "leaky_relu": (lambda z: z if z >= 0 else LEAKY_RELU_SLOPE * z,
                   lambda z: _nan_or(z, mpmath.mpf(1) if z >= 0 else LEAKY_RELU_SLOPE)),
    "elu": (lambda z: z if z > 0 else mpmath.expm1(z),
            lambda z: mpmath.mpf(1) if z > 0 else mpmath.exp(z)),
    "selu": (lambda z: SELU_SCALE * (z if z > 0 else SELU_ALPHA * mpmath.expm1(z)),
             lambda z: SELU_SCALE * (mpmath.mpf(1) if z > 0 else SELU_ALPHA * mpmath.exp(z))),
    # gelu: f = z Phi(z), f' = Phi(z) + z phi(z)
    "gelu": (lambda z: z * _Phi(z), lambda z: _Phi(z) + z * _phi(z)),
    # gelu_tanh: f = z (1 + tanh u) / 2, u = c (z + k z^3); f' = (1 + tanh u) / 2 + z sech^2(u) u' / 2
    "gelu_tanh": (lambda z: z * (1 + mpmath.tanh(_gelu_tanh_u(z))) / 2,
                  lambda z: (1 + mpmath.tanh(_gelu_tanh_u(z))) / 2
                  + z * mpmath.sech(_gelu_tanh_u(z)) ** 2 * _gelu_c() * (1 + 3 * GELU_K * z * z) / 2),
    # silu: f = z sigma(z), f' = sigma(z) + z sigma(z) (1 - sigma(z))
    "silu": (lambda z: z * _sig(z), lambda z: _sig(z) + z * _sig(z) * _sig(-z)),
    # mish: f = z tanh(s), s = log(1 + e^z); f' = tanh(s) + z sech^2(s) sigma(z)
    "mish": (lambda z: z * mpmath.tanh(mpmath.log1p(mpmath.exp(z))),
             lambda z: mpmath.tanh(mpmath.log1p(mpmath.exp(z)))
             + z * mpmath.sech(mpmath.log1p(mpmath.exp(z))) ** 2 * _sig(z)),
    "softplus": (lambda z: mpmath.log1p(mpmath.exp(z)), _sig),
    "sigmoid": (_sig, lambda z: _sig(z) * _sig(-z)),
    "tanh": (mpmath.tanh, lambda z: mpmath.sech(z) ** 2),
    "softsign": (lambda z: z / (1 + abs(z)), lambda z: 1 / (1 + abs(z)) ** 2),
    "sin": (mpmath.sin, mpmath.cos),
}

SUPPORTED = tuple(_SCALAR) + ("softmax",)
"""Activations the referee knows."""


def _check_activation(name, l):
  if name not in SUPPORTED:
    raise ValueError(f"layer {l}: the referee has no high-precision form of activation {name!r}; "
                     f"supported: {', '.join(SUPPORTED)}")


def _map(fun, arr):
  return np.vectorize(fun, otypes=[object])(arr)


def _softmax_rows(z):
  out = np.empty_like(z)
  for b in range(z.shape[0]):
    e = [mpmath.exp(v) for v in z[b]]
    s = mpmath.fsum(e)
    out[b] = [v / s for v in e]
  return out


def _act(name, z):
  if name == "softmax":
    return _softmax_rows(z)
  return _map(_SCALAR[name][0], z)


def _act_df(name, z):
  return _map(_SCALAR[name][1], z)


def _vjp(name, z, a, g):
  """g (da/dz) per row; for softmax g (diag(a) - a a^T) = a * (g - <g, a>)."""
  if name == "softmax":
    out = np.empty_like(g)
    for b in range(g.shape[0]):
      dot = mpmath.fsum(gi * ai for gi, ai in zip(g[b], a[b]))
      out[b] = [ai * (gi - dot) for gi, ai in zip(g[b], a[b])]
    return out
  return g * _act_df(name, z)


def _jacobian(name, z, a):
  """da/dz per row, (B, n, n)."""
  B, n = z.shape
  out = np.empty((B, n, n), dtype=object)
  for b in range(B):
    for i in range(n):
      for j in range(n):
        if name == "softmax":
          out[b, i, j] = a[b, i] * ((1 if i == j else 0) - a[b, j])
        else:
          out[b, i, j] = _SCALAR[name][1](z[b, i]) if i == j else mpmath.mpf(0)
  return out


# ---------------------------------------------------------------- losses in high precision

def _xlogy(x, y):
  return mpmath.mpf(0) if x == 0 else x * mpmath.log(y)


def _log_softmax(row):
  lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in row))
  return [v - lse for v in row]


def _loss_rows(loss, y, t):
  """C_b per example (B,) and dC_b/dy (B, K)."""
  B, K = y.shape
  values = np.empty((B,), dtype=object)
  dy = np.empty((B, K), dtype=object)
  for b in range(B):
    yb, tb = list(y[b]), list(t[b])
    if loss == "squared_error":  # (13), (14)
      values[b] = mpmath.fsum((ti - yi) ** 2 for yi, ti in zip(yb, tb))
      dy[b] = [-2 * (ti - yi) for yi, ti in zip(yb, tb)]
    elif loss == "half_squared_error":
      values[b] = mpmath.fsum((ti - yi) ** 2 for yi, ti in zip(yb, tb)) / 2
      dy[b] = [yi - ti for yi, ti in zip(yb, tb)]
    elif loss == "softmax_cross_entropy":
      ls = _log_softmax(yb)
      p = _softmax_rows(y[b:b + 1])[0]
      s = mpmath.fsum(tb)
      values[b] = -mpmath.fsum(ti * li for ti, li in zip(tb, ls))
      dy[b] = [pi * s - ti for pi, ti in zip(p, tb)]
    elif loss == "sigmoid_binary_cross_entropy":
      values[b] = mpmath.fsum(mpmath.log1p(mpmath.exp(yi)) - ti * yi for yi, ti in zip(yb, tb))
      dy[b] = [_sig(yi) - ti for yi, ti in zip(yb, tb)]
    elif loss == "binary_cross_entropy":
      values[b] = -mpmath.fsum(_xlogy(ti, yi) + _xlogy(1 - ti, 1 - yi) for yi, ti in zip(yb, tb))
      dy[b] = [(-ti / yi if ti != 0 else 0) + ((1 - ti) / (1 - yi) if ti != 1 else 0)
               for yi, ti in zip(yb, tb)]
    elif loss == "cross_entropy":
      values[b] = -mpmath.fsum(_xlogy(ti, yi) for yi, ti in zip(yb, tb))
      dy[b] = [-ti / yi if ti != 0 else mpmath.mpf(0) for yi, ti in zip(yb, tb)]
    elif loss == "huber":
      rs = [yi - ti for yi, ti in zip(yb, tb)]
      values[b] = mpmath.fsum(r * r / 2 if abs(r) <= 1 else abs(r) - mpmath.mpf(1) / 2 for r in rs)
      dy[b] = [max(-1, min(1, r)) for r in rs]
    else:
      raise ValueError(f"the referee has no high-precision form of loss {loss!r}")
  return values, dy


# ---------------------------------------------------------------- passes

def _mp_array(a):
  a = np.asarray(a)
  return _map(lambda v: mpmath.mpf(float(v)), a.astype(np.float64))


def _matmul(a, b):
  # exact-order-free product of object arrays: each entry an fsum at the working precision
  n, k = a.shape
  k2, m = b.shape
  assert k == k2
  out = np.empty((n, m), dtype=object)
  for i in range(n):
    for j in range(m):
      out[i, j] = mpmath.fsum(a[i, p] * b[p, j] for p in range(k))
  return out


class MpTape(NamedTuple):
  """The referee's forward tape: z_1..z_L and a_0..a_L as (B, n_l) object arrays of mpf."""
  z: tuple
  a: tuple


class Exact(NamedTuple):
  """Everything the referee computes for one problem, as mpf object arrays.

  Attributes:
    value: the reduced loss C (an mpf).
    grads: a tuple of Layer(dC/dW_l, dC/db_l or None, activation).
    deltas: (delta_1, ..., delta_L), each (B, n_l).
    input_grad: dC/dx, (B, n_0).
    tape: the forward tape.
  """
  value: object
  grads: tuple
  deltas: tuple
  input_grad: object
  tape: MpTape


def _as_2d(x):
  x = np.asarray(x)
  return x[None, :] if x.ndim == 1 else x


def _forward_mp(mp_params, a0):
  zs, acts = [], [a0]  # a_0 = x (4)
  for (W, b, name) in mp_params:
    z = _matmul(acts[-1], W.T)  # (7): Z_l = A_{l-1} W_l^T
    if b is not None:
      z = z + b[None, :]  # (7) with bias
    zs.append(z)
    acts.append(_act(name, z))  # (8)
  return MpTape(tuple(zs), tuple(acts))


def _convert_params(params):
  out = []
  for l, layer in enumerate(params, start=1):
    _check_activation(layer.activation, l)
    W = _mp_array(layer.W)
    b = None if layer.b is None else _mp_array(layer.b)
    out.append((W, b, layer.activation))
  return out


def forward(params, x, *, dps: int = DEFAULT_DPS) -> MpTape:
  """The forward pass (4)-(10) at ``dps`` digits; x of shape (B, n_0) or (n_0,)."""
  with mpmath.workdps(dps):
    return _forward_mp(_convert_params(params), _mp_array(_as_2d(x)))


def exact(params, x, t, loss="squared_error", reduction="mean", *, dps: int = DEFAULT_DPS) -> Exact:
  """C, dC/dparams, the deltas and dC/dx at ``dps`` digits (mpf object arrays)."""
  if reduction not in ("mean", "sum"):
    raise ValueError(f"unknown reduction {reduction!r}; valid: mean, sum")
  with mpmath.workdps(dps):
    mp_params = _convert_params(params)
    x2 = _mp_array(_as_2d(x))
    t2 = _mp_array(_as_2d(t))
    tape = _forward_mp(mp_params, x2)
    y = tape.a[-1]
    if t2.shape != y.shape:
      raise ValueError(f"t has shape {t2.shape} but the network outputs {y.shape}")
    batch = y.shape[0]
    scale = mpmath.mpf(1) / batch if reduction == "mean" else mpmath.mpf(1)
    try:
      per_example, dy = _loss_rows(loss, y, t2)
    except ZeroDivisionError:
      raise ValueError(f"loss {loss!r}: an output rounds to 0 or 1 at {dps} digits, where the loss "
                       "is infinite; raise dps or use a less saturated output layer") from None
    value = mpmath.fsum(per_example) * scale  # C = sum_b C_b, or its mean
    g = dy * scale  # (14) with the batch reduction
    n_layers = len(mp_params)
    delta = _vjp(mp_params[-1][2], tape.z[-1], tape.a[-1], g)  # (34)
    deltas = [delta]
    for l in range(n_layers - 1, 0, -1):
      back = _matmul(delta, mp_params[l][0])  # delta_{l+1} W_{l+1}
      delta = back * _act_df(mp_params[l - 1][2], tape.z[l - 1])  # (37)
      deltas.append(delta)
    deltas = tuple(reversed(deltas))
    grads = []
    for (W, b, name), d, a_prev in zip(mp_params, deltas, tape.a[:-1]):
      dW = _matmul(d.T, a_prev)  # (39): dC/dW_l = delta_l^T A_{l-1}
      db = None if b is None else np.array([mpmath.fsum(d[:, i]) for i in range(d.shape[1])],
                                           dtype=object)  # dC/db_l = sum_b delta_l
      grads.append(Layer(dW, db, name))
    dx = _matmul(deltas[0], mp_params[0][0])  # dC/dx = delta_1 W_1
    return Exact(value, tuple(grads), deltas, dx, tape)


def lambdas(params, x, *, dps: int = DEFAULT_DPS) -> tuple:
  """(lambda_1, ..., lambda_L), lambda_l = dy/dz_l of shape (B, n_L, n_l), as mpf object arrays."""
  with mpmath.workdps(dps):
    mp_params = _convert_params(params)
    tape = _forward_mp(mp_params, _mp_array(_as_2d(x)))
    lam = _jacobian(mp_params[-1][2], tape.z[-1], tape.a[-1])  # (27)
    out = [lam]
    for l in range(len(mp_params) - 1, 0, -1):
      W = mp_params[l][0]
      df = _act_df(mp_params[l - 1][2], tape.z[l - 1])
      B, K, _ = lam.shape
      new = np.empty((B, K, W.shape[1]), dtype=object)
      for b in range(B):
        new[b] = _matmul(lam[b], W) * df[b][None, :]  # (30): lambda_l W_l diag f'(z_{l-1})
      lam = new
      out.append(lam)
    return tuple(reversed(out))


# ---------------------------------------------------------------- rounding and error

def to_float(tree, dtype=np.float64):
  """Round every mpf of a tree (object arrays, Layers, tuples) to ``dtype`` arrays."""
  import jax
  return jax.tree_util.tree_map(
      lambda leaf: np.asarray(np.vectorize(float, otypes=[np.float64])(leaf)
                              if isinstance(leaf, np.ndarray) else float(leaf)).astype(dtype),
      tree, is_leaf=lambda v: isinstance(v, (np.ndarray, mpmath.mpf)))


def error(actual, exact_array, *, dps: int = DEFAULT_DPS) -> float:
  """||actual - exact||_inf / ||exact||_inf computed in mpmath (no float64 rounding of exact).

  Exact entries below float64's smallest normal number (2.2e-308) count as 0: they
  have no float64 representation that JAX keeps (it flushes subnormals to zero).
  Absolute when the exact array is then zero; ``inf`` for a non-finite or
  misshapen ``actual``.
  """
  actual = np.asarray(actual, np.float64)
  if not isinstance(exact_array, np.ndarray):
    exact_array = np.array(exact_array, dtype=object)
  if actual.shape != exact_array.shape or not np.all(np.isfinite(actual)):
    return float("inf")
  if actual.size == 0:
    return 0.0
  with mpmath.workdps(dps):
    tiny = mpmath.mpf(float(np.finfo(np.float64).tiny))
    exact_array = _map(lambda e: e if abs(e) >= tiny else mpmath.mpf(0), exact_array)
    diff = max(abs(mpmath.mpf(float(a)) - e) for a, e in zip(actual.ravel(), exact_array.ravel()))
    scale = max(abs(e) for e in exact_array.ravel())
    return float(diff / scale) if scale != 0 else float(diff)


def worst_error(actual_tree, exact_tree, *, dps: int = DEFAULT_DPS) -> float:
  """The largest ``error`` over the leaves of two trees (Layers, tuples) of the same structure."""
  import jax
  is_leaf = lambda v: isinstance(v, (np.ndarray, mpmath.mpf))  # noqa: E731
  leaves_a, tree_a = jax.tree_util.tree_flatten(actual_tree)
  leaves_e, tree_e = jax.tree_util.tree_flatten(exact_tree, is_leaf=is_leaf)
  if len(leaves_a) != len(leaves_e):
    return float("inf")
  return max((error(a, e, dps=dps) for a, e in zip(leaves_a, leaves_e)), default=0.0)


def check_derivatives(points=(-30, -3, -0.7, 0.3, 2, 25), *, dps: int = DEFAULT_DPS) -> dict:
  """The largest relative gap between each referee f' and ``mpmath.diff`` of its f.

  Kinked activations are checked away from 0. Returns {name: gap}.
  """
  gaps = {}
  with mpmath.workdps(dps):
    for name, (f, df) in _SCALAR.items():
      worst = mpmath.mpf(0)
      for p in points:
        z = mpmath.mpf(p)
        numeric = mpmath.diff(f, z)
        exact_value = df(z)
        scale = max(abs(exact_value), mpmath.mpf(10) ** (-dps // 2))
        worst = max(worst, abs(numeric - exact_value) / scale)
      gaps[name] = float(worst)
  return gaps
