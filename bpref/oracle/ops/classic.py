"""The five classic op kinds, each a record: dense, activation, softmax, loss and layer.

Their values and bpref's answer on them are in ``bpref.oracle.ops._kinds``, one function per kind;
this module gives the engine what it asks of a record (``bpref.oracle.ops.record.OpKind``): the
options each kind takes, the candidate's arguments in bpref's and CS231n's signatures, the returns,
the convention notes (gelu's tanh form, softplus's threshold, kink values) and the bug models of
the diagnosis (f' at a instead of z, a textbook form of f' from ``bpref.oracle.forms`` fed z, f'
missing, a derivative wrong on one side of a kink, the softmax Jacobian's diagonal only, dW
transposed, the first example's term in place of a sum over the batch, a fused loss form where
dC/dy was asked for, ...).
"""

from __future__ import annotations

import numpy as np

from bpref import activations as _activations
from bpref import losses as _losses
from bpref.oracle import forms as _forms
from bpref.oracle import judge as _network_judge
from bpref.oracle.diagnosis import FIT_SLACK, Finding
from bpref.oracle.ops import _kinds
from bpref.oracle.ops.record import Label, Malformed, Model, OpKind, error, exact


GELU_TWINS = {"gelu": "gelu_tanh", "gelu_tanh": "gelu"}
"""gelu with erf and its tanh approximation: each is the other's convention."""


GELU_NOTE = {
    "gelu": ("convention note: the candidate computes gelu's tanh approximation "
             "0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3))) (gelu_tanh, as GPT-2 and llm.c do), "
             "bpref's gelu is exact, z Phi(z) with erf; check it as gelu_tanh to hold it to its own form"),
    "gelu_tanh": ("convention note: the candidate computes the exact gelu z Phi(z) (erf), not the tanh "
                  "approximation gelu_tanh; check it as gelu to hold it to its own form"),
}


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


def _activation_convention(record, spec, case, truth, outputs) -> str:
  """A note naming the convention an activation's or a layer's candidate follows, when that is
  the only difference: gelu's other form, torch's softplus threshold, another subgradient."""
  name = spec.name
  if name in GELU_TWINS:
    twin = record.compute(spec, case, GELU_TWINS[name])
    if all(error(outputs[k], twin.expected[k], np.maximum(truth.bounds[k], twin.bounds[k]))
           <= truth.tol for k in outputs):
      return GELU_NOTE[name]
  if name == "softplus" and truth.z is not None and np.any(truth.z > SOFTPLUS_THRESHOLD):
    df = np.where(truth.z > SOFTPLUS_THRESHOLD, 1.0, _kinds.df(name, truth.z))
    alt = record.from_delta(spec, case, case.arrays["dout"] * df)
    if all(error(outputs[k], alt[k], truth.bounds[k]) <= truth.tol for k in outputs):
      return SOFTPLUS_NOTE
  if name not in _network_judge.KINK_CONVENTIONS or truth.z is None or not np.any(truth.z == 0):
    return ""
  options = _network_judge.KINK_CONVENTIONS[name]
  for value, text in options[1:]:
    df = np.where(truth.z == 0, value, _kinds.df(name, truth.z))
    alt = record.from_delta(spec, case, case.arrays["dout"] * df)
    if all(error(outputs[k], alt[k], truth.bounds[k]) <= truth.tol for k in outputs):
      return (f"convention note: at exact kinks the candidate uses {text}, bpref uses "
              f"{options[0][1]}; both are valid subgradients")
  return ""


def _activation_name(record, spec) -> None:
  """ValueError unless ``spec.name`` is one of bpref's activations."""
  if spec.name is None:
    raise ValueError(f"an op of kind {record.name!r} needs the activation's name: name='relu', "
                     f"say; valid names: {', '.join(_activations.ACTIVATIONS)}")
  _activations.get(spec.name)


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
  handed_a = spec.takes == "a"  # an activation handed a (a layer takes x)
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


def _dense_models(spec, case, truth, delta, layer: bool):
  """A dense op's or a layer's bug models, from its delta = dC/dz (dout for a dense op)."""
  arr = case.arrays
  x, W = arr["x"], arr["W"]
  e = truth.expected
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
    if layer:
      wrong = "a^T delta in place of x^T delta" if io else "delta^T a in place of delta^T x"
      out.append(("dW_from_output", "dW is built from the layer's output a, not its input x: "
                  + wrong, {"dW": delta.T @ truth.a}))
  if layer and spec.name != "softmax":
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


