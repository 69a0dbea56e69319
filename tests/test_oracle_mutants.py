"""The oracle catches realistic backprop bugs and names each one.

``Backprop`` is a plain NumPy implementation written the textbook way, for
these tests and independently of bpref: row-major batches, f' from the output
a where that is the standard form (tanh' = 1 - a^2, sigmoid' = a (1 - a)),
relu' = (z > 0), and the fused output deltas y - t of cross-entropy after
softmax and binary cross-entropy after sigmoid. Each mutant switches on one
realistic bug; the test asserts that ``bpref.oracle.check`` fails it and that
the expected diagnosis is among the findings (and first where the diagnosis is
exact).

Run as a script to measure the kill rate, the examples to detection and the
time per check:  python tests/test_oracle_mutants.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest

import bpref.oracle
from bpref.oracle import diagnosis, judge, search
from bpref.oracle import spec as spec_module
from bpref.oracle import truth as truth_module

# ---------------------------------------------------------------- the implementation under test


def _f(name, z):
  if name == "identity":
    return z
  if name == "relu":
    return np.maximum(z, 0)
  if name == "leaky_relu":
    return np.where(z > 0, z, 0.01 * z)
  if name == "tanh":
    return np.tanh(z)
  if name == "sigmoid":
    return 1 / (1 + np.exp(-z))
  if name == "gelu_tanh":  # GPT-2's gelu: z (1 + tanh(c (z + k z^3))) / 2
    return 0.5 * z * (1 + np.tanh(GELU_C * (z + 0.044715 * z ** 3)))
  if name == "softmax":
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
  raise ValueError(f"unsupported activation {name}")


GELU_C = float(np.sqrt(2 / np.pi))  # a Python float: float32 arrays stay float32


def _gelu_tanh_df(z, three=3):
  # PyTorch's GeluBackward (approximate='tanh'): (1 + t) / 2 + z (1 - t^2) c (1 + 3 k z^2) / 2
  t = np.tanh(GELU_C * (z + 0.044715 * z ** 3))
  return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * GELU_C * (1 + three * 0.044715 * z * z)


def _df(name, z, a):
  """f'(z) the textbook way: from a = f(z) for tanh and sigmoid, relu' = (z > 0)."""
  if name == "identity":
    return np.ones_like(z)
  if name == "relu":
    return (z > 0).astype(z.dtype)
  if name == "leaky_relu":
    return np.where(z > 0, 1, 0.01).astype(z.dtype)
  if name == "tanh":
    return 1 - a ** 2
  if name == "sigmoid":
    return a * (1 - a)
  if name == "gelu_tanh":
    return _gelu_tanh_df(z)
  raise ValueError(f"unsupported activation {name}")


def _df_of_z(name, z):
  """f'(z) written as a function of z alone (called with the wrong argument by one mutant)."""
  return _df(name, z, _f(name, z))


