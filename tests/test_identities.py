"""Every lambda/delta identity of backprop as a property test over random architectures.

Each test draws a whole problem (depth 1-3, widths and batch sizes including 1,
every activation, every loss) and checks identities between bpref's public
functions and witnesses computed here with JAX autodiff (jax.grad, jax.jacobian
and jax.vjp of the forward pass and the loss values), so a shared mistake in
bpref's derivatives cannot hide. All comparisons are in float64 with the
rounding model of bpref.tolerance: ||X_hat - X||_inf <= tol ||M||_inf, where M is X
itself or, for an identity that sums terms, the same sum of their absolute values
(a sum that cancels is exact to rounding of its terms, not of its result).

Compilation dominates the cost, so each test compiles one jitted bundle per
problem and checks a family of related identities on it; the number of
examples is a third of the profile's (10 in ci).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bpref
from bpref import activations as _activations
from bpref import losses as _losses
from bpref.problems import problem_tolerance
from bpref.testing import strategies as bst

EXAMPLES = max(3, settings.default.max_examples // 3)
few = settings(max_examples=EXAMPLES)


def _check(name, actual, expected, magnitude, tol):
  """max |actual - expected| <= tol max |magnitude| (max |expected| when magnitude is None)."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, f"identity {name}: shape {actual.shape} != {expected.shape}"
  scale = np.max(np.abs(expected if magnitude is None else magnitude), initial=0.0)
  err = np.max(np.abs(actual - expected), initial=0.0) / (scale if scale > 0 else 1.0)
  assert err <= tol, f"identity {name}: error {err:.3e} > tolerance {tol:.3e}"


def _with_magnitude(fn, *arrays):
  """fn of the arrays and fn of their absolute values: (expected, magnitude) for ``_check``."""
  arrays = [np.asarray(a, np.float64) for a in arrays]
  return fn(*arrays), fn(*map(np.abs, arrays))


def _f(name):
  return _activations.get(name).f


def _loss_of_y(y, t, loss, reduction):
  return _losses.reduce(_losses.get(loss).value(y, t), reduction)


def _jac_f(name, z):
  # per-example Jacobian da/dz by jax.jacobian, (B, n, n)
  return jax.vmap(jax.jacobian(_f(name)))(z)


def _fprime(name, z):
  # f'(z) elementwise by jax.grad (elementwise activations only)
  return jnp.vectorize(jax.grad(_f(name)))(z)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _delta_bundle(params, x, t, loss, reduction):
  tape = bpref.forward(params, x)
  y = tape.a[-1]
  g = jax.grad(_loss_of_y)(y, t, loss, reduction)  # dC/dy by autodiff of the loss value
  lam = bpref.lambdas(params, x)
  return {
      "tape": tape, "g": g, "deltas": bpref.deltas(params, x, t, loss, reduction),
      "grads": bpref.grad(params, x, t, loss, reduction),
      "input_grad": bpref.input_grad(params, x, t, loss, reduction),
      "lambdas": lam, "jac_L": _jac_f(params[-1].activation, tape.z[-1]),
      "fprime": tuple(_fprime(p.activation, z) if p.activation != "softmax" else z
                      for p, z in zip(params, tape.z)),
  }


@few
@given(bst.all_problems())
def test_delta_identities(problem):
  """delta_L = dC/dy J_f(z_L); delta recursion; dC/dW_l = delta_l^T a_{l-1}; dC/db_l = sum_b delta_l;
  delta_l = dC/dy lambda_l; dC/dx = delta_1 W_1."""
  params, x = problem.params, problem.x
  tol = problem_tolerance(params, x)
  q = _delta_bundle(*problem)
  d, g, tape = q["deltas"], q["g"], q["tape"]
  # (34): delta_L = (dC/dy) J_f(z_L), a vector-Jacobian product (softmax included)
  vjp = lambda g, jac: np.einsum("bk,bkn->bn", g, jac)  # noqa: E731
  _check("delta_L = dC/dy f'_L", d[-1], *_with_magnitude(vjp, g, q["jac_L"]), tol)
  for l in range(len(params) - 1, 0, -1):
    # (37): delta_l = (delta_{l+1} W_{l+1}) * f'_l(z_l)
    expected = _with_magnitude(lambda d, W, fp: (d @ W) * fp, d[l], params[l].W, q["fprime"][l - 1])
    _check(f"delta recursion l={l}", d[l - 1], *expected, tol)
  for l, (layer, gl) in enumerate(zip(params, q["grads"]), start=1):
    # (39): dC/dW_l = delta_l^T A_{l-1}; dC/db_l = sum_b delta_l
    _check(f"dC/dW_{l} = delta^T a", gl.W, *_with_magnitude(lambda d, a: d.T @ a, d[l - 1], tape.a[l - 1]),
           tol)
    if layer.b is not None:
      _check(f"dC/db_{l} = delta", gl.b, *_with_magnitude(lambda d: np.sum(d, axis=0), d[l - 1]), tol)
    # delta_l = (dC/dy) lambda_l
    _check(f"delta_{l} = dC/dy lambda_{l}", d[l - 1], *_with_magnitude(vjp, g, q["lambdas"][l - 1]), tol)
  # dC/dx = delta_1 W_1
  _check("dC/dx = delta_1 W_1", q["input_grad"], *_with_magnitude(lambda d, W: d @ W, d[0], params[0].W),
         tol)


