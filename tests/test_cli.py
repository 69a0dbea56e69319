"""The ``bpref`` command dispatcher."""

import subprocess
import sys

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
