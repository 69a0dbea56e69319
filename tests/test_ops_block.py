"""The block kind: llm.c-style layer functions checked inside a GPT-2 block.

The right functions are written the way llm.c's train_gpt2.c writes its backward functions, in
NumPy (matmul_backward, gelu_backward with the tanh form, layernorm_backward, attention_backward);
each planted bug must fail, naming the first wrong step of the block's backward pass.
"""

import math

import numpy as np
import pytest

from bpref.layers import block
from bpref.oracle.ops import check_op


def matmul_backward(x, W, b, dout):  # x (N, C), W (OC, C), dout (N, OC)
  return dout @ W, dout.T @ x, dout.sum(0)


def gelu_backward(z, dout):  # the tanh form, llm.c's GELU_SCALING_FACTOR
  s = math.sqrt(2.0 / math.pi)
  cube = 0.044715 * z * z * z
  tanh_arg = s * (z + cube)
  tanh_out = np.tanh(tanh_arg)
  sech2 = 1.0 - tanh_out * tanh_out
  local = 0.5 * (1.0 + tanh_out) + z * 0.5 * sech2 * s * (1.0 + 3.0 * 0.044715 * z * z)
  return (local * dout).astype(z.dtype)


def layernorm_backward(x, w, b, dout, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  rstd = 1 / np.sqrt(x.var(-1, keepdims=True) + eps)
  xhat = (x - mu) * rstd
  g = dout * w
  dx = rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
  return dx, (dout * xhat).sum((0, 1)), dout.sum((0, 1))


def attention_backward(qkv, dout, heads, *, scale_in_backward=True):
  B, T, C3 = qkv.shape
  C = C3 // 3
  hs = C // heads
  split = qkv.reshape(B, T, 3, heads, hs).transpose(2, 0, 3, 1, 4)  # (3, B, H, T, hs)
  q, k, v = split
  scale = 1.0 / math.sqrt(hs)
  S = q @ k.transpose(0, 1, 3, 2) * scale
  mask = np.triu(np.ones((T, T), bool), 1)
  S = np.where(mask, -np.inf, S)
  P = np.exp(S - S.max(-1, keepdims=True))
  P = P / P.sum(-1, keepdims=True)
  dO = dout.reshape(B, T, heads, hs).transpose(0, 2, 1, 3)
  dv = P.transpose(0, 1, 3, 2) @ dO
  dP = dO @ v.transpose(0, 1, 3, 2)
  dS = P * (dP - (dP * P).sum(-1, keepdims=True))
  if scale_in_backward:
    dS = dS * scale
  dq, dk = dS @ k, dS.transpose(0, 1, 3, 2) @ q
  d = np.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * C)
  return d.astype(qkv.dtype)


RIGHT = {"dense": matmul_backward, "activation": gelu_backward, "layernorm": layernorm_backward,
         "attention": attention_backward}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_right_layer_functions_pass_inside_the_block(dtype):
  report = check_op("block", RIGHT, dtype=dtype, examples=3)
  assert report.verdict == "pass", report.text()
  assert report.cases >= 3


class _Layers:  # a module-like object: the functions as attributes
  dense = staticmethod(matmul_backward)
  activation = staticmethod(gelu_backward)
  layernorm = staticmethod(layernorm_backward)
  attention = staticmethod(attention_backward)


def test_an_object_with_the_functions_as_attributes_is_a_candidate():
  assert check_op("block", _Layers(), examples=2).verdict == "pass"


def test_a_missing_function_is_a_usage_error():
  with pytest.raises(TypeError, match="'attention' is missing"):
    check_op("block", {k: v for k, v in RIGHT.items() if k != "attention"})


def _planted(**changes):
  return {**RIGHT, **changes}


def test_a_layernorm_bug_is_named_at_the_first_wrong_step():
  def no_mean_term(x, w, b, dout, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(x.var(-1, keepdims=True) + eps)
    xhat = (x - mu) * rstd
    g = dout * w
    dx = rstd * (g - xhat * (g * xhat).mean(-1, keepdims=True))
    return dx, (dout * xhat).sum((0, 1)), dout.sum((0, 1))

  report = check_op("block", _planted(layernorm=no_mean_term), examples=6)
  assert report.verdict == "fail"
  first = report.diagnosis[0]
  assert first.code == "mean_term_missing", report.text()
  assert first.summary.startswith("ln2 (layernorm)")  # ln2 runs before ln1 in the backward pass


def test_a_dense_bug_is_named_at_its_step():
  def db_first_row(x, W, b, dout):
    return dout @ W, dout.T @ x, dout[0].copy()

  report = check_op("block", _planted(dense=db_first_row), examples=6)
  assert report.verdict == "fail"
  assert report.diagnosis[0].code == "batch_sum_missing", report.text()
  assert report.diagnosis[0].summary.startswith("fc_proj (dense)")


def test_an_attention_bug_is_named_at_its_step():
  report = check_op("block", _planted(attention=lambda qkv, dout, heads: attention_backward(
      qkv, dout, heads, scale_in_backward=False)), examples=6)
  assert report.verdict == "fail"
  assert report.diagnosis[0].summary.startswith("attention (attention)"), report.text()
  assert "attention.dqkv" in report.errors and report.errors["attention.dqkv"] > report.tolerance
  assert all(report.errors[f"{s.name}.{r}"] <= report.tolerance
             for s in block.STEPS[:5] for r in s.returns)  # the steps before attention are right


def test_gelu_with_erf_is_the_gelu_steps_convention_note():
  erf = np.vectorize(math.erf)

  def gelu_erf(z, dout):
    phi = np.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    return (dout * (0.5 * (1 + erf(z / math.sqrt(2))) + z * phi)).astype(z.dtype)

  report = check_op("block", _planted(activation=gelu_erf), examples=6)
  assert report.verdict == "pass", report.text()
  assert any(n.startswith("gelu: convention note") for n in report.notes), report.notes
  strict = check_op("block", _planted(activation=gelu_erf), examples=6, strict_conventions=True)
  assert strict.verdict == "fail" and strict.kind == "convention"
