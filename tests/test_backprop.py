"""The handwritten backprop against the autodiff witness over random architectures.

bpref runs in the case's dtype; the witness runs in float64 on the same values, so the
error measured is bpref's own. It is measured as ``bpref verify`` measures it: per array,
||bpref - witness||_F / ||magnitude bound||_F, where the bound is the same computation on
absolute values, held to the rounding model (T) of the case (``bpref.tools.verify.compare``).
A fixed normwise bound relative to the result would call a correct gradient wrong when its
sum cancels (sizes (1, 8, 1, 1), float32: 1.2e-5 of |dW_1|, within 0.01 of (T)).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import bpref
from bpref import losses as L
from bpref.error import normwise_error
from bpref.structures import Layer
from bpref.testing import problems
from bpref.tolerance import gradient_tolerance
from bpref.tools import verify
from bpref.witnesses import autodiff as reference

HIDDEN = problems.HIDDEN


@st.composite
def cases(draw, dtype=None):
  """A problem: sizes first, then names, then values from a drawn seed (no subnormals)."""
  depth = draw(st.integers(1, 4))
  sizes = [draw(st.sampled_from(problems.WIDTHS)) for _ in range(depth + 1)]
  loss = draw(st.sampled_from(sorted(L.LOSSES)))
  reduction = draw(st.sampled_from(L.REDUCTIONS))
  acts = [draw(st.sampled_from(HIDDEN)) for _ in range(depth - 1)]
  required = L.get(loss).output
  acts.append(required or draw(st.sampled_from(("identity", "tanh", "sigmoid", "softmax", "relu"))))
  batch = draw(st.sampled_from(problems.BATCHES))
  bias = draw(st.booleans())
  dtype = dtype or draw(st.sampled_from((np.float64, np.float32)))
  rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
  layers = tuple(
      Layer((rng.normal(size=(sizes[l], sizes[l - 1])) / np.sqrt(sizes[l - 1])).astype(dtype),
            (rng.normal(size=sizes[l]) * 0.1).astype(dtype) if bias else None, acts[l - 1])
      for l in range(1, depth + 1))
  x = rng.normal(size=(batch, sizes[0])).astype(dtype)
  t = problems.targets(rng, loss, (batch, sizes[-1])).astype(dtype)
  return problems.Problem(layers, x, t, loss, reduction)


def _to64(problem):
  layers = tuple(Layer(np.float64(p.W), None if p.b is None else np.float64(p.b), p.activation)
                 for p in problem.params)
  return problem._replace(params=layers, x=np.float64(problem.x), t=np.float64(problem.t))


def _bundle(module, params, x, t, loss, reduction):
  value, grads = module.value_and_grad(params, x, t, loss, reduction)
  return {
      "loss": value, "grad": grads, "predict": module.predict(params, x),
      "deltas": module.deltas(params, x, t, loss, reduction),
      "lambdas": module.lambdas(params, x),
      "input_grad": module.input_grad(params, x, t, loss, reduction),
      "per_example_grads": module.per_example_grads(params, x, t, loss),
  }


_ours_jit = jax.jit(functools.partial(_bundle, bpref), static_argnums=(3, 4))


def _witness(problem):
  """The witness's outputs in float64, keyed as ``_bundle``: its padded twin, one compilation
  for every case drawn here; ``tests/test_verify.py`` checks it against the exact-shape witness."""
  return reference.evaluate_many([_to64(problem)])[0]


_per_example_jit = jax.jit(bpref.per_example_grads, static_argnums=(3,))


def _assert_close(ours, witness, dtype, where):
  """Every leaf in dtype, shaped as the witness, within a fixed normwise bound (fixed inputs)."""
  assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(witness), where
  tol = gradient_tolerance(dtype)
  for path_a, b in zip(jax.tree_util.tree_leaves_with_path(ours), jax.tree_util.tree_leaves(witness)):
    path, a = path_a
    assert a.dtype == dtype, (where, path, a.dtype)
    assert a.shape == b.shape, (where, path)
    err = normwise_error(a, b)
    assert err <= tol, f"{where}{jax.tree_util.keystr(path)}: normwise relative error {err:.3e} > {tol:.0e}"


def _assert_within_model(problem, ours, witness, where):
  """Every leaf in the problem's dtype, shaped as the witness, each output within (T)."""
  assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(witness), where
  for path_a, b in zip(jax.tree_util.tree_leaves_with_path(ours), jax.tree_util.tree_leaves(witness)):
    path, a = path_a
    assert a.dtype == problem.x.dtype, (where, path, a.dtype)
    assert a.shape == b.shape, (where, path)
  errors, tol = verify.compare(problem, ours, witness)
  for check, err in errors.items():
    assert err <= tol, f"{where} {check}: error {err:.3e} of the magnitude bound > (T) = {tol:.2e}"


