"""Finite-difference witnesses against the exact referee and against bpref.

The finite differences use loss values only; the referee is exact. Each witness
is checked against its own error model: the complex step to the rounding model
(T) of bpref.tolerance, Richardson to its own per-coordinate error estimate,
central differences to their truncation-plus-rounding bound.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import bpref
from bpref import tolerance
from bpref.problems import problem_tolerance
from bpref.testing import strategies as bst
from bpref.testing.problems import random_problem
from bpref.tools import verify
from bpref.witnesses import finite_diff as fd
from bpref.witnesses import referee

EXAMPLES = max(3, settings.default.max_examples // 3)
few = settings(max_examples=EXAMPLES)

COMPLEX_OK = tuple(a for a in bst.HIDDEN if a in fd.COMPLEX_ACTIVATIONS)
SMOOTH = bst.SMOOTH
SMOOTH_LOSSES = ("squared_error", "half_squared_error", "softmax_cross_entropy",
                 "sigmoid_binary_cross_entropy")


def _flat_exact(problem):
  ex = referee.exact(*problem)
  return np.asarray(fd.flatten(referee.to_float(ex.grads)))


@few
@given(bst.all_problems(hidden=COMPLEX_OK, depths=(1, 2)))
def test_complex_step_gradient_is_exact_to_rounding(problem):
  """Im C(theta + i h e_j) / h matches the referee within the rounding model (T)."""
  grads = fd.gradient(*problem, method="complex")
  tol = problem_tolerance(problem.params, problem.x)
  exact = referee.to_float(referee.exact(*problem).grads)
  errors, _ = verify.compare(problem, {"grad": grads}, {"grad": exact})
  assert errors["grad"] <= tol, f"complex step off by {errors['grad']:.2e} > {tol:.2e} on {problem.describe()}"


@few
@given(bst.all_problems(hidden=SMOOTH, losses=SMOOTH_LOSSES, depths=(1, 2)))
def test_richardson_within_its_error_estimate(problem):
  """|Richardson - exact| <= its own per-coordinate error estimate (plus (T) for the exact's scale)."""
  grads, errors = fd.gradient(*problem, method="richardson")
  exact = _flat_exact(problem)
  est = np.asarray(fd.flatten(errors))
  got = np.asarray(fd.flatten(grads))
  floor = problem_tolerance(problem.params, problem.x) * np.max(np.abs(exact))
  bad = np.abs(got - exact) > 2 * est + floor
  assert not bad.any(), (f"Richardson error beyond its estimate at {np.flatnonzero(bad)}: "
                         f"{np.abs(got - exact)[bad]} vs {est[bad]}")


def test_richardson_charges_the_forward_passs_rounding_of_c():
  """A softplus network on which hypothesis found Richardson's estimate too small when it
  charged C one rounding (2 u): dC/dW_2[0, 2] off by 1.3e-13 against 4.1e-14."""
  from bpref.structures import Layer

  params = (Layer(np.array([[0.6728627, 0.4601386, -0.26254278], [-0.30721271, 0.03046478, 0.42892477],
                            [0.61938828, -0.16376956, -0.91860758]]),
                  np.array([-0.08789557, -0.04232625, 0.02904517]), "softplus"),
            Layer(np.array([[0.18217954, -0.04194918, 1.09432088], [-0.06226708, 0.00229547, 0.10831787]]),
                  np.array([0.00848769, 0.02367961]), "identity"))
  problem = bpref.problems.Problem(params, np.array([[-1.06110874, 0.94875177, -1.54035953]]),
                                   np.array([[0.84821452, 0.08773467]]), "squared_error", "mean")
  test_richardson_within_its_error_estimate.hypothesis.inner_test(problem)


@few
@given(bst.all_problems(hidden=SMOOTH, losses=SMOOTH_LOSSES, depths=(1, 2)))
def test_central_difference_within_its_bound(problem):
  """Central differences at h* = (3u)^(1/3) s: error <= 100 (3u)^(2/3) max(1, |C|) s^2 ||g||."""
  theta, fun = fd.loss_function(*problem)
  got = np.asarray(fd.flatten(fd.gradient(*problem, method="central")))
  exact = _flat_exact(problem)
  u = tolerance.unit_roundoff(np.float64)
  scale = max(1.0, float(np.max(np.abs(theta))))
  bound = 100 * (3 * u) ** (2 / 3) * max(1.0, abs(float(fun(theta)))) * scale ** 2
  err = float(np.max(np.abs(got - exact)))
  assert err <= bound * max(1.0, float(np.max(np.abs(exact)))), f"central differences off by {err:.2e}"


def test_complex_step_refuses_gelu():
  problem = random_problem(np.random.default_rng(0), np.float64, max_depth=1, activations=("gelu",),
                           losses=("squared_error",))
  with pytest.raises(ValueError, match="layer 1: activation 'gelu'.*richardson"):
    fd.complex_loss_function(*problem)
  assert not fd.supports_complex_step(problem.params, problem.loss)


@few
@given(bst.all_problems(hidden=("relu", "leaky_relu", "elu", "selu"), mode="kink", depths=(2,),
                        losses=("squared_error", "half_squared_error")))
def test_complex_step_follows_the_kink_conventions(problem):
  """With z_l = 0 exactly, the complex step's branch on Re z gives bpref's f'(0) conventions."""
  tape = bpref.forward(problem.params, problem.x)
  assert any(np.any(np.asarray(z) == 0) for z in tape.z), "kink mode drew no exact zero"
  grads = fd.gradient(*problem, method="complex")
  ours = bpref.grad(*problem)
  tol = problem_tolerance(problem.params, problem.x)
  # each array measured against its magnitude bound, as verify does: a sum that cancels is exact
  # to rounding of its terms, not of its result
  errors, _ = verify.compare(problem, {"grad": ours}, {"grad": grads})
  assert errors["grad"] <= 2 * tol, f"{errors['grad']:.3e} > {2 * tol:.3e} on {problem.describe()}"


@functools.partial(jax.jit, static_argnums=(3, 4))
def _directional(params, x, t, loss, reduction, v, wrong):
  theta, fun = fd.loss_function(params, x, t, loss, reduction)
  _, fun_c = fd.complex_loss_function(params, x, t, loss, reduction)
  g = fd.flatten(bpref.grad(params, x, t, loss, reduction))
  return (fd.directional(fun, theta, g, v, fun_c=fun_c),
          fd.directional(fun, theta, g, v, noise=fd.network_noise(params, x)),
          fd.directional(fun, theta, g * (1 + wrong), v, fun_c=fun_c))


@few
@given(bst.all_problems(hidden=tuple(a for a in SMOOTH if a in fd.COMPLEX_ACTIVATIONS),
                        losses=SMOOTH_LOSSES, depths=(1, 2, 3)))
def test_directional_adjoint_check(problem):
  """<bpref's gradient, v> equals dC/dv by complex step and by Richardson; a 1e-3 error is caught."""
  theta, _ = fd.loss_function(*problem)
  rng = np.random.default_rng(0)
  v = rng.normal(size=theta.shape)
  wrong = np.zeros(theta.shape)
  g = np.asarray(fd.flatten(bpref.grad(*problem)))
  j = int(np.argmax(np.abs(g)))
  v[j] = 1.0 + abs(v[j])  # make sure the wrong coordinate is seen along v
  wrong[j] = 1e-3
  cs, rich, bad = _directional(*problem, v, wrong)
  tol = problem_tolerance(problem.params, problem.x)
  size = float(np.dot(np.abs(g), np.abs(v)))  # |<|g|, |v|>|: the scale of the inner product
  assert abs(cs.claimed - cs.measured) <= tol * size
  assert abs(rich.claimed - rich.measured) <= 2 * rich.error + tol * size
  if abs(g[j] * v[j]) > 0.1 * size:  # the wrong coordinate carries weight in <g, v>
    assert abs(bad.claimed - bad.measured) > tol * size


@functools.partial(jax.jit, static_argnums=(3, 4))
def _taylor(params, x, t, loss, reduction, v, perturb):
  theta, fun = fd.loss_function(params, x, t, loss, reduction)
  g = fd.flatten(bpref.grad(params, x, t, loss, reduction))
  return fd.taylor_test(fun, theta, g, v), fd.taylor_test(fun, theta, g + perturb, v)


def _taylor_orders(problem, share):
  theta, _ = fd.loss_function(*problem)
  dtype = problem.x.dtype
  v = np.random.default_rng(1).normal(size=theta.shape).astype(dtype)
  g = np.asarray(fd.flatten(bpref.grad(*problem)), np.float64)
  norm_g = float(np.linalg.norm(g))
  perturb = (share * norm_g * v / np.linalg.norm(v)).astype(dtype)  # <perturb, v> = share ||g|| ||v||
  good, bad = _taylor(*problem, v, perturb)
  return good.order, bad.order, norm_g


def test_the_adjoint_check_charges_the_forward_passs_rounding_of_c():
  """A sigmoid-softplus network on which hypothesis found Richardson's directional estimate
  too small when it charged C one rounding: off by 3.4e-15 where 2 error + (T) allowed 2.2e-15."""
  from bpref.structures import Layer

  params = (Layer(np.array([[-0.27144614], [-0.4249074], [-0.51345801], [-0.18669385], [0.41404337]]),
                  np.array([-0.0852817, 0.05437756, 0.01174819, 0.02400757, -0.10083858]), "sigmoid"),
            Layer(np.array([[-0.06312206, -0.13427868, -0.32361357, -0.20838221, -0.42757533]]),
                  np.array([-0.02456682]), "softplus"))
  problem = bpref.problems.Problem(params, np.array([[0.77896569]]), np.array([[0.47854114]]),
                                   "squared_error", "mean")
  test_directional_adjoint_check.hypothesis.inner_test(problem)


@few
@given(bst.all_problems(hidden=SMOOTH, losses=SMOOTH_LOSSES))
def test_taylor_remainder_order(problem):
  """float64: the fitted order is ~2 for bpref's gradient and ~1 for one off by 1% along v."""
  good, bad, norm_g = _taylor_orders(problem, 0.01)
  if np.isfinite(good):  # nan: C is linear along v to rounding (nothing to fit)
    assert 1.8 <= good <= 2.2, f"order {good:.2f} for the true gradient"
  if norm_g > 0:
    assert 0.8 <= bad <= 1.2, f"order {bad:.2f} for a wrong gradient"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_taylor_remainder_order_float32(seed):
  """float32 on fixed two-layer tanh nets: order ~2 for bpref's gradient, ~1 for one off by 10%.

  float32 leaves a narrow window of usable steps: r(h) must stand above u |C| ~ 6e-8 |C|
  while h^2 still beats h^3, so the property runs in float64 and float32 is checked on
  well-scaled nets (a gradient off by less than about sqrt(u) is invisible to the test).
  """
  problem = random_problem(np.random.default_rng(seed), np.float32, max_depth=2,
                           activations=("tanh",), losses=("squared_error",))
  good, bad, _ = _taylor_orders(problem, 0.1)
  assert 1.8 <= good <= 3.0, f"order {good:.2f} for the true gradient"
  assert 0.8 <= bad <= 1.2, f"order {bad:.2f} for a wrong gradient"


def test_witnesses_trace_under_jit_and_vmap():
  """Eager, jit and vmap over directions give the same derivatives."""
  problem = random_problem(np.random.default_rng(3), np.float64, max_depth=2,
                           activations=("tanh",), losses=("squared_error",))
  theta, fun = fd.loss_function(*problem)
  _, fun_c = fd.complex_loss_function(*problem)
  vs = jnp.asarray(np.random.default_rng(4).normal(size=(3,) + theta.shape))
  eager = [fd.complex_derivative(fun_c, theta, v) for v in vs]
  mapped = jax.jit(jax.vmap(lambda v: fd.complex_derivative(fun_c, theta, v)))(vs)
  np.testing.assert_allclose(mapped, eager, rtol=1e-14)
  r_eager = fd.richardson(fun, theta, vs[0])
  r_jit = jax.jit(lambda v: fd.richardson(fun, theta, v))(vs[0])
  # jit may fuse the forward pass differently: C moves by ulps, which the difference quotients
  # amplify by 1/h; the two agree within their own error estimates
  assert abs(r_jit.value - r_eager.value) <= r_jit.error + r_eager.error
  h = 1e-5
  c_scale = 8 * tolerance.unit_roundoff(np.float64) * abs(float(fun(theta))) / h
  assert abs(fd.central(fun, theta, vs[0], h) - jax.jit(lambda v: fd.central(fun, theta, v, h))(vs[0])) \
      <= c_scale


def test_flatten_round_trips():
  problem = random_problem(np.random.default_rng(5), np.float64, max_depth=3)
  theta = fd.flatten(problem.params)
  back = fd.unflatten(theta, problem.params)
  for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(problem.params)):
    np.testing.assert_array_equal(a, b)
