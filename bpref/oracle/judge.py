"""Judging one candidate call against the truth.

The error of each returned array X (dC/dW_l or dC/db_l) is measured normwise
against the magnitude bound M_X of ``bpref.oracle.truth`` (``bpref.error.normwise_error``):

  e(X) = ||X_candidate - X_bpref||_F / ||M_X||_F.

The rounding model (T) of ``bpref.tolerance`` bounds every entry of the error
by tol * M_X entrywise, hence e(X) <= tol with
tol = c u (2 L + 1) k m for the candidate's dtype, its depth L, its longest
sum k and its magnitude m. A bug (a wrong factor, a missing f', a transpose)
moves e(X) to order 1, many orders of magnitude above tol.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from bpref import activations as _activations
from bpref import tolerance as _tolerance
from bpref.error import normwise_error
from bpref.oracle import truth as _truth

FAILURE_KINDS = ("exception", "timeout", "crash", "protocol", "structure", "shape", "dtype",
                 "nonfinite", "mutation", "numeric", "convention", "loss", "nondeterministic")

EXEC_STATUSES = {"exited": "crash", "refused": "exception", "protocol": "protocol"}
"""Outcome statuses of a candidate process speaking bpref-wire (``bpref.oracle.exec``), and the
failure kind each is; the outcome's error is then the whole message."""

KINK_CONVENTIONS = {
    "relu": ((0.0, "relu'(0) = 0 (jax.nn.relu, torch)"),
             (0.5, "relu'(0) = 1/2 (code built on maximum, whose two branches share the gradient)"),
             (1.0, "relu'(0) = 1 (code testing z >= 0)")),
    "leaky_relu": ((1.0, "leaky_relu'(0) = 1 (jax.nn)"),
                   (0.505, "leaky_relu'(0) = (1 + 0.01) / 2 (maximum-based code)"),
                   (0.01, "leaky_relu'(0) = 0.01 (code testing z > 0)")),
    "selu": ((_activations.SELU_SCALE * _activations.SELU_ALPHA, "selu'(0) = scale * alpha (jax.nn)"),
             (_activations.SELU_SCALE, "selu'(0) = scale (torch)")),
}
"""f'(0) values in use at each jump of f' (the activations whose ``kink`` is "f'"), with who
uses them; the first is bpref's. Any value between the one-sided derivatives is a subgradient."""


class CaseResult(NamedTuple):
  """The verdict on one case.

  Attributes:
    arch: the case's ``Arch``.
    passed: whether the candidate is correct here.
    kind: "ok", or one of ``FAILURE_KINDS`` (a "convention" difference passes unless strict).
    message: one plain sentence.
    errors: {"W1": e, "b1": e, ...} normwise errors (see module docstring).
    tolerance: the tol the errors were held to.
    dW, db: the candidate's arrays in the (n_l, n_{l-1}) layout, when it returned usable ones.
    loss: the candidate's loss value, if it returned one.
    note: a convention note, or "".
    seconds: the call's wall time.
  """
  arch: object
  passed: bool
  kind: str
  message: str
  errors: dict
  tolerance: float
  dW: tuple | None = None
  db: tuple | None = None
  loss: float | None = None
  note: str = ""
  seconds: float = 0.0


def case_tolerance(case, truth) -> float:
  """tol of (T) for this case: the candidate's dtype, depth, longest sum and magnitude."""
  return _tolerance.network_tolerance(case.dtype, case.arch.sizes, case.arch.batch, truth.z,
                                      case.arch.activations)


def errors_of(dW, db, truth) -> dict:
  """{"W1": e, ..., "b1": e, ...}: the error e(X) of each array (module docstring)."""
  out = {}
  for l, (c, t, m) in enumerate(zip(dW, truth.dW, truth.mag_W), start=1):
    out[f"W{l}"] = normwise_error(c, t, m)
  if db is not None and truth.db is not None:
    for l, (c, t, m) in enumerate(zip(db, truth.db, truth.mag_b), start=1):
      out[f"b{l}"] = normwise_error(c, t, m)
  return out


def _fail(case, kind, message, tol, seconds, **extra):
  return CaseResult(case.arch, False, kind, message, {}, tol, seconds=seconds, **extra)


