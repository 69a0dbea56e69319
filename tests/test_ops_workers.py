"""An op check on several workers (``check_op(workers=N)``, ``bpref check --op ... --workers N``,
``--dask ADDRESS``): the engine runs the candidate's calls side by side, and a seed gives the
verdict, the counts, the minimal case and the diagnosis of one worker.

The candidates are CS231n's own ``affine_backward`` (``examples/cs231n/layers.py``), right and
with its planted bug (CS231N_BUG=affine: db not summed over the batch), named by path so that
each worker process loads it; and ``examples/c/layers.c`` built with its planted dense bug, a
program over bpref-wire, run as one process per worker.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from typing import NamedTuple

import pytest

from bpref.oracle import cli as oracle_cli
from bpref.oracle import engine
from bpref.oracle.ops import check_op

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AFFINE = os.path.join(ROOT, "examples", "cs231n", "layers.py") + ":affine_backward"
LAYERS_C = os.path.join(ROOT, "examples", "c", "layers.c")
DENSE = dict(signature="cs231n", layout="in_out", examples=10, seed=3)
ARGV = ["--op", "dense", "--signature", "cs231n", "--layout", "in_out", "--examples", "10",
        "--seed", "3", "--no-cache", "--json", AFFINE]


def _summary(report) -> tuple:
  """What must not depend on the workers: everything but the calls made and the time taken."""
  case = report.case or {}
  return (report.verdict, report.kind, report.message, report.cases, report.requested,
          report.dropped, report.examples_to_failure, tuple(report.codes), report.shrunk,
          case.get("shapes"), case.get("arrays"), case.get("candidate"), report.reproducer,
          report.first_case)


@pytest.fixture
def planted(monkeypatch):
  """The bug planted in affine_backward; the environment reaches the worker processes."""
  monkeypatch.setenv("CS231N_BUG", "affine")


@pytest.fixture
def right(monkeypatch):
  monkeypatch.delenv("CS231N_BUG", raising=False)


@pytest.mark.parametrize("bug", ["right", "planted"])
def test_a_seed_gives_one_verdict_and_minimal_case_on_one_and_two_workers(bug, request):
  request.getfixturevalue(bug)
  one = check_op("dense", AFFINE, isolate=True, **DENSE)
  two = check_op("dense", AFFINE, workers=2, **DENSE)
  assert _summary(one) == _summary(two), (one.text(), two.text())
  if bug == "right":
    assert one.verdict == "pass", one.text()
  else:
    assert one.verdict == "fail" and one.codes[0] == "batch_sum_missing", one.text()
    assert two.calls >= one.calls  # a chunk's calls past the failure are made, then left unread


def test_workers_below_one_are_refused():
  with pytest.raises(ValueError, match="workers"):
    check_op("dense", AFFINE, workers=0, **DENSE)


def test_workers_with_in_process_is_a_usage_error(capsys):
  code = oracle_cli.main(["--workers", "2", "--force-workers", "--in-process", *ARGV])
  err = capsys.readouterr().err
  assert code == 2 and "--workers 2" in err and "--in-process" in err and "subprocesses" in err


def test_dask_with_exec_is_a_usage_error(capsys):
  code = oracle_cli.main(["--op", "dense", "--exec", "./nothing", "--dask", "tcp://127.0.0.1:1"])
  err = capsys.readouterr().err
  assert code == 2 and "--dask" in err and "drop --exec" in err


def test_the_cli_on_two_workers_prints_the_report_of_one(planted, capsys):
  assert oracle_cli.main(["--workers", "1", *ARGV]) == 1
  one = json.loads(capsys.readouterr().out)
  assert oracle_cli.main(["--workers", "2", "--force-workers", *ARGV]) == 1
  two = json.loads(capsys.readouterr().out)
  assert one["verdict"] == "fail" and one["diagnosis"][0]["code"] == "batch_sum_missing"
  for key in ("verdict", "kind", "message", "cases", "examples_to_failure", "case", "diagnosis",
              "reproducer", "first_case"):
    assert one[key] == two[key], key


@pytest.fixture(scope="module")
def dense_bug(tmp_path_factory):
  """examples/c/layers.c built with its planted dense bug (db is dout's first row)."""
  compiler = shutil.which("cc") or shutil.which("gcc")
  if compiler is None:
    pytest.skip("no C compiler (cc, gcc), so examples/c/layers.c cannot be built here")
  path = str(tmp_path_factory.mktemp("layers") / "layers_db")
  subprocess.run([compiler, "-O2", "-std=c99", "-Wall", "-Werror", "-DBUG_MATMUL_DB", "-o", path,
                  LAYERS_C, "-lm"], check=True, timeout=120)
  return shlex.quote(path)


def test_a_program_on_two_workers_gives_the_verdict_of_one(dense_bug):
  one = check_op("dense", exec_command=dense_bug, examples=10, seed=3)
  two = check_op("dense", exec_command=dense_bug, workers=2, examples=10, seed=3)
  assert one.verdict == "fail" and one.codes[0] == "batch_sum_missing", one.text()
  assert _summary(one) == _summary(two), (one.text(), two.text())


def test_a_seed_gives_one_verdict_on_a_dask_cluster(planted):
  distributed = pytest.importorskip("dask.distributed")
  one = check_op("dense", AFFINE, isolate=True, **DENSE)
  with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                dashboard_address=":0") as cluster:
    spread = check_op("dense", AFFINE, cluster=cluster, **DENSE)
  assert one.verdict == "fail" and _summary(one) == _summary(spread), (one.text(), spread.text())


