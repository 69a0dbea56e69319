"""The conv2d kind: a candidate's 2-D convolution backward against ``bpref.layers.conv``.

The candidate is called as ``candidate(x, w, b, dout) -> (dx, dw, db)`` with x of shape
(N, C, H, W), w of shape (F, C, HH, WW), b of shape (F,) and dout of shape (N, F, H', W'),
H' = 1 + (H + 2 pad - HH) // stride: a cross-correlation with zero padding, as CS231n's
``conv_forward_naive`` and PyTorch's ``conv2d`` (the kernel is not flipped). With
``signature="cs231n"`` it is called as CS231n's ``conv_backward_naive(dout, cache)``, cache =
(x, w, b, {"stride": stride, "pad": pad}).

Options carried by existing ``OpSpec`` fields:

* stride and pad are fixed per check and named by ``name``, a string "s{stride}p{pad}":
  "s1p0" (the default, also for name=None), "s1p1", "s2p1", ... (``CONV2D.names``). OpSpec has
  no stride or pad field; a field ``geometry=(stride, pad)`` would have been the natural one.
* ``layout="nchw"`` (the default) or ``"nhwc"``: x, dout and dx are (N, H, W, C) and
  (N, H', W', F) in "nhwc"; w stays (F, C, HH, WW) in both, and db is (F,).
* ``max_batch`` bounds N and ``max_width`` bounds H and W of the random cases; the channels C
  and F are 1 to 4 and the filters 1 to 3 taps each way.

The rounding model (proofs/conv.md, section 6). Every output is a sum of products of the
inputs, so its magnitude bound is the same computation on absolute values:

  M_out = |b| + conv(|x|, |w|),             k_out = C HH WW + 1
  M_dx  = dx(|w|, |dout|),                  k_dx  = F ceil(HH / S) ceil(WW / S)
  M_dw  = dw(|x|, |dout|),                  k_dw  = N H' W'
  M_db  = sum over n, i, j of |dout|,       k_db  = N H' W'

each plus k_X lambda / u for underflow, and the tolerance is (T) with k = max(k_dx, k_dw).

bpref's answer is one jitted call of ``bpref.layers.conv`` in float64 on the values and on
their absolute values (vmapped: the bounds come out of the same program), every axis padded
with zeros to a bucket: N, C, F to ``bucket`` (8, 16, ...), the filter to 3 taps (or a bucket
above 3) and H, W to the bucket of H + (taps added): zero taps, zero channels, zero images and
zero rows of dout add exact zeros, so the padded program computes the same numbers. A default
search compiles one program per stride and padding.
"""

from __future__ import annotations

import itertools
import math
import re

import jax
import numpy as np

from bpref import compilation
from bpref import tolerance as _tolerance
from bpref.layers import conv as _conv
from bpref.oracle.diagnosis import Finding
from bpref.oracle.ops.record import (Model, OpKind, OpTruth, bucket, plain, scaled,
                                     tiled, unit_and_floor)

NAMES = tuple(f"s{s}p{p}" for s in (1, 2, 3) for p in (0, 1, 2))
"""The strides and paddings a check may fix, as "s{stride}p{pad}"."""

DEFAULT_NAME = "s1p0"


def geometry(name: str | None) -> tuple:
  """(stride, pad) of a name "s{stride}p{pad}"; None is "s1p0"."""
  m = re.fullmatch(r"s(\d+)p(\d+)", name or DEFAULT_NAME)
  return int(m.group(1)), int(m.group(2))


def _out_size(size: int, taps: int, stride: int, pad: int) -> int:
  return 1 + (size + 2 * pad - taps) // stride  # (CV2)


def _taps_bucket(k: int) -> int:
  """The padded number of filter taps: 3 up to 3 (1, 2 and 3 share a program), else a bucket."""
  return 3 if k <= 3 else bucket(k)


@compilation.jit(static_argnums=(4, 5))
def _grads_padded(x, w, b, dout, stride, pad):
  def one(x, w, b, dout):
    out, cache = _conv.forward(x, w, b, stride, pad)  # (CV1)-(CV3)
    return (out,) + _conv.backward(cache, dout)  # (CV4)-(CV8)
  return jax.vmap(one)(x, w, b, dout)