def call_failure(outcome) -> tuple | None:
  """(failure kind, message) of a call that returned nothing to judge (it raised, hung, ended
  its process or broke bpref-wire), or None: one judge's words for every kind of check."""
  if outcome.status == "exception":
    return "exception", f"the candidate raised an exception:\n{outcome.error}"
  if outcome.status == "timeout":
    return "timeout", f"the candidate hung: {outcome.error}"
  if outcome.status == "crash":
    return "crash", f"the candidate ended its process: {outcome.error}"
  if outcome.status in EXEC_STATUSES:
    return EXEC_STATUSES[outcome.status], outcome.error
  return None


def _unpack(result):
  """(dW, db, loss) from the candidate's return value, or a message saying what is wrong."""
  if not isinstance(result, list) or len(result) not in (2, 3):
    what = type(result).__name__ if not isinstance(result, list) else f"a sequence of {len(result)}"
    return None, ("the candidate must return (dW, db) or (dW, db, loss); "
                  f"it returned {what}")
  dW, db = result[0], result[1]
  loss = result[2] if len(result) == 3 else None
  return (dW, db, loss), ""


def judge(case, truth, outcome, spec, *, declared=None) -> CaseResult:
  """The verdict on one call (an ``isolation.Outcome``) for ``case``; ``declared`` as for
  ``bpref.oracle.truth`` (the verdict does not depend on it)."""
  tol = case_tolerance(case, truth)
  secs = outcome.seconds
  depth = case.arch.depth
  failed = call_failure(outcome)
  if failed is not None:
    return _fail(case, *failed, tol, secs)
  parts, why = _unpack(outcome.result)
  if parts is None:
    return _fail(case, "structure", why, tol, secs)
  dW_raw, db_raw, loss_raw = parts
  if not isinstance(dW_raw, list) or len(dW_raw) != depth:
    n = len(dW_raw) if isinstance(dW_raw, list) else type(dW_raw).__name__
    return _fail(case, "structure", f"dW must be a sequence of L = {depth} arrays (one per layer); "
                 f"got {n}", tol, secs)
  if spec.bias and (not isinstance(db_raw, list) or len(db_raw) != depth):
    n = len(db_raw) if isinstance(db_raw, list) else type(db_raw).__name__
    return _fail(case, "structure", f"db must be a sequence of L = {depth} arrays (one per layer); "
                 f"got {n}", tol, secs)
  dW, db = [], []
  for l in range(1, depth + 1):
    n_out, n_in = case.arch.sizes[l], case.arch.sizes[l - 1]
    expect = (n_in, n_out) if spec.layout == "in_out" else (n_out, n_in)
    g = dW_raw[l - 1]
    if not isinstance(g, np.ndarray):
      return _fail(case, "structure", f"dW[{l - 1}] (layer {l}) is {type(g).__name__}, not an array",
                   tol, secs)
    if g.shape != expect:
      hint = ""
      if g.shape == expect[::-1]:
        other = "in_out" if spec.layout == "out_in" else "out_in"
        hint = (f": that is the transposed shape; a gradient in the {other} layout needs "
                f"layout={other!r}, otherwise dC/dW_l = delta_l^T a_(l-1) was transposed")
      return _fail(case, "shape", f"dW[{l - 1}] (layer {l}) has shape {g.shape}, expected "
                   f"{expect}{hint}", tol, secs)
    dW.append(g.T if spec.layout == "in_out" else g)
    if spec.bias:
      gb = db_raw[l - 1]
      if not isinstance(gb, np.ndarray):
        return _fail(case, "structure", f"db[{l - 1}] (layer {l}) is {type(gb).__name__}, "
                     "not an array", tol, secs)
      if gb.shape != (n_out,):
        rows = gb.shape == (case.arch.batch, n_out)  # delta_l itself, one row per example
        hint = (" (one row per example: sum it over the batch, db.sum(axis=0))" if rows and
                case.arch.batch > 1 else " (a row per example? sum it over the batch, "
                "db.sum(axis=0); a column or row vector? flatten it, db.reshape(-1))" if rows else
                " (flatten column vectors: db.reshape(-1))" if gb.size == n_out else "")
        return _fail(case, "shape", f"db[{l - 1}] (layer {l}) has shape {gb.shape}, expected "
                     f"({n_out},){hint}", tol, secs)
      db.append(gb)
  db = tuple(db) if spec.bias else None
  dW = tuple(dW)
  for name, arr in [(f"dW[{i}]", g) for i, g in enumerate(dW)] + \
                   [(f"db[{i}]", g) for i, g in enumerate(db or ())]:
    if arr.dtype != np.dtype(spec.dtype):
      return _fail(case, "dtype", f"{name} has dtype {arr.dtype}; the inputs were {spec.dtype} and "
                   f"the gradient must be too", tol, secs, dW=dW, db=db)
  for name, arr in [(f"dW[{i}]", g) for i, g in enumerate(dW)] + \
                   [(f"db[{i}]", g) for i, g in enumerate(db or ())]:
    if not np.all(np.isfinite(arr)):
      return _fail(case, "nonfinite", f"{name} contains NaN or inf (bpref's gradient is finite "
                   "here)", tol, secs, dW=dW, db=db)
  loss = None
  if loss_raw is not None:
    try:
      loss = float(np.asarray(loss_raw, np.float64).reshape(()))
    except (TypeError, ValueError):
      return _fail(case, "structure", f"the returned loss must be a scalar; got "
                   f"{np.shape(loss_raw)}", tol, secs, dW=dW, db=db)
  errors = errors_of(dW, db, truth)
  extra = dict(dW=dW, db=db, loss=loss)
  if outcome.mutated:
    return CaseResult(case.arch, False, "mutation",
                      f"the candidate modified its input array(s) {', '.join(outcome.mutated)}; "
                      "a gradient function must leave its inputs as they were", errors, tol,
                      seconds=secs, **extra)
  worst = max(errors.values())
  note = ""
  if not worst <= tol:
    note = _convention(case, truth, dW, db, tol, declared)
    if not note:
      bad = [k for k, e in errors.items() if not e <= tol]
      return CaseResult(case.arch, False, "numeric",
                        f"gradient wrong in {', '.join(bad)} (worst error {worst:.2e}, "
                        f"tolerance {tol:.1e})", errors, tol, seconds=secs, **extra)
    if spec.strict_kinks:
      return CaseResult(case.arch, False, "convention",
                        f"differs at exact kinks only, and strict kink conventions were asked for: "
                        f"{note}", errors, tol, note=note, seconds=secs, **extra)
  if loss is not None:
    loss_err = abs(loss - truth.loss) / truth.mag_loss if truth.mag_loss > 0 else abs(loss - truth.loss)
    if not loss_err <= tol or not math.isfinite(loss):
      return CaseResult(case.arch, False, "loss",
                        f"the returned loss {loss:.6g} is not the {case.arch.loss} loss "
                        f"({case.reduction}) of these outputs, {truth.loss:.6g}", errors, tol,
                        note=note, seconds=secs, **extra)
  return CaseResult(case.arch, True, "ok", "correct" + (f" ({note})" if note else ""), errors, tol,
                    note=note, seconds=secs, **extra)


