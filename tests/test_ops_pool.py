"""The maxpool2d, avgpool2d and dropout op kinds on candidates written the ways people write them,
right and wrong.

maxpool2d. Right: CS231n's naive loops (np.argmax: the first maximum), in bpref's argument order
and in CS231n's (dout, cache); a vectorised NumPy form (sliding windows, np.add.at); torch's
autograd of ``max_pool2d`` (its CPU kernel also picks the first maximum); a
``torch.autograd.Function`` that scatters through the returned indices; a ``jax.custom_vjp`` rule
with windows gathered by hand. Another tie convention (the last maximum, an even split) passes
with a note, and fails under ``strict_conventions``. Wrong: each classic mistake of
proofs/pool.md, which must fail with the finding that names it.

avgpool2d. Right: a course's loops, a vectorised NumPy form (one slice per window entry, dout
times a rounded 1 / pool^2), torch's autograd of ``avg_pool2d`` and torch's transposed
convolution with a constant kernel. Wrong: the 1 / pool^2 missing or 1 / pool, max pooling's
routing, overlapping windows assigned.

dropout. Right: the NumPy one-liner with a float and a bool mask, CS231n's ``dropout_backward``
wrapped (keep probability, pre-scaled mask), torch's autograd of x * mask / (1 - p), a
``torch.autograd.Function`` and a ``jax.custom_vjp`` rule. Wrong: the scale missing, twice,
non-inverted, the mask missing, a mask drawn anew in the backward.
"""

import numpy as np
import pytest

from bpref import compilation
from bpref.oracle.ops import check_op
from bpref.oracle.ops.pool import pool_stride


# ---------------------------------------------------------------- maxpool2d: right candidates

def _sizes(x, pool, stride):
  N, C, H, W = x.shape
  return N, C, (H - pool) // stride + 1, (W - pool) // stride + 1


def naive_loops(pool, stride):
  """CS231n's max_pool_backward_naive, in bpref's argument order."""
  def backward(x, dout):
    N, C, Ho, Wo = _sizes(x, pool, stride)
    dx = np.zeros_like(x)
    for n in range(N):
      for c in range(C):
        for i in range(Ho):
          for j in range(Wo):
            window = x[n, c, i * stride:i * stride + pool, j * stride:j * stride + pool]
            a, b = np.unravel_index(np.argmax(window), window.shape)
            dx[n, c, i * stride + a, j * stride + b] += dout[n, c, i, j]
    return dx
  return backward


