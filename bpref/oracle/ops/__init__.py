"""Check one layer at a time: an oracle for the backward function of a single operation.

``check_op(kind, candidate, name=..., ...)`` searches shapes and values for an input on
which the candidate's backward function differs from bpref's own handwritten piece, shrinks
it to the fewest entries and the plainest values, and names the likely bug. The candidate
is called on NumPy arrays of the declared dtype, rows are examples:

============  =======================================  =======================================
kind          candidate(...)                           returns
============  =======================================  =======================================
dense         (x, W, b, dout); b is None without bias  (dx, dW, db): dout W, dout^T x, sum_b dout
activation    (z, dout), or (a, dout) with takes="a"   dz = dout * f'(z)
softmax       (z, dout), or (y, dout) with takes="y"   dz = y * (dout - <dout, y>)
loss          (y, t); t: class indices with            dC/dy of the reduced loss, or
              targets="labels"                         (C, dC/dy); takes="logits"/"probs": dC/dz
layer         (x, W, b, dout) for a = f(x W^T + b)     (dx, dW, db) with delta = dout * f'(z)
============  =======================================  =======================================

x is (B, n_in), W is (n_out, n_in) (``layout="in_out"``: (n_in, n_out), as cs231n's
``affine_forward``), b is (n_out,), dout and z are (B, n). For a loss, ``takes`` says what the
candidate is handed: "y", the loss's own input (probabilities for cross_entropy and
binary_cross_entropy, logits for softmax_cross_entropy and sigmoid_binary_cross_entropy);
"logits" or "probs" for the fused dC/dz of the probability losses (llm.c's
``crossentropy_softmax_backward`` takes probs).

The candidate may be a plain callable, an ``OpCandidate(backward, forward)`` (the forward is
then checked against bpref's too), a ``torch.autograd.Function`` subclass or a
``jax.custom_vjp`` function (see ``bpref.oracle.ops.adapters``).

>>> import numpy as np
>>> from bpref.oracle.ops import check_op
>>> def relu_backward(dout, cache):  # cs231n style: cache is the input z
...   return dout * (cache > 0)
>>> report = check_op("activation", lambda z, dout: relu_backward(dout, z), name="relu")
>>> report.verdict
'pass'
"""

from __future__ import annotations

import dataclasses
import functools
import time

import numpy as np

from bpref.oracle import cluster as _cluster
from bpref.oracle import engine as _engine
from bpref.oracle import isolation as _isolation
from bpref.oracle.diagnosis import Finding
from bpref.oracle.ops import _diagnosis, _search, kinds, wire_ops
from bpref.oracle.ops.record import OpCandidate as OpCandidate
from bpref.oracle.ops.kinds import KINDS as KINDS
from bpref.oracle.ops.record import OpCase
from bpref.oracle.ops.record import OpSpec as OpSpec
from bpref.oracle.ops.adapters import from_custom_vjp as from_custom_vjp
from bpref.oracle.ops.adapters import from_torch_function as from_torch_function
from bpref.oracle.ops.cli import add_op_arguments as add_op_arguments
from bpref.oracle.ops.cli import run_op_command as run_op_command
from bpref.oracle.report import Report, digits_that_differ, history_dependent


