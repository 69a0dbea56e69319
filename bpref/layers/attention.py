"""Causal multi-head self-attention: the forward step and its handwritten backward step.

No JAX autodiff is used here. The layout is llm.c's: one array qkv of shape (B, T, 3C) holds the
queries, keys and values of every position side by side, q = qkv[..., :C], k = qkv[..., C:2C],
v = qkv[..., 2C:], and head h of ``heads`` owns the channels h hs .. (h + 1) hs - 1 of each,
hs = C / heads. Per head, with rows as positions t and s (proofs/attention.md):

* (A1) q, k, v of head h: the channels h hs .. (h + 1) hs - 1 of each third of qkv
* (A2) S = q k^T / sqrt(hs)                                            (T, T)
* (A3) S~_ts = S_ts for s <= t, -inf for s > t                        the causal mask
* (A4) P = softmax(S~), row by row                                     (T, T), P_ts = 0 for s > t
* (A5) O = P v                                                         (T, hs)
* (A6) out[..., h hs:(h + 1) hs] = O of head h                         (B, T, C)

and backward, from dout = dl/dout of shape (B, T, C) (l the loss; C is the channel count),
dO its channels of head h (A7):

* (A8)  dv = P^T dO
* (A9)  dP = dO v^T
* (A10) dS = P * (dP - rowsum(dP * P)), and dS_ts = 0 for s > t      the softmax VJP
* (A11) dq = dS k / sqrt(hs)
* (A12) dk = dS^T q / sqrt(hs)
* (A13) dqkv = [dq | dk | dv], the heads merged back in channel order  (B, T, 3C)

The stages are public and read like ``bpref.backprop``:

  out, cache = forward(qkv, heads)      # (A1)-(A6)
  dqkv = backward(cache, dout)          # (A7)-(A13)
  dqkv = grads(qkv, heads, dout)        # the two composed

Each checks its arguments before anything is traced and calls an unchecked body (``_forward``,
``_backward``) that jitted code may call directly. ``split_heads`` and ``merge_heads`` convert
to and from PyTorch's layout (q, k, v separate, each (B, heads, T, hs)). The rounding model of
proofs/attention.md section 6 (the magnitude M of every output) belongs to the op oracle:
``bpref.oracle.ops.attention.bounds``.

The masked softmax subtracts the row's maximum over the unmasked entries (the diagonal is always
unmasked, so the maximum is finite): T = 1, equal scores and scores of size 1e3 give finite
results, and exp(-inf) = 0 exactly on the masked entries.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bpref import activations as _activations
from bpref.network import DEFAULT_PRECISION
from bpref.validation import check_precision

Array = jax.Array


class AttentionCache(NamedTuple):
  """What the forward step saves for the backward step, per head.

  Attributes:
    q: the queries, shape (B, heads, T, hs).
    k: the keys, shape (B, heads, T, hs).
    v: the values, shape (B, heads, T, hs).
    P: the attention weights softmax(S~) (A4), shape (B, heads, T, T); row t sums to 1 and
      P[..., t, s] = 0 exactly for s > t.
  """
  q: Array
  k: Array
  v: Array
  P: Array


# ---------------------------------------------------------------- checks

def _check_array(x, what: str):
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"attention: {what} must have a floating dtype; got {x.dtype}")
  return x


def _check_heads(heads) -> int:
  if isinstance(heads, bool) or not isinstance(heads, (int, np.integer)):
    raise TypeError(f"attention: heads must be a positive int (static under jax.jit: pass it "
                    f"with static_argnums); got {heads!r} of type {type(heads).__name__}")
  if heads < 1:
    raise ValueError(f"attention: heads must be at least 1; got {heads}")
  return int(heads)


def check_qkv(qkv, heads) -> tuple:
  """qkv as an array and (B, T, C, heads, hs); a ValueError or TypeError says what to change."""
  qkv = _check_array(qkv, "qkv")
  heads = _check_heads(heads)
  if qkv.ndim != 3:
    raise ValueError(f"attention: qkv must have shape (B, T, 3C); got shape {qkv.shape} "
                     f"({qkv.ndim} axes; add a batch axis of 1, or jax.vmap over extra axes)")
  B, T, three_c = qkv.shape
  if three_c == 0 or three_c % 3:
    raise ValueError(f"attention: the last axis of qkv must be 3C, q, k and v side by side, "
                     f"C >= 1; got shape {qkv.shape}, whose last axis {three_c} is not a positive "
                     "multiple of 3")
  C = three_c // 3
  if C % heads:
    raise ValueError(f"attention: C = {C} (qkv of shape {qkv.shape}) is not divisible by "
                     f"heads = {heads}; the head size hs = C / heads must be an integer")
  if T < 1:
    raise ValueError(f"attention: qkv must hold at least one position, T >= 1; got shape {qkv.shape}")
  return qkv, (B, T, C, heads, C // heads)


def check_cache(cache) -> tuple:
  """(B, heads, T, hs) of an ``AttentionCache``; a ValueError or TypeError names the field."""
  if not isinstance(cache, AttentionCache):
    raise TypeError(f"attention: cache must be the AttentionCache returned by forward; got "
                    f"{type(cache).__name__}")
  q = _check_array(cache.q, "cache.q")
  if q.ndim != 4:
    raise ValueError(f"attention: cache.q must have shape (B, heads, T, hs); got shape {q.shape}")
  B, H, T, hs = q.shape
  for name, expected in (("k", q.shape), ("v", q.shape), ("P", (B, H, T, T))):
    x = _check_array(getattr(cache, name), f"cache.{name}")
    if x.shape != expected:
      raise ValueError(f"attention: cache.{name} must have shape {expected} to match cache.q of "
                       f"shape {q.shape}; got shape {x.shape}")
    if x.dtype != q.dtype:
      raise TypeError(f"attention: cache.{name} has dtype {x.dtype} but cache.q has {q.dtype}; "
                      "the cache's arrays share one dtype")
  return B, H, T, hs


def check_dout(cache, dout) -> Array:
  """dout as an array of shape (B, T, C) and the cache's dtype; else a ValueError or TypeError."""
  B, H, T, hs = check_cache(cache)
  dout = _check_array(dout, "dout")
  expected = (B, T, H * hs)
  if dout.shape != expected:
    raise ValueError(f"attention: dout must have the output's shape (B, T, C) = {expected} "
                     f"(B = {B}, T = {T}, C = heads * hs = {H} * {hs}); got shape {dout.shape}")
  if dout.dtype != cache.q.dtype:
    raise TypeError(f"attention: dout has dtype {dout.dtype} but the cache has {cache.q.dtype}; "
                    "cast dout to the dtype of qkv")
  return dout


