"""The oracle's report: verdict, minimal case, errors, diagnosis, reproducer."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

@dataclasses.dataclass
class Report:
  """What ``bpref.oracle.check`` found.

  Attributes:
    verdict: "pass" (correct on every case, and as many cases checked as asked for), "fail" (a
      bug was found) or "error" (no verdict: the oracle could not run the candidate at all, e.g.
      it could not be loaded in a subprocess; or, kind "too_few_cases", fewer cases checked than
      asked for once the draw budget ran out, the message counting them and why each was dropped).
    passed: verdict == "pass".
    spec: the domain and search settings, as a dict.
    cases: cases checked in the search (probes and random); on a pass at least ``requested``.
    requested: cases asked for: the probes in the domain plus ``examples`` random networks.
    dropped: {reason: count} of the cases drawn and dropped unchecked, because they check nothing
      ("vacuous": an all-zero gradient passes them; "not finite") or were not usable ("outside
      the domain", "repeat", "not drawn"); see ``bpref.oracle.search.DROP_REASONS``.
    calls: candidate calls in all (search, shrinking, diagnosis).
    examples_to_failure: position of the first failing case among those tried (0 on a pass).
    kind: the failure's kind (see ``bpref.oracle.judge.FAILURE_KINDS``), or "ok".
    message: one plain sentence about the failure.
    case: the minimal failing case: architecture and arrays (W_l in the (n_l, n_{l-1}) layout).
    errors: {"W1": e, "b1": e, ...} on the minimal case.
    layer_errors: worst error per layer 1..L; implied_delta_errors: the same for delta_l.
    tolerance: the tolerance of the minimal case.
    diagnosis: tested findings, the most specific first (``diagnosis.Finding``).
    notes: convention notes met while searching (kinks).
    seed: the search's seed.
    seconds: wall time.
    reproducer: a Python script that rebuilds the minimal case and compares it with bpref.
    output: what the candidate wrote to stdout and stderr while it was loaded and called:
      {"stdout": text, "stderr": text, "calls": calls that wrote, "clipped": bool}, each stream
      clipped to ``isolation.OUTPUT_LIMIT`` bytes; {} when it wrote nothing.
    compilation: XLA compilations made and persistent-cache hits (``bpref.compilation``),
      filled in by ``bpref check``; {} otherwise.
    sequence: for a failure that depends on earlier calls (it passes alone in a fresh process),
      the cases in the order that reproduces it; [] otherwise.
    shrunk: whether ``case`` was shrunk; a failure of a kind that is not shrunk (a timeout, a
      nondeterministic answer) keeps its first failing case.
  """
  verdict: str
  spec: dict
  cases: int
  calls: int
  seed: int
  seconds: float
  examples_to_failure: int = 0
  kind: str = "ok"
  message: str = ""
  case: dict | None = None
  errors: dict = dataclasses.field(default_factory=dict)
  layer_errors: list = dataclasses.field(default_factory=list)
  implied_delta_errors: list = dataclasses.field(default_factory=list)
  tolerance: float = 0.0
  diagnosis: list = dataclasses.field(default_factory=list)
  notes: list = dataclasses.field(default_factory=list)
  reproducer: str = ""
  first_case: dict | None = None
  output: dict = dataclasses.field(default_factory=dict)
  compilation: dict = dataclasses.field(default_factory=dict)
  requested: int = 0
  dropped: dict = dataclasses.field(default_factory=dict)
  shrunk: bool = True
  sequence: list = dataclasses.field(default_factory=list)

  @property
  def passed(self) -> bool:
    return self.verdict == "pass"

  @property
  def codes(self) -> list:
    """The diagnosis codes, most specific first."""
    return [f.code for f in self.diagnosis]

  def to_json(self) -> dict:
    out = dataclasses.asdict(self)
    out["diagnosis"] = [f.to_json() for f in self.diagnosis]
    out["passed"] = self.passed
    out["checked"] = self.cases
    return out

  def json(self) -> str:
    return json.dumps(self.to_json(), indent=2, default=_jsonable)

  def output_text(self) -> str:
    """What the candidate printed, as the text report shows it ("" when nothing)."""
    return "\n".join(_output_lines(self.output)).strip("\n")

  def text(self, rerun: str | None = None) -> str:
    """The report for people; ``rerun`` says where the reproducer is, in place of the default
    pointer to ``--reproducer FILE``."""
    s = self.spec
    lines = []
    domain = (f"activations {','.join(s['activations'])}; losses {','.join(s['losses'])}; "
              f"reduction {s['reduction']}; depth <= {s['max_depth']}, width <= {s['max_width']}, "
              f"B <= {s['max_batch']}; {s['dtype']}, layout {s['layout']}"
              f"{'' if s['bias'] else ', no biases'}")
    if self.verdict == "pass":
      lines.append(f"PASS: the candidate's gradients match bpref's on all {self.cases} networks "
                   f"checked, {sum(self.dropped.values())} dropped ({self.calls} calls, seed "
                   f"{self.seed}, {self.seconds:.1f} s)")
      lines.append(f"  domain: {domain}")
      if self.dropped:
        lines.append(f"  dropped unchecked: {_dropped_text(self.dropped)}")
      for note in self.notes:
        lines.append(f"  note: {note}")
      lines += _output_lines(self.output)
      return "\n".join(lines)
    if self.verdict == "error":
      if self.kind == "too_few_cases":
        lines.append(f"ERROR: no verdict: {self.message}")
        lines.append(f"  domain: {domain}")
      else:
        lines.append(f"ERROR: the oracle could not run the candidate: {self.message}")
      lines += _output_lines(self.output)
      return "\n".join(lines)
    headline, rest = _headline(self.message or self.kind)
    lines.append(f"FAIL: {headline}")
    for line in rest:
      lines.append(f"    {line}")
    lines.append(f"  found after {self.examples_to_failure} of the cases tried (seed {self.seed}); "
                 f"{self.calls} calls, {self.seconds:.1f} s"
                 f"{f'; {sum(self.dropped.values())} dropped unchecked' if self.dropped else ''}")
    lines.append(f"  domain: {domain}")
    if self.diagnosis:
      lines.append("")
      lines.append("diagnosis (most likely first):")
      for f in self.diagnosis:
        lines.append(f"  * {f.summary}  [{f.code}]")
        if f.detail and f.detail != f.summary and f.detail.strip() != self.message.strip():
          for dl in f.detail.splitlines()[:8]:
            lines.append(f"      {dl}")
    if self.case:
      a = self.case["arch"]
      lines.append("")
      which = "minimal failing case" if self.shrunk else "first failing case (not shrunk)"
      lines.append(f"{which}: sizes {tuple(a['sizes'])}, activations "
                   f"{tuple(a['activations'])}, loss {a['loss']} ({s['reduction']}), B = {a['batch']}"
                   f"{', kinks planted' if a['kink'] else ''}")
    if self.errors:
      lines.append(f"  normwise error per array (tolerance {self.tolerance:.1e}):")
      lines.append("    " + "  ".join(f"{k}: {v:.2e}{' *' if not v <= self.tolerance else ''}"
                                      for k, v in self.errors.items()))
    if self.implied_delta_errors and any(e is not None for e in self.implied_delta_errors):
      lines.append("  implied delta_l error per layer: " + "  ".join(
          f"{l}: {'n/a' if e is None else f'{e:.2e}'}"
          for l, e in enumerate(self.implied_delta_errors, start=1)))
    if self.case and self.case.get("arrays"):
      lines.append("")
      rerun = rerun or "--reproducer FILE, or the report's reproducer"
      in_out = s.get("layout") == "in_out"  # W_l and dW_l shown as the candidate stores them

      def laid_out(name, value):
        arr = np.asarray(value, np.float64)
        return arr.T if in_out and name.lstrip("d").startswith("W") else arr

      layout = ", W_l as (n_{l-1}, n_l): layout in_out" if in_out else ""
      lines.append(f"  arrays of the minimal case{layout} (rerun them: {rerun}):")
      with np.printoptions(precision=4, suppress=True, linewidth=100):
        for name, value in self.case["arrays"].items():
          arr = laid_out(name, value)
          if arr.size <= 24:
            lines.append(f"    {name} = " + np.array2string(arr, prefix=f"    {name} = "))
      mine, ours = self.case.get("candidate", {}), self.case.get("bpref", {})
      shown = [k for k in mine if k in ours and np.asarray(ours[k]).size <= 12]
      if shown:
        lines.append("  gradients on it, the candidate's beside bpref's:")
        for k in shown:
          c, b = laid_out(k, mine[k]).ravel(), laid_out(k, ours[k]).ravel()
          digits = digits_that_differ(c, b)
          fmt = {"float_kind": lambda v, d=digits: f"{v:.{d}g}"}
          lines.append(f"    {k}: candidate {np.array2string(c, formatter=fmt)}  "
                       f"bpref {np.array2string(b, formatter=fmt)}")
    for note in self.notes:
      lines.append(f"  note: {note}")
    lines += _output_lines(self.output)
    return "\n".join(lines)


def history_dependent(detail: str):
  """The finding of a failure that passes alone, in a fresh process (``engine.passes_alone``):
  ``detail`` says after which calls it failed."""
  from bpref.oracle.diagnosis import Finding

  return Finding("history_dependent", "the failure depends on earlier calls: alone, in a fresh "
                 "process, the minimal case passes", detail)


def _dropped_text(dropped: dict) -> str:
  """'9: 8 vacuous (...), 1 ...' from {reason: count}."""
  from bpref.oracle.search import DROP_REASONS

  parts = [f"{n} {DROP_REASONS.get(k, k)}" for k, n in sorted(dropped.items(), key=lambda kv: -kv[1])]
  return f"{sum(dropped.values())}: {', '.join(parts)}"


def digits_that_differ(candidate, ours, least: int = 6) -> int:
  """Significant digits (least to 17) that show every entry where the two arrays differ."""
  differ = candidate != ours
  for digits in range(least, 18):
    if all(f"{c:.{digits}g}" != f"{o:.{digits}g}" for c, o in zip(candidate[differ], ours[differ])):
      return digits
  return 17


MESSAGE_LINES = 12
"""Lines of a failure's message (an exception's traceback, say) shown under the headline."""

OUTPUT_LINES = 10
"""Lines of each of the candidate's output streams shown in the text report."""


