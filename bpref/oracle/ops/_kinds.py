"""The five classic ops, their inputs, bpref's answer on them and the magnitude bound of every
output: one function per kind for each part (``draw_dense``, ``dense_truth``, ...), each called
by the kind's record in ``bpref.oracle.ops.classic``.

Each op is one Jacobian-transpose product of the backward pass (rows are examples):

* ``dense``: z = x W^T + b (7); dx = dout W (26), dW = dout^T x (39), db = sum_b dout.
* ``activation NAME``: a = f(z) (8); dz = dout * f'(z) (34), f' from ``bpref.activations``.
* ``softmax``: y = softmax(z); dz = dout (diag(y) - y y^T) = y * (dout - <dout, y>), bpref's VJP.
* ``loss NAME``: dC/dy of the reduced loss (``bpref.losses``), or for the probability losses
  the fused dC/dz of their logit twin, softmax(z) sum_k t_k - t or sigmoid(z) - t.
* ``layer``: one dense layer and its activation: delta = dout * f'(z) (34), then
  dx = delta W, dW = delta^T x (39), db = sum_b delta: the seed's (37) and (39) at one layer.

The values handed to a candidate are exact in its dtype; bpref computes on exactly those
values in float64. The error of each returned array X is measured normwise against a
magnitude bound M_X, the size of the terms summed into each entry, as in ``bpref.oracle.truth``:

  e(X) = ||X_candidate - X_bpref||_F / ||M_X||_F  <=  tol = c u 3 k          (T) with L = 1

with k the longest sum of the op (the batch or a width). The magnitude factor m of (T) is
applied per entry rather than per case: an op's inputs are exact, so only the arguments a
candidate rounds inside the op (z in a layer, z - max z in a softmax, the argument of tanh in
gelu_tanh) move f', each by |f''| times its own size. So

  M_dz = |dout| (|f'(z)| + phi_f(z, a) + |f''|(z) s + lambda / u) + lambda / u,   s = max(1, |z|)

where rho_f = phi_f + |f''| (``bpref.oracle.truth.rho``) is the absolute error of the standard
forms of f' (phi_f: 1 - a^2, a (1 - a), ..., ``bpref.oracle.textbook_forms``) and of a rounded z (its
|f''| term, ``Activation.d2f``), in units of u (proofs/tolerance.md). Only the |f''| term scales
with s: a form's own error is absolute, and it stops growing where its inner function
saturates ((S) of proofs/tolerance.md). The last terms are an underflow floor (U): an
operation may lose up to the smallest normal number lambda absolutely (gradual underflow, or a
flush to zero as XLA does on CPU), which a first-order model in u does not see. A softmax
output carries Y = y (s + <y, s>) (the rounding of exp(z - max z)) in place of y, a layer
s = max(1, Z) with Z = |x| |W|^T + |b| the terms of (7).
"""

from __future__ import annotations

import math
import jax
import jax.numpy as jnp
import numpy as np

from bpref import compilation
from bpref import activations as _activations
from bpref import backprop as _backprop
from bpref import losses as _losses
from bpref import tolerance as _tolerance
from bpref.network import DEFAULT_PRECISION
from bpref.oracle import textbook_forms as _textbook
from bpref.oracle import truth as _truth
from bpref.oracle.ops.record import (FAMILIES, Label, OpCase, OpSpec,
                                     OpTruth, bucket, exact, plain, scaled, unit_and_floor)
from bpref.scale import fast as _fast
from bpref.structures import Layer, Tape

KINDS = ("dense", "activation", "softmax", "loss", "layer")

SIGNATURES = ("bpref", "cs231n")
"""How a candidate is called: bpref's argument orders, or CS231n's (dout, cache)."""

A_INVERTIBLE = tuple(name for name, act in _activations.ACTIVATIONS.items()
                     if act.elementwise and (act.piecewise_linear or name in _textbook.A_FORMS))
"""Activations whose f'(z) is a function of a = f(z), so that takes="a" can be checked."""

PIECEWISE_LINEAR = tuple(name for name, act in _activations.ACTIVATIONS.items()
                         if act.piecewise_linear)
"""Activations searched up to the float32 limits: their f' needs no transcendental function.
The others are searched for |z| <= 1e3, where bpref's f' is documented accurate."""

