"""bpref.layers.pool and bpref.layers.dropout: each backward step against autodiff of its own
forward step and against a plain loop reference, held to the rounding bounds of proofs/pool.md
(sections 4 and 5); the tie convention against JAX's reduce_window and PyTorch; jit, vmap, purity and
the errors of bad input.

The bounds. maxpool2d: out is exact, and each dx entry is a sum of at most K = ceil(pool/stride)^2
entries of dout, so a correct implementation errs by at most c u K M with M the same routing of
|dout|. avgpool2d: each dx entry is a sum of at most K shares dout / pool^2, each rounded once or
twice (a rounded 1 / pool^2), so k = K + 2 with M the same sharing of |dout|. dropout: |dx - exact| <= c u k M with M = |dout| m / (1 - p)^2 and k = 3. Against another
correct implementation in the same dtype both errors add: ``tolerance(dtype, inner=k) * M``
(c u (2 L + 1) k M with L = 1).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bpref.layers import dropout, pool
from bpref.tolerance import SAFETY, tolerance, unit_roundoff

DTYPES = (np.float32, np.float64)
WINDOWS = ((2, 2), (2, 1), (3, 2), (3, 3), (3, 1))  # (pool, stride): p2s2, p2s1, p3s2, p3s3, p3s1


def _ids(values):
  return [np.dtype(d).name if isinstance(d, type) else f"p{d[0]}s{d[1]}" for d in values]


def _within(actual, expected, magnitude, k, dtype, *, pair: bool) -> tuple[bool, float]:
  """(|actual - expected| <= bound * M entrywise, the largest excess): c u k against exact
  values, (T) with L = 1 for two implementations that both err (``pair``)."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  bound = tolerance(dtype, inner=k) if pair else SAFETY * unit_roundoff(dtype) * k
  excess = np.abs(actual - expected) - bound * np.asarray(magnitude, np.float64)
  return bool(np.all(excess <= 0)), float(np.max(excess, initial=-np.inf))


# ---------------------------------------------------------------- maxpool2d

def _loop_maxpool(x, dout, p, s):
  """(out, dx, M) by CS231n's loops in float64: the first maximum by np.argmax (MP2), dout added
  at it (MP3); M routes |dout| the same way (proofs/pool.md, section 4)."""
  x, dout = np.asarray(x, np.float64), np.asarray(dout, np.float64)
  N, C, Ho, Wo = dout.shape
  out, dx, M = np.zeros(dout.shape), np.zeros(x.shape), np.zeros(x.shape)
  for n in range(N):
    for c in range(C):
      for i in range(Ho):
        for j in range(Wo):
          window = x[n, c, i * s:i * s + p, j * s:j * s + p]
          a, b = np.unravel_index(np.argmax(window), window.shape)
          out[n, c, i, j] = window[a, b]
          dx[n, c, i * s + a, j * s + b] += dout[n, c, i, j]
          M[n, c, i * s + a, j * s + b] += abs(dout[n, c, i, j])
  return out, dx, M


def _K(p, s):
  return math.ceil(p / s) ** 2


def _maxpool_case(kind, p, s, dtype, seed=0):
  """(x, dout): "normal" values (no ties), "ties" (entries from {0, 1}), "negative" (all < 0)."""
  rng = np.random.default_rng(seed)
  shape = (2, 3, p + 3 * s + 1, p + 2 * s)  # a leftover row when s > 1
  x = rng.normal(size=shape)
  if kind == "ties":
    x = rng.choice(np.array([0.0, 1.0]), size=shape)
  if kind == "negative":
    x = -np.exp(x)
  dout = rng.normal(size=pool.output_shape(shape, p, s))
  return x.astype(dtype), dout.astype(dtype)


def _reduce_window_vjp(x, dout, p, s):
  """JAX's own max pooling and its autodiff: select_and_scatter_add, the first maximum."""
  def fn(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, p, p), (1, 1, s, s), "VALID")
  return jax.vjp(fn, x)[1](dout)[0]


def _stacked_max_vjp(x, dout, p, s):
  """Autodiff of bpref's own forward step: jnp.max over the stacked windows (ties split evenly)."""
  return jax.vjp(lambda x: pool.forward(x, p, s)[0], x)[1](dout)[0]


