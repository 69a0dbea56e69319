"""bpref.layers: each backward step against autodiff of its own forward step and against the
mpmath referee, held to the rounding bound of proofs/layers.md (section 5); jit, vmap, purity
and the errors of bad input.

The bound. For every output X of a layer, proofs/layers.md derives a magnitude M_X (the same
computation on absolute values, widened by what the forward step's rounding carries) and the
length k of the sums on X's path, such that any standard correct float implementation errs by
at most c u k M_X per entry, c = ``bpref.tolerance.SAFETY``. The ``_*_magnitudes`` helpers below
evaluate M_X and k in float64; they mirror the formulas of that section line by line.

* Against the referee (exact to 40 digits) bpref must be within c u k M_X itself.
* Against ``jax.vjp`` of the same forward step (another correct implementation of the backward
  step, in the same dtype) the two errors add: within ``tolerance(dtype, inner=k) * M_X``, which
  is c u (2 L + 1) k M_X with L = 1, at least twice c u k M_X.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bpref import activations as _acts
from bpref.layers import embedding, layernorm, residual
from bpref.oracle.textbook_forms import TEXTBOOK
from bpref.tables import pointwise
from bpref.tolerance import SAFETY, gradient_tolerance, tolerance, unit_roundoff
from bpref.witnesses import layers_referee, referee

DTYPES = (np.float32, np.float64)


def _ids(dtypes=DTYPES):
  return [np.dtype(d).name for d in dtypes]


def _within(actual, expected, magnitude, k, dtype, *, pair: bool) -> tuple[bool, float]:
  """(whether |actual - expected| <= bound * M entrywise, the largest excess): the bound is
  c u k for one implementation against the exact values, (T) with L = 1, c u 3 k, for two
  implementations that both err (``pair``). Shapes must agree."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  bound = tolerance(dtype, inner=k) if pair else SAFETY * unit_roundoff(dtype) * k
  excess = np.abs(actual - expected) - bound * np.asarray(magnitude, np.float64)
  return bool(np.all(excess <= 0)), float(np.max(excess, initial=-np.inf))


def _exact(tree):
  return tuple(referee.to_float(a) for a in tree)


# ---------------------------------------------------------------- magnitudes (proofs/layers.md, section 5)

def _layernorm_magnitudes(x, w, b, dout, eps):
  """{output: (M, k)} of layernorm: out, dx (k = C + 2), dw (k = N + C + 2), db (k = N)."""
  x, w, b, dout = (np.asarray(v, np.float64) for v in (x, w, b, dout))
  C, N = x.shape[-1], int(np.prod(x.shape[:-1]))
  rows = tuple(range(x.ndim - 1))
  mu = x.mean(-1, keepdims=True)
  r = 1 / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)
  xhat = np.abs((x - mu) * r)
  A = np.abs(x).max(-1, keepdims=True)  # the row's largest entry
  xi = xhat + r * A * (1 + xhat)  # Xi: what xhat may carry, in units of c u k
  dxhat = np.abs(dout * w)
  mean = functools.partial(np.mean, axis=-1, keepdims=True)
  M_dx = r * ((1 + r * A) * (dxhat + mean(dxhat)) + xi * mean(dxhat * xhat) + xhat * mean(dxhat * xi))
  return {"out": (np.abs(w) * xi + np.abs(b), C + 2), "dx": (M_dx, C + 2),
          "dw": ((np.abs(dout) * xi).sum(rows), N + C + 2), "db": (np.abs(dout).sum(rows), N)}


def _embedding_magnitudes(ids, wte, wpe, dout):
  """{output: (M, k)} of embedding: out (k = 1), dwte (k = B T), dwpe (k = B)."""
  ids = np.asarray(ids)
  wte, wpe, dout = (np.abs(np.asarray(v, np.float64)) for v in (wte, wpe, dout))
  B, T = ids.shape
  M_dwte = np.zeros_like(wte)
  np.add.at(M_dwte, ids, dout)
  M_dwpe = np.zeros_like(wpe)
  M_dwpe[:T] = dout.sum(0)
  return {"out": (wte[ids] + wpe[None, :T], 1), "dwte": (M_dwte, B * T), "dwpe": (M_dwpe, B)}


def _fprime_bound(activation, z, a, Z):
  """F' = |f'(z)| + phi_f + d2f Z: f' with what a correct program's rounding moves it by."""
  act = _acts.get(activation)
  F = np.abs(pointwise(act.df, z))
  if TEXTBOOK[activation].error is not None:  # phi_f, other people's forms of f'
    F = F + pointwise(TEXTBOOK[activation].error, z, a)
  if act.d2f is not None:
    F = F + pointwise(act.d2f, z, a) * Z
  return F


