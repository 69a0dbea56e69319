"""The oracle passes correct independent implementations and reports misbehaving ones plainly.

The four implementations below are written here in plain NumPy, independently of
bpref: row-major batches, column vectors one example at a time, the in_out
weight layout, and the sum reduction. None may raise a false alarm, in float64
or float32, across seeds. The rest of the file checks what the oracle does when
the candidate raises, hangs, crashes, returns the wrong shapes, dtypes or NaN,
and the command line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import bpref.oracle
from bpref.oracle import cli
from bpref.testing import assert_backprop_correct

HERE = os.path.dirname(os.path.abspath(__file__))

# ---------------------------------------------------------------- independent implementations


def act(name, z):
  if name == "identity":
    return z
  if name == "relu":
    return np.where(z > 0, z, 0 * z)
  if name == "tanh":
    return np.tanh(z)
  if name == "sigmoid":
    return 0.5 * (1 + np.tanh(0.5 * z))
  if name == "softmax":
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
  raise ValueError(name)


def act_prime(name, z, a):
  if name == "identity":
    return np.ones_like(z)
  if name == "relu":
    return (z > 0).astype(z.dtype)
  if name == "tanh":
    return 1 - a * a
  if name == "sigmoid":
    return a * (1 - a)
  raise ValueError(name)


def loss_grad(loss, y, t):
  """dC_b/dy_b for one example or a batch (last axis: outputs)."""
  if loss == "squared_error":
    return 2 * (y - t)
  if loss == "softmax_cross_entropy":
    return act("softmax", y) * t.sum(axis=-1, keepdims=True) - t
  if loss == "cross_entropy":
    return -t / y
  raise ValueError(loss)


def loss_value(loss, y, t):
  if loss == "squared_error":
    return np.sum((y - t) ** 2)
  if loss == "softmax_cross_entropy":
    z = y - y.max(axis=-1, keepdims=True)
    return -np.sum(t * (z - np.log(np.exp(z).sum(axis=-1, keepdims=True))))
  if loss == "cross_entropy":
    return -np.sum(t * np.log(y))
  raise ValueError(loss)


def row_major(weights, biases, activations, loss, x, t, reduction="mean", return_loss=False,
              prime=act_prime):
  """Batched, rows are examples: Z = A W^T + b."""
  a, zs = [x], []
  for W, b, name in zip(weights, biases, activations):
    zs.append(a[-1] @ W.T + b)
    a.append(act(name, zs[-1]))
  y = a[-1]
  scale = 1 / x.shape[0] if reduction == "mean" else 1
  g = loss_grad(loss, y, t) * np.asarray(scale, x.dtype)
  if activations[-1] == "softmax":
    d = y * (g - (g * y).sum(axis=1, keepdims=True))
  else:
    d = g * prime(activations[-1], zs[-1], y)
  dW, db = [], []
  for l in range(len(weights) - 1, -1, -1):
    dW.insert(0, d.T @ a[l])
    db.insert(0, d.sum(axis=0))
    if l:
      d = (d @ weights[l]) * prime(activations[l - 1], zs[l - 1], a[l])
  if return_loss:
    return dW, db, loss_value(loss, y, t) * scale
  return dW, db


def row_major_sum(weights, biases, activations, loss, x, t):
  return row_major(weights, biases, activations, loss, x, t, reduction="sum")


def row_major_with_loss(weights, biases, activations, loss, x, t):
  return row_major(weights, biases, activations, loss, x, t, return_loss=True)


def column_vectors(weights, biases, activations, loss, x, t):
  """One example at a time, column vectors: z = W a + b, a loop over the batch."""
  dW = [np.zeros_like(W) for W in weights]
  db = [np.zeros_like(b) for b in biases]
  B = x.shape[0]
  for i in range(B):
    a = [x[i][:, None]]
    zs = []
    for W, b, name in zip(weights, biases, activations):
      zs.append(W @ a[-1] + b[:, None])
      a.append(act(name, zs[-1].T).T)
    y = a[-1]
    g = loss_grad(loss, y.T, t[i][None, :]).T / B
    if activations[-1] == "softmax":
      d = y * (g - (y.T @ g))
    else:
      d = g * act_prime(activations[-1], zs[-1], y)
    for l in range(len(weights) - 1, -1, -1):
      dW[l] += d @ a[l].T
      db[l] += d[:, 0]
      if l:
        d = (weights[l].T @ d) * act_prime(activations[l - 1], zs[l - 1], a[l])
  return dW, db


def in_out(weights, biases, activations, loss, x, t):
  """Weights stored (n_in, n_out) as in many frameworks: z = a W + b, dW = a^T delta."""
  a, zs = [x], []
  for W, b, name in zip(weights, biases, activations):
    zs.append(a[-1] @ W + b)
    a.append(act(name, zs[-1]))
  y = a[-1]
  g = loss_grad(loss, y, t) / x.shape[0]
  if activations[-1] == "softmax":
    d = y * (g - (g * y).sum(axis=1, keepdims=True))
  else:
    d = g * act_prime(activations[-1], zs[-1], y)
  dW, db = [None] * len(weights), [None] * len(weights)
  for l in range(len(weights) - 1, -1, -1):
    dW[l] = a[l].T @ d
    db[l] = d.sum(axis=0)
    if l:
      d = (d @ weights[l].T) * act_prime(activations[l - 1], zs[l - 1], a[l])
  return dW, db


DOMAIN = dict(activations=("identity", "relu", "tanh", "sigmoid", "softmax"),
              losses=("squared_error", "softmax_cross_entropy", "cross_entropy"),
              max_depth=3, max_width=3, max_batch=3, examples=12)

CORRECT = [
    (row_major, {}),
    (column_vectors, {}),
    (in_out, {"layout": "in_out"}),
    (row_major_sum, {"reduction": "sum"}),
    (row_major_with_loss, {}),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("impl,extra", CORRECT, ids=[c[0].__name__ for c in CORRECT])
def test_correct_independent_implementations_pass(impl, extra, dtype):
  seeds = (0, 1) if impl is row_major else (2,)
  for seed in seeds:
    report = bpref.oracle.check(impl, dtype=dtype, seed=seed, **dict(DOMAIN, **extra))
    assert report.verdict == "pass", report.text()
    assert report.cases >= 12 and report.calls >= report.cases


def test_wrong_layout_declared_is_diagnosed():
  report = bpref.oracle.check(in_out, **DOMAIN)
  assert report.verdict == "fail"
  assert report.codes[0] == "layout" and "layout='in_out'" in report.diagnosis[0].summary, \
      report.text()


def test_wrong_reduction_declared_is_a_factor_of_B():
  report = bpref.oracle.check(row_major_sum, **DOMAIN)
  assert report.verdict == "fail" and report.codes[0] == "constant_factor", report.text()
  assert "is B x bpref's" in report.diagnosis[0].summary


def test_search_includes_probes_for_the_classic_blind_spots():
  spec = bpref.oracle.make_spec(**DOMAIN)
  archs = bpref.oracle.spec.probes(spec) + bpref.oracle.spec.random_archs(spec, 12, 0)
  assert {a.depth for a in archs} == {1, 2, 3}
  assert {1, 2, 3} <= {a.batch for a in archs}
  assert any(a.batch == a.sizes[0] for a in archs) and any(a.batch != a.sizes[0] for a in archs)
  assert any(a.activations[-1] == "identity" for a in archs)
  assert any(a.activations[-1] not in ("identity", "softmax") for a in archs)
  assert any(len(set(a.sizes)) == 1 for a in archs) and any(len(set(a.sizes)) > 1 for a in archs)
  assert any(len(set(a.activations[:-1])) > 1 for a in archs)
  assert any(a.kink for a in archs)
  assert {a.sizes[-1] == 1 for a in archs} == {True, False}
  assert {a.loss for a in archs} == set(DOMAIN["losses"])
  assert all(bpref.oracle.spec.in_domain(a, spec) for a in archs)
  assert archs == bpref.oracle.spec.probes(spec) + bpref.oracle.spec.random_archs(spec, 12, 0)


def test_planted_kinks_are_exact_zeros():
  spec = bpref.oracle.make_spec(**DOMAIN)
  arch = bpref.oracle.spec.Arch((3, 3, 2), ("relu", "identity"), "squared_error", 3, 5, True)
  case = bpref.oracle.spec.build_case(arch, spec)
  z = case.x @ case.weights[0].T + case.biases[0]
  assert np.all(z[:, 0] == 0) and np.all(z[:, 1:] != 0)


def maximum_prime(name, z, a):
  """relu'(0) = 1/2, as code built on maximum(z, 0) gets from autodiff; the rest as act_prime."""
  if name == "relu":
    return np.where(z > 0, 1.0, np.where(z == 0, 0.5, 0.0)).astype(z.dtype)
  return act_prime(name, z, a)