def _loss_models(spec, case, truth):
  arr = case.arrays
  t = arr["t"]
  B = t.shape[0]
  scale = 1.0 / B if spec.reduction == "mean" else 1.0
  name = spec.name
  out = []
  out_name = _kinds.loss_outputs(spec)[0]
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
  dout = minimal.case.arrays["dout"]
  cand = minimal.verdict.outputs["dz"]
  with np.errstate(divide="ignore", invalid="ignore"):
    implied = np.where(dout == 0, np.nan, cand / dout)
  return (f"implied f' at z = {np.round(minimal.truth.z.ravel()[:6], 6).tolist()}: "
          f"{np.round(implied.ravel()[:6], 6).tolist()} (bpref: "
          f"{np.round(_kinds.df(spec.name, minimal.truth.z).ravel()[:6], 6).tolist()})")


def _kink_values(record, spec, minimal):
  """The f'(0) values the candidate used at exact kinks, when it is wrong there only: read off
  dz for an activation; for a layer (or a residual block), whose delta = dout f'(z) reaches
  dx, dW and db only through sums, the one value c that reproduces every output when
  f'(0) = c (least squares over the outputs, then held to FIT_SLACK tolerances). None when it
  is wrong elsewhere too."""
  truth, outputs, dout = minimal.truth, minimal.verdict.outputs, minimal.case.arrays["dout"]
  at_kink = truth.z == 0
  slack = FIT_SLACK * truth.tol
  if "dz" in outputs:
    cand = outputs["dz"]
    bad = np.abs(cand - truth.expected["dz"]) > slack * np.maximum(truth.bounds["dz"], 1e-300)
    if not np.any(bad) or np.any(bad & ~at_kink) or np.any(dout[bad] == 0):
      return None
    return np.unique(np.round(cand[bad] / dout[bad], 6)) + 0.0  # + 0.0: no -0
  df = _kinds.df(spec.name, truth.z)
  rest = record.from_delta(spec, minimal.case, dout * np.where(at_kink, 0.0, df))  # (34) off the kinks
  none = record.from_delta(spec, minimal.case, np.zeros_like(dout))  # a residual's skip path
  unit = {k: v - none[k] for k, v in record.from_delta(spec, minimal.case, dout * at_kink).items()}
  norm = sum(float(np.sum(unit[k] ** 2)) for k in outputs)
  if norm == 0:
    return None
  c = sum(float(np.sum((outputs[k] - rest[k]) * unit[k])) for k in outputs) / norm
  if not all(error(outputs[k], rest[k] + c * unit[k], truth.bounds[k]) <= slack for k in outputs):
    return None
  return np.round(np.array([c]), 6) + 0.0


def kink_value(record, spec, minimal) -> list:
  """Wrong only at exact kinks, with an f'(0) that no convention uses."""
  if spec.name not in _activations.KINKED or not np.any(minimal.truth.z == 0):
    return []
  values = _kink_values(record, spec, minimal)
  if values is None:
    return []
  left = float(_kinds.df(spec.name, -np.ones((1, 1)) * 1e-300)[0, 0])
  right = float(_kinds.df(spec.name, np.ones((1, 1)) * 1e-300)[0, 0])
  lo, hi = min(left, right), max(left, right)
  if np.all((values >= lo) & (values <= hi)):
    where = (f"inside the subdifferential [{lo:g}, {hi:g}], but a value no library's convention "
             "uses")
  else:
    where = f"outside the subdifferential [{lo:g}, {hi:g}]: no convention, a bug"
  return [Finding("kink_value", f"{spec.name}'(0) = {values.tolist()} at the kink, {where}",
                  "every other entry is right")]


