"""The witnesses' padded cases: many small networks in one compiled program, packed apart from bpref.

The autodiff witness and the finite differences judge ``bpref.scale.fast``, which evaluates
many networks at once by zero-padding each into a bucket. They do the same, with padding code
of their own: a mistake in how bpref packs a network (a block transposed, a layer's width
misplaced) then changes bpref's results and not the witnesses', and ``bpref verify`` sees the
difference.

A case of depth L, widths n_0..n_L and batch B is padded to D layers of N units and M examples,
each the least power of two >= ``SMALLEST`` that holds it. W_l sits in the top-left
(n_l, n_{l-1}) corner of an (N, N) block, b_l, x and t in the leading entries, zeros elsewhere.
A ``Padded`` case keeps its sizes as integers (L, each n_l, B); the program derives its masks
from them (``live``, ``units``, ``rows``, ``outputs``). Copies of the last case fill a chunk of
``CHUNKS`` cases; their results are dropped.

A program switches over the activations and losses of a ``Names``: every one (``EVERY``, one
program for every draw), or, ``narrow``, only those of the bucket's own cases: fewer branches
to trace and compile where a run draws a few cases once.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bpref import activations as _activations
from bpref import losses as _losses
from bpref.structures import Layer
from bpref.validation import check_problem

ACTIVATIONS = tuple(_activations.ACTIVATIONS)
"""The activations a padded program switches over; ``Padded.act`` indexes them."""

LOSSES = tuple(_losses.LOSSES)
"""The losses a padded program switches over; ``Padded.loss`` indexes them."""

SMALLEST = 8
"""The least padded depth, width and batch."""


class Names(NamedTuple):
  """The activations and losses one padded program switches over (static under jit):
  ``Padded.act`` indexes ``activations``, ``Padded.loss`` indexes ``losses``."""
  activations: tuple = ACTIVATIONS
  losses: tuple = LOSSES

  @classmethod
  def of(cls, cases) -> "Names":
    """The fewest names that hold every activation and loss of ``cases``, (params, loss)
    pairs of validated problems, each loss's logit loss included (a fused loss is also
    evaluated as its logit loss), in the order of ``ACTIVATIONS`` and ``LOSSES``."""
    acts = {layer.activation for params, _ in cases for layer in params}
    losses = {loss for _, loss in cases}
    losses |= {_losses.get(loss).logits for loss in losses} - {None}
    return cls(tuple(n for n in ACTIVATIONS if n in acts), tuple(n for n in LOSSES if n in losses))


EVERY = Names()
"""Every activation and loss: one program serves every draw."""

CHUNKS = (16, 256)
"""Cases per call: the smallest chunk that holds what is left of a bucket, else the largest."""


def pad_logit(dtype) -> float:
  """The logit given to a padded unit where a softmax or a loss on logits reads it: -max / 2
  of ``dtype``. Beside every real logit (|z| < max / 2) its exp is exactly 0, so the unit adds
  exactly 0; -inf would give 0 * -inf = NaN where its target is 0."""
  return -float(np.finfo(dtype).max) / 2


class Padded(NamedTuple):
  """One case padded to the bucket (D, N, M); a chunk of K cases stacks each field on a
  leading K axis.

  Attributes:
    W: (D, N, N), W_l in rows :n_l and columns :n_{l-1} of block l.
    b: (D, N), b_l in the first n_l entries (zeros for a bias-free layer).
    x: (M, N), x in the first B rows and n_0 columns.
    t: (M, N), t in the first B rows and n_L columns.
    act: (D,) int32, the index of f_l in ``Names.activations`` (0 past the last layer).
    widths: (D,) int32, n_l (0 past the last layer).
    depth: () int32, L.
    batch: () int32, B.
    loss: () int32, the index in ``Names.losses`` of the loss as the problem names it.
    mean: () bool, C is the mean over the batch (else the sum).
  """
  W: np.ndarray
  b: np.ndarray
  x: np.ndarray
  t: np.ndarray
  act: np.ndarray
  widths: np.ndarray
  depth: np.ndarray
  batch: np.ndarray
  loss: np.ndarray
  mean: np.ndarray

  def live(self):
    """(D,) bool: layer l <= L; a later layer passes a_{l-1} through."""
    return jnp.arange(self.widths.shape[-1], dtype=self.depth.dtype) < self.depth

  def units(self):
    """(D, N) bool: unit j of layer l is real (j < n_l)."""
    return jnp.arange(self.b.shape[-1], dtype=self.widths.dtype)[None, :] < self.widths[:, None]

  def rows(self):
    """(M,) bool: example b is real (b < B)."""
    return jnp.arange(self.x.shape[-2], dtype=self.batch.dtype) < self.batch

  def outputs(self):
    """(N,) bool: output unit k is real (k < n_L)."""
    return jnp.arange(self.b.shape[-1], dtype=self.widths.dtype) < self.widths[self.depth - 1]

  def divisor(self, dtype):
    """B for the mean, 1 for the sum, in ``dtype``: C = (sum_b C_b) / divisor."""
    return jnp.where(self.mean, self.batch, 1).astype(dtype)


def fill_outputs(y, p: Padded, loss, names: Names = EVERY):
  """y with every padded output unit set to where the loss ``loss`` (an index into
  ``names.losses``) adds exactly 0 with t = 0: ``pad_logit`` for a loss on logits, else 0."""
  on_logits = jnp.asarray([_losses.get(name).on_logits for name in names.losses])[loss]
  fill = jnp.where(on_logits, pad_logit(y.real.dtype), 0).astype(y.dtype)
  return jnp.where(p.outputs()[None, :], y, fill)


def _size(n: int) -> int:
  return max(SMALLEST, 1 << (n - 1).bit_length())


def _padded(array, shape, dtype):
  array = np.asarray(array, dtype)
  return np.pad(array, [(0, want - have) for want, have in zip(shape, array.shape)])


def pad_params(params, shape, dtype) -> tuple:
  """(W, b) of shapes (D, N, N) and (D, N): one network's parameters (a tuple of ``Layer``, or
  a tree of that structure) padded into the bucket ``shape`` = (D, N, M)."""
  depth, width, _ = shape
  W = np.zeros((depth, width, width), dtype)
  b = np.zeros((depth, width), dtype)
  W[:len(params)] = [_padded(layer.W, (width, width), dtype) for layer in params]
  b[:len(params)] = [np.zeros(width, dtype) if layer.b is None else _padded(layer.b, (width,), dtype)
                     for layer in params]
  return W, b


def cut_params(W, b, params) -> tuple:
  """The inverse of ``pad_params``: each block sliced to the shape of ``params``'s layer, a
  tuple of ``Layer`` (b None where ``params`` has no bias)."""
  out = []
  for W_l, b_l, layer in zip(W, b, params):
    n_out, n_in = np.shape(layer.W)
    out.append(Layer(W_l[:n_out, :n_in], None if layer.b is None else b_l[:n_out], layer.activation))
  return tuple(out)


def _pad_case(params, x2, t2, loss, reduction, shape, dtype, names: Names) -> Padded:
  depth, width, batch = shape
  W, b = pad_params(params, shape, dtype)
  act = np.zeros(depth, np.int32)
  widths = np.zeros(depth, np.int32)
  act[:len(params)] = [names.activations.index(layer.activation) for layer in params]
  widths[:len(params)] = [np.shape(layer.W)[0] for layer in params]
  return Padded(W, b, _padded(x2, (batch, width), dtype), _padded(t2, (batch, width), dtype), act,
                widths, np.int32(len(params)), np.int32(x2.shape[0]),
                np.int32(names.losses.index(loss)), np.bool_(reduction == "mean"))


def _stack(cases):
  return tuple(np.stack(field) for field in zip(*cases))


def fields(problem):
  """(params, x, t, loss, reduction) of a ``Problem`` or a tuple (params, x, t[, loss[, reduction]])."""
  if hasattr(problem, "params"):
    return problem.params, problem.x, problem.t, problem.loss, problem.reduction
  params, x, t, *rest = problem
  loss = rest[0] if rest else "squared_error"
  reduction = rest[1] if len(rest) > 1 else "mean"
  return params, x, t, loss, reduction


def bucketed(problems, compute, unpack, *, shape=None, extras=(), chunk=None,
             narrow: bool = False) -> list:
  """Validate ``problems``, pad them into buckets, ``compute`` each chunk, ``unpack`` each case.

  Args:
    problems: ``bpref.problems.Problem``s or tuples (params, x, t[, loss[, reduction]]),
      validated as ``bpref.value_and_grad`` validates its arguments.
    compute: (a ``Padded`` chunk, *padded extras, names=the chunk's ``Names``) -> arrays
      with a leading case axis.
    unpack: (out, k, params, x2, single) -> the k-th case's result, sliced to its shapes.
    shape: one bucket (D, N, M) for every problem, in place of the least of each.
    extras: lists of parameter-shaped trees, one per problem (a claimed gradient, a
      direction), passed to ``compute`` padded as the parameters are: (W, b) stacked.
    chunk: cases per call, in place of ``CHUNKS``'s choice.
    narrow: each bucket's program switches over the names its cases use (``Names.of``),
      not over ``EVERY`` name.

  Returns:
    ``unpack``'s result for each problem, in order.
  """
  checked = []
  groups: dict = {}
  for i, problem in enumerate(problems):
    params, x, t, loss, reduction = fields(problem)
    try:
      x2, t2, single = check_problem(params, x, t, loss, reduction)
    except (TypeError, ValueError) as err:
      raise type(err)(f"problem {i}: {err}") from None
    x2, t2 = np.asarray(x2), np.asarray(t2)
    checked.append((params, x2, single))
    sizes = [x2.shape[1]] + [np.shape(layer.W)[0] for layer in params]
    need = (len(params), max(sizes), x2.shape[0])
    if shape is not None and any(n > m for n, m in zip(need, shape)):
      raise ValueError(f"problem {i}: depth {len(params)}, widths {tuple(sizes)} and batch "
                       f"{x2.shape[0]} need a bucket of at least {need}, larger than "
                       f"shape={tuple(shape)}")
    key = (x2.dtype, tuple(shape) if shape is not None else tuple(_size(n) for n in need))
    groups.setdefault(key, []).append((i, params, x2, t2, loss, reduction))
  results = [None] * len(checked)
  for (dtype, bucket), members in groups.items():
    names = Names.of([(case[1], case[4]) for case in members]) if narrow else EVERY
    while members:
      size = chunk or next((c for c in CHUNKS if c >= len(members)), CHUNKS[-1])
      part, members = members[:size], members[size:]
      fill = part + part[-1:] * (size - len(part))  # copies of the last case, dropped
      padded = Padded(*_stack([_pad_case(*case[1:], bucket, dtype, names) for case in fill]))
      extra = [_stack([pad_params(trees[case[0]], bucket, dtype) for case in fill])
               for trees in extras]
      out = jax.device_get(compute(padded, *extra, names=names))
      for k, (i, *_) in enumerate(part):
        params, x2, single = checked[i]
        results[i] = unpack(out, k, params, x2, single)
  return results
