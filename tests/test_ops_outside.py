"""check_op on framework rules (torch.autograd.Function, jax.custom_vjp), from the command line,
and on candidates that misbehave: each must end in a plain verdict, never a false PASS."""

from __future__ import annotations

import argparse
import json
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bpref.oracle.ops import (OpCandidate, add_op_arguments, check_op, expected, from_custom_vjp,
                              run_op_command)
from bpref.testing import assert_op_correct


@pytest.fixture(autouse=True)
def _standard_promotion_for_outside_code():
  """The code checked here is written as the world writes it, for JAX's default ("standard")
  dtype promotion: the suite's strict promotion (conftest.py) is for bpref's own code."""
  before = jax.config.jax_numpy_dtype_promotion
  jax.config.update("jax_numpy_dtype_promotion", "standard")
  yield
  jax.config.update("jax_numpy_dtype_promotion", before)


torch = pytest.importorskip("torch")

# ---------------------------------------------------------------- torch.autograd.Function rules


class LinearFunction(torch.autograd.Function):
  """The example of PyTorch's "Extending PyTorch" notes."""

  @staticmethod
  def forward(ctx, input, weight, bias=None):
    ctx.save_for_backward(input, weight, bias)
    output = input.mm(weight.t())
    if bias is not None:
      output += bias.unsqueeze(0).expand_as(output)
    return output

  @staticmethod
  def backward(ctx, grad_output):
    input, weight, bias = ctx.saved_tensors
    grad_input = grad_output.mm(weight)
    grad_weight = grad_output.t().mm(input)
    grad_bias = grad_output.sum(0) if bias is not None else None
    return grad_input, grad_weight, grad_bias


class MyReLU(torch.autograd.Function):
  """The example of PyTorch's "Defining new autograd functions" tutorial."""

  @staticmethod
  def forward(ctx, input):
    ctx.save_for_backward(input)
    return input.clamp(min=0)

  @staticmethod
  def backward(ctx, grad_output):
    input, = ctx.saved_tensors
    grad_input = grad_output.clone()
    grad_input[input < 0] = 0
    return grad_input


class TanhFromOutput(torch.autograd.Function):
  @staticmethod
  def forward(ctx, z):
    a = torch.tanh(z)
    ctx.save_for_backward(a)
    return a

  @staticmethod
  def backward(ctx, grad_output):
    a, = ctx.saved_tensors
    return grad_output * (1 - a * a)


class LinearBiasAveraged(LinearFunction):
  @staticmethod
  def backward(ctx, grad_output):
    gi, gw, gb = LinearFunction.backward(ctx, grad_output)
    return gi, gw, gb / grad_output.shape[0]


class SoftmaxDiagonal(torch.autograd.Function):
  @staticmethod
  def forward(ctx, z):
    y = torch.softmax(z, dim=-1)
    ctx.save_for_backward(y)
    return y

  @staticmethod
  def backward(ctx, grad_output):
    y, = ctx.saved_tensors
    return grad_output * y * (1 - y)


class SigmoidForwardWrong(torch.autograd.Function):
  """Right backward, wrong forward: sigmoid computed as tanh."""

  @staticmethod
  def forward(ctx, z):
    s = torch.sigmoid(z)
    ctx.save_for_backward(s)
    return torch.tanh(z)

  @staticmethod
  def backward(ctx, grad_output):
    s, = ctx.saved_tensors
    return grad_output * s * (1 - s)


class NoBackward(torch.autograd.Function):
  @staticmethod
  def forward(ctx, z):
    return z * 2


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_torch_functions_from_the_docs_pass(dtype):
  for kind, name, fn, options in (("dense", None, LinearFunction, {}),
                                  ("activation", "relu", MyReLU, {}),
                                  ("activation", "tanh", TanhFromOutput, {})):
    report = check_op(kind, fn, name=name, dtype=dtype, examples=15, **options)
    assert report.verdict == "pass", report.text()
    assert report.forward_checked == report.cases  # the forward was checked on every case


