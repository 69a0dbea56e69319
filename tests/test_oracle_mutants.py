"""The oracle catches realistic backprop bugs and names each one.

``Backprop`` is a plain NumPy implementation (row-major batches, written for
these tests, independent of bpref). Each mutant switches on one realistic bug;
the test asserts that ``bpref.oracle.check`` fails it and that the expected
diagnosis is among the findings (and first where the diagnosis is exact).

Run as a script to measure the kill rate, the examples to detection and the
time per check:  python tests/test_oracle_mutants.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest

import bpref.oracle

# ---------------------------------------------------------------- the implementation under test


def _f(name, z):
  if name == "identity":
    return z
  if name == "relu":
    return np.maximum(z, 0)
  if name == "tanh":
    return np.tanh(z)
  if name == "sigmoid":
    return 1 / (1 + np.exp(-z))
  if name == "softmax":
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
  raise ValueError(f"unsupported activation {name}")


def _df_from_z(name, z):
  """f'(z) written in terms of z."""
  if name == "identity":
    return np.ones_like(z)
  if name == "relu":
    return (z > 0).astype(z.dtype)
  if name == "tanh":
    return 1 - np.tanh(z) ** 2
  if name == "sigmoid":
    s = 1 / (1 + np.exp(-z))
    return s * (1 - s)
  raise ValueError(f"unsupported activation {name}")


class Backprop:
  """grads(weights, biases, activations, loss, x, t) with one optional bug switched on."""

  def __init__(self, bug: str = ""):
    self.bug = bug
    self.accumulated = None

  def df(self, name, z, a):
    bug = self.bug
    if bug == "fprime_at_a":
      return _df_from_z(name, a)
    if bug == "sigmoid_a_form_on_z" and name == "sigmoid":
      return z * (1 - z)
    if bug == "tanh_missing_square" and name == "tanh":
      return 1 - a
    if bug == "relu_ge" and name == "relu":
      return (z >= 0).astype(z.dtype)
    return _df_from_z(name, z)

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
    B, K = y.shape
    if loss == "squared_error":
      g = 2 * (y - t)
      value = np.sum((y - t) ** 2) / B
      if bug == "half_missing":
        g = y - t
    elif loss == "half_squared_error":
      g = y - t
      value = 0.5 * np.sum((y - t) ** 2) / B
      if bug == "half_doubled":
        g = 2 * (y - t)
    elif loss == "cross_entropy":
      g = -t / y
      value = -np.sum(t * np.log(y)) / B
    else:
      raise ValueError(f"unsupported loss {loss}")
    if bug == "sign_flip":
      g = -g
    if bug == "sum_over_outputs":
      g = np.repeat(g.sum(axis=1, keepdims=True), K, axis=1)
    if bug == "mean_over_outputs":
      g = g / K
    if bug != "sum_not_mean":
      g = g / B
    if activations[-1] == "softmax":
      if bug == "softmax_diagonal":
        delta = g * y * (1 - y)
      else:
        delta = y * (g - np.sum(g * y, axis=1, keepdims=True))
    elif bug == "output_fprime_missing":
      delta = g
    else:
      out_act = activations[0] if bug == "first_activation_everywhere" else activations[-1]
      delta = g * self.df(out_act, zs[-1], y)
    dW, db = [None] * L, [None] * L
    for l in range(L - 1, -1, -1):
      if bug == "transposed":
        dW[l] = acts[l].T @ delta
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
        act = activations[0] if bug == "first_activation_everywhere" else activations[l - 1]
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
SOFTMAX = dict(DOMAIN, activations=("identity", "tanh", "softmax"), losses=("cross_entropy",))

MUTANTS = {
    # name: (domain, expected diagnosis code, must it be the first finding?)
    "half_missing": (DOMAIN, "constant_factor", True),
    "half_doubled": (HALF, "constant_factor", True),
    "sum_not_mean": (DOMAIN, "constant_factor", True),
    "mean_over_outputs": (DOMAIN, "constant_factor", True),
    "sign_flip": (DOMAIN, "sign_flip", True),
    "transposed": (DOMAIN, "transposed", True),
    "output_fprime_missing": (DOMAIN, "output_fprime_missing", True),
    "fprime_at_a": (DOMAIN, "fprime_at_a", True),
    "sigmoid_a_form_on_z": (DOMAIN, "activation_derivative", True),
    "tanh_missing_square": (DOMAIN, "activation_derivative", True),
    "hidden_fprime_missing": (DOMAIN, "wrong_from_layer", False),
    "bias_missing": (DOMAIN, "bias_missing", True),
    "bias_first_example": (DOMAIN, "bias_wrong", True),
    "bias_mean": (DOMAIN, "bias_wrong", True),
    "first_example_only": (DOMAIN, "only_batch_1", False),
    "last_weights_in_recursion": (DOMAIN, "only_depth_2", False),
    "first_activation_everywhere": (DOMAIN, "only_uniform_activations", False),
    "sum_over_outputs": (DOMAIN, "only_one_output", False),
    "loop_bounds": (DOMAIN, "only_square", False),
    "softmax_diagonal": (SOFTMAX, "softmax_jacobian_diagonal", True),
    "accumulates": (DOMAIN, "nondeterministic", True),
    "mutates_input": (DOMAIN, "mutation", True),
    "loss_over_outputs": (DOMAIN, "loss_inconsistent", True),
}

FACTORS = {"half_missing": "1/2", "half_doubled": "2", "sum_not_mean": "B",
           "mean_over_outputs": "1/K"}


def run_mutant(name, **options):
  domain, _, _ = MUTANTS[name]
  return bpref.oracle.check(Backprop(name), **dict(domain, **options))


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


@pytest.mark.parametrize("domain", [DOMAIN, HALF, SOFTMAX], ids=["squared", "half", "softmax"])
def test_unmutated_implementation_passes_every_mutant_domain(domain):
  report = bpref.oracle.check(Backprop(), **domain)
  assert report.verdict == "pass", report.text()


def test_relu_kink_convention_is_a_note_unless_strict():
  domain = dict(DOMAIN, activations=("identity", "relu"))
  report = bpref.oracle.check(Backprop("relu_ge"), **domain)
  assert report.verdict == "pass", report.text()
  assert any("relu'(0) = 1" in note for note in report.notes), report.notes
  strict = bpref.oracle.check(Backprop("relu_ge"), strict_kinks=True, **domain)
  assert strict.verdict == "fail" and strict.kind == "convention", strict.text()


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
