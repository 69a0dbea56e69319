"""CS231n-style layers in NumPy: forward and backward functions as a course assignment has them.

Each ``*_forward`` returns ``(out, cache)`` and each ``*_backward(dout, cache)`` returns the
gradients, looping where the naive versions loop. ``CNN`` maps each op kind to its backward
function for ``bpref check --op block --op-name cnn --signature cs231n``; the ``*_op`` functions
adapt batch normalization and dropout to the argument orders of their op kinds (README.md).

Planted bugs, one per layer, for bpref to find and name, chosen by the environment variable
CS231N_BUG (a comma-separated list plants several); ``BUGS`` says what each one changes.
"""

import os

import numpy as np

BUGS = {
    "affine": "db summed over the features (axis 1) instead of over the batch",
    "relu": "the mask taken where x < 0, the comparison turned around",
    "conv": "the windows of dx assigned (=) where they overlap, not added (+=)",
    "maxpool": "every entry equal to the window's maximum gets dout, ties included",
    "batchnorm": "the gradient through the batch variance left out",
    "dropout": "dout divided by the keep probability again, the mask already scaled",
    "softmax": "dx not divided by the batch size N",
}


def _bug(name: str) -> bool:
  return name in os.environ.get("CS231N_BUG", "").split(",")


# ---------------------------------------------------------------- affine

def affine_forward(x, w, b):
  """out = x w + b, x (N, d_1, ..., d_k) read as (N, D) rows, w (D, M), b (M,)."""
  out = x.reshape(x.shape[0], -1) @ w + b
  return out, (x, w, b)


def affine_backward(dout, cache):
  x, w, b = cache
  rows = x.reshape(x.shape[0], -1)
  dx = (dout @ w.T).reshape(x.shape)
  dw = rows.T @ dout
  db = dout.sum(axis=1) if _bug("affine") else dout.sum(axis=0)
  return dx, dw, db


# ---------------------------------------------------------------- relu

def relu_forward(x):
  return np.maximum(0, x), x


def relu_backward(dout, cache):
  x = cache
  return dout * (x < 0) if _bug("relu") else dout * (x > 0)


# ---------------------------------------------------------------- convolution, naive

def conv_forward_naive(x, w, b, conv_param):
  """x (N, C, H, W), w (F, C, HH, WW), b (F,); conv_param {"stride", "pad"}."""
  stride, pad = conv_param["stride"], conv_param["pad"]
  N, C, H, W = x.shape
  F, _, HH, WW = w.shape
  H_out = 1 + (H + 2 * pad - HH) // stride
  W_out = 1 + (W + 2 * pad - WW) // stride
  x_pad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  out = np.zeros((N, F, H_out, W_out), dtype=x.dtype)
  for n in range(N):
    for f in range(F):
      for i in range(H_out):
        for j in range(W_out):
          window = x_pad[n, :, i * stride:i * stride + HH, j * stride:j * stride + WW]
          out[n, f, i, j] = np.sum(window * w[f]) + b[f]
  return out, (x, w, b, conv_param)


def conv_backward_naive(dout, cache):
  x, w, b, conv_param = cache
  stride, pad = conv_param["stride"], conv_param["pad"]
  N, C, H, W = x.shape
  F, _, HH, WW = w.shape
  _, _, H_out, W_out = dout.shape
  x_pad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  dx_pad = np.zeros_like(x_pad)
  dw = np.zeros_like(w)
  db = np.zeros_like(b)
  for n in range(N):
    for f in range(F):
      db[f] += dout[n, f].sum()
      for i in range(H_out):
        for j in range(W_out):
          rows = slice(i * stride, i * stride + HH)
          cols = slice(j * stride, j * stride + WW)
          dw[f] += x_pad[n, :, rows, cols] * dout[n, f, i, j]
          if _bug("conv"):
            dx_pad[n, :, rows, cols] = w[f] * dout[n, f, i, j]
          else:
            dx_pad[n, :, rows, cols] += w[f] * dout[n, f, i, j]
  dx = dx_pad[:, :, pad:pad + H, pad:pad + W]
  return dx, dw, db


# ---------------------------------------------------------------- max pooling, naive

def max_pool_forward_naive(x, pool_param):
  """x (N, C, H, W); pool_param {"pool_height", "pool_width", "stride"}."""
  ph, pw, stride = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
  N, C, H, W = x.shape
  H_out = 1 + (H - ph) // stride
  W_out = 1 + (W - pw) // stride
  out = np.zeros((N, C, H_out, W_out), dtype=x.dtype)
  for i in range(H_out):
    for j in range(W_out):
      out[:, :, i, j] = x[:, :, i * stride:i * stride + ph, j * stride:j * stride + pw].max(axis=(2, 3))
  return out, (x, pool_param)


