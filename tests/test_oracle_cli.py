"""``bpref check``'s options: each means what it says, or is a usage error that names it.

The op check runs its candidate in a subprocess by default, so that a candidate that exits,
crashes or exits while it is imported fails the check (exit 1) instead of ending it with 0.
"""

from __future__ import annotations

import pathlib
import re

import pytest

from bpref.oracle import cli
from bpref.oracle.ops import check_op

ROOT = pathlib.Path(__file__).resolve().parent.parent

CS231N = '''
import ctypes
import os

import numpy as np


def relu_backward(dout, cache):
  """CS231n's layers.py: cache is the input x of relu_forward."""
  dx, x = None, cache
  dx = dout * (x > 0)
  return dx


def affine_backward(dout, cache):
  x, w, b = cache
  dx = dout.dot(w.T).reshape(x.shape)
  dw = x.reshape(x.shape[0], -1).T.dot(dout)
  db = np.sum(dout, axis=0)
  return dx, dw, db


def affine_backward_db_mean(dout, cache):
  x, w, b = cache
  return dout.dot(w.T), x.T.dot(dout), np.mean(dout, axis=0)


def exits(dout, cache):
  os._exit(0)


def segfaults(dout, cache):
  ctypes.string_at(0)
'''


@pytest.fixture
def layers(tmp_path):
  path = tmp_path / "mylayers.py"
  path.write_text(CS231N)
  return path


def _err(capsys) -> str:
  return capsys.readouterr().err.strip().splitlines()[-1]


# ---------------------------------------------------------------- --op: isolated by default

@pytest.mark.parametrize("function, needs", [
    ("exits", "status 0 before the call returned"),
    ("segfaults", "signal SIGSEGV"),
])
def test_op_candidate_that_ends_its_process_fails(layers, capsys, function, needs):
  code = cli.main(["--op", "activation", "--op-name", "relu", "--signature", "cs231n",
                   f"{layers}:{function}", "--examples", "2"])
  out = capsys.readouterr().out
  assert code == 1, out
  assert out.startswith("FAIL") and needs in out and "first failing case (not shrunk)" in out


def test_op_candidate_that_exits_at_import_fails(tmp_path, capsys):
  (tmp_path / "gone.py").write_text("import os\nos._exit(0)\n\ndef f(z, dout):\n  return dout\n")
  code = cli.main(["--op", "activation", "--op-name", "relu", f"{tmp_path / 'gone.py'}:f"])
  out = capsys.readouterr().out
  assert code == 1 and "ended its process while being loaded" in out


# ---------------------------------------------------------------- CS231n's argument order

def test_cs231n_signature_passes_correct_layers_and_names_a_bug(layers, capsys):
  assert cli.main(["--op", "activation", "--op-name", "relu", "--signature", "cs231n",
                   f"{layers}:relu_backward", "--examples", "5", "--in-process"]) == 0
  assert capsys.readouterr().out.startswith("PASS")
  assert cli.main(["--op", "dense", "--signature", "cs231n", "--layout", "in_out",
                   f"{layers}:affine_backward", "--examples", "5", "--in-process"]) == 0
  assert capsys.readouterr().out.startswith("PASS")
  assert cli.main(["--op", "dense", "--signature", "cs231n", "--layout", "in_out",
                   f"{layers}:affine_backward_db_mean", "--examples", "5", "--in-process"]) == 1
  out = capsys.readouterr().out
  assert out.startswith("FAIL") and "[constant_factor]" in out and "1/B" in out


def test_cs231n_signature_in_python_and_its_limits():
  def relu_backward(dout, cache):
    return dout * (cache > 0)

  def affine_relu_backward(dout, cache):
    (x, w, b), z = cache
    d = dout * (z > 0)
    return d @ w.T, x.T @ d, d.sum(0)

  assert check_op("activation", relu_backward, name="relu", signature="cs231n",
                  examples=5).verdict == "pass"
  assert check_op("layer", affine_relu_backward, name="relu", signature="cs231n",
                  layout="in_out", examples=5).verdict == "pass"
  swapped = check_op("activation", lambda z, dout: dout * (z > 0), name="relu",
                     signature="cs231n", examples=5)
  assert swapped.verdict == "fail"
  with pytest.raises(ValueError, match="layout='in_out'"):
    check_op("dense", relu_backward, signature="cs231n")
  with pytest.raises(ValueError, match="signature='cs231n'"):
    check_op("softmax", relu_backward, signature="cs231n")
  with pytest.raises(ValueError, match="signature must be one of"):
    check_op("activation", relu_backward, name="relu", signature="torch")


