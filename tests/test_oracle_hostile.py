"""Hostile candidates: whatever the candidate does, `bpref check` never reports a pass it did not earn.

The matrix runs the real command line (``python -m bpref check file.py:function``) in a
subprocess on candidates that end the interpreter (os._exit(0), SystemExit(0)), raise
KeyboardInterrupt, segfault, hang, print to stdout, or patch bpref when they are
imported. Each must give a report that is not PASS and a nonzero exit status, and a
correct candidate that prints must still pass, with what it printed in the report.
The rest checks the pieces in this process: BaseException subclasses reported by
name, the capture of C-level writes, the loader that reads only plain data back from
a worker, the reproducer for every bridge, and the ``__main__`` guard.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import types

import numpy as np
import pytest

import bpref.oracle
import bpref.oracle.ops
from bpref.oracle import isolation
from bpref.oracle import report as _report
from bpref.oracle import spec as _spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS="cpu",
           PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))

SMALL = ["--activations", "identity", "--max-depth", "2", "--max-width", "2", "--max-batch", "1",
         "--examples", "1", "--shrink-budget", "2", "--no-progress"]
"""Few networks of few shapes: most of each run is two interpreters importing JAX."""

HOSTILE = '''
import ctypes
import os
import sys
import time

import numpy as np


def good(weights, biases, activations, loss, x, t):
  """Correct for identity and tanh layers, squared_error, mean reduction, out_in layout."""
  a, zs = [x], []
  for W, b, f in zip(weights, biases, activations):
    zs.append(a[-1] @ W.T + b)
    a.append(np.tanh(zs[-1]) if f == "tanh" else zs[-1])
  g = 2 * (a[-1] - t) / x.shape[0]
  dW, db = [None] * len(weights), [None] * len(weights)
  for l in reversed(range(len(weights))):
    d = g * (1 - a[l + 1] ** 2 if activations[l] == "tanh" else 1.0)
    dW[l], db[l] = d.T @ a[l], d.sum(axis=0)
    g = d @ weights[l]
  return dW, db


def wrong(*args):
  dW, db = good(*args)
  return [2 * g for g in dW], [2 * g for g in db]


def exits(*args):
  os._exit(0)


def raises_system_exit(*args):
  raise SystemExit(0)


def raises_keyboard_interrupt(*args):
  raise KeyboardInterrupt


def segfaults(*args):
  ctypes.string_at(0)


def hangs(*args):
  time.sleep(60)


def prints(*args):
  print("hello from the candidate")
  os.write(1, b"a raw write to fd 1\\n")
  sys.stderr.write("a warning from the candidate\\n")
  return good(*args)


def prints_wrong(*args):
  print("hello from the candidate")
  return wrong(*args)
'''

PATCHER = '''
"""Imported by the worker only: makes every verdict in its own process a pass."""
import bpref
import bpref.oracle
from bpref.oracle import judge, report

judge.judge = lambda case, truth, outcome, spec: judge.CaseResult(case.arch, True, "ok", "", {}, 1.0)
report.Report.verdict = property(lambda self: "pass", lambda self, value: None)
report.Report.text = lambda self: "PASS: patched"
bpref.oracle.check = lambda *args, **kwargs: None
bpref.value_and_grad = lambda *args, **kwargs: None

from hostile import wrong  # noqa: E402
'''


@pytest.fixture(scope="module")
def where(tmp_path_factory):
  """A directory with the hostile candidates; the checks run from it."""
  d = tmp_path_factory.mktemp("hostile")
  (d / "hostile.py").write_text(HOSTILE)
  (d / "patcher.py").write_text(PATCHER)
  (d / "exits_on_import.py").write_text("import os\nos._exit(0)\n")
  return d


def run_check(where, ref, *options, timeout=180):
  return subprocess.run([sys.executable, "-m", "bpref", "check", ref, *SMALL, *options], cwd=where,
                        env=ENV, capture_output=True, text=True, timeout=timeout)


def no_traceback(out):
  assert "Traceback" not in out.stderr and "BrokenPipeError" not in out.stderr, out.stderr


def _reproducer_errors(script, tmp_path, marker):
  """Run a reproducer from another directory: the errors it prints on lines with ``marker``."""
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  ran = subprocess.run([sys.executable, str(script)], cwd=elsewhere, env=ENV, capture_output=True,
                       text=True, timeout=120)
  assert ran.returncode == 0, ran.stderr
  return [float(line.split()[-1]) for line in ran.stdout.splitlines() if marker in line], ran.stdout


# ---------------------------------------------------------------- the matrix, through the CLI

@pytest.mark.parametrize("function,options,words", [
    ("exits", (), ["ended its process", "exited with status 0"]),
    ("raises_system_exit", (), ["raised an exception: SystemExit: 0"]),
    ("raises_keyboard_interrupt", (), ["raised an exception: KeyboardInterrupt"]),
    ("segfaults", (), ["ended its process", "SIGSEGV"]),
    ("hangs", ("--timeout", "1"), ["hung", "did not return within 1 s", "killed"]),
])
def test_hostile_candidate_fails_with_a_nonzero_exit(where, function, options, words):
  out = run_check(where, f"hostile.py:{function}", *options)
  assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)
  assert out.stdout.startswith("FAIL: "), out.stdout
  for w in words:
    assert w in out.stdout.splitlines()[0], out.stdout
  no_traceback(out)


def test_import_time_patching_of_bpref_cannot_change_the_verdict(where):
  out = run_check(where, "patcher.py:wrong", "--json")
  assert out.returncode == 1, (out.stdout, out.stderr)
  data = json.loads(out.stdout)
  assert data["verdict"] == "fail" and data["kind"] == "numeric", data["message"]
  assert data["diagnosis"][0]["code"] == "constant_factor"


def test_candidate_exiting_on_import_is_an_error(where):
  out = run_check(where, "exits_on_import.py:anything")
  assert out.returncode == 2, (out.stdout, out.stderr)
  assert "PASS" not in out.stdout, out.stdout
  assert "bpref check: error:" in out.stderr and "exited with status 0" in out.stderr, out.stderr


def test_printing_never_mixes_into_json_and_the_reproducer_runs_anywhere(where, tmp_path):
  repro = tmp_path / "repro.py"
  out = run_check(where, "hostile.py:prints_wrong", "--json", "--reproducer", str(repro))
  assert out.returncode == 1, (out.stdout, out.stderr)
  data = json.loads(out.stdout)  # the candidate's print did not reach stdout
  assert data["verdict"] == "fail"
  assert "hello from the candidate" in data["output"]["stdout"]
  assert data["output"]["calls"] >= 1
  errors, out = _reproducer_errors(repro, tmp_path, "dW error")
  assert errors and max(errors) > 0.1, out


def test_correct_candidate_that_prints_passes_and_its_output_is_shown(where):
  out = run_check(where, "hostile.py:prints")
  assert out.returncode == 0, (out.stdout, out.stderr)
  assert out.stdout.startswith("PASS"), out.stdout
  report_part = out.stdout.split("the candidate's output", 1)
  assert len(report_part) == 2, out.stdout
  for words in ("| hello from the candidate", "| a raw write to fd 1", "| a warning from the candidate"):
    assert words in report_part[1], out.stdout
  assert out.stdout.count("hello from the candidate") <= 10  # clipped to the first lines
  assert "a warning" not in out.stderr


# ---------------------------------------------------------------- --in-process

def test_in_process_exit_is_never_a_pass(where):
  out = run_check(where, "hostile.py:exits", "--in-process")
  assert out.returncode == 1, (out.stdout, out.stderr)
  # the exit raises in the candidate's call (isolation.exits_refused): a FAIL that names it
  assert out.stdout.startswith("FAIL") and "os._exit(0)" in out.stdout, (out.stdout, out.stderr)
  out = run_check(where, "hostile.py:raises_system_exit", "--in-process")
  assert out.returncode == 1 and "SystemExit: 0" in out.stdout.splitlines()[0], out.stdout


def test_in_process_json_stays_parseable(where):
  out = run_check(where, "hostile.py:prints", "--in-process", "--json")
  assert out.returncode == 0, (out.stdout, out.stderr)
  data = json.loads(out.stdout)
  assert data["verdict"] == "pass" and "a raw write to fd 1" in data["output"]["stdout"]


def test_in_process_refuses_workers(where):
  out = run_check(where, "hostile.py:good", "--in-process", "--workers", "2")
  assert out.returncode == 2 and "--workers 2" in out.stderr, out.stderr


# ---------------------------------------------------------------- the Python API

API_SMALL = {"activations": ("identity",), "max_depth": 1, "max_width": 2, "max_batch": 2,
             "examples": 1, "shrink_budget": 2}


class Custom(BaseException):
  """A BaseException subclass that is not an Exception."""


def raises(exc):
  def candidate(*args):
    raise exc
  return candidate


def raises_custom(*args):
  raise Custom("out of patience")


@pytest.mark.parametrize("exc,name", [
    (SystemExit(3), "SystemExit: 3"),
    (KeyboardInterrupt(), "KeyboardInterrupt"),
    (GeneratorExit(), "GeneratorExit"),
    (Custom("out of patience"), "Custom: out of patience"),
])
def test_base_exceptions_are_reported_by_name_in_process(exc, name):
  report = bpref.oracle.check(raises(exc), **API_SMALL)
  assert report.verdict == "fail" and report.kind == "exception", report.text()
  assert name in report.message and name in report.text().splitlines()[0], report.text()


def test_base_exceptions_are_reported_by_name_isolated():
  report = bpref.oracle.check(raises_custom, isolate=True, **API_SMALL)
  assert report.verdict == "fail" and report.kind == "exception", report.text()
  assert "Custom: out of patience" in report.text().splitlines()[0], report.text()


def _thread_bound(candidate):
  """``candidate`` made to refuse every thread but that of its first call, as a library that
  keeps its state per thread does (tinygrad's kernel cache is an sqlite connection, which
  raises "SQLite objects created in a thread can only be used in that same thread")."""
  threads = []

  def call(*args):
    threads.append(threading.current_thread())
    if threads[-1] is not threads[0]:
      raise RuntimeError("state created in another thread")
    return candidate(*args)
  return call, threads


def _identity_net(weights, biases, activations, loss, x, t):
  """Right for identity layers, squared_error, mean reduction, out_in layout."""
  a = [x]
  for W, b in zip(weights, biases):
    a.append(a[-1] @ W.T + b)
  g, dW, db = 2 * (a[-1] - t) / x.shape[0], [None] * len(weights), [None] * len(weights)
  for l in reversed(range(len(weights))):
    dW[l], db[l] = g.T @ a[l], g.sum(axis=0)
    g = g @ weights[l]
  return dW, db


def test_in_process_calls_run_on_one_thread_for_a_library_bound_to_its_thread():
  relu, threads = _thread_bound(lambda z, dout: dout * (z > 0))
  report = bpref.oracle.ops.check_op("activation", relu, "relu", examples=4)
  assert report.verdict == "pass", report.text()
  assert len(threads) >= 4 and {t.name for t in threads} == {isolation.WORKER_NAME}

  net, threads = _thread_bound(_identity_net)
  report = bpref.oracle.check(net, losses=("squared_error",), **API_SMALL)
  assert report.verdict == "pass", report.text()
  assert len(threads) >= 2


def test_a_call_that_hangs_keeps_its_thread_and_the_next_call_gets_another():
  release, seen = threading.Event(), []

  def backward(z, dout):
    seen.append(threading.current_thread())
    if len(seen) == 1:
      release.wait(30)
    return dout

  candidate = types.SimpleNamespace(backward=backward)
  message = ("backward", (np.ones(2), np.ones(2)))
  try:
    assert isolation.call_in_thread(candidate, message, 0.2).status == "timeout"
    outcomes = [isolation.call_in_thread(candidate, message, 5.0) for _ in range(2)]
  finally:
    release.set()
  assert [o.status for o in outcomes] == ["ok", "ok"], outcomes
  assert seen[1] is seen[2] and seen[1] is not seen[0]


def test_capture_catches_c_level_writes():
  libc = isolation._libc()
  with isolation.Captured() as out:
    print("from print")
    os.write(1, b"from os.write\n")
    os.write(2, b"to stderr\n")
    if libc is not None:
      libc.printf(b"from printf\n")
  assert "from print" in out.stdout and "from os.write" in out.stdout, out.stdout
  assert out.stderr == "to stderr\n"
  if libc is not None:
    assert "from printf" in out.stdout


def test_output_is_clipped():
  with isolation.Captured() as out:
    os.write(1, b"x" * (isolation.OUTPUT_LIMIT + 500))
  assert out.stdout.startswith("x" * isolation.OUTPUT_LIMIT) and "500 more bytes" in out.stdout


def test_worker_replies_are_read_as_plain_data_only():
  outcome = isolation.Outcome("ok", result=[[np.ones((2, 3))], [np.float32(1.5)], 2.0, None, 1j])
  back = isolation._loads(isolation._dumps(("outcome", outcome)))
  assert back[1].status == "ok" and np.array_equal(back[1].result[0][0], np.ones((2, 3)))
  with pytest.raises(pickle.UnpicklingError, match="not plain data"):
    isolation._loads(pickle.dumps(("outcome", os.system)))
  odd = isolation.plain([np.array({"a": object()})])
  isolation._loads(isolation._dumps(odd))  # objects became their repr


def test_reproducer_names_the_candidate_for_every_bridge(tmp_path):
  spec = _spec.make_spec(activations=("identity",), max_depth=1)
  case = _spec.build_case(_spec.Arch((2, 1), ("identity",), "squared_error", 1, 0, False), spec)
  path = str(tmp_path / "models.py")
  for kind in ("torch", "flax", "equinox"):
    script = _report.reproducer(case, spec, (kind, f"{path}:mlp"))
    assert f"load_candidate({kind!r}, {path + ':mlp'!r}, 'mean')" in script
    assert "candidate = ..." not in script
  script = _report.reproducer(case, spec, ("function", "mymodule:grads"))
  assert f"sys.path.insert(0, {os.getcwd()!r})" in script
  assert "candidate = ...  # your gradient function" in _report.reproducer(case, spec, None)


def test_torch_reproducer_runs_from_another_directory(tmp_path):
  pytest.importorskip("torch")
  models = tmp_path / "models.py"
  models.write_text(textwrap.dedent("""
      import torch

      def doubled_tanh():  # a buggy module: tanh's type, twice tanh's value
        act = torch.nn.Tanh()
        act.forward = lambda z: 2 * torch.tanh(z)
        return torch.nn.Sequential(torch.nn.Linear(2, 2), act, torch.nn.Linear(2, 1))
      """))
  report = bpref.oracle.check(target=("torch", f"{models}:doubled_tanh"), activations=("tanh", "identity"),
                              max_depth=2, max_width=2, max_batch=2, examples=1, shrink_budget=4)
  assert report.verdict == "fail", report.text()
  script = tmp_path / "repro.py"
  script.write_text(report.reproducer)
  errors, out = _reproducer_errors(script, tmp_path, "error")
  assert errors and max(errors) > 0.01, out


def test_isolate_from_a_script_without_the_main_guard_names_the_fix(where, tmp_path):
  script = tmp_path / "unguarded.py"
  script.write_text(textwrap.dedent(f"""
      import sys
      sys.path.insert(0, {str(where)!r})
      import bpref.oracle
      from hostile import good
      report = bpref.oracle.check(good, isolate=True, activations=("identity",), max_depth=1,
                                  examples=1)
      print("verdict", report.verdict)
      """))
  out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=ENV, capture_output=True,
                       text=True, timeout=180)
  assert out.returncode != 0 and "verdict" not in out.stdout, out.stdout
  assert "MainReimportError" in out.stderr and 'if __name__ == "__main__":' in out.stderr, out.stderr
  assert "bootstrapping phase" not in out.stderr, out.stderr
