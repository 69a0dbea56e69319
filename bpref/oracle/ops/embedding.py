"""The embedding kind: a candidate's token and position embedding backward against
``bpref.layers.embedding``.

The candidate is called as ``candidate(ids, wte, wpe, dout) -> (dwte, dwpe)`` for the forward
step out[b, t] = wte[ids[b, t]] + wpe[t] (EMB1): ids of shape (B, T), int64, each in [0, V);
wte (V, C); wpe (P, C); dout = dC/dout (B, T, C). The search draws P = T, so every row of wpe
is used; a position table longer than the sequences (P > T, whose rows T..P-1 get exact zeros)
is the core's concern, not searched here. ``Label.dims`` is (B, T, V, C).

bpref's answer (proofs/layers.md, section 3):

  dwte[v] = sum over the (b, t) with ids[b, t] = v of dout[b, t]       (EMB2), a scatter-add
  dwpe[t] = sum_b dout[b, t]                                           (EMB3)

The rounding model (proofs/layers.md, section 5 "Embedding"), with lambda / u the underflow
floor (U) counted once per term summed:

  M_dwte[v] = sum_{ids[b, t] = v} |dout[b, t]| + count(v) lambda / u   0 for a token absent from ids
  M_dwpe[t] = sum_b |dout[b, t]| + B lambda / u

k = max(B, the largest count(v)), the longest sum. A row of an absent token has M = 0 and no
slack of its own: any value the candidate puts there counts in full against the normwise bound
of the other rows, so that a table that is not zeroed first fails.

What the search must reach: a token repeated within the batch (the "kink" family draws one
token for every position, the "saturated" family only the ids 0 and V - 1, the ends of the
table; with V <= 6 the other families repeat tokens too), V = 1 and T = 1 (probes), and a table
whose rows are mostly absent from the batch (the probe V = 20). The shrinker moves each id to
token 0 where the failure stays, and the dout entries to plain values; wte and wpe, which the
backward does not read, only feed the forward check.

A framework function (``torch.autograd.Function``, ``jax.custom_vjp``) is called as
fn(ids, wte, wpe) -> out and differentiated in the tables only (its backward returns None for
the ids).

The bug models: NumPy's fancy assignment ``dwte[ids] = dout`` (and its buffered ``+=``), which
keeps one row of dout per repeated token, the last (or, written the other way round, the
first); dwpe from one example of the batch only; the two outputs swapped (seen where V = T,
where the shapes allow it: a candidate that fails on V != T is rerun on such a case). A batch
mean where the sum belongs, dwpe = mean_b dout, is a constant factor 1/B, which the engine's
refit at other batch sizes names.
"""

from __future__ import annotations

import jax
import numpy as np

from bpref import compilation
from bpref import tolerance as _tolerance
from bpref.layers import embedding as _embedding
from bpref.oracle.ops.record import (Label, Model, OpKind, OpTruth, bucket, plain, scaled,
                                     unit_and_floor)


@compilation.jit
def _answer_padded(ids, wte, wpe, dout):
  out = _embedding.forward(ids, wte, wpe)  # (EMB1)
  dwte, dwpe = _embedding.backward(ids, dout, wte.shape[0], wpe.shape[0])  # (EMB2), (EMB3)
  return out, dwte, dwpe


def _bpref(ids, wte, wpe, dout):
  """bpref's (out, dwte, dwpe) in float64, every axis padded to a bucket: padded positions
  hold id 0 with dout 0, which adds exactly 0 to dwte[0]; padded rows and columns are cut off."""
  B, T = ids.shape
  V, C = wte.shape
  nb, nt, nv, nc = bucket(B), bucket(T), bucket(V), bucket(C)
  ids_p = np.zeros((nb, nt), np.int64)
  ids_p[:B, :T] = ids
  wte_p, wpe_p, dout_p = np.zeros((nv, nc)), np.zeros((nt, nc)), np.zeros((nb, nt, nc))
  wte_p[:V, :C], wpe_p[:T, :C], dout_p[:B, :T, :C] = wte, wpe, dout
  with jax.enable_x64(True):
    out, dwte, dwpe = _answer_padded(ids_p, wte_p, wpe_p, dout_p)
  return (np.asarray(out, np.float64)[:B, :T, :C], np.asarray(dwte, np.float64)[:V, :C],
          np.asarray(dwpe, np.float64)[:T, :C])