def exp_overflow(record, spec, minimal, rows: bool) -> list:
  """NaN or inf only where an exponential of z overflows the dtype, |z| > log(max): the
  candidate evaluates exp(z) or exp(-z) there, in f' or in the branch of a select that the
  forward does not take (whose gradient is 0 * inf = NaN). ``rows``: a softmax, whose every
  output of a row follows from exp of each of its entries."""
  z, outputs = minimal.truth.z, minimal.verdict.outputs
  limit = float(np.log(np.finfo(spec.dtype).max))
  if z is None or outputs is None:
    return []
  over = np.abs(z) > limit
  if rows:
    over = np.broadcast_to(np.any(over, axis=-1, keepdims=True), z.shape)
  # where NaN at those entries of delta = dC/dz reaches the outputs, through the sums of (26), (39)
  reached = record.from_delta(spec, minimal.case, np.where(over, np.nan, 1.0))
  bad = {k: ~np.isfinite(v) for k, v in outputs.items()}
  if not np.any(over) or any(np.any(bad[k] & np.isfinite(reached[k])) for k in bad):
    return []
  names = ", ".join(k for k in bad if np.any(bad[k]))
  if rows:
    return [Finding("exp_overflow", f"{names} NaN or inf only in rows whose largest |z| is above "
                    f"{limit:.4g}, where exp(z) overflows {spec.dtype}: the softmax is computed "
                    "without subtracting each row's maximum first", "exp(z - max z) is the same "
                    "softmax and never overflows")]
  return [Finding("exp_overflow", f"{names} NaN or inf only where |z| > {limit:.4g}, where "
                  f"exp(z) or exp(-z) overflows {spec.dtype}: an exponential is computed there, in "
                  f"{spec.name}' or in the branch of a select that the forward does not take "
                  "(whose gradient is 0 * inf = NaN)", "evaluate each exponential only where it "
                  "is used: exp(min(z, 0)) for the negative branch, exp(-|z|) in a sigmoid")]


# ---------------------------------------------------------------- the records

