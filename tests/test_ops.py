"""check_op on layer functions written as courses and C trainers write them, and on their mutants.

The layer functions below are independent of bpref: a cs231n-style course (``affine_backward(dout,
cache)``, ``relu_backward``, ``softmax_loss`` with integer labels, cache tuples) and an llm.c-style
C trainer in NumPy (``matmul_backward`` accumulating into output buffers with loops,
``gelu_backward`` with the tanh approximation and cosh, ``crossentropy_softmax_backward`` from
probabilities and labels). The correct ones must pass; each mutant is one realistic bug, and it
must be caught with its finding. ``python tests/test_ops.py`` prints the measured table.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import pytest

from bpref.activations import SELU_ALPHA, SELU_SCALE
from bpref.oracle.ops import add_op_arguments, check_op, expected, run_op_command
from bpref.testing import assert_op_correct

# ---------------------------------------------------------------- a course's layers (cs231n style)


def affine_forward(x, w, b):
  out = x.reshape(x.shape[0], -1) @ w + b
  return out, (x, w, b)


def affine_backward(dout, cache):
  x, w, b = cache
  dx = (dout @ w.T).reshape(x.shape)
  dw = x.reshape(x.shape[0], -1).T @ dout
  db = np.sum(dout, axis=0)
  return dx, dw, db


def relu_forward(x):
  return np.maximum(0, x), x


def relu_backward(dout, cache):
  x = cache
  dx = dout.copy()
  dx[x <= 0] = 0
  return dx


def affine_relu_forward(x, w, b):
  a, fc_cache = affine_forward(x, w, b)
  out, relu_cache = relu_forward(a)
  return out, (fc_cache, relu_cache)


def affine_relu_backward(dout, cache):
  fc_cache, relu_cache = cache
  da = relu_backward(dout, relu_cache)
  return affine_backward(da, fc_cache)


def softmax_loss(x, y):
  shifted = x - np.max(x, axis=1, keepdims=True)
  Z = np.sum(np.exp(shifted), axis=1, keepdims=True)
  log_probs = shifted - np.log(Z)
  probs = np.exp(log_probs)
  N = x.shape[0]
  loss = -np.sum(log_probs[np.arange(N), y]) / N
  dx = probs.copy()
  dx[np.arange(N), y] -= 1
  dx /= N
  return loss, dx


def tanh_backward_from_output(dout, next_h):  # an RNN step's tanh, from its saved output
  return (1 - next_h ** 2) * dout


def sigmoid(x):
  with np.errstate(over="ignore"):  # exp(-x) = inf for x far below 0 gives 1 / inf = 0, as it should
    return 1 / (1 + np.exp(-x))


def sigmoid_backward(dout, x):
  s = sigmoid(x)
  return dout * s * (1 - s)


# ---------------------------------------------------------------- a C trainer's layers (llm.c style)

GELU_SCALING_FACTOR = math.sqrt(2.0 / math.pi)


def matmul_backward(dinp, dweight, dbias, dout, inp, weight, B, C, OC):
  for b in range(B):
    for o in range(OC):
      d = dout[b, o]
      dinp[b] += weight[o] * d
      dweight[o] += inp[b] * d
      if dbias is not None:
        dbias[o] += d


def gelu_backward(dinp, inp, dout, N):
  with np.errstate(over="ignore"):
    for i in range(N):
      x = inp[i]
      cube = 0.044715 * x * x * x
      tanh_arg = GELU_SCALING_FACTOR * (x + cube)
      tanh_out = np.tanh(tanh_arg)
      coshf_out = np.cosh(tanh_arg)
      sech_out = 1 / (coshf_out * coshf_out)
      local_grad = 0.5 * (1 + tanh_out) + x * 0.5 * sech_out * GELU_SCALING_FACTOR * (
          1 + 3 * 0.044715 * x * x)
      dinp[i] += local_grad * dout[i]


def crossentropy_softmax_backward(dlogits, dlosses, probs, targets, B, V):
  for b in range(B):
    ix = targets[b]
    for i in range(V):
      indicator = 1 if i == ix else 0
      dlogits[b, i] += (probs[b, i] - indicator) * dlosses[b]


def softmax_backward_loops(dinp, out, dout, B, V):
  for b in range(B):
    for i in range(V):
      s = 0 * out[b, i]
      for j in range(V):
        s += out[b, j] * ((1 if i == j else 0) - out[b, i]) * dout[b, j]
      dinp[b, i] = s


# ---------------------------------------------------------------- op candidates built on them

def cs_dense(x, W, b, dout):
  return affine_backward(dout, (x, W, b))


def cs_relu(z, dout):
  return relu_backward(dout, z)


def cs_layer(x, W, b, dout):
  _, cache = affine_relu_forward(x, W, b)
  return affine_relu_backward(dout, cache)


def cs_softmax_loss(y, t):
  return softmax_loss(y, t)


def cs_tanh_a(a, dout):
  return tanh_backward_from_output(dout, a)


def cs_sigmoid(z, dout):
  return sigmoid_backward(dout, z)


def c_dense(x, W, b, dout):
  dinp, dweight = np.zeros_like(x), np.zeros_like(W)
  dbias = None if b is None else np.zeros_like(b)
  matmul_backward(dinp, dweight, dbias, dout, x, W, x.shape[0], x.shape[1], W.shape[0])
  return (dinp, dweight, dbias) if b is not None else (dinp, dweight)


def c_gelu(z, dout):
  dinp = np.zeros(z.size, z.dtype)
  gelu_backward(dinp, z.ravel(), dout.ravel(), z.size)
  return dinp.reshape(z.shape)


def c_crossentropy(probs, labels):
  B, V = probs.shape
  dlogits = np.zeros_like(probs)
  dlosses = np.full(B, 1.0 / B, probs.dtype)
  crossentropy_softmax_backward(dlogits, dlosses, probs, labels, B, V)
  return dlogits


def c_softmax(y, dout):
  dinp = np.zeros_like(y)
  softmax_backward_loops(dinp, y, dout, *y.shape)
  return dinp


def c_layer_gelu(x, W, b, dout):
  z = x @ W.T + b
  dz = c_gelu(z, dout)
  return c_dense(x, W, b, dz)


CORRECT = {
    "cs231n affine_backward": ("dense", None, dict(layout="in_out"), cs_dense),
    "cs231n relu_backward": ("activation", "relu", {}, cs_relu),
    "cs231n affine_relu_backward": ("layer", "relu", dict(layout="in_out"), cs_layer),
    "cs231n softmax_loss": ("loss", "softmax_cross_entropy", dict(targets="labels"), cs_softmax_loss),
    "RNN tanh from its output": ("activation", "tanh", dict(takes="a"), cs_tanh_a),
    "cs231n sigmoid": ("activation", "sigmoid", {}, cs_sigmoid),
    "llm.c matmul_backward": ("dense", None, {}, c_dense),
    "llm.c matmul_backward, no bias": ("dense", None, dict(bias=False), c_dense),
    "llm.c gelu_backward as gelu_tanh": ("activation", "gelu_tanh", {}, c_gelu),
    "llm.c crossentropy_softmax_backward": ("loss", "cross_entropy",
                                            dict(takes="probs", targets="labels"), c_crossentropy),
    "C softmax backward from y": ("softmax", None, dict(takes="y"), c_softmax),
    "C matmul + gelu layer as gelu_tanh": ("layer", "gelu_tanh", {}, c_layer_gelu),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("label", list(CORRECT))
def test_correct_layer_functions_pass(label, dtype):
  kind, name, options, fn = CORRECT[label]
  report = check_op(kind, fn, name=name, dtype=dtype, examples=20, **options)
  assert report.verdict == "pass", report.text()
  assert report.cases >= 20  # every probe and drawn case that checks something was checked


def test_gelu_tanh_approximation_is_a_convention_note():
  report = check_op("activation", c_gelu, name="gelu", examples=10)
  assert report.verdict == "pass", report.text()
  assert any("tanh approximation" in n for n in report.notes), report.notes
  strict = check_op("activation", c_gelu, name="gelu", examples=10, strict_conventions=True)
  assert strict.verdict == "fail" and strict.kind == "convention"


def test_kink_conventions_are_notes():
  ge = check_op("activation", lambda z, dout: dout * (z >= 0), name="relu", examples=5)
  assert ge.verdict == "pass" and any("relu'(0) = 1" in n for n in ge.notes), ge.text()
  strict = check_op("activation", lambda z, dout: dout * (z >= 0), name="relu", examples=5,
                    strict_conventions=True)
  assert strict.verdict == "fail" and strict.kind == "convention"


# ---------------------------------------------------------------- saturated units (issue 31)
# Once tanh or sigma has rounded to +-1 or 1, every standard form of f' is exact up to an ulp,
# so the allowance must stop growing there: a backward that is wrong only far out (f' = 0, 1%
# low or 256 ulps low for z > 50, where f' = 1 to the last digit) must fail, in float32 too, and
# the standard forms must pass. 256 ulps: the allowance there is a few ulps, and before issue 31
# it grew as |z| (600 ulps at z = 100) and, for gelu_tanh, silu and mish, faster.


def _gelu_tanh_backward_torch_formula(z, dout):
  # PyTorch's GeluBackward, approximate='tanh': t = tanh(c (z + k z^3)),
  # f' = (1 + t) / 2 + z (1 - t^2) c (1 + 3 k z^2) / 2
  c, k = GELU_SCALING_FACTOR, 0.044715
  t = np.tanh(c * (z + k * z ** 3))
  return dout * (0.5 * (1 + t) + 0.5 * z * (1 - t * t) * c * (1 + 3 * k * z * z))


def _silu_backward_torch_formula(z, dout):
  s = sigmoid(z)
  return dout * s * (1 + z * (1 - s))  # PyTorch's silu_backward: sigma (1 + z (1 - sigma))


def _mish_backward_torch_formula(z, dout):
  with np.errstate(over="ignore"):  # exp(z) = inf far above 0: log1p(inf) = inf, tanh(inf) = 1
    t = np.tanh(np.log1p(np.exp(z)))  # tanh(softplus(z))
  return dout * (t + z * sigmoid(z) * (1 - t * t))  # PyTorch's mish_backward: t + z sigma (1 - t^2)


SATURATING = {  # op name: its backward as PyTorch writes it (gelu: the tanh approximation)
    "gelu_tanh": _gelu_tanh_backward_torch_formula,
    "gelu": _gelu_tanh_backward_torch_formula,
    "silu": _silu_backward_torch_formula,
    "mish": _mish_backward_torch_formula,
}


def _mish_backward_softplus_by_definition(z, dout):
  """mish' with softplus as its definition writes it, log(1 + e^z), through logaddexp's max
  (tinygrad's softplus): 1 + e^z rounds, so s is off by u absolute, 0 once e^z < u."""
  m = np.maximum(z, 0)
  t = np.tanh(np.log(np.exp(z - m) + np.exp(-m)) + m)
  return dout * (t + z * sigmoid(z) * (1 - t * t))


def _tanh_backward_in_float32(z, dout):
  t = np.tanh(z.astype(np.float32))
  return (dout.astype(np.float32) * (1 - t * t)).astype(z.dtype)


def _sin_backward_cos_of_a_rounded_argument(z, dout):
  return dout * np.cos(z.astype(np.float32).astype(np.float64))  # z rounded to float32 first


@pytest.mark.parametrize("backward, name, code", [
    (_tanh_backward_in_float32, "tanh", "float32_arithmetic"),
    (_sin_backward_cos_of_a_rounded_argument, "sin", "lower_precision"),
])
def test_a_float64_answer_right_only_to_float32_precision_is_named(backward, name, code):
  report = check_op("activation", backward, name=name, dtype="float64", examples=20)
  assert report.verdict == "fail", report.text()
  assert report.codes == [code], report.text()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mish_with_softplus_by_its_definition_passes(dtype):
  # far below 0, mish'(z) ~ (1 + z) e^z and the form loses the e^z of t: 0.57% of f' at z = -177
  for seed in range(3):
    report = check_op("activation", _mish_backward_softplus_by_definition, name="mish",
                      dtype=dtype, seed=seed, examples=60)
    assert report.verdict == "pass", report.text()


def _wrong_above_50(backward, factor=0.0):
  def mutant(z, dout):  # f' times factor for z > 50, where f' = 1 to the last digit, else right
    right = backward(z, dout)
    times = 1 - 256 * np.finfo(z.dtype).eps if factor == "256 ulps" else factor
    return np.where(z > 50, (times * right).astype(right.dtype), right)
  return mutant


@pytest.mark.parametrize("factor", [0.0, 0.99, "256 ulps"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(SATURATING))
def test_derivative_wrong_only_where_saturated_is_caught(name, dtype, factor):
  for seed in range(3):
    report = check_op("activation", _wrong_above_50(SATURATING[name], factor), name=name,
                      dtype=dtype, seed=seed)
    assert report.verdict == "fail", report.text()
    assert np.max(report.case["arrays"]["z"]) > 50, report.text()  # caught where it is wrong


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(SATURATING))
def test_standard_saturating_backward_passes(name, dtype):
  for seed in range(3):
    report = check_op("activation", SATURATING[name], name=name, dtype=dtype, seed=seed)
    assert report.verdict == "pass", report.text()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(SATURATING))