def max_pool_backward_naive(dout, cache):
  x, pool_param = cache
  ph, pw, stride = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
  N, C, H, W = x.shape
  _, _, H_out, W_out = dout.shape
  dx = np.zeros_like(x)
  for n in range(N):
    for c in range(C):
      for i in range(H_out):
        for j in range(W_out):
          window = x[n, c, i * stride:i * stride + ph, j * stride:j * stride + pw]
          if _bug("maxpool"):
            mask = window == window.max()
          else:
            mask = np.zeros_like(window, dtype=bool)
            mask[np.unravel_index(np.argmax(window), window.shape)] = True
          dx[n, c, i * stride:i * stride + ph, j * stride:j * stride + pw] += mask * dout[n, c, i, j]
  return dx


# ---------------------------------------------------------------- batch normalization

def batchnorm_forward(x, gamma, beta, bn_param):
  """Training mode: x (N, D) normalized per feature over the batch; bn_param {"eps"}."""
  eps = bn_param.get("eps", 1e-5)
  mu = x.mean(axis=0)
  xc = x - mu
  var = (xc ** 2).mean(axis=0)
  std = np.sqrt(var + eps)
  xhat = xc / std
  out = gamma * xhat + beta
  return out, (xhat, xc, std, gamma)


def batchnorm_backward(dout, cache):
  """The staged graph, node by node."""
  xhat, xc, std, gamma = cache
  N = dout.shape[0]
  dbeta = dout.sum(axis=0)
  dgamma = (dout * xhat).sum(axis=0)
  dxhat = dout * gamma
  dxc = dxhat / std
  dstd = -((dxhat * xc) / std ** 2).sum(axis=0)
  dvar = 0.5 * dstd / std
  if not _bug("batchnorm"):
    dxc += 2.0 * xc * dvar / N
  dmu = -dxc.sum(axis=0)
  dx = dxc + dmu / N
  return dx, dgamma, dbeta


def spatial_batchnorm_forward(x, gamma, beta, bn_param):
  """x (N, C, H, W) normalized per channel over (N, H, W): the channels moved last."""
  N, C, H, W = x.shape
  out, cache = batchnorm_forward(x.transpose(0, 2, 3, 1).reshape(-1, C), gamma, beta, bn_param)
  return out.reshape(N, H, W, C).transpose(0, 3, 1, 2), cache


def spatial_batchnorm_backward(dout, cache):
  N, C, H, W = dout.shape
  dx, dgamma, dbeta = batchnorm_backward(dout.transpose(0, 2, 3, 1).reshape(-1, C), cache)
  return dx.reshape(N, H, W, C).transpose(0, 3, 1, 2), dgamma, dbeta


def batchnorm_op(x, gamma, beta, dout):
  """The batchnorm op kind's call (x, gamma, beta, dout): forward, then backward."""
  forward, backward = ((spatial_batchnorm_forward, spatial_batchnorm_backward) if x.ndim == 4
                       else (batchnorm_forward, batchnorm_backward))
  _, cache = forward(x, gamma, beta, {"mode": "train"})
  return backward(dout, cache)


# ---------------------------------------------------------------- dropout (inverted)

def dropout_forward(x, dropout_param):
  """dropout_param {"p": the keep probability, "mode", "seed"}; the mask is scaled by 1 / p."""
  p = dropout_param["p"]
  rng = np.random.default_rng(dropout_param.get("seed"))
  mask = (rng.random(x.shape) < p) / p
  return (x * mask).astype(x.dtype), (dropout_param, mask)


def dropout_backward(dout, cache):
  dropout_param, mask = cache
  dx = dout * mask
  if _bug("dropout"):
    dx = dx / dropout_param["p"]
  return dx.astype(dout.dtype)


KEEP = 0.5
"""The keep probability ``dropout_op`` checks: drop probability 1 - KEEP, ``--op-name p0.5``."""


def dropout_op(x, mask, dout):
  """The dropout op kind's call (x, mask, dout), its 0/1 mask scaled as CS231n keeps it."""
  return dropout_backward(dout, ({"p": KEEP, "mode": "train"}, mask / KEEP))


# ---------------------------------------------------------------- softmax loss

def softmax_loss(x, y):
  """(loss, dx): the mean softmax cross-entropy of scores x (N, K) and labels y (N,)."""
  N = x.shape[0]
  shifted = x - x.max(axis=1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  loss = -log_probs[np.arange(N), y].mean()
  dx = np.exp(log_probs)
  dx[np.arange(N), y] -= 1
  if not _bug("softmax"):
    dx /= N
  return loss, dx


# ---------------------------------------------------------------- the network's layers

CNN = {"conv2d": conv_backward_naive, "batchnorm": batchnorm_op, "activation": relu_backward,
       "maxpool2d": max_pool_backward_naive, "dense": affine_backward, "loss": softmax_loss}
"""The layer functions of conv - batchnorm - relu - 2x2 max pool - affine - softmax, by op kind."""
