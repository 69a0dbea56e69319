"""Calling an op candidate and judging one call against bpref's answer."""

from __future__ import annotations

import threading
from typing import NamedTuple

import numpy as np

from bpref.oracle import isolation as _isolation
from bpref.oracle import judge as _network_judge
from bpref.oracle.diagnosis import Finding
from bpref.oracle.ops import _kinds

FORWARD_NAMES = {"dense": "z = x W^T + b", "layer": "a = f(x W^T + b)", "activation": "a = f(z)",
                 "softmax": "y = softmax(z)", "loss": "the loss C"}

GELU_TWINS = {"gelu": "gelu_tanh", "gelu_tanh": "gelu"}
"""gelu with erf and its tanh approximation: each is the other's convention."""

GELU_NOTE = {
    "gelu": ("convention note: the candidate computes gelu's tanh approximation "
             "0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3))) (gelu_tanh, as GPT-2 and llm.c do), "
             "bpref's gelu is exact, z Phi(z) with erf; check it as gelu_tanh to hold it to its own form"),
    "gelu_tanh": ("convention note: the candidate computes the exact gelu z Phi(z) (erf), not the tanh "
                  "approximation gelu_tanh; check it as gelu to hold it to its own form"),
}


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


Call = _isolation.Outcome
"""One call: status "ok", "exception", "timeout" or "crash", the result, the error text, the
positions of the arguments it wrote into."""


class Verdict(NamedTuple):
  """The judgement of one case.

  Attributes:
    passed: correct here.
    kind: "ok" or what went wrong: exception, timeout, crash, structure, shape, dtype, nonfinite,
      mutation, numeric, convention, loss, forward, nondeterministic.
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


def _numpy(obj, depth=0):
  """Arrays (NumPy, JAX, torch) to NumPy copies, sequences to lists; other objects as they are."""
  if obj is None or isinstance(obj, (str, bool, int, float, np.number)):
    return obj
  if isinstance(obj, (tuple, list)) and depth < 2:
    return [_numpy(o, depth + 1) for o in obj]
  if hasattr(obj, "detach") and hasattr(obj, "cpu"):
    obj = obj.detach().cpu().numpy()
  if hasattr(obj, "__array__"):
    return np.array(obj, copy=True)
  return obj


def candidate_args(spec, case) -> tuple:
  """The arguments of one call, fresh copies in the candidate's dtype, layout and signature."""
  args = _bpref_args(spec, case)
  if spec.signature == "cs231n":  # (dout, cache)
    if spec.kind == "activation":
      return (args[1], args[0])
    x, W, b = args[:3]  # W in the in_out layout, as make_spec requires for this signature
    cache = (x, W, b) if spec.kind == "dense" else ((x, W, b), x @ W + (0 if b is None else b))
    return (args[3], cache)
  return args


def _bpref_args(spec, case) -> tuple:
  arr, dt = case.arrays, np.dtype(spec.dtype)
  if spec.kind in ("dense", "layer"):
    W = arr["W"].T if spec.layout == "in_out" else arr["W"]
    b = arr.get("b")
    return (arr["x"].astype(dt), np.array(W, dt), None if b is None else b.astype(dt),
            arr["dout"].astype(dt))
  if spec.kind == "activation":
    return (arr["a" if spec.takes == "a" else "z"].astype(dt), arr["dout"].astype(dt))
  if spec.kind == "softmax":
    return (arr["y" if spec.takes == "y" else "z"].astype(dt), arr["dout"].astype(dt))
  first = arr[_kinds.loss_input(spec)].astype(dt)
  if spec.targets == "labels":
    return (first, arr["labels"].astype(np.int64))
  return (first, arr["t"].astype(dt))


def forward_args(spec, case) -> tuple:
  args = _bpref_args(spec, case)
  if spec.kind in ("dense", "layer"):
    return args[:3]
  if spec.kind == "loss":
    return args
  return (case.arrays["z"].astype(np.dtype(spec.dtype)),)


