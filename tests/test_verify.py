"""`bpref verify`: the witness table, its verdicts, --plot and --device."""

import json

import jax
import numpy as np
import pytest

from bpref import witnesses
from bpref.problems import problem_tolerance
from bpref.structures import Layer
from bpref.tools import verify


def _run(capsys, *argv):
  rc = verify.main(list(argv))
  return rc, capsys.readouterr()


def test_verify_reports_every_witness_worst_error(capsys, monkeypatch):
  seen = []
  real = verify.witness_cases
  monkeypatch.setattr(verify, "witness_cases",
                      lambda contexts, progress=None: seen.extend(contexts) or real(contexts, progress))
  rc, out = _run(capsys, "--cases", "1", "--witness-cases", "2", "--dtype", "float64", "--json",
                 "--seed", "3")
  summary = json.loads(out.out)
  assert rc == 0 and summary["passed"]
  rows = {r["witness"]: r for r in summary["witnesses"]["table"]}
  assert set(rows) == set(verify.WITNESSES)
  for name in ("bpref_vs_referee", "jax_grad_vs_referee", "richardson", "central", "adjoint"):
    assert rows[name]["cases"] == 2 and rows[name]["worst"] is not None
  assert rows["bpref_vs_referee"]["worst"] < 1e-12
  # the jax.grad witness, whose program switches over these cases' names alone, within (T)
  assert len(seen) == 2 and all(ctx.narrow for ctx in seen)
  assert rows["jax_grad_vs_referee"]["worst"] <= min(ctx.tolerance for ctx in seen)
  assert rows["bpref_vs_referee"]["verdict"] == "ok"


def test_witness_table_fails_a_wrong_gradient(monkeypatch):
  """A bpref whose gradient is off by 1e-6 in one layer is caught by the referee row."""
  real = witnesses.bpref_grads

  def wrong(problems):
    return [(Layer(grads[0].W * (1 + 1e-6), grads[0].b, grads[0].activation),) + tuple(grads[1:])
            for grads in real(problems)]

  monkeypatch.setattr(witnesses, "bpref_grads", wrong)
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


def _drawn(monkeypatch, runner, cases, seed):
  """The problems ``runner`` draws per dtype, with the checks themselves stubbed out."""
  drawn = {"float32": [], "float64": []}

  def record(problem):
    drawn[str(problem.x.dtype)].append(problem)
    return dict.fromkeys(verify.CHECKS, 0.0)

  def record_witnesses(contexts, progress=None):
    return [{"tolerance": 1.0, "judged": {}, "ok": {}, **dict.fromkeys(verify.WITNESSES, None)}
            for ctx in contexts if record(ctx.problem) is not None]

  def record_many(problems, *args):
    return [(record(problem), 1.0) for problem in problems]

  monkeypatch.setattr(verify, "check_many", record_many)
  monkeypatch.setattr(verify, "witness_cases", record_witnesses)
  runner(cases, seed)
  return drawn


def _coverage(problems):
  acts = {p.activation for problem in problems for p in problem.params}
  losses = {problem.loss for problem in problems}
  soft = {problem.loss for problem in problems if problem.loss in verify._problems.SOFT_TARGETS
          and np.any(np.abs(np.sum(problem.t, axis=-1, dtype=np.float64) - 1) > 1e-3)}
  return acts, losses, soft


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quick_run_uses_every_activation_and_loss_in_each_dtype(monkeypatch, seed):
  """verify --quick (20 cases per dtype) is stratified: nothing is left to the luck of the seed."""
  drawn = _drawn(monkeypatch, verify.run, 20, seed)
  for dtype, problems in drawn.items():
    assert len(problems) == 20
    acts, losses, soft = _coverage(problems)
    assert set(verify._problems.HIDDEN) <= acts, (dtype, set(verify._problems.HIDDEN) - acts)
    assert losses == set(verify._losses.LOSSES), dtype
    assert soft == set(verify._problems.SOFT_TARGETS), dtype  # targets that do not sum to 1
    for problem in problems:
      out = problem.params[-1]
      assert out.W.shape[0] >= 2 or (out.activation != "softmax"
                                     and problem.loss != "softmax_cross_entropy")
  again = _drawn(monkeypatch, verify.run, 20, seed)
  for dtype in drawn:
    assert [p.describe() for p in again[dtype]] == [p.describe() for p in drawn[dtype]]
    for p, q in zip(again[dtype], drawn[dtype]):
      np.testing.assert_array_equal(p.x, q.x)


