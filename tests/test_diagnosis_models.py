"""The whole-network diagnosis names bugs that outside code makes (bpref.oracle.diagnosis).

The candidates are written as someone outside bpref writes a backprop: ``backprop`` is the
textbook NumPy loop of tests/textbook.py (rows are examples, f' from a where a textbook
takes it, squared error averaged over the batch) with one line changed, and ``c_loops`` is
the same backprop as a C programmer writes it (flat row-major buffers, index arithmetic, one
example at a time), imitated in NumPy. The tests check that the diagnosis names each bug in
float64 and in float32 and that no other bug model survives its confirmation; that a
difference of a few tolerances is named when a model reproduces it to rounding; and that a
failure by a kink convention alone names the convention.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import bpref.oracle
from bpref.oracle import demo, diagnosis, search
from bpref.oracle import spec as spec_module

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_oracle_mutants  # noqa: E402
import textbook  # noqa: E402

DOMAIN = dict(activations=("identity", "relu", "tanh", "sigmoid"), losses=("squared_error",),
              max_depth=3, max_width=3, max_batch=3, examples=20, seed=0)


def backprop(bug=""):
  """The textbook backprop (squared error, mean over the batch) with one line changed."""
  def grads(weights, biases, activations, loss, x, t):
    a, zs, acts = x, [], [x]
    for W, b, name in zip(weights, biases, activations):
      z = a @ W.T + b
      a = textbook.forward_f(name, z)
      zs.append(z)
      acts.append(a)
    _, dy = textbook.loss_and_dy(loss, a, t)
    delta = dy / x.shape[0]
    if bug != "output_fprime_missing":
      delta = delta * textbook.derivative(activations[-1], zs[-1], a)
    dW, db = [None] * len(weights), [None] * len(weights)
    for l in range(len(weights) - 1, -1, -1):
      dW[l] = delta.T @ acts[l]
      if bug == "db_first_example":
        db[l] = delta[0].copy()
      elif bug == "db_first_example_times_B":
        db[l] = x.shape[0] * delta[0]
      else:
        db[l] = delta.sum(axis=0)
      if l:
        if bug == "not_transposed":  # W_l delta_l where W_l^T delta_l belongs
          back = delta @ weights[l].T
        else:
          back = delta @ weights[l]
        if bug == "layer_shift":  # l for l - 1: the layer above's activation, z and a
          delta = back * textbook.derivative(activations[l], zs[l], acts[l + 1])
        else:
          delta = back * textbook.derivative(activations[l - 1], zs[l - 1], acts[l])
    return dW, db
  return grads


def c_loops(swapped_strides=False):
  """The backprop as C code computes it, one example at a time over flat row-major buffers;
  ``swapped_strides``: the backward product reads W_l[i][j] at W[j * n_out + i], the address
  of an (n_in, n_out) matrix, where W[i * n_in + j] belongs."""
  def grads(weights, biases, activations, loss, x, t):
    sizes = [x.shape[1]] + [W.shape[0] for W in weights]
    flat = [np.ascontiguousarray(W).ravel() for W in weights]
    dW = [np.zeros(W.size, W.dtype) for W in weights]
    db = [np.zeros(W.shape[0], W.dtype) for W in weights]
    for b in range(x.shape[0]):
      acts, zs = [x[b]], []
      for l, name in enumerate(activations):
        n_in, n_out = sizes[l], sizes[l + 1]
        z = np.array([biases[l][i] + sum(flat[l][i * n_in + j] * acts[-1][j] for j in range(n_in))
                      for i in range(n_out)], x.dtype)
        zs.append(z)
        acts.append(textbook.forward_f(name, z))
      _, dy = textbook.loss_and_dy(loss, acts[-1][None, :], t[b][None, :])
      delta = dy[0] / x.shape[0] * textbook.derivative(activations[-1], zs[-1], acts[-1])
      for l in range(len(weights) - 1, -1, -1):
        n_in, n_out = sizes[l], sizes[l + 1]
        for i in range(n_out):
          db[l][i] += delta[i]
          for j in range(n_in):
            dW[l][i * n_in + j] += delta[i] * acts[l][j]
        if l:
          back = np.zeros(n_in, x.dtype)
          for j in range(n_in):
            for i in range(n_out):
              back[j] += flat[l][j * n_out + i if swapped_strides else i * n_in + j] * delta[i]
          delta = back * textbook.derivative(activations[l - 1], zs[l - 1], acts[l])
    return [g.reshape(W.shape) for g, W in zip(dW, weights)], db
  return grads


def diagnose_on(arch, candidate, **options):
  """The findings for ``candidate`` on ``arch`` alone, as the minimal failing case."""
  return test_oracle_mutants.diagnose_on(arch, candidate, DOMAIN, **options)


MODEL_CODES = {"hidden_fprime_missing", "output_fprime_missing", "output_fprime_extra",
               "activation_index", "layer_index", "activation_derivative", "fprime_at_a",
               "backward_not_transposed", "transposed", "batch_sum_missing", "kink_side"}
"""The codes of the bug models (``diagnosis._models``)."""


def test_correct_candidates_pass():
  for candidate in (backprop(), c_loops()):
    for dtype in ("float64", "float32"):
      report = bpref.oracle.check(candidate, dtype=dtype, **DOMAIN)
      assert report.verdict == "pass", report.text()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_backward_product_through_W_is_named(dtype):
  # delta @ W.T for delta @ W: W_l delta_l in place of W_l^T delta_l; NumPy runs it on square
  # layers only. It was reported as "wrong from layer 1 down" alone.
  report = bpref.oracle.check(backprop("not_transposed"), dtype=dtype, **DOMAIN)
  assert report.verdict == "fail", report.text()
  assert report.codes[0] == "backward_not_transposed", report.text()
  assert "W_l delta_l where W_l^T delta_l belongs" in report.diagnosis[0].summary
  assert not MODEL_CODES - {"backward_not_transposed"} & set(report.codes), report.codes


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_c_loop_reading_W_with_swapped_strides_is_named(dtype):
  # the C candidate of issue 31: the findings were only_one_output and wrong_from_layer
  report = bpref.oracle.check(c_loops(swapped_strides=True), dtype=dtype, **DOMAIN)
  assert report.verdict == "fail", report.text()
  assert report.codes[0] == "backward_not_transposed", report.text()
  sizes = report.case["arch"]["sizes"]  # layers with one row or column read the same either way
  layers = [l for l in range(2, len(sizes)) if min(sizes[l], sizes[l - 1]) >= 2]
  assert f"(layer(s) {', '.join(map(str, layers))})" in report.diagnosis[0].summary, report.text()


def test_swapped_strides_on_a_non_square_layer_are_the_buffer_read_as_its_transpose():
  # W_2 is 3 x 2: the candidate multiplies delta_2 by reshape(W_2, (2, 3)), which is neither
  # W_2 nor W_2^T; the model computes that reading and names it
  arch = spec_module.Arch((2, 2, 3), ("tanh", "identity"), "squared_error", 2, 0)
  findings = diagnose_on(arch, c_loops(swapped_strides=True))
  assert findings[0].code == "backward_not_transposed", findings
  assert "not square here" in findings[0].detail, findings[0].detail
  assert "(layer(s) 2)" in findings[0].summary


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_layer_shifted_fprime_is_named(dtype):
  # derivative(activations[l], zs[l], acts[l + 1]) where l - 1 belongs: the activation and the
  # z of the layer above. It was headlined "wrong derivative of tanh" in float64 and named
  # three wrong models in float32.
  report = bpref.oracle.check(backprop("layer_shift"), dtype=dtype, **DOMAIN)
  assert report.verdict == "fail", report.text()
  assert report.codes[0] == "layer_index", report.text()
  assert "activation and z" in report.diagnosis[0].summary, report.text()
  assert not MODEL_CODES - {"layer_index"} & set(report.codes), report.codes


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("bug, words", [("db_first_example", "delta_l of the first example only"),
                                        ("db_first_example_times_B",
                                         "B x delta_l of the first example")])
def test_bias_from_one_example_is_named(bug, words, dtype):
  # on the minimal case (one unit, B = 2) any wrong db is some factor of the right one ("db
  # is 4.0547 x bpref's"); the model is named once confirmed where the choices differ
  report = bpref.oracle.check(backprop(bug), dtype=dtype, **DOMAIN)
  assert report.verdict == "fail", report.text()
  assert report.codes == ["bias_wrong"], report.text()
  assert report.diagnosis[0].summary.endswith(f"db_l is {words}"), report.text()
  assert "x bpref's" not in report.diagnosis[0].detail, report.text()


def _in_float32(candidate):
  """``candidate`` run on float32 copies of its arrays, its answer cast back to the check's
  dtype: the backprop of a JAX user without jax_enable_x64, or a float32 torch model."""
  def grads(weights, biases, activations, loss, x, t):
    f32 = [[a.astype(np.float32) for a in arrays] for arrays in (weights, biases)]
    dW, db = candidate(*f32, activations, loss, x.astype(np.float32), t.astype(np.float32))
    return [g.astype(x.dtype) for g in dW], [g.astype(x.dtype) for g in db]
  return grads


def test_a_float64_check_of_float32_arithmetic_is_named():
  report = bpref.oracle.check(_in_float32(backprop()), dtype="float64", **DOMAIN)
  assert report.verdict == "fail", report.text()
  assert report.codes == ["float32_arithmetic"], report.text()
  # and right to float32's own precision: the same candidate passes a float32 check
  assert bpref.oracle.check(_in_float32(backprop()), dtype="float32", **DOMAIN).verdict == "pass"


def test_a_forgotten_output_fprime_a_few_tolerances_off_is_named_not_blamed_on_rounding():
  # float32, one tanh unit with |z_1| small: tanh'(z_1) is so close to 1 that forgetting it
  # moves the gradient by 75 tolerances, which was reported as near_tolerance. The model
  # reproduces the candidate to rounding here and on wider networks.
  arch = spec_module.Arch((1, 1), ("tanh",), "squared_error", 1, 172)
  spec = bpref.oracle.make_spec(**dict(DOMAIN, dtype="float32"))
  ev = search.Evaluator(backprop("output_fprime_missing"), spec)
  result = ev.run([arch], "search")[0]
  assert 10 * result.tolerance < max(result.errors.values()) < 100 * result.tolerance
  findings, _, _ = diagnosis.diagnose(ev, result)
  assert [f.code for f in findings] == ["output_fprime_missing"], findings


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_wrong_models_do_not_survive_confirmation(dtype):
  # bpref's demo bug (the hidden layers' f' forgotten), found on (1, 1, 1) where the f' of the
  # layer above, the output layer's f' everywhere and no f' at all are the same model. On the
  # confirming networks the two wrong ones stay within 100 float32 tolerances of the
  # candidate, far outside its rounding: a fixed limit of 100 x tol let both survive.
  report = bpref.oracle.check(demo.grads_with_bug, dtype=dtype, **dict(DOMAIN, examples=50))
  assert report.verdict == "fail", report.text()
  assert report.codes[0] == "hidden_fprime_missing", report.text()
  assert not MODEL_CODES - {"hidden_fprime_missing"} & set(report.codes), report.codes


def test_a_strict_kink_failure_names_the_convention():
  relu_ge = textbook.with_fprime(
      lambda name, z, a, d: np.where(z == 0, 1.0, d) if name == "relu" else d)
  report = bpref.oracle.check(relu_ge, strict_kinks=True, **DOMAIN)
  assert report.verdict == "fail" and report.kind == "convention", report.text()
  assert report.codes == ["kink_convention"], report.text()
  assert "relu'(0) = 1" in report.diagnosis[0].summary, report.text()
  assert "strict" in report.diagnosis[0].detail


def test_a_combined_convention_note_lists_only_the_activations_that_differ():
  # relu'(0) = 1 in code testing z >= 0; leaky_relu and selu at bpref's own f'(0). A note
  # listed "relu'(0) = 1 (code testing z >= 0); selu'(0) = scale * alpha (jax.nn)" as the
  # candidate's convention, against bpref's same selu'(0)
  relu_ge = textbook.with_fprime(
      lambda name, z, a, d: np.where(z == 0, 1.0, d) if name == "relu" else d)
  report = bpref.oracle.check(relu_ge, activations=("identity", "relu", "leaky_relu", "selu"),
                              losses=("squared_error",))
  assert report.verdict == "pass", report.text()
  assert any("relu'(0) = 1" in note for note in report.notes), report.notes
  for note in report.notes:
    assert "leaky_relu'(0)" not in note and "selu'(0)" not in note, note


def test_every_convention_note_has_a_code_naming_it():
  from bpref.oracle.ops import classic, pool

  notes = {"gelu_convention": list(classic.GELU_NOTE.values()),
           "softplus_threshold": [classic.SOFTPLUS_NOTE],
           "pool_tie_convention": [pool.TIE_NOTE.format(how="takes the last one")],
           "kink_convention": ["convention note: at exact kinks the candidate uses relu'(0) = 1 "
                               "(code testing z >= 0), bpref uses relu'(0) = 0 (jax.nn.relu, "
                               "torch); both are valid subgradients"]}
  for code, texts in notes.items():
    for text in texts:
      finding = diagnosis.convention_finding(text, strict=True)
      assert finding.code == code, (text, finding)
      assert "convention note" not in finding.summary and finding.summary, finding


def test_a_strict_op_convention_failure_names_the_convention():
  from bpref.oracle.ops import check_op

  relu_ge = lambda z, dout: dout * (z >= 0)  # noqa: E731  relu'(0) = 1: a valid subgradient
  assert check_op("activation", relu_ge, name="relu").verdict == "pass"
  strict = check_op("activation", relu_ge, name="relu", strict_conventions=True)
  assert strict.verdict == "fail" and strict.codes[:1] == ["kink_convention"], strict.text()


def test_a_bias_gradient_left_per_example_is_told_to_sum_over_the_batch():
  import bpref.oracle
  from bpref.oracle import demo

  def per_example_db(weights, biases, activations, loss, x, t):
    dW, db = demo.grads(weights, biases, activations, loss, x, t)
    return dW, [np.repeat(g[None, :], x.shape[0], axis=0) / x.shape[0] for g in db]

  report = bpref.oracle.check(per_example_db, examples=5)
  assert report.kind == "shape" and "sum it over the batch, db.sum(axis=0)" in report.message, \
      report.text()