def call(fn, args, timeout: float, transcript) -> Call:
  """fn(*args) in a daemon thread, its output captured into ``transcript``; never raises."""
  box = []
  thread = threading.Thread(target=lambda: box.append(_isolation.call_args(fn, args)), daemon=True,
                            name=_isolation.WORKER_NAME)
  with _isolation.Captured() as out:
    thread.start()
    thread.join(timeout)
  transcript.add(out.stdout, out.stderr)
  if thread.is_alive():
    return Call("timeout", error=f"the call did not return within {timeout:g} s; a call in this "
                "process cannot be stopped, so the search ended here")
  return box[0] if box else Call("exception", error="the candidate's thread ended without a result")


def call_isolated(pool, which: str, args, transcript) -> Call:
  """``which`` ("backward" or "forward") called in the candidate's subprocess; never raises."""
  outcome = pool.map([(which, args)])[0]
  transcript.add(outcome.stdout, outcome.stderr)
  return outcome


ARG_NAMES = {"dense": ("x", "W", "b", "dout"), "layer": ("x", "W", "b", "dout"),
             "activation": ("z or a", "dout"), "softmax": ("z or y", "dout"), "loss": ("y", "t")}


def _fail(kind, message, tol, **extra) -> Verdict:
  return Verdict(False, kind, message, {}, tol, **extra)


def _expected_shapes(spec, case) -> dict:
  arr = case.arrays
  if spec.kind in ("dense", "layer"):
    B, n_in = arr["x"].shape
    n_out = arr["W"].shape[0]
    W = (n_in, n_out) if spec.layout == "in_out" else (n_out, n_in)
    return {"dx": (B, n_in), "dW": W, "db": (n_out,)}
  if spec.kind == "loss":
    return {n: arr["t"].shape for n in _kinds.output_names(spec)}
  return {"dz": arr["z"].shape}


def _shape_findings(spec, case, name, got, want) -> tuple:
  """(message, findings) for a returned array of the wrong shape."""
  B = case.arrays["dout" if "dout" in case.arrays else "t"].shape[0]
  msg = f"{name} has shape {got}, expected {want}"
  found = []
  if len(got) == 2 and got == want[::-1] and got != want:
    if name == "dW":
      other = "in_out" if spec.layout == "out_in" else "out_in"
      formula = "x^T dout" if spec.layout == "in_out" else "dout^T x"  # (39) in the layout
      found.append(Finding("transposed", "dW is transposed",
                           f"dW = {formula} has shape {want} in the {spec.layout} layout; {got} is "
                           f"its transpose (pass layout={other!r} if that is your W's layout)"))
    else:
      found.append(Finding("transposed", f"{name} is transposed",
                           f"{name} has one row per example: shape {want}, not {got}"))
  elif name == "db" and got == (B,) and B != want[0]:
    found.append(Finding("batch_sum_missing", "db is summed over the units (axis 1), not over "
                         "the batch (axis 0)", f"db = sum_b dout_b has one entry per unit, "
                         f"shape {want}; the candidate returned one per example, {got}"))
  elif name == "db" and got == (B, want[0]) and B > 1:
    found.append(Finding("batch_sum_missing", "db is not summed over the batch",
                         "db = sum_b dout_b has one entry per unit; the candidate returned one "
                         "row per example"))
  elif name in ("dx", "dz", "dy") and len(want) == 2 and got == (want[1],) and want[0] > 1:
    found.append(Finding("batch_sum_extra", f"{name} is summed over the batch",
                         f"{name} has one row per example, shape {want}; a sum over the batch "
                         f"left {got}"))
  elif int(np.prod(got)) == int(np.prod(want)):
    msg += f" (the right number of entries: reshape it to {want})"
  return msg, tuple(found)


