"""Code bpref did not write passes: PyTorch autograd and scikit-learn's MLP derivatives.

Both compute f' the common way (torch's tanh backward is 1 - a^2, scikit-learn's
``DERIVATIVES`` are 1 - a^2 and a (1 - a) in place), so once a unit saturates their
error is absolute, not relative to f'; a 200-example search in either dtype must not
call them wrong. Skipped where torch or scikit-learn is not installed (CI installs both).
"""

from __future__ import annotations

import pytest

import bpref.oracle

HIDDEN = ("identity", "relu", "tanh", "sigmoid")


def torch_autograd(weights, biases, activations, loss, x, t):
  import torch

  f = {"identity": lambda z: z, "relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}
  Ws = [torch.tensor(W, requires_grad=True) for W in weights]
  bs = [torch.tensor(b, requires_grad=True) for b in biases]
  a = torch.tensor(x)
  for W, b, name in zip(Ws, bs, activations):
    a = f[name](a @ W.T + b)
  ((a - torch.tensor(t)) ** 2).sum(dim=1).mean().backward()  # squared_error, mean
  return [W.grad.numpy() for W in Ws], [b.grad.numpy() for b in bs]


def sklearn_mlp(weights, biases, activations, loss, x, t):
  # The backward pass of sklearn.neural_network.MLPRegressor: coefs (in, out), its in-place
  # activation and derivative functions, half squared error averaged over the batch.
  from sklearn.neural_network import _base as base

  names = {"identity": "identity", "tanh": "tanh", "sigmoid": "logistic", "relu": "relu"}
  coefs = [W.T.copy() for W in weights]
  acts = [x]
  for W, b, name in zip(coefs, biases, activations):
    z = acts[-1] @ W + b
    base.ACTIVATIONS[names[name]](z)
    acts.append(z)
  delta = acts[-1] - t
  if activations[-1] != "identity":
    base.DERIVATIVES[names[activations[-1]]](acts[-1], delta)
  dW, db = [None] * len(coefs), [None] * len(coefs)
  for l in range(len(coefs) - 1, -1, -1):
    dW[l] = (acts[l].T @ delta / x.shape[0]).T
    db[l] = delta.mean(axis=0)
    if l:
      delta = delta @ coefs[l].T
      base.DERIVATIVES[names[activations[l - 1]]](acts[l], delta)
  return dW, db


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("candidate, loss, needs", [(torch_autograd, "squared_error", "torch"),
                                                    (sklearn_mlp, "half_squared_error", "sklearn")])
def test_outside_code_passes_a_200_example_search(candidate, loss, needs, dtype):
  pytest.importorskip(needs)  # here, not in the candidate: the oracle reports what a candidate raises
  report = bpref.oracle.check(candidate, activations=HIDDEN, losses=(loss,), examples=200,
                              seed=0, dtype=dtype)
  assert report.verdict == "pass", report.text()
  assert report.cases >= 150


def test_a_planted_bug_in_the_scikit_learn_backward_is_caught():
  pytest.importorskip("sklearn")

  def sum_not_mean(weights, biases, activations, loss, x, t):
    dW, db = sklearn_mlp(weights, biases, activations, loss, x, t)
    return [g * x.shape[0] for g in dW], [g * x.shape[0] for g in db]

  report = bpref.oracle.check(sum_not_mean, activations=HIDDEN, losses=("half_squared_error",),
                              examples=20)
  assert report.verdict == "fail"
  assert "constant_factor" in report.codes