def test_torch_function_mutants_caught_with_their_finding():
  report = check_op("dense", LinearBiasAveraged, examples=10)
  assert report.verdict == "fail" and "constant_factor" in report.codes, report.text()
  assert "1/B" in report.diagnosis[0].summary
  report = check_op("softmax", SoftmaxDiagonal, examples=10)
  assert report.verdict == "fail" and report.codes[0] == "softmax_jacobian_diagonal", report.text()


def test_torch_function_wrong_forward_is_caught():
  report = check_op("activation", SigmoidForwardWrong, name="sigmoid", examples=5)
  assert report.verdict == "fail" and report.kind == "forward", report.text()


def test_torch_function_without_backward_is_refused():
  with pytest.raises(TypeError, match="defines no backward"):
    check_op("activation", NoBackward, name="relu")


# ---------------------------------------------------------------- jax.custom_vjp rules


@jax.custom_vjp
def relu_rule(z):
  return jnp.maximum(z, 0)


def _relu_fwd(z):
  return relu_rule(z), z


def _relu_bwd(z, g):
  return (g * (z > 0),)


relu_rule.defvjp(_relu_fwd, _relu_bwd)


@jax.custom_vjp
def dense_rule(x, W, b):
  return x @ W.T + b[None, :]


def _dense_fwd(x, W, b):
  return dense_rule(x, W, b), (x, W)


def _dense_bwd(res, g):
  x, W = res
  return g @ W, g.T @ x, g.sum(axis=0)


dense_rule.defvjp(_dense_fwd, _dense_bwd)


@jax.custom_vjp
def softmax_rule(z):
  return jax.nn.softmax(z, axis=-1)


def _softmax_fwd(z):
  y = softmax_rule(z)
  return y, y


def _softmax_bwd(y, g):
  return (y * (g - jnp.sum(g * y, axis=-1, keepdims=True)),)


softmax_rule.defvjp(_softmax_fwd, _softmax_bwd)


@jax.custom_vjp
def sigmoid_at_a(z):
  return jax.nn.sigmoid(z)


def _sig_fwd(z):
  a = jax.nn.sigmoid(z)
  return a, a


def _sig_bwd(a, g):
  s = jax.nn.sigmoid(a)  # the derivative evaluated at a, not at z
  return (g * s * (1 - s),)


sigmoid_at_a.defvjp(_sig_fwd, _sig_bwd)


@jax.custom_vjp
def dense_transposed(x, W, b):
  return x @ W.T + b[None, :]


def _dt_bwd(res, g):
  x, W = res
  return g @ W, (g.T @ x).T, g.sum(axis=0)


dense_transposed.defvjp(_dense_fwd, _dt_bwd)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_custom_vjp_rules_pass(dtype):
  for kind, name, fn in (("activation", "relu", relu_rule), ("dense", None, dense_rule),
                         ("softmax", None, softmax_rule)):
    report = check_op(kind, fn, name=name, dtype=dtype, examples=3)  # jax compiles once per shape
    assert report.verdict == "pass", report.text()
    assert report.forward_checked == report.cases


def test_custom_vjp_mutants_caught_with_their_finding():
  report = check_op("activation", sigmoid_at_a, name="sigmoid", examples=10)
  assert report.verdict == "fail" and report.codes[0] == "fprime_at_a", report.text()
  report = check_op("dense", dense_transposed, examples=10)
  assert report.verdict == "fail" and report.codes[0] == "transposed", report.text()


def test_plain_jax_function_is_refused_by_the_adapter():
  with pytest.raises(TypeError, match="custom_vjp"):
    from_custom_vjp(jax.nn.relu, "activation")


# ---------------------------------------------------------------- the command line


def _parse(argv):
  """The op options alone, run in this process (the isolated default has its own tests)."""
  parser = argparse.ArgumentParser(prog="bpref check")
  add_op_arguments(parser)
  args = parser.parse_args(argv)
  args.in_process = True
  return args


