"""Causal self-attention (bpref.layers.attention) against jax.vjp, the mpmath referee and its
rounding bound (proofs/attention.md (A19)), under jit and vmap, and on bad input."""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bpref.layers import attention
from bpref.oracle.ops.attention import bounds as attention_bounds
from bpref.tolerance import gradient_tolerance, tolerance, unit_roundoff
from bpref.witnesses import attention_referee as referee

DTYPES = (np.float64, np.float32)


def draw(B, T, C, heads, kind="random", seed=0):
  """(qkv, dout) in float64, shapes (B, T, 3C) and (B, T, C).

  kind: "random" (normal), "equal" (q = 0: every visible score equal), "near_ties" (scores near
  1e3 within a few units of each other, so that P is not one-hot), "spread" (scores up to a few
  1e3 apart: P nearly one-hot).
  """
  rng = np.random.default_rng(seed)
  qkv = rng.normal(size=(B, T, 3 * C))
  dout = rng.normal(size=(B, T, C))
  hs = C // heads
  if kind == "equal":
    qkv[..., :C] = 0.0
  elif kind == "near_ties":  # S_ts = (c^2 + c d_s + ...) / sqrt(hs) ~ 1e3, spread of order 1
    c = math.sqrt(1e3 * math.sqrt(hs))
    for h in range(heads):
      qkv[..., h * hs] = c
      qkv[..., C + h * hs] = c + rng.normal(size=(B, T)) / c
  elif kind == "spread":
    qkv[..., :2 * C] *= 30.0
  return qkv, dout


CASES = {  # name: (B, T, C, heads, kind)
    "random": (2, 5, 8, 2, "random"),
    "one_position": (2, 1, 4, 2, "random"),
    "one_head": (2, 4, 6, 1, "random"),
    "three_heads": (1, 3, 6, 3, "random"),
    "equal_scores": (2, 5, 8, 2, "equal"),
    "large_scores_near_ties": (2, 5, 8, 2, "near_ties"),
    "large_scores_spread": (2, 5, 8, 2, "spread"),
}


def plain_forward(qkv, heads):
  """An independent forward: heads by channel slices, jax.nn.softmax, no reshapes."""
  _, T, three_c = qkv.shape
  C = three_c // 3
  hs = C // heads
  visible = jnp.tril(jnp.ones((1, T, T), dtype=bool))
  outs = []
  for h in range(heads):
    q, k, v = (qkv[:, :, i * C + h * hs:i * C + (h + 1) * hs] for i in range(3))
    S = jnp.matmul(q, jnp.swapaxes(k, 1, 2), precision="highest") / math.sqrt(hs)
    P = jax.nn.softmax(jnp.where(visible, S, -jnp.inf), axis=-1)
    outs.append(jnp.matmul(P, v, precision="highest"))
  return jnp.concatenate(outs, axis=-1)


@functools.partial(jax.jit, static_argnums=1)
def _everything(qkv, heads, dout):
  """bpref's out, P and dqkv, jax.vjp of its forward, and ``plain_forward``: one compilation
  per shape and dtype."""
  out, cache = attention.forward(qkv, heads)
  dqkv = attention.backward(cache, dout)
  own = jax.vjp(lambda x: attention.forward(x, heads)[0], qkv)[1](dout)[0]
  return {"out": out, "P": cache.P, "dqkv": dqkv, "own": own, "plain_out": plain_forward(qkv, heads)}


def run(qkv, heads, dout) -> dict:
  """``_everything`` as NumPy arrays."""
  found = _everything(jnp.asarray(qkv), heads, jnp.asarray(dout))
  return {name: np.asarray(value) for name, value in found.items()}


@functools.partial(jax.jit, static_argnums=(1, 3))
def _bounds(qkv, heads, dout, dtype):
  """M_out and [M_dq | M_dk | M_dv] of (A18) from float64 inputs, the floor of ``dtype``."""
  _, cache = attention.forward(qkv, heads)
  M = attention_bounds(cache, dout, dtype)
  return M.out, jnp.concatenate([M.dq, M.dk, M.dv], axis=-1)