def _residual_magnitudes(x, W, b, activation, dout):
  """{output: (M, k)} of residual: y (k = C + 1), dx (k = 2 C + 2), dW and db (k = N + C + 1)."""
  x, W, b, dout = (np.asarray(v, np.float64) for v in (x, W, b, dout))
  C = x.shape[-1]
  x, dout = x.reshape(-1, C), dout.reshape(-1, C)
  N = x.shape[0]
  z = x @ W.T + b
  Z = np.abs(x) @ np.abs(W).T + np.abs(b)  # the terms of z's sums
  g = np.abs(dout)
  if activation == "softmax":
    e = np.exp(z - z.max(-1, keepdims=True))
    a = e / e.sum(-1, keepdims=True)
    M_a = a + a * (Z + (a * Z).sum(-1, keepdims=True))
    M_delta = (a * g + a * (a * g).sum(-1, keepdims=True)) * (1 + 4 * Z.max(-1, keepdims=True))
  else:
    a = pointwise(_acts.get(activation).f, z)
    M_a = np.abs(a) + np.abs(pointwise(_acts.get(activation).df, z)) * Z
    M_delta = g * _fprime_bound(activation, z, a, Z)
  return {"y": (np.abs(x) + M_a, C + 1), "dx": (g + M_delta @ np.abs(W), 2 * C + 2),
          "dW": (M_delta.T @ np.abs(x), N + C + 1), "db": (M_delta.sum(0), N + C + 1)}


# ---------------------------------------------------------------- layernorm

def _layernorm_case(kind, dtype, seed=0):
  """(x, w, b, dout) for one named kind of input."""
  rng = np.random.default_rng(seed)
  shapes = {"rows": (3, 4), "batch": (2, 3, 4), "single": (4,), "one_feature": (3, 1),
            "constant_row": (3, 4), "large_mean": (3, 4)}  # few shapes: one compilation each
  shape = shapes[kind]
  x = rng.normal(size=shape)
  if kind == "constant_row":
    x[0] = 0.3  # variance 0: rstd = 1 / sqrt(eps)
  if kind == "large_mean":
    x = 1e4 + x  # cancellation in x - mu
  C = shape[-1]
  w, b = rng.normal(size=C), rng.normal(size=C)
  dout = rng.normal(size=shape)
  return tuple(v.astype(dtype) for v in (x, w, b, dout))


LAYERNORM_KINDS = ("rows", "batch", "single", "one_feature", "constant_row", "large_mean")


def _layernorm_autodiff(x, w, b, dout, eps=layernorm.DEFAULT_EPS):
  _, vjp = jax.vjp(lambda x, w, b: layernorm.forward(x, w, b, eps)[0], x, w, b)
  return vjp(dout)


@jax.jit
def _layernorm_all(x, w, b, dout):
  """(out, bpref's grads, autodiff's grads): one compiled call per shape and dtype."""
  return layernorm.forward(x, w, b)[0], layernorm.grads(x, w, b, dout), _layernorm_autodiff(x, w, b, dout)


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids())
@pytest.mark.parametrize("kind", LAYERNORM_KINDS)
def test_layernorm_backward_matches_jax_vjp(kind, dtype):
  x, w, b, dout = _layernorm_case(kind, dtype)
  _, ours, witness = _layernorm_all(x, w, b, dout)
  mags = _layernorm_magnitudes(x, w, b, dout, layernorm.DEFAULT_EPS)
  for name, mine, theirs in zip(("dx", "dw", "db"), ours, witness):
    assert mine.dtype == dtype and mine.shape == theirs.shape, name
    ok, excess = _within(mine, theirs, *mags[name], dtype, pair=True)
    assert ok, (name, excess)
  if kind == "one_feature":
    assert np.all(np.asarray(ours[0]) == 0)  # xhat = 0: dx = 0 exactly


@pytest.mark.parametrize("kind", ("rows", "single", "one_feature", "constant_row"))
def test_layernorm_matches_the_mpmath_referee_in_float64(kind):
  x, w, b, dout = _layernorm_case(kind, np.float64, seed=1)
  exact = layers_referee.layernorm(x, w, b, dout, layernorm.DEFAULT_EPS)
  out, grads, _ = _layernorm_all(x, w, b, dout)
  assert referee.error(out, exact.out) <= gradient_tolerance(np.float64)
  for mine, true in zip(grads, exact.grads):
    assert referee.error(mine, true) <= gradient_tolerance(np.float64)


