"""The layernorm kind: a candidate's layer-normalization backward against ``bpref.layers.layernorm``.

The candidate is called as ``candidate(x, w, b, dout) -> (dx, dw, db)``: x and dout of shape
(B, T, C) (``layout="btc"``, llm.c's and GPT-2's) or (N, C) (``layout="nc"``), w and b of shape
(C,), the normalization over C with the biased variance and ``eps`` inside the square root
(``eps=1e-5`` by default, PyTorch's and llm.c's). A candidate written llm.c's way, whose
backward reads the mean and rstd its forward saved, is wrapped to compute them first.

The rounding model (proofs/layers.md, "The op oracle's bound for layernorm"), per row, in units of u times the longest sum
k = max(C, rows), with A = mean_C |x|:

  M_d   = |x| + A                                   x - mu, mu rounded
  M_var = mean_C(2 |d| M_d) + mean_C(x^2) + mu^2    two-pass, Welford and one-pass variances
  M_r   = rstd (1 + M_var / (2 (var + eps)))        rsqrt of a rounded var + eps
  M_xh  = M_d rstd + |d| M_r + |xhat|
  M_g   = |dout| |w|                                dxhat = dout w
  M_dx  = M_r |dx| / rstd + rstd (M_g + mean_C M_g + M_xh |m2| + |xhat| mean_C(M_g |xhat| + |g| M_xh))
  M_dw  = sum_rows |dout| M_xh,    M_db = sum_rows |dout|

with m2 = mean_C(g xhat): each output's error is a first-order sum of u times the magnitude of
every rounded quantity it is built from, propagated through the equations (LN1)-(LN11). The
one-pass variance mean(x^2) - mu^2 (flax's default) is covered by its mean(x^2) + mu^2 term; on
rows with a large mean that term makes the check of dx loose in float32, and the search's
"vacuous" rule then skips the outputs a zero answer would pass.
"""

from __future__ import annotations


import jax
import numpy as np

from bpref import compilation
from bpref import tolerance as _tolerance
from bpref.layers import layernorm as _layernorm
from bpref.oracle.ops.record import (ROW_PROBES, Model, OpKind, OpTruth, bucket, plain, row_dims,
                                     unit_and_floor)


@compilation.jit(static_argnums=4)
def _grads_padded(x, w, b, dout, eps):
  out, cache = _layernorm.forward(x, w, b, eps)  # (LN1)-(LN5)
  return (out,) + _layernorm.backward(cache, w, dout)  # (LN8)-(LN11)


def _bpref(x, w, b, dout, eps):
  """bpref's (out, dx, dw, db) in float64, the rows padded to a bucket (a zero row adds nothing)."""
  C = x.shape[-1]
  rows = x.reshape(-1, C)
  n = rows.shape[0]
  pad = bucket(n)

  def padded(v):
    out = np.zeros((pad, C))
    out[:n] = v.reshape(-1, C)
    return out

  with jax.enable_x64(True):
    out, dx, dw, db = _grads_padded(padded(x), np.asarray(w, np.float64), np.asarray(b, np.float64),
                                    padded(dout), float(eps))
  shape = x.shape
  return (np.asarray(out)[:n].reshape(shape), np.asarray(dx)[:n].reshape(shape),
          np.asarray(dw, np.float64), np.asarray(db, np.float64))


def _stats(x, eps):
  """Per row (keepdims): mu, d = x - mu, var, rstd, xhat, in float64."""
  mu = x.mean(axis=-1, keepdims=True)
  d = x - mu
  var = (d * d).mean(axis=-1, keepdims=True)
  rstd = 1.0 / np.sqrt(var + eps)
  return mu, d, var, rstd, d * rstd


