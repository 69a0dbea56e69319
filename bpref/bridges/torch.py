"""PyTorch bridge: ``torch.nn.Sequential`` MLPs to bpref parameters and back.

A supported model is a ``torch.nn.Sequential`` of ``Linear`` modules, each followed by
at most one activation module; ``Identity`` may appear anywhere. Layer l of bpref is
the l-th ``Linear`` with the activation after it (identity when none follows).
torch's ``Linear.weight`` has shape (out, in) = (n_l, n_{l-1}), the layout of bpref's
W_l, so weights and gradients pass through untransposed.

``make_candidate`` computes gradients with torch autograd: it is a witness of
PyTorch (its modules, its loss functions and its autograd), not of bpref's
handwritten backpropagation.

Activation modules and their bpref names (parameters other than these are refused):

  ReLU relu, Tanh tanh, Sigmoid sigmoid, GELU() gelu, GELU(approximate="tanh")
  gelu_tanh, SiLU silu, ELU(alpha=1) elu, SELU selu, LeakyReLU(0.01) leaky_relu,
  Softplus(beta=1) softplus, Softsign softsign, Identity identity, and
  Softmax(dim=-1) softmax as the last module only.

Conventions that differ from bpref: ``Softplus`` returns z itself above its
``threshold`` (20 by default), where log(1 + e^z) - z < 2.1e-9, and its gradient
there is 1 instead of sigma(z); ``binary_cross_entropy`` clamps log at -100.
"""

from __future__ import annotations

try:
  import torch
  from torch import nn
  from torch.nn import functional as F
except ImportError:
  raise ImportError("bpref.bridges.torch needs PyTorch: pip install 'bpref[bridges]' "
                    "(the CPU build: pip install torch==2.13.0)") from None

import numpy as np

import jax.numpy as jnp

from bpref import losses as _losses
from bpref.bridges import Architecture, check_arrays
from bpref.structures import Layer
from bpref.validation import check_params

_TORCH_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}

MODULES = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "softplus": nn.Softplus,
    "softsign": nn.Softsign,
    "softmax": lambda: nn.Softmax(dim=-1),
}
"""A fresh torch module for each bpref activation name."""

NO_MODULE = {"identity": "no module, or nn.Identity", "sin": "torch.nn has no sine module"}
"""bpref activations without an entry in ``MODULES``, and why."""

SUPPORTED = ("Linear, ReLU, Tanh, Sigmoid, GELU, GELU(approximate='tanh'), SiLU, Mish, ELU(alpha=1), SELU, "
             "LeakyReLU(0.01), Softplus(beta=1), Softsign, Identity, Softmax(dim=-1) (last only)")


def _where(index, module) -> str:
  return f"model[{index}]: torch.nn.{type(module).__name__}"


def activation_name(module, index=0) -> str:
  """The bpref name of an activation module; ValueError naming the layer when unsupported."""
  where = _where(index, module)
  simple = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.SiLU: "silu", nn.Mish: "mish", nn.SELU: "selu",
            nn.Softsign: "softsign", nn.Identity: "identity"}
  if type(module) in simple:
    return simple[type(module)]
  if type(module) is nn.GELU:
    return {"none": "gelu", "tanh": "gelu_tanh"}[module.approximate]
  if type(module) is nn.ELU:
    if module.alpha != 1.0:
      raise ValueError(f"{where}(alpha={module.alpha}) is not supported; bpref's elu has alpha = 1")
    return "elu"
  if type(module) is nn.LeakyReLU:
    if module.negative_slope != 0.01:
      raise ValueError(f"{where}({module.negative_slope}) is not supported; bpref's leaky_relu has "
                       "negative_slope = 0.01")
    return "leaky_relu"
  if type(module) is nn.Softplus:
    if module.beta != 1:
      raise ValueError(f"{where}(beta={module.beta}) is not supported; bpref's softplus has beta = 1")
    return "softplus"
  if type(module) is nn.Softmax:
    if module.dim not in (-1, 1):
      raise ValueError(f"{where}(dim={module.dim}) is not supported; use Softmax(dim=-1) over the "
                       "outputs of the last layer")
    return "softmax"
  raise ValueError(f"{where} is not supported; supported: {SUPPORTED}")


