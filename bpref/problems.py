"""Random problems (params, x, t, loss, reduction) for verification runs, and (T) of a problem.

Draws use a NumPy ``Generator`` so that a seed names a case exactly. Sizes come
from a small set so compiled shapes are reused; widths include 1; values are
normal or uniform draws, never subnormal.

No draw is vacuous (``vacuous``): a softmax, on the output layer or inside
softmax_cross_entropy, has at least 2 units, and a draw in which some layer's
true gradient is identically zero (an all-dead relu layer, say) is drawn again
from the same generator, so a seed still names one problem.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from bpref import activations as _activations
from bpref import losses as _losses
from bpref import tolerance as _tolerance
from bpref.structures import Layer
from bpref.tables import pointwise, rowwise

WIDTHS = (1, 2, 3, 5, 8)
BATCHES = (1, 2, 3, 5, 8)
HIDDEN = tuple(n for n in _activations.ACTIVATIONS if n not in _activations.OUTPUT_ONLY)

SOFT_TARGETS = tuple(name for name, loss in _losses.LOSSES.items() if loss.targets == "distribution")
"""Losses defined for any nonnegative target row, not only rows that sum to 1."""

UNNORMALIZED = 0.5
"""The fraction of ``random_problem``'s cross-entropy problems whose target rows do not sum to 1."""

DRAWS = 64
"""Draws ``random_problem`` makes before it gives up on finding a problem that is not vacuous."""


LAYOUTS = ("out_in", "in_out")
"""How a candidate stores W_l: (n_l, n_{l-1}), bpref's own, or its transpose (n_{l-1}, n_l)."""


class Problem(NamedTuple):
  """One verification case: the network, a batch and a loss.

  ``params`` is bpref's (W_l of shape (n_l, n_{l-1})), so ``bpref.grad(*problem)`` works
  whatever ``layout`` says; ``layout`` is the candidate's, the layout of ``arrays()``.
  """
  params: tuple
  x: np.ndarray
  t: np.ndarray
  loss: str
  reduction: str

  layout = "out_in"

  def describe(self) -> str:
    sizes = [self.params[0].W.shape[1]] + [p.W.shape[0] for p in self.params]
    acts = ",".join(p.activation for p in self.params)
    bias = "" if self.params[0].b is not None else " no-bias"
    layout = "" if self.layout == "out_in" else f" {self.layout}"
    return (f"sizes={tuple(sizes)} acts=({acts}) loss={self.loss}/{self.reduction} "
            f"B={self.x.shape[0]} {self.x.dtype}{bias}{layout}")

  def arrays(self) -> tuple:
    """(weights, biases, activations, loss, x, t): the candidate protocol's arguments
    (``bpref.oracle``), fresh NumPy copies, W_l in ``layout``; biases is None without them."""
    weights = [np.array(p.W.T if self.layout == "in_out" else p.W) for p in self.params]
    biases = None if self.params[0].b is None else [np.array(p.b) for p in self.params]
    return (weights, biases, [p.activation for p in self.params], self.loss, np.array(self.x),
            np.array(self.t))


class ProblemInOut(Problem):
  """A ``Problem`` for a candidate that stores W_l as (n_{l-1}, n_l): ``arrays()`` and
  ``bpref.testing.reference_grads`` give W_l and dC/dW_l transposed; ``params`` is bpref's."""
  __slots__ = ()
  layout = "in_out"


def output_activation(rng: np.random.Generator, loss: str) -> str:
  """An output activation that suits ``loss`` (the one it requires, if any)."""
  required = _losses.get(loss).output
  if required is not None:
    return required
  return str(rng.choice(("identity", "identity", "tanh", "sigmoid", "softplus", "softmax")))


def min_output_width(output: str, loss: str) -> int:
  """The fewest output units n_L for which C depends on z_L at all.

  A softmax of one unit is the constant 1, on the output layer (its Jacobian is 0)
  or inside softmax_cross_entropy (log softmax(z) = 0): every gradient would be 0.
  """
  return 2 if output == "softmax" else _losses.get(loss).min_outputs


def targets(rng: np.random.Generator, loss: str, shape, *, unnormalized: float = 0.0) -> np.ndarray:
  """Targets valid for ``loss``: probability rows for the cross-entropies, [0, 1] for binary ones.

  With probability ``unnormalized`` the rows of a cross-entropy target (``SOFT_TARGETS``)
  are scaled by factors s_b ~ U(0.25, 2.5), so they do not sum to 1: both losses are
  defined for any t >= 0, and dC/dz_L = y sum_k t_k - t is y - t only when the row sums
  to 1. At 0 (the default) the generator is used exactly as before the option existed.
  """
  if loss in SOFT_TARGETS:
    logits = rng.normal(size=shape)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    t = e / e.sum(axis=-1, keepdims=True)
    if unnormalized and rng.random() < unnormalized:
      t = t * rng.uniform(0.25, 2.5, size=tuple(shape[:-1]) + (1,))
    return t
  if _losses.get(loss).targets == "probabilities":
    return rng.uniform(size=shape)
  return rng.normal(size=shape)