def max_pool_backward_naive(dout, cache):
  """CS231n's signature: cache = (x, pool_param)."""
  x, pool_param = cache
  ph, pw, s = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
  N, C = x.shape[:2]
  dx = np.zeros_like(x)
  for n in range(N):
    for c in range(C):
      for i in range(dout.shape[2]):
        for j in range(dout.shape[3]):
          window = x[n, c, i * s:i * s + ph, j * s:j * s + pw]
          k = np.argmax(window)
          dx[n, c, i * s + k // pw, j * s + k % pw] += dout[n, c, i, j]
  return dx


def vectorised(pool, stride):
  """Sliding windows, the first maximum by np.argmax, np.add.at to accumulate overlaps."""
  def backward(x, dout):
    windows = np.lib.stride_tricks.sliding_window_view(x, (pool, pool), axis=(2, 3))
    windows = windows[:, :, ::stride, ::stride]  # (N, C, Ho, Wo, pool, pool)
    N, C, Ho, Wo = windows.shape[:4]
    k = windows.reshape(N, C, Ho, Wo, pool * pool).argmax(-1)
    rows = np.arange(Ho)[:, None] * stride + k // pool
    cols = np.arange(Wo)[None, :] * stride + k % pool
    n, c = np.meshgrid(np.arange(N), np.arange(C), indexing="ij")
    dx = np.zeros_like(x)
    np.add.at(dx, (n[..., None, None], c[..., None, None], rows, cols), dout)
    return dx
  return backward


def torch_autograd(pool, stride, function="max_pool2d"):
  """torch's autograd of ``torch.nn.functional.<function>`` (max_pool2d, avg_pool2d)."""
  def backward(x, dout):
    import torch

    xx = torch.tensor(x, requires_grad=True)
    getattr(torch.nn.functional, function)(xx, pool, stride).backward(torch.tensor(dout))
    return xx.grad.numpy()
  return backward


def torch_function(pool, stride):
  import torch

  class MaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
      out, idx = torch.nn.functional.max_pool2d(x, pool, stride, return_indices=True)
      ctx.save_for_backward(idx)
      ctx.shape = x.shape
      return out

    @staticmethod
    def backward(ctx, dout):
      (idx,) = ctx.saved_tensors
      N, C, H, W = ctx.shape
      dx = torch.zeros(N, C, H * W, dtype=dout.dtype)
      dx.scatter_add_(2, idx.reshape(N, C, -1), dout.reshape(N, C, -1))  # overlaps add up
      return dx.reshape(N, C, H, W)

  return MaxPool


def custom_vjp(pool, stride):
  import jax
  import jax.numpy as jnp

  @jax.custom_vjp
  def maxpool(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, pool, pool),
                                 (1, 1, stride, stride), "VALID")

  def fwd(x):
    return maxpool(x), x

  def bwd(x, dout):
    N, C, Ho, Wo = dout.shape
    rows = (jnp.arange(Ho) * stride)[:, None] + jnp.arange(pool)[None, :]  # (Ho, pool)
    cols = (jnp.arange(Wo) * stride)[:, None] + jnp.arange(pool)[None, :]
    win = x[:, :, rows[:, None, :, None], cols[None, :, None, :]].reshape(N, C, Ho, Wo, -1)
    k = jnp.argmax(win, axis=-1)  # (N, C, Ho, Wo): the first maximum
    r = rows[:, 0].reshape(1, 1, Ho, 1) + k // pool
    c = cols[:, 0].reshape(1, 1, 1, Wo) + k % pool
    n = jnp.arange(N)[:, None, None, None]
    ch = jnp.arange(C)[None, :, None, None]
    return (jnp.zeros_like(x).at[n, ch, r, c].add(dout),)

  maxpool.defvjp(fwd, bwd)
  return maxpool


RIGHT_POOL = {"naive_loops": naive_loops, "vectorised": vectorised,
              "torch_autograd": torch_autograd, "torch_function": torch_function,
              "custom_vjp": custom_vjp}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["p2s2", "p3s2"])
@pytest.mark.parametrize("way", sorted(set(RIGHT_POOL) - {"custom_vjp"}))
def test_a_right_maxpool_passes(way, name, dtype):
  if way.startswith("torch"):
    pytest.importorskip("torch")
  report = check_op("maxpool2d", RIGHT_POOL[way](*pool_stride(name)), name, dtype=dtype,
                    examples=20)
  assert report.verdict == "pass", report.text()
  assert report.cases >= 20 and not report.notes, report.text()


def test_a_candidate_that_needs_tiled_windows_is_named_where_it_runs():
  """mygrad's max_pool raises unless (H - K) is a multiple of the stride; bpref and PyTorch
  floor. Right where the windows tile, such a candidate is told so."""
  right = naive_loops(2, 2)

  def tiled_only(x, dout):
    if (x.shape[2] - 2) % 2 or (x.shape[3] - 2) % 2:
      raise ValueError("Stride and kernel dimensions are incompatible")
    return right(x, dout)

  report = check_op("maxpool2d", tiled_only, "p2s2", examples=20)
  assert report.kind == "exception", report.text()
  assert report.codes[0] == "shape_limit", report.text()
  assert "where the windows tile the input" in report.diagnosis[0].summary, report.text()


def test_a_custom_vjp_maxpool_rule_passes():
  """Few examples: the adapter compiles the rule once per shape."""
  report = check_op("maxpool2d", custom_vjp(3, 2), "p3s2", dtype="float32", examples=3)
  assert report.verdict == "pass" and report.forward_checked > 0, report.text()


@pytest.mark.deep
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["p2s2", "p2s1", "p3s2", "p3s3", "p3s1"])
def test_a_custom_vjp_maxpool_rule_passes_at_every_window(name, dtype):
  report = check_op("maxpool2d", custom_vjp(*pool_stride(name)), name, dtype=dtype, examples=10)
  assert report.verdict == "pass" and not report.notes, report.text()


def test_cs231n_signature_passes_and_the_slip_is_named():
  assert check_op("maxpool2d", max_pool_backward_naive, "p3s2", signature="cs231n",
                  examples=10).verdict == "pass"
  report = check_op("maxpool2d", max_pool_backward_naive, "p3s2", examples=10)
  assert report.verdict == "fail" and report.diagnosis[0].code == "signature", report.text()


