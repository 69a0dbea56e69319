"""The exact referee (mpmath, 50 digits) decides between bpref and jax.grad.

The headline property: on saturated nets bpref's float64 gradient stays within
1e-12 (relative, normwise) of the exact one, while jax.grad, which
differentiates tanh through 1 - tanh^2, returns zeros where the exact gradient
is tiny but nonzero.
"""

import functools

import jax
import numpy as np
import pytest
from hypothesis import example, given, settings

import bpref
from bpref.problems import problem_tolerance
from bpref.structures import Layer
from bpref.testing import problems
from bpref.testing import strategies as bst
from bpref.tools import verify
from bpref.witnesses import autodiff as reference
from bpref.witnesses import referee

EXAMPLES = max(3, settings.default.max_examples // 3)

_bpref_grad = jax.jit(bpref.grad, static_argnums=(3, 4))
_jax_grad = jax.jit(reference.grad, static_argnums=(3, 4))


def test_referee_derivatives_agree_with_mpmath_diff():
  """Each f' the referee uses matches mpmath's numerical derivative of its f to 1e-30."""
  gaps = referee.check_derivatives()
  assert set(gaps) | {"softmax"} == set(referee.SUPPORTED)
  for name, gap in gaps.items():
    assert gap < 1e-30, f"referee f' of {name} is off by {gap:.2e} from mpmath.diff"


def _saturated_net(seed, acts, sizes, loss):
  # every tanh/sigmoid unit gets a bias of +-25, so |z| > 20 and sech^2 z < 1e-17
  rng = np.random.default_rng(seed)
  layers = []
  for l, act in enumerate(acts):
    W = rng.normal(size=(sizes[l + 1], sizes[l])) / np.sqrt(sizes[l])
    b = rng.normal(size=(sizes[l + 1],)) * 0.1
    if act in ("tanh", "sigmoid"):
      b = 25.0 * rng.choice([-1.0, 1.0], size=sizes[l + 1])
    layers.append(Layer(W, b, act))
  x = rng.normal(size=(3, sizes[0]))
  t = rng.normal(size=(3, sizes[-1]))
  return tuple(layers), x, t, loss, "mean"


SATURATED = [
    (0, ("identity", "tanh"), (4, 3, 2), "squared_error"),
    (1, ("selu", "tanh"), (3, 5, 2), "half_squared_error"),
    (2, ("tanh", "tanh"), (3, 5, 3), "squared_error"),
    (3, ("sigmoid", "tanh"), (2, 3, 2), "huber"),
    (4, ("tanh", "sigmoid", "tanh"), (2, 3, 3, 2), "squared_error"),
]


@pytest.mark.parametrize("case", SATURATED, ids=lambda c: "-".join(c[1]) + "-" + c[3])
def test_bpref_exact_on_saturated_nets_where_jax_grad_is_not(case):
  """bpref float64 within 1e-12 of the referee; jax.grad off by more than 1e-3 on the same net."""
  problem = _saturated_net(*case)
  exact = referee.exact(*problem)
  ours = referee.worst_error(_bpref_grad(*problem), exact.grads)
  theirs = referee.worst_error(_jax_grad(*problem), exact.grads)
  print(f"{case[1]} {case[3]}: bpref {ours:.2e}, jax.grad {theirs:.2e}")
  assert ours <= 1e-12, f"bpref is {ours:.2e} from the exact gradient"
  assert theirs > 1e-3, f"jax.grad is only {theirs:.2e} from the exact gradient: not saturated enough"


# The logit losses: a probability loss on a saturated sigmoid or softmax output can have an
# infinite value (y rounds to 1), and the referee then refuses the problem.
_LOGIT_LOSSES = ("squared_error", "half_squared_error", "softmax_cross_entropy",
                 "sigmoid_binary_cross_entropy", "huber")


@settings(max_examples=EXAMPLES)
@given(bst.all_problems(mode="saturated", losses=_LOGIT_LOSSES))
def test_bpref_within_1e12_of_referee_on_saturated_problems(problem):
  exact = referee.exact(*problem)
  err = referee.worst_error(_bpref_grad(*problem), exact.grads)
  assert err <= 1e-12, f"bpref float64 is {err:.2e} from the exact gradient on {problem.describe()}"


@functools.partial(jax.jit, static_argnums=(3, 4))
def _bpref_all(params, x, t, loss, reduction):
  return (bpref.grad(params, x, t, loss, reduction), bpref.deltas(params, x, t, loss, reduction),
          bpref.input_grad(params, x, t, loss, reduction), bpref.lambdas(params, x))


# A sum that cancels: dC/dx = delta_1 W_1 is -3.7e-4 from terms near 0.1, so bpref's float64
# dC/dx is 2.3e-14 of itself from the exact one (against (T) = 1.1e-14), and within (T) of its
# magnitude bound, which is what the rounding model bounds.
_CANCELLING = problems.Problem(
    (Layer(np.array([[0.73687548], [-0.69471096], [-0.5269063]]), None, "sin"),
     Layer(np.array([[-0.08687627, -0.64261286, -0.48725474], [-1.16809316, -1.44153016, 0.29598638],
                     [0.39288036, 0.29286788, 0.88074324], [1.34826273, -0.29423814, 1.29760953],
                     [0.33819723, 0.63841928, 0.3866925]]), None, "relu")),
    np.array([[-0.74584805]]), np.array([[0.05515201, -0.33842555, -1.03102069, -1.34159648, 1.96316328]]),
    "huber", "mean")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@settings(max_examples=EXAMPLES)
@given(data=bst.all_problems(depths=(1, 2)))
@example(data=_CANCELLING)
def test_bpref_within_the_rounding_model_of_the_referee(dtype, data):
  """Gradients, deltas, dC/dx and lambdas on well-conditioned problems, float64 and float32.

  Each output's error against the exact one is measured as ``bpref verify`` measures it, relative
  to its magnitude bound (the same computation on absolute values), and held to (T): relative to
  the result itself, a correct sum that cancels would fail.
  """
  params = tuple(Layer(p.W.astype(dtype), None if p.b is None else p.b.astype(dtype), p.activation)
                 for p in data.params)
  problem = data._replace(params=params, x=data.x.astype(dtype), t=data.t.astype(dtype))
  tol = problem_tolerance(problem.params, problem.x)
  exact = referee.exact(*problem)
  ours = dict(zip(("grad", "deltas", "input_grad", "lambdas"), _bpref_all(*problem)))
  theirs = referee.to_float({"grad": exact.grads, "deltas": exact.deltas,
                             "input_grad": exact.input_grad,
                             "lambdas": referee.lambdas(problem.params, problem.x)})
  errors, _ = verify.compare(problem, ours, theirs)
  for check, err in errors.items():
    assert err <= tol, f"{check}: error {err:.3e} of the magnitude bound > (T) = {tol:.2e}"


def test_referee_error_is_exact_and_flushes_underflow():
  """error() sees a 1-ulp change that float64 rounding of the exact value would hide."""
  import mpmath
  with mpmath.workdps(50):
    exact = np.array([mpmath.mpf(1) / 3, mpmath.mpf("1e-400")], dtype=object)
  rounded = np.array([1 / 3, 0.0])
  assert 0 < referee.error(rounded, exact) < 2 ** -53
  assert referee.error(np.nextafter(rounded, 1), exact) > 2 ** -54


def test_referee_refuses_an_infinite_loss():
  params = (Layer(np.array([[1e4]]), None, "sigmoid"),)
  with pytest.raises(ValueError, match="raise dps"):
    referee.exact(params, np.array([[1.0]]), np.array([[0.5]]), "binary_cross_entropy")


def _confident_net(act, loss, seed=0):
  # one layer whose logits separate by ~40: softmax/sigmoid probabilities within 1e-17 of 0 or 1
  rng = np.random.default_rng(seed)
  W = rng.normal(size=(3, 2)) * 0.1
  b = np.array([40.0, 0.0, -1.0]) if act == "softmax" or "softmax" in loss else np.full(3, 40.0)
  x = rng.normal(size=(2, 2))
  if loss == "softmax_cross_entropy":
    t = np.array([[1.0, 0, 0], [1.0, 0, 0]])  # one-hot on the dominant class
  elif loss == "sigmoid_binary_cross_entropy":
    t = np.ones((2, 3))  # every label 1, every logit ~ +40
  else:
    t = rng.normal(size=(2, 3))
  return (Layer(W, b, act),), x, t, loss, "mean"


@pytest.mark.parametrize("act,loss", [("softmax", "squared_error"), ("softmax", "half_squared_error"),
                                      ("identity", "softmax_cross_entropy"),
                                      ("identity", "sigmoid_binary_cross_entropy")])
def test_saturated_softmax_and_logit_losses_keep_every_digit(act, loss):
  """Where 1 - p rounds to 0, bpref computes the dominant entry from the others: within 1e-12."""
  problem = _confident_net(act, loss)
  exact = referee.exact(*problem)
  assert referee.worst_error(_bpref_grad(*problem), exact.grads) <= 1e-12
  assert referee.worst_error(bpref.deltas(*problem), exact.deltas) <= 1e-12
  if act == "softmax":
    assert referee.worst_error(bpref.lambdas(problem[0], problem[1]),
                               referee.lambdas(problem[0], problem[1])) <= 1e-12
