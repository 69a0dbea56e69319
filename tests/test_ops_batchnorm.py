"""The batchnorm op kind on candidates written the ways people write them, right and wrong.

Right, each for x of shape (N, D) and (N, C, H, W): CS231n's staged ``batchnorm_backward``
(the computational graph walked back node by node), the simplified ``batchnorm_backward_alt``
formula, the one-pass variance mean(x^2) - mu^2, torch's autograd of
``torch.nn.functional.batch_norm(training=True)``, a ``torch.autograd.Function`` and a
``jax.custom_vjp`` rule. The spatial forms move the channels last and call the dense form, as
CS231n's ``spatial_batchnorm_backward`` does. Wrong: each classic mistake of
proofs/batchnorm.md, which must fail with the finding that names it.
"""

import numpy as np
import pytest

from bpref import compilation
from bpref.oracle.ops import check_op


def _to_rows(v):
  """(N, D) as it is; (N, C, H, W) as (N H W, C): the channel axis last, the rest flattened."""
  return v if v.ndim == 2 else v.transpose(0, 2, 3, 1).reshape(-1, v.shape[1])


def _from_rows(v, shape):
  if len(shape) == 2:
    return v
  N, C, H, W = shape
  return v.reshape(N, H, W, C).transpose(0, 3, 1, 2)


def spatial(dense_backward):
  """A (x, gamma, beta, dout) candidate for both layouts from a dense one, CS231n's way."""
  def candidate(x, gamma, beta, dout, eps=1e-5):
    dx, dgamma, dbeta = dense_backward(_to_rows(x), gamma, beta, _to_rows(dout), eps)
    return _from_rows(dx, x.shape), dgamma, dbeta
  return candidate


# ---------------------------------------------------------------- CS231n, staged

def batchnorm_forward(x, gamma, beta, eps):
  """CS231n's training-mode forward, one node of the graph per line; returns (out, cache)."""
  mu = x.mean(axis=0)
  xmu = x - mu
  sq = xmu ** 2
  var = sq.mean(axis=0)
  sqrtvar = np.sqrt(var + eps)
  ivar = 1 / sqrtvar
  xhat = xmu * ivar
  out = gamma * xhat + beta
  return out, (xhat, gamma, xmu, ivar, sqrtvar, var, eps)


def batchnorm_backward(dout, cache):
  """CS231n's batchnorm_backward: the graph of batchnorm_forward walked back node by node."""
  xhat, gamma, xmu, ivar, sqrtvar, var, eps = cache
  N = dout.shape[0]
  dbeta = dout.sum(axis=0)
  dgamma = (dout * xhat).sum(axis=0)
  dxhat = dout * gamma
  divar = (dxhat * xmu).sum(axis=0)
  dxmu1 = dxhat * ivar
  dsqrtvar = -1 / sqrtvar ** 2 * divar
  dvar = 0.5 / np.sqrt(var + eps) * dsqrtvar
  dsq = np.ones_like(dout) * dvar / N
  dxmu2 = 2 * xmu * dsq
  dx1 = dxmu1 + dxmu2
  dmu = -dx1.sum(axis=0)
  dx2 = np.ones_like(dout) * dmu / N
  return dx1 + dx2, dgamma, dbeta


def staged(x, gamma, beta, dout, eps=1e-5):
  _, cache = batchnorm_forward(x, gamma, beta, eps)
  return batchnorm_backward(dout, cache)


def batchnorm_backward_alt(dout, cache):
  """CS231n's batchnorm_backward_alt: the simplified formula, dx in one line from dbeta and
  dgamma, gamma outside the bracket (proofs/batchnorm.md, (BN9) in the parameters' gradients)."""
  xhat, gamma, _, ivar, _, _, _ = cache
  N = dout.shape[0]
  dbeta = dout.sum(axis=0)
  dgamma = (dout * xhat).sum(axis=0)
  dx = gamma * ivar / N * (N * dout - dbeta - xhat * dgamma)
  return dx, dgamma, dbeta


def alt(x, gamma, beta, dout, eps=1e-5):
  _, cache = batchnorm_forward(x, gamma, beta, eps)
  return batchnorm_backward_alt(dout, cache)