@functools.partial(jax.jit, static_argnums=(2, 3))
def _maxpool_all(x, dout, p, s):
  """(out, bpref's dx, autodiff of bpref's forward, autodiff of reduce_window): one compiled
  call per shape, dtype and window."""
  return (pool.forward(x, p, s)[0], pool.grads(x, dout, p, s), _stacked_max_vjp(x, dout, p, s),
          _reduce_window_vjp(x, dout, p, s))


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids(DTYPES))
@pytest.mark.parametrize("window", WINDOWS, ids=_ids(WINDOWS))
def test_maxpool_backward_matches_jax_vjp_and_the_loops(window, dtype):
  p, s = window
  x, dout = _maxpool_case("normal", p, s, dtype)
  out, mine, *witnesses = _maxpool_all(x, dout, p, s)
  out_loop, dx_loop, M = _loop_maxpool(x, dout, p, s)
  assert mine.dtype == dtype and mine.shape == x.shape
  for witness in witnesses:
    ok, excess = _within(mine, witness, M, _K(p, s), dtype, pair=True)
    assert ok, excess
  ok, excess = _within(mine, dx_loop, M, _K(p, s), dtype, pair=False)  # the loops sum in float64
  assert ok, excess
  np.testing.assert_array_equal(np.asarray(out, np.float64), out_loop)  # a maximum is exact


@pytest.mark.parametrize("window", WINDOWS, ids=_ids(WINDOWS))
def test_maxpool_ties_go_to_the_first_maximum_as_reduce_window_and_torch(window):
  """(MP2): with entries from {0, 1} most windows tie; bpref's dx is the loops' (np.argmax) and
  JAX's reduce_window autodiff's, and PyTorch's CPU max_pool2d's where torch is installed;
  autodiff of jnp.max splits the ties instead, and differs."""
  p, s = window
  x, dout = _maxpool_case("ties", p, s, np.float64)
  _, mine, split, first = _maxpool_all(x, dout, p, s)
  _, dx_loop, M = _loop_maxpool(x, dout, p, s)
  assert _within(mine, dx_loop, M, _K(p, s), np.float64, pair=False)[0]
  assert _within(mine, first, M, _K(p, s), np.float64, pair=True)[0]
  assert not _within(mine, split, M, _K(p, s), np.float64, pair=True)[0]
  try:
    import torch
  except ImportError:
    return
  xx = torch.tensor(x, requires_grad=True)
  torch.nn.functional.max_pool2d(xx, p, s).backward(torch.tensor(dout))
  assert _within(mine, xx.grad.numpy(), M, _K(p, s), np.float64, pair=True)[0]


def test_maxpool_all_negative_windows_get_their_gradient():
  """A window of negatives still has a maximum: every window sends its dout somewhere."""
  x, dout = _maxpool_case("negative", 2, 2, np.float64)
  dx = np.asarray(_maxpool_all(x, dout, 2, 2)[1])
  assert np.count_nonzero(dx) == dout.size
  np.testing.assert_allclose(dx.sum(axis=(2, 3)), dout.sum(axis=(2, 3)), rtol=1e-14)


def test_maxpool_overlapping_windows_add_at_a_shared_maximum():
  """(MP3): one large entry in the middle is the maximum of all four 2 x 2 windows (stride 1)."""
  x = np.zeros((1, 1, 3, 3))
  x[0, 0, 1, 1] = 5.0
  dout = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
  dx = np.asarray(pool.grads(x, dout, pool=2, stride=1))
  expected = np.zeros((1, 1, 3, 3))
  expected[0, 0, 1, 1] = 10.0
  np.testing.assert_array_equal(dx, expected)


def test_maxpool_under_jit_and_vmap():
  """The cache carries pool and stride as static structure: forward and backward jit apart;
  vmap over a stack of inputs gives each one's own dx."""
  x, dout = _maxpool_case("normal", 3, 2, np.float64)
  _, cache = jax.jit(pool.forward, static_argnames=("pool", "stride"))(x, pool=3, stride=2)
  assert cache.pool == 3 and cache.stride == 2
  staged = jax.jit(pool.backward)(cache, dout)
  np.testing.assert_array_equal(staged, _maxpool_all(x, dout, 3, 2)[1])
  stack_x, stack_d = np.stack([x, -x]), np.stack([dout, 2 * dout])
  mapped = jax.jit(jax.vmap(lambda x, d: pool.grads(x, d, 3, 2)))(stack_x, stack_d)
  for k in range(2):
    np.testing.assert_array_equal(mapped[k], pool.grads(stack_x[k], stack_d[k], 3, 2))


@pytest.mark.parametrize("forward, backward", [(pool.forward, pool.backward),
                                               (pool.avg_forward, pool.avg_backward)],
                         ids=["max", "avg"])
def test_pooling_leaves_its_inputs_unmodified(forward, backward):
  x, dout = _maxpool_case("ties", 2, 1, np.float64)
  copies = (x.copy(), dout.copy())
  _, cache = forward(x, 2, 1)
  backward(cache, dout)
  np.testing.assert_array_equal(x, copies[0])
  np.testing.assert_array_equal(dout, copies[1])


