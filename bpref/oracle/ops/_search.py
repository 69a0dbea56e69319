"""The search over shapes and values, and the shrinking of a failure."""

from __future__ import annotations

import collections
import itertools
from typing import NamedTuple

import numpy as np

from bpref.oracle import isolation as _isolation
from bpref.oracle.diagnosis import FIT_SLACK
from bpref.oracle.ops import _judge, kinds
from bpref.oracle.ops.record import Label, OpCase, error, finite, vacuous

UNSHRUNK = ("timeout", "crash", "nondeterministic")
"""Failures kept as first found: each attempt could cost the whole timeout or a new process.
A crash is shrunk where a new process costs little: a pool whose ``info`` says
``cheap_restarts`` (a program over bpref-wire, ``wire_ops``), each attempt in a fresh process."""

class Run(NamedTuple):
  """One case run: the case, bpref's answer, the verdict (None for a case that checks nothing)."""
  case: OpCase
  truth: object
  verdict: object


class Evaluator:
  """Runs the candidate on cases and judges it; counts calls; keeps what the candidate printed."""

  def __init__(self, candidate, spec, pool=None):
    self.candidate, self.spec, self.pool = candidate, spec, pool  # Isolated, or wire_ops.OpWirePool
    self.record = kinds.of(spec)
    info = (pool.info or {}) if pool is not None else {}
    self.has_forward = (bool(info.get("forward")) if pool is not None
                        else candidate.forward is not None)
    self.unshrunk = tuple(k for k in UNSHRUNK if not (k == "crash" and info.get("cheap_restarts")))
    self.calls = 0
    self.transcript = _isolation.Transcript()
    self.stopped = ""
    self.notes = set()
    self.forward_checked = 0
    self.origin = None  # the name of the minimal case before its values were made plainer

  def truth(self, case):
    """bpref's answer, or None when the case checks nothing (vacuous or not finite)."""
    truth = self.record.compute(self.spec, case)
    if not finite(truth) or vacuous(truth):
      return None
    return truth

  def call(self, which: str, args):
    """The candidate's ``which`` ("backward" or "forward") called on ``args``."""
    self.calls += 1
    if self.pool is not None:
      outcome = _judge.call_isolated(self.pool, which, args, self.transcript)
    else:
      outcome = _judge.call(getattr(self.candidate, which), args, self.spec.timeout, self.transcript)
    if outcome.status == "timeout":
      self.stopped = outcome.error
    return outcome

  def run(self, case, *, forward: bool = True) -> Run:
    truth = self.truth(case)
    if truth is None:
      return Run(case, None, None)
    outcome = self.call("backward", self.record.args(self.spec, case))
    verdict = _judge.judge(self.spec, case, truth, outcome)
    if verdict.passed and forward and self.has_forward and not self.stopped:
      variant = self.record.twin(self.spec)
      twin = None if variant is None else self.record.compute(self.spec, case, variant)
      fwd = self.call("forward", self.record.forward_args(self.spec, case))
      bad = _judge.judge_forward(self.spec, case, truth, fwd, twin)
      self.forward_checked += 1
      if bad is not None:
        verdict = bad
    if verdict.note:
      self.notes.add(verdict.note)
    return Run(case, truth, verdict)


def probes(spec) -> list:
  """The targeted cases: each shape class once, then each value family once."""
  record = kinds.of(spec)
  shapes, family_dims = record.probe_dims(spec)
  out = [Label(d, "normal", spec.seed) for d in shapes]
  for dims in family_dims:
    out += [Label(dims, f, spec.seed) for f in record.value_families(spec)]
  return out


def random_labels(spec) -> list:
  """``spec.examples`` cases drawn from the seed: any shape within the limits, any family."""
  return list(itertools.islice(label_stream(spec), spec.examples))


def label_stream(spec):
  """The seed's random cases, without end: ``random_labels`` is its beginning."""
  rng = np.random.default_rng([spec.seed, 7919])
  record = kinds.of(spec)
  fams = record.value_families(spec)
  while True:
    dims = record.random_dims(spec, rng)
    yield Label(dims, fams[int(rng.integers(len(fams)))], int(rng.integers(1 << 30)))


DRAW_BUDGET = 10
"""Random cases the search may draw per random case it must check (``search``)."""

