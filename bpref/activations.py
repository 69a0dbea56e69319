"""Activation functions f_l, each with its handwritten derivative f'_l beside it.

Every elementwise activation is a pair of pure functions: ``f(z)`` and ``df(z)``
(f' evaluated at the pre-activation z, equation (24)). Both are written in
numerically stable forms, finite and accurate for |z| up to 1e3 in float64.

Kinks follow ``jax.nn``: relu'(0) = 0, leaky_relu'(0) = 1, selu'(0) = scale * alpha.
These are conventions, not mathematics: at a kink any value in the subdifferential
is a valid subgradient. elu (alpha = 1) is C^1 at 0: elu'(0) = 1 is no convention.

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
    df_error: (z, a) -> rho_f(z) >= 0, the absolute error of f'(z) in units of the unit
      roundoff u that a correct program may make: the standard forms of f' in common use
      (1 - a^2, a (1 - a), a + alpha, 1 + erf, ...) and a z rounded in the forward pass
      (|f''(z)|). ``None`` where f' is exact (identity, relu, leaky_relu). Derived in
      proofs/tolerance.md; the oracle adds it to |f'(z)| in its magnitude bound.
  """
  name: str
  f: Callable[[Array], Array]
  df: Callable[[Array], Array] | None
  elementwise: bool = True
  df_out: Callable[[Array], Array] | None = None
  df_error: Callable[[Array, Array], Array] | None = None


def _sigmoid(z):
  # sigma(z) from e = exp(-|z|): no overflow for any z.
  e = jnp.exp(-jnp.abs(z))
  return jnp.where(z >= 0, 1 / (1 + e), e / (1 + e))


def _sigmoid_prime(z):
  # sigma'(z) = sigma(z) sigma(-z) = e / (1 + e)^2 with e = exp(-|z|); no 1 - sigma cancellation.
  e = jnp.exp(-jnp.abs(z))
  return e / (1 + e) ** 2


def _sigmoid_prime_error(z, a):
  # a (1 - a) from a carrying 3u: 1 - a is off by 3u a absolute (R2); f'' = f' (1 - 2a) (R1).
  return 3 * a * a + _sigmoid_prime(z)


# identity: f(z) = z, f'(z) = 1.
def _identity(z):
  return z


def _identity_prime(z):
  return jnp.ones_like(z)


def _identity_prime_from_output(a):
  return jnp.ones_like(a)  # f'(z) = 1


# relu: f(z) = max(z, 0); f'(z) = 1 for z > 0, else 0 (relu'(0) = 0 as jax.nn.relu).
def _relu(z):
  return jnp.where(z > 0, z, jnp.zeros_like(z))


def _relu_prime(z):
  return jnp.where(z > 0, jnp.ones_like(z), jnp.zeros_like(z))


def _relu_prime_from_output(a):
  return jnp.where(a > 0, jnp.ones_like(a), jnp.zeros_like(a))  # a > 0 exactly when z > 0


LEAKY_RELU_SLOPE = 0.01


# leaky_relu: f(z) = z for z >= 0, 0.01 z below; f'(0) = 1 as jax.nn.leaky_relu.
def _leaky_relu(z):
  return jnp.where(z >= 0, z, LEAKY_RELU_SLOPE * z)


def _leaky_relu_prime(z):
  return jnp.where(z >= 0, jnp.ones_like(z), jnp.full_like(z, LEAKY_RELU_SLOPE))


# elu (alpha = 1): f(z) = z for z > 0, expm1(z) below; f'(z) = exp(z) for z <= 0, so f'(0) = 1.
def _elu(z):
  return jnp.where(z > 0, z, jnp.expm1(jnp.minimum(z, 0)))


def _elu_prime(z):
  return jnp.where(z > 0, jnp.ones_like(z), jnp.exp(jnp.minimum(z, 0)))


def _elu_prime_error(z, a):
  # z <= 0: a + alpha, or exp(z) - 1 + 1, is off by 2u alpha absolute (R3); f'' = f' there (R1).
  return jnp.where(z > 0, jnp.zeros_like(z), 2 + _elu_prime(z))


SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


# selu: f(z) = scale * (z for z > 0, alpha expm1(z) below); f'(0) = scale * alpha as jax.nn.selu.
def _selu(z):
  return SELU_SCALE * jnp.where(z > 0, z, SELU_ALPHA * jnp.expm1(jnp.minimum(z, 0)))


