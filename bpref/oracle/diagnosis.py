"""Diagnosis: from a minimal failing case to the most likely bug.

Each finding is a hypothesis that was tested, never a guess from the error
size alone. A hypothesis reproduces the candidate when the candidate is as close to it as a
correct program must be to bpref's gradient: within tol, the rounding model (T) of the case
in the candidate's dtype (``bpref.tolerance.network_tolerance``, the judge's tolerance),
measured against the larger of bpref's magnitude bound and the hypothesis's own gradient
(``_reproduces``). A hypothesis is claimed only where it differs from bpref's gradient by
more than 2 tol, and is named only once it has differed by more than FIT_SLACK tol on some
network, so that no rounding-sized difference is ever explained by a bug.

* a constant factor c with grad_candidate = c grad_bpref is fitted by least
  squares, then refitted on the same network with another batch size B, another
  output width K and another input width n_0; how c moves tells
  c = c0 B^p K^q n_0^r, and (c0, p, q, r) names the cause (sum vs mean, the 1/2
  convention, a mean over outputs, the batch size read from the wrong axis, a
  sign flip);
* bug models (``_models``): the backward pass rerun with one deliberate change
  (f' at a_l instead of z_l, f' of the output layer missing or applied twice, the
  softmax Jacobian missing or only its diagonal, a known wrong form of f' from
  ``bpref.oracle.forms`` (an a-form derivative fed z, tanh' = 1 - a, ...), a
  kinked derivative wrong on one side of its kink, another layer's activation or z,
  the backward product through W_l instead of W_l^T). A model is the diagnosis
  when it reproduces the candidate on the minimal case and still does on a few
  other networks where it predicts something else than bpref's gradient;
* transposes (on layers where dW_l^T can be told from dW_l), bias gradients and
  the layer where the candidate's implied delta first departs from bpref's are
  read off the arrays;
* a failure within FIT_SLACK x tol of bpref's gradient that no hypothesis above
  reproduces is too close to it for any bug model to be told apart; it is
  reported as such (``near_tolerance``) and nothing else is claimed;
* counterfactuals, when nothing above explains the failure: the minimal case
  rerun with B = 1, fewer layers, square layers, uniform activations or one
  output, on two value seeds; "passes there, fails here" is a finding ("correct
  only for B = 1");
* a failure only because strict kink conventions were asked for names the
  convention (``kink_convention``, ``convention_finding``).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

from bpref import activations as _activations
from bpref.error import normwise_error
from bpref.oracle import forms as _forms
from bpref.oracle import spec as _spec
from bpref.oracle import truth as _truth
from bpref.tolerance import unit_roundoff

FIT_SLACK = 100.0
"""How far from bpref's gradient, in tolerances, a difference is too small to blame on a bug
by itself: a failure within FIT_SLACK x tol that no model reproduces is ``near_tolerance``,
and a model is named only once it has differed from bpref by more than FIT_SLACK x tol on
some network. (The op diagnosis, ``bpref.oracle.ops``, fits its models within it.)"""

SEPARATION = 2.0
"""A model is tried only where it differs from bpref's gradient by more than SEPARATION x tol:
a candidate within tol of it is then more than tol from bpref's, a failure the model explains."""

CONFIRMATIONS = 5
"""Most networks a fitting bug model is tested on beyond the minimal case."""


class Finding(NamedTuple):
  """One tested explanation: ``code`` for programs, ``summary`` and ``detail`` for people."""
  code: str
  summary: str
  detail: str = ""

  def to_json(self) -> dict:
    return {"code": self.code, "summary": self.summary, "detail": self.detail}


# ---------------------------------------------------------------- arrays and fits


def _flat(arrays) -> np.ndarray:
  return np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays]) if arrays else np.zeros(0)


def _worst(cand, model, mags) -> float:
  """max over the arrays X of ||X_cand - X_model||_F / ||M_X||_F (the judge's error measure)."""
  worst = 0.0
  for c, m, s in zip(cand, model, mags):
    worst = max(worst, normwise_error(c, m, s))
  return worst


def fit_error(cand, model, mags) -> float:
  """max over the arrays X of ||X_cand - X_model||_F / ||max(M_X, |X_model|)||_F.

  The judge's error measure with the magnitude bound M_X raised to the model's own gradient
  where that is larger: code computing the model's gradient rounds at the model's scale
  (a model without f' = 1/4 is four times bpref's gradient, and so is its rounding). The op
  diagnosis measures a near-tolerance candidate's fit to its bug models with it too."""
  worst = 0.0
  for c, m, s in zip(cand, model, mags):
    m = np.asarray(m, np.float64)
    bound = np.maximum(np.abs(np.asarray(s, np.float64)), np.abs(m))
    worst = max(worst, normwise_error(c, m, bound))
  return worst


def _reproduces(cand, model, mags, tol) -> bool:
  """Whether the candidate's arrays are as close to the model's as a correct program's must be
  to bpref's: ``fit_error`` within tol, the rounding model (T) of the case in its dtype."""
  return fit_error(cand, model, mags) <= tol


def _fit(cand, true, mags):
  """(c, residual): least-squares c in cand ~ c true, the residual measured as ``fit_error``."""
  c_flat, t_flat = _flat(cand), _flat(true)
  denom = float(t_flat @ t_flat)
  if denom == 0:
    return math.nan, math.inf
  c = float(c_flat @ t_flat) / denom
  scaled = [max(1.0, abs(c)) * np.asarray(m, np.float64) for m in mags]  # c grad rounds at c M
  return c, fit_error(cand, [c * np.asarray(t, np.float64) for t in true], scaled)


def _grads(result):
  return list(result.dW) + list(result.db or ())


def _truth_grads(truth, with_bias=True):
  return list(truth.dW) + (list(truth.db) if (with_bias and truth.db is not None) else [])


def _mags(truth, with_bias=True):
  return list(truth.mag_W) + (list(truth.mag_b) if (with_bias and truth.mag_b is not None) else [])


_SIMPLE = ((1.0, ""), (2.0, "2"), (0.5, "1/2"), (4.0, "4"), (0.25, "1/4"))


def _name_base(c0, rel):
  for value, text in _SIMPLE:
    for sign in (1, -1):
      if abs(c0 - sign * value) <= rel * value:
        return sign, value, text
  return None


def _power(c_a, c_b, n_a, n_b, rel):
  """p in {-1, 0, 1} with c_b / c_a = (n_b / n_a)^p, or None."""
  if n_a == n_b or not (math.isfinite(c_a) and math.isfinite(c_b)) or c_a == 0:
    return None
  ratio = c_b / c_a
  for p in (0, 1, -1):
    if abs(ratio - (n_b / n_a) ** p) <= rel * abs(ratio):
      return p
  return None


# ---------------------------------------------------------------- the bug models


class _Net(NamedTuple):
  """One case in float64 as the bug models see it (W_l in the (n_l, n_{l-1}) layout)."""
  weights: tuple  # W_1..W_L
  activations: tuple  # f_1..f_L
  z: tuple  # z_1..z_L
  a: tuple  # a_0..a_L
  g: np.ndarray  # dC/dy of the reduced loss, (B, n_L)
  bias: bool
  declared: tuple | None  # the search's names, for the truth's f' (``bpref.oracle.truth``)