def half_at_kink(weights, biases, activations, loss, x, t):
  return row_major(weights, biases, activations, loss, x, t, prime=maximum_prime)


def test_maximum_based_relu_is_a_convention_note():
  domain = dict(DOMAIN, activations=("identity", "relu"), losses=("squared_error",))
  report = bpref.oracle.check(half_at_kink, **domain)
  assert report.verdict == "pass", report.text()
  assert any("relu'(0) = 1/2" in n and "relu'(0) = 0" in n for n in report.notes), report.notes


# ---------------------------------------------------------------- misbehaving candidates

SMALL = dict(activations=("identity", "tanh"), losses=("squared_error",), max_depth=2, max_width=3,
             max_batch=2, examples=2, shrink_budget=20)


def raises(weights, biases, activations, loss, x, t):
  raise RuntimeError("out of coffee")


def returns_nan(weights, biases, activations, loss, x, t):
  dW, db = row_major(weights, biases, activations, loss, x, t)
  dW[0] = dW[0] * np.nan
  return dW, db


def returns_float64(weights, biases, activations, loss, x, t):
  dW, db = row_major(weights, biases, activations, loss, x, t)
  return [g.astype(np.float64) for g in dW], [g.astype(np.float64) for g in db]


def column_biases(weights, biases, activations, loss, x, t):
  dW, db = row_major(weights, biases, activations, loss, x, t)
  return dW, [g[:, None] for g in db]