def _welford(x, w, b, eps):
  """A one-pass layernorm with Welford's updates of mean and variance, in x's dtype (NumPy):
  the way PyTorch computes the statistics. Returns (out, LayerNormCache)."""
  dtype = x.dtype.type
  rows = x.reshape(-1, x.shape[-1])
  means, rstds = [], []
  for row in rows:
    m, m2 = dtype(0), dtype(0)
    for k, v in enumerate(row, 1):
      d = v - m
      m = m + d / dtype(k)
      m2 = m2 + d * (v - m)
    means.append(m)
    rstds.append(dtype(1) / np.sqrt(m2 / dtype(len(row)) + dtype(eps)))
  mean = np.array(means, x.dtype).reshape(x.shape[:-1])
  rstd = np.array(rstds, x.dtype).reshape(x.shape[:-1])
  out = (x - mean[..., None]) * rstd[..., None] * w + b
  return out, layernorm.LayerNormCache(x, mean, rstd)


def _one_pass(x, w, b, eps):
  """var = mean(x^2) - mu^2, clamped at 0: the textbook one-pass form, in x's dtype (NumPy)."""
  mu = x.mean(-1, keepdims=True)
  var = np.maximum((x * x).mean(-1, keepdims=True) - mu * mu, 0)
  return (x - mu) / np.sqrt(var + x.dtype.type(eps)) * w + b


_layernorm_backward = jax.jit(layernorm.backward)


@pytest.mark.parametrize("kind", ("rows", "constant_row", "large_mean"))
def test_layernorm_rounding_bound_holds_in_float32_for_two_pass_and_welford(kind):
  """bpref (two passes), Welford's statistics and autodiff's backward all stay within c u k M of
  the exact values; the one-pass variance does not once the mean is large (section 5)."""
  dtype = np.float32
  x, w, b, dout = _layernorm_case(kind, dtype, seed=2)
  eps = float(np.float32(layernorm.DEFAULT_EPS))  # what a float32 layer adds
  exact = layers_referee.layernorm(x, w, b, dout, eps)
  out_exact, grads_exact = referee.to_float(exact.out), _exact(exact.grads)
  mags = _layernorm_magnitudes(x, w, b, dout, eps)
  out, ours, autodiff = _layernorm_all(x, w, b, dout)
  welford_out, welford_cache = _welford(x, w, b, eps)
  for candidate in (out, welford_out):
    ok, excess = _within(candidate, out_exact, *mags["out"], dtype, pair=False)
    assert ok, ("out", excess)
  routes = {"bpref": ours, "autodiff": autodiff, "welford": _layernorm_backward(welford_cache, w, dout)}
  for route, grads in routes.items():
    for name, mine, true in zip(("dx", "dw", "db"), grads, grads_exact):
      ok, excess = _within(mine, true, *mags[name], dtype, pair=False)
      assert ok, (route, name, excess)
  one_pass_ok, _ = _within(_one_pass(x, w, b, eps), out_exact, *mags["out"], dtype, pair=False)
  assert one_pass_ok == (kind != "large_mean")


def test_layernorm_under_jit_and_vmap():
  """The checked entries trace: forward then backward, each jitted, give the jitted composition's
  grads; vmap over the leading axis (w and b shared) gives each slice's own dx, dw and db."""
  x, w, b, dout = _layernorm_case("batch", np.float64)
  out, grads, _ = _layernorm_all(x, w, b, dout)
  mags = _layernorm_magnitudes(x, w, b, dout, layernorm.DEFAULT_EPS)
  staged_out, cache = jax.jit(layernorm.forward, static_argnames="eps")(x, w, b, eps=layernorm.DEFAULT_EPS)
  staged = _layernorm_backward(cache, w, dout)
  assert _within(staged_out, out, *mags["out"], np.float64, pair=True)[0]
  for name, one, other in zip(("dx", "dw", "db"), staged, grads):
    assert _within(one, other, *mags[name], np.float64, pair=True)[0], name
  mapped = jax.jit(jax.vmap(layernorm.grads, in_axes=(0, None, None, 0)))(x, w, b, dout)
  for s in range(x.shape[0]):
    mags_s = _layernorm_magnitudes(x[s], w, b, dout[s], layernorm.DEFAULT_EPS)
    _, single, _ = _layernorm_all(x[s], w, b, dout[s])
    for name, m, e in zip(("dx", "dw", "db"), (g[s] for g in mapped), single):
      assert _within(m, e, *mags_s[name], np.float64, pair=True)[0], (s, name)