SKIP_REASONS = {
    "vacuous": "vacuous (an all-zero answer passes them)",
    "not finite": "with bpref's own answer not finite there",
}
"""Why a case is skipped unchecked, keyed as in ``Found.reasons``."""


def skip_reason(spec, case) -> str:
  """Why a case that ``Evaluator.truth`` refuses checks nothing: "not finite" or "vacuous"."""
  return "vacuous" if finite(kinds.of(spec).compute(spec, case)) else "not finite"


def too_few(found) -> str:
  """Why a search that checked fewer cases than asked for gives no verdict, with the counts."""
  reasons = ", ".join(f"{n} {SKIP_REASONS.get(k, k)}" for k, n in sorted(
      (found.reasons or {}).items(), key=lambda kv: -kv[1]))
  return (f"only {found.checked} of the {found.requested} cases asked for were checked "
          f"({found.requested - found.examples} probes + {found.examples} examples), so there is "
          f"no verdict; skipped unchecked: {found.skipped}{f' ({reasons})' if reasons else ''}. "
          f"The draw budget, {DRAW_BUDGET} random cases per random case needed ({found.budget} "
          f"here), ran out after {found.drawn} draws; widen max_width or max_batch, or choose "
          "another op or dtype, so that drawn cases check something")



class Found(NamedTuple):
  """What the search found: the first failure and its shrunk form (None on a pass).

  ``checked`` cases were judged and ``skipped`` left out as checking nothing (``reasons``
  counts why); ``requested`` (probes + ``examples``) is how many a verdict needs checked,
  ``drawn`` the random cases drawn of the ``budget`` allowed."""
  first: Run | None
  minimal: Run | None
  position: int
  checked: int
  skipped: int
  requested: int = 0
  examples: int = 0
  reasons: dict | None = None
  budget: int = 0
  drawn: int = 0


def search(ev: Evaluator) -> Found:
  """Probes, then random cases, until the first failure; then shrink it.

  ``len(probes) + spec.examples`` cases are checked. A case that checks nothing (vacuous, or
  bpref's answer not finite) is skipped, not counted, and made up for by further random cases
  (``label_stream``), at most ``DRAW_BUDGET`` draws per random case needed in all (10 per
  example, and 10 for each probe skipped); ``Found.checked < Found.requested`` when they ran
  out first, and then no pass can be given.
  """
  tally = _Tally()
  found = _search(ev, tally)
  return found._replace(requested=len(probes(ev.spec)) + ev.spec.examples,
                        examples=ev.spec.examples, reasons=dict(tally.skips),
                        budget=tally.budget, drawn=tally.drawn)


class _Tally:
  """The counts of one search: cases checked, skipped per reason, random draws allowed and made."""

  def __init__(self):
    self.checked, self.budget, self.drawn = 0, 0, 0
    self.skips = collections.Counter()


def _labels(spec, tally: _Tally):
  """The probes, then random labels until ``tally.checked`` reaches the count asked for or
  ``tally.budget`` draws are spent (the budget is set once the probes have run)."""
  first = probes(spec)
  yield from first
  tally.budget = DRAW_BUDGET * (spec.examples + sum(tally.skips.values()))
  requested = len(first) + spec.examples
  for label in itertools.islice(label_stream(spec), tally.budget):
    if tally.checked >= requested:
      return
    tally.drawn += 1
    yield label


def _search(ev: Evaluator, tally: _Tally) -> Found:
  checked = skipped = 0
  for label in _labels(ev.spec, tally):
    run = ev.run(ev.record.case(ev.spec, label))
    if run.verdict is None:
      skipped += 1
      tally.skips[skip_reason(ev.spec, run.case)] += 1
      continue
    checked += 1
    tally.checked = checked
    if checked == 1 and run.verdict.passed and not ev.stopped:
      again = ev.run(run.case, forward=False)  # a second call on the same inputs must agree
      if again.verdict is not None and not _same(run.verdict, again.verdict, run.truth):
        bad = again.verdict._replace(
            passed=False, kind="nondeterministic",
            message="two calls on the same inputs returned different answers (state kept between "
                    "calls, such as a gradient accumulated with += into a buffer?)")
        return Found(run, Run(run.case, run.truth, bad), checked, checked, skipped)
    if not run.verdict.passed or ev.stopped:
      if ev.stopped and run.verdict.passed:
        return Found(None, None, 0, checked, skipped)
      minimal = shrink(ev, run)
      return Found(run, minimal, checked, checked, skipped)
  return Found(None, None, 0, checked, skipped)


