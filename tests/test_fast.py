"""The bucketed fast path against bpref on each unpadded network, and against the witness.

Rounding model for fast vs bpref: both evaluate the same formulas in the same
dtype; they differ only in the order in which XLA sums a padded axis (padding
adds exact zeros). Each sum of at most n terms then differs by at most
2 gamma_n ~ 2 n u relative to its terms, and the difference is carried through
the L layers forward and back, so on a well-conditioned net a normwise relative
difference below 4 (L + 1) n_max u is expected (n_max = 8, L <= 4 here).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bpref
from bpref import compilation
from bpref import losses as _losses
from bpref import tolerance
from bpref.error import max_norm_error, normwise_error, worst_error
from bpref.problems import problem_tolerance
from bpref.scale import fast
from bpref.structures import Layer
from bpref.testing import problems
from bpref.tools import verify
from bpref.witnesses import autodiff as reference


@functools.partial(jax.jit, static_argnums=(3, 4))
def _bpref_outputs(params, x, t, loss, reduction):
  # One compilation per architecture (eager mode would compile every primitive per shape).
  value, grads = bpref.value_and_grad(params, x, t, loss, reduction)
  return (value, grads, bpref.deltas(params, x, t, loss, reduction),
          bpref.input_grad(params, x, t, loss, reduction), bpref.predict(params, x))


_witness = jax.jit(reference.value_and_grad, static_argnums=(3, 4))


def _cases(seed, count, dtype):
  rng = np.random.default_rng(seed)
  return [problems.random_problem(rng, np.dtype(dtype)) for _ in range(count)]


def _rounding_bound(case):
  depth = len(case.params)
  width = max([case.x.shape[-1]] + [p.W.shape[0] for p in case.params])
  return 4 * (depth + 1) * width * tolerance.unit_roundoff(case.x.dtype)


def _assert_close_tree(actual, expected, bound, what):
  assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected), what
  for a, e in zip(jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(expected)):
    e = np.asarray(e)
    assert a.shape == e.shape and a.dtype == e.dtype, (what, a.shape, e.shape, a.dtype, e.dtype)
    err = normwise_error(a, e)
    assert err <= bound, f"{what}: normwise difference {err:.3e} > {bound:.3e}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fast_matches_bpref_on_each_unpadded_network(dtype):
  cases = _cases(1, 10, dtype)
  results = fast.evaluate_many(cases)
  for case, r in zip(cases, results):
    bound = _rounding_bound(case)
    what = case.describe()
    value, grads, deltas, input_grad, y = _bpref_outputs(*case)
    _assert_close_tree(r.value, value, bound, f"loss of {what}")
    _assert_close_tree(r.grads, grads, bound, f"grads of {what}")
    _assert_close_tree(r.deltas, deltas, bound, f"deltas of {what}")
    _assert_close_tree(r.input_grad, input_grad, bound, f"input_grad of {what}")
    _assert_close_tree(r.y, y, bound, f"y of {what}")


def test_per_example_grads_match_bpref():
  cases = _cases(9, 4, "float64")
  cases[0] = cases[0]._replace(x=cases[0].x[0], t=cases[0].t[0])
  per_example = jax.jit(bpref.per_example_grads, static_argnums=(3,))
  for case, grads in zip(cases, fast.per_example_grads_many(cases)):
    expected = per_example(case.params, case.x, case.t, case.loss)
    _assert_close_tree(grads, expected, _rounding_bound(case), f"per-example grads of {case.describe()}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_lambdas_match_bpref(dtype):
  # cross_entropy's output layer is softmax: lambda_L is its full Jacobian (27), the one
  # activation whose lambda_L is not I diag f'_L(z_L); the other losses draw elementwise outputs.
  rng = np.random.default_rng(5)
  cases = [problems.random_problem(rng, np.dtype(dtype), losses=(loss,))
           for loss in ("cross_entropy", "squared_error", "binary_cross_entropy") for _ in range(2)]
  assert any(case.params[-1].activation == "softmax" for case in cases)
  lambdas = jax.jit(bpref.lambdas)
  for case, lams in zip(cases, fast.lambdas_many(cases)):
    _assert_close_tree(lams, lambdas(case.params, case.x), _rounding_bound(case),
                       f"lambdas of {case.describe()}")


def test_fast_matches_the_witness():
  # Every hidden activation once, the losses stratified too: each activation's branch is
  # checked whatever the draws (8 random draws once left gelu, elu and selu out).
  rng = np.random.default_rng(2)
  losses = problems.strata(rng, tuple(_losses.LOSSES), len(problems.HIDDEN))
  cases = [problems.random_problem(rng, np.float64, uses=act, losses=(loss,))
           for act, loss in zip(problems.HIDDEN, losses)]
  for case, (value, grads) in zip(cases, fast.value_and_grad_many(cases)):
    w_value, w_grads = _witness(*case)
    tol = tolerance.gradient_tolerance(np.float64)
    _assert_close_tree(value, w_value, tol, f"loss of {case.describe()}")
    _assert_close_tree(grads, w_grads, tol, f"grads of {case.describe()}")


def _integer_case(rng, depth, batch, loss, acts):
  # Small integers: every product and sum is exact in float64, so the padding must change no bit.
  sizes = [int(rng.integers(1, 9)) for _ in range(depth + 1)]
  layers = tuple(
      Layer(rng.integers(-2, 3, size=(sizes[l + 1], sizes[l])).astype(np.float64),
            rng.integers(-2, 3, size=(sizes[l + 1],)).astype(np.float64) if l % 2 == 0 else None,
            str(rng.choice(acts)))
      for l in range(depth))
  x = rng.integers(-2, 3, size=(batch, sizes[0])).astype(np.float64)
  t = rng.integers(-2, 3, size=(batch, sizes[-1])).astype(np.float64)
  return problems.Problem(layers, x, t, loss, str(rng.choice(("mean", "sum"))))


def test_padding_changes_no_bit_when_arithmetic_is_exact():
  rng = np.random.default_rng(3)
  cases = [_integer_case(rng, int(rng.integers(1, 6)), int(rng.choice((1, 2, 4))),
                         str(rng.choice(("half_squared_error", "squared_error", "huber"))),
                         ("identity", "relu"))
           for _ in range(8)]
  for case, r in zip(cases, fast.evaluate_many(cases)):
    expected = _bpref_outputs(*case)
    for a, e in zip(jax.tree_util.tree_leaves(tuple(r[:5])), jax.tree_util.tree_leaves(expected), strict=True):
      np.testing.assert_array_equal(a, np.asarray(e), err_msg=case.describe())


def test_result_does_not_depend_on_the_other_cases_in_the_call():
  cases = _cases(4, 10, "float64")
  alone = fast.evaluate_many(cases[:1])[0]
  crowded = fast.evaluate_many(cases[3:] + cases[:1])[-1]
  for a, b in zip(jax.tree_util.tree_leaves(alone), jax.tree_util.tree_leaves(crowded)):
    np.testing.assert_array_equal(a, b)


def test_compiled_functions_are_reused_across_architectures():
  fast.evaluate_many(_cases(5, 6, "float64"))
  before = fast.compiled_count()
  again = fast.evaluate_many(_cases(6, 6, "float64"))
  assert fast.compiled_count() == before
  assert len({c.describe() for c in _cases(6, 6, "float64")}) == len(again) == 6


def test_output_structure_follows_each_problem():
  rng = np.random.default_rng(7)
  single = problems.random_problem(rng, np.float64)
  single = single._replace(x=single.x[0], t=single.t[0])
  params = bpref.init(jax.random.key(0), (3, 2, 4), ("tanh", "softmax"), bias=False)
  t = np.full((5, 4), 0.25)
  plain = (params, np.ones((5, 3)), t, "cross_entropy", "sum")
  r_single, r_plain = fast.evaluate_many([single, plain])
  assert r_single.y.shape == (single.params[-1].W.shape[0],)
  assert r_single.input_grad.shape == single.x.shape
  assert all(g.b is None for g in r_plain.grads)
  assert [g.W.shape for g in r_plain.grads] == [(2, 3), (4, 2)]
  grads = _bpref_outputs(*plain)[1]
  bound = 4 * 3 * 4 * tolerance.unit_roundoff(np.float64)
  _assert_close_tree(r_plain.grads, grads, bound, "grads of a bias-free softmax net")
  assert fast.grads_many([plain])[0][1].W.shape == (4, 2)


def test_bad_problem_names_its_index_and_layer():
  good = _cases(8, 1, "float64")[0]
  params = (Layer(jnp.ones((3, 2)), None, "tanh"), Layer(jnp.ones((1, 4)), None, "identity"))
  bad = (params, np.ones((2, 2)), np.ones((2, 1)))
  with pytest.raises(ValueError, match=r"problem 1: layer 2: W has shape \(1, 4\)"):
    fast.evaluate_many([good, bad])
  with pytest.raises(ValueError, match="problem 0: unknown loss"):
    fast.evaluate_many([(good.params, good.x, good.t, "hinge")])


def test_bucket_rounds_up_to_powers_of_two():
  assert fast.bucket((3, 8, 1), 4) == (8, 8, 8)
  assert fast.bucket((3,) * 10, 9) == (16, 8, 16)
  assert fast.bucket((3, 20, 1), 1) == (8, 32, 8)


# Saturated outputs: the fused z_L route (issues 12 and 16). Exact values, derived by hand.
#
# softmax + cross_entropy: one layer, no bias, W = (1, 0, -1)^T, x = 800, t = (0.2, 0.3, 0.5).
#   z = W x = (800, 0, -800); p = softmax(z) = (1, e^-800, e^-1600) / S with S = 1 + e^-800 + e^-1600.
#   C = -sum_k t_k log p_k = 0.3 * 800 + 0.5 * 1600 + log S = 1040 + O(e^-800), which rounds to 1040.
#   delta = p sum_k t_k - t = (0.8 - O(e^-800), e^-800 / S - 0.3, e^-1600 / S - 0.5) -> (0.8, -0.3, -0.5);
#   dW = delta^T x = (640, -240, -400).
#   The two-step route has y = (1, 0, 0) (e^-800 underflows even in float64), so -0.3 log y_2 = inf.
# sigmoid + binary_cross_entropy: W = (1, -1)^T, x = 800, t = (0.25, 0.5).
#   z = (800, -800); C = sum_k softplus(z_k) - t_k z_k = (800 - 200) + (0 + 400) + 2 log1p(e^-800)
#   = 1000 + O(e^-800); delta = sigma(z) - t = (0.75, -0.5) - O(e^-800); dW = (600, -400).
#   The two-step route has y = (1, 0), so -(1 - t_1) log(1 - y_1) = inf.
# With B copies of the example the sum multiplies C and dW by B and the mean leaves them unchanged.
_SATURATED = (
    ("cross_entropy", "softmax", [1.0, 0.0, -1.0], [0.2, 0.3, 0.5], 1040.0, [640.0, -240.0, -400.0]),
    ("binary_cross_entropy", "sigmoid", [1.0, -1.0], [0.25, 0.5], 1000.0, [600.0, -400.0]),
)


def _saturated_cases(dtype, reduction):
  out = []
  for loss, act, w, t, value, dW in _SATURATED:
    params = (Layer(np.array(w, dtype)[:, None], None, act),)
    for batch in (None, 2):  # x = 800 (1-D, the issues' example), then a batch of two copies
      x = np.array([800.0], dtype) if batch is None else np.full((batch, 1), 800.0, dtype)
      t_b = np.array(t, dtype) if batch is None else np.tile(np.array(t, dtype), (batch, 1))
      times = batch if (batch and reduction == "sum") else 1
      out.append((problems.Problem(params, x, t_b, loss, reduction),
                  times * value, times * np.array(dW)[:, None]))
  return out


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_losses_are_exact_on_a_saturated_output(dtype, reduction):
  cases = _saturated_cases(np.dtype(dtype), reduction)
  results = fast.value_and_grad_many([case for case, _, _ in cases])
  for (case, value, dW), (r_value, r_grads) in zip(cases, results):
    what = case.describe()
    y = np.asarray(bpref.predict(case.params, case.x))
    two_step = _losses.get(case.loss).value(np.atleast_2d(y), np.atleast_2d(case.t))  # C of y_L
    assert np.all(np.isinf(two_step)), f"{what}: the example must saturate the two-step route"
    tol = problem_tolerance(case.params, case.x)
    assert np.isfinite(r_value) and np.all(np.isfinite(r_grads[0].W)), what
    expected = bpref.value_and_grad(*case)
    # Padded to 8 units, 8 rows and 8 layers, yet every sum has at most two nonzero terms (n_0 = 1,
    # B <= 2, exp rounds to exactly 0 or 1), so no order of summation can differ: the bits are bpref's.
    np.testing.assert_array_equal(r_value, np.asarray(expected[0]), err_msg=what)
    np.testing.assert_array_equal(r_grads[0].W, np.asarray(expected[1][0].W), err_msg=what)
    assert max_norm_error(r_value, value) <= tol, (what, r_value, value)
    assert max_norm_error(r_grads[0].W, dW) <= tol, (what, r_grads[0].W, dW)


def _saturate(case, rng, shift=1000.0):
  # Move each output unit's z_L by +-1000 with its bias: softmax and sigma round to exactly 0 and 1
  # (exp(-1000) underflows in float64), while delta_L = p sum_k t_k - t or sigma - t stays O(1), so
  # the hidden layers' deltas keep the size, and the conditioning, of the unsaturated problem.
  *hidden, last = case.params
  n_out = last.W.shape[0]
  b = np.zeros(n_out) if last.b is None else np.asarray(last.b, np.float64)
  b = (b + shift * rng.choice((-1.0, 1.0), size=n_out)).astype(last.W.dtype)
  return case._replace(params=(*hidden, Layer(last.W, b, last.activation)))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_losses_match_bpref_on_random_saturated_networks(dtype):
  rng = np.random.default_rng(11)
  cases = [_saturate(problems.random_problem(rng, np.dtype(dtype), losses=(loss,)), rng)
           for loss in ("cross_entropy", "binary_cross_entropy") for _ in range(6)]
  saturated = set()
  for case, r in zip(cases, fast.evaluate_many(cases)):
    what = case.describe()
    value, grads, deltas, input_grad, y = _bpref_outputs(*case)
    if np.any(np.asarray(y) == 0) or np.any(np.asarray(y) == 1):
      saturated.add((case.loss, case.reduction))
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tuple(r[:4]))), what
    # each array against its magnitude bound, as verify measures: both sides are rounded
    errors, tol = verify.compare(
        case, {"loss": r.value, "grad": r.grads, "deltas": r.deltas, "input_grad": r.input_grad},
        {"loss": value, "grad": grads, "deltas": deltas, "input_grad": input_grad})
    for name, err in errors.items():
      assert err <= tol, f"{name} of {what}: error {err:.3e} > {tol:.3e}"
  assert saturated == {(loss, reduction) for loss in ("cross_entropy", "binary_cross_entropy")
                       for reduction in ("mean", "sum")}, saturated


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_padded_logits_add_exactly_zero(dtype):
  # pad_logit is finite and its exp underflows: the logit losses of a padded row equal the unpadded ones.
  pad = np.asarray(fast.pad_logit(dtype), dtype)
  assert np.isfinite(pad)
  z = np.array([[3.0, -2.0, 0.5]], dtype)
  t = np.array([[0.2, 0.3, 0.5]], dtype)
  z_pad = np.concatenate([z, np.full((1, 5), pad, dtype)], axis=1)
  t_pad = np.concatenate([t, np.zeros((1, 5), dtype)], axis=1)
  for name in fast.LOGIT_LOSSES:
    loss = _losses.get(name)
    np.testing.assert_array_equal(loss.value(z_pad, t_pad), loss.value(z, t), err_msg=name)
    np.testing.assert_array_equal(loss.dy(z_pad, t_pad)[:, :3], loss.dy(z, t), err_msg=name)
    np.testing.assert_array_equal(loss.dy(z_pad, t_pad)[:, 3:], 0, err_msg=name)


def test_one_declared_bucket_gives_the_same_results_and_refuses_what_does_not_fit():
  rng = np.random.default_rng(21)
  cases = [problems.random_problem(rng, np.float64) for _ in range(6)]
  own = fast.evaluate_many(cases)
  wide = fast.evaluate_many(cases, shape=(8, 16, 16))
  for a, b in zip(own, wide):
    assert worst_error(b.grads, a.grads) <= tolerance.gradient_tolerance(np.float64)
  with pytest.raises(ValueError, match=r"problem 0: depth .* larger than shape=\(1, 1, 1\)"):
    fast.evaluate_many(cases[:1], shape=(1, 1, 1))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_function_of_fewer_names_gives_the_same_results(monkeypatch, dtype):
  # The names compiled in decide which branches exist, not the arithmetic of the one taken:
  # the results equal every name's within the rounding model of this file. Names that miss
  # one of a problem's activations or losses fall back to every name.
  cases = _cases(8, 6, dtype)
  used = sorted({layer.activation for case in cases for layer in case.params})
  losses = {case.loss for case in cases} | {_losses.get(case.loss).logits for case in cases}
  names = fast.Branches(tuple(used), tuple(sorted(losses - {None})))
  compiled = []
  many = fast._many
  monkeypatch.setattr(fast, "_many", lambda p, **kw: compiled.append(kw["names"]) or many(p, **kw))
  runs = []
  for given in (fast.EVERY, names, names._replace(activations=tuple(used[1:]))):
    runs.append(fast.evaluate_many(cases, names=given))
    assert set(compiled) == {names if given == names else fast.EVERY}, given
    compiled.clear()
  every, fewer, missing = runs
  assert len(names.activations) < len(fast.ACTIVATION_NAMES)
  for case, a, b, c in zip(cases, every, fewer, missing):
    for result in (b, c):
      _assert_close_tree((result.value, result.grads, result.deltas, result.input_grad, result.y),
                         (a.value, a.grads, a.deltas, a.input_grad, a.y), _rounding_bound(case),
                         case.describe())


@pytest.mark.deep  # it clears JAX's caches: every later test in the worker compiles again
def test_fast_takes_its_layer_steps_from_the_core(monkeypatch):
  """One recursion: a bug planted in the core's layer steps reaches the buckets too.

  ``bpref.scale.fast`` writes only the padding and the masks; (7)-(8) come from
  ``bpref.network.layer_forward`` and (37)-(39) from ``bpref.backprop.pull_back`` and
  ``layer_grads``, so a mutant of each changes bpref's answer and the buckets' alike.
  """
  W1, W2 = jnp.array([[0.5, -1.0], [2.0, 0.25], [1.0, 1.0]]), jnp.array([[1.0, -0.5, 0.75]])
  params = bpref.from_arrays([W1, W2], [jnp.array([0.1, -0.2, 0.3]), jnp.array([0.05])], "tanh")
  x, t = jnp.array([[1.0, 2.0], [-0.5, 0.5]]), jnp.array([[0.3], [-0.1]])
  names = fast.Branches(("tanh",), ("squared_error",))
  monkeypatch.setattr(compilation, "_EXECUTABLES", [])  # traced again, not loaded: a patch in
  # memory is not in the source files that key the stored executables

  def both():
    jax.clear_caches()
    _, grads = bpref.value_and_grad(params, x, t)
    mine = fast.evaluate_many([(params, x, t)], names=names)[0]
    return [np.asarray(g.W) for g in grads], [np.asarray(g.W) for g in mine.grads]

  core, buckets = both()
  for module, name, mutant in (
      (bpref.backprop, "layer_grads",
       lambda real: lambda delta, a, bias=True, **kw: (2 * real(delta, a, bias, **kw)[0],
                                                       real(delta, a, bias, **kw)[1])),
      (bpref.backprop, "pull_back", lambda real: lambda delta, W, **kw: -real(delta, W, **kw)),
      (bpref.network, "layer_forward",
       lambda real: lambda W, b, a, f, **kw: real(W, b, 2 * a, f, **kw))):
    with monkeypatch.context() as patched:
      patched.setattr(module, name, mutant(getattr(module, name)))
      core_bug, buckets_bug = both()
    assert any(not np.allclose(core_bug[l], core[l]) for l in range(2)), name  # the bug shows
    for l in range(2):
      np.testing.assert_allclose(buckets_bug[l], core_bug[l], rtol=1e-12, atol=1e-15)
  jax.clear_caches()
