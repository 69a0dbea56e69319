"""Hypothesis strategies for feed-forward networks: architectures, params, batches, problems.

Sizes are drawn first, then values. Widths and batch sizes come from small sets
(``WIDTHS``, ``BATCHES``) that include 1, so that shapes repeat across examples
and ``jax.jit`` compiles each shape once. Values come from a NumPy generator
seeded by hypothesis (so every example is reproducible and shrinks by its seed):
Gaussian, never subnormal (JAX flushes subnormals to zero on CPU).

Three modes shape the values:

* ``"default"``: well conditioned. W_l ~ N(0, 1/n_{l-1}), b_l ~ N(0, 0.1^2),
  x ~ N(0, 1), so |z| is of order 1.
* ``"saturated"``: hidden weights scaled by a gain of 6 to 20, so sigmoid, tanh
  and softmax units sit far in their tails (|z| in the tens); the output layer
  of a deeper net keeps gain 1 so that probability losses stay finite (a
  one-layer net gets the gain).
* ``"kink"``: default values, then in every layer with a kinked activation
  (relu, leaky_relu, elu, selu) one unit gets a zero row of W and a zero bias,
  so its pre-activation is exactly 0 for every example: f'(0) is decided by
  the kink convention. ``problems`` gives such layers at least 2 units; a layer
  of one unit gets no planted zero (it would silence the whole layer).

No problem is vacuous (``bpref.testing.problems.vacuous``): a softmax, on the output
layer or inside softmax_cross_entropy, has at least 2 units, and values in
which some layer's true gradient is identically zero (an all-dead relu layer,
say) are drawn again from the same seeded generator. Cross-entropy targets
(``bpref.testing.problems.SOFT_TARGETS``) are drawn both as probability rows and as
rows that do not sum to 1.

Example (a property test in a user's suite)::

  from hypothesis import given
  import bpref
  from bpref.testing import strategies as bst

  @given(bst.problems(mode="saturated"))
  def test_gradient_is_finite(problem):
    grads = bpref.grad(*problem)
"""

from __future__ import annotations


import numpy as np
import hypothesis
from hypothesis import strategies as st

from bpref import activations as _activations
from bpref import losses as _losses
from bpref.structures import Architecture, Layer
from bpref.testing import problems as _problems
from bpref.testing.problems import Problem, targets

WIDTHS = (1, 2, 3, 5)
"""Layer widths n_l (1 included)."""

BATCHES = (1, 2, 4)
"""Batch sizes B (1 included)."""

HIDDEN = tuple(n for n in _activations.ACTIVATIONS if n not in _activations.OUTPUT_ONLY)
"""Activations allowed in every layer."""

SMOOTH = _activations.SMOOTH
"""Hidden activations whose every derivative is continuous (no kink in f' or f'')."""

MODES = ("default", "saturated", "kink")

DRAWS = 16
"""Value draws ``problems`` makes from one seed before it rejects the example as vacuous."""


def _check_mode(mode):
  if mode not in MODES:
    raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")


@st.composite
def architectures(draw, *, depths=(1, 2, 3), widths=WIDTHS, hidden=HIDDEN, output=None,
                  bias=None) -> Architecture:
  """Architectures: depth L from ``depths``, each n_l from ``widths``, f_1..f_{L-1} from ``hidden``.

  Args:
    depths: the depths to draw from.
    widths: the widths to draw from (n_0 ... n_L).
    hidden: activation names for layers 1..L-1.
    output: names for layer L (default: ``hidden``).
    bias: True or False to fix it, None to draw it.
  """
  depth = draw(st.sampled_from(tuple(depths)))
  sizes = tuple(draw(st.sampled_from(tuple(widths))) for _ in range(depth + 1))
  acts = [draw(st.sampled_from(tuple(hidden))) for _ in range(depth - 1)]
  acts.append(draw(st.sampled_from(tuple(output or hidden))))
  has_bias = draw(st.booleans()) if bias is None else bool(bias)
  return Architecture(sizes, tuple(acts), (has_bias,) * depth)


def _values(rng, arch: Architecture, dtype, mode, gain=None):
  gain = gain if gain is not None else (float(rng.uniform(6, 20)) if mode == "saturated" else 1.0)
  layers = []
  for l in range(1, arch.depth + 1):
    n_out, n_in = arch.sizes[l], arch.sizes[l - 1]
    g = gain if l < arch.depth else 1.0
    if mode == "saturated" and arch.depth == 1:
      g = gain
    W = rng.normal(size=(n_out, n_in)) * g / np.sqrt(n_in)
    b = rng.normal(size=(n_out,)) * 0.1 if arch.bias[l - 1] else None
    if mode == "kink" and arch.activations[l - 1] in _activations.KINKED and n_out > 1:
      i = int(rng.integers(n_out))
      W[i, :] = 0.0
      if b is not None:
        b[i] = 0.0
    layers.append(Layer(W.astype(dtype), None if b is None else b.astype(dtype), arch.activations[l - 1]))
  return tuple(layers)