def _same(first, second, truth) -> bool:
  if first.outputs is None or second.outputs is None:
    return first.kind == second.kind
  return all(error(first.outputs[k], second.outputs[k], truth.bounds[k]) <= truth.tol
             for k in first.outputs)


def neighbours(spec, label) -> list:
  """Simpler names than ``label``: a smaller batch or width, a plainer family, value seed 0."""
  out = []
  for i, d in enumerate(label.dims):
    for smaller in sorted({1, d - 1}):
      if 1 <= smaller < d:
        dims = label.dims[:i] + (smaller,) + label.dims[i + 1:]
        out.append(label._replace(dims=dims))
  fams = kinds.of(spec).value_families(spec)
  for f in fams[:fams.index(label.family)]:
    out.append(label._replace(family=f))
  if label.seed != 0:
    out.append(label._replace(seed=0))
  return out


def _same_failure(verdict, kind, codes=(), clear=False) -> bool:
  """Whether a run fails the same way: the same kind, the same findings read off shapes and,
  with ``clear``, wrong by more than FIT_SLACK tolerances (so that a bug model can be told
  apart from rounding on it, as on the failure it replaces)."""
  return (verdict is not None and not verdict.passed and verdict.kind == kind
          and tuple(f.code for f in verdict.findings) == tuple(codes)
          and (not clear or _clear(verdict)))


def _clear(verdict) -> bool:
  """Whether a numeric failure is wrong by more than FIT_SLACK tolerances."""
  return bool(verdict.errors) and max(verdict.errors.values()) > FIT_SLACK * verdict.tol


def shrink(ev: Evaluator, failing: Run) -> Run:
  """The failure moved greedily to fewer entries and plainer values, keeping its kind."""
  kind = failing.verdict.kind
  codes = tuple(f.code for f in failing.verdict.findings)
  clear = kind == "numeric" and _clear(failing.verdict)
  if kind in ev.unshrunk:
    return failing
  budget = ev.spec.shrink_budget
  best = failing
  improved = True
  while improved and budget > 0 and failing.case.label is not None:
    improved = False
    for label in neighbours(ev.spec, best.case.label):
      if budget <= 0:
        break
      budget -= 1
      run = ev.run(ev.record.case(ev.spec, label), forward=kind == "forward")
      if _same_failure(run.verdict, kind, codes, clear):
        best, improved = run, True
        break
  ev.origin = best.case.label
  return _plainer_values(ev, best, kind, codes, budget, clear)


def _plainer_values(ev: Evaluator, best: Run, kind: str, codes: tuple, budget: int,
                    clear: bool) -> Run:
  """Each entry replaced by the plainest value (the record's ``replacements``) that keeps the failure."""
  spec, record = ev.spec, ev.record
  for name in record.shrinkable(spec):
    if name not in best.case.arrays:
      continue
    for index in np.ndindex(best.case.arrays[name].shape):
      for value in record.replacements(spec, name, best.case.arrays[name][index]):
        if budget <= 0:
          return best
        budget -= 1
        arrays = {k: v.copy() for k, v in best.case.arrays.items()}
        arrays[name][index] = value
        case = OpCase(None, record.derive(spec, arrays))
        run = ev.run(case, forward=kind == "forward")
        if _same_failure(run.verdict, kind, codes, clear):
          best = run
          break
  return best


def passes_alone(ev: Evaluator, failing: Run) -> bool:
  """Whether the failing case passes when it is the first call of a fresh process: the failure
  then depends on the calls before it (state kept between calls). False in process, where no
  fresh process can be had, and for a hang or a crash, which the rerun would only repeat."""
  if ev.pool is None or ev.stopped or failing.verdict.kind in ("timeout", "crash"):
    return False
  ev.pool.fresh()
  alone = ev.run(failing.case, forward=failing.verdict.kind == "forward")
  return alone.verdict is not None and alone.verdict.passed
