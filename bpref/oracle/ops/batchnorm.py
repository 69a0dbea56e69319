"""The batchnorm kind: a candidate's training-mode batch-normalization backward against
``bpref.layers.batchnorm``.

The candidate is called as ``candidate(x, gamma, beta, dout) -> (dx, dgamma, dbeta)``, the
three of CS231n's ``batchnorm_backward`` and ``batchnorm_backward_alt``, given the inputs of the
forward step rather than its cache; a CS231n pair is checked as ``lambda x, gamma, beta, dout:
batchnorm_backward(dout, batchnorm_forward(x, gamma, beta, {"mode": "train"})[1])``. x and dout
of shape (N, D) (``layout="nd"``, the default) or (N, C, H, W)
(``layout="nchw"``, CS231n's ``spatial_batchnorm_backward``), gamma and beta of shape (D,) or
(C,). Each channel is normalized over the batch (and, for nchw, the H W positions) with the
biased variance (1/m, as CS231n and PyTorch's training mode) and ``eps`` inside the square root
(``eps=1e-5`` by default). Running statistics play no part: the check is of training mode.

The search draws N from 1 to ``max_batch`` and D (or C) from 1 to ``max_width``; for nchw H and
W each from 1 to 3 (OpSpec has no field for the spatial size). A case whose channels all hold
one value, m = N H W = 1 above all, is skipped as vacuous: dx and dgamma are 0 exactly there
(BN9), (BN10), and an all-zero answer would pass. So, in float32, are most cases with m = 2 (dx
is of order eps there, proofs/batchnorm.md section 3) and those with a large mean (below). A
"kink" case makes some channels constant, a "huge" one gives them a mean of 1e2 to 1e4.

bpref's answer: the core on the (m, C) matrix of (BN0) (nchw moved to it with the channel axis
last, as ``bpref.layers.batchnorm`` does itself), its channels padded with zeros to a bucket (a
zero channel adds nothing: each channel is normalized alone). The batch axis is not padded: a
padded row would join every channel's statistics. So one program is compiled per (m, bucket)
pair: a default search at seed 0 compiles 6 (nd) and 13 (nchw), fewer where it follows another
(``tests/test_ops_batchnorm.py``).

The rounding model (proofs/batchnorm.md section 6, (BN12)-(BN19)) is layernorm's
(``bpref.oracle.ops.layernorm``) transposed to batch statistics: per channel, means and sums over its m rows, in units of u
times k = m + 2 (the longest sum and the roundings around it), with A = mean_m |x|:

  M_d   = |x| + A                                   x - mu, mu rounded
  M_var = mean_m(2 |d| M_d) + mean_m(x^2) + mu^2    two-pass, Welford and one-pass variances
  M_r   = rstd (1 + M_var / (2 (var + eps)))        rsqrt of a rounded var + eps
  M_xh  = M_d rstd + |d| M_r + |xhat|
  M_g   = |dout| |gamma|                            dxhat = dout gamma
  M_m2  = mean_m(M_g |xhat| + |g| M_xh)
  M_dx  = M_r |dx| / rstd + rstd (M_g + mean_m M_g + M_xh |m2| + |xhat| M_m2)
  M_dgamma = sum_m |dout| M_xh,    M_dbeta = sum_m |dout|

with m2 = mean_m(g xhat), g = dout gamma. The one-pass variance mean(x^2) - mu^2 is covered by
its mean(x^2) + mu^2 term; on channels with a large mean that makes the float32 check of dx
loose, and such cases are skipped as vacuous, as for layernorm.

Bug models (``models``): mean_term_missing, variance_term_missing, running_stats (mu and var
treated as constants in the backward: dx = rstd dxhat), unbiased_variance (np.var(ddof=1) in the
forward, with the biased backward formula or with the unbiased layer's own gradient),
wrong_axes (nchw: the dense formula on x reshaped (N, C H W), statistics per position over N;
nd: statistics over the features, layer normalization's axes), gamma_missing, and
reshape_without_transpose (nchw: x.reshape(-1, C) without moving the channels last first).
"""

from __future__ import annotations


import jax
import numpy as np

from bpref import compilation
from bpref import tolerance as _tolerance
from bpref.layers import batchnorm as _batchnorm
from bpref.oracle.ops.record import Model, OpKind, OpTruth, bucket, plain, unit_and_floor

SPATIAL = 3
"""The largest H and W of a random nchw case."""


