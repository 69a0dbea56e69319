"""A textbook NumPy backprop, written the way courses, scikit-learn and numpy-ml write it.

It is correct, and it takes every derivative the common way rather than bpref's:
f' from the output a where a textbook does (tanh' = 1 - a^2, sigmoid' = a (1 - a),
softplus' = 1 - exp(-a), elu' = a + 1, softsign' = (1 - |a|)^2), relu' from a
comparison, Phi from 1 + erf, the softmax Jacobian built as diag(y) - y y^T, and
the probability losses from dC/dy times the output Jacobian. The oracle must pass
it in both dtypes, saturated units included; the tests plant bugs in copies of it.

``grads`` follows the oracle's candidate protocol:
grads(weights, biases, activations, loss, x, t) -> (dW, db, C), W_l of shape (n_l, n_{l-1}).
"""

from __future__ import annotations

import math

import numpy as np

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
_GELU_C = math.sqrt(2 / math.pi)
_erf = np.vectorize(math.erf, otypes=[np.float64])


def forward_f(name, z):
  if name == "identity":
    return z
  if name == "relu":
    return np.maximum(z, 0)
  if name == "leaky_relu":
    return np.where(z >= 0, z, 0.01 * z)
  if name == "tanh":
    return np.tanh(z)
  if name == "sigmoid":
    return 1 / (1 + np.exp(-z))
  if name == "softplus":
    return np.logaddexp(z, 0)
  if name == "elu":
    return np.where(z > 0, z, np.exp(np.minimum(z, 0)) - 1)
  if name == "selu":
    return SELU_SCALE * np.where(z > 0, z, SELU_ALPHA * (np.exp(np.minimum(z, 0)) - 1))
  if name == "softsign":
    return z / (1 + np.abs(z))
  if name == "silu":
    return z / (1 + np.exp(-z))
  if name == "mish":
    return z * np.tanh(np.logaddexp(z, 0))
  if name == "gelu":
    return 0.5 * z * (1 + _erf(z / math.sqrt(2)).astype(z.dtype))
  if name == "gelu_tanh":
    return 0.5 * z * (1 + np.tanh(_GELU_C * (z + 0.044715 * z ** 3)))
  if name == "sin":
    return np.sin(z)
  if name == "softmax":
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
  raise ValueError(name)


def derivative(name, z, a):
  """f'(z) the textbook way, mostly from a."""
  one = np.ones_like(z)
  if name == "identity":
    return one
  if name == "relu":
    return (z > 0).astype(z.dtype)
  if name == "leaky_relu":
    return np.where(z >= 0, one, 0.01 * one)
  if name == "tanh":
    return 1 - a ** 2
  if name == "sigmoid":
    return a * (1 - a)
  if name == "softplus":
    return 1 - np.exp(-a)
  if name == "elu":
    return np.where(z > 0, one, a + 1)
  if name == "selu":
    return np.where(z > 0, SELU_SCALE * one, a + SELU_SCALE * SELU_ALPHA)
  if name == "softsign":
    return (1 - np.abs(a)) ** 2
  if name == "silu":
    s = 1 / (1 + np.exp(-z))
    return s * (1 + z * (1 - s))
  if name == "mish":  # torch's mish backward
    s = 1 / (1 + np.exp(-z))
    th = np.tanh(np.logaddexp(z, 0))
    return th + z * s * (1 - th * th)
  if name == "gelu":
    cdf = 0.5 * (1 + _erf(z / math.sqrt(2)).astype(z.dtype))
    return cdf + z * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
  if name == "gelu_tanh":
    th = np.tanh(_GELU_C * (z + 0.044715 * z ** 3))
    return 0.5 * (1 + th) + 0.5 * z * (1 - th ** 2) * _GELU_C * (1 + 3 * 0.044715 * z ** 2)
  if name == "sin":
    return np.cos(z)
  raise ValueError(name)


def loss_and_dy(loss, y, t):
  """Per-example C_b summed over outputs, and dC_b/dy."""
  if loss == "squared_error":
    return ((y - t) ** 2).sum(axis=1), 2 * (y - t)
  if loss == "half_squared_error":
    return 0.5 * ((y - t) ** 2).sum(axis=1), y - t
  if loss == "huber":
    r = np.abs(y - t)
    return np.where(r <= 1, 0.5 * r * r, r - 0.5).sum(axis=1), np.clip(y - t, -1, 1)
  if loss == "cross_entropy":
    return -(t * np.log(y)).sum(axis=1), -t / y
  if loss == "binary_cross_entropy":
    return -(t * np.log(y) + (1 - t) * np.log(1 - y)).sum(axis=1), (y - t) / (y * (1 - y))
  if loss == "softmax_cross_entropy":
    shifted = y - y.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -(t * logp).sum(axis=1), np.exp(logp) * t.sum(axis=1, keepdims=True) - t
  if loss == "sigmoid_binary_cross_entropy":
    value = np.maximum(y, 0) - t * y + np.log1p(np.exp(-np.abs(y)))
    return value.sum(axis=1), 1 / (1 + np.exp(-y)) - t
  raise ValueError(loss)


def grads(weights, biases, activations, loss, x, t, reduction="mean"):
  """dC/dW_l, dC/db_l and C by the layerwise recursion, one Python loop per layer."""
  with np.errstate(over="ignore"):  # exp(-z) = inf gives sigma = 0, as it should
    return _grads(weights, biases, activations, loss, x, t, reduction, derivative)


def with_fprime(change):
  """``grads`` with f' replaced by change(name, z, a, textbook_fprime): a planted bug."""
  def fprime(name, z, a):
    return change(name, z, a, derivative(name, z, a))

  def candidate(weights, biases, activations, loss, x, t):
    with np.errstate(over="ignore"):
      return _grads(weights, biases, activations, loss, x, t, "mean", fprime)
  return candidate


def _grads(weights, biases, activations, loss, x, t, reduction, derivative):
  a, zs, acts = x, [], [x]
  for l, (W, name) in enumerate(zip(weights, activations)):
    z = a @ W.T + (biases[l] if biases is not None else 0)
    a = forward_f(name, z)
    zs.append(z)
    acts.append(a)
  scale = 1 / x.shape[0] if reduction == "mean" else 1
  fused = {"cross_entropy": "softmax_cross_entropy",
           "binary_cross_entropy": "sigmoid_binary_cross_entropy"}
  if loss in fused:  # delta_L = y - t, the loss from the logits z_L
    per_example, _ = loss_and_dy(fused[loss], zs[-1], t)
    total = t.sum(axis=1, keepdims=True) if loss == "cross_entropy" else 1
    delta = (a * total - t) * scale
  elif activations[-1] == "softmax":  # dC/dy times the Jacobian diag(y) - y y^T
    per_example, dy = loss_and_dy(loss, a, t)
    eye = np.eye(a.shape[1], dtype=a.dtype)
    jac = np.einsum("bi,ij->bij", a, eye) - a[:, :, None] * a[:, None, :]
    delta = np.einsum("bj,bji->bi", dy * scale, jac)
  else:
    per_example, dy = loss_and_dy(loss, a, t)
    delta = dy * scale * derivative(activations[-1], zs[-1], a)
  dW, db = [None] * len(weights), [None] * len(weights)
  for l in range(len(weights) - 1, -1, -1):
    dW[l] = delta.T @ acts[l]
    db[l] = delta.sum(axis=0)
    if l:
      delta = (delta @ weights[l]) * derivative(activations[l - 1], zs[l - 1], acts[l])
  value = np.asarray(per_example.sum() * scale, x.dtype)
  return dW, (db if biases is not None else None), value