def sleeps(weights, biases, activations, loss, x, t):
  time.sleep(30)
  return row_major(weights, biases, activations, loss, x, t)


def segfaults(weights, biases, activations, loss, x, t):
  os.kill(os.getpid(), signal.SIGSEGV)


def sum_not_mean(weights, biases, activations, loss, x, t):
  return row_major(weights, biases, activations, loss, x, t, reduction="sum")


@pytest.mark.parametrize("candidate,kind,words", [
    (raises, "exception", "out of coffee"),
    (returns_nan, "nonfinite", "NaN"),
    (column_biases, "shape", "reshape(-1)"),
    (lambda *args: None, "structure", "must return (dW, db)"),
    (lambda *args: ("a", "b"), "structure", "dW must be a sequence"),
    (lambda w, *args: ([np.zeros(3)] * len(w), [np.zeros(3)] * len(w)), "shape", "expected"),
])
def test_misbehaving_candidate_is_reported_plainly(candidate, kind, words):
  report = bpref.oracle.check(candidate, **SMALL)
  assert report.verdict == "fail" and report.kind == kind, report.text()
  assert words in report.message, report.message
  assert report.text().startswith("FAIL")


def test_wrong_dtype_is_reported():
  report = bpref.oracle.check(returns_float64, dtype="float32", **SMALL)
  assert report.kind == "dtype" and "float64" in report.message, report.text()


def test_hang_in_process_times_out_and_stops():
  start = time.perf_counter()
  report = bpref.oracle.check(sleeps, timeout=0.5, **SMALL)
  assert time.perf_counter() - start < 20
  assert report.verdict == "fail" and report.kind == "timeout", report.text()
  assert "isolate" in report.message


def test_isolated_hang_and_crash_become_reports():
  report = bpref.oracle.check(sleeps, timeout=1.0, isolate=True, **SMALL)
  assert report.verdict == "fail" and report.kind == "timeout", report.text()
  assert "killed" in report.message
  report = bpref.oracle.check(segfaults, isolate=True, **SMALL)
  assert report.verdict == "fail" and report.kind == "crash", report.text()
  assert "SIGSEGV" in report.message


def test_workers_give_the_serial_result():
  serial = bpref.oracle.check(sum_not_mean, **DOMAIN).to_json()
  parallel = bpref.oracle.check(sum_not_mean, workers=2, **DOMAIN).to_json()
  for key in ("seconds", "calls", "spec"):
    serial.pop(key), parallel.pop(key)
  assert serial == parallel
  assert serial["verdict"] == "fail" and serial["diagnosis"][0]["code"] == "constant_factor"


def test_isolate_needs_a_picklable_candidate():
  with pytest.raises(TypeError, match="picklable"):
    bpref.oracle.check(lambda *args: None, isolate=True, **SMALL)