@dataclasses.dataclass
class OpReport(Report):
  """What ``check_op`` found: a ``bpref.oracle.Report`` with the op's own fields.

  Attributes (beyond ``Report``'s):
    op: the op checked, in words.
    skipped: cases left out because they check nothing (an all-zero answer passes them) or
      lie outside the op's domain (bpref's own answer is not finite there); ``dropped`` counts
      them per reason ("vacuous", "not finite"), and further random cases are drawn in their
      place: a pass needs ``requested`` cases (probes + examples) checked, and a search whose
      draw budget ran out first is an "error" (kind "too_few_cases") saying so.
    forward_checked: cases on which the candidate's forward function was checked too.

  ``case`` holds the arrays as the candidate was handed them and what it returned, beside
  bpref's answer: W and dW in the declared layout (``case["layout"]`` for dense and layer).
  """
  op: str = ""
  skipped: int = 0
  forward_checked: int = 0

  def text(self) -> str:
    """The report for people."""
    lines = []
    if self.verdict == "pass":
      fwd = f"; its forward on {self.forward_checked}" if self.forward_checked else ""
      lines.append(f"PASS: the candidate matches bpref's {self.op} on all {self.cases} cases"
                   f"{fwd} ({self.skipped} cases that check nothing skipped; {self.calls} calls, "
                   f"seed {self.seed}, {self.seconds:.1f} s)")
      if self.dropped:
        lines.append("  skipped unchecked: " + ", ".join(
            f"{n} {_search.SKIP_REASONS.get(k, k)}" for k, n in self.dropped.items()))
      spec = OpSpec(**self.spec)
      lines.append(f"  searched: {kinds.of(spec).searched(spec)}")
      lines += [f"  note: {n}" for n in self.notes]
      return "\n".join(lines + _output_lines(self))
    if self.verdict == "error" and self.kind == "too_few_cases":
      return f"ERROR ({self.op}): no verdict: {self.message}"
    if self.verdict == "error":
      return f"ERROR: the oracle could not run the candidate: {self.message}"
    head, *rest = (self.message or self.kind).splitlines() or [""]
    if head.endswith(":") and rest:
      head, rest = f"{head} {rest[0].strip()}", rest[1:]
    lines.append(f"FAIL ({self.op}): {head}")
    lines += [f"    {line}" for line in rest[:12]]
    lines.append(f"  found at case {self.examples_to_failure} (seed {self.seed}); {self.calls} calls, "
                 f"{self.seconds:.1f} s")
    if self.diagnosis:
      lines += ["", "diagnosis (most likely first):"]
      for f in self.diagnosis:
        lines.append(f"  * {f.summary}  [{f.code}]")
        if f.detail and f.detail != f.summary:
          lines += [f"      {d}" for d in f.detail.splitlines()[:6]]
    if self.case:
      which = "minimal failing case" if self.shrunk else "first failing case (not shrunk)"
      lines += ["", f"{which} ({self.case['shapes']}):"]
      if self.case.get("layout") == "in_out":
        lines.append("  W and dW in the in_out layout (n_in, n_out), as the candidate takes and "
                     "returns them")
      if self.errors:
        lines.append(f"  normwise error per output (tolerance {self.tolerance:.1e}): " + "  ".join(
            f"{k}: {v:.2e}{' *' if not v <= self.tolerance else ''}" for k, v in self.errors.items()))
      with np.printoptions(precision=6, suppress=False, linewidth=100):
        for key, value in self.case["arrays"].items():
          arr = np.asarray(value)
          if arr.size <= 16:
            lines.append(f"    {key} = " + np.array2string(arr, prefix=f"    {key} = "))
        for key, value in self.case.get("candidate", {}).items():
          mine, ours = np.asarray(value).ravel(), np.asarray(self.case["bpref"][key]).ravel()
          if mine.size <= 16:
            digits = digits_that_differ(mine, ours)
            fmt = {"float_kind": lambda v, d=digits: f"{v:.{d}g}"}
            lines.append(f"    {key}: candidate {np.array2string(mine, formatter=fmt)}  bpref "
                         f"{np.array2string(ours, formatter=fmt)}")
    lines += [f"  note: {n}" for n in self.notes]
    return "\n".join(lines + _output_lines(self))


def _output_lines(report) -> list:
  out = report.output or {}
  lines = []
  for stream in ("stdout", "stderr"):
    text = out.get(stream, "")
    if text:
      shown = text.rstrip("\n").splitlines()
      lines.append(f"  the candidate's {stream} ({len(shown)} lines; --json has it): "
                   f"{shown[0][:120]}")
  return lines


def as_candidate(spec: OpSpec, candidate) -> OpCandidate:
  """The candidate as an ``OpCandidate``: torch Functions and custom_vjp functions adapted."""
  from bpref.oracle.ops import adapters

  if isinstance(candidate, OpCandidate):
    return candidate
  adapted = kinds.of(spec).adapt(spec, candidate)
  if adapted is not None:
    return adapted
  if adapters.is_torch_function(candidate):
    return adapters.torch_candidate(candidate, spec)
  if adapters.is_custom_vjp(candidate):
    return adapters.custom_vjp_candidate(candidate, spec)
  if not callable(candidate):
    raise TypeError(f"the candidate must be callable (see bpref.oracle.ops for each kind's "
                    f"arguments); got {type(candidate).__name__}")
  return OpCandidate(candidate)


