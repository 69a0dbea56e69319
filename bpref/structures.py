"""The nouns of the pipeline: parameters, the tape, deltas, lambdas and gradients.

params -> forward tape (z, a) -> backward (delta, lambda) -> gradients. Shapes (rows are
examples):

* ``Params`` is a tuple of ``Layer`` records, one per layer l = 1..L.
* ``Layer.W`` is W_l, shape (n_l, n_{l-1}); ``Layer.b`` is b_l, shape (n_l,), or None.
* ``Layer.activation`` is the name of f_l. It is static: part of the tree's
  structure, not a leaf, so ``jax.jit`` traces only the arrays.
* ``Tape``: z_l and a_l of shape (B, n_l), a_0 = x.
* ``Deltas``: delta_l = dC/dz_l of shape (B, n_l) (35).
* ``Lambdas``: lambda_l = dy/dz_l of shape (B, n_L, n_l) (26).
* ``Grads``: the tree of ``Params``, Layer(W=dC/dW_l, b=dC/db_l).

The network's shape without its values is an ``Architecture``. Two nouns hold a whole test
case: ``bpref.problems.Problem``, its arrays (params, x, t, loss, reduction), and
``bpref.oracle.spec.Arch``, an oracle case by name (sizes, activations, loss, batch, seed),
from which ``bpref.oracle.spec.build_case`` draws the arrays.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax

Array = jax.Array


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class Layer:
  """One layer's parameters: z_l = W_l a_{l-1} + b_l, a_l = f_l(z_l).

  Attributes:
    W: weights W_l, shape (n_l, n_{l-1}).
    b: bias b_l, shape (n_l,), or None for a bias-free layer.
    activation: name of f_l (static).
  """
  W: Array
  b: Array | None
  activation: str

  def tree_flatten(self):
    return (self.W, self.b), self.activation

  @classmethod
  def tree_unflatten(cls, activation, children):
    return cls(children[0], children[1], activation)


Params = tuple  # tuple[Layer, ...], one per layer 1..L
Grads = Params  # same tree as the parameters: Layer(W=dC/dW_l, b=dC/db_l)
Deltas = tuple  # (delta_1, ..., delta_L), delta_l of shape (B, n_l)
Lambdas = tuple  # (lambda_1, ..., lambda_L), lambda_l of shape (B, n_L, n_l)


class Tape(NamedTuple):
  """What the forward pass saves for the backward pass.

  Attributes:
    z: (z_1, ..., z_L), z_l of shape (B, n_l).
    a: (a_0, ..., a_L), a_0 = x, a_l of shape (B, n_l); y = a_L.
  """
  z: tuple
  a: tuple


class Architecture(NamedTuple):
  """A network's shape: what the strategies draw and what a bridge reads off a model.

  Attributes:
    sizes: (n_0, n_1, ..., n_L).
    activations: (f_1, ..., f_L) as bpref names.
    bias: per layer, whether it carries a bias.
    dtype: the parameters' NumPy dtype name, or None where the shape alone is meant.
  """
  sizes: tuple
  activations: tuple
  bias: tuple
  dtype: str | None = None

  @property
  def depth(self) -> int:
    return len(self.activations)


def unbatched(out, single: bool):
  """``out`` without its leading batch axis when the caller gave one example (a 1-D x):
  the one place where a single example's results lose the axis the pipeline works on."""
  return jax.tree_util.tree_map(lambda leaf: leaf[0], out) if single else out
