"""The search engine of every check: the cases in a fixed order, the first failure, its shrinking.

A problem kind (the whole network, ``bpref.oracle.search``; one operation,
``bpref.oracle.ops._search``) hands the engine a ``Problem``, and the engine does the rest the
same way for each: it draws the cases (the probes, then random draws in rounds), leaves out
those that check nothing with a tally of the reasons and a draw budget, runs the rest
``problem.workers`` at a time until the first failure, calls the first case twice to catch an
answer that changes between calls, shrinks a failure over its simpler neighbours while it stays
the same failure, and reruns a failure alone in a fresh process. The list of cases and the order
of the neighbours do not depend on where the calls run, so the verdict, the minimal case and the
counts are the same for the same seed on any number of workers.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable
from typing import Protocol

DRAW_BUDGET = 10
"""Random cases a search may draw per random case it must check (``cases``)."""


class Problem(Protocol):
  """What the engine asks of a problem kind. An item names a case (a network's ``Arch``, an
  op's ``Label``); a result is a judged call, with ``passed`` and ``kind``.

  Attributes and methods:
    workers: items run at once; stopped: why no further calls can be made ("" while they can);
      pool: what runs the candidate in subprocesses (``fresh()`` starts a new one), or None.
    probe_items(): the targeted items, tried first.
    draw(count, round): ``count`` random items of draw round ``round`` (0 is the seed's
      first); fewer when the draws ran out.
    outside(item): why a drawn item lies outside the declared domain, or "".
    skip(item): why an item checks nothing (the tally's key: "vacuous", ...), or "".
    judged(items, phase, failing=None): the results of the candidate called on ``items``
      (fewer when no further calls can be made); ``failing``: the failure shrunk or rerun.
    repeated(result): the first case called again: a failing result when the answer
      changed, else None.
    item_of(result): the item ``result`` was judged on.
    neighbours_of(result): simpler items than ``result``'s, in the order shrinking tries them.
    same_failure(failing): whether a result fails as ``failing`` does, as a predicate; None
      when ``failing`` is kept as first found (not shrunk).
  """
  workers: int
  stopped: str
  pool: object

  def probe_items(self) -> list: ...
  def draw(self, count: int, round: int) -> list: ...
  def outside(self, item) -> str: ...
  def skip(self, item) -> str: ...
  def judged(self, items: list, phase: str, failing=None) -> list: ...
  def repeated(self, result): ...
  def item_of(self, result): ...
  def neighbours_of(self, result) -> list: ...
  def same_failure(self, failing) -> Callable | None: ...


class Tally:
  """The cases of a search: asked for, checked, and dropped unchecked with the reason for each.

  Attributes:
    probes: the probe items.
    examples: the random cases asked for.
    requested: cases a verdict needs checked: ``probes + examples``.
    checked: cases run and judged.
    dropped: {reason: count}, the reasons met only.
    outside: {why a draw lies outside the domain: count}.
    per_case: random draws allowed per random case needed (``DRAW_BUDGET``).
    budget: random draws allowed: ``per_case`` per random case needed, i.e. per example plus
      one per probe dropped.
    drawn: random draws made (and examined) so far.
  """

  def __init__(self, probes: int, examples: int, per_case: int = DRAW_BUDGET):
    self.probes, self.examples, self.requested = probes, examples, probes + examples
    self.per_case = per_case
    self.checked, self.budget, self.drawn = 0, 0, 0
    self.dropped, self.outside = collections.Counter(), collections.Counter()

  @property
  def short(self) -> bool:
    """Whether fewer cases were checked than asked for (or none at all)."""
    return self.checked < max(1, self.requested)

  def too_few(self, cases: str, probes: str, dropped: str, draws: str, hint: str) -> str:
    """Why a search that checked fewer cases than asked for gives no verdict, with the counts;
    in the words of its kind: ``cases`` ("networks"), ``probes`` ("probes in the domain"),
    ``dropped`` (what was left out and why), ``draws`` (what a draw makes), then ``hint``."""
    return (f"only {self.checked} of the {self.requested} {cases} asked for were checked "
            f"({self.probes} {probes} + {self.examples} examples), so there is no verdict; "
            f"{dropped}. The draw budget, {self.per_case} random {draws} per random case needed "
            f"({self.budget} here), ran out after {self.drawn} draws{hint}")


def cases(problem: Problem, tally: Tally):
  """The items to check, in order: the probes, then random draws, each one that lies in the
  domain and checks something (``problem.skip``); further random rounds make up for the items
  dropped, up to ``tally.budget`` draws. Round 0 is ``tally.examples`` draws; round k, 2**k
  times the cases still needed. Built as the search goes."""
  kept = 0
  for item in problem.probe_items():
    why = problem.skip(item)
    if why:
      tally.dropped[why] += 1
    else:
      kept += 1
      yield item
  tally.budget = tally.per_case * (tally.requested - kept)
  rounds = 0
  while kept < tally.requested and tally.drawn < tally.budget:
    need = tally.requested - kept
    ask = min(tally.budget - tally.drawn, tally.examples if rounds == 0 else need << rounds)
    drawn = problem.draw(ask, rounds) if ask else []
    rounds += 1
    for item in drawn:
      if kept >= tally.requested:
        return
      tally.drawn += 1
      why = problem.outside(item)
      if why:
        tally.dropped["outside the domain"] += 1
        tally.outside[why] += 1
      elif why := problem.skip(item):
        tally.dropped[why] += 1
      else:
        kept += 1
        yield item
    if len(drawn) < ask:  # the draws ran out: the rest of the round counts as spent
      tally.dropped["not drawn"] += ask - len(drawn)
      tally.drawn += ask - len(drawn)


def find_failure(problem: Problem, tally: Tally) -> tuple:
  """(the first failing result or None, cases checked), ``tally.checked`` kept up to date.

  The first case is called twice: two answers that differ are a "nondeterministic" failure
  (``problem.repeated``). The search ends early, without a failure, when no further calls can
  be made (``problem.stopped``, set by a call of the chunk just judged, whose results end at
  that call)."""
  items = cases(problem, tally)
  tried = 0
  while chunk := list(itertools.islice(items, problem.workers)):
    results = problem.judged(chunk, "search")
    for k, result in enumerate(results, start=1):
      tried += 1
      tally.checked = tried
      if not result.passed:
        return result, tried
      if problem.stopped and k == len(results):  # the call that stopped it came after them all
        return None, tried
      if tried == 1 and (bad := problem.repeated(result)) is not None:
        return bad, tried
    if problem.stopped:
      break
  return None, tried


def shrink(problem: Problem, failing, budget: int) -> tuple:
  """(minimal failing result, accepted steps, neighbours of the minimum that passed, budget left).

  Greedy: the first neighbour that fails the same way (``problem.same_failure``) becomes the
  current failure, and its neighbours are tried next; each neighbour tried spends one of
  ``budget``, up to the one taken: the calls a chunk makes past it are not charged, so the
  budget runs out at the same neighbour on any number of workers.
  """
  same = problem.same_failure(failing)
  if same is None:
    return failing, 0, (), budget
  steps, current = 0, failing
  while budget > 0 and not problem.stopped:
    candidates = problem.neighbours_of(current)
    passed, moved = [], False
    for start in range(0, len(candidates), problem.workers):
      chunk = candidates[start:start + problem.workers][:budget]
      if not chunk:
        break
      for result in problem.judged(chunk, "shrink", failing):
        budget -= 1
        if same(result):
          current, moved = result, True
          steps += 1
          break
        if result.passed:
          passed.append(result)
      if moved or budget <= 0 or problem.stopped:
        break
    if not moved:
      return current, steps, tuple(passed), budget
  return current, steps, (), budget


def passes_alone(problem: Problem, failing) -> bool:
  """Whether the failing case passes when it is the first call of a fresh process: the failure
  then depends on the calls before it (state kept between calls). False in process, where no
  fresh process can be had; on several workers, whose calls are not one sequence; and for a
  hang or a crash, which the rerun would only repeat."""
  if (problem.pool is None or problem.stopped or problem.workers != 1
      or failing.kind in ("timeout", "crash")):
    return False
  problem.pool.fresh()
  alone = problem.judged([problem.item_of(failing)], "fresh process", failing)
  return bool(alone) and alone[0].passed
