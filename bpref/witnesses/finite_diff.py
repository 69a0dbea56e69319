"""Finite-difference witnesses: derivatives from loss values alone, without autodiff.

Every witness here evaluates the loss C(theta) at nearby points and never
differentiates a program: no JAX autodiff, and none of bpref's handwritten
derivatives. theta is the flat vector of all parameters (``flatten``), v a
direction. With u the unit roundoff of the dtype:

* **Central difference** D_h = (C(theta + h v) - C(theta - h v)) / (2 h). Its
  truncation error is h^2 |C'''| / 6 and its rounding error u |C| / h, so the
  step minimizing the sum is h* = (3 u)^(1/3) (in units of theta's scale):
  ``central_step``.
* **Richardson extrapolation** of D_h over h, h/2, h/4, ...: the table
  T[i, j] = T[i, j-1] + (T[i, j-1] - T[i-1, j-1]) / (4^j - 1) removes the h^2,
  h^4, ... terms in turn. The last two diagonal entries differ by about the
  error of the second-to-last; that difference (plus the rounding term
  u |C| / h_min) is the returned per-coordinate error estimate.
* **Complex step** D = Im C(theta + i h v) / h for C analytic along v:
  no subtraction, so h can be 1e-20 and the result is exact to rounding. It
  needs a network evaluated on complex numbers: ``complex_loss_function``
  builds one from the analytic (or piecewise analytic, split on Re z)
  forms of the activations and losses below. gelu (whose erfc has no complex
  form in JAX) is refused with a ValueError. At a kink, the branch taken by
  Re z = 0 gives bpref's convention (relu'(0) = 0, leaky_relu'(0) = 1, ...).
* **Directional (adjoint) check**: <g, v> for a claimed gradient g against the
  derivative along v, one function evaluation pair instead of one per coordinate.
* **Taylor remainder**: r(h) = |C(theta + h v) - C(theta) - h <g, v>| is
  O(h^2) when g is the gradient and O(h) when <g, v> is wrong. ``taylor_test``
  fits the order on the smallest steps whose residual stands above the rounding
  floor; no step has to be chosen well.

Everything is a pure function of arrays and traces under ``jax.jit`` and ``jax.vmap``.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bpref import activations as _activations
from bpref import compilation
from bpref import losses as _losses
from bpref import tolerance as _tolerance
from bpref.network import DEFAULT_PRECISION
from bpref.structures import Layer
from bpref.validation import check_precision, check_problem
from bpref.witnesses import forward as _witness_forward
from bpref.witnesses import padding as _padding

Array = jax.Array


# ---------------------------------------------------------------- flat parameters

def flatten(params) -> Array:
  """theta: W_1, b_1, W_2, b_2, ... raveled (row-major) into one vector."""
  parts = []
  for layer in params:
    parts.append(jnp.ravel(layer.W))
    if layer.b is not None:
      parts.append(jnp.ravel(layer.b))
  return jnp.concatenate(parts)


def unflatten(theta: Array, like) -> tuple:
  """The parameters of ``like``'s structure with values from theta (theta's dtype, real or complex)."""
  out = []
  i = 0
  for layer in like:
    n_out, n_in = layer.W.shape
    W = theta[i:i + n_out * n_in].reshape((n_out, n_in))
    i += n_out * n_in
    b = None
    if layer.b is not None:
      b = theta[i:i + n_out]
      i += n_out
    out.append(Layer(W, b, layer.activation))
  return tuple(out)


def _forward(params, x, act_fns, precision):
  return _witness_forward.exact(params, x, act_fns.__getitem__, None, precision)


def _real_act(name):
  return _activations.get(name).f


def loss_function(params, x, t, loss="squared_error", reduction="mean", *,
                  precision=DEFAULT_PRECISION) -> tuple[Array, Callable[[Array], Array]]:
  """(theta0, C): the flat parameters and C(theta), the reduced loss as a function of them.

  C evaluates the forward pass (4)-(10) and the loss only; nothing is differentiated.
  """
  x2, t2, _ = check_problem(params, x, t, loss, reduction)
  acts = {layer.activation: _real_act(layer.activation) for layer in params}
  loss_obj = _losses.get(loss)

  def fun(theta):
    y = _forward(unflatten(theta, params), x2, acts, precision)
    return _losses.reduce(loss_obj.value(y, t2), reduction)

  return flatten(params), fun


# ---------------------------------------------------------------- complex forms
# Each is analytic, or piecewise analytic with the pieces split on Re z, so that
# Im f(z + i h) / h -> f'(z) for real z and tiny h.

def _re(z):
  return jnp.real(z)


def _c_sigmoid(z):
  # sigma(z) = 1 / (1 + e^-z) = e^z / (1 + e^z): the form whose exponential cannot overflow
  e = jnp.exp(-jnp.where(_re(z) >= 0, z, -z))
  return jnp.where(_re(z) >= 0, 1 / (1 + e), e / (1 + e))


def _c_softplus(z):
  # log(1 + e^z) = z + log1p(e^-z) for Re z >= 0, log1p(e^z) below
  e = jnp.exp(-jnp.where(_re(z) >= 0, z, -z))
  return jnp.where(_re(z) >= 0, z + jnp.log1p(e), jnp.log1p(e))


def _c_expm1_neg(z):
  # e^z - 1 evaluated only where Re z <= 0 is used
  return jnp.expm1(jnp.where(_re(z) > 0, jnp.zeros_like(z), z))


_GELU_C = float(np.sqrt(2 / np.pi))
_GELU_K = 0.044715

COMPLEX_ACTIVATIONS: dict[str, Callable] = {
    "identity": lambda z: z,
    # relu: 0 where Re z <= 0 (relu'(0) = 0); that test is False at NaN, so NaN stays NaN
    "relu": lambda z: jnp.where(_re(z) <= 0, jnp.zeros_like(z), z),
    "leaky_relu": lambda z: jnp.where(_re(z) >= 0, z, _activations.LEAKY_RELU_SLOPE * z),
    "elu": lambda z: jnp.where(_re(z) > 0, z, _c_expm1_neg(z)),
    "selu": lambda z: _activations.SELU_SCALE * jnp.where(
        _re(z) > 0, z, _activations.SELU_ALPHA * _c_expm1_neg(z)),
    "gelu_tanh": lambda z: z * _c_sigmoid(2 * _GELU_C * (z + _GELU_K * z ** 3)),
    "silu": lambda z: z * _c_sigmoid(z),
    "mish": lambda z: z * jnp.tanh(_c_softplus(z)),
    "softplus": _c_softplus,
    "sigmoid": _c_sigmoid,
    "tanh": jnp.tanh,
    "softsign": lambda z: jnp.where(_re(z) >= 0, z / (1 + z), z / (1 - z)),
    "sin": jnp.sin,
    "softmax": lambda z: _c_softmax(z),
}
"""Complex-capable activations: the analytic continuation of each f, for the complex step."""

NO_COMPLEX_FORM = {"gelu": "JAX's erfc is real only"}
"""Activations without a complex form, and why: the complex step leaves their networks out."""


def _c_softmax(z):
  e = jnp.exp(z - jnp.max(_re(z), axis=-1, keepdims=True).astype(z.dtype))  # shift by a real constant
  return e / jnp.sum(e, axis=-1, keepdims=True)


def _c_log_softmax(y):
  shifted = y - jnp.max(_re(y), axis=-1, keepdims=True).astype(y.dtype)
  return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))


def _c_xlogy(x, y):
  # x log y with 0 log 0 = 0; x real
  safe = jnp.where(x == 0, jnp.ones_like(y), y)
  return jnp.where(x == 0, jnp.zeros_like(y), x * jnp.log(safe))


def _c_huber(y, t):
  r = y - t
  big = jnp.where(_re(r) >= 0, r, -r) - 0.5  # |r| - 1/2, analytic on each side of Re r = 0
  return jnp.sum(jnp.where(jnp.abs(_re(r)) <= 1, 0.5 * r * r, big), axis=-1)


COMPLEX_LOSSES: dict[str, Callable] = {
    "squared_error": lambda y, t: jnp.sum((t - y) ** 2, axis=-1),
    "half_squared_error": lambda y, t: 0.5 * jnp.sum((t - y) ** 2, axis=-1),
    "softmax_cross_entropy": lambda y, t: -jnp.sum(t * _c_log_softmax(y), axis=-1),
    "sigmoid_binary_cross_entropy": lambda y, t: jnp.sum(_c_softplus(y) - t * y, axis=-1),
    "binary_cross_entropy": lambda y, t: -jnp.sum(_c_xlogy(t, y) + _c_xlogy(1 - t, 1 - y), axis=-1),
    "cross_entropy": lambda y, t: -jnp.sum(_c_xlogy(t, y), axis=-1),
    "huber": _c_huber,
}
"""Complex-capable per-example losses C_b(y, t) for complex y and real t."""


def supports_complex_step(params, loss: str) -> bool:
  """Whether every activation of ``params`` and ``loss`` have complex forms."""
  return (loss in COMPLEX_LOSSES
          and all(layer.activation in COMPLEX_ACTIVATIONS for layer in params))


def _complex_of(dtype):
  """The complex dtype of a real one's precision (no implicit promotion: strict mode allows none)."""
  return jnp.complex128 if jnp.dtype(dtype) == jnp.float64 else jnp.complex64