_X = np.ones((1, 2, 4, 4))


def _errors(name, forward, grads):
  """The bad input both pooling layers refuse, with the layer's name in each message."""
  return [
      ("x 3-D", lambda: forward(np.ones((2, 4, 4))), ValueError,
       rf"{name}: x must have shape \(N, C, H, W\); got shape \(2, 4, 4\)"),
      ("x smaller than a window", lambda: forward(np.ones((1, 1, 2, 5)), 3, 1), ValueError,
       rf"{name}: x of shape \(1, 1, 2, 5\) is smaller than one 3 x 3 window"),
      ("integer x", lambda: forward(np.ones((1, 1, 2, 2), np.int32)), TypeError,
       rf"{name}: x must have a floating dtype"),
      ("pool 0", lambda: forward(_X, 0, 1), ValueError, rf"{name}: pool must be at least 1"),
      ("float stride", lambda: forward(_X, 2, 1.5), TypeError,
       rf"{name}: stride must be a Python integer.*static_argnames='stride'"),
      ("array pool", lambda: forward(_X, jnp.asarray(2), 2), TypeError,
       rf"{name}: pool must be a Python integer"),
      ("dout of the input's shape", lambda: grads(_X, _X, 2, 2), ValueError,
       rf"{name}: dout = dC/dout must have the shape of the pooled output, \(1, 2, 2, 2\).*got "
       r"shape \(1, 2, 4, 4\)"),
      ("dout of another dtype", lambda: grads(_X, np.ones((1, 2, 2, 2), np.float32)), TypeError,
       rf"{name}: dout has dtype float32 but x has float64"),
  ]


MAXPOOL_ERRORS = _errors("maxpool2d", pool.forward, pool.grads) + [
    ("not a cache", lambda: pool.backward((_X, 2, 2), np.ones((1, 2, 2, 2))), TypeError,
     r"maxpool2d: cache must be the MaxPoolCache"),
]




# ---------------------------------------------------------------- avgpool2d

def _loop_avgpool(x, dout, p, s):
  """(out, dx, M_out, M_dx) by loops in float64 (AP1), (AP2); M_out is each window's mean of |x|,
  M_dx routes |dout| / p^2 the same way (proofs/pool.md, section 5)."""
  x, dout = np.asarray(x, np.float64), np.asarray(dout, np.float64)
  N, C, Ho, Wo = dout.shape
  out, M_out = np.zeros(dout.shape), np.zeros(dout.shape)
  dx, M = np.zeros(x.shape), np.zeros(x.shape)
  for n in range(N):
    for c in range(C):
      for i in range(Ho):
        for j in range(Wo):
          window = x[n, c, i * s:i * s + p, j * s:j * s + p]
          out[n, c, i, j] = window.sum() / (p * p)
          M_out[n, c, i, j] = np.abs(window).sum() / (p * p)
          dx[n, c, i * s:i * s + p, j * s:j * s + p] += dout[n, c, i, j] / (p * p)
          M[n, c, i * s:i * s + p, j * s:j * s + p] += abs(dout[n, c, i, j]) / (p * p)
  return out, dx, M_out, M


def _avg_reduce_window_vjp(x, dout, p, s):
  """JAX's reduce_window sum over the windows, / p^2, and its autodiff."""
  def fn(x):
    return jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 1, p, p), (1, 1, s, s), "VALID") / (p * p)
  return jax.vjp(fn, x)[1](dout)[0]


@functools.partial(jax.jit, static_argnums=(2, 3))
def _avgpool_all(x, dout, p, s):
  """(out, bpref's dx, autodiff of bpref's forward, autodiff of reduce_window)."""
  return (pool.avg_forward(x, p, s)[0], pool.avg_grads(x, dout, p, s),
          jax.vjp(lambda x: pool.avg_forward(x, p, s)[0], x)[1](dout)[0],
          _avg_reduce_window_vjp(x, dout, p, s))


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids(DTYPES))
@pytest.mark.parametrize("window", WINDOWS, ids=_ids(WINDOWS))
def test_avgpool_backward_matches_jax_vjp_torch_and_the_loops(window, dtype):
  """dx within (T) of every other way, k = K + 2 (a sum of K shares, each dout / p^2 or dout times
  a rounded 1 / p^2); out within k = p^2 + 1 of the loops."""
  p, s = window
  x, dout = _maxpool_case("normal", p, s, dtype)
  out, mine, *witnesses = _avgpool_all(x, dout, p, s)
  out_loop, dx_loop, M_out, M = _loop_avgpool(x, dout, p, s)
  assert mine.dtype == dtype and mine.shape == x.shape
  for witness in witnesses:
    ok, excess = _within(mine, witness, M, _K(p, s) + 2, dtype, pair=True)
    assert ok, excess
  assert _within(mine, dx_loop, M, _K(p, s) + 2, dtype, pair=False)[0]
  assert _within(out, out_loop, M_out, p * p + 1, dtype, pair=False)[0]
  try:
    import torch
  except ImportError:
    return
  xx = torch.tensor(x, requires_grad=True)
  torch.nn.functional.avg_pool2d(xx, p, s).backward(torch.tensor(dout))
  assert _within(mine, xx.grad.numpy(), M, _K(p, s) + 2, dtype, pair=True)[0]


