"""``bpref verify``: compare every public function with the autodiff witness on random networks.

Each case draws an architecture (depth, widths including 1, per-layer
activations, a loss and reduction, a batch) in float32 or float64. bpref runs
in the case's dtype; the witness (``bpref.witnesses.autodiff``) runs in float64 on the
same values, so the error reported is bpref's own. Every case runs in
``bpref.scale.fast``'s padded buckets against the witness's padded twin, the first few
also at their exact shapes. Errors are ||bpref - witness||_F / ||bound||_F per
array, the bound being the same computation on absolute values; the worst over
the arrays of a case is recorded and held to the case's (T) (``case_tolerance``).

A second table runs the independent witnesses on fewer, smaller cases (depth
<= 3): the exact referee (bpref.witnesses.referee, mpmath at 50 digits) and, measured
against it, bpref, the autodiff witness, the complex step, Richardson and central
differences (bpref.witnesses.finite_diff); the adjoint check of bpref's gradient along a
random direction (complex step where it applies, else Richardson); and the
fitted order of the Taylor-remainder test. Errors are ||X - exact||_inf /
||exact||_inf per array (the measure of (T), ``bpref.error.max_norm_error``, here
in mpmath: ``bpref.witnesses.referee.error``), and each row's verdict
applies that witness's own error model. Richardson's estimate and the Taylor
order assume a smooth loss along the probed line, so cases with kinks (relu-type
activations, softsign, huber) are reported but not judged by them.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import threading
import time

import jax
import numpy as np

from bpref import backprop as _backprop
from bpref import compilation
from bpref import losses as _losses
from bpref import network as _network
from bpref import problems as _problems
from bpref import tolerance as _tolerance
from bpref import witnesses as _witnesses
from bpref.error import normwise_error
from bpref.oracle import truth as _truth
from bpref.scale import fast as _fast
from bpref.structures import Layer
from bpref.validation import ranged
from bpref.witnesses import autodiff as _autodiff

CHECKS = ("loss", "predict", "grad", "deltas", "lambdas", "input_grad", "per_example_grads")


_EVERY = _fast.EVERY
"""The names a run declares to the truth (``declared``) and to the problem generator (``table``,
its activations): every one, so that many problems, with any activations, share one compiled
table of every activation's f, f' and rho_f (``bpref.tables``) and one of every loss."""


def _as_float64(problem):
  params = tuple(Layer(np.asarray(p.W, np.float64), None if p.b is None else np.asarray(p.b, np.float64),
                       p.activation) for p in problem.params)
  return problem._replace(params=params, x=problem.x.astype(np.float64), t=problem.t.astype(np.float64))


def _worst(actual, expected, bounds) -> float:
  """The largest ||actual - expected||_F / ||bound||_F (``bpref.error.normwise_error``) over the
  arrays of one output; ``inf`` where the outputs differ in arrays, shapes or finiteness."""
  leaves_a = jax.tree_util.tree_leaves(actual)
  leaves_e = jax.tree_util.tree_leaves(expected)
  leaves_m = jax.tree_util.tree_leaves(bounds)
  if not len(leaves_a) == len(leaves_e) == len(leaves_m):
    return float("inf")
  worst = 0.0
  for a, e, m in zip(leaves_a, leaves_e, leaves_m):
    a = np.asarray(a)
    if a.shape != np.shape(e) or not np.all(np.isfinite(a)):
      return float("inf")
    worst = max(worst, normwise_error(a, e, m))
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


@compilation.jit(static_argnums=(3, 4))
def _bpref_outputs(params, x, t, loss, reduction):
  return _outputs(_backprop, _network.predict, params, x, t, loss, reduction)


@compilation.jit(static_argnums=(3, 4), cpu_options=compilation.ELEMENTAL_EMITTERS)
def _witness_outputs(params, x, t, loss, reduction):
  return _outputs(_autodiff, _autodiff.predict, params, x, t, loss, reduction)


def _bpref_many(problems) -> list:
  """bpref's outputs (as ``_outputs``) for many problems, through bpref.scale.fast's buckets."""
  results = _fast.evaluate_many(problems)
  lams = _fast.lambdas_many(problems)
  per_example = _fast.per_example_grads_many(problems)
  return [{"loss": r.value, "predict": r.y, "grad": r.grads, "deltas": r.deltas, "lambdas": lam,
           "input_grad": r.input_grad, "per_example_grads": g}
          for r, lam, g in zip(results, lams, per_example)]


def check_many(problems, exact: int = 0, crashes: list | None = None) -> list:
  """[(errors, tolerance), ...] of many problems: bpref through bpref.scale.fast's buckets, the
  witness through its padded twin (``bpref.witnesses.autodiff.evaluate_many``), one compilation per
  bucket. The first ``exact`` problems also run through bpref's public functions at their
  exact shapes against the same witness outputs (a check of the buckets), and a row's error
  is the larger of the two; an exception there is appended to ``crashes`` and fails the
  case's rows.
  """
  wide = [_as_float64(p) for p in problems]

  def exact_shapes():
    found = []
    for p in problems[:exact]:
      try:
        found.append(jax.device_get(_bpref_outputs(*p)))
      except Exception as exc:  # a broken bpref fails its rows, it does not end the run
        if crashes is not None:
          crashes.append(f"{p.x.dtype}, {p.describe()} at its exact shapes: {_first_line(exc)}")
        found.append(None)
    return found

  def buckets():
    ours = _bpref_many(problems)
    theirs = _autodiff.evaluate_many(wide)
    return ours, theirs, _truth.output_bounds(wide, forms=False, declared=_EVERY)

  (ours, theirs, bounds), at_shapes = concurrently(buckets, exact_shapes)
  out = []
  for i, (p, o, w, m) in enumerate(zip(problems, ours, theirs, bounds)):
    errors = _errors(o, w, m)
    if i < exact:
      at_shape = (dict.fromkeys(CHECKS, float("inf")) if at_shapes[i] is None
                  else _errors(at_shapes[i], w, m))
      errors = {c: max(errors[c], at_shape[c]) for c in CHECKS}
    out.append((errors, case_tolerance(p, m["z"])))
  return out


def _errors(ours, theirs, bounds) -> dict:
  return {check: _worst(ours[check], theirs[check], bounds[check]) for check in CHECKS}


def case_tolerance(problem, z) -> float:
  """(T) of the case's dtype, depth, longest sum and magnitude; twice that in float64.

  Errors are measured against the magnitude bounds of ``bpref.oracle.truth.output_bounds``
  (the same computation on absolute values) with bpref's own cancellation-free f', widened
  only by |f''| for the rounding of z: no room is left for the absolute error a textbook
  form such as 1 - a^2 makes once a unit saturates. Cancellation in a result does not make
  a correct one fail: with half squared error summed over 8 examples after a 2-unit
  softmax, bpref's float32 dW is 1.0e-4 from the exact referee relative to |dW|, and well
  within (T) relative to its terms. A float32 case is compared with the witness in
  float64, whose error is negligible; a float64 case with the witness in float64, each
  within (T).
  """
  dtype = np.dtype(problem.x.dtype)
  sizes = [problem.params[0].W.shape[1]] + [p.W.shape[0] for p in problem.params]
  tol = _tolerance.network_tolerance(dtype, sizes, np.atleast_2d(problem.x).shape[0], z,
                                     [p.activation for p in problem.params])
  return 2 * tol if dtype == np.float64 else tol


def compare(problem, ours, theirs) -> tuple:
  """(errors, tolerance) of two sets of outputs of one problem (2-D x), each a dict keyed by
  some of ``CHECKS``: the errors are ||ours - theirs||_F / ||magnitude bound||_F per array,
  the worst array of each output; the tolerance is ``case_tolerance``."""
  bounds = _truth.output_bounds([_as_float64(problem)], forms=False)[0]
  errors = {check: _worst(ours[check], theirs[check], bounds[check]) for check in ours}
  return errors, case_tolerance(problem, bounds["z"])


def check_case(problem) -> tuple:
  """``compare`` of bpref and the witness on one problem at its exact shapes."""
  return compare(problem, _bpref_outputs(*problem), _witness_outputs(*_as_float64(problem)))


EXACT_CASES = 3
"""Cases per dtype that ``run`` also checks at their exact shapes (one compilation each)."""

LOSS_STRATA = tuple((name, 0.0) for name in _losses.LOSSES) + tuple(
    (name, 1.0) for name in _problems.SOFT_TARGETS)
"""(loss, unnormalized) pairs a run cycles through: every loss, and each cross-entropy also
with target rows that do not sum to 1."""


def _plan(rng, count) -> list:
  # (loss, unnormalized, activation) for count cases: every LOSS_STRATA entry and every hidden
  # activation once in each pass of count cases (stratified), the pairing shuffled
  losses = _problems.strata(rng, LOSS_STRATA, count)
  acts = _problems.strata(rng, _problems.HIDDEN, count)
  return [(loss, soft, act) for (loss, soft), act in zip(losses, acts)]


def _case(rng, dtype, plan, max_depth=4):
  loss, soft, act = plan
  return _problems.random_problem(rng, np.dtype(dtype), max_depth=max_depth, losses=(loss,),
                                  uses=act, unnormalized=soft, table=_EVERY.activations)


def run(cases: int, seed: int, dtypes=("float32", "float64"), progress=None,
        exact: int = EXACT_CASES) -> dict:
  """Verify ``cases`` random problems per dtype; return a JSON-ready summary.

  The cases of each dtype are stratified: each takes the next loss (from ``LOSS_STRATA``)
  and the next hidden activation from passes shuffled by ``seed``, so that
  len(problems.HIDDEN) = 13 cases or more per dtype use every hidden activation and every
  loss, the cross-entropies also with targets that do not sum to 1.

  Every case runs through ``bpref.scale.fast``'s buckets against the witness's padded twin
  (``check_many``: a few compilations per dtype, whatever the shapes); the first ``exact``
  cases of each dtype also run through bpref's public functions at their exact shapes, and
  a row's error is the larger of the two. The dtypes run at once, each in a thread of its own
  (``concurrently``); the summary does not depend on which finishes first.
  """
  rng = np.random.default_rng(seed)
  plans = {d: _plan(rng, cases) for d in dtypes}
  drawn = {d: [] for d in dtypes}
  for i in range(cases):
    for dtype in dtypes:
      drawn[dtype].append(_case(rng, dtype, plans[dtype][i]))
  rows = {(d, c): {"cases": 0, "max_error": 0.0, "worst_case": None, "max_ratio": 0.0,
                   "tolerance": None, "failures": 0}
          for d in dtypes for c in CHECKS}
  done = 0
  crashes_of = {d: [] for d in dtypes}

  def bucketed(dtype):
    try:
      return check_many(drawn[dtype], exact, crashes_of[dtype]) if drawn[dtype] else []
    except Exception as exc:  # a broken bpref fails its rows, it does not end the run
      crashes_of[dtype].append(f"{dtype}, the buckets: {_first_line(exc)}")
      return [(dict.fromkeys(CHECKS, float("inf")), 1.0)] * len(drawn[dtype])

  results = concurrently(*(functools.partial(bucketed, d) for d in dtypes))
  crashes = [c for d in dtypes for c in crashes_of[d]]
  for dtype, outcomes in zip(dtypes, results):
    for problem, (errors, tol) in zip(drawn[dtype], outcomes):
      for check, err in errors.items():
        row = rows[(dtype, check)]
        row["cases"] += 1
        if not err <= row["max_error"]:
          row["max_error"] = err
          row["worst_case"] = problem.describe()
        if not err / tol <= row["max_ratio"]:
          row["max_ratio"], row["tolerance"] = err / tol, tol
        row["failures"] += int(not err <= tol)
      done += 1
      if progress:
        progress(done, cases * len(dtypes))
  table = [{"dtype": d, "check": c, **rows[(d, c)],
            "verdict": "ok" if rows[(d, c)]["failures"] == 0 else "FAIL"}
           for d in dtypes for c in CHECKS]
  return {"seed": seed, "cases_per_dtype": cases, "exact_cases_per_dtype": min(exact, cases),
          "table": table, "crashes": crashes,
          "passed": not crashes and all(r["verdict"] == "ok" for r in table)}


def concurrently(*calls) -> list:
  """The results of ``calls`` (functions of no argument), each run in a thread of its own, with
  the caller's default device: XLA compiles and runs without Python's lock, so one call's
  compilations go on while another traces or works in Python. The first exception is raised
  again here; the threads are daemons, so Ctrl-C still ends the command."""
  device = jax.config.jax_default_device  # thread-local: each thread takes the caller's
  results = [None] * len(calls)

  def one(i, call):
    try:
      with jax.default_device(device):
        results[i] = (True, call())
    except BaseException as exc:  # raised again in the caller's thread
      results[i] = (False, exc)

  threads = [threading.Thread(target=one, args=(i, call), daemon=True)
             for i, call in enumerate(calls)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  for ok, value in results:
    if not ok:
      raise value
  return [value for _, value in results]


def _first_line(exc) -> str:
  text = str(exc).strip().splitlines()
  return f"{type(exc).__name__}: {text[0] if text else ''}"


# ---------------------------------------------------------------- independent witnesses

WITNESSES = _witnesses.NAMES
"""Rows of the witness table (``bpref.witnesses``); every error is measured against the exact
referee."""


def witness_cases(contexts, progress=None) -> list:
  """Each witness's value on each context's problem (None where a witness does not apply),
  the case's tolerance, and whether each witness's assumptions hold (``judged``).

  The exact referee runs case by case (``progress(done, total)`` after each); every other
  witness runs on all the problems at once, in ``bpref.scale.fast``'s padded buckets.
  """
  for done, ctx in enumerate(contexts, start=1):
    ctx.exact  # noqa: B018  (the referee, mpmath at 50 digits, case by case)
    if progress:
      progress(done, len(contexts))
  values = {w.name: w.value(contexts) for w in _witnesses.WITNESSES}
  out = []
  for i, ctx in enumerate(contexts):
    case = {"tolerance": ctx.tolerance, "judged": {}, "ok": {}}
    for w in _witnesses.WITNESSES:
      value = case[w.name] = values[w.name][i]
      judged = case["judged"][w.name] = bool(w.judged(ctx))
      case["ok"][w.name] = (None if w.ok is None or value is None or not judged
                            else bool(w.ok(value, ctx)))
    out.append(case)
  return out


def witness_case(problem, rng) -> dict:
  """``witness_cases`` of one problem, its random direction drawn from ``rng``."""
  return witness_cases([_witnesses.Context(problem, rng)])[0]


def run_witnesses(cases: int, seed: int, dtypes=("float32", "float64"), progress=None) -> dict:
  """The witness table over ``cases`` random problems (depth <= 3) per dtype.

  Stratified as ``run``, with one pass shared by the dtypes (case by case, dtype by dtype):
  a few witness cases per dtype still use as many different losses and activations as
  there are cases in all. The cases are drawn once, so the witnesses' programs switch over
  the names each dtype's cases use (``narrow``), not over every name.
  """
  rng = np.random.default_rng(seed + 1)
  plan = iter(_plan(rng, cases * len(dtypes)))
  rows = {(d, w): {"cases": 0, "worst": None, "failures": 0, "worst_case": None, "values": [],
                   "unjudged": 0}
          for d in dtypes for w in WITNESSES}
  contexts = []
  for _ in range(cases):
    for dtype in dtypes:
      problem = _case(rng, dtype, next(plan), max_depth=3)
      contexts.append(_witnesses.Context(problem, rng, narrow=True))
  for ctx, case in zip(contexts, witness_cases(contexts, progress)):
    dtype = str(ctx.problem.x.dtype)
    for w in _witnesses.WITNESSES:
      value = case[w.name]
      row = rows[(dtype, w.name)]
      if value is None:
        continue
      row["cases"] += 1
      row["values"].append(value)
      if not case["judged"][w.name]:
        row["unjudged"] += 1  # outside the witness's assumptions: plotted, not ranked or judged
        continue
      sign = -1 if w.worst_is_lowest else 1
      if np.isfinite(value) and (row["worst"] is None or sign * value > sign * row["worst"]):
        row["worst"] = value
        row["worst_case"] = ctx.problem.describe()
      row["failures"] += int(case["ok"][w.name] is False)
  table = []
  for d in dtypes:
    for w in _witnesses.WITNESSES:
      r = rows[(d, w.name)]
      verdict = "info" if w.ok is None else ("ok" if r["failures"] == 0 else "FAIL")
      table.append({"dtype": d, "witness": w.name, **r, "verdict": verdict})
  return {"cases_per_dtype": cases, "table": table,
          "passed": all(r["verdict"] != "FAIL" for r in table)}


def format_witness_table(summary: dict) -> str:
  lines = [f"{'dtype':8} {'witness':20} {'cases':>6} {'worst':>12}  verdict", "-" * 58]
  for r in summary["table"]:
    worst = "-" if r["worst"] is None else (
        f"{r['worst']:12.2f}" if r["witness"] == "taylor_order" else f"{r['worst']:12.3e}")
    extra = f" ({r['unjudged']} non-smooth cases not judged)" if r.get("unjudged") else ""
    lines.append(f"{r['dtype']:8} {r['witness']:20} {r['cases']:6d} {worst:>12}  {r['verdict']}{extra}")
  lines.append("-" * 58)
  lines.append("errors: ||X - exact||_inf / ||exact||_inf against the mpmath referee; taylor_order: "
               "the lowest fitted order (2 = correct gradient, 1 = wrong)")
  return "\n".join(lines)


def plot_witnesses(summary: dict, path: str) -> None:
  """A PNG of each witness's error distribution (log10), one panel per dtype."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    raise SystemExit("bpref verify --plot needs matplotlib: pip install 'bpref[plot]'") from None
  dtypes = sorted({r["dtype"] for r in summary["table"]})
  fig, axes = plt.subplots(1, len(dtypes), figsize=(7 * len(dtypes), 4.5), squeeze=False)
  for ax, dtype in zip(axes[0], dtypes):
    for r in summary["table"]:
      if r["dtype"] != dtype or r["witness"] == "taylor_order" or not r["values"]:
        continue
      vals = np.log10(np.maximum(np.asarray(r["values"], float), 1e-20))
      ax.hist(vals, bins=30, range=(-20, 1), histtype="step", label=r["witness"])
    ax.set_title(f"{dtype}: error of each witness against the exact referee")
    ax.set_xlabel("log10 relative error (values below 1e-20 shown at -20)")
    ax.set_ylabel("cases")
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