def complex_loss_function(params, x, t, loss="squared_error", reduction="mean", *,
                          precision=DEFAULT_PRECISION) -> tuple[Array, Callable[[Array], Array]]:
  """(theta0, C): C(theta) for complex theta, for the complex step.

  Raises a ValueError naming the layer whose activation has no complex form.
  """
  x2, t2, _ = check_problem(params, x, t, loss, reduction)
  for l, layer in enumerate(params, start=1):
    if layer.activation not in COMPLEX_ACTIVATIONS:
      raise ValueError(
          f"layer {l}: activation {layer.activation!r} has no complex-analytic form here, so the "
          f"complex step cannot differentiate it; use method='richardson' instead (complex-step "
          f"activations: {', '.join(COMPLEX_ACTIVATIONS)})")
  if loss not in COMPLEX_LOSSES:
    raise ValueError(f"loss {loss!r} has no complex form; use method='richardson'")
  loss_fn = COMPLEX_LOSSES[loss]
  cdtype = _complex_of(x2.dtype)

  def fun(theta):
    y = _forward(unflatten(theta, params), x2.astype(cdtype), COMPLEX_ACTIVATIONS, precision)
    return _losses.reduce(loss_fn(y, t2.astype(cdtype)), reduction)

  return flatten(params), fun


