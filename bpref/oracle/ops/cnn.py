"""The block kind's CNN composition: layer functions checked inside a small convolutional network.

``check_op("block", layers, name="cnn")`` (``bpref check --op block --op-name cnn``) checks the
layer functions of a CS231n-style convolutional classifier on the network of
``bpref.layers.cnn``: conv2d (stride 1, pad 1), spatial batchnorm, relu, 2 x 2 max pooling with
stride 2, a dense layer and the softmax cross-entropy of integer labels (mean over the batch).
The candidate is a mapping (a dict, a module, an object) from each kind to its backward
function, called as that kind's own record calls it (``bpref.oracle.ops.block`` runs the
steps and judges each with its kind's record and rounding model):

==========  ========================================  ================================
name        called as                                 returns
==========  ========================================  ================================
loss        (s, labels), s (N, K), labels int64 (N,)  ds, or (C, ds): the fused dC/ds
dense       (x, W, b, dout), x (N, F H2 W2)           (dx, dW, db)
maxpool2d   (x, dout), x (N, F, H1, W1), p2s2         dx
activation  (z, dout), z (N, F H1 W1): relu           dz
batchnorm   (x, gamma, beta, dout), x (N, F, H1, W1)  (dx, dgamma, dbeta), training mode
conv2d      (x, w, b, dout), x (N, C, H, W), s1p1     (dx, dw, db)
==========  ========================================  ================================

With ``signature="cs231n"`` the kinds that take CS231n's ``(dout, cache)`` are called that way:
dense as ``affine_backward(dout, (x, w, b))`` with w of shape (F H2 W2, K) (layout "in_out"),
activation as ``relu_backward(dout, z)``, conv2d as ``conv_backward_naive(dout, (x, w, b,
conv_param))`` and maxpool2d as ``max_pool_backward_naive(dout, (x, pool_param))``; batchnorm
and loss keep the calls above (CS231n's ``softmax_loss(x, y)`` is already one).

The conv step's db is not judged: the convolution's bias is followed by batch normalization,
whose dx sums to 0 over each channel (BN9), so db = 0 in exact arithmetic and a case would check
nothing there (the conv2d kind judges db). A case is named by (N, C, H, W, F, HH, WW, K). bpref's activations and cotangents come from one
jitted call of ``bpref.layers.cnn``, its channels C and F and its classes K padded with zeros to
a bucket (``bucket``): a zero filter with zero bias, gamma and beta gives a channel that is 0
everywhere and adds exact zeros to every later sum, and a padded class has a zero row of W and
the bias ``bpref.scale.fast.pad_logit``, whose softmax probability is exactly 0. N, H and W are
not padded, since a padded image or position would join the batch statistics; random cases take
their (N, H, W, HH, WW) from ``GEOMETRIES``, so that a default search compiles one such program
per geometry.
"""

from __future__ import annotations


import jax
import numpy as np

from bpref import compilation
from bpref.layers import cnn as _cnn
from bpref.oracle.ops import batchnorm as _batchnorm_kind
from bpref.oracle.ops import classic as _classic
from bpref.oracle.ops import conv as _conv_kind
from bpref.oracle.ops import pool as _pool_kind
from bpref.oracle.ops.record import OpSpec, bucket, family_values
from bpref.scale import fast as _fast

GEOMETRIES = (
    (1, 2, 2, 1, 1),  # one image, 1 x 1 filters: H1 = W1 = 4
    (2, 4, 5, 3, 3),  # W1 = 5: the last column lies in no pooling window
    (3, 3, 4, 2, 2),  # even filters: H1 = 4, W1 = 5
    (2, 3, 3, 3, 3),  # H1 = W1 = 3: one window each way, a row and a column left over
    (2, 5, 4, 3, 2),  # HH != WW
    (3, 6, 6, 3, 3),  # the largest
)
"""(N, H, W, HH, WW) of the random cases: the shapes that compile a program each."""

CS231N_KINDS = ("dense", "activation", "maxpool2d", "conv2d")
"""The steps called as CS231n's ``(dout, cache)`` with ``signature="cs231n"``."""


