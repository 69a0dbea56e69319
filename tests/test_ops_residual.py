"""The residual op kind, y = x + f(x W^T + b), on candidates written the ways people write them.

Right: a NumPy course solution, torch's autograd of ``x + f(F.linear(x, W, b))``, a
``torch.autograd.Function`` and a ``jax.custom_vjp`` rule, for relu, tanh and gelu_tanh, in
both layouts. Wrong: each classic mistake of proofs/layers.md (the skip path dropped or counted
twice, W transposed) and the layer's own (f' missing, dW from the output, one row's term),
which must fail with the finding that names it.
"""

import math

import numpy as np
import pytest

from bpref import compilation
from bpref.activations import SELU_ALPHA, SELU_SCALE
from bpref.oracle.ops import check_op

_K = math.sqrt(2 / math.pi)  # a Python float: NumPy keeps float32 arrays float32 with it

ACTIVATIONS = {
    "relu": (lambda z: np.maximum(z, 0), lambda z: (z > 0).astype(z.dtype)),
    "tanh": (np.tanh, lambda z: 1 - np.tanh(z) ** 2),
    "gelu_tanh": (
        lambda z: 0.5 * z * (1 + np.tanh(_K * (z + 0.044715 * z ** 3))),
        lambda z: 0.5 * (1 + np.tanh(_K * (z + 0.044715 * z ** 3))) + 0.5 * z * (
            1 - np.tanh(_K * (z + 0.044715 * z ** 3)) ** 2) * _K * (1 + 3 * 0.044715 * z * z)),
}
"""f and f' as a course writes them, in NumPy."""


def course(act, bug=""):
  """The NumPy course solution for activation ``act``; ``bug`` plants one classic mistake."""
  f, df = ACTIVATIONS[act]

  def backward(x, W, b, dout):
    C = x.shape[-1]
    X, D = x.reshape(-1, C), dout.reshape(-1, C)  # rows: every position of every sequence
    z = X @ W.T + b
    delta = D * df(z)
    dx, dW, db = D + delta @ W, delta.T @ X, delta.sum(axis=0)
    if bug == "skip_dropped":
      dx = delta @ W
    elif bug == "skip_twice":
      dx = 2 * D + delta @ W
    elif bug == "fprime_missing":
      dx, dW, db = D + D @ W, D.T @ X, D.sum(axis=0)
    elif bug == "transposed":
      dx = D + delta @ W.T
    elif bug == "dW_from_output":
      dW = delta.T @ (X + f(z))
    elif bug == "dW_from_output/a":
      dW = delta.T @ f(z)
    elif bug == "batch_sum_missing":
      db = delta[-1]
    return dx.reshape(x.shape), dW, db

  return backward


def _torch_f(act):
  import torch

  return {"relu": torch.relu, "tanh": torch.tanh,
          "gelu_tanh": lambda z: torch.nn.functional.gelu(z, approximate="tanh")}[act]


def torch_autograd(act):
  def backward(x, W, b, dout):
    import torch

    xx, WW, bb = (torch.tensor(a, requires_grad=True) for a in (x, W, b))
    (xx + _torch_f(act)(torch.nn.functional.linear(xx, WW, bb))).backward(torch.tensor(dout))
    return xx.grad.numpy(), WW.grad.numpy(), bb.grad.numpy()

  return backward


def torch_function(act):
  import torch

  def df(z):
    if act == "relu":
      return (z > 0).to(z.dtype)
    if act == "tanh":
      return 1 - torch.tanh(z) ** 2
    t = torch.tanh(_K * (z + 0.044715 * z ** 3))
    return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _K * (1 + 3 * 0.044715 * z * z)

  class Residual(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W, b):
      z = x @ W.T + b
      ctx.save_for_backward(x, W, z)
      return x + _torch_f(act)(z)

    @staticmethod
    def backward(ctx, dout):
      x, W, z = ctx.saved_tensors
      delta = dout * df(z)
      rows = tuple(range(x.dim() - 1))
      dW = delta.reshape(-1, x.shape[-1]).T @ x.reshape(-1, x.shape[-1])
      return dout + delta @ W, dW, delta.sum(rows)

  return Residual