# ---------------------------------------------------------------- steps and derivatives

def _unit_roundoff(dtype) -> float:
  return float(jnp.finfo(dtype).eps) / 2


def central_step(dtype, scale=1.0):
  """h* = (3 u)^(1/3) * scale: balances truncation h^2 |C'''| / 6 against rounding u |C| / h."""
  return (3 * _unit_roundoff(dtype)) ** (1 / 3) * scale


def complex_step(dtype) -> float:
  """h of the complex step: 1e-20 in float64; 2^-20 in float32, where h^2 is still below u."""
  return 1e-20 if jnp.dtype(dtype) == jnp.float64 else 2.0 ** -20


def central(fun, theta, v, h) -> Array:
  """D_h = (C(theta + h v) - C(theta - h v)) / (2 h), the derivative of C along v."""
  return (fun(theta + h * v) - fun(theta - h * v)) / (2 * h)


class Estimate(NamedTuple):
  """A derivative estimate and an estimate of its absolute error (same shapes)."""
  value: Array
  error: Array


def richardson(fun, theta, v, h=None, levels: int = 4, noise=None) -> Estimate:
  """Richardson-extrapolated central differences along v with an error estimate.

  Steps h, h/2, ..., h/2^(levels-1); h defaults to u^(1/(2 levels + 1)) times the
  scale of theta (the step balancing the O(h^(2 levels)) truncation of the
  extrapolated value against rounding u |C| / h). The error estimate assumes C is
  smooth (2 levels + 1 times differentiable) between theta - h v and theta + h v:
  near a kink (relu, huber, softsign's f'') it can be too small. ``noise`` is
  ``richardson_table``'s.
  """
  hs = richardson_steps(theta, v, h, levels)
  values = jax.vmap(lambda s: fun(theta + s * v))(jnp.concatenate([hs, -hs]))  # one trace
  return richardson_table(values, hs, noise)


