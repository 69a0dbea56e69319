"""The block kind: someone's layer functions checked together, inside a composition of layers.

A candidate for ``check_op("block", layers, name=...)`` is the set of backward functions a
hand-written network is built from: a mapping (a dict, a module, any object with these
attributes) from a kind's name to that kind's backward function, called as the kind's own
record calls it (docs/oracle.md). The name picks the composition:

* "gpt2" (the default): a GPT-2 block (``bpref.layers.block``), as llm.c's ``train_gpt2.c``
  has its layer functions:

  ==========  ===============================  ===========================
  name        called as                        returns
  ==========  ===============================  ===========================
  dense       (x, W, b, dout), x (N, n_in)     (dx, dW, db); llm.c's matmul_backward
  activation  (z, dout): gelu_tanh             dz; llm.c's gelu_backward
  layernorm   (x, w, b, dout), x (B, T, C)     (dx, dw, db)
  attention   (qkv, dout, heads)               dqkv
  ==========  ===============================  ===========================

* "cnn": a small convolutional network (``bpref.layers.cnn``) with CS231n's layer functions,
  conv2d, batchnorm, activation (relu), maxpool2d, dense and loss (``bpref.oracle.ops.cnn``).

Each case is one network on random inputs and parameters (and, for the block, dC/dy). bpref
runs it forward and backward, and the candidate's functions are handed what bpref's backward
steps are handed (the composition's ``STEPS``): the network's own activations and cotangents,
rounded to the dtype. Each step's answer is judged by its kind's record, with that kind's
rounding model: the outputs are named "step.output" (fc_proj.dW, ln2.dx, conv.dw, ...), and a
failure names the first step of the backward pass whose gradient is wrong, with that kind's
diagnosis run on that step alone. The sums of the composition (the block's residuals) are
bpref's: the candidate's layer functions are what is checked.

A composition is an object with: ``name``, ``summary``, ``steps`` (``bpref.layers.block.Step``
records in backward order), ``records`` (each step kind's ``OpKind``), ``signatures``,
``options``, ``families``, ``dims_names``, ``primary`` (the arrays a case is drawn as) and
``unjudged`` (outputs left out of the verdict, with the reason: 0 by the network's structure);
``describe``, ``probe_dims``, ``random_dims`` and ``searched`` as an ``OpKind`` has them;
``draw(spec, label, rng)`` (the primary arrays), ``given(spec, arrays)`` (what each step is
handed, or None where the shapes make no network), ``derived(spec, arrays)`` (further arrays of
a case), ``label_spec`` and ``case_spec`` (the spec a label's or a case's steps need, with
GPT-2's heads), and ``step_fields(spec, step, handed)`` (the ``OpSpec`` fields each step is
judged under, or with ``handed`` the layout bpref hands it in).
"""

from __future__ import annotations


import jax
import numpy as np

from bpref import compilation
from bpref.layers import block as _block
from bpref.oracle.diagnosis import Finding
from bpref.oracle.ops import attention as _attention_kind
from bpref.oracle.ops import classic as _classic
from bpref.oracle.ops import cnn as _cnn_kind
from bpref.oracle.ops import layernorm as _layernorm_kind
from bpref.oracle.ops.record import (Malformed, Model, OpCandidate, OpCase, OpKind, OpSpec, OpTruth,
                                     error, exact, family_values)

_PARAMS = _block.BlockParams._fields


# ---------------------------------------------------------------- the GPT-2 block

def _shapes(C: int) -> dict:
  return dict(ln1_w=(C,), ln1_b=(C,), W_qkv=(3 * C, C), b_qkv=(3 * C,), W_proj=(C, C),
              b_proj=(C,), ln2_w=(C,), ln2_b=(C,), W_fc=(4 * C, C), b_fc=(4 * C,),
              W_fp=(C, 4 * C), b_fp=(C,))


