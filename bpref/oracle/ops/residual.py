"""The residual kind: a candidate's backward of y = x + f(x W^T + b) against
``bpref.layers.residual``.

The candidate is called as ``candidate(x, W, b, dout) -> (dx, dW, db)``: x and dout of shape
(B, T, C) (``layout="btc"``, the default) or (N, C) (``layout="nc"``), W of shape (C, C) as
(C_out, C_in) (bpref's out_in layout; W is square, so a candidate that holds it as (C_in, C_out)
gets no shape error and is diagnosed ``transposed``), b of shape (C,). The activation f is the
op's ``name``, any of ``bpref.activations`` (softmax over the last axis). ``Label.dims`` is
(B, T, C) or (N, C); the values are the classic layer kind's (``bpref.oracle.ops._kinds.draw_layer``
on the rows flattened to N x C, n_in = n_out = C), with their own random stream. A framework
function (``torch.autograd.Function``, ``jax.custom_vjp``) is called as fn(x, W, b) -> y.

bpref's answer (proofs/layers.md, section 4), on the rows flattened to N x C:

  delta = dout f'(z),  z = x W^T + b                 (RES4); softmax: dout (diag(a) - a a^T)
  dx = dout + delta W                                (RES5): the skip path plus the branch
  dW = delta^T x,  db = sum over the rows of delta   (RES6), (RES7)

The rounding model (proofs/layers.md, section 5 "Residual"), with Z = |x| |W|^T + |b| the terms
of z's sums, s = max(1, Z), lambda / u the underflow floor (U):

  F'   = |f'(z)| + rho_forms(z, a) + d2f(z, a) s     f' at a rounded z, by a standard form
  M_d  = |dout| (F' + lambda / u) + lambda / u       (softmax: below)
  M_dx = |dout| + M_d |W| + C lambda / u
  M_dW = M_d^T |x| + N lambda / u,   M_db = sum over the rows of M_d + N lambda / u

For softmax M_d = (a |dout| + a <a, |dout|>)(1 + 4 max_row s) + C lambda / u: a rounded z moves
a by a (|dz| + <a, |dz|>), and the VJP is bilinear in a. k = max(2 C + 2, N + C + 1), the
longest sums of the table there. The forward y = x + a is held to |x| + |a| + (|f'| + rho) Z
(softmax: |x| + a + a (s + <a, s>)) over k = C + 1. rho_forms + d2f is ``bpref.oracle.truth.rho``
(``_kinds.rho``), d2f alone ``_kinds.rho_second``: the layer kind's bound plus the skip path's
|dout| in dx, with Z floored at 1 (s) as the layer kind floors it.

The bug models: the skip path dropped (dx = delta W) or counted twice (dx = 2 dout + delta W);
f' missing (delta = dout, everywhere or in dx only); dx through W^T, dW transposed; dW from the
output y or the branch's a instead of the input x; dW or db from one row only, db zero; and the
classic wrong derivatives of f (f' at a, the textbook forms of ``bpref.oracle.forms``, a kink's
wrong side, the softmax Jacobian's diagonal only), each carried through the residual's dx. The
convention notes are the layer kind's: gelu's tanh form (``twin``), softplus's threshold and
the other subgradients at a kink.
"""

from __future__ import annotations


import jax
import numpy as np

from bpref import compilation
from bpref import activations as _activations
from bpref import tolerance as _tolerance
from bpref.layers import residual as _residual
from bpref.oracle import judge as _network_judge
from bpref.oracle.ops import _kinds, classic
from bpref.oracle.ops.record import (ROW_PROBES, Label, Model, OpCase, OpKind, OpTruth, bucket,
                                     error, row_dims, unit_and_floor)
from bpref.scale import fast as _fast


@compilation.jit(static_argnums=4)
def _answer_padded(x, W, b, dout, activation):
  y, cache = _residual.forward(x, W, b, activation)  # (RES1)-(RES3)
  dx, dW, db = _residual.backward(cache, W, activation, dout)  # (RES4)-(RES7)
  return y, cache.z, cache.a, dx, dW, db


