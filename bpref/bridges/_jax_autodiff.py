"""What the Flax and Equinox bridges share: jax.nn activations by bpref name, and jax.grad.

This module uses JAX autodiff on purpose: the Flax and Equinox candidates are
witnesses of those frameworks (their layers, differentiated by ``jax.grad``), not
bpref's handwritten path. The loss values are bpref's forward values
(``bpref.losses``); no handwritten derivative is used here.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from bpref import losses as _losses

FUNCTIONS = {
    "identity": jax.nn.identity,
    "relu": jax.nn.relu,
    "leaky_relu": jax.nn.leaky_relu,
    "elu": jax.nn.elu,
    "selu": jax.nn.selu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_tanh": jax.nn.gelu,
    "silu": jax.nn.silu,
    "mish": jax.nn.mish,
    "softplus": jax.nn.softplus,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "softsign": jax.nn.soft_sign,
    "sin": jnp.sin,
    "softmax": jax.nn.softmax,
}
"""The JAX function of each bpref activation: jax.nn's where it has one (jax.nn.gelu is
the tanh approximation by default, so it is bpref's gelu_tanh)."""

SUPPORTED = ("jax.nn.identity, relu, leaky_relu (slope 0.01), elu, selu, "
             "gelu (approximate=True: gelu_tanh; approximate=False: gelu), silu/swish, mish, softplus, "
             "sigmoid, soft_sign, softmax (last layer), jnp.tanh, jnp.sin")


def function_name(fn, where: str, extra=None) -> str:
  """The bpref name of a JAX activation function; ValueError naming ``where`` when unsupported.

  ``extra`` maps further function objects (a framework's own identity) to names.
  """
  if isinstance(fn, str):
    if fn not in FUNCTIONS:
      raise ValueError(f"{where}: unknown activation {fn!r}; valid names: {', '.join(FUNCTIONS)}")
    return fn
  for name, known in FUNCTIONS.items():
    if fn is known and name != "gelu":
      return name
  if fn is jax.nn.swish:
    return "silu"
  if fn is getattr(jax.nn, "tanh", jnp.tanh):
    return "tanh"
  if isinstance(fn, functools.partial) and fn.func is jax.nn.gelu and not fn.args:
    approximate = fn.keywords.get("approximate", True)
    if set(fn.keywords) <= {"approximate"}:
      return "gelu_tanh" if approximate else "gelu"
  for known, name in (extra or {}).items():
    if fn is known:
      return name
  label = getattr(fn, "__name__", None) or type(fn).__name__
  raise ValueError(f"{where}: activation {label} is not supported; supported: {SUPPORTED}")


def reduced_loss(loss: str, reduction: str, y, t):
  """C = reduce_b C_b(y_b, t_b) with bpref's loss values (forward only)."""
  return _losses.reduce(_losses.get(loss).value(y, t), reduction)


def value_and_grad(fn, tree):
  """(fn(tree), d fn / d tree) by ``jax.value_and_grad``: the framework witness's autodiff."""
  return jax.value_and_grad(fn)(tree)
