"""The generators of bpref.problems and bpref.testing.strategies: no vacuous case, targets of
every kind the losses accept, stratified draws.

A case whose true gradient is identically zero in some layer checks nothing there, so every
generator redraws it; the witness of "identically zero" here is the exact referee
(bpref.witnesses.referee, mpmath), not the generators' own ``vacuous``. (JAX autodiff is no witness
for it: jax.grad of elu at z = -60.5 is 0, from expm1's derivative taken as expm1(z) + 1.)
"""

import numpy as np
import pytest
from hypothesis import find, given, settings

from bpref import losses as _losses
from bpref import problems
from bpref.activations import KINKED
from bpref.structures import Layer
from bpref.testing import strategies as bst
from bpref.witnesses import referee

EXAMPLES = max(5, settings.default.max_examples // 2)


def _zero_layers(params, x, t, loss, reduction="sum"):
  """The layers l whose true dC/dW_l is exactly 0: the exact referee's (mpmath) gradient."""
  grads = referee.exact(params, x, t, loss, reduction).grads
  return [l for l, g in enumerate(grads, 1) if not any(v != 0 for v in np.ravel(g.W))]


def _vacuous(params, x, loss):
  biases = None if params[0].b is None else [p.b for p in params]
  return problems.vacuous([p.activation for p in params], loss, [p.W for p in params], biases, x)


def _layer(W, b, act):
  return Layer(np.asarray(W, np.float64), None if b is None else np.asarray(b, np.float64), act)


# ---------------------------------------------------------------- vacuous

X = np.array([[0.5, -1.0], [1.5, 0.25]])

VACUOUS = {
    "softmax_output_of_one_unit": (
        (_layer([[1.0, 2.0]], [0.1], "softmax"),), "squared_error"),
    "softmax_cross_entropy_of_one_logit": (
        (_layer([[1.0, 2.0]], [0.1], "identity"),), "softmax_cross_entropy"),
    "all_dead_relu_hidden_layer": (
        (_layer([[1.0, 1.0], [0.5, -0.5]], [-10.0, -10.0], "relu"),
         _layer([[1.0, -1.0]], [0.0], "tanh")), "squared_error"),
    "all_dead_relu_output_layer": (
        (_layer([[1.0, 1.0]], [-10.0], "relu"),), "huber"),
    "planted_zero_silences_a_one_unit_leaky_relu_layer": (
        (_layer([[0.0, 0.0]], [0.0], "leaky_relu"), _layer([[2.0]], [0.3], "tanh")),
        "squared_error"),
    "dead_relu_units_where_the_live_ones_are_cut_off": (
        (_layer([[1.0, 1.0], [1.0, -1.0]], [-10.0, 0.0], "relu"),
         _layer([[3.0, 0.0]], [0.0], "sigmoid")), "squared_error"),
}

LIVE = {
    "softmax_output_of_two_units": (
        (_layer([[1.0, 2.0], [0.5, -1.0]], [0.1, 0.0], "softmax"),), "cross_entropy"),
    "relu_with_one_live_unit": (
        (_layer([[1.0, 1.0], [1.0, -1.0]], [-10.0, 0.0], "relu"),
         _layer([[3.0, 1.0]], [0.0], "sigmoid")), "squared_error"),
    "planted_zero_in_a_two_unit_leaky_relu_layer": (
        (_layer([[0.0, 0.0], [1.0, 1.0]], [0.0, 0.2], "leaky_relu"),
         _layer([[2.0, -1.0]], [0.3], "tanh")), "squared_error"),
    "elu_far_below_zero": (
        (_layer([[1.0, 1.0]], [-60.0], "elu"), _layer([[2.0]], [0.3], "identity")), "huber"),
}


def _targets(params, loss):
  return problems.targets(np.random.default_rng(0), loss, (X.shape[0], params[-1].W.shape[0]))


@pytest.mark.parametrize("name", sorted(VACUOUS))
def test_vacuous_names_cases_whose_true_gradient_is_zero_in_some_layer(name):
  params, loss = VACUOUS[name]
  assert _zero_layers(params, X, _targets(params, loss), loss), "the witness found no zero layer"
  assert _vacuous(params, X, loss)


@pytest.mark.parametrize("name", sorted(LIVE))
def test_vacuous_passes_cases_whose_gradient_reaches_every_layer(name):
  params, loss = LIVE[name]
  assert _zero_layers(params, X, _targets(params, loss), loss) == []
  assert not _vacuous(params, X, loss)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_random_problems_reach_every_layer(dtype):
  """Relu-only nets die often; every drawn problem still has a nonzero gradient in every layer."""
  rng = np.random.default_rng(11)
  free = tuple(n for n, loss in _losses.LOSSES.items() if loss.output is None)
  for activations, losses in ((None, None), (("relu",), free), (("relu", "identity"), free)):
    for _ in range(25):
      p = problems.random_problem(rng, dtype, activations=activations, losses=losses)
      assert p.params[-1].W.shape[0] >= problems.min_output_width(p.params[-1].activation, p.loss)
      assert _zero_layers(p.params, p.x, p.t, p.loss) == [], p.describe()


def test_random_problem_is_a_function_of_the_generator_state():
  a = problems.random_problem(np.random.default_rng(5), np.float32, activations=("relu",))
  b = problems.random_problem(np.random.default_rng(5), np.float32, activations=("relu",))
  assert a.describe() == b.describe() and a.loss == b.loss
  for p, q in zip(a.params, b.params):
    np.testing.assert_array_equal(p.W, q.W)
  np.testing.assert_array_equal(a.x, b.x)
  np.testing.assert_array_equal(a.t, b.t)


def test_random_problem_uses_the_named_activation_with_every_loss():
  rng = np.random.default_rng(2)
  for loss in _losses.LOSSES:
    for act in problems.HIDDEN:
      for max_depth in ((1, 3) if _losses.get(loss).output is None else (2, 3)):
        p = problems.random_problem(rng, np.float64, losses=(loss,), uses=act, max_depth=max_depth)
        acts = [layer.activation for layer in p.params]
        assert p.loss == loss and act in acts, (loss, act, acts)
        required = _losses.get(loss).output
        assert required is None or acts[-1] == required


def test_random_problem_refuses_what_it_cannot_draw():
  with pytest.raises(ValueError, match="allowed in every layer"):
    problems.random_problem(np.random.default_rng(0), uses="softmax")
  with pytest.raises(ValueError, match="needs a hidden layer: max_depth >= 2"):
    problems.random_problem(np.random.default_rng(0), uses="tanh", losses=("cross_entropy",),
                            max_depth=1)


# ---------------------------------------------------------------- targets


@pytest.mark.parametrize("loss", problems.SOFT_TARGETS)
def test_targets_by_default_are_probability_rows_drawn_as_before(loss):
  """unnormalized=0 leaves the generator exactly where one N(0, 1) draw of the shape leaves it."""
  rng = np.random.default_rng(3)
  t = problems.targets(rng, loss, (4, 3))
  plain = np.random.default_rng(3)
  plain.normal(size=(4, 3))
  assert rng.random() == plain.random()
  assert np.all(t > 0)
  np.testing.assert_allclose(t.sum(axis=-1), 1.0, rtol=4 * 2 ** -53 * 3)


@pytest.mark.parametrize("loss", problems.SOFT_TARGETS)
def test_unnormalized_targets_are_nonnegative_rows_that_do_not_sum_to_one(loss):
  rng = np.random.default_rng(4)
  t = problems.targets(rng, loss, (64, 3), unnormalized=1.0)
  sums = t.sum(axis=-1)
  assert np.all(t > 0)
  assert np.all(np.abs(sums - 1) > 1e-6)
  assert sums.min() < 0.9 and sums.max() > 1.1


def test_random_problems_draw_both_kinds_of_cross_entropy_target():
  rng = np.random.default_rng(6)
  sums = [problems.random_problem(rng, np.float64, losses=problems.SOFT_TARGETS).t.sum(axis=-1)
          for _ in range(40)]
  off = sum(bool(np.any(np.abs(s - 1) > 1e-6)) for s in sums)
  assert 5 <= off <= 35, off


# ---------------------------------------------------------------- strata


def test_strata_cover_every_name_evenly_and_follow_the_seed():
  names = problems.HIDDEN
  for count in (1, len(names) - 1, len(names), 20, 3 * len(names) + 2):
    drawn = problems.strata(np.random.default_rng(9), names, count)
    assert len(drawn) == count
    counts = [drawn.count(n) for n in names]
    assert max(counts) - min(counts) <= 1 and sum(counts) == count
    if count >= len(names):
      assert min(counts) >= 1
    assert drawn == problems.strata(np.random.default_rng(9), names, count)
  assert problems.strata(np.random.default_rng(1), names, 20) != problems.strata(
      np.random.default_rng(2), names, 20)


# ---------------------------------------------------------------- hypothesis strategies


@settings(max_examples=EXAMPLES)
@given(bst.all_problems())
def test_strategy_problems_reach_every_layer(problem):
  assert _zero_layers(problem.params, problem.x, problem.t, problem.loss) == []


@settings(max_examples=EXAMPLES)
@given(bst.all_problems(hidden=("relu",), losses=("squared_error", "softmax_cross_entropy"),
                        widths=(1, 2)))
def test_strategy_problems_of_narrow_relu_nets_reach_every_layer(problem):
  assert problem.params[-1].W.shape[0] >= problems.min_output_width(
      problem.params[-1].activation, problem.loss)
  assert _zero_layers(problem.params, problem.x, problem.t, problem.loss) == []


@settings(max_examples=EXAMPLES)
@given(bst.all_problems(mode="kink", hidden=KINKED, widths=(1, 2, 3)))
def test_strategy_kink_problems_plant_exact_zeros_and_reach_every_layer(problem):
  """Every kinked layer has 2 units or more and one unit with z = 0 exactly (a zero row, b = 0)."""
  for p in problem.params:
    if p.activation in KINKED:
      assert p.W.shape[0] >= 2
      planted = np.all(p.W == 0, axis=1) & (True if p.b is None else p.b == 0)
      assert np.any(planted), p
  assert _zero_layers(problem.params, problem.x, problem.t, problem.loss) == []


def test_strategy_problems_draw_both_kinds_of_cross_entropy_target():
  soft = bst.all_problems(losses=problems.SOFT_TARGETS)
  settings_ = settings(database=None, max_examples=200)
  find(soft, lambda p: bool(np.any(np.abs(p.t.sum(axis=-1) - 1) > 1e-6)), settings=settings_)
  find(soft, lambda p: bool(np.all(np.abs(p.t.sum(axis=-1) - 1) < 1e-12)), settings=settings_)


def draws_of(strategy, count=40):
  """``count`` derandomized draws of ``strategy``."""
  out = []

  @settings(max_examples=count, database=None, derandomize=True, deadline=None)
  @given(strategy)
  def collect(problem):
    out.append(problem)

  collect()
  return out


def _arch(problem):
  from bpref.oracle.spec import Arch

  sizes = (problem.params[0].W.shape[1],) + tuple(p.W.shape[0] for p in problem.params)
  return Arch(sizes, tuple(p.activation for p in problem.params), problem.loss, problem.x.shape[0], 0)


def test_strategy_problems_default_to_the_oracles_default_domain():
  """What a property test draws by default, the oracle's default check could draw: the domain,
  the reduction, biases, float64, the (n_l, n_{l-1}) layout, targets that sum to 1."""
  from bpref.oracle.spec import make_spec, outside

  spec = make_spec()
  drawn = draws_of(bst.problems(), 60)
  for problem in drawn:
    assert outside(_arch(problem), spec) == "", problem.describe()
    assert problem.reduction == spec.reduction and problem.x.dtype == np.dtype(spec.dtype)
    assert all(p.b is not None for p in problem.params) == spec.bias
    assert type(problem).layout == spec.layout
    assert problem.arrays()[0][0].shape == problem.params[0].W.shape
  assert {p.activation for problem in drawn for p in problem.params} == set(spec.activations)
  entropy = draws_of(bst.problems(losses=problems.SOFT_TARGETS, activations=("tanh", "identity")), 30)
  assert {problem.loss for problem in entropy} == set(problems.SOFT_TARGETS)
  for problem in entropy:
    np.testing.assert_allclose(problem.t.sum(axis=-1), 1.0, rtol=1e-12)
    assert (problem.params[-1].activation == "softmax") == (problem.loss == "cross_entropy")


def test_strategy_problems_narrow_as_asked():
  drawn = draws_of(bst.problems(activations=("tanh", "relu"), losses=("softmax_cross_entropy",),
                              output_activations=("identity",), reduction="sum", bias=False,
                              dtype=np.float32, layout="in_out", targets="unnormalized",
                              max_depth=2, max_width=3, max_batch=2))
  for problem in drawn:
    assert isinstance(problem, problems.ProblemInOut) and problem.layout == "in_out"
    acts = [p.activation for p in problem.params]
    assert set(acts[:-1]) <= {"tanh", "relu"} and acts[-1] == "identity", acts
    assert problem.loss == "softmax_cross_entropy" and problem.reduction == "sum"
    assert all(p.b is None for p in problem.params) and problem.x.dtype == np.float32
    assert len(problem.params) <= 2 and problem.x.shape[0] <= 2
    assert max(max(p.W.shape) for p in problem.params) <= 3
    assert np.all(np.abs(problem.t.sum(axis=-1) - 1) > 1e-3)
    weights, biases, activations, loss, x, t = problem.arrays()
    assert biases is None and activations == acts and loss == problem.loss
    for W, p in zip(weights, problem.params):
      np.testing.assert_array_equal(W, np.asarray(p.W).T)
  assert {len(problem.params) for problem in drawn} == {1, 2}


def test_strategy_problems_widen_to_softmax_after_any_loss_only_when_asked():
  plain = draws_of(bst.problems(activations=("tanh", "softmax")), 30)
  assert all(problem.params[-1].activation == "tanh" for problem in plain)
  anything = draws_of(bst.problems(activations=("tanh",), output_activations="any"), 30)
  assert {problem.params[-1].activation for problem in anything} == {"tanh", "softmax"}
  named = draws_of(bst.problems(activations=("tanh",), losses=("squared_error", "cross_entropy"),
                              output_activations={"squared_error": ("sigmoid",)}), 30)
  assert {(problem.loss, problem.params[-1].activation) for problem in named} == {
      ("squared_error", "sigmoid"), ("cross_entropy", "softmax")}


@pytest.mark.parametrize("options,message", [
    ({"layout": "rows"}, "layout"),
    ({"targets": "sums"}, "targets"),
    ({"reduction": "avg"}, "reduction"),
    ({"activations": ("swish",)}, "unknown activation"),
    ({"losses": ("hinge",)}, "unknown loss"),
    ({"activations": ("softmax",)}, "output_activations"),
    ({"losses": ("cross_entropy",), "output_activations": {"cross_entropy": ("tanh",)}}, "softmax"),
    ({"max_width": 0}, "max_width"),
    ({"max_depth": 2, "depths": (1, 2)}, "max_depth"),
])
def test_strategy_problems_refuse_a_bad_option_when_made(options, message):
  with pytest.raises(ValueError, match=message):
    bst.problems(**options)


def test_the_earlier_import_path_gives_the_same_generator():
  from bpref.testing import problems as earlier

  assert earlier.random_problem is problems.random_problem and earlier.Problem is problems.Problem
  assert set(earlier.__all__) <= set(dir(problems))