class Backprop:
  """grads(weights, biases, activations, loss, x, t) with one optional bug switched on.

  Args:
    bug: the mutant's name ("" for the correct implementation).
    reduction: the reduction the implementation means to compute, "mean" or "sum".
  """

  def __init__(self, bug: str = "", reduction: str = "mean"):
    self.bug = bug
    self.reduction = reduction
    self.accumulated = None

  def df(self, name, z, a):
    bug = self.bug
    if bug == "fprime_at_a":
      return _df_of_z(name, a)
    if bug == "sigmoid_a_form_on_z" and name == "sigmoid":
      return z * (1 - z)
    if bug == "tanh_a_form_on_z" and name == "tanh":
      return 1 - z ** 2
    if bug == "tanh_missing_square" and name == "tanh":
      return 1 - a
    if bug == "sigmoid_missing_factor" and name == "sigmoid":
      return a
    if bug == "gelu_tanh_three_missing" and name == "gelu_tanh":  # 1 + k z^2 for 1 + 3 k z^2
      return _gelu_tanh_df(z, three=1)
    if bug == "relu_ge" and name == "relu":
      return (z >= 0).astype(z.dtype)
    if bug == "relu_nonzero" and name == "relu":
      return (z != 0).astype(z.dtype)
    if bug == "leaky_relu_zero_at_kink" and name == "leaky_relu":
      return ((z > 0) + 0.01 * (z < 0)).astype(z.dtype)
    return _df(name, z, a)

  def __call__(self, weights, biases, activations, loss, x, t):
    bug = self.bug
    L = len(weights)
    if bug == "mutates_input":
      x -= 0.0 * x + 1e-3
    acts = [x]
    zs = []
    for W, b, act in zip(weights, biases, activations):
      z = acts[-1] @ W.T + b[None, :]
      zs.append(z)
      acts.append(_f(act, z))
    y = acts[-1]
    out = activations[-1]
    B, K = y.shape
    if bug == "batch_from_wrong_axis":
      B = x.shape[1]
    fused = None  # dC/dz_L where the textbook differentiates the loss and f_L together
    if loss == "squared_error":
      g = 2 * (y - t)
      value = np.sum((y - t) ** 2)
      if bug == "half_missing":
        g = y - t
    elif loss == "half_squared_error":
      g = y - t
      value = 0.5 * np.sum((y - t) ** 2)
      if bug == "half_doubled":
        g = 2 * (y - t)
    elif loss == "cross_entropy":
      g = -t / y
      value = -np.sum(t * np.log(y))
      if out == "softmax" and bug not in ("softmax_diagonal", "softmax_jacobian_missing"):
        fused = y - t
    elif loss == "binary_cross_entropy":
      g = -t / y + (1 - t) / (1 - y)
      value = -np.sum(t * np.log(y) + (1 - t) * np.log(1 - y))
      if out == "sigmoid":
        fused = y - t
    else:
      raise ValueError(f"unsupported loss {loss}")
    per_example = bug != "sum_not_mean" if self.reduction == "mean" else bug == "mean_not_sum"
    scale = 1 / B if per_example else 1
    value = value * scale

    def reduce(d):
      if bug == "sign_flip":
        d = -d
      if bug == "sum_over_outputs":
        d = np.repeat(d.sum(axis=1, keepdims=True), K, axis=1)
      if bug == "mean_over_outputs":
        d = d / K
      return d * scale

    g = reduce(g)
    if fused is not None:
      delta = reduce(fused)
      if bug in ("bce_fprime_twice", "softmax_jacobian_twice"):  # f_L's derivative applied again
        delta = y * (delta - np.sum(delta * y, axis=1, keepdims=True)) if out == "softmax" \
            else delta * self.df(out, zs[-1], y)
    elif out == "softmax":
      if bug == "softmax_diagonal":
        delta = g * y * (1 - y)
      elif bug == "softmax_jacobian_missing":
        delta = g
      else:
        delta = y * (g - np.sum(g * y, axis=1, keepdims=True))
    elif bug == "output_fprime_missing":
      delta = g
    else:
      out_act = activations[0] if bug == "first_activation_everywhere" else out
      delta = g * self.df(out_act, zs[-1], y)
    dW, db = [None] * L, [None] * L
    for l in range(L - 1, -1, -1):
      if bug == "transposed":
        dW[l] = acts[l].T @ delta
      elif bug == "dW_reshaped":  # a row-major buffer of a^T delta read as (n_l, n_(l-1))
        dW[l] = (acts[l].T @ delta).reshape(weights[l].shape)
      elif bug == "first_example_only":
        dW[l] = B * np.outer(delta[0], acts[l][0])
      elif bug == "loop_bounds":
        n_out = delta.shape[1]
        dW[l] = np.zeros_like(weights[l])
        for i in range(n_out):
          for j in range(n_out):
            dW[l][i, j] = delta[:, i] @ acts[l][:, j]
      else:
        dW[l] = delta.T @ acts[l]
      if bug == "bias_missing":
        db[l] = np.zeros_like(biases[l])
      elif bug == "bias_first_example":
        db[l] = delta[0].copy()
      elif bug == "bias_mean":
        db[l] = delta.mean(axis=0)
      else:
        db[l] = delta.sum(axis=0)
      if l > 0:
        W_next = weights[-1] if bug == "last_weights_in_recursion" else weights[l]
        back = delta @ W_next
        act = activations[l - 1]
        if bug == "first_activation_everywhere":
          act = activations[0]
        elif bug == "activation_off_by_one":  # the layer above's activation
          act = activations[l]
        if bug == "hidden_fprime_missing":
          delta = back
        else:
          delta = back * self.df(act, zs[l - 1], acts[l])
    if bug == "accumulates":
      if self.accumulated is not None and [g.shape for g in self.accumulated] == [g.shape for g in dW]:
        dW = [g + h for g, h in zip(dW, self.accumulated)]
      self.accumulated = dW
    if bug == "loss_over_outputs":
      return dW, db, value / K
    if bug == "loss_returned":
      return dW, db, value
    return dW, db


# ---------------------------------------------------------------- the mutants