@dataclasses.dataclass(frozen=True)
class Reference:
  """bpref's own answer as an op candidate, picklable: the arguments read back into a case, the
  record's answer returned as the candidate returns it (layout, dtype), every output times
  ``factor``. ``Reference(spec)`` passes any check of ``spec``, so that a search's rate is the
  engine's (``bpref bench --ops``) and a transport is judged by what it carries; a factor of
  1 + 1e-3 makes a candidate that must fail."""
  spec: OpSpec
  factor: float = 1.0

  def __call__(self, *args):
    record = kinds.of(self.spec)
    here, case = case_of_args(self.spec, args)
    truth = record.compute(here, case)
    out = [(self.factor * record.declared(here, k, truth.expected[k])).astype(self.spec.dtype)
           for k in record.output_names(here)]
    return out[0] if len(out) == 1 else tuple(out)


def case_of_args(spec: OpSpec, args) -> tuple:
  """(spec, case): the case whose candidate arguments are ``args`` (``record.args`` read back),
  the spec with any option handed as an argument (attention's heads) set from it."""
  record = kinds.of(spec)
  names = record.arg_names(spec)
  here = spec._replace(**{n: a for n, a in zip(names, args)  # options handed as arguments
                          if n in spec._fields and not isinstance(a, np.ndarray)})
  arrays = {n: record.internal(here, n, np.asarray(a, np.float64))
            for n, a in zip(names, args) if isinstance(a, np.ndarray)}
  return here, OpCase(None, record.derive(here, arrays))


def check_op(kind: str, candidate=None, name: str | None = None, *, isolate: bool = False,
             exec_command: str | None = None, workers: int = 1, cluster=None,
             **options) -> OpReport:
  """Check one operation's backward function against bpref's; never raises for what it does.

  Args:
    kind: one of ``KINDS``: "dense", "activation", "softmax", "loss", "layer", "layernorm", ...
    candidate: the backward function (module docstring), an ``OpCandidate``, a
      ``torch.autograd.Function`` subclass or a ``jax.custom_vjp`` function; with ``isolate``,
      also "module:attr" or "path/to/file.py:attr" naming one. None with ``exec_command``.
    name: the activation (activation, layer) or the loss (loss).
    isolate: run the candidate in a subprocess (named, or picklable), so that an exit, a crash
      in native code or a hang is a failure of its own and the verdict is computed in a process
      the candidate never ran in; ``bpref check --op`` does this unless told ``--in-process``.
    exec_command: in place of a candidate, a program in any language speaking bpref-wire
      version 2 (docs/protocol.md) that declares this op in its hello, e.g. "./layers"; each
      call is an op message over its stdin and stdout (``bpref.oracle.ops.wire_ops``). A dtype
      not given is the one its hello declares (float64 when it declares it).
    workers: processes running the candidate's calls side by side (the program's, with
      ``exec_command``); more than 1 isolates the candidate. The verdict, the counts, the
      minimal case and the diagnosis are those of one worker for the same seed; more calls may
      be made, and a failure that depends on earlier calls is not told apart (its calls are
      not one sequence).
    cluster: run the candidate's calls on a Dask cluster (``bpref.oracle.cluster``): a
      scheduler's address ("tcp://host:8786"), a ``dask.distributed.Client`` or a cluster
      object, as many at once as it has worker threads, with the verdict of one worker. The
      candidate must then be named ("module:attr") or picklable; not with ``exec_command``.
    **options: the ``OpSpec`` fields: takes, layout, bias, reduction, targets, dtype, examples,
      seed, max_batch, max_width, strict_conventions, timeout, shrink_budget.

  Returns:
    an ``OpReport``: verdict ("pass" or "fail"), cases checked, the minimal failing case
    with the candidate's answer beside bpref's, the errors per output, the diagnosis
    (``report.codes``) and convention notes.

  Raises:
    ValueError or TypeError for a bad kind, name or option, or a candidate that is not
    callable; with ``exec_command``, ``bpref.oracle.exec.ExecError`` (a ValueError) when the
    program does not start, or its hello is refused or does not declare the op.
  """
  with _isolation.recording() as transcript:  # what the candidate wrote, loads included
    report = _check_op(kind, candidate, name, isolate, exec_command, workers, cluster, options)
  report.output = transcript.to_json()
  return report