def _injected_y(params, x, offsets):
  # y with e_l added to z_l: dy/de_l at e = 0 is lambda_l
  a = x
  for layer, e in zip(params, offsets):
    z = a @ layer.W.T
    if layer.b is not None:
      z = z + layer.b[None, :]
    a = _f(layer.activation)(z + e)
  return a


@functools.partial(jax.jit)
def _lambda_bundle(params, x):
  tape = bpref.forward(params, x)

  def per_example(xb):
    offsets = tuple(jnp.zeros((p.W.shape[0],), xb.dtype) for p in params)
    batched = lambda offs: tuple(o[None] for o in offs)  # noqa: E731
    y_of_offsets = lambda offs: _injected_y(params, xb[None], batched(offs))[0]  # noqa: E731
    y_of_x = lambda v: _injected_y(params, v[None], batched(offsets))[0]  # noqa: E731
    return jax.jacobian(y_of_offsets)(offsets), jax.jacobian(y_of_x)(xb)

  injected, dy_dx = jax.vmap(per_example)(x)
  return {
      "tape": tape, "lambdas": bpref.lambdas(params, x), "injected": injected, "dy_dx": dy_dx,
      "jac_L": _jac_f(params[-1].activation, tape.z[-1]),
      "fprime": tuple(_fprime(p.activation, z) if p.activation != "softmax" else z
                      for p, z in zip(params, tape.z)),
  }


@few
@given(bst.all_problems())
def test_lambda_identities(problem):
  """lambda_L = J_f(z_L); lambda recursion; lambda_l = dy/dz_l by injection; dy/dx = lambda_1 W_1."""
  params, x = problem.params, problem.x
  tol = problem_tolerance(params, x)
  q = _lambda_bundle(params, x)
  lam = q["lambdas"]
  _check("lambda_L = f'_L(z_L)", lam[-1], q["jac_L"], None, tol)  # (27)
  step = lambda lam, W, fp: np.einsum("bkn,nm->bkm", lam, W) * fp[:, None, :]  # noqa: E731
  # the magnitude of every lambda_l: the recursion (30) on absolute values, from |J_f(z_L)| down
  magnitudes = [np.abs(np.asarray(q["jac_L"], np.float64))]
  for l in range(len(params) - 1, 0, -1):
    # (30): lambda_l = lambda_{l+1} W_{l+1} diag f'_l(z_l)
    expected = _with_magnitude(step, lam[l], params[l].W, q["fprime"][l - 1])
    _check(f"lambda recursion l={l}", lam[l - 1], *expected, tol)
    magnitudes.insert(0, step(magnitudes[0], np.abs(params[l].W), np.abs(q["fprime"][l - 1])))
  for l in range(len(params)):
    _check(f"lambda_{l + 1} = dy/dz_{l + 1} (injection)", lam[l], q["injected"][l], magnitudes[l], tol)
  _check("dy/dx = lambda_1 W_1", q["dy_dx"],
         *_with_magnitude(lambda lam, W: np.einsum("bkn,nm->bkm", lam, W), lam[0], params[0].W), tol)


@functools.partial(jax.jit, static_argnums=(3,))
def _batch_bundle(params, x, t, loss):
  def one(xb, tb):  # bpref.grad on a batch of one, mapped with vmap over the examples
    return bpref.grad(params, xb[None], tb[None], loss, "sum")
  return {"sum": bpref.grad(params, x, t, loss, "sum"), "mean": bpref.grad(params, x, t, loss, "mean"),
          "vmapped": jax.vmap(one)(x, t), "per_example": bpref.per_example_grads(params, x, t, loss)}


@few
@given(bst.all_problems())
def test_batch_additivity_and_rank(problem):
  """dC/dparams of the batch = sum (or mean) of the examples' gradients; rank dC/dW_l <= B."""
  params, x, t, loss = problem.params, problem.x, problem.t, problem.loss
  tol = problem_tolerance(params, x)
  q = _batch_bundle(params, x, t, loss)
  batch = x.shape[0]
  summed = jax.tree_util.tree_map(lambda v: _with_magnitude(lambda v: np.sum(v, axis=0), v), q["vmapped"])
  for l in range(len(params)):
    (W_sum, W_terms) = summed[l].W
    _check(f"sum additivity W_{l + 1}", q["sum"][l].W, W_sum, W_terms, tol)
    _check(f"mean additivity W_{l + 1}", q["mean"][l].W, W_sum / batch, W_terms / batch, tol)
    _check(f"per_example_grads W_{l + 1}", q["per_example"][l].W, q["vmapped"][l].W, None, tol)
    if params[l].b is not None:
      _check(f"sum additivity b_{l + 1}", q["sum"][l].b, *summed[l].b, tol)
    dW = np.asarray(q["sum"][l].W)
    # rank(dC/dW_l) <= B: the singular values past the B-th are rounding noise
    s = np.linalg.svd(dW, compute_uv=False)
    if s.size > batch and s[0] > 0:
      assert s[batch] <= tol * s[0], f"rank(dC/dW_{l + 1}) > B = {batch}: singular values {s}"