class LayerNorm(OpKind):
  name = "layernorm"
  summary = ("out = (x - mean) / sqrt(var + eps) * w + b over C: (dx, dw, db), dx = rstd (g - "
             "mean(g) - xhat mean(g xhat)), g = dout w")
  takes = ("x",)
  layouts = ("btc", "nc")
  options = ("layout", "eps")
  families = ("plain", "normal", "spread", "kink", "huge", "tiny")
  forward_name = "out = layernorm(x) w + b"
  arguments = ("x", "w", "b", "dout")
  returns = ("dx", "dw", "db")
  dims_names = ("B", "T", "C")

  def describe(self, spec):
    return f"layernorm ({spec.dtype}, layout {spec.layout}, eps {spec.eps:g})"

  # ---- cases
  def probe_dims(self, spec):
    return ROW_PROBES["nc" if spec.layout == "nc" else "btc"]

  def random_dims(self, spec, rng):
    return row_dims(spec, rng)

  def draw(self, spec, label):
    rng = self.rng(spec, label)
    shape, C = label.dims, label.dims[-1]
    fam = label.family
    side = plain if fam == "plain" else lambda r, s: r.normal(size=s)
    if fam == "plain":
      x = plain(rng, shape)
    elif fam == "spread":  # each row its own scale, 1e-3 to 1e3
      x = rng.normal(size=shape) * 10.0 ** rng.uniform(-3, 3, shape[:-1] + (1,))
    elif fam == "kink":  # constant rows: var = 0, only eps under the root
      x = rng.normal(size=shape)
      const = rng.random(shape[:-1]) < 0.5
      x = np.where(const[..., None], x[..., :1], x)
    elif fam == "huge":  # a large mean and a unit spread
      x = rng.normal(size=shape) + 10.0 ** rng.uniform(2, 4, shape[:-1] + (1,)) * np.where(
          rng.random(shape[:-1] + (1,)) < 0.5, -1.0, 1.0)
    elif fam == "tiny":  # a spread near sqrt(eps), where eps and var compete
      x = rng.normal(size=shape) * 10.0 ** rng.uniform(-4, -2, shape[:-1] + (1,))
    else:
      x = rng.normal(size=shape)
    return {"x": x, "w": side(rng, (C,)), "b": side(rng, (C,)), "dout": side(rng, shape)}


  # ---- bpref's answer and its bounds
  def compute(self, spec, case, variant=None):
    a = case.arrays
    x, w, b, dout = a["x"], a["w"], a["b"], a["dout"]
    eps = spec.eps
    u, floor = unit_and_floor(spec.dtype)
    out, dx, dw, db = _bpref(x, w, b, dout, eps)
    mu, d, var, rstd, xhat = _stats(x, eps)
    ax = np.abs(x)
    A = ax.mean(axis=-1, keepdims=True)
    M_d = ax + A
    M_var = (2 * np.abs(d) * M_d).mean(axis=-1, keepdims=True) + (x * x).mean(
        axis=-1, keepdims=True) + mu * mu
    M_r = rstd * (1 + M_var / (2 * (var + eps)))
    M_xh = M_d * rstd + np.abs(d) * M_r + np.abs(xhat)
    g = dout * w
    M_g = np.abs(dout) * np.abs(w)
    m2 = (g * xhat).mean(axis=-1, keepdims=True)
    M_m2 = (M_g * np.abs(xhat) + np.abs(g) * M_xh).mean(axis=-1, keepdims=True)
    M_dx = M_r * np.abs(dx) / rstd + rstd * (M_g + M_g.mean(axis=-1, keepdims=True)
                                             + M_xh * np.abs(m2) + np.abs(xhat) * M_m2)
    rows = tuple(range(x.ndim - 1))
    C = x.shape[-1]
    n = int(np.prod(x.shape[:-1]))
    bounds = {"dx": M_dx + C * floor, "dw": (np.abs(dout) * M_xh).sum(axis=rows) + n * floor,
              "db": np.abs(dout).sum(axis=rows) + n * floor}
    k = max(C, n)
    forward_bound = M_xh * np.abs(w) + np.abs(b) + floor
    return OpTruth({"dx": dx, "dw": dw, "db": db}, bounds,
                   _tolerance.tolerance(spec.dtype, depth=1, inner=k), None, 0.0, out,
                   forward_bound, _tolerance.forward_tolerance(spec.dtype, depth=1, inner=C))

  # ---- diagnosis
  def models(self, spec, case, truth):
    a = case.arrays
    x, w, dout = a["x"], a["w"], a["dout"]
    eps = spec.eps
    C = x.shape[-1]
    rows = tuple(range(x.ndim - 1))
    _, d, var, rstd, xhat = _stats(x, eps)
    g = dout * w
    mg = g.mean(axis=-1, keepdims=True)
    m2 = (g * xhat).mean(axis=-1, keepdims=True)
    e = truth.expected

    def dx_with(r, xh):
      return r * (g - g.mean(axis=-1, keepdims=True) - xh * (g * xh).mean(axis=-1, keepdims=True))

    out = [
        Model("mean_term_missing", "dx lacks the -mean(dxhat) term: rstd (dxhat - xhat "
              "mean(dxhat xhat)), the gradient through the mean mu dropped (LN9)",
              {"dx": rstd * (g - xhat * m2)}),
        Model("variance_term_missing", "dx lacks the -xhat mean(dxhat xhat) term: rstd (dxhat - "
              "mean(dxhat)), the gradient through the variance dropped (LN9)",
              {"dx": rstd * (g - mg)}),
        Model("both_terms_missing", "dx = rstd dxhat: the gradients through the mean and the "
              "variance both dropped, as if mu and rstd were constants (LN9)", {"dx": rstd * g}),
        Model("rstd_missing", "dx lacks the factor rstd: dxhat - mean(dxhat) - xhat mean(dxhat "
              "xhat) (LN9)", {"dx": g - mg - xhat * m2}),
        Model("w_missing", "dxhat = dout, not dout w: the scale w left out of dx (LN8)",
              {"dx": rstd * (dout - dout.mean(axis=-1, keepdims=True)
                             - xhat * (dout * xhat).mean(axis=-1, keepdims=True))}),
    ]
    if C > 1:
      var_u = var * C / (C - 1)
      r_u = 1.0 / np.sqrt(var_u + eps)
      xh_u = d * r_u
      out.append(Model("unbiased_variance", "the variance divides by C - 1 (unbiased, torch.var's "
                       "default), not C: layer normalization uses the biased variance (LN2)",
                       {"dx": dx_with(r_u, xh_u), "dw": (dout * xh_u).sum(axis=rows)}))
    r_o = 1.0 / (np.sqrt(var) + eps)
    xh_o = d * r_o
    out.append(Model("eps_outside_root", "eps is added outside the square root: 1 / (sqrt(var) + "
                     "eps), not 1 / sqrt(var + eps) (LN3)",
                     {"dx": dx_with(r_o, xh_o), "dw": (dout * xh_o).sum(axis=rows)}))
    n = int(np.prod(x.shape[:-1]))
    if n > 1:
      flat_d, flat_x = dout.reshape(-1, C), xhat.reshape(-1, C)
      for which, row in (("first", 0), ("last", -1)):
        how = "" if which == "first" else " (an assignment where += was meant)"
        out.append(Model("row_sum_missing", f"dw is the {which} row's dout * xhat only, not the "
                         f"sum over the rows{how} (LN10)", {"dw": flat_d[row] * flat_x[row]}))
        out.append(Model("row_sum_missing", f"db is the {which} row's dout only, not the sum over "
                         f"the rows{how} (LN11)", {"db": flat_d[row].copy()}))
      if x.ndim == 3 and x.shape[0] > 1 and x.shape[1] > 1:
        out.append(Model("row_sum_missing", "dw and db are summed over the batch B only, the "
                         "positions T left out (the first position's sum)",
                         {"dw": (dout * xhat)[:, 0].sum(axis=0), "db": dout[:, 0].sum(axis=0)}))
    out.append(Model("dw_from_x", "dw = sum dout * x: the input x in place of the normalized "
                     "xhat (LN10)", {"dw": (dout * x).sum(axis=rows)}))
    return [m for m in out if not all(np.array_equal(v, e[k]) for k, v in m.outputs.items())]

  def framework_result(self, spec, grads):
    return tuple(grads)


LAYERNORM = LayerNorm()
