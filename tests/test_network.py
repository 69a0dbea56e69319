"""Parameters, constructors, the forward tape, and clear errors for bad input."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bpref
from bpref import Layer, compilation


def _net(dtype=jnp.float64, acts=("tanh", "identity"), sizes=(3, 4, 2), bias=True):
  return bpref.init(jax.random.key(0), sizes, acts, bias=bias, dtype=dtype)


def test_init_shapes_dtype_and_fan_in_scaling():
  params = bpref.init(jax.random.key(1), (400, 300, 2), ("relu", "identity"))
  assert [p.W.shape for p in params] == [(300, 400), (2, 300)]
  assert [p.b.shape for p in params] == [(300,), (2,)]
  assert all(p.W.dtype == jnp.float64 for p in params)
  # W ~ N(0, 1/n_in): the sample variance of 120000 entries is within 2% of 1/400
  assert abs(float(jnp.var(params[0].W)) * 400 - 1) < 0.02
  assert _net(jnp.float32)[0].W.dtype == jnp.float32
  assert all(p.b is None for p in _net(bias=False))


def test_init_refuses_other_dtypes_and_sizes_it_cannot_allocate():
  for dtype in ("float80", "int32", jnp.bfloat16, "complex64"):
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
      _net(dtype)
  with pytest.raises(ValueError, match=r"need 6,000,000,000,002 parameters .* at most 2,147,483,647"):
    _net(sizes=(3, 10**12, 2))
  jax.config.update("jax_enable_x64", False)
  try:
    with pytest.raises(TypeError, match="jax_enable_x64"):
      _net(jnp.float64)
    assert _net(None)[0].W.dtype == jnp.float32  # the default follows the mode
    with pytest.raises(TypeError, match="float64, but JAX's 64-bit mode is off"):
      bpref.from_arrays([np.ones((2, 3))], [np.zeros(2)], "tanh")
    with pytest.raises(TypeError, match="jax_enable_x64"):
      bpref.predict(_net(jnp.float32), np.ones((4, 3)))
  finally:
    jax.config.update("jax_enable_x64", True)


def test_params_are_a_pytree_with_static_activations():
  params = _net()
  leaves, treedef = jax.tree_util.tree_flatten(params)
  assert len(leaves) == 4
  rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
  assert [p.activation for p in rebuilt] == ["tanh", "identity"]
  other = bpref.init(jax.random.key(0), (3, 4, 2), ("relu", "identity"))
  assert jax.tree_util.tree_structure(other) != treedef


def test_from_arrays_round_trip_and_no_bias():
  W = [np.ones((4, 3)), np.ones((2, 4))]
  params = bpref.from_arrays(W, None, ("tanh", "identity"))
  assert params[0].b is None and params[1].W.shape == (2, 4)
  with pytest.raises(ValueError, match="2 weight arrays but 1 biases"):
    bpref.from_arrays(W, [np.ones(4)], "tanh")
  with pytest.raises(TypeError, match="layer 2: b must have a floating dtype; got <U1"):
    bpref.from_arrays(W, [np.ones(4), np.array(["a", "b"])], "tanh")


def test_from_arrays_compiles_nothing():
  # NumPy arrays go to the device by device_put; jnp.asarray would compile a program per shape.
  W = [np.ones((5, 7)), np.ones((3, 5))]
  with compilation.count() as seen:
    params = bpref.from_arrays(W, [np.zeros(5), np.zeros(3)], "tanh")
  assert seen.compilations == 0, seen
  assert all(isinstance(p.W, jax.Array) and p.W.dtype == np.float64 for p in params)
  traced = jax.jit(lambda W: bpref.from_arrays([W], None, "tanh")[0].W * 2)(W[0])
  np.testing.assert_array_equal(traced, 2 * W[0])


def test_forward_tape_holds_every_z_and_a():
  params = _net()
  x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 3)))
  tape = bpref.forward(params, x)
  assert len(tape.z) == 2 and len(tape.a) == 3
  assert tape.a[0] is x or np.array_equal(tape.a[0], x)
  z1 = np.asarray(x) @ np.asarray(params[0].W).T + np.asarray(params[0].b)
  np.testing.assert_allclose(np.asarray(tape.z[0]), z1, rtol=1e-14)
  np.testing.assert_allclose(np.asarray(tape.a[1]), np.tanh(z1), rtol=1e-14)
  np.testing.assert_array_equal(np.asarray(bpref.predict(params, x)), np.asarray(tape.a[-1]))
  single = bpref.forward(params, x[0])
  assert single.z[0].shape == (4,) and single.a[-1].shape == (2,)


def test_inputs_are_never_modified():
  params = _net()
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, 3))
  t = rng.normal(size=(5, 2))
  before = [np.array(leaf) for leaf in jax.tree_util.tree_leaves(params)]
  x0, t0 = x.copy(), t.copy()
  for fn in (bpref.value_and_grad, bpref.deltas, bpref.input_grad):
    fn(params, x, t)
  bpref.per_example_grads(params, x, t)
  bpref.lambdas(params, x)
  np.testing.assert_array_equal(x, x0)
  np.testing.assert_array_equal(t, t0)
  for b, a in zip(before, jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(b, np.asarray(a))


# ---------------------------------------------------------------- bad input


def test_mismatched_layer_shapes_name_the_layer():
  W = [jnp.ones((4, 3)), jnp.ones((2, 5))]
  with pytest.raises(ValueError, match=r"layer 2: W has shape \(2, 5\) but layer 1 outputs 4 units"):
    bpref.from_arrays(W, None, "tanh")


def test_bias_of_wrong_shape():
  with pytest.raises(ValueError, match=r"layer 1: b must have shape \(4,\)"):
    bpref.from_arrays([jnp.ones((4, 3))], [jnp.ones(3)], "tanh")


def test_x_of_wrong_width_and_rank():
  params = _net()
  with pytest.raises(ValueError, match="x has 5 features .* expects n_0 = 3"):
    bpref.predict(params, jnp.ones((2, 5)))
  with pytest.raises(ValueError, match=r"x must have shape \(B, n_0\)"):
    bpref.predict(params, jnp.ones((2, 3, 1)))
  with pytest.raises(TypeError, match="x must be an array"):
    bpref.predict(params, [[1.0, 2.0, 3.0]])


def test_t_of_wrong_width_or_batch():
  params = _net()
  x = jnp.ones((4, 3))
  with pytest.raises(ValueError, match=r"t must have shape \(B, n_L\) = \(4, 2\)"):
    bpref.grad(params, x, jnp.ones((4, 3)))
  with pytest.raises(ValueError, match="t has batch size 5 but x has 4"):
    bpref.grad(params, x, jnp.ones((5, 2)))


def test_cross_entropy_targets_of_wrong_shape():
  params = _net(acts=("tanh", "identity"))
  x = jnp.ones((4, 3))
  with pytest.raises(ValueError, match="softmax_cross_entropy targets"):
    bpref.grad(params, x, jnp.ones((4,)), loss="softmax_cross_entropy")
  with pytest.raises(TypeError, match="one-hot"):
    bpref.grad(params, x, jnp.zeros((4,), jnp.int32), loss="softmax_cross_entropy")


def test_non_floating_and_mixed_dtypes():
  with pytest.raises(TypeError, match="layer 1: W must have a floating dtype; got int32"):
    bpref.from_arrays([jnp.ones((4, 3), jnp.int32)], None, "tanh")
  with pytest.raises(TypeError, match="layer 2: W has dtype float32 but layer 1 has float64"):
    bpref.from_arrays([jnp.ones((4, 3)), jnp.ones((2, 4), jnp.float32)], None, "tanh")
  params = _net()
  with pytest.raises(TypeError, match="x has dtype float32 but the parameters have float64"):
    bpref.predict(params, jnp.ones((2, 3), jnp.float32))
  with pytest.raises(TypeError, match="x must have the parameters' floating dtype"):
    bpref.predict(params, jnp.ones((2, 3), jnp.int32))


def test_unknown_names_list_the_valid_ones():
  with pytest.raises(ValueError, match="unknown activation 'rellu'; valid names: identity"):
    bpref.from_arrays([jnp.ones((4, 3))], None, "rellu")
  params = _net()
  with pytest.raises(ValueError, match="unknown loss 'mse'; valid names: squared_error"):
    bpref.grad(params, jnp.ones((2, 3)), jnp.ones((2, 2)), loss="mse")
  with pytest.raises(ValueError, match="unknown reduction 'avg'"):
    bpref.grad(params, jnp.ones((2, 3)), jnp.ones((2, 2)), reduction="avg")


def test_softmax_only_in_the_output_layer():
  with pytest.raises(ValueError, match="layer 1: softmax is allowed only in the output layer"):
    _net(acts=("softmax", "identity"))
  _net(acts=("tanh", "softmax"))


def test_probability_losses_require_their_output_layer():
  params = _net(acts=("tanh", "identity"))
  with pytest.raises(ValueError, match="'cross_entropy' takes probabilities from a softmax output"):
    bpref.grad(params, jnp.ones((2, 3)), jnp.full((2, 2), 0.5), loss="cross_entropy")


def test_zero_layers_zero_width_and_empty_batch():
  with pytest.raises(ValueError, match="zero layers"):
    bpref.predict((), jnp.ones((2, 3)))
  with pytest.raises(ValueError, match="every layer width must be >= 1"):
    bpref.init(jax.random.key(0), (3, 0, 2), "tanh")
  with pytest.raises(ValueError, match="layer 1: zero width"):
    bpref.from_arrays([jnp.ones((0, 3))], None, "tanh")
  with pytest.raises(ValueError, match="empty batch"):
    bpref.predict(_net(), jnp.ones((0, 3)))


def test_params_of_the_wrong_type():
  with pytest.raises(TypeError, match="got a single Layer"):
    bpref.predict(Layer(jnp.ones((2, 3)), None, "tanh"), jnp.ones((1, 3)))
  with pytest.raises(TypeError, match="layer 1: expected a bpref Layer record, got dict"):
    bpref.predict(({"W": 1},), jnp.ones((1, 3)))
  with pytest.raises(ValueError, match=r"sizes \(3, 4, 2\) define 2 layers but 1 activations"):
    bpref.init(jax.random.key(0), (3, 4, 2), ("tanh",))


def test_the_pipeline_stages_refuse_what_does_not_fit_the_tape():
  params = _net()  # sizes (3, 4, 2)
  x = jnp.ones((5, 3))
  tape = bpref.forward(params, x)
  t = jnp.zeros((5, 2))
  with pytest.raises(ValueError, match=r"t must have shape \(B, n_L\) = \(5, 2\) .* got shape \(5, 3\)"):
    bpref.output_delta(params, tape, jnp.zeros((5, 3)), "squared_error", "mean")
  with pytest.raises(ValueError, match="unknown reduction 'avg'; valid: mean, sum"):
    bpref.output_delta(params, tape, t, "squared_error", "avg")
  with pytest.raises(ValueError, match=r"a batch's, a_0 of shape \(B, 3\); got a_0 with shape \(3,\).*x\[None, :\]"):
    bpref.output_delta(params, bpref.forward(params, x[0]), t[0], "squared_error", "mean")
  with pytest.raises(ValueError, match="the tape has 1 z's and 2 a's but the network has 2 layers"):
    bpref.output_delta(params, bpref.forward(params[:1], jnp.ones((5, 3))), t, "squared_error", "mean")
  with pytest.raises(TypeError, match="tape must be the Tape"):
    bpref.backward(params, {"z": tape.z, "a": tape.a}, t)
  with pytest.raises(ValueError, match=r"delta_L must have shape \(B, n_L\) = \(5, 2\).*got shape \(5, 3\)"):
    bpref.backward(params, tape, jnp.ones((5, 3)))
  with pytest.raises(TypeError, match="delta_L has dtype float32 but the parameters have float64"):
    bpref.backward(params, tape, jnp.ones((5, 2), jnp.float32))
  with pytest.raises(ValueError, match=r"deltas must be \(delta_1, ..., delta_L\), one per layer \(2\); got 1 arrays"):
    bpref.param_grads(params, tape, (jnp.ones((5, 4)),))
  with pytest.raises(ValueError, match=r"delta_2 must have shape \(B, n_2\) = \(5, 2\); got shape \(4, 2\)"):
    bpref.param_grads(params, tape, (jnp.ones((5, 4)), jnp.ones((4, 2))))
  # what the stages accept, composed, is value_and_grad
  C, delta_L = bpref.output_delta(params, tape, t, "squared_error", "mean")
  grads = bpref.param_grads(params, tape, bpref.backward(params, tape, delta_L))
  C2, grads2 = bpref.value_and_grad(params, x, t)
  assert float(C) == float(C2)
  for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grads2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_composition_does_not_recheck_its_arguments_at_every_stage(monkeypatch):
  # value_and_grad checks its problem, and its forward pass its x; the stages it composes do not
  # check again (each public stage would check the whole network once more: 6 checks, not 2).
  from bpref import validation
  calls = []
  check_params = validation.check_params
  monkeypatch.setattr(validation, "check_params", lambda p: calls.append(1) or check_params(p))
  params = _net()
  bpref.value_and_grad(params, jnp.ones((4, 3)), jnp.zeros((4, 2)))
  assert len(calls) == 2
  calls.clear()
  tape = bpref.forward(params, jnp.ones((4, 3)))
  bpref.backward(params, tape, jnp.ones((4, 2)))
  assert len(calls) == 2  # forward's check of x, backward's of the tape


def test_errors_are_raised_under_jit_before_lowering():
  params = _net()
  f = jax.jit(bpref.value_and_grad, static_argnames=("loss", "reduction"))
  with pytest.raises(ValueError, match="t has batch size 5 but x has 4"):
    f(params, jnp.ones((4, 3)), jnp.ones((5, 2)))


def test_nan_and_inf_propagate():
  params = _net()
  x = jnp.asarray([[np.nan, 0.0, 1.0], [0.0, 1.0, 2.0]])
  C, grads = bpref.value_and_grad(params, x, jnp.zeros((2, 2)))
  assert np.isnan(float(C))
  assert np.isnan(np.asarray(grads[0].W)).any()


@pytest.mark.parametrize("sizes, words", [
    ((3.7, 4.2, 2), "sizes[0] (n_0) must be an integer width; got float 3.7"),
    ("342", "sizes must be a sequence of layer widths"),
    ((3, True, 2), "sizes[1] (n_1) must be an integer width; got bool"),
    (342, "sizes must be a sequence of layer widths"),
])
def test_init_rejects_sizes_that_are_not_integer_widths(sizes, words):
  with pytest.raises(TypeError, match=re.escape(words)):
    bpref.init(jax.random.key(0), sizes, "tanh")


@pytest.mark.parametrize("key", [0, None, 1.5, "0"])
def test_init_rejects_a_key_that_is_not_a_jax_random_key(key):
  with pytest.raises(TypeError, match="key must be a jax.random key"):
    bpref.init(key, (3, 4, 2), "tanh")


def test_init_takes_typed_and_legacy_keys_and_integer_arrays():
  typed = bpref.init(jax.random.key(1), np.array([3, 4, 2]), "tanh")
  legacy = bpref.init(jax.random.PRNGKey(1), (3, 4, 2), "tanh")
  assert [p.W.shape for p in typed] == [p.W.shape for p in legacy] == [(4, 3), (2, 4)]


@pytest.mark.parametrize("call", ["value_and_grad", "forward", "fast"])
def test_an_unknown_precision_is_named_before_tracing(call):
  params = bpref.init(jax.random.key(0), (3, 4, 2), "tanh")
  x, t = np.ones((2, 3)), np.zeros((2, 2))
  with pytest.raises(ValueError, match="precision must be a jax.lax.Precision.*got 'garbage'"):
    if call == "value_and_grad":
      bpref.value_and_grad(params, x, t, precision="garbage")
    elif call == "forward":
      bpref.forward(params, x, precision="garbage")
    else:
      from bpref.scale import fast
      fast.evaluate_many([(params, x, t)], precision="garbage")
