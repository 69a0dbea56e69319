"""Bridges: PyTorch, Flax and Equinox MLPs to bpref parameters and back.

Each bridge module (``bpref.bridges.torch``, ``.flax``, ``.equinox``) imports its
framework only when it is imported itself, and offers the same functions:

* ``to_bpref(model)``: the model's layers as bpref ``Params`` (W_l of shape
  (n_l, n_{l-1}), b_l of shape (n_l,), the activation's bpref name).
* ``from_bpref(params)``: the same network in the framework.
* ``grads_to_<framework>(grads, ...)``: a bpref gradient in the framework's own
  layout (torch: a dict keyed like ``named_parameters``, weight (out, in); Flax:
  ``{'params': {'Dense_0': {'kernel': (in, out), 'bias': (out,)}}}``; Equinox: an
  ``eqx.nn.MLP``-shaped tree of gradients).
* ``describe(model)``: the model's ``Architecture``, to keep a check on it.
* ``make_candidate(model)``: a gradient function in the candidate protocol of
  ``bpref.oracle`` that computes the gradient with the framework's OWN autodiff
  (torch autograd; ``jax.grad`` through the Flax or Equinox model). These
  candidates are witnesses of the frameworks, not bpref's handwritten path:
  ``bpref check`` compares them with bpref to check the framework.

The candidate protocol: ``grads(weights, biases, activations, loss, x, t) -> (dW, db)``
on NumPy arrays, weights[l] of shape (n_l, n_{l-1}), biases[l] of shape (n_l,) or
None, activations bpref names, ``loss`` a bpref loss name, x (B, n_0), t (B, n_L);
it returns the gradient of the reduced loss C = (1/B) sum_b C_b (``reduction="mean"``,
the default of ``make_candidate``) or C = sum_b C_b (``"sum"``), with C_b summed over
the K outputs as in ``bpref.losses``.
"""

from __future__ import annotations


import numpy as np

from bpref import activations as _activations
from bpref import losses as _losses
from bpref import validation as _validation
from bpref.structures import Architecture

__all__ = ["Architecture", "BRIDGES", "check_arrays"]

BRIDGES = ("torch", "flax", "equinox")
"""The bridge modules, ``bpref.bridges.<name>``: the candidate kinds ``bpref check`` takes
besides a plain function (``--torch``, ``--flax``, ``--equinox``)."""


def check_arrays(weights, biases, activations, loss, x, t, reduction="mean"):
  """Validate one call of the candidate protocol; return NumPy copies (weights, biases, x, t).

  Raises a ValueError or TypeError naming the layer, what was expected and what came.
  """
  weights = [np.array(W) for W in weights]
  n_layers = len(weights)
  if n_layers == 0:
    raise ValueError("weights is empty; a network needs at least one layer")
  biases, activations = _validation.per_layer(n_layers, biases, activations)
  biases = [None if b is None else np.array(b) for b in biases]
  for l, name in enumerate(activations, start=1):
    try:
      _activations.get(name)
    except ValueError as err:
      raise ValueError(f"layer {l}: {err}") from None
  _losses.get(loss)
  _losses.check_reduction(reduction)
  x, t = np.array(x), np.array(t)
  dtype = x.dtype
  if dtype not in (np.float32, np.float64):
    raise TypeError(f"x must be float32 or float64; got {dtype}")
  n_in = x.shape[-1] if x.ndim == 2 else None
  if x.ndim != 2:
    raise ValueError(f"x must have shape (B, n_0); got shape {x.shape}")
  for l, (W, b) in enumerate(zip(weights, biases), start=1):
    if W.ndim != 2 or W.shape[1] != n_in:
      raise ValueError(f"layer {l}: W must have shape (n_{l}, {n_in}); got shape {W.shape}")
    if W.dtype != dtype or (b is not None and b.dtype != dtype):
      raise TypeError(f"layer {l}: parameters must have x's dtype {dtype}; got W {W.dtype}"
                      + ("" if b is None else f", b {b.dtype}"))
    if b is not None and b.shape != (W.shape[0],):
      raise ValueError(f"layer {l}: b must have shape ({W.shape[0]},); got shape {b.shape}")
    n_in = W.shape[0]
  if t.shape != (x.shape[0], n_in) or t.dtype != dtype:
    raise ValueError(f"t must have shape (B, n_L) = {(x.shape[0], n_in)} and dtype {dtype}; "
                     f"got shape {t.shape} and dtype {t.dtype}")
  return weights, biases, activations, x, t