def test_torch_saturating_backward_passes(name, dtype):
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  forward = {"gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
             "gelu": lambda t: F.gelu(t, approximate="tanh"), "silu": F.silu, "mish": F.mish}[name]

  def backward(z, dout):
    t = torch.from_numpy(np.ascontiguousarray(z)).requires_grad_(True)
    forward(t).backward(torch.from_numpy(np.ascontiguousarray(dout)))
    return t.grad.numpy()

  for seed in range(3):
    report = check_op("activation", backward, name=name, dtype=dtype, seed=seed)
    assert report.verdict == "pass", report.text()
    mutant = check_op("activation", _wrong_above_50(backward), name=name, dtype=dtype, seed=seed)
    assert mutant.verdict == "fail", mutant.text()


# ---------------------------------------------------------------- mutants


def _mutant_dense_dw_transposed(x, W, b, dout):
  dx, dw, db = cs_dense(x, W, b, dout)
  return dx, dout.T @ x, db


def _mutant_dense_db_not_summed(x, W, b, dout):
  dx, dw, db = cs_dense(x, W, b, dout)
  return dx, dw, dout.copy()


def _mutant_dense_mean(x, W, b, dout):
  dx, dw, db = cs_dense(x, W, b, dout)
  return dx, dw / x.shape[0], db / x.shape[0]