def _unpack(spec, case, result, tol):
  """({output: array}, loss value or None) from the candidate's return value, or a Verdict."""
  names = _kinds.output_names(spec)
  value = None
  if spec.kind in ("dense", "layer"):
    if not isinstance(result, list) or len(result) not in (2, 3):
      what = f"a sequence of {len(result)}" if isinstance(result, list) else type(result).__name__
      want = "(dx, dW, db)" if spec.bias else "(dx, dW) or (dx, dW, None)"
      return _fail("structure", f"the candidate must return {want}; it returned {what}", tol)
    if spec.bias and len(result) != 3:
      return _fail("structure", "the candidate must return (dx, dW, db); it returned two arrays "
                   "(pass bias=False for a layer without a bias)", tol)
    if not spec.bias and len(result) == 3 and result[2] is not None:
      return _fail("structure", "the layer has no bias (bias=False), yet the candidate returned a "
                   "third array db; return (dx, dW) or (dx, dW, None)", tol)
    raw = dict(zip(names, result))
  elif spec.kind == "loss" and isinstance(result, list):
    scalars = [r for r in result if np.ndim(r) == 0]
    arrays = [r for r in result if np.ndim(r) > 0]
    if len(result) != 2 or len(scalars) != 1 or len(arrays) != 1:
      return _fail("structure", "a loss candidate returns its gradient, or (loss value, gradient); "
                   f"it returned a sequence of {len(result)}", tol)
    try:
      value = float(np.asarray(scalars[0], np.float64))
    except (TypeError, ValueError):
      return _fail("structure", f"the returned loss value is {type(scalars[0]).__name__}, "
                   "not a number", tol)
    raw = {names[0]: arrays[0]}
  else:
    if isinstance(result, list):
      return _fail("structure", f"the candidate must return one array {names[0]}; it returned a "
                   f"sequence of {len(result)}", tol)
    raw = {names[0]: result}
  want = _expected_shapes(spec, case)
  outputs = {}
  for name in names:
    arr = raw[name]
    if not isinstance(arr, np.ndarray):
      return _fail("structure", f"{name} is {type(arr).__name__}, not an array", tol)
    if arr.shape != want[name]:
      msg, found = _shape_findings(spec, case, name, arr.shape, want[name])
      return _fail("shape", msg, tol, findings=found)
    if arr.dtype != np.dtype(spec.dtype):
      return _fail("dtype", f"{name} has dtype {arr.dtype}; the inputs were {spec.dtype} and "
                   f"{name} must be too", tol)
    if not np.all(np.isfinite(arr)):
      return _fail("nonfinite", f"{name} contains NaN or inf (bpref's {name} is finite here)", tol)
    arr = np.asarray(arr, np.float64)
    outputs[name] = arr.T if (name == "dW" and spec.layout == "in_out") else arr
  return outputs, value