@pytest.mark.deep
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["p2s2", "p2s1", "p3s2", "p3s3", "p3s1"])
@pytest.mark.parametrize("way", ["naive_loops", "vectorised", "torch_autograd"])
def test_a_right_maxpool_passes_at_every_seed_and_window(way, name, dtype, seed):
  if way.startswith("torch"):
    pytest.importorskip("torch")
  report = check_op("maxpool2d", RIGHT_POOL[way](*pool_stride(name)), name, dtype=dtype, seed=seed)
  assert report.verdict == "pass" and not report.notes, report.text()


# ---------------------------------------------------------------- maxpool2d: conventions and bugs

def _loops(pool, stride, route, assign=False):
  """Naive loops with the routing of one window's dout replaced: route(window, dout_ij, x_nc)
  returns the window's gradient, added (or, with ``assign``, assigned) to dx."""
  def backward(x, dout):
    N, C, Ho, Wo = _sizes(x, pool, stride)
    dx = np.zeros_like(x)
    for n in range(N):
      for c in range(C):
        for i in range(Ho):
          for j in range(Wo):
            sl = (n, c, slice(i * stride, i * stride + pool), slice(j * stride, j * stride + pool))
            grad = route(x[sl], dout[n, c, i, j], x[n, c]).astype(x.dtype)
            if assign:
              dx[sl] = grad
            else:
              dx[sl] += grad
    return dx
  return backward


def _last_tie(window, g, _):
  k = window.size - 1 - np.argmax(window.ravel()[::-1])
  out = np.zeros(window.size)
  out[k] = g
  return out.reshape(window.shape)


def _split_ties(window, g, _):
  mask = window == window.max()
  return mask * g / mask.sum()


def _all_ties(window, g, _):
  return (window == np.max(window)) * g


def _channel_max(window, g, channel):
  return (window == np.max(channel)) * g


def _first_only(window, g, _):
  out = np.zeros(window.size)
  out[np.argmax(window)] = g
  return out.reshape(window.shape)


def _max_from_zero(window, g, _):
  m, best = 0.0, None
  for k, v in enumerate(window.ravel()):
    if v > m:
      m, best = v, k
  out = np.zeros(window.size)
  if best is not None:
    out[best] = g
  return out.reshape(window.shape)


def _overwritten_at_max(pool, stride):
  """Naive loops with dx[...] = dout where += was meant."""
  def backward(x, dout):
    N, C, Ho, Wo = _sizes(x, pool, stride)
    dx = np.zeros_like(x)
    for n in range(N):
      for c in range(C):
        for i in range(Ho):
          for j in range(Wo):
            window = x[n, c, i * stride:i * stride + pool, j * stride:j * stride + pool]
            a, b = np.unravel_index(np.argmax(window), window.shape)
            dx[n, c, i * stride + a, j * stride + b] = dout[n, c, i, j]
    return dx
  return backward


@pytest.mark.parametrize("route, how", [(_last_tie, "last tied maximum in row-major"),
                                        (_split_ties, "splits it evenly")])
def test_another_tie_convention_passes_with_a_note_unless_strict(route, how):
  candidate = _loops(2, 2, route)
  report = check_op("maxpool2d", candidate, examples=10)
  assert report.verdict == "pass", report.text()
  assert len(report.notes) == 1 and how in report.notes[0], report.notes
  strict = check_op("maxpool2d", candidate, examples=10, strict_conventions=True)
  assert strict.verdict == "fail" and strict.kind == "convention", strict.text()


def test_the_last_tie_with_overlapping_windows_is_a_convention_too():
  report = check_op("maxpool2d", _loops(3, 1, _last_tie), "p3s1", examples=10)
  assert report.verdict == "pass" and "last tied maximum" in report.notes[0], report.text()


POOL_BUGS = {
    "all_ties": ("p2s2", lambda: _loops(2, 2, _all_ties)),
    "mask_from_output": ("p2s2", lambda: _loops(2, 2, _channel_max)),
    "max_init_zero": ("p2s2", lambda: _loops(2, 2, _max_from_zero)),
    "overlap_overwritten": ("p3s2", lambda: _overwritten_at_max(3, 2)),
}