def _bpref(x, W, b, dout, activation):
  """bpref's (y, z, a, dx, dW, db) in float64 on rows x (N, C), padded to buckets: a padded row
  has x = dout = 0, so its delta is 0 and it adds nothing to dW or db; a padded unit has a zero
  row and column of W and b = 0 (softmax: a logit whose exp underflows to 0), so its delta is 0
  and it adds nothing to a real unit's dx."""
  N, C = x.shape
  rows, cols = max(ROWS, bucket(N)), bucket(C)
  x_p, dout_p, W_p = np.zeros((rows, cols)), np.zeros((rows, cols)), np.zeros((cols, cols))
  b_p = np.full(cols, _fast.pad_logit(np.float64) if activation == "softmax" else 0.0)
  x_p[:N, :C], dout_p[:N, :C], W_p[:C, :C], b_p[:C] = x, dout, W, b
  with jax.enable_x64(True):
    y, z, a, dx, dW, db = _answer_padded(x_p, W_p, b_p, dout_p, activation)
  y, z, a, dx = (np.asarray(v, np.float64)[:N, :C] for v in (y, z, a, dx))
  return y, z, a, dx, np.asarray(dW, np.float64)[:C, :C], np.asarray(db, np.float64)[:C]


ROWS = 32
"""The least number of rows bpref's answer is computed on: the rows of a default search
(B T <= 30) share one program per width bucket."""

LENGTH = 256
"""The least length f', rho_f and d2f are evaluated on (``bpref.tolerance.pointwise`` compiles
once per power-of-two length): a default search's N C <= 180 entries share one program each."""


def _pointwise(fn, name, z, *more):
  """fn(name, z, *more) (``_kinds.df``, ``rho``, ``rho_second``) on the entries flattened and
  zero-padded to at least LENGTH, in z's shape."""
  n = z.size
  size = max(LENGTH, n)
  flat = [np.pad(np.ravel(v), (0, size - n)) for v in (z,) + more]
  return np.asarray(fn(name, *flat))[:n].reshape(z.shape)


def _delta(name, z, a, dout):
  """bpref's delta of (RES4) on rows, in float64: dout f'(z), or dout's softmax VJP."""
  if name == "softmax":
    return a * (dout - np.sum(dout * a, axis=-1, keepdims=True))
  return dout * _pointwise(_kinds.df, name, z)


def _outputs(x, W, dout, delta, shape) -> dict:
  """The outputs that follow from delta on rows: dx = dout + delta W (RES5), dW = delta^T x
  (RES6), db = sum over the rows of delta (RES7); dx in x's ``shape``."""
  return {"dx": (dout + delta @ W).reshape(shape), "dW": delta.T @ x, "db": delta.sum(axis=0)}