def test_avgpool_shares_each_dout_over_its_window_and_adds_where_windows_overlap():
  """(AP2): four 2 x 2 windows at stride 1 over a 3 x 3 input; the centre is in all four. A
  backward step that loses the 1 / p^2, or assigns where windows overlap, gives other numbers."""
  dout = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
  dx = np.asarray(pool.avg_grads(np.zeros((1, 1, 3, 3)), dout, pool=2, stride=1))
  expected = np.array([[[[1.0, 3.0, 2.0], [4.0, 10.0, 6.0], [3.0, 7.0, 4.0]]]]) / 4
  np.testing.assert_array_equal(dx, expected)


def test_avgpool_under_jit_and_vmap():
  """The cache is static structure only; each compiled program may share dout / 9 by a division
  or a product with a rounded 1/9, so the programs agree within (T), not bit for bit."""
  x, dout = _maxpool_case("normal", 3, 2, np.float64)
  _, cache = jax.jit(pool.avg_forward, static_argnames=("pool", "stride"))(x, pool=3, stride=2)
  assert (cache.shape, cache.pool, cache.stride) == (x.shape, 3, 2)
  staged = jax.jit(pool.avg_backward)(cache, dout)
  _, _, _, M = _loop_avgpool(x, dout, 3, 2)
  assert _within(staged, _avgpool_all(x, dout, 3, 2)[1], M, _K(3, 2) + 2, np.float64, pair=True)[0]
  stack_x, stack_d = np.stack([x, -x]), np.stack([dout, 2 * dout])
  mapped = jax.jit(jax.vmap(lambda x, d: pool.avg_grads(x, d, 3, 2)))(stack_x, stack_d)
  for k in range(2):
    one = pool.avg_grads(stack_x[k], stack_d[k], 3, 2)
    assert _within(mapped[k], one, (k + 1) * M, _K(3, 2) + 2, np.float64, pair=True)[0]


AVGPOOL_ERRORS = _errors("avgpool2d", pool.avg_forward, pool.avg_grads) + [
    ("a max pooling cache", lambda: pool.avg_backward(pool.forward(_X)[1], np.ones((1, 2, 2, 2))),
     TypeError, r"avgpool2d: cache must be the AvgPoolCache"),
    ("dout of another shape than the cache's", lambda: pool.avg_backward(
        pool.avg_forward(_X)[1], np.ones((1, 2, 3, 3))), ValueError,
     r"avgpool2d: dout = dC/dout must have the shape of the pooled output, \(1, 2, 2, 2\)"),
]


POOL_ERRORS = [("max: " + case[0], *case[1:]) for case in MAXPOOL_ERRORS] + \
    [("avg: " + case[0], *case[1:]) for case in AVGPOOL_ERRORS]


@pytest.mark.parametrize("call, error, message", [case[1:] for case in POOL_ERRORS],
                         ids=[case[0] for case in POOL_ERRORS])
def test_pooling_refuses_bad_input(call, error, message):
  with pytest.raises(error, match=message):
    call()


# ---------------------------------------------------------------- dropout

PS = (0.0, 0.1, 0.5, 0.9)


def _dropout_case(p, dtype, seed=0, shape=(3, 5)):
  rng = np.random.default_rng(seed)
  x, dout = rng.normal(size=shape).astype(dtype), rng.normal(size=shape).astype(dtype)
  mask = rng.random(shape) >= 0.5  # half kept, whatever p
  return x, mask, dout


def _dropout_magnitude(mask, dout, p):
  """M_dx = |dout| m / (1 - p)^2 (proofs/pool.md, section 4), with k = 3."""
  return np.abs(np.asarray(dout, np.float64)) * mask / (1.0 - p) ** 2