@given(cases())
def test_every_public_function_matches_the_witness_under_jit(problem):
  ours = _ours_jit(*problem)
  _assert_within_model(problem, ours, _witness(problem), problem.describe())
  assert jax.tree_util.tree_structure(ours["grad"]) == jax.tree_util.tree_structure(problem.params)


@settings(max_examples=5)  # op-by-op dispatch compiles every op per shape: the jitted test covers breadth
@given(cases(dtype=np.float64))
def test_eager_equals_jit_and_matches_the_witness(problem):
  eager = _bundle(bpref, *problem)
  _assert_within_model(problem, eager, _witness(problem), problem.describe())
  _assert_within_model(problem, eager, _ours_jit(*problem), problem.describe())


@given(cases(dtype=np.float64))
def test_vmap_over_examples_equals_per_example_grads(problem):
  params, x, t, loss, _ = problem
  one = jax.jit(jax.vmap(lambda xb, tb: bpref.grad(params, xb, tb, loss, "sum")))(x, t)
  _assert_within_model(problem, {"per_example_grads": one},
                       {"per_example_grads": _per_example_jit(params, x, t, loss)}, "vmap")


def test_vmap_over_an_ensemble_of_params_matches_the_witness():
  rng = np.random.default_rng(0)
  keys = jax.random.split(jax.random.key(3), 4)
  ensemble = jax.vmap(lambda k: bpref.init(k, (3, 5, 2), ("gelu", "tanh")))(keys)
  x, t = jnp.asarray(rng.normal(size=(6, 3))), jnp.asarray(rng.normal(size=(6, 2)))
  ours = jax.jit(jax.vmap(lambda p: bpref.grad(p, x, t)))(ensemble)
  theirs = jax.vmap(lambda p: reference.grad(p, x, t))(ensemble)
  _assert_close(ours, theirs, np.float64, "ensemble")