DOMAIN = dict(activations=("identity", "tanh", "sigmoid", "relu"), losses=("squared_error",),
              max_depth=3, max_width=3, max_batch=3, examples=8, seed=0)
HALF = dict(DOMAIN, losses=("half_squared_error",))
SUM = dict(DOMAIN, reduction="sum")
SOFTMAX = dict(DOMAIN, activations=("identity", "tanh", "softmax"), losses=("cross_entropy",))
BINARY = dict(DOMAIN, activations=("identity", "tanh", "sigmoid"), losses=("binary_cross_entropy",))
RELU = dict(DOMAIN, activations=("identity", "relu"))
LEAKY = dict(DOMAIN, activations=("identity", "relu", "leaky_relu"))
GELU = dict(DOMAIN, activations=("identity", "gelu_tanh", "tanh"))

MUTANTS = {
    # name: (domain, expected diagnosis code, must it be the first finding?)
    "half_missing": (DOMAIN, "constant_factor", True),
    "half_doubled": (HALF, "constant_factor", True),
    "sum_not_mean": (DOMAIN, "constant_factor", True),
    "mean_not_sum": (SUM, "constant_factor", True),
    "batch_from_wrong_axis": (DOMAIN, "constant_factor", True),
    "mean_over_outputs": (DOMAIN, "constant_factor", True),
    "sign_flip": (DOMAIN, "sign_flip", True),
    "transposed": (DOMAIN, "transposed", True),
    "dW_reshaped": (DOMAIN, "transposed", True),
    "output_fprime_missing": (DOMAIN, "output_fprime_missing", True),
    "fprime_at_a": (DOMAIN, "fprime_at_a", True),
    "sigmoid_a_form_on_z": (DOMAIN, "activation_derivative", True),
    "tanh_a_form_on_z": (DOMAIN, "activation_derivative", True),
    "tanh_missing_square": (DOMAIN, "activation_derivative", True),
    "sigmoid_missing_factor": (DOMAIN, "activation_derivative", True),
    "gelu_tanh_three_missing": (GELU, "activation_derivative", True),
    "relu_nonzero": (RELU, "kink_side", True),
    "leaky_relu_zero_at_kink": (LEAKY, "kink_value", True),
    "hidden_fprime_missing": (DOMAIN, "wrong_from_layer", False),
    "bias_missing": (DOMAIN, "bias_missing", True),
    "bias_first_example": (DOMAIN, "bias_wrong", True),
    "bias_mean": (DOMAIN, "bias_wrong", True),
    "first_example_only": (DOMAIN, "batch_sum_missing", True),
    "last_weights_in_recursion": (DOMAIN, "only_depth_2", False),
    "first_activation_everywhere": (DOMAIN, "activation_index", True),
    "activation_off_by_one": (DOMAIN, "activation_index", True),
    "sum_over_outputs": (DOMAIN, "only_one_output", False),
    "loop_bounds": (DOMAIN, "only_square", False),
    "softmax_diagonal": (SOFTMAX, "softmax_jacobian_diagonal", True),
    "softmax_jacobian_missing": (SOFTMAX, "softmax_jacobian_missing", True),
    "softmax_jacobian_twice": (SOFTMAX, "output_fprime_extra", True),
    "bce_fprime_twice": (BINARY, "output_fprime_extra", True),
    "accumulates": (DOMAIN, "nondeterministic", True),
    "mutates_input": (DOMAIN, "mutation", True),
    "loss_over_outputs": (DOMAIN, "loss_inconsistent", True),
}

FACTORS = {"half_missing": "1/2", "half_doubled": "2", "sum_not_mean": "B", "mean_not_sum": "1/B",
           "mean_over_outputs": "1/K", "batch_from_wrong_axis": "B/n_0"}


def run_mutant(name, **options):
  domain, _, _ = MUTANTS[name]
  return bpref.oracle.check(Backprop(name, domain.get("reduction", "mean")),
                            **dict(domain, **options))


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_oracle_catches_and_names_mutant(name):
  domain, code, first = MUTANTS[name]
  report = run_mutant(name)
  assert report.verdict == "fail", report.text()
  assert code in report.codes, report.text()
  if first:
    assert report.codes[0] == code, report.text()
  if name in FACTORS:
    summary = report.diagnosis[0].summary
    assert f"is {FACTORS[name]} x bpref's" in summary, summary
  assert report.case is not None and report.reproducer


@pytest.mark.parametrize("domain", [DOMAIN, HALF, SOFTMAX, BINARY, RELU, LEAKY, GELU],
                         ids=["squared", "half", "softmax", "binary", "relu", "leaky", "gelu"])
