"""The witnesses' forward pass (4)-(10): one, for the autodiff witness and the finite differences.

It is written apart from ``bpref.network.forward``, so that a mistake there is not shared by
the witnesses that judge it. Each witness chooses the f it applies (the finite differences'
complex step takes complex forms) and may add an offset e_l to every z_l, which the autodiff
witness differentiates to obtain delta_l and lambda_l. The mpmath referee keeps its own forward
pass at 50 digits (``bpref.witnesses.referee``).

``padded`` is the same pass on one padded case of ``bpref.witnesses.padding`` (packed apart from
``bpref.scale.fast``), masked: padded units of a_l are 0, a softmax is taken over the real
units only, and a layer past the last one passes a_{l-1} through unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bpref import activations as _activations
from bpref.network import DEFAULT_PRECISION
from bpref.witnesses import padding as _padding


def exact(params, x2, f_of, offsets=None, precision=DEFAULT_PRECISION):
  """y = a_L of a batch x2 of shape (B, n_0), with e_l added to z_l where ``offsets`` are given.

  Args:
    params: the network.
    x2: inputs, shape (B, n_0).
    f_of: activation name -> the function f to apply.
    offsets: (e_1, ..., e_L), e_l of the shape of z_l, or None for none.
    precision: matmul precision.
  """
  a = x2  # a_0 = x (4)
  for l, layer in enumerate(params):
    z = jnp.matmul(a, layer.W.T, precision=precision)  # (7): Z_l = A_{l-1} W_l^T
    if layer.b is not None:
      z = z + layer.b[None, :]  # (7) with bias
    if offsets is not None:
      z = z + offsets[l]
    a = f_of(layer.activation)(z)  # (8)
  return a


def padded_branches(f_of, names=_padding.ACTIVATIONS) -> tuple:
  """One function (z, units) -> a per activation of ``names`` (a padded program's
  ``bpref.witnesses.padding.Names.activations``), for ``jax.lax.switch``: a softmax sees a
  padded unit as ``pad_logit``, whose exp is exactly 0."""

  def branch(name):
    f = f_of(name)
    if _activations.get(name).elementwise:
      return lambda z, units: f(z)
    return lambda z, units: f(jnp.where(units[None, :], z,
                                        jnp.full_like(z, _padding.pad_logit(z.real.dtype))))

  return tuple(branch(name) for name in names)


def padded(W, b, x, p, branches, offsets=None, precision=DEFAULT_PRECISION):
  """(y, zs) of one padded case: y = a_D of shape (M, N) and every z_l, shape (D, M, N).

  Args:
    W, b, x: the padded case's parameters (D, N, N), (D, N) and inputs (M, N).
    p: the case's ``bpref.witnesses.padding.Padded`` record (activations, sizes).
    branches: ``padded_branches`` of the f's to apply.
    offsets: e_l added to z_l, shape (D, M, N), or None.
    precision: matmul precision.
  """

  def layer(a_prev, inputs):
    W_l, b_l, act, live, units, e = inputs
    z = jnp.matmul(a_prev, W_l.T, precision=precision) + b_l[None, :]  # (7)
    if e is not None:
      z = z + e
    a = jax.lax.switch(act, branches, z, units)  # (8)
    a = jnp.where(units[None, :], a, jnp.zeros_like(a))
    return jnp.where(live, a, a_prev), z  # a layer past the last one passes a_{l-1} through

  y, zs = jax.lax.scan(layer, x, (W, b, p.act, p.live(), p.units(), offsets))
  return y, zs