@pytest.mark.parametrize("options,error", [
    ({"activations": ("tanh", "swish")}, "unknown activation"),
    ({"losses": ("hinge",)}, "unknown loss"),
    ({"dtype": "float16"}, "dtype"),
    ({"layout": "rows"}, "layout"),
    ({"max_depth": 0}, "max_depth"),
    ({"losses": ("cross_entropy",), "output_activations": {"cross_entropy": ("tanh",)}}, "softmax"),
])
def test_bad_spec_is_a_clear_error(options, error):
  with pytest.raises(ValueError, match=error):
    bpref.oracle.check(row_major, **options)
  with pytest.raises(TypeError, match="unknown option"):
    bpref.oracle.check(row_major, max_dept=2)


def test_assert_backprop_correct():
  report = assert_backprop_correct(row_major, **SMALL)
  assert report.passed
  with pytest.raises(AssertionError, match="diagnosis") as info:
    assert_backprop_correct(sum_not_mean, **SMALL)
  assert "reproducer" in str(info.value)


def test_reproducer_script_reruns_the_minimal_case(tmp_path):
  report = bpref.oracle.check(sum_not_mean, **SMALL)
  script = report.reproducer.replace(
      "candidate = ...", f"import sys; sys.path.insert(0, {HERE!r}); "
      "from test_oracle import sum_not_mean as candidate\n#")
  path = tmp_path / "repro.py"
  path.write_text(script)
  out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  errors = [float(line.split()[-1]) for line in out.stdout.splitlines() if "dW error" in line]
  assert errors and max(errors) > 0.1, out.stdout


# ---------------------------------------------------------------- the command line

CLI_SMALL = ["--activations", "identity,tanh", "--max-depth", "2", "--max-width", "3", "--max-batch",
             "2", "--examples", "2", "--no-progress"]


def test_cli_exit_codes_json_and_plot(tmp_path, capsys):
  good = tmp_path / "good.py"
  good.write_text("import sys\nsys.path.insert(0, %r)\nfrom test_oracle import row_major, sum_not_mean\n"
                  % HERE)
  assert cli.main([f"{good}:row_major"] + CLI_SMALL) == 0
  assert "PASS" in capsys.readouterr().out
  png = tmp_path / "layers.png"
  code = cli.main([f"{good}:sum_not_mean", "--json", "--plot", str(png)] + CLI_SMALL)
  assert code == 1
  data = json.loads(capsys.readouterr().out)
  assert data["verdict"] == "fail" and data["diagnosis"][0]["code"] == "constant_factor"
  assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
  assert cli.main([f"{good}:nothing"] + CLI_SMALL) == 2
  assert "no attribute" in capsys.readouterr().err
  assert cli.main(["no_such_module_xyz:f"] + CLI_SMALL) == 2
  assert cli.main([]) == 2
  assert cli.main([f"{good}:row_major", "--activations", "swish"] + CLI_SMALL[2:]) == 2


def test_cli_torch_bridge(tmp_path, capsys):
  models = tmp_path / "models.py"
  models.write_text("import torch\n"
                    "def mlp():\n"
                    "  return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))\n"
                    "def conv():\n"
                    "  return torch.nn.Sequential(torch.nn.Conv1d(1, 1, 2))\n")
  try:
    import torch  # noqa: F401
  except ImportError:  # without PyTorch the bridge is a usage error naming it
    assert cli.main(["--torch", f"{models}:mlp"] + CLI_SMALL) == 2
    assert "torch" in capsys.readouterr().err
    return
  assert cli.main(["--torch", f"{models}:mlp"] + CLI_SMALL) == 0, capsys.readouterr()
  assert "PASS" in capsys.readouterr().out
  assert cli.main(["--torch", f"{models}:conv"] + CLI_SMALL) == 2
  assert "Conv1d is not supported" in capsys.readouterr().err
  assert cli.main([f"{models}:mlp", "--torch", f"{models}:mlp"] + CLI_SMALL) == 2


# ---------------------------------------------------------------- the adapters of docs/oracle.md


