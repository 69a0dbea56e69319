"""One operation as a problem of the search engine (``bpref.oracle.engine``): its cases are
``Label``s over shapes and value families, and a failure is shrunk over its labels and then
over its values, entry by entry."""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np

from bpref.oracle import engine as _engine
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

  @property
  def passed(self) -> bool:
    """Judged and right (a case that checks nothing is neither right nor wrong)."""
    return self.verdict is not None and self.verdict.passed

  @property
  def kind(self) -> str:
    return "" if self.verdict is None else self.verdict.kind


class Evaluator:
  """Runs the candidate on cases and judges it; counts calls; keeps what the candidate printed.

  It is the engine's ``Problem`` too: its items are ``Label``s (or, rerun alone, ``OpCase``s),
  its results ``Run``s. With a pool of ``workers`` processes (``isolation.Isolated``, a
  ``cluster.ClusterPool`` or a program's ``wire_ops.OpWirePool``), the calls of a chunk of
  cases run side by side and are judged in order.
  """

  def __init__(self, candidate, spec, pool=None, workers: int = 1):
    self.candidate, self.spec, self.pool = candidate, spec, pool
    self.workers = workers
    self.record = kinds.of(spec)
    info = (pool.info or {}) if pool is not None else {}
    self.has_forward = (bool(info.get("forward")) if pool is not None
                        else candidate.forward is not None)
    self.unshrunk = tuple(k for k in UNSHRUNK if not (k == "crash" and info.get("cheap_restarts")))
    self.calls = 0
    self.stopped = ""
    self.notes = set()
    self.forward_checked = 0
    self.origin = None  # the name of the minimal case before its values were made plainer
    self._stream = None  # the seed's random labels (``label_stream``), as drawn so far
    self._answers = {}  # label: (case, bpref's answer), from ``skip`` to ``judged``

  def truth(self, case, answer=None):
    """bpref's answer (``answer`` when given), or None when the case checks nothing (vacuous
    or not finite)."""
    truth = self.record.compute(self.spec, case) if answer is None else answer
    if not finite(truth) or vacuous(truth):
      return None
    return truth

  def call(self, which: str, args):
    """The candidate's ``which`` ("backward" or "forward") called on ``args``."""
    outcome = self.called(which, [args])[0]
    self._hung([0], [outcome], 1)
    return outcome

  def called(self, which: str, arg_lists) -> list:
    """The candidate's ``which`` called on each of ``arg_lists``, in order: side by side on the
    pool's workers, or here one at a time, none after one that hung (it cannot be stopped).
    A call that hung stops the search only where it counts (``runs``, ``call``)."""
    transport = (self.pool if self.pool is not None
                 else _isolation.InProcess(self.candidate, self.spec.timeout))
    outcomes = transport.map([(which, args) for args in arg_lists])  # each records its output
    self.calls += len(outcomes)
    return outcomes

  def _hung(self, asked, outcomes, end: int) -> None:
    """``stopped`` set by a call that hung among those that count (of cases before ``end``)."""
    for i, outcome in zip(asked, outcomes):
      if i < end and outcome.status == "timeout":
        self.stopped = outcome.error
        return

  def run(self, case, *, forward: bool = True, answer=None) -> Run:
    return self.runs([(case, answer)], forward=forward)[0]

  def runs(self, cases, *, forward: bool = True) -> list:
    """Each (case, bpref's answer or None) run and judged, in order: the backward calls of them
    all, then the forward calls of those that passed. The runs end at the first call that hung,
    as they would one case at a time."""
    stopped = self.stopped
    truths = [self.truth(case, answer) for case, answer in cases]
    asked = [i for i, truth in enumerate(truths) if truth is not None]
    outcomes = self.called("backward", [self.record.args(self.spec, cases[i][0]) for i in asked])
    end = _end(asked, outcomes, len(cases))
    self._hung(asked, outcomes, end)
    verdicts = {i: _judge.judge(self.spec, cases[i][0], truths[i], outcome)
                for i, outcome in zip(asked, outcomes) if i < end}
    if forward and self.has_forward and not stopped:
      again = [i for i in sorted(verdicts) if verdicts[i].passed]
      fwd = self.called("forward", [self.record.forward_args(self.spec, cases[i][0])
                                    for i in again])
      end = min(end, _end(again, fwd, end))
      self._hung(again, fwd, end)
      variant = self.record.twin(self.spec)
      for i, outcome in zip(again, fwd):
        if i >= end:
          break
        twin = None if variant is None else self.record.compute(self.spec, cases[i][0], variant)
        bad = _judge.judge_forward(self.spec, cases[i][0], truths[i], outcome, twin)
        self.forward_checked += 1
        if bad is not None:
          verdicts[i] = bad
    out = []
    for i in range(end):
      verdict = verdicts.get(i)
      if verdict is not None and verdict.note:
        self.notes.add(verdict.note)
      out.append(Run(cases[i][0], truths[i] if verdict is not None else None, verdict))
    return out

  # The engine's Problem (``bpref.oracle.engine``).

  def probe_items(self) -> list:
    return probes(self.spec)

  def draw(self, count: int, round: int) -> list:
    """The next ``count`` labels of ``label_stream``: every round continues the one stream."""
    if self._stream is None:
      self._stream = label_stream(self.spec)
    return list(itertools.islice(self._stream, count))

  def outside(self, label) -> str:
    return ""

  def skip(self, label) -> str:
    """Why the case of ``label`` checks nothing ("not finite", "vacuous"), or ""."""
    case = self.record.case(self.spec, label)
    answer = self.record.compute(self.spec, case)
    why = "not finite" if not finite(answer) else "vacuous" if vacuous(answer) else ""
    if not why:
      self._answers[label] = (case, answer)
    return why

  def judged(self, items, phase: str, failing=None) -> list:
    """Each item run (``runs``); the forward too while searching, or when ``failing`` is the
    forward's."""
    forward = phase == "search" or (failing is not None and failing.kind == "forward")
    cases = [(item, None) if isinstance(item, OpCase) else
             self._answers.pop(item, None) or (self.record.case(self.spec, item), None)
             for item in items]
    return self.runs(cases, forward=forward)

  def repeated(self, first: Run):
    """A second call on the first case's inputs must agree with the first."""
    again = self.run(first.case, forward=False)
    if again.verdict is None or _same(first.verdict, again.verdict, first.truth):
      return None
    return Run(first.case, first.truth, again.verdict._replace(
        passed=False, kind="nondeterministic",
        message="two calls on the same inputs returned different answers (state kept between "
                "calls, such as a gradient accumulated with += into a buffer?)"))

  def item_of(self, run: Run):
    return run.case

  def neighbours_of(self, run: Run) -> list:
    return [] if run.case.label is None else neighbours(self.spec, run.case.label)

  def same_failure(self, failing: Run):
    """The same kind, the same findings and, for a clear numeric failure, still clear
    (``_same_failure``); None for the kinds kept as first found (``unshrunk``)."""
    kind = failing.kind
    if kind in self.unshrunk:
      return None
    codes = tuple(f.code for f in failing.verdict.findings)
    clear = kind == "numeric" and _clear(failing.verdict)
    return lambda run: _same_failure(run.verdict, kind, codes, clear)