REGRESSION = tuple(n for n, loss in _losses.LOSSES.items() if loss.targets == "real")
SOFTMAX_LOSSES = tuple(n for n, loss in _losses.LOSSES.items() if loss.targets == "distribution")
SIGMOID_LOSSES = tuple(n for n, loss in _losses.LOSSES.items() if loss.targets == "probabilities")

# ---------------------------------------------------------------- drawing the values

def _rng(spec: OpSpec, label: Label) -> np.random.Generator:
  return np.random.default_rng([label.seed, *label.dims, FAMILIES.index(label.family),
                                KINDS.index(spec.kind)])


DENSE_FAMILIES = ("plain", "normal", "spread", "kink", "huge", "tiny", "limit", "limit_tiny")
LAYER_FAMILIES = ("plain", "normal", "spread", "kink", "saturated", "tiny")
SOFTMAX_FAMILIES = LOSS_FAMILIES = ("plain", "normal", "spread", "kink", "saturated", "huge")
"""The value families searched for each kind, plainest first (an activation's: ``activation_families``)."""


def activation_families(spec: OpSpec) -> tuple:
  """An activation's families: the float32 limits too for a piecewise-linear one."""
  base = ("plain", "normal", "spread", "kink", "saturated", "huge", "tiny")
  if spec.name in PIECEWISE_LINEAR:
    base += ("limit",) + (("limit_tiny",) if spec.takes == "z" else ())
  return base


def _entries(rng, shape, family, dtype, role):
  """One array of a family; role "z" (an activation's argument), "product" (a factor of a
  dense product) or "small" (weights, kept moderate)."""
  f64 = dtype == "float64"
  if family == "plain":
    return plain(rng, shape)
  if family == "normal" or (family == "saturated" and role != "z"):
    return rng.normal(size=shape)
  if family == "spread":
    return rng.normal(size=shape) * 10.0 ** rng.uniform(-3, 3, shape)
  if family == "kink":
    v = rng.normal(size=shape)
    pick = rng.random(shape)
    v[pick < 0.25] = 0.0
    v[(pick >= 0.25) & (pick < 0.45)] = -0.0
    if v.size and not np.any(pick < 0.45):  # one kink at least: a kink case without one is not
      v.flat[int(np.argmin(pick))] = 0.0  # one, and a diagnosis that plants kinks needs it
    return v
  if family == "saturated":
    return scaled(rng, shape, 4.0, 40.0)
  if family == "huge":
    if role == "z":
      return scaled(rng, shape, 1e2, 1e3)
    return scaled(rng, shape, 0.5e15, 1e15) if not f64 else scaled(rng, shape, 0.5e100, 1e100)
  if family == "tiny":
    if role == "z":
      return scaled(rng, shape, 1e-31, 1e-29)
    return scaled(rng, shape, 0.5e-15, 1e-15) if not f64 else scaled(rng, shape, 0.5e-100, 1e-100)
  if family == "limit":
    if role == "z":
      return scaled(rng, shape, 1e37, 3e38)
    return scaled(rng, shape, 0.5e18, 1e18)
  if family == "limit_tiny":
    if role == "z":
      return scaled(rng, shape, 2e-38, 1e-37)
    return scaled(rng, shape, 0.5e-18, 1e-18)
  raise ValueError(f"unknown value family {family!r}")


def draw_dense(spec: OpSpec, label: Label) -> dict:
  """The primary arrays of a dense op's case named ``label``."""
  rng, fam, dt = _rng(spec, label), label.family, spec.dtype
  B, n_in, n_out = label.dims
  weight_family = {"limit": "limit_w", "limit_tiny": "limit_tiny_w"}.get(fam, fam)
  arrays = {"x": _entries(rng, (B, n_in), fam, dt, "product"),
            "W": _weights(rng, (n_out, n_in), weight_family, dt),
            "dout": _entries(rng, (B, n_out), fam, dt, "product")}
  if spec.bias:
    arrays["b"] = _entries(rng, (n_out,), fam, dt, "product")
  return arrays


