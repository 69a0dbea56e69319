"""bpref train: optax training with bpref's gradients follows jax.grad's training step by step."""

import json
import pathlib

import jax
import numpy as np
import pytest

pytest.importorskip("optax")

from bpref import backprop, network, tolerance  # noqa: E402
from bpref.tools import train as train_mod  # noqa: E402
from bpref.witnesses import autodiff  # noqa: E402


def test_synthetic_dataset_has_one_hot_targets_and_disjoint_split():
  data = train_mod.synthetic(seed=3)
  assert data.x_train.shape[1] == data.x_test.shape[1] == 16
  assert data.x_train.shape[0] + data.x_test.shape[0] == 1200
  for t in (data.t_train, data.t_test):
    assert t.shape[1] == 4
    assert np.all(t.sum(axis=1) == 1) and set(np.unique(t)) == {0.0, 1.0}
  rows = {r.tobytes() for r in data.x_train}
  assert not any(r.tobytes() in rows for r in data.x_test)
  # Every class occurs, so the task is not trivial.
  assert np.all(data.t_train.sum(axis=0) > 50)


@pytest.fixture(scope="module")
def float32_run():
  return train_mod.train(dataset="synthetic", steps=80, batch=32, learning_rate=1e-2,
                         dtype="float32")


def test_float32_training_curve_matches_jax_grad_step_by_step(float32_run):
  result = float32_run
  assert result.bpref_loss.shape == result.autodiff_loss.shape == (80,)
  assert result.bpref_loss.dtype == np.float64  # widened for the report, computed in float32
  assert result.tolerance == 80 * tolerance.gradient_tolerance("float32")
  gap = np.abs(result.bpref_loss - result.autodiff_loss) / np.abs(result.autodiff_loss)
  assert gap.max() == result.max_rel_diff
  assert result.max_rel_diff <= result.tolerance, result.max_rel_diff
  assert result.matched
  # The run really trains: the late losses are well below the first one.
  assert result.bpref_loss[-10:].mean() < 0.7 * result.bpref_loss[0]
  assert result.bpref_accuracy > 0.6
  assert abs(result.bpref_accuracy - result.autodiff_accuracy) <= 1 / result.config["test_rows"]


def test_cli_float64_curve_matches_jax_grad_step_by_step(capsys):
  code = train_mod.main(["--dataset", "synthetic", "--steps", "80", "--batch", "32", "--lr", "0.01",
                         "--json"])
  out = json.loads(capsys.readouterr().out)
  assert code == 0
  ours, theirs = np.array(out["bpref_loss"]), np.array(out["autodiff_loss"])
  assert ours.shape == theirs.shape == (80,)
  assert out["tolerance"] == 80 * tolerance.gradient_tolerance("float64")
  assert np.max(np.abs(ours - theirs) / np.abs(theirs)) == out["max_rel_diff"] <= out["tolerance"]
  assert out["matched"] is True
  assert ours[-10:].mean() < 0.7 * ours[0]
  assert out["config"]["dataset"] == "synthetic" and out["config"]["dtype"] == "float64"


def test_plot_writes_a_png_of_both_curves(float32_run, tmp_path):
  pytest.importorskip("matplotlib")
  png = train_mod.plot(float32_run, str(tmp_path / "curves.png"))
  data = pathlib.Path(png).read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_a_wrong_gradient_is_visible_in_the_curve():
  """The comparison can fail: halving the last layer's gradient moves the curve past the tolerance."""
  import optax

  data = train_mod.synthetic(seed=0)
  params = network.init(jax.random.key(0), (16, 8, 4), ("tanh", "identity"))
  rows = train_mod._batches(data.x_train.shape[0], 40, 32, 0)

  def halved(params, x, t, loss, reduction):
    value, g = backprop.value_and_grad(params, x, t, loss, reduction)
    last = g[-1]
    return value, g[:-1] + (network.Layer(0.5 * last.W, 0.5 * last.b, last.activation),)

  _, wrong = train_mod.fit(halved, params, data.x_train, data.t_train, rows, optax.sgd(0.1))
  _, right = train_mod.fit(autodiff.value_and_grad, params, data.x_train, data.t_train, rows,
                           optax.sgd(0.1))
  gap = np.max(np.abs(np.asarray(wrong) - np.asarray(right)) / np.abs(np.asarray(right)))
  assert gap > train_mod.curve_tolerance(40, "float64") * 1e3


def test_digits_training_reaches_high_accuracy_and_matches():
  pytest.importorskip("sklearn")
  result = train_mod.train(dataset="digits", steps=150, batch=64, learning_rate=1e-2)
  assert result.config["dataset"] == "digits"
  assert result.config["sizes"] == [64, 32, 10]
  assert result.matched, result.max_rel_diff
  assert result.bpref_accuracy > 0.85


def test_cli_reports_bad_options_plainly(capsys):
  assert train_mod.main(["--dataset", "synthetic", "--steps", "5", "--activation", "swish"]) == 2
  err = capsys.readouterr().err
  assert "unknown activation 'swish'" in err and "relu" in err
  with pytest.raises(SystemExit) as exit_info:
    train_mod.main(["--steps", "0"])
  assert exit_info.value.code == 2
  with pytest.raises(ValueError, match="batch 5000 exceeds"):
    train_mod.train(dataset="synthetic", steps=3, batch=5000)