def _net(case, truth, declared) -> _Net:
  return _Net(tuple(np.asarray(W, np.float64) for W in case.weights), tuple(case.arch.activations),
              truth.z, truth.a, truth.g, case.biases is not None, declared)


def _df(net, l, name=None, at=None):
  """f'_l of layer l (1-based) at z_l (at ``at`` if given), of activation ``name`` if given,
  else the layer's own."""
  return _truth.df(name or net.activations[l - 1], net.z[l - 1] if at is None else at,
                   declared=net.declared)


def _softmax_vjp(a, v):
  return a * (v - np.sum(v * a, axis=-1, keepdims=True))  # rows of (diag(a) - a a^T) v


def _output_delta(net):
  """delta_L = J_L^T dC/dy (34), the softmax through its Jacobian."""
  if net.activations[-1] == "softmax":
    return _softmax_vjp(net.a[-1], net.g)
  return net.g * _df(net, len(net.weights))


def _deltas(net, delta_L=None, df_l=None, through=None) -> list:
  """[delta_1..delta_L] from delta_L down through (37) with f'_l = df_l(l), the product with
  W_(l+1) taken with ``through[l]`` in its place where given (``truth.deltas64``)."""
  delta = _output_delta(net) if delta_L is None else delta_L
  return _truth.deltas64(net.weights, delta, df_l or (lambda l: _df(net, l)), through)


def _backward(net, delta_L=None, df_l=None, through=None) -> list:
  """[dW_1..dW_L, db_1..db_L] from delta_L down through (37) with f'_l = df_l(l) (and
  ``through`` as for ``_deltas``)."""
  dW, db = _truth.grads64(_deltas(net, delta_L, df_l, through), net.a, net.bias)
  return dW + db


def _one_example(times_b):
  """A model of dW_l = c delta_l,1^T a_(l-1),1, the first example's term alone (c = B when
  the code scales it up as if to make up for the others), db_l the sum as it should be."""
  def grads(net):
    B = net.a[0].shape[0]
    if B == 1:
      return None
    deltas = _deltas(net)
    dW = [(B if times_b else 1) * np.outer(d[0], a[0]) for d, a in zip(deltas, net.a[:-1])]
    return dW + ([d.sum(axis=0) for d in deltas] if net.bias else [])
  return grads


class _NotComputable(Exception):
  """Raised by a model that cannot be evaluated on a network (shapes that do not broadcast):
  where the candidate returns a gradient there, the model does not describe it."""


class _Model(NamedTuple):
  """A bug model: ``grads(net)`` is the gradient the bug gives on ``net``, or None where the
  bug changes nothing (it then predicts bpref's gradient). A ``general`` model is dropped
  when a specific one with the same code explains the candidate as well."""
  finding: Finding
  grads: Callable
  general: bool = False


def _hidden_override(name, df, output=True):
  """A model changing f' of the layers with activation ``name`` to df(net, l): the hidden
  layers and, with ``output``, the output layer."""
  def grads(net):
    last = len(net.weights) + (1 if output else 0)
    layers = [l for l in range(1, last) if net.activations[l - 1] == name]
    if not layers:
      return None
    L = len(net.weights)
    df_l = lambda l: df(net, l) if l in layers else _df(net, l)
    delta_L = net.g * df(net, L) if L in layers else None
    return _backward(net, delta_L, df_l)
  return grads


_NEGATIVE_BRANCH = {"relu": "0", "leaky_relu": "0.01", "elu": "exp(z)", "selu": "scale alpha exp(z)"}
"""f' left of the kink, in words, for the kinked activations."""


def _kink_models(name, declared) -> list:
  """One-sided errors of a kinked f': each side's branch used on the other side."""
  pos = float(np.asarray(_truth.df(name, np.ones(1), declared=declared))[0])  # f' right of the kink
  neg = _NEGATIVE_BRANCH.get(name, f"{name}'s negative branch")
  out = [_Model(Finding(
      "kink_side", f"{name}' is wrong on the negative side of its kink: {pos:g} for z < 0",
      f"{name}'(z) for z < 0 is {neg}; the candidate gives it the positive side's value {pos:g} "
      "there (e.g. relu' = (z != 0), or a comparison that lets negative z through)"),
      _hidden_override(name, lambda net, l: np.where(
          net.z[l - 1] < 0, pos, _df(net, l, name))))]
  if neg != "0":
    out.append(_Model(Finding(
        "kink_side", f"{name}' is wrong on the negative side of its kink: 0 for z < 0",
        f"{name}'(z) for z < 0 is {neg}; the candidate gives it relu's 0 there"),
        _hidden_override(name, lambda net, l: np.where(net.z[l - 1] < 0, 0.0, _df(net, l, name)))))
  out.append(_Model(Finding(
      "kink_side", f"{name}' is mirrored: each side of the kink has the other side's derivative",
      f"{name}'(z) was computed as {name}'(-z) (a comparison the wrong way round, e.g. "
      "relu' = (z < 0))"),
      _hidden_override(name, lambda net, l: np.where(
          net.z[l - 1] == 0, _df(net, l, name), _df(net, l, name, -net.z[l - 1])))))
  return out