class Classic(OpKind):
  """What the five classic kinds share: bpref's and CS231n's signatures, W's two layouts, the
  case streams, the shapes a candidate returns. Each kind is a record of its own below, its
  values and bpref's answer in ``bpref.oracle.ops._kinds``."""

  signatures = _kinds.SIGNATURES
  layouts = ("out_in", "in_out")
  dense = False
  cache = None  # the cache of CS231n's (dout, cache) signature, None where the kind has none
  primary_names: tuple = ("z", "dout")  # an activation's and a softmax's, as below
  forward_name = ""
  returns_text = ""
  refits_width = False

  def __init__(self, summary: str):
    self.summary = summary

  # ---- options
  def check_name(self, spec) -> None:
    """ValueError unless ``spec.name`` is one the kind takes."""
    if spec.name is not None:
      raise ValueError(f"an op of kind {self.name!r} takes no name; got name={spec.name!r}")

  def check_takes(self, spec, takes) -> None:
    """ValueError unless the kind can check a candidate handed ``takes``."""

  def validate(self, spec):
    kind, name = self.name, spec.name
    self.check_name(spec)
    takes = spec.takes or self.takes[0]
    if takes not in self.takes:
      raise ValueError(f"takes={takes!r} is not valid for kind {kind!r}; valid: "
                       f"{', '.join(self.takes)}")
    self.check_takes(spec, takes)
    if spec.targets == "labels" and not self.takes_labels(spec):
      raise ValueError(f"targets='labels' (a class index per row) is for the softmax losses "
                       f"({', '.join(_kinds.SOFTMAX_LOSSES)}); got kind {kind!r}"
                       f"{f' {name}' if name else ''}")
    if spec.signature not in self.signatures:
      raise ValueError(f"signature must be one of {', '.join(self.signatures)}; got "
                       f"{spec.signature!r}")
    layout = spec.layout or "out_in"
    if spec.signature == "cs231n":
      if self.cache is None or takes != self.takes[0]:
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

  def takes_labels(self, spec) -> bool:
    """Whether targets='labels' is valid: for the softmax losses alone."""
    return False

  def describe(self, spec):
    what = self.name + (f" {spec.name}" if spec.name else "")
    return f"{what} ({', '.join([f'takes {spec.takes}', spec.dtype] + self.described(spec))})"

  def described(self, spec) -> list:
    """The kind's own options, in words, for ``describe``."""
    return []

  # ---- cases
  def rng(self, spec, label):
    return np.random.default_rng([label.seed, *label.dims, _kinds.FAMILIES.index(label.family),
                                  _kinds.KINDS.index(self.name)])

  def searched(self, spec):
    return ("batch 1, one unit, non-square, wide; plain, normal, spread, kink (0 and -0), "
            "saturated, huge, tiny and float32-limit values where the op has them")

  def probe_dims(self, spec):
    return [(1, 3), (3, 1), (4, 3), (2, 5), (3, 32)], [(3, 4), (1, 2)]

  def random_dims(self, spec, rng):
    B = int(rng.integers(1, spec.max_batch + 1))
    widths = tuple(int(w) for w in rng.integers(1, spec.max_width + 1, 2 if self.dense else 1))
    return (B,) + widths

  def draw(self, spec, label):
    return _kinds.draw_pointwise(spec, label)

  def primary(self, spec):
    return self.primary_names

  def derive(self, spec, arrays):
    """The primary arrays, with those derived from them that the candidate is handed."""
    return {k: v for k, v in arrays.items() if k in self.primary_names}

  def shrinkable(self, spec):
    return tuple(n for n in ("x", "W", "b", "dout", "z", "y") if n in self.primary_names)

  # ---- bpref's answer
  def output_names(self, spec):
    return ("dz",)

  def twin(self, spec):
    return None

  # ---- the candidate's side
  def arg_names(self, spec):
    return ("dout", "cache") if spec.signature == "cs231n" else self.own_arg_names(spec)

  def own_arg_names(self, spec):
    return (spec.takes, "dout")

  def bpref_args(self, spec, case):
    dt = np.dtype(spec.dtype)
    return (case.arrays[spec.takes].astype(dt), case.arrays["dout"].astype(dt))

  def args(self, spec, case):
    """The arguments of one call, fresh copies in the candidate's dtype, layout and signature."""
    args = self.bpref_args(spec, case)
    return self.cs231n_args(args) if spec.signature == "cs231n" else args

  def forward_args(self, spec, case):
    return (case.arrays["z"].astype(np.dtype(spec.dtype)),)

  def declared(self, spec, name, value):
    value = np.asarray(value)
    return value.T if name in ("W", "dW") and spec.layout == "in_out" else value

  internal = declared

  def shape_findings(self, spec, case, name, got, want):
    return _shape_findings(spec, case, name, got, want)

  def required(self, spec):
    return ("z", "dout")

  # ---- diagnosis
  def models(self, spec, case, truth):
    return [Model(*m) for m in self.bug_models(spec, case, truth)]

  def from_delta(self, spec, case, delta) -> dict:
    """The outputs that follow from delta = dC/dz."""
    return {"dz": delta}

  def swapped(self, spec) -> tuple | None:
    """(first, second): the two arguments a candidate may take the other way round, or None."""
    return (spec.takes, "dout")

  def slips(self, spec):
    out = []
    default_takes = spec.takes == self.takes[0]
    if self.cache is not None and default_takes and spec.signature == "bpref":
      also = " and layout='in_out'" if self.dense and spec.layout != "in_out" else ""
      out.append(("signature", f"the candidate takes (dout, cache), as CS231n's layer functions "
                  f"do: pass signature='cs231n'{also} (--signature cs231n)",
                  f"called as candidate(dout, cache) with cache = {self.cache}, the candidate "
                  "is right", spec._replace(signature="cs231n", layout="in_out")))
    if spec.signature == "cs231n":
      layouts = dict.fromkeys((spec.layout, "out_in")) if self.dense else (spec.layout,)
      for layout in layouts:
        out.append(("signature", "the candidate takes bpref's argument order, not CS231n's "
                    "(dout, cache): drop signature='cs231n'"
                    + (f" and declare layout={layout!r}" if layout != spec.layout else ""),
                    "called with bpref's argument order, the candidate is right",
                    spec._replace(signature="bpref", layout=layout)))
    pair = self.swapped(spec)
    if pair is not None:
      first, second = pair
      out.append(("arguments_swapped", f"the candidate takes its arguments the other way round, "
                  f"({second}, {first}): pass lambda {first}, {second}: candidate({second}, "
                  f"{first})", "called with its arguments swapped, the candidate is right",
                  "swapped"))
    forward = self.forward_name
    if spec.layout == "in_out":  # (7) with W of shape (n_in, n_out)
      forward = forward.replace("W^T", "W")
    out.append(("forward_as_backward", f"the candidate computes the forward pass {forward}, not "
                f"its backward: pass the backward function, which returns {self.returns_text}",
                f"its answer is bpref's forward output {forward}", "forward"))
    return out

  # ---- framework candidates
  def framework_call(self, spec, args):
    z, dout = args
    return [z], [True], dout

  def framework_result(self, spec, grads):
    return grads[0]

  def call_text(self, spec) -> str:
    return "arrays['z'], dout"