def _convention(case, truth, dW, db, tol, declared) -> str:
  """A note naming the kink convention the candidate follows, when that is the only difference."""
  kinked = [(l, act) for l, act in enumerate(case.arch.activations, start=1)
            if act in KINK_CONVENTIONS and np.any(truth.z[l - 1] == 0)]
  if not kinked:
    return ""
  names = sorted({act for _, act in kinked})
  options = [KINK_CONVENTIONS[n] for n in names]
  combos = [[]]
  for opts in options:
    combos = [c + [o] for c in combos for o in opts]
  # the fewest activations off bpref's convention first: a note names only those that differ
  combos.sort(key=lambda combo: sum(o[0] != opts[0][0] for o, opts in zip(combo, options)))
  for combo in combos:
    values = {n: v for n, (v, _) in zip(names, combo)}
    differ = [i for i, n in enumerate(names) if combo[i][0] != KINK_CONVENTIONS[n][0][0]]
    if not differ:
      continue
    vdW, vdb = _truth.backprop_variant(case, truth, kink_values=values, declared=declared)
    alt = truth._replace(dW=vdW, db=vdb)
    errs = errors_of(dW, db, alt)
    if max(errs.values()) <= tol:
      theirs = "; ".join(combo[i][1] for i in differ)
      ours = "; ".join(KINK_CONVENTIONS[names[i]][0][1] for i in differ)
      return (f"convention note: at exact kinks the candidate uses {theirs}, bpref uses {ours}; "
              "both are valid subgradients")
  return ""


def same_results(first: CaseResult, second: CaseResult, truth, tol) -> bool:
  """Whether two calls on one case returned the same gradient up to rounding."""
  if first.dW is None or second.dW is None:
    return first.kind == second.kind
  for a, b, m in zip(first.dW, second.dW, truth.mag_W):
    if not normwise_error(a, b, m) <= tol:
      return False
  for a, b, m in zip(first.db or (), second.db or (), truth.mag_b or ()):
    if not normwise_error(a, b, m) <= tol:
      return False
  return True