def custom_vjp(act):
  import jax
  import jax.numpy as jnp

  f = {"relu": jax.nn.relu, "tanh": jnp.tanh,
       "gelu_tanh": lambda z: jax.nn.gelu(z, approximate=True)}[act]
  def gelu_tanh_prime(z):
    t = jnp.tanh(_K * (z + 0.044715 * z ** 3))
    return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _K * (1 + 3 * 0.044715 * z * z)

  df = {"relu": lambda z: (z > 0).astype(z.dtype), "tanh": lambda z: 1 - jnp.tanh(z) ** 2,
        "gelu_tanh": gelu_tanh_prime}[act]

  @jax.custom_vjp
  def residual(x, W, b):
    return fwd(x, W, b)[0]

  def fwd(x, W, b):
    z = x @ W.T + jnp.reshape(b, (1,) * (x.ndim - 1) + b.shape)
    return x + f(z), (x, W, z)

  def bwd(res, dout):
    x, W, z = res
    C = x.shape[-1]
    delta = dout * df(z)
    rows = jnp.reshape(delta, (-1, C))
    return dout + delta @ W, rows.T @ jnp.reshape(x, (-1, C)), rows.sum(0)

  residual.defvjp(fwd, bwd)
  return residual


RIGHT = {"course": course, "torch_autograd": torch_autograd, "torch_function": torch_function,
         "custom_vjp": custom_vjp}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("way", ["course", "torch_autograd", "torch_function"])
def test_a_right_residual_passes(way, act, dtype):
  if way.startswith("torch"):
    pytest.importorskip("torch")
  report = check_op("residual", RIGHT[way](act), name=act, dtype=dtype, examples=20)
  assert report.verdict == "pass", report.text()
  assert report.cases >= 20
  if way == "torch_function":
    assert report.forward_checked == report.cases  # its forward y = x + f(z), checked too


@pytest.mark.parametrize("dtype", [pytest.param("float64", marks=pytest.mark.deep), "float32"])
@pytest.mark.parametrize("act", ["tanh", pytest.param("relu", marks=pytest.mark.deep),
                                 pytest.param("gelu_tanh", marks=pytest.mark.deep)])
def test_a_custom_vjp_residual_passes(act, dtype):
  # jit compiles the rule once per shape: few shapes keep this quick
  report = check_op("residual", custom_vjp(act), name=act, dtype=dtype, examples=5, max_batch=2,
                    max_width=3)
  assert report.verdict == "pass", report.text()
  assert report.forward_checked == report.cases


@pytest.mark.deep
@pytest.mark.parametrize("seed", range(1, 5))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("way", ["course", "torch_autograd"])
def test_a_right_residual_passes_at_every_seed_and_layout(way, act, dtype, seed):
  if way.startswith("torch"):
    pytest.importorskip("torch")
  for layout in ("btc", "nc"):
    report = check_op("residual", RIGHT[way](act), name=act, dtype=dtype, seed=seed, layout=layout)
    assert report.verdict == "pass", report.text()


BUGS = ("skip_dropped", "skip_twice", "fprime_missing", "transposed", "dW_from_output",
        "dW_from_output/a", "batch_sum_missing")


@pytest.mark.parametrize("seed", range(10))  # seeds 1 to 9: the sweep tier
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("bug", BUGS)
def test_each_classic_residual_bug_fails_with_its_name(bug, act, dtype, seed):
  report = check_op("residual", course(act, bug), name=act, dtype=dtype, seed=seed, examples=20)
  assert report.verdict == "fail"
  assert report.diagnosis[0].code == bug.split("/")[0], report.text()


@pytest.mark.parametrize("layout", ["btc", "nc"])
def test_the_bugs_are_found_in_either_layout_and_for_gelu_tanh(layout):
  for bug in ("skip_dropped", "skip_twice", "transposed"):
    report = check_op("residual", course("gelu_tanh", bug), name="gelu_tanh", layout=layout,
                      dtype="float32", examples=10)
    assert report.diagnosis[0].code == bug, report.text()


