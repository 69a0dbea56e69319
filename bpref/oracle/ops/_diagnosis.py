"""Diagnosis of a failing op: from the minimal case to the most likely bug.

As for whole networks (``bpref.oracle.diagnosis``), each finding is a tested hypothesis:

* a bug model (``models``) is the op's backward pass rerun with one deliberate change (f' at
  a instead of z, a known wrong form of f' from ``bpref.oracle.forms`` (an a-form derivative
  fed z, 1 - a for tanh, gelu_tanh without 3 k z^2, ...), f' missing, a derivative wrong on
  one side of a kink, the softmax Jacobian's diagonal only, dW transposed, the first example's
  term in place of a sum over the batch, a sum over the batch that should not be there, a fused
  loss form where dC/dy was asked for...). It is the diagnosis when it reproduces every output the
  candidate got wrong, to within FIT_SLACK tolerances, while it differs from bpref's answer
  there, and does so again on other cases (another value seed, a larger batch);
* a constant factor c with answer = c * bpref's is fitted on each wrong output, then refitted
  with other batch sizes B (and output widths K for a loss): c = c0 B^p K^q names the cause
  (a sign flip, the 1/2 convention, a 1/B factor from a mean taken twice, a mean over outputs);
* a candidate within FIT_SLACK tolerances of bpref's answer is reported as near_tolerance.
"""

from __future__ import annotations

import math

import numpy as np

from bpref import activations as _activations
from bpref.oracle import forms as _forms
from bpref.oracle.diagnosis import FIT_SLACK, Finding
from bpref.oracle.ops import _judge, _kinds
from bpref.oracle.ops._kinds import Label

CONFIRMATIONS = 4
"""Other cases a fitting model must reproduce too."""


def _softmax_rows(z, axis=-1):
  e = np.exp(z - np.max(z, axis=axis, keepdims=True))
  return e / np.sum(e, axis=axis, keepdims=True)


def _side_models(name, z, df):
  """Derivatives wrong on one side of the kink at 0, as (summary, f' values)."""
  if name not in _activations.KINKED:
    return []
  pos = float(_kinds.df(name, np.ones((1, 1)))[0, 0])
  out = []
  if not np.allclose(df[z < 0], pos):
    out.append((f"{name}' is {pos:g} for z < 0 too (the z > 0 branch used on both sides, e.g. "
                f"a test z != 0)", np.where(z < 0, pos, df)))
  if np.any(df[z < 0] != 0):
    out.append((f"{name}' is 0 for z < 0 (relu's derivative below the kink)",
                np.where(z < 0, 0.0, df)))
  mirrored = _kinds.df(name, -z)
  out.append((f"{name}' mirrored: f'(-z), the comparison at the kink turned around", mirrored))
  return out


def _elementwise_models(spec, case, truth):
  """(code, summary, f' values) for an elementwise activation."""
  name, z = spec.name, truth.z
  df = _kinds.df(name, z)
  a = truth.a
  out = [("fprime_at_a", f"the derivative is taken at a = {name}(z), not at z: f'(a) in place of f'(z)",
          _kinds.df(name, a))]
  handed_a = spec.kind == "activation" and spec.takes == "a"
  for form in _forms.of(name):  # the known wrong forms of f', bpref.oracle.forms
    if form.variable == "a" or not handed_a:  # a candidate handed a computes no form of z
      out.append(("activation_derivative", form.summary(),
                  form.values(z, case.arrays["a"] if handed_a else a)))
  out.append(("fprime_missing", f"{name}' is missing: dz = dout, as for the identity",
              np.ones_like(z)))
  for summary, values in _side_models(name, z, df):
    if not np.any(z == 0):
      out.append(("kink_side", summary, values))
      continue
    sides = {float(v) for v in np.concatenate([values[z < 0][:1], values[z > 0][:1], df[z == 0][:1]])}
    for v in sorted(sides):  # f'(0) is the candidate's own choice: any one-sided value will do
      out.append(("kink_side", summary, np.where(z == 0, v, values)))
  return out


