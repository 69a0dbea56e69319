"""bpref.layers.batchnorm: the backward step against autodiff of its own forward step, against
PyTorch's training mode and against layer normalization of the transpose, held to the rounding
bound of proofs/batchnorm.md (section 6); jit, vmap, purity and the errors of bad input.

The bound. ``batchnorm.bounds`` gives, for every output X, a magnitude M_X such that any standard
correct float implementation errs by at most c u k M_X per entry (BN19), k = m + 2, m the values
of one channel, c = ``bpref.tolerance.SAFETY``:

* a float32 implementation against bpref's float64 answer (exact to float32's eye: u is 2^29
  times smaller) must be within c u k M_X itself;
* two implementations in the same dtype (bpref and ``jax.vjp`` of its forward step) both err:
  within ``tolerance(dtype, inner=k) * M_X``, which is c u (2 L + 1) k M_X with L = 1.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bpref.layers import batchnorm, layernorm
from bpref.tolerance import SAFETY, tolerance, unit_roundoff

DTYPES = (np.float32, np.float64)
EPS = batchnorm.DEFAULT_EPS


def _ids(dtypes=DTYPES):
  return [np.dtype(d).name for d in dtypes]


def _k(x) -> int:
  """k of (BN19): m + 2, m = N H W the values of one channel."""
  return x.size // x.shape[1] + 2


def _within(actual, expected, magnitude, k, dtype, *, pair: bool) -> tuple[bool, float]:
  """(whether |actual - expected| <= bound * M entrywise, the largest ratio error / (bound M)):
  the bound is c u k for one implementation against the exact values, (T) with L = 1, c u 3 k,
  for two implementations that both err (``pair``)."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  bound = (tolerance(dtype, inner=k) if pair else SAFETY * unit_roundoff(dtype) * k) * np.asarray(
      magnitude, np.float64)
  err = np.abs(actual - expected)
  ratio = np.where(bound > 0, err / np.where(bound > 0, bound, 1), np.where(err > 0, np.inf, 0))
  return bool(np.all(err <= bound)), float(np.max(ratio, initial=0.0))


def _vacuous(exact, magnitude, k, dtype) -> bool:
  """Whether an all-zero answer is within the oracle's normwise tolerance (T) of ``exact``."""
  return bool(np.linalg.norm(np.ravel(exact)) <= tolerance(dtype, inner=k) * np.linalg.norm(
      np.ravel(magnitude)))


def _bounds(x, gamma, beta, dout, eps=EPS):
  """M of (BN16)-(BN18) from bpref's float64 cache of these values, as NumPy arrays."""
  x, gamma, beta, dout = (np.asarray(v, np.float64) for v in (x, gamma, beta, dout))
  _, cache = batchnorm.forward(x, gamma, beta, eps)
  return {k: np.asarray(v) for k, v in batchnorm.bounds(cache, beta, dout)._asdict().items()}


SHAPES = {"rows": (5, 3), "spatial": (2, 3, 2, 3), "single": (1, 4), "single_spatial": (1, 2, 2, 2),
          "pair": (2, 3), "constant_channel": (5, 3), "large_mean": (5, 3)}
"""Named inputs: N = 1 (m = 1: only eps under the root), N = 2, a constant channel, a large mean."""


def _case(kind, dtype, seed=0):
  """(x, gamma, beta, dout) for one named kind of input."""
  rng = np.random.default_rng(seed)
  shape = SHAPES[kind]
  x = rng.normal(size=shape)
  if kind == "constant_channel":
    x[:, 0] = 0.3  # variance 0: rstd = 1 / sqrt(eps)
  if kind == "large_mean":
    x = 1e4 + x  # cancellation in x - mu
  C = shape[1]
  gamma, beta = rng.normal(size=C), rng.normal(size=C)
  dout = rng.normal(size=shape)
  return tuple(v.astype(dtype) for v in (x, gamma, beta, dout))