def test_readme_op_example_runs_as_written(tmp_path, capsys, monkeypatch):
  """The README's --op command line, on CS231n's own relu_backward, passes."""
  with open(ROOT / "README.md") as fh:
    readme = fh.read()
  line = next(l for l in readme.splitlines() if l.startswith("bpref check --op"))
  argv = line.split("#")[0].split()[2:]
  (tmp_path / "mylayers.py").write_text(CS231N)
  monkeypatch.chdir(tmp_path)
  assert cli.main(argv + ["--examples", "5"]) == 0, capsys.readouterr()
  assert capsys.readouterr().out.startswith("PASS")


# ---------------------------------------------------------------- options that do not apply

@pytest.mark.parametrize("extra, named", [
    (["--max-depth", "3"], "--max-depth"),
    (["--activations", "relu"], "--activations"),
    (["--losses", "squared_error"], "--losses"),
    (["--plot", "x.png"], "--plot"),
    (["--strict-kinks"], "--strict-kinks"),
    (["--output-activations", "cross_entropy=softmax"], "--output-activations"),
])
def test_network_options_under_op_are_usage_errors(layers, capsys, extra, named):
  code = cli.main(["--op", "activation", "--op-name", "relu", f"{layers}:relu_backward", *extra])
  err = _err(capsys)
  assert code == 2 and named in err and "does not apply" in err


@pytest.mark.parametrize("extra, named", [
    (["--takes", "a"], "--takes"),
    (["--strict-conventions"], "--strict-conventions"),
    (["--op-name", "relu"], "--op-name"),
    (["--targets", "labels"], "--targets"),
    (["--signature", "cs231n"], "--signature"),
])
def test_op_options_without_op_are_usage_errors(layers, capsys, extra, named):
  code = cli.main([f"{layers}:relu_backward", *extra])
  err = _err(capsys)
  assert code == 2 and named in err and "add --op KIND" in err


def test_in_process_with_exec_is_a_usage_error(capsys):
  assert cli.main(["--exec", "./nothing", "--in-process"]) == 2
  assert "--in-process does not apply to --exec" in _err(capsys)


# ---------------------------------------------------------------- numeric ranges

@pytest.mark.parametrize("option, value", [
    ("--timeout", "inf"), ("--timeout", "1e300"), ("--timeout", "0"), ("--timeout", "nan"),
    ("--seed", "-1"), ("--max-depth", "1e9"), ("--max-depth", "1000000000"), ("--max-depth", "0"),
    ("--max-width", "0"), ("--max-batch", "100000"), ("--examples", "-5"),
    ("--shrink-budget", "-1"), ("--workers", "0"),
])
def test_numeric_options_out_of_range_are_usage_errors(capsys, option, value):
  assert cli.main(["m:f", option, value]) == 2
  err = _err(capsys)
  assert option in err and re.search(r"takes (an integer|a number)", err) and value in err


def test_workers_are_capped_at_the_cores(capsys):
  assert cli.main(["m:f", "--workers", str(cli._cores() + 1)]) == 2
  assert "--force-workers" in _err(capsys)


@pytest.mark.parametrize("command, argv", [
    ("verify", ["--seed", "-1"]), ("verify", ["--cases", "0"]),
    ("bench", ["--repeats", "0"]), ("bench", ["--arch-cases", "-5"]),
    ("train", ["--lr", "nan"]), ("train", ["--lr", "-1"]), ("train", ["--steps", "0"]),
])
def test_other_commands_check_their_ranges_first(capsys, command, argv):
  from bpref import cli as top

  try:
    code = top.main([command, *argv])
  except SystemExit as exc:  # argparse's own exit
    code = exc.code
  assert code == 2
  err = capsys.readouterr().err
  assert argv[-1] in err and "takes" in err


def test_range_type_text():
  from bpref.validation import ranged

  parse = ranged(1, 64)
  assert parse("5") == 5
  with pytest.raises(Exception, match="from 1 to 64"):
    parse("65")
  seconds = ranged(0.0, 10.0, float, unit="seconds")
  assert seconds("0.5") == 0.5
  for bad in ("0", "inf", "nan", "-1"):
    with pytest.raises(Exception, match="above 0"):
      seconds(bad)



def test_demo_passes_the_textbook_code_and_names_the_planted_bug(capsys):
  assert cli.main(["--demo", "--examples", "5"]) == 0
  out = capsys.readouterr().out
  first, second = out.split("2. the same code with the bug")
  assert "PASS" in first and "FAIL" not in first
  assert second.lstrip().startswith("FAIL") and "[hidden_fprime_missing]" in second
  assert cli.main(["--demo", "m:f"]) == 2
