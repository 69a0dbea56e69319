"""The rounding model (T) of bpref.tolerance: it passes correct code and flags small errors.

Correct code: bpref's gradients in float32 and float64 are within (T) of the exact
referee, the error measured as (T) defines it and ``bpref verify`` measures it: relative
to the magnitude bound of each array (the same computation on absolute values), since
relative to the gradient itself a correct y - t that cancels fails. Flags: the same
gradients with one coordinate (the array's largest) off by a relative 1e-3 in float32, or
1e-9 in float64, are outside (T), however many entries the array has.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings

import bpref
from bpref import tolerance
from bpref.error import max_norm_error, normwise_error
from bpref.problems import problem_tolerance
from bpref.structures import Layer
from bpref.testing import problems
from bpref.testing import strategies as bst
from bpref.tools import verify
from bpref.witnesses import referee

EXAMPLES = max(3, settings.default.max_examples // 3)

WRONG_BY = {np.float32: 1e-3, np.float64: 1e-9}

_grad = jax.jit(bpref.grad, static_argnums=(3, 4))


def _cast(problem, dtype):
  params = tuple(Layer(p.W.astype(dtype), None if p.b is None else p.b.astype(dtype), p.activation)
                 for p in problem.params)
  return problem._replace(params=params, x=problem.x.astype(dtype), t=problem.t.astype(dtype))


def _with_one_wrong_coordinate(array, rel):
  a = np.array(array, np.float64)
  i = np.unravel_index(np.argmax(np.abs(a)), a.shape)
  a[i] *= 1 + rel
  return a.astype(np.asarray(array).dtype)


_CANCELLING = problems.Problem(
    (Layer(np.array([[0.26370758, 0.26060419]]), np.array([0.06441733]), "identity"),),
    np.array([[-1.20459774, 0.68420724]]), np.array([[-0.06921615]]), "squared_error", "mean")
"""y = -0.0749 against t = -0.0692: y - t is 1% of the terms of y, and so is dC/dW, so a
correct float32 dC/dW is 1.3 (T) from the exact one relative to itself."""


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=EXAMPLES)
@given(data=bst.all_problems())
@example(data=_CANCELLING)
def test_model_passes_correct_gradients_and_flags_one_wrong_coordinate(dtype, data):
  problem = _cast(data, dtype)
  tol = problem_tolerance(problem.params, problem.x)
  assert tol < WRONG_BY[dtype] / 4, f"(T) = {tol:.2e} is too loose to see a {WRONG_BY[dtype]:.0e} error"
  exact = referee.exact(*problem)
  grads = _grad(*problem)
  errors, _ = verify.compare(problem, {"grad": grads}, {"grad": referee.to_float(exact.grads)})
  assert errors["grad"] <= tol, f"correct gradient rejected: error {errors['grad']:.2e} > (T) = {tol:.2e}"
  for l, (g, e) in enumerate(zip(grads, exact.grads), start=1):
    e64 = referee.to_float(e.W)
    if np.max(np.abs(e64)) == 0:
      continue
    wrong = _with_one_wrong_coordinate(g.W, WRONG_BY[dtype])
    if wrong.dtype == np.float32 and np.array_equal(wrong, np.asarray(g.W)):
      continue  # the change is below float32's resolution at this entry
    assert max_norm_error(wrong, e64) > tol, \
        f"dC/dW_{l} with one coordinate off by {WRONG_BY[dtype]:.0e} passed (T) = {tol:.2e}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_wrong_coordinate_in_a_wide_array_is_flagged(dtype):
  """A bias gradient with 10^4 entries: (T) does not grow with the size, so one bad entry shows.

  A criterion scaled by the array's size (check_grads style: Frobenius error <= tol * size)
  lets the same error through.
  """
  rng = np.random.default_rng(0)
  n = 10_000
  params = (Layer((rng.normal(size=(n, 3)) / np.sqrt(3)).astype(dtype), rng.normal(size=(n,)).astype(dtype),
                  "tanh"),)
  x = rng.normal(size=(2, 3)).astype(dtype)
  t = rng.normal(size=(2, n)).astype(dtype)
  grads = _grad(params, x, t, "half_squared_error", "sum")
  # exact bias gradient, computed here in float64 from float64 copies: sum_b (y_b - t_b) tanh'(z_b)
  z = x.astype(np.float64) @ params[0].W.T.astype(np.float64) + params[0].b.astype(np.float64)[None, :]
  exact_b = np.sum((np.tanh(z) - t) / np.cosh(z) ** 2, axis=0)
  # the sums feeding dC/db: z = W x + b over n_0 = 3 terms, sum over the batch of B = 2
  # (no sum over the 10^4 outputs: tanh and the half squared error act entrywise)
  tol = tolerance.tolerance(dtype, depth=1, inner=3, magnitude=tolerance.magnitude([z]))
  assert tol < WRONG_BY[dtype] / 4
  assert max_norm_error(grads[0].b, exact_b) <= tol
  wrong = _with_one_wrong_coordinate(grads[0].b, WRONG_BY[dtype])
  assert max_norm_error(wrong, exact_b) > tol
  size_scaled = normwise_error(wrong, exact_b) <= tolerance.gradient_tolerance(dtype) * n
  assert size_scaled, "a size-scaled criterion would have caught it too; the example shows nothing"


def test_tolerance_keyed_by_dtype_scaled_by_depth_and_magnitude():
  t64 = tolerance.tolerance(np.float64, depth=2, inner=3)
  t32 = tolerance.tolerance(np.float32, depth=2, inner=3)
  assert t32 / t64 == pytest.approx(2.0 ** 29)
  assert tolerance.tolerance(np.float64, depth=4, inner=3) == pytest.approx(t64 * 9 / 5)
  assert tolerance.tolerance(np.float64, depth=2, inner=3, magnitude=10) == pytest.approx(10 * t64)
  assert tolerance.tolerance(np.float64, depth=2, inner=3, magnitude=0.1) == t64  # m >= 1
  assert tolerance.unit_roundoff(jnp.bfloat16) == 2.0 ** -8
  assert tolerance.unit_roundoff(np.float16) == 2.0 ** -11
  with pytest.raises(ValueError, match="depth"):
    tolerance.tolerance(np.float64, depth=0)


def test_a_network_tolerance_reads_its_terms_off_the_network():
  z = [np.full((5, 8), -3.0), np.ones((5, 2))]
  assert tolerance.network_tolerance(np.float32, (3, 8, 2), 5, z, ("tanh", "identity")) == \
      tolerance.tolerance(np.float32, depth=2, inner=8, magnitude=3.0)
  assert tolerance.network_tolerance(np.float64, (3, 2), 9, z[1:], ("gelu",), forward_only=True) == \
      tolerance.forward_tolerance(np.float64, depth=1, inner=9)
  assert tolerance.network_tolerance(np.float64, (1, 1), 1, [np.full((1, 1), 3.0)], ("gelu",)) == \
      tolerance.tolerance(np.float64, depth=1, inner=1, magnitude=9.0)  # gelu: m squared


def test_the_names_that_moved_out_still_import_from_here():
  from bpref import error, problems, tables

  with pytest.warns(DeprecationWarning, match="bpref.tolerance.max_norm_error is now bpref.error"):
    assert tolerance.max_norm_error is error.max_norm_error
  with pytest.warns(DeprecationWarning, match="bpref.tolerance.pointwise is now bpref.tables"):
    assert tolerance.pointwise is tables.pointwise
  with pytest.warns(DeprecationWarning, match="bpref.tolerance.problem_tolerance is now bpref.problems"):
    assert tolerance.problem_tolerance is problems.problem_tolerance
  with pytest.raises(AttributeError, match="declared"):
    tolerance.declared  # noqa: B018  (the ContextVar is gone: the names are arguments now)


@functools.partial(jax.jit)
def _predict(params, x):
  return bpref.predict(params, x)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@settings(max_examples=EXAMPLES)
@given(data=bst.all_problems(depths=(1, 2), widths=(1, 2, 3), hidden=bst.SMOOTH,
                             losses=("squared_error",)))
def test_low_precision_forward_within_the_model(dtype, data):
  """bfloat16 and float16 forward passes are within forward (T) of the exact forward pass."""
  problem = _cast(data, dtype)
  as64 = _cast(problem, np.float64)  # the same (rounded) values, exactly, in float64
  tol = problem_tolerance(as64.params, as64.x, dtype, forward_only=True)
  y = _predict(problem.params, problem.x)
  assert y.dtype == dtype
  exact = referee.forward(as64.params, as64.x).a[-1]
  err = referee.error(np.asarray(y, np.float64), exact)
  assert err <= tol, f"{np.dtype(dtype).name} forward off by {err:.2e} > (T) = {tol:.2e}"