@functools.partial(jax.jit, static_argnums=3)
def _dropout_all(x, mask, dout, p):
  """(bpref's dx, autodiff of bpref's forward): one compiled call per p, dtype and mask dtype."""
  _, vjp = jax.vjp(lambda x: dropout.forward(x, mask, p), x)
  return dropout.backward(mask, p, dout), vjp(dout)[0]


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids(DTYPES))
@pytest.mark.parametrize("p", PS)
def test_dropout_backward_matches_jax_vjp_and_the_exact_value(p, dtype):
  x, mask, dout = _dropout_case(p, dtype)
  M = _dropout_magnitude(mask, dout, p)
  exact = np.asarray(dout, np.float64) * mask / (1.0 - p)  # float64 of float32 values: exact to 2^-53
  for m in (mask, mask.astype(dtype)):  # a bool mask and a float mask give the same dx
    mine, witness = _dropout_all(x, m, dout, p)
    assert mine.dtype == dtype
    assert _within(mine, witness, M, 3, dtype, pair=True)[0]
    assert _within(mine, exact, M, 3, dtype, pair=False)[0]
    assert np.all(np.asarray(mine)[~mask] == 0)  # dropped units: exactly 0 (DO2)


def test_dropout_p_zero_with_a_mask_of_ones_is_the_identity():
  x, _, dout = _dropout_case(0.0, np.float32)
  ones = np.ones(x.shape, bool)
  np.testing.assert_array_equal(dropout.forward(x, ones, 0.0), x)
  np.testing.assert_array_equal(dropout.backward(ones, 0.0, dout), dout)


def test_dropout_under_jit_and_vmap():
  x, mask, dout = _dropout_case(0.5, np.float64, shape=(4, 3))
  staged = jax.jit(dropout.grads, static_argnames="p")(x, mask, p=0.5, dout=dout)
  np.testing.assert_array_equal(staged, dropout.grads(x, mask, 0.5, dout))
  mapped = jax.jit(jax.vmap(lambda m, d: dropout.backward(m, 0.5, d)))(mask, dout)
  for k in range(4):
    np.testing.assert_array_equal(mapped[k], dropout.backward(mask[k], 0.5, dout[k]))


def test_dropout_leaves_its_inputs_unmodified():
  x, mask, dout = _dropout_case(0.5, np.float64)
  copies = (x.copy(), mask.copy(), dout.copy())
  dropout.forward(x, mask, 0.5)
  dropout.grads(x, mask, 0.5, dout)
  for a, c in zip((x, mask, dout), copies):
    np.testing.assert_array_equal(a, c)


_V, _M = np.ones((2, 3)), np.ones((2, 3), bool)
DROPOUT_ERRORS = [
    ("a pre-scaled mask", lambda: dropout.backward(np.full((2, 3), 2.0), 0.5, _V), ValueError,
     r"dropout: mask must hold 0 \(dropped\) or 1 \(kept\) only; mask\[0, 0\] = .*2\.0.*pass mask != 0"),
    ("mask of another shape", lambda: dropout.forward(_V, np.ones(3, bool), 0.5), ValueError,
     r"dropout: mask must have the shape of x, \(2, 3\)"),
    ("integer mask", lambda: dropout.forward(_V, np.ones((2, 3), np.int64), 0.5), TypeError,
     r"dropout: mask must be boolean or of x's dtype float64.*mask.astype\(bool\)"),
    ("p = 1", lambda: dropout.forward(_V, _M, 1.0), ValueError,
     r"dropout: p, the probability of dropping a unit, must lie in \[0, 1\); got 1.0"),
    ("negative p", lambda: dropout.backward(_M, -0.1, _V), ValueError, r"must lie in \[0, 1\)"),
    ("array p", lambda: dropout.backward(_M, jnp.asarray(0.5), _V), TypeError,
     r"dropout: p must be a Python or NumPy number.*static_argnames='p'"),
    ("integer x", lambda: dropout.forward(np.ones((2, 3), np.int32), _M, 0.5), TypeError,
     r"dropout: x must have a floating dtype"),
    ("dout of another shape", lambda: dropout.grads(_V, _M, 0.5, np.ones((3, 2))), ValueError,
     r"dropout: dout = dC/dout must have the shape of the mask and of x, \(2, 3\)"),
    ("dout of another dtype", lambda: dropout.grads(_V, _M, 0.5, np.ones((2, 3), np.float32)),
     TypeError, r"dropout: dout has dtype float32 but x has float64"),
]


@pytest.mark.parametrize("call, error, message", [case[1:] for case in DROPOUT_ERRORS],
                         ids=[case[0] for case in DROPOUT_ERRORS])
def test_dropout_refuses_bad_input(call, error, message):
  with pytest.raises(error, match=message):
    call()