def test_cli_passes_and_fails_with_exit_codes(tmp_path, capsys, monkeypatch):
  (tmp_path / "mylayers.py").write_text(textwrap.dedent("""
      import numpy as np

      def relu_backward(z, dout):
        return dout * (z > 0)

      def relu_backward_all(z, dout):
        return dout * (z != 0)
      """))
  monkeypatch.syspath_prepend(str(tmp_path))
  args = _parse(["--op", "activation", "--op-name", "relu", "--function",
                 f"{tmp_path / 'mylayers.py'}:relu_backward", "--examples", "5"])
  assert run_op_command(args) == 0
  assert "PASS" in capsys.readouterr().out
  args = _parse(["--op", "activation", "--op-name", "relu", "--function",
                 "mylayers:relu_backward_all", "--examples", "5", "--json"])
  assert run_op_command(args) == 1
  report = json.loads(capsys.readouterr().out)
  assert report["verdict"] == "fail" and report["diagnosis"][0]["code"] == "kink_side"


def test_cli_usage_errors_exit_2(capsys):
  assert run_op_command(_parse(["--op", "activation", "--function", "math:sqrt"])) == 2
  assert "needs the activation's name" in capsys.readouterr().err
  assert run_op_command(_parse(["--op", "dense", "--function", "no_such_module_xyz:f"])) == 2
  assert run_op_command(_parse(["--op", "dense"])) == 2


def test_add_op_arguments_shares_options_the_parser_has():
  parser = argparse.ArgumentParser()
  parser.add_argument("--dtype", default="float32")
  add_op_arguments(parser)  # must not raise a conflict
  assert parser.parse_args(["--op", "dense"]).dtype == "float32"


# ---------------------------------------------------------------- bad input and hostile candidates


def test_bad_options_name_what_was_expected():
  with pytest.raises(ValueError, match="valid kinds"):
    check_op("conv", lambda *a: None)
  with pytest.raises(ValueError, match="unknown activation"):
    check_op("activation", lambda z, d: d, name="swish2")
  with pytest.raises(ValueError, match="cannot take"):
    check_op("activation", lambda z, d: d, name="gelu", takes="a")
  with pytest.raises(ValueError, match="labels"):
    check_op("loss", lambda y, t: y, name="squared_error", targets="labels")
  with pytest.raises(TypeError, match="unknown option"):
    check_op("dense", lambda *a: None, dtpye="float32")
  with pytest.raises(TypeError, match="callable"):
    check_op("dense", 3)


def test_candidate_failures_are_fail_verdicts():
  def raises(z, dout):
    raise SystemExit(0)

  report = check_op("activation", raises, name="relu", examples=2)
  assert report.verdict == "fail" and report.kind == "exception" and "SystemExit" in report.message

  def writes(z, dout):
    dout *= z > 0
    return dout

  report = check_op("activation", writes, name="relu", examples=2)
  assert report.verdict == "fail" and report.kind == "mutation"

  state = {"n": 0}

  def drifts(z, dout):
    state["n"] += 1
    return dout * (z > 0) * (1 + (state["n"] - 1) * 1e-3)  # right on the first call only

  report = check_op("activation", drifts, name="relu", examples=2)
  assert report.verdict == "fail" and report.kind == "nondeterministic"

  report = check_op("activation", lambda z, dout: (dout * (z > 0)).astype(np.float32), name="relu",
                    examples=2)
  assert report.verdict == "fail" and report.kind == "dtype"

  report = check_op("activation", lambda z, dout: dout * np.nan, name="relu", examples=2)
  assert report.verdict == "fail" and report.kind == "nonfinite"


def test_a_hang_ends_in_a_timeout_fail():
  def hangs(z, dout):
    time.sleep(5)
    return dout

  start = time.perf_counter()
  report = check_op("activation", hangs, name="relu", examples=1, timeout=0.3)
  assert report.verdict == "fail" and report.kind == "timeout"
  assert time.perf_counter() - start < 4