def _models(arch, declared) -> list:
  """The bug models that could change the gradient of ``arch``, the most specific first
  (``declared`` as for ``bpref.oracle.truth``)."""
  acts = arch.activations
  last = acts[-1]
  L = len(acts)
  names = list(dict.fromkeys(acts))
  out = []
  if last == "softmax":
    def missing(net):
      return _backward(net, net.g) if net.activations[-1] == "softmax" else None

    def diagonal(net):
      if net.activations[-1] != "softmax":
        return None
      return _backward(net, net.g * net.a[-1] * (1 - net.a[-1]))

    def twice(net):
      if net.activations[-1] != "softmax":
        return None
      return _backward(net, _softmax_vjp(net.a[-1], _output_delta(net)))

    def diagonal_twice(net):
      if net.activations[-1] != "softmax":
        return None
      return _backward(net, _output_delta(net) * net.a[-1] * (1 - net.a[-1]))

    out += [
        _Model(Finding(
            "softmax_jacobian_missing", "the softmax's Jacobian is missing: delta_L = dC/dy, the "
            "gradient with respect to the probabilities",
            "delta_L = (diag(a) - a a^T) dC/dy (34); the candidate stops at dC/dy (e.g. -t / y of "
            "the cross-entropy) where the gradient with respect to z_L belongs (a - t for "
            "cross-entropy after softmax)"), missing),
        _Model(Finding(
            "softmax_jacobian_diagonal", "the softmax output uses only the diagonal a (1 - a) of "
            "its Jacobian", "softmax is not elementwise: delta_L = a * (g - <g, a>) needs the full "
            "Jacobian diag(a) - a a^T, not the elementwise 'derivative' a (1 - a)"), diagonal),
        _Model(Finding(
            "output_fprime_extra", "the softmax's Jacobian is applied twice: delta_L was already "
            "dC/dz_L", "a - t is the gradient with respect to z_L of cross-entropy after softmax "
            "(the Jacobian is already in it); the candidate multiplies it by diag(a) - a a^T "
            "again"), twice),
        _Model(Finding(
            "output_fprime_extra", "an extra factor a (1 - a) on the softmax output: delta_L was "
            "already dC/dz_L", "a - t is the gradient with respect to z_L of cross-entropy after "
            "softmax; the candidate multiplies it by a (1 - a) as if softmax were elementwise"),
            diagonal_twice),
    ]
  elif last != "identity":
    def missing(net):
      if net.activations[-1] in ("identity", "softmax"):
        return None
      return _backward(net, net.g)

    def twice(net):
      if net.activations[-1] in ("identity", "softmax"):
        return None
      return _backward(net, _output_delta(net) * _df(net, len(net.weights)))

    out += [
        _Model(Finding(
            "output_fprime_missing", "the output layer's f' is missing: delta_L = dC/dy",
            f"delta_L = dC/dy * f'_L(z_L) (34); the candidate drops f'_L = {last}' (invisible with "
            "an identity output layer)"), missing),
        _Model(Finding(
            "output_fprime_extra", f"the output layer's f' is applied twice: delta_L = dC/dy * "
            f"{last}'(z_L)^2", f"delta_L = dC/dy * f'_L(z_L) (34) once; the candidate multiplies by "
            f"{last}' a second time (e.g. a - t, which is already dC/dz_L for binary cross-entropy "
            "after sigmoid, times a (1 - a) again)"), twice),
    ]
  for name in names:
    if name in _activations.KINKED:
      out += _kink_models(name, declared)
  if L >= 2 and any(a != "identity" for a in acts[:-1]):
    def no_hidden(net):
      if all(a == "identity" for a in net.activations[:-1]):
        return None
      return _backward(net, None, lambda l: np.ones_like(net.z[l - 1]))

    out.append(_Model(Finding(
        "hidden_fprime_missing", "the hidden layers' f' is missing: delta_l = delta_(l+1) W_(l+1)",
        "delta_l = (delta_(l+1) W_(l+1)) f'_l(z_l) (37); the candidate drops f'_l in the hidden "
        "layers"), no_hidden))
  if any(n not in ("identity", "relu", "softmax") for n in names):
    def at_a(net):
      L = len(net.weights)
      layers = [l for l in range(1, L + 1) if net.activations[l - 1] not in ("identity", "relu",
                                                                               "softmax")]
      if not layers:
        return None
      df_l = lambda l: _df(net, l, at=net.a[l]) if l in layers else _df(net, l)
      return _backward(net, net.g * df_l(L) if L in layers else None, df_l)

    def hidden_at_a(net):
      L = len(net.weights)
      layers = [l for l in range(1, L) if net.activations[l - 1] not in ("identity", "relu",
                                                                          "softmax")]
      if not layers:
        return None
      return _backward(net, None, lambda l: _df(net, l, at=net.a[l] if l in layers else None))

    out.append(_Model(Finding(
        "fprime_at_a", "f' is evaluated at a_l instead of z_l, for every activation",
        "f'_l(a_l) = f'_l(f_l(z_l)) was used where (37) needs f'_l(z_l), in every layer"), at_a,
        general=True))
    out.append(_Model(Finding(
        "fprime_at_a", "f' is evaluated at a_l instead of z_l in the hidden layers (the output "
        "layer's f' is right)", "f'_l(a_l) = f'_l(f_l(z_l)) was used where (37) needs f'_l(z_l), "
        "in the recursion delta_l = (delta_(l+1) W_(l+1)) f'_l (37) for every hidden layer; "
        "delta_L (34) has f'_L(z_L)"), hidden_at_a, general=True))
  for name in names:
    if name in ("identity", "relu", "softmax"):
      continue
    out.append(_Model(Finding(
        "fprime_at_a", f"f' of {name} is evaluated at a_l instead of z_l",
        f"{name}'(a_l) = {name}'({name}(z_l)) was used where (37) needs {name}'(z_l)"),
        _hidden_override(name, lambda net, l, name=name: _df(net, l, name, net.a[l]))))
  for times_b, how in ((False, ""), (True, " times B")):
    out.append(_Model(Finding(
        "batch_sum_missing", f"dW is the first example's term only{how}, not the sum over the "
        "batch", "dC/dW_l = sum_b delta_l,b^T a_(l-1),b (39); the candidate keeps the first "
        f"example's term{how} (a loop over the batch that stops after one example, or an "
        "index [0] where a sum belongs); db is summed right"), _one_example(times_b)))

  def reshaped(net):
    grads = _backward(net)
    L = len(net.weights)
    if all(min(g.shape) == 1 for g in grads[:L]):  # a vector reshaped is its transpose
      return None
    # (39) transposed, a_(l-1)^T delta_l, then reshaped to (n_l, n_(l-1))
    return [g.T.reshape(g.shape) for g in grads[:L]] + grads[L:]

  out.append(_Model(Finding(
      "transposed", "dW is a_(l-1)^T delta_l reshaped to (n_l, n_(l-1)), not transposed",
      "dC/dW_l = delta_l^T a_(l-1) (39); the candidate computes its transpose and reshapes it (a "
      "row-major buffer read with the other stride): right on layers with one row or column, "
      "the transpose on square ones, neither on the others"), reshaped))
  out += _not_transposed_models(arch)
  for name in names:
    for form in _forms.of(name):  # the known wrong forms of f' (bpref.oracle.forms)
      out.append(_Model(Finding(
          "activation_derivative", form.summary(),
          f"(34) and (37) need {name}'(z_l) in every layer with activation {name}; the "
          "candidate's f' there is this known wrong form"),
          _hidden_override(name, lambda net, l, form=form: form.values(net.z[l - 1], net.a[l]))))
  out += _index_models(arch)
  out += _layer_shift_models(arch)
  return out


def _unsymmetric_layers(sizes) -> list:
  """The layers l >= 2 whose backward product changes when W_l's row-major buffer is read as
  an (n_(l-1), n_l) matrix: n_l and n_(l-1) both at least 2 (one row or one column reads the
  same either way)."""
  return [l for l in range(2, len(sizes)) if min(sizes[l], sizes[l - 1]) >= 2]


def _not_transposed_models(arch) -> list:
  """delta_(l-1) computed through W_l instead of W_l^T, in every layer l >= 2.

  In rows, (37) is delta_(l-1) = (delta_l W_l) f'_(l-1); the bug multiplies by W_l^T, i.e.
  W_l delta_l where W_l^T delta_l belongs. That needs a square W_l; code that walks W_l's
  row-major buffer with the strides swapped (W[j n_l + i] for W[i n_(l-1) + j]) computes it on
  every layer, reading W_l as reshape(W_l, (n_(l-1), n_l)): the model is that reading, which
  is W_l itself on square layers.
  """
  layers = _unsymmetric_layers(arch.sizes)
  if not layers:
    return []

  def grads(net):
    sizes = (net.a[0].shape[1],) + tuple(W.shape[0] for W in net.weights)
    if not _unsymmetric_layers(sizes):
      return None
    # delta_l reshape(W_l, (n_(l-1), n_l))^T in place of delta_l W_l (37): the buffer read
    # with the strides swapped; delta_l W_l^T on a square layer
    read = [W.reshape(W.shape[1], W.shape[0]).T for W in net.weights]
    return _backward(net, through=read)

  where = ", ".join(map(str, layers))
  square = all(arch.sizes[l] == arch.sizes[l - 1] for l in layers)
  return [_Model(Finding(
      "backward_not_transposed", f"delta_(l-1) is computed through W_l instead of W_l^T (layer(s) "
      f"{where}): W_l delta_l where W_l^T delta_l belongs",
      "delta_(l-1) = (W_l^T delta_l) f'_(l-1)(z_(l-1)) (37), in rows delta_l W_l; the candidate "
      "multiplies delta_l by W_l itself, not by its transpose (in rows, delta_l W_l^T). "
      + ("On a square W_l that is W_l delta_l; where W_l is not square, NumPy refuses the product "
         "and code walking W_l's row-major buffer with the strides swapped (W[j * n_l + i] for "
         "W[i * n_(l-1) + j]) reads W_l as an (n_(l-1), n_l) matrix, which is what this model "
         "computes" if square else
         "W_l is not square here: the candidate reads W_l's row-major buffer with the strides "
         "swapped (W[j * n_l + i] for W[i * n_(l-1) + j]), as an (n_(l-1), n_l) matrix; on a "
         "square layer that is W_l delta_l")), grads)]


