"""Diagnosis of a failing op: from the minimal case to the most likely bug.

As for whole networks (``bpref.oracle.diagnosis``), each finding is a tested hypothesis:

* a slip in calling ``check_op`` (the record's ``slips``: another layout or signature, the
  arguments swapped, the forward passed as the backward) is the diagnosis when the candidate,
  called that way, is right on the failing case and on others;
* a bug model (the record's ``models``) is the op's backward pass rerun with one deliberate
  change (for the classic kinds, ``bpref.oracle.ops.classic``: f' at a instead of z, a textbook
  form of f' fed z, the softmax Jacobian's diagonal only, dW transposed, the first example's
  term in place of a sum over the batch, ...). It is the diagnosis when it reproduces every
  output the candidate got wrong, to within FIT_SLACK tolerances, while it differs from bpref's
  answer there by more than FIT_SLACK tolerances, and does so again on other cases (another
  value seed, a larger batch);
* a constant factor c with answer = c * bpref's is fitted on each wrong output, then refitted
  with other batch sizes B (and output widths K for a loss): c = c0 B^p K^q names the cause
  (a sign flip, the 1/2 convention, a 1/B factor from a mean taken twice, a mean over outputs);
* a candidate within FIT_SLACK tolerances of bpref's answer is held to the network diagnosis's
  rule (``_near_models``): a bug model that the candidate follows to within one tolerance, on
  the minimal case and on other cases, is named once it has differed from bpref's answer by
  more than FIT_SLACK tolerances on one of them (eps outside the square root shows on a row
  whose variance is 0); without one, the failure is near_tolerance.
"""

from __future__ import annotations

import math

import numpy as np

from bpref.oracle.diagnosis import FIT_SLACK, Finding, fit_error, lower_precision
from bpref.oracle.ops import _judge, kinds
from bpref.oracle.ops.record import Label, error

CONFIRMATIONS = 4
"""Other cases a fitting model must reproduce too."""


# ---------------------------------------------------------------- testing the hypotheses

def _explains(model: dict, outputs: dict, truth, wrong) -> bool:
  """Whether the model reproduces every wrong output and every output it changes, to within
  FIT_SLACK tolerances: a bug's own rounding can exceed the rounding model of bpref's formula
  (1 / (sqrt(var) + eps) at a variance far below eps rounds at 3 tolerances in float32), and a
  model more than FIT_SLACK tolerances from bpref's answer is told apart from it all the same."""
  if not set(wrong) <= set(model):
    return False
  slack = FIT_SLACK * truth.tol
  for k, v in model.items():
    if not error(outputs[k], v, truth.bounds[k]) <= slack:
      return False
  return any(error(v, truth.expected[k], truth.bounds[k]) > slack for k, v in model.items())


def _consistent(model: dict, outputs: dict, truth) -> bool:
  """On a confirmation case: the model reproduces what it changes (wherever it differs from
  bpref, the candidate must too; where it agrees with bpref, so must the candidate), to within
  FIT_SLACK tolerances as ``_explains``."""
  slack = FIT_SLACK * truth.tol
  return all(error(outputs[k], v, truth.bounds[k]) <= slack for k, v in model.items())


def _reproduces(model: dict, outputs: dict, truth) -> bool:
  """Whether the candidate's outputs are the model's to within one tolerance, measured as the
  network diagnosis measures it (``bpref.oracle.diagnosis.fit_error``: against the larger of
  bpref's magnitude bound and the model's own answer, at whose scale the model rounds)."""
  keys = list(model)
  return fit_error([outputs[k] for k in keys], [model[k] for k in keys],
                   [truth.bounds[k] for k in keys]) <= truth.tol


def _confirmation_labels(spec, label: Label | None) -> list:
  """Other value seeds, a larger case, a W that is not square (where a transpose and a reshape
  differ) and planted kinks (which tell f' missing from a derivative wrong below the kink)."""
  if label is None:
    return []
  B = label.dims[0]
  dims = (B + 1,) + tuple(d + 1 for d in label.dims[1:])
  out = [label._replace(seed=label.seed + 1), Label(dims, label.family, label.seed + 2)]
  out += kinds.of(spec).extra_confirmations(spec, label)
  if "kink" in kinds.of(spec).value_families(spec) and label.family != "kink":
    # two: a kink case whose answer is 0 everywhere (relu at z <= 0) checks nothing, and is left out
    out += [Label(dims, "kink", label.seed + 3), Label(dims, "kink", label.seed + 5)]
  return out


