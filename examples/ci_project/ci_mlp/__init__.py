"""A small multilayer perceptron in NumPy, written the way many teams write one.

* Weights are stored (in, out): z_l = a_{l-1} @ W_l + b_l, rows are examples.
* Each activation's derivative is taken from its output a = f(z): tanh' = 1 - a^2,
  sigmoid' = a (1 - a), relu' = [a > 0].
* ``loss="mse"`` is ``torch.nn.MSELoss()``: the squared error averaged over every output,
  mean over the B examples and the K units. ``loss="cross_entropy"`` is
  ``torch.nn.CrossEntropyLoss()`` on the logits of an identity output layer, with
  probability targets, averaged over the examples.

Planted bugs, for the test suite to catch, chosen by the environment variable CI_MLP_BUG
(read on every backward pass):

* ``transposed_dW``: dW_l = delta^T a_{l-1}, the (out, in) layout's formula in an (in, out) net;
* ``db_averaged_twice``: db_l = mean over the batch of delta_l, which already holds 1/B;
* ``ce_over_BK``: the cross-entropy's delta divided by B K, as for the MSE, not by B;
* ``tanh_prime``: tanh' = 1 - a instead of 1 - a^2.
"""

from __future__ import annotations

import os

import numpy as np

BUGS = ("transposed_dW", "db_averaged_twice", "ce_over_BK", "tanh_prime")


def _bug(name: str) -> bool:
  return os.environ.get("CI_MLP_BUG", "") == name


def _sigmoid(z):
  return 0.5 * (1.0 + np.tanh(0.5 * z))


ACTIVATIONS = {
    "identity": lambda z: z,
    "relu": lambda z: np.maximum(z, 0.0),
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
}


def derivative(name: str, a):
  """f'(z) from the output a = f(z)."""
  if name == "identity":
    return np.ones_like(a)
  if name == "relu":
    return (a > 0).astype(a.dtype)
  if name == "tanh":
    return 1.0 - a if _bug("tanh_prime") else 1.0 - a ** 2
  if name == "sigmoid":
    return a * (1.0 - a)
  raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")


def softmax(z):
  e = np.exp(z - z.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


class MLP:
  """A feed-forward network: W[l] of shape (n_l, n_{l+1}), b[l] of shape (n_{l+1},)."""

  def __init__(self, sizes, activations, loss: str = "mse", seed: int = 0):
    if len(activations) != len(sizes) - 1:
      raise ValueError(f"{len(sizes) - 1} layers need {len(sizes) - 1} activations, "
                       f"got {len(activations)}")
    if loss not in ("mse", "cross_entropy"):
      raise ValueError(f"loss must be 'mse' or 'cross_entropy', got {loss!r}")
    rng = np.random.default_rng(seed)
    self.W = [rng.normal(size=(n_in, n_out)) / np.sqrt(n_in)
              for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    self.b = [np.zeros(n_out) for n_out in sizes[1:]]
    self.activations = list(activations)
    self.loss = loss

  def forward(self, x):
    """The prediction; keeps every layer's output for ``backward``."""
    self.a = [x]
    for W, b, name in zip(self.W, self.b, self.activations):
      self.a.append(ACTIVATIONS[name](self.a[-1] @ W + b))
    return self.a[-1]

  def loss_value(self, t) -> float:
    y = self.a[-1]
    if self.loss == "mse":
      return float(np.mean((y - t) ** 2))
    logp = y - y.max(axis=1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
    return float(-(t * logp).sum(axis=1).mean())

  def backward(self, t):
    """dW[l], db[l]: the gradient of ``loss_value`` after ``forward``."""
    y = self.a[-1]
    batch = t.shape[0]
    if self.loss == "mse":
      delta = 2.0 * (y - t) / t.size * derivative(self.activations[-1], y)
    else:  # softmax and cross-entropy together, on the logits y (an identity output layer)
      delta = (softmax(y) - t) / (t.size if _bug("ce_over_BK") else batch)
    self.dW = [None] * len(self.W)
    self.db = [None] * len(self.W)
    for l in reversed(range(len(self.W))):
      self.dW[l] = delta.T @ self.a[l] if _bug("transposed_dW") else self.a[l].T @ delta
      self.db[l] = delta.mean(axis=0) if _bug("db_averaged_twice") else delta.sum(axis=0)
      if l:
        delta = (delta @ self.W[l].T) * derivative(self.activations[l - 1], self.a[l])
    return self.dW, self.db

  def step(self, lr: float = 0.1):
    """One step of gradient descent with the gradients of the last ``backward``."""
    self.W = [W - lr * dW for W, dW in zip(self.W, self.dW)]
    self.b = [b - lr * db for b, db in zip(self.b, self.db)]
