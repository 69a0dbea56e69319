"""The conv2d op kind on candidates written the ways people write them, right and wrong.

Right: CS231n's ``conv_backward_naive`` loops (called with CS231n's (dout, cache) and with
bpref's argument order), a vectorised im2col NumPy version, torch's autograd of
``torch.nn.functional.conv2d``, a ``torch.autograd.Function`` with a handwritten unfold/fold
backward and a ``jax.custom_vjp`` rule whose dx is the transposed correlation (dout dilated by
the stride, correlated with the kernel rotated by 180 degrees). Wrong: each classic mistake of
proofs/conv.md, which must fail with the finding that names it.
"""

import numpy as np
import pytest

from bpref import compilation
from bpref.oracle.ops import OpCandidate, check_op
from bpref.oracle.ops.conv import geometry


# ---------------------------------------------------------------- right candidates

def naive_backward(dout, cache, *, mistake=None):
  """CS231n's conv_backward_naive, loop for loop; ``mistake`` plants one classic bug."""
  x, w, b, conv_param = cache
  stride, pad = conv_param["stride"], conv_param["pad"]
  N, C, H, W = x.shape
  F, _, HH, WW = w.shape
  _, _, Ho, Wo = dout.shape
  x_pad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  dx_pad = np.zeros_like(x_pad)
  dw, db = np.zeros_like(w), np.zeros_like(b)
  step = stride - 1 if mistake == "stride_off_by_one" else stride
  kernel = w[:, :, ::-1, ::-1] if mistake == "kernel_flipped" else w
  for n in range(N):
    dw_n = np.zeros_like(w)
    for f in range(F):
      db[f] += dout[n, f].sum()
      for i in range(Ho):
        for j in range(Wo):
          hs, ws = i * step, j * step
          dw_n[f] += x_pad[n, :, hs:hs + HH, ws:ws + WW] * dout[n, f, i, j]
          if mistake == "overlap_overwritten":
            dx_pad[n, :, hs:hs + HH, ws:ws + WW] = kernel[f] * dout[n, f, i, j]
          else:
            dx_pad[n, :, hs:hs + HH, ws:ws + WW] += kernel[f] * dout[n, f, i, j]
    if mistake == "batch_sum_missing":
      dw = dw_n  # = where += was meant: the last image's
    else:
      dw += dw_n
  top = pad - 1 if mistake == "pad_off_by_one" else pad
  if mistake == "db_not_summed":
    db = dout[0].sum(axis=(1, 2))
  return dx_pad[:, :, top:top + H, top:top + W], dw, db


def naive(x, w, b, dout, stride=1, pad=0):
  return naive_backward(dout, (x, w, b, {"stride": stride, "pad": pad}))


def im2col(x, w, b, dout, stride=1, pad=0, *, mistake=None):
  """Vectorised: the windows gathered by index tables, dx scattered back with np.add.at."""
  N, C, H, W = x.shape
  F, _, HH, WW = w.shape
  _, _, Ho, Wo = dout.shape
  xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  r = (stride * np.arange(Ho)[:, None] + np.arange(HH))[:, None, :, None]  # (Ho, 1, HH, 1)
  c = (stride * np.arange(Wo)[:, None] + np.arange(WW))[None, :, None, :]  # (1, Wo, 1, WW)
  cols = xp[:, :, r, c].transpose(0, 2, 3, 1, 4, 5).reshape(N * Ho * Wo, C * HH * WW)
  d = dout.transpose(0, 2, 3, 1).reshape(N * Ho * Wo, F)
  dw = (d.T @ cols).reshape(w.shape)
  db = d.sum(axis=0)
  dcols = (d @ w.reshape(F, -1)).reshape(N, Ho, Wo, C, HH, WW).transpose(0, 3, 1, 2, 4, 5)
  dxp = np.zeros_like(xp)
  if mistake == "overlap_overwritten":
    dxp[:, :, r, c] = dcols  # assigned: where windows overlap, the last one wins
  else:
    np.add.at(dxp, (slice(None), slice(None), r, c), dcols)
  return dxp[:, :, pad:pad + H, pad:pad + W], dw, db


def torch_autograd(stride, pad):
  import torch

  def candidate(x, w, b, dout):
    xx, ww, bb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    torch.nn.functional.conv2d(xx, ww, bb, stride=stride, padding=pad).backward(torch.tensor(dout))
    return xx.grad.numpy(), ww.grad.numpy(), bb.grad.numpy()

  return candidate


