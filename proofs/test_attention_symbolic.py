"""Symbolic proof of the attention backward (proofs/attention.md), and its classic mistakes.

q, k, v (the entries of qkv) and the cotangent dout are independent symbols; exp is an
undefined function E whose derivative is E itself (sympy applies the chain rule through
``fdiff``). The causal softmax is written from its definition, P_ts = E(S_ts) / sum_{r <= t}
E(S_tr) for s <= t and 0 above. sympy differentiates l = sum(dout * out) by every entry of qkv,
and the handwritten equations (A7)-(A13) are transcribed on the same symbols. Their difference
is a rational function of the symbols and of the values E(S_ts); replacing each E(S_ts) by a
fresh symbol and cancelling gives the zero rational function, so the difference is zero for
every value of those symbols, E(S_ts) = exp(S_ts) included: the equations hold for every qkv
and dout of that size.

The classic mistakes of proofs/attention.md section 5 are planted one at a time in a small
NumPy backward, which without a mistake agrees with the proven derivative.
"""

import functools

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
import sympy as sp

from bpref.layers import attention
from bpref.oracle.ops.attention import bounds as attention_bounds
from bpref.error import max_norm_error
from bpref.tolerance import gradient_tolerance, tolerance


class E(sp.Function):
  """exp, left undefined but for E' = E."""
  nargs = 1

  def fdiff(self, argindex=1):
    return E(self.args[0])


SIZES = ((2, 1, 1), (2, 2, 1), (2, 1, 2), (2, 2, 2), (3, 1, 1))
"""(T, hs, heads) of the proofs: every visible-row length up to 3, the scale 1/sqrt(hs) != 1,
and two heads side by side."""


@functools.cache
def symbolic(T, hs, heads):
  """The symbols qkv (T, 3C) and dout (T, C) of one batch row, the forward (A1)-(A6), C."""
  C = hs * heads
  x = sp.Matrix(T, 3 * C, lambda t, c: sp.Symbol(f"x{t}_{c}"))
  g = sp.Matrix(T, C, lambda t, c: sp.Symbol(f"g{t}_{c}"))
  out = sp.zeros(T, C)
  per_head = []
  for h in range(heads):
    q, k, v = (x[:, i * C + h * hs:i * C + (h + 1) * hs] for i in range(3))  # (A1)
    S = q * k.T / sp.sqrt(hs)  # (A2)
    P = sp.zeros(T, T)  # (A3): P_ts = 0 for s > t
    for t in range(T):
      total = sum(E(S[t, s]) for s in range(t + 1))
      for s in range(t + 1):
        P[t, s] = E(S[t, s]) / total  # (A4)
    out[:, h * hs:(h + 1) * hs] = P * v  # (A5), (A6)
    per_head.append((q, k, v, P))
  loss = sum(g[t, c] * out[t, c] for t in range(T) for c in range(C))  # l = sum(dout * out)
  derivative = sp.Matrix(T, 3 * C, lambda t, c: sp.diff(loss, x[t, c]))
  return {"x": x, "g": g, "out": out, "per_head": per_head, "derivative": derivative}


def handwritten(net, T, hs, heads):
  """(A7)-(A13) on the symbolic forward."""
  C = hs * heads
  g = net["g"]
  dx = sp.zeros(T, 3 * C)
  for h, (q, k, v, P) in enumerate(net["per_head"]):
    dO = g[:, h * hs:(h + 1) * hs]  # (A7)
    dv = P.T * dO  # (A8)
    dP = dO * v.T  # (A9)
    dS = sp.zeros(T, T)  # (A10): dS_ts = 0 for s > t
    for t in range(T):
      row = sum(dP[t, s] * P[t, s] for s in range(T))
      for s in range(t + 1):
        dS[t, s] = P[t, s] * (dP[t, s] - row)  # (A10)
    dx[:, h * hs:(h + 1) * hs] = dS * k / sp.sqrt(hs)  # (A11), (A13)
    dx[:, C + h * hs:C + (h + 1) * hs] = dS.T * q / sp.sqrt(hs)  # (A12), (A13)
    dx[:, 2 * C + h * hs:2 * C + (h + 1) * hs] = dv  # (A13)
  return dx


