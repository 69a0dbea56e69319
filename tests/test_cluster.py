"""A search on a Dask cluster (``bpref.oracle.cluster``): the verdict of one worker, wherever the
calls run.

The candidates are the textbook NumPy backprop bundled with bpref (``bpref/oracle/demo.py``) and
the same code with the hidden layers' f' forgotten. One seed must give the same verdict, the same
counts, the same minimal network and the same diagnosis with one worker, two worker processes
and a two-worker Dask cluster (threads here; worker processes in the deep tier).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

import bpref.oracle
from bpref.oracle import cli as oracle_cli

distributed = pytest.importorskip("dask.distributed")

DEMO = os.path.join(os.path.dirname(bpref.oracle.__file__), "demo.py")
RIGHT = ("function", f"{DEMO}:grads")
WRONG = ("function", f"{DEMO}:grads_with_bug")
SEARCH = dict(examples=12, seed=3, dtype="float64")


def _summary(report):
  case = report.case or {}
  return (report.verdict, report.cases, report.requested, tuple(report.codes),
          case.get("sizes"), case.get("activations"), case.get("batch"))


@pytest.fixture(scope="module")
def threads():
  with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                dashboard_address=":0") as cluster:
    yield cluster


@pytest.mark.parametrize("target", [RIGHT, WRONG], ids=["right", "forgotten_fprime"])
def test_a_seed_gives_one_verdict_on_one_worker_two_workers_and_a_cluster(target, threads):
  one = bpref.oracle.check(target=target, isolate=True, **SEARCH)
  two = bpref.oracle.check(target=target, workers=2, **SEARCH)
  cluster = bpref.oracle.check(target=target, cluster=threads, **SEARCH)
  assert _summary(one) == _summary(two) == _summary(cluster), (one.text(), cluster.text())
  assert one.verdict == ("pass" if target is RIGHT else "fail")
  assert cluster.spec["workers"] == 2


def test_a_cluster_finds_the_minimal_case_a_search_in_this_process_finds(threads):
  here = bpref.oracle.check(target=WRONG, **SEARCH)
  cluster = bpref.oracle.check(target=WRONG, cluster=threads, **SEARCH)
  assert _summary(cluster) == _summary(here) and here.verdict == "fail", cluster.text()


def _loud(tmp_path, base: str) -> tuple:
  """The demo's ``base`` as a target that writes a line on descriptor 2 at every call."""
  path = tmp_path / "loud.py"
  path.write_text(f"import os, runpy\n_demo = runpy.run_path({DEMO!r})\n"
                  "def grads(*args):\n"
                  "  os.write(2, b'a line from the candidate\\n')\n"
                  f"  return _demo[{base!r}](*args)\n")
  return ("function", f"{path}:grads")


def test_a_search_on_worker_processes_gives_the_same_verdict_and_what_the_candidate_writes(
    tmp_path):
  with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                dashboard_address=":0") as processes:
    cluster = bpref.oracle.check(target=_loud(tmp_path, "grads_with_bug"),
                                 cluster=processes.scheduler_address, **SEARCH)
  one = bpref.oracle.check(target=WRONG, isolate=True, **SEARCH)
  assert _summary(cluster) == _summary(one)
  assert "hidden_fprime_missing" in cluster.codes
  assert cluster.output["stderr"].count("a line from the candidate") == cluster.output["calls"]
  assert cluster.output["calls"] >= cluster.cases


def test_on_worker_threads_of_the_searchs_own_process_the_output_is_left_alone(threads, tmp_path,
                                                                               capfd):
  report = bpref.oracle.check(target=_loud(tmp_path, "grads"), cluster=threads, **SEARCH)
  assert report.verdict == "pass", report.text()
  assert not report.output  # its descriptors were not redirected: the lines went where they go
  assert capfd.readouterr().err.count("a line from the candidate") >= report.cases


def hangs_on_three(weights, biases, activations, loss, x, t):
  if x.shape[0] == 3:
    time.sleep(4)
  return [np.zeros_like(W) for W in weights], [np.zeros_like(b) for b in biases]


def test_a_call_that_does_not_return_is_a_timeout_and_the_search_goes_on(threads):
  report = bpref.oracle.check(hangs_on_three, cluster=threads, timeout=1.0, examples=4, seed=0,
                              activations=("tanh",), max_batch=3)
  assert report.verdict == "fail" and report.kind == "timeout", report.text()
  assert "did not return within 1 s on the cluster" in report.message


def test_a_candidate_that_cannot_load_there_is_an_error_report(threads, tmp_path):
  broken = tmp_path / "broken.py"
  broken.write_text("raise ImportError('no such library')\n")
  report = bpref.oracle.check(target=("function", f"{broken}:grads"), cluster=threads, examples=2)
  assert report.verdict == "error" and "could not be loaded on the cluster" in report.message


def test_what_is_not_a_cluster_is_a_type_error():
  with pytest.raises(TypeError, match="cluster must be a scheduler address"):
    bpref.oracle.check(hangs_on_three, cluster=8786, examples=1)


def test_without_dask_the_cluster_option_says_what_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "dask", None)
  monkeypatch.setitem(sys.modules, "dask.distributed", None)
  with pytest.raises(ValueError, match=r"pip install 'bpref\[dask\]'"):
    bpref.oracle.check(hangs_on_three, cluster="tcp://127.0.0.1:1", examples=1)


@pytest.mark.parametrize("argv, words", [
    (["--dask", "tcp://127.0.0.1:1", "--in-process"], "drop --in-process"),
    (["--dask", "tcp://127.0.0.1:1", "--workers", "2"], "drop --workers"),
    (["--dask", "tcp://127.0.0.1:1", "--op", "dense", "--in-process"], "drop --in-process"),
])
def test_cli_dask_with_what_it_replaces_is_a_usage_error(argv, words, capsys):
  assert oracle_cli.main([f"{DEMO}:grads", *argv]) == 2
  assert words in capsys.readouterr().err