def torch_function(stride, pad):
  import torch
  from torch.nn.functional import fold, unfold

  class Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b):
      N, C, H, W = x.shape
      F, _, HH, WW = w.shape
      Ho, Wo = 1 + (H + 2 * pad - HH) // stride, 1 + (W + 2 * pad - WW) // stride
      cols = unfold(x, (HH, WW), padding=pad, stride=stride)  # (N, C HH WW, Ho Wo)
      ctx.save_for_backward(w, cols)
      ctx.size = (H, W)
      return (w.reshape(F, -1) @ cols + b[:, None]).reshape(N, F, Ho, Wo)

    @staticmethod
    def backward(ctx, dout):
      w, cols = ctx.saved_tensors
      F, _, HH, WW = w.shape
      d = dout.reshape(dout.shape[0], F, -1)  # (N, F, Ho Wo)
      dw = (d @ cols.transpose(1, 2)).sum(0).reshape(w.shape)
      dx = fold(w.reshape(F, -1).T @ d, ctx.size, (HH, WW), padding=pad, stride=stride)
      return dx, dw, d.sum((0, 2))

  return Conv2d


def custom_vjp(stride, pad):
  import jax
  import jax.numpy as jnp

  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), [(pad, pad), (pad, pad)],
                                        precision=jax.lax.Precision.HIGHEST)

  @jax.custom_vjp
  def conv2d(x, w, b):
    return conv(x, w) + jnp.reshape(b, (1, -1, 1, 1))

  def fwd(x, w, b):
    return conv2d(x, w, b), (x, w)

  def bwd(res, dout):
    x, w = res
    H, W = x.shape[2:]
    HH, WW = w.shape[2:]
    rem_h, rem_w = (H + 2 * pad - HH) % stride, (W + 2 * pad - WW) % stride
    # dx: dout dilated by the stride (lax.pad's interior padding) and padded by HH - 1 - pad,
    # correlated with the kernel rotated 180 degrees, channels swapped; the rows of x that no
    # window reads (rem) get zeros from the extra padding. (lhs_dilation=stride in the
    # convolution itself does the same, but XLA's CPU compiler aborts on some shapes with it.)
    dilated = jax.lax.pad(dout, jnp.zeros((), dout.dtype), [
        (0, 0, 0), (0, 0, 0), (HH - 1 - pad, HH - 1 - pad + rem_h, stride - 1),
        (WW - 1 - pad, WW - 1 - pad + rem_w, stride - 1)])
    dx = jax.lax.conv_general_dilated(dilated, jnp.transpose(w[:, :, ::-1, ::-1], (1, 0, 2, 3)),
                                      (1, 1), "VALID", precision=jax.lax.Precision.HIGHEST)
    # dw: the padded x correlated with dout dilated by the stride, images as the channels summed
    xp = jnp.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dw = jax.lax.conv_general_dilated(
        jnp.transpose(xp, (1, 0, 2, 3)), jnp.transpose(dout, (1, 0, 2, 3)), (1, 1), "VALID",
        rhs_dilation=(stride, stride), precision=jax.lax.Precision.HIGHEST)
    dw = jnp.transpose(dw[:, :, :HH, :WW], (1, 0, 2, 3))
    return dx, dw, jnp.sum(dout, axis=(0, 2, 3))

  conv2d.defvjp(fwd, bwd)
  return conv2d


def _bound(fn):
  return lambda stride, pad: lambda x, w, b, dout: fn(x, w, b, dout, stride, pad)


RIGHT = {"naive": _bound(naive), "im2col": _bound(im2col), "torch_autograd": torch_autograd,
         "torch_function": torch_function, "custom_vjp": custom_vjp}


def _check(way, name="s1p0", **options):
  if way.startswith("torch"):
    pytest.importorskip("torch")
  return check_op("conv2d", RIGHT[way](*geometry(name)), name=name, **options)


FAST = [(way, name, dtype) for way in ("naive", "im2col") for name in ("s1p0", "s2p1")
        for dtype in ("float64", "float32")]
FAST += [("torch_autograd", "s2p1", "float32"), ("torch_autograd", "s1p0", "float64"),
         ("torch_function", "s2p1", "float64"), ("torch_function", "s1p0", "float32"),
         ("custom_vjp", "s2p1", "float32")]
"""The fast tier's checks: the NumPy ways in each geometry and dtype, the frameworks in one each
(the custom_vjp candidate compiles a program per shape: few examples)."""


