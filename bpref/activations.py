"""Activation functions f_l, each with its handwritten derivative f'_l beside it.

Every elementwise activation is a pair of pure functions: ``f(z)`` and ``df(z)``
(f' evaluated at the pre-activation z, equation (24)). Both are written in
numerically stable forms, finite and accurate for |z| up to 1e3 in float64.

Kinks follow ``jax.nn``: relu'(0) = 0, leaky_relu'(0) = 1, selu'(0) = scale * alpha.
These are conventions, not mathematics: at a kink any value in the subdifferential
is a valid subgradient. elu (alpha = 1) is C^1 at 0: elu'(0) = 1 is no convention.

NaN stays NaN: f(NaN) and every derivative form at NaN (f', f' from a, f'') are NaN, as
IEEE arithmetic and torch give (torch.relu(nan) = nan). A comparison such as z > 0 is
False at NaN, so a form whose branches are constants (relu, relu', leaky_relu') passes a NaN
z through explicitly (``_nan_through``); the others carry it in their arithmetic. identity'
is the constant 1, as in torch: a NaN upstream reaches the gradients through the cotangent.

``softmax`` is not elementwise: its derivative is the Jacobian
diag(a) - a a^T, applied as a vector-Jacobian product (see ``vjp``) and never
materialized on the gradient path.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax.numpy as jnp
from jax.scipy.special import erfc

Array = jnp.ndarray


class Activation(NamedTuple):
  """An activation f with its derivative.

  Attributes:
    name: the name used in ``Layer.activation``.
    f: z -> a = f(z), shape preserving.
    df: z -> f'(z), elementwise derivative; ``None`` for softmax.
    elementwise: False only for softmax, whose Jacobian is not diagonal.
    df_out: a -> f'(z) from the output a = f(z), given only where it equals ``df(z)``
      bit for bit (identity, relu); the backward pass then needs a_l alone, not z_l.
      tanh and sigmoid are left out on purpose: 1 - a^2 and a (1 - a) cancel once
      the unit saturates, since a carries an error of u in a value near 1.
    d2f: (z, a) -> a bound on |f''(z)|: a z rounded in the forward pass moves f' by it,
      bpref's own f' included; ``None`` where f' is piecewise constant. ``bpref verify``
      adds it to |f'(z)| in its magnitude bound; the oracle adds it and the error of other
      people's forms of f' (``bpref.oracle.textbook_forms``), rho_f of proofs/tolerance.md.
    kink: what jumps at z = 0, where the probes plant exact zeros: "f'" (a convention
      decides f'(0), and the oracle knows the values in use: ``bpref.oracle.judge``),
      "f''" (f' is continuous, its formula branches), or ``None`` (smooth).
    piecewise_linear: f' takes finitely many values and needs no transcendental function.
  """
  name: str
  f: Callable[[Array], Array]
  df: Callable[[Array], Array] | None
  elementwise: bool = True
  df_out: Callable[[Array], Array] | None = None
  d2f: Callable[[Array, Array], Array] | None = None
  kink: str | None = None
  piecewise_linear: bool = False


def sigmoid(z):
  # sigma(z) from e = exp(-|z|): no overflow for any z.
  e = jnp.exp(-jnp.abs(z))
  return jnp.where(z >= 0, 1 / (1 + e), e / (1 + e))


def _sigmoid_df(z):
  # sigma'(z) = sigma(z) sigma(-z) = e / (1 + e)^2 with e = exp(-|z|); no 1 - sigma cancellation.
  e = jnp.exp(-jnp.abs(z))
  return e / (1 + e) ** 2


def _sigmoid_second(z, a):
  # |f''| = sigma' |1 - 2 sigma| <= sigma' (R1); softplus, whose f' is sigma, has f'' = sigma'.
  return _sigmoid_df(z)


def _nan_through(z, value):
  # NaN stays NaN: z where z is NaN, value elsewhere (a branch on z > 0 would map NaN to a constant).
  return jnp.where(jnp.isnan(z), z, value)


# identity: f(z) = z, f'(z) = 1 everywhere, NaN included: the constant derivative, as torch's
# (a NaN reaches the gradients through the cotangent it multiplies).
def _identity(z):
  return z


def _identity_df(z):
  return jnp.ones_like(z)  # f'(z) = 1


# relu: f(z) = max(z, 0); f'(z) = 1 for z > 0, else 0 (relu'(0) = 0 as jax.nn.relu, and
# relu(-0) = +0); f(NaN) = f'(NaN) = NaN as torch.relu.
def _relu(z):
  return _nan_through(z, jnp.where(z > 0, z, jnp.zeros_like(z)))  # f(z) = max(z, 0)


def _relu_df(z):
  return _nan_through(z, jnp.where(z > 0, jnp.ones_like(z), jnp.zeros_like(z)))  # f'(z) = [z > 0]


def _relu_df_from_output(a):
  # f'(z) = [a > 0]: a > 0 exactly when z > 0, and a is NaN exactly when z is
  return _nan_through(a, jnp.where(a > 0, jnp.ones_like(a), jnp.zeros_like(a)))


LEAKY_RELU_SLOPE = 0.01


# leaky_relu: f(z) = z for z >= 0, 0.01 z below; f'(0) = 1 as jax.nn.leaky_relu; f'(NaN) = NaN
# (f(NaN) = 0.01 NaN is NaN already).
def _leaky_relu(z):
  return jnp.where(z >= 0, z, LEAKY_RELU_SLOPE * z)


def _leaky_relu_df(z):
  # f'(z) = 1 for z >= 0, 0.01 below
  return _nan_through(z, jnp.where(z >= 0, jnp.ones_like(z), jnp.full_like(z, LEAKY_RELU_SLOPE)))


# elu (alpha = 1): f(z) = z for z > 0, expm1(z) below; f'(z) = exp(z) for z <= 0, so f'(0) = 1.
def _elu(z):
  return jnp.where(z > 0, z, jnp.expm1(jnp.minimum(z, 0)))


def _elu_df(z):
  return jnp.where(z > 0, jnp.ones_like(z), jnp.exp(jnp.minimum(z, 0)))


def _elu_second(z, a):
  # f'' = f' for z <= 0, 0 above (R1).
  return jnp.where(z > 0, jnp.zeros_like(z), _elu_df(z))


SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


# selu: f(z) = scale * (z for z > 0, alpha expm1(z) below); f'(0) = scale * alpha as jax.nn.selu.
def _selu(z):
  return SELU_SCALE * jnp.where(z > 0, z, SELU_ALPHA * jnp.expm1(jnp.minimum(z, 0)))


def _selu_df(z):
  return SELU_SCALE * jnp.where(z > 0, jnp.ones_like(z), SELU_ALPHA * jnp.exp(jnp.minimum(z, 0)))


def _selu_second(z, a):
  # f'' = f' for z <= 0, 0 above (R1).
  return jnp.where(z > 0, jnp.zeros_like(z), _selu_df(z))


_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


def _normal_cdf(z):
  # Phi(z) = erfc(-z / sqrt 2) / 2: accurate in the left tail, where 1 + erf(z / sqrt 2) cancels.
  return 0.5 * erfc(-z * _SQRT_HALF)


# gelu (exact): f(z) = z Phi(z); f'(z) = Phi(z) + z phi(z).
def _gelu(z):
  return z * _normal_cdf(z)


def _gelu_df(z):
  return _normal_cdf(z) + z * _INV_SQRT_2PI * jnp.exp(-0.5 * z * z)


def _gelu_second(z, a):
  # f'' = phi(z) (2 - z^2) (R1), unbounded against f' near f'(z) = 0 at z = -0.75.
  return _INV_SQRT_2PI * jnp.exp(-0.5 * z * z) * jnp.abs(2 - z * z)


_GELU_C = math.sqrt(2 / math.pi)
_GELU_K = 0.044715


# gelu_tanh: f(z) = z (1 + tanh u) / 2 = z sigma(2u), u = c (z + k z^3).
# f'(z) = sigma(2u) + z sigma'(2u) 2 c (1 + 3 k z^2); the tail term is set to 0 once sigma'(2u) underflows.
def _gelu_tanh(z):
  return z * sigmoid(2 * _GELU_C * (z + _GELU_K * z ** 3))


def _gelu_tanh_df(z):
  u2 = 2 * _GELU_C * (z + _GELU_K * z ** 3)
  s_prime = _sigmoid_df(u2)
  du2 = 2 * _GELU_C * (1 + 3 * _GELU_K * z * z)
  tail = jnp.where(s_prime > 0, z * s_prime * du2, jnp.zeros_like(z))
  return sigmoid(u2) + tail


def _gelu_tanh_second(z, a):
  # |f''| <= sech^2 u (u' + |z| u'^2 + |z| |u''| / 2), u' = c (1 + 3 k z^2), u'' = 6 c k z (R1).
  du = _GELU_C * (1 + 3 * _GELU_K * z * z)
  sech2 = _tanh_df(_GELU_C * (z + _GELU_K * z ** 3))
  return sech2 * (du + jnp.abs(z) * du * du + 3 * _GELU_C * _GELU_K * z * z)


# silu: f(z) = z sigma(z); f'(z) = sigma(z) (1 + z sigma(-z)).
def _silu(z):
  return z * sigmoid(z)


def _silu_df(z):
  return sigmoid(z) * (1 + z * sigmoid(-z))


def _silu_second(z, a):
  # |f''| = sigma'(z) |2 + z (1 - 2 sigma)| <= sigma'(z) (2 + |z|) (R1).
  return _sigmoid_df(z) * (2 + jnp.abs(z))


# softplus: f(z) = log(1 + e^z) = logaddexp(z, 0); f'(z) = sigma(z).
def _softplus(z):
  return jnp.logaddexp(z, jnp.zeros_like(z))


# tanh: f'(z) = sech^2 z = 4 e / (1 + e)^2 with e = exp(-2|z|); no 1 - tanh^2 cancellation.
def _tanh_df(z):
  e = jnp.exp(-2 * jnp.abs(z))
  return 4 * e / (1 + e) ** 2


def _tanh_second(z, a):
  # |f''| = 2 |a| f' (R1).
  return 2 * jnp.abs(a) * _tanh_df(z)


# softsign: f(z) = z / (1 + |z|); f'(z) = 1 / (1 + |z|)^2.
def _softsign(z):
  return z / (1 + jnp.abs(z))


def _softsign_df(z):
  return 1 / (1 + jnp.abs(z)) ** 2


def _softsign_second(z, a):
  # |f''| = 2 (1 - |a|)^3 (R1).
  return 2 / (1 + jnp.abs(z)) ** 3


# mish: f(z) = z tanh(s), s = softplus(z); f'(z) = tanh(s) + z sech^2(s) sigma(z).
def _mish(z):
  return z * jnp.tanh(_softplus(z))


def _mish_df(z):
  s = _softplus(z)
  return jnp.tanh(s) + z * _tanh_df(s) * sigmoid(z)


def _mish_second(z, a):
  # |f''| = sech^2(s) sigma |2 + z (sigma(-z) - 2 t sigma)|
  #       <= sech^2(s) sigma (2 + |z| (sigma(-z) + 2 t sigma)) (R1).
  s = _softplus(z)
  t, sig = jnp.tanh(s), sigmoid(z)
  return _tanh_df(s) * sig * (2 + jnp.abs(z) * (sigmoid(-z) + 2 * t * sig))


def _sin_second(z, a):
  # cos is accurate to an ulp of itself; a z rounded in the forward pass moves it by |sin z| (R1).
  return jnp.abs(a)


# softmax over the last axis: a = exp(z - max z) / sum(exp(z - max z)).
def softmax(z):
  e = jnp.exp(z - jnp.max(z, axis=-1, keepdims=True))
  return e / jnp.sum(e, axis=-1, keepdims=True)


ACTIVATIONS: dict[str, Activation] = {
    act.name: act
    for act in (
        Activation("identity", _identity, _identity_df, df_out=_identity_df, piecewise_linear=True),
        Activation("relu", _relu, _relu_df, df_out=_relu_df_from_output, kink="f'",
                   piecewise_linear=True),
        Activation("leaky_relu", _leaky_relu, _leaky_relu_df, kink="f'", piecewise_linear=True),
        Activation("elu", _elu, _elu_df, d2f=_elu_second, kink="f''"),
        Activation("selu", _selu, _selu_df, d2f=_selu_second, kink="f'"),
        Activation("gelu", _gelu, _gelu_df, d2f=_gelu_second),
        Activation("gelu_tanh", _gelu_tanh, _gelu_tanh_df, d2f=_gelu_tanh_second),
        Activation("silu", _silu, _silu_df, d2f=_silu_second),
        Activation("mish", _mish, _mish_df, d2f=_mish_second),
        Activation("softplus", _softplus, sigmoid, d2f=_sigmoid_second),
        Activation("sigmoid", sigmoid, _sigmoid_df, d2f=_sigmoid_second),
        Activation("tanh", jnp.tanh, _tanh_df, d2f=_tanh_second),
        Activation("softsign", _softsign, _softsign_df, d2f=_softsign_second, kink="f''"),
        Activation("sin", jnp.sin, jnp.cos, d2f=_sin_second),
        Activation("softmax", softmax, None, elementwise=False),
    )
}
"""Every activation by name: each record holds every fact about it that bpref uses
(``tests/test_registry.py`` lists what a new one still lacks elsewhere)."""

KINKED = tuple(name for name, act in ACTIVATIONS.items() if act.kink)
"""Activations whose formula branches at z = 0, where the probes plant exact zeros: f' jumps
there (relu, leaky_relu, selu: a convention decides f'(0)), or f'' does (elu with alpha = 1
and softsign are C^1: f'(0) = 1 from both sides, no convention)."""

SMOOTH = tuple(name for name, act in ACTIVATIONS.items() if act.elementwise and not act.kink)
"""Elementwise activations with every derivative continuous (finite differences' premise)."""

OUTPUT_ONLY = tuple(name for name, act in ACTIVATIONS.items() if not act.elementwise)
"""Activations allowed only in the output layer."""


def get(name: str) -> Activation:
  """The activation called ``name``; a ValueError lists the valid names."""
  try:
    return ACTIVATIONS[name]
  except (KeyError, TypeError):
    raise ValueError(
        f"unknown activation {name!r}; valid names: {', '.join(ACTIVATIONS)}") from None


def argmax_mask(a: Array) -> Array:
  """True at k = argmax a (the first one on ties) in each row of a."""
  k = jnp.arange(a.shape[-1]).reshape((1,) * (a.ndim - 1) + (a.shape[-1],))
  return k == jnp.argmax(a, axis=-1)[..., None]


def _replace_argmax_by_minus_rest(v: Array, a: Array) -> Array:
  # v_k = -sum_{j != k} v_j at k = argmax a, for rows v that sum to 0 exactly.
  at_k = argmax_mask(a)
  rest = jnp.sum(jnp.where(at_k, jnp.zeros_like(v), v), axis=-1, keepdims=True)
  return jnp.where(at_k, -rest, v)


def derivative(name: str, z: Array, a: Array) -> Array:
  """f'(z) of an elementwise activation, from the output a = f(z) where that is exact.

  Args:
    name: activation name (elementwise).
    z: pre-activations, shape (..., n).
    a: activations f(z), shape (..., n).
  """
  act = get(name)
  return act.df(z) if act.df_out is None else act.df_out(a)  # (24): f'(z), from a when exact


def vjp(name: str, z: Array, a: Array, g: Array) -> Array:
  """g (da/dz): the cotangent g on a_l pulled back to z_l.

  For an elementwise f this is g * f'(z) (the diag(f'(z)) of (24) is never built).
  For softmax, da/dz = diag(a) - a a^T is symmetric, so g (da/dz) = a * (g - <g, a>).
  The entries of g (da/dz) sum to 0, and the entry at k = argmax a is computed as
  minus the sum of the others: a_k (g_k - <g, a>) cancels once 1 - a_k is below
  the unit roundoff, while the other entries do not.

  Args:
    name: activation name.
    z: pre-activations, shape (..., n).
    a: activations f(z), shape (..., n).
    g: cotangent on a, shape (..., n).
  """
  act = get(name)
  if act.elementwise:
    return g * derivative(name, z, a)  # (34): g diag f'(z), as an elementwise product
  out = a * (g - jnp.sum(g * a, axis=-1, keepdims=True))  # g (diag(a) - a a^T)
  return _replace_argmax_by_minus_rest(out, a)


def jacobian(name: str, z: Array, a: Array) -> Array:
  """da/dz per example, shape (..., n, n): diag f'(z) (27), or diag(a) - a a^T for softmax.

  The softmax diagonal entry at k = argmax a, a_k (1 - a_k), is computed as
  a_k sum_{j != k} a_j: 1 - a_k cancels once it is below the unit roundoff.
  """
  act = get(name)
  n = z.shape[-1]
  eye = jnp.eye(n, dtype=z.dtype).reshape((1,) * (z.ndim - 1) + (n, n))
  if act.elementwise:
    return act.df(z)[..., :, None] * eye
  jac = a[..., :, None] * eye - a[..., :, None] * a[..., None, :]  # diag(a) - a a^T
  at_k = argmax_mask(a)
  rest = jnp.sum(jnp.where(at_k, jnp.zeros_like(a), a), axis=-1)  # sum_{j != k} a_j = 1 - a_k
  diag_k = jnp.max(a, axis=-1) * rest  # a_k (1 - a_k)
  return jnp.where(at_k[..., :, None] & at_k[..., None, :], diag_k[..., None, None], jac)