def test_layernorm_leaves_its_inputs_unmodified_and_runs_eagerly():
  arrays = _layernorm_case("rows", np.float64)
  copies = [a.copy() for a in arrays]
  x, w, b, dout = arrays
  _, cache = layernorm.forward(x, w, b)
  staged = layernorm.backward(cache, w, dout)
  for a, c in zip(arrays, copies):
    np.testing.assert_array_equal(a, c)
  _, grads, _ = _layernorm_all(x, w, b, dout)  # eager and compiled agree
  mags = _layernorm_magnitudes(x, w, b, dout, layernorm.DEFAULT_EPS)
  for name, one, other in zip(("dx", "dw", "db"), staged, grads):
    assert _within(one, other, *mags[name], np.float64, pair=True)[0], name


_X, _C = np.ones((2, 4)), np.ones(4)
LAYERNORM_ERRORS = [
    ("w of the wrong length", lambda: layernorm.forward(_X, np.ones(3), _C), ValueError,
     r"layernorm: w must have shape \(4,\).*x \(shape \(2, 4\)\); got shape \(3,\)"),
    ("b 2-D", lambda: layernorm.forward(_X, _C, np.ones((1, 4))), ValueError,
     r"layernorm: b must have shape \(4,\).*got shape \(1, 4\)"),
    ("x 0-D", lambda: layernorm.forward(np.float64(1.0), _C, _C), ValueError,
     r"layernorm: x must have shape \(\.\.\., C\).*got shape \(\)"),
    ("x of zero features", lambda: layernorm.forward(np.ones((2, 0)), np.ones(0), np.ones(0)), ValueError,
     r"layernorm: x must have shape \(\.\.\., C\) with C >= 1.*got shape \(2, 0\)"),
    ("integer x", lambda: layernorm.forward(np.ones((2, 4), np.int32), _C, _C), TypeError,
     r"layernorm: x must have a floating dtype; got shape \(2, 4\) and dtype int32"),
    ("mixed dtypes", lambda: layernorm.forward(_X, np.ones(4, np.float32), _C), TypeError,
     r"layernorm: w has dtype float32 but x has float64"),
    ("negative eps", lambda: layernorm.forward(_X, _C, _C, eps=-1e-5), ValueError,
     r"layernorm: eps must be finite and >= 0"),
    ("array eps", lambda: layernorm.forward(_X, _C, _C, eps=jnp.asarray(1e-5)), TypeError,
     r"layernorm: eps must be a Python or NumPy number.*static_argnames='eps'"),
    ("dout of another shape", lambda: layernorm.grads(_X, _C, _C, np.ones((4, 2))), ValueError,
     r"layernorm: dout = dC/dout must have the shape of x, \(2, 4\); got shape \(4, 2\)"),
    ("not a cache", lambda: layernorm.backward((_X, _X[:, 0], _X[:, 0]), _C, _X), TypeError,
     r"layernorm: cache must be the LayerNormCache"),
    ("cache of the wrong rows", lambda: layernorm.backward(
        layernorm.LayerNormCache(_X, np.ones(3), np.ones(2)), _C, _X), ValueError,
     r"layernorm: cache.mean must have shape \(2,\).*got shape \(3,\)"),
    ("w in backward",
     lambda: layernorm.backward(layernorm.LayerNormCache(_X, _C[:2], _C[:2]), np.ones(5), _X),
     ValueError, r"layernorm: w must have shape \(4,\).*got shape \(5,\)"),
]


@pytest.mark.parametrize("call, error, message", [case[1:] for case in LAYERNORM_ERRORS],
                         ids=[case[0] for case in LAYERNORM_ERRORS])
def test_layernorm_refuses_bad_input(call, error, message):
  with pytest.raises(error, match=message):
    call()


# ---------------------------------------------------------------- embedding

EMBEDDING_CASES = {  # (ids, V, P): repeated tokens with 0 and V - 1; T = 1; T = P
    "repeated": (((0, 3, 3, 1), (3, 0, 2, 3)), 4, 6),
    "one_position": (((2,), (2,), (0,)), 3, 2),
    "full_length": (((1, 0, 1),), 2, 3),
}