class MyNet:
  """A class-based NumPy network in the style the docs' adapter assumes (squared_error, mean)."""

  def __init__(self, activations):
    self.activations = activations
    self.W, self.b = [], []

  def forward(self, x):
    self.a, self.z = [x], []
    for W, b, name in zip(self.W, self.b, self.activations):
      self.z.append(self.a[-1] @ W.T + b)
      self.a.append(act(name, self.z[-1]))
    return self.a[-1]

  def backward(self, t):
    y = self.a[-1]
    d = 2 * (y - t) / len(t) * act_prime(self.activations[-1], self.z[-1], y)
    self.dW, self.db = [None] * len(self.W), [None] * len(self.W)
    for l in reversed(range(len(self.W))):
      self.dW[l], self.db[l] = d.T @ self.a[l], d.sum(axis=0)
      if l:
        d = (d @ self.W[l]) * act_prime(self.activations[l - 1], self.z[l - 1], self.a[l])


def backprop(weights, biases, x, t, activations=("tanh", "tanh", "tanh")):
  """Column vectors, one example: x (n_0, 1), b_l (n_l, 1); squared_error of this example."""
  a, zs = [x], []
  for W, b, name in zip(weights, biases, activations):
    zs.append(W @ a[-1] + b)
    a.append(act(name, zs[-1]))
  d = 2 * (a[-1] - t) * act_prime(activations[len(weights) - 1], zs[-1], a[-1])
  dW, db = [None] * len(weights), [None] * len(weights)
  for l in reversed(range(len(weights))):
    dW[l], db[l] = d @ a[l].T, d
    if l:
      d = (weights[l].T @ d) * act_prime(activations[l - 1], zs[l - 1], a[l])
  return dW, db


def class_adapter(weights, biases, activations, loss, x, t):
  net = MyNet(activations)
  net.W, net.b = [W.copy() for W in weights], [b.copy() for b in biases]
  net.forward(x); net.backward(t)  # noqa: E702
  return net.dW, net.db


def column_adapter(weights, biases, activations, loss, x, t):
  per = [backprop(weights, [b[:, None] for b in biases], xb[:, None], tb[:, None]) for xb, tb in zip(x, t)]
  dW = [sum(p[0][l] for p in per) / len(x) for l in range(len(weights))]
  db = [sum(p[1][l] for p in per).ravel() / len(x) for l in range(len(weights))]
  return dW, db


def test_docs_adapters_pass():
  report = bpref.oracle.check(class_adapter, **dict(SMALL, examples=4))
  assert report.passed, report.text()
  report = bpref.oracle.check(column_adapter, **dict(SMALL, activations=("tanh",), examples=4))
  assert report.passed, report.text()


@settings(max_examples=2, deadline=None, derandomize=True)
@given(st.integers(0, 3))
def test_assert_works_inside_a_users_given_test(seed):
  assert_backprop_correct(row_major, activations=("identity",), max_depth=1, max_width=2,
                          examples=2, seed=seed)


def no_bias(weights, biases, activations, loss, x, t):
  assert biases is None
  dW, _ = row_major(weights, [np.zeros(W.shape[0], W.dtype) for W in weights], activations, loss, x, t)
  return dW, None


def test_networks_without_biases():
  report = bpref.oracle.check(no_bias, bias=False, **SMALL)
  assert report.passed and report.spec["bias"] is False, report.text()
  doubled = bpref.oracle.check(lambda *a: ([2 * g for g in no_bias(*a)[0]], None), bias=False, **SMALL)
  assert doubled.verdict == "fail" and set(doubled.errors) == {"W1"}, doubled.text()
  assert "is 2 x bpref's" in doubled.diagnosis[0].summary


def test_cli_isolated_workers_load_the_candidate_by_name(tmp_path, capsys):
  good = tmp_path / "cands.py"
  good.write_text("import sys\nsys.path.insert(0, %r)\nfrom test_oracle import sum_not_mean\n" % HERE)
  code = cli.main([f"{good}:sum_not_mean", "--workers", "2", "--json"] + CLI_SMALL)
  assert code == 1
  data = json.loads(capsys.readouterr().out)
  assert data["diagnosis"][0]["code"] == "constant_factor" and data["spec"]["workers"] == 2


def test_report_prints_enough_digits_to_show_a_small_difference():
  def off_by_1e_9(weights, biases, activations, loss, x, t):
    dW, db = row_major(weights, biases, activations, loss, x, t)[:2]
    return [dW[0] * (1 + 1e-9)] + list(dW[1:]), db

  report = bpref.oracle.check(off_by_1e_9, activations=("identity", "tanh"),
                              losses=("squared_error",), examples=5, dtype="float64")
  assert report.verdict == "fail"
  line = next(l for l in report.text().splitlines() if l.strip().startswith("dW1: candidate"))
  theirs, ours = line.split("candidate", 1)[1].split("bpref")
  assert theirs.strip() != ours.strip(), line