def _autodiff(x, gamma, beta, dout, eps=EPS):
  _, vjp = jax.vjp(lambda x, gamma, beta: batchnorm.forward(x, gamma, beta, eps)[0], x, gamma, beta)
  return vjp(dout)


@jax.jit
def _all(x, gamma, beta, dout):
  """(out, bpref's grads, autodiff's grads): one compiled call per shape and dtype."""
  return (batchnorm.forward(x, gamma, beta)[0], batchnorm.grads(x, gamma, beta, dout),
          _autodiff(x, gamma, beta, dout))


NAMES = ("dx", "dgamma", "dbeta")


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids())
@pytest.mark.parametrize("kind", sorted(SHAPES))
def test_batchnorm_backward_matches_jax_vjp(kind, dtype):
  x, gamma, beta, dout = _case(kind, dtype)
  out, ours, witness = _all(x, gamma, beta, dout)
  M = _bounds(x, gamma, beta, dout)
  for name, mine, theirs in zip(NAMES, ours, witness):
    assert mine.dtype == dtype and mine.shape == theirs.shape, name
    ok, ratio = _within(mine, theirs, M[name], _k(x), dtype, pair=True)
    assert ok, (name, ratio)
  if kind == "single":  # m = 1: x - mu = 0, so xhat = 0, out = beta, dx = 0 and dgamma = 0
    assert np.all(np.asarray(ours[0]) == 0) and np.all(np.asarray(ours[1]) == 0)
    np.testing.assert_array_equal(np.asarray(out), np.broadcast_to(beta, x.shape))


def _one_pass(x, gamma, beta, dout, eps):
  """var = mean(x^2) - mu^2, clamped at 0, and the backward formula, in x's dtype (NumPy)."""
  mu = x.mean(0)
  var = np.maximum((x * x).mean(0) - mu * mu, 0)
  rstd = 1 / np.sqrt(var + x.dtype.type(eps))
  xhat = (x - mu) * rstd
  g = dout * gamma
  return rstd * (g - g.mean(0) - xhat * (g * xhat).mean(0)), (dout * xhat).sum(0), dout.sum(0)


def _welford_cache(x, gamma, eps):
  """Welford's updates of each channel's mean and variance, in x's dtype (NumPy): the way
  PyTorch computes the statistics. Returns the BatchNormCache bpref's backward reads."""
  dtype = x.dtype.type
  means, rstds = [], []
  for column in x.T:
    m, m2 = dtype(0), dtype(0)
    for k, v in enumerate(column, 1):
      d = v - m
      m = m + d / dtype(k)
      m2 = m2 + d * (v - m)
    means.append(m)
    rstds.append(dtype(1) / np.sqrt(m2 / dtype(len(column)) + dtype(eps)))
  return batchnorm.BatchNormCache(x, np.array(means, x.dtype), np.array(rstds, x.dtype), gamma)


def _staged(x, gamma, beta, dout, eps):
  """CS231n's batchnorm_backward, the computational graph walked back node by node (NumPy)."""
  N, eps = x.shape[0], x.dtype.type(eps)
  xmu = x - x.mean(0)
  var = (xmu ** 2).mean(0)
  sqrtvar = np.sqrt(var + eps)
  ivar = 1 / sqrtvar
  xhat = xmu * ivar
  dxhat = dout * gamma
  dvar = 0.5 / sqrtvar * (-1 / sqrtvar ** 2 * (dxhat * xmu).sum(0))
  dx1 = dxhat * ivar + 2 * xmu * dvar / N
  return dx1 - dx1.sum(0) / N, (dout * xhat).sum(0), dout.sum(0)


_backward = jax.jit(batchnorm.backward)