def test_window_slices_assigned_over_overlaps_is_overlap_overwritten():
  report = check_op("maxpool2d", _loops(2, 1, _first_only, assign=True), "p2s1", examples=10)
  assert report.verdict == "fail" and report.diagnosis[0].code == "overlap_overwritten", report.text()


def test_all_ties_with_overlapping_windows_is_all_ties():
  report = check_op("maxpool2d", _loops(3, 1, _all_ties), "p3s1", examples=10)
  assert report.verdict == "fail" and report.diagnosis[0].code == "all_ties", report.text()


def test_maxpool_options_are_checked():
  loops = naive_loops(2, 2)
  with pytest.raises(ValueError, match=r"name the window side and the stride as p\{pool\}s\{stride\}"):
    check_op("maxpool2d", loops, "2x2")
  with pytest.raises(ValueError, match="layout 'nchw'"):
    check_op("maxpool2d", loops, layout="nhwc")
  assert check_op("maxpool2d", naive_loops(4, 3), "p4s3", examples=5).verdict == "pass"


# ---------------------------------------------------------------- avgpool2d

def avg_loops(pool, stride):
  """The loops of a course's average pooling: each window's dout / pool^2 added over it."""
  return _loops(pool, stride, lambda window, g, _: np.full(window.shape, g / (pool * pool)))


def avg_vectorised(pool, stride):
  """One slice per window entry, dout times a precomputed 1 / pool^2: the summation order of a
  vectorised layer, not of the loops."""
  def backward(x, dout):
    N, C, Ho, Wo = dout.shape
    share = dout * (1.0 / (pool * pool))
    dx = np.zeros_like(x)
    for a in range(pool):
      for b in range(pool):
        dx[:, :, a:a + (Ho - 1) * stride + 1:stride, b:b + (Wo - 1) * stride + 1:stride] += share
    return dx
  return backward


def avg_torch_conv(pool, stride):
  """torch's transposed convolution with a constant pool x pool kernel of 1 / pool^2: the
  backward step of average pooling as a framework writes it for depthwise layers."""
  def backward(x, dout):
    import torch

    N, C, H, W = x.shape
    d = torch.tensor(dout).reshape(N * C, 1, *dout.shape[2:])
    kernel = torch.full((1, 1, pool, pool), 1.0 / (pool * pool), dtype=d.dtype)
    dx = torch.nn.functional.conv_transpose2d(d, kernel, stride=stride)
    full = torch.zeros(N * C, 1, H, W, dtype=d.dtype)
    full[:, :, :dx.shape[2], :dx.shape[3]] = dx  # rows past the last window get nothing
    return full.reshape(N, C, H, W).numpy()
  return backward


RIGHT_AVG = {"loops": avg_loops, "vectorised": avg_vectorised,
             "torch_autograd": lambda pool, stride: torch_autograd(pool, stride, "avg_pool2d"),
             "torch_conv_transpose": avg_torch_conv}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["p2s2", "p3s1"])
@pytest.mark.parametrize("way", sorted(RIGHT_AVG))
def test_a_right_avgpool_passes(way, name, dtype):
  if way.startswith("torch"):
    pytest.importorskip("torch")
  report = check_op("avgpool2d", RIGHT_AVG[way](*pool_stride(name)), name, dtype=dtype, examples=20)
  assert report.verdict == "pass", report.text()
  assert report.cases >= 20 and not report.notes, report.text()


@pytest.mark.deep
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("way", sorted(RIGHT_AVG))
def test_a_right_avgpool_passes_at_every_seed_and_window(way, dtype, seed):
  if way.startswith("torch"):
    pytest.importorskip("torch")
  for name in ("p2s2", "p2s1", "p3s2", "p3s3", "p3s1"):
    report = check_op("avgpool2d", RIGHT_AVG[way](*pool_stride(name)), name, dtype=dtype, seed=seed)
    assert report.verdict == "pass" and not report.notes, report.text()


AVG_BUGS = {  # each planted in the course's loops (``_loops``, its route given each window)
    "scale_missing": ("p2s2", lambda: _loops(2, 2, lambda w, g, _: np.full(w.shape, g))),
    "scale_by_side": ("p3s2", lambda: _loops(3, 2, lambda w, g, _: np.full(w.shape, g / 3))),
    "max_routing": ("p2s2", lambda: _loops(2, 2, _first_only)),
    "overlap_overwritten": ("p3s1", lambda: _loops(3, 1, lambda w, g, _: np.full(w.shape, g / 9),
                                                   assign=True)),
}