def _zero(expr) -> bool:
  """Whether expr is 0 as a rational function of its symbols and of its E(.) values."""
  fresh = {e: sp.Symbol(f"e{i}", positive=True) for i, e in enumerate(sorted(expr.atoms(E), key=str))}
  return sp.cancel(sp.together(expr.xreplace(fresh))) == 0


@pytest.mark.parametrize("T, hs, heads", SIZES)
def test_handwritten_backward_equals_sympy_derivative(T, hs, heads):
  net = symbolic(T, hs, heads)
  hand = handwritten(net, T, hs, heads)
  wrong = [(t, c) for t in range(T) for c in range(3 * hs * heads)
           if not _zero(hand[t, c] - net["derivative"][t, c])]
  assert not wrong, f"entries of dqkv that differ from sympy's derivative: {wrong}"


def test_the_check_sees_a_wrong_formula():
  # The same check rejects (A10) without its row sum, so it is not vacuous.
  net = symbolic(2, 1, 1)
  _, k, v, P = net["per_head"][0]
  dP = net["g"] * v.T
  wrong_dq = P[1, 0] * dP[1, 0] * k[0, 0] + P[1, 1] * dP[1, 1] * k[1, 0]  # dS = P * dP
  assert not _zero(wrong_dq - net["derivative"][1, 0])


# ---------------------------------------------------------------- the proof evaluated

def _point(T, hs, heads, seed):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(T, 3 * hs * heads)), rng.normal(size=(T, hs * heads))


@functools.cache
def _numeric(T, hs, heads):
  """The proven derivative as an mpmath function of (qkv, dout) of one batch row."""
  net = symbolic(T, hs, heads)
  symbols = list(net["x"]) + list(net["g"])
  return sp.lambdify(symbols, net["derivative"].replace(E, sp.exp), modules="mpmath")


def exact_derivative(qkv, dout, hs, heads):
  """sympy's derivative at a float point, evaluated at 50 digits on the exact inputs."""
  T = qkv.shape[0]
  with mpmath.workdps(50):
    values = [mpmath.mpf(float(v)) for v in np.concatenate([qkv.ravel(), dout.ravel()])]
    matrix = _numeric(T, hs, heads)(*values)
    return np.array([[float(matrix[t, c]) for c in range(matrix.cols)] for t in range(matrix.rows)])


@functools.partial(jax.jit, static_argnums=1)
def _bpref(qkv, heads, dout):
  """bpref's dqkv and its magnitude bound [M_dq | M_dk | M_dv], one compilation per shape."""
  _, cache = attention.forward(qkv, heads)
  M = attention_bounds(cache, dout)
  return attention.grads(qkv, heads, dout), jnp.concatenate([M.dq, M.dk, M.dv], axis=-1)


@pytest.mark.parametrize("T, hs, heads", [(2, 1, 1), (2, 2, 2), (3, 1, 1)])
def test_proven_formula_evaluates_to_bpref(T, hs, heads):
  # bpref's float64 backward is within the rounding bound (A19) of the proven derivative.
  for seed in range(3):
    qkv, dout = _point(T, hs, heads, seed)
    exact = exact_derivative(qkv, dout, hs, heads)
    got, bound = (np.asarray(a)[0] for a in _bpref(jnp.asarray(qkv[None]), heads, jnp.asarray(dout[None])))
    tol = tolerance(np.float64, depth=1, inner=max(T, hs))
    assert np.all(np.abs(got - exact) <= tol * bound), (seed, np.max(np.abs(got - exact) / bound))


# ---------------------------------------------------------------- classic mistakes

MISTAKES = ("jacobian_missing", "jacobian_diagonal", "mask_after_softmax", "renormalised_constant",
            "future_leak", "scale_missing", "dq_dk_transposed", "k_v_swapped", "heads_interleaved")
"""The rows of proofs/attention.md section 5."""


def _softmax(S):
  e = np.exp(S - np.max(S, axis=-1, keepdims=True))
  return e / np.sum(e, axis=-1, keepdims=True)