def _layers(model):
  """[(module index of the Linear, Linear, activation name)] of a supported Sequential."""
  if not isinstance(model, nn.Sequential):
    raise TypeError(f"expected a torch.nn.Sequential of Linear and activation modules; "
                    f"got {type(model).__name__}")
  layers = []
  open_layer = None  # [index, Linear, activation or None]
  modules = list(model)
  for index, module in enumerate(modules):
    if type(module) is nn.Linear:  # a subclass may change forward, so it is not taken as a Linear
      if open_layer is not None:
        layers.append(open_layer)
      open_layer = [index, module, None]
      continue
    name = activation_name(module, index)
    if name == "identity":
      continue
    if open_layer is None or open_layer[2] is not None:
      what = "comes before any Linear" if open_layer is None else "follows another activation"
      raise ValueError(f"{_where(index, module)} {what}; each bpref layer is one Linear followed by "
                       "at most one activation")
    if name == "softmax" and any(not isinstance(m, nn.Identity) for m in modules[index + 1:]):
      raise ValueError(f"{_where(index, module)}: softmax is allowed only after the last Linear")
    open_layer[2] = name
  if open_layer is None:
    raise ValueError("the Sequential has no Linear module; a network needs at least one layer")
  layers.append(open_layer)
  return [(index, linear, name or "identity") for index, linear, name in layers]


def _numpy(tensor) -> np.ndarray:
  if tensor.dtype not in _TORCH_DTYPES:
    raise TypeError(f"parameters must be torch.float32 or torch.float64; got {tensor.dtype} "
                    "(convert the model with .double() or .float())")
  return tensor.detach().cpu().numpy().copy()


def to_bpref(model) -> tuple:
  """The Sequential's layers as bpref ``Params``: W_l = Linear.weight (n_l, n_{l-1}), b_l = Linear.bias."""
  params = tuple(
      Layer(jnp.asarray(_numpy(linear.weight)),
            None if linear.bias is None else jnp.asarray(_numpy(linear.bias)), name)
      for _, linear, name in _layers(model))
  check_params(params)
  return params


def describe(model) -> Architecture:
  """The model's sizes, bpref activation names, biases and dtype."""
  layers = _layers(model)
  sizes = (layers[0][1].in_features,) + tuple(linear.out_features for _, linear, _ in layers)
  dtype = np.dtype(_TORCH_DTYPES.get(layers[0][1].weight.dtype, np.float32)).name
  return Architecture(sizes, tuple(name for _, _, name in layers),
                      tuple(linear.bias is not None for _, linear, _ in layers), dtype)