def _from_above(net, l, name, at):
  """f' of activation ``name`` at ``at`` (an array of layer l + 1's shape), as code indexing one
  layer off multiplies it into delta_l: broadcast to layer l's shape, or _NotComputable."""
  value = _df(net, l, name, at)
  try:
    return np.broadcast_to(value, net.z[l - 1].shape)
  except ValueError:
    raise _NotComputable from None


def _layer_shift_models(arch) -> list:
  """f'_l evaluated at the layer above's z_(l+1): with the layer above's activation too (both
  indexed one off), or with layer l's own (only z one off; a-form code evaluates it at a_(l+1)).
  NumPy runs such code where (B, n_(l+1)) broadcasts to (B, n_l)."""
  if len(arch.activations) < 2:
    return []

  def both(net):
    if len(net.weights) < 2:
      return None
    return _backward(net, None, lambda l: _from_above(net, l, net.activations[l], net.z[l]))

  out = [_Model(Finding(
      "layer_index", "f'_l is the layer above's, activation and z: delta_l uses "
      "f'_(l+1)(z_(l+1))", "delta_l = (delta_(l+1) W_(l+1)) f'_l(z_l) (37) needs layer l's "
      "activation at layer l's z_l; the candidate takes both from layer l + 1 (activations[l] "
      "and zs[l] where activations[l - 1] and zs[l - 1] belong: a layer index one off)"), both)]
  for form in ("z", "a"):
    def z_only(net, form=form):
      if len(net.weights) < 2:
        return None

      def df_l(l):
        name = net.activations[l - 1]
        if form == "a" and name in _forms.A_FORMS:
          value = _forms.A_FORMS[name](net.a[l + 1])  # the a-form at a_(l+1)
          try:
            return np.broadcast_to(value, net.z[l - 1].shape)
          except ValueError:
            raise _NotComputable from None
        return _from_above(net, l, name, net.z[l])
      return _backward(net, None, df_l)

    out.append(_Model(Finding(
        "layer_index", "f'_l is evaluated at the layer above's z_(l+1): delta_l uses "
        "f'_l(z_(l+1))", "delta_l = (delta_(l+1) W_(l+1)) f'_l(z_l) (37); the candidate "
        "evaluates layer l's f' at z_(l+1) (or at a_(l+1) for a derivative written in terms of "
        "a): zs[l] where zs[l - 1] belongs, a layer index one off"), z_only))
  return out


def _df_form(net, l, name, form):
  """f' of activation ``name`` at layer l, written in terms of z_l (form "z") or of the layer's
  output a_l (form "a": 1 - a^2, a (1 - a), ...; what a-form code computes with the wrong name)."""
  if form == "a" and name in _forms.A_FORMS:
    return _forms.A_FORMS[name](net.a[l])
  return _df(net, l, name)


def _index_models(arch) -> list:
  """f'_l taken from another layer's activation: the layer above's, the first's, the output's.

  Code with a-form derivatives evaluates the wrong activation's form at a_l, code with z-form
  ones at z_l; both are modelled.
  """
  acts = arch.activations
  if len(acts) < 2 or len(set(acts)) == 1:
    return []
  out = []
  for form in ("z", "a"):  # the same on networks without a-form activations
    def shifted(net, form=form):
      L = len(net.weights)
      above = [net.activations[l] for l in range(1, L)]  # the activation of layer l + 1
      if all(a == b for a, b in zip(above, net.activations[:-1])) or "softmax" in above:
        return None
      return _backward(net, None, lambda l: _df_form(net, l, net.activations[l], form))

    def first(net, form=form):
      f1 = net.activations[0]
      if all(a == f1 for a in net.activations) or net.activations[-1] == "softmax":
        return None
      L = len(net.weights)
      return _backward(net, net.g * _df_form(net, L, f1, form), lambda l: _df_form(net, l, f1, form))

    def last(net, form=form):
      fL = net.activations[-1]
      if all(a == fL for a in net.activations) or fL == "softmax":
        return None
      return _backward(net, None, lambda l: _df_form(net, l, fL, form))

    out.append(_Model(Finding(
        "activation_index", "f'_l is taken from the layer above: the activations are indexed one "
        "off", "delta_l = (delta_(l+1) W_(l+1)) f'_l(z_l) (37) needs layer l's activation; the "
        "candidate uses f'_(l+1) (activations[l] where activations[l - 1] belongs)"), shifted))
    if acts[-1] != "softmax":
      out.append(_Model(Finding(
          "activation_index", "every layer uses the first layer's f'",
          f"f'_l must be each layer's own activation's derivative; the candidate uses "
          f"{acts[0]}' in every layer (a fixed index into the activation list)"), first))
      out.append(_Model(Finding(
          "activation_index", "every layer uses the output layer's f'",
          f"f'_l must be each layer's own activation's derivative; the candidate uses "
          f"{acts[-1]}' in every layer (a fixed index into the activation list)"), last))
  return out


_BIAS_MODELS = (
    ("delta_l of the first example only (the batch sum is missing)", lambda d: d[0]),
    ("delta_l of the last example only (an assignment where += was meant)", lambda d: d[-1]),
    ("the mean of delta_l over the batch (1/B: dC/db_l = sum_b delta_l,b)",
     lambda d: d.mean(axis=0)),
    ("B x the sum of delta_l over the batch", lambda d: d.shape[0] * d.sum(axis=0)),
    ("B x delta_l of the first example (one example's term scaled up as if to stand for the "
     "batch)", lambda d: d.shape[0] * d[0]),
)
"""How a db_l goes wrong when the weights' gradients are right: (words, delta_l -> db_l)."""


# ---------------------------------------------------------------- the experiments