def _mutant_dense_sign(x, W, b, dout):
  dx, dw, db = cs_dense(x, W, b, dout)
  return -dx, dw, db


def _mutant_c_dense_assign(x, W, b, dout):  # dweight[o] = ... where += was meant
  dinp, dweight, dbias = np.zeros_like(x), np.zeros_like(W), np.zeros_like(b)
  for bb in range(x.shape[0]):
    for o in range(W.shape[0]):
      d = dout[bb, o]
      dinp[bb] += W[o] * d
      dweight[o] = x[bb] * d
      dbias[o] += d
  return dinp, dweight, dbias


def _mutant_c_dense_first_row_bias(x, W, b, dout):
  dinp, dweight, dbias = c_dense(x, W, b, dout)
  return dinp, dweight, dout[0].copy()


def _mutant_c_dense_dinp_summed(x, W, b, dout):
  dinp, dweight, dbias = c_dense(x, W, b, dout)
  return np.broadcast_to(dinp.sum(axis=0), dinp.shape).copy(), dweight, dbias


def _mutant_c_dense_weight_transposed(x, W, b, dout):  # dinp from W^T: runs on square W only
  dinp, dweight, dbias = c_dense(x, W, b, dout)
  return dout @ W.T, dweight, dbias


def _mutant_relu_nonzero(z, dout):
  return dout * (z != 0)