def one_pass(x, gamma, beta, dout, eps=1e-5):
  """The variance as mean(x^2) - mu^2 (clamped at 0), the one-pass form."""
  mu = x.mean(axis=0)
  var = np.maximum((x * x).mean(axis=0) - mu * mu, 0)
  rstd = 1 / np.sqrt(var + eps)
  xhat = (x - mu) * rstd
  g = dout * gamma
  dx = rstd * (g - g.mean(axis=0) - xhat * (g * xhat).mean(axis=0))
  return dx, (dout * xhat).sum(axis=0), dout.sum(axis=0)


# ---------------------------------------------------------------- frameworks

def torch_autograd(x, gamma, beta, dout, eps=1e-5):
  import torch
  import torch.nn.functional as F

  xx, gg, bb = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
  F.batch_norm(xx, None, None, gg, bb, training=True, eps=eps).backward(torch.tensor(dout))
  return xx.grad.numpy(), gg.grad.numpy(), bb.grad.numpy()


def _torch_function():
  import torch

  class BatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gamma, beta):
      axes = [0] + list(range(2, x.dim()))  # every axis but the channels'
      view = [1, -1] + [1] * (x.dim() - 2)
      mu = x.mean(axes, keepdim=True)
      rstd = torch.rsqrt(x.var(axes, unbiased=False, keepdim=True) + 1e-5)
      xhat = (x - mu) * rstd
      ctx.save_for_backward(xhat, rstd, gamma)
      return xhat * gamma.view(view) + beta.view(view)

    @staticmethod
    def backward(ctx, dout):
      xhat, rstd, gamma = ctx.saved_tensors
      axes = [0] + list(range(2, dout.dim()))
      g = dout * gamma.view([1, -1] + [1] * (dout.dim() - 2))
      dx = rstd * (g - g.mean(axes, keepdim=True)
                   - xhat * (g * xhat).mean(axes, keepdim=True))
      return dx, (dout * xhat).sum(axes), dout.sum(axes)

  return BatchNorm


def _custom_vjp():
  import jax
  import jax.numpy as jnp

  @jax.custom_vjp
  def batchnorm(x, gamma, beta):
    return fwd(x, gamma, beta)[0]

  def channel(v, x):  # (C,) as (1, C, 1, ...): the suite raises on implicit rank promotion
    return jnp.reshape(v, (1, -1) + (1,) * (x.ndim - 2))

  def axes(x):
    return (0,) + tuple(range(2, x.ndim))

  def fwd(x, gamma, beta):
    mu = x.mean(axes(x), keepdims=True)
    rstd = jax.lax.rsqrt(((x - mu) ** 2).mean(axes(x), keepdims=True) + 1e-5)
    xhat = (x - mu) * rstd
    return xhat * channel(gamma, x) + channel(beta, x), (xhat, rstd, gamma)

  def bwd(res, dout):
    xhat, rstd, gamma = res
    g = dout * channel(gamma, dout)
    dx = rstd * (g - g.mean(axes(dout), keepdims=True)
                 - xhat * (g * xhat).mean(axes(dout), keepdims=True))
    return dx, jnp.sum(dout * xhat, axes(dout)), jnp.sum(dout, axes(dout))

  batchnorm.defvjp(fwd, bwd)
  return batchnorm


RIGHT = {"staged": lambda: spatial(staged), "alt": lambda: spatial(alt),
         "one_pass": lambda: spatial(one_pass), "torch_autograd": lambda: torch_autograd,
         "torch_function": _torch_function, "custom_vjp": _custom_vjp}


SLOW = ("custom_vjp",)
"""Ways that compile a program of their own per shape: checked in one dtype and layout in the
fast tier (float32, dense), in all four in the deep tier."""


def _right_params():
  out = []
  for way in sorted(RIGHT):
    for dtype in ("float64", "float32"):
      for layout in ("nd", "nchw"):
        deep = way in SLOW and (dtype, layout) != ("float32", "nd")
        out.append(pytest.param(way, dtype, layout, marks=[pytest.mark.deep] if deep else []))
  return out


@pytest.mark.parametrize("way, dtype, layout", _right_params())
def test_a_right_batchnorm_passes(way, dtype, layout):
  if way.startswith("torch"):
    pytest.importorskip("torch")
  report = check_op("batchnorm", RIGHT[way](), dtype=dtype, layout=layout, examples=20)
  assert report.verdict == "pass", report.text()
  assert report.cases >= 20