class Diagnoser:
  """Runs the experiments on a minimal failing case; see the module docstring."""

  def __init__(self, ev, minimal):
    self.ev = ev
    self.spec = ev.spec
    self.minimal = minimal
    self.arch = minimal.arch
    self.declared = ev.declared
    self.case, truth = ev.case_and_truth(self.arch)
    self.truth = truth
    self.tol = minimal.tolerance
    self.rel = min(1e-2, max(1e-6, FIT_SLACK * self.tol))  # how close a factor is to a named one
    self._robust = None

  def _try(self, arch):
    if arch is None or not _spec.in_domain(arch, self.spec) or self.ev.stopped:
      return None
    results = self.ev.run([arch], "diagnose")
    return results[0] if results else None

  def _passes(self, arch) -> bool:
    """Whether the candidate passes ``arch`` at its value seed and at the next one."""
    for seed in (arch.seed, arch.seed + 1):
      r = self._try(arch._replace(seed=seed))
      if r is None or not r.passed:
        return False
    return True

  def _fails_robustly(self) -> bool:
    """Whether the minimal case also fails with other values (the next value seed)."""
    if self._robust is None:
      r = self._try(self.arch._replace(seed=self.arch.seed + 1))
      self._robust = r is not None and not r.passed
    return self._robust

  def _fits(self, model_grads, with_bias=True) -> bool:
    cand = _grads(self.minimal) if with_bias else list(self.minimal.dW)
    return _reproduces(cand, model_grads, _mags(self.truth, with_bias), self.tol)

  def near_tolerance(self):
    """A Finding when the candidate is within FIT_SLACK x tol of bpref (and no model reproduces
    it): no model can be told apart."""
    r = self.minimal
    worst = _worst(_grads(r), _truth_grads(self.truth), _mags(self.truth))
    if worst > FIT_SLACK * self.tol:
      return None
    return Finding(
        "near_tolerance", f"the gradient is off by {worst / self.tol:.3g} x the tolerance: close to "
        "bpref's, but outside the rounding a correct program makes here",
        f"a missing term, factor or transpose moves the error to order 1; an error within "
        f"{FIT_SLACK:g} x the tolerance ({worst:.2e} against {self.tol:.1e}) cannot be told apart "
        "from bpref's gradient by any bug model. Likely a formula that loses digits (a cancelling "
        "sum or difference, arithmetic in a lower precision somewhere); rerun the reproducer "
        "and compare digit by digit")

  def factor(self, with_bias=True, which="gradient"):
    """A Finding for grad_candidate = c grad_bpref, or None."""
    r = self.minimal
    cand = _grads(r) if with_bias else list(r.dW)
    c, resid = _fit(cand, _truth_grads(self.truth, with_bias), _mags(self.truth, with_bias))
    if not (math.isfinite(c) and resid <= self.tol) or abs(c - 1) <= self.rel:
      return None
    a = self.arch
    B, K, N = a.batch, a.sizes[-1], a.sizes[0]
    widths = _spec.widths(self.spec)
    min_k = 2 if a.activations[-1] == "softmax" else 1
    experiments = (
        (B, _spec.batches(self.spec), lambda v: a._replace(batch=v)),
        (K, tuple(w for w in widths if w >= min_k), lambda v: a._replace(sizes=a.sizes[:-1] + (v,))),
        (N, widths, lambda v: a._replace(sizes=(v,) + a.sizes[1:])),
    )
    powers = []
    for current, choices, change in experiments:
      other = self._other(choices, current)
      p = 0
      if other is not None:
        c2 = self._refit(self._try(change(other)), with_bias)
        p = _power(c, c2, current, other, self.rel) if c2 is not None else None
      powers.append(p)
    p, q, s = powers
    base = None
    if None not in powers:
      base = _name_base(c / (B ** p * K ** q * N ** s), self.rel)
    if base is None:
      # an unnamed factor is a finding only if other values give the same factor (on a tiny
      # case any wrong gradient is some multiple of the right one)
      c2 = self._refit(self._try(a._replace(seed=a.seed + 1)), with_bias)
      if c2 is None or abs(c2 - c) > self.rel * abs(c):
        return None
      return Finding("constant_factor", f"the {which} is {c:.6g} x bpref's",
                     f"a constant factor {c:.6g} (B = {B}, K = {K}, n_0 = {N}) that does not follow "
                     "B, K or n_0 in a simple way")
    sign, value, text = base
    if sign < 0 and value == 1 and p == q == s == 0:
      return Finding("sign_flip", f"the {which} has the wrong sign (-1 x bpref's)",
                     "likely t - y where y - t belongs (dC/dy of the loss), or the ascent direction "
                     "returned instead of the gradient")
    parts, causes = [], []
    if sign < 0:
      parts.append("-1")
      causes.append("a sign flip (t - y instead of y - t)")
    if value != 1:
      parts.append(text)
      loss = a.loss
      if value == 2 and loss == "half_squared_error":
        causes.append("the 1/2 of C = 1/2 sum (t - y)^2 was dropped: dC/dy = 2 (y - t) belongs to "
                      "squared_error (the 1/2 convention)")
      elif value == 0.5 and loss == "squared_error":
        causes.append("the 2 of dC/dy = -2 (t - y) is missing: y - t is the gradient of "
                      "half_squared_error (the 1/2 convention)")
      else:
        causes.append(f"a factor {text} (the 1/2 convention of the loss, or a doubled term)")
    mean = self.spec.reduction == "mean"
    if p == 1 and s == -1:
      parts.append("B/n_0")
      causes.append("divided by n_0, the input width (x.shape[1]), where the batch size B "
                    "(x.shape[0]) belongs: the batch size read from the wrong axis (the divisor "
                    "is n_0/B x bpref's)" if mean else
                    "divided by n_0 (x.shape[1]) and multiplied by B")
    else:
      if p == 1:
        parts.append("B")
        causes.append("summed over the batch where the mean was declared (reduction='sum' "
                      "behaviour)" if mean else "multiplied by the batch size B")
      elif p == -1:
        parts.append("1/B")
        causes.append("divided by B twice" if mean else "averaged over the batch where the sum "
                      "was declared (reduction='mean' behaviour)")
      if s == -1:
        parts.append("1/n_0")
        causes.append("divided by n_0, the input width (x.shape[1])" + (
            "" if mean else ": a batch mean where the sum was declared, with the batch size read "
            "from the wrong axis"))
      elif s == 1:
        parts.append("n_0")
        causes.append("multiplied by n_0, the input width (x.shape[1])")
    if q == -1:
      parts.append("1/K")
      causes.append("a mean over the K outputs as well as the batch (as torch.nn.MSELoss and "
                    "scikit-learn's MLP do)")
    elif q == 1:
      parts.append("K")
      causes.append("multiplied by the number of outputs K")
    if not parts:  # c0 = 1: no factor after all
      return None
    return Finding("constant_factor", f"the {which} is {' x '.join(parts)} x bpref's (factor "
                   f"{c:.6g} at B = {B}, K = {K}, n_0 = {N})", "likely cause: " + "; ".join(causes))

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
    return c if resid <= result.tolerance else None

  def bias(self):
    """Bias findings when every dW is right and some db is wrong.

    How db is wrong (the first or last example's delta only, a mean, a factor B) is named only
    once it is confirmed on a network where the choices differ: B >= 2 and every layer at least
    2 wide (on one unit a one-number factor fits any wrong db, and on one example every
    choice is the sum)."""
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
    detail = "the weights' gradients are right"
    bad = [int(k[1:]) for k in bad_b]
    named = [text for text, db_of in _BIAS_MODELS if self._bias_fits(r, self.truth, bad, db_of)]
    if named:
      confirm = self._bias_confirming_arch()
      res = self._try(confirm) if confirm is not None else None
      if res is not None and res.db is not None and res.dW is not None:
        truth = self.ev.case_and_truth(res.arch)[1]
        named = [text for text, db_of in _BIAS_MODELS if text in named
                 and self._bias_fits(res, truth, bad, db_of)]
        if named:
          return Finding("bias_wrong", f"the bias gradient is wrong in layer(s) {layers}: db_l is "
                         f"{named[0].split(' (')[0]}",
                         f"{detail}; db_l is {named[0]} (seen again with B = {res.arch.batch} "
                         f"and widths {res.arch.sizes}, where the choices differ)")
    cand = [r.db[l - 1] for l in bad]
    c, resid = _fit(cand, [self.truth.db[l - 1] for l in bad],
                    [self.truth.mag_b[l - 1] for l in bad])
    if math.isfinite(c) and resid <= self.tol and sum(np.size(v) for v in cand) > 1:
      detail += f"; db is {c:.6g} x bpref's"  # a factor fitted on more than one entry
    return Finding("bias_wrong", f"the bias gradient is wrong in layer(s) {layers}", detail)

  def _bias_fits(self, result, truth, bad, db_of) -> bool:
    """Whether db_of(delta_l, B) reproduces db_l of ``result`` in the layers ``bad`` (all dW and
    the other db right)."""
    cand, model, mags = list(result.dW), list(truth.dW), list(truth.mag_W)
    for l in range(1, len(truth.db) + 1):
      cand.append(result.db[l - 1])
      model.append(db_of(truth.deltas[l - 1]) if l in bad else truth.db[l - 1])
      mags.append(truth.mag_b[l - 1])
    if _worst(model, list(truth.dW) + list(truth.db), mags) <= SEPARATION * result.tolerance:
      return False  # the model changes nothing here, or too little to be told apart
    return _reproduces(cand, model, mags, result.tolerance)

  def _bias_confirming_arch(self):
    """The minimal network with B >= 2 and every layer at least 2 wide, other values; None
    where the domain allows neither."""
    bs, ws = _spec.batches(self.spec), _spec.widths(self.spec)
    if bs[-1] < 2:
      return None
    a = self.arch._replace(batch=max(2, self.arch.batch), seed=self.arch.seed + 1, kink=False,
                           sizes=tuple(max(n, min(2, ws[-1])) for n in self.arch.sizes))
    return a if _spec.in_domain(a, self.spec) else None

  def transposed(self):
    """dW_l^T matches on a square layer where the transpose can be told from dW_l itself, and a
    network whose layers are not square gets dW_l back in the transposed shape: a transpose
    and a reshape (a row-major buffer read with the other stride) agree on square layers only."""
    r = self.minimal
    hits = []
    for l, (c, t, m) in enumerate(zip(r.dW, self.truth.dW, self.truth.mag_W), start=1):
      if c.shape[0] != c.shape[1] or r.errors[f"W{l}"] <= self.tol:
        continue
      if _worst([t.T], [t], [m]) <= FIT_SLACK * self.tol:  # dW_l nearly symmetric (1 x 1)
        continue
      if _reproduces([c.T], [t], [m], self.tol):
        hits.append(l)
    if not hits:
      return None
    other = self._non_square_arch()
    if other is not None:
      res = self._try(other)
      if res is None or res.kind != "shape" or "transposed" not in res.message:
        return None
    return Finding("transposed", f"dW is transposed in layer(s) {', '.join(map(str, hits))}",
                   "dC/dW_l = delta_l^T a_(l-1) has shape (n_l, n_(l-1)); the candidate returned "
                   "a_(l-1)^T delta_l (square layers hide this from a shape check"
                   + ("; a network of non-square layers gets the transposed shape back)"
                      if other is not None else ")"))

  def _non_square_arch(self):
    """The minimal network with no square layer (n_l != n_(l-1)), other values; None where the
    domain's widths do not allow it."""
    ws = _spec.widths(self.spec)
    if len(ws) < 2:
      return None
    L = len(self.arch.sizes)
    sizes = tuple(ws[-1] if (L - 1 - i) % 2 == 0 else ws[-2] for i in range(L))
    a = self.arch._replace(sizes=sizes, seed=self.arch.seed + 1, kink=False)
    return a if _spec.in_domain(a, self.spec) else None

  def _confirming_archs(self) -> list:
    """Other networks to test a fitting model on: wider with other values, no square layer, one
    layer more, another output activation, the hidden layers' activation changed.

    They use the case's own activations where they can, so that a bug of another activation
    does not refute a model of this one.
    """
    spec = self.spec
    w, bs = _spec.widths(spec), _spec.batches(spec)
    # as wide as the domain allows, so that every sign pattern and saturation shows
    a = self.arch._replace(sizes=(w[-1],) * len(self.arch.sizes), batch=bs[-1], kink=False)
    acts, last = a.activations, a.activations[-1]
    out = [a._replace(seed=a.seed + 1)]
    other = self._non_square_arch()  # where a transpose and a reshape differ
    if other is not None:
      out.append(other._replace(batch=bs[-1], seed=a.seed + 2))
    fancy = [h for h in dict.fromkeys(acts) if h in spec.hidden and h != "identity"] + \
        [h for h in spec.hidden if h != "identity" and h not in acts]
    if a.depth < spec.max_depth and fancy:
      out.append(a._replace(sizes=(w[-1],) + a.sizes, activations=(fancy[0],) + acts))
    outs = spec.outputs_for(a.loss)
    swap = [o for o in dict.fromkeys(acts) if o in outs and o not in ("identity", "softmax", last)] + \
        [o for o in outs if o not in ("identity", "softmax", last) + acts]
    if swap and last != "softmax":
      out.append(a._replace(activations=acts[:-1] + (swap[0],)))
    if a.depth >= 2 and len(fancy) > 1:
      other = fancy[1] if fancy[0] in acts[:-1] else fancy[0]
      out.append(a._replace(activations=(other,) * (a.depth - 1) + acts[-1:]))
    return [x for x in out if x != self.arch and _spec.in_domain(x, spec)][:CONFIRMATIONS]

  def models(self):
    """Bug models that reproduce the candidate here and on the confirming networks.

    A model is tried where it differs from bpref's gradient by more than SEPARATION x tol. On
    a confirming network it must reproduce the candidate's gradient wherever the candidate
    returned one: where the model changes nothing, the candidate must pass; where the model
    cannot be evaluated (shapes that do not broadcast), the candidate must not have returned
    a gradient. A model is named only if, on some network, it differed from bpref's gradient
    by more than FIT_SLACK x tol.
    """
    net = _net(self.case, self.truth, self.declared)
    true, mags = _truth_grads(self.truth), _mags(self.truth)
    fitting, shown = [], set()
    for i, model in enumerate(_models(self.arch, self.declared)):
      try:
        grads = model.grads(net)
      except _NotComputable:
        continue
      if grads is None:
        continue
      apart = _worst(grads, true, mags)
      if apart > SEPARATION * self.tol and self._fits(grads):
        fitting.append((i, model))
        if apart > FIT_SLACK * self.tol:
          shown.add(i)
    if not fitting:
      return []
    for arch in self._confirming_archs():
      r = self._try(arch)
      if r is None or r.dW is None or r.kind in ("structure", "shape", "dtype"):
        continue
      case, truth = self.ev.case_and_truth(arch)
      other = _net(case, truth, self.declared)
      cand, true2, mags2 = _grads(r), _truth_grads(truth), _mags(truth)
      keep = []
      for i, model in fitting:
        try:
          grads = model.grads(other)
        except _NotComputable:
          continue
        if _reproduces(cand, true2 if grads is None else grads, mags2, r.tolerance):
          keep.append((i, model))
          if grads is not None and _worst(grads, true2, mags2) > FIT_SLACK * r.tolerance:
            shown.add(i)
      fitting = keep
      if not fitting:
        break
    fitting = [model for i, model in fitting if i in shown]
    specific = {m.finding.code for m in fitting if not m.general}
    findings = [m.finding for m in fitting if not (m.general and m.finding.code in specific)]
    return list(dict.fromkeys(findings))

  def kink_value(self):
    """f'(0) of a kinked activation, fitted where z is exactly 0 (planted kinks), when that
    alone explains the candidate."""
    net = _net(self.case, self.truth, self.declared)
    cand = _flat(_grads(self.minimal))
    for name in dict.fromkeys(self.arch.activations):
      layers = [l for l, a in enumerate(self.arch.activations, 1) if a == name]
      if name not in _activations.KINKED or not any(np.any(net.z[l - 1] == 0) for l in layers):
        continue
      at = lambda v, name=name: _hidden_override(name, lambda n, l: np.where(
          n.z[l - 1] == 0, v, _df(n, l, name)))(net)
      g0, g1 = _flat(at(0.0)), _flat(at(1.0))
      d = g1 - g0
      if not d @ d > 0:
        continue
      right = float(np.asarray(_truth.df(name, np.ones(1), declared=self.declared))[0])
      left = float(np.asarray(_truth.df(name, -np.full(1, 1e-300), declared=self.declared))[0])
      lo, hi = min(left, right), max(left, right)
      fitted = float((cand - g0) @ d / (d @ d))  # exact when one layer has kinks
      for v in (fitted, 0.0, 0.5, 1.0, lo, hi, (lo + hi) / 2):
        if self._fits(at(v)):
          inside = lo - 1e-12 <= v <= hi + 1e-12
          return Finding(
              "kink_value", f"{name}'(0) = {v:.6g} at the kink: "
              + ("a subgradient, but not a convention in use" if inside else
                 f"not a subgradient (outside [{lo:g}, {hi:g}])"),
              f"where z is exactly 0 the candidate uses {name}'(0) = {v:.6g}; any value in "
              f"[{lo:g}, {hi:g}] is a valid subgradient there, and the conventions in use are "
              "listed in bpref.oracle.judge.KINK_CONVENTIONS (e.g. leaky_relu' = (z > 0) + "
              "0.01 (z < 0) gives 0)")
    return None

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
        # dW_l = D_l^T A_(l-1) (39) solved for D_l: A_(l-1) (B, n_(l-1)) has full row rank B,
        # so A pinv(A) = I_B and D_l^T = dW_l pinv(A_(l-1)), of shape (n_l, B)
        est = (r.dW[l - 1] @ np.linalg.pinv(A)).T
      else:
        out.append(None)
        continue
      out.append(normwise_error(est, true))
    return out

  def activation_swap(self, departure):
    """Swap out the activation of the departure layer everywhere: a pass names its derivative."""
    names = []
    if departure is not None:
      names.append(self.arch.activations[departure - 1])
    names += [a for a in self.arch.activations if a not in names]
    plain_h, plain_o = _spec.simplest_hidden(self.spec), _spec.simplest_output(self.spec, self.arch.loss)
    if not self._fails_robustly():
      return None
    for name in names:
      if name in (plain_h, plain_o, "softmax"):
        continue
      acts = tuple((plain_o if i == self.arch.depth - 1 else plain_h) if a == name else a
                   for i, a in enumerate(self.arch.activations))
      if acts == self.arch.activations:
        continue
      if self._passes(self.arch._replace(activations=acts)):
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
      true = _truth.df(name, z[ok], declared=self.declared)
      pairs = ", ".join(f"z={zz:.3g}: {ii:.4g} (should be {tt:.4g})"
                        for zz, ii, tt in list(zip(z[ok], implied, true))[:3])
      missing = " (all 1: the f' factor is missing)" if np.allclose(implied, 1, rtol=1e-6) else ""
      return f"the candidate's implied {name}' at layer {l}: {pairs}{missing}"
    return f"check {name}' in the candidate"

  def conditions(self):
    """Counterfactuals on the minimal case: 'correct only for ...' findings.

    Each is claimed only when the minimal case fails at another value seed too and every
    counterfactual network of the experiment passes at two value seeds: "removing a layer
    makes it pass" must hold for each layer removed, "uniform activations pass" for each
    activation of the case made uniform.
    """
    a = self.arch
    exps = []
    if a.batch > 1:
      exps.append(("only_batch_1", [a._replace(batch=1)], "correct only for B = 1",
                   f"the same network passes with B = 1 and fails with B = {a.batch}: a batch-size "
                   "bug (the batch sum or mean, or rows and columns mixed up)"))
    if a.depth >= 3:
      fewer = [a._replace(sizes=a.sizes[:i] + a.sizes[i + 1:],
                          activations=a.activations[:i - 1] + a.activations[i:])
               for i in range(1, a.depth)]
      fewer.append(a._replace(sizes=a.sizes[1:], activations=a.activations[1:]))
      exps.append(("only_depth_2", fewer, "correct only for depth <= 2",
                   f"fails at depth {a.depth}; removing any one layer makes it pass: the delta "
                   "recursion (37) is wrong past the first hidden layer"))
    if len(set(a.sizes)) > 1:
      w = max(a.sizes)
      exps.append(("only_square", [a._replace(sizes=(w,) * len(a.sizes))],
                   "correct only for square layers",
                   "fails with non-square layers and passes with square ones: n_l and n_(l-1) "
                   "are mixed up (a transpose, or a loop bound)"))
    hidden = a.activations[:-1]
    if len(set(a.activations)) > 1 and a.activations[-1] != "softmax":
      uniform = [a._replace(activations=(v,) * a.depth) for v in dict.fromkeys(a.activations)]
      uniform = [u for u in uniform if _spec.in_domain(u, self.spec)]
      if len(uniform) == len(set(a.activations)):
        exps.append(("only_uniform_activations", uniform, "correct only for uniform activations",
                     "fails when layers have different activations and passes when every layer "
                     "has the same one, whichever: one layer's f' is used for another (an index "
                     "bug)"))
    elif len(set(hidden)) > 1:
      exps.append(("only_uniform_activations",
                   [a._replace(activations=(v,) * len(hidden) + a.activations[-1:])
                    for v in dict.fromkeys(hidden)],
                   "correct only for uniform activations",
                   "fails with mixed hidden activations and passes when the hidden layers share "
                   "one, whichever"))
    if a.sizes[-1] > 1 and a.activations[-1] != "softmax":
      one = [a._replace(sizes=a.sizes[:-1] + (1,))]
      if a.sizes[-2] == 1:  # a 1 x 1 output layer would also hide a transpose: widen its input
        wider = [w for w in _spec.widths(self.spec) if w > 1]
        one += [a._replace(sizes=a.sizes[:-2] + (wider[0], 1))] if wider else []
      exps.append(("only_one_output", one, "correct only for one output",
                   f"fails with K = {a.sizes[-1]} outputs and passes with K = 1"))
    out = []
    for code, archs, summary, detail in exps:
      archs = [x for x in archs if _spec.in_domain(x, self.spec)]
      if not archs or not self._fails_robustly():
        continue
      if all(self._passes(x) for x in archs):
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
    """The ratio of the returned loss to the loss its gradient belongs to, named by experiment."""
    r = self.minimal
    if r.loss is None or self.truth.loss == 0:
      return None
    ratio = r.loss / self.truth.loss
    a = self.arch
    B, K = a.batch, a.sizes[-1]
    min_k = 2 if a.activations[-1] == "softmax" else 1
    powers = []
    for current, choices, change in (
        (B, _spec.batches(self.spec), lambda v: a._replace(batch=v)),
        (K, tuple(w for w in _spec.widths(self.spec) if w >= min_k),
         lambda v: a._replace(sizes=a.sizes[:-1] + (v,)))):
      other = self._other(choices, current)
      p = None
      if other is not None:
        res = self._try(change(other))
        if res is not None and res.loss is not None:
          truth = self.ev.case_and_truth(res.arch)[1]
          if truth.loss != 0:
            p = _power(ratio, res.loss / truth.loss, current, other, self.rel)
      powers.append(p)
    p, q = powers
    what = None
    if p is not None and q is not None:
      base = _name_base(ratio / (B ** p * K ** q), self.rel)
      if base is not None and base[0] > 0:
        parts = ([base[2]] if base[1] != 1 else []) + {1: ["B"], -1: ["1/B"]}.get(p, []) + \
            {1: ["K"], -1: ["1/K (a mean over the K outputs)"]}.get(q, [])
        what = " x ".join(parts) or None
    if what is None:  # no experiment could tell: the simplest name that fits, 1/K before 1/2
      names = ((1 / K, "1/K (a mean over the K outputs)"), (K, "K"), (1 / B, "1/B"), (B, "B"),
               (0.5, "1/2"), (2.0, "2"))
      named = [text for v, text in names if v != 1 and abs(ratio - v) <= self.rel * v]
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
      if not findings:  # else the other layout explains it
        exact = [f for f in (self.factor(), self.transposed(), self.bias()) if f is not None]
        exact = exact or self.models()
        if not exact and self.arch.kink:
          exact = [f for f in (self.kink_value(),) if f is not None]
        near = None if exact else self.near_tolerance()
        lower = None if exact or near else lower_precision(
            self.spec.dtype, _grads(r), _truth_grads(self.truth),
            _worst(_grads(r), _truth_grads(self.truth), _mags(self.truth)), self.tol)
        if near is not None or lower is not None:
          findings.append(near or lower)
        else:
          findings += exact
          if not exact:
            f = self.activation_swap(departure)
            if f is not None:
              findings.append(f)
            findings += self.conditions()
          if where is not None:
            findings.append(where)
    elif r.kind == "convention":
      findings.append(convention_finding(r.note or r.message, strict=True))
    else:
      code = r.kind if r.kind != "shape" or "transposed" not in r.message else "transposed"
      findings.append(Finding(code, _summary_line(r.message), r.message))
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


