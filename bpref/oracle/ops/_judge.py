"""Calling an op candidate and judging one call against bpref's answer."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from bpref.oracle import diagnosis as _diagnosis
from bpref.oracle import isolation as _isolation
from bpref.oracle import judge as _network_judge
from bpref.oracle.ops import kinds
from bpref.oracle.ops.record import Malformed, error

Call = _isolation.Outcome
"""One call: status "ok", "exception", "timeout" or "crash", the result, the error text, the
positions of the arguments it wrote into."""


class Verdict(NamedTuple):
  """The judgement of one case.

  Attributes:
    passed: correct here.
    kind: "ok" or what went wrong: exception, timeout, crash, protocol (a program over
      bpref-wire that broke it), structure, shape, dtype, nonfinite, mutation, numeric,
      convention, loss, forward, nondeterministic.
    message: one plain sentence.
    errors: {output: e} normwise errors.
    tol: the tolerance held to.
    outputs: {output: float64 array} the candidate's answer in bpref's layout, when usable.
    value: the loss value the candidate returned, if any.
    note: a convention note, or "".
    findings: what the shapes alone say (a transposed shape, a missing batch sum).
  """
  passed: bool
  kind: str
  message: str
  errors: dict
  tol: float
  outputs: dict | None = None
  value: float | None = None
  note: str = ""
  findings: tuple = ()


def _fail(kind, message, tol, **extra) -> Verdict:
  return Verdict(False, kind, message, {}, tol, **extra)


def _unpack(record, spec, case, truth, result):
  """({output: float64 array in bpref's layout}, loss value or None), or a failing Verdict."""
  tol = truth.tol
  try:
    raw, value = record.returned(spec, case, result)
  except Malformed as exc:
    return _fail("structure", str(exc), tol)
  names = record.output_names(spec)
  for name in names:
    arr = raw[name]
    if not isinstance(arr, np.ndarray):
      return _fail("structure", f"{name} is {type(arr).__name__}, not an array", tol)
    want = np.shape(record.declared(spec, name, truth.expected[name]))
    if arr.shape != want:
      msg, found = record.shape_findings(spec, case, name, arr.shape, want)
      return _fail("shape", msg, tol, findings=found)
    if arr.dtype != np.dtype(spec.dtype):
      return _fail("dtype", f"{name} has dtype {arr.dtype}; the inputs were {spec.dtype} and "
                   f"{name} must be too", tol)
  outputs = {name: record.internal(spec, name, np.asarray(raw[name], np.float64)) for name in names}
  for name in names:
    if not np.all(np.isfinite(outputs[name])):  # kept, for the diagnosis to read where
      return _fail("nonfinite", f"{name} contains NaN or inf (bpref's {name} is finite here)", tol,
                   outputs=outputs)
  return outputs, value


def judge(spec, case, truth, outcome: Call) -> Verdict:
  """The verdict on one call of the backward function."""
  tol, record = truth.tol, kinds.of(spec)
  failed = _network_judge.call_failure(outcome)
  if failed is not None:
    return _fail(*failed, tol)
  unpacked = _unpack(record, spec, case, truth, outcome.result)
  if isinstance(unpacked, Verdict):
    return unpacked
  outputs, value = unpacked
  errors = {k: error(v, truth.expected[k], truth.bounds[k]) for k, v in outputs.items()}
  if outcome.mutated:
    names = ", ".join(record.arg_names(spec)[i] for i in outcome.mutated)
    return Verdict(False, "mutation", f"the candidate modified its input(s) {names}; a backward "
                   "function must leave its inputs as they were", errors, tol, outputs, value)
  worst = max(errors.values())
  note = ""
  if not worst <= tol:
    note = record.convention(spec, case, truth, outputs)
    if not note:
      bad = [k for k, e in errors.items() if not e <= tol]
      return Verdict(False, "numeric", f"{', '.join(bad)} wrong (worst error {worst:.2e}, "
                     f"tolerance {tol:.1e})", errors, tol, outputs, value)
    if spec.strict_conventions:
      return Verdict(False, "convention", f"differs by a convention only, and strict conventions "
                     f"were asked for: {note}", errors, tol, outputs, value, note,
                     findings=(_diagnosis.convention_finding(note, strict=True),))
  if value is not None:
    err = abs(value - truth.value) / truth.value_bound if truth.value_bound > 0 else abs(value - truth.value)
    if not err <= tol:
      return Verdict(False, "loss", f"the returned loss {value:.6g} is not the {spec.name} loss "
                     f"({spec.reduction}) of these inputs, {truth.value:.6g}", errors, tol, outputs,
                     value, note)
  return Verdict(True, "ok", "correct" + (f" ({note})" if note else ""), errors, tol, outputs,
                 value, note)


def judge_forward(spec, case, truth, outcome: Call, twin_truth=None) -> Verdict | None:
  """The verdict on one call of the forward function; None when it is right."""
  tol = truth.forward_tol
  record = kinds.of(spec)
  what = record.forward_name
  if outcome.status != "ok":
    return _fail("forward", f"the forward function ({what}) failed: {outcome.error}", tol)
  got = outcome.result
  if record.forward_scalar(spec):
    if np.ndim(got) != 0:
      return _fail("forward", f"the forward function must return the loss C, a scalar; it returned "
                   f"shape {np.shape(got)}", tol)
  elif not isinstance(got, np.ndarray) or got.shape != np.shape(truth.forward):
    return _fail("forward", f"the forward function ({what}) returned "
                 f"{getattr(got, 'shape', type(got).__name__)}, expected shape "
                 f"{np.shape(truth.forward)}", tol)
  got = np.asarray(got, np.float64)
  if not np.all(np.isfinite(got)):
    return _fail("forward", f"the forward function ({what}) returned NaN or inf", tol)
  err = error(got, truth.forward, truth.forward_bound)
  if err <= tol:
    return None
  if twin_truth is not None and error(got, twin_truth.forward, np.maximum(
      truth.forward_bound, twin_truth.forward_bound)) <= tol:
    return None
  return Verdict(False, "forward", f"the forward function ({what}) differs from bpref's "
                 f"(error {err:.2e}, tolerance {tol:.1e})", {"forward": err}, tol)


