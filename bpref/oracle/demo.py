"""``bpref check --demo``: the oracle on a textbook NumPy backprop, then on the same code with a bug.

``grads`` is the backprop a course teaches, written the usual way in NumPy (rows are
examples, W_l of shape (n_l, n_{l-1}), squared error averaged over the batch);
``grads_with_bug`` is the same code with one line forgotten: the hidden layers' f'. The
demo checks both and prints the two reports: a PASS that says how much it checked, and the
minimal failing network with the bug named.
"""

from __future__ import annotations

import numpy as np

ACTIVATIONS = ("identity", "relu", "tanh", "sigmoid")
"""What the textbook code handles; the demo's search draws from these."""


def _f(name, z):
  if name == "relu":
    return np.maximum(z, 0.0)
  if name == "tanh":
    return np.tanh(z)
  if name == "sigmoid":
    return 1.0 / (1.0 + np.exp(-z))
  return z


def _df(name, z, a):
  if name == "relu":
    return (z > 0).astype(z.dtype)
  if name == "tanh":
    return 1.0 - a ** 2
  if name == "sigmoid":
    return a * (1.0 - a)
  return np.ones_like(z)


def _backprop(weights, biases, activations, loss, x, t, hidden_fprime=True):
  if loss != "squared_error":
    raise ValueError(f"this textbook code knows squared_error only; got {loss}")
  a, zs = [x], []
  for W, b, f in zip(weights, biases, activations):
    zs.append(a[-1] @ W.T + b)
    a.append(_f(f, zs[-1]))
  L = len(weights)
  delta = 2.0 * (a[-1] - t) / x.shape[0] * _df(activations[-1], zs[-1], a[-1])
  dW, db = [None] * L, [None] * L
  for l in reversed(range(L)):
    dW[l] = delta.T @ a[l]
    db[l] = delta.sum(axis=0)
    if l > 0:
      delta = delta @ weights[l]
      if hidden_fprime:
        delta = delta * _df(activations[l - 1], zs[l - 1], a[l])
  return dW, db


def grads(weights, biases, activations, loss, x, t):
  """The textbook backprop: correct."""
  return _backprop(weights, biases, activations, loss, x, t)


def grads_with_bug(weights, biases, activations, loss, x, t):
  """The same code with the hidden layers' f' left out of the delta recursion."""
  return _backprop(weights, biases, activations, loss, x, t, hidden_fprime=False)


def run(examples: int = 20, seed: int = 0) -> tuple:
  """Check both candidates; (report on grads, report on grads_with_bug)."""
  from bpref import oracle

  options = dict(activations=ACTIVATIONS, losses=("squared_error",), reduction="mean",
                 examples=examples, seed=seed)
  return oracle.check(grads, **options), oracle.check(grads_with_bug, **options)
