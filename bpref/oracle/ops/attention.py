"""The attention kind: a candidate's causal multi-head self-attention backward against
``bpref.layers.attention``.

Layouts (``layout=``), with hs = C / heads the head size:

========  ===============================================  ===================================
layout    candidate(...)                                   returns
========  ===============================================  ===================================
llmc      (qkv, dout, heads): qkv (B, T, 3C) = [q | k | v]  dqkv (B, T, 3C)
          (llm.c's and GPT-2's), dout (B, T, C), heads an
          int; head h owns channels h hs .. (h + 1) hs - 1
torch     (q, k, v, dout), each (B, heads, T, hs); dout    (dq, dk, dv), each (B, heads, T, hs)
          the cotangent of the per-head output O
========  ===============================================  ===================================

and per head S = q k^T / sqrt(hs), P = softmax(S masked causally), O = P v (proofs/attention.md
(A1)-(A13)). ``heads=0`` (the default) searches 1, 2 and 3 heads, so a candidate must read its
heads from the ``heads`` argument (llmc) or the shapes (torch); ``heads=H`` fixes it. T and hs
go up to ``max_width``, B up to ``max_batch``.

A forward function is called ``forward(qkv) -> out`` (llmc; out (B, T, C)) or
``forward(q, k, v) -> O`` (torch; O (B, heads, T, hs)). The heads count is neither
differentiable nor a tensor, so it is never handed to a forward function or a framework
function: a ``torch.autograd.Function`` or ``jax.custom_vjp`` function in the llmc layout is
called ``fn(qkv)`` with its own heads fixed, and must be checked with ``heads=`` that number;
in the torch layout it is called ``fn(q, k, v)`` and reads the heads off the shapes.

A case stores qkv as (B, T, 3, heads, hs) and dout as (B, T, heads, hs), the llm.c layout with
its channel axis split as (heads, hs), so that the heads are read off the shapes; ``declared``
gives the candidate's layout (in the torch layout the stored qkv reads as torch.stack([q, k, v]),
(3, B, heads, T, hs), in the reports and in ``bpref.oracle.ops.expected``). bpref's answer and
the bug models are held in the candidate's layout.

The rounding model (proofs/attention.md section 6, (A14)-(A19)), per head, on the visible
entries s <= t (every masked entry of an M is 0), with k = max(T, hs):

  Shat = |q| |k|^T / sqrt(hs),   R = max(1, Shat)                 the terms of S
  Pi   = P (R + <P, R>)                                           the magnitude of P
  G    = |dO| |v|^T                                               the terms of dP
  M_dS = 2 Pi (G + <P, G>) + P <Pi, G>                             the magnitude of dS
  M_out = Pi |v|,  M_dq = M_dS |k| / sqrt(hs),  M_dk = M_dS^T |q| / sqrt(hs),  M_dv = Pi^T |dO|

and every entry of a correct output X errs by at most c u k M_X (A19): tol = c u 3 k of (T)
with L = 1, normwise (``bpref.oracle.ops.record.error``). The underflow floor lambda / u is
added to each visible entry of Pi and M_dS and to each M_X.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bpref import compilation
from bpref import tolerance as _tolerance
from bpref.layers import attention as _attention
from bpref.network import DEFAULT_PRECISION
from bpref.oracle.ops.record import (Label, Model, OpKind, OpTruth, bucket, plain, scaled,
                                     signs, unit_and_floor)
from bpref.validation import check_precision

Array = jax.Array


# ---------------------------------------------------------------- the rounding model

class AttentionBounds(NamedTuple):
  """The magnitude M of each output (proofs/attention.md section 6), float arrays of its shape.

  A correct float implementation errs by at most c u k M per entry, k = max(T, hs).

  Attributes:
    out: M_out, shape (B, T, C).
    dq: M_dq, shape (B, T, C).
    dk: M_dk, shape (B, T, C).
    dv: M_dv, shape (B, T, C).
  """
  out: Array
  dq: Array
  dk: Array
  dv: Array


def bounds(cache: _attention.AttentionCache, dout, dtype=None, *,
           precision=DEFAULT_PRECISION) -> AttentionBounds:
  """The magnitude M of out, dq, dk and dv (proofs/attention.md section 6).

  A correct implementation in ``dtype`` errs by at most c u k M per entry (A19), k = max(T, hs),
  c u k as ``bpref.tolerance.tolerance(dtype, depth=1, inner=k)``. Compute the cache in float64
  (``bpref.layers.attention.forward``) from the values handed to the candidate. ``dtype``
  (default the cache's) sets the underflow floor lambda / u of proofs/tolerance.md added to
  each term.

  >>> import jax, numpy as np
  >>> from bpref.layers import attention
  >>> with jax.enable_x64(True):
  ...   _, cache = attention.forward(np.ones((1, 2, 3)), 1)
  ...   M = bounds(cache, np.ones((1, 2, 1)), np.float32)
  >>> [round(float(m), 6) for m in M.dv[0, :, 0]]  # Pi^T |dO|: Pi = [[2, 0], [1, 1]]
  [3.0, 1.0]
  """
  dout = _attention.check_dout(cache, dout)
  precision = check_precision(precision)
  _, floor = unit_and_floor(np.dtype(cache.q.dtype if dtype is None else dtype))
  return _magnitudes(cache, dout, floor, precision)


def _per_head(x: Array, heads: int) -> Array:
  B, T, C = x.shape
  return jnp.transpose(x.reshape(B, T, heads, C // heads), (0, 2, 1, 3))  # (A7): (B, heads, T, hs)


def _merged(x: Array) -> Array:
  B, H, T, hs = x.shape
  return jnp.transpose(x, (0, 2, 1, 3)).reshape(B, T, H * hs)  # (A6): head h to channels h hs ..


def _magnitudes(cache, dout, floor, precision) -> AttentionBounds:
  """(A14)-(A18) on a checked cache and dout; ``floor`` is lambda / u (a traced float is fine)."""
  q, k, v, P = cache
  H, T, hs = q.shape[1:]
  scale = 1 / math.sqrt(hs)
  past = jnp.tril(jnp.ones((1, 1, T, T), dtype=bool))  # s <= t
  absq, absk, absv = jnp.abs(q), jnp.abs(k), jnp.abs(v)
  absdO = jnp.abs(_per_head(dout, H))  # (A7)
  Shat = jnp.einsum("bhtd,bhsd->bhts", absq, absk, precision=precision) * scale  # (A14): terms of S
  R = jnp.where(past, jnp.maximum(1.0, Shat), jnp.zeros_like(Shat))  # (A14): R = max(1, |q| |k|^T / sqrt(hs))
  Pi = P * (R + jnp.sum(P * R, axis=-1, keepdims=True)) + jnp.where(past, floor, 0.0)  # (A15): Pi = P (R + <P, R>)
  G = jnp.einsum("bhtd,bhsd->bhts", absdO, absv, precision=precision)  # (A16): G = |dO| |v|^T
  dP = jnp.einsum("bhtd,bhsd->bhts", _per_head(dout, H), v, precision=precision)  # (A9): dP = dO v^T
  centred = jnp.abs(dP - jnp.sum(dP * P, axis=-1, keepdims=True))  # |dP - <dP, P>|
  MdS = (Pi * centred + 2 * P * (G + jnp.sum(P * G, axis=-1, keepdims=True))
         + P * jnp.sum(Pi * G, axis=-1, keepdims=True) + jnp.where(past, floor, 0.0))  # (A17): M_dS
  Mout = jnp.einsum("bhts,bhsd->bhtd", Pi, absv, precision=precision) + floor  # (A18): M_out = Pi |v|
  Mdq = jnp.einsum("bhts,bhsd->bhtd", MdS, absk, precision=precision) * scale + floor  # (A18): M_dq = M_dS |k| / sqrt(hs)
  Mdk = jnp.einsum("bhts,bhtd->bhsd", MdS, absq, precision=precision) * scale + floor  # (A18): M_dk = M_dS^T |q| / sqrt(hs)
  Mdv = jnp.einsum("bhts,bhtd->bhsd", Pi, absdO, precision=precision) + floor  # (A18): M_dv = Pi^T |dO|
  return AttentionBounds(_merged(Mout), _merged(Mdq), _merged(Mdk), _merged(Mdv))


# ---------------------------------------------------------------- bpref's answer

@compilation.jit(static_argnums=2)
def _padded(qkv, dout, heads, floor):
  out, cache = _attention.forward(qkv, heads)  # (A1)-(A6)
  dqkv = _attention.backward(cache, dout)  # (A7)-(A13)
  M = _magnitudes(cache, dout, floor, DEFAULT_PRECISION)  # (A14)-(A18)
  return out, dqkv, M.out, jnp.concatenate([M.dq, M.dk, M.dv], axis=-1)


def _bpref(qkv, dout, floor) -> tuple:
  """bpref's (out, dqkv, M_out, M_dqkv) in float64 and the stored layout: out and M_out
  (B, T, heads, hs), dqkv and M_dqkv (B, T, 3, heads, hs).

  B, T and the heads are padded with zeros to a bucket, so that one program serves every case
  of one head size: a zero batch row or head adds nothing, and neither does a zero position
  at the end, which the causal mask keeps out of every earlier position's sums (its q, k, v
  and dout are 0, so it adds exact zeros to dk and dv of the earlier keys). hs is not padded:
  the scale 1/sqrt(hs) depends on it.
  """
  B, T, _, H, hs = qkv.shape
  Bp, Tp, Hp = bucket(B), bucket(T), bucket(H)
  x = np.zeros((Bp, Tp, 3, Hp, hs))
  x[:B, :T, :, :H] = qkv
  g = np.zeros((Bp, Tp, Hp, hs))
  g[:B, :T, :H] = dout
  with jax.enable_x64(True):
    found = _padded(x.reshape(Bp, Tp, -1), g.reshape(Bp, Tp, -1), Hp, float(floor))
  out, dqkv, M_out, M = (np.asarray(a, np.float64) for a in found)
  one = lambda a: a.reshape(Bp, Tp, Hp, hs)[:B, :T, :H]
  three = lambda a: a.reshape(Bp, Tp, 3, Hp, hs)[:B, :T, :, :H]
  return one(out), three(dqkv), one(M_out), three(M)


# ---------------------------------------------------------------- the bug models

def _softmax(S):
  e = np.exp(S - np.max(S, axis=-1, keepdims=True))
  return e / np.sum(e, axis=-1, keepdims=True)


def _vjp(y, g):
  """The softmax VJP row by row: y (g - <g, y>)."""
  return y * (g - np.sum(g * y, axis=-1, keepdims=True))


def _t(x):
  return np.swapaxes(x, -1, -2)


def _pieces(q, k, v, dO) -> tuple:
  """(c, causal, P, softmax(S) unmasked, dv, dP, dS) of one backward, per head, NumPy float64."""
  T, hs = q.shape[-2:]
  c = 1 / math.sqrt(hs)
  causal = np.tril(np.ones((T, T), dtype=bool))
  S = q @ _t(k) * c  # (A2)
  P = _softmax(np.where(causal, S, -np.inf))  # (A3), (A4)
  dP = dO @ _t(v)  # (A9)
  return c, causal, P, _softmax(S), _t(P) @ dO, dP, _vjp(P, dP)  # (A8), (A10)


def _right(q, k, v, dO) -> tuple:
  """(dq, dk, dv) per head ((B, heads, T, hs), NumPy float64): (A8)-(A12)."""
  c, _, _, _, dv, _, dS = _pieces(q, k, v, dO)
  return dS @ k * c, _t(dS) @ q * c, dv  # (A11), (A12)


def _models(q, k, v, dO) -> list:
  """(code, summary, (dq, dk, dv)) of each classic mistake of proofs/attention.md section 5,
  per head ((B, heads, T, hs), NumPy float64), the most specific first."""
  c, causal, P, full, dv, dP, dS = _pieces(q, k, v, dO)

  def grads(dS, dv=dv, sq=c, sk=c, tq=False, tk=False):
    return ((_t(dS) if tq else dS) @ k * sq,  # (A11)
            (dS if tk else _t(dS)) @ q * sk,  # (A12)
            dv)

  Pm = np.where(causal, full, 0.0)
  g = np.where(causal, dP, 0.0)
  after = _vjp(full, g)
  leak = _vjp(full, dP)
  dq, dk, _ = grads(dS)
  return [
      ("softmax_jacobian_missing", "dS = dP on the visible keys: the softmax's Jacobian "
       "diag(P) - P P^T left out, as if P were S (A10)", grads(g)),
      ("softmax_jacobian_missing", "dS = dP, unmasked: the softmax's Jacobian left out (A10), and "
       "the future keys s > t charged too", grads(dP)),
      ("softmax_jacobian_diagonal", "dS = P (1 - P) dP: only the diagonal of the softmax's "
       "Jacobian diag(P) - P P^T, as for an elementwise softmax' (A10)", grads(P * (1 - P) * dP)),
      ("mask_after_softmax", "the mask applied after the softmax: P = softmax(S) over all T "
       "keys with the future zeroed and the rows not renormalised, and the backward of that "
       "(dv = P^T dO, dS = softmax(S) (g - <g, softmax(S)>), g = dP masked) (A3), (A4)",
       grads(after, dv=_t(Pm) @ dO)),
      ("mask_after_softmax", "the mask applied after the softmax, without renormalising the "
       "rows, and the backward of that with dS masked too (A3), (A4)",
       grads(np.where(causal, after, 0.0), dv=_t(Pm) @ dO)),
      ("future_leak", "dS from the unmasked softmax, dS = softmax(S) (dP - <dP, softmax(S)>): "
       "the causal mask forgotten in the backward, so dq collects the future keys s > t and dk "
       "the queries t < s (A10)", grads(leak)),
      ("future_leak", "the backward of attention without the causal mask: P = softmax(S) over "
       "all T keys in dv = P^T dO and in dS (A3), (A8), (A10)", grads(leak, dv=_t(full) @ dO)),
      ("scale_missing", "dq = dS k and dk = dS^T q: the scale 1/sqrt(hs) of S = q k^T / sqrt(hs) "
       "left out of the backward (A11), (A12)", grads(dS, sq=1.0, sk=1.0)),
      ("scale_missing", "dq = dS k: the scale 1/sqrt(hs) left out of dq (A11)",
       grads(dS, sq=1.0)),
      ("scale_missing", "dk = dS^T q: the scale 1/sqrt(hs) left out of dk (A12)",
       grads(dS, sk=1.0)),
      ("transposed", "dq = dS^T k / sqrt(hs) and dk = dS q / sqrt(hs): dS read by columns where "
       "it must be read by rows (A11), (A12)", grads(dS, tq=True, tk=True)),
      ("transposed", "dq = dS^T k / sqrt(hs): the transposed dS in dq (A11)", grads(dS, tq=True)),
      ("transposed", "dk = dS q / sqrt(hs): dS in place of its transpose in dk (A12)",
       grads(dS, tk=True)),
      ("k_v_swapped", "dk and dv exchanged: the gradient of the values returned for the keys and "
       "the keys' for the values (A13)", (dq, dv, dk)),
  ]


# ---------------------------------------------------------------- layouts

def _heads_first(x):
  """(B, T, heads, hs) -> (B, heads, T, hs), and back."""
  return np.swapaxes(x, 1, 2)


def _stored(q, k, v):
  """(B, heads, T, hs) each -> qkv as stored, (B, T, 3, heads, hs)."""
  return np.stack([_heads_first(a) for a in (q, k, v)], axis=2)


def _interleaved(x):
  """The heads as a wrong reshape sees them: the channel axis split as (hs, heads), so head h
  holds channels h, h + heads, h + 2 heads, ...; (..., heads, hs) in and out, stored layout."""
  *lead, H, hs = x.shape
  return np.swapaxes(x.reshape(*lead, hs, H), -1, -2)


def _uninterleaved(x):
  """``_interleaved``'s inverse: per-head values written back through the same wrong reshape."""
  *lead, H, hs = x.shape
  return np.swapaxes(x, -1, -2).reshape(*lead, H, hs)