@pytest.mark.parametrize("way, name, dtype", FAST)
def test_a_right_conv2d_passes(way, name, dtype):
  examples = 4 if way == "custom_vjp" else 20
  report = _check(way, name, dtype=dtype, examples=examples)
  assert report.verdict == "pass", report.text()
  assert report.cases >= examples


@pytest.mark.deep
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("way", sorted(RIGHT))
def test_a_right_conv2d_passes_at_every_seed_and_geometry(way, dtype, seed):
  names = ("s1p0", "s2p1", "s3p1") if way == "custom_vjp" else ("s1p0", "s1p1", "s2p0", "s2p1",
                                                                "s2p2", "s3p1")
  for name in names:
    report = _check(way, name, dtype=dtype, seed=seed)
    assert report.verdict == "pass", report.text()


def test_cs231n_signature_takes_conv_backward_naive_itself():
  report = check_op("conv2d", naive_backward, name="s2p1", signature="cs231n", examples=20)
  assert report.verdict == "pass", report.text()


def test_a_forward_function_is_checked_too():
  def forward(x, w, b, stride=2, pad=1):
    out = np.zeros(((x.shape[0], w.shape[0]) + tuple(
        1 + (n + 2 * pad - k) // stride for n, k in zip(x.shape[2:], w.shape[2:]))))
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    HH, WW = w.shape[2:]
    for i in range(out.shape[2]):
      for j in range(out.shape[3]):
        window = xp[:, None, :, stride * i:stride * i + HH, stride * j:stride * j + WW]
        out[:, :, i, j] = (window * w[None]).sum(axis=(2, 3, 4)) + b
    return out

  good = OpCandidate(_bound(naive)(2, 1), forward)
  report = check_op("conv2d", good, name="s2p1", examples=10)
  assert report.verdict == "pass" and report.forward_checked >= 10, report.text()
  flipped = OpCandidate(_bound(naive)(2, 1), lambda x, w, b: forward(x, w[:, :, ::-1, ::-1], b))
  assert check_op("conv2d", flipped, name="s2p1", examples=10).kind == "forward"


def _nhwc(x, w, b, dout, stride=1, pad=0):
  dx, dw, db = naive(x.transpose(0, 3, 1, 2), w, b, dout.transpose(0, 3, 1, 2), stride, pad)
  return dx.transpose(0, 2, 3, 1), dw, db


def test_nhwc_layout_and_its_slip():
  report = check_op("conv2d", _nhwc, layout="nhwc", examples=20)
  assert report.verdict == "pass", report.text()
  report = check_op("conv2d", _nhwc, examples=10)
  assert report.verdict == "fail" and report.diagnosis[0].code == "layout", report.text()


def test_a_cs231n_function_called_the_bpref_way_is_a_signature_slip():
  report = check_op("conv2d", naive_backward, examples=10)
  assert report.verdict == "fail" and report.diagnosis[0].code == "signature", report.text()


# ---------------------------------------------------------------- classic mistakes

def _naive_with(mistake):
  def candidate(x, w, b, dout, stride, pad):
    return naive_backward(dout, (x, w, b, {"stride": stride, "pad": pad}), mistake=mistake)
  return candidate


BUGS = {  # code: (candidate(x, w, b, dout, stride, pad), the geometry that shows it)
    "kernel_flipped": (_naive_with("kernel_flipped"), "s1p1"),
    "stride_off_by_one": (_naive_with("stride_off_by_one"), "s2p1"),
    "pad_off_by_one": (_naive_with("pad_off_by_one"), "s1p1"),
    "batch_sum_missing": (_naive_with("batch_sum_missing"), "s2p1"),
    "overlap_overwritten": (_naive_with("overlap_overwritten"), "s1p0"),
    "db_not_summed": (_naive_with("db_not_summed"), "s1p1"),
}


@pytest.mark.parametrize("seed", range(10))  # seeds 1 to 9: the sweep tier
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("bug", sorted(BUGS))
def test_each_classic_conv2d_bug_fails_with_its_name(bug, dtype, seed):
  fn, name = BUGS[bug]
  stride, pad = geometry(name)
  report = check_op("conv2d", lambda x, w, b, dout: fn(x, w, b, dout, stride, pad), name=name,
                    dtype=dtype, seed=seed, examples=20)
  assert report.verdict == "fail"
  assert report.diagnosis[0].code == bug, report.text()


def test_vectorised_overwrite_of_overlapping_windows_is_named():
  report = check_op("conv2d", lambda x, w, b, dout: im2col(
      x, w, b, dout, 1, 1, mistake="overlap_overwritten"), name="s1p1", examples=20)
  assert report.verdict == "fail", report.text()
  assert report.diagnosis[0].code == "overlap_overwritten", report.text()


def test_overwriting_is_right_where_windows_do_not_overlap():
  # stride 3 >= HH: the windows are disjoint, = and += write the same numbers; but the random
  # cases draw filters of 1 to 3 taps, so a stride of 2 finds the overlap.
  bug = lambda x, w, b, dout: im2col(x, w, b, dout, 2, 1, mistake="overlap_overwritten")
  report = check_op("conv2d", bug, name="s2p1", examples=20)
  assert report.verdict == "fail" and report.diagnosis[0].code == "overlap_overwritten"


SHAPE_BUGS = {
    "db_not_summed": lambda x, w, b, dout: naive(x, w, b, dout)[:2] + (dout.sum(axis=0),),
    "batch_sum_missing": lambda x, w, b, dout: (
        naive(x, w, b, dout)[0], np.stack([naive(x[n:n + 1], w, b, dout[n:n + 1])[1]
                                           for n in range(x.shape[0])]), dout.sum(axis=(0, 2, 3))),
    "padding_not_cropped": lambda x, w, b, dout: (
        np.pad(naive(x, w, b, dout, 1, 1)[0], ((0, 0), (0, 0), (1, 1), (1, 1))),
        *naive(x, w, b, dout, 1, 1)[1:]),
}


@pytest.mark.parametrize("bug", sorted(SHAPE_BUGS))
def test_a_missing_sum_or_crop_is_a_shape_finding(bug):
  name = "s1p1" if bug == "padding_not_cropped" else "s1p0"
  report = check_op("conv2d", SHAPE_BUGS[bug], name=name, examples=10)
  assert report.verdict == "fail" and report.kind == "shape", report.text()
  assert report.diagnosis[0].code == bug, report.text()


def test_the_pad_zero_slice_is_named():
  def cropped(x, w, b, dout):  # dx_pad[:, :, pad:-pad, pad:-pad] with pad = 0: empty
    dx, dw, db = naive(x, w, b, dout)
    return dx[:, :, 0:-0, 0:-0], dw, db

  report = check_op("conv2d", cropped, examples=10)
  assert report.kind == "shape" and report.diagnosis[0].code == "padding_not_cropped", report.text()


def test_a_candidate_that_needs_tiled_windows_is_named_where_it_runs():
  """mygrad's conv_nd raises unless (H + 2P - HH) is a multiple of the stride; bpref, PyTorch
  and CS231n floor. Right where the windows tile, such a candidate is told so."""
  def tiled_only(x, w, b, dout):
    H, W, HH, WW = x.shape[2], x.shape[3], w.shape[2], w.shape[3]
    if (H + 2 - HH) % 2 or (W + 2 - WW) % 2:
      raise ValueError("Stride and kernel dimensions are incompatible")
    return naive(x, w, b, dout, 2, 1)

  report = check_op("conv2d", tiled_only, "s2p1", examples=20)
  assert report.kind == "exception", report.text()
  assert report.codes[0] == "shape_limit", report.text()
  assert "where the windows tile the input" in report.diagnosis[0].summary, report.text()


# ---------------------------------------------------------------- options and cost

def test_options_are_checked():
  assert check_op("conv2d", _bound(naive)(1, 0), examples=2).verdict == "pass"  # name None: s1p0
  with pytest.raises(ValueError, match=r"'s1' is not a stride and padding of kind 'conv2d'"):
    check_op("conv2d", naive, name="s1")
  with pytest.raises(ValueError, match="layout='btc' is not valid for kind 'conv2d'"):
    check_op("conv2d", naive, layout="btc")
  with pytest.raises(ValueError, match="signature='cs231n'.*drop layout='nhwc'"):
    check_op("conv2d", naive_backward, signature="cs231n", layout="nhwc")


def test_a_default_search_compiles_one_program_per_geometry():
  # Every axis is padded to a bucket: the probes and 40 random cases of a default search share
  # one program (none if an earlier test compiled it already).
  with compilation.count() as seen:
    report = check_op("conv2d", _bound(naive)(3, 2), name="s3p2")
  assert report.verdict == "pass", report.text()
  assert seen.compilations <= 1