def _headline(message: str) -> tuple:
  """(first line, the lines after it); a first line ending in ':' takes the next one along,
  so "the candidate raised an exception:" reads "...: ZeroDivisionError: division by zero"."""
  lines = message.rstrip().splitlines() or [""]
  head, rest = lines[0], lines[1:]
  if head.endswith(":") and rest:
    head, rest = f"{head} {rest[0].strip()}", rest[1:]
  if len(rest) > MESSAGE_LINES:
    rest = rest[:MESSAGE_LINES] + [f"[... {len(rest) - MESSAGE_LINES} more lines: --json has them]"]
  return head, rest


def _output_lines(output: dict) -> list:
  """The candidate's stdout and stderr, the first OUTPUT_LINES lines of each, for the text report."""
  if not output:
    return []
  calls = output.get("calls", 0)
  lines = ["", f"the candidate's output (written during {calls} of its calls and imports; the first "
           f"{OUTPUT_LINES} lines of each stream; --json has more):"]
  for stream in ("stdout", "stderr"):
    text = output.get(stream, "")
    if not text:
      continue
    shown = text.rstrip("\n").splitlines()
    lines.append(f"  {stream}:")
    for line in shown[:OUTPUT_LINES]:
      lines.append(f"    | {line[:160]}{' ...' if len(line) > 160 else ''}")
    if len(shown) > OUTPUT_LINES:
      lines.append(f"    [... {len(shown) - OUTPUT_LINES} more lines]")
  if output.get("clipped"):
    lines.append("  (the output was longer; only its beginning was kept)")
  return lines


