"""The exact referee of causal self-attention: the forward pass in mpmath, the gradient by
high-precision central differences.

Every float64/float32 input is converted to an ``mpmath.mpf`` exactly (a binary float is a
rational number). ``forward`` evaluates the layer from its definition at ``dps`` significant
digits (50 by default), position by position and head by head: for each t, the scores
S_ts = sum_d q_td k_sd / sqrt(hs) of the positions s <= t only (the causal mask is the range of
the loop), P_ts = exp(S_ts) / sum_{r <= t} exp(S_tr) (mpf has no overflow: no shift is needed),
and out_t = sum_{s <= t} P_ts v_s, head h read from and written to channels h hs .. (h + 1) hs - 1
of each third of qkv (llm.c's layout).

``grads`` differentiates the scalar L(qkv) = sum(dout * forward(qkv)) numerically, one entry at
a time, by the central difference (L(x + h e_i) - L(x - h e_i)) / 2h at ``GRAD_DPS`` = 60 digits
with h = 1e-20: the truncation error is h^2 |L'''| / 6, about 1e-40 relative for the small inputs
the referee is meant for, and the cancellation costs 1e-60 / 1e-20 = 1e-40, so the result is
exact to far below float64's u. Nothing of the backward formula is used: no softmax Jacobian, no
transposes. It shares no code with ``bpref.layers``.

Arrays are NumPy object arrays of mpf. The cost is O(B T 3C) forward passes of O(B heads T^2 hs)
high-precision operations each: use it for T, C up to a few, B of 1 or 2.
"""

from __future__ import annotations

import mpmath
import numpy as np

from bpref.witnesses.referee import error, to_float

__all__ = ["DEFAULT_DPS", "GRAD_DPS", "STEP", "error", "forward", "grads", "to_float"]
"""``error`` (||actual - exact||_inf / ||exact||_inf, in mpmath) and ``to_float`` (mpf arrays
rounded to a dtype) are the general referee's, re-exported."""

DEFAULT_DPS = 50
GRAD_DPS = 60
STEP = "1e-20"


def _mp_array(a) -> np.ndarray:
  a = np.asarray(a)
  if not np.issubdtype(a.dtype, np.floating):
    raise TypeError(f"attention referee: inputs must be float arrays; got dtype {a.dtype}")
  return np.vectorize(lambda x: mpmath.mpf(float(x)), otypes=[object])(a.astype(np.float64))


def _sizes(shape, heads) -> tuple:
  if len(shape) != 3 or shape[2] % 3 or (shape[2] // 3) % heads or shape[1] < 1:
    raise ValueError(f"attention referee: qkv must have shape (B, T, 3C), T >= 1, C divisible by "
                     f"heads = {heads}; got shape {tuple(shape)}")
  B, T, three_c = shape
  C = three_c // 3
  return B, T, C, C // heads


def _forward_mp(x: np.ndarray, heads: int) -> np.ndarray:
  """out (B, T, C) of mpf from qkv x (B, T, 3C) of mpf, at the working precision."""
  B, T, C, hs = _sizes(x.shape, heads)
  root = mpmath.sqrt(hs)
  out = np.empty((B, T, C), dtype=object)
  for b in range(B):
    for h in range(heads):
      lo = h * hs
      for t in range(T):
        q = x[b, t, lo:lo + hs]
        scores = [mpmath.fsum(q[d] * x[b, s, C + lo + d] for d in range(hs)) / root
                  for s in range(t + 1)]  # s <= t only: the causal mask
        weights = [mpmath.exp(v) for v in scores]
        total = mpmath.fsum(weights)
        for d in range(hs):
          out[b, t, lo + d] = mpmath.fsum(w * x[b, s, 2 * C + lo + d]
                                          for s, w in enumerate(weights)) / total
  return out


def forward(qkv, heads: int, *, dps: int = DEFAULT_DPS) -> np.ndarray:
  """out of shape (B, T, C), an object array of mpf, from qkv of shape (B, T, 3C) at ``dps`` digits."""
  with mpmath.workdps(dps):
    return _forward_mp(_mp_array(qkv), heads)


def grads(qkv, heads: int, dout, *, dps: int = GRAD_DPS, step: str = STEP) -> np.ndarray:
  """dl/dqkv for l = sum(dout * out): central differences at ``dps`` digits, an mpf array (B, T, 3C).

  Args:
    qkv: shape (B, T, 3C), float.
    heads: the number of heads.
    dout: the cotangent dl/dout, shape (B, T, C), float.
    dps: working digits; the step h = ``step`` must stay far above 10^-dps.
  """
  with mpmath.workdps(dps):
    x = _mp_array(qkv)
    B, T, C, _ = _sizes(x.shape, heads)
    g = _mp_array(dout)
    if g.shape != (B, T, C):
      raise ValueError(f"attention referee: dout must have shape {(B, T, C)}; got {g.shape}")
    h = mpmath.mpf(step)

    def loss(y):
      return mpmath.fsum((g * _forward_mp(y, heads)).ravel())  # l = sum(dout * out)

    out = np.empty(x.shape, dtype=object)
    for i in np.ndindex(*x.shape):
      up, down = x.copy(), x.copy()
      up[i] += h
      down[i] -= h
      out[i] = (loss(up) - loss(down)) / (2 * h)
    return out