def bound(qkv, heads, dout, dtype):
  """(c u k M_out, c u k M_dqkv): the largest error (A19) allows a correct implementation."""
  M_out, M = _bounds(jnp.asarray(qkv, jnp.float64), heads, jnp.asarray(dout, jnp.float64),
                     np.dtype(dtype))
  tol = tolerance(dtype, depth=1, inner=max(qkv.shape[1], qkv.shape[2] // (3 * heads)))
  return tol * np.asarray(M_out), tol * np.asarray(M)


def within(actual, expected, allowed) -> bool:
  diff = np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64))
  return bool(np.all(np.isfinite(np.asarray(actual, np.float64))) and np.all(diff <= allowed))


# ---------------------------------------------------------------- witnesses

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES)
def test_backward_matches_jax_vjp(case, dtype):
  # Two correct implementations each err by at most (A19): they differ by at most twice it.
  B, T, C, heads, kind = CASES[case]
  qkv64, dout64 = draw(B, T, C, heads, kind)
  qkv, dout = qkv64.astype(dtype), dout64.astype(dtype)
  r = run(qkv, heads, dout)
  assert r["dqkv"].dtype == r["out"].dtype == np.dtype(dtype) and r["dqkv"].shape == qkv.shape
  err_out, err = bound(qkv, heads, dout, dtype)
  assert within(r["dqkv"], r["own"], 2 * err), "jax.vjp of bpref's forward"
  assert within(r["out"], r["plain_out"], 2 * err_out), "an independent forward"


SMALL = CASES["three_heads"][:4]
"""(B, T, C, heads) of the referee's cases: about a hundred mpmath forward passes each."""


@pytest.mark.parametrize("case", ["one_position", "random", "equal", "near_ties", "spread"])
def test_agrees_with_the_mpmath_referee(case):
  B, T, C, heads, kind = CASES["one_position"] if case == "one_position" else (*SMALL, case)
  qkv, dout = draw(B, T, C, heads, kind, seed=1)
  r = run(qkv, heads, dout)
  assert referee.error(r["dqkv"], referee.grads(qkv, heads, dout)) <= gradient_tolerance(np.float64)
  assert referee.error(r["out"], referee.forward(qkv, heads)) <= gradient_tolerance(np.float64)


@pytest.mark.parametrize("kind", ["random", "equal", "near_ties", "spread"])
def test_float32_within_the_rounding_bound(kind):
  # (A19) entry by entry: bpref in float32 against the exact answer on the same float32 values.
  heads = SMALL[3]
  qkv, dout = (a.astype(np.float32) for a in draw(*SMALL, kind, seed=2))
  r = run(qkv, heads, dout)
  err_out, err = bound(qkv, heads, dout, np.float32)
  assert within(r["dqkv"], referee.to_float(referee.grads(qkv, heads, dout)), err)
  assert within(r["out"], referee.to_float(referee.forward(qkv, heads)), err_out)


# ---------------------------------------------------------------- the mask and the softmax

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_masked_softmax_is_robust(dtype):
  u = unit_roundoff(dtype)
  # T = 1: P = [1], out = v, and dqkv = [0 | 0 | dout], exactly.
  qkv, dout = (a.astype(dtype) for a in draw(*CASES["one_position"][:4]))
  r = run(qkv, 2, dout)
  assert np.all(r["P"] == 1) and np.array_equal(r["out"], qkv[..., 8:])
  assert np.array_equal(r["dqkv"], np.concatenate([np.zeros_like(dout), np.zeros_like(dout), dout], -1))
  # Equal scores: P_ts = 1 / (t + 1) on the visible keys, 0 above the diagonal.
  qkv, dout = (a.astype(dtype) for a in draw(*CASES["equal_scores"]))
  P = run(qkv, 2, dout)["P"].astype(np.float64)
  expected = np.tril(np.ones((5, 5))) / np.arange(1, 6)[:, None]
  assert np.all(np.abs(P - expected) <= u * expected) and np.all(np.triu(P, 1) == 0)  # one division
  # Scores of size 1e3, both signs: finite, rows summing to 1, and within (A19) of the referee.
  B, T, C, heads = SMALL
  for kind in ("near_ties", "spread"):
    qkv, dout = draw(*SMALL, kind, seed=3)
    qkv[..., :C] *= np.array([1.0, -1.0, 1.0])[:, None]  # rows of scores near +1e3 and -1e3 (T = 3)
    qkv, dout = qkv.astype(dtype), dout.astype(dtype)
    r = run(qkv, heads, dout)
    q, k = (qkv[..., i * C:(i + 1) * C].astype(np.float64).reshape(B, T, heads, -1) for i in (0, 1))
    assert np.max(np.abs(np.einsum("bthd,bshd->bhts", q, k))) > 500
    assert np.all(np.isfinite(r["dqkv"])) and np.all(np.isfinite(r["out"]))
    assert np.all(np.abs(np.sum(r["P"].astype(np.float64), axis=-1) - 1) <= 4 * T * u)
    _, err = bound(qkv, heads, dout, dtype)
    assert within(r["dqkv"], referee.to_float(referee.grads(qkv, heads, dout)), err)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_the_future_gets_no_gradient(dtype):
  # A cotangent on positions t < 3 only: dq, dk and dv at every position s >= 3 are exactly 0.
  qkv, dout = (a.astype(dtype) for a in draw(*CASES["random"]))
  dout[:, 3:] = 0
  dqkv = run(qkv, 2, dout)["dqkv"]
  assert np.all(dqkv[:, 3:] == 0) and np.all(dqkv[:, :3, 16:] != 0)


