"""The network: parameters and the forward pass that records the tape.

x has shape (B, n_0) and a_0 = x. For the batch, (7)-(8) read
Z_l = A_{l-1} W_l^T + b_l and A_l = f_l(Z_l). The records (``Layer``, ``Tape``) are in
``bpref.structures``, the checks of the inputs in ``bpref.validation``.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bpref import activations as _activations
from bpref.structures import Array, Layer, Params, Tape, unbatched
from bpref.validation import (check_init, check_params, check_precision, check_x, device_array,
                              per_layer)

DEFAULT_PRECISION = jax.lax.Precision.HIGHEST
"""Matmul precision of the reference: full precision on every backend (no TF32, no bf16 passes)."""


# ---------------------------------------------------------------- constructors

def init(key, sizes: Sequence[int], activations, *, bias: bool = True, dtype=None) -> Params:
  """Random parameters, fan-in scaled: W_l ~ N(0, 1/n_{l-1}), b_l = 0.

  Args:
    key: a ``jax.random`` key.
    sizes: (n_0, n_1, ..., n_L), L >= 1, every n >= 1.
    activations: L names (f_1, ..., f_L), or one name for every layer.
    bias: whether layers carry a bias.
    dtype: floating dtype; default float64 when x64 is enabled, else float32.

  >>> import jax, bpref
  >>> params = bpref.init(jax.random.key(0), (3, 4, 2), ("tanh", "identity"))
  >>> [p.W.shape for p in params]
  [(4, 3), (2, 4)]
  """
  sizes, activations, dtype = check_init(key, sizes, activations, bias, dtype)
  n_layers = len(sizes) - 1
  keys = jax.random.split(key, n_layers)
  params = []
  for l in range(1, n_layers + 1):
    n_out, n_in = sizes[l], sizes[l - 1]
    W = jax.random.normal(keys[l - 1], (n_out, n_in), dtype) / np.sqrt(n_in).astype(dtype)
    b = jnp.zeros((n_out,), dtype) if bias else None
    params.append(Layer(W, b, activations[l - 1]))
  params = tuple(params)
  check_params(params)
  return params


def from_arrays(weights, biases, activations) -> Params:
  """Parameters from plain arrays.

  Args:
    weights: L arrays, W_l of shape (n_l, n_{l-1}).
    biases: L arrays of shape (n_l,) (an entry may be None), or None for no biases.
    activations: L names, or one name for every layer.
  """
  weights = list(weights)
  biases, activations = per_layer(len(weights), biases, activations)
  params = tuple(
      Layer(device_array(W, f"layer {l}: W"),
            None if b is None else device_array(b, f"layer {l}: b"), act)
      for l, (W, b, act) in enumerate(zip(weights, biases, activations), start=1))
  check_params(params)
  return params


# ---------------------------------------------------------------- forward pass

def forward(params, x, *, precision=DEFAULT_PRECISION) -> Tape:
  """The forward pass (4)-(10), saving every z_l and a_l.

  Args:
    params: the network.
    x: inputs, shape (B, n_0), or (n_0,) for one example.
    precision: matmul precision (``jax.lax.Precision``); HIGHEST by default.

  Returns:
    ``Tape(z=(z_1..z_L), a=(a_0..a_L))`` with a_0 = x and y = a_L; without a
    batch axis when x is 1-D.
  """
  x2, single = check_x(params, x)
  check_precision(precision)
  zs, acts = [], [x2]  # a_0 = x (4)
  for layer in params:
    z, a = layer_forward(layer.W, layer.b, acts[-1], _activations.get(layer.activation).f,
                         precision=precision)
    zs.append(z)
    acts.append(a)
  return unbatched(Tape(tuple(zs), tuple(acts)), single)


def layer_forward(W, b, a_prev, f, *, precision=DEFAULT_PRECISION) -> tuple[Array, Array]:
  """One layer's step of the forward pass, rows as examples: (z_l, a_l) from a_{l-1}.

  Args:
    W: W_l, shape (n_l, n_{l-1}); b: b_l, shape (n_l,), or None.
    a_prev: a_{l-1}, shape (B, n_{l-1}).
    f: f_l, mapping z_l to a_l (``forward`` passes the activation's f; ``bpref.scale.fast``
      its switch over the names, on padded units).
    precision: matmul precision.
  """
  z = jnp.matmul(a_prev, W.T, precision=precision)  # (7): z_l = W_l a_{l-1}, rows: A_{l-1} W_l^T
  if b is not None:
    z = z + b[None, :]  # (7) with bias: z_l = W_l a_{l-1} + b_l
  return z, f(z)  # (8): a_l = f_l(z_l)


def predict(params, x, *, precision=DEFAULT_PRECISION) -> Array:
  """y = a_L = f_L(W_L f_{L-1}(... f_1(W_1 x))) (1), shape (B, n_L) or (n_L,)."""
  return forward(params, x, precision=precision).a[-1]

