"""The five classic op kinds as records: dense, activation, softmax, loss and layer.

Their values and bpref's answer on them are in ``bpref.oracle.ops._kinds``; this module gives
the engine what it asks of a record (``bpref.oracle.ops.record.OpKind``): the options each kind
takes, the candidate's arguments in bpref's and CS231n's signatures, the returns, the convention
notes (gelu's tanh form, softplus's threshold, kink values) and the bug models of the diagnosis
(f' at a instead of z, a textbook form of f' from ``bpref.oracle.forms`` fed z, f' missing, a
derivative wrong on one side of a kink, the softmax Jacobian's diagonal only, dW transposed, the
first example's term in place of a sum over the batch, a fused loss form where dC/dy was asked
for, ...).
"""

from __future__ import annotations

import numpy as np

from bpref import activations as _activations
from bpref import losses as _losses
from bpref.oracle import forms as _forms
from bpref.oracle import judge as _network_judge
from bpref.oracle.diagnosis import FIT_SLACK, Finding
from bpref.oracle.ops import _kinds
from bpref.oracle.ops.record import Label, Malformed, Model, OpKind, error

FORWARD_NAMES = {"dense": "z = x W^T + b", "layer": "a = f(x W^T + b)", "activation": "a = f(z)",
                 "softmax": "y = softmax(z)", "loss": "the loss C"}


GELU_TWINS = {"gelu": "gelu_tanh", "gelu_tanh": "gelu"}
"""gelu with erf and its tanh approximation: each is the other's convention."""


GELU_NOTE = {
    "gelu": ("convention note: the candidate computes gelu's tanh approximation "
             "0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3))) (gelu_tanh, as GPT-2 and llm.c do), "
             "bpref's gelu is exact, z Phi(z) with erf; check it as gelu_tanh to hold it to its own form"),
    "gelu_tanh": ("convention note: the candidate computes the exact gelu z Phi(z) (erf), not the tanh "
                  "approximation gelu_tanh; check it as gelu to hold it to its own form"),
}


def candidate_args(spec, case) -> tuple:
  """The arguments of one call, fresh copies in the candidate's dtype, layout and signature."""
  args = _bpref_args(spec, case)
  if spec.signature == "cs231n":  # (dout, cache)
    if spec.kind == "activation":
      return (args[1], args[0])
    x, W, b = args[:3]  # W in the in_out layout, as make_spec requires for this signature
    cache = (x, W, b) if spec.kind == "dense" else ((x, W, b), x @ W + (0 if b is None else b))
    return (args[3], cache)
  return args


def _bpref_args(spec, case) -> tuple:
  arr, dt = case.arrays, np.dtype(spec.dtype)
  if spec.kind in ("dense", "layer"):
    W = arr["W"].T if spec.layout == "in_out" else arr["W"]
    b = arr.get("b")
    return (arr["x"].astype(dt), np.array(W, dt), None if b is None else b.astype(dt),
            arr["dout"].astype(dt))
  if spec.kind == "activation":
    return (arr["a" if spec.takes == "a" else "z"].astype(dt), arr["dout"].astype(dt))
  if spec.kind == "softmax":
    return (arr["y" if spec.takes == "y" else "z"].astype(dt), arr["dout"].astype(dt))
  first = arr[_kinds.loss_input(spec)].astype(dt)
  if spec.targets == "labels":
    return (first, arr["labels"].astype(np.int64))
  return (first, arr["t"].astype(dt))


def forward_args(spec, case) -> tuple:
  args = _bpref_args(spec, case)
  if spec.kind in ("dense", "layer"):
    return args[:3]
  if spec.kind == "loss":
    return args
  return (case.arrays["z"].astype(np.dtype(spec.dtype)),)


ARG_NAMES = {"dense": ("x", "W", "b", "dout"), "layer": ("x", "W", "b", "dout"),
             "activation": ("z or a", "dout"), "softmax": ("z or y", "dout"), "loss": ("y", "t")}


