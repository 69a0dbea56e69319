"""The oracle: check someone else's backprop against bpref's.

The candidate is a callable

  grads(weights, biases, activations, loss, x, t) -> (dW, db)  or  (dW, db, loss_value)

on NumPy arrays: ``weights[l]`` of shape (n_l, n_{l-1}) (``layout="in_out"``:
(n_{l-1}, n_l)), ``biases[l]`` of shape (n_l,) (None with ``bias=False``),
``activations`` names from ``bpref.activations.ACTIVATIONS``, ``loss`` a name
from ``bpref.losses.LOSSES``, x of shape (B, n_0) and t of shape (B, n_L). It
returns the gradient of the reduced loss (the spec's ``reduction``) with
respect to every W_l and b_l, in its own layout.

``check`` searches the declared domain (``bpref.oracle.spec.Spec``) with
targeted probes and hypothesis-drawn networks, shrinks the first failure to a
minimal network, and diagnoses it (``bpref.oracle.diagnosis``).

>>> import numpy as np, bpref.oracle
>>> def linear(weights, biases, activations, loss, x, t):  # one identity layer, half squared error
...   g = (x @ weights[0].T + biases[0][None, :] - t) / x.shape[0]
...   return [g.T @ x], [g.sum(axis=0)]
>>> report = bpref.oracle.check(linear, activations=("identity",), losses=("half_squared_error",),
...                             max_depth=1, examples=5)
>>> report.verdict
'pass'
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import TYPE_CHECKING

from bpref.oracle import cluster as _cluster
from bpref.oracle import isolation as _isolation

_LAZY = {"Finding": "bpref.oracle.diagnosis", "Report": "bpref.oracle.report",
         "Spec": "bpref.oracle.spec", "make_spec": "bpref.oracle.spec",
         "check_op": "bpref.oracle.ops"}
"""Names of this package that live in its modules, imported when first used: a subprocess that
runs a candidate (``isolation``) imports neither JAX nor the search."""

if TYPE_CHECKING:
  from bpref.oracle.report import Report


def __getattr__(name: str):
  if name in _LAZY:
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'bpref.oracle' has no attribute {name!r}")


def check(candidate=None, *, target=None, progress=None, cluster=None, pool=None,
          **options) -> Report:
  """Check a candidate gradient function against bpref; never raises for what the candidate does.

  By default the candidate runs in this process (fast; it is trusted not to end the process or
  patch bpref). With ``isolate=True`` or ``workers > 1`` it runs in spawned subprocesses: a crash,
  an early exit or a hang becomes a report, and a ``target`` is imported only there, so the
  verdict comes from a process the candidate never ran in. Call it from a script under
  ``if __name__ == "__main__":`` then (each subprocess imports the script again).

  Args:
    candidate: the callable (see the module docstring).
    target: instead of ``candidate``, ("function" | "torch" | "flax" | "equinox", "module:name"),
      loaded in each subprocess by name (used by ``bpref check``).
    progress: optional callback progress(phase, calls).
    cluster: run the candidate's calls on a Dask cluster (``bpref.oracle.cluster``): its
      scheduler's address ("tcp://host:8786"), a ``dask.distributed.Client`` or a cluster
      object. As many calls run at once as the cluster has worker threads; the verdict and the
      minimal case are those of ``workers=1``. The candidate must then be picklable or a target.
    pool: an ``isolation.Isolated`` of one worker to run the candidate in, loaded with it and
      left running after the check (``bpref.testing``'s one worker per test session); the
      candidate must then be picklable or a target.
    **options: the ``Spec`` fields: activations, losses, output_activations, reduction,
      max_depth, max_width, max_batch, dtype, layout, bias, examples, seed, strict_kinks,
      timeout, isolate, workers, shrink_budget.

  Returns:
    a ``Report``: verdict, minimal failing case, per-array and per-layer errors, diagnosis,
    seed, reproducer script, and what the candidate printed (``output``). A pass needs as many
    networks checked as asked for (``report.requested``: the probes in the domain + examples);
    networks dropped unchecked (``report.dropped``, per reason) are made up for by further
    draws, at most ``search.DRAW_BUDGET`` per random network needed, and a search whose draws
    run out first is verdict "error", kind "too_few_cases", its message giving the counts.

  Raises:
    ValueError / TypeError for a bad spec or a candidate that cannot be run at all (not
    callable; not picklable with isolate/workers). ``isolation.MainReimportError`` (a
    RuntimeError) when a subprocess re-ran the calling script because it lacks the
    ``if __name__ == "__main__":`` guard.
  """
  from bpref.oracle import spec as _spec

  _isolation.refuse_reimport()
  spec = _spec.make_spec(**options)
  start = time.perf_counter()
  with _isolation.recording() as transcript:
    report = _check(candidate, target, progress, spec, start, cluster, pool)
  report.output = transcript.to_json()
  return report


def _check(candidate, target, progress, spec, start, cluster=None, kept=None) -> Report:
  from bpref.oracle import search as _search
  from bpref.oracle.report import Report

  pool = None
  if target is not None:
    kind, ref = target
    if candidate is None and not (spec.isolate or spec.workers > 1 or cluster is not None
                              or kept is not None):
      candidate = _isolation.load_captured(kind, ref, spec.reduction)
    pool_target = ("named", kind, ref, spec.reduction)
  else:
    if not callable(candidate):
      raise TypeError(f"candidate must be callable grads(weights, biases, activations, loss, x, t); "
                      f"got {type(candidate).__name__}")
    pool_target = None
  try:
    if kept is not None:
      pool = kept
      pool.load(pool_target or _isolation.picklable(candidate), spec.timeout)
    elif cluster is not None:
      pool = _cluster.ClusterPool(pool_target or _isolation.picklable(candidate), cluster,
                                  spec.timeout)
      spec = dataclasses.replace(spec, workers=pool.workers)
    elif spec.isolate or spec.workers > 1:
      if pool_target is None:
        pool_target = _isolation.picklable(candidate)
      pool = _isolation.Isolated(pool_target, spec.workers, spec.timeout)
    ev = _search.Evaluator(None if pool else candidate, spec, pool, progress)
    try:
      with _isolation.exits_refused() if pool is None else contextlib.nullcontext():
        found = _search.search(ev)
        return build_report(ev, spec, found, target, candidate, start)
    except _isolation.MainReimportError:
      raise
    except (ValueError, RuntimeError) as exc:
      if pool is None:
        raise
      return Report("error", spec.to_json(), 0, ev.calls, spec.seed, time.perf_counter() - start,
                    kind="error", message=str(exc))
  finally:
    if pool is not None and pool is not kept:
      pool.close()


def _notes(ev) -> list:
  return sorted({r.note for _, r in ev.history if r.note})


def _counts(tally) -> dict:
  """The Report fields that count the search's cases (``search.Tally``)."""
  if tally is None:
    return {}
  return {"requested": tally.requested, "dropped": dict(tally.dropped)}


def build_report(ev, spec, found, target, candidate, start) -> Report:
  """The report of a finished search: a pass only when ``found.tally`` checked every case asked for."""
  from bpref.oracle import diagnosis as _diagnosis
  from bpref.oracle import report as _report
  from bpref.oracle import search as _search
  from bpref.oracle.diagnosis import Finding
  from bpref.oracle.report import Report

  if found.first is None:
    verdict = "pass"
    if ev.stopped:
      verdict = "fail"
    elif found.tally is not None and found.tally.short:
      verdict = "error"
    rep = Report(verdict, spec.to_json(), found.cases, ev.calls, spec.seed, 0.0, notes=_notes(ev),
                 **_counts(found.tally))
    if ev.stopped:
      rep.kind, rep.message = "timeout", ev.stopped
    elif verdict == "error":
      rep.kind, rep.message = "too_few_cases", found.tally.message()
    rep.seconds = time.perf_counter() - start
    return rep
  minimal = found.minimal
  case, truth = ev.case_and_truth(minimal.arch)
  before = len(ev.history)
  try:
    findings, per_layer, implied = _diagnosis.diagnose(ev, minimal)
  except Exception as exc:  # a diagnosis that cannot run must not hide the verdict
    findings = [Finding("undiagnosed", "the candidate is wrong; the diagnosis could not run",
                        f"{type(exc).__name__}: {exc}")]
    per_layer, implied = [], []
  sequence = _history_dependent(ev, minimal, before)
  if sequence:
    findings.insert(0, _report.history_dependent(
        f"the candidate failed on it after {len(sequence) - 1} earlier calls in its process (state "
        "kept between calls: a buffer sized by the first call, a counter, a cache?); the report's "
        "'sequence' lists the cases, in order, that reproduce the failure"))
  if target is not None:
    target = (target[0], _isolation.absolute_target(target[1]))
  rep = Report(
      "fail", spec.to_json(), found.cases, ev.calls, spec.seed, 0.0,
      examples_to_failure=found.examples_to_failure, kind=minimal.kind, message=minimal.message,
      case=_report.case_json(case, minimal, truth), errors=dict(minimal.errors), layer_errors=per_layer,
      implied_delta_errors=implied, tolerance=minimal.tolerance, diagnosis=findings,
      notes=_notes(ev), reproducer=_report.reproducer(case, spec, target, _name_of(candidate)),
      first_case=found.first.arch.to_json(), shrunk=found.first.kind in _search.SHRINK_GROUPS,
      sequence=sequence, **_counts(found.tally))
  rep.seconds = time.perf_counter() - start
  return rep


def _history_dependent(ev, minimal, calls: int) -> list:
  """The cases, in call order, up to the minimal failure, when that failure does not repeat
  alone in a fresh process; [] when it does, or when the candidate runs in this process or on
  several workers (the order of calls is then not one sequence): ``engine.passes_alone``."""
  from bpref.oracle import engine as _engine

  if not _engine.passes_alone(ev, minimal):
    return []
  history = [result.arch for _, result in ev.history[:calls]]
  end = max(i for i, arch in enumerate(history) if arch == minimal.arch) + 1
  return [arch.to_json() for arch in history[:end]]


def _name_of(candidate) -> str:
  """'module.name (in /path/file.py)' for the reproducer's placeholder line, or ''."""
  if candidate is None:
    return ""
  name = getattr(candidate, "__qualname__", None) or type(candidate).__name__
  module = getattr(candidate, "__module__", None)
  code = getattr(candidate, "__code__", None)
  where = f" in {code.co_filename}" if code is not None else ""
  return f"{module}.{name}{where}" if module else f"{name}{where}"


__all__ = ["Finding", "Report", "Spec", "check", "check_op", "make_spec"]