@functools.partial(jax.jit, static_argnums=(5,))
def _linear_bundle(params, x, g1, g2, alpha, loss_unused=None):
  tape = bpref.forward(params, x)
  delta_L = lambda g: bpref.activations.vjp(params[-1].activation, tape.z[-1], tape.a[-1], g)  # noqa: E731
  d = lambda g: bpref.backward(params, tape, delta_L(g))  # noqa: E731
  return d(g1), d(g2), d(alpha * g1 + g2)


@few
@given(bst.all_problems(), st.floats(-3, 3, allow_subnormal=False), st.integers(0, 2 ** 31))
def test_backward_map_is_linear_in_dC_dy(problem, alpha, seed):
  """delta(alpha g1 + g2) = alpha delta(g1) + delta(g2) for any output cotangents g1, g2."""
  params, x = problem.params, problem.x
  rng = np.random.default_rng(seed)
  shape = (x.shape[0], params[-1].W.shape[0])
  g1, g2 = rng.normal(size=shape), rng.normal(size=shape)
  d1, d2, d12 = _linear_bundle(params, x, g1, g2, alpha)
  tol = problem_tolerance(params, x) * (1 + abs(alpha))
  for l in range(len(params)):
    expected = alpha * np.asarray(d1[l]) + np.asarray(d2[l])
    scale = max(np.max(np.abs(alpha * np.asarray(d1[l]))), np.max(np.abs(np.asarray(d2[l]))), 1e-300)
    err = np.max(np.abs(np.asarray(d12[l]) - expected)) / scale
    assert err <= tol, f"backward map not linear at layer {l + 1}: {err:.3e} > {tol:.3e}"


@functools.partial(jax.jit, static_argnums=(3, 4))
def _homogeneity_bundle(params, x, t, loss, reduction):
  y = bpref.predict(params, x)
  return bpref.grad(params, x, t, loss, reduction), jax.grad(_loss_of_y)(y, t, loss, reduction), y


@few
@given(bst.all_problems(hidden=("relu", "identity", "leaky_relu"), bias=False,
                        losses=("squared_error", "half_squared_error", "softmax_cross_entropy",
                                "sigmoid_binary_cross_entropy", "huber")))
def test_positive_homogeneity(problem):
  """Bias-free relu/identity/leaky_relu nets: <W_l, dC/dW_l> = <dC/dy, y> for every l."""
  params, x, t, loss, reduction = problem
  if params[-1].activation not in ("relu", "identity", "leaky_relu"):
    params = params[:-1] + (bpref.Layer(params[-1].W, None, "identity"),)
  grads, g, y = _homogeneity_bundle(params, x, t, loss, reduction)
  target = float(np.vdot(np.asarray(g), np.asarray(y)))
  # each side is a sum of products: its rounding is bounded by (T) times the sum of |terms|
  scale = float(np.vdot(np.abs(np.asarray(g)), np.abs(np.asarray(y))))
  tol = problem_tolerance(params, x)
  for l, (layer, gl) in enumerate(zip(params, grads), start=1):
    lhs = float(np.vdot(np.asarray(layer.W), np.asarray(gl.W)))
    terms = float(np.vdot(np.abs(np.asarray(layer.W)), np.abs(np.asarray(gl.W))))
    assert abs(lhs - target) <= tol * max(scale, terms), \
        f"<W_{l}, dC/dW_{l}> = {lhs!r} but <dC/dy, y> = {target!r}"


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_identities_hold_eager_and_under_jit(mode):
  """The delta identities on one fixed problem, with bpref run eagerly and under jax.jit."""
  from bpref.testing.problems import random_problem
  problem = random_problem(np.random.default_rng(7), np.float64, max_depth=3)
  tol = problem_tolerance(problem.params, problem.x)
  run = (lambda f: f) if mode == "eager" else (lambda f: jax.jit(f, static_argnums=(3, 4)))
  d = run(bpref.deltas)(*problem)
  grads = run(bpref.grad)(*problem)
  tape = bpref.forward(problem.params, problem.x)
  for l in range(len(problem.params)):
    _check(f"dC/dW_{l + 1} = delta^T a ({mode})", grads[l].W,
           *_with_magnitude(lambda d, a: d.T @ a, d[l], tape.a[l]), tol)