class _Progress:
  """One bar on stderr for parts that run at once, each ``part(total)`` a ``progress(done, _)``
  that counts towards the sum of them all."""

  def __init__(self):
    self._lock = threading.Lock()
    self._done, self._total = [], 0

  def part(self, total: int):
    i = len(self._done)
    self._done.append(0)
    self._total += total

    def progress(done, _):
      with self._lock:
        self._done[i] = done
        _progress_bar(sum(self._done), self._total)
    return progress


def _progress_bar(done, total, width=30):
  filled = int(width * done / total)
  sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} cases")
  if done == total:
    sys.stderr.write("\n")
  sys.stderr.flush()


def format_table(summary: dict) -> str:
  lines = [f"{'dtype':8} {'check':18} {'cases':>6} {'max rel error':>14} {'max error/(T)':>14}  verdict",
           "-" * 74]
  for r in summary["table"]:
    lines.append(f"{r['dtype']:8} {r['check']:18} {r['cases']:6d} {r['max_error']:14.3e} "
                 f"{r['max_ratio']:14.3f}  {r['verdict']}")
  lines.append("-" * 74)
  lines.extend(f"crashed: {c}" for c in summary.get("crashes", ()))
  lines.append("PASS: every function agrees with the witness" if summary["passed"]
               else "FAIL: see the rows marked FAIL")
  return "\n".join(lines)