def _scatter_abs(ids, dout, vocab):
  """sum over the (b, t) with ids[b, t] = v of |dout[b, t]|, per token v: the terms of (EMB2)."""
  M = np.zeros((vocab, dout.shape[-1]))
  np.add.at(M, ids, np.abs(dout))
  return M


def _one_per_token(ids, dout, vocab, last: bool):
  """dwte with one row of dout per token: the last occurrence in (b, t) order, or the first."""
  out = np.zeros((vocab, dout.shape[-1]))
  order = [(b, t) for b in range(ids.shape[0]) for t in range(ids.shape[1])]
  for b, t in (order if last else order[::-1]):
    out[ids[b, t]] = dout[b, t]
  return out


class Embedding(OpKind):
  name = "embedding"
  summary = ("out[b, t] = wte[ids[b, t]] + wpe[t]: (dwte, dwpe), dwte a scatter-add of dout over "
             "the ids, dwpe = sum_b dout")
  takes = ("ids",)
  layouts = ("",)
  options = ()
  families = ("plain", "normal", "spread", "kink", "saturated", "huge", "tiny")
  forward_name = "out[b, t] = wte[ids[b, t]] + wpe[t]"
  arguments = ("ids", "wte", "wpe", "dout")
  returns = ("dwte", "dwpe")
  dims_names = ("B", "T", "V", "C")
  integer_arrays = ("ids",)

  def describe(self, spec):
    return f"embedding ({spec.dtype})"

  # ---- cases
  def probe_dims(self, spec):
    return ([(1, 1, 1, 1), (1, 1, 3, 2), (2, 3, 1, 2), (3, 1, 4, 2), (2, 4, 3, 3), (4, 5, 2, 1),
             (2, 3, 20, 32)], [(3, 4, 3, 2), (2, 2, 5, 3)])

  def random_dims(self, spec, rng):
    B = int(rng.integers(1, spec.max_batch + 1))
    return (B,) + tuple(int(w) for w in rng.integers(1, spec.max_width + 1, 3))

  def draw(self, spec, label):
    rng = self.rng(spec, label)
    B, T, V, C = label.dims
    fam = label.family
    if fam == "kink":  # one token at every position: every row of dout lands on one row of dwte
      ids = np.full((B, T), rng.integers(V))
    elif fam == "saturated":  # the ends of the table only
      ids = rng.choice(np.array([0, V - 1]), size=(B, T))
    else:
      ids = rng.integers(0, V, (B, T))
    f64 = spec.dtype == "float64"

    def values(shape):
      if fam == "plain":
        return plain(rng, shape)
      if fam == "spread":  # each entry its own scale, 1e-3 to 1e3
        return rng.normal(size=shape) * 10.0 ** rng.uniform(-3, 3, shape)
      if fam == "huge":
        return scaled(rng, shape, 0.5e100, 1e100) if f64 else scaled(rng, shape, 0.5e15, 1e15)
      if fam == "tiny":
        return scaled(rng, shape, 0.5e-100, 1e-100) if f64 else scaled(rng, shape, 0.5e-15, 1e-15)
      return rng.normal(size=shape)

    return {"ids": ids.astype(np.float64), "wte": values((V, C)), "wpe": values((T, C)),
            "dout": values((B, T, C))}

  def shrinkable(self, spec):
    return self.arguments  # ids included: each may move to token 0 (``replacements``)

  def replacements(self, spec, name, value):
    if name == "ids":  # token 0, the plainest id; the others are kept where the failure needs them
      return (0.0,) if value != 0 else ()
    return super().replacements(spec, name, value)

  # ---- bpref's answer and its bounds
  def compute(self, spec, case, variant=None):
    a = case.arrays
    ids = np.asarray(a["ids"]).astype(np.int64)
    wte, wpe, dout = a["wte"], a["wpe"], a["dout"]
    B, T = ids.shape
    V = wte.shape[0]
    _, floor = unit_and_floor(spec.dtype)
    out, dwte, dwpe = _bpref(ids, wte, wpe, dout)
    counts = np.bincount(ids.ravel(), minlength=V)
    # (EMB2): the terms of each token's sum, and one underflow floor per term; absent tokens 0
    M_dwte = _scatter_abs(ids, dout, V) + counts[:, None] * floor
    M_dwpe = np.abs(dout).sum(axis=0) + B * floor  # (EMB3): the B terms of each position's sum
    k = max(B, int(counts.max()))
    forward_bound = np.abs(wte[ids]) + np.abs(wpe[None, :T]) + floor  # (EMB1): one addition
    return OpTruth({"dwte": dwte, "dwpe": dwpe}, {"dwte": M_dwte, "dwpe": M_dwpe},
                   _tolerance.tolerance(spec.dtype, depth=1, inner=k), None, 0.0, out,
                   forward_bound, _tolerance.forward_tolerance(spec.dtype, depth=1, inner=1))

  # ---- the candidate's side
  def declared(self, spec, name, value):
    """ids as the integers they are (reports show them so); the rest as they are."""
    return np.asarray(value).astype(np.int64) if name == "ids" else np.asarray(value)

  def internal(self, spec, name, value):
    return np.asarray(value)

  def shape_findings(self, spec, case, name, got, want):
    msg, found = super().shape_findings(spec, case, name, got, want)
    T = case.arrays["ids"].shape[1]
    V, C = case.arrays["wte"].shape
    if name == "dwte" and got == (T, C) and T != V:
      msg += " (that is dwpe's shape (T, C): the outputs swapped, or dwte summed by position?)"
    elif name == "dwpe" and got == (V, C) and T != V:
      msg += " (that is dwte's shape (V, C): the outputs swapped?)"
    return msg, found

  # ---- framework candidates
  def framework_call(self, spec, args):
    """(ids, wte, wpe), differentiated in the tables only, with cotangent dout. The ids go as
    int32, an integer type JAX keeps with x64 off, as it does for a float32 check (torch gets
    them as int64 from the adapter)."""
    inputs, grad, cot = super().framework_call(spec, args)
    return [inputs[0].astype(np.int32)] + inputs[1:], grad, cot

  # ---- diagnosis
  def models(self, spec, case, truth):
    a = case.arrays
    ids = np.asarray(a["ids"]).astype(np.int64)
    dout = a["dout"]
    B, T = ids.shape
    V = a["wte"].shape[0]
    e = truth.expected
    out = [
        Model("repeated_token_overwritten", "dwte keeps one row of dout per token, the last "
              "occurrence: NumPy's dwte[ids] = dout (or its buffered dwte[ids] += dout) overwrites "
              "a repeated token where (EMB2) sums its rows; np.add.at(dwte, ids, dout) accumulates",
              {"dwte": _one_per_token(ids, dout, V, last=True)}),
        Model("repeated_token_overwritten", "dwte keeps one row of dout per token, the first "
              "occurrence: a repeated token is written once where (EMB2) sums its rows",
              {"dwte": _one_per_token(ids, dout, V, last=False)}),
    ]
    if B > 1:
      for which, row in (("first", 0), ("last", -1)):
        how = "" if which == "first" else " (an assignment where += was meant)"
        out.append(Model("position_sum_missing", f"dwpe is the {which} example's dout only, not "
                         f"the sum over the batch{how}: every sequence uses the same wpe[t] (EMB3)",
                         {"dwpe": dout[row].copy()}))
    if V == T:
      out.append(Model("token_position_swapped", "dwte and dwpe swapped: the scatter over the ids "
                       "(EMB2) returned as dwpe and the batch sum per position (EMB3) as dwte "
                       "(shapes that agree only where V = T)",
                       {"dwte": e["dwpe"].copy(), "dwpe": e["dwte"].copy()}))
    return [m for m in out if not all(np.array_equal(v, e[k]) for k, v in m.outputs.items())]

  def rerun_labels(self, spec, verdict_kind, origin):
    """A candidate that mixes the two tables fails to run, or returns the wrong shapes, unless
    V = T: diagnose it on such a case."""
    if verdict_kind in ("exception", "shape"):
      return [(Label((2, 3, 3, 2), family, spec.seed), "a case with V = T", "")
              for family in ("normal", "plain")]
    return []


EMBEDDING = Embedding()