# ---------------------------------------------------------------- layouts

def split_heads(qkv, heads: int) -> tuple[Array, Array, Array]:
  """llm.c's qkv (B, T, 3C) as PyTorch's q, k, v, each (B, heads, T, hs): a reshape and transpose.

  q[b, h, t, d] = qkv[b, t, h hs + d], k[b, h, t, d] = qkv[b, t, C + h hs + d],
  v[b, h, t, d] = qkv[b, t, 2C + h hs + d]: head h owns channels h hs .. (h + 1) hs - 1 (A1),
  (heads, hs) in that order, never interleaved. ``merge_heads`` is its inverse.

  >>> import jax.numpy as jnp
  >>> q, k, v = split_heads(jnp.arange(12.0).reshape(1, 1, 12), 2)
  >>> q.shape, q[0, :, 0].tolist(), k[0, 1, 0].tolist()
  ((1, 2, 1, 2), [[0.0, 1.0], [2.0, 3.0]], [6.0, 7.0])
  """
  qkv, _ = check_qkv(qkv, heads)
  return _split(qkv, heads)


def merge_heads(q, k, v) -> Array:
  """PyTorch's q, k, v, each (B, heads, T, hs), as llm.c's qkv (B, T, 3C): ``split_heads``'s inverse.

  The backward step assembles dqkv from dq, dk and dv the same way (A13).
  """
  q, k, v = (_check_array(x, name) for x, name in ((q, "q"), (k, "k"), (v, "v")))
  if q.ndim != 4:
    raise ValueError(f"attention: q, k, v must each have shape (B, heads, T, hs); got q of shape "
                     f"{q.shape}")
  for name, x in (("k", k), ("v", v)):
    if x.shape != q.shape:
      raise ValueError(f"attention: {name} must have q's shape {q.shape}; got shape {x.shape}")
    if x.dtype != q.dtype:
      raise TypeError(f"attention: {name} must have q's dtype {q.dtype}; got {x.dtype}")
  return jnp.concatenate([_merge(q), _merge(k), _merge(v)], axis=-1)


def _split(qkv: Array, heads: int) -> tuple[Array, Array, Array]:
  B, T, three_c = qkv.shape
  hs = three_c // (3 * heads)
  parts = qkv.reshape(B, T, 3, heads, hs)  # (A1): channel j hs + d of third i is head j, entry d
  return tuple(jnp.transpose(parts[:, :, i], (0, 2, 1, 3)) for i in range(3))  # (A1): (B, heads, T, hs)


def _merge(x: Array) -> Array:
  B, H, T, hs = x.shape
  return jnp.transpose(x, (0, 2, 1, 3)).reshape(B, T, H * hs)  # (A6): head h to channels h hs ..


def _causal(T: int) -> Array:
  return jnp.tril(jnp.ones((1, 1, T, T), dtype=bool))  # True where s <= t, shaped as (B, heads, T, T)


# ---------------------------------------------------------------- forward

