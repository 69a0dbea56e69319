"""bpref.layers.conv: the backward step against autodiff of its own forward step, against an
exact rational referee and against loops written from the definition, held to the rounding
bound of proofs/conv.md (section 6); jit, vmap, purity and the errors of bad input.

The bound. Every output X of the layer is a sum of products of the inputs, so its magnitude M_X
is the same computation on absolute values (``_magnitudes``), and k_X is the length of its
longest sum: any standard correct float implementation errs by at most c u k M_X per entry,
c = ``bpref.tolerance.SAFETY``. Against the exact values bpref must be within c u k M_X; against
``jax.vjp`` of the same forward step (another correct implementation, in the same dtype) the two
errors add, and the check allows ``tolerance(dtype, inner=k) * M_X`` = c u 3 k M_X.
"""

import fractions
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bpref.layers import conv
from bpref.tolerance import SAFETY, tolerance, unit_roundoff

DTYPES = (np.float32, np.float64)


def _ids(dtypes=DTYPES):
  return [np.dtype(d).name for d in dtypes]


def _within(actual, expected, magnitude, k, dtype, *, pair: bool) -> tuple[bool, float]:
  """(whether |actual - expected| <= bound * M entrywise, the largest excess): c u k against
  the exact values, c u 3 k between two implementations that both err (``pair``)."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  bound = tolerance(dtype, inner=k) if pair else SAFETY * unit_roundoff(dtype) * k
  excess = np.abs(actual - expected) - bound * np.asarray(magnitude, np.float64)
  return bool(np.all(excess <= 0)), float(np.max(excess, initial=-np.inf))


# ---------------------------------------------------------------- loops from the definition

def _loops(x, w, b, dout, stride, pad, number=float):
  """(out, dx, dw, db) by loops over every index of (CV3) and its derivatives, in ``number``
  arithmetic (float, or fractions.Fraction for the exact values)."""
  N, C, H, W = x.shape
  F, _, HH, WW = w.shape
  Ho, Wo = 1 + (H + 2 * pad - HH) // stride, 1 + (W + 2 * pad - WW) // stride
  X = np.zeros((N, C, H + 2 * pad, W + 2 * pad), object)
  X[...] = number(0)
  X[:, :, pad:pad + H, pad:pad + W] = np.vectorize(number, otypes=[object])(x)
  Wt, B, D = (np.vectorize(number, otypes=[object])(v) for v in (w, b, dout))
  out = np.empty((N, F, Ho, Wo), object)
  dX = np.zeros_like(X)
  dX[...] = number(0)
  dw = np.zeros(w.shape, object)
  dw[...] = number(0)
  db = np.zeros(F, object)
  db[...] = number(0)
  for n in range(N):
    for f in range(F):
      for i in range(Ho):
        for j in range(Wo):
          window = X[n, :, stride * i:stride * i + HH, stride * j:stride * j + WW]
          out[n, f, i, j] = B[f] + sum((Wt[f] * window).ravel(), number(0))
          g = D[n, f, i, j]
          db[f] += g
          dw[f] += g * window
          dX[n, :, stride * i:stride * i + HH, stride * j:stride * j + WW] += g * Wt[f]
  dx = dX[:, :, pad:pad + H, pad:pad + W]
  return tuple(np.asarray(v, np.float64) for v in (out, dx, dw, db))


def _magnitudes(x, w, b, dout, stride, pad):
  """{output: (M, k)}: the layer on absolute values, and the longest sum of each output."""
  x, w, b, dout = (np.abs(np.asarray(v, np.float64)) for v in (x, w, b, dout))
  out, dx, dw, db = _loops(x, w, b, dout, stride, pad)
  N, C = x.shape[:2]
  F, _, HH, WW = w.shape
  Ho, Wo = dout.shape[2:]
  k_dx = F * math.ceil(HH / stride) * math.ceil(WW / stride)
  return {"out": (out, C * HH * WW + 1), "dx": (dx, k_dx), "dw": (dw, N * Ho * Wo),
          "db": (db, N * Ho * Wo)}


# ---------------------------------------------------------------- cases

CASES = {  # name: ((N, C, H, W), (F, HH, WW), stride, pad)
    "basic": ((2, 3, 5, 4), (2, 3, 3), 1, 0),
    "stride_and_pad": ((2, 2, 5, 6), (3, 3, 3), 2, 1),
    "uneven": ((2, 2, 6, 7), (2, 3, 2), 2, 0),        # (6 - 3) % 2 = 1: the last row is unread
    "one_by_one": ((3, 2, 4, 4), (2, 1, 1), 2, 0),
    "pad_beyond_filter": ((1, 2, 3, 3), (2, 2, 2), 1, 2),  # windows wholly inside the padding
    "one_channel": ((2, 1, 7, 5), (1, 3, 2), 3, 1),    # C = F = 1, H != W, HH != WW
}


def _case(kind, dtype, seed=0):
  (N, C, H, W), (F, HH, WW), stride, pad = CASES[kind]
  rng = np.random.default_rng(seed)
  Ho, Wo = 1 + (H + 2 * pad - HH) // stride, 1 + (W + 2 * pad - WW) // stride
  arrays = (rng.normal(size=(N, C, H, W)), rng.normal(size=(F, C, HH, WW)), rng.normal(size=F),
            rng.normal(size=(N, F, Ho, Wo)))
  return tuple(v.astype(dtype) for v in arrays) + (stride, pad)


def _autodiff(x, w, b, dout, stride, pad):
  _, vjp = jax.vjp(lambda x, w, b: conv.forward(x, w, b, stride, pad)[0], x, w, b)
  return vjp(dout)


def _lax_forward(x, w, b, stride, pad):
  out = jax.lax.conv_general_dilated(x, w, (stride, stride), [(pad, pad), (pad, pad)],
                                     precision=jax.lax.Precision.HIGHEST)
  return out + jnp.reshape(b, (1, -1, 1, 1))


def _compiled(stride, pad):
  """(out, bpref's grads, autodiff's grads, lax's out) for one geometry: one program per shape."""
  def run(x, w, b, dout):
    return (conv.forward(x, w, b, stride, pad)[0], conv.grads(x, w, b, dout, stride, pad),
            _autodiff(x, w, b, dout, stride, pad), _lax_forward(x, w, b, stride, pad))
  return jax.jit(run)


_PROGRAMS = {}


def _run(x, w, b, dout, stride, pad):
  if (stride, pad) not in _PROGRAMS:
    _PROGRAMS[stride, pad] = _compiled(stride, pad)
  return _PROGRAMS[stride, pad](x, w, b, dout)


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids())
@pytest.mark.parametrize("kind", CASES)
def test_conv_backward_matches_jax_vjp(kind, dtype):
  x, w, b, dout, stride, pad = _case(kind, dtype)
  out, ours, witness, lax_out = _run(x, w, b, dout, stride, pad)
  mags = _magnitudes(x, w, b, dout, stride, pad)
  assert out.shape == conv.output_shape(x.shape, w.shape, stride, pad) == dout.shape
  assert _within(out, lax_out, *mags["out"], dtype, pair=True)[0]
  for name, mine, theirs in zip(("dx", "dw", "db"), ours, witness):
    assert mine.dtype == dtype and mine.shape == theirs.shape, name
    ok, excess = _within(mine, theirs, *mags[name], dtype, pair=True)
    assert ok, (name, excess)


