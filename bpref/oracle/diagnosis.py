"""Diagnosis: from a minimal failing case to the most likely bug.

Each finding is a hypothesis that was tested, never a guess from the error
size alone:

* a constant factor c with grad_candidate = c grad_bpref is fitted by least
  squares, then refitted on the same network with another batch size B and
  another output width K; how c moves tells c = c0 B^p K^q, and (c0, p, q)
  names the cause (sum vs mean, the 1/2 convention, a mean over outputs, x B,
  a sign flip);
* bug models: the backward pass rerun with one deliberate change (f' at a_l
  instead of z_l, f' of the output layer missing, an a-form derivative fed z,
  the softmax Jacobian's diagonal only); a model that reproduces the
  candidate to rounding is the diagnosis;
* transposes, bias gradients and the layer where the candidate's implied
  delta first departs from bpref's are read off the arrays;
* counterfactuals: the minimal case rerun with B = 1, fewer layers, square
  layers, uniform activations, one output, or one activation swapped out;
  "passes there, fails here" is a finding ("correct only for B = 1").
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from bpref import activations as _activations
from bpref.oracle import spec as _spec
from bpref.oracle import truth as _truth

FIT_SLACK = 100.0
"""A model reproduces the candidate when its error is within FIT_SLACK x tol: the
candidate's own rounding differs from the model's float64 rounding by more than tol
allows for a correct gradient, but not by orders of magnitude."""


class Finding(NamedTuple):
  """One tested explanation: ``code`` for programs, ``summary`` and ``detail`` for people."""
  code: str
  summary: str
  detail: str = ""

  def to_json(self) -> dict:
    return {"code": self.code, "summary": self.summary, "detail": self.detail}


A_FORM_DERIVATIVES = {
    "sigmoid": lambda v: v * (1 - v),
    "tanh": lambda v: 1 - v * v,
    "softplus": lambda v: 1 - np.exp(-v),
}
"""Derivatives written in terms of the output a = f(z), the form that gets fed the wrong argument."""


def _flat(arrays) -> np.ndarray:
  return np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays]) if arrays else np.zeros(0)


def _fit(cand, true, mags):
  """(c, residual): least-squares c in cand ~ c true, residual normwise against the magnitudes."""
  c_flat, t_flat, m_flat = _flat(cand), _flat(true), _flat(mags)
  denom = float(t_flat @ t_flat)
  if denom == 0:
    return math.nan, math.inf
  c = float(c_flat @ t_flat) / denom
  scale = float(np.linalg.norm(m_flat)) or 1.0
  return c, float(np.linalg.norm(c_flat - c * t_flat)) / scale


def _grads(result):
  return list(result.dW) + list(result.db or ())


def _truth_grads(truth, with_bias=True):
  return list(truth.dW) + (list(truth.db) if (with_bias and truth.db is not None) else [])


def _mags(truth, with_bias=True):
  return list(truth.mag_W) + (list(truth.mag_b) if (with_bias and truth.mag_b is not None) else [])


_SIMPLE = ((1.0, ""), (2.0, "2"), (0.5, "1/2"), (4.0, "4"), (0.25, "1/4"))


def _name_base(c0):
  for value, text in _SIMPLE:
    for sign in (1, -1):
      if abs(c0 - sign * value) <= 1e-6 * value:
        return sign, value, text
  return None


def _power(c_a, c_b, n_a, n_b):
  """p in {-1, 0, 1} with c_b / c_a = (n_b / n_a)^p, or None."""
  if n_a == n_b or not (math.isfinite(c_a) and math.isfinite(c_b)) or c_a == 0:
    return None
  ratio = c_b / c_a
  for p in (0, 1, -1):
    if abs(ratio - (n_b / n_a) ** p) <= 1e-6 * abs(ratio):
      return p
  return None


class Diagnoser:
  """Runs the experiments on a minimal failing case; see the module docstring."""

  def __init__(self, ev, minimal):
    self.ev = ev
    self.spec = ev.spec
    self.minimal = minimal
    self.arch = minimal.arch
    self.case, truth = ev.case_and_truth(self.arch)
    self.truth = _truth.with_deltas(self.case, truth)
    self.tol = minimal.tolerance

  def _try(self, arch):
    if arch is None or not _spec.in_domain(arch, self.spec) or self.ev.stopped:
      return None
    results = self.ev.run([arch], "diagnose")
    return results[0] if results else None

  def _fits(self, model_grads, with_bias=True) -> bool:
    cand = _grads(self.minimal) if with_bias else list(self.minimal.dW)
    err = float(np.linalg.norm(_flat(cand) - _flat(model_grads)))
    scale = float(np.linalg.norm(_flat(_mags(self.truth, with_bias)))) or 1.0
    return err / scale <= FIT_SLACK * self.tol

  # -------------------------------------------------------------- the experiments

  def factor(self, with_bias=True, which="gradient"):
    """A Finding for grad_candidate = c grad_bpref, or None."""
    r = self.minimal
    cand = _grads(r) if with_bias else list(r.dW)
    true = _truth_grads(self.truth, with_bias)
    c, resid = _fit(cand, true, _mags(self.truth, with_bias))
    if not (math.isfinite(c) and resid <= FIT_SLACK * self.tol) or abs(c - 1) <= 1e-9:
      return None
    B, K = self.arch.batch, self.arch.sizes[-1]
    p = q = 0
    other_b = self._other(_spec.batches(self.spec), B)
    if other_b is not None:
      rb = self._try(self.arch._replace(batch=other_b))
      cb = self._refit(rb, with_bias)
      p = _power(c, cb, B, other_b) if cb is not None else None
    min_k = 2 if self.arch.activations[-1] == "softmax" else 1
    other_k = self._other(tuple(w for w in _spec.widths(self.spec) if w >= min_k), K)
    if other_k is not None:
      rk = self._try(self.arch._replace(sizes=self.arch.sizes[:-1] + (other_k,)))
      ck = self._refit(rk, with_bias)
      q = _power(c, ck, K, other_k) if ck is not None else None
    base = _name_base(c / (B ** (p or 0) * K ** (q or 0)))
    if base is None or p is None or q is None:
      # an unnamed factor is a finding only if other values give the same factor (on a tiny
      # case any wrong gradient is some multiple of the right one)
      other = self._try(self.arch._replace(seed=self.arch.seed + 1))
      c2 = self._refit(other, with_bias)
      if c2 is None or abs(c2 - c) > 1e-6 * abs(c):
        return None
      return Finding("constant_factor", f"the {which} is {c:.6g} x bpref's",
                     f"a constant factor {c:.6g} (B = {B}, K = {K}) that does not follow B or K "
                     "in a simple way")
    sign, value, text = base
    if sign < 0 and value == 1 and p == 0 and q == 0:
      return Finding("sign_flip", f"the {which} has the wrong sign (-1 x bpref's)",
                     "likely t - y where y - t belongs (dC/dy of the loss), or the ascent direction "
                     "returned instead of the gradient")
    parts, causes = [], []
    if sign < 0:
      parts.append("-1")
      causes.append("a sign flip (t - y instead of y - t)")
    if value != 1:
      parts.append(text)
      loss = self.arch.loss
      if value == 2 and loss == "half_squared_error":
        causes.append("the 1/2 of C = 1/2 sum (t - y)^2 was dropped: dC/dy = 2 (y - t) belongs to "
                      "squared_error (the 1/2 convention)")
      elif value == 0.5 and loss == "squared_error":
        causes.append("the 2 of dC/dy = -2 (t - y) is missing: y - t is the gradient of "
                      "half_squared_error (the 1/2 convention)")
      else:
        causes.append(f"a factor {text} (the 1/2 convention of the loss, or a doubled term)")
    if p == 1:
      parts.append("B")
      causes.append("summed over the batch where the mean was declared (reduction='sum' behaviour)"
                    if self.spec.reduction == "mean" else "multiplied by the batch size B")
    elif p == -1:
      parts.append("1/B")
      causes.append("averaged over the batch where the sum was declared (reduction='mean' "
                    "behaviour)" if self.spec.reduction == "sum" else "divided by B twice")
    if q == -1:
      parts.append("1/K")
      causes.append("a mean over the K outputs as well as the batch (as torch.nn.MSELoss and "
                    "scikit-learn's MLP do)")
    elif q == 1:
      parts.append("K")
      causes.append("multiplied by the number of outputs K")
    what = " x ".join(parts)
    return Finding("constant_factor", f"the {which} is {what} x bpref's (factor {c:.6g} at B = {B}, "
                   f"K = {K})", "likely cause: " + "; ".join(causes))

  @staticmethod
  def _other(choices, current):
    bigger = [v for v in choices if v > current]
    smaller = [v for v in choices if v < current and v >= 1]
    if bigger:
      return bigger[0]
    return smaller[-1] if smaller else None

  def _refit(self, result, with_bias):
    if result is None or result.dW is None or result.kind in ("structure", "shape"):
      return None
    _, truth = self.ev.case_and_truth(result.arch)
    c, resid = _fit(_grads(result) if with_bias else list(result.dW),
                    _truth_grads(truth, with_bias), _mags(truth, with_bias))
    return c if resid <= FIT_SLACK * result.tolerance else None

  def bias(self):
    """Bias findings when every dW is right and some db is wrong."""
    r = self.minimal
    if r.db is None:
      return None
    bad_w = [k for k, e in r.errors.items() if k.startswith("W") and not e <= self.tol]
    bad_b = [k for k, e in r.errors.items() if k.startswith("b") and not e <= self.tol]
    if bad_w or not bad_b:
      return None
    layers = ", ".join(k[1:] for k in bad_b)
    if all(not np.any(r.db[int(k[1:]) - 1]) for k in bad_b):
      return Finding("bias_missing", f"the bias gradient is missing (zero) in layer(s) {layers}",
                     "dC/db_l = sum over the batch of delta_l; the weights' gradients are right")
    cand = [r.db[int(k[1:]) - 1] for k in bad_b]
    true = [self.truth.db[int(k[1:]) - 1] for k in bad_b]
    mags = [self.truth.mag_b[int(k[1:]) - 1] for k in bad_b]
    c, resid = _fit(cand, true, mags)
    detail = "the weights' gradients are right"
    B = self.arch.batch
    if math.isfinite(c) and resid <= FIT_SLACK * self.tol:
      detail += f"; db is {c:.6g} x bpref's"
      if B > 1 and abs(c - 1 / B) <= 1e-6:
        detail += " (1/B: a mean over the batch where dC/db_l = sum_b delta_l,b)"
      elif B > 1 and abs(c - B) <= 1e-6 * B:
        detail += " (xB)"
    else:
      first = self.truth.deltas
      for k in bad_b:
        l = int(k[1:])
        if np.allclose(r.db[l - 1], first[l - 1][0], rtol=1e-6, atol=0):
          detail += f"; db_{l} is delta_{l} of the first example only (the batch sum is missing)"
    return Finding("bias_wrong", f"the bias gradient is wrong in layer(s) {layers}", detail)

  def transposed(self):
    r = self.minimal
    hits = []
    for l, (c, t) in enumerate(zip(r.dW, self.truth.dW), start=1):
      if c.shape[0] == c.shape[1] and not r.errors[f"W{l}"] <= self.tol:
        err = float(np.linalg.norm(c.T - t)) / (float(np.linalg.norm(self.truth.mag_W[l - 1])) or 1)
        if err <= FIT_SLACK * self.tol:
          hits.append(l)
    if hits:
      return Finding("transposed", f"dW is transposed in layer(s) {', '.join(map(str, hits))}",
                     "dC/dW_l = delta_l^T a_(l-1) has shape (n_l, n_(l-1)); the candidate returned "
                     "a_(l-1)^T delta_l (square layers hide this from a shape check)")
    return None

  def models(self):
    """Bug models that reproduce the candidate."""
    acts = sorted(set(self.arch.activations))
    out = []
    tried = []
    if _activations.get(self.arch.activations[-1]).elementwise and self.arch.activations[-1] != "identity":
      tried.append((dict(output_fprime=False), Finding(
          "output_fprime_missing", "the output layer's f' is missing: delta_L = dC/dy",
          f"delta_L = dC/dy * f'_L(z_L) (34); the candidate drops f'_L = {self.arch.activations[-1]}' "
          "(invisible with an identity output layer)")))
    for name in acts:
      if name in ("identity", "relu", "softmax"):
        continue
      tried.append((dict(df_at="a", layers=tuple(l for l, a in enumerate(self.arch.activations, 1)
                                                if a == name)),
                    Finding("fprime_at_a", f"f' of {name} is evaluated at a_l instead of z_l",
                            f"{name}'(a_l) = {name}'({name}(z_l)) was used where (37) needs "
                            f"{name}'(z_l)")))
      if name in A_FORM_DERIVATIVES:
        form = A_FORM_DERIVATIVES[name]
        tried.append((dict(df_override={name: (lambda z, a, form=form: form(z))}),
                      Finding("activation_derivative",
                              f"wrong derivative of {name}: its a-form derivative was fed z",
                              f"{name}' written in terms of a = {name}(z) (e.g. a (1 - a)) was "
                              "evaluated at z_l instead of a_l")))
    if self.arch.activations[-1] == "softmax":
      tried.append((dict(softmax_diagonal=True), Finding(
          "softmax_jacobian_diagonal", "the softmax output uses only the diagonal a (1 - a) of its "
          "Jacobian", "softmax is not elementwise: delta_L = a * (g - <g, a>) needs the full "
          "Jacobian diag(a) - a a^T")))
    for kwargs, finding in tried:
      dW, db = _truth.backprop_variant(self.case, self.truth, **kwargs)
      if self._fits(list(dW) + list(db or ())):
        out.append(finding)
    return out

  def layers(self):
    """Per-layer errors and the layer where the implied delta departs; a Finding when localized."""
    r = self.minimal
    L = self.arch.depth
    per_layer = []
    for l in range(1, L + 1):
      errs = [r.errors.get(f"W{l}", 0.0)] + ([r.errors[f"b{l}"]] if f"b{l}" in r.errors else [])
      per_layer.append(max(errs))
    bad = [l for l in range(1, L + 1) if not per_layer[l - 1] <= self.tol]
    implied = self.implied_delta_errors()
    if not bad:
      return per_layer, implied, None, None
    top = max(bad)
    if L >= 2 and bad == list(range(1, top + 1)) and top < L:
      return per_layer, implied, top, Finding(
          "wrong_from_layer", f"wrong from layer {top} down: "
          + (f"layer {L} is right" if top + 1 == L else f"layers {top + 1}..{L} are right"),
          f"the candidate's delta first departs from bpref's at layer {top}: the step "
          f"delta_{top} = (delta_{top + 1} W_{top + 1}) f'_{top}(z_{top}) (37) is wrong there "
          f"(activation {self.arch.activations[top - 1]})")
    return per_layer, implied, top, None

  def implied_delta_errors(self):
    """||delta_l(candidate) - delta_l|| / ||delta_l||, delta_l recovered from db_l (B = 1) or dW_l."""
    r = self.minimal
    out = []
    for l in range(1, self.arch.depth + 1):
      true = self.truth.deltas[l - 1]
      A = self.truth.a[l - 1]
      if r.db is not None and self.arch.batch == 1:
        est = r.db[l - 1][None, :]
      elif np.linalg.matrix_rank(A) == A.shape[0]:
        est = (r.dW[l - 1] @ np.linalg.pinv(A.T)).T  # dW_l = D_l^T A_(l-1) (39) solved for D_l
      else:
        out.append(None)
        continue
      scale = float(np.linalg.norm(true)) or 1.0
      out.append(float(np.linalg.norm(est - true)) / scale)
    return out

  def activation_swap(self, departure):
    """Swap out the activation of the departure layer everywhere: a pass names its derivative."""
    names = []
    if departure is not None:
      names.append(self.arch.activations[departure - 1])
    names += [a for a in self.arch.activations if a not in names]
    plain_h, plain_o = _spec.simplest_hidden(self.spec), _spec.simplest_output(self.spec, self.arch.loss)
    for name in names:
      if name in (plain_h, plain_o, "softmax"):
        continue
      acts = tuple((plain_o if i == self.arch.depth - 1 else plain_h) if a == name else a
                   for i, a in enumerate(self.arch.activations))
      if acts == self.arch.activations:
        continue
      r = self._try(self.arch._replace(activations=acts))
      if r is not None and r.passed:
        return Finding("activation_derivative", f"wrong derivative of {name}",
                       f"the same network passes with {name} replaced by {plain_h}; "
                       + self._implied_fprime(name))
    return None

  def _implied_fprime(self, name) -> str:
    r = self.minimal
    if self.arch.batch != 1 or r.db is None:
      return f"check {name}' in the candidate"
    for l in range(self.arch.depth, 0, -1):
      if self.arch.activations[l - 1] != name:
        continue
      back = (self.truth.g if l == self.arch.depth
              else self.truth.deltas[l] @ np.asarray(self.case.weights[l], np.float64))[0]
      z = self.truth.z[l - 1][0]
      ok = np.abs(back) > 1e-8
      if not np.any(ok):
        continue
      implied = r.db[l - 1][ok] / back[ok]
      true = np.asarray(_activations.get(name).df(z[ok]), np.float64)
      pairs = ", ".join(f"z={zz:.3g}: {ii:.4g} (should be {tt:.4g})"
                        for zz, ii, tt in list(zip(z[ok], implied, true))[:3])
      missing = " (all 1: the f' factor is missing)" if np.allclose(implied, 1, rtol=1e-6) else ""
      return f"the candidate's implied {name}' at layer {l}: {pairs}{missing}"
    return f"check {name}' in the candidate"

  def conditions(self):
    """Counterfactuals on the minimal case: 'correct only for ...' findings."""
    a = self.arch
    out = []
    exps = []
    if a.batch > 1:
      exps.append(("only_batch_1", a._replace(batch=1), "correct only for B = 1",
                   f"the same network passes with B = 1 and fails with B = {a.batch}: a batch-size "
                   "bug (the batch sum or mean, or rows and columns mixed up)"))
    if a.depth >= 3:
      exps.append(("only_depth_2", a._replace(sizes=a.sizes[1:], activations=a.activations[1:]),
                   "correct only for depth <= 2",
                   f"fails at depth {a.depth}; removing a layer makes it pass: the delta "
                   "recursion (37) is wrong past the first hidden layer"))
    if len(set(a.sizes)) > 1:
      w = max(a.sizes)
      exps.append(("only_square", a._replace(sizes=(w,) * len(a.sizes)),
                   "correct only for square layers",
                   "fails with non-square layers and passes with square ones: n_l and n_(l-1) "
                   "are mixed up (a transpose, or a loop bound)"))
    hidden = a.activations[:-1]
    if len(set(a.activations)) > 1 and a.activations[-1] != "softmax":
      uniform = a.activations[-1]
      if _spec.in_domain(a._replace(activations=(uniform,) * a.depth), self.spec):
        exps.append(("only_uniform_activations", a._replace(activations=(uniform,) * a.depth),
                     "correct only for uniform activations",
                     "fails when layers have different activations and passes when every layer "
                     "has the same: one layer's f' is used for all (an index bug)"))
    elif len(set(hidden)) > 1:
      exps.append(("only_uniform_activations",
                   a._replace(activations=(hidden[0],) * len(hidden) + a.activations[-1:]),
                   "correct only for uniform activations",
                   "fails with mixed hidden activations and passes with uniform ones"))
    if a.sizes[-1] > 1 and a.activations[-1] != "softmax":
      exps.append(("only_one_output", a._replace(sizes=a.sizes[:-1] + (1,)),
                   "correct only for one output",
                   f"fails with K = {a.sizes[-1]} outputs and passes with K = 1"))
    for code, arch, summary, detail in exps:
      r = self._try(arch)
      if r is not None and r.passed:
        out.append(Finding(code, summary, detail))
    return out

  def layout(self):
    """The minimal case in the other weight layout: a pass means the layout was misdeclared."""
    import dataclasses
    other = "in_out" if self.spec.layout == "out_in" else "out_in"
    if self.ev.stopped:
      return None
    results = self.ev.run([self.arch], "diagnose", dataclasses.replace(self.spec, layout=other))
    if results and results[0].passed:
      return Finding("layout", f"the candidate uses the {other} weight layout; declare "
                     f"layout={other!r}", f"with W_l given as "
                     f"{'(n_(l-1), n_l)' if other == 'in_out' else '(n_l, n_(l-1))'} and dW "
                     "returned the same way, the minimal case passes")
    return None

  def loss(self):
    r = self.minimal
    if r.loss is None or self.truth.loss == 0:
      return None
    ratio = r.loss / self.truth.loss
    B, K = self.arch.batch, self.arch.sizes[-1]
    names = {1 / K: "1/K (a mean over the K outputs)", K: "K", 0.5: "1/2", 2.0: "2", B: "B",
             1 / B: "1/B"}
    named = [text for v, text in names.items() if abs(ratio - v) <= 1e-6 * v]
    what = named[0] if named else f"{ratio:.6g}"
    grad_ok = all(e <= self.tol for e in r.errors.values())
    detail = ("the gradient is right, so the reported loss is not the function it is the gradient of"
              if grad_ok else "the loss and the gradient also disagree with bpref")
    return Finding("loss_inconsistent", f"the returned loss is {what} x the loss its gradient belongs "
                   f"to", detail + " (compare scikit-learn issue #8349)")

  # -------------------------------------------------------------- all together

  def run(self):
    """(findings, per-layer errors, implied-delta errors)."""
    r = self.minimal
    findings = []
    per_layer, implied = [], []
    if r.kind in ("exception", "shape", "numeric", "structure"):
      f = self.layout()
      if f is not None:
        findings.append(f)
    if r.kind == "loss":
      findings.append(self.loss())
    elif r.kind == "numeric":
      per_layer, implied, departure, where = self.layers()
      for f in (self.factor(), self.transposed(), self.bias()):
        if f is not None:
          findings.append(f)
      if not findings:
        findings += self.models()
      if not findings:
        f = self.activation_swap(departure)
        if f is not None:
          findings.append(f)
      findings += self.conditions()
      if where is not None:
        findings.append(where)
      if r.loss is not None:
        f = self.loss()
        if f is not None and f.detail.startswith("the gradient is right"):
          findings.append(f)
    else:
      findings.append(Finding(r.kind if r.kind != "shape" or "transposed" not in r.message
                              else "transposed", _first_line(r.message), r.message))
      if r.kind in ("exception", "shape", "structure", "nonfinite", "dtype"):
        findings += self.conditions()
      if r.dW is not None:
        per_layer = [max(r.errors.get(f"W{l}", 0.0), r.errors.get(f"b{l}", 0.0))
                     for l in range(1, self.arch.depth + 1)] if r.errors else []
    findings = [f for f in findings if f is not None]
    if not findings:
      findings.append(Finding("unexplained", "the gradient is wrong; no simple model explains it",
                              "see the per-array errors and the minimal case"))
    return findings, per_layer, implied


def _first_line(text: str) -> str:
  return text.strip().splitlines()[0] if text.strip() else text


def diagnose(ev, minimal):
  """(findings, per-layer errors, implied-delta errors) for the minimal failing case."""
  return Diagnoser(ev, minimal).run()