def test_unmutated_implementation_passes_every_mutant_domain(domain):
  report = bpref.oracle.check(Backprop(), **domain)
  assert report.verdict == "pass", report.text()


def test_unmutated_implementation_passes_with_the_sum_reduction():
  report = bpref.oracle.check(Backprop(reduction="sum"), **SUM)
  assert report.verdict == "pass", report.text()


FORMS = {"tanh_missing_square": "tanh_one_minus_a", "tanh_a_form_on_z": "tanh_one_minus_z_squared",
         "sigmoid_a_form_on_z": "sigmoid_z_one_minus_z", "sigmoid_missing_factor": "sigmoid_a",
         "gelu_tanh_three_missing": "gelu_tanh_three_missing"}
"""Mutants computing a known wrong form of f' (bpref.oracle.forms), and the form."""


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(FORMS))
def test_wrong_derivative_form_is_named(name, dtype):
  report = run_mutant(name, dtype=dtype)
  assert report.verdict == "fail", report.text()
  assert report.codes[0] == "activation_derivative", report.text()
  assert f"(form {FORMS[name]})" in report.diagnosis[0].summary, report.text()
  assert all(well_formed(f) for f in report.diagnosis), report.diagnosis


def test_relu_kink_convention_is_a_note_unless_strict():
  report = bpref.oracle.check(Backprop("relu_ge"), **RELU)
  assert report.verdict == "pass", report.text()
  assert any("relu'(0) = 1" in note for note in report.notes), report.notes
  strict = bpref.oracle.check(Backprop("relu_ge"), strict_kinks=True, **RELU)
  assert strict.verdict == "fail" and strict.kind == "convention", strict.text()


# ---------------------------------------------------------------- the diagnosis on chosen cases


def diagnose_on(arch, candidate, domain=None, **options):
  """The findings for ``candidate`` on ``arch`` alone, as the minimal failing case, in
  ``domain`` (this file's ``DOMAIN`` by default) changed by ``options``."""
  spec = bpref.oracle.make_spec(**dict(domain or DOMAIN, **options))
  ev = search.Evaluator(candidate, spec)
  result = ev.run([arch], "search")[0]
  assert not result.passed, result.message
  findings, _, _ = diagnosis.diagnose(ev, result)
  return findings


class Nudged:
  """The correct gradient with one entry of dW_1 moved by ``times`` tolerances of ``arch``:
  an error of rounding size, as a cancelling formula makes."""

  def __init__(self, arch, times, **options):
    spec = bpref.oracle.make_spec(**dict(DOMAIN, **options))
    case = spec_module.build_case(arch, spec)
    truth = truth_module.compute(case)
    self.step = times * judge.case_tolerance(case, truth) * np.linalg.norm(truth.mag_W[0])

  def __call__(self, weights, biases, activations, loss, x, t):
    dW, db = Backprop()(weights, biases, activations, loss, x, t)
    dW[0] = dW[0].copy()
    dW[0].flat[0] += dW[0].dtype.type(self.step)
    return dW, db


def well_formed(finding) -> bool:
  text = finding.summary + "\n" + finding.detail
  return (finding.summary.strip() == finding.summary and finding.summary
          and not finding.summary.endswith(":") and "  " not in text and " x x " not in text
          and "is  x" not in text and not text.rstrip().endswith(":")
          and "likely cause: ;" not in text and "likely cause: \n" not in text + "\n")


SATURATED_1X1 = spec_module.Arch((1, 1, 1, 1), ("tanh", "identity", "identity"), "squared_error", 1, 0)
"""The shape of the false alarm of issue 11: every layer 1 x 1, where dW^T = dW."""


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_rounding_sized_error_claims_no_model(dtype):
  findings = diagnose_on(SATURATED_1X1, Nudged(SATURATED_1X1, 10, dtype=dtype), dtype=dtype)
  assert [f.code for f in findings] == ["near_tolerance"], findings
  assert all(well_formed(f) for f in findings), findings


def test_transposed_is_claimed_only_where_the_transpose_shows():
  square = spec_module.Arch((2, 2), ("identity",), "squared_error", 2, 0)
  assert diagnosis_codes(square, Backprop("transposed"))[0] == "transposed"
  one_by_one = spec_module.Arch((1, 1, 1), ("tanh", "identity"), "squared_error", 1, 0)
  assert "transposed" not in diagnosis_codes(one_by_one, Backprop("half_missing"))
  assert "transposed" not in diagnosis_codes(SATURATED_1X1, Nudged(SATURATED_1X1, 50))


