"""Each loss's handwritten dC/dy against jax.grad of C, and the values against direct formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bpref import losses as L
from bpref.testing import problems

U64 = 2.0 ** -53
ULPS = 64  # a handful of operations per element, each rounding by at most u


def _yt(loss, rng, shape=(6, 4)):
  t = problems.targets(rng, loss, shape)
  if loss == "binary_cross_entropy":
    y = rng.uniform(0.02, 0.98, size=shape)
  elif loss == "cross_entropy":
    logits = rng.normal(size=shape)
    y = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  else:
    y = rng.normal(size=shape) * 2
  return jnp.asarray(y), jnp.asarray(t)


@pytest.mark.parametrize("reduction", L.REDUCTIONS)
@pytest.mark.parametrize("name", list(L.LOSSES))
def test_loss_gradient_matches_jax_grad(name, reduction):
  rng = np.random.default_rng(1)
  y, t = _yt(name, rng)
  loss = L.get(name)
  ours = loss.dy(y, t) * L.reduce_scale(y.shape[0], reduction)
  theirs = jax.grad(lambda y_: L.reduce(loss.value(y_, t), reduction))(y)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=ULPS * U64,
                             atol=ULPS * U64 * float(jnp.max(jnp.abs(theirs))))


def test_loss_values_match_their_definitions():
  rng = np.random.default_rng(2)
  y = rng.normal(size=(5, 3))
  t = rng.normal(size=(5, 3))
  p = rng.uniform(0.05, 0.95, size=(5, 3))
  q = rng.uniform(size=(5, 3))
  probs = problems.targets(rng, "cross_entropy", (5, 3))
  r = y - t
  expected = {
      "squared_error": ((t - y) ** 2).sum(-1),
      "half_squared_error": 0.5 * ((t - y) ** 2).sum(-1),
      "huber": np.where(np.abs(r) <= 1, 0.5 * r ** 2, np.abs(r) - 0.5).sum(-1),
      "softmax_cross_entropy": -(probs * (y - np.log(np.exp(y).sum(-1, keepdims=True)))).sum(-1),
      "sigmoid_binary_cross_entropy":
          -(q * np.log(1 / (1 + np.exp(-y))) + (1 - q) * np.log(1 - 1 / (1 + np.exp(-y)))).sum(-1),
      "binary_cross_entropy": -(q * np.log(p) + (1 - q) * np.log(1 - p)).sum(-1),
      "cross_entropy": -(probs * np.log(p)).sum(-1),
  }
  args = {"softmax_cross_entropy": (y, probs), "sigmoid_binary_cross_entropy": (y, q),
          "binary_cross_entropy": (p, q), "cross_entropy": (p, probs)}
  for name, value in expected.items():
    yy, tt = args.get(name, (y, t))
    got = L.get(name).value(jnp.asarray(yy), jnp.asarray(tt))
    np.testing.assert_allclose(np.asarray(got), value, rtol=1e-13, err_msg=name)


def test_softmax_cross_entropy_gradient_is_y_minus_t_only_for_normalized_targets():
  y = jnp.asarray([[0.3, -1.0, 2.0]])
  t = jnp.asarray([[0.2, 0.2, 0.2]])  # sums to 0.6
  g = L.get("softmax_cross_entropy").dy(y, t)
  s = jax.nn.softmax(y)
  np.testing.assert_allclose(np.asarray(g), np.asarray(0.6 * s - t), rtol=1e-14)
  assert not np.allclose(np.asarray(g), np.asarray(s - t))


def test_logit_losses_are_finite_for_huge_logits():
  y = jnp.asarray([[1e3, -1e3, 0.0]])
  for name, t in [("softmax_cross_entropy", jnp.asarray([[0.0, 1.0, 0.0]])),
                  ("sigmoid_binary_cross_entropy", jnp.asarray([[0.0, 1.0, 0.5]]))]:
    loss = L.get(name)
    assert np.isfinite(np.asarray(loss.value(y, t))).all(), name
    assert np.isfinite(np.asarray(loss.dy(y, t))).all(), name
  # sigmoid BCE at y = -1e3 with t = 1 costs exactly 1e3
  np.testing.assert_allclose(
      np.asarray(L.get("sigmoid_binary_cross_entropy").value(jnp.asarray([[-1e3]]), jnp.asarray([[1.0]]))),
      [1e3], rtol=1e-15)


def test_probability_losses_treat_zero_targets_as_zero_terms():
  y = jnp.asarray([[0.0, 1.0]])
  t = jnp.asarray([[0.0, 1.0]])
  # 0 log 0 = 0 and 0 / 0 = 0 for a zero target; the other terms keep their derivative:
  # d/dy[-log y] = -1/y and d/dy[-log(1 - y)] = 1/(1 - y).
  expected_dy = {"cross_entropy": [[0.0, -1.0]], "binary_cross_entropy": [[1.0, -1.0]]}
  for name, dy in expected_dy.items():
    assert float(L.get(name).value(y, t)[0]) == 0.0, name
    np.testing.assert_array_equal(np.asarray(L.get(name).dy(y, t)), dy, err_msg=name)


def test_reduction_mean_divides_by_batch():
  rng = np.random.default_rng(3)
  y, t = _yt("squared_error", rng, (7, 2))
  per = L.get("squared_error").value(y, t)
  assert float(L.reduce(per, "mean")) == pytest.approx(float(L.reduce(per, "sum")) / 7, rel=1e-15)


def test_unknown_loss_and_reduction_are_rejected():
  with pytest.raises(ValueError, match="valid names: squared_error"):
    L.get("mse")
  with pytest.raises(ValueError, match="valid: mean, sum"):
    L.check_reduction("avg")
  with pytest.raises(ValueError, match="valid: mean, sum"):
    L.reduce(jnp.ones(3), "avg")  # not silently a sum
  with pytest.raises(ValueError, match="valid: mean, sum"):
    L.reduce_scale(3, "Mean")