class Dense(Classic):
  """z = x W^T + b (7): (dx, dW, db) = (dout W, dout^T x, sum_b dout), (26) and (39)."""

  name = "dense"
  takes = ("x",)  # what the candidate is handed; the first is the default
  options = ("layout", "bias", "signature")
  dense = True
  cache = "(x, W, b)"
  primary_names = ("x", "W", "b", "dout")
  forward_name = "z = x W^T + b"
  returns_text = "(dx, dW, db)"
  families = _kinds.DENSE_FAMILIES

  def described(self, spec):
    return [f"layout {spec.layout}"] + ([] if spec.bias else ["no bias"])

  def probe_dims(self, spec):
    return ([(1, 3, 2), (3, 1, 2), (3, 2, 1), (2, 3, 4), (4, 3, 2), (3, 3, 3), (4, 4, 2),
             (3, 32, 24)], [(2, 3, 4), (3, 3, 3)])

  def draw(self, spec, label):
    return _kinds.draw_dense(spec, label)

  def compute(self, spec, case, variant=None):
    return _kinds.dense_truth(spec, case)

  def output_names(self, spec):
    return _kinds.dense_outputs(spec)

  def own_arg_names(self, spec):
    return ("x", "W", "b", "dout")

  def bpref_args(self, spec, case):
    arr, dt = case.arrays, np.dtype(spec.dtype)
    W = arr["W"].T if spec.layout == "in_out" else arr["W"]
    b = arr.get("b")
    return (arr["x"].astype(dt), np.array(W, dt), None if b is None else b.astype(dt),
            arr["dout"].astype(dt))

  def cs231n_args(self, args):
    x, W, b = args[:3]  # W in the in_out layout, as validate requires for this signature
    return (args[3], (x, W, b))

  def forward_args(self, spec, case):
    return self.bpref_args(spec, case)[:3]

  def returned(self, spec, case, result):
    names = self.output_names(spec)
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

  def required(self, spec):
    return ("x", "W", "dout")

  def from_delta(self, spec, case, delta):
    arr = case.arrays
    out = {"dx": delta @ arr["W"], "dW": delta.T @ arr["x"]}  # (26), (39)
    if spec.bias:
      out["db"] = delta.sum(axis=0)
    return out

  def bug_models(self, spec, case, truth):
    return _dense_models(spec, case, truth, case.arrays["dout"], layer=False)

  def extra_confirmations(self, spec, label):
    """A W that is not square, where a transpose and a reshape differ."""
    B, n = label.dims[0], label.dims[1] + 1
    return [Label((B + 1, n, n + 1), label.family, label.seed + 4)]

  def rerun_labels(self, spec, verdict_kind, origin):
    """A candidate that fails to run on a non-square W may run on a square one."""
    if verdict_kind in ("exception", "shape"):
      return [(Label((2, 3, 3), family, spec.seed), "a square W", "non-square ")
              for family in ("normal", "plain")]
    return []

  def swapped(self, spec):
    return None

  def slips(self, spec):
    out = []
    if spec.signature == "bpref":
      other = "in_out" if spec.layout == "out_in" else "out_in"
      shape = "(n_in, n_out)" if other == "in_out" else "(n_out, n_in)"
      out.append(("layout", f"the candidate takes W as {shape}: declare layout={other!r} "
                  f"(--layout {other})", f"called with W as {shape} and its dW read back the "
                  "same way, the candidate is right", spec._replace(layout=other)))
    return out + super().slips(spec)

  def framework_call(self, spec, args):
    x, W, b, dout = args
    return [x, W, b], [True, True, True], dout

  def framework_result(self, spec, grads):
    return tuple(grads) if spec.bias else (grads[0], grads[1])

  def call_text(self, spec) -> str:
    return "x, W, b, dout"