def diagnosis_codes(arch, candidate, **options):
  return [f.code for f in diagnose_on(arch, candidate, **options)]


def test_counterfactuals_are_claimed_only_when_they_can_tell():
  # a wrong tanh' in layer 1: removing layer 1 or making every layer identity passes, but the
  # bug is tanh's derivative, not the depth or the mix of activations
  deep = spec_module.Arch((2, 2, 2, 2), ("tanh", "identity", "identity"), "squared_error", 2, 0)
  codes = diagnosis_codes(deep, Backprop("tanh_missing_square"))
  assert "only_depth_2" not in codes and "only_uniform_activations" not in codes, codes
  assert codes[0] == "activation_derivative", codes


@pytest.mark.parametrize("name", ["half_missing", "sum_not_mean", "batch_from_wrong_axis"])
def test_factors_are_named_in_float32(name):
  report = run_mutant(name, dtype="float32")
  assert report.codes[0] == "constant_factor", report.text()
  assert f"is {FACTORS[name]} x bpref's" in report.diagnosis[0].summary, report.text()
  assert all(well_formed(f) for f in report.diagnosis), report.diagnosis
  assert "  " not in report.text().splitlines()[0]


def test_loss_reported_per_output_is_1_over_K_also_when_K_is_2():
  report = run_mutant("loss_over_outputs", max_width=2, max_batch=2)
  assert report.case["arch"]["sizes"][-1] == 2, report.text()
  assert "is 1/K (a mean over the K outputs) x the loss" in report.diagnosis[0].summary, report.text()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_models_are_named_where_they_differ(dtype):
  # issue 31: on a one-unit layer any wrong db is some factor of the right one, and on square
  # layers a reshape is a transpose; each is named only once seen where the choices differ
  first = run_mutant("bias_first_example", dtype=dtype)
  assert "first example only" in first.diagnosis[0].detail, first.text()
  assert "x bpref's" not in first.diagnosis[0].detail, first.text()
  reshaped = run_mutant("dW_reshaped", dtype=dtype)
  assert "reshaped" in reshaped.diagnosis[0].summary, reshaped.text()
  transposed = run_mutant("transposed", dtype=dtype)
  assert "reshaped" not in transposed.text(), transposed.text()


class NoBias:
  """``Backprop`` for networks without biases (bias=False: the oracle passes biases=None)."""

  def __init__(self, bug: str = ""):
    self.backprop = Backprop(bug)

  def __call__(self, weights, biases, activations, loss, x, t):
    assert biases is None
    zeros = [np.zeros(W.shape[0], W.dtype) for W in weights]
    dW, _ = self.backprop(weights, zeros, activations, loss, x, t)
    return dW, None


@pytest.mark.parametrize("name", ["batch_from_wrong_axis", "loop_bounds"])
def test_no_bias_mutants_are_diagnosed(name):
  # issue 31: without db the implied delta_l comes from dW_l = D_l^T A_(l-1) (39); solving it
  # with pinv(A^T) for pinv(A) raised on every minimal case with n_(l-1) != B, and the
  # report said "undiagnosed"
  domain, code, _ = MUTANTS[name]
  report = bpref.oracle.check(NoBias(name), **dict(domain, bias=False))
  assert report.verdict == "fail", report.text()
  assert "undiagnosed" not in report.codes, report.text()
  assert report.codes[0] == code, report.text()


@pytest.mark.parametrize("bias", [True, False], ids=["B=2", "B=2, no bias"])
def test_implied_deltas_solved_from_dW(bias):
  # B = 2 <= n_0 = 3, so db (B = 1 only) cannot give delta_l and dW_l = D_l^T A_(l-1) (39) is
  # solved for it; the 1/2 of half_missing halves every delta_l: a relative error of 1/2 each
  arch = spec_module.Arch((3, 2, 2), ("tanh", "identity"), "squared_error", 2, 0)
  spec = bpref.oracle.make_spec(**dict(DOMAIN, bias=bias))
  ev = search.Evaluator(Backprop("half_missing") if bias else NoBias("half_missing"), spec)
  result = ev.run([arch], "search")[0]
  assert not result.passed, result.message
  findings, _, implied = diagnosis.diagnose(ev, result)
  assert implied == pytest.approx([0.5, 0.5], rel=1e-9), implied
  assert findings[0].code == "constant_factor", findings