def _jsonable(obj):
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  if isinstance(obj, (np.floating, np.integer)):
    return obj.item()
  if hasattr(obj, "to_json"):
    return obj.to_json()
  return str(obj)


def case_json(case, result=None, truth=None) -> dict:
  """The minimal case as plain lists (exact: float64 repr of the candidate-dtype values)."""
  arrays = {}
  for l, W in enumerate(case.weights, start=1):
    arrays[f"W{l}"] = np.asarray(W, np.float64).tolist()
  for l, b in enumerate(case.biases or (), start=1):
    arrays[f"b{l}"] = np.asarray(b, np.float64).tolist()
  arrays["x"] = np.asarray(case.x, np.float64).tolist()
  arrays["t"] = np.asarray(case.t, np.float64).tolist()
  out = {"arch": case.arch.to_json(), "reduction": case.reduction, "dtype": case.dtype,
         "arrays": arrays}
  if result is not None and result.dW is not None:
    out["candidate"] = {f"dW{l}": np.asarray(g, np.float64).tolist()
                        for l, g in enumerate(result.dW, start=1)}
    out["candidate"].update({f"db{l}": np.asarray(g, np.float64).tolist()
                             for l, g in enumerate(result.db or (), start=1)})
  if truth is not None:
    out["bpref"] = {f"dW{l}": np.asarray(g).tolist() for l, g in enumerate(truth.dW, start=1)}
    out["bpref"].update({f"db{l}": np.asarray(g).tolist() for l, g in enumerate(truth.db or (), start=1)})
  return out