def draw_layer(spec: OpSpec, label: Label) -> dict:
  """The primary arrays of a layer's case: x of the family, weights and dout moderate."""
  rng, fam, dt = _rng(spec, label), label.family, spec.dtype
  B, n_in, n_out = label.dims
  x_family = "normal" if fam in ("kink", "saturated") else fam
  arrays = {"x": _entries(rng, (B, n_in), x_family, dt, "product")}
  W = _entries(rng, (n_out, n_in), "plain" if fam == "plain" else "normal", dt, "small")
  if fam == "saturated":
    W = W * 20.0 / math.sqrt(n_in)
  arrays["W"] = W
  arrays["dout"] = _entries(rng, (B, n_out), "plain" if fam == "plain" else "normal", dt, "product")
  if spec.bias:
    arrays["b"] = _entries(rng, (n_out,), "plain" if fam == "plain" else "normal", dt, "small")
  if fam == "kink":  # unit 0 (and every third) gets z = 0 exactly: a zero row of W and b
    rows = np.arange(n_out) % 3 == 0
    arrays["W"][rows] = 0.0
    if spec.bias:
      arrays["b"][rows] = 0.0
  return arrays


def draw_pointwise(spec: OpSpec, label: Label) -> dict:
  """The primary arrays of an activation's or a softmax's case: z of the family and dout."""
  rng, fam, dt = _rng(spec, label), label.family, spec.dtype
  B, n = label.dims
  z = _entries(rng, (B, n), fam, dt, "z")
  return {"z": z, "dout": _entries(rng, (B, n), "plain" if fam == "plain" else "normal", dt, "product")}


def draw_loss(spec: OpSpec, label: Label) -> dict:
  """The primary arrays of a loss's case: y and t, or logits z with targets or labels."""
  rng, fam, dt = _rng(spec, label), label.family, spec.dtype
  B, K = label.dims
  arrays = {}
  if spec.name in REGRESSION:
    arrays["y"] = _entries(rng, (B, K), fam, dt, "product" if fam != "huge" else "z")
    arrays["t"] = _entries(rng, (B, K), "plain" if fam == "plain" else "normal", dt, "product")
    if fam == "kink" and spec.name == "huber":  # |y - t| = 1 exactly, huber's joint
      arrays["t"] = arrays["y"] - np.where(rng.random((B, K)) < 0.5, 1.0, -1.0)
    elif fam == "kink":
      arrays["t"] = np.where(rng.random((B, K)) < 0.4, arrays["y"], arrays["t"])
  else:
    arrays["z"] = _entries(rng, (B, K), fam, dt, "z")
    if spec.targets == "labels":
      arrays["labels"] = rng.integers(0, K, size=B).astype(np.float64)
    elif spec.name in SOFTMAX_LOSSES:
      r = rng.random((B, K)) + (fam == "plain")
      if fam == "kink":
        r[:, 1:] = 0.0  # one-hot rows
      arrays["t"] = r / r.sum(axis=1, keepdims=True)
    else:
      arrays["t"] = (rng.integers(0, 2, (B, K)).astype(np.float64) if fam in ("plain", "kink")
                     else rng.random((B, K)))
  return arrays


def _weights(rng, shape, family, dtype):
  if family == "limit_w":  # products near 1e36 in dW; dx = dout W stays near 1e-2
    return scaled(rng, shape, 0.5e-20, 1e-20)
  if family == "limit_tiny_w":  # dW near 1e-36, dx near 1e1
    return scaled(rng, shape, 0.5e19, 1e19)
  return _entries(rng, shape, family, dtype, "product")


def loss_input(spec: OpSpec) -> str:
  """"z" when a loss candidate is handed logits, "y" when it is handed the loss's input y."""
  if spec.name in REGRESSION:
    return "y"
  if spec.name in ("softmax_cross_entropy", "sigmoid_binary_cross_entropy"):
    return "y" if spec.takes == "probs" else "z"
  return "z" if spec.takes == "logits" else "y"


def derive_loss(spec: OpSpec, arrays: dict) -> dict:
  """A loss's primary arrays with one-hot t from labels, and the probabilities y = softmax(z)
  or sigmoid(z) in the candidate's dtype where the candidate is handed them."""
  out = dict(arrays)
  if "labels" in out:
    K = out["z"].shape[1]
    out["t"] = (out["labels"][:, None] == np.arange(K)[None, :]).astype(np.float64)
  if spec.name not in REGRESSION and loss_input(spec) == "y":  # probabilities from the logits
    f = "softmax" if spec.name in SOFTMAX_LOSSES else "sigmoid"
    out["y"] = exact(forward_activation(f, out["z"]), spec.dtype)
  return out