@pytest.mark.parametrize("kind", ("stride_and_pad", "uneven", "pad_beyond_filter", "one_channel"))
def test_conv_is_within_the_rounding_bound_of_the_exact_values(kind):
  """bpref and jax.vjp of its forward, in float32 and float64, are each within c u k M_X of
  the exact gradients (rational arithmetic on the float inputs)."""
  for dtype in DTYPES:
    x, w, b, dout, stride, pad = _case(kind, dtype, seed=1)
    exact = _loops(x, w, b, dout, stride, pad, number=fractions.Fraction)
    mags = _magnitudes(x, w, b, dout, stride, pad)
    out, ours, autodiff, _ = _run(x, w, b, dout, stride, pad)
    assert _within(out, exact[0], *mags["out"], dtype, pair=False)[0], (dtype, "out")
    for route, grads in (("bpref", ours), ("autodiff", autodiff)):
      for name, mine, true in zip(("dx", "dw", "db"), grads, exact[1:]):
        ok, excess = _within(mine, true, *mags[name], dtype, pair=False)
        assert ok, (dtype, route, name, excess)


def test_rows_and_columns_no_window_reads_get_exactly_zero_gradient():
  # H + 2P - HH = W + 2P - WW = 3 and stride 2: the last row and the last column of x are read
  # by no window, so out does not depend on them and their gradient is exactly 0.
  rng = np.random.default_rng(3)
  x, w, b, dout = (rng.normal(size=s) for s in ((2, 2, 6, 6), (2, 2, 3, 3), (2,), (2, 2, 2, 2)))
  dx, _, _ = jax.jit(conv.grads, static_argnames="stride")(x, w, b, dout, stride=2)
  dx = np.asarray(dx)
  assert np.all(dx[:, :, -1, :] == 0) and np.all(dx[:, :, :, -1] == 0)
  assert np.all(dx[:, :, -2, :-1] != 0) and np.all(dx[:, :, :-1, -2] != 0)
  changed = x.copy()
  changed[:, :, -1, :] = changed[:, :, :, -1] = 1e3
  forward = jax.jit(lambda x: conv.forward(x, w, b, 2)[0])
  np.testing.assert_array_equal(forward(x), forward(changed))


