"""The autodiff witness: the same network and loss, differentiated by ``jax.grad``.

This is the only module of bpref that uses JAX autodiff. It shares the activation
and loss values (f, C) with the handwritten path, but none of its derivatives, its
forward pass (``bpref.witnesses.forward``) or its padding (``bpref.witnesses.padding``);
the handwritten path (``bpref.backprop``) never imports it.

Every function mirrors the public function of the same name in ``bpref``:
delta_l and lambda_l are obtained by injecting an offset e_l into z_l
(z_l = W_l a_{l-1} + b_l + e_l) and differentiating with respect to e_l at 0.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from bpref import activations as _activations
from bpref import compilation
from bpref import losses as _losses
from bpref.network import DEFAULT_PRECISION
from bpref.structures import Layer
from bpref.validation import check_precision, check_problem, check_x
from bpref.witnesses import forward as _forward
from bpref.witnesses import padding as _padding


def _f(name):
  return _activations.get(name).f


def _injected_forward(params, x2, offsets, precision):
  """y with e_l added to z_l in every layer; the offsets have the shapes of z_l."""
  return _forward.exact(params, x2, _f, offsets, precision)


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


# ---------------------------------------------------------------- many networks at once

def _padded_forward(p, offsets, precision, names):
  """y = a_L of one padded case (``bpref.witnesses.padding``) with e_l added to z_l, shape (M, N)."""
  branches = _forward.padded_branches(_f, names.activations)
  return _forward.padded(p.W, p.b, p.x, p, branches, offsets, precision)[0]


def _padded_outputs(W, b, x, offsets, p, precision, names):
  """(C, C_b, y) of one padded case, as ``_loss``: the loss the case names, C_b of each real
  row (0 on a padded one) and y = a_L before the padded outputs are filled."""
  y = _padded_forward(p._replace(W=W, b=b, x=x), offsets, precision, names)
  filled = _padding.fill_outputs(y, p, p.loss, names)  # a padded output adds exactly 0
  per_example = jax.lax.switch(p.loss, tuple(_losses.get(n).value for n in names.losses), filled,
                               p.t)
  per_example = jnp.where(p.rows(), per_example, jnp.zeros_like(per_example))
  return jnp.sum(per_example) / p.divisor(per_example.dtype), per_example, y


def _padded_loss(W, b, x, offsets, p, precision, names):
  return _padded_outputs(W, b, x, offsets, p, precision, names)[0]


def _one_padded_case(p, precision, names):
  """Every output of one padded case from one ``jax.vjp`` of (C, C_b, y): C's cotangent gives
  dC/dW, dC/db, dC/dx and delta_l = dC/de_l; each C_b's, that example's gradient; each
  y_{b,k}'s, row k of lambda_l[b] = dy_b/de_{l,b}."""
  offsets = jnp.zeros(p.W.shape[:1] + p.x.shape, p.x.dtype)  # (D, M, N)
  (value, per_example, y), pull = jax.vjp(
      lambda W, b, x, e: _padded_outputs(W, b, x, e, p, precision, names), p.W, p.b, p.x, offsets)
  M, N = y.shape
  zero_c, zero_b, zero_y = jnp.zeros_like(value), jnp.zeros_like(per_example), jnp.zeros_like(y)
  dW, db, dx, de = pull((jnp.ones_like(value), zero_b, zero_y))
  per_W, per_b, _, _ = jax.vmap(lambda c: pull((zero_c, c, zero_y)))(
      jnp.eye(M, dtype=y.dtype))  # (M, D, N, N), (M, D, N)
  unit = jnp.eye(M * N, dtype=y.dtype).reshape(M * N, M, N)
  jac = jax.vmap(lambda c: pull((zero_c, zero_b, c))[3])(unit).reshape(M, N, *offsets.shape)
  m = jnp.arange(M)
  lams = jnp.moveaxis(jac[m, :, :, m, :], 2, 0)  # lambda_l[b] = dy_b/de_{l,b}: (D, M, N, N)
  return value, dW, db, de, dx, per_W, per_b, lams, y


@compilation.jit(static_argnames=("precision", "names"),
                  cpu_options=compilation.ELEMENTAL_EMITTERS)
def _padded_many(p, precision, names):
  return jax.vmap(lambda case: _one_padded_case(case, precision, names))(p)


def _unpack(out, k, params, x2, single):
  value, dW, db, de, dx, per_W, per_b, lams, y = out
  B, n_0 = x2.shape
  sizes = [n_0] + [layer.W.shape[0] for layer in params]
  L = len(params)
  cut = lambda v: v[0] if single else v  # noqa: E731  (a 1-D x has no batch axis)
  grads = _padding.cut_params(dW[k], db[k], params)
  per_example = tuple(Layer(cut(per_W[k, :B, l, :sizes[l + 1], :sizes[l]]),
                            None if layer.b is None else cut(per_b[k, :B, l, :sizes[l + 1]]),
                            layer.activation)
                      for l, layer in enumerate(params))
  return {
      "loss": value[k],
      "predict": cut(y[k, :B, :sizes[-1]]),
      "grad": grads,
      "deltas": tuple(cut(de[k, l, :B, :sizes[l + 1]]) for l in range(L)),
      "lambdas": tuple(cut(lams[k, l, :B, :sizes[-1], :sizes[l + 1]]) for l in range(L)),
      "input_grad": cut(dx[k, :B, :n_0]),
      "per_example_grads": per_example,
  }


def _grad_one_padded_case(p, precision, names):
  offsets = jnp.zeros(p.W.shape[:1] + p.x.shape, p.x.dtype)
  return jax.grad(_padded_loss, argnums=(0, 1))(p.W, p.b, p.x, offsets, p, precision, names)


@compilation.jit(static_argnames=("precision", "names"),
                  cpu_options=compilation.ELEMENTAL_EMITTERS)
def _padded_grads(p, precision, names):
  return jax.vmap(lambda case: _grad_one_padded_case(case, precision, names))(p)


def _unpack_grads(out, k, params, x2, single):
  dW, db = out
  return _padding.cut_params(dW[k], db[k], params)


def grads_many(problems, *, precision=DEFAULT_PRECISION, shape=None, narrow=False) -> list:
  """[dC/dparams, ...] by ``jax.grad`` of many networks in padded buckets
  (``bpref.witnesses.padding``; ``shape`` and ``narrow`` as its ``bucketed``'s)."""
  check_precision(precision)
  return _padding.bucketed(problems, functools.partial(_padded_grads, precision=precision),
                           _unpack_grads, shape=shape, narrow=narrow)


def evaluate_many(problems, *, precision=DEFAULT_PRECISION, shape=None) -> list:
  """The witness's value, grad, deltas, lambdas, input_grad, per_example_grads and predict of
  many networks, in padded buckets (one compilation per bucket).

  The cases are padded by ``bpref.witnesses.padding``, not by the ``bpref.scale.fast`` that the
  witness judges; the forward pass is this module's (offsets injected into every z_l), and
  every derivative is ``jax.grad``'s or ``jax.jacobian``'s of it. Returns one dict per problem,
  keyed as ``bpref.tools.verify.CHECKS``, each value of the shape the function of that name
  returns.
  """
  check_precision(precision)
  return _padding.bucketed(problems, functools.partial(_padded_many, precision=precision), _unpack,
                           shape=shape)
