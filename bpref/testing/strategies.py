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

``problems`` draws from the oracle's default domain (``bpref.oracle.spec.Spec``: the
activations identity, relu, tanh and sigmoid, squared_error, the mean, biases, depth <= 3,
widths <= 5, B <= 4, float64), so that a property test and ``assert_backprop_correct``
check the same networks; its options narrow or widen it as the oracle's options do
(activations, losses, output_activations, reduction, bias, dtype, layout, targets and the
size bounds). ``all_problems`` draws from everything bpref computes (``EVERYWHERE``).

No problem is vacuous (``bpref.problems.vacuous``): a softmax, on the output
layer or inside softmax_cross_entropy, has at least 2 units, and values in
which some layer's true gradient is identically zero (an all-dead relu layer,
say) are drawn again from the same seeded generator. Cross-entropy targets
(``bpref.problems.SOFT_TARGETS``) are probability rows, as the oracle draws
them; ``targets="unnormalized"`` or ``"any"`` draws rows that do not sum to 1 as well.

Example (a property test in a user's suite; ``bpref.testing.reference_grads`` evaluates
bpref's gradients in a few compiled programs whatever the shapes drawn)::

  import numpy as np
  from hypothesis import given
  from bpref.testing import reference_grads, strategies as bst

  @given(bst.problems(activations=("relu", "tanh", "identity"), layout="in_out"))
  def test_my_gradients(problem):
    dW, db = my_grads(*problem.arrays())        # W_l of shape (n_{l-1}, n_l)
    want = reference_grads(problem)             # bpref's, in the same layout
    for mine, ours in zip(dW, want.dW):
      np.testing.assert_allclose(mine, ours, rtol=1e-9, atol=1e-12)
"""

from __future__ import annotations

import hypothesis
import numpy as np
from hypothesis import strategies as st

from bpref import activations as _activations
from bpref import losses as _losses
from bpref import problems as _problems
from bpref.problems import Problem
from bpref.problems import targets as targets_for
from bpref.structures import Architecture, Layer

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


TARGETS = ("normalized", "unnormalized", "any")
"""Cross-entropy target rows (``problems``' ``targets``): summing to 1, not summing to 1, or either."""

EVERYWHERE = {"activations": tuple(_activations.ACTIVATIONS), "losses": tuple(_losses.LOSSES),
              "output_activations": "any", "reduction": "any", "bias": None, "targets": "any"}
"""``problems`` options for everything bpref computes, wider than the oracle's default domain:
every activation and loss, any activation on the output layer of a loss that takes any
(softmax after squared_error included), both reductions, biases or none, and cross-entropy
targets that do not sum to 1. bpref's own suite draws from it: ``problems(**EVERYWHERE)``."""


def _bounded(values, bound, what) -> tuple:
  if int(bound) < 1:
    raise ValueError(f"{what} must be >= 1; got {bound}")
  return tuple(sorted({v for v in values if v <= bound} | {int(bound)}))


def _one_of(value, valid, what) -> tuple:
  """``value`` as a tuple of choices: "any" is all of ``valid``, a name is itself."""
  names = tuple(valid) if value == "any" else ((value,) if isinstance(value, str) else tuple(value))
  bad = [v for v in names if v not in valid]
  if bad or not names:
    raise ValueError(f"{what} must be one of {', '.join(valid)} (or \"any\", or a tuple of "
                     f"them); got {value!r}")
  return names


def _outputs(losses, activations, hidden, output_activations) -> dict:
  """{loss: the output activations drawn after it}, by the oracle's rule (``bpref.oracle.spec``)
  unless ``output_activations`` is "any" (every activation, softmax included)."""
  if output_activations == "any":
    return {loss: _output_for(loss, hidden) for loss in losses}
  from bpref.oracle import spec as _spec

  given = output_activations
  if given is not None and not isinstance(given, dict):
    names = (given,) if isinstance(given, str) else tuple(given)
    given = {loss: names for loss in losses if _losses.get(loss).output is None}
  domain = _spec.make_spec(activations=tuple(activations), losses=tuple(losses),
                           output_activations=given, max_depth=1)
  out = {loss: domain.outputs_for(loss) for loss in losses}
  for loss, names in out.items():
    if not names:
      raise ValueError(f"output_activations: no activation declared for the output layer before "
                       f"{loss!r} (softmax is drawn there only when named for it)")
  return out


def problems(*, activations=None, losses=None, output_activations=None, reduction=None,
             bias=True, dtype=np.float64, layout: str = "out_in", targets: str = "normalized",
             max_depth: int | None = None, max_width: int | None = None,
             max_batch: int | None = None, mode: str = "default", hidden=None, depths=None,
             widths=None, batch_sizes=None, reductions=None):
  """Whole problems (params, x, t, loss, reduction), a ``bpref.problems.Problem``, never vacuous.

  The defaults are the oracle's default domain (``bpref.oracle.spec.Spec``, what
  ``assert_backprop_correct`` checks when given no options), and every option narrows or
  widens it as the oracle's option of the same name does:

  Args:
    activations: the activations the code under test implements (default identity, relu,
      tanh, sigmoid); hidden layers draw from those that are elementwise.
    losses: loss names (default squared_error).
    output_activations: the output layer's activation: by default the one the loss requires
      (softmax for cross_entropy, sigmoid for binary_cross_entropy), else any declared
      activation but softmax; a tuple of names for every loss that takes any output, or the
      oracle's {loss: names}; "any" allows softmax too (after squared_error, say).
    reduction: "mean" (the default, C = (1/B) sum_b C_b), "sum", "any" or a tuple of them.
    bias: True (the default) or False to fix it, None to draw it.
    dtype: float64 (the default), float32 (or a low-precision float for forward passes).
    layout: "out_in" (W_l of shape (n_l, n_{l-1}), bpref's) or "in_out" (its transpose):
      the layout of ``problem.arrays()`` and of ``reference_grads(problem)``; ``params``
      stays bpref's, so ``bpref.grad(*problem)`` works in either.
    targets: rows of a cross-entropy target (softmax_cross_entropy, cross_entropy):
      "normalized" (the default, as the oracle draws them: rows that sum to 1, where
      dC/dz_L = y - t), "unnormalized" (nonnegative rows that do not sum to 1, where
      dC/dz_L = y sum_k t_k - t) or "any".
    max_depth, max_width, max_batch: the largest L, n_l and B (default 3, 5, 4 as the
      oracle); widths come from ``WIDTHS`` and batches from ``BATCHES`` below the bound,
      and the bound itself.
    mode: "default", "saturated" or "kink" (the module's modes).
    hidden: hidden activation names, in place of those of ``activations``.
    depths, widths, batch_sizes: the sets sizes are drawn from, in place of the bounds.
    reductions: the reductions to draw from, in place of ``reduction``.

  The output activation suits the loss; targets are valid for it (nonnegative rows for the
  cross-entropies, [0, 1] for the binary ones, N(0, 1) otherwise). A softmax output, or
  softmax_cross_entropy, gets at least 2 units (the smallest such width in ``widths``); in
  ``"kink"`` mode so does every layer with a kinked activation. ``EVERYWHERE`` holds the
  options for everything bpref computes.

  A ValueError names a bad option when the strategy is made, not when it draws.
  """
  from bpref.oracle import spec as _spec

  _check_mode(mode)
  defaults = _spec.Spec
  if hidden is None:
    activations = tuple(defaults.activations if activations is None else activations)
    for name in activations:
      _activations.get(name)
    hidden = tuple(a for a in activations if a not in _activations.OUTPUT_ONLY)
  else:
    hidden = tuple(hidden)
    activations = hidden if activations is None else tuple(activations)
  for name in hidden:
    if name in _activations.OUTPUT_ONLY:
      raise ValueError(f"hidden: {name!r} is an output activation only")
  losses = tuple(defaults.losses if losses is None else losses)
  for name in losses:
    _losses.get(name)
  outputs = _outputs(losses, activations, hidden, output_activations)
  if reductions is not None and reduction is not None:
    raise ValueError("give reduction or reductions, not both")
  reductions = _one_of(defaults.reduction if reduction is None and reductions is None
                       else (reductions if reductions is not None else reduction),
                       _losses.REDUCTIONS, "reduction")
  if layout not in _problems.LAYOUTS:
    raise ValueError(f"layout must be one of {', '.join(_problems.LAYOUTS)}; got {layout!r}")
  if targets not in TARGETS:
    raise ValueError(f"targets must be one of {', '.join(TARGETS)}; got {targets!r}")
  for name, bound, given in (("max_depth", max_depth, depths), ("max_width", max_width, widths),
                             ("max_batch", max_batch, batch_sizes)):
    if bound is not None and given is not None:
      raise ValueError(f"give {name} or the set it bounds, not both")
  if depths is None:
    depths = tuple(range(1, int(defaults.max_depth if max_depth is None else max_depth) + 1))
    if not depths:
      raise ValueError(f"max_depth must be >= 1; got {max_depth}")
  if widths is None:
    widths = _bounded(WIDTHS, defaults.max_width if max_width is None else max_width, "max_width")
  if batch_sizes is None:
    batch_sizes = _bounded(BATCHES, defaults.max_batch if max_batch is None else max_batch,
                           "max_batch")
  if max(depths) > 1 and not hidden:
    raise ValueError("activations: hidden layers need an elementwise activation; add one "
                     "(e.g. 'identity') or set max_depth=1")
  return _drawn_problems(dtype=np.dtype(dtype), mode=mode, losses=losses, hidden=hidden,
                         outputs=outputs, depths=tuple(depths), widths=tuple(widths),
                         batch_sizes=tuple(batch_sizes), bias=bias, reductions=reductions,
                         targets=targets, kind=_problems.ProblemInOut if layout == "in_out"
                         else Problem)


def all_problems(**options):
  """``problems`` over everything bpref computes (``EVERYWHERE``), ``options`` narrowing it."""
  options = {**EVERYWHERE, **options}
  if "reductions" in options:
    options.pop("reduction")
  return problems(**options)


@st.composite
def _drawn_problems(draw, *, dtype, mode, losses, hidden, outputs, depths, widths, batch_sizes,
                    bias, reductions, targets, kind) -> Problem:
  loss = draw(st.sampled_from(losses))
  reduction = draw(st.sampled_from(reductions))
  arch = draw(architectures(depths=depths, widths=widths, hidden=hidden, output=outputs[loss],
                            bias=bias))
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
  batch = draw(st.sampled_from(batch_sizes))
  unnormalized = 0.0
  if loss in _problems.SOFT_TARGETS and targets != "normalized":
    unnormalized = float(draw(st.booleans())) if targets == "any" else 1.0
  rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
  for _ in range(DRAWS):  # a vacuous draw is drawn again from the same generator
    layers = _values(rng, arch, dtype, mode)
    x = rng.normal(size=(batch, arch.sizes[0])).astype(dtype)
    biases = None if layers[0].b is None else [p.b for p in layers]
    if not _problems.vacuous(arch.activations, loss, [p.W for p in layers], biases, x):
      break
  else:
    hypothesis.reject()
  t = targets_for(rng, loss, (batch, arch.sizes[-1]), unnormalized=unnormalized)
  return kind(layers, x, t.astype(dtype), loss, reduction)
