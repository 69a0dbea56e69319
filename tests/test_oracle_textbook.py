"""Correct code written the textbook way passes; the tolerance still catches bugs.

``textbook.grads`` takes f' from a (1 - a^2, a (1 - a), ...), builds the softmax
Jacobian and differentiates the probability losses the long way, as PyTorch
autograd, scikit-learn and most hand-written NumPy code do. Once a unit saturates
those forms keep only an absolute accuracy (proofs/tolerance.md); the oracle must
admit them in both dtypes, and still reject the same code with one factor wrong.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import bpref.oracle
from bpref.oracle import isolation, judge, spec as _spec, truth as _truth

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import textbook  # noqa: E402

SMOOTH = tuple(n for n in bpref.activations.SMOOTH + bpref.activations.KINKED
               if not bpref.activations.get(n).piecewise_linear)
"""The activations whose textbook f' is not exact (every form of it carries a rounding error)."""
EVERY = ("identity", "relu", "leaky_relu") + SMOOTH


def _saturated_case(arch, spec, scale):
  """The case of ``arch`` with every W_l and b_l multiplied by ``scale``: |z| of 10 to 30."""
  case = _spec.build_case(arch, spec)
  dtype = np.dtype(spec.dtype)
  weights = tuple((W.astype(np.float64) * scale).astype(dtype) for W in case.weights)
  biases = None if case.biases is None else tuple(
      (b.astype(np.float64) * scale).astype(dtype) for b in case.biases)
  return case._replace(weights=weights, biases=biases)


def _verdict(candidate, case, spec):
  truth, = _truth.compute_many([case], cache=False)  # the values no longer match the arch
  outcome = isolation.call_direct(candidate, isolation.candidate_inputs(case, spec.layout))
  return judge.judge(case, truth, outcome, spec), truth


def _saturated_search(candidate, dtype, loss, seed, count=60, activations=EVERY):
  spec = bpref.oracle.make_spec(activations=activations, losses=(loss,), dtype=dtype, max_depth=3)
  results = []
  for i, arch in enumerate(_spec.random_archs(spec, count, seed)):
    case = _saturated_case(arch, spec, (4.0, 10.0, 25.0)[i % 3])
    result, truth = _verdict(candidate, case, spec)
    results.append((arch, result, truth))
  return results


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_textbook_backprop_passes_default_searches(dtype, seed):
  report = bpref.oracle.check(textbook.grads, activations=("identity", "relu", "tanh", "sigmoid"),
                              losses=("squared_error",), examples=200, seed=seed, dtype=dtype)
  assert report.verdict == "pass", report.text()
  assert report.cases >= 150  # distinct in-domain cases of the 200 drawn, probes included


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("loss", ["squared_error", "cross_entropy", "binary_cross_entropy"])
def test_textbook_backprop_passes_saturated_units(dtype, loss):
  results = _saturated_search(textbook.grads, dtype, loss, seed=7)
  saturated = 0
  for arch, result, truth in results:
    assert result.passed, f"{arch.describe()}: {result.message}"
    saturated += any(np.max(np.abs(z)) > 10 for z in truth.z)
  assert saturated >= len(results) // 3  # the strategy does reach saturation


def test_subnormal_gradients_are_not_called_wrong():
  # float32, mish saturated below z = -88: the textbook's sigma(z) = 1 / (1 + e^-z) overflows
  # to 0 where mish'(z) ~ z e^z ~ 1e-40. Such an entry is wrong by 100% and by less than the
  # smallest normal number: the underflow floor (U) of proofs/tolerance.md. Without the floor
  # one of these 40 cases failed (2.0e-3 against 1.6e-3).
  results = _saturated_search(textbook.grads, "float32", "softmax_cross_entropy", seed=1,
                              count=40, activations=("mish", "identity"))
  tiny = np.finfo(np.float32).tiny
  assert any(0 < np.max(np.abs(truth.dW[0])) < tiny for _, _, truth in results)  # it is reached
  for arch, result, _ in results:
    assert result.passed, f"{arch.describe()}: {result.message}"


def _tanh_prime_off_by(factor):
  return textbook.with_fprime(lambda name, z, a, d: d * factor if name == "tanh" else d)


def test_saturated_search_still_catches_a_wrong_tanh_derivative():
  # tanh' off by a relative 1e-3. In float64 the textbook 1 - a^2 is still accurate to
  # 5u / f' = 1e-12 at |z| = 10, so the bug shows on saturated units too. (In float32,
  # 5u / f' is 2e-4 at |z| = 4: there a 1e-3 error is caught on unsaturated nets only.)
  results = _saturated_search(_tanh_prime_off_by(1 + 1e-3), "float64", "squared_error", seed=3,
                              count=30, activations=("identity", "tanh"))
  with_tanh = [r for arch, r, _ in results if "tanh" in arch.activations]
  failed = [r for r in with_tanh if not r.passed]
  assert len(failed) >= len(with_tanh) // 3, f"{len(failed)} of {len(with_tanh)} caught"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_default_search_catches_a_wrong_tanh_derivative(dtype):
  report = bpref.oracle.check(_tanh_prime_off_by(1 + 1e-3), activations=("identity", "tanh"),
                              losses=("squared_error",), examples=20, dtype=dtype, seed=0)
  assert report.verdict == "fail"
  assert report.kind == "numeric"