def richardson_steps(theta, v, h=None, levels: int = 4) -> Array:
  """The steps h, h/2, ..., h/2^(levels-1) of ``richardson`` along v."""
  dtype = theta.dtype
  if h is None:
    scale = jnp.maximum(1.0, jnp.max(jnp.abs(theta))) / jnp.maximum(jnp.max(jnp.abs(v)), 1e-300)
    h = (_unit_roundoff(dtype) ** (1 / (2 * levels + 1))) * scale
  return h * (0.5 ** jnp.arange(levels, dtype=dtype))


def richardson_table(values, hs, noise=None) -> Estimate:
  """``richardson``'s estimate from C(theta + h_i v) for the steps hs, then C(theta - h_i v).

  Its error is the last two levels' difference plus rounding: each value of C is off by at
  most ``noise`` times the largest |C| (2 u where C is one rounding from exact; a network's
  forward pass, ``value_noise``), so each D_h by that over h, and the extrapolation's weights
  sum to less than 2."""
  levels = hs.shape[0]
  table = [(values[i] - values[levels + i]) / (2 * hs[i]) for i in range(levels)]  # T[i, 0] = D_{h_i}
  best_prev, best = table[0], table[0]
  for j in range(1, levels):
    # T[i, j] = T[i, j-1] + (T[i, j-1] - T[i-1, j-1]) / (4^j - 1)
    table = [table[i] + (table[i] - table[i - 1]) / (4 ** j - 1) for i in range(1, len(table))]
    best_prev, best = best, table[-1]
  if noise is None:
    noise = 2 * _unit_roundoff(hs.dtype)
  rounding = 2 * noise * jnp.max(jnp.abs(values)) / hs[-1]  # noise |C| / h_min, times the weights
  return Estimate(best, jnp.abs(best - best_prev) + rounding)


def value_noise(dtype, depth: int, inner: int) -> float:
  """The rounding error of C relative to |C| that ``richardson_table`` charges a network:
  the forward pass's rounding model (``bpref.tolerance.forward_tolerance``) at its depth and
  longest sum. One rounding of C (2 u) was too little: on a float64 softplus network of depth
  2, a Richardson derivative was off by 1.3e-13 where its estimate said 4.1e-14."""
  return _tolerance.forward_tolerance(dtype, depth=depth, inner=inner)


def network_noise(params, x) -> float:
  """``value_noise`` of the network (params, x): its depth, and its longest sum, the largest
  width or the batch."""
  sizes = [np.shape(x)[-1]] + [np.shape(layer.W)[0] for layer in params]
  batch = np.shape(x)[0] if np.ndim(x) == 2 else 1
  return value_noise(jnp.result_type(x), len(params), max(sizes + [batch]))


def complex_derivative(fun_c, theta, v, h=None) -> Array:
  """Im C(theta + i h v) / h: the derivative along v, exact to rounding, for analytic C."""
  if h is None:
    h = complex_step(theta.dtype)
  cdtype = _complex_of(theta.dtype)
  return jnp.imag(fun_c(theta.astype(cdtype) + 1j * h * v.astype(cdtype))) / h


