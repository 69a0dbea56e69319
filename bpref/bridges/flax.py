"""Flax bridge: the params of a Flax MLP to bpref parameters and back.

A Flax MLP's variables are nested dicts, one entry per ``Dense`` layer in call order:

  {'params': {'Dense_0': {'kernel': (n_0, n_1), 'bias': (n_1,)}, 'Dense_1': {...}, ...}}

A ``Dense`` kernel has shape (in, out) = (n_{l-1}, n_l), the transpose of bpref's
W_l, so W_l = kernel.T and dC/dkernel = (dC/dW_l).T. The activations are not in the
params (they live in the module's code), so ``to_bpref`` takes them as an argument.

The dict conversions (``to_bpref``, ``from_bpref``, ``grads_to_flax``, ``describe``)
need no Flax installation. ``MLP`` (a ``flax.linen`` module) and ``make_candidate``
need Flax: ``make_candidate`` computes gradients with ``jax.grad`` through
``module.apply``, a witness of Flax and JAX autodiff, not of bpref's handwritten
backpropagation.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bpref.bridges import _jax_autodiff
from bpref.bridges import Architecture, check_arrays
from bpref.network import DEFAULT_PRECISION
from bpref.structures import Layer
from bpref.validation import check_params

try:
  import flax.linen as nn
except ImportError:
  nn = None


def _layer_entries(variables) -> list:
  """[(name, {'kernel', 'bias'?})] of the Dense layers, in call order."""
  if not isinstance(variables, dict) and not hasattr(variables, "items"):
    raise TypeError(f"expected Flax variables {{'params': {{'Dense_0': ...}}}}; got {type(variables).__name__}")
  if "params" in variables:
    others = [k for k in variables if k != "params"]
    if others:
      raise ValueError(f"collections {others} besides 'params' are not supported: only Dense layers "
                       "and elementwise activations can be converted")
    variables = variables["params"]
  entries = list(variables.items())
  if not entries:
    raise ValueError("the params hold no layers; a network needs at least one Dense layer")
  numbers = [re.fullmatch(r".*_(\d+)", str(name)) for name, _ in entries]
  if all(numbers):
    order = sorted(range(len(entries)), key=lambda i: (int(numbers[i].group(1)), str(entries[i][0])))
    entries = [entries[i] for i in order]
  for l, (name, entry) in enumerate(entries, start=1):
    keys = set(entry) if hasattr(entry, "keys") else set()
    if "kernel" not in keys or not keys <= {"kernel", "bias"}:
      raise ValueError(f"layer {l}: params[{name!r}] has entries {sorted(map(str, keys))}; only Dense "
                       "layers ({'kernel', 'bias'}) are supported")
    if np.ndim(entry["kernel"]) != 2:
      raise ValueError(f"layer {l}: params[{name!r}]['kernel'] must be 2-D (in, out); "
                       f"got shape {np.shape(entry['kernel'])}")
  return entries


def _names(activations, n_layers) -> tuple:
  if isinstance(activations, str) or callable(activations):
    activations = (activations,) * n_layers
  activations = tuple(activations)
  if len(activations) != n_layers:
    raise ValueError(f"the params hold {n_layers} Dense layers but {len(activations)} activations "
                     f"were given: {activations}")
  return tuple(_jax_autodiff.function_name(a, f"layer {l}") for l, a in enumerate(activations, start=1))


def to_bpref(variables, activations) -> tuple:
  """bpref ``Params`` from Flax variables: W_l = kernel.T, b_l = bias.

  Args:
    variables: ``{'params': {'Dense_0': {'kernel', 'bias'}, ...}}`` or the inner dict.
    activations: L bpref names or jax.nn functions (one for every layer is allowed).
  """
  entries = _layer_entries(variables)
  names = _names(activations, len(entries))
  params = tuple(Layer(jnp.asarray(entry["kernel"]).T,
                       jnp.asarray(entry["bias"]) if "bias" in entry else None, name)
                 for (_, entry), name in zip(entries, names))
  try:
    check_params(params)
  except ValueError as err:
    raise ValueError(f"{err} (layers are taken in the order of their names, Dense_0, Dense_1, ...: "
                     "Flax numbers Dense modules in the order they are created, so create each "
                     "Dense where it is called)") from None
  return params


def describe(variables, activations) -> Architecture:
  """Sizes, bpref activation names, biases and dtype of Flax variables with their activations."""
  params = to_bpref(variables, activations)
  sizes = (params[0].W.shape[1],) + tuple(p.W.shape[0] for p in params)
  return Architecture(sizes, tuple(p.activation for p in params), tuple(p.b is not None for p in params),
                      np.dtype(params[0].W.dtype).name)


def _dense_dict(arrays_W, arrays_b, names=None) -> dict:
  names = names or [f"Dense_{i}" for i in range(len(arrays_W))]
  out = {}
  for name, W, b in zip(names, arrays_W, arrays_b):
    entry = {"kernel": jnp.asarray(W).T}  # kernel = W_l^T, shape (n_{l-1}, n_l)
    if b is not None:
      entry["bias"] = jnp.asarray(b)
    out[name] = entry
  return out


def from_bpref(params) -> dict:
  """Flax variables ``{'params': {'Dense_i': {'kernel': W.T, 'bias': b}}}`` for ``MLP``."""
  check_params(params)
  return {"params": _dense_dict([p.W for p in params], [p.b for p in params])}


def grads_to_flax(grads) -> dict:
  """A bpref gradient in Flax's layout: dC/dkernel = (dC/dW_l).T of shape (in, out)."""
  return {"params": _dense_dict([g.W for g in grads], [g.b for g in grads])}


