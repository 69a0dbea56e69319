"""Symbolic proof of the conv2d backward (proofs/conv.md), and its classic mistakes.

Every input x, w, b and the output cotangent g = dC/dout are independent symbols; the loss
enters only through g, since dC/dtheta = sum g (dout/dtheta) for every C (proofs/test_symbolic.py).
The forward step is written from the definition, without a padded array: out[n, f, i, j] =
b[f] + sum_{c,p,q} w[f, c, p, q] x[n, c, S i + p - P, S j + q - P], a term being 0 where the
index falls outside x (the zero padding). sympy differentiates phi = sum(g * out) by every
entry of x, w and b; the handwritten (CV4)-(CV8) are transcribed on the same symbols, with the
padded array, the gathered windows, the scatter-add and the crop of the code. Both sides are
polynomials, and their difference expands to the zero polynomial: the equations hold for every
x, w, b and g of that size, stride and padding.

The classic mistakes of proofs/conv.md section 5 are planted one at a time in a NumPy backward
written as CS231n's loops, which without a mistake agrees with the proven derivative.
"""

import functools
import math

import jax
import numpy as np
import pytest
import sympy as sp

from bpref.layers import conv
from bpref.error import max_norm_error
from bpref.tolerance import gradient_tolerance, tolerance

SIZES = (  # (N, C, H, W, F, HH, WW, S, P)
    (1, 1, 3, 3, 1, 2, 2, 1, 0),   # overlapping windows
    (2, 1, 3, 2, 1, 2, 1, 1, 1),   # two images, padding, HH != WW
    (1, 2, 4, 3, 2, 2, 2, 2, 0),   # two channels and filters, stride 2; x's last column unread
    (1, 1, 4, 4, 1, 3, 3, 2, 1),   # stride 2 < HH: windows overlap; the last padded row unread
    (1, 1, 5, 5, 1, 2, 2, 3, 1),   # stride 3 >= HH: disjoint windows; x's last row unread
)
"""Every feature of the geometry: stride 1, 2, 3; pad 0 and 1; overlapping and disjoint
windows; rows read by no window; a batch and several channels and filters."""


def _out_size(size, taps, S, P):
  return 1 + (size + 2 * P - taps) // S


@functools.cache
def symbolic(N, C, H, W, F, HH, WW, S, P):
  """The symbols and the forward step from the definition, and sympy's derivatives of phi."""
  x = sp.MutableDenseNDimArray([sp.Symbol(f"x{n}_{c}_{r}_{s}") for n in range(N) for c in range(C)
                                for r in range(H) for s in range(W)], (N, C, H, W))
  w = sp.MutableDenseNDimArray([sp.Symbol(f"w{f}_{c}_{p}_{q}") for f in range(F) for c in range(C)
                                for p in range(HH) for q in range(WW)], (F, C, HH, WW))
  b = [sp.Symbol(f"b{f}") for f in range(F)]
  Ho, Wo = _out_size(H, HH, S, P), _out_size(W, WW, S, P)
  g = sp.MutableDenseNDimArray([sp.Symbol(f"g{n}_{f}_{i}_{j}") for n in range(N) for f in range(F)
                                for i in range(Ho) for j in range(Wo)], (N, F, Ho, Wo))

  def at(n, c, r, s):  # x outside its rows and columns: the zero padding
    return x[n, c, r, s] if 0 <= r < H and 0 <= s < W else 0

  phi = 0
  for n, f, i, j in np.ndindex(N, F, Ho, Wo):
    out = b[f] + sum(w[f, c, p, q] * at(n, c, S * i + p - P, S * j + q - P)
                     for c in range(C) for p in range(HH) for q in range(WW))
    phi += g[n, f, i, j] * out
  phi = sp.expand(phi)
  deriv = {"dx": {k: sp.diff(phi, x[k]) for k in np.ndindex(N, C, H, W)},
           "dw": {k: sp.diff(phi, w[k]) for k in np.ndindex(F, C, HH, WW)},
           "db": {(f,): sp.diff(phi, b[f]) for f in range(F)}}
  return dict(x=x, w=w, b=b, g=g, deriv=deriv, dims=(N, C, H, W, F, HH, WW, S, P), Ho=Ho, Wo=Wo)