def _selu_prime(z):
  return SELU_SCALE * jnp.where(z > 0, jnp.ones_like(z), SELU_ALPHA * jnp.exp(jnp.minimum(z, 0)))


def _selu_prime_error(z, a):
  # z <= 0: a + scale alpha is off by 2u scale alpha absolute (R3); f'' = f' there (R1).
  return jnp.where(z > 0, jnp.zeros_like(z), 2 * SELU_SCALE * SELU_ALPHA + _selu_prime(z))


_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


def _normal_cdf(z):
  # Phi(z) = erfc(-z / sqrt 2) / 2: accurate in the left tail, where 1 + erf(z / sqrt 2) cancels.
  return 0.5 * erfc(-z * _SQRT_HALF)


# gelu (exact): f(z) = z Phi(z); f'(z) = Phi(z) + z phi(z).
def _gelu(z):
  return z * _normal_cdf(z)


def _gelu_prime(z):
  return _normal_cdf(z) + z * _INV_SQRT_2PI * jnp.exp(-0.5 * z * z)


def _gelu_prime_error(z, a):
  # Phi as (1 + erf(z / sqrt 2)) / 2 is off by u absolute in the left tail (R4);
  # f'' = phi(z) (2 - z^2) (R1), unbounded against f' near f'(z) = 0 at z = -0.75.
  return 1 + _INV_SQRT_2PI * jnp.exp(-0.5 * z * z) * jnp.abs(2 - z * z)


_GELU_C = math.sqrt(2 / math.pi)
_GELU_K = 0.044715


# gelu_tanh: f(z) = z (1 + tanh u) / 2 = z sigma(2u), u = c (z + k z^3).
# f'(z) = sigma(2u) + z sigma'(2u) 2 c (1 + 3 k z^2); the tail term is set to 0 once sigma'(2u) underflows.
def _gelu_tanh(z):
  return z * _sigmoid(2 * _GELU_C * (z + _GELU_K * z ** 3))


def _gelu_tanh_prime(z):
  u2 = 2 * _GELU_C * (z + _GELU_K * z ** 3)
  s_prime = _sigmoid_prime(u2)
  du2 = 2 * _GELU_C * (1 + 3 * _GELU_K * z * z)
  tail = jnp.where(s_prime > 0, z * s_prime * du2, jnp.zeros_like(z))
  return _sigmoid(u2) + tail


def _gelu_tanh_prime_error(z, a):
  # (1 + tanh u) / 2 is off by u absolute (R4); the tail z (1 - tanh^2 u) u' / 2 carries
  # 5u tanh^2 u <= 5u absolute in 1 - tanh^2 u (R2); f'' (R1) is bounded by
  # sech^2 u (u' + |z| u'^2 + |z| |u''| / 2), with u' = c (1 + 3 k z^2), u'' = 6 c k z.
  du = _GELU_C * (1 + 3 * _GELU_K * z * z)
  sech2 = _tanh_prime(_GELU_C * (z + _GELU_K * z ** 3))
  f2 = sech2 * (du + jnp.abs(z) * du * du + 3 * _GELU_C * _GELU_K * z * z)
  return 1 + 2.5 * jnp.abs(z) * du + f2


# silu: f(z) = z sigma(z); f'(z) = sigma(z) (1 + z sigma(-z)).
def _silu(z):
  return z * _sigmoid(z)


def _silu_prime(z):
  return _sigmoid(z) * (1 + z * _sigmoid(-z))


def _silu_prime_error(z, a):
  # sigma (1 + z (1 - sigma)): 1 - sigma is off by 3u sigma absolute (R2), times |z| sigma;
  # f'' = sigma'(z) (2 + z (1 - 2 sigma)) (R1).
  s = _sigmoid(z)
  return 3 * jnp.abs(z) * s * s + _sigmoid_prime(z) * (2 + jnp.abs(z))


def _softplus_prime_error(z, a):
  # From a: 1 - exp(-a) is off by 2u exp(-a) = 2u sigma(-z) absolute (R2); f'' = sigma' (R1).
  return 2 * _sigmoid(-z) + _sigmoid_prime(z)


# softplus: f(z) = log(1 + e^z) = logaddexp(z, 0); f'(z) = sigma(z).
def _softplus(z):
  return jnp.logaddexp(z, jnp.zeros_like(z))


# tanh: f'(z) = sech^2 z = 4 e / (1 + e)^2 with e = exp(-2|z|); no 1 - tanh^2 cancellation.
def _tanh_prime(z):
  e = jnp.exp(-2 * jnp.abs(z))
  return 4 * e / (1 + e) ** 2