@compilation.jit(static_argnums=3)
def _handed(params, x, labels, eps):
  _, cache = _cnn.forward(params, x, labels, eps=eps)  # (CNN1)-(CNN6)
  return _cnn.steps(params, cache)[0]  # (CNN7)-(CNN12): what each step is handed


def _padded(v, shape, fill=0.0) -> np.ndarray:
  out = np.full(shape, fill)
  out[tuple(slice(0, n) for n in np.shape(v))] = v
  return out


def _real_shapes(dims) -> dict:
  """{step: {array: shape}}: what each step is handed, unpadded, for the case dims."""
  N, C, H, W, F, HH, WW, K = dims
  (_, _, H1, W1), (_, _, H2, W2) = _cnn.shapes((N, C, H, W), (F, C, HH, WW))
  return {"loss": {"z": (N, K), "labels": (N,)},
          "fc": {"x": (N, F * H2 * W2), "W": (K, F * H2 * W2), "b": (K,), "dout": (N, K)},
          "pool": {"x": (N, F, H1, W1), "dout": (N, F, H2, W2)},
          "relu": {"z": (N, F * H1 * W1), "dout": (N, F * H1 * W1)},
          "bn": {"x": (N, F, H1, W1), "gamma": (F,), "beta": (F,), "dout": (N, F, H1, W1)},
          "conv": {"x": (N, C, H, W), "w": (F, C, HH, WW), "b": (F,), "dout": (N, F, H1, W1)}}


def _dims(arrays) -> tuple:
  N, C, H, W = arrays["x"].shape
  F, _, HH, WW = arrays["w"].shape
  return (N, C, H, W, F, HH, WW, arrays["W"].shape[0])


def fits(dims) -> bool:
  """Whether the dims make a network: filters no larger than the padded input, and a
  convolution output of at least one pooling window each way."""
  N, C, H, W, F, HH, WW, K = dims
  if HH > H + 2 * _cnn.PAD or WW > W + 2 * _cnn.PAD:
    return False
  (_, _, H1, W1), _ = _cnn.shapes((N, C, H, W), (F, C, HH, WW))
  return min(H1, W1) >= _cnn.POOL