class Layer(Dense):
  """a = f(x W^T + b): (dx, dW, db) through delta = dout * f'(z), the seed's (37) and (39) at
  one layer."""

  name = "layer"
  names = tuple(_activations.ACTIVATIONS)
  cache = "((x, W, b), z)"
  forward_name = "a = f(x W^T + b)"
  families = _kinds.LAYER_FAMILIES

  check_name = _activation_name

  def draw(self, spec, label):
    return _kinds.draw_layer(spec, label)

  def compute(self, spec, case, variant=None):
    return _kinds.layer_truth(spec, case, variant or spec.name)

  def twin(self, spec):
    return GELU_TWINS.get(spec.name)

  def cs231n_args(self, args):
    x, W, b = args[:3]
    return (args[3], ((x, W, b), x @ W + (0 if b is None else b)))

  def bug_models(self, spec, case, truth):
    dout = case.arrays["dout"]
    out = []
    if spec.name == "softmax":
      for code, summary, delta in _softmax_models(truth.z, truth.a, dout):
        out.append((code, summary, self.from_delta(spec, case, delta)))
    else:
      for code, summary, df in _elementwise_models(spec, case, truth):
        out.append((code, summary, self.from_delta(spec, case, dout * df)))
    delta = _kinds.activation_vjp(spec.name, truth.z, truth.a, dout)  # (34)
    return out + _dense_models(spec, case, truth, delta, layer=True)

  def convention(self, spec, case, truth, outputs):
    return _activation_convention(self, spec, case, truth, outputs)

  def last_findings(self, spec, minimal, wrong):
    if spec.name == "softmax":
      return super().last_findings(spec, minimal, wrong)
    return kink_value(self, spec, minimal) or super().last_findings(spec, minimal, wrong)

  def nonfinite_findings(self, spec, minimal):
    return exp_overflow(self, spec, minimal, rows=spec.name == "softmax")


class Activation(Classic):
  """a = f(z), elementwise: dz = dout * f'(z) (34)."""

  name = "activation"
  takes = ("z", "a")
  options = ("takes", "strict_conventions", "signature")
  names = tuple(_activations.ACTIVATIONS)
  cache = "z"
  forward_name = "a = f(z)"
  returns_text = "dz = dout * f'(z)"

  def check_name(self, spec):
    _activation_name(self, spec)
    if spec.name == "softmax":
      raise ValueError("softmax is not elementwise: check it as kind 'softmax', not 'activation'")

  def check_takes(self, spec, takes):
    if takes == "a" and spec.name not in _kinds.A_INVERTIBLE:
      raise ValueError(f"{spec.name}'(z) is not a function of a = {spec.name}(z), so a candidate "
                       f"cannot take a; use takes='z' (takes='a' is for "
                       f"{', '.join(_kinds.A_INVERTIBLE)})")

  def value_families(self, spec):
    return _kinds.activation_families(spec)

  def derive(self, spec, arrays):
    out = super().derive(spec, arrays)
    if spec.takes == "a":
      out["a"] = exact(_kinds.forward_activation(spec.name, out["z"]), spec.dtype)
    return out

  def compute(self, spec, case, variant=None):
    return _kinds.activation_truth(spec, case, variant or spec.name)

  def twin(self, spec):
    return GELU_TWINS.get(spec.name)

  def cs231n_args(self, args):
    return (args[1], args[0])

  def bug_models(self, spec, case, truth):
    dout = case.arrays["dout"]
    return [(code, summary, {"dz": dout * df})
            for code, summary, df in _elementwise_models(spec, case, truth)]

  def convention(self, spec, case, truth, outputs):
    return _activation_convention(self, spec, case, truth, outputs)

  def last_findings(self, spec, minimal, wrong):
    return (kink_value(self, spec, minimal) or _one_side(spec, minimal)
            or super().last_findings(spec, minimal, wrong))

  def undiagnosed_detail(self, spec, minimal):
    return _implied(spec, minimal)

  def nonfinite_findings(self, spec, minimal):
    return exp_overflow(self, spec, minimal, rows=False) if spec.takes == "z" else []

  def swapped(self, spec):
    return None if spec.takes == self.takes[0] else (spec.takes, "dout")


class Softmax(Classic):
  """y = softmax(z) by rows: dz = dout (diag(y) - y y^T) = y * (dout - <dout, y>)."""

  name = "softmax"
  takes = ("z", "y")
  options = ("takes",)
  forward_name = "y = softmax(z)"
  returns_text = "dz = y * (dout - <dout, y>)"
  families = _kinds.SOFTMAX_FAMILIES

  def derive(self, spec, arrays):
    out = super().derive(spec, arrays)
    if spec.takes == "y":
      out["y"] = exact(_kinds.forward_activation("softmax", out["z"]), spec.dtype)
    return out

  def compute(self, spec, case, variant=None):
    return _kinds.softmax_truth(spec, case)

  def bug_models(self, spec, case, truth):
    y = truth.a if spec.takes == "z" else case.arrays["y"]
    return [(code, summary, {"dz": delta})
            for code, summary, delta in _softmax_models(truth.z, y, case.arrays["dout"])]

  def nonfinite_findings(self, spec, minimal):
    return exp_overflow(self, spec, minimal, rows=True) if spec.takes == "z" else []


