"""The block kind: someone's layer functions checked together, inside a GPT-2 block.

A candidate for ``check_op("block", layers)`` is the set of backward functions a hand-written
transformer is built from, as llm.c's ``train_gpt2.c`` has them: a mapping (a dict, a module,
any object with these attributes) from a kind's name to that kind's backward function, called
as the kind's own record calls it (docs/oracle.md):

==========  ===============================  ===========================
name        called as                        returns
==========  ===============================  ===========================
dense       (x, W, b, dout), x (N, n_in)     (dx, dW, db); llm.c's matmul_backward
activation  (z, dout): gelu_tanh             dz; llm.c's gelu_backward
layernorm   (x, w, b, dout), x (B, T, C)     (dx, dw, db)
attention   (qkv, dout, heads)               dqkv
==========  ===============================  ===========================

Each case is one block (``bpref.layers.block``) on random x, parameters and dC/dy. bpref runs
it forward and backward, and the candidate's functions are handed what bpref's backward steps
are handed (``bpref.layers.block.STEPS``): the block's own activations and cotangents, rounded
to the dtype. Each step's answer is judged by its kind's record, with that kind's rounding model:
the outputs are named "step.output" (fc_proj.dW, ln2.dx, ...), and a failure names the first
step of the backward pass whose gradient is wrong, with that kind's diagnosis run on that step
alone. The residual sums of the block are bpref's: the candidate's layer functions are what is
checked.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from bpref.layers import block as _block
from bpref.oracle.diagnosis import Finding
from bpref.oracle.ops import attention as _attention_kind
from bpref.oracle.ops import classic as _classic
from bpref.oracle.ops import layernorm as _layernorm_kind
from bpref.oracle.ops.record import (Malformed, Model, OpCandidate, OpCase, OpKind, OpSpec, OpTruth,
                                     error, exact, plain)

_RECORDS = {"dense": _classic.DENSE, "activation": _classic.ACTIVATION,
            "layernorm": _layernorm_kind.LAYERNORM, "attention": _attention_kind.ATTENTION}

_PARAMS = _block.BlockParams._fields


def _shapes(C: int) -> dict:
  return dict(ln1_w=(C,), ln1_b=(C,), W_qkv=(3 * C, C), b_qkv=(3 * C,), W_proj=(C, C),
              b_proj=(C,), ln2_w=(C,), ln2_b=(C,), W_fc=(4 * C, C), b_fc=(4 * C,),
              W_fp=(C, 4 * C), b_fp=(C,))


@functools.partial(jax.jit, static_argnums=(3, 4))
def _steps(params, x, dy, heads, eps):
  _, cache = _block.forward(params, x, heads, eps=eps)
  return _block.steps(params, cache, dy)[0]


def _sub_spec(spec: OpSpec, step) -> OpSpec:
  """The spec under which a step is judged: its kind, the block's dtype, heads and eps."""
  record = _RECORDS[step.kind]
  return record.validate(OpSpec(step.kind, step.activation, dtype=spec.dtype, heads=spec.heads,
                                eps=spec.eps))


def _sub_case(case: OpCase, step, spec: OpSpec) -> OpCase:
  """The step's case for its kind's record: what the step is handed, as that record holds it."""
  record = _RECORDS[step.kind]
  arrays = {a: record.internal(spec, a, case.arrays[f"{step.name}.{a}"]) for a in step.takes}
  return OpCase(None, record.derive(spec, arrays))


