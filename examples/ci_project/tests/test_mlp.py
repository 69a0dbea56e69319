"""ci_mlp's backprop against bpref: the whole backprop by the oracle, one activation by the op
oracle, property tests against bpref's gradients, a training network against bpref's public
functions, and a plain test of the loss."""

import numpy as np
from hypothesis import given

import bpref
from bpref.testing import assert_backprop_correct, assert_op_correct, reference_grads
from bpref.testing import strategies as bst
from ci_mlp import ACTIVATIONS, MLP, derivative

ACTS = ("relu", "tanh", "sigmoid", "identity")
LOSSES = {"squared_error": "mse", "softmax_cross_entropy": "cross_entropy"}  # bpref's name: ours
LOGITS = {"softmax_cross_entropy": ("identity",)}  # our cross-entropy takes an identity output layer


def grads(weights, biases, activations, loss, x, t):
  """The candidate protocol of bpref.oracle, W_l in our (in, out) layout (layout="in_out")."""
  sizes = [weights[0].shape[0]] + [W.shape[1] for W in weights]
  net = MLP(sizes, activations, loss=LOSSES[loss])
  net.W, net.b = [W.copy() for W in weights], [b.copy() for b in biases]
  net.forward(x)
  dW, db = net.backward(t)
  # ×K: our MSE averages over the K outputs as torch does; bpref's squared_error sums them.
  k = t.shape[1] if loss == "squared_error" else 1
  return [g * k for g in dW], [g * k for g in db]


def test_mse_backprop_matches_bpref():
  assert_backprop_correct(grads, activations=ACTS, losses=("squared_error",), layout="in_out")


def test_cross_entropy_backprop_matches_bpref():
  assert_backprop_correct(grads, activations=ACTS, losses=("softmax_cross_entropy",),
                          output_activations=LOGITS, layout="in_out")


def test_tanh_derivative_matches_bpref():
  assert_op_correct("activation", lambda z, dout: dout * derivative("tanh", np.tanh(z)),
                    name="tanh")


@given(bst.problems(activations=ACTS, layout="in_out"))
def test_mse_gradients_equal_bpref_on_drawn_networks(problem):
  dW, db = grads(*problem.arrays())  # the arrays in the (in, out) layout
  ref = reference_grads(problem)  # bpref's, in the same layout
  for mine, want in zip(dW + db, ref.dW + ref.db):
    np.testing.assert_allclose(mine, want, rtol=1e-9, atol=1e-12)


@given(bst.problems(activations=ACTS, losses=("softmax_cross_entropy",), output_activations=LOGITS,
                    layout="in_out"))
def test_cross_entropy_gradients_equal_bpref_on_drawn_networks(problem):
  dW, db = grads(*problem.arrays())
  ref = reference_grads(problem)
  for mine, want in zip(dW + db, ref.dW + ref.db):
    np.testing.assert_allclose(mine, want, rtol=1e-9, atol=1e-12)


def test_gradients_of_a_training_network_equal_bpref():
  """Our own network as we train it, against bpref's public functions (W_l is (out, in) there)."""
  net = MLP((4, 8, 8, 3), ("tanh", "relu", "identity"), seed=1)
  rng = np.random.default_rng(2)
  x, t = rng.normal(size=(16, 4)), rng.normal(size=(16, 3))
  net.forward(x)
  dW, db = net.backward(t)
  params = bpref.from_arrays([W.T for W in net.W], net.b, net.activations)
  ref = bpref.grad(params, x, t, loss="squared_error", reduction="mean")
  for l, layer in enumerate(ref):
    np.testing.assert_allclose(dW[l] * 3, np.asarray(layer.W).T, rtol=1e-10, atol=1e-14)  # ×K = 3
    np.testing.assert_allclose(db[l] * 3, np.asarray(layer.b), rtol=1e-10, atol=1e-14)


def test_mse_is_the_mean_over_examples_and_outputs():
  net = MLP((2, 3), ("identity",))
  x, t = np.array([[1.0, 2.0]]), np.zeros((1, 3))
  y = net.forward(x)
  assert net.loss_value(t) == np.mean(y ** 2)
  assert set(ACTIVATIONS) == set(ACTS)