class Loss(Classic):
  """C(y, t) reduced over the batch: dC/dy (14), or for the probability losses the fused dC/dz
  of their logit twin, softmax(z) sum_k t_k - t or sigmoid(z) - t."""

  name = "loss"
  takes = ("y", "logits", "probs")
  options = ("takes", "reduction", "targets")
  names = tuple(_losses.LOSSES)
  primary_names = ("y", "z", "t", "labels")
  forward_name = "the loss C"
  returns_text = "dC/dy"
  families = _kinds.LOSS_FAMILIES
  refits_width = True  # a mean over the outputs K as well as the batch

  def check_name(self, spec):
    if spec.name is None:
      raise ValueError(f"an op of kind 'loss' needs the loss's name: name='squared_error', "
                       f"say; valid names: {', '.join(_losses.LOSSES)}")
    _losses.get(spec.name)

  def check_takes(self, spec, takes):
    if takes in ("logits", "probs") and spec.name in _kinds.REGRESSION:
      raise ValueError(f"takes={takes!r} is for the probability losses "
                       f"({', '.join(_kinds.SOFTMAX_LOSSES + _kinds.SIGMOID_LOSSES)}); "
                       f"{spec.name} takes y")

  def takes_labels(self, spec):
    return spec.name in _kinds.SOFTMAX_LOSSES

  def described(self, spec):
    return [f"reduction {spec.reduction}", f"targets {spec.targets}"]

  def draw(self, spec, label):
    return _kinds.draw_loss(spec, label)

  def derive(self, spec, arrays):
    return _kinds.derive_loss(spec, super().derive(spec, arrays))

  def shrinkable(self, spec):
    names = super().shrinkable(spec)  # z, y
    if spec.name in _kinds.REGRESSION or (spec.name in _kinds.SIGMOID_LOSSES
                                          and spec.targets == "probabilities"):
      names += ("t",)
    if spec.targets == "labels":  # the softmax losses alone
      names += ("labels",)
    return names

  def replacements(self, spec, name, value):
    if name == "labels":
      return (0.0,) if value != 0 else ()
    if name == "t" and spec.name in _kinds.SIGMOID_LOSSES:
      return tuple(v for v in (0.0, 1.0, 0.5) if v != value)
    return super().replacements(spec, name, value)

  def compute(self, spec, case, variant=None):
    return _kinds.loss_truth(spec, case)

  def output_names(self, spec):
    return _kinds.loss_outputs(spec)

  def own_arg_names(self, spec):
    return (_kinds.loss_input(spec), "labels" if spec.targets == "labels" else "t")

  def bpref_args(self, spec, case):
    arr, dt = case.arrays, np.dtype(spec.dtype)
    first = arr[_kinds.loss_input(spec)].astype(dt)
    if spec.targets == "labels":
      return (first, arr["labels"].astype(np.int64))
    return (first, arr["t"].astype(dt))

  def forward_args(self, spec, case):
    return self.bpref_args(spec, case)

  def returned(self, spec, case, result):
    if isinstance(result, list):
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
      return {self.output_names(spec)[0]: arrays[0]}, value
    return super().returned(spec, case, result)

  def required(self, spec):
    first = "y" if spec.name in _kinds.REGRESSION else "z"
    return (first, "labels" if spec.targets == "labels" else "t")

  def forward_scalar(self, spec) -> bool:
    return True

  def bug_models(self, spec, case, truth):
    return _loss_models(spec, case, truth)

  def swapped(self, spec):
    return (_kinds.loss_input(spec), "labels" if spec.targets == "labels" else "t")

  def framework_call(self, spec, args):
    y, t = args
    return [y, t], [True, False], None

  def call_text(self, spec) -> str:
    return "..."


DENSE = Dense("z = x W^T + b: (dx, dW, db) = (dout W, dout^T x, sum_b dout)")
ACTIVATION = Activation("a = f(z), elementwise: dz = dout * f'(z)")
SOFTMAX = Softmax("y = softmax(z) by rows: dz = y * (dout - <dout, y>)")
LOSS = Loss("C(y, t) reduced over the batch: dC/dy, or the fused dC/dz on logits")
LAYER = Layer("a = f(x W^T + b): (dx, dW, db) through delta = dout * f'(z)")
RECORDS = (DENSE, ACTIVATION, SOFTMAX, LOSS, LAYER)