def forward(qkv, heads: int, *, precision=DEFAULT_PRECISION) -> tuple[Array, AttentionCache]:
  """Causal multi-head self-attention: (out, cache) from qkv.

  Args:
    qkv: q, k, v side by side, shape (B, T, 3C) (llm.c's layout; ``merge_heads`` builds it from
      PyTorch's).
    heads: the number of heads; C must be divisible by it. Static under ``jax.jit``.
    precision: matmul precision; ``jax.lax.Precision.HIGHEST`` by default.

  Returns:
    out of shape (B, T, C): head h's P v in channels h hs .. (h + 1) hs - 1 (A6), and the
    ``AttentionCache`` (q, k, v, P) of the backward step.

  >>> import jax.numpy as jnp
  >>> out, cache = forward(jnp.ones((2, 3, 6)), heads=2)
  >>> out.shape, cache.P.shape, cache.P[0, 0, 1].tolist()
  ((2, 3, 2), (2, 2, 3, 3), [0.5, 0.5, 0.0])
  """
  qkv, _ = check_qkv(qkv, heads)
  return _forward(qkv, heads, check_precision(precision))


def _forward(qkv: Array, heads: int, precision) -> tuple[Array, AttentionCache]:
  q, k, v = _split(qkv, heads)  # (A1)
  T, hs = q.shape[-2], q.shape[-1]
  S = jnp.einsum("bhtd,bhsd->bhts", q, k, precision=precision) * (1 / math.sqrt(hs))  # (A2): S = q k^T / sqrt(hs)
  S = jnp.where(_causal(T), S, -jnp.inf)  # (A3): S~_ts = -inf for s > t
  P = _activations.softmax(S)  # (A4): P = softmax(S~), exp(S~ - max S~) over the unmasked s
  O = jnp.einsum("bhts,bhsd->bhtd", P, v, precision=precision)  # (A5): O = P v
  return _merge(O), AttentionCache(q, k, v, P)  # (A6)


# ---------------------------------------------------------------- backward

def backward(cache: AttentionCache, dout, *, precision=DEFAULT_PRECISION) -> Array:
  """dqkv = dl/dqkv of shape (B, T, 3C) from dout = dl/dout of shape (B, T, C), l the loss.

  dv = P^T dO (A8), dP = dO v^T (A9), dS = P * (dP - rowsum(dP * P)) (A10),
  dq = dS k / sqrt(hs) (A11), dk = dS^T q / sqrt(hs) (A12), assembled as qkv is (A13).

  (A10) is ``bpref.activations.vjp("softmax", ...)`` row by row: a masked entry has P_ts = 0
  exactly, so it adds nothing to rowsum(dP * P) and gets dS_ts = 0, which the mask then states
  outright; the unmasked entries are the VJP of the softmax over s <= t. See
  proofs/attention.md section 3.
  """
  dout = check_dout(cache, dout)
  return _backward(cache, dout, check_precision(precision))


def _backward(cache: AttentionCache, dout: Array, precision) -> Array:
  q, k, v, P = cache
  B, H, T, hs = q.shape
  scale = 1 / math.sqrt(hs)
  dO = jnp.transpose(dout.reshape(B, T, H, hs), (0, 2, 1, 3))  # (A7): dO of head h, (B, heads, T, hs)
  dv = jnp.einsum("bhts,bhtd->bhsd", P, dO, precision=precision)  # (A8): dv = P^T dO
  dP = jnp.einsum("bhtd,bhsd->bhts", dO, v, precision=precision)  # (A9): dP = dO v^T
  dS = _activations.vjp("softmax", P, P, dP)  # (A10): dS = P * (dP - rowsum(dP * P))
  dS = jnp.where(_causal(T), dS, jnp.zeros_like(dS))  # (A10): dS_ts = 0 for s > t
  dq = jnp.einsum("bhts,bhsd->bhtd", dS, k, precision=precision) * scale  # (A11): dq = dS k / sqrt(hs)
  dk = jnp.einsum("bhts,bhtd->bhsd", dS, q, precision=precision) * scale  # (A12): dk = dS^T q / sqrt(hs)
  return jnp.concatenate([_merge(dq), _merge(dk), _merge(dv)], axis=-1)  # (A13): dqkv = [dq | dk | dv]


def grads(qkv, heads: int, dout, *, precision=DEFAULT_PRECISION) -> Array:
  """dl/dqkv of shape (B, T, 3C) for dout = dl/dout of shape (B, T, C): forward, then backward.

  >>> import jax.numpy as jnp
  >>> dqkv = grads(jnp.ones((1, 2, 3)), 1, jnp.ones((1, 2, 1)))
  >>> dqkv.shape, dqkv[0, :, 2].tolist()  # dv = P^T dout, P = [[1, 0], [1/2, 1/2]]
  ((1, 2, 3), [1.5, 0.5])
  """
  qkv, _ = check_qkv(qkv, heads)
  precision = check_precision(precision)
  _, cache = _forward(qkv, heads, precision)
  return _backward(cache, check_dout(cache, dout), precision)
