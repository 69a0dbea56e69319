"""The rounding model (T) of bpref.tolerance: it passes correct code and flags small errors.

Correct code: bpref's gradients in float32 and float64 are within (T) of the exact
referee. Flags: the same gradients with one coordinate (the array's largest) off
by a relative 1e-3 in float32, or 1e-9 in float64, are outside (T), however many
entries the array has.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import bpref
from bpref import tolerance
from bpref.structures import Layer
from bpref.testing import strategies as bst
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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=EXAMPLES)
@given(data=bst.all_problems())
def test_model_passes_correct_gradients_and_flags_one_wrong_coordinate(dtype, data):
  problem = _cast(data, dtype)
  tol = tolerance.problem_tolerance(problem.params, problem.x)
  assert tol < WRONG_BY[dtype] / 4, f"(T) = {tol:.2e} is too loose to see a {WRONG_BY[dtype]:.0e} error"
  exact = referee.exact(*problem)
  grads = _grad(*problem)
  for l, (g, e) in enumerate(zip(grads, exact.grads), start=1):
    e64 = referee.to_float(e.W)
    assert tolerance.max_norm_error(g.W, e64) <= tol, f"correct dC/dW_{l} rejected"
    if np.max(np.abs(e64)) == 0:
      continue
    wrong = _with_one_wrong_coordinate(g.W, WRONG_BY[dtype])
    if wrong.dtype == np.float32 and np.array_equal(wrong, np.asarray(g.W)):
      continue  # the change is below float32's resolution at this entry
    assert tolerance.max_norm_error(wrong, e64) > tol, \
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
  assert tolerance.max_norm_error(grads[0].b, exact_b) <= tol
  wrong = _with_one_wrong_coordinate(grads[0].b, WRONG_BY[dtype])
  assert tolerance.max_norm_error(wrong, exact_b) > tol
  size_scaled = tolerance.normwise_error(wrong, exact_b) <= tolerance.gradient_tolerance(dtype) * n
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


def test_max_norm_error_is_relative_to_the_largest_entry():
  expected = np.array([1.0, 1e-6, -2.0])
  assert tolerance.max_norm_error(expected, expected) == 0.0
  assert tolerance.max_norm_error(expected + [0, 0, 2e-3], expected) == pytest.approx(1e-3)
  assert tolerance.max_norm_error(np.array([1.0, np.nan, 0.0]), expected) == np.inf
  assert tolerance.max_norm_error(np.ones(2), expected) == np.inf
  assert tolerance.max_norm_error(np.array([1e-20]), np.zeros(1)) == 1e-20


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
  tol = tolerance.problem_tolerance(as64.params, as64.x, dtype, forward_only=True)
  y = _predict(problem.params, problem.x)
  assert y.dtype == dtype
  exact = referee.forward(as64.params, as64.x).a[-1]
  err = referee.error(np.asarray(y, np.float64), exact)
  assert err <= tol, f"{np.dtype(dtype).name} forward off by {err:.2e} > (T) = {tol:.2e}"


def test_declared_tables_hold_the_declared_names_alone_and_give_the_same_values(monkeypatch):
  """A search that declares a few activations and losses compiles switch tables of those
  alone; their values are those of the full tables, and a name outside them still works."""
  from bpref import activations
  from bpref.oracle import truth

  z = np.linspace(-30.0, 30.0, 301)
  a = np.tanh(z)
  full = {name: (tolerance.pointwise(activations.get(name).df, z),
                 tolerance.pointwise(tolerance.rho_function(name), z, a)) for name in ("tanh", "sigmoid", "elu")}
  y, t = np.random.default_rng(0).normal(size=(2, 5, 3))
  loss_full = truth.loss_terms("huber", y, t)
  asked = []
  tables = tolerance._tables
  monkeypatch.setattr(tolerance, "_tables", lambda names=None: asked.append(names) or tables(names))
  with tolerance.declared(("tanh", "relu", "elu"), ("huber",)):
    tolerance.pointwise(activations.get("tanh").df, z)
    assert asked == [("elu", "relu", "tanh")]
    assert set(tables(("elu", "relu", "tanh"))) == {
        fn for name in ("elu", "relu", "tanh") for fn in
        (activations.get(name).f, activations.get(name).df, tolerance.rho_function(name, False),
         tolerance.rho_function(name, True)) if fn is not None}
    for name, (df, rho) in full.items():  # sigmoid is not declared: the full table answers
      np.testing.assert_array_max_ulp(tolerance.pointwise(activations.get(name).df, z), df, maxulp=2)
      np.testing.assert_array_max_ulp(tolerance.pointwise(tolerance.rho_function(name), z, a), rho, maxulp=2)
    for declared, every in zip(truth.loss_terms("huber", y, t), loss_full):
      np.testing.assert_array_max_ulp(declared, every, maxulp=2)
    assert tolerance.declared_losses() == ("huber",)
  assert tolerance.declared_losses() is None


def test_outside_a_declared_block_each_function_compiles_alone(monkeypatch):
  """One network's tolerance compiles its own few f's, not a table of every activation."""
  from bpref import activations

  asked = []
  tables = tolerance._tables
  monkeypatch.setattr(tolerance, "_tables", lambda names=None: asked.append(names) or tables(names))
  z = np.linspace(-3.0, 3.0, 7)
  alone = tolerance.pointwise(activations.get("tanh").f, z)
  assert asked == []
  with tolerance.declared():
    every = tolerance.pointwise(activations.get("tanh").f, z)
  assert asked == [None]
  np.testing.assert_array_max_ulp(alone, every, maxulp=2)


def test_a_search_declares_its_spec_with_the_output_activations_and_fused_losses():
  from bpref import oracle

  spec = oracle.make_spec(activations=("tanh", "relu"), losses=("cross_entropy", "squared_error"))
  with spec.declared():
    names, losses = tolerance._DECLARED.get()
  assert set(names) >= {"tanh", "relu", "softmax"}
  assert set(losses) == {"cross_entropy", "softmax_cross_entropy", "squared_error"}
