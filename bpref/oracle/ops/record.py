"""What an op kind is: one record holding everything the op oracle's engine needs of it.

The engine (``_search``'s search and shrinker, ``_judge``'s call and judgement, ``_diagnosis``'s
bug models, the adapters, the CLI) never branches on a kind's name: it asks the kind's record.
A record is an ``OpKind``: its options, the arrays a case holds and how they are drawn, the
candidate's arguments and returns, bpref's answer with the magnitude bound of each output (the
rounding model), and the bug models the diagnosis tries. ``bpref.oracle.ops.kinds`` lists the
records; ``tests/test_ops_kinds.py`` lists what a new record still lacks.

The error of a returned array X is measured normwise against its magnitude bound M_X (the size
of the terms summed into each entry, propagated through the op's equations):

  e(X) = ||X_candidate - X_bpref||_F / ||M_X||_F  <=  tol = c u 3 k          (T) with L = 1

with k the longest sum of the op (proofs/tolerance.md). Every kind is judged by this one measure
(``error``) and this one tolerance (``bpref.tolerance.tolerance``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from bpref import tolerance as _tolerance
from bpref.error import normwise_error
from bpref.oracle.diagnosis import Finding


class OpSpec(NamedTuple):
  """What one op check claims and how hard it looks.

  Attributes:
    kind: the op kind (``bpref.oracle.ops.kinds.KINDS``).
    name: the activation or loss name, for the kinds that take one; else None.
    takes: what the candidate is handed (the kind's ``takes``; the first is the default).
    layout: how the candidate holds its arrays (the kind's ``layouts``): "out_in" or "in_out"
      for a weight matrix, "btc" or "nc" for layernorm's rows, "llmc" or "torch" for attention.
    bias: whether the dense layer has a bias (dense, layer).
    reduction: "mean" or "sum" (loss).
    targets: "probabilities" (t of the shape of y) or "labels" (one class index per row,
      softmax losses only).
    dtype: "float64" or "float32".
    examples: random cases after the probes.
    seed: names the search.
    max_batch, max_width: largest batch and width of the random cases (a kind names what its
      widths are: units, channels, positions).
    strict_conventions: a kink convention or gelu's tanh approximation counts as a bug.
    timeout: seconds one candidate call may take.
    shrink_budget: most candidate calls spent shrinking.
    signature: how the candidate is called: "bpref" (the argument orders of
      ``bpref.oracle.ops``) or "cs231n" (``(dout, cache)``, for the kinds that list it).
    eps: the epsilon under layernorm's square root.
    heads: attention's number of heads; 0 searches 1, 2 and 3.
  """
  kind: str
  name: str | None = None
  takes: str = ""
  layout: str = ""
  bias: bool = True
  reduction: str = "mean"
  targets: str = "probabilities"
  dtype: str = "float64"
  examples: int = 40
  seed: int = 0
  max_batch: int = 5
  max_width: int = 6
  strict_conventions: bool = False
  timeout: float = 60.0
  shrink_budget: int = 150
  signature: str = "bpref"
  eps: float = 1e-5
  heads: int = 0

  def to_json(self) -> dict:
    return dict(self._asdict())


class Label(NamedTuple):
  """A case's name: its values are a function of it alone. ``dims`` are the kind's sizes."""
  dims: tuple
  family: str
  seed: int

  def describe(self) -> str:
    return f"dims {self.dims}, {self.family} values, value seed {self.seed}"


class OpCase(NamedTuple):
  """One case: its name (None once the shrinker changed its values) and its arrays, float64
  copies of exactly the values handed to the candidate, in bpref's layout."""
  label: Label | None
  arrays: dict


class OpTruth(NamedTuple):
  """bpref's answer on one case and how far a correct candidate may be from it.

  Attributes:
    expected: {output name: float64 array}, in bpref's layout.
    bounds: {output name: M_X}, the magnitude bound of each output.
    tol: tol of (T) for the op.
    value: the reduced loss (loss only), else None; value_bound its magnitude.
    forward: bpref's forward output; forward_bound its magnitude bound M.
    forward_tol: the forward pass's tolerance.
    z: the pre-activations where the kind has them, float64; else None.
    a: f(z) where there is an activation, else None.
  """
  expected: dict
  bounds: dict
  tol: float
  value: float | None
  value_bound: float
  forward: object
  forward_bound: object
  forward_tol: float
  z: np.ndarray | None = None
  a: np.ndarray | None = None


class Model(NamedTuple):
  """A bug model: the outputs a candidate with this bug returns on a case."""
  code: str
  summary: str
  outputs: dict


class OpCandidate:
  """An op's backward function, with its forward function when there is one.

  Args:
    backward: the candidate (see ``bpref.oracle.ops`` for each kind's arguments).
    forward: optional; (x, W, b) -> z (dense), (x, W, b) -> a (layer), z -> a (activation),
      z -> y (softmax), (y, t) -> C (loss): checked against bpref's forward pass too.
    name: what reports call it.
  """

  def __init__(self, backward, forward=None, name: str = ""):
    if not callable(backward):
      raise TypeError(f"backward must be callable; got {type(backward).__name__}")
    if forward is not None and not callable(forward):
      raise TypeError(f"forward must be callable or None; got {type(forward).__name__}")
    self.backward, self.forward = backward, forward
    self.name = name or getattr(backward, "__qualname__", type(backward).__name__)

  def __repr__(self):
    return f"OpCandidate({self.name})"


class Malformed(Exception):
  """The candidate's return value has the wrong structure; the message says what was expected."""


# ---------------------------------------------------------------- the one error measure

def unit_and_floor(dtype) -> tuple:
  """(u, lambda / u): the unit roundoff and the underflow floor (U): an operation may lose up to
  the smallest normal number lambda absolutely (gradual underflow, or XLA's flush to zero)."""
  u = _tolerance.unit_roundoff(dtype)
  return u, float(np.finfo(dtype).tiny) / u


def error(actual, expected, bound) -> float:
  """||actual - expected||_F / ||M||_F: ``bpref.error.normwise_error``, the one normwise measure."""
  return normwise_error(actual, expected, bound)


def finite(truth: OpTruth) -> bool:
  """Whether bpref's answer is finite here (binary cross-entropy of a y rounded to 1 is not)."""
  return all(np.all(np.isfinite(v)) for v in truth.expected.values()) and \
      all(np.all(np.isfinite(v)) for v in truth.bounds.values()) and \
      (truth.value is None or math.isfinite(truth.value))


def vacuous(truth: OpTruth) -> list:
  """The outputs an all-zero answer would pass (e(0) <= tol): such a case checks nothing there."""
  return [k for k, v in truth.expected.items()
          if not error(np.zeros_like(v), v, truth.bounds[k]) > truth.tol]


# ---------------------------------------------------------------- drawing values

FAMILIES = ("plain", "normal", "spread", "kink", "saturated", "huge", "tiny", "limit",
            "limit_tiny")
"""Value families, plainest first: the shrinker moves a failure towards the front. A kind
searches those of its ``families`` and may give them its own meaning (a constant row for
layernorm's "kink", say); the value helpers below give the common one."""


def plain(rng, shape):
  """Entries from {+-1/2, +-1, +-2}."""
  return rng.choice(np.array([-2.0, -1.0, -0.5, 0.5, 1.0, 2.0]), size=shape)


def family_values(rng, family: str):
  """values(shape, scale) of a value family: small integers ("plain"), normal values spread
  over two decades ("spread"), else normal values; each times scale."""
  if family == "plain":
    return lambda shape, scale: plain(rng, shape) * scale
  if family == "spread":
    return lambda shape, scale: rng.normal(size=shape) * scale * 10.0 ** rng.uniform(-1, 1, shape)
  return lambda shape, scale: rng.normal(size=shape) * scale


def signs(rng, shape):
  return np.where(rng.random(shape) < 0.5, -1.0, 1.0)


def scaled(rng, shape, low, high):
  """Signed values with |v| log-uniform in [low, high]."""
  return signs(rng, shape) * np.exp(rng.uniform(math.log(low), math.log(high), shape))


def exact(values, dtype) -> np.ndarray:
  """The values rounded to ``dtype``, held in float64."""
  return np.asarray(np.asarray(values, np.float64).astype(dtype), np.float64)


def tiled(size: int, taps: int, stride: int, pad: int = 0) -> int:
  """The least size >= ``size`` whose windows tile it, a convolution's or a pooling's: the
  window inside the padded input and (size + 2 pad - taps) a multiple of stride."""
  size = max(size, taps - 2 * pad)
  return size + (-(size + 2 * pad - taps)) % stride


def bucket(n: int) -> int:
  """The padded size of an axis of length n: 8, 16, 32, ..., so that few programs compile."""
  size = 8
  while size < n:
    size *= 2
  return size


ROW_PROBES = {
    "nc": ([(1, 1), (1, 4), (3, 1), (4, 5), (3, 32)], [(3, 4), (2, 3)]),
    "btc": ([(1, 1, 1), (1, 1, 4), (2, 3, 1), (2, 2, 5), (3, 1, 32)], [(2, 2, 4), (1, 3, 3)]),
}
"""The probes of a kind over rows of C features, (N, C) or (B, T, C): one entry, one feature, one
row, a square-ish case and a wide row; then the shapes each value family is probed at."""


def row_dims(spec: OpSpec, rng) -> tuple:
  """Random (N, C) (layout "nc") or (B, T, C) within the spec's maxima."""
  B = int(rng.integers(1, spec.max_batch + 1))
  if spec.layout == "nc":
    return (B, int(rng.integers(1, spec.max_width + 1)))
  return (B,) + tuple(int(w) for w in rng.integers(1, spec.max_width + 1, 2))


# ---------------------------------------------------------------- the record

class OpKind:
  """One op kind. Subclasses set the class attributes and write the methods marked required;
  the others have defaults that fit a kind whose candidate takes arrays and returns arrays.

  Class attributes:
    name: the kind's name, as ``check_op`` and ``--op`` spell it.
    summary: one line for the table of kinds.
    takes: what the candidate may be handed; the first is the default.
    layouts: the layouts the candidate may hold its arrays in; the first is the default.
    signatures: how the candidate may be called; "bpref" first.
    names: the names the kind takes (activations, losses); empty: it takes none.
    options: the ``OpSpec`` fields beyond the common ones that the kind reads.
    families: the value families it searches.
    forward_name: its forward function in words.
    arguments: the candidate's arguments, in order, by array name (``args``).
    returns: the outputs, in order (``output_names``).
    dims_names: what each entry of ``Label.dims`` is; the first is the batch.
    integer_arrays: the arrays of integers (ids, labels), handed as int64.
    refits_width: whether the diagnosis refits a constant factor at other widths too.
  """
  name = ""
  summary = ""
  takes: tuple = ("x",)
  layouts: tuple = ("",)
  signatures: tuple = ("bpref",)
  names: tuple = ()
  options: tuple = ()
  families: tuple = ("plain", "normal", "spread", "kink")
  forward_name = ""
  arguments: tuple = ()
  returns: tuple = ()
  dims_names: tuple = ()
  integer_arrays: tuple = ()
  refits_width = False

  # ---- options
  def validate(self, spec: OpSpec) -> OpSpec:
    """The spec with the kind's defaults filled in; ValueError says what is wrong."""
    if self.names:
      if spec.name is None:
        raise ValueError(f"an op of kind {self.name!r} needs a name; valid names: "
                         f"{', '.join(self.names)}")
      if spec.name not in self.names:
        raise ValueError(f"{spec.name!r} is not a name of kind {self.name!r}; valid names: "
                         f"{', '.join(self.names)}")
    elif spec.name is not None:
      raise ValueError(f"an op of kind {self.name!r} takes no name; got name={spec.name!r}")
    takes = spec.takes or self.takes[0]
    if takes not in self.takes:
      raise ValueError(f"takes={takes!r} is not valid for kind {self.name!r}; valid: "
                       f"{', '.join(self.takes)}")
    layout = spec.layout or self.layouts[0]
    if layout not in self.layouts:
      raise ValueError(f"layout={layout!r} is not valid for kind {self.name!r}; valid: "
                       f"{', '.join(repr(v) for v in self.layouts)}")
    if spec.signature not in self.signatures:
      raise ValueError(f"signature={spec.signature!r} is not valid for kind {self.name!r}; "
                       f"valid: {', '.join(self.signatures)}")
    return spec._replace(takes=takes, layout=layout)

  def describe(self, spec: OpSpec) -> str:
    what = self.name + (f" {spec.name}" if spec.name else "")
    extra = [f"takes {spec.takes}"] if len(self.takes) > 1 else []
    extra += [spec.dtype] + ([f"layout {spec.layout}"] if len(self.layouts) > 1 else [])
    return f"{what} ({', '.join(extra)})"

  # ---- cases
  def number(self) -> int:
    """A stable number for the kind, mixed into each case's random stream."""
    return sum(ord(c) * 31 ** i for i, c in enumerate(self.name)) % (1 << 16)

  def rng(self, spec: OpSpec, label: Label) -> np.random.Generator:
    return np.random.default_rng([label.seed, *label.dims, FAMILIES.index(label.family),
                                  self.number()])

  def value_families(self, spec: OpSpec) -> tuple:
    """The value families searched, plainest first."""
    return self.families

  def searched(self, spec: OpSpec) -> str:
    """What a search covers, in words, for a PASS report."""
    shapes, family_dims = self.probe_dims(spec)
    names = "x".join(self.dims_names) or "dims"
    return (f"{names} {', '.join(str(tuple(d)) for d in shapes)} and random up to batch "
            f"{spec.max_batch}, width {spec.max_width}; values {', '.join(self.value_families(spec))}")

  def probe_dims(self, spec: OpSpec) -> tuple:
    """(shapes each probed with normal values, shapes each probed with every family)."""
    raise NotImplementedError

  def random_dims(self, spec: OpSpec, rng) -> tuple:
    """One random ``Label.dims`` within the spec's maxima."""
    raise NotImplementedError

  def draw(self, spec: OpSpec, label: Label) -> dict:
    """The primary arrays of the case named ``label`` (float64; rounded to the dtype after)."""
    raise NotImplementedError

  def case(self, spec: OpSpec, label: Label) -> OpCase:
    """The case named ``label``: its primary arrays drawn and rounded to the dtype, the rest
    derived."""
    arrays = {k: exact(v, spec.dtype) for k, v in self.draw(spec, label).items()}
    return OpCase(label, self.derive(spec, arrays))

  def primary(self, spec: OpSpec) -> tuple:
    """The arrays the others derive from: the shrinker changes these."""
    return self.arguments

  def derive(self, spec: OpSpec, arrays: dict) -> dict:
    """The primary arrays with the derived ones added."""
    return {k: v for k, v in arrays.items() if k in self.primary(spec)}

  def shrinkable(self, spec: OpSpec) -> tuple:
    return tuple(n for n in self.primary(spec) if n not in self.integer_arrays)

  def replacements(self, spec: OpSpec, name: str, value) -> tuple:
    """What the shrinker tries in place of one entry of array ``name``, plainest first; 0 last,
    so that a bug away from a kink is not moved onto it."""
    return tuple(v for v in (1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 0.0)
                 if not (v == value and np.signbit(v) == np.signbit(value)))

  # ---- bpref's answer
  def compute(self, spec: OpSpec, case: OpCase, variant=None) -> OpTruth:
    """bpref's answer and the magnitude bound of each output; ``variant`` names a twin
    convention (``twin``)."""
    raise NotImplementedError

  def output_names(self, spec: OpSpec) -> tuple:
    return self.returns

  def twin(self, spec: OpSpec):
    """The variant whose answer a candidate may give by convention (gelu's tanh form), or None."""
    return None

  # ---- the candidate's side
  def arg_names(self, spec: OpSpec) -> tuple:
    return self.arguments

  def args(self, spec: OpSpec, case: OpCase) -> tuple:
    """The arguments of one call: fresh copies in the candidate's dtype and layout."""
    dt = np.dtype(spec.dtype)
    return tuple(self.declared(spec, n, case.arrays[n]).astype(
        np.int64 if n in self.integer_arrays else dt) for n in self.arg_names(spec))

  def forward_args(self, spec: OpSpec, case: OpCase) -> tuple:
    """The forward function's arguments: the backward's, less dout."""
    return tuple(a for n, a in zip(self.arg_names(spec), self.args(spec, case)) if n != "dout")

  def returned(self, spec: OpSpec, case: OpCase, result) -> tuple:
    """({output: array as returned}, loss value or None); Malformed for a wrong structure."""
    names = self.output_names(spec)
    if len(names) == 1:
      if isinstance(result, list):
        raise Malformed(f"the candidate must return one array {names[0]}; it returned a "
                        f"sequence of {len(result)}")
      return {names[0]: result}, None
    if not isinstance(result, list) or len(result) != len(names):
      what = f"a sequence of {len(result)}" if isinstance(result, list) else type(result).__name__
      raise Malformed(f"the candidate must return ({', '.join(names)}); it returned {what}")
    return dict(zip(names, result)), None

  def declared(self, spec: OpSpec, name: str, value) -> np.ndarray:
    """An array in the candidate's layout, from bpref's."""
    return np.asarray(value)

  def internal(self, spec: OpSpec, name: str, value) -> np.ndarray:
    """An array in bpref's layout, from the candidate's (``declared``'s inverse)."""
    return np.asarray(value)

  def shape_findings(self, spec: OpSpec, case: OpCase, name: str, got, want) -> tuple:
    """(message, findings) for a returned array of the wrong shape."""
    msg = f"{name} has shape {got}, expected {want}"
    if int(np.prod(got)) == int(np.prod(want)):
      msg += f" (the right number of entries: reshape it to {want})"
    return msg, ()

  def forward_scalar(self, spec: OpSpec) -> bool:
    """Whether the forward function returns a scalar (a loss)."""
    return False

  def call_text(self, spec: OpSpec) -> str:
    """How a reproducer calls the candidate."""
    return ", ".join(self.arg_names(spec))

  def required(self, spec: OpSpec) -> tuple:
    """The arrays ``expected`` needs."""
    return self.primary(spec)

  # ---- diagnosis
  def models(self, spec: OpSpec, case: OpCase, truth: OpTruth) -> list:
    """The bug models on one case: ``Model``s, the most specific first."""
    return []

  def convention(self, spec: OpSpec, case: OpCase, truth: OpTruth, outputs: dict) -> str:
    """A note naming the convention the candidate follows, when that is the only difference."""
    return ""

  def last_findings(self, spec: OpSpec, minimal, wrong) -> list:
    """Findings read off the minimal run when no bug model fits (``wrong``: its wrong outputs)."""
    return [Finding("undiagnosed", f"{', '.join(wrong)} wrong; no bug model reproduces it",
                    self.undiagnosed_detail(spec, minimal))]

  def undiagnosed_detail(self, spec: OpSpec, minimal) -> str:
    return ""

  def nonfinite_findings(self, spec: OpSpec, minimal) -> list:
    """Findings on where a candidate's NaN or inf comes from (the minimal run's verdict holds
    its outputs, NaN and all); none by default."""
    return []

  def rerun_labels(self, spec: OpSpec, verdict_kind: str, origin: Label | None) -> list:
    """(label, where, what the minimal case is) to diagnose on instead when the minimal case
    (``origin``, None when it was handed, not drawn) ends in ``verdict_kind``: a candidate that
    fails to run on one shape may run on another."""
    return []

  def extra_confirmations(self, spec: OpSpec, label: Label) -> list:
    """Cases beyond other seeds and a larger case on which a fitting bug model must hold too."""
    return []

  def slips(self, spec: OpSpec) -> list:
    """(code, summary, detail, how) for the slips in calling ``check_op`` this kind may show:
    ``how`` is the ``OpSpec`` under which the candidate would be right, "swapped" (its
    arguments reversed) or "forward" (it computes the forward pass)."""
    return [("forward_as_backward", f"the candidate computes the forward pass "
             f"{self.forward_name}, not its backward: pass the backward function, which returns "
             f"({', '.join(self.output_names(spec))})",
             f"its answer is bpref's forward output {self.forward_name}", "forward")]

  def focus(self, spec: OpSpec, wrong: list) -> list:
    """The wrong outputs the diagnosis explains: all of them, or a kind's first wrong part."""
    return wrong

  # ---- candidates
  def adapt(self, spec: OpSpec, candidate):
    """The candidate as an ``OpCandidate`` when the kind takes something other than one
    backward function (a set of layer functions, say); None: the usual adapters apply."""
    return None

  # ---- framework candidates (``bpref.oracle.ops.adapters``)
  def framework_call(self, spec: OpSpec, args: tuple) -> tuple:
    """(inputs, which inputs are differentiated, cotangent or None for a scalar 1) of the
    framework function, from the backward's arguments."""
    names = self.arg_names(spec)
    inputs = [a for n, a in zip(names, args) if n != "dout"]
    grad = [n not in self.integer_arrays for n in names if n != "dout"]
    return inputs, grad, args[names.index("dout")]

  def framework_result(self, spec: OpSpec, grads: list):
    """The candidate's return value from the framework's gradients of the differentiated inputs."""
    return grads[0] if len(grads) == 1 else tuple(grads)