@pytest.mark.parametrize("kind", ("rows", "pair", "constant_channel", "large_mean"))
def test_batchnorm_rounding_bound_holds_in_float32_for_every_route(kind):
  """bpref (two passes), autodiff of its forward step, Welford's statistics, the one-pass
  variance and CS231n's staged graph all stay within c u k M of the exact values in float32,
  the one-pass variance where it keeps a digit of var; the mean term left out does not
  (section 6)."""
  x, gamma, beta, dout = _case(kind, np.float32, seed=2)
  eps = float(np.float32(EPS))  # what a float32 layer adds
  exact_x = [np.asarray(v, np.float64) for v in (x, gamma, beta, dout)]
  out_exact, exact, _ = _all(*exact_x)
  M = _bounds(x, gamma, beta, dout, eps)
  out, ours, autodiff = _all(x, gamma, beta, dout)
  ok, ratio = _within(out, out_exact, M["out"], _k(x), np.float32, pair=False)
  assert ok, ("out", ratio)
  routes = {"bpref": ours, "autodiff": autodiff,
            "welford": _backward(_welford_cache(x, gamma, eps), dout),
            "one_pass": _one_pass(x, gamma, beta, dout, eps),
            "staged": _staged(x, gamma, beta, dout, eps)}
  for route, grads in routes.items():
    for name, mine, true in zip(NAMES, grads, exact):
      assert np.asarray(mine).dtype == np.float32, (route, name)
      ok, ratio = _within(mine, true, M[name], _k(x), np.float32, pair=False)
      if route == "one_pass" and kind == "large_mean" and name == "dx":
        # mean(x^2) - mu^2 keeps no digit of var here: the error is beyond first order, and
        # the bound is beyond |dx| itself, so the oracle skips such a case as vacuous
        assert not ok and _vacuous(true, M[name], _k(x), np.float32), ratio
        continue
      assert ok, (route, name, ratio)
  if kind in ("rows", "constant_channel"):  # not at N = 2, where dx is O(eps / var), nor at a
    # large mean, where the bound covers the one-pass variance and exceeds |dx| in float32
    x64, gamma64, _, dout64 = exact_x
    rstd = 1 / np.sqrt(x64.var(0) + eps)
    xhat = (x64 - x64.mean(0)) * rstd
    g = dout64 * gamma64
    wrong = rstd * (g - xhat * (g * xhat).mean(0))  # the mean term left out
    assert not _within(wrong, exact[0], M["dx"], _k(x), np.float32, pair=False)[0]


def test_spatial_batchnorm_is_the_dense_layer_on_channels_last():
  """(BN0): x of shape (N, C, H, W) is normalized as the (N H W, C) matrix of its pixels."""
  x, gamma, beta, dout = _case("spatial", np.float64)
  N, C, H, W = x.shape

  def to_rows(v):
    return v.transpose(0, 2, 3, 1).reshape(-1, C)

  def back(v):
    return np.asarray(v).reshape(N, H, W, C).transpose(0, 3, 1, 2)

  out, grads, _ = _all(x, gamma, beta, dout)
  out_rows, grads_rows, _ = _all(to_rows(x), gamma, beta, to_rows(dout))
  M = _bounds(x, gamma, beta, dout)
  k = _k(x)
  assert _within(out, back(out_rows), M["out"], k, np.float64, pair=True)[0]
  for name, one, other in zip(NAMES, grads, (back(grads_rows[0]),) + tuple(grads_rows[1:])):
    assert _within(one, other, M[name], k, np.float64, pair=True)[0], name


