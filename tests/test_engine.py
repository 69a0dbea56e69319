"""The search engine (``bpref.oracle.engine``) on a toy problem kind: items are integers, and
the "candidate" fails on the odd ones from 7 up. The engine's order, counts, budget, shrinking
and rerun alone are read off the calls it makes; the network and op kinds are checked through
it in tests/test_oracle.py, tests/test_counts.py and tests/test_ops*.py."""

from __future__ import annotations

from typing import NamedTuple

import pytest

from bpref.oracle import engine


class Result(NamedTuple):
  item: int
  passed: bool
  kind: str


class Toy:
  """Probes 0..3, then draws from a fixed stream; 5 and 10 check nothing; 2 lies outside."""

  def __init__(self, stream, workers=1, fails=lambda n: n >= 7 and n % 2 == 1, pool=None):
    self.stream, self.workers, self.fails, self.pool = list(stream), workers, fails, pool
    self.stopped = ""
    self.calls = []  # (phase, items) in call order
    self.asked = []  # (count, round) of each draw

  def probe_items(self):
    return [0, 1, 3]

  def draw(self, count, round):
    self.asked.append((count, round))
    out, self.stream = self.stream[:count], self.stream[count:]
    return out

  def outside(self, item):
    return "two is outside" if item == 2 else ""

  def skip(self, item):
    return "vacuous" if item in (5, 10) else ""

  def judged(self, items, phase, failing=None):
    self.calls.append((phase, list(items)))
    return [Result(n, not self.fails(n), "numeric" if self.fails(n) else "ok") for n in items]

  def repeated(self, result):
    return None

  def item_of(self, result):
    return result.item

  def neighbours_of(self, result):
    return [n for n in (result.item // 2, result.item - 2) if n >= 0]

  def same_failure(self, failing):
    return lambda r: not r.passed and r.kind == failing.kind


def test_cases_come_probes_first_then_draws_and_count_what_they_leave_out():
  toy = Toy([4, 2, 5, 6, 8, 10, 12, 14, 16])
  tally = engine.Tally(probes=3, examples=4, per_case=2)
  assert list(engine.cases(toy, tally)) == [0, 1, 3, 4, 6, 8, 12]
  assert tally.budget == 8  # 2 per random case needed: 4 examples, no probe dropped
  assert tally.dropped == {"outside the domain": 1, "vacuous": 2}
  assert tally.outside == {"two is outside": 1}
  assert toy.asked == [(4, 0), (4, 1)]  # round 1: twice the 2 cases still needed
  assert tally.drawn == 7


def test_a_draw_budget_spent_leaves_the_search_short_with_the_draws_counted():
  toy = Toy([5, 5, 5])  # three draws, all vacuous; then the draws run out
  tally = engine.Tally(probes=3, examples=2, per_case=3)
  assert list(engine.cases(toy, tally)) == [0, 1, 3]
  assert tally.budget == 6 and tally.drawn == 6
  assert tally.dropped == {"vacuous": 3, "not drawn": 3}
  tally.checked = 3
  assert tally.short


def test_the_first_failure_is_found_and_shrunk_to_the_smallest_that_fails_the_same_way():
  toy = Toy([4, 6, 21, 8])
  tally = engine.Tally(probes=3, examples=4)
  first, tried = engine.find_failure(toy, tally)
  assert (first.item, tried, tally.checked) == (21, 6, 6)
  minimal, steps, rejected, left = engine.shrink(toy, first, budget=50)
  assert minimal.item == 7 and steps == 3  # 21 -> 19 -> 9 -> 7 (10 and 4 pass on the way)
  assert [r.item for r in rejected] == [3, 5] and all(r.passed for r in rejected)
  assert left == 50 - 7  # tried: 10, 19; 9; 4, 7; then 3, 5 (the first that fails is taken)


def test_shrinking_stops_when_its_budget_is_spent():
  toy = Toy([21])
  first, _ = engine.find_failure(toy, engine.Tally(probes=3, examples=1))
  minimal, steps, _, left = engine.shrink(toy, first, budget=3)
  assert left == 0 and minimal.item == 9 and steps == 2  # 10 passes, 19 fails, 9 fails


def test_the_verdict_and_the_minimal_case_do_not_depend_on_the_workers():
  found = []
  for workers in (1, 2, 3):
    toy = Toy([4, 6, 21, 8, 9, 11], workers=workers)
    first, tried = engine.find_failure(toy, engine.Tally(probes=3, examples=6))
    minimal = engine.shrink(toy, first, budget=50)[:2]
    found.append((first.item, tried, minimal[0].item, minimal[1]))
    assert all(len(items) <= workers for _, items in toy.calls)
  assert found[0] == found[1] == found[2] == (21, 6, 7, 3)


def test_a_failure_the_problem_keeps_as_first_found_is_not_shrunk():
  toy = Toy([21])
  toy.same_failure = lambda failing: None
  first, _ = engine.find_failure(toy, engine.Tally(probes=3, examples=1))
  assert engine.shrink(toy, first, budget=50) == (first, 0, (), 50)
  assert [phase for phase, _ in toy.calls] == ["search"] * 4


def test_an_answer_that_changes_on_the_second_call_is_the_failure():
  toy = Toy([4])
  toy.repeated = lambda result: result._replace(passed=False, kind="nondeterministic")
  first, tried = engine.find_failure(toy, engine.Tally(probes=3, examples=1))
  assert (first.item, first.kind, tried) == (0, "nondeterministic", 1)


def test_a_search_that_cannot_call_further_ends_without_a_failure():
  toy = Toy([4, 6, 21])
  judged = toy.judged

  def hangs(items, phase, failing=None):
    toy.stopped = "hung" if 3 in items else ""
    return judged(items, phase, failing)

  toy.judged = hangs
  assert engine.find_failure(toy, engine.Tally(probes=3, examples=3)) == (None, 3)


class Pool:
  def __init__(self):
    self.fresh_calls = 0

  def fresh(self):
    self.fresh_calls += 1


@pytest.mark.parametrize("workers, kind, pool, reruns", [
    (1, "numeric", True, True), (2, "numeric", True, False), (1, "crash", True, False),
    (1, "timeout", True, False), (1, "numeric", False, False)])
def test_a_failure_is_rerun_alone_in_a_fresh_process_only_where_that_means_something(
    workers, kind, pool, reruns):
  toy = Toy([], workers=workers, fails=lambda n: False, pool=Pool() if pool else None)
  alone = engine.passes_alone(toy, Result(9, False, kind))
  assert alone is reruns  # 9 failed in the search, and passes alone
  if reruns:
    toy.fails = lambda n: True  # now it fails alone too
    assert not engine.passes_alone(toy, Result(9, False, kind))
    assert toy.pool.fresh_calls == 2 and toy.calls[-1] == ("fresh process", [9])
  else:
    assert toy.calls == [] and (toy.pool is None or toy.pool.fresh_calls == 0)