def _runs(ev, labels, answered=True):
  """The runs of ``labels`` that check something; with ``answered``, those with an answer to
  compare (not an exception, a wrong shape, or NaN or inf)."""
  out = []
  for label in labels:
    run = ev.run(ev.record.case(ev.spec, label), forward=False)
    if run.verdict is not None and (not answered or (run.verdict.outputs is not None
                                                     and run.verdict.kind != "nonfinite")):
      out.append(run)
  return out


def _fit(cand, true):
  c_flat, t_flat = cand.ravel(), true.ravel()
  denom = float(t_flat @ t_flat)
  return math.nan if denom == 0 else float(c_flat @ t_flat) / denom


_NAMED = ((1.0, ""), (2.0, "2"), (0.5, "1/2"), (4.0, "4"), (0.25, "1/4"))


def _factor(ev, spec, minimal, wrong, origin) -> list:
  """A constant factor shared by the wrong outputs, named by refitting at other B (and K)."""
  truth, outputs = minimal.truth, minimal.verdict.outputs
  cs = []
  for k in wrong:
    c = _fit(outputs[k], truth.expected[k])
    if not math.isfinite(c) or not error(outputs[k], c * truth.expected[k],
                                                truth.bounds[k]) <= FIT_SLACK * truth.tol:
      return []
    cs.append(c)
  c = cs[0]
  if abs(c) < 1e-3 or any(abs(ci - c) > 1e-6 * abs(c) for ci in cs):
    return []
  B = minimal.case.arrays["dout" if "dout" in minimal.case.arrays else "t"].shape[0]
  if origin is None:
    return [Finding("constant_factor", f"{', '.join(wrong)} off by a constant factor {c:.6g}",
                    "fitted on the minimal case only")]
  fits = {}  # B or K -> c
  labels = [origin._replace(dims=(b,) + origin.dims[1:]) for b in (B + 1, B + 3)]
  refits = [("B", run) for run in _runs(ev, labels)]
  if ev.record.refits_width:
    K = origin.dims[1]
    refits += [("K", run) for run in _runs(ev, [origin._replace(dims=(B, K + 1)),
                                                  origin._replace(dims=(B, K + 2))])]
  for axis, run in refits:  # each refit must be a constant factor too
    k = wrong[0]
    ck = _fit(run.verdict.outputs[k], run.truth.expected[k])
    if not math.isfinite(ck) or not error(run.verdict.outputs[k], ck * run.truth.expected[k],
                                                 run.truth.bounds[k]) <= FIT_SLACK * run.truth.tol:
      return []
    shape = run.case.arrays["dout" if "dout" in run.case.arrays else "t"].shape
    fits[(axis, shape[0] if axis == "B" else shape[1])] = ck
  fits[("B", B)] = c
  p = _power({n: v for (axis, n), v in fits.items() if axis == "B"})
  q = _power({n: v for (axis, n), v in fits.items() if axis == "K"}) if ev.record.refits_width else 0
  if p is None or q is None:
    return [Finding("constant_factor", f"{', '.join(wrong)} off by a factor {c:.6g} that changes "
                    "with the batch size in no simple way", f"fits: {fits}")]
  K0 = origin.dims[1] if ev.record.refits_width else 1
  c0 = c / (B ** p) / (K0 ** q)
  named = None
  for value, text in _NAMED:
    for sign in (1, -1):
      if abs(c0 - sign * value) <= 1e-6 * value:
        named = (sign, value, text)
  if named is None:
    return [Finding("constant_factor", f"{', '.join(wrong)} off by a constant factor {c0:.6g}"
                    f"{' B' if p == 1 else ' / B' if p == -1 else ''}", f"fits: {fits}")]
  sign, value, text = named
  parts = []
  if value != 1.0:
    parts.append(text)
  if p == -1:
    parts.append("1/B")
  if p == 1:
    parts.append("B")
  if q == -1:
    parts.append("1/K")
  out = []
  if sign < 0:
    out.append(Finding("sign_flip", f"{', '.join(wrong)} has the wrong sign",
                       "the answer is -1 times bpref's" + (f" times {' '.join(parts)}" if parts else "")))
  if parts:
    why = []
    if p == -1:
      why.append("1/B: a mean over the batch taken where the reduction is already in dout "
                 "(or a mean where the sum was declared)")
    if p == 1:
      why.append("B: the mean over the batch missing (or a sum where the mean was declared)")
    if q == -1:
      why.append("1/K: a mean over the outputs as well as over the batch")
    if value in (2.0, 0.5):
      why.append("2 or 1/2: the 1/2 convention of the squared error (squared_error has no 1/2, "
                 "half_squared_error has it)")
    out.append(Finding("constant_factor", f"{', '.join(wrong)} off by a factor {' '.join(parts)}",
                       "; ".join(why) + f" (fitted factors: {_show(fits)})"))
  return out


