"""The truth the candidate is judged by: bpref's own handwritten gradient, in float64.

The candidate sees arrays in its declared dtype; bpref runs on exactly those
values cast up to float64, so the difference measures the candidate's error
alone. Beside the gradient this module computes the tape (z_l, a_l), the
deltas delta_l, and a magnitude bound: the same backward recursion run on
absolute values,

  M_L = |g| |f'_L(z_L)|,  M_{l-1} = (M_l |W_l|) |f'_{l-1}(z_{l-1})|,
  |dW_l| <= M_l^T A_{l-1},  |db_l| <= sum_b M_l,

which bounds the size of every term summed into a gradient entry. A_l is |a_l|
widened by the rounding of the forward sums z_l, whose error scales with their
terms |W_l| A_{l-1} + |b_l| rather than with |z_l| (``_forward_magnitudes``);
|g| is widened the same way through A_L. Each |f'_l|
is widened by rho_f (``bpref.activations.Activation.df_error``): the absolute
error that the standard ways of computing f' carry (1 - a^2 for tanh loses all
relative accuracy once the unit saturates, yet is correct). Rounding
errors scale with these terms, not with the (possibly cancelled) result, so
errors are measured normwise against this bound.

``backprop_variant`` reruns the backward pass with one deliberate change (f'
at a_l instead of z_l, no f' on the output layer, another f'(0) at kinks...):
the diagnosis compares the candidate with these variants.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

import bpref
from bpref import activations as _activations
from bpref import losses as _losses
from bpref.network import Layer


class Truth(NamedTuple):
  """bpref's answer on one case, float64 NumPy arrays, W_l in the (n_l, n_{l-1}) layout."""
  loss: float
  dW: tuple
  db: tuple | None
  deltas: tuple | None  # delta_l, (B, n_l); filled in by ``with_deltas``
  z: tuple  # z_1..z_L
  a: tuple  # a_0..a_L
  g: np.ndarray  # dC/dy of the reduced loss, (B, n_L)
  mag_W: tuple  # magnitude bounds of dW_l
  mag_b: tuple | None
  mag_loss: float  # scale * sum_b |C_b|, plus sum |g| A_L for the rounding of the forward pass


def _bpref_all(params, x, t, loss, reduction):
  value, grads = bpref.value_and_grad(params, x, t, loss, reduction)
  tape = bpref.forward(params, x)
  return value, grads, tape


_bpref_jit = jax.jit(_bpref_all, static_argnums=(3, 4))
"""One compiled function per (shapes, activations, loss, reduction): jit's own cache keys them."""

_deltas_jit = jax.jit(bpref.deltas, static_argnums=(3, 4))

_CACHE: dict = {}
_CACHE_SIZE = 4096


def _params64(case) -> tuple:
  biases = case.biases if case.biases is not None else (None,) * len(case.weights)
  return tuple(Layer(np.asarray(W, np.float64), None if b is None else np.asarray(b, np.float64), act)
               for W, b, act in zip(case.weights, biases, case.arch.activations))


def _df(name, z):
  """f'(z) in float64 whatever the caller's JAX configuration."""
  with jax.enable_x64(True):
    return np.asarray(_activations.get(name).df(np.asarray(z, np.float64)), np.float64)


def _df_bound(name, z, a):
  """|f'(z)| + rho_f(z): f' with the absolute error a correct program may make in it.

  rho_f (``Activation.df_error``, in units of u) covers the standard forms of f' in
  common use, such as 1 - a^2 for tanh, whose error is absolute, not relative to f'
  (proofs/tolerance.md).
  """
  bound = np.abs(_df(name, z))
  error = _activations.get(name).df_error
  if error is None:
    return bound
  with jax.enable_x64(True):
    rho = np.asarray(error(np.asarray(z, np.float64), np.asarray(a, np.float64)), np.float64)
  return bound + rho


def _key(case):
  return (case.arch, case.dtype, case.reduction, case.biases is None)


def compute(case) -> Truth:
  """bpref's loss, gradients and tape on ``case``, and the magnitude bounds (cached by case)."""
  key = _key(case)
  if key not in _CACHE:
    if len(_CACHE) >= _CACHE_SIZE:
      _CACHE.clear()
    _CACHE[key] = _compute(case)
  return _CACHE[key]


def with_deltas(case, truth: Truth) -> Truth:
  """``truth`` with bpref's deltas delta_1..delta_L filled in."""
  if truth.deltas is not None:
    return truth
  params = _params64(case)
  with jax.enable_x64(True):
    deltas = jax.device_get(_deltas_jit(params, np.asarray(case.x, np.float64),
                                        np.asarray(case.t, np.float64), case.arch.loss,
                                        case.reduction))
  truth = truth._replace(deltas=tuple(np.asarray(d, np.float64) for d in deltas))
  _CACHE[_key(case)] = truth
  return truth