def _check_op(kind, candidate, name, isolate, exec_command, workers, cluster, options) -> OpReport:
  start = time.perf_counter()
  if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
    raise ValueError(f"check_op: workers must be an integer >= 1; got {workers!r}")
  if exec_command is not None:
    if candidate is not None or isolate or cluster is not None:
      raise TypeError("check_op: exec_command names the candidate, a program; pass no candidate, "
                      "no isolate and no cluster with it (the program always runs in its own "
                      "processes, on this machine)")
    with wire_ops.OpWirePool(exec_command, kind, name, options, workers=workers) as pool:
      pool.start()
      return _checked(pool.spec, _search.Evaluator(None, pool.spec, pool, workers), start)
  spec = kinds.make_spec(kind, name, **options)
  if not isolate and workers == 1 and cluster is None:
    with _isolation.exits_refused():
      return _checked(spec, _search.Evaluator(as_candidate(spec, candidate), spec), start)
  target = candidate if isinstance(candidate, str) else _isolation.picklable(candidate)
  made = ("made", _isolation.picklable(functools.partial(_loaded, spec, target)))
  if cluster is not None:
    pool = _cluster.ClusterPool(made, cluster, spec.timeout)
  else:
    pool = _isolation.Isolated(made, workers=workers, timeout=spec.timeout)
  with pool:
    try:
      pool.start()
    except RuntimeError as exc:  # it ended its process while being imported
      return OpReport("fail", spec.to_json(), 0, 0, spec.seed, time.perf_counter() - start,
                      kind="crash", message=f"the candidate ended its process while being "
                      f"loaded: {exc}", op=kinds.of(spec).describe(spec),
                      diagnosis=[Finding("crash", f"the candidate ended its process while being "
                                         f"loaded: {exc}")])
    return _checked(spec, _search.Evaluator(None, spec, pool, pool.workers), start)


def _loaded(spec, target) -> OpCandidate:
  """In the candidate's subprocess: the candidate named ("module:attr") or pickled, adapted."""
  import pickle

  return as_candidate(spec, _isolation.load_target(target) if isinstance(target, str)
                      else pickle.loads(target))


def _checked(spec, ev, start) -> OpReport:
  found = _search.search(ev)
  tally = found.tally
  rep = OpReport("pass", spec.to_json(), tally.checked, ev.calls, spec.seed, 0.0,
                 notes=sorted(ev.notes), op=ev.record.describe(spec),
                 skipped=sum(tally.dropped.values()),
                 forward_checked=ev.forward_checked)
  if found.first is None:
    if ev.stopped:
      rep.verdict, rep.kind, rep.message = "fail", "timeout", ev.stopped
  elif tally.checked == 0:
    rep.verdict, rep.kind = "error", "error"
  else:
    minimal = found.minimal
    origin = ev.origin if ev.origin is not None else minimal.case.label
    try:
      findings = _diagnosis.diagnose(ev, minimal, origin)
    except Exception as exc:  # a diagnosis that cannot run must not hide the verdict
      findings = [Finding("undiagnosed", "the candidate is wrong; the diagnosis could not run",
                          f"{type(exc).__name__}: {exc}")]
    calls = ev.calls
    if _engine.passes_alone(ev, minimal):
      findings.insert(0, history_dependent(
          f"the candidate failed on it after earlier calls in its process ({calls} calls in all "
          "before the rerun): state kept between calls, such as a buffer sized by the first "
          "call, a counter or a cache?"))
    v = minimal.verdict
    rep.verdict, rep.kind, rep.message = "fail", v.kind, v.message
    rep.shrunk = v.kind not in ev.unshrunk
    rep.examples_to_failure = found.position
    rep.errors, rep.tolerance, rep.diagnosis = dict(v.errors), v.tol, findings
    rep.case = _case_json(spec, minimal)
    rep.first_case = {"label": found.first.case.label._asdict()}
    rep.reproducer = reproducer(spec, minimal.case)
    rep.notes = sorted(ev.notes)
  rep.requested, rep.dropped = tally.requested, dict(tally.dropped)
  if rep.verdict == "pass" and tally.short:
    rep.verdict, rep.kind, rep.message = "error", "too_few_cases", _search.too_few(tally)
  rep.calls = ev.calls
  rep.seconds = time.perf_counter() - start
  return rep