# ---------------------------------------------------------------- the record

class Attention(OpKind):
  name = "attention"
  summary = ("causal multi-head self-attention out = softmax(mask(q k^T / sqrt(hs))) v per "
             "head: dqkv (llmc) or (dq, dk, dv) (torch)")
  takes = ("qkv",)
  layouts = ("llmc", "torch")
  options = ("layout", "heads")
  families = ("plain", "normal", "spread", "kink", "saturated", "huge", "limit")
  forward_name = "out = softmax(mask(q k^T / sqrt(hs))) v"
  arguments = ("qkv", "dout", "heads")
  returns = ("dqkv",)
  dims_names = ("B", "T", "heads", "hs")  # (B, T, hs) when the spec fixes the heads

  def describe(self, spec):
    heads = spec.heads or "1, 2 and 3"
    return f"attention ({spec.dtype}, layout {spec.layout}, heads {heads})"

  # ---- cases
  def _label_dims(self, spec, dims) -> tuple:
    """``Label.dims`` of a case of (B, T, heads, hs): (B, T, hs) when ``heads`` fixes the
    heads, so that the shrinker, which makes every entry of the dims smaller, keeps them."""
    return (dims[0], dims[1], dims[3]) if spec.heads else tuple(dims)

  def _dims(self, spec, label) -> tuple:
    """(B, T, heads, hs) of a case, from its ``Label``."""
    d = label.dims
    return (d[0], d[1], spec.heads, d[2]) if spec.heads else tuple(d)

  def probe_dims(self, spec):
    shapes = [(1, 1, 2, 4),  # T = 1: P = [1], dq = dk = 0
              (2, 3, 1, 2),  # one head
              (1, 4, 3, 2),  # several heads
              (2, 3, 2, 1),  # hs = 1: the scale is 1, every reshape of the heads the same
              (1, 8, 2, 8)]  # wider than the random cases
    families = [(2, 4, 2, 3), (1, 3, 1, 2)]
    return ([self._label_dims(spec, d) for d in shapes],
            [self._label_dims(spec, d) for d in families])

  def random_dims(self, spec, rng):
    B = int(rng.integers(1, spec.max_batch + 1))
    T, hs = (int(w) for w in rng.integers(1, spec.max_width + 1, 2))
    return self._label_dims(spec, (B, T, int(rng.integers(1, 4)), hs))

  def draw(self, spec, label):
    rng = self.rng(spec, label)
    B, T, H, hs = self._dims(spec, label)
    fam = label.family
    if fam == "plain":
      return {"qkv": plain(rng, (B, T, 3, H, hs)), "dout": plain(rng, (B, T, H, hs))}
    qkv = rng.normal(size=(B, T, 3, H, hs))
    dout = rng.normal(size=(B, T, H, hs))
    if fam == "spread":  # each position and head its own scale: q, k 10^+-1, v and dout 10^+-3
      qkv[:, :, :2] *= 10.0 ** rng.uniform(-1, 1, (B, T, 2, H, 1))
      qkv[:, :, 2] *= 10.0 ** rng.uniform(-3, 3, (B, T, H, 1))
      dout *= 10.0 ** rng.uniform(-3, 3, (B, T, H, 1))
    elif fam == "kink":  # equal scores: q = 0 on about half the rows, all keys equal in some heads
      q, k = qkv[:, :, 0], qkv[:, :, 1]
      q[rng.random((B, T, H)) < 0.5] = 0.0
      same = rng.random((B, 1, H, 1)) < 0.25
      k[...] = np.where(same, k[:, :1], k)
    elif fam == "saturated":  # scores of size 1e2 to 1e3: P nearly one-hot, or near ties
      size = 10.0 ** rng.uniform(2, 3, (B, 1, H))
      if rng.random() < 0.5:  # near ties: S_ts = +-(size + O(1)), each row its own sign
        c = np.sqrt(size * math.sqrt(hs))
        qkv[:, :, 0, :, 0] = c * signs(rng, (B, T, H))
        qkv[:, :, 1, :, 0] = c + qkv[:, :, 1, :, 0] / c
      else:  # spread by hundreds: one key takes all (a one-hot row's true dS is about 0)
        qkv[:, :, :2] *= np.sqrt(size)[:, :, None, :, None]
    elif fam == "limit":  # every score of a row near -1e4 or below, ties within O(1): a
      # softmax that starts its running max at a constant (llm.c's -10000) underflows to 0 there
      size = 10.0 ** rng.uniform(4.1, 4.5, (B, 1, H))
      c = np.sqrt(size * math.sqrt(hs))
      qkv[:, :, :2, :, 1:] = 0.0
      qkv[:, :, 0, :, 0] = c
      qkv[:, :, 1, :, 0] = -c + qkv[:, :, 1, :, 0] / c
    elif fam == "huge":  # v and dout near 1e15 (float32) or 1e100 (float64); scores moderate
      big = 1e15 if spec.dtype == "float32" else 1e100
      qkv[:, :, 2] = scaled(rng, (B, T, H, hs), big / 2, big)
      dout = scaled(rng, (B, T, H, hs), big / 2, big)
    return {"qkv": qkv, "dout": dout}

  def primary(self, spec):
    return ("qkv", "dout")

  def rerun_labels(self, spec, verdict_kind, origin):
    heads = spec.heads or 2
    return [(Label(self._label_dims(spec, (2, 4, heads, 3)), "normal", spec.seed),
             f"B = 2, T = 4, {heads} heads, hs = 3", "")]

  # ---- bpref's answer
  def compute(self, spec, case, variant=None):
    qkv, dout = case.arrays["qkv"], case.arrays["dout"]
    T, hs = qkv.shape[1], qkv.shape[-1]
    _, floor = unit_and_floor(spec.dtype)
    out, dqkv, M_out, M = _bpref(qkv, dout, floor)
    k = max(T, hs)
    return OpTruth(self._outputs(spec, dqkv), self._outputs(spec, M),
                   _tolerance.tolerance(spec.dtype, depth=1, inner=k), None, 0.0,
                   self._out(spec, out), self._out(spec, M_out),
                   _tolerance.forward_tolerance(spec.dtype, depth=1, inner=k))

  def _outputs(self, spec, dqkv) -> dict:
    """{output: array} in the candidate's layout from the stored (B, T, 3, heads, hs)."""
    if spec.layout == "llmc":
      return {"dqkv": dqkv.reshape(dqkv.shape[:2] + (-1,))}
    return {n: np.ascontiguousarray(_heads_first(dqkv[:, :, i]))
            for i, n in enumerate(("dq", "dk", "dv"))}

  def _out(self, spec, out):
    """The forward output in the candidate's layout from the stored (B, T, heads, hs)."""
    if spec.layout == "llmc":
      return out.reshape(out.shape[:2] + (-1,))
    return np.ascontiguousarray(_heads_first(out))

  def output_names(self, spec):
    return ("dqkv",) if spec.layout == "llmc" else ("dq", "dk", "dv")

  # ---- the candidate's side
  def arg_names(self, spec):
    return ("qkv", "dout", "heads") if spec.layout == "llmc" else ("q", "k", "v", "dout")

  def args(self, spec, case):
    dt = np.dtype(spec.dtype)
    qkv, dout = case.arrays["qkv"], case.arrays["dout"]
    if spec.layout == "llmc":
      return (np.array(self.declared(spec, "qkv", qkv), dt, order="C"),
              np.array(self.declared(spec, "dout", dout), dt, order="C"), int(qkv.shape[3]))
    return tuple(np.array(_heads_first(qkv[:, :, i]), dt, order="C") for i in range(3)) + (
        np.array(_heads_first(dout), dt, order="C"),)

  def forward_args(self, spec, case):
    return self.args(spec, case)[:1 if spec.layout == "llmc" else 3]

  def declared(self, spec, name, value):
    value = np.asarray(value)
    if name == "qkv":
      if spec.layout == "llmc":
        return value.reshape(value.shape[:2] + (-1,))  # (B, T, 3C)
      return np.transpose(value, (2, 0, 3, 1, 4))  # (3, B, heads, T, hs)
    if name == "dout":
      return value.reshape(value.shape[:2] + (-1,)) if spec.layout == "llmc" else _heads_first(value)
    return value

  def internal(self, spec, name, value):
    value = np.asarray(value)
    if name not in ("qkv", "dout"):
      return value
    if spec.layout == "torch":
      want = 5 if name == "qkv" else 4
      if value.ndim != want:
        raise ValueError(f"attention, layout 'torch': {name} must have shape "
                         f"{'(3, B, heads, T, hs), torch.stack([q, k, v])' if want == 5 else '(B, heads, T, hs)'}"
                         f"; got shape {value.shape}")
      return np.transpose(value, (1, 3, 0, 2, 4)) if name == "qkv" else _heads_first(value)
    if not spec.heads:
      raise ValueError("attention, layout 'llmc': qkv (B, T, 3C) and dout (B, T, C) do not say how "
                       "many heads they hold; pass heads=H (a failing case's is the third of its "
                       "dims (B, T, heads, hs))")
    parts = 3 if name == "qkv" else 1
    if value.ndim != 3:
      raise ValueError(f"attention, layout 'llmc': {name} must have shape "
                       f"{'(B, T, 3C)' if parts == 3 else '(B, T, C)'}; got shape {value.shape}")
    B, T, width = value.shape
    if width % (parts * spec.heads):
      raise ValueError(f"attention, layout 'llmc': {name} has shape {value.shape}, whose last axis "
                       f"is not {'3C' if parts == 3 else 'C'} with C divisible by heads = {spec.heads}")
    hs = width // (parts * spec.heads)
    return value.reshape((B, T, 3, spec.heads, hs) if parts == 3 else (B, T, spec.heads, hs))

  def required(self, spec):
    return ("qkv", "dout")

  # ---- diagnosis
  def models(self, spec, case, truth):
    qkv, dout = case.arrays["qkv"], case.arrays["dout"]
    H, hs = qkv.shape[-2:]
    q, k, v = (_heads_first(qkv[:, :, i]) for i in range(3))
    found = [(code, summary, _stored(*grads))
             for code, summary, grads in _models(q, k, v, _heads_first(dout))]
    if spec.layout == "llmc" and H > 1 and hs > 1:
      wrong = _interleaved(qkv)
      grads = _stored(*_right(*(_heads_first(wrong[:, :, i]) for i in range(3)),
                              _heads_first(_interleaved(dout))))
      found += [
          ("head_reshape", "the channels split as (hs, heads) instead of (heads, hs): head h "
           "gets channels h, h + heads, h + 2 heads, ... of q, k, v and dout, and dqkv is "
           "written back the same way (A1), (A13)", _uninterleaved(grads)),
          ("head_reshape", "q, k, v and dout split into heads as (hs, heads) instead of "
           "(heads, hs), dqkv merged back as (heads, hs) (A1), (A13)", grads),
      ]
    return [Model(code, summary, self._outputs(spec, grads)) for code, summary, grads in found]

  # ---- framework candidates
  def framework_call(self, spec, args):
    if spec.layout == "llmc":
      return [args[0]], [True], args[1]  # fn(qkv): the heads are the function's own
    return list(args[:3]), [True, True, True], args[3]


ATTENTION = Attention()