def _basis_map(one, n, dtype):
  return jax.vmap(one)(jnp.eye(n, dtype=dtype))


def gradient_central(fun, theta, h=None) -> Array:
  """Per-coordinate central differences with the step of ``central_step``."""
  if h is None:
    h = central_step(theta.dtype, jnp.maximum(1.0, jnp.max(jnp.abs(theta))))
  return _basis_map(lambda e: central(fun, theta, e, h), theta.shape[0], theta.dtype)


def gradient_richardson(fun, theta, levels: int = 4, noise=None) -> Estimate:
  """Per-coordinate Richardson estimates of dC/dtheta and their error estimates."""
  est = jax.vmap(lambda e: richardson(fun, theta, e, levels=levels, noise=noise))(
      jnp.eye(theta.shape[0], dtype=theta.dtype))
  return Estimate(est.value, est.error)


def gradient_complex(fun_c, theta, h=None) -> Array:
  """Per-coordinate complex-step derivatives of C."""
  return _basis_map(lambda e: complex_derivative(fun_c, theta, e, h), theta.shape[0], theta.dtype)


@compilation.jit(static_argnames=("loss", "reduction", "method", "precision"),
                  cpu_options=compilation.ELEMENTAL_EMITTERS)
def gradient(params, x, t, loss="squared_error", reduction="mean", *, method="richardson",
             precision=DEFAULT_PRECISION):
  """dC/dparams by finite differences, as a tree shaped like params.

  Args:
    method: "central", "richardson" or "complex".

  Returns:
    For "richardson": (grads, error_estimates), two trees; otherwise grads.
  """
  if method == "complex":
    theta, fun_c = complex_loss_function(params, x, t, loss, reduction, precision=precision)
    return unflatten(gradient_complex(fun_c, theta), params)
  theta, fun = loss_function(params, x, t, loss, reduction, precision=precision)
  if method == "central":
    return unflatten(gradient_central(fun, theta), params)
  if method == "richardson":
    est = gradient_richardson(fun, theta, noise=network_noise(params, x))
    return unflatten(est.value, params), unflatten(est.error, params)
  raise ValueError(f"unknown method {method!r}; valid: central, richardson, complex")


# ---------------------------------------------------------------- directional and Taylor tests

class Directional(NamedTuple):
  """The adjoint test along v: claimed <g, v>, measured derivative, its error estimate."""
  claimed: Array
  measured: Array
  error: Array


def directional(fun, theta, g, v, *, fun_c=None, noise=None) -> Directional:
  """<g, v> for the claimed gradient g against the derivative of C along v.

  With ``fun_c`` (a complex-capable C) the complex step measures it, with an error
  estimate of a few ulps of |<|g|, |v|>|; else Richardson with its own estimate
  (``noise`` as ``richardson_table``'s: ``network_noise`` for a network's C).
  """
  claimed = jnp.vdot(g, v, precision=DEFAULT_PRECISION)
  if fun_c is not None:
    measured = complex_derivative(fun_c, theta, v)
    u = _unit_roundoff(theta.dtype)
    return Directional(claimed, measured, 8 * u * jnp.abs(claimed))
  est = richardson(fun, theta, v, noise=noise)
  return Directional(claimed, est.value, est.error)


class Taylor(NamedTuple):
  """Residuals of the Taylor-remainder test and the fitted order.

  Attributes:
    h: the steps, decreasing by factors of 2.
    residual: r(h) = |C(theta + h v) - C(theta) - h <g, v>|.
    floor: the rounding floor of each residual, c u (|C| + |h <g, v>|).
    used: which steps entered the fit (residual well above the floor, smallest steps).
    order: slope of log r against log h on the used steps; nan if fewer than 2.
  """
  h: Array
  residual: Array
  floor: Array
  used: Array
  order: Array