def _show(fits) -> str:
  return ", ".join(f"{axis}={n}: {v:.4g}" for (axis, n), v in sorted(fits.items()))


def _power(fits: dict):
  """p in {-1, 0, 1} with c_n = c0 n^p over the fits, or None."""
  if len(fits) < 2:
    return 0
  items = sorted(fits.items())
  for p in (0, -1, 1):
    base = [v / n ** p for n, v in items]
    if all(math.isfinite(b) and abs(b - base[0]) <= 1e-6 * abs(base[0]) for b in base):
      return p
  return None


# ---------------------------------------------------------------- slips in calling check_op

SLIP_KINDS = ("exception", "structure", "shape", "dtype", "numeric", "mutation")
"""Failures that a call made another way may explain (not hangs, crashes or state)."""

SLIP_CASES = 2
"""Other cases on which the candidate, called the other way, must pass too."""

def _passes_as(ev, alt, case, truth, args=None) -> bool:
  """Whether the candidate passes ``case`` when called as ``alt`` says (or on ``args``)."""
  args = kinds.of(alt).args(alt, case) if args is None else args
  return _judge.judge(alt, case, truth, ev.call("backward", args)).passed


def _computes_forward(ev, case, truth, outputs=None) -> bool:
  """Whether the candidate computes bpref's forward output (x W^T + b, f(z), the loss): as
  its answer to the backward's arguments, or when called on the forward's."""
  spec = ev.spec
  if outputs is None:
    verdict = ev.run(case, forward=False).verdict
    outputs = None if verdict is None else verdict.outputs
  if outputs is not None and len(outputs) == 1 and truth.forward is not None:
    (out,) = outputs.values()
    if np.shape(out) == np.shape(truth.forward) and \
        error(out, truth.forward, truth.forward_bound) <= truth.forward_tol:
      return True
  outcome = ev.call("backward", ev.record.forward_args(spec, case))
  result = outcome.result
  if outcome.status != "ok":
    return False
  if isinstance(result, list):  # (out, cache), as CS231n's forward functions return
    if ev.record.forward_scalar(spec) or not result:  # a loss returns (C, dC/dy) rightly
      return False
    result = result[0]
  if not isinstance(result, (np.ndarray, np.number, float, int)):
    return False
  return _judge.judge_forward(spec, case, truth, outcome._replace(result=result)) is None


def _slips(ev, minimal, origin) -> list:
  """A slip in calling check_op that explains the failure: the candidate, called another way
  (the other layout, CS231n's (dout, cache), its arguments swapped, as the forward), is right
  on the failing case and on ``SLIP_CASES`` other cases."""
  if ev.stopped or minimal.verdict.kind not in SLIP_KINDS or minimal.truth is None:
    return []
  others = []
  for label in _confirmation_labels(ev.spec, origin)[:SLIP_CASES]:
    case = ev.record.case(ev.spec, label)
    truth = ev.truth(case)
    if truth is not None:
      others.append((case, truth, None))
  if not others:  # the failing case alone may agree with a slip by chance (dout = 1 entries)
    return []
  cases = [(minimal.case, minimal.truth, minimal.verdict.outputs)] + others
  for code, summary, detail, how in ev.record.slips(ev.spec):
    if all(_slipped(ev, how, case, truth, outputs) and not ev.stopped
           for case, truth, outputs in cases):
      return [Finding(code, summary, f"{detail} on the failing case and on {len(others)} other "
                      "case(s)")]
  return []


