"""bpref.testing for users' suites: ``reference_grads`` in a few compiled programs, and what a
failed ``assert_backprop_correct`` / ``assert_op_correct`` says and writes."""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from bpref import compilation
from bpref.testing import assert_backprop_correct, assert_op_correct, reference_grads
from bpref.testing import _assert
from bpref.testing import problems
from bpref.testing import strategies as bst

import textbook
from test_problems import draws_of

SMALL = dict(activations=("identity", "tanh"), max_depth=2, max_width=3, max_batch=2, examples=3)


def _textbook(problem):
  """(C, dW, db) of the textbook NumPy backprop (the witness), W_l as (n_l, n_{l-1})."""
  weights = [np.asarray(p.W, np.float64) for p in problem.params]
  biases = None if problem.params[0].b is None else [np.asarray(p.b, np.float64) for p in problem.params]
  dW, db, value = textbook.grads(weights, biases, [p.activation for p in problem.params], problem.loss,
                                 np.asarray(problem.x, np.float64), np.asarray(problem.t, np.float64),
                                 problem.reduction)
  return float(value), dW, db




def test_fifty_drawn_problems_compile_a_handful_of_programs():
  """A property test's 50 examples of many shapes, activations and losses: bpref's gradients
  through one or two compiled programs (bpref.grad per shape would compile dozens)."""
  drawn = draws_of(bst.all_problems(max_width=8, max_batch=8, max_depth=4), 50)
  shapes = {(tuple(p.W.shape for p in problem.params), problem.x.shape) for problem in drawn}
  assert len(shapes) >= 30
  with compilation.count() as seen:
    refs = [reference_grads(problem) for problem in drawn]
  assert seen.compilations <= 2, seen
  for problem, ref in zip(drawn, refs):
    value, dW, _ = _textbook(problem)
    np.testing.assert_allclose(ref.value, value, rtol=1e-10, atol=1e-14)
    for mine, want in zip(ref.dW, dW):
      np.testing.assert_allclose(mine, want, rtol=1e-8, atol=1e-12)


def test_reference_grads_follow_the_problems_layout_and_biases():
  drawn = draws_of(bst.problems(layout="in_out", bias=None, activations=("tanh", "relu", "identity")), 10)
  assert {problem.params[0].b is None for problem in drawn} == {True, False}
  for problem in drawn:
    ref = reference_grads(problem)
    _, dW, db = _textbook(problem)
    for mine, want in zip(ref.dW, dW):
      assert mine.shape == want.T.shape
      np.testing.assert_allclose(mine, want.T, rtol=1e-10, atol=1e-14)
    if problem.params[0].b is None:
      assert ref.db is None
    else:
      for mine, want in zip(ref.db, db):
        np.testing.assert_allclose(mine, want, rtol=1e-10, atol=1e-14)


def test_reference_grads_are_float64_whatever_the_x64_setting():
  """A float32 problem is evaluated on its values cast up, without x64 too: never float32."""
  rng = np.random.default_rng(3)
  problem = problems.random_problem(rng, np.float32, max_depth=2)
  with jax.enable_x64(False):
    ref = reference_grads(problem)
  assert all(g.dtype == np.float64 for g in ref.dW)
  _, dW, _ = _textbook(problem)  # on the float32 values cast up
  for mine, want in zip(ref.dW, dW):
    np.testing.assert_allclose(mine, want, rtol=1e-10, atol=1e-14)


def _sum_not_mean(weights, biases, activations, loss, x, t):
  """A backprop of the summed loss where the mean is declared (one identity/tanh net)."""
  a, zs = [x], []
  for W, b, name in zip(weights, biases, activations):
    zs.append(a[-1] @ W.T + b)
    a.append(np.tanh(zs[-1]) if name == "tanh" else zs[-1])
  d = 2 * (a[-1] - t) * ((1 - a[-1] ** 2) if activations[-1] == "tanh" else 1)
  dW, db = [None] * len(weights), [None] * len(weights)
  for l in reversed(range(len(weights))):
    dW[l], db[l] = d.T @ a[l], d.sum(axis=0)
    if l:
      d = (d @ weights[l]) * ((1 - a[l] ** 2) if activations[l - 1] == "tanh" else 1)
  return dW, db