def taylor_test(fun, theta, g, v, *, h0=None, steps: int = 24, fit: int = 4) -> Taylor:
  """The Taylor-remainder test: order ~2 when g is dC/dtheta along v, ~1 when it is not.

  Args:
    fun: C(theta).
    theta: the point, shape (n,).
    g: the claimed gradient, shape (n,).
    v: a direction, shape (n,).
    h0: the largest step; default 2^-3 max(1, ||theta||_inf) / ||v||_inf.
    steps: number of steps h0 / 2^k.
    fit: how many of the smallest usable steps enter the fit.
  """
  hs = taylor_steps(theta, v, h0, steps)
  values = jax.vmap(lambda h: fun(theta + h * v))(hs)
  return taylor_fit(hs, fun(theta), values, jnp.vdot(g, v, precision=DEFAULT_PRECISION), fit)


def taylor_steps(theta, v, h0=None, steps: int = 24) -> Array:
  """The steps h0 / 2^k of ``taylor_test``."""
  if h0 is None:
    h0 = 0.125 * jnp.maximum(1.0, jnp.max(jnp.abs(theta))) / jnp.maximum(jnp.max(jnp.abs(v)), 1e-300)
  return h0 * (0.5 ** jnp.arange(steps, dtype=theta.dtype))


def taylor_fit(hs, c0, values, slope, fit: int = 4) -> Taylor:
  """``taylor_test``'s residuals and fitted order from C(theta) = c0, C(theta + h v) for the
  steps hs, and the claimed slope <g, v>."""
  dtype = hs.dtype
  u = _unit_roundoff(dtype)
  residual = jnp.abs(values - c0 - hs * slope)  # |C(p + h v) - C(p) - h <g, v>|
  floor = 8 * u * (jnp.abs(c0) + jnp.abs(hs * slope) + jnp.abs(values))
  usable = residual > 16 * floor
  # the `fit` smallest usable steps: count usable steps from the small end
  from_small_end = jnp.cumsum(usable[::-1])[::-1]
  used = usable & (from_small_end <= fit)
  log_h = jnp.log(hs)
  log_r = jnp.log(jnp.where(used, residual, 1.0))
  w = used.astype(dtype)
  count = jnp.sum(w)
  mean_h = jnp.sum(w * log_h) / jnp.maximum(count, 1)
  mean_r = jnp.sum(w * log_r) / jnp.maximum(count, 1)
  cov = jnp.sum(w * (log_h - mean_h) * (log_r - mean_r))
  var = jnp.sum(w * (log_h - mean_h) ** 2)
  order = jnp.where(count >= 2, cov / jnp.where(var > 0, var, 1.0), jnp.nan)
  return Taylor(hs, residual, floor, used, order)


# ---------------------------------------------------------------- many networks at once

def _padded_f(complex_step):
  if complex_step:
    return lambda name: COMPLEX_ACTIVATIONS.get(name, _no_complex_form)
  return lambda name: _activations.get(name).f


def _no_complex_form(y, t=None):
  # a branch a case without complex forms never takes (``estimates_many`` drops its values)
  return jnp.full(y.shape if t is None else y.shape[:1], jnp.nan, y.dtype)