def test_batchnorm_is_layernorm_of_the_transpose():
  """The twin (section 4): batchnorm's channel c is layernorm's row c of X^T with w = 1 and
  b = 0, then scaled by gamma_c; its dX is layernorm's dx of dXhat^T = (dOut gamma)^T."""
  x, gamma, beta, dout = _case("rows", np.float64)
  m = x.shape[0]
  ones, zeros = np.ones(m), np.zeros(m)
  xhat_t, cache = layernorm.forward(x.T, ones, zeros, EPS)
  dx_t, _, _ = layernorm.backward(cache, ones, (dout * gamma).T)
  out, (dx, dgamma, dbeta), _ = _all(x, gamma, beta, dout)
  M = _bounds(x, gamma, beta, dout)
  k = _k(x)
  twin = {"out": np.asarray(xhat_t).T * gamma + beta, "dx": np.asarray(dx_t).T,
          "dgamma": (dout * np.asarray(xhat_t).T).sum(0), "dbeta": dout.sum(0)}
  for name, ours in (("out", out), ("dx", dx), ("dgamma", dgamma), ("dbeta", dbeta)):
    assert _within(ours, twin[name], M[name], k, np.float64, pair=True)[0], name


def test_batchnorm_under_jit_and_vmap():
  """The checked entries trace: forward then backward, each jitted, give the jitted composition's
  grads; vmap over a stack of independent batches (gamma and beta shared) gives each batch's
  own dx, dgamma and dbeta. (vmap over the examples of one batch is another layer: the
  statistics would be each example's own.)"""
  for kind in ("rows", "spatial"):
    x, gamma, beta, dout = _case(kind, np.float64)
    out, grads, _ = _all(x, gamma, beta, dout)
    M = _bounds(x, gamma, beta, dout)
    k = _k(x)
    staged_out, cache = jax.jit(batchnorm.forward, static_argnames="eps")(x, gamma, beta, eps=EPS)
    staged = _backward(cache, dout)
    assert _within(staged_out, out, M["out"], k, np.float64, pair=True)[0]
    for name, one, other in zip(NAMES, staged, grads):
      assert _within(one, other, M[name], k, np.float64, pair=True)[0], (kind, name)
    xs = np.stack([x, 2 * x + 1, -x])
    douts = np.stack([dout, dout[::-1], 0.5 * dout])
    mapped = jax.jit(jax.vmap(batchnorm.grads, in_axes=(0, None, None, 0)))(xs, gamma, beta, douts)
    for s in range(3):
      _, single, _ = _all(xs[s], gamma, beta, douts[s])
      M_s = _bounds(xs[s], gamma, beta, douts[s])
      for name, got, want in zip(NAMES, (g[s] for g in mapped), single):
        assert _within(got, want, M_s[name], k, np.float64, pair=True)[0], (kind, s, name)


def test_batchnorm_leaves_its_inputs_unmodified_and_runs_eagerly():
  arrays = _case("spatial", np.float64)
  copies = [a.copy() for a in arrays]
  x, gamma, beta, dout = arrays
  _, cache = batchnorm.forward(x, gamma, beta)
  eager = batchnorm.backward(cache, dout)
  for a, c in zip(arrays, copies):
    np.testing.assert_array_equal(a, c)
  _, grads, _ = _all(x, gamma, beta, dout)  # eager and compiled agree
  M = _bounds(x, gamma, beta, dout)
  for name, one, other in zip(NAMES, eager, grads):
    assert _within(one, other, M[name], _k(x), np.float64, pair=True)[0], name


@pytest.mark.parametrize("kind", ("rows", "spatial", "constant_channel"))
def test_batchnorm_matches_pytorch_training_mode(kind):
  """torch.nn.functional.batch_norm(training=True): the same layer (biased variance, eps inside
  the root); its autograd agrees with bpref within (T). PyTorch refuses m = 1 in training mode."""
  torch = pytest.importorskip("torch")
  x, gamma, beta, dout = _case(kind, np.float64)
  xx, gg, bb = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
  out_t = torch.nn.functional.batch_norm(xx, None, None, gg, bb, training=True, eps=EPS)
  out_t.backward(torch.tensor(dout))
  out, grads, _ = _all(x, gamma, beta, dout)
  M = _bounds(x, gamma, beta, dout)
  k = _k(x)
  assert _within(out_t.detach().numpy(), out, M["out"], k, np.float64, pair=True)[0]
  for name, theirs, ours in zip(NAMES, (xx.grad, gg.grad, bb.grad), grads):
    assert _within(theirs.numpy(), ours, M[name], k, np.float64, pair=True)[0], name
  with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
    torch.nn.functional.batch_norm(torch.ones(1, 3), None, None, training=True)


