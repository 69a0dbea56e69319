"""Token and position embedding: the forward step and its handwritten backward step.

A batch of B sequences of T token ids, each in [0, V), is looked up in a token table wte
(V, C) and a position table wpe (P, C), T <= P (proofs/layers.md, section 3):

* (EMB1) out[b, t] = wte[ids[b, t]] + wpe[t]

and, from dout = dC/dout of shape (B, T, C), the backward step

* (EMB2) dwte[v] = sum of dout[b, t] over the (b, t) with ids[b, t] = v   (a scatter-add)
* (EMB3) dwpe[t] = sum_b dout[b, t] for t < T, and 0 for T <= t < P

A token that appears several times in the batch receives the sum of its rows of dout: the
scatter-add ``zeros.at[ids].add(dout)`` accumulates repeated indices, where the assignment
``dwte[ids] = dout`` of NumPy would keep one of them (proofs/layers.md, Classic mistakes).

Ids out of range. ``forward`` and ``backward`` refuse an id outside [0, V) with a ValueError
when the ids are concrete. Traced ids (under ``jax.jit``) cannot be checked before the
computation; the unchecked bodies then give an out-of-range id (negative ones included, which
JAX would otherwise wrap around as Python does) a row of NaN in the forward step and no
contribution in the backward step, so that the error shows instead of a silent clamp.

No JAX autodiff is used. ``forward`` and ``backward`` check their arguments before anything
is traced; ``_forward`` and ``_backward`` are the unchecked bodies.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from bpref.validation import as_array, describe, same_dtype

Array = jax.Array

LAYER = "embedding"


# ---------------------------------------------------------------- checks

def _check_ids(ids):
  """ids as an integer array of shape (B, T), B, T >= 1."""
  ids = as_array(ids)
  if not jnp.issubdtype(ids.dtype, jnp.integer):
    raise TypeError(f"{LAYER}: ids must be an integer array of token ids, shape (B, T); got "
                    f"{describe(ids)} (cast with .astype(jnp.int32) if the values are whole)")
  if ids.ndim != 2 or ids.shape[0] < 1 or ids.shape[1] < 1:
    raise ValueError(f"{LAYER}: ids must have shape (B, T), B sequences of T >= 1 tokens; got "
                     f"{describe(ids)} (one sequence: ids[None, :])")
  return ids


def _check_range(ids, vocab: int):
  """A ValueError for an id outside [0, vocab), where the ids are concrete; traced ids pass."""
  if isinstance(ids, jax.core.Tracer):
    return
  values = np.asarray(ids)
  bad = (values < 0) | (values >= vocab)
  if bad.any():
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f"{LAYER}: ids must lie in [0, V) = [0, {vocab}); ids{list(where)} = "
                     f"{int(values[where])} (ids has shape {tuple(values.shape)}, min "
                     f"{int(values.min())}, max {int(values.max())}); use a vocabulary of at least "
                     f"{int(values.max()) + 1} tokens or fix the ids")


def _check_table(v, name: str, rows: str):
  v = as_array(v)
  if not jnp.issubdtype(v.dtype, jnp.floating):
    raise TypeError(f"{LAYER}: {name} must have a floating dtype; got {describe(v)}")
  if v.ndim != 2 or v.shape[0] < 1 or v.shape[1] < 1:
    raise ValueError(f"{LAYER}: {name} must have shape ({rows}, C), one row of C features per "
                     f"{'token' if rows == 'V' else 'position'}; got {describe(v)}")
  return v


def _check_size(n, name: str, at_least: int, why: str) -> int:
  if isinstance(n, (bool, np.bool_)) or not isinstance(n, (numbers.Integral, np.integer)):
    raise TypeError(f"{LAYER}: {name} must be a Python integer (a static size); got "
                    f"{type(n).__name__}")
  if n < at_least:
    raise ValueError(f"{LAYER}: {name} must be at least {at_least} ({why}); got {n}")
  return int(n)


# ---------------------------------------------------------------- forward and backward

def forward(ids, wte, wpe) -> Array:
  """out[b, t] = wte[ids[b, t]] + wpe[t].

  Args:
    ids: token ids, an integer array of shape (B, T), each in [0, V).
    wte: the token table, shape (V, C).
    wpe: the position table, shape (P, C), P >= T; rows T..P-1 are not used.

  Returns:
    out, shape (B, T, C), of the tables' dtype.

  >>> import jax.numpy as jnp
  >>> from bpref.layers import embedding
  >>> wte, wpe = jnp.array([[0., 0.], [1., 10.]]), jnp.array([[100., 0.], [200., 0.], [300., 0.]])
  >>> embedding.forward(jnp.array([[1, 0]]), wte, wpe).tolist()
  [[[101.0, 10.0], [200.0, 0.0]]]
  """
  ids = _check_ids(ids)
  wte = _check_table(wte, "wte", "V")
  wpe = _check_table(wpe, "wpe", "P")
  if wpe.shape[1] != wte.shape[1]:
    raise ValueError(f"{LAYER}: wte has C = {wte.shape[1]} features (shape {tuple(wte.shape)}) but "
                     f"wpe has {wpe.shape[1]} (shape {tuple(wpe.shape)}); both must be (., C)")
  same_dtype(wpe, wte, "wpe", layer=LAYER, other="wte")
  if ids.shape[1] > wpe.shape[0]:
    raise ValueError(f"{LAYER}: ids has T = {ids.shape[1]} positions (shape {tuple(ids.shape)}) but "
                     f"wpe has rows for P = {wpe.shape[0]} (shape {tuple(wpe.shape)}); T must be <= P")
  _check_range(ids, wte.shape[0])
  return _forward(ids, wte, wpe)


def _in_range(ids, vocab: int):
  # out-of-range ids, negative ones included, as vocab: past the table, never wrapped around
  return jnp.where((ids < 0) | (ids >= vocab), vocab, ids)


def _forward(ids, wte, wpe):
  T = ids.shape[1]
  tokens = jnp.take(wte, _in_range(ids, wte.shape[0]), axis=0, mode="fill", fill_value=jnp.nan)
  return tokens + wpe[None, :T, :]  # (EMB1): out[b, t] = wte[ids[b, t]] + wpe[t]


def backward(ids, dout, vocab: int, positions: int) -> tuple[Array, Array]:
  """(dwte, dwpe) from dout = dC/dout.

  Args:
    ids: the token ids of the forward step, shape (B, T), each in [0, V).
    dout: dC/dout, shape (B, T, C).
    vocab: V, the number of rows of wte.
    positions: P, the number of rows of wpe, P >= T.

  Returns:
    dwte of shape (V, C): the scatter-add (EMB2), rows of tokens absent from ids are 0;
    dwpe of shape (P, C): the batch sums (EMB3), rows T..P-1 are 0.

  >>> import jax.numpy as jnp
  >>> from bpref.layers import embedding
  >>> dwte, dwpe = embedding.backward(jnp.array([[1, 1]]), jnp.ones((1, 2, 1)), 3, 3)
  >>> dwte.tolist(), dwpe.tolist()
  ([[0.0], [2.0], [0.0]], [[1.0], [1.0], [0.0]])
  """
  ids = _check_ids(ids)
  dout = as_array(dout)
  B, T = ids.shape
  if not jnp.issubdtype(dout.dtype, jnp.floating):
    raise TypeError(f"{LAYER}: dout must have a floating dtype; got {describe(dout)}")
  if dout.ndim != 3 or tuple(dout.shape[:2]) != (B, T) or dout.shape[2] < 1:
    raise ValueError(f"{LAYER}: dout = dC/dout must have shape (B, T, C) = ({B}, {T}, C), as the "
                     f"output for ids of shape {tuple(ids.shape)}; got {describe(dout)}")
  vocab = _check_size(vocab, "vocab", 1, "V, the rows of wte")
  positions = _check_size(positions, "positions", T, f"P, the rows of wpe, covers the T = {T} "
                          "positions of ids")
  _check_range(ids, vocab)
  return _backward(ids, dout, vocab, positions)


def _backward(ids, dout, vocab: int, positions: int):
  _, T, C = dout.shape
  rows = _in_range(ids, vocab)
  dwte = jnp.zeros((vocab, C), dout.dtype).at[rows].add(dout, mode="drop")  # (EMB2): dwte[ids] += dout
  batch_sum = jnp.sum(dout, axis=0)
  dwpe = jnp.zeros((positions, C), dout.dtype).at[:T].set(batch_sum)  # (EMB3): sum_b dout[b, t]
  return dwte, dwpe