def test_single_example_results_carry_no_batch_axis():
  params = bpref.init(jax.random.key(0), (3, 4, 2), ("tanh", "softmax"))
  x, t = jnp.ones(3), jnp.asarray([0.25, 0.75])
  assert [d.shape for d in bpref.deltas(params, x, t, "cross_entropy")] == [(4,), (2,)]
  assert [v.shape for v in bpref.lambdas(params, x)] == [(2, 4), (2, 2)]
  assert bpref.input_grad(params, x, t, "cross_entropy").shape == (3,)
  assert bpref.per_example_grads(params, x, t, "cross_entropy")[0].W.shape == (4, 3)
  batched = bpref.grad(params, x[None], t[None], "cross_entropy")
  single = bpref.grad(params, x, t, "cross_entropy")
  for a, b in zip(jax.tree_util.tree_leaves(single), jax.tree_util.tree_leaves(batched)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_backward_pulls_back_each_row_of_a_stacked_cotangent_and_matches_the_witness():
  # delta_L of shape (B, K, n_L): row k of every delta_l is backward of row k alone, and each
  # is the witness's vector-Jacobian product of dC/dz_L = G[:, k] through the layers below.
  rng = np.random.default_rng(1)
  params = bpref.init(jax.random.key(2), (3, 5, 4, 2), ("tanh", "gelu", "sigmoid"))
  x, G = jnp.asarray(rng.normal(size=(6, 3))), jnp.asarray(rng.normal(size=(6, 3, 2)))
  tape = bpref.forward(params, x)
  stacked = bpref.backward(params, tape, G)
  assert [d.shape for d in stacked] == [(6, 3, 5), (6, 3, 4), (6, 3, 2)]
  for k in range(3):
    one = bpref.backward(params, tape, G[:, k])
    _assert_close(tuple(d[:, k] for d in stacked), one, np.float64, f"row {k}")

    def z_L(z_1):  # z_L as a function of z_1 on the same tape, by the witness's forward pass
      a = jax.nn.tanh(z_1)
      a = jax.nn.gelu(a @ params[1].W.T + params[1].b[None], approximate=False)
      return a @ params[2].W.T + params[2].b[None]
    _, pullback = jax.vjp(z_L, tape.z[0])
    _assert_close(stacked[0][:, k], pullback(G[:, k])[0], np.float64, f"witness, row {k}")


def test_handwritten_path_does_not_import_autodiff():
  import ast
  import pathlib
  banned = {"grad", "value_and_grad", "vjp", "jvp", "jacfwd", "jacrev", "jacobian", "hessian",
            "linearize", "custom_vjp", "custom_jvp"}
  root = pathlib.Path(bpref.__file__).parent
  for name in ("activations.py", "losses.py", "network.py", "backprop.py"):
    tree = ast.parse((root / name).read_text())
    for node in ast.walk(tree):
      if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        assert not (node.value.id == "jax" and node.attr in banned), (name, node.attr)
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jax"):
        assert not {a.name for a in node.names} & banned, name
      if isinstance(node, ast.ImportFrom) and node.module == "bpref.witnesses.autodiff":
        raise AssertionError(f"{name} imports the witness")


def test_probability_losses_stay_finite_and_exact_when_the_output_saturates():
  # z_L = (800, 0, -800): softmax underflows to exactly 0 and sigmoid rounds to exactly 1, so the
  # two-step route -t / y divides by zero. The output delta of C(f_L(z_L)) is, exactly,
  # softmax(z) sum(t) - t for cross_entropy and sigma(z) - t for binary_cross_entropy.
  W1 = jnp.asarray([[1.0], [0.0], [-1.0]])
  b1 = jnp.zeros(3)
  x = jnp.asarray([[800.0]])
  t = jnp.asarray([[0.2, 0.3, 0.5]])
  z = np.array([800.0, 0.0, -800.0])
  softmax = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
  ce = bpref.from_arrays([W1], [b1], "softmax")
  C, grads = bpref.value_and_grad(ce, x, t, "cross_entropy")
  np.testing.assert_allclose(float(C), -(0.3 * -800.0 + 0.5 * -1600.0), rtol=1e-15)
  np.testing.assert_allclose(np.asarray(bpref.deltas(ce, x, t, "cross_entropy")[0][0]),
                             softmax * 1.0 - np.asarray(t[0]), rtol=1e-15, atol=1e-300)
  assert np.all(np.isfinite(np.asarray(grads[0].W)))
  witness = reference.deltas(ce, x, t, "cross_entropy")[0]
  assert not np.all(np.isfinite(np.asarray(witness)))  # the composition jax.grad differentiates
  bce = bpref.from_arrays([W1], [b1], "sigmoid")
  sigma = np.array([1.0, 0.5, np.exp(-800.0)])  # exp(-800) underflows to 0 in float64
  np.testing.assert_allclose(np.asarray(bpref.deltas(bce, x, t, "binary_cross_entropy")[0][0]),
                             sigma - np.asarray(t[0]), rtol=1e-15)