def _shape_findings(spec, case, name, got, want) -> tuple:
  """(message, findings) for a returned array of the wrong shape."""
  B = case.arrays["dout" if "dout" in case.arrays else "t"].shape[0]
  msg = f"{name} has shape {got}, expected {want}"
  found = []
  if len(got) == 2 and got == want[::-1] and got != want:
    if name == "dW":
      other = "in_out" if spec.layout == "out_in" else "out_in"
      formula = "x^T dout" if spec.layout == "in_out" else "dout^T x"  # (39) in the layout
      found.append(Finding("transposed", "dW is transposed",
                           f"dW = {formula} has shape {want} in the {spec.layout} layout; {got} is "
                           f"its transpose (pass layout={other!r} if that is your W's layout)"))
    else:
      found.append(Finding("transposed", f"{name} is transposed",
                           f"{name} has one row per example: shape {want}, not {got}"))
  elif name == "db" and got == (B,) and B != want[0]:
    found.append(Finding("batch_sum_missing", "db is summed over the units (axis 1), not over "
                         "the batch (axis 0)", f"db = sum_b dout_b has one entry per unit, "
                         f"shape {want}; the candidate returned one per example, {got}"))
  elif name == "db" and got == (B, want[0]) and B > 1:
    found.append(Finding("batch_sum_missing", "db is not summed over the batch",
                         "db = sum_b dout_b has one entry per unit; the candidate returned one "
                         "row per example"))
  elif name in ("dx", "dz", "dy") and len(want) == 2 and got == (want[1],) and want[0] > 1:
    found.append(Finding("batch_sum_extra", f"{name} is summed over the batch",
                         f"{name} has one row per example, shape {want}; a sum over the batch "
                         f"left {got}"))
  elif int(np.prod(got)) == int(np.prod(want)):
    msg += f" (the right number of entries: reshape it to {want})"
  return msg, tuple(found)


SOFTPLUS_THRESHOLD = 20.0
"""torch.nn.functional.softplus (threshold=20) is linear above it, so its derivative is 1 there
where sigmoid(z) = 1 - exp(-z) is not: 2e-9 below 1 at z = 20, seen in float64 only."""


SOFTPLUS_NOTE = ("convention note: the candidate's softplus is linear for z > 20 (torch's "
                 "threshold), so its derivative is 1 there, where bpref's is sigmoid(z) = "
                 "1 - exp(-z) (at most 2e-9 from 1)")


def convention(spec, case, truth, outputs) -> str:
  """A note naming the convention the candidate follows, when that is the only difference."""
  name = spec.name if spec.kind in ("activation", "layer") else None
  if name in GELU_TWINS:
    twin = _kinds.compute(spec, case, name=GELU_TWINS[name])
    if all(error(outputs[k], twin.expected[k], np.maximum(truth.bounds[k], twin.bounds[k]))
           <= truth.tol for k in outputs):
      return GELU_NOTE[name]
  if name == "softplus" and truth.z is not None and np.any(truth.z > SOFTPLUS_THRESHOLD):
    df = np.where(truth.z > SOFTPLUS_THRESHOLD, 1.0, _kinds.df(name, truth.z))
    alt = from_delta(spec, case, case.arrays["dout"] * df)
    if all(error(outputs[k], alt[k], truth.bounds[k]) <= truth.tol for k in outputs):
      return SOFTPLUS_NOTE
  if name not in _network_judge.KINK_CONVENTIONS or truth.z is None or not np.any(truth.z == 0):
    return ""
  options = _network_judge.KINK_CONVENTIONS[name]
  for value, text in options[1:]:
    df = np.where(truth.z == 0, value, _kinds.df(name, truth.z))
    alt = from_delta(spec, case, case.arrays["dout"] * df)
    if all(error(outputs[k], alt[k], truth.bounds[k]) <= truth.tol for k in outputs):
      return (f"convention note: at exact kinks the candidate uses {text}, bpref uses "
              f"{options[0][1]}; both are valid subgradients")
  return ""