@compilation.jit(static_argnums=4)
def _grads_padded(X, gamma, beta, dOut, eps):
  out, cache = _batchnorm.forward(X, gamma, beta, eps)  # (BN1)-(BN5)
  return (out,) + _batchnorm.backward(cache, dOut)  # (BN8)-(BN11)


def _rows(v) -> np.ndarray:
  """(N, C, *spatial) as the (m, C) matrix of (BN0): channels last, the rest flattened."""
  return np.moveaxis(np.asarray(v), 1, -1).reshape(-1, np.shape(v)[1])


def _unrows(v, shape) -> np.ndarray:
  """``_rows``'s inverse: an (m, C) matrix back to ``shape``."""
  return np.moveaxis(np.asarray(v).reshape((shape[0],) + tuple(shape[2:]) + (shape[1],)), -1, 1)


def _bpref(x, gamma, beta, dout, eps):
  """bpref's (out, dx, dgamma, dbeta) in float64, computed on the (m, C) matrix of (BN0) with
  its channels padded to a bucket; out and dx back in x's layout."""
  X, D = _rows(x), _rows(dout)
  C = X.shape[1]
  pad = bucket(C)

  def padded(v):
    out = np.zeros(v.shape[:-1] + (pad,))
    out[..., :C] = v
    return out

  with jax.enable_x64(True):
    out, dX, dgamma, dbeta = _grads_padded(padded(X), padded(gamma), padded(beta), padded(D),
                                           float(eps))
  return (_unrows(np.asarray(out)[:, :C], x.shape), _unrows(np.asarray(dX)[:, :C], x.shape),
          np.asarray(dgamma, np.float64)[:C], np.asarray(dbeta, np.float64)[:C])


def bounds(x, gamma, beta, dout, dx, eps) -> dict:
  """{"out", "dx", "dgamma", "dbeta": M} of (BN12)-(BN18) in NumPy float64, ``dx`` bpref's: the
  same numbers as ``bpref.layers.batchnorm.bounds``, without compiling a program per shape
  (``tests/test_ops_batchnorm.py`` holds the two to each other)."""
  X, D = _rows(x), _rows(dout)
  mu, d, var, rstd, xhat = _stats(X, eps)
  ax = np.abs(X)
  M_d = ax + ax.mean(axis=0, keepdims=True)  # (BN12)
  M_var = (2 * np.abs(d) * M_d).mean(axis=0, keepdims=True) + (X * X).mean(
      axis=0, keepdims=True) + mu * mu  # (BN13)
  M_r = rstd * (1 + M_var / (2 * (var + eps)))  # (BN14)
  M_xh = M_d * rstd + np.abs(d) * M_r + np.abs(xhat)  # (BN15)
  g = D * gamma[None, :]
  M_g = np.abs(D) * np.abs(gamma)[None, :]
  m2 = (g * xhat).mean(axis=0, keepdims=True)
  M_m2 = (M_g * np.abs(xhat) + np.abs(g) * M_xh).mean(axis=0, keepdims=True)
  M_dx = M_r * np.abs(_rows(dx)) / rstd + rstd * (M_g + M_g.mean(axis=0, keepdims=True)
                                                  + M_xh * np.abs(m2) + np.abs(xhat) * M_m2)  # (BN17)
  return {"out": _unrows(M_xh * np.abs(gamma)[None, :] + np.abs(beta)[None, :], x.shape),  # (BN16)
          "dx": _unrows(M_dx, x.shape), "dgamma": (np.abs(D) * M_xh).sum(axis=0),  # (BN18)
          "dbeta": np.abs(D).sum(axis=0)}  # (BN18)


def _stats(X, eps, ddof=0):
  """Per column of X (keepdims): mu, d = X - mu, var (1/(m - ddof)), rstd, xhat, in float64."""
  mu = X.mean(axis=0, keepdims=True)
  d = X - mu
  var = (d * d).sum(axis=0, keepdims=True) / (X.shape[0] - ddof)
  rstd = 1.0 / np.sqrt(var + eps)
  return mu, d, var, rstd, d * rstd


def _formula(g, xhat, rstd, m2_divisor=None):
  """(BN9) per column: rstd (g - mean(g) - xhat sum(g xhat) / m2_divisor), divisor m by default."""
  m = g.shape[0]
  m2 = (g * xhat).sum(axis=0, keepdims=True) / (m2_divisor or m)
  return rstd * (g - g.mean(axis=0, keepdims=True) - xhat * m2)