def _tanh_prime_error(z, a):
  # 1 - a^2 from a carrying 2u: off by 5u a^2 absolute (R2); f'' = -2 a f' (R1).
  return 5 * a * a + 2 * jnp.abs(a) * _tanh_prime(z)


# softsign: f(z) = z / (1 + |z|); f'(z) = 1 / (1 + |z|)^2.
def _softsign(z):
  return z / (1 + jnp.abs(z))


def _softsign_prime(z):
  return 1 / (1 + jnp.abs(z)) ** 2


def _softsign_prime_error(z, a):
  # (1 - |a|)^2 from a carrying 2u: 1 - |a| is off by 2u |a|, squared 4u |a| (1 - |a|) (R2);
  # |f''| = 2 (1 - |a|)^3 (R1).
  r = 1 / (1 + jnp.abs(z))
  return 4 * jnp.abs(a) * r + 2 * r ** 3


def _sin_prime_error(z, a):
  # cos is accurate to an ulp of itself; a z rounded in the forward pass moves it by |sin z| (R1).
  return jnp.abs(a)


# softmax over the last axis: a = exp(z - max z) / sum(exp(z - max z)).
def _softmax(z):
  e = jnp.exp(z - jnp.max(z, axis=-1, keepdims=True))
  return e / jnp.sum(e, axis=-1, keepdims=True)


ACTIVATIONS: dict[str, Activation] = {
    act.name: act
    for act in (
        Activation("identity", _identity, _identity_prime, df_out=_identity_prime_from_output),
        Activation("relu", _relu, _relu_prime, df_out=_relu_prime_from_output),
        Activation("leaky_relu", _leaky_relu, _leaky_relu_prime),
        Activation("elu", _elu, _elu_prime, df_error=_elu_prime_error),
        Activation("selu", _selu, _selu_prime, df_error=_selu_prime_error),
        Activation("gelu", _gelu, _gelu_prime, df_error=_gelu_prime_error),
        Activation("gelu_tanh", _gelu_tanh, _gelu_tanh_prime, df_error=_gelu_tanh_prime_error),
        Activation("silu", _silu, _silu_prime, df_error=_silu_prime_error),
        Activation("softplus", _softplus, _sigmoid, df_error=_softplus_prime_error),
        Activation("sigmoid", _sigmoid, _sigmoid_prime, df_error=_sigmoid_prime_error),
        Activation("tanh", jnp.tanh, _tanh_prime, df_error=_tanh_prime_error),
        Activation("softsign", _softsign, _softsign_prime, df_error=_softsign_prime_error),
        Activation("sin", jnp.sin, jnp.cos, df_error=_sin_prime_error),
        Activation("softmax", _softmax, None, elementwise=False),
    )
}
"""Every activation by name."""

KINKED = ("relu", "leaky_relu", "elu", "selu")
"""Activations with a kink at z = 0, where the probes plant exact zeros: f' jumps there
(relu, leaky_relu, selu: a convention decides f'(0)), or f'' does (elu with alpha = 1 is
C^1, f'(0) = 1 from both sides, so it has no convention)."""

OUTPUT_ONLY = ("softmax",)
"""Activations allowed only in the output layer."""


def get(name: str) -> Activation:
  """The activation called ``name``; a ValueError lists the valid names."""
  try:
    return ACTIVATIONS[name]
  except (KeyError, TypeError):
    raise ValueError(
        f"unknown activation {name!r}; valid names: {', '.join(ACTIVATIONS)}") from None


def _argmax_mask(a: Array) -> Array:
  # True at k = argmax a (the first one on ties) in each row of a.
  k = jnp.arange(a.shape[-1]).reshape((1,) * (a.ndim - 1) + (a.shape[-1],))
  return k == jnp.argmax(a, axis=-1)[..., None]


def _replace_argmax_by_minus_rest(v: Array, a: Array) -> Array:
  # v_k = -sum_{j != k} v_j at k = argmax a, for rows v that sum to 0 exactly.
  at_k = _argmax_mask(a)
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
  at_k = _argmax_mask(a)
  rest = jnp.sum(jnp.where(at_k, jnp.zeros_like(a), a), axis=-1)  # sum_{j != k} a_j = 1 - a_k
  diag_k = jnp.max(a, axis=-1) * rest  # a_k (1 - a_k)
  return jnp.where(at_k[..., :, None] & at_k[..., None, :], diag_k[..., None, None], jac)