def _mutant_relu_missing(z, dout):
  return dout.copy()


def _mutant_relu_mean(z, dout):
  return relu_backward(dout, z) / z.shape[0]


def _mutant_leaky_zero_below(z, dout):
  return dout * np.where(z > 0, 1.0, 0.0).astype(z.dtype)


def _mutant_tanh_a_form_fed_z(z, dout):
  return (1 - z ** 2) * dout


def _mutant_tanh_z_form_fed_a(a, dout):
  return (1 - np.tanh(a) ** 2) * dout


def _mutant_sigmoid_at_a(z, dout):
  s = sigmoid(z)
  return sigmoid_backward(dout, s)


def _mutant_sigmoid_sign(z, dout):
  return -sigmoid_backward(dout, z)


def _mutant_softmax_diagonal(y, dout):
  return dout * y * (1 - y)


def _mutant_softmax_batch_sum(y, dout):
  return y * (dout - np.sum(dout * y))


def _mutant_softmax_axis0(z, dout):
  e = np.exp(z - z.max(axis=0, keepdims=True))
  y = e / e.sum(axis=0, keepdims=True)
  return y * (dout - np.sum(dout * y, axis=0, keepdims=True))


def _mutant_softmax_loss_no_mean(y, t):
  loss, dx = softmax_loss(y, t)
  return loss, dx * y.shape[0]


def _mutant_softmax_loss_mean_twice(y, t):
  loss, dx = softmax_loss(y, t)
  return loss, dx / y.shape[0]


def _mutant_crossentropy_not_fused(probs, labels):
  B, V = probs.shape
  onehot = (labels[:, None] == np.arange(V)[None, :]).astype(probs.dtype)
  return -onehot / probs / B


def _mutant_squared_error_half(y, t):
  return (y - t) / y.shape[0]


def _mutant_squared_error_per_output(y, t):
  return 2 * (y - t) / y.size


def _mutant_cs_layer_dx_unmasked(x, W, b, dout):
  _, cache = affine_relu_forward(x, W, b)
  dx, dw, db = affine_relu_backward(dout, cache)
  return dout @ W.T, dw, db


def _mutant_layer_tanh_at_a(x, W, b, dout):
  a = np.tanh(x @ W.T + b)
  delta = dout * (1 - np.tanh(a) ** 2)
  return delta @ W, delta.T @ x, delta.sum(axis=0)


def _mutant_layer_relu_mean(x, W, b, dout):
  dx, dw, db = cs_layer(x, W, b, dout)
  return dx, dw / x.shape[0], db / x.shape[0]


def _mutant_layer_softmax_diagonal(x, W, b, dout):
  z = x @ W.T + b
  e = np.exp(z - z.max(axis=1, keepdims=True))
  y = e / e.sum(axis=1, keepdims=True)
  delta = dout * y * (1 - y)
  return delta @ W, delta.T @ x, delta.sum(axis=0)


def _mutant_gelu_missing_three(z, dout):
  x = z
  t = np.tanh(GELU_SCALING_FACTOR * (x + 0.044715 * x ** 3))
  local = 0.5 * (1 + t) + x * 0.5 * (1 - t * t) * GELU_SCALING_FACTOR * (1 + 0.044715 * x * x)
  return local * dout


