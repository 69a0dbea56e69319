"""Known wrong forms of f': the derivatives that backward code computes by mistake.

One table for both diagnoses (``bpref.oracle.diagnosis`` for networks,
``bpref.oracle.ops`` for single ops). Each ``Form`` is f' of one activation as some code
writes it wrongly, a NumPy function of z and a = f(z) in float64:

* the wrong variable: a derivative written in terms of a fed z (1 - z^2 for tanh,
  z (1 - z) for sigmoid; from ``bpref.oracle.textbook_forms.A_FORMS``);
* a missing square, factor or term: tanh' = 1 - a, sigmoid' = a, silu' = sigma(z) (the
  product rule's second term), gelu_tanh' without the 3 k z^2 of the inner derivative or with
  its 3 lost;
* a missing inner derivative (chain factor): mish' without softplus' = sigma(z), gelu_tanh'
  without c (1 + 3 k z^2);
* a wrong constant or argument: sigma(z) as (1 + tanh z) / 2 (the /2 of z / 2 lost), Phi as
  (1 + erf z) / 2 (the 1 / sqrt 2 lost), phi without its 1 / sqrt(2 pi);
* a mix of gelu's exact form and its tanh approximation (Phi with the tanh form's second term,
  and the other way round);
* a neighbouring function's derivative: tan' = 1 + tan^2 for tanh, sigma' for softplus.

A diagnosis evaluates every form of the failing case's activation on the case's z and a;
the form that reproduces the candidate there, and again on other cases, is named: its code
(``Form.code``, e.g. ``tanh_one_minus_a``) and its formula in words. Generic slips that
apply to every activation (f' at a, f' missing, a kink's side) are models of the diagnoses
themselves, not forms.

gelu_tanh: t = tanh(w), w = c (z + k z^3), c = sqrt(2 / pi), k = 0.044715;
f'(z) = (1 + t) / 2 + z (1 - t^2) c (1 + 3 k z^2) / 2. gelu: f'(z) = Phi(z) + z phi(z).
mish: s = softplus(z), f'(z) = tanh(s) + z sech^2(s) sigma(z).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

from bpref import activations as _activations
from bpref.oracle import textbook_forms as _textbook


class Form(NamedTuple):
  """One wrong way to compute f' of one activation.

  Attributes:
    code: names the form, ``<activation>_<what it computes>``.
    activation: the activation whose f' it replaces.
    slip: the kind of mistake, one of ``SLIPS``.
    formula: what the code computes, and what went wrong, in words.
    df: (z, a) -> the form's f' values, float64 NumPy arrays of z's shape.
    variable: "a" when the code needs only a = f(z) (a candidate handed a can compute it),
      "z" when it needs z.
  """
  code: str
  activation: str
  slip: str
  formula: str
  df: Callable[[np.ndarray, np.ndarray], np.ndarray]
  variable: str = "z"

  def values(self, z, a) -> np.ndarray:
    """The form's f' on z and a, float64; inf or NaN where the form divides by 0."""
    z, a = np.asarray(z, np.float64), np.asarray(a, np.float64)
    with np.errstate(all="ignore"):
      return np.broadcast_to(np.asarray(self.df(z, a), np.float64), z.shape).copy()

  def summary(self) -> str:
    """A finding's summary naming the form, the same in both diagnoses."""
    return f"{self.activation}' computed as {self.formula} (form {self.code})"


SLIPS = ("wrong variable", "missing square", "missing factor", "missing term",
         "missing inner derivative", "wrong constant", "mixed forms", "another function")
"""The kinds of mistake the forms make, as the module docstring lists them."""

_C = math.sqrt(2 / math.pi)  # c of gelu_tanh's w = c (z + k z^3)
_K = 0.044715  # k of gelu_tanh
_erfc = np.vectorize(math.erfc, otypes=[np.float64])
_erf = np.vectorize(math.erf, otypes=[np.float64])


def _sigma(z):
  return 0.5 * (1 + np.tanh(0.5 * z))  # sigma(z) = (1 + tanh(z / 2)) / 2, finite for every z


def _softplus(z):
  return np.logaddexp(z, 0.0)  # softplus(z) = log(1 + e^z)


def _sech2(w):
  return 1 / np.cosh(w) ** 2  # sech^2 w = 1 - tanh^2 w (1 / inf = 0 far out)