if nn is not None:

  class MLP(nn.Module):
    """A Flax MLP: ``Dense(features[l])`` then ``activations[l]`` for each layer.

    Attributes:
      features: (n_1, ..., n_L).
      activations: L bpref names or jax.nn functions.
      use_bias: one bool, or one per layer.

    Input x of shape (B, n_0) or (n_0,). Matmuls run at ``jax.lax.Precision.HIGHEST``
    like bpref's. Its params are named Dense_0, ..., Dense_{L-1}.
    """
    features: Sequence[int]
    activations: Sequence[Any]
    use_bias: Any = True

    @nn.compact
    def __call__(self, x):
      bias = self.use_bias if isinstance(self.use_bias, (tuple, list)) else (self.use_bias,) * len(self.features)
      for l, (n, act) in enumerate(zip(self.features, self.activations)):
        fn = _jax_autodiff.FUNCTIONS[act] if isinstance(act, str) else act
        z = nn.Dense(n, use_bias=bias[l], precision=DEFAULT_PRECISION, param_dtype=x.dtype,
                     name=f"Dense_{l}")(x)  # z_l
        x = fn(z)  # a_l = f_l(z_l)
      return x

else:
  MLP = None


def module(params):
  """The ``MLP`` that, applied with ``from_bpref(params)``, computes the bpref network."""
  _need_flax()
  check_params(params)
  return MLP(features=tuple(p.W.shape[0] for p in params),
             activations=tuple(p.activation for p in params),
             use_bias=tuple(p.b is not None for p in params))


def _need_flax():
  if nn is None:
    raise ImportError("this part of bpref.bridges.flax needs Flax: pip install 'bpref[bridges]'")


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _grad(net, params, x, t, loss, reduction):
  """dC/dparams of C = reduce(loss(net.apply(params, x), t)) by jax.grad, compiled per net and shapes."""

  def cost(p):
    return _jax_autodiff.reduced_loss(loss, reduction, net.apply({"params": p}, x), t)

  return _jax_autodiff.value_and_grad(cost, params)[1]


def make_candidate(model, reduction: str = "mean"):
  """A candidate gradient function whose gradients come from ``jax.grad`` through Flax.

  ``model`` is a ``flax.linen`` module whose params are Dense layers in call order.
  For bpref's ``MLP`` each call builds the MLP of the given arrays (widths, activations,
  biases); any other module is applied as it is, so the arrays must fit its layers.
  The loss is bpref's value of ``module.apply(variables, x)``; dW[l] = dC/dkernel.T of
  shape (n_l, n_{l-1}), db[l] of shape (n_l,) or None.
  """
  _need_flax()
  if not isinstance(model, nn.Module):
    raise TypeError(f"expected a flax.linen Module; got {type(model).__name__}")
  rebuild = isinstance(model, MLP)

  def grads(weights, biases, activations, loss, x, t):
    weights, biases, activations, x, t = check_arrays(weights, biases, activations, loss, x, t, reduction)
    if rebuild:
      net = MLP(features=tuple(W.shape[0] for W in weights), activations=activations,
                use_bias=tuple(b is not None for b in biases))
    else:
      net = model
    shapes = jax.eval_shape(net.init, jax.random.key(0), jnp.asarray(x))
    entries = _layer_entries(shapes)
    if len(entries) != len(weights):
      raise ValueError(f"the Flax model has {len(entries)} Dense layers but {len(weights)} weight "
                       "arrays were given; check it on its own architecture")
    for l, ((name, entry), W, b) in enumerate(zip(entries, weights, biases), start=1):
      if tuple(entry["kernel"].shape) != W.T.shape or ("bias" in entry) != (b is not None):
        raise ValueError(f"layer {l}: the model's {name} has kernel {tuple(entry['kernel'].shape)}"
                         f"{' with' if 'bias' in entry else ' without'} bias; the arrays give W "
                         f"{W.shape} (kernel {W.T.shape}){' with' if b is not None else ' without'} bias")
    names = [name for name, _ in entries]
    params = _dense_dict(weights, biases, names)
    g = _grad(net, params, jnp.asarray(x), jnp.asarray(t), loss, reduction)
    dW = [np.asarray(g[name]["kernel"]).T for name in names]  # dC/dW_l = (dC/dkernel)^T
    db = [np.asarray(g[name]["bias"]) if "bias" in g[name] else None for name in names]
    return dW, db

  return grads