_X, _C = np.ones((2, 4)), np.ones(4)
_CACHE = batchnorm.BatchNormCache(_X, _C, _C, _C)
BATCHNORM_ERRORS = [
    ("gamma of the wrong length", lambda: batchnorm.forward(_X, np.ones(3), _C), ValueError,
     (r"batchnorm: gamma must have shape \(4,\), one entry per channel of x \(axis 1 of shape "
      r"\(2, 4\)\); got shape \(3,\)")),
    ("beta 2-D", lambda: batchnorm.forward(_X, _C, np.ones((1, 4))), ValueError,
     r"batchnorm: beta must have shape \(4,\).*got shape \(1, 4\)"),
    ("x 1-D", lambda: batchnorm.forward(np.ones(4), _C, _C), ValueError,
     r"batchnorm: x must have shape \(N, C\) or \(N, C, H, W\).*got shape \(4,\).*add a batch axis"),
    ("an empty batch", lambda: batchnorm.forward(np.ones((0, 4)), _C, _C), ValueError,
     r"batchnorm: x must have shape \(N, C\) or \(N, C, H, W\) \(channels on axis 1, no empty axis\)"),
    ("spatial gamma per pixel", lambda: batchnorm.forward(np.ones((2, 3, 2, 2)), np.ones(12), np.ones(3)),
     ValueError, r"batchnorm: gamma must have shape \(3,\).*axis 1 of shape \(2, 3, 2, 2\)"),
    ("integer x", lambda: batchnorm.forward(np.ones((2, 4), np.int32), _C, _C), TypeError,
     r"batchnorm: x must have a floating dtype; got shape \(2, 4\) and dtype int32"),
    ("mixed dtypes", lambda: batchnorm.forward(_X, np.ones(4, np.float32), _C), TypeError,
     r"batchnorm: gamma has dtype float32 but x has float64"),
    ("negative eps", lambda: batchnorm.forward(_X, _C, _C, eps=-1e-5), ValueError,
     r"batchnorm: eps must be finite and >= 0"),
    ("array eps", lambda: batchnorm.forward(_X, _C, _C, eps=jnp.asarray(1e-5)), TypeError,
     r"batchnorm: eps must be a Python or NumPy number.*static_argnames='eps'"),
    ("dout of another shape", lambda: batchnorm.grads(_X, _C, _C, np.ones((4, 2))), ValueError,
     r"batchnorm: dout = dC/dout must have the shape of x, \(2, 4\); got shape \(4, 2\)"),
    ("dout of another dtype", lambda: batchnorm.backward(_CACHE, _X.astype(np.float32)), TypeError,
     r"batchnorm: dout has dtype float32 but x has float64"),
    ("not a cache", lambda: batchnorm.backward((_X, _C, _C, _C), _X), TypeError,
     r"batchnorm: cache must be the BatchNormCache\(x, mean, rstd, gamma\)"),
    ("cache of the wrong channels", lambda: batchnorm.backward(
        batchnorm.BatchNormCache(_X, np.ones(3), _C, _C), _X), ValueError,
     r"batchnorm: cache.mean must have shape \(4,\).*got shape \(3,\)"),
    ("bounds with beta of the wrong length", lambda: batchnorm.bounds(_CACHE, np.ones(5), _X),
     ValueError, r"batchnorm: beta must have shape \(4,\).*got shape \(5,\)"),
]


@pytest.mark.parametrize("call, error, message", [case[1:] for case in BATCHNORM_ERRORS],
                         ids=[case[0] for case in BATCHNORM_ERRORS])
def test_batchnorm_refuses_bad_input(call, error, message):
  with pytest.raises(error, match=message):
    call()