def test_a_failed_check_names_its_diagnosis_first_and_writes_its_reproducer(tmp_path, monkeypatch):
  monkeypatch.setenv(_assert.ENV_REPRODUCER_DIR, str(tmp_path / "repro"))
  before = dict(_assert.TALLY)
  with pytest.raises(AssertionError) as info:
    assert_backprop_correct(_sum_not_mean, **SMALL)
  message = str(info.value)
  assert message.splitlines()[0] == ("bpref oracle [constant_factor]: the candidate's backprop is "
                                     "wrong")
  assert message.count("diagnosis (most likely first)") == 1
  path = info.value.bpref_reproducer
  assert message.splitlines()[-1] == f"reproducer: {path}"
  assert os.path.dirname(path) == str(tmp_path / "repro")
  assert "test_a_failed_check_names_its_diagnosis_first" in os.path.basename(path)
  assert info.value.bpref_report.codes[0] == "constant_factor"
  assert _assert.TALLY["checks"] == before.get("checks", 0) + 1
  assert _assert.TALLY["failed"] == before.get("failed", 0) + 1
  script = pathlib.Path(path).read_text()
  assert "candidate = ..." not in script and "test_testing:_sum_not_mean" in script


@pytest.mark.deep
def test_the_reproducer_of_a_failed_check_runs_as_written(tmp_path):
  with pytest.raises(AssertionError) as info:
    assert_backprop_correct(_sum_not_mean, reproducer=tmp_path / "repro.py", **SMALL)
  out = subprocess.run([sys.executable, info.value.bpref_reproducer], capture_output=True,
                       text=True, timeout=300, cwd=str(tmp_path))  # from another folder
  assert out.returncode == 0, out.stderr[-2000:]
  errors = [float(line.split()[-1]) for line in out.stdout.splitlines() if "dW error" in line]
  assert errors and max(errors) > 0.1, out.stdout


def test_a_reproducer_goes_where_it_is_told_or_nowhere(tmp_path):
  target = tmp_path / "mine.py"
  with pytest.raises(AssertionError) as info:
    assert_backprop_correct(lambda *a: _sum_not_mean(*a), reproducer=target, **SMALL)
  assert info.value.bpref_reproducer == str(target)
  assert "candidate = ...  #" in target.read_text()  # a lambda cannot be imported: left to fill in
  with pytest.raises(AssertionError) as info:
    assert_backprop_correct(_sum_not_mean, reproducer=False, **SMALL)
  assert info.value.bpref_reproducer is None
  assert "reproducer: not written to a file" in str(info.value)


def test_a_failed_op_check_names_its_diagnosis_first(tmp_path):
  with pytest.raises(AssertionError) as info:
    assert_op_correct("activation", lambda z, dout: dout * (z != 0), name="relu", examples=3,
                      reproducer=tmp_path / "op.py")
  first = str(info.value).splitlines()[0]
  assert first == "bpref op oracle [kink_side]: the candidate's backward is wrong", first
  assert (tmp_path / "op.py").read_text().startswith('"""Reproduce check_op')


EXITING_SUITE = '''
import ctypes
import os

from bpref.testing import assert_backprop_correct, assert_op_correct

WHERE = {where}


def exits(weights, biases, activations, loss, x, t):
  os._exit(0)


def segfaults(weights, biases, activations, loss, x, t):
  ctypes.string_at(0)


def test_the_candidate_exits():
  assert_backprop_correct(exits, examples=1, max_depth=1, **WHERE)


def test_the_op_candidate_exits():
  assert_op_correct("activation", lambda z, dout: os._exit(0), name="relu", examples=1)


{crash_test}
def test_a_later_test_still_runs():
  assert True
'''


