"""The ``bpref`` command dispatcher."""

import os
import subprocess
import sys

import pytest

from bpref import cli


def test_help_lists_the_commands(capsys):
  assert cli.main(["--help"]) == 0
  out = capsys.readouterr().out
  assert "verify" in out and "usage: bpref <command>" in out


def test_unknown_command_is_a_usage_error(capsys):
  assert cli.main(["frobnicate"]) == 2
  assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_no_command_is_a_usage_error(capsys):
  assert cli.main([]) == 2


def test_python_dash_m_runs_the_cli():
  out = subprocess.run([sys.executable, "-m", "bpref", "--version"], capture_output=True, text=True,
                       check=True)
  import bpref
  assert out.stdout.strip() == bpref.__version__


def run_into_closed_pipe(args, cwd=None):
  read, write = os.pipe()
  os.close(read)  # every write to the pipe now fails with EPIPE
  try:
    return subprocess.run([sys.executable, "-m", "bpref", *args], stdout=write, stderr=subprocess.PIPE,
                          text=True, timeout=180, cwd=cwd)
  finally:
    os.close(write)


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["check", "--help"]])
def test_a_closed_stdout_pipe_ends_quietly(args):
  """`bpref ... | head -1`: the reader left, so no BrokenPipeError traceback."""
  out = run_into_closed_pipe(args)
  assert "Traceback" not in out.stderr and "BrokenPipeError" not in out.stderr, out.stderr
  if args[0] != "check":  # argparse itself drops help it cannot write, and exits 0
    assert out.returncode == cli.EXIT_BROKEN_PIPE, out.stderr


def test_a_report_into_a_closed_pipe_ends_quietly(tmp_path):
  (tmp_path / "linear.py").write_text(
      "def grads(weights, biases, activations, loss, x, t):\n"
      "  g = 2 * (x @ weights[0].T + biases[0] - t) / x.shape[0]\n"
      "  return [g.T @ x], [g.sum(axis=0)]\n")
  out = run_into_closed_pipe(["check", "linear.py:grads", "--activations", "identity", "--max-depth", "1",
                              "--examples", "1", "--in-process", "--json"], cwd=tmp_path)
  assert out.returncode == cli.EXIT_BROKEN_PIPE, out.stderr
  assert "Traceback" not in out.stderr and "BrokenPipeError" not in out.stderr, out.stderr


def test_check_help_names_the_isolation_options(capsys):
  assert cli.main(["check", "--help"]) == 0
  out = capsys.readouterr().out
  assert "--in-process" in out and "--isolate" in out


_OP_MODULE = '''
def relu_backward(z, dout):
  return dout * (z > 0)

def relu_backward_negated(z, dout):
  return -dout * (z > 0)
'''


def test_check_op_runs_through_bpref_check(tmp_path, capsys):
  # `bpref check --op`: a course-style relu backward passes, its sign flip fails with exit 1,
  # and --op with a second candidate is a usage error.
  path = tmp_path / "layers.py"
  path.write_text(_OP_MODULE)
  assert cli.main(["check", "--op", "activation", "--op-name", "relu", f"{path}:relu_backward",
                   "--in-process"]) == 0
  assert capsys.readouterr().out.startswith("PASS")
  assert cli.main(["check", "--op", "activation", "--op-name", "relu", "--in-process",
                   "--function", f"{path}:relu_backward_negated"]) == 1
  assert "FAIL" in capsys.readouterr().out
  assert cli.main(["check", "--op", "activation", "--op-name", "relu", "--exec", "./mybp",
                   "--function", f"{path}:relu_backward"]) == 2
  assert "drop --exec" in capsys.readouterr().err