def _end(asked, outcomes, end: int) -> int:
  """How many of a chunk's cases count: those before ``end``, up to the first whose call (of
  ``asked``, the cases called, with their ``outcomes``) hung or was not made."""
  for i, outcome in zip(asked, outcomes):
    if i >= end:
      return end
    if outcome.status == "timeout":
      return i + 1
  return min(end, asked[len(outcomes)]) if len(outcomes) < len(asked) else end


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


DRAW_BUDGET = _engine.DRAW_BUDGET
"""Random cases the search may draw per random case it must check (``engine.cases``)."""

SKIP_REASONS = {
    "vacuous": "vacuous (an all-zero answer passes them)",
    "not finite": "with bpref's own answer not finite there",
}
"""Why a case is skipped unchecked, keyed as in ``Found.reasons``."""


def too_few(tally) -> str:
  """Why a search that checked fewer cases than asked for (an ``engine.Tally``) gives no
  verdict, with the counts."""
  skipped = sum(tally.dropped.values())
  reasons = ", ".join(f"{n} {SKIP_REASONS.get(k, k)}" for k, n in tally.dropped.most_common())
  return tally.too_few("cases", "probes",
                       f"skipped unchecked: {skipped}{f' ({reasons})' if reasons else ''}", "cases",
                       "; widen max_width or max_batch, or choose another op or dtype, so that "
                       "drawn cases check something")


class Found(NamedTuple):
  """What the search found: the first failure, its shrunk form, its 1-based position among
  the cases checked (None, None, 0 on a pass), and the ``engine.Tally`` of the cases."""
  first: Run | None
  minimal: Run | None
  position: int
  tally: _engine.Tally


def search(ev: Evaluator) -> Found:
  """Probes, then random cases, until the first failure (``engine.find_failure``); then shrink it.

  ``len(probes) + spec.examples`` cases are checked. A case that checks nothing (vacuous, or
  bpref's answer not finite) is skipped, not counted, and made up for by further random cases
  (``label_stream``), at most ``DRAW_BUDGET`` draws per random case needed in all (10 per
  example, and 10 for each probe skipped); ``tally.short`` when they ran out first, and then
  no pass can be given.
  """
  tally = _engine.Tally(len(probes(ev.spec)), ev.spec.examples, DRAW_BUDGET)
  first, position = _engine.find_failure(ev, tally)
  if first is None:
    return Found(None, None, 0, tally)
  return Found(first, shrink(ev, first), position, tally)


def _same(first, second, truth) -> bool:
  if first.outputs is None or second.outputs is None or "nonfinite" in (first.kind, second.kind):
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
  """The failure moved greedily to fewer entries (``engine.shrink`` over ``neighbours``), then
  to plainer values (``_plainer_values``), keeping its kind."""
  same = ev.same_failure(failing)
  if same is None:
    return failing
  best, _, _, budget = _engine.shrink(ev, failing, ev.spec.shrink_budget)
  ev.origin = best.case.label
  return _plainer_values(ev, best, same, budget)


def _plainer_values(ev: Evaluator, best: Run, same, budget: int) -> Run:
  """Each entry replaced by the plainest value (the record's ``replacements``) that keeps the
  failure (``same``), in one pass over the entries; the replacements of an entry are tried
  ``ev.workers`` at a time, each one tried up to the one taken spending one of ``budget``."""
  spec, record = ev.spec, ev.record
  for name in record.shrinkable(spec):
    if name not in best.case.arrays:
      continue
    for index in np.ndindex(best.case.arrays[name].shape):
      values = list(record.replacements(spec, name, best.case.arrays[name][index]))
      for start in range(0, len(values), ev.workers):
        if budget <= 0 or ev.stopped:
          return best
        cases = []
        for value in values[start:start + ev.workers][:budget]:
          arrays = {k: v.copy() for k, v in best.case.arrays.items()}
          arrays[name][index] = value
          cases.append((OpCase(None, record.derive(spec, arrays)), None))
        taken = None
        for run in ev.runs(cases, forward=best.kind == "forward"):
          budget -= 1
          if same(run):
            taken = run
            break
        if taken is not None:
          best = taken
          break
  return best