class Residual(OpKind):
  name = "residual"
  summary = ("y = x + f(x W^T + b), W square: (dx, dW, db), dx = dout + delta W with delta = "
             "dout * f'(z)")
  takes = ("x",)
  layouts = ("btc", "nc")
  names = tuple(_activations.ACTIVATIONS)
  options = ("layout",)
  families = ("plain", "normal", "spread", "kink", "saturated", "tiny")
  forward_name = "y = x + f(x W^T + b)"
  arguments = ("x", "W", "b", "dout")
  returns = ("dx", "dW", "db")
  dims_names = ("B", "T", "C")

  def describe(self, spec):
    return f"residual {spec.name} ({spec.dtype}, layout {spec.layout})"

  def _layer(self, spec):
    """The classic layer kind's spec for the same activation and dtype (its value drawing)."""
    return spec._replace(kind="layer", layout="out_in", bias=True, takes="x")

  # ---- cases
  def searched(self, spec):
    text = super().searched(spec)  # dims_names is (B, T, C); the "nc" layout's dims are (N, C)
    return text.replace("BxTxC", "NxC", 1) if spec.layout == "nc" else text

  def probe_dims(self, spec):
    return ROW_PROBES["nc" if spec.layout == "nc" else "btc"]

  def random_dims(self, spec, rng):
    return row_dims(spec, rng)

  def draw(self, spec, label):
    C = label.dims[-1]
    N = int(np.prod(label.dims[:-1]))
    seed = label.seed * (1 << 16) + self.number()  # the layer kind's draw, on a stream of our own
    arrays = _kinds.draw_layer(self._layer(spec), Label((N, C, C), label.family, seed))
    return {"x": arrays["x"].reshape(label.dims), "W": arrays["W"], "b": arrays["b"],
            "dout": arrays["dout"].reshape(label.dims)}

  # ---- bpref's answer and its bounds
  def compute(self, spec, case, variant=None):
    name = variant or spec.name
    arr = case.arrays
    shape = arr["x"].shape
    C = shape[-1]
    x, dout = arr["x"].reshape(-1, C), arr["dout"].reshape(-1, C)
    W, b = arr["W"], arr["b"]
    N = x.shape[0]
    _, floor = unit_and_floor(spec.dtype)
    y, z, a, dx, dW, db = _bpref(x, W, b, dout, name)
    Z = np.abs(x) @ np.abs(W).T + np.abs(b)[None, :]  # the terms of (RES1)
    s = np.maximum(1.0, Z)
    ad = np.abs(dout)
    if name == "softmax":  # a moves by a (|dz| + <a, |dz|>); the VJP is bilinear in a
      M_d = (a * ad + a * np.sum(a * ad, axis=-1, keepdims=True)) * (
          1 + 4 * np.max(s, axis=-1, keepdims=True)) + C * floor
      forward_bound = np.abs(x) + a + a * (s + np.sum(a * s, axis=-1, keepdims=True)) + floor
    else:
      abs_df = np.abs(_pointwise(_kinds.df, name, z))
      rho_f = _pointwise(_kinds.rho, name, z, a)
      # F' = |f'| + rho_forms + d2f s = |f'| + rho_f + d2f (s - 1): only d2f scales with Z
      F = abs_df + rho_f + _pointwise(_kinds.rho_second, name, z, a) * (s - 1)
      M_d = ad * (F + floor) + floor  # (RES4): M_delta = dout F'
      forward_bound = np.abs(x) + np.abs(a) + (abs_df + rho_f) * Z + floor  # (RES3): y = x + a
    # (RES5): M_dx = dout + M_delta W, the skip path's terms beside the branch's
    bounds = {"dx": (ad + M_d @ np.abs(W) + C * floor).reshape(shape),
              "dW": M_d.T @ np.abs(x) + N * floor,  # (RES6): M_delta^T x over the N rows
              "db": M_d.sum(axis=0) + N * floor}  # (RES7): the sum of M_delta over the N rows
    k = max(2 * C + 2, N + C + 1)
    return OpTruth({"dx": dx.reshape(shape), "dW": dW, "db": db}, bounds,
                   _tolerance.tolerance(spec.dtype, depth=1, inner=k), None, 0.0,
                   y.reshape(shape), forward_bound.reshape(shape),
                   _tolerance.forward_tolerance(spec.dtype, depth=1, inner=C + 1),
                   z.reshape(shape), a.reshape(shape))

  def twin(self, spec):
    return classic.GELU_TWINS.get(spec.name)

  # ---- diagnosis
  def from_delta(self, spec, case, delta) -> dict:
    """The outputs that follow from delta = dC/dz, given in x's shape: (RES5)-(RES7)."""
    arr = case.arrays
    shape = arr["x"].shape
    C = shape[-1]
    return _outputs(arr["x"].reshape(-1, C), arr["W"], arr["dout"].reshape(-1, C),
                    np.reshape(delta, (-1, C)), shape)

  def last_findings(self, spec, minimal, wrong):
    if spec.name == "softmax":
      return super().last_findings(spec, minimal, wrong)
    return classic.kink_value(self, spec, minimal) or super().last_findings(spec, minimal, wrong)

  def nonfinite_findings(self, spec, minimal):
    return classic.exp_overflow(self, spec, minimal, rows=spec.name == "softmax")

  def models(self, spec, case, truth):
    arr = case.arrays
    shape = arr["x"].shape
    C = shape[-1]
    x, dout, W = arr["x"].reshape(-1, C), arr["dout"].reshape(-1, C), arr["W"]
    z, a = truth.z.reshape(-1, C), truth.a.reshape(-1, C)
    name = spec.name
    delta = _delta(name, z, a, dout)
    e = truth.expected
    y = x + a
    out = [
        Model("skip_dropped", "dx = delta W: the skip path's dout is missing, the gradient of the "
              "plain dense layer f(x W^T + b) (RES5)", {"dx": (delta @ W).reshape(shape)}),
        Model("skip_twice", "dx = 2 dout + delta W: the skip path counted twice, dout passed "
              "through the sum and added again where x fans out (RES5)",
              {"dx": (2 * dout + delta @ W).reshape(shape)}),
        Model("fprime_missing", f"{name}' is missing: delta = dout, as for the identity (RES4)",
              _outputs(x, W, dout, dout, shape)),
        Model("fprime_missing", f"dx skips {name}': dout + dout W in place of dout + delta W "
              "(dW and db right) (RES5)", {"dx": (dout + dout @ W).reshape(shape)}),
    ]
    if C > 1:  # a transpose of a square W: no shape error
      out += [
          Model("transposed", "dx uses the transpose of W: dout + delta W^T in place of dout + "
                "delta W, W's layout (C_out, C_in) confused (RES5)",
                {"dx": (dout + delta @ W.T).reshape(shape)}),
          Model("transposed", "dW is transposed: x^T delta in place of delta^T x (RES6)",
                {"dW": e["dW"].T.copy()}),
      ]
    out += [
        Model("dW_from_output", "dW is built from the residual's output y, not its input x: "
              "delta^T y in place of delta^T x (RES6)", {"dW": delta.T @ y}),
        Model("dW_from_output", "dW is built from the branch's output a = f(z), not the input x: "
              "delta^T a in place of delta^T x (RES6)", {"dW": delta.T @ a}),
    ]
    out += self._derivative_models(spec, x, dout, W, z, a, shape)
    if x.shape[0] > 1:
      for which, row in (("first", 0), ("last", -1)):
        how = "" if which == "first" else " (an assignment where += was meant)"
        out.append(Model("batch_sum_missing", f"dW is the {which} row's term only, not the sum "
                         f"over the rows{how} (RES6)", {"dW": np.outer(delta[row], x[row])}))
        out.append(Model("batch_sum_missing", f"db is the {which} row's delta only, not the sum "
                         f"over the rows{how} (RES7)", {"db": delta[row].copy()}))
    out.append(Model("bias_missing", "db is zero: the bias gradient is missing (RES7)",
                     {"db": np.zeros_like(e["db"])}))
    return out

  def _derivative_models(self, spec, x, dout, W, z, a, shape) -> list:
    """The classic activation and softmax kinds' wrong derivatives (f' at a, the textbook forms,
    a kink's wrong side, the softmax Jacobian's diagonal, ...) carried through the residual."""
    name = spec.name
    act = (spec._replace(kind="softmax", name=None, takes="z", layout="") if name == "softmax"
           else spec._replace(kind="activation", takes="z", layout=""))
    act_truth = OpTruth({}, {}, 0.0, None, 0.0, None, None, 0.0, z, a)
    out = []
    case = OpCase(None, {"z": z, "dout": dout})
    record = classic.SOFTMAX if name == "softmax" else classic.ACTIVATION
    for code, summary, outputs in record.models(act, case, act_truth):
      if code in ("fprime_missing", "softmax_jacobian_missing"):  # ours, above
        continue
      out.append(Model(code, f"{summary}, carried into dx = dout + delta W, dW and db",
                       _outputs(x, W, dout, outputs["dz"], shape)))
    return out

  def convention(self, spec, case, truth, outputs):
    """A note when the candidate differs by a convention only: gelu's other form, torch's
    softplus threshold, another subgradient at an exact kink (the layer kind's notes)."""
    name = spec.name
    arr = case.arrays
    C = arr["x"].shape[-1]
    x, dout, W = arr["x"].reshape(-1, C), arr["dout"].reshape(-1, C), arr["W"]
    z = truth.z.reshape(-1, C)

    def agrees(alt, bounds):
      return all(error(outputs[k], alt[k], bounds[k]) <= truth.tol for k in outputs)

    if name in classic.GELU_TWINS:
      twin = self.compute(spec, case, classic.GELU_TWINS[name])
      if agrees(twin.expected, {k: np.maximum(truth.bounds[k], twin.bounds[k]) for k in outputs}):
        return classic.GELU_NOTE[name]
    alternatives = []
    if name == "softplus" and np.any(z > classic.SOFTPLUS_THRESHOLD):
      df = np.where(z > classic.SOFTPLUS_THRESHOLD, 1.0, _pointwise(_kinds.df, name, z))
      alternatives.append((df, classic.SOFTPLUS_NOTE))
    if name in _network_judge.KINK_CONVENTIONS and np.any(z == 0):
      options = _network_judge.KINK_CONVENTIONS[name]
      for value, text in options[1:]:
        note = (f"convention note: at exact kinks the candidate uses {text}, bpref uses "
                f"{options[0][1]}; both are valid subgradients")
        alternatives.append((np.where(z == 0, value, _pointwise(_kinds.df, name, z)), note))
    for df, note in alternatives:
      if agrees(_outputs(x, W, dout, dout * df, arr["x"].shape), truth.bounds):
        return note
    return ""

  def framework_result(self, spec, grads):
    return tuple(grads)


RESIDUAL = Residual()