def _torch_dtype(np_dtype):
  return {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[np.dtype(np_dtype)]


def _build(weights, biases, activations, modules=None):
  """A Sequential holding copies of the arrays, with ``modules[name]`` (or a fresh one) per activation."""
  modules = modules or {}
  seq = []
  for l, (W, b, name) in enumerate(zip(weights, biases, activations), start=1):
    W = np.asarray(W)
    if name not in MODULES and name != "identity":
      raise ValueError(f"layer {l}: activation {name!r} has no torch module; supported: "
                       f"identity, {', '.join(MODULES)}")
    linear = nn.Linear(W.shape[1], W.shape[0], bias=b is not None, dtype=_torch_dtype(W.dtype))
    with torch.no_grad():
      linear.weight.copy_(torch.from_numpy(W.copy()))
      if b is not None:
        linear.bias.copy_(torch.from_numpy(np.array(b)))
    seq.append(linear)
    if name != "identity":
      seq.append(modules.get(name) or MODULES[name]())
  return nn.Sequential(*seq)


def from_bpref(params) -> "nn.Sequential":
  """The bpref network as a torch Sequential (Linear, then the activation module unless identity)."""
  check_params(params)
  return _build([np.asarray(p.W) for p in params],
                [None if p.b is None else np.asarray(p.b) for p in params],
                [p.activation for p in params])


def grads_to_torch(grads, model) -> dict:
  """A bpref gradient as torch tensors keyed like ``model.named_parameters()``, e.g. "0.weight"."""
  layers = _layers(model)
  if len(grads) != len(layers):
    raise ValueError(f"grads has {len(grads)} layers but the model has {len(layers)} Linear modules")
  out = {}
  for (index, linear, _), g in zip(layers, grads):
    if tuple(g.W.shape) != tuple(linear.weight.shape):
      raise ValueError(f"model[{index}]: gradient of shape {tuple(g.W.shape)} for a weight of shape "
                       f"{tuple(linear.weight.shape)}")
    out[f"{index}.weight"] = torch.from_numpy(np.array(g.W))
    if linear.bias is not None:
      out[f"{index}.bias"] = torch.from_numpy(np.array(g.b))
  return out


def grads_from_torch(model) -> tuple:
  """The ``.grad`` of every Linear after ``loss.backward()``, as a bpref gradient tree."""
  out = []
  for index, linear, name in _layers(model):
    if linear.weight.grad is None:
      raise ValueError(f"model[{index}]: Linear.weight.grad is None; call loss.backward() first")
    b = None if linear.bias is None else jnp.asarray(_numpy(linear.bias.grad))
    out.append(Layer(jnp.asarray(_numpy(linear.weight.grad)), b, name))
  return tuple(out)


def loss_per_example(loss: str, y, t):
  """C_b of ``bpref.losses`` computed with torch's own loss functions, shape (B,).

  torch reduces over every element by default ("mean" divides by B K); bpref sums
  over the K outputs and reduces over the batch only, so ``reduction="none"`` then
  a sum over the last axis.
  """
  if loss == "squared_error":
    return F.mse_loss(y, t, reduction="none").sum(-1)  # (13)
  if loss == "half_squared_error":
    return 0.5 * F.mse_loss(y, t, reduction="none").sum(-1)
  if loss == "softmax_cross_entropy":
    return F.cross_entropy(y, t, reduction="none")  # probability targets: -sum_k t_k log softmax(y)_k
  if loss == "sigmoid_binary_cross_entropy":
    return F.binary_cross_entropy_with_logits(y, t, reduction="none").sum(-1)
  if loss == "binary_cross_entropy":
    return F.binary_cross_entropy(y, t, reduction="none").sum(-1)
  if loss == "cross_entropy":
    return -torch.special.xlogy(t, y).sum(-1)
  if loss == "huber":
    return F.huber_loss(y, t, reduction="none", delta=1.0).sum(-1)
  raise ValueError(f"unknown loss {loss!r}; valid names: {', '.join(_losses.LOSSES)}")


def make_candidate(model, reduction: str = "mean"):
  """A candidate gradient function whose gradients come from torch autograd.

  Each call builds a Sequential of ``nn.Linear`` layers holding copies of the given
  arrays, with the model's own activation modules (a fresh default module for an
  activation the model does not use), evaluates C with ``loss_per_example`` reduced
  by ``reduction``, and returns the ``.grad`` of every weight and bias as NumPy
  arrays: dW[l] of shape (n_l, n_{l-1}), db[l] of shape (n_l,) (None without bias).
  The input arrays are never modified.
  """
  _losses.check_reduction(reduction)
  own = {}
  for index, module in enumerate(model if isinstance(model, nn.Sequential) else []):
    if not isinstance(module, (nn.Linear, nn.Identity)):
      own.setdefault(activation_name(module, index), module)
  describe(model)  # refuses unsupported models now, not at the first call

  def grads(weights, biases, activations, loss, x, t):
    weights, biases, activations, x, t = check_arrays(weights, biases, activations, loss, x, t, reduction)
    net = _build(weights, biases, activations, own)
    per_example = loss_per_example(loss, net(torch.from_numpy(x)), torch.from_numpy(t))
    value = per_example.mean() if reduction == "mean" else per_example.sum()
    value.backward()
    linears = [m for m in net if isinstance(m, nn.Linear)]
    dW = [m.weight.grad.numpy().copy() for m in linears]
    db = [None if m.bias is None else m.bias.grad.numpy().copy() for m in linears]
    return dW, db

  return grads