def textbook(qkv, dout, heads, mistake=None):
  """dqkv of one batch row in NumPy float64, as people write it, with one mistake planted."""
  T, three_c = qkv.shape
  C = three_c // 3
  hs = C // heads
  causal = np.tril(np.ones((T, T), dtype=bool))

  def head(x, h):  # the channels of head h in a (T, C) array; a wrong reshape interleaves them
    if mistake == "heads_interleaved":
      return x.reshape(T, hs, heads)[:, :, h]
    return x.reshape(T, heads, hs)[:, h, :]

  dq_all, dk_all, dv_all = (np.zeros((T, heads, hs)) for _ in range(3))
  r = np.sqrt(hs)
  for h in range(heads):
    q, k, v = (head(qkv[:, i * C:(i + 1) * C], h) for i in range(3))
    dO = head(dout, h)
    S = q @ k.T / r
    full = _softmax(S)  # over every key, the future included
    Z = np.sum(np.where(causal, full, 0.0), axis=-1, keepdims=True)
    if mistake == "mask_after_softmax":
      P = np.where(causal, full, 0.0)
    else:
      P = _softmax(np.where(causal, S, -np.inf))  # = the renormalised masked full softmax
    dv = P.T @ dO
    dP = dO @ v.T
    if mistake == "jacobian_missing":
      dS = np.where(causal, dP, 0.0)
    elif mistake == "jacobian_diagonal":
      dS = P * (1 - P) * dP
    elif mistake == "mask_after_softmax":  # the exact backward of that forward
      g = np.where(causal, dP, 0.0)
      dS = full * (g - np.sum(g * full, axis=-1, keepdims=True))
    elif mistake == "renormalised_constant":  # P = mask * full / Z with Z held constant
      g = np.where(causal, dP, 0.0) / Z
      dS = full * (g - np.sum(g * full, axis=-1, keepdims=True))
    elif mistake == "future_leak":
      dS = full * (dP - np.sum(dP * full, axis=-1, keepdims=True))
    else:
      dS = P * (dP - np.sum(dP * P, axis=-1, keepdims=True))
    scale = 1.0 if mistake == "scale_missing" else 1 / r
    if mistake == "dq_dk_transposed":
      dq, dk = dS.T @ k * scale, dS @ q * scale
    else:
      dq, dk = dS @ k * scale, dS.T @ q * scale
    if mistake == "heads_interleaved":
      dq_all = dq_all.reshape(T, hs, heads)
      dk_all = dk_all.reshape(T, hs, heads)
      dv_all = dv_all.reshape(T, hs, heads)
      dq_all[:, :, h], dk_all[:, :, h], dv_all[:, :, h] = dq, dk, dv
    else:
      dq_all[:, h], dk_all[:, h], dv_all[:, h] = dq, dk, dv
  parts = [a.reshape(T, C) for a in (dq_all, dk_all, dv_all)]
  if mistake == "k_v_swapped":
    parts = [parts[0], parts[2], parts[1]]
  return np.concatenate(parts, axis=-1)


def test_textbook_without_a_mistake_is_the_derivative():
  qkv, dout = _point(2, 2, 2, seed=7)
  exact = exact_derivative(qkv, dout, 2, 2)
  assert max_norm_error(textbook(qkv, dout, 2), exact) <= gradient_tolerance(np.float64)


@pytest.mark.parametrize("mistake", MISTAKES)
def test_classic_mistake_differs_from_the_derivative(mistake):
  # T = 2, hs = 2, two heads: the smallest case where every mistake shows (hs = 1 hides the
  # scale, one head or hs = 1 the interleaving). The errors are of order 1, not rounding.
  qkv, dout = _point(2, 2, 2, seed=7)
  exact = exact_derivative(qkv, dout, 2, 2)
  assert max_norm_error(textbook(qkv, dout, 2, mistake), exact) > 1e-2


@pytest.mark.parametrize("mistake", ("mask_after_softmax", "renormalised_constant", "future_leak"))
def test_leaking_mistakes_charge_the_future(mistake):
  # With a cotangent on position 0 alone, the true gradient of the keys and values of position
  # 1 is exactly zero (position 0 never sees them); these mistakes give it a nonzero value.
  qkv, dout = _point(2, 2, 2, seed=7)
  dout[1] = 0.0
  exact = exact_derivative(qkv, dout, 2, 2)
  assert np.all(exact[1, 4:] == 0.0)
  assert np.all(textbook(qkv, dout, 2)[1, 4:] == 0.0)
  assert np.max(np.abs(textbook(qkv, dout, 2, mistake)[1, 4:])) > 1e-2