def padded_loss_function(p, *, complex_step: bool = False, precision=DEFAULT_PRECISION,
                         names=_padding.EVERY):
  """(theta0, C) of one padded case (``bpref.witnesses.padding.Padded``, without the case axis).

  theta is W (D, N, N) then b (D, N), raveled: the padded network's parameters. C is the
  case's loss, as ``loss_function``'s, from the forward pass (4)-(10) with the padding's
  masks, switching over the activations and losses of ``names`` (the case's
  ``bpref.witnesses.padding.Names``); nothing is differentiated. A padded entry of theta
  does not change C: its row feeds a unit that is masked to 0 (or out of a softmax), its
  column meets an input that is 0.
  A fused loss (cross_entropy after softmax, binary_cross_entropy after sigmoid) is
  evaluated as its logit loss of z_L, the same function of theta. With ``complex_step``, C
  takes complex theta (the forms of ``COMPLEX_ACTIVATIONS`` and ``COMPLEX_LOSSES``; NaN for
  a case without them).
  """
  depth, width = p.b.shape
  dtype = _complex_of(p.x.dtype) if complex_step else p.x.dtype
  acts = _witness_forward.padded_branches(_padded_f(complex_step), names.activations)
  losses = tuple(COMPLEX_LOSSES.get(n, _no_complex_form) if complex_step else _losses.get(n).value
                 for n in names.losses)
  loss = jnp.asarray([names.losses.index(_losses.get(n).logits or n) for n in names.losses],
                     p.loss.dtype)[p.loss]
  fused = loss != p.loss  # C(f_L(z_L)) taken as its logit loss of z_L
  x, t = p.x.astype(dtype), p.t.astype(dtype)

  def fun(theta):
    W = theta[:depth * width * width].reshape(depth, width, width)
    b = theta[depth * width * width:].reshape(depth, width)

    y, zs = _witness_forward.padded(W, b, x, p, acts, None, precision)  # (7), (8), masked
    y = jnp.where(fused, zs[p.depth - 1], y)  # a fused loss: its logit loss of z_L
    y = _padding.fill_outputs(y, p, loss, names)  # a padded output adds exactly 0
    per_example = jax.lax.switch(loss, losses, y, t)  # C_b (13)
    per_example = jnp.where(p.rows(), per_example, jnp.zeros_like(per_example))
    return jnp.sum(per_example) / p.divisor(dtype)

  return jnp.concatenate([p.W.ravel(), p.b.ravel()]), fun


class Estimates(NamedTuple):
  """Every finite-difference witness of one problem (``estimates_many``).

  Attributes:
    central, richardson, richardson_error: per-coordinate estimates of dC/dparams (trees
      shaped like params), Richardson's with its error estimate.
    complex: the complex-step gradient, or None where the problem has no complex form.
    directional: the adjoint check of the claimed gradient along the direction (complex
      step where it applies, else Richardson).
    taylor_order: the fitted order of ``taylor_test`` along the direction.
  """
  central: tuple
  richardson: tuple
  richardson_error: tuple
  complex: tuple | None
  directional: Directional
  taylor_order: float