def handwritten(net, flip=False):
  """(CV4)-(CV8) on the symbols, as the code computes them; ``flip`` rotates the kernel in dx."""
  N, C, H, W, F, HH, WW, S, P = net["dims"]
  x, w, g, Ho, Wo = net["x"], net["w"], net["g"], net["Ho"], net["Wo"]
  xp = {}  # (CV1): the padded input
  for n, c, r, s in np.ndindex(N, C, H + 2 * P, W + 2 * P):
    inside = P <= r < P + H and P <= s < P + W
    xp[n, c, r, s] = x[n, c, r - P, s - P] if inside else 0
  db = {(f,): sum(g[n, f, i, j] for n in range(N) for i in range(Ho) for j in range(Wo))
        for f in range(F)}  # (CV4)
  dw = {(f, c, p, q): sum(g[n, f, i, j] * xp[n, c, S * i + p, S * j + q] for n in range(N)
                          for i in range(Ho) for j in range(Wo))
        for f, c, p, q in np.ndindex(F, C, HH, WW)}  # (CV5)
  dxp = {k: 0 for k in xp}
  for n, c, i, j, p, q in np.ndindex(N, C, Ho, Wo, HH, WW):
    tap = (HH - 1 - p, WW - 1 - q) if flip else (p, q)
    dpatch = sum(g[n, f, i, j] * w[f, c, tap[0], tap[1]] for f in range(F))  # (CV6)
    dxp[n, c, S * i + p, S * j + q] += dpatch  # (CV7): scatter-add, overlaps accumulate
  dx = {(n, c, r, s): dxp[n, c, r + P, s + P] for n, c, r, s in np.ndindex(N, C, H, W)}  # (CV8)
  return {"dx": dx, "dw": dw, "db": db}


def _wrong(net, hand) -> list:
  return [(name, k) for name, entries in net["deriv"].items() for k, v in entries.items()
          if sp.expand(hand[name][k] - v) != 0]


@pytest.mark.parametrize("dims", SIZES, ids=["x".join(map(str, d)) for d in SIZES])
def test_handwritten_backward_equals_sympy_derivative(dims):
  net = symbolic(*dims)
  assert not _wrong(net, handwritten(net)), "entries that differ from sympy's derivative"


def test_the_check_sees_a_flipped_kernel():
  # The same check rejects dx computed with the kernel rotated by 180 degrees, so it is not vacuous.
  net = symbolic(*SIZES[0])
  wrong = _wrong(net, handwritten(net, flip=True))
  assert wrong and all(name == "dx" for name, _ in wrong)


def test_unread_rows_have_zero_derivative():
  # (5 + 2 - 2) mod 3 = 2 > pad = 1: the last row and column of x enter no window, and sympy's
  # derivative by them is the zero polynomial; so do row and column 1, which stride 3 > HH = 2
  # steps over. (3 - 2) mod 2 = 1 > 0 leaves x's last column out of SIZES[2].
  dx = symbolic(*SIZES[4])["deriv"]["dx"]
  for r in range(5):
    for s in range(5):
      assert (dx[0, 0, r, s] == 0) == (r in (1, 4) or s in (1, 4)), (r, s)
  dx = symbolic(*SIZES[2])["deriv"]["dx"]
  assert all(dx[0, c, r, 2] == 0 and dx[0, c, r, 1] != 0 for c in range(2) for r in range(4))


# ---------------------------------------------------------------- the proof evaluated

def _point(dims, seed):
  N, C, H, W, F, HH, WW, S, P = dims
  rng = np.random.default_rng(seed)
  Ho, Wo = _out_size(H, HH, S, P), _out_size(W, WW, S, P)
  return (rng.normal(size=(N, C, H, W)), rng.normal(size=(F, C, HH, WW)), rng.normal(size=F),
          rng.normal(size=(N, F, Ho, Wo)))


def exact_derivative(dims, x, w, b, dout):
  """sympy's derivatives at a float point, evaluated exactly (each float is a rational)."""
  net = symbolic(*dims)
  values = {}
  for sym_array, val in ((net["x"], x), (net["w"], w), (net["g"], dout)):
    for k in np.ndindex(val.shape):
      values[sym_array[k]] = sp.Rational(float(val[k]))
  out = {}
  for name, entries in net["deriv"].items():
    shape = {"dx": x.shape, "dw": w.shape, "db": b.shape}[name]
    arr = np.zeros(shape)
    for k, v in entries.items():
      arr[k] = float(v.xreplace(values))
    out[name] = arr
  return out