class Block(OpKind):
  name = "block"
  summary = ("a GPT-2 block (layernorm, attention, dense, gelu_tanh, residuals): each layer "
             "function checked on the block's own activations; the first wrong step named")
  takes = ("layers",)
  options = ("heads", "eps")
  families = ("plain", "normal", "spread")
  forward_name = "the block's forward"
  dims_names = ("B", "T", "heads", "hs")

  def describe(self, spec):
    heads = f", {spec.heads} heads" if spec.heads else ""
    return f"block (GPT-2: dense, gelu_tanh, layernorm, attention; {spec.dtype}{heads})"

  # ---- cases
  def probe_dims(self, spec):
    heads = spec.heads or 2  # T >= 2: with one position attention's dq and dk are 0
    return ([(1, 2, spec.heads or 1, 1), (2, 3, heads, 2), (1, 4, spec.heads or 1, 3)],
            [(2, 3, heads, 2)])

  def random_dims(self, spec, rng):
    B = int(rng.integers(1, min(spec.max_batch, 3) + 1))
    T = int(rng.integers(1, spec.max_width + 1))
    heads = spec.heads or int(rng.integers(1, 4))
    return (B, T, heads, int(rng.integers(1, 4)))

  def draw(self, spec, label):
    rng = self.rng(spec, label)
    B, T, heads, hs = label.dims
    C = heads * hs
    if label.family == "plain":
      values = lambda shape, scale: plain(rng, shape) * scale
    elif label.family == "spread":
      values = lambda shape, scale: rng.normal(size=shape) * scale * 10.0 ** rng.uniform(-1, 1, shape)
    else:
      values = lambda shape, scale: rng.normal(size=shape) * scale
    out = {"x": values((B, T, C), 1.0), "dout": values((B, T, C), 1.0)}
    for name, shape in _shapes(C).items():  # weights scaled by 1/sqrt(fan-in), as initialised
      scale = 1.0 / np.sqrt(shape[1]) if len(shape) == 2 else 1.0
      out[name] = values(shape, scale) + (1.0 if name.startswith("ln") and name.endswith("_w") else 0.0)
    return out

  def primary(self, spec):
    return ("x", "dout") + _PARAMS

  def derive(self, spec, arrays):
    out = {k: arrays[k] for k in self.primary(spec)}
    if not spec.heads:
      raise ValueError("block: the number of heads is part of the case; pass heads=")
    heads = spec.heads
    with jax.enable_x64(True):
      params = _block.BlockParams(*(np.asarray(out[k], np.float64) for k in _PARAMS))
      given = _steps(params, out["x"], out["dout"], heads, float(spec.eps))
    for step in _block.STEPS:
      for name, value in given[step.name].items():
        out[f"{step.name}.{name}"] = exact(np.asarray(value), spec.dtype)
    return out

  def case(self, spec, label):
    arrays = {k: exact(v, spec.dtype) for k, v in self.draw(spec, label).items()}
    return OpCase(label, self.derive(spec._replace(heads=label.dims[2]), arrays))

  def shrinkable(self, spec):
    return ()

  # ---- bpref's answer: each step's, from its kind's record
  def _parts(self, spec, case):
    heads = self._case_heads(spec, case)
    for step in _block.STEPS:
      sub = _sub_spec(spec._replace(heads=heads), step)
      yield step, sub, _sub_case(case, step, sub)

  def _case_heads(self, spec, case) -> int:
    if spec.heads:
      return spec.heads
    if case.label is not None:
      return case.label.dims[2]
    raise ValueError("block: a case without its label needs heads= in the spec")

  def compute(self, spec, case, variant=None):
    truths = [(step, _RECORDS[step.kind].compute(sub, sub_case))
              for step, sub, sub_case in self._parts(spec, case)]
    tol = min(t.tol for _, t in truths)
    expected, bounds = {}, {}
    for step, t in truths:
      for k, v in t.expected.items():
        expected[f"{step.name}.{k}"] = v
        bounds[f"{step.name}.{k}"] = np.asarray(t.bounds[k]) * (t.tol / tol)  # each step held to its own tol
    return OpTruth(expected, bounds, tol, None, 0.0, None, 0.0, tol)

  def output_names(self, spec):
    return tuple(f"{s.name}.{r}" for s in _block.STEPS for r in s.returns)

  # ---- the candidate's side
  def arg_names(self, spec):
    return tuple(f"{s.name}.{a}" for s in _block.STEPS for a in s.takes)

  def args(self, spec, case):
    out = []
    for step, sub, sub_case in self._parts(spec, case):
      out += list(_RECORDS[step.kind].args(sub, sub_case))
    return tuple(out)

  def forward_args(self, spec, case):
    return ()

  def adapt(self, spec, candidate):
    """An ``OpCandidate`` running the block's steps with the candidate's layer functions."""
    if isinstance(candidate, OpCandidate):
      return candidate
    fns = {}
    for step in _block.STEPS:
      fn = candidate.get(step.kind) if isinstance(candidate, dict) else getattr(candidate, step.kind, None)
      if not callable(fn):
        raise TypeError(f"block: the candidate needs a backward function for each of "
                        f"{', '.join(sorted({s.kind for s in _block.STEPS}))} (a dict or an "
                        f"object with these names); {step.kind!r} is missing")
      fns[step.kind] = fn
    counts = [(s, len(self._step_args(spec, s))) for s in _block.STEPS]

    def backward(*args):
      results, i = [], 0
      for step, n in counts:
        results.append(fns[step.kind](*args[i:i + n]))
        i += n
      return results

    return OpCandidate(backward, None, name=getattr(candidate, "__name__", "layer functions"))

  def _step_args(self, spec, step) -> tuple:
    return _RECORDS[step.kind].arg_names(_sub_spec(spec._replace(heads=spec.heads or 1), step))

  def returned(self, spec, case, result):
    if not isinstance(result, list) or len(result) != len(_block.STEPS):
      raise Malformed(f"the block's steps returned {type(result).__name__}")
    out = {}
    for (step, sub, sub_case), got in zip(self._parts(spec, case), result):
      try:
        raw, _ = _RECORDS[step.kind].returned(sub, sub_case, _listed(got))
      except Malformed as exc:
        raise Malformed(f"{step.name} ({step.kind}): {exc}") from None
      out.update({f"{step.name}.{k}": v for k, v in raw.items()})
    return out, None

  def shape_findings(self, spec, case, name, got, want):
    step_name, _, output = name.partition(".")
    step = next(s for s in _block.STEPS if s.name == step_name)
    for s, sub, sub_case in self._parts(spec, case):
      if s is step:
        msg, found = _RECORDS[step.kind].shape_findings(sub, sub_case, output, got, want)
        return f"{step.name} ({step.kind}): {msg}", found
    return f"{name} has shape {got}, expected {want}", ()

  # ---- diagnosis: the first wrong step, with its kind's models
  def focus(self, spec, wrong):
    for step in _block.STEPS:
      mine = [w for w in wrong if w.partition(".")[0] == step.name]
      if mine:
        return mine
    return wrong

  def models(self, spec, case, truth):
    out = []
    for step, sub, sub_case in self._parts(spec, case):
      record = _RECORDS[step.kind]
      sub_truth = record.compute(sub, sub_case)
      for m in record.models(sub, sub_case, sub_truth):
        out.append(Model(m.code, f"{step.name} ({step.kind}): {m.summary}",
                         {f"{step.name}.{k}": v for k, v in m.outputs.items()}))
    return out

  def convention(self, spec, case, truth, outputs):
    """The steps' own convention notes (gelu with erf where gelu_tanh is the block's), when
    every wrong step differs by a convention only."""
    notes = []
    for step, sub, sub_case in self._parts(spec, case):
      mine = {k.partition(".")[2]: v for k, v in outputs.items() if k.partition(".")[0] == step.name}
      sub_truth = _RECORDS[step.kind].compute(sub, sub_case)
      if all(error(v, sub_truth.expected[k], sub_truth.bounds[k]) <= sub_truth.tol
             for k, v in mine.items()):
        continue
      note = _RECORDS[step.kind].convention(sub, sub_case, sub_truth, mine)
      if not note:
        return ""
      notes.append(f"{step.name}: {note}")
    return "; ".join(notes)

  def last_findings(self, spec, minimal, wrong):
    first = self.focus(spec, wrong)
    step = first[0].partition(".")[0]
    kind = next(s.kind for s in _block.STEPS if s.name == step)
    before = [s.name for s in _block.STEPS][:[s.name for s in _block.STEPS].index(step)]
    return [Finding("wrong_layer", f"the first wrong step of the block's backward pass is {step} "
                    f"({kind}): {', '.join(first)} wrong",
                    (f"the steps before it ({', '.join(before)}) are right on the same case; "
                     if before else "") + f"check it alone with --op {kind}")]

  def slips(self, spec):
    return []


def _listed(result):
  """A step's result as the kind's record reads it: tuples as lists, as the engine hands them."""
  return list(result) if isinstance(result, tuple) else result


BLOCK = Block()