def _case_json(spec, run) -> dict:
  """The minimal case as the candidate saw it: its arrays, W in the declared layout, and what
  it returned (dW as returned) beside bpref's answer in the same layout."""
  record = kinds.of(spec)
  arrays = {k: record.declared(spec, k, v) for k, v in run.case.arrays.items()}
  label = run.case.label
  dims = label.dims if label is not None else tuple(
      run.case.arrays["dout" if "dout" in run.case.arrays else "t"].shape)
  shapes = ", ".join(f"{k} {np.shape(v)}" for k, v in arrays.items())
  out = {"dims": list(dims), "shapes": shapes, "arrays": {k: v.tolist() for k, v in arrays.items()},
         "label": None if label is None else label._asdict(), "dtype": spec.dtype}
  if len(record.layouts) > 1:
    out["layout"] = spec.layout
  if run.verdict.outputs is not None:
    out["candidate"] = {k: record.declared(spec, k, v).tolist() for k, v in run.verdict.outputs.items()}
    out["bpref"] = {k: record.declared(spec, k, run.truth.expected[k]).tolist()
                    for k in run.verdict.outputs}
  return out


def expected(kind: str, name: str | None = None, *, takes: str | None = None,
             layout: str = "", reduction: str = "mean", targets: str = "probabilities",
             dtype: str = "float64", eps: float = 1e-5, heads: int = 0, **arrays) -> dict:
  """bpref's answer for one op on given arrays, in the candidate's layout: {"dx", "dW", "db"},
  {"dz"}, {"dy"}, ... (the kind's outputs).

  Args:
    kind, name, takes, layout, reduction, targets, dtype, eps, heads: as for ``check_op``.
    **arrays: the kind's arrays by name, in ``layout``: x, W, b, dout (dense, layer); z, dout
      (activation, softmax); for a loss: y and t (squared_error, half_squared_error, huber), else
      z (the logits) and t, or labels with targets="labels"; the other kinds' in docs/oracle.md.

  >>> import numpy as np
  >>> expected("activation", "relu", z=np.array([[-1.0, 2.0]]), dout=np.array([[3.0, 4.0]]))["dz"]
  array([[0., 4.]])
  """
  spec = kinds.make_spec(kind, name, takes=takes or "", layout=layout,
                         bias=arrays.get("b") is not None, reduction=reduction, targets=targets,
                         dtype=dtype, eps=eps, heads=heads)
  record = kinds.of(spec)
  arr = {k: record.internal(spec, k, np.asarray(v, np.float64)) for k, v in arrays.items()
         if v is not None}
  missing = [k for k in record.required(spec) if k not in arr]
  if missing:
    raise ValueError(f"{kind}{f' {name}' if name else ''} needs the array(s) {', '.join(missing)}; "
                     f"got {', '.join(sorted(arr)) or 'none'}")
  truth = record.compute(spec, OpCase(None, record.derive(spec, arr)))
  return {k: record.declared(spec, k, v) for k, v in truth.expected.items()}


def reproducer(spec, case) -> str:
  """A standalone script: the minimal case, the candidate called on it, bpref's answer beside."""
  record = kinds.of(spec)
  arrays = {k: record.declared(spec, k, v).tolist() for k, v in case.arrays.items()
            if k in record.primary(spec)}
  ints = ("labels",) + tuple(record.integer_arrays)
  args = {k: f"np.array({v!r}, {'np.int64' if k in ints else 'dtype'})" for k, v in arrays.items()}
  lines = ",\n    ".join(f"{k}={v}" for k, v in args.items())
  options = "".join(f", {k}={getattr(spec, k)!r}" for k in ("eps", "heads") if k in record.options)
  return f'''"""Reproduce check_op's minimal failing case: {record.describe(spec)}."""
import numpy as np

from bpref.oracle.ops import expected

dtype = np.{spec.dtype}
arrays = dict(
    {lines})
print("bpref:", expected({spec.kind!r}, {spec.name!r}, takes={spec.takes!r}, layout={spec.layout!r},
               reduction={spec.reduction!r}, targets={spec.targets!r}, dtype={spec.dtype!r}{options},
               **arrays))
# candidate = ...  # your backward function; call it as check_op does ({record.call_text(spec)}) and compare
'''


__all__ = ["KINDS", "OpCandidate", "OpReport", "OpSpec", "add_op_arguments", "check_op", "expected",
           "from_custom_vjp", "from_torch_function", "run_op_command"]