POOLING_BUGS = {**{f"maxpool2d-{bug}": ("maxpool2d", bug, *v) for bug, v in POOL_BUGS.items()},
                **{f"avgpool2d-{bug}": ("avgpool2d", bug, *v) for bug, v in AVG_BUGS.items()}}


@pytest.mark.parametrize("seed", range(10))  # seeds 1 to 9: the sweep tier
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("label", sorted(POOLING_BUGS))
def test_each_classic_pooling_bug_fails_with_its_name(label, dtype, seed):
  kind, bug, name, make = POOLING_BUGS[label]
  report = check_op(kind, make(), name, dtype=dtype, seed=seed, examples=20)
  assert report.verdict == "fail"
  assert report.diagnosis[0].code == bug, report.text()


def test_a_missing_scale_passes_at_a_window_of_one_and_fails_at_a_larger_one():
  """pool 1: the mean of one entry is the entry, and the missing 1 / pool^2 changes nothing."""
  assert check_op("avgpool2d", avg_loops(1, 1), "p1s1", examples=10).verdict == "pass"
  missing = _loops(1, 1, lambda w, g, _: np.full(w.shape, g))
  assert check_op("avgpool2d", missing, "p1s1", examples=10).verdict == "pass"
  report = check_op("avgpool2d", _loops(3, 3, lambda w, g, _: np.full(w.shape, g)), "p3s3",
                    examples=10)
  assert report.verdict == "fail" and report.diagnosis[0].code == "scale_missing", report.text()


def test_avgpool_options_are_checked():
  with pytest.raises(ValueError, match=r"not a name of kind 'avgpool2d'.*p\{pool\}s\{stride\}"):
    check_op("avgpool2d", avg_loops(2, 2), "2x2")
  with pytest.raises(ValueError, match="signature='cs231n' is not valid for kind 'avgpool2d'"):
    check_op("avgpool2d", avg_loops(2, 2), signature="cs231n")
  with pytest.raises(ValueError, match="layout 'nchw'"):
    check_op("avgpool2d", avg_loops(2, 2), layout="nhwc")


# ---------------------------------------------------------------- dropout

def numpy_dropout(p):
  return lambda x, mask, dout: dout * mask / (1 - p)


def cs231n_wrapped(p):
  """CS231n's dropout_backward: p is the keep probability, the mask scaled by 1 / keep."""
  def dropout_backward(dout, cache):
    dropout_param, mask = cache
    return dout * mask if dropout_param["mode"] == "train" else dout

  keep = 1 - p
  return lambda x, mask, dout: dropout_backward(dout, ({"p": keep, "mode": "train"},
                                                       (mask / keep).astype(x.dtype)))


def torch_dropout_autograd(p):
  def backward(x, mask, dout):
    import torch

    xx = torch.tensor(x, requires_grad=True)
    (xx * torch.tensor(mask) / (1 - p)).backward(torch.tensor(dout))
    return xx.grad.numpy()
  return backward


def torch_dropout_function(p):
  import torch

  class Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mask):
      ctx.save_for_backward(mask)
      return x * mask / (1 - p)

    @staticmethod
    def backward(ctx, dout):
      (mask,) = ctx.saved_tensors
      return dout * mask / (1 - p), None

  return Dropout


def dropout_custom_vjp(p):
  import jax

  @jax.custom_vjp
  def dropout(x, mask):
    return x * mask / (1 - p)

  def fwd(x, mask):
    return dropout(x, mask), mask

  def bwd(mask, dout):
    return dout * mask / (1 - p), None

  dropout.defvjp(fwd, bwd)
  return dropout


RIGHT_DROPOUT = {"numpy": numpy_dropout, "cs231n_wrapped": cs231n_wrapped,
                 "torch_autograd": torch_dropout_autograd, "torch_function": torch_dropout_function,
                 "custom_vjp": dropout_custom_vjp}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["p0.5", "p0.9"])
@pytest.mark.parametrize("way", sorted(set(RIGHT_DROPOUT) - {"custom_vjp"}))
def test_a_right_dropout_passes(way, name, dtype):
  if way.startswith("torch"):
    pytest.importorskip("torch")
  p = float(name[1:])
  report = check_op("dropout", RIGHT_DROPOUT[way](p), name, dtype=dtype, examples=20)
  assert report.verdict == "pass", report.text()
  assert report.cases >= 20