_CONVENTIONS = (
    ("at exact kinks", "kink_convention", "a kink convention"),
    ("tanh approximation", "gelu_convention", "gelu's other form"),
    ("exact gelu", "gelu_convention", "gelu's other form"),
    ("softplus is linear", "softplus_threshold", "a softplus threshold"),
    ("holds its maximum more than once", "pool_tie_convention", "a tie convention"),
)
"""(words of a convention note, finding code, what kind of convention) for each convention a
candidate may follow: kinks (``bpref.oracle.judge.KINK_CONVENTIONS``), gelu's two forms and
softplus's threshold (``bpref.oracle.ops.classic``), max-pool ties (``bpref.oracle.ops.pool``)."""


def convention_finding(note: str, strict: bool = False) -> Finding:
  """The Finding of a difference by a convention only, its code naming the convention.

  Args:
    note: the judge's convention note ("convention note: at exact kinks the candidate uses
      relu'(0) = 1 ..., bpref uses relu'(0) = 0 ...; both are valid subgradients").
    strict: the check was asked to count conventions as bugs (``strict_kinks``,
      ``strict_conventions``), which is why it failed.

  >>> convention_finding("convention note: at exact kinks the candidate uses relu'(0) = 1, "
  ...                    "bpref uses relu'(0) = 0; both are valid subgradients").code
  'kink_convention'
  """
  body = note.split("convention note: ", 1)[-1].strip()
  code, kind = "convention", "a convention"
  for words, c, k in _CONVENTIONS:
    if words in body:
      code, kind = c, k
      break
  said = body.split("; both are valid", 1)[0]
  why = (" (strict conventions were asked for: a convention that differs from bpref's is "
         "counted as a failure)" if strict else "")
  return Finding(code, f"{kind} other than bpref's: {said}", f"{body}{why}")