def reproducer(case, spec, target=None, name: str = "") -> str:
  """A standalone script: rebuild the minimal case, call the candidate, compare with bpref.

  Args:
    case: the minimal failing case.
    spec: the ``Spec``.
    target: how the candidate was named: (kind, "module:name" or "path.py:name") with kind
      "function" or a bridge ("torch", "flax", "equinox"); a plain string is a function. A
      file path should be absolute, so that the script runs from any directory; for a module
      name, the current directory is put on the script's sys.path.
    name: without a target, the candidate's name, shown beside the line to fill in.
  """
  cj = case_json(case)
  arrays = cj["arrays"]
  L = case.arch.depth
  ws = ", ".join(f"np.array({arrays[f'W{l}']!r}, dtype)" for l in range(1, L + 1))
  bs = ("[" + ", ".join(f"np.array({arrays[f'b{l}']!r}, dtype)" for l in range(1, L + 1)) + "]"
        if case.biases is not None else "None")
  if isinstance(target, str):
    target = ("function", target)
  if target is None:
    load = ("candidate = ...  # your gradient function: grads(weights, biases, activations, loss, x, t)"
            f"{f'; here {name}' if name else ''}\n")
  else:
    kind, ref = target
    where = ref.rpartition(":")[0]
    path = "" if where.endswith(".py") or os.sep in where else \
        f"sys.path.insert(0, {os.getcwd()!r})  # where bpref check found module {where!r}\n"
    if kind == "function":
      load = (f"{path}from bpref.oracle.isolation import load_target\n"
              f"candidate = load_target({ref!r})\n")
    else:
      load = (f"{path}from bpref.oracle.isolation import load_candidate\n"
              f"candidate = load_candidate({kind!r}, {ref!r}, {case.reduction!r})  # the {kind} bridge\n")
  transpose = "[W.T for W in weights]" if spec.layout == "in_out" else "list(weights)"
  return f'''"""Reproduce bpref check's minimal failing case ({case.arch.describe()})."""
import sys

import jax
import numpy as np

import bpref

jax.config.update("jax_enable_x64", True)
dtype = np.{case.dtype}
weights = [{ws}]
biases = {bs}
activations = {list(case.arch.activations)!r}
loss, reduction = {case.arch.loss!r}, {case.reduction!r}
x = np.array({arrays['x']!r}, dtype)
t = np.array({arrays['t']!r}, dtype)

{load}out = candidate({transpose}, None if biases is None else list(biases), list(activations), loss,
                x.copy(), t.copy())
dW, db = out[0], out[1]
params = bpref.from_arrays([w.astype(np.float64) for w in weights],
                           None if biases is None else [b.astype(np.float64) for b in biases],
                           activations)
_, grads = bpref.value_and_grad(params, x.astype(np.float64), t.astype(np.float64), loss, reduction)
for l, g in enumerate(grads, start=1):
  mine = np.asarray(dW[l - 1], np.float64){'.T' if spec.layout == 'in_out' else ''}
  print(f"layer {{l}}: dW error", np.linalg.norm(mine - np.asarray(g.W)) / np.linalg.norm(np.asarray(g.W)))
  if biases is not None:
    print(f"layer {{l}}: db error", np.linalg.norm(np.asarray(db[l - 1], np.float64) - np.asarray(g.b))
          / max(np.linalg.norm(np.asarray(g.b)), 1e-300))
'''