class BatchNorm(OpKind):
  name = "batchnorm"
  summary = ("out = (x - mean) / sqrt(var + eps) * gamma + beta per channel over the batch "
             "(training mode): (dx, dgamma, dbeta), dx = rstd (g - mean(g) - xhat mean(g xhat)), "
             "g = dout gamma")
  takes = ("x",)
  layouts = ("nd", "nchw")
  options = ("layout", "eps")
  families = ("plain", "normal", "spread", "kink", "huge", "tiny")
  forward_name = "out = batchnorm(x) gamma + beta"
  arguments = ("x", "gamma", "beta", "dout")
  returns = ("dx", "dgamma", "dbeta")
  dims_names = ("N", "C", "H", "W")

  def describe(self, spec):
    return f"batchnorm ({spec.dtype}, layout {spec.layout}, eps {spec.eps:g})"

  # ---- cases
  def probe_dims(self, spec):
    if spec.layout == "nchw":
      return ([(1, 2, 2, 2), (2, 3, 1, 1), (2, 1, 2, 3), (3, 4, 2, 2), (2, 16, 3, 3)],
              [(2, 3, 2, 2), (3, 2, 1, 2)])
    return [(2, 3), (4, 1), (3, 5), (5, 32)], [(5, 3), (3, 4)]

  def searched(self, spec):
    shapes, _ = self.probe_dims(spec)
    names, spatial = ("NxD", "")
    if spec.layout == "nchw":
      names, spatial = "NxCxHxW", f", H and W up to {SPATIAL}"
    return (f"{names} {', '.join(str(tuple(d)) for d in shapes)} and random up to N "
            f"{spec.max_batch}, {names[2]} {spec.max_width}{spatial}; values "
            f"{', '.join(self.value_families(spec))} (constant channels for kink, a large mean "
            "for huge)")

  def random_dims(self, spec, rng):
    N = int(rng.integers(1, spec.max_batch + 1))
    C = int(rng.integers(1, spec.max_width + 1))
    if spec.layout == "nchw":
      return (N, C) + tuple(int(s) for s in rng.integers(1, SPATIAL + 1, 2))
    return (N, C)

  def draw(self, spec, label):
    rng = self.rng(spec, label)
    shape, C = label.dims, label.dims[1]
    channel = (1, C) + (1,) * (len(shape) - 2)  # one number per channel, broadcast over the rest
    fam = label.family
    side = plain if fam == "plain" else lambda r, s: r.normal(size=s)
    if fam == "plain":
      x = plain(rng, shape)
    elif fam == "spread":  # each channel its own scale, 1e-3 to 1e3
      x = rng.normal(size=shape) * 10.0 ** rng.uniform(-3, 3, channel)
    elif fam == "kink":  # constant channels: var = 0, only eps under the root
      x = rng.normal(size=shape)
      x = np.where(rng.random(channel) < 0.5, rng.normal(size=channel), x)
    elif fam == "huge":  # a large mean and a unit spread
      x = rng.normal(size=shape) + 10.0 ** rng.uniform(2, 4, channel) * np.where(
          rng.random(channel) < 0.5, -1.0, 1.0)
    elif fam == "tiny":  # a spread near sqrt(eps), where eps and var compete
      x = rng.normal(size=shape) * 10.0 ** rng.uniform(-4, -2, channel)
    else:
      x = rng.normal(size=shape)
    return {"x": x, "gamma": side(rng, (C,)), "beta": side(rng, (C,)), "dout": side(rng, shape)}

  # ---- bpref's answer and its bounds
  def compute(self, spec, case, variant=None):
    a = case.arrays
    x, gamma, beta, dout = a["x"], a["gamma"], a["beta"], a["dout"]
    _, floor = unit_and_floor(spec.dtype)
    out, dx, dgamma, dbeta = _bpref(x, gamma, beta, dout, spec.eps)
    M = bounds(x, gamma, beta, dout, dx, spec.eps)
    m = x.size // x.shape[1]
    k = m + 2  # (BN19): the longest sum, m, and the roundings around it
    return OpTruth({"dx": dx, "dgamma": dgamma, "dbeta": dbeta},
                   {name: M[name] + m * floor for name in self.returns},
                   _tolerance.tolerance(spec.dtype, depth=1, inner=k), None, 0.0, out,
                   M["out"] + floor, _tolerance.forward_tolerance(spec.dtype, depth=1, inner=k))

  # ---- diagnosis
  def models(self, spec, case, truth):
    a = case.arrays
    x, gamma, dout = a["x"], a["gamma"], a["dout"]
    shape, eps = x.shape, spec.eps
    X, D = _rows(x), _rows(dout)
    m, C = X.shape
    _, _, _, rstd, xhat = _stats(X, eps)
    g = D * gamma[None, :]
    e = truth.expected

    def dx(v):
      return _unrows(v, shape)

    out = [
        Model("mean_term_missing", "dx lacks the -mean(dxhat) term: rstd (dxhat - xhat "
              "mean(dxhat xhat)), the gradient through the batch mean mu dropped (BN9)",
              {"dx": dx(rstd * (g - xhat * (g * xhat).mean(axis=0, keepdims=True)))}),
        Model("variance_term_missing", "dx lacks the -xhat mean(dxhat xhat) term: rstd (dxhat - "
              "mean(dxhat)), the gradient through the batch variance dropped (BN9)",
              {"dx": dx(rstd * (g - g.mean(axis=0, keepdims=True)))}),
        Model("running_stats", "dx = rstd dxhat: the batch mean and variance treated as "
              "constants, as running statistics would be; in training mode they depend on x "
              "and both their terms belong in dx (BN9)", {"dx": dx(rstd * g)}),
        Model("gamma_missing", "dxhat = dout, not dout gamma: the scale gamma left out of dx (BN8)",
              {"dx": dx(_formula(D, xhat, rstd))}),
    ]
    if m > 1:
      _, _, _, r_u, xh_u = _stats(X, eps, ddof=1)
      dgamma_u = (D * xh_u).sum(axis=0)
      out.append(Model("unbiased_variance", "the variance divides by m - 1 (np.var(ddof=1), "
                       "torch.var's default), not m, and the backward is the biased formula on "
                       "that rstd and xhat: batch normalization uses the biased variance (BN2)",
                       {"dx": dx(_formula(g, xh_u, r_u)), "dgamma": dgamma_u}))
      out.append(Model("unbiased_variance", "the variance divides by m - 1 (np.var(ddof=1), "
                       "torch.var's default), not m: the gradient of that other layer; batch "
                       "normalization uses the biased variance (BN2)",
                       {"dx": dx(_formula(g, xh_u, r_u, m - 1)), "dgamma": dgamma_u}))
    if len(shape) > 2 and np.prod(shape[2:]) > 1:
      N = shape[0]
      flat_x, flat_d = x.reshape(N, -1), dout.reshape(N, -1)
      flat_gamma = np.repeat(gamma, int(np.prod(shape[2:])))
      _, _, _, r_p, xh_p = _stats(flat_x, eps)
      dx_p = _formula(flat_d * flat_gamma[None, :], xh_p, r_p).reshape(shape)
      dgamma_p = (flat_d * xh_p).sum(axis=0).reshape(C, -1).sum(axis=1)
      out.append(Model("wrong_axes", "statistics per position (c, h, w) over N only: the dense "
                       "formula applied to x reshaped (N, C H W); spatial batch normalization "
                       "takes each channel's statistics over (N, H, W) (BN0)",
                       {"dx": dx_p, "dgamma": dgamma_p}))
      if C > 1:
        Xr, Dr = x.reshape(-1, C), dout.reshape(-1, C)
        _, _, _, r_r, xh_r = _stats(Xr, eps)
        out.append(Model("reshape_without_transpose", "x.reshape(-1, C) without moving the "
                         "channel axis last first: each column mixes channels and positions; "
                         "the rows of (BN0) are x.transpose(0, 2, 3, 1).reshape(-1, C)",
                         {"dx": _formula(Dr * gamma[None, :], xh_r, r_r).reshape(shape),
                          "dgamma": (Dr * xh_r).sum(axis=0), "dbeta": Dr.sum(axis=0)}))
    if len(shape) == 2:  # statistics over the features, as layer normalization takes them
      _, _, _, r_f, xh_f = _stats(x.T, eps)
      out.append(Model("wrong_axes", "statistics over the features (axis 1, layer "
                       "normalization's axes) instead of over the batch (axis 0) (BN1)",
                       {"dx": _formula((dout * gamma[None, :]).T, xh_f, r_f).T,
                        "dgamma": (dout * xh_f.T).sum(axis=0)}))
    return [mo for mo in out if not all(np.array_equal(v, e[k]) for k, v in mo.outputs.items())]

  def framework_result(self, spec, grads):
    return tuple(grads)


BATCHNORM = BatchNorm()