def from_delta(spec, case, delta) -> dict:
  """The outputs that follow from delta = dC/dz: dz itself, or a layer's delta W, delta^T x, sum_b delta."""
  if spec.kind in ("activation", "softmax"):
    return {"dz": delta}
  arr = case.arrays
  out = {"dx": delta @ arr["W"], "dW": delta.T @ arr["x"]}  # (26), (39)
  if spec.bias:
    out["db"] = delta.sum(axis=0)
  return out


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
      out.append((code, summary, from_delta(spec, case, dout * df)))
  if spec.kind == "softmax" or (spec.kind == "layer" and spec.name == "softmax"):
    y = truth.a if spec.kind == "layer" or spec.takes == "z" else arr["y"]
    for code, summary, delta in _softmax_models(truth.z, y, arr["dout"]):
      out.append((code, summary, from_delta(spec, case, delta)))
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
    held = W.T if io else W  # W as the candidate holds it, read back with its two sizes swapped
    misread = held.reshape(held.shape[::-1])  # C indexing W[i * n_out + o] for W[o * n_in + i]
    out.append(("transposed", "dx reads W's memory with its two sizes swapped (an index "
                "i * cols + j where j * rows + i was meant): W reshaped, not transposed (26)",
                {"dx": delta @ (misread if io else misread.T)}))
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


_RETURNS = {"dense": "(dx, dW, db)", "layer": "(dx, dW, db)", "activation": "dz = dout * f'(z)",
            "softmax": "dz = y * (dout - <dout, y>)", "loss": "dC/dy"}


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


# ---------------------------------------------------------------- the records

_CACHE = {"activation": "z", "dense": "(x, W, b)", "layer": "((x, W, b), z)"}


