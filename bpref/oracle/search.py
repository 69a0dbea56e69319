"""The search: targeted probes, then hypothesis's random architectures, then shrinking.

Every case the oracle tries is an ``Arch`` from a list fixed by the spec and
the seed (``spec.probes`` then ``spec.random_archs``), and shrinking tries the
neighbours of a failing case in a fixed order, taking the first that still
fails. The calls themselves may run in this process or on ``workers``
subprocesses; since the list and the order do not depend on where the calls
run, the verdict, the minimal case and the counts are the same for the same
seed.
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple

import numpy as np

from bpref.oracle import isolation as _isolation
from bpref.oracle import judge as _judge
from bpref.oracle import spec as _spec
from bpref.oracle import truth as _truth

SHRINK_GROUPS = {
    "numeric": "value", "convention": "value", "loss": "value", "nonfinite": "value",
    "shape": "shape", "structure": "shape", "dtype": "dtype", "exception": "exception",
    "mutation": "mutation",
}
"""Failures that shrink, and which kinds count as the same failure while shrinking."""


class Evaluator:
  """Builds cases, calls the candidate, judges the calls; remembers every verdict.

  Args:
    candidate: the callable (for in-process calls), or None with ``pool``.
    spec: the ``Spec``.
    pool: an ``isolation.Isolated`` running the candidate in subprocesses, or None.
    progress: called as progress(phase, calls_so_far) after each batch of calls.
  """

  def __init__(self, candidate, spec, pool=None, progress: Callable | None = None):
    self.candidate = candidate
    self.spec = spec
    self.pool = pool
    self.progress = progress
    self.history = []  # (phase, CaseResult) in call order
    self.calls = 0
    self.stopped = ""  # why no further calls can be made
    self._truths = {}

  def case_and_truth(self, arch):
    if arch not in self._truths:
      case = _spec.build_case(arch, self.spec)
      self._truths[arch] = (case, _truth.compute(case))
    return self._truths[arch]

  def run(self, archs, phase: str, spec=None) -> list:
    """The ``CaseResult`` of each arch, in order (fewer if the candidate hung in process).

    ``spec`` overrides the layout or other judging options for an experiment.
    """
    if self.stopped or not archs:
      return []
    spec = spec or self.spec
    prepared = [self.case_and_truth(a) for a in archs]
    inputs = [_isolation.candidate_inputs(case, spec.layout) for case, _ in prepared]
    if self.pool is not None:
      outcomes = self.pool.map(inputs)
    else:
      outcomes = []
      for inp in inputs:
        out = _isolation.call_in_thread(self.candidate, inp, self.spec.timeout)
        outcomes.append(out)
        if out.status == "timeout":
          self.stopped = ("the candidate hung in this process and cannot be stopped here; "
                          "isolate=True (--isolate) runs it in a subprocess that can be")
          break
    return self.judge_all(prepared, outcomes, phase, spec)

  def judge_all(self, prepared, outcomes, phase: str, spec) -> list:
    """Judge each (case, truth) by its outcome; record them in the history and count the calls."""
    results = []
    for (case, truth), outcome in zip(prepared, outcomes):
      result = _judge.judge(case, truth, outcome, spec)
      results.append(result)
      self.history.append((phase, result))
    self.calls += len(outcomes)
    if self.progress:
      self.progress(phase, self.calls)
    return results


class SearchResult(NamedTuple):
  """What the search found.

  Attributes:
    first: the first failing ``CaseResult`` (None when every case passed).
    examples_to_failure: 1-based position of ``first`` among the cases tried.
    minimal: the shrunk failing ``CaseResult``.
    shrink_steps: accepted shrinking steps.
    rejected: neighbours of the minimal case that passed (the counterfactuals).
    cases: cases tried in the search phase (probes + random).
    seconds: wall time.
  """
  first: object
  examples_to_failure: int
  minimal: object
  shrink_steps: int
  rejected: tuple
  cases: int
  seconds: float


def _chunks(items, size):
  for i in range(0, len(items), size):
    yield items[i:i + size]


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


def find_failure(ev: Evaluator) -> tuple:
  """(first failing CaseResult or None, its 1-based index, cases tried).

  Vacuous cases (``vacuous``) are left out: they are neither run nor counted.
  """
  spec = ev.spec
  archs = (_spec.probes(spec) if spec.probes else []) + \
      _spec.random_archs(spec, spec.examples, spec.seed)
  checked = (a for a in archs if not vacuous(*ev.case_and_truth(a)))  # built as the search goes
  size = max(1, spec.workers)
  tried = 0
  while chunk := [a for _, a in zip(range(size), checked)]:
    results = ev.run(chunk, "search")
    for r in results:
      tried += 1
      if not r.passed:
        return r, tried, tried
      if tried == 1:
        again = ev.run([r.arch], "repeat")
        if again and not _judge.same_results(r, again[0], ev.case_and_truth(r.arch)[1], r.tolerance):
          bad = again[0]._replace(
              passed=False, kind="nondeterministic",
              message="two calls on the same inputs returned different gradients "
                      f"(first call: {r.message}; second call: {again[0].message})")
          return bad, tried, tried
    if ev.stopped:
      break
  return None, 0, tried


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


def shrink(ev: Evaluator, failing) -> tuple:
  """(minimal failing CaseResult, accepted steps, neighbours of the minimum that passed)."""
  group = SHRINK_GROUPS.get(failing.kind)
  if group is None:
    return failing, 0, ()
  spec = ev.spec
  size = max(1, spec.workers)
  budget = spec.shrink_budget
  steps = 0
  current = failing
  while budget > 0 and not ev.stopped:
    candidates = neighbours(current.arch, spec)
    passed = []
    moved = False
    for chunk in _chunks(candidates, size):
      chunk = chunk[:budget]
      if not chunk:
        break
      results = ev.run(chunk, "shrink")
      budget -= len(results)
      for r in results:
        if not r.passed and SHRINK_GROUPS.get(r.kind) == group:
          current, moved = r, True
          steps += 1
          break
        if r.passed:
          passed.append(r)
      if moved or budget <= 0 or ev.stopped:
        break
    if not moved:
      return current, steps, tuple(passed)
  return current, steps, ()


def search(ev: Evaluator) -> SearchResult:
  start = time.perf_counter()
  first, index, tried = find_failure(ev)
  if first is None:
    return SearchResult(None, 0, None, 0, (), tried, time.perf_counter() - start)
  minimal, steps, rejected = shrink(ev, first)
  return SearchResult(first, index, minimal, steps, rejected, tried, time.perf_counter() - start)