def test_cache_holds_the_heads_in_pytorch_layout():
  qkv, _ = draw(*CASES["random"])
  out, cache = attention.forward(qkv, 2)
  for got, expected in zip(cache[:3], attention.split_heads(qkv, 2)):
    assert got.shape == (2, 2, 5, 4) and np.array_equal(got, expected)
  P = np.asarray(cache.P)
  visible = np.tril(np.ones((5, 5), dtype=bool))
  assert P.shape == (2, 2, 5, 5) and np.all(P[..., ~visible] == 0) and np.all(P[..., visible] > 0)
  assert np.all(np.abs(P.sum(-1) - 1) <= 2 * 5 * unit_roundoff(np.float64))  # T divisions, T - 1 additions
  assert out.shape == (2, 5, 8)


# ---------------------------------------------------------------- jit, vmap, purity

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_jit_and_vmap_give_the_eager_results(dtype):
  B, T, C, heads, kind = CASES["random"]
  qkv, dout = (a.astype(dtype) for a in draw(B, T, C, heads, kind))
  _, err = bound(qkv, heads, dout, dtype)
  _, cache = attention.forward(qkv, heads)
  dqkv = attention.backward(cache, dout)
  assert within(jax.jit(attention.backward)(cache, dout), dqkv, 2 * err)  # the checks see tracers
  assert within(jax.jit(attention.grads, static_argnums=1)(qkv, heads, dout), dqkv, 2 * err)
  # vmap over a leading axis of three problems: each row is the problem's own result.
  many = np.stack([qkv, 2 * qkv, -qkv]), np.stack([dout, dout, 3 * dout])
  batched = jax.jit(jax.vmap(lambda x, g: attention.grads(x, heads, g)))(*many)
  for i in range(3):
    _, err_i = bound(many[0][i], heads, many[1][i], dtype)
    assert within(batched[i], run(many[0][i], heads, many[1][i])["dqkv"], 2 * err_i)


def test_inputs_are_left_unmodified():
  qkv, dout = draw(*CASES["random"])
  keep = qkv.copy(), dout.copy()
  _, cache = attention.forward(qkv, 2)
  attention.backward(cache, dout)
  attention.grads(qkv, 2, dout)
  q, k, v = attention.split_heads(qkv, 2)
  attention.merge_heads(q, k, v)
  assert np.array_equal(qkv, keep[0]) and np.array_equal(dout, keep[1])
  assert np.array_equal(cache.q, attention.split_heads(keep[0], 2)[0])


# ---------------------------------------------------------------- layouts

def test_split_heads_and_merge_heads_are_inverse_permutations():
  B, T, C, heads, _ = CASES["random"]
  hs = C // heads
  qkv, _ = draw(B, T, C, heads)
  q, k, v = attention.split_heads(qkv, heads)
  for i, x in enumerate((q, k, v)):  # x[b, h, t, d] = qkv[b, t, i C + h hs + d]
    assert x.shape == (B, heads, T, hs)
    for h in range(heads):
      assert np.array_equal(x[:, h], qkv[:, :, i * C + h * hs:i * C + (h + 1) * hs])
  assert np.array_equal(attention.merge_heads(q, k, v), qkv)
  back = attention.split_heads(attention.merge_heads(v, q, k), heads)
  assert all(np.array_equal(a, b) for a, b in zip(back, (v, q, k)))


