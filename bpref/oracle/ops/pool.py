"""The maxpool2d, avgpool2d and dropout kinds: a candidate's backward against
``bpref.layers.pool`` and ``bpref.layers.dropout``.

maxpool2d
---------
The candidate is called as ``candidate(x, dout) -> dx``: x of shape (N, C, H, W), dout of the
pooled shape (N, C, H_out, W_out), windows of pool x pool entries every ``stride`` rows and
columns, no padding, H_out = (H - pool) // stride + 1 (rows past the last whole window belong to
none). pool and stride are fixed for a check and named by the kind's ``name``, "p{pool}s{stride}":
"p2s2" (the default), "p2s1", "p3s2", "p3s3", "p3s1", or any other pair. With
``signature="cs231n"`` it is called as CS231n's ``max_pool_backward_naive(dout, cache)``, cache =
(x, {"pool_height": pool, "pool_width": pool, "stride": stride}).

Ties: bpref sends a window's dout to its first maximum in row-major order (np.argmax, PyTorch's
CPU max_pool2d, JAX's reduce_window). A candidate that sends it to another single tied maximum
(the last, the first in column-major order) or splits it evenly among the ties (jnp.max's
autodiff, CS231n's ``max_pool_backward_reshape``) follows another valid subgradient convention:
it passes with a convention note, and fails (kind "convention") with ``strict_conventions``.
Sending the whole dout to every tied maximum is a bug (``all_ties``).

The rounding model (proofs/pool.md, section 4): out is exact (a maximum rounds nothing), and
each entry of dx is a sum of at most K = ceil(pool / stride)^2 entries of dout, one per window
that covers it, so

  M_dx = the same routing of |dout| (MP3),    k = K.

The value families: plain, normal, spread (magnitudes 1e-3 to 1e3), kink (entries from
{0, -0, 1}: ties in most windows) and saturated, which this kind gives its own meaning: every
entry negative, where a running maximum started at 0 saturates there and no entry is chosen.

avgpool2d
---------
The candidate is called as ``candidate(x, dout) -> dx`` on the windows of maxpool2d, named the
same way, for out = the mean of each window (PyTorch's ``avg_pool2d`` without padding). Nothing
is chosen, so there are no ties and no conventions. The rounding model (proofs/pool.md, section
5): each entry of dx sums at most K = ceil(pool / stride)^2 shares dout / pool^2, each rounded once
(twice for dout times a rounded 1 / pool^2), so

  M_dx = the same sharing of |dout| (AP2),    k = K + 2;

out sums pool^2 entries and divides once, M_out = the mean of |x| over the window, k = pool^2 + 1.
The value families: plain, normal and spread (the kink and saturated families of max pooling
mean nothing to a mean).

dropout
-------
The candidate is called as ``candidate(x, mask, dout) -> dx`` for inverted dropout out =
x * mask / (1 - p), with the 0/1 mask the forward step drew handed in (no randomness in the
check). p is fixed for a check and named by the kind's ``name``, "p{p}": "p0.5" (the default),
"p0", "p0.1", "p0.9", or any p in [0, 1). ``takes`` says how the mask is handed: "float" (of x's
dtype, the default) or "bool". The masks keep about half of the units whatever p, since (DO2)
holds for every 0/1 mask and a mask with zeros is what tells a backward that ignores it; the
kink family drops whole rows and keeps whole rows, and puts exact zeros in dout. A case whose
mask drops every unit checks nothing (dx = 0 exactly) and is skipped as vacuous.

CS231n's ``dropout_backward(dout, cache)`` holds cache = (dropout_param, mask) with a mask
already scaled by 1/q and a ``p`` that is the keep probability q = 1 - p (its 2017 and later
assignments); wrap it for ``name="p0.5"`` as

  lambda x, mask, dout: dropout_backward(dout, ({"p": 0.5, "mode": "train"}, mask / 0.5))

The rounding model: dx = dout * m / (1 - p) is one product, one quotient (or a product with a
rounded 1 / (1 - p)), and 1 - p of a p that may be rounded to the dtype first, which a p near 1
amplifies by p / (1 - p), so

  M_dx = |dout| m / (1 - p)^2,    k = 3.
"""

from __future__ import annotations

import math
import re

import jax
import numpy as np