def _softmax_models(z, y, dout):
  """(code, summary, dz) for a softmax's VJP."""
  inner = np.sum(dout * y, axis=-1, keepdims=True)
  y0 = _softmax_rows(z, axis=0)
  return [
      ("softmax_jacobian_diagonal", "only the diagonal y (1 - y) of the softmax Jacobian "
       "diag(y) - y y^T is used", dout * y * (1 - y)),
      ("softmax_jacobian_missing", "the softmax Jacobian is missing: dz = dout",
       dout.copy()),
      ("softmax_jacobian_offdiagonal", "only the -y y^T part of the softmax Jacobian is used: "
       "dz = -y <dout, y>, the diag(y) term missing", -y * inner),
      ("batch_sum_extra", "<dout, y> is summed over the whole batch, not per example",
       y * (dout - np.sum(dout * y))),
      ("transposed", "the softmax is taken over the batch axis (axis 0), not over each row",
       y0 * (dout - np.sum(dout * y0, axis=0, keepdims=True))),
  ]


def models(spec, case, truth) -> list:
  """(code, summary, {output: array}) bug models for this case; each changes one thing."""
  arr = case.arrays
  out = []
  if spec.kind in ("activation", "layer") and spec.name != "softmax":
    dout = arr["dout"]
    for code, summary, df in _elementwise_models(spec, case, truth):
      out.append((code, summary, _judge.from_delta(spec, case, dout * df)))
  if spec.kind == "softmax" or (spec.kind == "layer" and spec.name == "softmax"):
    y = truth.a if spec.kind == "layer" or spec.takes == "z" else arr["y"]
    for code, summary, delta in _softmax_models(truth.z, y, arr["dout"]):
      out.append((code, summary, _judge.from_delta(spec, case, delta)))
  if spec.kind in ("dense", "layer"):
    out += _dense_models(spec, case, truth)
  if spec.kind == "loss":
    out += _loss_models(spec, case, truth)
  return out


def _dense_models(spec, case, truth):
  arr = case.arrays
  x, W = arr["x"], arr["W"]
  e = truth.expected
  delta = arr["dout"] if spec.kind == "dense" else _delta(spec, case, truth)
  B = x.shape[0]
  out = []
  io = spec.layout == "in_out"  # the formulas in the candidate's layout: W (n_in, n_out) there
  right_dW, wrong_dW = ("x^T dout", "dout^T x") if io else ("dout^T x", "x^T dout")
  right_dx, wrong_dx = ("dout W^T", "dout W") if io else ("dout W", "dout W^T")
  if min(W.shape) > 1:  # (39) computed transposed and reshaped: a transpose where W is square
    right = e["dW"].T if io else e["dW"]  # in the candidate's layout
    wrong = right.T.reshape(right.shape)
    out.append(("transposed", f"dW is {wrong_dW} reshaped to the shape of {right_dW}, not "
                "transposed (39)", {"dW": wrong.T if io else wrong}))
  if W.shape[0] == W.shape[1]:
    out.append(("transposed", f"dW is transposed: {wrong_dW} in place of {right_dW} (39)",
                {"dW": e["dW"].T}))
    out.append(("transposed", f"dx uses the transpose of W: the layout of W confused, {wrong_dx} "
                f"in place of {right_dx} (26)", {"dx": delta @ W.T}))
    if spec.kind == "layer":
      wrong = "a^T delta in place of x^T delta" if io else "delta^T a in place of delta^T x"
      out.append(("dW_from_output", "dW is built from the layer's output a, not its input x: "
                  + wrong, {"dW": delta.T @ truth.a}))
  if spec.kind == "layer" and spec.name != "softmax":
    out.append(("fprime_missing", f"dx skips {spec.name}': {right_dx} in place of "
                f"{right_dx.replace('dout', 'delta')} (dW and db right)", {"dx": arr["dout"] @ W}))
  if B > 1:
    for which, row in (("first", 0), ("last", -1)):
      how = "" if which == "first" else " (an assignment where += was meant)"
      out.append(("batch_sum_missing", f"dW is the {which} example's term only, not the sum over "
                  f"the batch{how}", {"dW": np.outer(delta[row], x[row])}))
      if spec.bias:
        out.append(("batch_sum_missing", f"db is the {which} example's delta only, not the sum "
                    f"over the batch{how}", {"db": delta[row].copy()}))
    out.append(("batch_sum_extra", "dx is summed over the batch: every row holds sum_b dx_b",
                {"dx": np.broadcast_to(e["dx"].sum(axis=0), e["dx"].shape).copy()}))
  if spec.bias:
    out.append(("bias_missing", "db is zero: the bias gradient is missing", {"db": np.zeros_like(e["db"])}))
  return out


