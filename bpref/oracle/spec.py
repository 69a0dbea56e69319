"""The candidate's declared domain, and the test cases drawn from it.

A ``Spec`` is what the user claims the candidate handles: activations, losses,
the output activation each loss may follow, depth and width limits, batch
sizes, dtype, weight layout, reduction. The oracle searches only inside it.

An ``Arch`` names one test case exactly: layer sizes (n_0, ..., n_L), one
activation per layer, the loss, the batch size B, a value seed and whether
kinks are planted. ``build_case`` turns it into NumPy arrays, always the same
arrays for the same ``Arch``; a shrunk ``Arch`` is a smaller network.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import NamedTuple

import numpy as np

from bpref import activations as _activations
from bpref import losses as _losses
from bpref import problems as _problems

LAYOUTS = ("out_in", "in_out")
DTYPES = ("float64", "float32")

MAX_DEPTH = 64
"""The largest ``max_depth`` accepted. The networks drawn here are at most 8 wide, and at
such widths a deep network's gradient falls below its own rounding bound: an all-zero answer
passes it, so the search drops it unchecked. In float64 at depth 64, 9 in 10 relu networks
of width 5 or 8 and every tanh, sigmoid, identity, gelu or softplus one are dropped so (in
float32, nearly every network from depth 16 on); a deeper ``max_depth`` would spend the draw budget
(``search.DRAW_BUDGET``) on networks that check nothing."""


@dataclasses.dataclass(frozen=True)
class Spec:
  """What the candidate claims to handle, and how hard to look.

  Attributes:
    activations: activation names the candidate implements (hidden layers draw from these).
    losses: loss names the candidate implements.
    output_activations: {loss: names} allowed on the output layer for each loss; by default the
      activation the loss requires (softmax for cross_entropy, sigmoid for binary_cross_entropy),
      else every declared activation.
    reduction: "mean" (C = (1/B) sum_b C_b) or "sum".
    max_depth: largest number of layers L (>= 1).
    max_width: largest layer width n_l (>= 1).
    max_batch: largest batch size B (>= 1).
    dtype: "float64" or "float32": the dtype of every array handed to the candidate.
    layout: "out_in" (W_l of shape (n_l, n_{l-1})) or "in_out" (its transpose).
    bias: whether layers carry biases (False: biases is None and db is ignored).
    examples: random cases tried after the targeted probes.
    probes: whether to try the targeted probes first.
    seed: names the whole search; the same seed gives the same cases.
    strict_kinks: treat a different f'(0) convention at a kink as a bug.
    timeout: seconds one candidate call may take.
    isolate: run the candidate in a subprocess (a crash or a hang becomes a report).
    workers: candidate calls spread over this many subprocesses (implies isolation).
    shrink_budget: most candidate calls spent shrinking a failure.
  """
  activations: tuple = ("identity", "relu", "tanh", "sigmoid")
  losses: tuple = ("squared_error",)
  output_activations: tuple | None = None
  reduction: str = "mean"
  max_depth: int = 3
  max_width: int = 5
  max_batch: int = 4
  dtype: str = "float64"
  layout: str = "out_in"
  bias: bool = True
  examples: int = 40
  probes: bool = True
  seed: int = 0
  strict_kinks: bool = False
  timeout: float = 60.0
  isolate: bool = False
  workers: int = 1
  shrink_budget: int = 120

  def outputs_for(self, loss: str) -> tuple:
    """The output activations allowed after ``loss``."""
    return dict(self.output_activations)[loss]

  @property
  def hidden(self) -> tuple:
    return tuple(a for a in self.activations if a not in _activations.OUTPUT_ONLY)

  def names(self) -> tuple[tuple, tuple]:
    """(activations, losses) this spec declares, each sorted: its activations and output
    activations, its losses and the logit losses they fuse into. A search hands them to the
    truth (``declared`` of ``bpref.oracle.truth``), whose tables then hold these alone."""
    outputs = {name for _, names in self.output_activations for name in names}
    logits = {_losses.get(loss).logits for loss in self.losses} - {None}
    return tuple(sorted(set(self.activations) | outputs)), tuple(sorted(set(self.losses) | logits))

  def to_json(self) -> dict:
    out = dataclasses.asdict(self)
    out["output_activations"] = {k: list(v) for k, v in self.output_activations}
    return out


def _names(value, what) -> tuple:
  if isinstance(value, str):
    value = tuple(v.strip() for v in value.split(",") if v.strip())
  value = tuple(value)
  if not value:
    raise ValueError(f"{what}: give at least one name")
  return value


def make_spec(**options) -> Spec:
  """A validated ``Spec``; a ValueError names the bad option and the valid choices."""
  fields = {f.name for f in dataclasses.fields(Spec)}
  unknown = sorted(set(options) - fields)
  if unknown:
    raise TypeError(f"unknown option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(fields))}")
  options = {k: v for k, v in options.items() if v is not None}
  acts = _names(options.get("activations", Spec.activations), "activations")
  for a in acts:
    _activations.get(a)
  acts = tuple(dict.fromkeys(acts))
  losses = tuple(dict.fromkeys(_names(options.get("losses", Spec.losses), "losses")))
  for name in losses:
    _losses.get(name)
  hidden = tuple(a for a in acts if a not in _activations.OUTPUT_ONLY)
  given = options.get("output_activations") or {}
  if isinstance(given, (tuple, list)):
    given = dict(given)
  outputs = []
  for name in losses:
    required = _losses.get(name).output
    if name in given:
      outs = _names(given[name], f"output_activations[{name!r}]")
      for a in outs:
        _activations.get(a)
      if required is not None and outs != (required,):
        raise ValueError(f"loss {name!r} takes probabilities from a {required} output layer; "
                         f"output_activations[{name!r}] must be ({required!r},), got {outs}")
    elif required is not None:
      outs = (required,)
    else:
      outs = tuple(a for a in acts if a != "softmax") or hidden
    outputs.append((name, tuple(outs)))
  options.update(activations=acts, losses=losses, output_activations=tuple(outputs))
  spec = Spec(**options)
  if not hidden and spec.max_depth > 1:
    raise ValueError("activations: hidden layers need an elementwise activation; "
                     f"got only {acts}; add one (e.g. 'identity') or set max_depth=1")
  _losses.check_reduction(spec.reduction)
  if spec.dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {DTYPES}; got {spec.dtype!r}")
  if spec.layout not in LAYOUTS:
    raise ValueError(f"layout must be one of {LAYOUTS}; got {spec.layout!r}")
  for name in ("max_depth", "max_width", "max_batch", "workers"):
    if int(getattr(spec, name)) < 1:
      raise ValueError(f"{name} must be >= 1; got {getattr(spec, name)}")
  if spec.max_depth > MAX_DEPTH:
    raise ValueError(f"max_depth must be <= {MAX_DEPTH}; got {spec.max_depth}: a deeper network's "
                     "gradient is below its rounding bound, so that no case there checks anything")
  if spec.examples < 0 or spec.shrink_budget < 0:
    raise ValueError("examples and shrink_budget must be >= 0")
  if not spec.timeout > 0:
    raise ValueError(f"timeout must be > 0 seconds; got {spec.timeout}")
  return spec


class Arch(NamedTuple):
  """One test case by name: the arrays follow from it (see ``build_case``)."""
  sizes: tuple  # (n_0, ..., n_L)
  activations: tuple  # (f_1, ..., f_L)
  loss: str
  batch: int
  seed: int
  kink: bool = False

  @property
  def depth(self) -> int:
    return len(self.activations)

  def describe(self) -> str:
    acts = ",".join(self.activations)
    kink = " kinks" if self.kink else ""
    return (f"sizes={self.sizes} acts=({acts}) loss={self.loss} B={self.batch} "
            f"seed={self.seed}{kink}")

  def to_json(self) -> dict:
    return {"sizes": list(self.sizes), "activations": list(self.activations), "loss": self.loss,
            "batch": self.batch, "seed": self.seed, "kink": self.kink}

  @classmethod
  def from_json(cls, d) -> "Arch":
    return cls(tuple(d["sizes"]), tuple(d["activations"]), d["loss"], int(d["batch"]),
               int(d["seed"]), bool(d.get("kink", False)))


class Case(NamedTuple):
  """The arrays of one test case, W_l always in the (n_l, n_{l-1}) layout here.

  ``biases`` is None when the spec has no biases.
  """
  arch: Arch
  weights: tuple
  biases: tuple | None
  x: np.ndarray
  t: np.ndarray
  reduction: str
  dtype: str


DRAWS = 64
"""Value draws ``build_case`` makes for one ``Arch`` before it settles for a vacuous one."""


def build_case(arch: Arch, spec: Spec) -> Case:
  """The arrays named by ``arch``: W_l ~ N(0, 1/n_{l-1}), b_l ~ N(0, 0.25), x ~ N(0, 1).

  With ``arch.kink``, unit 0 of every layer with a kinked activation has a zero
  row of W_l and b_l[0] = 0, so its pre-activation is exactly 0 for every example
  whatever the order of the candidate's sums (not in a layer of width 1, where
  it would silence the whole layer).

  A draw in which some layer's gradient is structurally zero (``vacuous``: an
  all-dead relu layer, say) checks nothing there; the values are then drawn
  again from the same generator, so the arrays are still a function of ``arch``.
  """
  rng = np.random.default_rng(arch.seed)
  dtype = np.dtype(spec.dtype)
  for _ in range(DRAWS):
    weights, biases = [], []
    for l in range(1, arch.depth + 1):
      n_out, n_in = arch.sizes[l], arch.sizes[l - 1]
      W = rng.normal(size=(n_out, n_in)) / np.sqrt(n_in)
      b = rng.normal(size=(n_out,)) * 0.5
      act = arch.activations[l - 1]
      if arch.kink and act in _activations.KINKED and n_out > 1:
        W[0, :] = 0.0
        b[0] = 0.0
      weights.append(W.astype(dtype))
      biases.append(b.astype(dtype))
    x = rng.normal(size=(arch.batch, arch.sizes[0])).astype(dtype)
    if not vacuous(arch, weights, biases if spec.bias else None, x, table=spec.names()[0]):
      break
  t = _problems.targets(rng, arch.loss, (arch.batch, arch.sizes[-1])).astype(dtype)
  return Case(arch, tuple(weights), tuple(biases) if spec.bias else None, x, t, spec.reduction,
              spec.dtype)


def vacuous(arch: Arch, weights, biases, x, *, table=None) -> bool:
  """Whether some dW_l or db_l is zero whatever the loss (``bpref.problems.vacuous``)."""
  return _problems.vacuous(arch.activations, arch.loss, weights, biases, x, table=table)


# ---------------------------------------------------------------- the search space

def widths(spec: Spec) -> tuple:
  """Every width the search may draw: 1, ..., max_width."""
  return tuple(range(1, spec.max_width + 1))


def batches(spec: Spec) -> tuple:
  """Every batch size the search may draw: 1, ..., max_batch."""
  return tuple(range(1, spec.max_batch + 1))


def simplest_hidden(spec: Spec) -> str:
  return "identity" if "identity" in spec.hidden else spec.hidden[0]


def simplest_output(spec: Spec, loss: str) -> str:
  outs = spec.outputs_for(loss)
  return "identity" if "identity" in outs else outs[0]


def in_domain(arch: Arch, spec: Spec) -> bool:
  """Whether ``arch`` lies inside the declared domain."""
  return not outside(arch, spec)


def outside(arch: Arch, spec: Spec) -> str:
  """Why ``arch`` lies outside the declared domain, in words; "" when it lies inside."""
  if not 1 <= arch.depth <= spec.max_depth or len(arch.sizes) != arch.depth + 1:
    return f"depth {arch.depth} is not in 1..max_depth {spec.max_depth}"
  if arch.loss not in spec.losses or arch.activations[-1] not in spec.outputs_for(arch.loss):
    return f"a {arch.activations[-1]} output before {arch.loss} is not declared"
  least = _problems.min_output_width(arch.activations[-1], arch.loss)
  if least > spec.max_width:
    return (f"a {arch.activations[-1]} output before {arch.loss} needs at least {least} units, "
            f"more than max_width {spec.max_width}")
  if any(not 1 <= n <= spec.max_width for n in arch.sizes):
    return f"a width of {max(arch.sizes)} is not in 1..max_width {spec.max_width}"
  if not 1 <= arch.batch <= spec.max_batch:
    return f"B = {arch.batch} is not in 1..max_batch {spec.max_batch}"
  if any(a not in spec.hidden for a in arch.activations[:-1]):
    return "a hidden activation is not declared"
  if arch.sizes[-1] < least:
    return (f"a {arch.activations[-1]} output before {arch.loss} needs at least {least} units "
            f"(max_width {spec.max_width})")
  return ""


def probes(spec: Spec) -> list:
  """Targeted cases tried before the random search.

  Each probe makes one classic blind spot visible: non-identity and identity output
  layers; depth 1, 2 and 3; B = 1, B > 1 and B = n_0; non-square and square layers;
  several outputs and one; every declared hidden activation; planted kinks in a network of
  each declared kinked activation.
  """
  out = []
  w, bs = widths(spec), batches(spec)
  big = w[-1]
  mid = w[min(1, len(w) - 1)]
  bmid = bs[min(2, len(bs) - 1)]
  hid = spec.hidden or ("identity",)
  plain = simplest_hidden(spec) if spec.hidden else "identity"
  for n, loss in enumerate(spec.losses):
    outs = spec.outputs_for(loss)
    fancy = [a for a in outs if a != "identity"] or list(outs)
    k_many = mid if mid >= 2 else big
    for depth in range(1, min(3, spec.max_depth) + 1):
      out_act = fancy[(depth + n) % len(fancy)] if depth != 2 else outs[0]
      acts = tuple(hid[(j + depth + n) % len(hid)] for j in range(depth - 1)) + (out_act,)
      sizes = tuple([big] + [mid if j % 2 == 0 else big for j in range(depth - 1)] + [k_many])
      out.append(Arch(sizes, acts, loss, bmid, 1 + depth))
    depth = min(3, spec.max_depth)
    sq = (mid,) * (depth + 1)
    out.append(Arch(sq, tuple(hid[j % len(hid)] for j in range(depth - 1)) + (fancy[0],), loss,
                    mid if mid in bs else bmid, 12))
    out.append(Arch((big,) * depth + (1,), (plain,) * (depth - 1) + (fancy[-1],), loss, bmid, 13))
    for k, act in enumerate(a for a in spec.activations if a in _activations.KINKED):
      hidden_act = act if act in hid else plain
      out_act = act if act in outs else outs[0]
      out.append(Arch((mid,) * (depth + 1), (hidden_act,) * (depth - 1) + (out_act,), loss, bmid,
                      14 + k, True))
  loss = spec.losses[0]
  outs = spec.outputs_for(loss)
  depth = min(2, spec.max_depth)
  for act in hid:
    out_act = act if act in outs else outs[0]
    out.append(Arch((big,) + (mid,) * depth, (act,) * (depth - 1) + (out_act,), loss, 1, 11))
  seen, unique = set(), []
  for arch in out:
    if arch.sizes[-1] < _problems.min_output_width(arch.activations[-1], arch.loss):
      arch = arch._replace(sizes=arch.sizes[:-1] + (2,))
    if arch not in seen and in_domain(arch, spec):
      seen.add(arch)
      unique.append(arch)
  return unique


def strategy(spec: Spec):
  """A hypothesis strategy of ``Arch`` inside the domain; it shrinks toward small, plain nets."""
  from hypothesis import strategies as st  # the 'oracle' extra

  w, bs = widths(spec), batches(spec)
  hid = (simplest_hidden(spec),) + tuple(a for a in spec.hidden if a != simplest_hidden(spec))

  @st.composite
  def arch(draw):
    loss = draw(st.sampled_from(spec.losses))
    depth = draw(st.integers(1, spec.max_depth))
    outs = spec.outputs_for(loss)
    outs = (simplest_output(spec, loss),) + tuple(a for a in outs if a != simplest_output(spec, loss))
    uniform = draw(st.booleans())
    if uniform:
      acts = (draw(st.sampled_from(hid)),) * (depth - 1)
    else:
      acts = tuple(draw(st.sampled_from(hid)) for _ in range(depth - 1))
    out_act = draw(st.sampled_from(outs))
    square = draw(st.booleans())
    width = st.integers(1, w[-1])  # every width, the small ones and the edges first
    if square:
      sizes = (draw(width),) * (depth + 1)
    else:
      sizes = tuple(draw(width) for _ in range(depth + 1))
    if sizes[-1] < _problems.min_output_width(out_act, loss):
      sizes = sizes[:-1] + (2,)
    batch = draw(st.integers(1, bs[-1]) if sizes[0] > bs[-1] or not draw(st.booleans())
                 else st.just(sizes[0]))  # B = n_0 half the time: a transposed x shows nothing else
    kink = draw(st.booleans()) if any(a in _activations.KINKED for a in acts + (out_act,)) else False
    seed = draw(st.integers(0, 2 ** 31 - 1))
    return Arch(sizes, acts + (out_act,), loss, batch, seed, kink)

  return arch()


def random_archs(spec: Spec, count: int, seed, *, keep_outside: bool = False) -> list:
  """``count`` architectures drawn by hypothesis from ``strategy(spec)``, the same for a seed.

  Only hypothesis's generation phase runs here: the candidate is called elsewhere, so the
  list (and every verdict) is the same whether the calls run serially or on workers. The
  drawing runs in its own thread, so the oracle also works inside a user's @given test
  (hypothesis keeps its test context per thread and refuses to nest @given in one).

  ``seed`` is an int, or a str naming a further draw of a search (``engine.cases``).
  Draws outside the domain (``outside``) are left out, unless ``keep_outside``. Hypothesis may
  make fewer draws than ``count`` (a space it has exhausted, or draws too long for its buffer).
  """
  if count <= 0:
    return []
  try:
    import hypothesis
    from hypothesis import HealthCheck, Phase, given, settings
  except ImportError:
    raise ValueError("the oracle's random search needs hypothesis: pip install 'bpref[oracle]' "
                     "(or examples=0 for the targeted probes only)") from None

  drawn, failure = [], []

  def run():
    try:
      @hypothesis.seed(seed)
      @settings(max_examples=count, database=None, deadline=None, phases=(Phase.generate,),
                derandomize=False, suppress_health_check=list(HealthCheck))
      @given(strategy(spec))
      def collect(arch):
        if keep_outside or in_domain(arch, spec):
          drawn.append(arch)

      collect()
    except BaseException as exc:  # re-raised in the caller's thread
      failure.append(exc)

  thread = threading.Thread(target=run, name="bpref-oracle-draw")
  thread.start()
  thread.join()
  if failure:
    raise failure[0]
  return stratified(drawn, spec)


def _edges_first(top: int) -> tuple:
  """1, ..., top with the edges and the small sizes first: 1, top, 2, top - 1, 3, 4, ..."""
  head = tuple(dict.fromkeys(n for n in (1, top, 2, top - 1) if 1 <= n <= top))
  return head + tuple(n for n in range(3, top + 1) if n not in head)


def stratified(archs: list, spec: Spec) -> list:
  """The draws with the batch of every other one, and the input width of the others, set in
  turn to every integer up to max_batch and max_width (``_edges_first``): hypothesis's own
  draws favour small sizes, and a search must reach each size its domain declares. The rest of
  each draw, and every draw past those, is hypothesis's."""
  batches, widths = _edges_first(spec.max_batch), _edges_first(spec.max_width)
  out = []
  for i, arch in enumerate(archs):
    k = i // 2
    if i % 2 == 0 and k < len(batches):
      arch = arch._replace(batch=batches[k])
    elif i % 2 == 1 and k < len(widths):
      arch = arch._replace(sizes=(widths[k],) + arch.sizes[1:])
    out.append(arch)
  return out