# ---------------------------------------------------------------- a verdict counts what it checked


def all_zeros(weights, biases, activations, loss, x, t):
  return [np.zeros_like(W) for W in weights], [np.zeros_like(b) for b in biases]


def wrong_from_depth_4(weights, biases, activations, loss, x, t):
  """row_major, but dW_1 doubled in a network of 4 layers or more: right at depth <= 3 only."""
  dW, db = row_major(weights, biases, activations, loss, x, t)
  if len(weights) >= 4:
    dW[0] = 2 * dW[0]
  return dW, db


EMPTY_DOMAIN = dict(activations=("identity",), losses=("cross_entropy",), max_width=1)
"""A softmax output needs 2 units: with max_width 1 this domain holds no network at all."""


def test_a_search_that_checks_no_network_is_no_pass():
  report = bpref.oracle.check(all_zeros, **EMPTY_DOMAIN)
  assert report.verdict == "error" and not report.passed, report.text()
  assert report.kind == "too_few_cases" and report.cases == 0 and report.requested == 40
  assert report.dropped == {"outside the domain": 400}  # 10 draws per example, all spent
  assert "only 0 of the 40 networks" in report.message
  assert "needs at least 2 units, more than max_width 1" in report.message
  assert report.text().startswith("ERROR: no verdict") and "PASS" not in report.text()
  data = json.loads(report.json())
  assert data["verdict"] == "error" and data["passed"] is False
  assert data["checked"] == 0 and data["dropped"] == {"outside the domain": 400}
  nothing = bpref.oracle.check(row_major, probes=False, examples=0)
  assert nothing.verdict == "error" and "nothing to check" in nothing.message, nothing.text()


def test_cases_that_check_nothing_are_dropped_counted_and_made_up():
  report = bpref.oracle.check(row_major, max_depth=64, examples=10)
  assert report.verdict == "pass", report.text()
  assert report.requested > 10 and report.cases == report.requested  # the probes and 10 draws
  assert report.dropped["vacuous"] >= 5, report.dropped  # most deep networks check nothing
  dropped = sum(report.dropped.values())
  head, _, rest = report.text().partition("\n")
  assert f"on all {report.cases} networks checked, {dropped} dropped" in head, head
  assert f"dropped unchecked: {dropped}: {report.dropped['vacuous']} vacuous" in rest, rest
  data = json.loads(report.json())
  assert data["checked"] == report.cases and data["dropped"] == report.dropped


def test_a_search_short_of_cases_when_its_draws_run_out_is_an_error(monkeypatch):
  from bpref.oracle import search

  monkeypatch.setattr(search, "DRAW_BUDGET", 1)  # no draw beyond the 10 examples asked for
  report = bpref.oracle.check(row_major, max_depth=64, examples=10)
  assert report.verdict == "error" and report.kind == "too_few_cases", report.text()
  assert report.cases < report.requested and report.dropped["vacuous"] > 0
  assert f"only {report.cases} of the {report.requested} networks" in report.message
  assert f"{report.dropped['vacuous']} vacuous" in report.message
  assert "draw budget" in report.message and "smaller max_depth" in report.message


def test_a_bug_at_depth_4_is_never_a_pass():
  assert bpref.oracle.check(wrong_from_depth_4, max_depth=3).verdict == "pass"
  with pytest.raises(ValueError, match="max_depth must be <= 64"):
    bpref.oracle.check(wrong_from_depth_4, max_depth=5000, examples=10)
  report = bpref.oracle.check(wrong_from_depth_4, max_depth=64, examples=10)
  assert report.verdict == "fail" and report.errors["W1"] > 0.1, report.text()
  assert len(report.case["arch"]["activations"]) == 4  # shrunk to the shallowest that fails


def test_no_verdict_on_the_command_line_exits_2_with_the_counts(tmp_path, capsys):
  path = tmp_path / "zc.py"
  path.write_text("import sys\nsys.path.insert(0, %r)\nfrom test_oracle import all_zeros\n" % HERE)
  code = cli.main([f"{path}:all_zeros", "--activations", "identity", "--losses", "cross_entropy",
                   "--max-width", "1", "--no-progress", "--in-process"])
  out = capsys.readouterr()
  assert code == 2, out
  assert "PASS" not in out.out and "only 0 of the 40 networks" in out.err, out