def _delta(spec, case, truth):
  """bpref's delta = dout f'(z) of a layer (34)."""
  return _kinds.activation_vjp(spec.name, truth.z, truth.a, case.arrays["dout"])


def _loss_models(spec, case, truth):
  arr = case.arrays
  t = arr["t"]
  B = t.shape[0]
  scale = 1.0 / B if spec.reduction == "mean" else 1.0
  name = spec.name
  out = []
  out_name = _kinds.output_names(spec)[0]
  if name in ("cross_entropy", "binary_cross_entropy"):
    z = arr["z"]
    y = _softmax_rows(z) if name == "cross_entropy" else 1 / (1 + np.exp(-z))
    if not _kinds.fused(spec):
      yy = arr["y"]
      fused = yy * t.sum(axis=-1, keepdims=True) - t if name == "cross_entropy" else yy - t
      out.append(("fused_form", "the candidate returns the fused dC/dz (y - t, the gradient on "
                  "the logits), not dC/dy; declare takes='probs' for that form",
                  {out_name: scale * fused}))
    else:
      with np.errstate(divide="ignore", invalid="ignore"):
        dy = -t / y if name == "cross_entropy" else -t / y + (1 - t) / (1 - y)
      out.append(("softmax_jacobian_missing", "the candidate returns dC/dy (the gradient on the "
                  "probabilities), not the fused dC/dz it declared", {out_name: scale * dy}))
      if name == "cross_entropy":
        out.append(("softmax_jacobian_diagonal", "dC/dy times the diagonal y (1 - y) of the softmax "
                    "Jacobian only: -t (1 - y)", {out_name: scale * (-t * (1 - y))}))
  if name in ("softmax_cross_entropy", "sigmoid_binary_cross_entropy") and spec.takes != "probs":
    z = arr["z"]
    out.append(("fprime_missing", f"the {'softmax' if name[0] == 's' and name[1] == 'o' else 'sigmoid'}"
                " of the logits is missing: z - t in place of f(z) - t", {out_name: scale * (z - t)}))
  return out


# ---------------------------------------------------------------- testing the hypotheses

def _explains(model: dict, outputs: dict, truth, wrong) -> bool:
  """Whether the model reproduces every wrong output and every output it changes."""
  if not set(wrong) <= set(model):
    return False
  slack = FIT_SLACK * truth.tol
  for k, v in model.items():
    if not _kinds.error(outputs[k], v, truth.bounds[k]) <= slack:
      return False
  return any(_kinds.error(v, truth.expected[k], truth.bounds[k]) > slack for k, v in model.items())


def _consistent(model: dict, outputs: dict, truth) -> bool:
  """On a confirmation case: the model reproduces what it changes (wherever it differs from
  bpref, the candidate must too; where it agrees with bpref, so must the candidate)."""
  slack = FIT_SLACK * truth.tol
  return all(_kinds.error(outputs[k], v, truth.bounds[k]) <= slack for k, v in model.items())


def _confirmation_labels(spec, label: Label | None) -> list:
  """Other value seeds, a larger case, a W that is not square (where a transpose and a reshape
  differ) and planted kinks (which tell f' missing from a derivative wrong below the kink)."""
  if label is None:
    return []
  B = label.dims[0]
  dims = (B + 1,) + tuple(d + 1 for d in label.dims[1:])
  out = [label._replace(seed=label.seed + 1), Label(dims, label.family, label.seed + 2)]
  if spec.kind in ("dense", "layer"):
    out.append(Label((B + 1, dims[1], dims[1] + 1), label.family, label.seed + 4))
  if "kink" in _kinds.families(spec) and label.family != "kink":
    out.append(Label(dims, "kink", label.seed + 3))
  return out