def test_pytorch_layout_gives_the_same_gradients():
  # A candidate in PyTorch's layout hands q, k, v (B, heads, T, hs): merge_heads makes qkv, and
  # split_heads turns dqkv back into its dq, dk, dv.
  qkv, dout = draw(*CASES["random"], seed=5)
  q, k, v = attention.split_heads(qkv, 2)
  dqkv = attention.grads(attention.merge_heads(q, k, v), 2, dout)
  dq, dk, dv = attention.split_heads(dqkv, 2)
  assert np.array_equal(attention.merge_heads(dq, dk, dv), attention.grads(qkv, 2, dout))


# ---------------------------------------------------------------- bad input

def _cache():  # B = 2, T = 5, C = 8, heads = 2, hs = 4
  return attention.forward(draw(*CASES["random"])[0], 2)[1]


BAD = {
    "qkv_without_batch": (lambda: attention.forward(np.ones((2, 6)), 1), ValueError,
                          ["(B, T, 3C)", "(2, 6)"]),
    "last_axis_not_3C": (lambda: attention.forward(np.ones((1, 2, 7)), 1), ValueError,
                         ["3C", "(1, 2, 7)", "multiple of 3"]),
    "C_not_divisible": (lambda: attention.forward(np.ones((1, 2, 12)), 3), ValueError,
                        ["C = 4", "(1, 2, 12)", "heads = 3"]),
    "no_positions": (lambda: attention.forward(np.ones((1, 0, 6)), 1), ValueError,
                     ["T >= 1", "(1, 0, 6)"]),
    "integer_qkv": (lambda: attention.forward(np.ones((1, 2, 6), np.int32), 1), TypeError,
                    ["floating", "int32"]),
    "zero_heads": (lambda: attention.forward(np.ones((1, 2, 6)), 0), ValueError, ["at least 1"]),
    "float_heads": (lambda: attention.forward(np.ones((1, 2, 6)), 2.0), TypeError,
                    ["positive int", "2.0"]),
    "dout_T_differs": (lambda: attention.backward(_cache(), np.ones((2, 4, 8))), ValueError,
                       ["(B, T, C) = (2, 5, 8)", "(2, 4, 8)"]),
    "dout_C_differs": (lambda: attention.grads(draw(*CASES["random"])[0], 2, np.ones((2, 5, 24))),
                       ValueError, ["(2, 5, 8)", "(2, 5, 24)"]),
    "dout_dtype_differs": (lambda: attention.backward(_cache(), np.ones((2, 5, 8), np.float32)),
                           TypeError, ["float32", "float64"]),
    "cache_not_a_cache": (lambda: attention.backward(tuple(_cache()), np.ones((2, 5, 8))),
                          TypeError, ["AttentionCache", "tuple"]),
    "cache_P_misshapen": (lambda: attention.backward(_cache()._replace(P=np.ones((2, 2, 5))),
                                                     np.ones((2, 5, 8))),
                          ValueError, ["cache.P", "(2, 2, 5, 5)", "(2, 2, 5)"]),
    "merge_shapes_differ": (lambda: attention.merge_heads(np.ones((1, 2, 3, 4)), np.ones((1, 2, 3, 4)),
                                                          np.ones((1, 2, 3, 5))),
                            ValueError, ["v must have q's shape (1, 2, 3, 4)", "(1, 2, 3, 5)"]),
    "merge_dtypes_differ": (lambda: attention.merge_heads(np.ones((1, 2, 3, 4)), np.ones((1, 2, 3, 4)),
                                                          np.ones((1, 2, 3, 4), np.float32)),
                            TypeError, ["v must have q's dtype float64", "float32"]),
    "split_C_not_divisible": (lambda: attention.split_heads(np.ones((1, 2, 15)), 2), ValueError,
                              ["C = 5", "heads = 2"]),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_input_names_the_layer_and_both_shapes(name):
  call, kind, fragments = BAD[name]
  with pytest.raises(kind, match="^attention: ") as info:
    call()
  for fragment in fragments:
    assert re.search(re.escape(fragment), str(info.value)), (fragment, str(info.value))