def test_loops_from_the_definition_agree_with_bpref():
  for kind in ("basic", "one_channel"):
    x, w, b, dout, stride, pad = _case(kind, np.float64, seed=2)
    out, ours, _, _ = _run(x, w, b, dout, stride, pad)
    loops = _loops(x, w, b, dout, stride, pad)
    mags = _magnitudes(x, w, b, dout, stride, pad)
    for name, mine, theirs in zip(("out", "dx", "dw", "db"), (out,) + tuple(ours), loops):
      assert _within(mine, theirs, *mags[name], np.float64, pair=True)[0], (kind, name)


def test_conv_under_jit_and_vmap():
  """forward then backward, each jitted (stride and pad static, the cache a pytree whose
  geometry is static), give the composition's grads; vmap over a leading axis (w and b shared)
  gives each slice's own."""
  x, w, b, dout, stride, pad = _case("stride_and_pad", np.float64)
  out, grads, _, _ = _run(x, w, b, dout, stride, pad)
  mags = _magnitudes(x, w, b, dout, stride, pad)
  staged_out, cache = jax.jit(conv.forward, static_argnames=("stride", "pad"))(
      x, w, b, stride=stride, pad=pad)
  assert jax.tree_util.tree_leaves(cache) == [cache.x, cache.w]  # stride and pad are static
  staged = jax.jit(conv.backward)(cache, dout)
  assert _within(staged_out, out, *mags["out"], np.float64, pair=True)[0]
  for name, one, other in zip(("dx", "dw", "db"), staged, grads):
    assert _within(one, other, *mags[name], np.float64, pair=True)[0], name
  xs, douts = np.stack([x, -2 * x]), np.stack([dout, dout[::-1]])
  mapped = jax.jit(jax.vmap(conv.grads, in_axes=(0, None, None, 0, None, None)),
                   static_argnums=(4, 5))(xs, w, b, douts, stride, pad)
  for s in range(2):
    mags_s = _magnitudes(xs[s], w, b, douts[s], stride, pad)
    single = _run(xs[s], w, b, douts[s], stride, pad)[1]
    for name, m, e in zip(("dx", "dw", "db"), (g[s] for g in mapped), single):
      assert _within(m, e, *mags_s[name], np.float64, pair=True)[0], (s, name)