def _bpref(x, w, b, dout, stride, pad):
  """((out, dx, dw, db), (M_out, M_dx, M_dw, M_db)): bpref's float64 answer on the values and
  on their absolute values, every axis padded to a bucket (module docstring)."""
  N, C, H, W = x.shape
  F, _, HH, WW = w.shape
  Ho, Wo = dout.shape[2:]
  KH, KW = _taps_bucket(HH), _taps_bucket(WW)
  Nb, Cb, Fb = bucket(N), bucket(C), bucket(F)
  Hb, Wb = bucket(H + KH - HH), bucket(W + KW - WW)
  Hob, Wob = _out_size(Hb, KH, stride, pad), _out_size(Wb, KW, stride, pad)

  def padded(v, shape):
    out = np.zeros((2,) + shape)
    where = (slice(None),) + tuple(slice(0, n) for n in v.shape)
    out[where] = np.stack([v, np.abs(v)])
    return out

  with jax.enable_x64(True):
    res = _grads_padded(padded(x, (Nb, Cb, Hb, Wb)), padded(w, (Fb, Cb, KH, KW)),
                        padded(b, (Fb,)), padded(dout, (Nb, Fb, Hob, Wob)), stride, pad)
  out, dx, dw, db = (np.asarray(r, np.float64) for r in res)
  crop = (out[:, :N, :F, :Ho, :Wo], dx[:, :N, :C, :H, :W], dw[:, :F, :C, :HH, :WW], db[:, :F])
  return tuple(v[0] for v in crop), tuple(v[1] for v in crop)


# ---------------------------------------------------------------- the bug models' backward

def _frame_grads(x, w, dout, stride, top, flip=False):
  """(dx, dw) of a backward whose windows start at rows stride i of a zero frame that holds x at
  row and column ``top``; reads past x are zeros, writes outside x are dropped. stride = S and
  top = P give the right answer; ``flip`` rotates the kernel by 180 degrees for dx."""
  N, C, H, W = x.shape
  F, _, HH, WW = w.shape
  Ho, Wo = dout.shape[2:]
  R, S = max(top + H, stride * (Ho - 1) + HH), max(top + W, stride * (Wo - 1) + WW)
  frame = np.zeros((N, C, R, S))
  frame[:, :, top:top + H, top:top + W] = x
  rows = (stride * np.arange(Ho)[:, None] + np.arange(HH)[None, :])[:, None, :, None]
  cols = (stride * np.arange(Wo)[:, None] + np.arange(WW)[None, :])[None, :, None, :]
  patch = frame[:, :, rows, cols]
  dw = np.einsum("nfhw,nchwpq->fcpq", dout, patch)
  k = w[:, :, ::-1, ::-1] if flip else w
  dpatch = np.einsum("nfhw,fcpq->nchwpq", dout, k)
  dframe = np.zeros_like(frame)
  np.add.at(dframe, (slice(None), slice(None), rows, cols), dpatch)
  return dframe[:, :, top:top + H, top:top + W], dw


def _last_window(size, taps, out, stride):
  """(i, p) per padded row: the last window (largest i) that reads it and its tap; -1 for none."""
  i_of, p_of = np.full(size, -1), np.full(size, -1)
  for i in range(out):
    for p in range(taps):
      i_of[stride * i + p], p_of[stride * i + p] = i, p
  return i_of, p_of


def _overwritten(x, w, dout, stride, pad, last_filter):
  """dx when each window is assigned into dx_pad (=) instead of added (+=): a position keeps
  the last window that read it (largest i, then largest j), summed over the filters, or with
  ``last_filter`` the last filter's term alone (a loop over f outside the windows)."""
  N, C, H, W = x.shape
  F = w.shape[0]
  Ho, Wo = dout.shape[2:]
  if last_filter:
    dpatch = np.einsum("nhw,cpq->nchwpq", dout[:, F - 1], w[F - 1])
  else:
    dpatch = np.einsum("nfhw,fcpq->nchwpq", dout, w)
  ri, rp = _last_window(H + 2 * pad, w.shape[2], Ho, stride)
  ci, cq = _last_window(W + 2 * pad, w.shape[3], Wo, stride)
  ri, rp, ci, cq = (v[pad:pad + n] for v, n in ((ri, H), (rp, H), (ci, W), (cq, W)))
  dx = dpatch[:, :, np.maximum(ri, 0)[:, None], np.maximum(ci, 0)[None, :],
              np.maximum(rp, 0)[:, None], np.maximum(cq, 0)[None, :]]
  return np.where(((ri >= 0)[:, None] & (ci >= 0)[None, :])[None, None], dx, 0.0)