def _embedding_case(kind, dtype, seed=0):
  ids, V, P = EMBEDDING_CASES[kind]
  ids = np.asarray(ids, np.int32)
  rng = np.random.default_rng(seed)
  C = 3
  wte, wpe = rng.normal(size=(V, C)).astype(dtype), rng.normal(size=(P, C)).astype(dtype)
  dout = rng.normal(size=ids.shape + (C,)).astype(dtype)
  return ids, wte, wpe, dout


@jax.jit
def _embedding_all(ids, wte, wpe, dout):
  """(out, bpref's grads, autodiff's grads): one compiled call per shape and dtype."""
  out, vjp = jax.vjp(lambda e, p: embedding.forward(ids, e, p), wte, wpe)
  return out, embedding.backward(ids, dout, wte.shape[0], wpe.shape[0]), vjp(dout)


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids())
@pytest.mark.parametrize("kind", EMBEDDING_CASES)
def test_embedding_backward_matches_jax_vjp(kind, dtype):
  ids, wte, wpe, dout = _embedding_case(kind, dtype)
  _, ours, witness = _embedding_all(ids, wte, wpe, dout)
  mags = _embedding_magnitudes(ids, wte, wpe, dout)
  for name, mine, theirs in zip(("dwte", "dwpe"), ours, witness):
    assert mine.dtype == dtype
    ok, excess = _within(mine, theirs, *mags[name], dtype, pair=True)
    assert ok, (name, excess)
  T = ids.shape[1]
  assert np.all(np.asarray(ours[1])[T:] == 0)  # positions beyond T
  unused = np.setdiff1d(np.arange(wte.shape[0]), ids)
  assert np.all(np.asarray(ours[0])[unused] == 0)  # tokens absent from the batch


@pytest.mark.parametrize("kind", EMBEDDING_CASES)
def test_embedding_matches_the_mpmath_referee(kind):
  for dtype in DTYPES:
    ids, wte, wpe, dout = _embedding_case(kind, dtype, seed=1)
    exact = layers_referee.embedding(ids, wte, wpe, dout)
    out, ours, _ = _embedding_all(ids, wte, wpe, dout)
    if dtype == np.float64:
      assert referee.error(out, exact.out) <= gradient_tolerance(np.float64)
      for mine, true in zip(ours, exact.grads):
        assert referee.error(mine, true) <= gradient_tolerance(np.float64)
    mags = _embedding_magnitudes(ids, wte, wpe, dout)
    for name, mine, true in zip(("out", "dwte", "dwpe"), (out,) + tuple(ours),
                                (referee.to_float(exact.out),) + _exact(exact.grads)):
      assert _within(mine, true, *mags[name], dtype, pair=False)[0], (dtype, name)


_embedding_backward = jax.jit(embedding.backward, static_argnums=(2, 3))


def test_embedding_under_jit_and_vmap():
  ids, wte, wpe, dout = _embedding_case("repeated", np.float64)
  V, P = wte.shape[0], wpe.shape[0]
  stack_ids, stack_dout = np.stack([ids, ids[::-1]]), np.stack([dout, 2 * dout])
  mapped_out = jax.jit(jax.vmap(embedding.forward, in_axes=(0, None, None)))(stack_ids, wte, wpe)
  mapped = jax.jit(jax.vmap(embedding.backward, in_axes=(0, 0, None, None)), static_argnums=(2, 3))(
      stack_ids, stack_dout, V, P)
  for s in range(2):
    out_s, single, _ = _embedding_all(stack_ids[s], wte, wpe, stack_dout[s])
    np.testing.assert_array_equal(mapped_out[s], out_s)
    mags = _embedding_magnitudes(stack_ids[s], wte, wpe, stack_dout[s])
    for name, m, e, j in zip(("dwte", "dwpe"), (mapped[0][s], mapped[1][s]), single,
                             _embedding_backward(stack_ids[s], stack_dout[s], V, P)):
      assert _within(m, e, *mags[name], np.float64, pair=True)[0], name
      assert _within(j, e, *mags[name], np.float64, pair=True)[0], name


def test_embedding_traced_ids_out_of_range_give_nan_rows_and_no_gradient():
  """Under jit the ids cannot be checked: an id outside [0, V), negative included, gives a row
  of NaN in the forward step (not a clamped or wrapped row) and adds nothing in the backward."""
  ids = np.array([[0, -1], [5, 1]], np.int32)
  wte, wpe = np.ones((3, 2)), np.zeros((2, 2))
  out = np.asarray(jax.jit(embedding.forward)(ids, wte, wpe))
  assert np.all(np.isnan(out[0, 1])) and np.all(np.isnan(out[1, 0]))
  assert np.all(out[0, 0] == 1) and np.all(out[1, 1] == 1)
  dwte, _ = _embedding_backward(ids, np.ones((2, 2, 2)), 3, 2)
  np.testing.assert_array_equal(dwte, [[1, 1], [1, 1], [0, 0]])


