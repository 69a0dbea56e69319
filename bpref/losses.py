"""Losses C(y, t), each with its handwritten gradient dC/dy beside it.

Every loss is a pair of pure functions on one batch: ``value(y, t)`` gives the
per-example loss C_b, shape (B,), summed over the K outputs; ``dy(y, t)`` gives
dC_b/dy_b, shape (B, K). The batch is reduced by ``reduce``: ``"mean"``
divides by B, ``"sum"`` does not, and the handwritten gradient is scaled to match.

y and t have shape (B, K): rows are examples.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax.numpy as jnp

from bpref.activations import argmax_mask, sigmoid, softmax

Array = jnp.ndarray


class Loss(NamedTuple):
  """A loss with its gradient.

  Attributes:
    name: the name passed as ``loss=``.
    value: (y, t) -> C_b per example, shape (B,).
    dy: (y, t) -> dC_b/dy, shape (B, K).
    output: the output activation the loss expects y to come from, or None.
    logits: for a loss tied to its output activation, the name of the same loss written on
      the pre-activation z_L (C(f_L(z_L)) is that loss of z_L); the backward pass uses it so
      that delta_L stays finite and accurate when the output saturates.
    targets: what t may hold: "real" (any real), "distribution" (rows t >= 0: the
      cross-entropies are defined for any nonnegative row, not only rows that sum to 1) or
      "probabilities" (each entry in [0, 1]).
    on_logits: y are logits (z_L itself): a padded output unit is given a very negative
      logit rather than 0 (``bpref.scale.fast.pad_logit``).
    smooth: C is infinitely differentiable in y (huber's joint at |y - t| = 1 is not).
    min_outputs: the fewest outputs K for which C depends on y at all (log softmax of one
      unit is 0).
  """
  name: str
  value: Callable[[Array, Array], Array]
  dy: Callable[[Array, Array], Array]
  output: str | None = None
  logits: str | None = None
  targets: str = "real"
  on_logits: bool = False
  smooth: bool = True
  min_outputs: int = 1


# squared_error: C = sum_k (t_k - y_k)^2 (13); dC/dy = -2 (t - y) (14).
def _squared_error(y, t):
  return jnp.sum((t - y) ** 2, axis=-1)


def _squared_error_dy(y, t):
  return -2 * (t - y)


# half_squared_error: C = sum_k (t_k - y_k)^2 / 2; dC/dy = y - t.
def _half_squared_error(y, t):
  return 0.5 * jnp.sum((t - y) ** 2, axis=-1)


def _half_squared_error_dy(y, t):
  return y - t


def _log_softmax(y):
  shifted = y - jnp.max(y, axis=-1, keepdims=True)
  return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))


# softmax_cross_entropy (y are logits): C = -sum_k t_k log softmax(y)_k;
# dC/dy = softmax(y) sum_k t_k - t, which is softmax(y) - t only when the row of t sums to 1.
# At k = argmax y, p_k s - t_k is computed as (s - t_k) - s sum_{j != k} p_j: p_k rounds to 1
# once 1 - p_k is below the unit roundoff, and p_k - 1 would then lose every digit.
def _softmax_cross_entropy(y, t):
  return -jnp.sum(t * _log_softmax(y), axis=-1)


def _softmax_cross_entropy_dy(y, t):
  p = softmax(y)
  s = jnp.sum(t, axis=-1, keepdims=True)
  at_k = argmax_mask(y)
  rest = jnp.sum(jnp.where(at_k, jnp.zeros_like(p), p), axis=-1, keepdims=True)  # 1 - p_k
  return jnp.where(at_k, (s - t) - s * rest, p * s - t)


# sigmoid_binary_cross_entropy (y are logits): C = sum_k softplus(y_k) - t_k y_k
# = sum_k max(y, 0) - t y + log1p(exp(-|y|)); dC/dy = sigma(y) - t, computed for y > 0 as
# (1 - t) - sigma(-y): sigma(y) rounds to 1 once sigma(-y) is below the unit roundoff.
def _sigmoid_binary_cross_entropy(y, t):
  return jnp.sum(jnp.maximum(y, 0) - t * y + jnp.log1p(jnp.exp(-jnp.abs(y))), axis=-1)


def _sigmoid_binary_cross_entropy_dy(y, t):
  return jnp.where(y > 0, (1 - t) - sigmoid(-y), sigmoid(y) - t)


def _xlogy(x, y):
  # x log y with 0 log 0 = 0.
  safe = jnp.where(x == 0, jnp.ones_like(y), y)
  return jnp.where(x == 0, jnp.zeros_like(x), x * jnp.log(safe))


def _x_over_y(x, y):
  # x / y with 0 / 0 = 0.
  safe = jnp.where(x == 0, jnp.ones_like(y), y)
  return jnp.where(x == 0, jnp.zeros_like(x), x / safe)


# binary_cross_entropy (y are probabilities in (0, 1)):
# C = -sum_k t log y + (1 - t) log(1 - y); dC/dy = -t / y + (1 - t) / (1 - y).
def _binary_cross_entropy(y, t):
  return -jnp.sum(_xlogy(t, y) + _xlogy(1 - t, 1 - y), axis=-1)


def _binary_cross_entropy_dy(y, t):
  return -_x_over_y(t, y) + _x_over_y(1 - t, 1 - y)


# cross_entropy (y are probabilities): C = -sum_k t_k log y_k; dC/dy = -t / y.
def _cross_entropy(y, t):
  return -jnp.sum(_xlogy(t, y), axis=-1)


def _cross_entropy_dy(y, t):
  return -_x_over_y(t, y)


# huber (delta = 1), r = y - t: C = sum_k r^2 / 2 where |r| <= 1, |r| - 1/2 elsewhere;
# dC/dy = clip(r, -1, 1).
def _huber(y, t):
  r = jnp.abs(y - t)
  return jnp.sum(jnp.where(r <= 1, 0.5 * r * r, r - 0.5), axis=-1)


def _huber_dy(y, t):
  return jnp.clip(y - t, -1, 1)


LOSSES: dict[str, Loss] = {
    loss.name: loss
    for loss in (
        Loss("squared_error", _squared_error, _squared_error_dy),
        Loss("half_squared_error", _half_squared_error, _half_squared_error_dy),
        Loss("softmax_cross_entropy", _softmax_cross_entropy, _softmax_cross_entropy_dy,
             targets="distribution", on_logits=True, min_outputs=2),
        Loss("sigmoid_binary_cross_entropy", _sigmoid_binary_cross_entropy,
             _sigmoid_binary_cross_entropy_dy, targets="probabilities", on_logits=True),
        Loss("binary_cross_entropy", _binary_cross_entropy, _binary_cross_entropy_dy, "sigmoid",
             "sigmoid_binary_cross_entropy", targets="probabilities"),
        Loss("cross_entropy", _cross_entropy, _cross_entropy_dy, "softmax", "softmax_cross_entropy",
             targets="distribution"),
        Loss("huber", _huber, _huber_dy, smooth=False),
    )
}
"""Every loss by name: each record holds every fact about it that bpref uses
(``tests/test_registry.py`` lists what a new one still lacks elsewhere)."""

REDUCTIONS = ("mean", "sum")


def get(name: str) -> Loss:
  """The loss called ``name``; a ValueError lists the valid names."""
  try:
    return LOSSES[name]
  except (KeyError, TypeError):
    raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(LOSSES)}") from None


def check_reduction(reduction: str) -> str:
  """``reduction`` if it is one of ``REDUCTIONS``; a ValueError lists them otherwise."""
  if reduction not in REDUCTIONS:
    raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}")
  return reduction


def reduce(per_example: Array, reduction: str) -> Array:
  """C = sum_b C_b, or (1/B) sum_b C_b for ``"mean"``."""
  check_reduction(reduction)
  total = jnp.sum(per_example, axis=0)
  return total / per_example.shape[0] if reduction == "mean" else total


def reduce_scale(batch: int, reduction: str) -> float:
  """dC/dC_b: 1/B for ``"mean"``, 1 for ``"sum"``."""
  check_reduction(reduction)
  return 1.0 / batch if reduction == "mean" else 1.0
