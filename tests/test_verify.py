"""`bpref verify`: the witness table, its verdicts, --plot and --device."""

import json

import jax
import numpy as np
import pytest

from bpref import verify
from bpref.network import Layer


def _run(capsys, *argv):
  rc = verify.main(list(argv))
  return rc, capsys.readouterr()


def test_verify_reports_every_witness_worst_error(capsys):
  rc, out = _run(capsys, "--cases", "1", "--witness-cases", "2", "--dtype", "float64", "--json",
                 "--seed", "3")
  summary = json.loads(out.out)
  assert rc == 0 and summary["passed"]
  rows = {r["witness"]: r for r in summary["witnesses"]["table"]}
  assert set(rows) == set(verify.WITNESSES)
  for name in ("bpref_vs_referee", "jax_grad_vs_referee", "richardson", "central", "adjoint"):
    assert rows[name]["cases"] == 2 and rows[name]["worst"] is not None
  assert rows["bpref_vs_referee"]["worst"] < 1e-12
  assert rows["bpref_vs_referee"]["verdict"] == "ok"


def test_witness_table_fails_a_wrong_gradient(monkeypatch):
  """A bpref whose gradient is off by 1e-6 in one layer is caught by the referee row."""
  real = verify._bpref_grad

  def wrong(*problem):
    grads = real(*problem)
    return (Layer(grads[0].W * (1 + 1e-6), grads[0].b, grads[0].activation),) + tuple(grads[1:])

  monkeypatch.setattr(verify, "_bpref_grad", wrong)
  summary = verify.run_witnesses(2, seed=5, dtypes=("float64",))
  rows = {r["witness"]: r for r in summary["table"]}
  assert rows["bpref_vs_referee"]["verdict"] == "FAIL"
  assert not summary["passed"]


def test_verify_plot_writes_a_png(tmp_path, capsys):
  pytest.importorskip("matplotlib")
  path = tmp_path / "errors.png"
  rc, out = _run(capsys, "--cases", "1", "--witness-cases", "1", "--dtype", "float64",
                 "--no-progress", "--plot", str(path))
  assert rc == 0
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "error distributions written to" in out.out
  assert "bpref_vs_referee" in out.out


def test_verify_device_cpu_runs_there(capsys):
  rc, out = _run(capsys, "--cases", "1", "--witness-cases", "0", "--dtype", "float64",
                 "--no-progress", "--device", "cpu")
  assert rc == 0
  assert "on cpu" in out.out


@pytest.mark.parametrize("platform", ["gpu", "tpu"])
def test_verify_device_unavailable_fails_clearly(platform, capsys):
  try:
    jax.devices(platform)
    pytest.skip(f"this machine has a {platform}")
  except RuntimeError:
    pass
  rc, out = _run(capsys, "--cases", "1", "--device", platform)
  assert rc == 2
  assert f"--device {platform} is not available" in out.err
  assert "cpu" in out.err


def test_witness_case_on_a_saturated_tanh_net_shows_jax_grad_error():
  """One case by hand: bpref exact, jax.grad off by ~1, as test_referee shows on more nets."""
  rng = np.random.default_rng(0)
  params = (Layer(rng.normal(size=(3, 4)) / 2, rng.normal(size=(3,)) * 0.1, "identity"),
            Layer(rng.normal(size=(2, 3)) / 2, np.array([25.0, -25.0]), "tanh"))
  problem = verify._problems.Problem(params, rng.normal(size=(3, 4)), rng.normal(size=(3, 2)),
                                     "squared_error", "mean")
  case = verify.witness_case(problem, rng)
  assert case["bpref_vs_referee"] <= 1e-12
  assert case["complex_step"] <= case["tolerance"]
  assert case["jax_grad_vs_referee"] > 1e-3


def test_verify_writes_no_progress_frames_when_stderr_is_not_a_terminal(capsys):
  rc, out = _run(capsys, "--cases", "1", "--witness-cases", "0", "--dtype", "float64")
  assert rc == 0
  assert "\r" not in out.err and "cases" in out.out