@functools.lru_cache(maxsize=None)
def _vanishes_at_zero(name: str, table) -> bool:
  return bool(pointwise(_activations.get(name).f, np.zeros(1), table=table)[0] == 0)


def vacuous(activations, loss: str, weights, biases, x, *, table=None) -> bool:
  """Whether some dC/dW_l or dC/db_l is zero for every t: no path from the loss reaches it.

  Exact, not rounded: the forward pass runs in float64, and an entry counts as zero only
  where the mathematics makes it so. Only relu has f' = 0 on a whole half-line
  (relu'(z) = 0 for z <= 0), and a_l = f(z_l) is zero only there or where z_l = 0 exactly
  for an f with f(0) = 0 (a planted kink). delta_l can be nonzero at (b, i) only if
  f'_l(z_l)[b, i] != 0 and some nonzero entry of W_(l+1) links unit i to a unit that
  delta_(l+1) reaches (37); dW_l = delta_l^T a_(l-1) needs such an entry of delta_l beside
  a nonzero a_(l-1) (39). A softmax of one unit (``min_output_width``) reaches nothing.

  Args:
    activations: the L activation names f_1 ... f_L.
    loss: the loss name.
    weights: W_l of shape (n_l, n_{l-1}), l = 1 ... L.
    biases: b_l of shape (n_l,), or None.
    x: inputs, shape (B, n_0).
    table: the activation names whose f's share one compiled table
      (``bpref.tables.pointwise``); None: each f compiles alone.
  """
  if np.shape(weights[-1])[0] < min_output_width(activations[-1], loss):
    return True
  a = [np.asarray(x, np.float64)]
  zero = [a[0] == 0]
  live = []
  for l, W in enumerate(weights):
    z = a[-1] @ np.asarray(W, np.float64).T
    if biases is not None:
      z = z + np.asarray(biases[l], np.float64)
    name = activations[l]
    if not _activations.get(name).elementwise:  # softmax, the output layer: a_L is never read
      live.append(np.ones(z.shape, bool))
      break
    dead = z <= 0 if name == "relu" else np.zeros(z.shape, bool)
    live.append(~dead)  # f' != 0 off relu's half-line
    a.append(pointwise(_activations.get(name).f, z, table=table))
    zero.append(dead | ((z == 0) & _vanishes_at_zero(name, table)))
  reach = live[-1]
  for l in range(len(weights), 0, -1):
    if not reach.any():
      return True
    if not ((reach.T.astype(float) @ (~zero[l - 1]).astype(float)) > 0).any():
      return True
    if l > 1:
      reach = ((reach.astype(float) @ (np.asarray(weights[l - 1]) != 0)) > 0) & live[l - 2]
  return False


def strata(rng: np.random.Generator, names, count: int) -> list:
  """``count`` entries of ``names`` in whole passes, each pass shuffled by ``rng``.

  Every entry appears count // len(names) times or once more: a draw of
  ``count >= len(names)`` cases covers every name, by construction rather than by luck.
  """
  names = list(names)
  out = []
  while len(out) < count:
    out.extend(names[i] for i in rng.permutation(len(names)))
  return out[:count]


def random_problem(rng: np.random.Generator, dtype=np.float64, *, max_depth: int = 4,
                   losses=None, activations=None, gain: float = 1.0, uses: str | None = None,
                   unnormalized: float = UNNORMALIZED, table=None) -> Problem:
  """A random, well-conditioned problem that is not ``vacuous``.

  Weights are N(0, gain^2 / n_{l-1}), biases N(0, 0.1^2), x ~ N(0, 1). A large
  ``gain`` (say 8) gives saturated nets. A vacuous draw is drawn again, whole, from
  ``rng``.

  Args:
    rng: the generator; the same state gives the same problem.
    dtype: the dtype of every array.
    max_depth: the largest number of layers L.
    losses: loss names to draw from (default all).
    activations: activation names to draw every layer from, the output layer included
      (default: hidden layers from ``HIDDEN``, the output layer from ``output_activation``).
    gain: the weights' scale.
    uses: an activation (not softmax) that some layer must have: a hidden layer, or the
      output layer of a one-layer net whose loss takes any output (a one-layer net whose
      loss requires its own output activation gets a second layer instead).
    unnormalized: the probability that a cross-entropy target's rows do not sum to 1
      (see ``targets``).
    table: passed to ``vacuous`` (the draw does not depend on it).
  """
  if uses is not None and uses not in HIDDEN:
    raise ValueError(f"uses={uses!r}: name an activation allowed in every layer: {', '.join(HIDDEN)}")
  for _ in range(DRAWS):
    problem = _draw(rng, np.dtype(dtype), max_depth, losses, activations, gain, uses, unnormalized)
    weights = [p.W for p in problem.params]
    biases = None if problem.params[0].b is None else [p.b for p in problem.params]
    acts = [p.activation for p in problem.params]
    if not vacuous(acts, problem.loss, weights, biases, problem.x, table=table):
      return problem
  raise ValueError(f"no problem in {DRAWS} draws whose gradient reaches every layer (the last: "
                   f"{problem.describe()}); allow more activations than relu alone")