def test_a_custom_vjp_dropout_rule_passes():
  report = check_op("dropout", dropout_custom_vjp(0.9), "p0.9", dtype="float32", examples=3)
  assert report.verdict == "pass" and report.forward_checked > 0, report.text()


@pytest.mark.deep
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["p0", "p0.1", "p0.5"])
def test_a_custom_vjp_dropout_rule_passes_at_every_p(name, dtype):
  report = check_op("dropout", dropout_custom_vjp(float(name[1:])), name, dtype=dtype, examples=10)
  assert report.verdict == "pass", report.text()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_bool_mask_and_p_zero_pass(dtype):
  assert check_op("dropout", numpy_dropout(0.1), "p0.1", takes="bool", dtype=dtype,
                  examples=10).verdict == "pass"
  assert check_op("dropout", numpy_dropout(0.0), "p0", dtype=dtype, examples=10).verdict == "pass"


@pytest.mark.deep
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["p0", "p0.1", "p0.5", "p0.9"])
@pytest.mark.parametrize("way", ["numpy", "cs231n_wrapped", "torch_autograd"])
def test_a_right_dropout_passes_at_every_seed_and_p(way, name, dtype, seed):
  if way.startswith("torch"):
    pytest.importorskip("torch")
  for takes in ("float", "bool"):
    report = check_op("dropout", RIGHT_DROPOUT[way](float(name[1:])), name, dtype=dtype,
                      seed=seed, takes=takes)
    assert report.verdict == "pass", report.text()


def _fresh_mask(p):
  """The mask drawn anew in the backward step (a seeded generator, so that the test is
  deterministic; each call draws a new mask all the same)."""
  rng = np.random.default_rng(1)
  return lambda x, mask, dout: dout * (rng.random(x.shape) >= p) / (1 - p)


DROPOUT_BUGS = {
    "scale_missing": lambda p: lambda x, mask, dout: dout * mask,
    "scale_twice": lambda p: lambda x, mask, dout: dout * (mask / (1 - p)) / (1 - p),
    "non_inverted": lambda p: lambda x, mask, dout: dout * mask * (1 - p),
    "mask_missing": lambda p: lambda x, mask, dout: dout / (1 - p),
    "new_mask": _fresh_mask,
}


@pytest.mark.parametrize("seed", range(10))  # seeds 1 to 9: the sweep tier
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("bug", sorted(DROPOUT_BUGS))
def test_each_classic_dropout_bug_fails_with_its_name(bug, dtype, seed):
  report = check_op("dropout", DROPOUT_BUGS[bug](0.5), "p0.5", dtype=dtype, seed=seed, examples=20)
  assert report.verdict == "fail"
  assert report.diagnosis[0].code == bug, report.text()


def test_a_missing_scale_is_right_at_p_zero_and_wrong_at_every_other_p():
  assert check_op("dropout", DROPOUT_BUGS["scale_missing"](0.0), "p0", examples=10).verdict == "pass"
  for name in ("p0.1", "p0.9"):
    report = check_op("dropout", DROPOUT_BUGS["scale_missing"](0.0), name, examples=10)
    assert report.diagnosis[0].code == "scale_missing", report.text()


def test_all_zero_masks_are_skipped_as_vacuous():
  report = check_op("dropout", numpy_dropout(0.5), examples=10)
  assert report.verdict == "pass" and report.dropped.get("vacuous", 0) > 0, report.text()
  assert report.skipped == report.dropped["vacuous"]


def test_dropout_options_are_checked():
  with pytest.raises(ValueError, match=r"0 <= p < 1, as p\{p\}.*keep probability q give p = 1 - q"):
    check_op("dropout", numpy_dropout(0.5), "p1")
  with pytest.raises(ValueError, match="'float'.*or 'bool'"):
    check_op("dropout", numpy_dropout(0.5), takes="int")
  assert check_op("dropout", numpy_dropout(0.25), "p0.25", examples=5).verdict == "pass"


def test_a_default_search_compiles_a_handful_of_programs():
  with compilation.count() as seen:
    check_op("maxpool2d", naive_loops(3, 1), "p3s1")
    check_op("dropout", numpy_dropout(0.1), "p0.1")
  assert seen.compilations <= 8, seen
