"""Equinox bridge: ``equinox.nn.MLP`` to bpref parameters and back.

``eqx.nn.MLP`` keeps its layers in ``mlp.layers``, a tuple of ``eqx.nn.Linear`` whose
``weight`` has shape (out, in) = (n_l, n_{l-1}), bpref's layout; ``mlp.activation``
follows every hidden layer and ``mlp.final_activation`` the last one. An MLP maps
one example of shape (n_0,); a batch goes through ``jax.vmap``.

``make_candidate`` computes gradients with ``jax.value_and_grad`` through the Equinox
model (its arrays split off by ``eqx.partition``): it is a witness of Equinox and JAX
autodiff, not of bpref's handwritten backpropagation.

Limits of ``eqx.nn.MLP``: one hidden width and one hidden activation; activations
applied one element at a time, so a softmax final activation would see scalars
(it is refused; use identity logits with the ``softmax_cross_entropy`` loss);
``scan=True`` and ``"scalar"`` sizes are refused.
"""

from __future__ import annotations

try:
  import equinox as eqx
except ImportError:
  raise ImportError("bpref.bridges.equinox needs Equinox: pip install 'bpref[bridges]'") from None

import jax
import jax.numpy as jnp
import numpy as np

from bpref.bridges import _jax_autodiff
from bpref.bridges import Architecture, check_arrays
from bpref.structures import Layer
from bpref.validation import check_params

try:
  from equinox.nn._mlp import _identity as _EQX_IDENTITY
except ImportError:
  _EQX_IDENTITY = None

_EXTRA = {} if _EQX_IDENTITY is None else {_EQX_IDENTITY: "identity"}


def _activations(mlp) -> tuple:
  """(f_1, ..., f_L) of an eqx.nn.MLP as bpref names, or a ValueError naming the layer."""
  if not isinstance(mlp, eqx.nn.MLP):
    raise TypeError(f"expected an equinox.nn.MLP; got {type(mlp).__name__}")
  if mlp.scan:
    raise ValueError("an eqx.nn.MLP built with scan=True is not supported; build it with scan=False")
  if mlp.in_size == "scalar" or mlp.out_size == "scalar":
    raise ValueError("eqx.nn.MLP with in_size or out_size 'scalar' is not supported; use size 1")
  n_layers = len(mlp.layers)
  hidden = "identity"
  if n_layers > 1:
    where = "layer 1" if n_layers == 2 else f"layers 1-{n_layers - 1}"
    hidden = _jax_autodiff.function_name(mlp.activation, f"{where} (activation)", _EXTRA)
    if hidden == "softmax":
      raise ValueError("layer 1: softmax is allowed only in the output layer")
  final = _jax_autodiff.function_name(mlp.final_activation, f"layer {n_layers} (final_activation)", _EXTRA)
  if final == "softmax":
    raise ValueError(f"layer {n_layers} (final_activation): jax.nn.softmax is not supported: eqx.nn.MLP "
                     "applies final_activation to each output separately, so softmax would see "
                     "scalars; use identity logits with the softmax_cross_entropy loss")
  return (hidden,) * (n_layers - 1) + (final,)


def to_bpref(mlp) -> tuple:
  """The MLP's layers as bpref ``Params``: W_l = layers[l-1].weight, b_l = layers[l-1].bias."""
  names = _activations(mlp)
  params = tuple(Layer(jnp.asarray(layer.weight), None if layer.bias is None else jnp.asarray(layer.bias),
                       name) for layer, name in zip(mlp.layers, names))
  check_params(params)
  return params


def describe(mlp) -> Architecture:
  """The MLP's sizes, bpref activation names, biases and dtype."""
  params = to_bpref(mlp)
  sizes = (params[0].W.shape[1],) + tuple(p.W.shape[0] for p in params)
  return Architecture(sizes, tuple(p.activation for p in params), tuple(p.b is not None for p in params),
                      np.dtype(params[0].W.dtype).name)


def _with_arrays(mlp, weights, biases):
  """The same MLP holding the given weights and biases (a new tree; ``mlp`` is unchanged)."""
  weights = tuple(jnp.asarray(W) for W in weights)
  mlp = eqx.tree_at(lambda m: tuple(layer.weight for layer in m.layers), mlp, weights)
  present = [i for i, b in enumerate(biases) if b is not None]
  return eqx.tree_at(lambda m: tuple(m.layers[i].bias for i in present), mlp,
                     tuple(jnp.asarray(biases[i]) for i in present))