def _draw(rng, dtype, max_depth, losses, activations, gain, uses, unnormalized) -> Problem:
  loss = str(rng.choice(tuple(losses or _losses.LOSSES)))
  reduction = str(rng.choice(_losses.REDUCTIONS))
  depth = int(rng.integers(1, max_depth + 1))
  if uses is not None and depth == 1 and _losses.get(loss).output is not None:
    if max_depth < 2:
      raise ValueError(f"uses={uses!r} with loss {loss!r} (which requires a "
                       f"{_losses.get(loss).output} output) needs a hidden layer: max_depth >= 2")
    depth = 2
  sizes = [int(rng.choice(WIDTHS)) for _ in range(depth + 1)]
  hidden = tuple(activations or HIDDEN)
  acts = [str(rng.choice(hidden)) for _ in range(depth - 1)]
  acts.append(output_activation(rng, loss) if activations is None else str(rng.choice(hidden)))
  if uses is not None:
    acts[int(rng.integers(depth - 1)) if depth > 1 else 0] = uses
  least = min_output_width(acts[-1], loss)
  if sizes[-1] < least:
    sizes[-1] = min(w for w in WIDTHS if w >= least)
  bias = bool(rng.random() < 0.8)
  layers = []
  for l in range(1, depth + 1):
    W = rng.normal(size=(sizes[l], sizes[l - 1])) * gain / np.sqrt(sizes[l - 1])
    b = rng.normal(size=(sizes[l],)) * 0.1 if bias else None
    layers.append(Layer(W.astype(dtype), None if b is None else b.astype(dtype), acts[l - 1]))
  batch = int(rng.choice(BATCHES))
  x = rng.normal(size=(batch, sizes[0])).astype(dtype)
  t = targets(rng, loss, (batch, sizes[-1]), unnormalized=unnormalized).astype(dtype)
  return Problem(tuple(layers), x, t, loss, reduction)


# ---------------------------------------------------------------- (T) of a problem

def problem_tolerance(params, x, dtype=None, *, forward_only: bool = False, precision=None,
                      backend: str | None = None, table=None) -> float:
  """(T) for every array of one problem (``bpref.tolerance.network_tolerance``): depth, longest
  sum and magnitude read off the problem.

  The magnitude comes from a float64 forward pass of the same values (NumPy products,
  bpref's f through ``bpref.tables``), so it does not depend on the derivatives being
  checked. With ``forward_only`` the bound of ``forward_tolerance`` (for y and the tape);
  with ``precision`` and ``backend``, (T') of the matmuls at that setting; ``table`` as
  for ``bpref.tables.pointwise``.

  >>> import numpy as np
  >>> from bpref.structures import Layer
  >>> params = (Layer(np.eye(2), None, "tanh"),)
  >>> problem_tolerance(params, np.zeros((3, 2))) == 4 * 2.0 ** -53 * 3 * 3
  True
  """
  x = np.asarray(x)
  x2 = x[None, :] if x.ndim == 1 else x
  sizes = [x2.shape[1]] + [np.shape(layer.W)[0] for layer in params]
  return _tolerance.network_tolerance(
      np.dtype(dtype or x.dtype), sizes, x2.shape[0], _pre_activations(params, x2, table),
      [layer.activation for layer in params], forward_only=forward_only, precision=precision,
      backend=backend)


def _pre_activations(params, x2, table) -> list:
  """z_1..z_L of ``params`` on the rows of ``x2``, in float64."""
  a = x2.astype(np.float64)
  zs = []
  for layer in params:
    z = a @ np.asarray(layer.W, np.float64).T  # (7)
    if layer.b is not None:
      z = z + np.asarray(layer.b, np.float64)[None, :]
    zs.append(z)
    act = _activations.get(layer.activation)
    a = pointwise(act.f, z, table=table) if act.elementwise else rowwise(act.f, z)  # (8)
  return zs