def test_embedding_leaves_its_inputs_unmodified_and_runs_eagerly():
  arrays = _embedding_case("repeated", np.float64)
  copies = [a.copy() for a in arrays]
  ids, wte, wpe, dout = arrays
  out = embedding.forward(ids, wte, wpe)
  grads = embedding.backward(ids, dout, wte.shape[0], wpe.shape[0])
  for a, c in zip(arrays, copies):
    np.testing.assert_array_equal(a, c)
  out_jit, grads_jit, _ = _embedding_all(ids, wte, wpe, dout)
  np.testing.assert_array_equal(out, out_jit)
  mags = _embedding_magnitudes(ids, wte, wpe, dout)
  for name, one, other in zip(("dwte", "dwpe"), grads, grads_jit):
    assert _within(one, other, *mags[name], np.float64, pair=True)[0], name


_IDS, _WTE, _WPE = np.array([[0, 1, 2]]), np.ones((3, 2)), np.ones((4, 2))
EMBEDDING_ERRORS = [
    ("id equal to V", lambda: embedding.forward(np.array([[0, 3]]), _WTE, _WPE), ValueError,
     r"embedding: ids must lie in \[0, V\) = \[0, 3\); ids\[0, 1\] = 3 \(ids has shape \(1, 2\)"),
    ("negative id", lambda: embedding.forward(np.array([[-1, 0]]), _WTE, _WPE), ValueError,
     r"embedding: ids must lie in \[0, V\) = \[0, 3\); ids\[0, 0\] = -1"),
    ("id out of range in backward", lambda: embedding.backward(np.array([[0, 7]]), np.ones((1, 2, 2)), 3, 4),
     ValueError, r"embedding: ids must lie in \[0, V\) = \[0, 3\); ids\[0, 1\] = 7"),
    ("float ids", lambda: embedding.forward(np.array([[0.0, 1.0]]), _WTE, _WPE), TypeError,
     r"embedding: ids must be an integer array.*got shape \(1, 2\) and dtype float64"),
    ("1-D ids", lambda: embedding.forward(np.array([0, 1]), _WTE, _WPE), ValueError,
     r"embedding: ids must have shape \(B, T\).*got shape \(2,\).*ids\[None, :\]"),
    ("T > P", lambda: embedding.forward(np.zeros((1, 5), np.int32), _WTE, _WPE), ValueError,
     r"embedding: ids has T = 5 positions \(shape \(1, 5\)\) but wpe has rows for P = 4"),
    ("C mismatch", lambda: embedding.forward(_IDS, _WTE, np.ones((4, 3))), ValueError,
     r"embedding: wte has C = 2 features \(shape \(3, 2\)\) but wpe has 3 \(shape \(4, 3\)\)"),
    ("integer table", lambda: embedding.forward(_IDS, np.ones((3, 2), np.int32), _WPE), TypeError,
     r"embedding: wte must have a floating dtype; got shape \(3, 2\) and dtype int32"),
    ("1-D table", lambda: embedding.forward(_IDS, np.ones(3), _WPE), ValueError,
     r"embedding: wte must have shape \(V, C\).*got shape \(3,\)"),
    ("mixed dtypes", lambda: embedding.forward(_IDS, _WTE, np.ones((4, 2), np.float32)), TypeError,
     r"embedding: wpe has dtype float32 but wte has float64"),
    ("dout of another shape", lambda: embedding.backward(_IDS, np.ones((1, 2, 2)), 3, 4), ValueError,
     r"embedding: dout = dC/dout must have shape \(B, T, C\) = \(1, 3, C\).*got shape \(1, 2, 2\)"),
    ("positions < T", lambda: embedding.backward(_IDS, np.ones((1, 3, 2)), 3, 2), ValueError,
     r"embedding: positions must be at least 3.*got 2"),
    ("vocab not an int", lambda: embedding.backward(_IDS, np.ones((1, 3, 2)), 3.0, 4), TypeError,
     r"embedding: vocab must be a Python integer.*got float"),
]


@pytest.mark.parametrize("call, error, message", [case[1:] for case in EMBEDDING_ERRORS],
                         ids=[case[0] for case in EMBEDDING_ERRORS])
def test_embedding_refuses_bad_input(call, error, message):
  with pytest.raises(error, match=message):
    call()