def diagnose(ev, minimal, origin) -> list:
  """Findings for the minimal failing run, the most specific first: a slip in calling
  check_op, else what the failure itself says."""
  return _slips(ev, minimal, origin) or _diagnose(ev, minimal, origin)


def _diagnose(ev, minimal, origin) -> list:
  spec, verdict, truth = ev.spec, minimal.verdict, minimal.truth
  if verdict.findings:
    return list(verdict.findings)
  if verdict.kind == "shape" and origin is not None and origin.dims[0] < 3:
    run = ev.run(ev.record.case(spec, origin._replace(dims=(3,) + origin.dims[1:])), forward=False)
    if run.verdict is not None and run.verdict.findings:  # B = 1 hides a missing batch sum
      return [f._replace(detail=f"{f.detail} (seen with B = 3; with B = 1 the shape alone cannot "
                         "tell)") for f in run.verdict.findings]
  if verdict.kind in ("exception", "shape"):
    return _where_it_runs(ev, verdict.kind, origin)
  if verdict.kind == "nonfinite":
    return ev.record.nonfinite_findings(spec, minimal)
  if verdict.kind != "numeric" or verdict.outputs is None:
    return []
  outputs = verdict.outputs
  wrong = ev.record.focus(spec, [k for k, e in verdict.errors.items() if not e <= truth.tol])
  worst = max(verdict.errors[k] for k in wrong)
  if worst <= FIT_SLACK * truth.tol:
    return _near_models(ev, minimal, origin, wrong) or [Finding(
        "near_tolerance", f"within {FIT_SLACK:g} tolerances of bpref's answer: no bug model can "
        "be told apart from it (a formula that loses digits, or arithmetic in a lower precision)",
        f"worst error {worst:.2e}, tolerance {truth.tol:.1e}")]
  fitting = []  # a summary may come with variants (f'(0) at a kink): any one of them will do
  for code, summary, model in ev.record.models(spec, minimal.case, truth):
    if (code, summary) not in fitting and _explains(model, outputs, truth, wrong):
      fitting.append((code, summary))
  findings = []
  if fitting:
    others = _runs(ev, _confirmation_labels(spec, origin), answered=False)[:CONFIRMATIONS]
    confirmed = _confirmed(ev, fitting, others,
                           lambda m, run: _consistent(m, run.verdict.outputs, run.truth))
    findings = [Finding(code, summary, f"reproduces the candidate on the minimal case and on "
                        f"{len(others)} other case(s)") for code, summary in fitting
                if (code, summary) in confirmed]
  if not findings:
    lower = lower_precision(spec.dtype, [outputs[k] for k in wrong],
                            [truth.expected[k] for k in wrong], worst, truth.tol)
    findings = [lower] if lower is not None else _factor(ev, spec, minimal, wrong, origin)
  if not findings:
    findings = ev.record.last_findings(spec, minimal, wrong)
  return findings


def _follows(model: dict, verdict, truth) -> bool:
  """Whether the candidate's answer is the model's (``_reproduces``), and bpref's in every
  output the model leaves alone."""
  return _reproduces(model, verdict.outputs, truth) and \
      all(verdict.errors[k] <= truth.tol for k in verdict.outputs if k not in model)


def _apart(model: dict, truth) -> float:
  """How far the model is from bpref's answer, in tolerances (its farthest output)."""
  return max(error(v, truth.expected[k], truth.bounds[k]) for k, v in model.items()) / truth.tol