def _cdf(z):
  return 0.5 * _erfc(-z / math.sqrt(2))  # Phi(z) = erfc(-z / sqrt 2) / 2


def _pdf(z):
  return np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)  # phi(z) = e^(-z^2 / 2) / sqrt(2 pi)


def _w(z):
  return _C * (z + _K * z ** 3)  # w = c (z + k z^3)


def _w_prime(z):
  return _C * (1 + 3 * _K * z * z)  # w' = c (1 + 3 k z^2)


def _t(z):
  return np.tanh(_w(z))  # t = tanh(w) of gelu_tanh


def _gelu_tanh_tail(z, inner):
  return z * _sech2(_w(z)) * inner / 2  # z (1 - t^2) w' / 2, w' given as ``inner``


def _wrong_variable(name, text, fn) -> Form:
  """The a-form of f' (``bpref.oracle.textbook_forms.A_FORMS``) fed z: f'(z) written as g(a),
  evaluated at g(z)."""
  word = {"1 - a^2": "one_minus_z_squared", "a (1 - a)": "z_one_minus_z",
          "1 - exp(-a)": "one_minus_exp_minus_z"}.get(text, "a_form_of_z")
  return Form(f"{name}_{word}", name, "wrong variable", f"{text} with z in place of a: the "
              f"a-form of {name}' fed z instead of a = {name}(z)", lambda z, a: fn(z))


WRONG_VARIABLE: dict[str, Form] = {
    name: _wrong_variable(name, *form) for name, form in _textbook.A_FORMS.items()}
"""The form that feeds z to the a-form derivative, by activation (those with an a-form)."""