def test_a_cluster_that_cannot_be_reached_is_a_usage_error(capsys):
  dask = pytest.importorskip("dask")
  pytest.importorskip("dask.distributed")
  with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
    code = oracle_cli.main(["--dask", "tcp://127.0.0.1:1", *ARGV])
  err = capsys.readouterr().err
  assert code == 2 and "tcp://127.0.0.1:1 cannot be reached" in err, err


def test_a_program_on_a_cluster_is_refused():
  with pytest.raises(TypeError, match="no cluster"):
    check_op("dense", exec_command="./nothing", cluster="tcp://127.0.0.1:1")


HANGS = """
import time

def relu_hangs_at_batch_3(z, dout):
  if z.shape[0] == 3:
    time.sleep(60)
  return dout * (z > 0)
"""


def test_a_hang_in_a_chunk_is_the_failure_at_its_place_in_the_order(tmp_path):
  """The second case of the first chunk hangs: it is the failure, second, as on one worker;
  the first case's pass does not end the search for want of further calls."""
  (tmp_path / "hangs.py").write_text(HANGS)
  target = f"{tmp_path / 'hangs.py'}:relu_hangs_at_batch_3"
  options = dict(name="relu", timeout=1.0, examples=4, seed=0)
  one = check_op("activation", target, isolate=True, **options)
  two = check_op("activation", target, workers=2, **options)
  assert one.verdict == "fail" and one.kind == "timeout" and one.case["dims"][0] == 3, one.text()
  assert _summary(one) == _summary(two), (one.text(), two.text())


class _Result(NamedTuple):
  item: int
  passed: bool


class _Toy:
  """Items are integers, odd ones from 7 up fail; shrinking halves or subtracts 2."""

  def __init__(self, workers):
    self.workers, self.stopped, self.pool = workers, "", None

  def judged(self, items, phase, failing=None):
    return [_Result(n, not (n >= 7 and n % 2)) for n in items]

  def neighbours_of(self, result):
    return [n for n in (result.item // 2, result.item - 2) if n >= 0]

  def same_failure(self, failing):
    return lambda r: not r.passed


@pytest.mark.parametrize("budget", [1, 2, 3, 4, 5, 50])
def test_a_shrink_budget_runs_out_at_the_same_case_on_any_number_of_workers(budget):
  """The calls a chunk makes past the neighbour taken are not charged to the budget, so it
  runs out where it does on one worker."""
  found = {w: engine.shrink(_Toy(w), _Result(21, False), budget) for w in (1, 2, 3)}
  assert found[1] == found[2] == found[3], found


class _Hangs(_Toy):
  """Items 0, 1, 2, ...; item 1 hangs: no call can be made after it, and a chunk's results end
  there."""

  def judged(self, items, phase, failing=None):
    out = []
    for n in items:
      out.append(_Result(n, n != 1))
      if n == 1:
        self.stopped = "hung"
        break
    return out

  def probe_items(self):
    return [0, 1, 2, 3]

  def draw(self, count, round):
    return []

  def outside(self, item):
    return ""

  def skip(self, item):
    return ""

  def repeated(self, result):
    return None


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_a_hang_after_a_pass_in_one_chunk_is_still_the_failure(workers):
  first, tried = engine.find_failure(_Hangs(workers), engine.Tally(probes=4, examples=0))
  assert (first.item, first.passed, tried) == (1, False, 2)