def _compute(case) -> Truth:
  params = _params64(case)
  x = np.asarray(case.x, np.float64)
  t = np.asarray(case.t, np.float64)
  loss, reduction = case.arch.loss, case.reduction
  with jax.enable_x64(True):
    value, grads, tape = jax.device_get(_bpref_jit(params, x, t, loss, reduction))
  z = tuple(np.asarray(v, np.float64) for v in tape.z)
  a = tuple(np.asarray(v, np.float64) for v in tape.a)
  dW = tuple(np.asarray(gr.W, np.float64) for gr in grads)
  db = None if case.biases is None else tuple(np.asarray(gr.b, np.float64) for gr in grads)
  scale = _losses.reduce_scale(x.shape[0], reduction)
  y = a[-1]
  with jax.enable_x64(True):
    g = np.asarray(_losses.get(loss).dy(y, t), np.float64) * scale
    per_example = np.asarray(_losses.get(loss).value(y, t), np.float64)
  fwd = _forward_magnitudes(params, x, z, a)
  mag_g = np.abs(g) + scale * (fwd[-1] + np.abs(t))
  mag = _magnitudes(params, z, a, mag_g)
  mag_W = tuple(m.T @ a_prev for m, a_prev in zip(mag, fwd[:-1]))  # bounds the terms of (39)
  mag_b = None if db is None else tuple(m.sum(axis=0) for m in mag)
  mag_loss = scale * np.abs(per_example).sum() + float(np.sum(np.abs(g) * fwd[-1]))
  return Truth(float(value), dW, db, None, z, a, g, mag_W, mag_b, float(mag_loss))


def _forward_magnitudes(params, x, z, a) -> list:
  """A_0..A_L: |a_l| widened by the rounding a correct forward pass carries into a_l.

  z_l = W_l a_{l-1} + b_l is a sum whose error scales with its terms,
  Z_l = |W_l| A_{l-1} + |b_l|, not with |z_l| (which may cancel); the error moves
  a_l by f'_l, so A_l = |a_l| + (|f'_l(z_l)| + rho_l) Z_l (A_0 = |x|, exact).
  """
  out = [np.abs(x)]
  for l, layer in enumerate(params, start=1):
    terms = out[-1] @ np.abs(layer.W).T  # the terms of (7)
    if layer.b is not None:
      terms = terms + np.abs(layer.b)[None, :]
    if _activations.get(layer.activation).elementwise:
      spread = _df_bound(layer.activation, z[l - 1], a[l]) * terms
    else:  # |d softmax| <= a (|dz| + sum_j a_j |dz_j|)
      spread = a[l] * (terms + np.sum(a[l] * terms, axis=-1, keepdims=True))
    out.append(np.abs(a[l]) + spread)
  return out


def _magnitudes(params, z, a, mag_g) -> list:
  """M_l: the backward recursion on absolute values (module docstring)."""
  n_layers = len(params)
  last = params[-1].activation
  if _activations.get(last).elementwise:
    m = mag_g * _df_bound(last, z[-1], a[-1])
  else:  # |diag(a) - a a^T| <= diag(a) + a a^T
    m = a[-1] * mag_g + a[-1] * np.sum(mag_g * a[-1], axis=-1, keepdims=True)
  out = [m]
  for l in range(n_layers - 1, 0, -1):
    m = (m @ np.abs(params[l].W)) * _df_bound(params[l - 1].activation, z[l - 1], a[l])
    out.append(m)
  return list(reversed(out))


def backprop_variant(case, truth: Truth, *, df_at: str = "z", output_fprime: bool = True,
                     softmax_diagonal: bool = False, kink_values: dict | None = None,
                     df_override: dict | None = None, layers: tuple | None = None):
  """The backward pass with one deliberate change, in float64 NumPy (no autodiff).

  Args:
    df_at: "z" (correct) or "a": evaluate f'_l at a_l = f(z_l) instead of z_l.
    output_fprime: False drops f'_L: delta_L = dC/dy.
    softmax_diagonal: a softmax output uses only the diagonal a (1 - a) of its Jacobian.
    kink_values: {activation: f'(0)} used where z is exactly 0.
    df_override: {activation: (z, a) -> f'} replacing that activation's derivative.
    layers: the layers (1-based) the change applies to; all when None.

  Returns (dW, db) tuples like ``Truth``.
  """
  params = _params64(case)
  n_layers = len(params)
  applies = (lambda l: True) if layers is None else (lambda l: l in layers)

  def fprime(l):  # f'_l at the chosen point, with the chosen kink convention
    name = params[l - 1].activation
    z = truth.z[l - 1]
    at = truth.a[l] if (df_at == "a" and applies(l)) else z
    d = _df(name, at)
    if df_override and name in df_override and applies(l):
      d = np.asarray(df_override[name](z, truth.a[l]), np.float64)
    if kink_values and name in kink_values and applies(l):
      d = np.where(z == 0, kink_values[name], d)
    return d

  last = params[-1].activation
  g = truth.g
  if not output_fprime and applies(n_layers):
    delta = g  # the bug: delta_L = dC/dy without f'_L
  elif not _activations.get(last).elementwise:
    a = truth.a[-1]
    if softmax_diagonal:
      delta = g * a * (1 - a)  # the bug: only the diagonal of diag(a) - a a^T
    else:
      delta = a * (g - np.sum(g * a, axis=-1, keepdims=True))  # (34) with the softmax Jacobian
  else:
    delta = g * fprime(n_layers)  # (34)
  deltas = [delta]
  for l in range(n_layers - 1, 0, -1):
    delta = (delta @ params[l].W) * fprime(l)  # (37)
    deltas.append(delta)
  deltas = list(reversed(deltas))
  dW = tuple(d.T @ a_prev for d, a_prev in zip(deltas, truth.a[:-1]))  # (39)
  db = None if case.biases is None else tuple(d.sum(axis=0) for d in deltas)
  return dW, db
