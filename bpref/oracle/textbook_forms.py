"""Other people's forms of f': the textbook a-forms and the rounding error of every common form.

bpref computes each f' in its own cancellation-free form (``bpref.activations``). The code the
oracle judges often writes f' otherwise: from the output a = f(z) (1 - a^2 for tanh, a (1 - a)
for sigmoid), with erf in place of erfc, through a tanh or sigma that has saturated. Those
forms are correct, but their error is absolute, not relative to f' (proofs/tolerance.md,
(R2)-(R4)). This table holds, for every activation:

* ``a_form``: f' as textbooks write it in terms of a, with its formula in words (``AForm``),
  where f' is a function of a; the diagnoses evaluate it on the wrong arrays;
* ``error``: phi_f(z, a), the absolute error in units of u that the common forms of f' make
  beyond bpref's own; None where every form is exact up to a relative u (identity, relu,
  leaky_relu, sin). Bounded in z: where the inner tanh or sigma of a form has rounded to +-1
  (``TANH_SATURATED``, ``SIGMOID_SATURATED``, (S) of proofs/tolerance.md) the form is exact,
  and its allowance stops there.

rho_f = phi_f + |f''| (``bpref.activations.Activation.d2f``) is what the oracle adds to |f'(z)|
(``bpref.oracle.truth.rho``); ``bpref verify``, which holds bpref to its own forms, adds |f''|
alone. ``error`` functions take jnp arrays and trace under ``jax.jit`` (``bpref.tables``).

>>> import numpy as np
>>> TEXTBOOK["tanh"].a_form.text, float(TEXTBOOK["tanh"].a_form.df(np.float64(0.5)))
('1 - a^2', 0.75)
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax.numpy as jnp
import numpy as np

from bpref import activations as _activations

TANH_SATURATED = 22.0
"""|w| from which tanh(w) is +-1 exactly in every dtype (saturation, (S) of proofs/tolerance.md):
fdlibm and glibc return +-1 outright for |w| >= 22, and their 1 - 2 / (expm1(2|w|) + 2) below it
rounds to 1 once 2 e^(-2|w|) < u / 2, from |w| = ln(4 / u) / 2 on: 19.06 in float64, 9.01 in
float32, earlier in any coarser dtype. A form built on a saturated tanh is exact up to the true
value it rounded away, e^(-2|w|) < 1e-19 = 0.001 u in float64, so its error allowance stops there."""

SIGMOID_SATURATED = 2 * TANH_SATURATED
"""z from which sigma(z) is 1 exactly in every dtype (S): 1 / (1 + exp(-z)) once exp(-z) < u
(z > 36.7 in float64), exp(z) / (1 + exp(z)) once exp(z) > 2 / u (z > 37.4), and
(1 + tanh(z / 2)) / 2 once tanh(z / 2) = 1 (z / 2 >= ``TANH_SATURATED``)."""

_sigmoid = _activations.sigmoid
_softplus = _activations.get("softplus").f
_GELU_C = math.sqrt(2 / math.pi)  # c of gelu_tanh's w = c (z + k z^3)
_GELU_K = 0.044715  # k of gelu_tanh
_SELU_SCALE, _SELU_ALPHA = _activations.SELU_SCALE, _activations.SELU_ALPHA


def _sigmoid_error(z, a):
  # a (1 - a) from a carrying 3u: 1 - a is off by 3u a absolute (R2).
  return 3 * a * a


def _elu_error(z, a):
  # z <= 0: a + alpha, or exp(z) - 1 + 1, is off by 2u alpha absolute (R3).
  return jnp.where(z > 0, jnp.zeros_like(z), jnp.full_like(z, 2.0))


def _selu_error(z, a):
  # z <= 0: a + scale alpha is off by 2u scale alpha absolute (R3).
  return jnp.where(z > 0, jnp.zeros_like(z), jnp.full_like(z, 2 * _SELU_SCALE * _SELU_ALPHA))


def _gelu_error(z, a):
  # Phi as (1 + erf(z / sqrt 2)) / 2 is off by u absolute in the left tail (R4).
  return jnp.ones_like(z)


def _gelu_tanh_error(z, a):
  # (1 + tanh w) / 2 is off by u absolute (R4); the tail z (1 - tanh^2 w) w' / 2 carries
  # 5u tanh^2 w <= 5u absolute in 1 - tanh^2 w (R2). Once tanh w = +-1 (|w| >= 22, (S)) the
  # forms give (1 + tanh w) / 2 in {0, 1} and a tail of 0 exactly, missing only the true
  # (1 - |tanh w|) / 2 + |z| w' sech^2 w / 2 < 0.08 u absolute: the tail's 5u is gone (S).
  w = _GELU_C * (z + _GELU_K * z ** 3)  # w = c (z + k z^3)
  tail = 2.5 * jnp.abs(z) * _GELU_C * (1 + 3 * _GELU_K * z * z)  # 5u |z| w' / 2 (R2)
  return 1 + jnp.where(jnp.abs(w) < TANH_SATURATED, tail, jnp.zeros_like(z))


def _silu_error(z, a):
  # sigma (1 + z (1 - sigma)): 1 - sigma is off by 3u sigma absolute (R2), times |z| sigma.
  # Once sigma = 1 (z >= 44, (S)) the form is 1 exactly, missing only the true
  # (z - 1) e^-z < 0.03 u absolute: u for the cap (S).
  s = _sigmoid(z)
  return jnp.where(z < SIGMOID_SATURATED, 3 * jnp.abs(z) * s * s, jnp.ones_like(z))


def _softplus_error(z, a):
  # From a: 1 - exp(-a) is off by 2u exp(-a) = 2u sigma(-z) absolute (R2).
  return 2 * _sigmoid(-z)


def _tanh_error(z, a):
  # 1 - a^2 from a carrying 2u: off by 5u a^2 absolute (R2).
  return 5 * a * a


def _softsign_error(z, a):
  # (1 - |a|)^2 from a carrying 2u: 1 - |a| is off by 2u |a|, squared 4u |a| (1 - |a|) (R2).
  return 4 * jnp.abs(a) / (1 + jnp.abs(z))


def _mish_error(z, a):
  # tanh(s) + z sigma (1 - tanh(s)^2): 1 - t^2 from t carrying 2u is off by 5u t^2 absolute
  # (R2), times |z| sigma. s as the definition writes it, log(1 + e^z) (tinygrad's logaddexp,
  # NumPy code), is off by u absolute where 1 + e^z rounds (R4): t passes it on to f' as u,
  # and to 1 - t^2 as 2u |t|, times |z| sigma. Once t = 1 (s >= 22, (S)) the form is 1
  # exactly, missing only the true (1 - t) + z sigma sech^2 s < (2 + 4 z) e^-2s < 0.06 u
  # absolute: u for the cap (S).
  s = _softplus(z)
  t = jnp.tanh(s)
  zs = jnp.abs(z) * _sigmoid(z)
  return 1 + jnp.where(s < TANH_SATURATED, zs * (5 * t * t + 2 * jnp.abs(t)), jnp.zeros_like(z))


class AForm(NamedTuple):
  """f' written in terms of a = f(z), as textbooks give it.

  Attributes:
    text: the formula, e.g. "1 - a^2".
    df: a -> f'(z), a NumPy function of a.
  """
  text: str
  df: Callable[[np.ndarray], np.ndarray]


class Textbook(NamedTuple):
  """Other people's forms of one activation's f' (module docstring).

  Attributes:
    a_form: f' from a (``AForm``), or None where f' is not a function of a.
    error: (z, a) -> phi_f in units of u, or None where every common form is exact.
  """
  a_form: AForm | None = None
  error: Callable | None = None


_FORMS = {
    "elu": Textbook(AForm("a + 1 below 0", lambda a: (a > 0) * 1.0 + (a <= 0) * (a + 1)),
                    _elu_error),
    "selu": Textbook(AForm("a + scale alpha below 0", lambda a: (a > 0) * _SELU_SCALE
                           + (a <= 0) * (a + _SELU_SCALE * _SELU_ALPHA)), _selu_error),
    "gelu": Textbook(error=_gelu_error),
    "gelu_tanh": Textbook(error=_gelu_tanh_error),
    "silu": Textbook(error=_silu_error),
    "mish": Textbook(error=_mish_error),
    "softplus": Textbook(AForm("1 - exp(-a)", lambda a: 1 - np.exp(-a)), _softplus_error),
    "sigmoid": Textbook(AForm("a (1 - a)", lambda a: a * (1 - a)), _sigmoid_error),
    "tanh": Textbook(AForm("1 - a^2", lambda a: 1 - a * a), _tanh_error),
    "softsign": Textbook(AForm("(1 - |a|)^2", lambda a: (1 - abs(a)) ** 2), _softsign_error),
}

TEXTBOOK: dict[str, Textbook] = {name: _FORMS.get(name, Textbook())
                                 for name in _activations.ACTIVATIONS}
"""Other people's forms of f', for every activation (``Textbook()`` where there are none)."""

A_FORMS: dict[str, AForm] = {name: t.a_form for name, t in TEXTBOOK.items() if t.a_form}
"""The a-forms, by activation: those whose f' textbooks write from a."""

ERRORS: tuple = tuple((name, t.error) for name, t in TEXTBOOK.items() if t.error)
"""(activation, phi_f) pairs: the forms' errors, hashable as ``bpref.tables`` needs its argument."""