# ---------------------------------------------------------------- bpref's pieces, in float64

def _pad(v, rows, cols, fill=0.0):
  out = np.full((rows, cols), fill)
  out[:v.shape[0], :v.shape[1]] = v
  return out


@compilation.jit(static_argnums=0)
def _f_padded(name, z):
  return _activations.get(name).f(z)  # (8)


@compilation.jit(static_argnums=0)
def _vjp_padded(name, z, a, g):
  return _activations.vjp(name, z, a, g)  # (34): g (da/dz), diag f'(z) or the softmax Jacobian


@compilation.jit
def _dense_padded(x, W, delta):
  layer = Layer(W, jnp.zeros(W.shape[:1], W.dtype), "identity")
  unread = jnp.zeros_like(delta)  # z_1 and a_1: (39) reads a_0 = x and delta alone
  (grads,) = _backprop.param_grads((layer,), Tape(z=(unread,), a=(x, unread)), (delta,),
                                    DEFAULT_PRECISION)  # (39) and dC/db = sum_b delta
  dx = jnp.matmul(delta, W, precision=DEFAULT_PRECISION)  # (26), corrected: dC/dx = delta W
  return dx, grads.W, grads.b


def forward_activation(name: str, z) -> np.ndarray:
  """bpref's f(z) in float64, rows of z padded to a bucket (softmax: pad logits add 0)."""
  z = np.asarray(z, np.float64)
  rows, cols = bucket(z.shape[0]), bucket(z.shape[1])
  fill = _fast.pad_logit(np.float64) if name == "softmax" else 0.0
  with jax.enable_x64(True):
    out = np.asarray(_f_padded(name, _pad(z, rows, cols, fill)), np.float64)
  return out[:z.shape[0], :z.shape[1]]


def activation_vjp(name: str, z, a, g) -> np.ndarray:
  """bpref's g (da/dz) in float64 (``bpref.activations.vjp``): g f'(z), or the softmax VJP."""
  z = np.asarray(z, np.float64)
  rows, cols = bucket(z.shape[0]), bucket(z.shape[1])
  fill = _fast.pad_logit(np.float64) if name == "softmax" else 0.0
  with jax.enable_x64(True):
    out = _vjp_padded(name, _pad(z, rows, cols, fill), _pad(np.asarray(a, np.float64), rows, cols),
                      _pad(np.asarray(g, np.float64), rows, cols))
  return np.asarray(out, np.float64)[:z.shape[0], :z.shape[1]]


def dense_products(x, W, delta) -> tuple:
  """bpref's (dx, dW, db) = (delta W, delta^T x, sum_b delta) in float64 (``bpref.backprop``)."""
  B, n_in = x.shape
  n_out = W.shape[0]
  rb, ri, ro = bucket(B), bucket(n_in), bucket(n_out)
  with jax.enable_x64(True):
    dx, dW, db = _dense_padded(_pad(x, rb, ri), _pad(W, ro, ri), _pad(delta, rb, ro))
  return (np.asarray(dx, np.float64)[:B, :n_in], np.asarray(dW, np.float64)[:n_out, :n_in],
          np.asarray(db, np.float64)[:n_out])


def df(name: str, z) -> np.ndarray:
  """bpref's f'(z) in float64."""
  return _truth.df(name, z)


def rho(name: str, z, a) -> np.ndarray:
  """rho_f(z, a) of ``bpref.oracle.truth.rho`` (0 where f' is exact)."""
  return _truth.rho(name, np.asarray(z, np.float64), a)


def rho_second(name: str, z, a) -> np.ndarray:
  """The |f''| part of rho_f (``Activation.d2f``): the part that a rounded argument scales."""
  return _truth.rho(name, np.asarray(z, np.float64), a, forms=False)


# ---------------------------------------------------------------- the truth of one case

def dense_outputs(spec: OpSpec) -> tuple:
  return ("dx", "dW", "db") if spec.bias else ("dx", "dW")


def loss_outputs(spec: OpSpec) -> tuple:
  return ("dz",) if fused(spec) else ("dy",)


def fused(spec: OpSpec) -> bool:
  """Whether a loss candidate returns the fused dC/dz (takes logits or probs)."""
  return spec.takes in ("logits", "probs")