class Classic(OpKind):
  """One of the five classic kinds; ``bpref.oracle.ops._kinds`` holds their values and truth."""

  signatures = _kinds.SIGNATURES
  layouts = ("out_in", "in_out")

  def __init__(self, name: str, summary: str):
    self.name, self.summary = name, summary
    self.takes = _kinds.TAKES[name]
    self.names = (tuple(_activations.ACTIVATIONS) if name in ("activation", "layer") else
                  tuple(_losses.LOSSES) if name == "loss" else ())
    self.options = {"dense": ("layout", "bias", "signature"), "layer": ("layout", "bias", "signature"),
                    "activation": ("takes", "strict_conventions", "signature"),
                    "softmax": ("takes",), "loss": ("takes", "reduction", "targets")}[name]
    self.forward_name = FORWARD_NAMES[name]
    self.returns_text = _RETURNS[name]
    self.dense = name in ("dense", "layer")
    self.refits_width = name == "loss"  # a mean over the outputs K as well as the batch

  # ---- options
  def validate(self, spec):
    kind, name = self.name, spec.name
    if kind in ("activation", "layer"):
      if name is None:
        raise ValueError(f"an op of kind {kind!r} needs the activation's name: name='relu', say; "
                         f"valid names: {', '.join(_activations.ACTIVATIONS)}")
      _activations.get(name)
    elif kind == "loss":
      if name is None:
        raise ValueError(f"an op of kind 'loss' needs the loss's name: name='squared_error', "
                         f"say; valid names: {', '.join(_losses.LOSSES)}")
      _losses.get(name)
    elif name is not None:
      raise ValueError(f"an op of kind {kind!r} takes no name; got name={name!r}")
    if kind == "activation" and name == "softmax":
      raise ValueError("softmax is not elementwise: check it as kind 'softmax', not 'activation'")
    takes = spec.takes or self.takes[0]
    if takes not in self.takes:
      raise ValueError(f"takes={takes!r} is not valid for kind {kind!r}; valid: "
                       f"{', '.join(self.takes)}")
    if kind == "activation" and takes == "a" and name not in _kinds.A_INVERTIBLE:
      raise ValueError(f"{name}'(z) is not a function of a = {name}(z), so a candidate cannot "
                       f"take a; use takes='z' (takes='a' is for {', '.join(_kinds.A_INVERTIBLE)})")
    if kind == "loss" and takes in ("logits", "probs") and name in _kinds.REGRESSION:
      raise ValueError(f"takes={takes!r} is for the probability losses "
                       f"({', '.join(_kinds.SOFTMAX_LOSSES + _kinds.SIGMOID_LOSSES)}); {name} takes y")
    if spec.targets == "labels" and not (kind == "loss" and name in _kinds.SOFTMAX_LOSSES):
      raise ValueError(f"targets='labels' (a class index per row) is for the softmax losses "
                       f"({', '.join(_kinds.SOFTMAX_LOSSES)}); got kind {kind!r}"
                       f"{f' {name}' if name else ''}")
    if spec.signature not in self.signatures:
      raise ValueError(f"signature must be one of {', '.join(self.signatures)}; got "
                       f"{spec.signature!r}")
    layout = spec.layout or "out_in"
    if spec.signature == "cs231n":
      if kind not in _CACHE or takes != self.takes[0]:
        raise ValueError(f"signature='cs231n' is (dout, cache) for kinds activation (cache z), "
                         f"dense (cache (x, W, b)) and layer (cache ((x, W, b), z)); got kind "
                         f"{kind!r}{f' with takes={takes!r}' if takes != self.takes[0] else ''}")
      if self.dense and layout != "in_out":
        raise ValueError("signature='cs231n': CS231n's affine layers hold W as (n_in, n_out); add "
                         "layout='in_out' (--layout in_out)")
    if layout not in self.layouts:
      raise ValueError(f"layout must be 'out_in' (W of shape (n_out, n_in)) or 'in_out' (its "
                       f"transpose); got {spec.layout!r}")
    return spec._replace(takes=takes, layout=layout)

  def describe(self, spec):
    what = self.name + (f" {spec.name}" if spec.name else "")
    extra = [f"takes {spec.takes}", spec.dtype]
    if self.dense:
      extra += [f"layout {spec.layout}"] + ([] if spec.bias else ["no bias"])
    if self.name == "loss":
      extra += [f"reduction {spec.reduction}", f"targets {spec.targets}"]
    return f"{what} ({', '.join(extra)})"

  # ---- cases
  def rng(self, spec, label):
    return np.random.default_rng([label.seed, *label.dims, _kinds.FAMILIES.index(label.family),
                                  _kinds.KINDS.index(self.name)])

  def value_families(self, spec):
    return _kinds.families(spec)

  def searched(self, spec):
    return ("batch 1, one unit, non-square, wide; plain, normal, spread, kink (0 and -0), "
            "saturated, huge, tiny and float32-limit values where the op has them")

  def probe_dims(self, spec):
    if self.dense:
      return ([(1, 3, 2), (3, 1, 2), (3, 2, 1), (2, 3, 4), (4, 3, 2), (3, 3, 3), (4, 4, 2),
               (3, 32, 24)], [(2, 3, 4), (3, 3, 3)])
    return [(1, 3), (3, 1), (4, 3), (2, 5), (3, 32)], [(3, 4), (1, 2)]

  def random_dims(self, spec, rng):
    B = int(rng.integers(1, spec.max_batch + 1))
    widths = tuple(int(w) for w in rng.integers(1, spec.max_width + 1, 2 if self.dense else 1))
    return (B,) + widths

  def draw(self, spec, label):
    return _kinds.draw(spec, label)

  def primary(self, spec):
    return _kinds.PRIMARY[self.name]

  def derive(self, spec, arrays):
    return _kinds.derive(spec, arrays)

  def shrinkable(self, spec):
    names = ("x", "W", "b", "dout", "z", "y")
    if self.name == "loss" and spec.name in _kinds.REGRESSION:
      names += ("t",)
    if self.name == "loss" and spec.targets == "labels":
      names += ("labels",)
    if self.name == "loss" and spec.name in _kinds.SIGMOID_LOSSES and spec.targets == "probabilities":
      names += ("t",)
    return tuple(n for n in names if n in self.primary(spec))

  def replacements(self, spec, name, value):
    if name == "labels":
      return (0.0,) if value != 0 else ()
    if name == "t" and self.name == "loss" and spec.name in _kinds.SIGMOID_LOSSES:
      return tuple(v for v in (0.0, 1.0, 0.5) if v != value)
    return super().replacements(spec, name, value)

  # ---- bpref's answer
  def compute(self, spec, case, variant=None):
    return _kinds.compute(spec, case, name=variant)

  def output_names(self, spec):
    return _kinds.output_names(spec)

  def twin(self, spec):
    return GELU_TWINS.get(spec.name) if self.name in ("activation", "layer") else None

  # ---- the candidate's side
  def arg_names(self, spec):
    if spec.signature == "cs231n":
      return ("dout", "cache")
    if self.name == "loss":
      return (_kinds.loss_input(spec), "labels" if spec.targets == "labels" else "t")
    if self.name in ("activation", "softmax"):
      return (spec.takes, "dout")
    return ARG_NAMES[self.name]

  def args(self, spec, case):
    return candidate_args(spec, case)

  def forward_args(self, spec, case):
    return forward_args(spec, case)

  def returned(self, spec, case, result):
    names = self.output_names(spec)
    if self.dense:
      if not isinstance(result, list) or len(result) not in (2, 3):
        what = f"a sequence of {len(result)}" if isinstance(result, list) else type(result).__name__
        want = "(dx, dW, db)" if spec.bias else "(dx, dW) or (dx, dW, None)"
        raise Malformed(f"the candidate must return {want}; it returned {what}")
      if spec.bias and len(result) != 3:
        raise Malformed("the candidate must return (dx, dW, db); it returned two arrays (pass "
                        "bias=False for a layer without a bias)")
      if not spec.bias and len(result) == 3 and result[2] is not None:
        raise Malformed("the layer has no bias (bias=False), yet the candidate returned a third "
                        "array db; return (dx, dW) or (dx, dW, None)")
      return dict(zip(names, result)), None
    if self.name == "loss" and isinstance(result, list):
      scalars = [r for r in result if np.ndim(r) == 0]
      arrays = [r for r in result if np.ndim(r) > 0]
      if len(result) != 2 or len(scalars) != 1 or len(arrays) != 1:
        raise Malformed("a loss candidate returns its gradient, or (loss value, gradient); it "
                        f"returned a sequence of {len(result)}")
      try:
        value = float(np.asarray(scalars[0], np.float64))
      except (TypeError, ValueError):
        raise Malformed(f"the returned loss value is {type(scalars[0]).__name__}, not a "
                        "number") from None
      return {names[0]: arrays[0]}, value
    return super().returned(spec, case, result)

  def declared(self, spec, name, value):
    value = np.asarray(value)
    return value.T if name in ("W", "dW") and spec.layout == "in_out" else value

  internal = declared

  def shape_findings(self, spec, case, name, got, want):
    return _shape_findings(spec, case, name, got, want)

  def required(self, spec):
    if self.dense:
      return ("x", "W", "dout")
    if self.name in ("activation", "softmax"):
      return ("z", "dout")
    first = "y" if spec.name in _kinds.REGRESSION else "z"
    return (first, "labels" if spec.targets == "labels" else "t")

  def forward_scalar(self, spec) -> bool:
    return self.name == "loss"

  # ---- diagnosis
  def models(self, spec, case, truth):
    return [Model(*m) for m in models(spec, case, truth)]

  def convention(self, spec, case, truth, outputs):
    return convention(spec, case, truth, outputs)

  def last_findings(self, spec, minimal, wrong):
    found = []
    if self.name == "activation":
      found = _kink_value(spec, minimal) or _one_side(spec, minimal)
    return found or super().last_findings(spec, minimal, wrong)

  def undiagnosed_detail(self, spec, minimal):
    return _implied(spec, minimal)

  def extra_confirmations(self, spec, label):
    """A W that is not square, where a transpose and a reshape differ."""
    if not self.dense:
      return []
    B, n = label.dims[0], label.dims[1] + 1
    return [Label((B + 1, n, n + 1), label.family, label.seed + 4)]

  def rerun_labels(self, spec, verdict_kind):
    """A candidate that fails to run on a non-square W may run on a square one."""
    if self.dense and verdict_kind in ("exception", "shape"):
      return [(Label((2, 3, 3), family, spec.seed), "a square W", "non-square ")
              for family in ("normal", "plain")]
    return []

  def slips(self, spec):
    out = []
    kind = self.name
    if self.dense and spec.signature == "bpref":
      other = "in_out" if spec.layout == "out_in" else "out_in"
      shape = "(n_in, n_out)" if other == "in_out" else "(n_out, n_in)"
      out.append(("layout", f"the candidate takes W as {shape}: declare layout={other!r} "
                  f"(--layout {other})", f"called with W as {shape} and its dW read back the "
                  "same way, the candidate is right", spec._replace(layout=other)))
    default_takes = spec.takes == self.takes[0]
    if kind in _CACHE and default_takes and spec.signature == "bpref":
      also = " and layout='in_out'" if kind != "activation" and spec.layout != "in_out" else ""
      out.append(("signature", f"the candidate takes (dout, cache), as CS231n's layer functions "
                  f"do: pass signature='cs231n'{also} (--signature cs231n)",
                  f"called as candidate(dout, cache) with cache = {_CACHE[kind]}, the candidate "
                  "is right", spec._replace(signature="cs231n", layout="in_out")))
    if spec.signature == "cs231n":
      layouts = (spec.layout,) if kind == "activation" else dict.fromkeys((spec.layout, "out_in"))
      for layout in layouts:
        out.append(("signature", "the candidate takes bpref's argument order, not CS231n's "
                    "(dout, cache): drop signature='cs231n'"
                    + (f" and declare layout={layout!r}" if layout != spec.layout else ""),
                    "called with bpref's argument order, the candidate is right",
                    spec._replace(signature="bpref", layout=layout)))
    if kind in ("activation", "softmax", "loss") and not (kind == "activation" and default_takes):
      first = _kinds.loss_input(spec) if kind == "loss" else spec.takes
      second = "dout" if kind != "loss" else "labels" if spec.targets == "labels" else "t"
      out.append(("arguments_swapped", f"the candidate takes its arguments the other way round, "
                  f"({second}, {first}): pass lambda {first}, {second}: candidate({second}, "
                  f"{first})", "called with its arguments swapped, the candidate is right",
                  "swapped"))
    forward = FORWARD_NAMES[kind]
    if spec.layout == "in_out":  # (7) with W of shape (n_in, n_out)
      forward = forward.replace("W^T", "W")
    out.append(("forward_as_backward", f"the candidate computes the forward pass {forward}, not "
                f"its backward: pass the backward function, which returns {_RETURNS[kind]}",
                f"its answer is bpref's forward output {forward}", "forward"))
    return out

  # ---- framework candidates
  def framework_call(self, spec, args):
    if self.dense:
      x, W, b, dout = args
      return [x, W, b], [True, True, True], dout
    if self.name == "loss":
      y, t = args
      return [y, t], [True, False], None
    z, dout = args
    return [z], [True], dout

  def framework_result(self, spec, grads):
    if self.dense:
      return tuple(grads) if spec.bias else (grads[0], grads[1])
    return grads[0]

  def call_text(self, spec) -> str:
    return {"dense": "x, W, b, dout", "layer": "x, W, b, dout", "activation": "arrays['z'], dout",
            "softmax": "arrays['z'], dout"}.get(self.name, "...")


DENSE = Classic("dense", "z = x W^T + b: (dx, dW, db) = (dout W, dout^T x, sum_b dout)")
ACTIVATION = Classic("activation", "a = f(z), elementwise: dz = dout * f'(z)")
SOFTMAX = Classic("softmax", "y = softmax(z) by rows: dz = y * (dout - <dout, y>)")
LOSS = Classic("loss", "C(y, t) reduced over the batch: dC/dy, or the fused dC/dz on logits")
LAYER = Classic("layer", "a = f(x W^T + b): (dx, dW, db) through delta = dout * f'(z)")
RECORDS = (DENSE, ACTIVATION, SOFTMAX, LOSS, LAYER)