@pytest.mark.parametrize("max_batch, max_width", [(7, 6), (4, 5), (12, 3)])
def test_every_batch_size_and_width_up_to_the_maxima_is_searched(max_batch, max_width):
  """The search draws every integer from 1 to each declared maximum, not a fixed set of sizes:
  a client that breaks only at B = 7 (or a width of 6) is reached by a default-sized search."""
  from bpref.oracle import spec as _spec

  spec = _spec.make_spec(max_batch=max_batch, max_width=max_width, examples=40)
  archs = _spec.probes(spec) + _spec.random_archs(spec, spec.examples, 0)
  assert {a.batch for a in archs} == set(range(1, max_batch + 1))
  assert {n for a in archs for n in a.sizes} == set(range(1, max_width + 1))


def test_a_client_wrong_only_at_batch_7_is_found_and_shrunk_to_it():
  def grads(weights, biases, activations, loss, x, t):  # correct, except for B = 7
    dW, db = row_major(weights, biases, activations, loss, x, t)
    return ([2 * w for w in dW] if x.shape[0] == 7 else dW), db

  report = bpref.oracle.check(grads, max_batch=7, examples=40, seed=0)
  assert report.verdict == "fail", report.text()
  assert report.case["arch"]["batch"] == 7 and "B = 7" in report.text()


def crashes_at_batch_3(weights, biases, activations, loss, x, t):
  """Correct, except that it ends its process when B = 3 (a buffer sized for B <= 2, say)."""
  if x.shape[0] == 3:
    os._exit(1)
  return row_major(weights, biases, activations, loss, x, t)


@pytest.mark.deep  # every shrinking attempt that crashes starts a fresh process
def test_a_crash_at_one_batch_size_is_shrunk_to_a_minimal_case_there():
  report = bpref.oracle.check(crashes_at_batch_3, isolate=True, max_batch=4, examples=10,
                              shrink_budget=40)
  assert report.verdict == "fail" and report.kind == "crash", report.text()
  arch = report.case["arch"]
  assert arch["batch"] == 3 and report.shrunk and "minimal failing case" in report.text()
  assert sum(arch["sizes"]) < sum(report.first_case["sizes"]) or len(arch["sizes"]) == 2


@pytest.mark.deep  # a subprocess and a timeout
def test_a_timeout_keeps_its_first_case_and_says_so():
  report = bpref.oracle.check(sleeps, timeout=1.0, isolate=True, **SMALL)
  assert report.verdict == "fail" and report.kind == "timeout" and not report.shrunk
  assert "first failing case (not shrunk)" in report.text()


_CALLS = []


def wrong_from_its_third_call(weights, biases, activations, loss, x, t):
  """Correct on its first two calls in a process, then 2x: a buffer that goes stale."""
  _CALLS.append(1)
  dW, db = row_major(weights, biases, activations, loss, x, t)
  return ([2 * w for w in dW] if len(_CALLS) >= 3 else dW), db


@pytest.mark.deep  # a subprocess, and a fresh one after the search
def test_a_failure_that_depends_on_earlier_calls_is_labelled_with_its_sequence():
  report = bpref.oracle.check(wrong_from_its_third_call, isolate=True, **SMALL)
  assert report.verdict == "fail" and report.codes[0] == "history_dependent", report.text()
  assert len(report.sequence) >= 3 and report.sequence[-1] == report.case["arch"]
  # the sequence reproduces it: replayed in order in a fresh process, the last answer differs
  # from the answer to the same case alone in another fresh process
  from bpref.oracle import isolation, spec as _spec

  spec = _spec.make_spec(**SMALL)
  inputs = [isolation.candidate_inputs(_spec.build_case(_spec.Arch(
      tuple(a["sizes"]), tuple(a["activations"]), a["loss"], a["batch"], a["seed"], a["kink"]), spec),
      "out_in") for a in report.sequence]
  target = isolation.picklable(wrong_from_its_third_call)
  with isolation.Isolated(target) as pool:
    replayed = pool.map(inputs)[-1]
  with isolation.Isolated(target) as pool:
    alone = pool.map(inputs[-1:])[0]
  assert replayed.status == alone.status == "ok"
  np.testing.assert_allclose(replayed.result[0][0], 2 * alone.result[0][0])


def test_a_correct_stateless_failure_is_not_called_history_dependent():
  report = bpref.oracle.check(sum_not_mean, **DOMAIN)
  assert report.verdict == "fail" and "history_dependent" not in report.codes and not report.sequence