def _near_models(ev, minimal, origin, wrong) -> list:
  """Bug models for a failure within FIT_SLACK tolerances of bpref's answer, by the network
  diagnosis's rule (``bpref.oracle.diagnosis``): a model outside the tolerance on the minimal
  case, as the candidate is, that the candidate follows there to within one tolerance; that
  the candidate follows again on every other case (``_confirmation_labels``); and that differs
  from bpref's answer by more than FIT_SLACK tolerances on one of them, so that no
  rounding-sized difference is blamed on a bug. The minimal case is where the search shrank
  the failure to its smallest, so a model may differ there by less than the network
  diagnosis's SEPARATION: the other cases decide."""
  spec, truth, verdict = ev.spec, minimal.truth, minimal.verdict
  fitting = {}  # (code, summary) -> whether it has differed by more than FIT_SLACK there
  for code, summary, model in ev.record.models(spec, minimal.case, truth):
    if set(wrong) <= set(model) and _apart(model, truth) > 1 and _follows(model, verdict, truth):
      fitting[(code, summary)] = fitting.get((code, summary), False) or \
          _apart(model, truth) > FIT_SLACK
  if not fitting:
    return []
  others = _runs(ev, _confirmation_labels(spec, origin), answered=False)[:CONFIRMATIONS]
  confirmed = _confirmed(ev, fitting, others, lambda m, run: _follows(m, run.verdict, run.truth))
  return [Finding(code, summary, f"reproduces the candidate to within one tolerance on the "
                  f"minimal case, where the candidate is within {FIT_SLACK:g} tolerances of "
                  f"bpref's answer, and on {len(others)} other case(s); on one of them the model "
                  f"is more than {FIT_SLACK:g} tolerances from bpref's answer")
          for (code, summary), shown in fitting.items()
          if (code, summary) in confirmed and (shown or confirmed[(code, summary)] > FIT_SLACK)]


def _confirmed(ev, keys, others, follows) -> dict:
  """{(code, summary): the farthest its model stood from bpref's answer, in tolerances} for the
  bug models of ``keys`` that the candidate's answer follows (``follows(model, run)``) on each
  run of ``others`` that answered; a summary may come with variants (f'(0) at a kink), and any
  one of them will do. A model that cannot be computed on a case is not tested there, except a
  transpose of a W that is not square: the candidate answered there, so it is refuted."""
  apart = dict.fromkeys(keys, 0.0)
  for run in others:
    if run.verdict.outputs is None:
      continue
    models = ev.record.models(ev.spec, run.case, run.truth)
    for code, summary in list(apart):
      variants = [m for _, s, m in models if s == summary]
      followed = [m for m in variants if follows(m, run)]
      if (variants and not followed) or (not variants and code == "transposed"):
        del apart[(code, summary)]
      elif followed:
        apart[(code, summary)] = max(apart[(code, summary)],
                                     *(_apart(m, run.truth) for m in followed))
  return apart


def _slipped(ev, how, case, truth, outputs) -> bool:
  """Whether the candidate is right on ``case`` when called as the slip ``how`` says."""
  if how == "forward":
    return _computes_forward(ev, case, truth, outputs)
  if how == "swapped":
    return _passes_as(ev, ev.spec, case, truth, ev.record.args(ev.spec, case)[::-1])
  return _passes_as(ev, how, case, truth)


def _where_it_runs(ev, kind, origin) -> list:
  """A candidate that fails to run on one shape may run on another: diagnose it there, or say
  that it is right there and so fails on the minimal case's shape alone."""
  ends = "an exception" if kind == "exception" else "a wrong shape"
  for label, where, other in ev.record.rerun_labels(ev.spec, kind, origin):
    run = ev.run(ev.record.case(ev.spec, label), forward=False)
    if run.verdict is not None and run.verdict.kind == "numeric":
      found = _diagnose(ev, run, run.case.label)
      return [f._replace(summary=f"{f.summary} (seen on {where}, where it runs; on the minimal "
                         f"{other}case it ends in {ends})")
              for f in found if f.code not in ("undiagnosed", "near_tolerance")]
    if run.verdict is not None and run.verdict.passed:
      return [Finding("shape_limit", f"right on {where}; on the minimal {other}case it ends in "
                      f"{ends}: the candidate does not handle that shape",
                      f"checked on {', '.join(f'{k} {np.shape(v)}' for k, v in run.case.arrays.items())}")]
  return []