def test_witness_run_spreads_its_few_cases_over_different_activations_and_losses(monkeypatch):
  drawn = _drawn(monkeypatch, verify.run_witnesses, 5, 0)
  problems = drawn["float32"] + drawn["float64"]
  assert len(problems) == 10
  acts, losses, _ = _coverage(problems)
  assert len(acts & set(verify._problems.HIDDEN)) >= 10
  assert losses == set(verify._losses.LOSSES)
  assert all(len(p.params) <= 3 for p in problems)


# ---------------------------------------------------------------- the buckets

def _problems(seed, dtype, count):
  rng = np.random.default_rng(seed)
  return [verify._problems.random_problem(rng, np.dtype(dtype)) for _ in range(count)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bucketed_outputs_match_the_exact_shape_functions(dtype):
  # bpref.scale.fast's buckets against bpref's own public functions at each case's exact shapes:
  # the same arithmetic on the real entries, up to the order of the padded sums, so within (T).
  # Each is within (T) of the truth, measured against the magnitude bounds: so within 2 (T).
  problems = _problems(11, dtype, 12)
  bounds = verify._truth.output_bounds([verify._as_float64(p) for p in problems], forms=False)
  for problem, ours, mag in zip(problems, verify._bpref_many(problems), bounds):
    exact = verify._bpref_outputs(*problem)
    tol = 2 * problem_tolerance(problem.params, problem.x)
    for check in verify.CHECKS:
      assert verify._worst(ours[check], exact[check], mag[check]) <= tol, (check, problem.describe())


def test_padded_witness_matches_the_exact_shape_witness():
  # The autodiff witness on padded, masked networks against the same witness per shape (float64):
  # every padded entry must contribute exactly 0 to the loss and to every derivative.
  problems = _problems(12, "float64", 16)
  bounds = verify._truth.output_bounds(problems, forms=False)
  for problem, padded, mag in zip(problems, verify._autodiff.evaluate_many(problems), bounds):
    exact = verify._witness_outputs(*problem)
    tol = 2 * problem_tolerance(problem.params, problem.x)
    for check in verify.CHECKS:
      assert verify._worst(padded[check], exact[check], mag[check]) <= tol, (check, problem.describe())


def test_every_witness_program_is_right_on_a_deep_identity_softmax_net():
  # Found by the property suite: with XLA's CPU backend at optimization level 0 the autodiff
  # witness returned inf and NaN for dC/db_4 of this plain network (level 0 was once used for
  # the witness programs to compile faster). Each compiled witness, exact-shape and padded,
  # must equal bpref within (T), and so must bpref's buckets (compiled the witnesses' way).
  params = (Layer(np.array([[0.12573022]]), np.array([-0.01321049]), "identity"),
            Layer(np.array([[0.64042265]]), np.array([0.01049001]), "identity"),
            Layer(np.array([[-0.53566937]]), np.array([0.03615951]), "identity"),
            Layer(np.array([[1.30400005], [0.94708096]]), np.array([-0.07037352, -0.12654215]),
                  "softmax"))
  problem = verify._problems.Problem(params, np.array([[-0.62327446]]),
                                     np.array([[0.9142256, 0.0857744]]), "cross_entropy", "mean")
  ours = verify._bpref_outputs(*problem)
  witness = verify._witness_outputs(*problem)
  for name, a, b in (("exact-shape", ours, witness),
                     ("padded", ours, verify._autodiff.evaluate_many([problem])[0]),
                     ("buckets", verify._bpref_many([problem])[0], witness)):
    errors, tol = verify.compare(problem, a, b)
    assert all(err <= tol for err in errors.values()), (name, errors, tol)


@pytest.mark.parametrize("check", verify.CHECKS)
def test_a_wrong_bucketed_output_fails_its_row(monkeypatch, check):
  # One output of the buckets off by a relative 1e-3 (its first array, first entry): that row,
  # and only that row, fails.
  honest = verify._bpref_many

  def wrong(problems):
    out = honest(problems)
    for o in out:
      leaves, tree = jax.tree_util.tree_flatten(o[check])
      first = np.array(leaves[0], dtype=np.float64)
      flat = first.reshape(-1)
      flat[np.argmax(np.abs(flat))] *= 1 + 1e-3
      leaves[0] = first.astype(np.asarray(leaves[0]).dtype)
      o[check] = jax.tree_util.tree_unflatten(tree, leaves)
    return out

  monkeypatch.setattr(verify, "_bpref_many", wrong)
  summary = verify.run(4, seed=1, dtypes=("float64",), exact=0)
  verdicts = {r["check"]: r["verdict"] for r in summary["table"]}
  assert verdicts.pop(check) == "FAIL" and not summary["passed"]
  assert set(verdicts.values()) == {"ok"}, verdicts


def test_verify_checks_its_first_cases_at_their_exact_shapes_too(monkeypatch):
  seen = []
  honest = verify._bpref_outputs
  monkeypatch.setattr(verify, "_bpref_outputs", lambda *problem: seen.append(problem) or honest(*problem))
  summary = verify.run(5, seed=2, dtypes=("float64",), exact=2)
  assert len(seen) == 2 and summary["exact_cases_per_dtype"] == 2 and summary["passed"]


def test_a_crashing_bpref_fails_verify_with_the_error_named(monkeypatch):
  # A bpref whose exact-shape functions raise (a broken backprop.py) fails every row of the cases
  # it reaches and names the exception; the run goes on to the end.
  def broken(*problem):
    raise ValueError("layer 2: broken on purpose")

  monkeypatch.setattr(verify, "_bpref_outputs", broken)
  summary = verify.run(3, seed=4, dtypes=("float64",), exact=1)
  assert not summary["passed"] and all(r["verdict"] == "FAIL" for r in summary["table"])
  assert len(summary["crashes"]) == 1 and "ValueError: layer 2: broken on purpose" in summary["crashes"][0]
  assert "crashed: float64" in verify.format_table(summary)


def test_a_packing_bug_in_the_buckets_is_caught_by_the_witness(monkeypatch):
  # The witness packs its padded cases with its own code: a bug planted in bpref.scale.fast's
  # packing (layer 1's W stored transposed in its corner) changes bpref's network and not the
  # witness's, so the bucketed comparison alone (no exact-shape cases) fails the gradient.
  rng = np.random.default_rng(0)
  params = (Layer(rng.normal(size=(3, 2)), rng.normal(size=3), "tanh"),
            Layer(rng.normal(size=(2, 3)), rng.normal(size=2), "identity"))
  problem = verify._problems.Problem(params, rng.normal(size=(4, 2)), rng.normal(size=(4, 2)),
                                     "squared_error", "mean")
  honest = verify.check_many([problem], exact=0)[0]
  assert all(err <= honest[1] for err in honest[0].values()), honest
  real = verify._fast.pack_params

  def transposed_first_layer(trees, shape, chunk, dtype):
    W, b = real(trees, shape, chunk, dtype)  # W: (K, D, N, N)
    W[:, 0] = np.swapaxes(W[:, 0], -1, -2)
    return W, b

  monkeypatch.setattr(verify._fast, "pack_params", transposed_first_layer)
  errors, tol = verify.check_many([problem], exact=0)[0]
  assert errors["grad"] > tol and errors["loss"] > tol, (errors, tol)


def test_parts_run_at_once_return_in_order_with_the_callers_device_and_raise_the_first_error():
  import jax

  device = jax.devices("cpu")[0]
  with jax.default_device(device):
    assert verify.concurrently(lambda: 1, lambda: jax.config.jax_default_device) == [1, device]

  def broken():
    raise ValueError("broken part")

  with pytest.raises(ValueError, match="broken part"):
    verify.concurrently(lambda: 1, broken)