MUTANTS = {
    # name: (kind, op name, options, function, the findings that name the bug)
    "affine_backward: dW transposed": ("dense", None, dict(layout="in_out"),
                                       _mutant_dense_dw_transposed, {"transposed"}),
    "affine_backward: db not summed over the batch": ("dense", None, dict(layout="in_out"),
                                                      _mutant_dense_db_not_summed,
                                                      {"batch_sum_missing"}),
    "affine_backward: dW, db averaged (1/B)": ("dense", None, dict(layout="in_out"),
                                              _mutant_dense_mean, {"constant_factor"}),
    "affine_backward: dx sign": ("dense", None, dict(layout="in_out"), _mutant_dense_sign,
                                 {"sign_flip"}),
    "matmul_backward: dweight = where += was meant": ("dense", None, {}, _mutant_c_dense_assign,
                                                      {"batch_sum_missing"}),
    "matmul_backward: dbias from the first example": ("dense", None, {},
                                                      _mutant_c_dense_first_row_bias,
                                                      {"batch_sum_missing"}),
    "matmul_backward: dinp summed over the batch": ("dense", None, {},
                                                    _mutant_c_dense_dinp_summed,
                                                    {"batch_sum_extra"}),
    "matmul_backward: dinp from W^T": ("dense", None, {}, _mutant_c_dense_weight_transposed,
                                       {"transposed"}),
    "relu_backward: z != 0": ("activation", "relu", {}, _mutant_relu_nonzero, {"kink_side"}),
    "relu_backward: no mask": ("activation", "relu", {}, _mutant_relu_missing, {"fprime_missing"}),
    "relu_backward: 1/B": ("activation", "relu", {}, _mutant_relu_mean, {"constant_factor"}),
    "leaky_relu_backward: 0 below the kink": ("activation", "leaky_relu", {},
                                              _mutant_leaky_zero_below, {"kink_side"}),
    "tanh: 1 - z^2 fed z": ("activation", "tanh", {}, _mutant_tanh_a_form_fed_z,
                            {"activation_derivative"}),
    "tanh: 1 - tanh(a)^2 fed a": ("activation", "tanh", dict(takes="a"), _mutant_tanh_z_form_fed_a,
                                  {"fprime_at_a"}),
    "sigmoid_backward at a": ("activation", "sigmoid", {}, _mutant_sigmoid_at_a, {"fprime_at_a"}),
    "sigmoid_backward sign": ("activation", "sigmoid", {}, _mutant_sigmoid_sign, {"sign_flip"}),
    "softmax: diagonal Jacobian": ("softmax", None, dict(takes="y"), _mutant_softmax_diagonal,
                                   {"softmax_jacobian_diagonal"}),
    "softmax: <dout, y> summed over the batch": ("softmax", None, dict(takes="y"),
                                                 _mutant_softmax_batch_sum, {"batch_sum_extra"}),
    "softmax: over axis 0": ("softmax", None, {}, _mutant_softmax_axis0, {"transposed"}),
    "softmax_loss: no /N": ("loss", "softmax_cross_entropy", dict(targets="labels"),
                            _mutant_softmax_loss_no_mean, {"constant_factor"}),
    "softmax_loss: /N twice": ("loss", "softmax_cross_entropy", dict(targets="labels"),
                               _mutant_softmax_loss_mean_twice, {"constant_factor"}),
    "crossentropy backward: dC/dy, not fused": ("loss", "cross_entropy",
                                                dict(takes="probs", targets="labels"),
                                                _mutant_crossentropy_not_fused,
                                                {"softmax_jacobian_missing"}),
    "squared_error: the 1/2 convention": ("loss", "squared_error", {}, _mutant_squared_error_half,
                                          {"constant_factor"}),
    "squared_error: mean over outputs too": ("loss", "squared_error", {},
                                             _mutant_squared_error_per_output, {"constant_factor"}),
    "affine_relu_backward: dx without the relu mask": ("layer", "relu", dict(layout="in_out"),
                                                       _mutant_cs_layer_dx_unmasked,
                                                       {"fprime_missing"}),
    "tanh layer: f'(a)": ("layer", "tanh", {}, _mutant_layer_tanh_at_a, {"fprime_at_a"}),
    "affine_relu_backward: 1/B": ("layer", "relu", dict(layout="in_out"), _mutant_layer_relu_mean,
                                  {"constant_factor"}),
    "softmax layer: diagonal Jacobian": ("layer", "softmax", {}, _mutant_layer_softmax_diagonal,
                                         {"softmax_jacobian_diagonal"}),
    "gelu_backward: the 3 of 3 k z^2 missing": ("activation", "gelu_tanh", {},
                                                _mutant_gelu_missing_three,
                                                {"activation_derivative"}),
}


@pytest.mark.parametrize("label", list(MUTANTS))
def test_mutant_caught_and_diagnosed(label):
  kind, name, options, fn, codes = MUTANTS[label]
  report = check_op(kind, fn, name=name, examples=20, **options)
  assert report.verdict == "fail", report.text()
  if codes:
    assert codes & set(report.codes), report.text()


@pytest.mark.parametrize("seed", [4, 7])
def test_a_derivative_wrong_only_at_the_kink_is_told_from_f_prime_missing(seed):
  """relu' = (z != 0) is f' missing everywhere but at z = 0: only a planted kink tells them
  apart. At seed 4 the kink case among the confirmations drew no kink (each entry is one with
  probability 0.45; of 6 entries none, 2.8% of draws); at seed 7 it drew z <= 0 everywhere, an
  answer of 0 that checks nothing. f' missing then came first."""
  report = check_op("activation", _mutant_relu_nonzero, name="relu", seed=seed, examples=20)
  assert report.verdict == "fail"
  assert [f.code for f in report.diagnosis] == ["kink_side"], report.text()


def _elu_from_relus(x, W, b, dout):
  """A layer of elu written as tinygrad writes it, elu(z) = relu(z) - relu(1 - exp(z)), its
  backward the chain rule through both relus with relu'(0) = 0: elu'(0) comes out 0 where
  elu is C^1 with elu'(0) = 1 (the exponential taken of min(z, 0), so that it never overflows)."""
  z = x @ W.T + b
  e = np.exp(np.minimum(z, 0))
  delta = dout * ((z > 0) + ((1 - e) > 0) * e).astype(x.dtype)
  return delta @ W, delta.T @ x, delta.sum(axis=0)


def _exp_everywhere(kind):
  """Backward functions that take exp of every z, as tinygrad's elu and selu do in their
  unused branch and a softmax without its max subtracted: NaN where exp(z) overflows."""
  def elu(z, dout):
    with np.errstate(over="ignore", invalid="ignore"):
      e = np.exp(z)
      return dout * (np.where(z > 0, 1.0, e) + 0 * e)

  def selu_layer(x, W, b, dout):
    z = x @ W.T + b
    with np.errstate(over="ignore", invalid="ignore"):
      e = np.exp(z)  # the branch z < 0 computed everywhere, then selected: 0 * inf in the other
      delta = dout * SELU_SCALE * ((z >= 0) + (z < 0) * SELU_ALPHA * e + 0 * e)
    delta = delta.astype(x.dtype)
    return delta @ W, delta.T @ x, delta.sum(axis=0)

  def softmax(z, dout):
    with np.errstate(over="ignore", invalid="ignore"):
      e = np.exp(z)
      y = e / e.sum(axis=-1, keepdims=True)
    return y * (dout - (dout * y).sum(axis=-1, keepdims=True))
  return {"elu": elu, "selu": selu_layer, "softmax": softmax}[kind]