@compilation.jit(static_argnums=(3, 4))
def _steps(params, x, dy, heads, eps):
  _, cache = _block.forward(params, x, heads, eps=eps)
  return _block.steps(params, cache, dy)[0]


class GPT2:
  """The composition of ``bpref.layers.block`` as the block kind checks it."""

  name = "gpt2"
  summary = ("a GPT-2 block (layernorm, attention, dense, gelu_tanh, residuals)")
  steps = _block.STEPS
  records = {"dense": _classic.DENSE, "activation": _classic.ACTIVATION,
             "layernorm": _layernorm_kind.LAYERNORM, "attention": _attention_kind.ATTENTION}
  signatures = ("bpref",)
  options = ("heads", "eps")
  families = ("plain", "normal", "spread")
  dims_names = ("B", "T", "heads", "hs")
  primary = ("x", "dout") + _PARAMS
  unjudged: dict = {}

  def describe(self, spec):
    heads = f", {spec.heads} heads" if spec.heads else ""
    return f"block (GPT-2: dense, gelu_tanh, layernorm, attention; {spec.dtype}{heads})"

  def probe_dims(self, spec):
    heads = spec.heads or 2  # T >= 2: with one position attention's dq and dk are 0
    return ([(1, 2, spec.heads or 1, 1), (2, 3, heads, 2), (1, 4, spec.heads or 1, 3)],
            [(2, 3, heads, 2)])

  def random_dims(self, spec, rng):
    B = int(rng.integers(1, min(spec.max_batch, 3) + 1))
    T = int(rng.integers(1, spec.max_width + 1))
    heads = spec.heads or int(rng.integers(1, 4))
    return (B, T, heads, int(rng.integers(1, 4)))

  def searched(self, spec):
    shapes, _ = self.probe_dims(spec)
    return (f"{'x'.join(self.dims_names)} {', '.join(str(tuple(d)) for d in shapes)} and random "
            f"up to batch {spec.max_batch}, width {spec.max_width}; values {', '.join(self.families)}")

  def label_spec(self, spec, label):
    return spec._replace(heads=label.dims[2])

  def case_spec(self, spec, case):
    if spec.heads:
      return spec
    if case.label is not None:
      return spec._replace(heads=case.label.dims[2])
    raise ValueError("block: a case without its label needs heads= in the spec")

  def draw(self, spec, label, rng):
    B, T, heads, hs = label.dims
    C = heads * hs
    values = family_values(rng, label.family)
    out = {"x": values((B, T, C), 1.0), "dout": values((B, T, C), 1.0)}
    for name, shape in _shapes(C).items():  # weights scaled by 1/sqrt(fan-in), as initialised
      scale = 1.0 / np.sqrt(shape[1]) if len(shape) == 2 else 1.0
      out[name] = values(shape, scale) + (1.0 if name.startswith("ln") and name.endswith("_w") else 0.0)
    return out

  def given(self, spec, arrays):
    if not spec.heads:
      raise ValueError("block: the number of heads is part of the case; pass heads=")
    with jax.enable_x64(True):
      params = _block.BlockParams(*(np.asarray(arrays[k], np.float64) for k in _PARAMS))
      given = _steps(params, arrays["x"], arrays["dout"], spec.heads, float(spec.eps))
    return {step: {k: np.asarray(v) for k, v in values.items()} for step, values in given.items()}

  def derived(self, spec, arrays):
    return {}

  def step_fields(self, spec, step, handed):
    return {"heads": spec.heads, "eps": spec.eps}


COMPOSITIONS = {c.name: c for c in (GPT2(), _cnn_kind.CNN_COMPOSITION)}
"""The compositions by name, the default first."""

DEFAULT = "gpt2"


# ---------------------------------------------------------------- the record