def _runs(ev, labels, answered=True):
  """The runs of ``labels`` that check something; with ``answered``, those with an answer to
  compare (not an exception or a wrong shape)."""
  out = []
  for label in labels:
    run = ev.run(_kinds.draw(ev.spec, label), forward=False)
    if run.verdict is not None and (run.verdict.outputs is not None or not answered):
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
    if not math.isfinite(c) or not _kinds.error(outputs[k], c * truth.expected[k],
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
  if spec.kind == "loss":
    K = origin.dims[1]
    refits += [("K", run) for run in _runs(ev, [origin._replace(dims=(B, K + 1)),
                                                  origin._replace(dims=(B, K + 2))])]
  for axis, run in refits:  # each refit must be a constant factor too
    k = wrong[0]
    ck = _fit(run.verdict.outputs[k], run.truth.expected[k])
    if not math.isfinite(ck) or not _kinds.error(run.verdict.outputs[k], ck * run.truth.expected[k],
                                                 run.truth.bounds[k]) <= FIT_SLACK * run.truth.tol:
      return []
    shape = run.case.arrays["dout" if "dout" in run.case.arrays else "t"].shape
    fits[(axis, shape[0] if axis == "B" else shape[1])] = ck
  fits[("B", B)] = c
  p = _power({n: v for (axis, n), v in fits.items() if axis == "B"})
  q = _power({n: v for (axis, n), v in fits.items() if axis == "K"}) if spec.kind == "loss" else 0
  if p is None or q is None:
    return [Finding("constant_factor", f"{', '.join(wrong)} off by a factor {c:.6g} that changes "
                    "with the batch size in no simple way", f"fits: {fits}")]
  K0 = origin.dims[1] if spec.kind == "loss" else 1
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

_RETURNS = {"dense": "(dx, dW, db)", "layer": "(dx, dW, db)", "activation": "dz = dout * f'(z)",
            "softmax": "dz = y * (dout - <dout, y>)", "loss": "dC/dy"}


def _passes_as(ev, alt, case, truth, args=None) -> bool:
  """Whether the candidate passes ``case`` when called as ``alt`` says (or on ``args``)."""
  args = _judge.candidate_args(alt, case) if args is None else args
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
        _kinds.error(out, truth.forward, truth.forward_bound) <= truth.forward_tol:
      return True
  outcome = ev.call("backward", _judge.forward_args(spec, case))
  result = outcome.result
  if outcome.status != "ok":
    return False
  if isinstance(result, list):  # (out, cache), as CS231n's forward functions return
    if spec.kind == "loss" or not result:  # a loss returns (C, dC/dy) rightly
      return False
    result = result[0]
  if not isinstance(result, (np.ndarray, np.number, float, int)):
    return False
  return _judge.judge_forward(spec, case, truth, outcome._replace(result=result)) is None


def _slip_tests(spec) -> list:
  """(code, summary, detail, test) for the slips this op may show; test(ev, case, truth,
  outputs) says whether the candidate, called the other way, is right on one case."""
  out = []
  kind = spec.kind
  if kind in ("dense", "layer") and spec.signature == "bpref":
    other = "in_out" if spec.layout == "out_in" else "out_in"
    shape = "(n_in, n_out)" if other == "in_out" else "(n_out, n_in)"
    alt = spec._replace(layout=other)
    out.append(("layout", f"the candidate takes W as {shape}: declare layout={other!r} "
                f"(--layout {other})", f"called with W as {shape} and its dW read back the "
                "same way, the candidate is right",
                lambda ev, case, truth, outputs, alt=alt: _passes_as(ev, alt, case, truth)))
  default_takes = spec.takes == _kinds.TAKES[kind][0]
  if kind in ("activation", "dense", "layer") and default_takes and spec.signature == "bpref":
    alt = spec._replace(signature="cs231n", layout="in_out")
    cache = {"activation": "z", "dense": "(x, W, b)", "layer": "((x, W, b), z)"}[kind]
    also = " and layout='in_out'" if kind != "activation" and spec.layout != "in_out" else ""
    out.append(("signature", f"the candidate takes (dout, cache), as CS231n's layer functions "
                f"do: pass signature='cs231n'{also} (--signature cs231n)",
                f"called as candidate(dout, cache) with cache = {cache}, the candidate is right",
                lambda ev, case, truth, outputs, alt=alt: _passes_as(ev, alt, case, truth)))
  if spec.signature == "cs231n":
    layouts = (spec.layout,) if kind == "activation" else dict.fromkeys((spec.layout, "out_in"))
    for layout in layouts:
      alt = spec._replace(signature="bpref", layout=layout)
      out.append(("signature", "the candidate takes bpref's argument order, not CS231n's "
                  "(dout, cache): drop signature='cs231n'"
                  + (f" and declare layout={layout!r}" if layout != spec.layout else ""),
                  "called with bpref's argument order, the candidate is right",
                  lambda ev, case, truth, outputs, alt=alt: _passes_as(ev, alt, case, truth)))
  if kind in ("activation", "softmax", "loss") and not (kind == "activation" and default_takes):
    first = _kinds.loss_input(spec) if kind == "loss" else spec.takes
    second = "dout" if kind != "loss" else "labels" if spec.targets == "labels" else "t"
    out.append(("arguments_swapped", f"the candidate takes its arguments the other way round, "
                f"({second}, {first}): pass lambda {first}, {second}: candidate({second}, {first})",
                "called with its arguments swapped, the candidate is right",
                lambda ev, case, truth, outputs: _passes_as(
                    ev, spec, case, truth, _judge.candidate_args(spec, case)[::-1])))
  forward = _judge.FORWARD_NAMES[kind]
  if spec.layout == "in_out":  # (7) with W of shape (n_in, n_out)
    forward = forward.replace("W^T", "W")
  out.append(("forward_as_backward", f"the candidate computes the forward pass {forward}, not "
              f"its backward: pass the backward function, which returns {_RETURNS[kind]}",
              f"its answer is bpref's forward output {forward}",
              lambda ev, case, truth, outputs: _computes_forward(ev, case, truth, outputs)))
  return out


def _slips(ev, minimal, origin) -> list:
  """A slip in calling check_op that explains the failure: the candidate, called another way
  (the other layout, CS231n's (dout, cache), its arguments swapped, as the forward), is right
  on the failing case and on ``SLIP_CASES`` other cases."""
  if ev.stopped or minimal.verdict.kind not in SLIP_KINDS or minimal.truth is None:
    return []
  others = []
  for label in _confirmation_labels(ev.spec, origin)[:SLIP_CASES]:
    case = _kinds.draw(ev.spec, label)
    truth = ev.truth(case)
    if truth is not None:
      others.append((case, truth, None))
  if not others:  # the failing case alone may agree with a slip by chance (dout = 1 entries)
    return []
  cases = [(minimal.case, minimal.truth, minimal.verdict.outputs)] + others
  for code, summary, detail, test in _slip_tests(ev.spec):
    if all(test(ev, case, truth, outputs) and not ev.stopped for case, truth, outputs in cases):
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
    run = ev.run(_kinds.draw(spec, origin._replace(dims=(3,) + origin.dims[1:])), forward=False)
    if run.verdict is not None and run.verdict.findings:  # B = 1 hides a missing batch sum
      return [f._replace(detail=f"{f.detail} (seen with B = 3; with B = 1 the shape alone cannot "
                         "tell)") for f in run.verdict.findings]
  if verdict.kind in ("exception", "shape") and spec.kind in ("dense", "layer"):
    return _where_it_runs(ev, verdict.kind)
  if verdict.kind != "numeric" or verdict.outputs is None:
    return []
  outputs = verdict.outputs
  wrong = [k for k, e in verdict.errors.items() if not e <= truth.tol]
  worst = max(verdict.errors.values())
  if worst <= FIT_SLACK * truth.tol:
    return [Finding("near_tolerance", f"within {FIT_SLACK:g} tolerances of bpref's answer: no bug "
                    "model can be told apart from it (a formula that loses digits, or arithmetic "
                    "in a lower precision)", f"worst error {worst:.2e}, tolerance {truth.tol:.1e}")]
  fitting = []  # a summary may come with variants (f'(0) at a kink): any one of them will do
  for code, summary, model in models(spec, minimal.case, truth):
    if (code, summary) not in fitting and _explains(model, outputs, truth, wrong):
      fitting.append((code, summary))
  findings = []
  if fitting:
    others = _runs(ev, _confirmation_labels(spec, origin), answered=False)[:CONFIRMATIONS]
    for code, summary in fitting:
      confirmed = True
      for run in others:
        variants = [m for _, s, m in models(spec, run.case, run.truth) if s == summary]
        if not variants and run.verdict.outputs is not None and code == "transposed":
          confirmed = False  # a transpose of a non-square W cannot be computed; the candidate did
          break
        if run.verdict.outputs is None:
          continue
        if variants and not any(_consistent(m, run.verdict.outputs, run.truth) for m in variants):
          confirmed = False
          break
      if confirmed:
        findings.append(Finding(code, summary, f"reproduces the candidate on the minimal case "
                                f"and on {len(others)} other case(s)"))
  if not findings:
    findings = _factor(ev, spec, minimal, wrong, origin)
  if not findings and spec.kind == "activation":
    findings = _kink_value(spec, minimal) or _one_side(spec, minimal)
  if not findings:
    findings = [Finding("undiagnosed", f"{', '.join(wrong)} wrong; no bug model reproduces it",
                        _implied(spec, minimal))]
  return findings


def _one_side(spec, minimal) -> list:
  """An elementwise derivative right on one side of 0 and wrong on the other."""
  z, dout = minimal.truth.z, minimal.case.arrays["dout"]
  cand, true, bound = minimal.verdict.outputs["dz"], minimal.truth.expected["dz"], minimal.truth.bounds["dz"]
  bad = np.abs(cand - true) > FIT_SLACK * minimal.truth.tol * np.maximum(bound, 1e-300)
  for side, mask in (("z < 0", z < 0), ("z > 0", z > 0)):
    other = ~mask & (z != 0)
    if np.any(bad) and not np.any(bad & ~mask) and np.any(other):
      implied = np.unique(np.round((cand / np.where(dout == 0, 1, dout))[bad], 6))[:6]
      return [Finding("kink_side" if spec.name in _activations.KINKED else "one_side",
                      f"{spec.name}' is wrong for {side} only, right on the other side",
                      f"the candidate's implied f' there: {implied.tolist()}")]
  return []


def _implied(spec, minimal) -> str:
  if spec.kind != "activation":
    return ""
  dout = minimal.case.arrays["dout"]
  cand = minimal.verdict.outputs["dz"]
  with np.errstate(divide="ignore", invalid="ignore"):
    implied = np.where(dout == 0, np.nan, cand / dout)
  return (f"implied f' at z = {np.round(minimal.truth.z.ravel()[:6], 6).tolist()}: "
          f"{np.round(implied.ravel()[:6], 6).tolist()} (bpref: "
          f"{np.round(_kinds.df(spec.name, minimal.truth.z).ravel()[:6], 6).tolist()})")


def _where_it_runs(ev, kind) -> list:
  """A candidate that fails to run on non-square W may run on a square one: diagnose it there."""
  for family in ("normal", "plain"):
    run = ev.run(_kinds.draw(ev.spec, Label((2, 3, 3), family, ev.spec.seed)), forward=False)
    if run.verdict is not None and run.verdict.kind == "numeric":
      found = _diagnose(ev, run, run.case.label)
      return [f._replace(summary=f"{f.summary} (seen on a square W, where it runs; on the minimal "
                         f"non-square case it ends in {'an exception' if kind == 'exception' else 'a wrong shape'})")
              for f in found if f.code not in ("undiagnosed", "near_tolerance")]
  return []


def _kink_value(spec, minimal) -> list:
  """Wrong only at exact kinks, with an f'(0) that no convention uses (outside the subdifferential)."""
  z, dout = minimal.truth.z, minimal.case.arrays["dout"]
  if spec.name not in _activations.KINKED or not np.any(z == 0):
    return []
  cand, true, bound = minimal.verdict.outputs["dz"], minimal.truth.expected["dz"], minimal.truth.bounds["dz"]
  bad = np.abs(cand - true) > FIT_SLACK * minimal.truth.tol * np.maximum(bound, 1e-300)
  if not np.any(bad) or np.any(bad & (z != 0)) or np.any(dout[bad] == 0):
    return []
  values = np.unique(np.round(cand[bad] / dout[bad], 6))
  left = float(_kinds.df(spec.name, -np.ones((1, 1)) * 1e-300)[0, 0])
  right = float(_kinds.df(spec.name, np.ones((1, 1)) * 1e-300)[0, 0])
  lo, hi = min(left, right), max(left, right)
  return [Finding("kink_value", f"{spec.name}'(0) = {values.tolist()} at the kink, outside the "
                  f"subdifferential [{lo:g}, {hi:g}]: no convention, a bug",
                  "every other entry is right")]