_WITNESS_LABELS = {"bpref_vs_referee": "bpref", "jax_grad_vs_referee": "`jax.grad`",
                   "complex_step": "complex step", "adjoint": "adjoint test ⟨∇C, v⟩",
                   "central": "central differences", "richardson": "Richardson",
                   "taylor_order": "Taylor remainder, fitted order (2 = correct)"}
_MARKDOWN_ORDER = ("bpref_vs_referee", "jax_grad_vs_referee", "complex_step", "adjoint", "central",
                   "richardson", "taylor_order")


def _short(value: float) -> str:
  return "0" if value == 0 else f"{value:.1e}".replace("e-0", "e-").replace("e+0", "e+")


def format_markdown(summary: dict) -> str:
  """The README's tables: per dtype each check's worst error and that error over (T); then,
  if the run had them, each witness's worst error against the referee."""
  dtypes = [d for d in ("float64", "float32") if any(r["dtype"] == d for r in summary["table"])]
  rows = {(r["dtype"], r["check"]): r for r in summary["table"]}
  lines = ["| | " + " | ".join(CHECKS) + " |", "|---" * (len(CHECKS) + 1) + "|"]
  for d in dtypes:
    lines.append(f"| {d} | " + " | ".join(_short(rows[(d, c)]["max_error"]) for c in CHECKS) + " |")
    lines.append(f"| {d}, of (T) | " + " | ".join(
        "0" if rows[(d, c)]["max_ratio"] == 0 else f"{rows[(d, c)]['max_ratio']:.3f}" for c in CHECKS) + " |")
  if "witnesses" in summary:
    found = {(r["dtype"], r["witness"]): r for r in summary["witnesses"]["table"]}
    lines += ["", "| witness | " + " | ".join(reversed(dtypes)) + " |", "|---" * (len(dtypes) + 1) + "|"]
    for name in _MARKDOWN_ORDER:
      cells = []
      for d in reversed(dtypes):
        r = found[(d, name)]
        if r["worst"] is None:
          cells.append("-")
          continue
        value = f"{r['worst']:.2f}" if name == "taylor_order" else _short(r["worst"])
        cells.append(value + (f" ({r['unjudged']} not judged)" if r.get("unjudged") else ""))
      lines.append(f"| {_WITNESS_LABELS[name]} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="bpref verify",
      description="Compare bpref's handwritten backprop with the autodiff witness on random networks.")
  parser.add_argument("--cases", type=ranged(1, 100_000), default=100,
                      help="random networks per dtype, 1 to 100000 (default 100)")
  parser.add_argument("--seed", type=ranged(0, 2**32 - 1), default=0, help="0 to 2**32 - 1")
  parser.add_argument("--quick", action="store_true", help="20 cases per dtype")
  parser.add_argument("--dtype", choices=("float32", "float64", "both"), default="both")
  parser.add_argument("--json", action="store_true", help="print a JSON summary instead of a table")
  parser.add_argument("--markdown", action="store_true",
                      help="print the README's tables (Markdown) instead of the text tables")
  parser.add_argument("--no-progress", action="store_true")
  parser.add_argument("--witness-cases", type=ranged(0, 100_000), default=None,
                      help="random networks per dtype for the independent witnesses "
                           "(default 10, 5 with --quick; 0 skips them)")
  parser.add_argument("--plot", metavar="PNG", default=None,
                      help="write the witnesses' error distributions to this PNG (needs matplotlib)")
  parser.add_argument("--device", choices=("cpu", "gpu", "tpu"), default=None,
                      help="run bpref and the autodiff witness on this JAX platform (default: JAX's default)")
  compilation.add_cache_arguments(parser)
  args = parser.parse_args(argv)
  if args.cases < 1:
    parser.error("--cases must be >= 1")
  if args.witness_cases is not None and args.witness_cases < 0:
    parser.error("--witness-cases must be >= 0")
  jax.config.update("jax_enable_x64", True)
  device = None
  if args.device is not None:
    try:
      device = jax.devices(args.device)[0]
    except RuntimeError as err:
      print(f"bpref verify: --device {args.device} is not available here ({err}); "
            f"available platforms: {sorted({d.platform for d in jax.devices()})}", file=sys.stderr)
      return 2
  cases = 20 if args.quick else args.cases
  witness_cases = args.witness_cases if args.witness_cases is not None else (5 if args.quick else 10)
  if args.plot and witness_cases == 0:
    parser.error("--plot needs the witnesses: give --witness-cases >= 1")
  dtypes = ("float32", "float64") if args.dtype == "both" else (args.dtype,)
  start = time.perf_counter()
  show = not (args.no_progress or args.json or args.markdown) and sys.stderr.isatty()  # no \r frames in logs
  try:
    if not args.no_cache:
      compilation.use_cache(args.cache_dir, default=True)
  except ValueError as err:
    parser.error(str(err))
  progress = _Progress() if show else None
  with compilation.count() as seen, jax.default_device(device) if device is not None else _null():
    calls = [functools.partial(run, cases, args.seed, dtypes,
                               progress=progress and progress.part(cases * len(dtypes)))]
    if witness_cases:
      calls.append(functools.partial(run_witnesses, witness_cases, args.seed, dtypes,
                                     progress=progress and progress.part(witness_cases * len(dtypes))))
    summary, *witnesses = concurrently(*calls)  # the witnesses' referee works while XLA compiles
    if witnesses:
      summary["witnesses"] = witnesses[0]
  summary["compilation"] = seen.to_json()
  summary["seconds"] = round(time.perf_counter() - start, 2)
  summary["backend"] = device.platform if device is not None else jax.default_backend()
  passed = summary["passed"] and summary.get("witnesses", {"passed": True})["passed"]
  if args.plot:
    plot_witnesses(summary["witnesses"], args.plot)
  if args.json:
    for r in summary.get("witnesses", {}).get("table", []):
      r.pop("values")
    print(json.dumps(summary, indent=2, default=float))
  elif args.markdown:
    print(format_markdown(summary))
    print(f"\n`bpref verify {' '.join(argv if argv is not None else sys.argv[1:])}`: "
          f"{summary['compilation']['compilations']} compilations, {summary['seconds']} s on "
          f"{summary['backend']}; {'PASS' if passed else 'FAIL'}")
  else:
    print(format_table(summary))
    if witness_cases:
      print()
      print(format_witness_table(summary["witnesses"]))
    print(f"{cases} cases per dtype ({witness_cases} for the witnesses), seed {args.seed}, "
          f"{summary['seconds']} s on {summary['backend']}")
    if args.plot:
      print(f"error distributions written to {args.plot}")
  return 0 if passed else 1


class _null:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False