def test_minimal_saturated_tanh_case_of_the_report_passes():
  # sizes (1, 1, 1, 1), (tanh, identity, identity), z_1 near -5.4: the textbook error is
  # about 1e-13, ten times the tolerance of a bound that assumed a relative error in f'.
  arch = _spec.Arch((1, 1, 1, 1), ("tanh", "identity", "identity"), "squared_error", 1, 0)
  spec = bpref.oracle.make_spec(activations=("tanh", "identity"), losses=("squared_error",))
  case = _spec.build_case(arch, spec)
  x = np.array([[1.0]])
  weights = (np.array([[-5.4]]), np.array([[0.7]]), np.array([[1.3]]))
  case = case._replace(weights=weights, biases=(np.zeros(1),) * 3, x=x, t=np.array([[0.2]]))
  result, truth = _verdict(textbook.grads, case, spec)
  assert abs(truth.z[0].item() + 5.4) < 1e-12
  assert result.passed, result.message


_X64_SCRIPT = r"""
import json, sys
sys.path.insert(0, {tests!r})
import jax
if {x64}:
  jax.config.update("jax_enable_x64", True)
import numpy as np
import bpref.oracle, textbook

half_at_kinks = textbook.with_fprime(
    lambda name, z, a, d: np.where(z == 0, 0.5, d) if name == "relu" else d)
fprime_at_a = textbook.with_fprime(
    lambda name, z, a, d: 1 - np.tanh(a) ** 2 if name == "tanh" else d)

out = {{}}
for name, cand in (("kink", half_at_kinks), ("fprime_at_a", fprime_at_a)):
  rep = bpref.oracle.check(cand, activations=("identity", "relu", "tanh"), losses=("squared_error",),
                           examples=15, seed=1, dtype={dtype!r}).to_json()
  rep.pop("seconds", None)
  out[name] = rep
print(json.dumps(out, sort_keys=True, default=str))
"""


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_verdicts_do_not_depend_on_the_callers_x64_setting(dtype):
  tests = os.path.dirname(os.path.abspath(__file__))
  reports = []
  for x64 in (False, True):
    script = _X64_SCRIPT.format(tests=tests, x64=x64, dtype=dtype)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reports.append(json.loads(proc.stdout.strip().splitlines()[-1]))
  off, on = reports
  assert off["kink"]["verdict"] == "pass" and any("relu'(0) = 1/2" in n for n in off["kink"]["notes"])
  assert off["fprime_at_a"]["verdict"] == "fail"
  assert "fprime_at_a" in [f["code"] for f in off["fprime_at_a"]["diagnosis"]]
  assert off == on


def test_elu_half_at_zero_is_a_bug_not_a_convention():
  # elu (alpha = 1) has f'(0) = 1 from both sides: 1/2 there is no subgradient choice.
  half_at_zero = textbook.with_fprime(
      lambda name, z, a, d: np.where(z == 0, 0.5, d) if name == "elu" else d)

  report = bpref.oracle.check(half_at_zero, activations=("identity", "elu"),
                              losses=("squared_error",), examples=10)
  assert report.verdict == "fail", report.text()
  assert not any("elu'(0)" in note for note in report.notes)


def test_a_search_compiles_its_bucket_function_over_its_declared_names(monkeypatch):
  # A default check declares 4 activations and one loss: the truth's bucket function switches
  # over those alone, not over all 14 activations; a search of any other spec, over every name.
  from bpref.scale import fast

  monkeypatch.setattr(_truth, "_CACHE", {})  # every case's truth computed here, none cached earlier
  asked = []
  evaluate = fast.evaluate_many
  monkeypatch.setattr(fast, "evaluate_many",
                      lambda problems, **kw: asked.append(kw.get("names")) or evaluate(problems, **kw))
  assert bpref.oracle.check(textbook.grads, examples=5, seed=3).passed
  default = _spec.make_spec()
  assert asked and set(asked) == {_truth.COMMON}
  assert set(default.activations) <= set(_truth.COMMON.activations) < set(fast.ACTIVATION_NAMES)
  assert set(_truth.COMMON.losses) == set(default.losses)
  asked.clear()
  assert bpref.oracle.check(textbook.grads, activations=("tanh", "elu"), examples=5, seed=3).passed
  assert asked and set(asked) == {fast.EVERY}