@st.composite
def params(draw, arch: Architecture, *, dtype=np.float64, mode: str = "default"):
  """Parameters for ``arch`` in ``dtype``: a tuple of ``Layer`` (see the module's modes)."""
  _check_mode(mode)
  seed = draw(st.integers(0, 2 ** 32 - 1))
  return _values(np.random.default_rng(seed), arch, np.dtype(dtype), mode)


@st.composite
def batches(draw, n_in: int, *, dtype=np.float64, batch_sizes=BATCHES):
  """Inputs x of shape (B, n_in), x ~ N(0, 1), B from ``batch_sizes``."""
  batch = draw(st.sampled_from(tuple(batch_sizes)))
  rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
  return rng.normal(size=(batch, n_in)).astype(np.dtype(dtype))


def _output_for(loss, hidden):
  required = _losses.get(loss).output
  if required is not None:
    return (required,)
  return tuple(hidden) + ("softmax",)


@st.composite
def problems(draw, *, dtype=np.float64, mode: str = "default", losses=None, hidden=None,
             depths=(1, 2, 3), widths=WIDTHS, batch_sizes=BATCHES, bias=None,
             reductions=_losses.REDUCTIONS) -> Problem:
  """Whole problems (params, x, t, loss, reduction), a ``bpref.testing.problems.Problem``, never vacuous.

  The output activation suits the loss (sigmoid for binary_cross_entropy,
  softmax for cross_entropy); targets are valid for it (nonnegative rows for the
  cross-entropies, summing to 1 or not, [0, 1] for the binary ones, N(0, 1)
  otherwise). A softmax output, or softmax_cross_entropy, gets at least 2 units
  (the smallest such width in ``widths``); in ``"kink"`` mode so does every
  layer with a kinked activation.

  Args:
    dtype: float64, float32 (or a low-precision float for forward passes).
    mode: "default", "saturated" or "kink".
    losses: loss names to draw from (default all).
    hidden: hidden activation names (default: every activation but softmax).
    depths, widths, batch_sizes: the small sets sizes are drawn from.
    bias: True/False to fix it, None to draw it.
    reductions: "mean", "sum" or both.
  """
  _check_mode(mode)
  if hidden is None:
    hidden = HIDDEN
  loss = draw(st.sampled_from(tuple(losses or _losses.LOSSES)))
  reduction = draw(st.sampled_from(tuple(reductions)))
  arch = draw(architectures(depths=depths, widths=widths, hidden=hidden,
                            output=_output_for(loss, hidden), bias=bias))
  if mode == "kink" and not any(a in _activations.KINKED for a in arch.activations):
    acts = (draw(st.sampled_from(_activations.KINKED)),) + arch.activations[1:]
    if arch.depth == 1 and _losses.get(loss).output is not None:
      acts = arch.activations
    arch = arch._replace(activations=acts)
  wide = min((w for w in widths if w >= 2), default=2)
  sizes = list(arch.sizes)
  if sizes[-1] < _problems.min_output_width(arch.activations[-1], loss):
    sizes[-1] = wide
  if mode == "kink":
    sizes[1:] = [wide if n == 1 and a in _activations.KINKED else n
                 for n, a in zip(sizes[1:], arch.activations)]
  arch = arch._replace(sizes=tuple(sizes))
  batch = draw(st.sampled_from(tuple(batch_sizes)))
  unnormalized = float(draw(st.booleans())) if loss in _problems.SOFT_TARGETS else 0.0
  rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
  for _ in range(DRAWS):  # a vacuous draw is drawn again from the same generator
    layers = _values(rng, arch, np.dtype(dtype), mode)
    x = rng.normal(size=(batch, arch.sizes[0])).astype(np.dtype(dtype))
    biases = None if layers[0].b is None else [p.b for p in layers]
    if not _problems.vacuous(arch.activations, loss, [p.W for p in layers], biases, x):
      break
  else:
    hypothesis.reject()
  t = targets(rng, loss, (batch, arch.sizes[-1]), unnormalized=unnormalized)
  return Problem(layers, x, t.astype(np.dtype(dtype)), loss, reduction)
