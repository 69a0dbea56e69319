"""The whole network as a problem of the search engine (``bpref.oracle.engine``).

Every case the oracle tries is an ``Arch`` from a list fixed by the spec and
the seed (``spec.probes`` then ``spec.random_archs``; a case that checks nothing is
dropped and made up for by further draws, ``engine.cases``), and shrinking tries the
neighbours of a failing case in a fixed order (``neighbours``), taking the first that
still fails. The calls themselves may run in this process or on ``workers``
subprocesses; since the list and the order do not depend on where the calls
run, the verdict, the minimal case and the counts are the same for the same
seed.
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple

import numpy as np

from bpref.oracle import engine as _engine
from bpref.oracle import isolation as _isolation
from bpref.oracle import judge as _judge
from bpref.oracle import spec as _spec
from bpref.oracle import truth as _truth

SHRINK_GROUPS = {
    "numeric": "value", "convention": "value", "loss": "value", "nonfinite": "value",
    "shape": "shape", "structure": "shape", "dtype": "dtype", "exception": "exception",
    "mutation": "mutation", "crash": "crash", "protocol": "protocol",
}
"""Failures that shrink, and which kinds count as the same failure while shrinking: a crash
(isolated, or over the wire) too, each attempt in a fresh process. A timeout is not shrunk
(each attempt could cost the whole timeout), nor a nondeterministic answer."""


class Evaluator:
  """Builds cases, calls the candidate, judges the calls; remembers every verdict.

  Args:
    candidate: the callable (for in-process calls), or None with ``pool``.
    spec: the ``Spec``.
    pool: an ``isolation.Isolated`` running the candidate in subprocesses, or None.
    progress: called as progress(phase, calls_so_far) after each batch of calls.

  ``declared`` is ``spec.names()``, handed to the truth and the judge: their float64 helpers
  compile tables over the spec's names alone (``bpref.oracle.truth``).
  """

  def __init__(self, candidate, spec, pool=None, progress: Callable | None = None):
    self.candidate = candidate
    self.spec = spec
    self.declared = spec.names()
    self.pool = pool
    self.progress = progress
    self.history = []  # (phase, CaseResult) in call order
    self.calls = 0
    self.stopped = ""  # why no further calls can be made
    self._truths = {}
    self._seen = set()  # the archs the search has examined

  def case_and_truth(self, arch):
    if arch not in self._truths:
      case = _spec.build_case(arch, self.spec)
      self._truths[arch] = (case, _truth.compute(case, declared=self.declared))
    return self._truths[arch]

  def run(self, archs, phase: str, spec=None) -> list:
    """The ``CaseResult`` of each arch, in order (fewer if the candidate hung in process).

    ``spec`` overrides the layout or other judging options for an experiment.
    """
    if self.stopped or not archs:
      return []
    spec = spec or self.spec
    prepared = [self.case_and_truth(a) for a in archs]
    transport = (self.pool if self.pool is not None
                 else _isolation.InProcess(self.candidate, self.spec.timeout))
    outcomes = transport.map([_isolation.NetworkCall(case, spec.layout) for case, _ in prepared])
    if getattr(transport, "stopped", ""):
      self.stopped = ("the candidate hung in this process and cannot be stopped here; "
                      "isolate=True (--isolate) runs it in a subprocess that can be")
    return self.judge_all(prepared, outcomes, phase, spec)

  def judge_all(self, prepared, outcomes, phase: str, spec) -> list:
    """Judge each (case, truth) by its outcome; record them in the history and count the calls."""
    results = []
    for (case, truth), outcome in zip(prepared, outcomes):
      result = _judge.judge(case, truth, outcome, spec, declared=self.declared)
      results.append(result)
      self.history.append((phase, result))
    self.calls += len(outcomes)
    if self.progress:
      self.progress(phase, self.calls)
    return results

  # The engine's Problem (``bpref.oracle.engine``): items are ``Arch``es, results ``CaseResult``s.

  @property
  def workers(self) -> int:
    return max(1, self.spec.workers)

  def probe_items(self) -> list:
    return _spec.probes(self.spec) if self.spec.probes else []

  def draw(self, count: int, round: int) -> list:
    """Round 0 draws from the seed; round k from the seed named f"{seed}+{k}"."""
    seed = self.spec.seed if round == 0 else f"{self.spec.seed}+{round}"
    return _spec.random_archs(self.spec, count, seed, keep_outside=True)

  def outside(self, arch) -> str:
    return _spec.outside(arch, self.spec)

  def skip(self, arch) -> str:
    """Why ``arch`` checks nothing: a repeat of a case already examined, or ``drop_reason``."""
    if arch in self._seen:
      return "repeat"
    self._seen.add(arch)
    return drop_reason(*self.case_and_truth(arch))

  def judged(self, archs, phase: str, failing=None) -> list:
    return self.run(archs, phase)

  def repeated(self, result):
    again = self.run([result.arch], "repeat")
    if again and not _judge.same_results(result, again[0], self.case_and_truth(result.arch)[1],
                                         result.tolerance):
      return again[0]._replace(
          passed=False, kind="nondeterministic",
          message="two calls on the same inputs returned different gradients "
                  f"(first call: {result.message}; second call: {again[0].message})")
    return None

  def item_of(self, result):
    return result.arch

  def neighbours_of(self, result) -> list:
    return neighbours(result.arch, self.spec)

  def same_failure(self, failing):
    group = SHRINK_GROUPS.get(failing.kind)
    if group is None:
      return None
    return lambda r: not r.passed and SHRINK_GROUPS.get(r.kind) == group


class SearchResult(NamedTuple):
  """What the search found.

  Attributes:
    first: the first failing ``CaseResult`` (None when every case passed).
    examples_to_failure: 1-based position of ``first`` among the cases tried.
    minimal: the shrunk failing ``CaseResult``.
    shrink_steps: accepted shrinking steps.
    rejected: neighbours of the minimal case that passed (the counterfactuals).
    cases: cases checked in the search phase (probes + random).
    seconds: wall time.
    tally: the cases asked for, checked and dropped (``Tally``).
  """
  first: object
  examples_to_failure: int
  minimal: object
  shrink_steps: int
  rejected: tuple
  cases: int
  seconds: float
  tally: object = None


def vacuous(case, truth) -> list:
  """The arrays ("W1", "b2", ...) whose true gradient an all-zero answer would pass.

  e(0) = ||X_bpref||_F / ||M_X||_F <= tol: a layer silenced by dead relu units, a softmax
  output with one unit, or (in float32) a layer behind units so saturated that its gradient
  is below the rounding of f'. Such a case checks nothing there. (``bpref.oracle.vectors`` asks
  more of the cases it exports, a margin of 100 tolerances; the search would lose a fifth
  of its float32 cases to that margin, so it leaves out only the cases a zero passes.)
  """
  tol = _judge.case_tolerance(case, truth)
  zeros = _judge.errors_of(tuple(np.zeros_like(g) for g in truth.dW),
                           None if truth.db is None else tuple(np.zeros_like(g) for g in truth.db),
                           truth)
  return [name for name, e in zeros.items() if not e > tol]


DRAW_BUDGET = _engine.DRAW_BUDGET
"""Random networks the search may draw per random case it must check (``engine.cases``)."""

DROP_REASONS = {
    "vacuous": "vacuous (an all-zero gradient passes them: some layer's true gradient is below "
               "its rounding bound)",
    "not finite": "with bpref's own gradient or its bound not finite (overflow)",
    "outside the domain": "drawn outside the declared domain",
    "repeat": "repeating a case already checked",
    "not drawn": "asked of hypothesis but not drawn (its draws ran out or overran its buffer)",
}
"""Why a case is dropped unchecked, keyed as in ``Tally.dropped``."""


class Tally(_engine.Tally):
  """The engine's ``Tally`` of a network search, with its counts in words.

  ``probes`` counts the probes in the domain, ``dropped`` the reasons of ``DROP_REASONS`` met,
  ``outside`` the reasons a draw lies outside the domain (``spec.outside``).
  """

  def __init__(self, spec):
    super().__init__(len(_spec.probes(spec)) if spec.probes else 0, spec.examples, DRAW_BUDGET)

  def dropped_text(self) -> str:
    """'9 (8 vacuous ..., 1 ...)' for people; '0' when nothing was dropped."""
    total = sum(self.dropped.values())
    if not total:
      return "0"
    parts = []
    for key, n in self.dropped.most_common():
      why = DROP_REASONS.get(key, key)
      if key == "outside the domain" and len(self.outside) == 1:
        why += f": {next(iter(self.outside))}"
      elif key == "outside the domain" and self.outside:
        why += ": " + "; ".join(f"{w} ({c})" for w, c in self.outside.most_common(3))
      parts.append(f"{n} {why}")
    return f"{total} ({', '.join(parts)})"

  def message(self) -> str:
    """Why the search gives no verdict: the counts, the reasons, the budget spent."""
    if self.requested == 0:
      return ("nothing to check: 0 probes (probes off, or none in the domain) and examples=0, "
              "and a verdict on 0 networks is no verdict; ask for examples > 0")
    hint = ""
    if self.dropped.get("vacuous", 0) and self.dropped["vacuous"] >= sum(self.dropped.values()) / 2:
      hint = ("; deep networks (and float32 ones) have gradients below their rounding bound, so a "
              "smaller max_depth or float64 leaves more that check something")
    elif self.dropped.get("outside the domain"):
      hint = "; widen the domain (max_width, losses, output_activations) so that draws fall inside it"
    return self.too_few("networks", "probes in the domain",
                        f"dropped unchecked: {self.dropped_text()}", "draws", hint)

  def to_json(self) -> dict:
    return {"requested": self.requested, "probes": self.probes, "checked": self.checked,
            "dropped": dict(self.dropped),
            "outside": dict(self.outside), "budget": self.budget, "drawn": self.drawn}


def drop_reason(case, truth) -> str:
  """Why ``case`` checks nothing, a key of ``DROP_REASONS``; "" for a case that checks something."""
  arrays = truth.dW + truth.mag_W + (truth.db or ()) + (truth.mag_b or ())
  if not all(np.all(np.isfinite(a)) for a in arrays) or \
      not np.isfinite(_judge.case_tolerance(case, truth)):
    return "not finite"
  return "vacuous" if vacuous(case, truth) else ""


def neighbours(arch, spec) -> list:
  """Smaller versions of ``arch`` in the order shrinking tries them."""
  out = []
  depth = arch.depth
  for i in range(1, depth):  # drop hidden layer i (its width n_i and activation f_i)
    out.append(arch._replace(sizes=arch.sizes[:i] + arch.sizes[i + 1:],
                             activations=arch.activations[:i - 1] + arch.activations[i:]))
  if depth > 1:  # drop layer 1: the input becomes n_1 wide
    out.append(arch._replace(sizes=arch.sizes[1:], activations=arch.activations[1:]))
  for b in _spec.batches(spec):
    if b < arch.batch:
      out.append(arch._replace(batch=b))
  for j in range(len(arch.sizes)):
    for w in _spec.widths(spec):
      if w < arch.sizes[j]:
        out.append(arch._replace(sizes=arch.sizes[:j] + (w,) + arch.sizes[j + 1:]))
  plain = _spec.simplest_hidden(spec)
  for j in range(depth - 1):
    if arch.activations[j] != plain:
      out.append(arch._replace(activations=arch.activations[:j] + (plain,) + arch.activations[j + 1:]))
  plain_out = _spec.simplest_output(spec, arch.loss)
  if arch.activations[-1] != plain_out:
    out.append(arch._replace(activations=arch.activations[:-1] + (plain_out,)))
  if arch.kink:
    out.append(arch._replace(kink=False))
  for loss in spec.losses:
    if loss == arch.loss:
      break
    act = arch.activations[-1]
    if act not in spec.outputs_for(loss):
      act = _spec.simplest_output(spec, loss)
    out.append(arch._replace(loss=loss, activations=arch.activations[:-1] + (act,)))
  if arch.seed != 0:
    out.append(arch._replace(seed=0))
  return [a for a in out if _spec.in_domain(a, spec)]


def search(ev: Evaluator) -> SearchResult:
  """Probes, then random networks, until the first failure (``engine.find_failure``); then
  shrink it (``engine.shrink``). A pass needs ``tally.requested`` networks checked: the probes
  in the domain and ``spec.examples`` random ones, networks dropped made up for by further
  draws, at most ``DRAW_BUDGET`` per random network needed (``Tally.short`` when they ran out)."""
  start = time.perf_counter()
  tally = Tally(ev.spec)
  first, tried = _engine.find_failure(ev, tally)
  if first is None:
    return SearchResult(None, 0, None, 0, (), tried, time.perf_counter() - start, tally)
  minimal, steps, rejected, _ = _engine.shrink(ev, first, ev.spec.shrink_budget)
  return SearchResult(first, tried, minimal, steps, rejected, tried, time.perf_counter() - start,
                      tally)
