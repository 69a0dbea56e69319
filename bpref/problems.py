"""Random problems (params, x, t, loss, reduction) for verification runs.

Draws use a NumPy ``Generator`` so that a seed names a case exactly. Sizes come
from a small set so compiled shapes are reused; widths include 1; values are
normal or uniform draws, never subnormal.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from bpref import activations as _activations
from bpref import losses as _losses
from bpref.network import Layer

WIDTHS = (1, 2, 3, 5, 8)
BATCHES = (1, 2, 3, 5, 8)
HIDDEN = tuple(n for n in _activations.ACTIVATIONS if n not in _activations.OUTPUT_ONLY)


class Problem(NamedTuple):
  """One verification case: the network, a batch and a loss."""
  params: tuple
  x: np.ndarray
  t: np.ndarray
  loss: str
  reduction: str

  def describe(self) -> str:
    sizes = [self.params[0].W.shape[1]] + [p.W.shape[0] for p in self.params]
    acts = ",".join(p.activation for p in self.params)
    bias = "" if self.params[0].b is not None else " no-bias"
    return (f"sizes={tuple(sizes)} acts=({acts}) loss={self.loss}/{self.reduction} "
            f"B={self.x.shape[0]} {self.x.dtype}{bias}")


def output_activation(rng: np.random.Generator, loss: str) -> str:
  """An output activation that suits ``loss`` (the one it requires, if any)."""
  required = _losses.get(loss).output
  if required is not None:
    return required
  return str(rng.choice(("identity", "identity", "tanh", "sigmoid", "softplus", "softmax")))


def targets(rng: np.random.Generator, loss: str, shape) -> np.ndarray:
  """Targets valid for ``loss``: probability rows for the cross-entropies, [0, 1] for binary ones."""
  if loss in ("softmax_cross_entropy", "cross_entropy"):
    logits = rng.normal(size=shape)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
  if loss in ("binary_cross_entropy", "sigmoid_binary_cross_entropy"):
    return rng.uniform(size=shape)
  return rng.normal(size=shape)


def random_problem(rng: np.random.Generator, dtype=np.float64, *, max_depth: int = 4,
                   losses=None, activations=None, gain: float = 1.0) -> Problem:
  """A random, well-conditioned problem.

  Weights are N(0, gain^2 / n_{l-1}), biases N(0, 0.1^2), x ~ N(0, 1). A large
  ``gain`` (say 8) gives saturated nets.
  """
  loss = str(rng.choice(tuple(losses or _losses.LOSSES)))
  reduction = str(rng.choice(_losses.REDUCTIONS))
  depth = int(rng.integers(1, max_depth + 1))
  sizes = [int(rng.choice(WIDTHS)) for _ in range(depth + 1)]
  hidden = tuple(activations or HIDDEN)
  acts = [str(rng.choice(hidden)) for _ in range(depth - 1)]
  acts.append(output_activation(rng, loss) if activations is None else str(rng.choice(hidden)))
  bias = bool(rng.random() < 0.8)
  layers = []
  for l in range(1, depth + 1):
    W = rng.normal(size=(sizes[l], sizes[l - 1])) * gain / np.sqrt(sizes[l - 1])
    b = rng.normal(size=(sizes[l],)) * 0.1 if bias else None
    layers.append(Layer(W.astype(dtype), None if b is None else b.astype(dtype), acts[l - 1]))
  batch = int(rng.choice(BATCHES))
  x = rng.normal(size=(batch, sizes[0])).astype(dtype)
  t = targets(rng, loss, (batch, sizes[-1])).astype(dtype)
  return Problem(tuple(layers), x, t, loss, reduction)