def _softmax_bounds(y, g, s):
  """M of y * (g - <g, y>) with y carrying Y = y (s + <y, s>): the terms and their rounding."""
  ag = np.abs(g)
  Y = y * (s + np.sum(y * s, axis=-1, keepdims=True))
  return (Y * (ag + np.sum(ag * y, axis=-1, keepdims=True)) + y * np.sum(ag * Y, axis=-1, keepdims=True)
          + y * (ag + np.sum(ag * y, axis=-1, keepdims=True)))


def _op_truth(spec, expected, bounds, forward, forward_bound, k, z=None, a=None) -> OpTruth:
  """bpref's answer and bounds with (T) of one sum of ``k`` terms; db dropped without a bias."""
  if not spec.bias and "db" in expected:
    expected.pop("db"), bounds.pop("db")
  tol = _tolerance.tolerance(spec.dtype, depth=1, inner=k)
  ftol = _tolerance.forward_tolerance(spec.dtype, depth=1, inner=k)
  return OpTruth(expected, bounds, tol, None, 0.0, forward, forward_bound, ftol, z, a)


def dense_truth(spec: OpSpec, case: OpCase) -> OpTruth:
  """bpref's (dx, dW, db) of a dense op on ``case``, with their bounds and the forward z."""
  arr = case.arrays
  _, floor = unit_and_floor(spec.dtype)
  x, W, dout = arr["x"], arr["W"], arr["dout"]
  B, n_in = x.shape
  n_out = W.shape[0]
  dx, dW, db = dense_products(x, W, dout)
  ad = np.abs(dout)
  bounds = {"dx": ad @ np.abs(W) + n_out * floor, "dW": ad.T @ np.abs(x) + B * floor,
            "db": ad.sum(axis=0) + B * floor}
  b = arr.get("b")
  forward = x @ W.T + (0.0 if b is None else b[None, :])  # (7)
  forward_bound = np.abs(x) @ np.abs(W).T + (0.0 if b is None else np.abs(b)) + n_in * floor
  return _op_truth(spec, {"dx": dx, "dW": dW, "db": db}, bounds, forward, forward_bound,
                max(B, n_in, n_out))


def layer_truth(spec: OpSpec, case: OpCase, name: str) -> OpTruth:
  """bpref's (dx, dW, db) of a layer with activation ``name`` (34), (26), (39), with bounds."""
  arr = case.arrays
  _, floor = unit_and_floor(spec.dtype)
  x, W, dout = arr["x"], arr["W"], arr["dout"]
  b = arr.get("b")
  B, n_in = x.shape
  n_out = W.shape[0]
  zz = x @ W.T + (0.0 if b is None else b[None, :])  # (7)
  Z = np.abs(x) @ np.abs(W).T + (0.0 if b is None else np.abs(b)[None, :])
  aa = forward_activation(name, zz)  # (8)
  delta = activation_vjp(name, zz, aa, dout)  # (34): delta = dout f'(z)
  dx, dW, db = dense_products(x, W, delta)  # (26), (39)
  s = np.maximum(1.0, Z)
  if name == "softmax":
    D = _softmax_bounds(aa, dout, s) + n_out * floor
    forward_bound = aa * (s + np.sum(aa * s, axis=-1, keepdims=True)) + floor
  else:
    abs_df = np.abs(df(name, zz))
    rho_f = rho(name, zz, aa)
    # phi_f + |f''| s = rho_f + |f''| (s - 1): only the |f''| part scales with the terms Z
    D = np.abs(dout) * (abs_df + rho_f + rho_second(name, zz, aa) * (s - 1) + floor) + floor
    forward_bound = np.abs(aa) + (abs_df + rho_f) * Z + floor
  bounds = {"dx": D @ np.abs(W) + n_out * floor, "dW": D.T @ np.abs(x) + B * floor,
            "db": D.sum(axis=0) + B * floor}
  return _op_truth(spec, {"dx": dx, "dW": dW, "db": db}, bounds, aa, forward_bound,
                max(B, n_in, n_out), zz, aa)