from bpref import compilation
from bpref import tolerance as _tolerance
from bpref.layers import dropout as _dropout
from bpref.layers import pool as _pool
from bpref.oracle.diagnosis import Finding
from bpref.oracle.ops.record import (Label, Model, OpKind, OpTruth, bucket, error, plain, scaled,
                                     tiled, unit_and_floor)


# ---------------------------------------------------------------- maxpool2d: windows in NumPy

def pool_stride(name: str, kind: str = "maxpool2d") -> tuple:
  """(pool, stride) of a pooling name "p{pool}s{stride}"; ValueError for another spelling."""
  found = re.fullmatch(r"p([1-9][0-9]*)s([1-9][0-9]*)", name) if isinstance(name, str) else None
  if found is None:
    raise ValueError(f"{name!r} is not a name of kind {kind!r}: name the window side and the "
                     f"stride as p{{pool}}s{{stride}}, e.g. {', '.join(Pool2d.names)} (default "
                     f"{Pool2d.names[0]})")
  return int(found.group(1)), int(found.group(2))


def _out_sizes(shape, pool, stride) -> tuple:
  """(H_out, W_out); 0 where the input is smaller than one window."""
  return tuple((n - pool) // stride + 1 if n >= pool else 0 for n in shape[-2:])


def _windows(x, pool, stride):
  """x's windows, (N, C, H_out, W_out, pool^2), each window's entries in row-major order."""
  out_h, out_w = _out_sizes(x.shape, pool, stride)
  rows = (np.arange(out_h) * stride)[:, None] + np.arange(pool)  # (H_out, pool)
  cols = (np.arange(out_w) * stride)[:, None] + np.arange(pool)
  win = x[:, :, rows[:, None, :, None], cols[None, :, None, :]]  # (N, C, H_out, W_out, pool, pool)
  return win.reshape(win.shape[:4] + (pool * pool,))


def _routed(weights, pool, stride, shape):
  """dx from per-window weights (N, C, H_out, W_out, pool^2): entry (a, b) of window (i, j) adds
  its weight to dx[n, c, i s + a, j s + b] (MP3)."""
  dx = np.zeros(shape)
  out_h, out_w = weights.shape[2:4]
  if out_h == 0 or out_w == 0:
    return dx
  for k in range(pool * pool):
    a, b = divmod(k, pool)
    dx[:, :, a:a + (out_h - 1) * stride + 1:stride, b:b + (out_w - 1) * stride + 1:stride] += weights[..., k]
  return dx


def _one_hot(index, size):
  return (np.arange(size) == index[..., None]).astype(np.float64)


def _first(win):
  """bpref's choice (MP2): the first maximum of each window in row-major order."""
  return _one_hot(np.argmax(win, axis=-1), win.shape[-1])


def _last(win):
  return _one_hot(win.shape[-1] - 1 - np.argmax(win[..., ::-1], axis=-1), win.shape[-1])


def _column_major(win, pool, last: bool):
  """The first (or last) maximum of each window with its entries read column by column."""
  cols = win.reshape(win.shape[:-1] + (pool, pool)).swapaxes(-1, -2).reshape(win.shape)
  k = (win.shape[-1] - 1 - np.argmax(cols[..., ::-1], axis=-1)) if last else np.argmax(cols, axis=-1)
  b, a = np.divmod(k, pool)  # entry k of column-major order is (a, b) = (k % pool, k // pool)
  return _one_hot(a * pool + b, win.shape[-1])


def _ties(win):
  return (win == win.max(axis=-1, keepdims=True)).astype(np.float64)


@compilation.jit(static_argnums=(2, 3))
def _maxpool_padded(x, dout, pool, stride):
  out, cache = _pool.forward(x, pool, stride)  # (MP1)
  return out, _pool.backward(cache, dout)  # (MP2), (MP3)


@compilation.jit(static_argnums=(2, 3))
def _avgpool_padded(x, dout, pool, stride):
  out, cache = _pool.avg_forward(x, pool, stride)  # (AP1)
  return out, _pool.avg_backward(cache, dout)  # (AP2)


def _bpref_pool(program, x, dout, pool, stride):
  """bpref's (out, dx) in float64 by ``program`` (``_maxpool_padded``, ``_avgpool_padded``).
  The channels are rows of one batch axis padded to a bucket, and H and W to one bucketed side:
  the windows of x lie inside the unpadded part, and the extra windows get dout = 0, which adds
  an exact 0 to dx."""
  N, C, H, W = x.shape
  n = N * C
  out_h, out_w = _out_sizes(x.shape, pool, stride)
  side, rows = bucket(max(H, W)), bucket(n)
  xp = np.zeros((rows, 1, side, side))
  xp[:n, 0, :H, :W] = x.reshape(n, H, W)
  dp = np.zeros(_pool.output_shape(xp.shape, pool, stride))
  dp[:n, 0, :out_h, :out_w] = dout.reshape(n, out_h, out_w)
  with jax.enable_x64(True):
    out, dx = program(xp, dp, pool, stride)
  return (np.asarray(out, np.float64)[:n, 0, :out_h, :out_w].reshape(N, C, out_h, out_w),
          np.asarray(dx, np.float64)[:n, 0, :H, :W].reshape(N, C, H, W))


TIE_NOTE = ("convention note: where a window holds its maximum more than once, the candidate {how}; "
            "bpref sends the window's dout to the first tied maximum in row-major order (np.argmax, "
            "PyTorch's max_pool2d, JAX's reduce_window); both are valid subgradients")


# ---------------------------------------------------------------- the pooling records

class Pool2d(OpKind):
  """What max and average pooling share: pool x pool windows of (N, C, H, W), pool and stride
  named "p{pool}s{stride}", the candidate called as ``candidate(x, dout) -> dx``."""

  takes = ("x",)
  layouts = ("nchw",)
  names = ("p2s2", "p2s1", "p3s2", "p3s3", "p3s1")
  arguments = ("x", "dout")
  returns = ("dx",)
  dims_names = ("N", "C", "H", "W")

  # ---- options
  def validate(self, spec):
    pool, stride = pool_stride(self.names[0] if spec.name is None else spec.name, self.name)
    takes = spec.takes or self.takes[0]
    if takes not in self.takes:
      raise ValueError(f"takes={takes!r} is not valid for kind {self.name!r}; valid: x")
    layout = spec.layout or self.layouts[0]
    if layout not in self.layouts:
      raise ValueError(f"layout={layout!r} is not valid for kind {self.name!r}: x is (N, C, H, W), "
                       "layout 'nchw'; transpose an (N, H, W, C) candidate's arrays in a wrapper")
    if spec.signature not in self.signatures:
      raise ValueError(f"signature={spec.signature!r} is not valid for kind {self.name!r}; valid: "
                       f"{', '.join(self.signatures)}")
    return spec._replace(name=f"p{pool}s{stride}", takes=takes, layout=layout)

  def describe(self, spec):
    pool, stride = pool_stride(spec.name, self.name)
    sig = ", signature cs231n" if spec.signature == "cs231n" else ""
    return f"{self.name} {pool}x{pool} windows, stride {stride} ({spec.dtype}{sig})"

  def rerun_labels(self, spec, verdict_kind, origin):
    """A candidate that needs its windows to tile the input ((H - K) a multiple of S, as
    mygrad's max_pool does) may run on the same case with H and W raised until they do."""
    P, S = pool_stride(spec.name)
    if origin is None or verdict_kind not in ("exception", "shape"):
      return []
    N, C, H, W = origin.dims
    H2, W2 = tiled(H, P, S), tiled(W, P, S)
    if (H2, W2) == (H, W):
      return []
    return [(origin._replace(dims=(N, C, H2, W2)), f"the same case with H, W = {H2}, {W2}, "
             "where the windows tile the input ((H - K) a multiple of S)",
             f"untiled (H, W = {H}, {W}) ")]

  # ---- cases
  def probe_dims(self, spec):
    P, S = pool_stride(spec.name)
    shapes = [(1, 1, P, P), (2, 3, P + S, P + S), (1, 2, P, P + 2 * S),
              (2, 1, P + 2 * S + 1, P + S + 1), (1, 1, P + 7 * S, P + 7 * S)]
    return shapes, [(2, 2, P + S, P + 2 * S), (1, 3, P + 2 * S, P + S)]

  def random_dims(self, spec, rng):
    P, _ = pool_stride(spec.name)
    N = int(rng.integers(1, spec.max_batch + 1))
    C = int(rng.integers(1, 4))
    H, W = (P + int(v) for v in rng.integers(0, spec.max_width, 2))
    return (N, C, H, W)

  def draw(self, spec, label):
    rng = self.rng(spec, label)
    pool, stride = pool_stride(spec.name)
    shape = label.dims
    out_shape = shape[:2] + _out_sizes(shape, pool, stride)
    fam = label.family
    if fam == "plain":
      return {"x": plain(rng, shape), "dout": plain(rng, out_shape)}
    if fam == "spread":
      return {"x": scaled(rng, shape, 1e-3, 1e3), "dout": scaled(rng, out_shape, 1e-3, 1e3)}
    if fam == "kink":  # ties in most windows, 0 and -0 among them
      x = rng.choice(np.array([0.0, -0.0, 1.0]), size=shape)
    elif fam == "saturated":  # every entry negative
      x = -np.exp(rng.normal(size=shape))
    else:
      x = rng.normal(size=shape)
    return {"x": x, "dout": rng.normal(size=out_shape)}

  # ---- bpref's answer
  def answer(self, spec, case, program):
    """(out, dx) of bpref's ``program`` (``_bpref_pool``); zeros for an input smaller than one
    window (a shrunk case), which has nothing to route."""
    x, dout = case.arrays["x"], case.arrays["dout"]
    pool, stride = pool_stride(spec.name, self.name)
    out_h, out_w = _out_sizes(x.shape, pool, stride)
    if out_h and out_w:
      return _bpref_pool(program, x, dout, pool, stride)
    return np.zeros(x.shape[:2] + (out_h, out_w)), np.zeros(x.shape)

  # ---- the candidate's side
  def pool_param(self, spec) -> dict:
    """CS231n's pool_param for the spec's window and stride."""
    pool, stride = pool_stride(spec.name)
    return {"pool_height": pool, "pool_width": pool, "stride": stride}

  def arg_names(self, spec):
    return ("dout", "cache") if spec.signature == "cs231n" else self.arguments

  def args(self, spec, case):
    dt = np.dtype(spec.dtype)
    x, dout = case.arrays["x"].astype(dt), case.arrays["dout"].astype(dt)
    return (dout, (x, self.pool_param(spec))) if spec.signature == "cs231n" else (x, dout)

  def forward_args(self, spec, case):
    x = case.arrays["x"].astype(np.dtype(spec.dtype))
    return (x, self.pool_param(spec)) if spec.signature == "cs231n" else (x,)

  def call_text(self, spec):
    return "dout, (x, pool_param)" if spec.signature == "cs231n" else "x, dout"

  def framework_call(self, spec, args):
    x, dout = (args[1][0], args[0]) if spec.signature == "cs231n" else args
    return [x], [True], dout

  def extra_confirmations(self, spec, label):
    """A case with more windows in each direction, so that overlaps (and ties) occur on it."""
    _, stride = pool_stride(spec.name, self.name)
    N, C, H, W = label.dims
    return [Label((N + 1, C + 2, H + 2 * stride + 1, W + 2 * stride + 1), label.family,
                  label.seed + 4)]


class MaxPool2d(Pool2d):
  """Max pooling over pool x pool windows of (N, C, H, W), pool and stride named "p{pool}s{stride}"."""

  name = "maxpool2d"
  summary = ("out = max over each pool x pool window of x (N, C, H, W), stride s: dx = each "
             "window's dout at its first maximum, summed where windows overlap")
  signatures = ("bpref", "cs231n")
  options = ("signature", "strict_conventions")
  families = ("plain", "normal", "spread", "kink", "saturated")
  forward_name = "out = maxpool(x)"

  def compute(self, spec, case, variant=None):
    x, dout = case.arrays["x"], case.arrays["dout"]
    pool, stride = pool_stride(spec.name)
    _, floor = unit_and_floor(spec.dtype)
    K = math.ceil(pool / stride) ** 2  # the most windows that cover one entry
    out, dx = self.answer(spec, case, _maxpool_padded)
    M = _routed(_first(_windows(x, pool, stride)) * np.abs(dout)[..., None], pool, stride, x.shape)
    return OpTruth({"dx": dx}, {"dx": M + K * floor},
                   _tolerance.tolerance(spec.dtype, depth=1, inner=K), None, 0.0, out,
                   np.abs(out) + floor, _tolerance.forward_tolerance(spec.dtype, depth=1, inner=1))

  # ---- diagnosis
  def models(self, spec, case, truth):
    x, dout = case.arrays["x"], case.arrays["dout"]
    pool, stride = pool_stride(spec.name)
    win = _windows(x, pool, stride)
    first, d = _first(win), dout[..., None]

    def routed(weights):
      return {"dx": _routed(weights * d, pool, stride, x.shape)}

    channel_max = x.max(axis=(2, 3), keepdims=True)[..., None]  # (N, C, 1, 1, 1)
    top = win.max(axis=-1, keepdims=True)
    out = [
        Model("all_ties", "every tied maximum of a window gets the window's dout (a mask "
              "x == max without choosing one entry): the gradient counted once per tie (MP2)",
              routed(_ties(win))),
        Model("mask_from_output", "the mask compares each window with the maximum of the whole "
              "channel (x == x[n, c].max()), not with the window's own: a window without the "
              "channel's maximum gets no gradient (MP2)", routed((win == channel_max) * 1.0)),
    ]
    if stride < pool:
      out += [
          Model("overlap_overwritten", "overlapping windows assign dx at their maximum instead of "
                "adding to it (dx[...] = dout where += was meant): an entry that is the maximum "
                "of several windows keeps the last window's dout only (MP3)",
                {"dx": _assigned(win, dout, pool, stride, x.shape)}),
          Model("overlap_overwritten", "each window assigns its whole slice of dx (dx[window] = "
                "mask * dout): a later overlapping window overwrites an earlier window's gradient "
                "with its zeros (MP3)", {"dx": _slices_assigned(first, dout, pool, stride, x.shape)}),
      ]
    out += [
        Model("max_init_zero", "the running maximum starts at 0, not at the window's first entry "
              "(or -inf): a window whose entries are all <= 0 gets no gradient (MP1)",
              routed(first * (top > 0))),
        Model("max_init_zero", "the maximum is taken together with 0 (a running maximum started "
              "at 0): a window whose entries are all negative gets no gradient (MP1)",
              routed(first * (top >= 0))),
    ]
    return out  # a model equal to bpref's answer here is kept: a confirmation case then checks
    # that the candidate is right there too

  def convention(self, spec, case, truth, outputs):
    """A note when the candidate routes each window's dout to another of its tied maxima (or
    splits it evenly among them) and that is the only difference."""
    x, dout = case.arrays["x"], case.arrays["dout"]
    pool, stride = pool_stride(spec.name)
    win = _windows(x, pool, stride)
    ties = _ties(win)
    if not np.any(ties.sum(axis=-1) > 1):
      return ""
    got, d = outputs["dx"], dout[..., None]
    _, floor = unit_and_floor(spec.dtype)
    options = [("sends it to the last tied maximum in row-major order", _last(win)),
               ("sends it to the first tied maximum in column-major order",
                _column_major(win, pool, last=False)),
               ("sends it to the last tied maximum in column-major order",
                _column_major(win, pool, last=True)),
               ("splits it evenly among the tied maxima (as jnp.max's autodiff and CS231n's "
                "max_pool_backward_reshape do)", ties / ties.sum(axis=-1, keepdims=True))]
    if stride >= pool:  # windows do not overlap: any one tied maximum per window
      gathered = np.where(ties > 0, np.abs(_windows(got, pool, stride) - d), np.inf)
      options.append(("sends it to one of the tied maxima, not always the first",
                      _one_hot(np.argmin(gathered, axis=-1), win.shape[-1])))
    for how, weights in options:
      alt = _routed(weights * d, pool, stride, x.shape)
      bound = np.maximum(truth.bounds["dx"], _routed(weights * np.abs(d), pool, stride, x.shape) + floor)
      if error(got, alt, bound) <= truth.tol:
        return TIE_NOTE.format(how=how)
    return ""

  def slips(self, spec):
    out = super().slips(spec)
    if spec.signature == "bpref":
      out.append(("signature", "the candidate takes (dout, cache), as CS231n's "
                  "max_pool_backward_naive: pass signature='cs231n' (--signature cs231n)",
                  "called as candidate(dout, (x, pool_param)), the candidate is right",
                  spec._replace(signature="cs231n")))
    else:
      out.append(("signature", "the candidate takes bpref's (x, dout), not CS231n's (dout, "
                  "cache): drop signature='cs231n'", "called as candidate(x, dout), the "
                  "candidate is right", spec._replace(signature="bpref")))
    return out


def _assigned(win, dout, pool, stride, shape):
  """dx[n, c, first maximum of window (i, j)] = dout[n, c, i, j], windows in row-major order:
  the last window to choose an entry wins."""
  dx = np.zeros(shape)
  N, C, out_h, out_w = dout.shape
  first = np.argmax(win, axis=-1)
  n, c = np.meshgrid(np.arange(N), np.arange(C), indexing="ij")
  for i in range(out_h):
    for j in range(out_w):
      a, b = np.divmod(first[:, :, i, j], pool)
      dx[n, c, i * stride + a, j * stride + b] = dout[:, :, i, j]
  return dx


def _slices_assigned(weights, dout, pool, stride, shape):
  """dx[n, c, window (i, j)] = the window's weights (N, C, H_out, W_out, pool^2; a one-hot of its
  first maximum, say) * dout[n, c, i, j], windows in row-major order: each window's slice
  overwrites what earlier windows put there."""
  dx = np.zeros(shape)
  N, C, out_h, out_w = dout.shape
  for i in range(out_h):
    for j in range(out_w):
      dx[:, :, i * stride:i * stride + pool, j * stride:j * stride + pool] = (
          weights[:, :, i, j].reshape(N, C, pool, pool) * dout[:, :, i, j, None, None])
  return dx


# ---------------------------------------------------------------- avgpool2d: the record

class AvgPool2d(Pool2d):
  """Average pooling over pool x pool windows of (N, C, H, W), pool and stride named
  "p{pool}s{stride}"."""

  name = "avgpool2d"
  summary = ("out = mean over each pool x pool window of x (N, C, H, W), stride s: dx = each "
             "window's dout / pool^2 at every entry of the window, summed where windows overlap")
  families = ("plain", "normal", "spread")
  forward_name = "out = avgpool(x)"

  def compute(self, spec, case, variant=None):
    x, dout = case.arrays["x"], case.arrays["dout"]
    pool, stride = pool_stride(spec.name)
    _, floor = unit_and_floor(spec.dtype)
    k = math.ceil(pool / stride) ** 2 + 2  # K shares, each rounded once or twice (proofs/pool.md, 5)
    out, dx = self.answer(spec, case, _avgpool_padded)
    win = _windows(x, pool, stride)
    M = _routed(np.full(win.shape, 1 / (pool * pool)) * np.abs(dout)[..., None], pool, stride,
                x.shape)  # (AP2) on |dout|
    M_out = np.abs(win).mean(axis=-1)
    return OpTruth({"dx": dx}, {"dx": M + k * floor},
                   _tolerance.tolerance(spec.dtype, depth=1, inner=k), None, 0.0, out,
                   M_out + floor, _tolerance.forward_tolerance(spec.dtype, depth=1,
                                                               inner=pool * pool + 1))

  # ---- diagnosis
  def models(self, spec, case, truth):
    x, dout = case.arrays["x"], case.arrays["dout"]
    pool, stride = pool_stride(spec.name)
    win = _windows(x, pool, stride)
    d = dout[..., None]

    def shared(weights):
      return {"dx": _routed(weights * d, pool, stride, x.shape)}

    ones = np.ones(win.shape)
    out = [
        Model("scale_missing", "each entry of a window gets the whole dout, not dout / pool^2: "
              "the factor 1 / pool^2 of the mean is missing (AP2)", shared(ones)),
        Model("scale_by_side", "each entry of a window gets dout / pool, not dout / pool^2: the "
              "window's side in place of its size (AP2)", shared(ones / pool)),
        Model("max_routing", "each window's whole dout goes to its first maximum, as in max "
              "pooling: the backward step of max pooling, not of the mean (AP2)",
              shared(_first(win))),
    ]
    if stride < pool:
      out.append(Model("overlap_overwritten", "each window assigns its share to its slice of dx "
                       "(dx[window] = dout / pool^2) instead of adding it: where windows overlap "
                       "an entry keeps the last window's share only (AP2)",
                       {"dx": _slices_assigned(ones, dout / (pool * pool), pool, stride,
                                               x.shape)}))
    return out


# ---------------------------------------------------------------- dropout

def drop_probability(name: str) -> float:
  """p of a dropout name "p{p}" with 0 <= p < 1; ValueError for another spelling."""
  text = name[1:] if isinstance(name, str) and name.startswith("p") else ""
  try:
    p = float(text)
  except ValueError:
    p = math.nan
  if not (re.fullmatch(r"[0-9.eE+-]+", text) and 0 <= p < 1):
    raise ValueError(f"{name!r} is not a name of kind 'dropout': name the drop probability p, "
                     f"0 <= p < 1, as p{{p}}, e.g. {', '.join(Dropout.names)} (default "
                     f"{Dropout.names[0]}); for CS231n's keep probability q give p = 1 - q")
  return p


def _p_name(p: float) -> str:
  short = f"{p:g}"
  return f"p{short if float(short) == p else repr(p)}"


@compilation.jit(static_argnums=3)
def _dropout_padded(x, mask, dout, p):
  return _dropout.forward(x, mask, p), _dropout.backward(mask, p, dout)  # (DO1), (DO2)


def _bpref_dropout(x, mask, dout, p):
  """bpref's (out, dx) in float64, the entries flattened and padded to a bucket of at least 64
  entries, so that a default search compiles once (a 0 mask entry adds nothing)."""
  n = x.size
  size = max(64, bucket(n))

  def padded(v):
    out = np.zeros(size)
    out[:n] = v.ravel()
    return out

  with jax.enable_x64(True):
    out, dx = _dropout_padded(padded(x), padded(mask), padded(dout), float(p))
  return (np.asarray(out, np.float64)[:n].reshape(x.shape),
          np.asarray(dx, np.float64)[:n].reshape(x.shape))


class Dropout(OpKind):
  """Inverted dropout with a given 0/1 mask, p named "p{p}"."""

  name = "dropout"
  summary = ("inverted dropout out = x * mask / (1 - p), the 0/1 mask given: dx = dout * mask / "
             "(1 - p)")
  takes = ("float", "bool")
  names = ("p0.5", "p0", "p0.1", "p0.9")
  options = ("takes",)
  families = ("plain", "normal", "spread", "kink")
  forward_name = "out = x * mask / (1 - p)"
  arguments = ("x", "mask", "dout")
  returns = ("dx",)
  dims_names = ("N", "D")

  # ---- options
  def validate(self, spec):
    p = drop_probability(self.names[0] if spec.name is None else spec.name)
    takes = spec.takes or self.takes[0]
    if takes not in self.takes:
      raise ValueError(f"takes={takes!r} is not valid for kind 'dropout': the mask is handed as "
                       "'float' (0.0 and 1.0 of x's dtype, the default) or 'bool'")
    if spec.layout:
      raise ValueError(f"layout={spec.layout!r} is not valid for kind 'dropout': it has no layout "
                       "(x, mask and dout share one shape)")
    if spec.signature not in self.signatures:
      raise ValueError(f"signature={spec.signature!r} is not valid for kind 'dropout'; valid: "
                       "bpref (wrap CS231n's dropout_backward as bpref.oracle.ops.pool says)")
    return spec._replace(name=_p_name(p), takes=takes)

  def describe(self, spec):
    return f"dropout p = {drop_probability(spec.name):g} ({spec.dtype}, mask as {spec.takes})"

  # ---- cases
  def probe_dims(self, spec):
    return [(4, 8), (1, 1), (3, 1), (1, 5), (2, 32)], [(3, 4), (2, 6)]

  def random_dims(self, spec, rng):
    return (int(rng.integers(1, spec.max_batch + 1)), int(rng.integers(1, spec.max_width + 1)))

  def draw(self, spec, label):
    rng = self.rng(spec, label)
    shape = label.dims
    mask = (rng.random(shape) < 0.5) * 1.0  # half kept, whatever p
    fam = label.family
    if fam == "plain":
      return {"x": plain(rng, shape), "mask": mask, "dout": plain(rng, shape)}
    if fam == "spread":
      return {"x": scaled(rng, shape, 1e-3, 1e3), "mask": mask,
              "dout": scaled(rng, shape, 1e-3, 1e3)}
    x, dout = rng.normal(size=shape), rng.normal(size=shape)
    if fam == "kink":  # whole rows dropped, whole rows kept; exact zeros in x and dout
      row = rng.random((shape[0], 1))
      mask = np.where(row < 1 / 3, 0.0, np.where(row < 2 / 3, 1.0, mask))
      x = x * (rng.random(shape) < 0.7)
      dout = dout * (rng.random(shape) < 0.7)
    return {"x": x, "mask": mask, "dout": dout}

  def shrinkable(self, spec):
    return ("x", "dout")  # the mask stays as drawn: its zeros are what a case checks

  # ---- bpref's answer
  def compute(self, spec, case, variant=None):
    x, mask, dout = case.arrays["x"], case.arrays["mask"], case.arrays["dout"]
    p = drop_probability(spec.name)
    _, floor = unit_and_floor(spec.dtype)
    out, dx = _bpref_dropout(x, mask, dout, p)
    scale2 = 1.0 / (1.0 - p) ** 2
    return OpTruth({"dx": dx}, {"dx": np.abs(dout) * mask * scale2 + floor},
                   _tolerance.tolerance(spec.dtype, depth=1, inner=3), None, 0.0, out,
                   np.abs(x) * mask * scale2 + floor,
                   _tolerance.forward_tolerance(spec.dtype, depth=1, inner=3))

  # ---- the candidate's side
  def args(self, spec, case):
    dt = np.dtype(spec.dtype)
    mask = case.arrays["mask"]
    return (case.arrays["x"].astype(dt), mask != 0 if spec.takes == "bool" else mask.astype(dt),
            case.arrays["dout"].astype(dt))

  def framework_call(self, spec, args):
    x, mask, dout = args
    return [x, mask], [True, False], dout

  # ---- diagnosis
  def models(self, spec, case, truth):
    mask, dout = case.arrays["mask"], case.arrays["dout"]
    p = drop_probability(spec.name)
    s = 1.0 / (1.0 - p)
    out = [
        Model("scale_missing", "dx = dout * mask: the 1 / (1 - p) of inverted dropout left out "
              "of the backward step (DO2)", {"dx": dout * mask}),
        Model("scale_twice", "dx = dout * mask / (1 - p)^2: the scale applied twice (a mask "
              "already scaled by 1 / (1 - p), as CS231n keeps it, divided by 1 - p again) (DO2)",
              {"dx": dout * mask * s * s}),
        Model("non_inverted", "dx = dout * mask * (1 - p): the scaling of non-inverted dropout "
              "(which scales at test time) in the backward step of inverted dropout (DO2)",
              {"dx": dout * mask * (1.0 - p)}),
        Model("mask_missing", "dx = dout / (1 - p): the mask left out, so dropped units get a "
              "gradient (DO2)", {"dx": dout * s}),
    ]
    return out  # at p = 0 the first three are bpref's answer: then they explain nothing

  def last_findings(self, spec, minimal, wrong):
    """A backward that uses another mask than the forward step's: dx is nonzero at a unit the
    mask dropped, or exactly 0 at a kept unit with dout != 0 (every correct dx is exactly 0 at
    the dropped units and dout / (1 - p) != 0 at the kept ones)."""
    mask, dout = minimal.case.arrays["mask"], minimal.case.arrays["dout"]
    dx = minimal.verdict.outputs["dx"]
    leaked = int(np.sum((mask == 0) & (dx != 0)))
    lost = int(np.sum((mask == 1) & (dout != 0) & (dx == 0)))
    if not (leaked or lost):
      return super().last_findings(spec, minimal, wrong)
    parts = ([f"nonzero at {leaked} unit(s) the mask dropped"] if leaked else []) + (
        [f"exactly 0 at {lost} kept unit(s) with dout != 0"] if lost else [])
    return [Finding("new_mask", "dx does not use the forward step's mask: a mask drawn anew in "
                    "the backward step (or no mask, or no gradient) (DO2)",
                    f"the candidate's dx is {' and '.join(parts)}; dx = dout * mask / (1 - p) "
                    "with the mask the forward step drew is 0 exactly where it dropped a unit")]


MAXPOOL2D = MaxPool2d()
AVGPOOL2D = AvgPool2d()
DROPOUT = Dropout()