CRASH_TEST = '''
def test_a_crash_in_native_code_fails_its_test():
  assert_backprop_correct(segfaults, examples=1, max_depth=1)

'''


@pytest.mark.parametrize("where", [{"isolate": False}, {}], ids=["in_process", "isolated"])
def test_a_candidate_that_exits_fails_its_test_and_the_run_goes_on(tmp_path, where):
  """os._exit(0) in a candidate fails its test and the later tests run: isolated (the default
  for a module-level function) its worker ends and the check reports a crash; in process the
  exit raises in its call. A segfault fails its test where the candidate is isolated."""
  crash = "" if where else CRASH_TEST  # in the test's own process a segfault ends the run
  (tmp_path / "test_exiting.py").write_text(EXITING_SUITE.format(where=where, crash_test=crash))
  env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).resolve().parent.parent))
  env.pop("PYTEST_XDIST_WORKER", None)
  proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                         "test_exiting.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
  if where:
    assert "2 failed, 1 passed" in proc.stdout and "INTERNALERROR" not in proc.stdout, proc.stdout[-2000:]
  else:
    assert "3 failed, 1 passed" in proc.stdout, proc.stdout[-2000:]
    assert "SIGSEGV" in proc.stdout, proc.stdout[-3000:]
  assert "os._exit(0)" in proc.stdout


def test_the_checks_of_a_session_share_one_isolated_worker():
  """Module-level candidates run in the session's subprocess, started once: a later check
  loads its candidate there, and a wrong one fails there as it does in process (its minimal
  case then rerun alone in a fresh process, which the session keeps)."""
  import functools

  import bpref.oracle
  from bpref.oracle import demo

  _assert.close_session()
  domain = dict(examples=2, max_depth=2, activations=("tanh",), losses=("squared_error",))
  assert assert_backprop_correct(demo.grads, **domain).passed and _assert._SESSION
  worker = _assert._SESSION[0]
  assert assert_backprop_correct(functools.partial(demo._backprop, hidden_fprime=True),
                                 **domain).passed
  assert _assert._SESSION == [worker] and worker._started == 1  # one process for both
  with pytest.raises(AssertionError, match="hidden_fprime_missing") as err:
    assert_backprop_correct(demo.grads_with_bug, **domain)
  assert err.value.bpref_report.codes == bpref.oracle.check(demo.grads_with_bug, **domain).codes
  assert _assert._SESSION == [worker] and worker._started == 2  # the fresh process of the rerun


def test_a_worker_started_ahead_imports_installed_packages_only():
  """Of the names it is given, the early worker imports those found in site-packages, never a
  module of the project found on its path (``textbook``, in tests/)."""
  import pickle

  from bpref.oracle import isolation

  probe = "[name in __import__('sys').modules for name in ('hypothesis', 'textbook')]"
  with isolation.Isolated(("preload", ["hypothesis", "textbook"])) as pool:
    pool.start()
    pool.load(pickle.dumps(eval))  # a candidate any process can load: the builtin eval
    [outcome] = pool.map([("__call__", (probe,))])
  assert outcome.status == "ok" and outcome.result == [True, False], outcome


def test_a_worker_started_ahead_of_the_first_check_runs_it_and_names_the_packages_it_imported():
  """``prestart``, the plugin's early start: the worker imports what it is given (a package that
  cannot be imported is passed over), the first check loads its candidate there, and the worker
  then names the installed packages it imported, none of the project's own modules."""
  from bpref.oracle import demo

  _assert.close_session()
  _assert.prestart(["numpy", "a_package_nobody_installed"])
  worker = _assert._SESSION[0]
  try:
    assert worker.installed == []
    domain = dict(examples=2, max_depth=1, activations=("tanh",), losses=("squared_error",))
    assert assert_backprop_correct(demo.grads, **domain).passed
    assert _assert._SESSION == [worker] and worker._started == 1
    assert "numpy" in worker.installed
    assert not {"a_package_nobody_installed", "textbook", "test_testing"} & set(worker.installed)
  finally:
    _assert.close_session()
