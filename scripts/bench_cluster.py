"""A search's cases a second with --workers 1, --workers N and a Dask cluster, side by side.

  python scripts/bench_cluster.py [--examples 60] [--cost 0.05] [--workers 2] [--dask ADDRESS]

The candidate is the textbook NumPy backprop bundled with bpref (``bpref/oracle/demo.py``),
made ``--cost`` seconds slower per call (a sleep: a candidate whose own arithmetic dominates,
as a C program on large layers or a GPU kernel behind a queue does), checked by name. Each
row is one search of ``--examples`` random networks after the probes, seed 0, after a warm-up
search that compiles bpref's own programs: wall time, cases a second and the verdict. The
cluster is ``--dask ADDRESS``, or a ``LocalCluster`` of ``--workers`` worker processes started
here (its start is timed apart). The verdict and counts must be the same on every row.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import bpref.oracle  # noqa: E402

SLOW = '''
import time
from bpref.oracle import demo

def grads(*args):
  time.sleep({cost!r})
  return demo.grads(*args)
'''


def _row(label, run) -> dict:
  start = time.perf_counter()
  report = run()
  seconds = time.perf_counter() - start
  return {"run": label, "seconds": seconds, "cases": report.cases, "verdict": report.verdict,
          "cases_per_second": report.cases / seconds}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--examples", type=int, default=60)
  parser.add_argument("--cost", type=float, default=0.05, help="seconds added to each call")
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--dask", metavar="ADDRESS", help="an existing scheduler (default: a "
                      "LocalCluster of --workers processes)")
  args = parser.parse_args(argv)
  folder = tempfile.mkdtemp(prefix="bpref-bench-cluster-")
  path = os.path.join(folder, "slow_candidate.py")
  with open(path, "w") as fh:
    fh.write(SLOW.format(cost=args.cost))
  target = ("function", f"{path}:grads")
  search = dict(examples=args.examples, seed=0, dtype="float64")
  bpref.oracle.check(target=target, examples=2, seed=1)  # bpref's programs compiled
  rows = [_row("--workers 1", lambda: bpref.oracle.check(target=target, isolate=True, **search)),
          _row(f"--workers {args.workers}",
               lambda: bpref.oracle.check(target=target, workers=args.workers, **search))]
  from dask import distributed

  start = time.perf_counter()
  cluster = args.dask or distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1,
                                                  processes=True, dashboard_address=":0")
  started = time.perf_counter() - start
  label = f"--dask ({args.dask or f'LocalCluster, {args.workers} processes'})"
  rows.append(_row(label, lambda: bpref.oracle.check(target=target, cluster=cluster, **search)))
  if not args.dask:
    cluster.close()
  print(f"{args.examples} examples after the probes, {args.cost * 1000:g} ms per call, "
        f"{os.cpu_count()} cores; cluster start {started:.1f} s (not in its row)")
  print(f"{'run':40s} {'seconds':>8s} {'cases':>6s} {'cases/s':>8s}  verdict")
  for r in rows:
    print(f"{r['run']:40s} {r['seconds']:8.1f} {r['cases']:6d} {r['cases_per_second']:8.2f}  "
          f"{r['verdict']}")
  same = len({(r["cases"], r["verdict"]) for r in rows}) == 1
  print("same verdict and counts on every row" if same else "ROWS DIFFER")
  return 0 if same else 1


if __name__ == "__main__":
  sys.exit(main())