def _estimates_one(p, g_W, g_b, v_W, v_b, precision, names):
  """Every estimate of one padded case from one batch of real values of C and one of complex
  values: C is traced twice, whatever the number of witnesses (a small program to compile)."""
  theta, fun = padded_loss_function(p, precision=precision, names=names)
  _, fun_c = padded_loss_function(p, complex_step=True, precision=precision, names=names)
  g = jnp.concatenate([g_W.ravel(), g_b.ravel()])
  v = jnp.concatenate([v_W.ravel(), v_b.ravel()])
  n, dtype = theta.shape[0], theta.dtype
  basis = jnp.eye(n, dtype=dtype)
  h = central_step(dtype, jnp.maximum(1.0, jnp.max(jnp.abs(theta))))
  hs = richardson_steps(theta, basis[0])  # the same for every coordinate direction
  hs_v = richardson_steps(theta, v)
  taylor_hs = taylor_steps(theta, v)
  along_e = jnp.concatenate([jnp.stack([h, -h]), hs, -hs])  # central, then Richardson
  along_v = jnp.concatenate([hs_v, -hs_v, taylor_hs, jnp.zeros((1,), dtype)])
  on_basis = theta[None, None, :] + along_e[None, :, None] * basis[:, None, :]  # (n, steps, n)
  points = jnp.concatenate([on_basis.reshape(-1, n), theta[None, :] + along_v[:, None] * v[None, :]])
  values = jax.vmap(fun)(points)
  on_e = values[:n * along_e.shape[0]].reshape(n, along_e.shape[0])
  on_v = values[n * along_e.shape[0]:]
  levels = hs.shape[0]
  central_ = (on_e[:, 0] - on_e[:, 1]) / (2 * h)
  noise = value_noise(dtype, p.W.shape[0], max(p.x.shape))  # the bucket's depth and sums
  rich = jax.vmap(lambda row: richardson_table(row, hs, noise))(on_e[:, 2:])
  slope = jnp.vdot(g, v, precision=DEFAULT_PRECISION)
  rich_v = richardson_table(on_v[:2 * levels], hs_v, noise)
  order = taylor_fit(taylor_hs, on_v[-1], on_v[2 * levels:-1], slope).order
  # the complex step: Im C(theta + i h e) / h along every coordinate, then along v
  step = complex_step(dtype)
  cdtype = _complex_of(dtype)
  directions = jnp.concatenate([basis, v[None, :]]).astype(cdtype)
  imag = jnp.imag(jax.vmap(lambda d: fun_c(theta.astype(cdtype) + 1j * step * d))(directions)) / step
  u = _unit_roundoff(dtype)
  by_complex = Directional(slope, imag[-1], 8 * u * jnp.abs(slope))
  by_richardson = Directional(slope, rich_v.value, rich_v.error)
  depth, width = p.b.shape
  split = lambda flat: (flat[:depth * width * width].reshape(depth, width, width),  # noqa: E731
                        flat[depth * width * width:].reshape(depth, width))
  return (split(central_), split(rich.value), split(rich.error), split(imag[:-1]), by_complex,
          by_richardson, order)


@compilation.jit(static_argnames=("precision", "names"),
                  cpu_options=compilation.ELEMENTAL_EMITTERS)
def _estimates_padded(p, grads, directions, precision, names):
  # one case at a time (lax.map): P steps per coordinate of each case stay in memory, not K P
  return jax.lax.map(lambda case: _estimates_one(*case, precision, names), (p, *grads, *directions))


def _unpack_estimates(out, k, params, x2, single):
  central, value, error, complex_, by_complex, by_richardson, order = out
  tree = lambda W, b: _padding.cut_params(W[k], b[k], params)  # noqa: E731
  return (tree(*central), tree(*value), tree(*error), tree(*complex_),
          Directional(*(np.asarray(f[k]) for f in by_complex)),
          Directional(*(np.asarray(f[k]) for f in by_richardson)), float(order[k]))


def estimates_many(problems, grads, directions, *, precision=DEFAULT_PRECISION,
                   shape=None, narrow=False) -> list:
  """``Estimates`` of many problems in padded buckets (``bpref.witnesses.padding``): one
  compilation per bucket and dtype, whatever the architectures, activations and losses.

  Args:
    problems: ``bpref.problems.Problem``s or tuples (params, x, t[, loss[, reduction]]).
    grads: one claimed gradient per problem (shaped like its params) for the directional
      and Taylor checks.
    directions: one direction per problem, shaped like its params.
    shape: one bucket (D, N, M) for every problem, in place of the least of each.
    narrow: each bucket's program switches over the activations and losses its problems
      use (``bpref.witnesses.padding.bucketed``), not over every one.
  """
  check_precision(precision)
  out = _padding.bucketed(problems, functools.partial(_estimates_padded, precision=precision),
                          _unpack_estimates, shape=shape, extras=(grads, directions),
                          chunk=_padding.CHUNKS[0],  # the cases run one by one: no larger chunk
                          narrow=narrow)
  estimates = []
  for problem, (central, value, error, complex_, by_complex, by_richardson, order) in zip(problems, out):
    params, _, _, loss, _ = _padding.fields(problem)
    ok = supports_complex_step(params, loss)
    estimates.append(Estimates(central, value, error, complex_ if ok else None,
                               by_complex if ok else by_richardson, order))
  return estimates