@pytest.mark.parametrize("kind, name, words", [
    ("activation", "elu", "dz NaN or inf only where |z| > 88.72, where exp(z) or exp(-z) overflows"),
    ("layer", "selu", "NaN or inf only where |z| > 88.72"),
    ("softmax", None, "without subtracting each row's maximum"),
])
def test_nan_where_an_exponential_overflows_is_named(kind, name, words):
  report = check_op(kind, _exp_everywhere(name or kind), name=name, dtype="float32", seed=0,
                    examples=40)
  assert report.verdict == "fail" and report.kind == "nonfinite", report.text()
  assert report.codes[0] == "exp_overflow" and words in report.text(), report.text()


def _relu_layer_at_kink(value):
  def backward(x, W, b, dout):
    z = x @ W.T + b
    delta = dout * np.where(z > 0, 1.0, np.where(z == 0, value, 0.0)).astype(x.dtype)
    return delta @ W, delta.T @ x, delta.sum(axis=0)
  return backward


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name, backward, words", [
    ("elu", _elu_from_relus, "elu'(0) = [0.0] at the kink, outside the subdifferential [1, 1]"),
    ("relu", _relu_layer_at_kink(2.0), "relu'(0) = [2.0] at the kink, outside the subdifferential"),
    ("relu", _relu_layer_at_kink(0.25), "relu'(0) = [0.25] at the kink, inside the subdifferential"),
])
def test_a_layer_wrong_only_at_the_kink_names_its_f_prime_at_zero(name, backward, words, dtype):
  """A layer's f'(0) reaches dx, dW and db only through sums: it is fitted on them, as the
  activation kind reads it off dz."""
  report = check_op("layer", backward, name=name, dtype=dtype, seed=1, examples=20)
  assert report.verdict == "fail", report.text()
  assert report.codes[0] == "kink_value" and words in report.text(), report.text()


def test_every_kink_case_of_an_activation_holds_a_kink():
  """A kinked activation's kink cases put z = 0 at one entry at least, however small the case
  (a layer's kink cases plant theirs by a zero row of W and b)."""
  from bpref.oracle.ops import kinds
  from bpref.oracle.ops.record import Label

  record = kinds.get("activation")
  for name in ("relu", "leaky_relu"):
    spec = kinds.make_spec("activation", name)
    for dims in ((1, 1), (1, 2), (2, 3)):
      for seed in range(100):
        z = record.case(spec, Label(dims, "kink", seed)).arrays["z"]
        assert np.any(z == 0), (name, dims, seed, z)


# ------------------------------------------------------------ known wrong forms of f' (issue 31)
# Each backward below computes f' the way some outside code writes it, with one slip; the
# diagnosis must name the form of bpref.oracle.forms that it computes, in both dtypes.


def _gelu_backward_llmc(local_grad):
  def backward(z, dout):  # llm.c's gelu_backward loop with its local_grad line replaced
    dinp = np.zeros(z.size, z.dtype)
    inp, d = z.ravel(), dout.ravel()
    with np.errstate(over="ignore"):
      for i in range(z.size):
        x = inp[i]
        tanh_arg = GELU_SCALING_FACTOR * (x + 0.044715 * x * x * x)
        sech_out = 1 / (np.cosh(tanh_arg) * np.cosh(tanh_arg))
        dinp[i] += local_grad(x, np.tanh(tanh_arg), sech_out) * d[i]
    return dinp.reshape(z.shape)
  return backward


def _tanh_backward_one_minus_a(z, dout):  # an RNN step's tanh' = 1 - a, its square lost
  next_h = np.tanh(z)
  return (1 - next_h) * dout


def _tanh_backward_one_minus_a_from_a(a, dout):
  return (1 - a) * dout


def _softplus_backward_tanh(z, dout):  # sigma(z) = (1 + tanh(z / 2)) / 2, the / 2 lost
  return dout * 0.5 * (1 + np.tanh(z))


def _silu_backward_sigma_only(z, dout):  # silu' = sigma(z), the product rule's z sigma' lost
  return dout * sigmoid(z)


def _mish_backward_no_softplus_derivative(z, dout):  # torch's formula without sigma(z)
  with np.errstate(over="ignore"):
    t = np.tanh(np.log1p(np.exp(z)))
  return dout * (t + z * (1 - t * t))


def _gelu_backward_cdf_only(z, dout):  # exact gelu' = Phi(z), the product rule's z phi(z) lost
  cdf = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in z.ravel()]).reshape(z.shape)
  return (dout * cdf).astype(z.dtype)


def _tanh_layer_one_minus_a(x, W, b, dout):
  delta = dout * (1 - np.tanh(x @ W.T + b))
  return delta @ W, delta.T @ x, delta.sum(axis=0)


def _selu_backward_rounded_constants(z, dout):
  """selu' with tinygrad's constants, scale 1.0507 and alpha 1.67326."""
  return dout * 1.0507 * np.where(z >= 0, 1.0, 1.67326 * np.exp(np.minimum(z, 0))).astype(z.dtype)