FLOAT32_OVER_FLOAT64 = unit_roundoff(np.float32) / unit_roundoff(np.float64)
"""2^29: (T) with float32's u over (T) with float64's, the error float32 arithmetic makes in
place of float64's."""


def _float32_numbers(arrays) -> bool:
  return all(np.array_equal(a.astype(np.float32).astype(np.float64), a) for a in arrays)


def lower_precision(dtype, answers, expected, worst: float, tol: float):
  """The Finding for a float64 answer right only to float32's precision (an error above
  FIT_SLACK tolerances and within (T) of float32), or None.

  Args:
    dtype: the check's dtype.
    answers, expected: the candidate's wrong arrays and bpref's, float64.
    worst: the largest normwise error, held to ``tol``.

  ``float32_arithmetic`` when every entry of the answer is a float32 number while bpref's are
  not: the candidate computed in float32 and cast its result to float64. Otherwise
  ``lower_precision``: the error is the size that float32 arithmetic, or an elementary function
  accurate to about 1e-8, makes.
  """
  if np.dtype(dtype) != np.float64 or not FIT_SLACK * tol < worst <= FLOAT32_OVER_FLOAT64 * tol:
    return None
  answers = [np.asarray(a, np.float64) for a in answers]
  detail = (f"error {worst:.2e}: {worst / tol:.3g} x float64's tolerance, "
            f"{worst / (FLOAT32_OVER_FLOAT64 * tol):.2g} x the tolerance of the same case in float32")
  if _float32_numbers(answers) and not _float32_numbers(np.asarray(e, np.float64) for e in expected):
    return Finding("float32_arithmetic", "every entry of the answer is a float32 number cast to "
                   "float64: the candidate computes in float32 (a float32 array, constant or "
                   "default dtype: JAX without jax_enable_x64, PyTorch's float32 default, "
                   "np.float32)", detail)
  return Finding("lower_precision", "right to float32's precision, not float64's: a float32 "
                 "intermediate, or an elementary function accurate to about 1e-8 (tinygrad's "
                 "float64 cos at large arguments)", detail)


def _summary_line(text: str) -> str:
  """The message's first line; a heading that ends in ':' gets the next line that is not part
  of a traceback after it (the exception's type and text after 'the candidate raised an
  exception:')."""
  lines = [line.rstrip() for line in text.strip().splitlines() if line.strip()]
  if not lines:
    return text
  if lines[0].endswith(":"):
    said = [line for line in lines[1:] if not line[0].isspace() and not line.startswith("Traceback")]
    if said:
      return f"{lines[0]} {said[0]}"
  return lines[0]


def diagnose(ev, minimal):
  """(findings, per-layer errors, implied-delta errors) for the minimal failing case."""
  return Diagnoser(ev, minimal).run()