def test_zero_answer_never_passes():
  for kind, name, zero in (("activation", "tanh", lambda z, d: np.zeros_like(d)),
                           ("softmax", None, lambda z, d: np.zeros_like(d)),
                           ("dense", None, lambda x, W, b, d: (np.zeros_like(x), np.zeros_like(W),
                                                               np.zeros_like(b)))):
    report = check_op(kind, zero, name=name, examples=5)
    assert report.verdict == "fail", report.text()


def test_expected_is_bprefs_answer_on_plain_values():
  # relu' = 1 above 0, 0 at and below (jax.nn.relu's convention): computed by hand.
  dz = expected("activation", "relu", z=np.array([[-1.0, 0.0, 2.0]]), dout=np.array([[3.0, 4.0, 5.0]]))
  np.testing.assert_array_equal(dz["dz"], [[0.0, 0.0, 5.0]])
  # dense: dx = dout W, dW = dout^T x, db = sum_b dout, for W = [[1, 2]] and two examples.
  out = expected("dense", x=np.array([[1.0, 0.0], [0.0, 1.0]]), W=np.array([[1.0, 2.0]]),
                 b=np.array([0.0]), dout=np.array([[1.0], [3.0]]))
  np.testing.assert_array_equal(out["dx"], [[1.0, 2.0], [3.0, 6.0]])
  np.testing.assert_array_equal(out["dW"], [[1.0, 3.0]])
  np.testing.assert_array_equal(out["db"], [4.0])


def test_assert_op_correct_raises_with_the_report():
  assert_op_correct("activation", lambda z, dout: dout * (z > 0), name="relu", examples=3)
  with pytest.raises(AssertionError, match="kink_side"):
    assert_op_correct("activation", lambda z, dout: dout * (z != 0), name="relu", examples=3)


def test_op_candidate_forward_checked():
  good = OpCandidate(lambda z, dout: dout * (1 - np.tanh(z) ** 2), forward=np.tanh)
  report = check_op("activation", good, name="tanh", examples=5)
  assert report.verdict == "pass" and report.forward_checked == report.cases
  bad = OpCandidate(lambda z, dout: dout * (1 - np.tanh(z) ** 2), forward=np.sin)
  report = check_op("activation", bad, name="tanh", examples=5)
  assert report.verdict == "fail" and report.kind == "forward"


TORCH_ACTIVATIONS = {
    "identity": lambda z: z, "relu": torch.relu, "leaky_relu": torch.nn.functional.leaky_relu,
    "elu": torch.nn.functional.elu, "selu": torch.selu, "gelu": torch.nn.functional.gelu,
    "gelu_tanh": lambda z: torch.nn.functional.gelu(z, approximate="tanh"),
    "silu": torch.nn.functional.silu, "mish": torch.nn.functional.mish, "softplus": torch.nn.functional.softplus,
    "sigmoid": torch.sigmoid, "tanh": torch.tanh, "softsign": torch.nn.functional.softsign,
    "sin": torch.sin,
}


def _torch_autograd(f):
  def backward(z, dout):
    zt = torch.from_numpy(z).requires_grad_(True)
    (g,) = torch.autograd.grad(f(zt), zt, torch.from_numpy(dout))
    return g.numpy()
  return backward


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_torch_autograd_passes_every_activation(dtype):
  for name, f in TORCH_ACTIVATIONS.items():
    report = check_op("activation", _torch_autograd(f), name=name, dtype=dtype, examples=10)
    assert report.verdict == "pass", report.text()
    if name == "leaky_relu":  # torch's LeakyReLU has f'(0) = 0.01, jax.nn's 1
      assert any("leaky_relu'(0) = 0.01" in n for n in report.notes), report.notes
  softplus = check_op("activation", _torch_autograd(torch.nn.functional.softplus), name="softplus",
                      dtype=dtype, examples=10, strict_conventions=True)
  if dtype == "float64":  # linear above z = 20: 2e-9 off, visible in float64 only
    assert softplus.verdict == "fail" and softplus.kind == "convention", softplus.text()
