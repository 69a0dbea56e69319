"""``bpref verify``: compare every public function with the autodiff witness on random networks.

Each case draws an architecture (depth, widths including 1, per-layer
activations, a loss and reduction, a batch) in float32 or float64. bpref runs
in the case's dtype; the witness (``bpref.reference``) runs in float64 on the
same values, so the error reported is bpref's own. Errors are normwise
relative per array; the worst over the arrays of a case is recorded.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time

import jax
import numpy as np

from bpref import backprop as _backprop
from bpref import network as _network
from bpref import problems as _problems
from bpref import reference as _reference
from bpref import tolerance as _tolerance
from bpref.network import Layer

CHECKS = ("loss", "predict", "grad", "deltas", "lambdas", "input_grad", "per_example_grads")


def _as_float64(problem):
  params = tuple(Layer(np.asarray(p.W, np.float64), None if p.b is None else np.asarray(p.b, np.float64),
                       p.activation) for p in problem.params)
  return problem._replace(params=params, x=problem.x.astype(np.float64), t=problem.t.astype(np.float64))


def _worst(actual, expected) -> float:
  leaves_a = jax.tree_util.tree_leaves(actual)
  leaves_e = jax.tree_util.tree_leaves(expected)
  if len(leaves_a) != len(leaves_e):
    return float("inf")
  worst = 0.0
  for a, e in zip(leaves_a, leaves_e):
    a = np.asarray(a)
    if a.shape != np.shape(e) or not np.all(np.isfinite(a)):
      return float("inf")
    worst = max(worst, _tolerance.normwise_error(a, e))
  return worst


def _outputs(module, network_predict, params, x, t, loss, reduction):
  value, grads = module.value_and_grad(params, x, t, loss, reduction)
  return {
      "loss": value,
      "predict": network_predict(params, x),
      "grad": grads,
      "deltas": module.deltas(params, x, t, loss, reduction),
      "lambdas": module.lambdas(params, x),
      "input_grad": module.input_grad(params, x, t, loss, reduction),
      "per_example_grads": module.per_example_grads(params, x, t, loss),
  }


@functools.partial(jax.jit, static_argnums=(3, 4))
def _bpref_outputs(params, x, t, loss, reduction):
  return _outputs(_backprop, _network.predict, params, x, t, loss, reduction)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _witness_outputs(params, x, t, loss, reduction):
  return _outputs(_reference, _reference.predict, params, x, t, loss, reduction)


def check_case(problem) -> dict:
  """Normwise relative error of each public function on one problem, against the witness."""
  w = _as_float64(problem)
  ours = _bpref_outputs(*problem)
  theirs = _witness_outputs(*w)
  return {check: _worst(ours[check], theirs[check]) for check in CHECKS}


def run(cases: int, seed: int, dtypes=("float32", "float64"), progress=None) -> dict:
  """Verify ``cases`` random problems per dtype; return a JSON-ready summary."""
  rng = np.random.default_rng(seed)
  rows = {(d, c): {"cases": 0, "max_error": 0.0, "failures": 0, "worst_case": None}
          for d in dtypes for c in CHECKS}
  total = cases * len(dtypes)
  done = 0
  for _ in range(cases):
    for dtype in dtypes:
      problem = _problems.random_problem(rng, np.dtype(dtype))
      tol = _tolerance.gradient_tolerance(dtype)
      for check, err in check_case(problem).items():
        row = rows[(dtype, check)]
        row["cases"] += 1
        if not err <= row["max_error"]:
          row["max_error"] = err
          row["worst_case"] = problem.describe()
        row["failures"] += int(not err <= tol)
      done += 1
      if progress:
        progress(done, total)
  table = [{"dtype": d, "check": c, "tolerance": _tolerance.gradient_tolerance(d), **rows[(d, c)],
            "verdict": "ok" if rows[(d, c)]["failures"] == 0 else "FAIL"}
           for d in dtypes for c in CHECKS]
  return {"seed": seed, "cases_per_dtype": cases, "table": table,
          "passed": all(r["verdict"] == "ok" for r in table)}


def _progress_bar(done, total, width=30):
  filled = int(width * done / total)
  sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} cases")
  if done == total:
    sys.stderr.write("\n")
  sys.stderr.flush()


def format_table(summary: dict) -> str:
  lines = [f"{'dtype':8} {'check':18} {'cases':>6} {'max rel error':>14} {'tolerance':>10}  verdict",
           "-" * 70]
  for r in summary["table"]:
    lines.append(f"{r['dtype']:8} {r['check']:18} {r['cases']:6d} {r['max_error']:14.3e} "
                 f"{r['tolerance']:10.0e}  {r['verdict']}")
  lines.append("-" * 70)
  lines.append("PASS: every function agrees with the witness" if summary["passed"]
               else "FAIL: see the rows marked FAIL")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="bpref verify",
      description="Compare bpref's handwritten backprop with the autodiff witness on random networks.")
  parser.add_argument("--cases", type=int, default=100, help="random networks per dtype (default 100)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--quick", action="store_true", help="20 cases per dtype")
  parser.add_argument("--dtype", choices=("float32", "float64", "both"), default="both")
  parser.add_argument("--json", action="store_true", help="print a JSON summary instead of a table")
  parser.add_argument("--no-progress", action="store_true")
  args = parser.parse_args(argv)
  if args.cases < 1:
    parser.error("--cases must be >= 1")
  jax.config.update("jax_enable_x64", True)
  cases = 20 if args.quick else args.cases
  dtypes = ("float32", "float64") if args.dtype == "both" else (args.dtype,)
  start = time.perf_counter()
  show = not (args.no_progress or args.json)
  summary = run(cases, args.seed, dtypes, progress=_progress_bar if show else None)
  summary["seconds"] = round(time.perf_counter() - start, 2)
  summary["backend"] = jax.default_backend()
  if args.json:
    print(json.dumps(summary, indent=2))
  else:
    print(format_table(summary))
    print(f"{cases} cases per dtype, seed {args.seed}, {summary['seconds']} s on {summary['backend']}")
  return 0 if summary["passed"] else 1
