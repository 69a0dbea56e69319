"""The autodiff witness: the same network and loss, differentiated by ``jax.grad``.

This is the only module of bpref that uses JAX autodiff. It shares the forward
pass and the loss values with the handwritten path but none of its derivatives,
and the handwritten path (``bpref.backprop``) never imports it.

Every function mirrors the public function of the same name in ``bpref``:
delta_l and lambda_l are obtained by injecting an offset e_l into z_l
(z_l = W_l a_{l-1} + b_l + e_l) and differentiating with respect to e_l at 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bpref import activations as _activations
from bpref import losses as _losses
from bpref.network import DEFAULT_PRECISION, check_problem, check_x


def _injected_forward(params, x2, offsets, precision):
  """y with e_l added to z_l in every layer; the offsets have the shapes of z_l."""
  a = x2
  for layer, e in zip(params, offsets):
    z = jnp.matmul(a, layer.W.T, precision=precision)
    if layer.b is not None:
      z = z + layer.b[None, :]
    a = _activations.get(layer.activation).f(z + e)
  return a


def _zeros_like_z(params, x2):
  return tuple(jnp.zeros((x2.shape[0], layer.W.shape[0]), x2.dtype) for layer in params)


def _loss(params, x2, t2, offsets, loss, reduction, precision):
  y = _injected_forward(params, x2, offsets, precision)
  return _losses.reduce(_losses.get(loss).value(y, t2), reduction)


def value_and_grad(params, x, t, loss="squared_error", reduction="mean", *,
                   precision=DEFAULT_PRECISION):
  """(C, dC/dparams) by ``jax.value_and_grad``."""
  x2, t2, _ = check_problem(params, x, t, loss, reduction)
  zeros = _zeros_like_z(params, x2)
  return jax.value_and_grad(_loss)(params, x2, t2, zeros, loss, reduction, precision)


def grad(params, x, t, loss="squared_error", reduction="mean", *, precision=DEFAULT_PRECISION):
  """dC/dparams by ``jax.grad``."""
  return value_and_grad(params, x, t, loss, reduction, precision=precision)[1]


def deltas(params, x, t, loss="squared_error", reduction="mean", *, precision=DEFAULT_PRECISION):
  """delta_l = dC/de_l at e = 0, by ``jax.grad`` with respect to the injected offsets."""
  x2, t2, single = check_problem(params, x, t, loss, reduction)
  zeros = _zeros_like_z(params, x2)
  out = jax.grad(_loss, argnums=3)(params, x2, t2, zeros, loss, reduction, precision)
  return tuple(d[0] for d in out) if single else out


def input_grad(params, x, t, loss="squared_error", reduction="mean", *,
               precision=DEFAULT_PRECISION):
  """dC/dx by ``jax.grad`` with respect to x."""
  x2, t2, single = check_problem(params, x, t, loss, reduction)
  zeros = _zeros_like_z(params, x2)
  dx = jax.grad(_loss, argnums=1)(params, x2, t2, zeros, loss, reduction, precision)
  return dx[0] if single else dx


def per_example_grads(params, x, t, loss="squared_error", *, precision=DEFAULT_PRECISION):
  """dC_b/dparams for each example b, by ``jax.vmap`` of ``jax.grad`` on one example."""
  x2, t2, single = check_problem(params, x, t, loss, "sum")

  def one(xb, tb):
    zeros = _zeros_like_z(params, xb[None])
    return jax.grad(_loss)(params, xb[None], tb[None], zeros, loss, "sum", precision)

  out = jax.vmap(one)(x2, t2)
  return jax.tree_util.tree_map(lambda leaf: leaf[0], out) if single else out


def lambdas(params, x, *, precision=DEFAULT_PRECISION):
  """lambda_l = dy/de_l per example, shape (B, n_L, n_l), by ``jax.jacobian``."""
  x2, single = check_x(params, x)

  def one(xb):
    zeros = tuple(z[0] for z in _zeros_like_z(params, xb[None]))

    def y_of(offsets):
      return _injected_forward(params, xb[None], tuple(e[None] for e in offsets), precision)[0]

    return jax.jacobian(y_of)(zeros)

  out = jax.vmap(one)(x2)
  return tuple(v[0] for v in out) if single else tuple(out)


def predict(params, x, *, precision=DEFAULT_PRECISION):
  """y by the witness's own forward pass (offsets at zero)."""
  x2, single = check_x(params, x)
  y = _injected_forward(params, x2, _zeros_like_z(params, x2), precision)
  return y[0] if single else y