class Conv2D(OpKind):
  name = "conv2d"
  summary = ("out = b + x correlated with w (stride, zero pad): (dx, dw, db), dx = the windows of "
             "dout w scatter-added back, dw = dout correlated with the padded x, db = sum dout")
  takes = ("x",)
  layouts = ("nchw", "nhwc")
  signatures = ("bpref", "cs231n")
  names = NAMES
  options = ("name", "layout")
  families = ("plain", "normal", "spread", "huge", "tiny")
  forward_name = "out = conv2d(x, w) + b"
  arguments = ("x", "w", "b", "dout")
  returns = ("dx", "dw", "db")
  dims_names = ("N", "C", "H", "W", "F", "HH", "WW")

  # ---- options
  def validate(self, spec):
    name = DEFAULT_NAME if spec.name is None else spec.name
    if name not in self.names:
      raise ValueError(f"{name!r} is not a stride and padding of kind 'conv2d': name them "
                       f"'s{{stride}}p{{pad}}', one of {', '.join(self.names)} (None is "
                       f"{DEFAULT_NAME!r})")
    spec = super().validate(spec._replace(name=name))
    if spec.signature == "cs231n" and spec.layout != "nchw":
      raise ValueError("signature='cs231n' is CS231n's conv_backward_naive(dout, cache), whose "
                       "arrays are NCHW: drop layout='nhwc'")
    return spec

  def describe(self, spec):
    stride, pad = geometry(spec.name)
    how = ", cs231n signature" if spec.signature == "cs231n" else ""
    return f"conv2d stride {stride} pad {pad} ({spec.dtype}, layout {spec.layout}{how})"

  def rerun_labels(self, spec, verdict_kind, origin):
    """A candidate that needs its windows to tile the input ((H + 2P - HH) a multiple of S, as
    mygrad's conv_nd does) may run on the same case with H and W raised until they do."""
    stride, pad = geometry(spec.name)
    if origin is None or verdict_kind not in ("exception", "shape"):
      return []
    N, C, H, W, F, HH, WW = origin.dims
    H2, W2 = tiled(H, HH, stride, pad), tiled(W, WW, stride, pad)
    if (H2, W2) == (H, W):
      return []
    return [(origin._replace(dims=(N, C, H2, W2, F, HH, WW)), f"the same case with H, W = {H2}, "
             f"{W2}, where the windows tile the input ((H + 2P - HH) a multiple of S)",
             f"untiled (H, W = {H}, {W}) ")]

  # ---- cases
  def probe_dims(self, spec):
    stride, pad = geometry(spec.name)

    def fit(N, C, H, W, F, HH, WW, uneven=False):
      H, W = max(H, HH - 2 * pad), max(W, WW - 2 * pad)  # the filter fits the padded input
      if uneven:  # the last (H + 2 pad - HH) mod S rows are read by no window
        while stride > 1 and (H + 2 * pad - HH) % stride != stride - 1:
          H += 1
        while stride > 1 and (W + 2 * pad - WW) % stride == 0:
          W += 1
      return (N, C, H, W, F, HH, WW)

    shapes = [fit(1, 1, 4, 4, 1, 1, 1),             # a 1x1 filter, one channel, one image
              fit(2, 1, 5, 4, 2, 3, 3),             # one channel, H != W
              fit(2, 3, 4, 5, 2, 3, 3, True),       # padding that does not divide evenly
              fit(1, 2, 5, 6, 3, 2, 3),             # HH != WW
              fit(3, 2, 6, 6, 2, 3, 3),             # three images, overlapping windows
              fit(2, 8, 7, 7, 4, 3, 3)]             # a longer sum: C HH WW = 72
    return shapes, [fit(2, 2, 5, 4, 3, 3, 3, True)]

  def random_dims(self, spec, rng):
    _, pad = geometry(spec.name)
    N = int(rng.integers(1, spec.max_batch + 1))
    C, F = (int(v) for v in rng.integers(1, 5, 2))
    HH = int(rng.integers(1, 4))
    WW = HH if rng.random() < 0.6 else int(rng.integers(1, 4))
    H, W = (int(rng.integers(max(1, k - 2 * pad), max(spec.max_width, k - 2 * pad) + 1))
            for k in (HH, WW))
    return (N, C, H, W, F, HH, WW)

  def draw(self, spec, label):
    stride, pad = geometry(spec.name)
    rng = self.rng(spec, label)
    N, C, H, W, F, HH, WW = label.dims
    Ho = max(0, _out_size(H, HH, stride, pad))  # 0: a shrunk shape where the filter does not fit
    Wo = max(0, _out_size(W, WW, stride, pad))
    shapes = {"x": (N, C, H, W), "w": (F, C, HH, WW), "b": (F,), "dout": (N, F, Ho, Wo)}
    fam = label.family
    if fam == "plain":
      return {k: plain(rng, s) for k, s in shapes.items()}
    if fam == "huge":
      return {k: scaled(rng, s, 1e8, 1e12) for k, s in shapes.items()}
    if fam == "tiny":
      return {k: scaled(rng, s, 1e-12, 1e-8) for k, s in shapes.items()}
    arrays = {k: rng.normal(size=s) for k, s in shapes.items()}
    if fam == "spread":  # each image's channel, each filter, its own scale, 1e-3 to 1e3
      arrays["x"] = arrays["x"] * 10.0 ** rng.uniform(-3, 3, (N, C, 1, 1))
      arrays["w"] = arrays["w"] * 10.0 ** rng.uniform(-3, 3, (F, 1, 1, 1))
      arrays["dout"] = arrays["dout"] * 10.0 ** rng.uniform(-3, 3, (N, F, 1, 1))
    return arrays

  # ---- bpref's answer and its bounds
  def compute(self, spec, case, variant=None):
    a = case.arrays
    x, w, b, dout = a["x"], a["w"], a["b"], a["dout"]
    stride, pad = geometry(spec.name)
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    Ho, Wo = _out_size(H, HH, stride, pad), _out_size(W, WW, stride, pad)
    k_out = C * HH * WW + 1
    forward_tol = _tolerance.forward_tolerance(spec.dtype, depth=1, inner=k_out)
    if Ho < 1 or Wo < 1:  # a shrunk shape on which the filter does not fit: checks nothing
      nan = {"dx": np.full(x.shape, np.nan), "dw": np.full(w.shape, np.nan),
             "db": np.full(b.shape, np.nan)}
      return OpTruth(nan, nan, 1.0, None, 0.0, None, None, forward_tol)
    if tuple(dout.shape) != (N, F, Ho, Wo):
      raise ValueError(f"conv2d {spec.name}: dout must have shape (N, F, H', W') = "
                       f"{(N, F, Ho, Wo)} for x {x.shape} and w {w.shape}; got {dout.shape}")
    u, floor = unit_and_floor(spec.dtype)
    (out, dx, dw, db), (M_out, M_dx, M_dw, M_db) = _bpref(x, w, b, dout, stride, pad)
    k_dx = F * math.ceil(HH / stride) * math.ceil(WW / stride)  # windows that read a pixel
    k_dw = N * Ho * Wo
    bounds = {"dx": M_dx + k_dx * floor,  # (CV10): M_dx = dx of abs(w), abs(dout)
              "dw": M_dw + k_dw * floor,  # (CV11): M_dw = dw of abs(x), abs(dout)
              "db": M_db + k_dw * floor}  # (CV12): M_db = sum of abs(dout)
    tol = _tolerance.tolerance(spec.dtype, depth=1, inner=max(k_dx, k_dw))  # (CV13) in (T)
    M_out = M_out + k_out * floor  # (CV9): M_out = abs(b) + conv of abs(x), abs(w)
    return OpTruth({"dx": dx, "dw": dw, "db": db}, bounds, tol, None, 0.0,
                   self.declared(spec, "out", out), self.declared(spec, "out", M_out), forward_tol)

  # ---- the candidate's side
  def declared(self, spec, name, value):
    value = np.asarray(value)
    if spec.layout == "nhwc" and name in ("x", "dout", "dx", "out") and value.ndim == 4:
      return value.transpose(0, 2, 3, 1)
    return value

  def internal(self, spec, name, value):
    value = np.asarray(value)
    if spec.layout == "nhwc" and name in ("x", "dout", "dx", "out") and value.ndim == 4:
      return value.transpose(0, 3, 1, 2)
    return value

  def arg_names(self, spec):
    return ("dout", "cache") if spec.signature == "cs231n" else self.arguments

  def args(self, spec, case):
    dt = np.dtype(spec.dtype)
    x, w, b, dout = (self.declared(spec, n, case.arrays[n]).astype(dt) for n in self.arguments)
    if spec.signature == "cs231n":
      stride, pad = geometry(spec.name)
      return (dout, (x, w, b, {"stride": stride, "pad": pad}))
    return (x, w, b, dout)

  def forward_args(self, spec, case):
    if spec.signature == "cs231n":
      dout, (x, w, b, param) = self.args(spec, case)
      return (x, w, b, dict(param))
    return self.args(spec, case)[:3]

  def call_text(self, spec):
    if spec.signature == "cs231n":
      stride, pad = geometry(spec.name)
      return f"dout, (x, w, b, {{'stride': {stride}, 'pad': {pad}}})"
    return "x, w, b, dout"

  def framework_call(self, spec, args):
    if spec.signature == "cs231n":
      dout, (x, w, b, _) = args
      return [x, w, b], [True, True, True], dout
    return super().framework_call(spec, args)

  def framework_result(self, spec, grads):
    return tuple(grads)

  def shape_findings(self, spec, case, name, got, want):
    msg, _ = super().shape_findings(spec, case, name, got, want)
    stride, pad = geometry(spec.name)
    x, dout = case.arrays["x"], case.arrays["dout"]
    got = tuple(got)
    if name == "db":
      d = self.declared(spec, "dout", dout).shape
      axes = "NHWF" if spec.layout == "nhwc" else "NFHW"
      for keep in itertools.chain.from_iterable(
          itertools.combinations(range(4), r) for r in range(1, 5)):
        if got == tuple(d[i] for i in keep) and axes.index("F") in keep:
          missed = ", ".join(a.replace("H", "H'").replace("W", "W'") for i, a in enumerate(axes)
                             if i in keep and a != "F")
          return msg, (Finding("db_not_summed", f"db is not summed over {missed}: db[f] is the "
                               "sum of dout[n, f, i, j] over every image n and every output "
                               "position (i, j) (CV4)", f"db has shape {got}, expected {want}"),)
    if name == "dw" and got == (x.shape[0],) + tuple(want):
      return msg, (Finding("batch_sum_missing", "dw is one filter gradient per image: sum it over "
                           "the batch n (CV5)", f"dw has shape {got}, expected {want}"),)
    if name == "dx" and pad > 0:
      N, C, H, W = x.shape
      padded = self.declared(spec, "x", np.zeros((N, C, H + 2 * pad, W + 2 * pad))).shape
      if got == padded:
        return msg, (Finding("padding_not_cropped", "dx is the gradient of the padded input: "
                             "drop the pad rows and columns, dx = dx_pad[:, :, pad:pad + H, "
                             "pad:pad + W] (CV8)", f"dx has shape {got}, expected {want}"),)
    if name == "dx" and pad == 0 and 0 in got and len(got) == len(want):
      return msg, (Finding("padding_not_cropped", "dx is empty: dx_pad[:, :, pad:-pad, pad:-pad] "
                           "is empty when pad = 0 (-0 is 0); crop with pad:pad + H, pad:pad + W "
                           "(CV8)", f"dx has shape {got}, expected {want}"),)
    return msg, ()

  # ---- diagnosis
  def models(self, spec, case, truth):
    a = case.arrays
    x, w, dout = a["x"], a["w"], a["dout"]
    stride, pad = geometry(spec.name)
    e = truth.expected
    dw = e["dw"]
    N = x.shape[0]
    out = []

    def variants(code, what, dx_bug, dw_bug):  # what: a template of "{where}"
      for where, outputs in (("dx and dw", {"dx": dx_bug, "dw": dw_bug}), ("dx", {"dx": dx_bug}),
                             ("dw", {"dw": dw_bug})):
        out.append(Model(code, what.format(where=where), outputs))

    flipped, _ = _frame_grads(x, w, dout, stride, pad, flip=True)
    variants("kernel_flipped", "{where} of a convolution, the kernel rotated by 180 degrees "
             "(w[:, :, ::-1, ::-1]), where the layer is a correlation (CV5), (CV6)",
             flipped, dw[:, :, ::-1, ::-1])
    out.append(Model("overlap_overwritten", "dx windows assigned (=) into dx_pad instead of added "
                     "(+=): where windows overlap (stride < HH or WW) a pixel keeps the last "
                     "window that read it, summed over the filters (CV7)",
                     {"dx": _overwritten(x, w, dout, stride, pad, last_filter=False)}))
    out.append(Model("overlap_overwritten", "dx windows assigned (=) into dx_pad instead of added "
                     "(+=) inside the loop over the filters: a pixel keeps the last filter's term "
                     "of the last window that read it (CV6), (CV7)",
                     {"dx": _overwritten(x, w, dout, stride, pad, last_filter=True)}))
    for s in (stride + 1, stride - 1):
      if s >= 1:
        dx_s, dw_s = _frame_grads(x, w, dout, s, pad)
        variants("stride_off_by_one", f"{{where}} with the windows placed at stride {s}, not "
                 f"{stride} (rows S i + p) (CV5), (CV7)", dx_s, dw_s)
    for top in (pad - 1, pad + 1):
      if top >= 0:
        dx_p, dw_p = _frame_grads(x, w, dout, stride, top)
        variants("pad_off_by_one", f"{{where}} with x at row and column {top} of the padded "
                 f"input, not pad = {pad}: the padding off by one (CV1), (CV8)", dx_p, dw_p)
    if N > 1:
      for which, n in (("first", 0), ("last", N - 1)):
        how = "" if which == "first" else " (an assignment where += was meant)"
        one_dw = np.einsum("fhw,chwpq->fcpq", dout[n], _one_patch(x[n], w.shape, stride, pad))
        one_db = dout[n].sum(axis=(1, 2))
        out.append(Model("batch_sum_missing", f"dw and db are the {which} image's only, not summed "
                         f"over the batch{how} (CV5), (CV4)", {"dw": one_dw, "db": one_db}))
        out.append(Model("batch_sum_missing", f"dw is the {which} image's only, not summed over "
                         f"the batch{how} (CV5)", {"dw": one_dw}))
        out.append(Model("db_not_summed", f"db is the {which} image's only, not summed over the "
                         f"batch{how} (CV4)", {"db": one_db}))
    Ho, Wo = dout.shape[2:]
    if Ho * Wo > 1:
      for which, (i, j) in (("first", (0, 0)), ("last", (Ho - 1, Wo - 1))):
        out.append(Model("db_not_summed", f"db is the {which} output position's only, not summed "
                         "over H' and W' (CV4)", {"db": dout[:, :, i, j].sum(axis=0)}))
      if N > 1:
        out.append(Model("db_not_summed", "db = dout[0, :, 0, 0]: not summed over N, H' or W' "
                         "(CV4)", {"db": dout[0, :, 0, 0].copy()}))
    return [m for m in out if not all(np.array_equal(v, e[k]) for k, v in m.outputs.items())]

  def slips(self, spec):
    out = super().slips(spec)
    if spec.signature == "bpref":
      other = "nhwc" if spec.layout == "nchw" else "nchw"
      out.append(("layout", f"the candidate holds x, dout and dx as {other.upper()}: declare "
                  f"layout={other!r} (--layout {other})", f"called with {other.upper()} arrays "
                  "and its dx read back the same way, the candidate is right",
                  spec._replace(layout=other)))
      if spec.layout == "nchw":
        out.append(("signature", "the candidate takes (dout, cache), as CS231n's "
                    "conv_backward_naive: pass signature='cs231n' (--signature cs231n)",
                    "called as candidate(dout, (x, w, b, conv_param)), the candidate is right",
                    spec._replace(signature="cs231n")))
    else:
      out.append(("signature", "the candidate takes bpref's argument order (x, w, b, dout), not "
                  "CS231n's (dout, cache): drop signature='cs231n'",
                  "called with bpref's argument order, the candidate is right",
                  spec._replace(signature="bpref")))
    return out


def _one_patch(x, w_shape, stride, pad):
  """patch[c, i, j, p, q] = xp[c, S i + p, S j + q] of one image, in NumPy."""
  _, C, HH, WW = w_shape
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
  Ho, Wo = _out_size(x.shape[1], HH, stride, pad), _out_size(x.shape[2], WW, stride, pad)
  rows = (stride * np.arange(Ho)[:, None] + np.arange(HH)[None, :])[:, None, :, None]
  cols = (stride * np.arange(Wo)[:, None] + np.arange(WW)[None, :])[None, :, None, :]
  return xp[:, rows, cols]


CONV2D = Conv2D()