# ---------------------------------------------------------------- residual

RESIDUAL_CASES = (  # (activation, shape of x): several shapes, C = 1, no leading axis
    ("tanh", (3, 4)), ("relu", (2, 2, 3)), ("gelu", (4,)), ("softmax", (3, 3)),
    ("identity", (3, 1)), ("silu", (2, 3)),
)


def _residual_case(shape, dtype, seed=0):
  rng = np.random.default_rng(seed)
  C = shape[-1]
  x = rng.normal(size=shape)
  W, b = rng.normal(size=(C, C)) / np.sqrt(C), rng.normal(size=C) * 0.5
  dout = rng.normal(size=shape)
  return tuple(v.astype(dtype) for v in (x, W, b, dout))


def _residual_grads(x, W, b, activation, dout):
  _, cache = residual.forward(x, W, b, activation)
  return residual.backward(cache, W, activation, dout)


@functools.partial(jax.jit, static_argnums=3)
def _residual_all(x, W, b, activation, dout):
  """(y, bpref's grads, autodiff's grads): one compiled call per shape, dtype and activation."""
  y, vjp = jax.vjp(lambda x, W, b: residual.forward(x, W, b, activation)[0], x, W, b)
  return y, _residual_grads(x, W, b, activation, dout), vjp(dout)


def _flat(mags, name, *arrays):
  # arrays reshaped to the shape of their magnitude (the residual's are on rows (N, C))
  return tuple(np.reshape(a, np.shape(mags[name][0])) for a in arrays)


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids())
@pytest.mark.parametrize("activation, shape", RESIDUAL_CASES, ids=[a for a, _ in RESIDUAL_CASES])
def test_residual_backward_matches_jax_vjp(activation, shape, dtype):
  x, W, b, dout = _residual_case(shape, dtype)
  _, ours, witness = _residual_all(x, W, b, activation, dout)
  mags = _residual_magnitudes(x, W, b, activation, dout)
  for name, mine, theirs in zip(("dx", "dW", "db"), ours, witness):
    assert mine.dtype == dtype and mine.shape == theirs.shape, name
    ok, excess = _within(*_flat(mags, name, mine, theirs), *mags[name], dtype, pair=True)
    assert ok, (name, excess)


@pytest.mark.parametrize("activation, shape", RESIDUAL_CASES[:4], ids=[a for a, _ in RESIDUAL_CASES[:4]])
def test_residual_matches_the_mpmath_referee(activation, shape):
  for dtype in DTYPES:
    x, W, b, dout = _residual_case(shape, dtype, seed=1)
    exact = layers_referee.residual(x, W, b, activation, dout)
    y, ours, _ = _residual_all(x, W, b, activation, dout)
    if dtype == np.float64:
      assert referee.error(y, exact.out) <= gradient_tolerance(np.float64)
      for mine, true in zip(ours, exact.grads):
        assert referee.error(mine, true) <= gradient_tolerance(np.float64)
    mags = _residual_magnitudes(x, W, b, activation, dout)
    for name, mine, true in zip(("y", "dx", "dW", "db"), (y,) + tuple(ours),
                                (referee.to_float(exact.out),) + _exact(exact.grads)):
      assert _within(*_flat(mags, name, mine, true), *mags[name], dtype, pair=False)[0], (dtype, name)


def test_residual_under_jit_and_vmap():
  """forward then backward, each jitted, give the composition's grads; vmap over the leading
  axis gives each slice's dx, and dW, db that add up to the whole batch's."""
  x, W, b, dout = _residual_case(RESIDUAL_CASES[1][1], np.float64)
  y, grads, _ = _residual_all(x, W, b, "relu", dout)
  mags = _residual_magnitudes(x, W, b, "relu", dout)
  staged_y, cache = jax.jit(residual.forward, static_argnames="activation")(x, W, b, activation="relu")
  staged = jax.jit(residual.backward, static_argnames="activation")(cache, W, activation="relu", dout=dout)
  mapped = jax.jit(jax.vmap(_residual_grads, in_axes=(0, None, None, None, 0)), static_argnums=3)(
      x, W, b, "relu", dout)
  assert _within(*_flat(mags, "y", staged_y, y), *mags["y"], np.float64, pair=True)[0]
  for i, name in enumerate(("dx", "dW", "db")):
    summed = mapped[i] if name == "dx" else np.sum(mapped[i], axis=0)  # per-slice dW, db add up
    for other in (staged[i], summed):
      assert _within(*_flat(mags, name, other, grads[i]), *mags[name], np.float64, pair=True)[0], name