class Block(OpKind):
  name = "block"
  summary = ("layer functions checked on a network's own activations, each step by its kind: "
             "name gpt2 (the default), a GPT-2 block (layernorm, attention, dense, gelu_tanh, "
             "residuals); name cnn, a small CNN (conv2d, batchnorm, relu, maxpool2d, dense, "
             "softmax cross-entropy); the first wrong step named")
  takes = ("layers",)
  signatures = ("bpref", "cs231n")
  names = tuple(COMPOSITIONS)
  options = ("name", "heads", "eps", "signature")
  families = ("plain", "normal", "spread")
  forward_name = "the network's forward"

  def _composition(self, spec):
    return COMPOSITIONS[spec.name or DEFAULT]

  # ---- options
  def validate(self, spec):
    name = DEFAULT if spec.name is None else spec.name
    if name not in COMPOSITIONS:
      raise ValueError(f"{name!r} is not a composition of kind 'block'; valid names: "
                       f"{', '.join(COMPOSITIONS)} (None is {DEFAULT!r})")
    comp = COMPOSITIONS[name]
    if spec.takes not in ("", "layers"):
      raise ValueError(f"takes={spec.takes!r} is not valid for kind 'block': it takes the layer "
                       "functions ('layers')")
    if spec.layout:
      raise ValueError(f"layout={spec.layout!r} is not valid for kind 'block': each step has its "
                       "kind's default layout")
    if spec.signature not in comp.signatures:
      raise ValueError(f"signature={spec.signature!r} is not valid for block {name!r}; valid: "
                       f"{', '.join(comp.signatures)}")
    if spec.heads and "heads" not in comp.options:
      raise ValueError(f"heads={spec.heads} is not an option of block {name!r}: its steps have no "
                       "attention")
    return spec._replace(name=name, takes="layers", layout="")

  def describe(self, spec):
    return self._composition(spec).describe(spec)

  def searched(self, spec):
    return self._composition(spec).searched(spec)

  def value_families(self, spec):
    return self._composition(spec).families

  # ---- cases
  def probe_dims(self, spec):
    return self._composition(spec).probe_dims(spec)

  def random_dims(self, spec, rng):
    return self._composition(spec).random_dims(spec, rng)

  def draw(self, spec, label):
    return self._composition(spec).draw(spec, label, self.rng(spec, label))

  def primary(self, spec):
    return self._composition(spec).primary

  def derive(self, spec, arrays):
    comp = self._composition(spec)
    out = {k: arrays[k] for k in comp.primary}
    given = comp.given(spec, out)
    if given is None:  # shapes that make no network (a shrunk case): it checks nothing
      return out
    for step in comp.steps:
      for name, value in given[step.name].items():
        out[f"{step.name}.{name}"] = exact(np.asarray(value), spec.dtype)
    out.update(comp.derived(spec, out))
    return out

  def case(self, spec, label):
    arrays = {k: exact(v, spec.dtype) for k, v in self.draw(spec, label).items()}
    return OpCase(label, self.derive(self._composition(spec).label_spec(spec, label), arrays))

  def shrinkable(self, spec):
    return ()

  # ---- the steps
  def _step_spec(self, spec, step, handed=False) -> OpSpec:
    """The spec under which a step is judged (``handed``: the layout bpref hands it in)."""
    comp = self._composition(spec)
    fields = comp.step_fields(spec, step, handed)
    return comp.records[step.kind].validate(OpSpec(step.kind, step.variant, dtype=spec.dtype,
                                                   **fields))

  def _step_case(self, spec, step, case) -> OpCase:
    """The step's case for its kind's record: what the step is handed, as that record holds it."""
    record = self._composition(spec).records[step.kind]
    handed = self._step_spec(spec, step, handed=True)
    arrays = {a: record.internal(handed, a, case.arrays[f"{step.name}.{a}"]) for a in step.takes}
    return OpCase(None, record.derive(handed, arrays))

  def _parts(self, spec, case):
    comp = self._composition(spec)
    here = comp.case_spec(spec, case)
    for step in comp.steps:
      yield step, comp.records[step.kind], self._step_spec(here, step), \
          self._step_case(here, step, case)

  def _step(self, spec, name):
    """(step, its record) of an array name "step.array"."""
    comp = self._composition(spec)
    step_name = name.partition(".")[0]
    for step in comp.steps:
      if step.name == step_name:
        return step, comp.records[step.kind]
    return None, None

  # ---- bpref's answer: each step's, from its kind's record
  def compute(self, spec, case, variant=None):
    comp = self._composition(spec)
    if any(f"{s.name}.{a}" not in case.arrays for s in comp.steps for a in s.takes):
      nan = {k: np.full(1, np.nan) for k in self.output_names(spec)}
      return OpTruth(nan, nan, 1.0, None, 0.0, None, 0.0, 1.0)
    truths = [(step, record.compute(sub, sub_case))
              for step, record, sub, sub_case in self._parts(spec, case)]
    tol = min(t.tol for _, t in truths)
    expected, bounds = {}, {}
    value, value_bound = None, 0.0
    for step, t in truths:
      for k, v in t.expected.items():
        if f"{step.name}.{k}" in comp.unjudged:
          continue
        expected[f"{step.name}.{k}"] = v
        bounds[f"{step.name}.{k}"] = np.asarray(t.bounds[k]) * (t.tol / tol)  # each step held to its own tol
      if t.value is not None and value is None:  # a loss step's value, held to its own tol
        value, value_bound = t.value, t.value_bound * (t.tol / tol)
    return OpTruth(expected, bounds, tol, value, value_bound, None, 0.0, tol)

  def output_names(self, spec):
    comp = self._composition(spec)
    return tuple(f"{s.name}.{r}" for s in comp.steps for r in s.returns
                 if f"{s.name}.{r}" not in comp.unjudged)

  # ---- the candidate's side
  def arg_names(self, spec):
    return tuple(f"{s.name}.{a}" for s in self._composition(spec).steps for a in s.takes)

  def args(self, spec, case):
    out = []
    for step, record, sub, sub_case in self._parts(spec, case):
      out += list(record.args(sub, sub_case))
    return tuple(out)

  def forward_args(self, spec, case):
    return ()

  def declared(self, spec, name, value):
    """An output as the candidate's step returns it, or a handed array as it was handed."""
    return self._converted(spec, name, value, outward=True)

  def internal(self, spec, name, value):
    return self._converted(spec, name, value, outward=False)

  def _converted(self, spec, name, value, outward: bool):
    """``declared`` (outward) or ``internal`` of the array "step.array": an output through its
    step's record; a handed array between how the step is handed it and how it is judged."""
    step, record = self._step(spec, name)
    if step is None:
      return np.asarray(value)
    array = name.partition(".")[2]
    sub = self._step_spec(spec._replace(heads=spec.heads or 1), step)
    if array in step.returns:
      return (record.declared if outward else record.internal)(sub, array, value)
    handed = self._step_spec(spec._replace(heads=spec.heads or 1), step, handed=True)
    source, target = (handed, sub) if outward else (sub, handed)
    return record.declared(target, array, record.internal(source, array, value))

  def adapt(self, spec, candidate):
    """An ``OpCandidate`` running the composition's steps with the candidate's layer functions."""
    if isinstance(candidate, OpCandidate):
      return candidate
    steps = self._composition(spec).steps
    fns = {}
    for step in steps:
      fn = candidate.get(step.kind) if isinstance(candidate, dict) else getattr(candidate, step.kind, None)
      if not callable(fn):
        raise TypeError(f"block {spec.name}: the candidate needs a backward function for each of "
                        f"{', '.join(sorted({s.kind for s in steps}))} (a dict or an "
                        f"object with these names); {step.kind!r} is missing")
      fns[step.kind] = fn
    counts = [(s, len(self._step_args(spec, s))) for s in steps]

    def backward(*args):
      results, i = [], 0
      for step, n in counts:
        results.append(fns[step.kind](*args[i:i + n]))
        i += n
      return results

    return OpCandidate(backward, None, name=getattr(candidate, "__name__", "layer functions"))

  def _step_args(self, spec, step) -> tuple:
    record = self._composition(spec).records[step.kind]
    return record.arg_names(self._step_spec(spec._replace(heads=spec.heads or 1), step))

  def returned(self, spec, case, result):
    steps = self._composition(spec).steps
    if not isinstance(result, list) or len(result) != len(steps):
      raise Malformed(f"the steps returned {type(result).__name__}")
    out, value = {}, None
    for (step, record, sub, sub_case), got in zip(self._parts(spec, case), result):
      try:
        raw, step_value = record.returned(sub, sub_case, _listed(got))
      except Malformed as exc:
        raise Malformed(f"{step.name} ({step.kind}): {exc}") from None
      out.update({f"{step.name}.{k}": v for k, v in raw.items()
                  if f"{step.name}.{k}" not in self._composition(spec).unjudged})
      value = step_value if value is None else value
    return out, value

  def shape_findings(self, spec, case, name, got, want):
    step_name, _, output = name.partition(".")
    for step, record, sub, sub_case in self._parts(spec, case):
      if step.name == step_name:
        msg, found = record.shape_findings(sub, sub_case, output, got, want)
        where = f"{step.name} ({step.kind}): "
        return where + msg, tuple(f._replace(summary=where + f.summary) for f in found)
    return f"{name} has shape {got}, expected {want}", ()

  # ---- diagnosis: the first wrong step, with its kind's models
  def focus(self, spec, wrong):
    for step in self._composition(spec).steps:
      mine = [w for w in wrong if w.partition(".")[0] == step.name]
      if mine:
        return mine
    return wrong

  def models(self, spec, case, truth):
    unjudged = self._composition(spec).unjudged
    out = []
    for step, record, sub, sub_case in self._parts(spec, case):
      sub_truth = record.compute(sub, sub_case)
      for m in record.models(sub, sub_case, sub_truth):
        outputs = {f"{step.name}.{k}": v for k, v in m.outputs.items()
                   if f"{step.name}.{k}" not in unjudged}
        if outputs:
          out.append(Model(m.code, f"{step.name} ({step.kind}): {m.summary}", outputs))
    return out

  def convention(self, spec, case, truth, outputs):
    """The steps' own convention notes (gelu with erf where gelu_tanh is the block's, another
    tied maximum of a pooling window), when every wrong step differs by a convention only."""
    notes = []
    for step, record, sub, sub_case in self._parts(spec, case):
      mine = {k.partition(".")[2]: v for k, v in outputs.items() if k.partition(".")[0] == step.name}
      sub_truth = record.compute(sub, sub_case)
      if all(error(v, sub_truth.expected[k], sub_truth.bounds[k]) <= sub_truth.tol
             for k, v in mine.items()):
        continue
      note = record.convention(sub, sub_case, sub_truth, mine)
      if not note:
        return ""
      notes.append(f"{step.name}: {note}")
    return "; ".join(notes)

  def last_findings(self, spec, minimal, wrong):
    steps = self._composition(spec).steps
    first = self.focus(spec, wrong)
    step, _ = self._step(spec, first[0])
    names = [s.name for s in steps]
    before = names[:names.index(step.name)]
    alone = f"--op {step.kind}" + (f" --op-name {step.variant}" if step.variant else "")
    return [Finding("wrong_layer", f"the first wrong step of the backward pass ({spec.name}) is "
                    f"{step.name} ({step.kind}): {', '.join(first)} wrong",
                    (f"the steps before it ({', '.join(before)}) are right on the same case; "
                     if before else "") + f"check it alone with {alone}")]

  def slips(self, spec):
    return []


def _listed(result):
  """A step's result as the kind's record reads it: tuples as lists, as the engine hands them."""
  return list(result) if isinstance(result, tuple) else result


BLOCK = Block()
