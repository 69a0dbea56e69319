"""The block kind's CNN composition: ``bpref.layers.cnn`` and ``check_op("block", ..., name="cnn")``.

The network's handwritten backward is held to ``jax.vjp`` of its forward. The layer functions
checked inside it are examples/cs231n/layers.py's, written the way CS231n's assignments write
them (``conv_backward_naive``, ``max_pool_backward_naive``, ...): the right ones pass; a bug
planted in one of them (CS231N_BUG) fails, naming that step with its kind's diagnosis; of two
planted bugs, the step earlier in the backward pass is named.
"""

import ast
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bpref.error import normwise_error
from bpref.layers import cnn
from bpref.oracle.ops import check_op, expected
from bpref.tolerance import gradient_tolerance

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _example():
  spec = importlib.util.spec_from_file_location("cs231n_layers", ROOT / "examples" / "cs231n" / "layers.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


LAYERS = _example()


# ---------------------------------------------------------------- the network against jax.vjp

def _network(dims, seed=0):
  """(params, x, labels) in float64 for dims (N, C, H, W, F, HH, WW, K)."""
  N, C, H, W, F, HH, WW, K = dims
  rng = np.random.default_rng(seed)
  _, (_, _, H2, W2) = cnn.shapes((N, C, H, W), (F, C, HH, WW))
  params = cnn.CNNParams(rng.normal(size=(F, C, HH, WW)) / np.sqrt(C * HH * WW),
                         rng.normal(size=F), rng.normal(size=F), rng.normal(size=F),
                         rng.normal(size=(K, F * H2 * W2)) / np.sqrt(F * H2 * W2),
                         rng.normal(size=K))
  return params, rng.normal(size=(N, C, H, W)), rng.integers(0, K, N)


@jax.jit
def _both(params, x, labels):
  """(bpref's dx and grads, dC/dc, autodiff's dx and grads): one compiled call per shape."""
  _, cache = cnn.forward(params, x, labels)
  dx, grads = cnn.backward(params, cache)
  dc = cnn.steps(params, cache)[1]["bn"][0]
  _, vjp = jax.vjp(lambda p, x: cnn.forward(p, x, labels)[0], params, x)
  grads_ad, dx_ad = vjp(jnp.ones((), x.dtype))
  return (dx, grads), dc, (dx_ad, grads_ad)


@pytest.mark.parametrize("dims", [(2, 3, 4, 5, 2, 3, 3, 3), (3, 1, 3, 4, 2, 2, 1, 4)],
                         ids=["3x3", "uneven"])
def test_cnn_backward_matches_jax_vjp(dims):
  params, x, labels = _network(dims)
  (dx, grads), dc, (dx_ad, grads_ad) = _both(params, x, labels)
  tol = gradient_tolerance(np.float64)
  assert normwise_error(dx, dx_ad) <= tol
  for name, mine, theirs in zip(cnn.CNNParams._fields, grads, grads_ad):
    assert np.shape(mine) == np.shape(theirs), name
    if name == "b":  # the conv bias feeds batchnorm: dC/db = sum of dc = 0, up to rounding
      M = np.sum(np.abs(np.asarray(dc)), axis=(0, 2, 3))
      assert normwise_error(mine, theirs, M) <= tol and normwise_error(mine, 0 * M, M) <= tol
    else:
      assert normwise_error(mine, theirs) <= tol, name


@pytest.mark.parametrize("change, error, message", [
    (dict(x=np.ones((2, 3, 4))), ValueError, r"cnn: x must have shape \(N, C, H, W\)"),
    (dict(w=np.ones((2, 2, 3, 3))), ValueError, r"w must have shape \(F, C, HH, WW\) with C = 3"),
    (dict(gamma=np.ones(3)), ValueError, r"gamma must have shape \(2,\)"),
    (dict(W=np.ones((3, 7))), ValueError, r"W must have shape \(K, F H2 W2\) = \(K, 8\)"),
    (dict(x=np.ones((2, 3, 1, 4))), ValueError, "smaller than one 2 x 2 pooling window"),
    (dict(labels=np.array([0, 3])), ValueError, r"labels must lie in \[0, 3\)"),
    (dict(labels=np.array([0.0, 1.0])), ValueError, "labels must be integers"),
    (dict(x=np.ones((2, 3, 4, 4), np.float32)), TypeError, "w has dtype float64 but x has float32"),
])
def test_cnn_refuses_bad_input(change, error, message):
  params = cnn.CNNParams(np.ones((2, 3, 3, 3)), np.zeros(2), np.ones(2), np.zeros(2),
                         np.ones((3, 8)), np.zeros(3))
  args = dict(x=np.ones((2, 3, 4, 4)), labels=np.array([0, 2]))
  args.update({k: v for k, v in change.items() if k in args})
  params = params._replace(**{k: v for k, v in change.items() if k in params._fields})
  with pytest.raises(error, match=message):
    cnn.forward(params, args["x"], args["labels"])


# ---------------------------------------------------------------- layer functions inside it

@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_right_cs231n_layers_pass_inside_the_cnn(dtype, monkeypatch):
  monkeypatch.delenv("CS231N_BUG", raising=False)
  report = check_op("block", LAYERS.CNN, name="cnn", signature="cs231n", dtype=dtype)
  assert report.verdict == "pass", report.text()
  assert report.cases == 46 and report.notes == []


def test_right_cs231n_layers_pass_a_short_search_inside_the_cnn(monkeypatch):
  monkeypatch.delenv("CS231N_BUG", raising=False)
  report = check_op("block", LAYERS.CNN, name="cnn", signature="cs231n", examples=4)
  assert report.verdict == "pass" and report.cases == 10, report.text()


def _bpref_signature(layers):
  """The example's functions in bpref's argument orders, W as (K, D) (the default layout)."""
  def dense(x, W, b, dout):
    dx, dw, db = layers.affine_backward(dout, (x, W.T, b))
    return dx, dw.T, db
  return {"conv2d": lambda x, w, b, dout: layers.conv_backward_naive(
              dout, (x, w, b, {"stride": 1, "pad": 1})),
          "batchnorm": layers.batchnorm_op, "activation": lambda z, dout: layers.relu_backward(dout, z),
          "maxpool2d": lambda x, dout: layers.max_pool_backward_naive(
              dout, (x, {"pool_height": 2, "pool_width": 2, "stride": 2})),
          "dense": dense, "loss": layers.softmax_loss}


def test_the_bpref_signature_is_the_default(monkeypatch):
  monkeypatch.delenv("CS231N_BUG", raising=False)
  assert check_op("block", _bpref_signature(LAYERS), name="cnn", examples=3).verdict == "pass"
  wrong = check_op("block", LAYERS.CNN, name="cnn", examples=3)  # CS231n's calls, not declared
  assert wrong.verdict == "fail"


STEP_BUGS = [  # (CS231N_BUG, the step named, the finding's code)
    ("affine", "fc", "batch_sum_missing"),
    ("relu", "relu", "kink_side"),
    ("conv", "conv", "overlap_overwritten"),
    ("maxpool", "pool", "all_ties"),
    ("batchnorm", "bn", "variance_term_missing"),
    ("softmax", "loss", "constant_factor"),
]


@pytest.mark.parametrize("bug, step, code", STEP_BUGS, ids=[b for b, _, _ in STEP_BUGS])
def test_a_bug_in_each_step_is_named_at_that_step(bug, step, code, monkeypatch):
  monkeypatch.setenv("CS231N_BUG", bug)
  report = check_op("block", LAYERS.CNN, name="cnn", signature="cs231n")
  assert report.verdict == "fail"
  first = report.diagnosis[0]
  assert first.code == code, report.text()
  assert first.summary.startswith((f"{step} (", f"{step}.")), first.summary
  wrong = [k for k, e in report.errors.items() if not e <= report.tolerance]
  assert wrong and {k.partition(".")[0] for k in wrong} == {step} or report.kind == "shape"


@pytest.mark.parametrize("bugs, step", [("conv,maxpool", "pool"), ("batchnorm,affine", "fc")],
                         ids=["conv_and_pool", "bn_and_fc"])
def test_of_two_bugs_the_earlier_step_in_the_backward_pass_is_named(bugs, step, monkeypatch):
  monkeypatch.setenv("CS231N_BUG", bugs)
  report = check_op("block", LAYERS.CNN, name="cnn", signature="cs231n")
  assert report.verdict == "fail"
  assert report.diagnosis[0].summary.startswith(f"{step} ("), report.text()


def test_a_bug_no_model_explains_names_the_first_wrong_step(monkeypatch):
  monkeypatch.delenv("CS231N_BUG", raising=False)
  layers = dict(LAYERS.CNN, activation=lambda dout, x: dout * (x > 0) + 0.5 * (x > 0))
  report = check_op("block", layers, name="cnn", signature="cs231n", examples=5)
  assert report.verdict == "fail"
  (finding,) = report.diagnosis
  assert finding.code == "wrong_layer"
  assert finding.summary.startswith("the first wrong step of the backward pass (cnn) is relu "
                                    "(activation)"), finding.summary
  assert "loss, fc, pool" in finding.detail and "--op activation --op-name relu" in finding.detail


def test_the_returned_loss_value_is_checked(monkeypatch):
  monkeypatch.delenv("CS231N_BUG", raising=False)

  def summed(x, y):  # the mean's 1/N left out of the value, not of the gradient
    loss, dx = LAYERS.softmax_loss(x, y)
    return loss * x.shape[0], dx

  report = check_op("block", dict(LAYERS.CNN, loss=summed), name="cnn", signature="cs231n",
                    examples=3, shrink_budget=0)
  assert report.verdict == "fail" and report.kind == "loss", report.text()


def test_the_conv_bias_is_not_judged_inside_the_cnn(monkeypatch):
  monkeypatch.delenv("CS231N_BUG", raising=False)

  def no_db(dout, cache):  # db = 0: right in this network, where batchnorm follows the conv
    dx, dw, db = LAYERS.conv_backward_naive(dout, cache)
    return dx, dw, np.zeros_like(db)

  report = check_op("block", dict(LAYERS.CNN, conv2d=no_db), name="cnn", signature="cs231n",
                    examples=3)
  assert report.verdict == "pass" and "conv.db not judged" in report.text()
  assert "conv.db" not in report.errors


def test_a_missing_layer_function_is_a_usage_error():
  with pytest.raises(TypeError, match="'maxpool2d' is missing"):
    check_op("block", {k: v for k, v in LAYERS.CNN.items() if k != "maxpool2d"}, name="cnn")


def test_block_options_are_checked():
  with pytest.raises(ValueError, match="'resnet' is not a composition of kind 'block'"):
    check_op("block", LAYERS.CNN, name="resnet")
  with pytest.raises(ValueError, match="heads=2 is not an option of block 'cnn'"):
    check_op("block", LAYERS.CNN, name="cnn", heads=2)
  with pytest.raises(ValueError, match="signature='cs231n' is not valid for block 'gpt2'"):
    check_op("block", LAYERS.CNN, signature="cs231n")


@jax.jit
def _got(params, x, labels):
  _, cache = cnn.forward(params, x, labels)
  return cnn.steps(params, cache)[1]


def test_expected_gives_each_steps_answer_on_the_networks_arrays():
  params, x, labels = _network((2, 1, 3, 3, 2, 3, 3, 2))
  got = expected("block", "cnn", x=x, labels=labels, **params._asdict())
  want = _got(params, x, labels)
  for step in cnn.STEPS:
    for name, value in zip(step.returns, want[step.name]):
      if f"{step.name}.{name}" != "conv.db":
        np.testing.assert_allclose(got[f"{step.name}.{name}"], value, rtol=1e-12, atol=1e-14)
  assert "conv.db" not in got


def test_the_compositions_use_no_autodiff():
  banned = {"grad", "value_and_grad", "vjp", "jvp", "jacfwd", "jacrev", "linearize", "custom_vjp",
            "custom_jvp"}
  for path in (ROOT / "bpref" / "layers" / "cnn.py", ROOT / "bpref" / "layers" / "block.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      root = node
      while isinstance(root, ast.Attribute):
        root = root.value
      if isinstance(node, ast.Attribute) and isinstance(root, ast.Name) and root.id == "jax":
        assert node.attr not in banned, (path.name, node.lineno, node.attr)  # jax.vjp, jax.grad, ...
      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jax"):
        assert not {a.name for a in node.names} & banned, (path.name, node.lineno)