def test_residual_leaves_its_inputs_unmodified_and_runs_eagerly():
  arrays = _residual_case(RESIDUAL_CASES[0][1], np.float64)
  copies = [a.copy() for a in arrays]
  x, W, b, dout = arrays
  eager = _residual_grads(x, W, b, "tanh", dout)
  for a, c in zip(arrays, copies):
    np.testing.assert_array_equal(a, c)
  _, grads, _ = _residual_all(x, W, b, "tanh", dout)
  mags = _residual_magnitudes(x, W, b, "tanh", dout)
  for name, one, other in zip(("dx", "dW", "db"), eager, grads):
    assert _within(*_flat(mags, name, one, other), *mags[name], np.float64, pair=True)[0], name


_RX, _RW, _RB = np.ones((2, 3)), np.eye(3), np.zeros(3)
RESIDUAL_ERRORS = [
    ("W not square", lambda: residual.forward(_RX, np.ones((4, 3)), _RB, "tanh"), ValueError,
     r"residual: W must have shape \(3, 3\).*x of shape \(2, 3\), so W must be square\); got shape \(4, 3\)"),
    ("W for other features", lambda: residual.forward(_RX, np.eye(2), _RB, "tanh"), ValueError,
     r"residual: W must have shape \(3, 3\).*got shape \(2, 2\)"),
    ("b of the wrong length", lambda: residual.forward(_RX, _RW, np.zeros(2), "tanh"), ValueError,
     r"residual: b must have shape \(3,\).*got shape \(2,\)"),
    ("unknown activation", lambda: residual.forward(_RX, _RW, _RB, "swish"), ValueError,
     r"residual: unknown activation 'swish'; valid names: identity, relu"),
    ("integer x", lambda: residual.forward(np.ones((2, 3), np.int64), _RW, _RB, "tanh"), TypeError,
     r"residual: x must have a floating dtype; got shape \(2, 3\) and dtype int64"),
    ("mixed dtypes", lambda: residual.forward(_RX, _RW.astype(np.float32), _RB, "tanh"), TypeError,
     r"residual: W has dtype float32 but x has float64"),
    ("dout of another shape", lambda: residual.backward(residual.ResidualCache(_RX, _RX, _RX), _RW,
                                                        "tanh", np.ones((3, 2))), ValueError,
     r"residual: dout must have shape \(2, 3\).*got shape \(3, 2\)"),
    ("not a cache", lambda: residual.backward((_RX, _RX, _RX), _RW, "tanh", _RX), TypeError,
     r"residual: cache must be the ResidualCache"),
    ("bad precision", lambda: residual.forward(_RX, _RW, _RB, "tanh", precision="fast"), ValueError,
     r"precision must be a jax.lax.Precision"),
]


@pytest.mark.parametrize("call, error, message", [case[1:] for case in RESIDUAL_ERRORS],
                         ids=[case[0] for case in RESIDUAL_ERRORS])
def test_residual_refuses_bad_input(call, error, message):
  with pytest.raises(error, match=message):
    call()


# ---------------------------------------------------------------- the rules of the modules

AUTODIFF = {"grad", "value_and_grad", "vjp", "jvp", "jacfwd", "jacrev", "jacobian", "hessian",
            "linearize", "linear_transpose", "custom_vjp", "custom_jvp", "closure_convert"}


def test_the_layers_and_their_referee_use_no_autodiff():
  """Static check: no jax.grad, jax.vjp, ... (nor from-imports of them) in the layers and the
  referee; autodiff is the witness of the tests only."""
  import ast
  import pathlib

  def root(expr):
    while isinstance(expr, ast.Attribute):
      expr = expr.value
    return expr.id if isinstance(expr, ast.Name) else None

  files = [pathlib.Path(m.__file__) for m in (layernorm, embedding, residual, layers_referee)]
  found = []
  for path in files:
    tree = ast.parse(path.read_text())
    jax_names = {"jax"} | {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                           for a in node.names if a.name.startswith("jax")}
    for node in ast.walk(tree):
      if isinstance(node, ast.Attribute) and node.attr in AUTODIFF and root(node) in jax_names:
        found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jax"):
        found += [f"{path.name}:{node.lineno} {a.name}" for a in node.names if a.name in AUTODIFF]
  assert not found, found


def test_the_layers_referee_knows_every_activation():
  assert set(layers_referee.ACTIVATIONS) == set(_acts.ACTIVATIONS)