_SPECIFIC = (
    # tanh: f'(z) = 1 - a^2 = sech^2 z
    Form("tanh_one_minus_a", "tanh", "missing square",
         "1 - a: the square of 1 - a^2 is missing", lambda z, a: 1 - a, "a"),
    Form("tanh_one_minus_z", "tanh", "wrong variable",
         "1 - z: the a-form 1 - a^2 fed z, with its square missing", lambda z, a: 1 - z),
    Form("tanh_sech", "tanh", "missing square",
         "sech z = 1 / cosh z: the square of sech^2 z is missing", lambda z, a: 1 / np.cosh(z)),
    Form("tanh_one_plus_a_squared", "tanh", "another function",
         "1 + a^2: tan' = 1 + tan^2, the derivative of tan, not of tanh (1 - a^2)",
         lambda z, a: 1 + a * a, "a"),
    # sigmoid: f'(z) = a (1 - a)
    Form("sigmoid_a", "sigmoid", "missing factor",
         "a: the factor (1 - a) of a (1 - a) is missing", lambda z, a: a, "a"),
    Form("sigmoid_one_minus_a", "sigmoid", "missing factor",
         "1 - a: the factor a of a (1 - a) is missing", lambda z, a: 1 - a, "a"),
    # softplus: f'(z) = sigma(z)
    Form("softplus_sigmoid_of_minus_z", "softplus", "wrong constant",
         "1 / (1 + e^z) = sigma(-z): the sign of the exponent of sigma(z) = 1 / (1 + e^-z) lost",
         lambda z, a: _sigma(-z)),
    Form("softplus_tanh_half_missing", "softplus", "wrong constant",
         "(1 + tanh z) / 2: sigma(z) = (1 + tanh(z / 2)) / 2 with the / 2 of tanh's argument lost",
         lambda z, a: 0.5 * (1 + np.tanh(z))),
    Form("softplus_tanh", "softplus", "another function",
         "tanh z in place of sigma(z)", lambda z, a: np.tanh(z)),
    Form("softplus_sigmoid_derivative", "softplus", "another function",
         "sigma(z) (1 - sigma(z)): sigma', one derivative more than softplus' = sigma",
         lambda z, a: _sigma(z) * _sigma(-z)),
    # gelu_tanh: f'(z) = (1 + t) / 2 + z (1 - t^2) w' / 2, w' = c (1 + 3 k z^2)
    Form("gelu_tanh_cubic_term_missing", "gelu_tanh", "missing inner derivative",
         "(1 + t) / 2 + z (1 - t^2) c / 2: the 3 k z^2 of w' = c (1 + 3 k z^2) is missing",
         lambda z, a: 0.5 * (1 + _t(z)) + _gelu_tanh_tail(z, _C)),
    Form("gelu_tanh_three_missing", "gelu_tanh", "missing inner derivative",
         "(1 + t) / 2 + z (1 - t^2) c (1 + k z^2) / 2: the 3 of 3 k z^2 in w' is missing",
         lambda z, a: 0.5 * (1 + _t(z)) + _gelu_tanh_tail(z, _C * (1 + _K * z * z))),
    Form("gelu_tanh_inner_derivative_missing", "gelu_tanh", "missing inner derivative",
         "(1 + t) / 2 + z (1 - t^2) / 2: the inner derivative w' = c (1 + 3 k z^2) is missing",
         lambda z, a: 0.5 * (1 + _t(z)) + _gelu_tanh_tail(z, 1.0)),
    Form("gelu_tanh_product_term_missing", "gelu_tanh", "missing term",
         "(1 + t) / 2: the product rule's second term z (1 - t^2) w' / 2 is missing",
         lambda z, a: 0.5 * (1 + _t(z))),
    Form("gelu_tanh_half_missing", "gelu_tanh", "wrong constant",
         "(1 + t) / 2 + z (1 - t^2) w': the 1/2 of the second term is missing",
         lambda z, a: 0.5 * (1 + _t(z)) + 2 * _gelu_tanh_tail(z, _w_prime(z))),
    Form("gelu_tanh_sech", "gelu_tanh", "missing square",
         "(1 + t) / 2 + z sech(w) w' / 2: sech w = 1 / cosh w where sech^2 w = 1 - t^2 belongs",
         lambda z, a: 0.5 * (1 + _t(z)) + z / np.cosh(_w(z)) * _w_prime(z) / 2),
    # gelu: f'(z) = Phi(z) + z phi(z)
    Form("gelu_product_term_missing", "gelu", "missing term",
         "Phi(z): the product rule's second term z phi(z) is missing", lambda z, a: _cdf(z)),
    Form("gelu_pdf_normalization_missing", "gelu", "wrong constant",
         "Phi(z) + z e^(-z^2 / 2): the 1 / sqrt(2 pi) of phi is missing",
         lambda z, a: _cdf(z) + z * np.exp(-0.5 * z * z)),
    Form("gelu_erf_scale_missing", "gelu", "wrong constant",
         "(1 + erf z) / 2 + z phi(z): Phi(z) = (1 + erf(z / sqrt 2)) / 2 with the 1 / sqrt 2 of "
         "erf's argument lost", lambda z, a: 0.5 * (1 + _erf(z)) + z * _pdf(z)),
    Form("gelu_exponent_half_missing", "gelu", "wrong constant",
         "Phi(z) + z e^(-z^2) / sqrt(2 pi): the 1/2 of phi's exponent -z^2 / 2 is missing",
         lambda z, a: _cdf(z) + z * np.exp(-z * z) / math.sqrt(2 * math.pi)),
    # gelu and gelu_tanh mixed: each one's first term with the other's second
    Form("gelu_mixed_exact_first_term", "gelu", "mixed forms",
         "Phi(z) + z (1 - t^2) w' / 2: the exact gelu's Phi with the tanh approximation's "
         "second term", lambda z, a: _cdf(z) + _gelu_tanh_tail(z, _w_prime(z))),
    Form("gelu_mixed_tanh_first_term", "gelu", "mixed forms",
         "(1 + t) / 2 + z phi(z): the tanh approximation's first term with the exact gelu's "
         "second", lambda z, a: 0.5 * (1 + _t(z)) + z * _pdf(z)),
    # silu: f'(z) = sigma(z) (1 + z (1 - sigma(z)))
    Form("silu_product_term_missing", "silu", "missing term",
         "sigma(z): the product rule's second term z sigma(z) (1 - sigma(z)) is missing",
         lambda z, a: _sigma(z)),
    Form("silu_one_minus_sigma_missing", "silu", "missing factor",
         "sigma(z) (1 + z): the (1 - sigma(z)) of sigma' is missing",
         lambda z, a: _sigma(z) * (1 + z)),
    Form("silu_sigmoid_derivative", "silu", "another function",
         "sigma(z) (1 - sigma(z)): sigmoid's derivative in place of silu's",
         lambda z, a: _sigma(z) * _sigma(-z)),
    # mish: f'(z) = tanh(s) + z sech^2(s) sigma(z), s = softplus(z)
    Form("mish_product_term_missing", "mish", "missing term",
         "tanh(s): the product rule's second term z sech^2(s) sigma(z) is missing",
         lambda z, a: np.tanh(_softplus(z))),
    Form("mish_inner_derivative_missing", "mish", "missing inner derivative",
         "tanh(s) + z sech^2(s): the inner derivative softplus'(z) = sigma(z) is missing",
         lambda z, a: np.tanh(_softplus(z)) + z * _sech2(_softplus(z))),
    Form("mish_sech_at_z", "mish", "wrong variable",
         "tanh(s) + z sech^2(z) sigma(z): sech^2 taken at z where s = softplus(z) belongs",
         lambda z, a: np.tanh(_softplus(z)) + z * _sech2(z) * _sigma(z)),
    # elu (alpha = 1): f'(z) = 1 for z > 0, a + 1 below
    Form("elu_a_below", "elu", "wrong constant",
         "a for z <= 0: the + 1 of a + 1 is missing", lambda z, a: np.where(z > 0, 1.0, a)),
    # selu: f'(z) = scale for z > 0, a + scale alpha below
    Form("selu_scale_missing", "selu", "wrong constant",
         "1 for z > 0 and alpha e^z below: the scale is missing",
         lambda z, a: np.where(z > 0, 1.0, _activations.SELU_ALPHA * np.exp(np.minimum(z, 0)))),
    Form("selu_alpha_unscaled", "selu", "wrong constant",
         "a + alpha below 0: the scale of scale alpha is missing",
         lambda z, a: np.where(z > 0, _activations.SELU_SCALE, a + _activations.SELU_ALPHA)),
    Form("selu_constants_rounded", "selu", "wrong constant",
         "scale 1.0507 and alpha 1.67326, the constants rounded to 5 and 6 digits (tinygrad's "
         "selu): off by about 1e-6 of f'",
         lambda z, a: 1.0507 * np.where(z >= 0, 1.0, 1.67326 * np.exp(np.minimum(z, 0)))),
    # softsign: f'(z) = 1 / (1 + |z|)^2 = (1 - |a|)^2
    Form("softsign_square_missing", "softsign", "missing square",
         "1 / (1 + |z|): the square of 1 / (1 + |z|)^2 is missing",
         lambda z, a: 1 / (1 + np.abs(z))),
    Form("softsign_abs_missing", "softsign", "missing factor",
         "1 / (1 + z)^2: the |z| of 1 / (1 + |z|)^2 is missing", lambda z, a: 1 / (1 + z) ** 2),
    Form("softsign_a_abs_missing", "softsign", "missing factor",
         "(1 - a)^2: the |a| of (1 - |a|)^2 is missing", lambda z, a: (1 - a) ** 2, "a"),
    # relu: f'(z) = [z > 0]
    Form("relu_output", "relu", "another function",
         "a = max(z, 0): the output used where the mask [z > 0] belongs", lambda z, a: a, "a"),
)