def from_bpref(params, key=None):
  """The bpref network as an eqx.nn.MLP; it needs one hidden width and one hidden activation."""
  sizes = check_params(params)
  names = [p.activation for p in params]
  hidden_sizes, hidden_acts = set(sizes[1:-1]), set(names[:-1])
  hidden_bias = {p.b is not None for p in params[:-1]}
  if len(hidden_sizes) > 1 or len(hidden_acts) > 1 or len(hidden_bias) > 1:
    raise ValueError(f"eqx.nn.MLP has one hidden width, one hidden activation and one use_bias; "
                     f"got sizes {sizes}, activations {tuple(names)}")
  if names[-1] == "softmax":
    raise ValueError("eqx.nn.MLP applies final_activation elementwise, so a softmax output layer "
                     "cannot be expressed; use identity logits with the softmax_cross_entropy loss")
  depth = len(params) - 1
  width = sizes[1] if depth else sizes[-1]
  mlp = eqx.nn.MLP(sizes[0], sizes[-1], width, depth,
                   activation=_jax_autodiff.FUNCTIONS[names[0] if depth else "identity"],
                   final_activation=_jax_autodiff.FUNCTIONS[names[-1]],
                   use_bias=params[0].b is not None, use_final_bias=params[-1].b is not None,
                   dtype=params[0].W.dtype, key=jax.random.key(0) if key is None else key)
  return _with_arrays(mlp, [p.W for p in params], [p.b for p in params])


def grads_to_equinox(grads, mlp):
  """A bpref gradient as a tree shaped like ``mlp``, as ``eqx.filter_grad`` would return it."""
  return _with_arrays(mlp, [g.W for g in grads], [g.b for g in grads])


class _Stack(eqx.Module):
  """Linear layers of any widths, each followed by its own activation function."""
  layers: tuple
  functions: tuple = eqx.field(static=True)

  def __call__(self, x):
    for layer, fn in zip(self.layers, self.functions):
      x = fn(layer(x))  # z_l = W_l a_{l-1} + b_l by eqx.nn.Linear, then a_l = f_l(z_l)
    return x


@eqx.filter_jit
def _grad(model, x, t, loss, reduction):
  """dC/dmodel of C = reduce(loss(vmap(model)(x), t)) by jax.grad, compiled per structure and shapes."""
  params, static = eqx.partition(model, eqx.is_array)

  def cost(p):
    return _jax_autodiff.reduced_loss(loss, reduction, jax.vmap(eqx.combine(p, static))(x), t)

  return _jax_autodiff.value_and_grad(cost, params)[1]


def make_candidate(mlp, reduction: str = "mean"):
  """A candidate gradient function whose gradients come from ``jax.grad`` through Equinox.

  When the arrays fit ``mlp`` (same sizes, activations and biases), the MLP itself is
  evaluated with those arrays; otherwise a stack of ``eqx.nn.Linear`` layers with the
  MLP's own activation functions (jax.nn's for the others). The loss is bpref's value
  over ``jax.vmap(model)(x)``; dW[l] has shape (n_l, n_{l-1}), db[l] (n_l,) or None.
  """
  arch = describe(mlp)
  own = {arch.activations[-1]: mlp.final_activation}
  if len(mlp.layers) > 1:
    own[arch.activations[0]] = mlp.activation

  def grads(weights, biases, activations, loss, x, t):
    weights, biases, activations, x, t = check_arrays(weights, biases, activations, loss, x, t, reduction)
    sizes = (x.shape[1],) + tuple(W.shape[0] for W in weights)
    fits = (sizes == arch.sizes and activations == arch.activations
            and tuple(b is not None for b in biases) == arch.bias)
    if fits:
      model = _with_arrays(mlp, weights, biases)
    else:
      # Linear layers by shape only (no random initialization), then filled with the arrays.
      layers = tuple(
          eqx.filter_eval_shape(eqx.nn.Linear, W.shape[1], W.shape[0], use_bias=b is not None,
                                dtype=W.dtype, key=jax.random.key(0)) for W, b in zip(weights, biases))
      functions = tuple(own.get(name, _jax_autodiff.FUNCTIONS[name]) for name in activations)
      model = _with_arrays(_Stack(layers, functions), weights, biases)
    g = _grad(model, jnp.asarray(x), jnp.asarray(t), loss, reduction)
    dW = [np.asarray(layer.weight) for layer in g.layers]
    db = [None if b is None else np.asarray(layer.bias) for layer, b in zip(g.layers, biases)]
    return dW, db

  return grads