WRONG_FORMS = {
    # label: (kind, op name, options, backward, the form it computes)
    "tanh' = 1 - a": ("activation", "tanh", {}, _tanh_backward_one_minus_a, "tanh_one_minus_a"),
    "tanh' = 1 - a, handed a": ("activation", "tanh", dict(takes="a"),
                                _tanh_backward_one_minus_a_from_a, "tanh_one_minus_a"),
    "tanh layer, 1 - a": ("layer", "tanh", {}, _tanh_layer_one_minus_a, "tanh_one_minus_a"),
    "gelu_backward: 3 k x^2 missing": (
        "activation", "gelu_tanh", {}, _gelu_backward_llmc(
            lambda x, t, sech: 0.5 * (1 + t) + x * 0.5 * sech * GELU_SCALING_FACTOR),
        "gelu_tanh_cubic_term_missing"),
    "gelu_backward: the 3 of 3 k x^2 lost": (
        "activation", "gelu_tanh", {}, _gelu_backward_llmc(
            lambda x, t, sech: 0.5 * (1 + t) + x * 0.5 * sech * GELU_SCALING_FACTOR * (
                1 + 0.044715 * x * x)), "gelu_tanh_three_missing"),
    "softplus' via tanh, the / 2 lost": ("activation", "softplus", {}, _softplus_backward_tanh,
                                         "softplus_tanh_half_missing"),
    "silu' = sigma": ("activation", "silu", {}, _silu_backward_sigma_only,
                      "silu_product_term_missing"),
    "mish' without softplus'": ("activation", "mish", {}, _mish_backward_no_softplus_derivative,
                                "mish_inner_derivative_missing"),
    "gelu' = Phi": ("activation", "gelu", {}, _gelu_backward_cdf_only, "gelu_product_term_missing"),
    "selu' with rounded constants": ("activation", "selu", {}, _selu_backward_rounded_constants,
                                     "selu_constants_rounded"),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("label", list(WRONG_FORMS))
def test_wrong_derivative_form_is_named(label, dtype):
  kind, name, options, fn, form = WRONG_FORMS[label]
  report = check_op(kind, fn, name=name, dtype=dtype, examples=20, **options)
  assert report.verdict == "fail", report.text()
  assert report.codes[0] == "activation_derivative", report.text()
  assert f"(form {form})" in report.diagnosis[0].summary, report.text()


# ------------------------------------------------------------ slips in calling check_op (issue 31)
# Right code called the wrong way: each slip is found by calling the candidate the other way on
# the failing case, and named first with what to pass.


def _softmax_backward_dout_first(dout, y):  # (dout, y), where check_op calls (y, dout)
  return y * (dout - np.sum(dout * y, axis=1, keepdims=True))


SLIPS = {
    # label: (kind, op name, options, candidate, finding code, text the finding must say)
    "affine_backward without layout='in_out'": ("dense", None, {}, cs_dense, "layout",
                                                "layout='in_out'"),
    "affine_relu_backward without layout='in_out'": ("layer", "relu", {}, cs_layer, "layout",
                                                     "layout='in_out'"),
    "relu_backward(dout, cache) as it is": ("activation", "relu", {}, relu_backward, "signature",
                                            "signature='cs231n'"),
    "affine_backward(dout, cache) as it is": ("dense", None, dict(layout="in_out"),
                                              affine_backward, "signature", "signature='cs231n'"),
    "softmax backward taking (dout, y)": ("softmax", None, dict(takes="y"),
                                          _softmax_backward_dout_first, "arguments_swapped",
                                          "(dout, y)"),
    "relu_forward passed as the backward": ("activation", "relu", {}, relu_forward,
                                            "forward_as_backward", "a = f(z)"),
    "affine_forward passed as the backward": ("dense", None, dict(layout="in_out"),
                                              affine_forward, "forward_as_backward",
                                              "z = x W + b"),  # (7) with W as (n_in, n_out)
    "np.tanh passed as the backward": ("activation", "tanh", {}, np.tanh, "forward_as_backward",
                                       "a = f(z)"),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("label", list(SLIPS))
def test_slip_in_calling_check_op_is_named(label, dtype):
  kind, name, options, fn, code, says = SLIPS[label]
  report = check_op(kind, fn, name=name, dtype=dtype, examples=20, **options)
  assert report.verdict == "fail", report.text()
  assert report.codes == [code], report.text()
  assert says in report.diagnosis[0].summary, report.text()


def test_no_slip_is_claimed_for_a_real_bug():
  # right code called the other way fails too: no hint, the bug itself is named
  report = check_op("activation", _mutant_relu_nonzero, name="relu", examples=20)
  assert report.codes == ["kink_side"], report.text()


# ---------------------------------------------------------------- reports in the declared layout


class Recorded:
  """A backward that keeps every call's arguments and answer, to compare with the report."""

  def __init__(self, fn):
    self.fn, self.calls = fn, []

  def __call__(self, *args):
    out = self.fn(*args)
    self.calls.append(([np.copy(a) for a in args], [np.copy(o) for o in out]))
    return out


def _affine_backward_db_wrong_axis(x, W, b, dout):
  dx, dw, db = cs_dense(x, W, b, dout)
  return dx, dw, np.sum(dout, axis=1)  # summed over the units, not the batch


def test_in_out_report_shows_w_as_the_candidate_took_it():
  report = check_op("dense", _affine_backward_db_wrong_axis, layout="in_out", examples=20)
  assert report.verdict == "fail", report.text()
  arrays = report.case["arrays"]
  n_in, n_out = np.shape(arrays["x"])[1], np.shape(arrays["dout"])[1]
  assert n_in != n_out, report.text()  # the case shows which layout it is in
  assert np.shape(arrays["W"]) == (n_in, n_out), report.text()
  assert f"W ({n_in}, {n_out})" in report.case["shapes"], report.text()
  assert "in_out layout (n_in, n_out)" in report.text()
  assert report.codes == ["batch_sum_missing"], report.text()  # db's shape: one per example


def _affine_backward_dw_reshaped(x, W, b, dout):  # reshaped where a transpose belongs
  dx, dw, db = cs_dense(x, W, b, dout)
  return dx, (dout.T @ x).reshape(W.shape), db


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_in_out_report_shows_dw_as_the_candidate_returned_it(dtype):
  candidate = Recorded(_affine_backward_dw_reshaped)
  report = check_op("dense", candidate, layout="in_out", dtype=dtype, examples=20)
  assert report.verdict == "fail", report.text()
  case = report.case
  same = [out for args, out in candidate.calls
          if all(np.array_equal(a, np.asarray(case["arrays"][k], a.dtype))
                 for a, k in zip(args, ("x", "W", "b", "dout")))]
  assert same, report.text()  # the report's arrays are those of a call, W as handed over
  assert np.array_equal(np.asarray(case["candidate"]["dW"], same[0][1].dtype), same[0][1])
  # the finding speaks the in_out layout: dW = x^T dout there, and dout^T x is the bug; and a
  # reshape is told from a transpose on a W that is not square
  assert "dW is dout^T x reshaped to the shape of x^T dout" in report.diagnosis[0].summary, \
      report.text()
  assert report.codes == ["transposed"], report.text()


def measure(dtype="float64", seed=0) -> list:
  """(mutant, caught, diagnosed right, codes, seconds) for every mutant."""
  rows = []
  for label, (kind, name, options, fn, codes) in MUTANTS.items():
    start = time.perf_counter()
    report = check_op(kind, fn, name=name, dtype=dtype, seed=seed, **options)
    rows.append((label, report.verdict == "fail", bool(codes & set(report.codes)), report.codes,
                 time.perf_counter() - start))
  return rows


def false_alarms(seeds=range(5)) -> list:
  """(label, dtype, seed, verdict, notes) of default searches of every correct function."""
  rows = []
  for label, (kind, name, options, fn) in CORRECT.items():
    for dtype in ("float64", "float32"):
      for seed in seeds:
        report = check_op(kind, fn, name=name, dtype=dtype, seed=seed, **options)
        rows.append((label, dtype, seed, report.verdict, report.cases, report.notes))
  return rows


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description="measure check_op on the layer functions above")
  parser.add_argument("what", choices=("mutants", "false-alarms", "timing"))
  parser.add_argument("--seeds", type=int, default=5)
  what = parser.parse_args().what
  if what == "mutants":
    for dtype in ("float64", "float32"):
      rows = measure(dtype)
      for label, caught, right, codes, secs in rows:
        print(f"{dtype}  {label:50s} caught={caught} right={right} {codes} {secs:.2f}s")
      print(f"{dtype}: caught {sum(r[1] for r in rows)} of {len(rows)}, diagnosed right "
            f"{sum(r[2] for r in rows)} of {len(rows)}")
  elif what == "false-alarms":
    rows = false_alarms(range(parser.parse_args().seeds))
    for row in rows:
      if row[3] != "pass":
        print("FALSE ALARM:", row)
    print(f"{sum(r[3] != 'pass' for r in rows)} false alarms in {len(rows)} default searches "
          f"({sum(r[4] for r in rows)} cases); notes: {sorted({n for r in rows for n in r[5]})}")
  else:
    for label, (kind, name, options, fn) in CORRECT.items():
      start = time.perf_counter()
      report = check_op(kind, fn, name=name, **options)
      print(f"{label:40s} {report.verdict} {report.cases} cases {report.calls} calls "
            f"{time.perf_counter() - start:.2f} s")


def test_docs_five_line_example_runs(capsys):
  import pathlib
  text = (pathlib.Path(__file__).parent.parent / "docs" / "oracle.md").read_text()
  section = text.split("## Checking one layer", 1)[1]
  block = section.split("```python\n", 1)[1].split("```", 1)[0]
  assert len([line for line in block.splitlines() if line.strip()]) == 5
  exec(compile(block, "docs/oracle.md", "exec"), {})
  assert capsys.readouterr().out.startswith("PASS")


@pytest.mark.parametrize("layout", ["out_in", "in_out"])
def test_dx_reading_ws_memory_with_its_sizes_swapped_is_named(layout):
  # C code indexing W[i * n_out + o] where W[o * n_in + i] was meant (llm.c's matmul_backward with
  # its weight index turned around): W reshaped, not transposed, so only a non-square W shows it
  def misread(x, W, b, dout):
    if layout == "out_in":
      return dout @ W.reshape(W.shape[::-1]).T, dout.T @ x, dout.sum(0)
    return dout @ W.reshape(W.shape[::-1]), x.T @ dout, dout.sum(0)

  report = check_op("dense", misread, layout=layout)
  assert report.verdict == "fail"
  assert report.diagnosis[0].code == "transposed"
  assert "two sizes swapped" in report.diagnosis[0].summary