def test_a_wrong_derivative_is_carried_through_the_skip_path():
  # tanh' written 1 - a with a = tanh(z), a classic wrong form: the classic kinds' model, in dx too
  def one_minus_a(x, W, b, dout):
    C = x.shape[-1]
    X, D = x.reshape(-1, C), dout.reshape(-1, C)
    delta = D * (1 - np.tanh(X @ W.T + b))
    return (D + delta @ W).reshape(x.shape), delta.T @ X, delta.sum(axis=0)

  report = check_op("residual", one_minus_a, name="tanh", examples=10)
  assert report.verdict == "fail"
  assert report.diagnosis[0].code == "activation_derivative", report.text()


def test_another_subgradient_at_the_kink_is_a_convention():
  def relu_at_zero_is_one(x, W, b, dout):
    C = x.shape[-1]
    X, D = x.reshape(-1, C), dout.reshape(-1, C)
    delta = D * (X @ W.T + b >= 0)
    return (D + delta @ W).reshape(x.shape), delta.T @ X, delta.sum(axis=0)

  report = check_op("residual", relu_at_zero_is_one, name="relu")
  assert report.verdict == "pass", report.text()
  assert any("at exact kinks" in n for n in report.notes)
  assert check_op("residual", relu_at_zero_is_one, name="relu",
                  strict_conventions=True).verdict == "fail"


def _elu_from_relus(x, W, b, dout):
  """elu(z) = relu(z) - relu(1 - e^z), as tinygrad writes it: elu'(0) = 0 through the relus."""
  C = x.shape[-1]
  X, D = x.reshape(-1, C), dout.reshape(-1, C)
  z = X @ W.T + b
  e = np.exp(np.minimum(z, 0))
  delta = D * ((z > 0) + ((1 - e) > 0) * e).astype(x.dtype)
  return (D + delta @ W).reshape(x.shape), delta.T @ X, delta.sum(axis=0)


def _selu_exp_everywhere(x, W, b, dout):
  """selu' with e^z taken of every z and selected, as tinygrad does: NaN from z = 88.7 on."""
  C = x.shape[-1]
  X, D = x.reshape(-1, C), dout.reshape(-1, C)
  z = X @ W.T + b
  with np.errstate(over="ignore", invalid="ignore"):
    e = np.exp(z)
    delta = (D * SELU_SCALE * ((z >= 0) + (z < 0) * SELU_ALPHA * e + 0 * e)).astype(x.dtype)
  return (D + delta @ W).reshape(x.shape), delta.T @ X, delta.sum(axis=0)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_wrong_f_prime_at_the_kink_is_fitted_through_the_skip_path(dtype):
  report = check_op("residual", _elu_from_relus, name="elu", dtype=dtype, seed=1, examples=20)
  assert report.verdict == "fail", report.text()
  assert report.codes[0] == "kink_value", report.text()
  assert "elu'(0) = [0.0] at the kink, outside the subdifferential" in report.text(), report.text()


def test_nan_where_an_exponential_overflows_is_named():
  report = check_op("residual", _selu_exp_everywhere, name="selu", dtype="float32", examples=40)
  assert report.verdict == "fail" and report.kind == "nonfinite", report.text()
  assert report.codes[0] == "exp_overflow", report.text()


def test_gelu_tanh_checked_as_gelu_is_a_convention():
  report = check_op("residual", course("gelu_tanh"), name="gelu", examples=10)
  assert report.verdict == "pass", report.text()
  assert any("tanh approximation" in n for n in report.notes)


def test_a_default_search_compiles_few_programs():
  with compilation.count() as seen:
    assert check_op("residual", course("tanh"), name="tanh", seed=7).verdict == "pass"
  assert seen.compilations <= 6


def test_options_are_checked():
  with pytest.raises(ValueError, match="needs a name"):
    check_op("residual", course("relu"))
  with pytest.raises(ValueError, match="'nope' is not a name of kind 'residual'"):
    check_op("residual", course("relu"), name="nope")
  with pytest.raises(ValueError, match="layout='in_out' is not valid for kind 'residual'"):
    check_op("residual", course("relu"), name="relu", layout="in_out")