_grads = jax.jit(conv.grads, static_argnames=("stride", "pad"))


@pytest.mark.parametrize("dims", SIZES[2:4], ids=["x".join(map(str, d)) for d in SIZES[2:4]])
def test_proven_formula_evaluates_to_bpref(dims):
  # bpref's float64 backward is within the rounding bound (CV13) of the proven derivative.
  N, C, H, W, F, HH, WW, S, P = dims
  for seed in range(2):
    x, w, b, dout = _point(dims, seed)
    exact = exact_derivative(dims, x, w, b, dout)
    ours = _grads(x, w, b, dout, stride=S, pad=P)
    bounds = _grads(np.abs(x), np.abs(w), np.abs(b), np.abs(dout), stride=S, pad=P)
    k = max(F * math.ceil(HH / S) * math.ceil(WW / S), N * dout.shape[2] * dout.shape[3])
    tol = tolerance(np.float64, depth=1, inner=k)
    for name, got, M in zip(("dx", "dw", "db"), ours, bounds):
      assert np.all(np.abs(np.asarray(got) - exact[name]) <= tol * np.asarray(M)), (seed, name)


# ---------------------------------------------------------------- classic mistakes

MISTAKES = ("kernel_flipped", "stride_off_by_one", "pad_off_by_one", "batch_sum_missing",
            "overlap_overwritten", "db_not_summed")
"""The rows of proofs/conv.md section 5."""


def textbook(x, w, dout, S, P, mistake=None):
  """(dx, dw, db) as CS231n's conv_backward_naive computes them, with one mistake planted."""
  N, C, H, W = x.shape
  F, _, HH, WW = w.shape
  _, _, Ho, Wo = dout.shape
  xp = np.pad(x, ((0, 0), (0, 0), (P, P), (P, P)))
  dxp, dw, db = np.zeros_like(xp), np.zeros_like(w), np.zeros(F)
  step = S - 1 if mistake == "stride_off_by_one" else S
  kernel = w[:, :, ::-1, ::-1] if mistake == "kernel_flipped" else w
  for n in range(N):
    for f in range(F):
      for i in range(Ho):
        for j in range(Wo):
          r, s = i * step, j * step
          if mistake != "batch_sum_missing" or n == 0:
            dw[f] += dout[n, f, i, j] * xp[n, :, r:r + HH, s:s + WW]
          if mistake != "db_not_summed" or (i, j) == (0, 0):
            db[f] += dout[n, f, i, j]
          if mistake == "overlap_overwritten":  # = where += was meant, summed over the filters
            if f == F - 1:
              dxp[n, :, r:r + HH, s:s + WW] = np.einsum("f,fcpq->cpq", dout[n, :, i, j], kernel)
          else:
            dxp[n, :, r:r + HH, s:s + WW] += dout[n, f, i, j] * kernel[f]
  top = P - 1 if mistake == "pad_off_by_one" else P
  return dxp[:, :, top:top + H, top:top + W], dw, db


MISTAKE_DIMS = (2, 1, 4, 3, 2, 3, 2, 2, 1)
"""Two images and filters, stride 2 < HH = 3 (overlapping windows), pad 1: each mistake shows."""


def test_textbook_without_a_mistake_is_the_derivative():
  x, w, b, dout = _point(MISTAKE_DIMS, seed=7)
  exact = exact_derivative(MISTAKE_DIMS, x, w, b, dout)
  for name, got in zip(("dx", "dw", "db"), textbook(x, w, dout, 2, 1)):
    assert max_norm_error(got, exact[name]) <= gradient_tolerance(np.float64), name


@pytest.mark.parametrize("mistake", MISTAKES)
def test_classic_mistake_differs_from_the_derivative(mistake):
  x, w, b, dout = _point(MISTAKE_DIMS, seed=7)
  exact = exact_derivative(MISTAKE_DIMS, x, w, b, dout)
  got = dict(zip(("dx", "dw", "db"), textbook(x, w, dout, 2, 1, mistake)))
  assert max(max_norm_error(got[k], exact[k]) for k in got) > 1e-2