@pytest.mark.deep
@pytest.mark.parametrize("seed", range(1, 5))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("way", sorted(RIGHT))
def test_a_right_batchnorm_passes_at_every_seed_and_layout(way, dtype, seed):
  if way.startswith("torch"):
    pytest.importorskip("torch")
  for layout in ("nd", "nchw"):
    report = check_op("batchnorm", RIGHT[way](), dtype=dtype, seed=seed, layout=layout)
    assert report.verdict == "pass", report.text()


# ---------------------------------------------------------------- the classic mistakes

def _stats(x, eps, ddof=0):
  mu = x.mean(axis=0)
  var = x.var(axis=0, ddof=ddof)
  rstd = 1 / np.sqrt(var + eps)
  return mu, var, rstd, (x - mu) * rstd


def _dx(rstd, xhat, g, divisor=None):
  return rstd * (g - g.mean(axis=0) - xhat * (g * xhat).sum(axis=0) / (divisor or len(g)))


def _dense_bug(dx=None, dgamma=None, ddof=0):
  """The alt formula, with the statistics of ``ddof`` and dx or dgamma replaced by f(...)."""
  def dense(x, gamma, beta, dout, eps):
    _, _, rstd, xhat = _stats(x, eps, ddof)
    g = dout * gamma
    out = [_dx(rstd, xhat, g), (dout * xhat).sum(axis=0), dout.sum(axis=0)]
    for i, f in ((0, dx), (1, dgamma)):
      if f is not None:
        out[i] = f(x=x, gamma=gamma, dout=dout, rstd=rstd, xhat=xhat, g=g).astype(x.dtype)
    return tuple(out)
  return spatial(dense)


def per_position(x, gamma, beta, dout, eps=1e-5):
  """Spatial statistics over N only: the dense alt formula on x reshaped (N, C H W)."""
  N, C, H, W = x.shape
  X, D = x.reshape(N, -1), dout.reshape(N, -1)
  _, _, rstd, xhat = _stats(X, eps)
  dx = _dx(rstd, xhat, D * np.repeat(gamma, H * W))
  return dx.reshape(x.shape), (D * xhat).sum(axis=0).reshape(C, -1).sum(axis=1), D.sum(
      axis=0).reshape(C, -1).sum(axis=1)


def reshaped(x, gamma, beta, dout, eps=1e-5):
  """x.reshape(-1, C) where x.transpose(0, 2, 3, 1).reshape(-1, C) was meant."""
  C = x.shape[1]
  dx, dgamma, dbeta = alt(x.reshape(-1, C), gamma, beta, dout.reshape(-1, C), eps)
  return dx.reshape(x.shape), dgamma, dbeta


def over_features(x, gamma, beta, dout, eps=1e-5):
  """Statistics over axis 1, layer normalization's, in a dense batchnorm."""
  mu = x.mean(axis=1, keepdims=True)
  rstd = 1 / np.sqrt(x.var(axis=1, keepdims=True) + eps)
  xhat = (x - mu) * rstd
  g = dout * gamma
  dx = rstd * (g - g.mean(axis=1, keepdims=True) - xhat * (g * xhat).mean(axis=1, keepdims=True))
  return dx, (dout * xhat).sum(axis=0), dout.sum(axis=0)


BUGS = {  # code: (candidate, layout)
    "mean_term_missing": (_dense_bug(dx=lambda rstd, xhat, g, **_: rstd * (
        g - xhat * (g * xhat).mean(axis=0))), "nd"),
    "variance_term_missing": (_dense_bug(dx=lambda rstd, g, **_: rstd * (g - g.mean(axis=0))),
                              "nchw"),
    "running_stats": (_dense_bug(dx=lambda rstd, g, **_: rstd * g), "nd"),
    "unbiased_variance": (_dense_bug(ddof=1), "nd"),
    "wrong_axes": (per_position, "nchw"),
    "gamma_missing": (_dense_bug(dx=lambda rstd, xhat, dout, **_: _dx(rstd, xhat, dout)), "nchw"),
    "reshape_without_transpose": (reshaped, "nchw"),
}


@pytest.mark.parametrize("seed", range(10))  # seeds 1 to 9: the sweep tier
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("bug", sorted(BUGS))
def test_each_classic_batchnorm_bug_fails_with_its_name(bug, dtype, seed):
  candidate, layout = BUGS[bug]
  report = check_op("batchnorm", candidate, dtype=dtype, seed=seed, layout=layout, examples=20)
  assert report.verdict == "fail"
  assert report.diagnosis[0].code == bug, report.text()