def test_kink_probes_cover_every_kinked_activation():
  spec = bpref.oracle.make_spec(**dict(DOMAIN, activations=("identity", "relu", "leaky_relu", "elu")))
  kinked = {a for arch in spec_module.probes(spec) if arch.kink for a in arch.activations}
  assert {"relu", "leaky_relu", "elu"} <= kinked
  # a leaky_relu'(0) that is no subgradient shows only at an exact kink: the probes alone find it
  report = bpref.oracle.check(Backprop("leaky_relu_zero_at_kink"), **dict(LEAKY, examples=0))
  assert report.verdict == "fail" and report.codes[0] == "kink_value", report.text()


def test_no_drawn_case_is_vacuous():
  spec = bpref.oracle.make_spec(activations=("relu",), max_width=2, max_batch=2, examples=120)
  archs = spec_module.probes(spec) + spec_module.random_archs(spec, spec.examples, 0)
  for arch in archs:
    case = spec_module.build_case(arch, spec)
    dW, db = Backprop()(list(case.weights), list(case.biases), list(arch.activations), arch.loss,
                        case.x.copy(), case.t.copy())
    assert all(np.any(g) for g in dW + db), arch.describe()
  spec = bpref.oracle.make_spec(**SOFTMAX)
  archs = spec_module.probes(spec) + spec_module.random_archs(spec, 40, 0)
  assert all(a.sizes[-1] >= 2 for a in archs if a.activations[-1] == "softmax")


def test_a_vacuous_case_is_not_counted():
  spec = bpref.oracle.make_spec(**RELU)
  arch = spec_module.Arch((1, 1), ("relu",), "squared_error", 1, 0)
  dead = spec_module.Case(arch, (np.ones((1, 1)),), (np.full(1, -5.0),), np.full((1, 1), 0.5),
                          np.zeros((1, 1)), "mean", "float64")
  # values made by hand, not by build_case from the Arch: the truth's cache (keyed by the Arch)
  # may hold another search's case of the same name, so it is left out
  assert search.vacuous(dead, truth_module.compute_many([dead], cache=False)[0]) == ["W1", "b1"]
  assert spec_module.vacuous(arch, dead.weights, dead.biases, dead.x)


# ---------------------------------------------------------------- measuring


def measure(**options):
  """Kill rate, examples to detection and time per check over every mutant."""
  rows = []
  print(f"options: {options or 'defaults of the tests'}")
  for name in sorted(MUTANTS):
    start = time.perf_counter()
    report = run_mutant(name, **options)
    seconds = time.perf_counter() - start
    code = MUTANTS[name][1]
    rows.append((name, report.verdict == "fail", code in report.codes, report.examples_to_failure,
                 report.calls, seconds))
    print(f"{name:28} {report.verdict:5} diag={'ok ' if code in report.codes else 'BAD'} "
          f"first-fail-at={report.examples_to_failure:3d} calls={report.calls:3d} {seconds:6.1f} s  "
          f"{report.codes}")
  killed = sum(r[1] for r in rows)
  named = sum(r[2] for r in rows)
  found = [r[3] for r in rows if r[1]] or [0]
  print(f"kill rate {killed}/{len(rows)}; right diagnosis {named}/{len(rows)}; median examples to "
        f"detection {statistics.median(found)}; median calls per check "
        f"{statistics.median(r[4] for r in rows)}; time per check median "
        f"{statistics.median(r[5] for r in rows):.1f} s, total {sum(r[5] for r in rows):.1f} s")


def measure_single_networks():
  """How many mutants each probe network catches on its own (a one-network gradient check)."""
  from bpref.oracle import search, spec as spec_module

  spec = bpref.oracle.make_spec(**DOMAIN)
  names = [n for n in sorted(MUTANTS) if MUTANTS[n][0] is DOMAIN]
  caught = {}
  for arch in spec_module.probes(spec):
    count = 0
    for name in names:
      ev = search.Evaluator(Backprop(name), spec)
      count += not ev.run([arch], "probe")[0].passed
    caught[arch.describe()] = count
    print(f"{count:3d}/{len(names)}  {arch.describe()}")
  print(f"one network alone catches {min(caught.values())} to {max(caught.values())} of {len(names)} "
        f"mutants (median {statistics.median(caught.values())})")


if __name__ == "__main__":
  import jax

  jax.config.update("jax_enable_x64", True)
  measure_single_networks()
  measure()
  measure(probes=False)  # hypothesis-drawn networks only
  measure(probes=False, examples=1)  # one fixed network, as a single-input gradient check