def test_conv_leaves_its_inputs_unmodified_and_runs_eagerly():
  x, w, b, dout, stride, pad = _case("stride_and_pad", np.float64)
  arrays = (x, w, b, dout)
  copies = [a.copy() for a in arrays]
  _, cache = conv.forward(x, w, b, stride, pad)
  eager = conv.backward(cache, dout)
  for a, c in zip(arrays, copies):
    np.testing.assert_array_equal(a, c)
  _, grads, _, _ = _run(x, w, b, dout, stride, pad)
  mags = _magnitudes(x, w, b, dout, stride, pad)
  for name, one, other in zip(("dx", "dw", "db"), eager, grads):
    assert _within(one, other, *mags[name], np.float64, pair=True)[0], name


_X, _W, _B = np.ones((2, 3, 5, 5)), np.ones((4, 3, 3, 3)), np.ones(4)
_D = np.ones((2, 4, 3, 3))
ERRORS = [
    ("x 3-D", lambda: conv.forward(np.ones((3, 5, 5)), _W, _B), ValueError,
     r"conv2d: x must have shape \(N, C, H, W\).*got shape \(3, 5, 5\)"),
    ("channels disagree", lambda: conv.forward(_X, np.ones((4, 2, 3, 3)), _B), ValueError,
     r"conv2d: w has C = 2 input channels \(shape \(4, 2, 3, 3\)\) but x has C = 3"),
    ("b of the wrong length", lambda: conv.forward(_X, _W, np.ones(3)), ValueError,
     r"conv2d: b must have shape \(4,\), one entry per filter.*got shape \(3,\)"),
    ("filter larger than the padded input", lambda: conv.forward(np.ones((1, 3, 2, 5)), _W, _B),
     ValueError, r"conv2d: the filter is larger than the padded input along H: 3 taps but "
     r"H \+ 2 pad = 2 \+ 2 \* 0 = 2"),
    ("stride 0", lambda: conv.forward(_X, _W, _B, stride=0), ValueError,
     r"conv2d: stride must be an integer >= 1; got 0"),
    ("negative pad", lambda: conv.forward(_X, _W, _B, pad=-1), ValueError,
     r"conv2d: pad must be an integer >= 0; got -1"),
    ("traced stride", lambda: conv.forward(_X, _W, _B, stride=jnp.asarray(1)), TypeError,
     r"conv2d: stride must be a Python int.*static_argnames=\('stride', 'pad'\)"),
    ("float pad", lambda: conv.forward(_X, _W, _B, pad=1.0), TypeError,
     r"conv2d: pad must be a Python int"),
    ("integer x", lambda: conv.forward(np.ones((2, 3, 5, 5), np.int32), _W, _B), TypeError,
     r"conv2d: x must have a floating dtype; got shape \(2, 3, 5, 5\) and dtype int32"),
    ("mixed dtypes", lambda: conv.forward(_X, _W.astype(np.float32), _B), TypeError,
     r"conv2d: w has dtype float32 but x has float64"),
    ("dout of another shape", lambda: conv.grads(_X, _W, _B, np.ones((2, 4, 4, 4)), pad=1),
     ValueError, r"conv2d: dout = dC/dout must have the shape of out, \(N, F, H', W'\) = "
     r"\(2, 4, 5, 5\).*got shape \(2, 4, 4, 4\)"),
    ("dout for another stride", lambda: conv.grads(_X, _W, _B, _D, stride=2), ValueError,
     r"conv2d: dout = dC/dout must have the shape of out, \(N, F, H', W'\) = \(2, 4, 2, 2\) "
     r"for x \(2, 3, 5, 5\), w \(4, 3, 3, 3\), stride 2, pad 0; got shape \(2, 4, 3, 3\)"),
    ("not a cache", lambda: conv.backward((_X, _W, 1, 0), _D), TypeError,
     r"conv2d: cache must be the ConvCache\(x, w, stride, pad\)"),
    ("cache of another dtype",
     lambda: conv.backward(conv.ConvCache(_X, _W.astype(np.float32), 1, 0), _D), TypeError,
     r"conv2d: cache.w has dtype float32 but cache.x has float64"),
]


@pytest.mark.parametrize("call, error, message", [case[1:] for case in ERRORS],
                         ids=[case[0] for case in ERRORS])
def test_conv_refuses_bad_input(call, error, message):
  with pytest.raises(error, match=message):
    call()