@pytest.mark.deep
@pytest.mark.parametrize("layout", ["nd", "nchw"])
@pytest.mark.parametrize("bug", ["mean_term_missing", "variance_term_missing", "running_stats",
                                 "unbiased_variance", "gamma_missing"])
def test_each_dense_bug_is_named_in_both_layouts(bug, layout):
  report = check_op("batchnorm", BUGS[bug][0], layout=layout, examples=20)
  assert report.verdict == "fail"
  assert report.diagnosis[0].code == bug, report.text()


def test_statistics_over_the_features_are_wrong_axes():
  report = check_op("batchnorm", over_features, examples=20)
  assert report.verdict == "fail"
  assert report.diagnosis[0].code == "wrong_axes", report.text()


def test_the_unbiased_layers_own_gradient_is_named_too():
  """np.var(ddof=1) in the forward with that layer's true gradient (1/(m - 1) in the xhat term)."""
  bug = _dense_bug(ddof=1, dx=lambda rstd, xhat, g, **_: _dx(rstd, xhat, g, len(g) - 1))
  report = check_op("batchnorm", bug, examples=20)
  assert report.verdict == "fail"
  assert report.diagnosis[0].code == "unbiased_variance", report.text()


# ---------------------------------------------------------------- options and cost

@pytest.mark.parametrize("layout", ["nd", "nchw"])
def test_the_records_bounds_are_the_cores(layout):
  """The record's NumPy (BN12)-(BN18) are ``bpref.layers.batchnorm.bounds``, family by family
  (to 1e-9: the two evaluate var + eps in different orders, and a large mean magnifies that)."""
  import jax
  import jax.numpy as jnp

  from bpref.layers import batchnorm
  from bpref.oracle.ops import batchnorm as record
  from bpref.oracle.ops.kinds import make_spec
  from bpref.oracle.ops.record import Label

  spec = make_spec("batchnorm", layout=layout)
  dims = (3, 4) if layout == "nd" else (2, 3, 2, 2)
  for family in record.BATCHNORM.value_families(spec):
    case = record.BATCHNORM.case(spec, Label(dims, family, 1))
    a, truth = case.arrays, record.BATCHNORM.compute(spec, case)
    with jax.enable_x64(True):
      x, gamma, beta, dout = (jnp.asarray(a[k]) for k in ("x", "gamma", "beta", "dout"))
      core = batchnorm.bounds(batchnorm.forward(x, gamma, beta)[1], beta, dout)
    mine = record.bounds(a["x"], a["gamma"], a["beta"], a["dout"], truth.expected["dx"], spec.eps)
    for name in ("out", "dx", "dgamma", "dbeta"):
      np.testing.assert_allclose(mine[name], np.asarray(getattr(core, name)), rtol=1e-9,
                                 err_msg=f"{family} {name}")


def test_options_are_checked():
  with pytest.raises(ValueError, match="layout='nc' is not valid for kind 'batchnorm'"):
    check_op("batchnorm", staged, layout="nc")
  with pytest.raises(ValueError, match="takes no name"):
    check_op("batchnorm", staged, name="relu")
  with pytest.raises(ValueError, match="eps must be a number in"):
    check_op("batchnorm", staged, eps=0)


def test_eps_is_the_candidates_own():
  def eps_1e_3(x, gamma, beta, dout):
    return spatial(alt)(x, gamma, beta, dout, eps=1e-3)

  assert check_op("batchnorm", eps_1e_3, eps=1e-3, examples=10).verdict == "pass"
  assert check_op("batchnorm", eps_1e_3, examples=10).verdict == "fail"


def test_a_dense_candidate_checked_as_spatial_fails_on_shape_or_value():
  """alt without the spatial wrapper, handed (N, C, H, W): its dgamma has the wrong shape."""
  report = check_op("batchnorm", alt, layout="nchw", examples=10)
  assert report.verdict == "fail" and report.kind in ("shape", "exception"), report.text()


def test_a_default_search_compiles_a_handful_of_programs():
  """The channels are padded to a bucket, the rows are not (they would join the statistics):
  one program per (m, bucket) pair; a second search of the same layout compiles nothing new."""
  with compilation.count() as first:
    assert check_op("batchnorm", spatial(alt), layout="nd").verdict == "pass"
  with compilation.count() as again:
    assert check_op("batchnorm", spatial(alt), layout="nd", dtype="float32").verdict == "pass"
  assert first.compilations <= 12 and again.compilations == 0, (first, again)