def softmax_truth(spec: OpSpec, case: OpCase) -> OpTruth:
  """bpref's dz = y * (dout - <dout, y>) of a softmax, with its bound."""
  arr = case.arrays
  _, floor = unit_and_floor(spec.dtype)
  zz, dout = arr["z"], arr["dout"]
  aa = arr["y"] if spec.takes == "y" else forward_activation("softmax", zz)
  s = np.ones_like(zz) if spec.takes == "y" else np.maximum(1.0, np.abs(zz))
  expected = {"dz": activation_vjp("softmax", zz, aa, dout)}  # y * (dout - <dout, y>)
  bounds = {"dz": _softmax_bounds(aa, dout, s) + zz.shape[1] * floor}
  forward_bound = aa * (s + np.sum(aa * s, axis=-1, keepdims=True)) + floor
  return _op_truth(spec, expected, bounds, aa, forward_bound, zz.shape[1], zz, aa)


def activation_truth(spec: OpSpec, case: OpCase, name: str) -> OpTruth:
  """bpref's dz = dout * f'(z) (34) of the elementwise activation ``name``, with its bound."""
  arr = case.arrays
  _, floor = unit_and_floor(spec.dtype)
  zz, dout = arr["z"], arr["dout"]
  aa = forward_activation(name, zz)
  expected = {"dz": activation_vjp(name, zz, aa, dout)}  # (34): dout * f'(z)
  abs_df = np.abs(df(name, zz))
  rho_f = rho(name, zz, aa)
  s = np.maximum(1.0, np.abs(zz)) if spec.takes == "z" else np.ones_like(zz)
  # M_dz: phi_f + |f''| s = rho_f + |f''| (s - 1), only the |f''| part scales with |z|
  bounds = {"dz": np.abs(dout) * (abs_df + rho_f + rho_second(name, zz, aa) * (s - 1) + floor)
            + floor}
  forward_bound = np.abs(aa) + (abs_df + rho_f) * np.abs(zz) + floor
  return _op_truth(spec, expected, bounds, aa, forward_bound, 1, zz, aa)


def loss_truth(spec: OpSpec, case: OpCase) -> OpTruth:
  """bpref's dC/dy, or the fused dC/dz on logits, of a loss reduced over the batch; its value."""
  arr = case.arrays
  _, floor = unit_and_floor(spec.dtype)
  name = spec.name
  t = arr["t"]
  B, K = t.shape
  scale = _losses.reduce_scale(B, spec.reduction)
  zz = arr.get("z")
  logits = _losses.get(name).logits
  on_logits = name in ("softmax_cross_entropy", "sigmoid_binary_cross_entropy") or fused(spec)
  if on_logits:
    twin = logits or name  # the fused form: the loss written on z
    dz, per_example = _truth.loss_terms(twin, zz, t)
    g = dz * scale  # (34), corrected, with f_L and C fused
    s = np.maximum(1.0, np.abs(zz))
    if twin == "softmax_cross_entropy":
      p = forward_activation("softmax", zz)
      P = p * (s + np.sum(p * s, axis=-1, keepdims=True))
      M = scale * (P * np.abs(t).sum(axis=-1, keepdims=True) + np.abs(t))
    else:
      M = scale * (forward_activation("sigmoid", zz) * s + np.abs(t))
    arg = zz
  else:
    y = arr["y"]
    dy, per_example = _truth.loss_terms(name, y, t)
    g = dy * scale  # (14) and its batch reduction
    if name == "squared_error":
      M = scale * 2 * (np.abs(y) + np.abs(t))
    elif name in ("half_squared_error", "huber"):
      M = scale * (np.abs(y) + np.abs(t))
    elif name == "cross_entropy":
      M = scale * np.where(t == 0, 0.0, np.abs(t) / np.where(y == 0, 1.0, y))
    else:
      M = scale * (np.where(t == 0, 0.0, np.abs(t) / np.where(y == 0, 1.0, y))
                   + np.where(t == 1, 0.0, np.abs(1 - t) / np.where(y == 1, 1.0, 1 - y)))
    arg = y
  M = M + floor
  out = "dz" if fused(spec) else "dy"
  value = float(scale * per_example.sum())
  value_bound = float(scale * np.abs(per_example).sum() + np.sum(M * np.maximum(1.0, np.abs(arg))))
  tol = _tolerance.tolerance(spec.dtype, depth=1, inner=K)
  ftol = _tolerance.forward_tolerance(spec.dtype, depth=1, inner=K)
  return OpTruth({out: g}, {out: M}, tol, value, value_bound, value, value_bound, ftol, zz, None)