class CNN:
  """The composition of ``bpref.layers.cnn`` as the block kind checks it."""

  name = "cnn"
  summary = ("a small CNN (conv2d s1p1, batchnorm, relu, maxpool2d p2s2, dense, softmax "
             "cross-entropy of labels)")
  steps = _cnn.STEPS
  records = {"loss": _classic.LOSS, "dense": _classic.DENSE, "maxpool2d": _pool_kind.MAXPOOL2D,
             "activation": _classic.ACTIVATION, "batchnorm": _batchnorm_kind.BATCHNORM,
             "conv2d": _conv_kind.CONV2D}
  signatures = ("bpref", "cs231n")
  options = ("eps", "signature")
  families = ("plain", "normal", "spread")
  dims_names = ("N", "C", "H", "W", "F", "HH", "WW", "K")
  primary = ("x", "labels") + _cnn.CNNParams._fields
  unjudged = {"conv.db": "0 in exact arithmetic: batchnorm's dx sums to 0 over each channel "
                         "(BN9), so an all-zero db is right here; --op conv2d judges db"}

  def describe(self, spec: OpSpec) -> str:
    how = ", cs231n signature" if spec.signature == "cs231n" else ""
    return (f"block cnn (conv2d s1p1, batchnorm, relu, maxpool2d p2s2, dense, "
            f"softmax_cross_entropy; {spec.dtype}{how})")

  # ---- cases
  def probe_dims(self, spec: OpSpec) -> tuple:
    return ([(1, 1, 2, 2, 1, 1, 1, 2), (2, 3, 4, 5, 2, 3, 3, 3), (3, 2, 3, 4, 3, 2, 2, 4)],
            [(2, 2, 5, 4, 3, 3, 2, 3)])

  def random_dims(self, spec: OpSpec, rng) -> tuple:
    menu = [g for g in GEOMETRIES if g[0] <= spec.max_batch and max(g[1:3]) <= max(spec.max_width, 2)]
    N, H, W, HH, WW = (menu or GEOMETRIES[:1])[int(rng.integers(len(menu or GEOMETRIES[:1])))]
    C, F, K = int(rng.integers(1, 4)), int(rng.integers(1, 5)), int(rng.integers(2, 6))
    return (N, C, H, W, F, HH, WW, K)

  def searched(self, spec: OpSpec) -> str:
    shapes, _ = self.probe_dims(spec)
    return (f"{'x'.join(self.dims_names)} {', '.join(str(d) for d in shapes)} and random: "
            f"(N, H, W, HH, WW) from {', '.join(str(g) for g in GEOMETRIES)}, C 1-3, F 1-4, "
            f"K 2-5; values {', '.join(self.families)}; conv.db not judged ("
            f"{self.unjudged['conv.db']})")

  def label_spec(self, spec: OpSpec, label) -> OpSpec:
    return spec

  def case_spec(self, spec: OpSpec, case) -> OpSpec:
    return spec

  def draw(self, spec: OpSpec, label, rng) -> dict:
    N, C, H, W, F, HH, WW, K = label.dims
    (_, _, H1, W1), (_, _, H2, W2) = _cnn.shapes((N, C, H, W), (F, C, HH, WW))
    values = family_values(rng, label.family)
    n_fc = F * max(H2, 0) * max(W2, 0)
    return {"x": values((N, C, H, W), 1.0),  # weights scaled by 1/sqrt(fan-in), as initialised
            "w": values((F, C, HH, WW), 1.0 / np.sqrt(C * HH * WW)), "b": values((F,), 1.0),
            "gamma": values((F,), 1.0), "beta": values((F,), 1.0),
            "W": values((K, n_fc), 1.0 / np.sqrt(max(n_fc, 1))), "b_fc": values((K,), 1.0),
            "labels": rng.integers(0, K, N).astype(np.float64)}

  def given(self, spec: OpSpec, arrays: dict) -> dict | None:
    """{step: {array: float64}}: what each step is handed on these primary arrays; None when
    their shapes make no network (``fits``)."""
    dims = _dims(arrays)
    if not fits(dims):
      return None
    N, C, H, W, F, HH, WW, K = dims
    (_, _, H2, W2) = _cnn.shapes((N, C, H, W), (F, C, HH, WW))[1]
    Cb, Fb, Kb = bucket(C), bucket(F), bucket(K)
    W_fc = _padded(arrays["W"].reshape(K, F, H2, W2), (Kb, Fb, H2, W2)).reshape(Kb, -1)
    params = _cnn.CNNParams(
        _padded(arrays["w"], (Fb, Cb, HH, WW)), _padded(arrays["b"], (Fb,)),
        _padded(arrays["gamma"], (Fb,)), _padded(arrays["beta"], (Fb,)), W_fc,
        _padded(arrays["b_fc"], (Kb,), _fast.pad_logit(np.float64)))
    with jax.enable_x64(True):
      handed = _handed(params, _padded(arrays["x"], (N, Cb, H, W)),
                       arrays["labels"].astype(np.int64), float(spec.eps))
    real = _real_shapes(dims)
    return {step: {k: np.asarray(v, np.float64)[tuple(slice(0, n) for n in real[step][k])]
                   for k, v in values.items()} for step, values in handed.items()}

  def derived(self, spec: OpSpec, arrays: dict) -> dict:
    """t, the one-hot rows of the labels, (N, K): the batch of a case, as the loss kind has it."""
    K = arrays["W"].shape[0]
    return {"t": (arrays["labels"][:, None] == np.arange(K)[None, :]).astype(np.float64)}

  # ---- the steps' specs
  def step_fields(self, spec: OpSpec, step, handed: bool) -> dict:
    """The ``OpSpec`` fields a step is judged under (``handed``: the layout bpref hands it in)."""
    fields = {"eps": spec.eps}
    if step.kind == "loss":
      fields.update(takes="logits", targets="labels", reduction="mean")
    if step.kind == "batchnorm":
      fields.update(layout="nchw")
    if not handed and spec.signature == "cs231n" and step.kind in CS231N_KINDS:
      fields.update(signature="cs231n")
      if step.kind == "dense":
        fields.update(layout="in_out")  # CS231n's affine layers hold w as (D, M)
    return fields


CNN_COMPOSITION = CNN()