def judge(spec, case, truth, outcome: Call) -> Verdict:
  """The verdict on one call of the backward function."""
  tol = truth.tol
  if outcome.status == "exception":
    return _fail("exception", f"the candidate raised an exception:\n{outcome.error}", tol)
  if outcome.status == "timeout":
    return _fail("timeout", f"the candidate hung: {outcome.error}", tol)
  if outcome.status == "crash":
    return _fail("crash", f"the candidate ended its process: {outcome.error}", tol)
  unpacked = _unpack(spec, case, outcome.result, tol)
  if isinstance(unpacked, Verdict):
    return unpacked
  outputs, value = unpacked
  errors = {k: _kinds.error(v, truth.expected[k], truth.bounds[k]) for k, v in outputs.items()}
  if outcome.mutated:
    names = ", ".join((("dout", "cache") if spec.signature == "cs231n" else ARG_NAMES[spec.kind])[i]
                      for i in outcome.mutated)
    return Verdict(False, "mutation", f"the candidate modified its input(s) {names}; a backward "
                   "function must leave its inputs as they were", errors, tol, outputs, value)
  worst = max(errors.values())
  note = ""
  if not worst <= tol:
    note = convention(spec, case, truth, outputs)
    if not note:
      bad = [k for k, e in errors.items() if not e <= tol]
      return Verdict(False, "numeric", f"{', '.join(bad)} wrong (worst error {worst:.2e}, "
                     f"tolerance {tol:.1e})", errors, tol, outputs, value)
    if spec.strict_conventions:
      return Verdict(False, "convention", f"differs by a convention only, and strict conventions "
                     f"were asked for: {note}", errors, tol, outputs, value, note)
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
  what = FORWARD_NAMES[spec.kind]
  if outcome.status != "ok":
    return _fail("forward", f"the forward function ({what}) failed: {outcome.error}", tol)
  got = outcome.result
  if spec.kind == "loss":
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
  err = _kinds.error(got, truth.forward, truth.forward_bound)
  if err <= tol:
    return None
  if twin_truth is not None and _kinds.error(got, twin_truth.forward, np.maximum(
      truth.forward_bound, twin_truth.forward_bound)) <= tol:
    return None
  return Verdict(False, "forward", f"the forward function ({what}) differs from bpref's "
                 f"(error {err:.2e}, tolerance {tol:.1e})", {"forward": err}, tol)


SOFTPLUS_THRESHOLD = 20.0
"""torch.nn.functional.softplus (threshold=20) is linear above it, so its derivative is 1 there
where sigmoid(z) = 1 - exp(-z) is not: 2e-9 below 1 at z = 20, seen in float64 only."""

SOFTPLUS_NOTE = ("convention note: the candidate's softplus is linear for z > 20 (torch's "
                 "threshold), so its derivative is 1 there, where bpref's is sigmoid(z) = "
                 "1 - exp(-z) (at most 2e-9 from 1)")


def convention(spec, case, truth, outputs) -> str:
  """A note naming the convention the candidate follows, when that is the only difference."""
  name = spec.name if spec.kind in ("activation", "layer") else None
  if name in GELU_TWINS:
    twin = _kinds.compute(spec, case, name=GELU_TWINS[name])
    if all(_kinds.error(outputs[k], twin.expected[k], np.maximum(truth.bounds[k], twin.bounds[k]))
           <= truth.tol for k in outputs):
      return GELU_NOTE[name]
  if name == "softplus" and truth.z is not None and np.any(truth.z > SOFTPLUS_THRESHOLD):
    df = np.where(truth.z > SOFTPLUS_THRESHOLD, 1.0, _kinds.df(name, truth.z))
    alt = from_delta(spec, case, case.arrays["dout"] * df)
    if all(_kinds.error(outputs[k], alt[k], truth.bounds[k]) <= truth.tol for k in outputs):
      return SOFTPLUS_NOTE
  if name not in _network_judge.KINK_CONVENTIONS or truth.z is None or not np.any(truth.z == 0):
    return ""
  options = _network_judge.KINK_CONVENTIONS[name]
  for value, text in options[1:]:
    df = np.where(truth.z == 0, value, _kinds.df(name, truth.z))
    alt = from_delta(spec, case, case.arrays["dout"] * df)
    if all(_kinds.error(outputs[k], alt[k], truth.bounds[k]) <= truth.tol for k in outputs):
      return (f"convention note: at exact kinks the candidate uses {text}, bpref uses "
              f"{options[0][1]}; both are valid subgradients")
  return ""


def from_delta(spec, case, delta) -> dict:
  """The outputs that follow from delta = dC/dz: dz itself, or a layer's delta W, delta^T x, sum_b delta."""
  if spec.kind in ("activation", "softmax"):
    return {"dz": delta}
  arr = case.arrays
  out = {"dx": delta @ arr["W"], "dW": delta.T @ arr["x"]}  # (26), (39)
  if spec.bias:
    out["db"] = delta.sum(axis=0)
  return out