def _table() -> dict:
  out = {name: [] for name, act in _activations.ACTIVATIONS.items() if act.elementwise}
  for name, form in WRONG_VARIABLE.items():
    out[name].append(form)
  for form in _SPECIFIC:
    out[form.activation].append(form)
    if form.slip == "mixed forms":  # a mix of the two gelus is wrong for either
      out["gelu_tanh"].append(form._replace(activation="gelu_tanh"))
  return {name: tuple(forms) for name, forms in out.items()}


FORMS: dict[str, tuple[Form, ...]] = _table()
"""The known wrong forms of f', by activation (softmax has none: it is not elementwise)."""

A_FORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    name: form.df for name, form in _textbook.A_FORMS.items()}
"""f' written in terms of a = f(z) (``bpref.oracle.textbook_forms``), by activation: what a-form code
evaluates, at the wrong layer's a when the activations are indexed one off."""


def of(name: str) -> tuple:
  """The known wrong forms of activation ``name``'s f' (none for softmax or an unknown name).

  >>> import numpy as np
  >>> one_minus_a = [f for f in of("tanh") if f.code == "tanh_one_minus_a"][0]
  >>> one_minus_a.values(np.array([0.0]), np.array([0.5]))  # 1 - a where 1 - a^2 belongs
  array([0.5])
  """
  return FORMS.get(name, ())
