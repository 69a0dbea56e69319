"""The truth the candidate is judged by: bpref's own handwritten gradient, in float64.

The candidate sees arrays in its declared dtype; bpref runs on exactly those
values cast up to float64, so the difference measures the candidate's error
alone. Beside the gradient this module computes the tape (z_l, a_l), the
deltas delta_l, and a magnitude bound: the same backward recursion run on
absolute values,

  M_L = |g| |f'_L(z_L)|,  M_{l-1} = (M_l |W_l|) |f'_{l-1}(z_{l-1})|,
  |dW_l| <= M_l^T A_{l-1},  |db_l| <= sum_b M_l,

which bounds the size of every term summed into a gradient entry. A_l is |a_l|
widened by the rounding of the forward sums z_l, whose error scales with their
terms |W_l| A_{l-1} + |b_l| rather than with |z_l| (``_forward_magnitudes``);
|g| is widened the same way through A_L. Each |f'_l| is widened by rho_f
(``rho``: ``Activation.d2f`` and ``bpref.oracle.textbook_forms``): the absolute error that
the standard ways of computing f' carry (1 - a^2 for tanh loses all relative accuracy once the
unit saturates, yet is correct). Rounding errors scale with these terms, not with
the (possibly cancelled) result, so errors are measured normwise against this
bound (proofs/tolerance.md).

Below the smallest normal number lambda of the candidate's dtype a first-order model in u
sees nothing: any operation may lose up to lambda absolutely (gradual underflow, or a flush
to zero, as XLA does on CPU). So every f' bound, every M_l and every gradient bound gets
lambda / u added (the underflow floor (U) of proofs/tolerance.md, as in
``bpref.oracle.ops``). In float32 it is 2e-31: a gradient whose entries are subnormal
cannot be told from 0, and such a case is skipped as vacuous.

The gradients come from ``bpref.scale.fast``, many cases per compiled call; the rest is
NumPy, but for the few jnp functions (f', rho_f, the loss) run at padded lengths.

``declared``, an argument of the functions here, is the (activations, losses) a search
declares (``bpref.oracle.spec.Spec.names``; ``bpref.scale.fast.EVERY`` for every name). The
float64 helpers then run through switch tables over those names (``bpref.tables``), and the
bucket function over ``COMMON`` when they lie within it; None (nothing declared): each helper
compiles on its own, the loss terms and the bucket function hold every name.

``backprop_variant`` reruns the backward pass with one deliberate change (f'
at a_l instead of z_l, no f' on the output layer, another f'(0) at kinks...):
the diagnosis compares the candidate with these variants.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import numpy as np

from bpref import activations as _activations
from bpref import compilation
from bpref import losses as _losses
from bpref import tables as _tables
from bpref.oracle import spec as _spec
from bpref.oracle import textbook_forms as _textbook
from bpref.scale import fast as _fast
from bpref.structures import Layer


class Truth(NamedTuple):
  """bpref's answer on one case, float64 NumPy arrays, W_l in the (n_l, n_{l-1}) layout."""
  loss: float
  dW: tuple
  db: tuple | None
  deltas: tuple  # delta_1..delta_L, delta_l of shape (B, n_l)
  z: tuple  # z_1..z_L
  a: tuple  # a_0..a_L
  g: np.ndarray  # dC/dy of the reduced loss, (B, n_L)
  mag_W: tuple  # magnitude bounds of dW_l
  mag_b: tuple | None
  mag_loss: float  # scale * sum_b |C_b|, plus sum |g| A_L for the rounding of the forward pass


_CACHE: dict = {}
_CACHE_SIZE = 4096


def _params64(case) -> tuple:
  biases = case.biases if case.biases is not None else (None,) * len(case.weights)
  return tuple(Layer(np.asarray(W, np.float64), None if b is None else np.asarray(b, np.float64), act)
               for W, b, act in zip(case.weights, biases, case.arch.activations))


def _table(declared):
  """The activations of ``declared`` (module docstring), the ``table`` of ``bpref.tables``."""
  return None if declared is None else declared[0]


def df(name, z, *, declared=None):
  """f'(z) in float64 whatever the caller's JAX configuration."""
  return _tables.pointwise(_activations.get(name).df, z, table=_table(declared))


def underflow_floor(dtype) -> float:
  """lambda / u of ``dtype``: the smallest normal number over the unit roundoff (module docstring)."""
  info = np.finfo(np.dtype(dtype))
  return float(info.tiny / (info.eps / 2))


def rho(name, z, a, forms=True, *, declared=None):
  """rho_f(z, a) in units of u, float64: the absolute error of f'(z) that a correct program
  may make. It is ``Activation.d2f`` (a z rounded in the forward pass moves f' by |f''|)
  plus, with ``forms``, ``bpref.oracle.textbook_forms``' phi_f: the standard forms of f' in
  common use, such as 1 - a^2 for tanh, whose error is absolute, not relative to f'
  (proofs/tolerance.md). ``forms=False`` is the allowance of bpref's own f'."""
  fn = _tables.rho_function(name, _textbook.ERRORS if forms else ())
  return np.zeros(np.shape(z)) if fn is None else _tables.pointwise(
      fn, z, a, table=_table(declared), forms=_textbook.ERRORS)


def _df_bound(name, z, a, forms, declared):
  """|f'(z)| + rho_f(z, a): f' with the absolute error a correct program may make in it."""
  return np.abs(df(name, z, declared=declared)) + rho(name, z, a, forms, declared=declared)


def _loss_terms_branch(name):
  record = _losses.get(name)
  return lambda y, t: (record.dy(y, t), record.value(y, t))


@functools.lru_cache(maxsize=None)
def _loss_terms_table(names) -> jax.stages.Wrapped:
  """(dC_b/dy, C_b) of the loss with that index in ``names``: one compilation per bucket for
  every loss in it."""
  branches = tuple(_loss_terms_branch(name) for name in names)
  return compilation.jit(lambda index, y, t: jax.lax.switch(index, branches, y, t),
                         key=f"bpref.oracle.truth._loss_terms_table{names}",
                         cpu_options=compilation.ELEMENTAL_EMITTERS)


def loss_terms(loss, y, t, *, declared=None):
  """(dC_b/dy, C_b) of bpref's ``loss`` in float64, on rows and units padded to a bucket.

  Padded units hold a value on which the loss adds exactly 0 (``bpref.scale.fast``'s pad),
  and padded rows are dropped, so one compilation serves every shape of a bucket. One
  compiled function switches over the declared losses (module docstring) if ``loss`` is
  among them, else over every loss.
  """
  rows, cols = y.shape
  _, n_cols, n_rows = _fast.bucket((cols,), rows)
  pad = _fast.pad_logit(np.float64) if loss in _fast.LOGIT_LOSSES else 0.0
  y_pad = np.full((n_rows, n_cols), pad)
  y_pad[:rows, :cols] = y
  t_pad = np.zeros((n_rows, n_cols))
  t_pad[:rows, :cols] = t
  names = None if declared is None else declared[1]
  names = names if names is not None and loss in names else tuple(_losses.LOSSES)
  with jax.enable_x64(True):
    dy, value = jax.device_get(_loss_terms_table(names)(np.int32(names.index(loss)), y_pad, t_pad))
  return np.asarray(dy, np.float64)[:rows, :cols], np.asarray(value, np.float64)[:rows]


def _key(case):
  return (case.arch, case.dtype, case.reduction, case.biases is None)


def compute(case, *, declared=None) -> Truth:
  """bpref's loss, gradients and tape on ``case``, and the magnitude bounds (cached by case)."""
  return compute_many([case], declared=declared)[0]


COMMON = _fast.Branches(*_spec.make_spec().names())
"""The names of a default search: a search within them compiles its bucket function over
them alone, any other search over every name."""


def _branches(declared) -> "_fast.Branches":
  """The bucket function's activations and losses: ``COMMON`` if the ``declared`` names (a
  search's spec) lie within it, else every name. Names round up to one of two sets, as
  shapes round up to buckets, so that a process running searches of many specs compiles at
  most two bucket functions per bucket."""
  if declared is None:
    return _fast.EVERY
  activations, losses = declared
  if not set(activations) <= set(COMMON.activations) or not set(losses) <= set(COMMON.losses):
    return _fast.EVERY
  return COMMON


def compute_many(cases, *, cache: bool = True, declared=None) -> list:
  """``compute`` of many cases, their gradients evaluated together in ``bpref.scale.fast``'s buckets.

  With ``cache=False`` nothing is read from or written to the cache, which is keyed by
  the case's ``Arch`` (its name for the values): for cases whose values were changed.
  ``declared``: see the module docstring (the values do not depend on it).
  """
  todo = [case for case in cases if not cache or _key(case) not in _CACHE]
  problems = [(_params64(case), np.asarray(case.x, np.float64), np.asarray(case.t, np.float64),
               case.arch.loss, case.reduction) for case in todo]
  with jax.enable_x64(True):
    results = _fast.evaluate_many(problems, names=_branches(declared))
  fresh = [_compute(case, problem, result, declared)
           for case, problem, result in zip(todo, problems, results)]
  if not cache:
    return fresh
  if len(_CACHE) + len(todo) >= _CACHE_SIZE:
    _CACHE.clear()
  for case, truth in zip(todo, fresh):
    _CACHE[_key(case)] = truth
  return [_CACHE[_key(case)] for case in cases]


def _compute(case, problem, result, declared) -> Truth:
  params, x, t, loss, reduction = problem
  z, a = _tape(params, result)
  dW = tuple(np.asarray(gr.W, np.float64) for gr in result.grads)
  db = None if case.biases is None else tuple(np.asarray(gr.b, np.float64) for gr in result.grads)
  deltas = tuple(np.asarray(d, np.float64) for d in result.deltas)
  floor = underflow_floor(case.dtype)
  g, fwd, mag, mag_loss = _bounds(params, x, t, loss, reduction, z, a, True, floor, declared)
  mag_W = tuple(m.T @ a_prev + floor for m, a_prev in zip(mag, fwd[:-1]))  # bounds the terms of (39)
  mag_b = None if db is None else tuple(m.sum(axis=0) + floor for m in mag)
  return Truth(float(result.value), dW, db, deltas, z, a, g, mag_W, mag_b, float(mag_loss))


def _tape(params, result):
  """z_1..z_L and a_0..a_L in float64 from a ``bpref.scale.fast.Result`` of a float64 problem."""
  a = tuple(np.asarray(v, np.float64) for v in result.a) + (np.asarray(result.y, np.float64),)
  z = tuple(a_prev @ layer.W.T + (0.0 if layer.b is None else layer.b[None, :])  # (7)
            for a_prev, layer in zip(a[:-1], params))
  return z, a


def _bounds(params, x, t, loss, reduction, z, a, forms, floor, declared):
  """(g, A_0..A_L, M_1..M_L, the loss's magnitude) of one float64 problem and its tape;
  ``floor`` is the underflow floor lambda / u (module docstring), 0 for none."""
  scale = _losses.reduce_scale(x.shape[0], reduction)
  dy, per_example = loss_terms(loss, a[-1], t, declared=declared)
  g = dy * scale
  fwd = _forward_magnitudes(params, x, z, a, forms, declared)
  logits = _losses.get(loss).logits
  if logits is not None:  # fused (34): delta_L = (y sum_k t_k - t) scale from z_L, no f'_L
    dz, per_example = loss_terms(logits, z[-1], t, declared=declared)
    total = np.abs(t).sum(axis=-1, keepdims=True) if params[-1].activation == "softmax" else 1.0
    mag_L = scale * (fwd[-1] * total + np.abs(t))
    terms_L = fwd[-2] @ np.abs(params[-1].W).T + (0.0 if params[-1].b is None else np.abs(params[-1].b))
    spread = scale * np.sum(np.abs(dz) * terms_L)
  else:
    mag_g = np.abs(g) + scale * (fwd[-1] + np.abs(t))
    mag_L = _output_magnitude(params[-1].activation, z[-1], a[-1], mag_g, forms, declared)
    spread = np.sum(np.abs(g) * fwd[-1])
  mag = _magnitudes(params, z, a, mag_L + floor, forms, floor, declared)
  return g, fwd, mag, scale * np.abs(per_example).sum() + float(spread)


def output_bounds(problems, *, forms: bool = True, declared=None) -> list:
  """Magnitude bounds of every output ``bpref verify`` checks, for many float64 problems.

  Each is the computation run on absolute values, as the module docstring's M_l and A_l:
  loss: the loss's magnitude; predict: A_L; grad: Layer(M_l^T A_{l-1}, sum_b M_l);
  deltas: M_l; input_grad: M_1 |W_1|; lambdas: Lambda_L = |da_L/dz_L| widened by rho_f,
  then Lambda_{l-1} = (Lambda_l |W_l|) (|f'_{l-1}| + rho_f); per_example_grads: the
  per-example terms M_{l,b}^T A_{l-1,b} of the summed loss. Returns one dict per problem,
  keyed and shaped as ``bpref.tools.verify.CHECKS`` (with a batch axis: 2-D x only), and the
  tape's z_1..z_L under "z".

  ``forms=False`` leaves rho_f out: the bounds of bpref's own cancellation-free f', which
  ``bpref verify`` holds bpref to (no room for a textbook 1 - a^2 once tanh saturates).
  ``declared``: see the module docstring (the bounds do not depend on it).
  """
  problems = [(params, np.asarray(x, np.float64), np.asarray(t, np.float64), loss, reduction)
              for params, x, t, loss, reduction in problems]
  with jax.enable_x64(True):
    results = _fast.evaluate_many(problems, names=_branches(declared))
  out = []
  for (params, x, t, loss, reduction), result in zip(problems, results):
    z, a = _tape(params, result)
    _, fwd, mag, mag_loss = _bounds(params, x, t, loss, reduction, z, a, forms, 0.0, declared)
    _, _, per_mag, _ = _bounds(params, x, t, loss, "sum", z, a, forms, 0.0, declared)
    last = params[-1].activation
    if _activations.get(last).elementwise:
      lam = _df_bound(last, z[-1], a[-1], forms, declared)[:, :, None] * np.eye(a[-1].shape[1])  # (27)
    else:  # |diag(a) - a a^T| <= diag(a) + a a^T
      lam = a[-1][:, :, None] * np.eye(a[-1].shape[1]) + a[-1][:, :, None] * a[-1][:, None, :]
    lams = [lam]
    for l in range(len(params) - 1, 0, -1):  # (30), on absolute values
      lams.append((lams[-1] @ np.abs(params[l].W))
                  * _df_bound(params[l - 1].activation, z[l - 1], a[l], forms, declared)[:, None, :])
    out.append({
        "z": z,
        "loss": float(mag_loss),
        "predict": fwd[-1],
        "grad": tuple(Layer(m.T @ a_prev, None if layer.b is None else m.sum(axis=0), layer.activation)
                      for m, a_prev, layer in zip(mag, fwd[:-1], params)),
        "deltas": tuple(mag),
        "lambdas": tuple(reversed(lams)),
        "input_grad": mag[0] @ np.abs(params[0].W),
        "per_example_grads": tuple(
            Layer(m[:, :, None] * a_prev[:, None, :], None if layer.b is None else m, layer.activation)
            for m, a_prev, layer in zip(per_mag, fwd[:-1], params)),
    })
  return out


def _forward_magnitudes(params, x, z, a, forms, declared) -> list:
  """A_0..A_L: |a_l| widened by the rounding a correct forward pass carries into a_l.

  z_l = W_l a_{l-1} + b_l is a sum whose error scales with its terms,
  Z_l = |W_l| A_{l-1} + |b_l|, not with |z_l| (which may cancel); the error moves
  a_l by f'_l, so A_l = |a_l| + (|f'_l(z_l)| + rho_l) Z_l (A_0 = |x|, exact).
  """
  out = [np.abs(x)]
  for l, layer in enumerate(params, start=1):
    terms = out[-1] @ np.abs(layer.W).T  # the terms of (7)
    if layer.b is not None:
      terms = terms + np.abs(layer.b)[None, :]
    if _activations.get(layer.activation).elementwise:
      spread = _df_bound(layer.activation, z[l - 1], a[l], forms, declared) * terms
    else:  # |d softmax| <= a (|dz| + sum_j a_j |dz_j|)
      spread = a[l] * (terms + np.sum(a[l] * terms, axis=-1, keepdims=True))
    out.append(np.abs(a[l]) + spread)
  return out


def _output_magnitude(name, z, a, mag_g, forms, declared):
  """M_L = |dC/dy| |da_L/dz_L|, from the bound mag_g on dC/dy."""
  if _activations.get(name).elementwise:
    return mag_g * _df_bound(name, z, a, forms, declared)
  return a * mag_g + a * np.sum(mag_g * a, axis=-1, keepdims=True)  # |diag(a) - a a^T| terms


def _magnitudes(params, z, a, mag_L, forms, floor, declared) -> list:
  """M_1..M_L: the backward recursion on absolute values from M_L (module docstring), with
  the underflow floor in f' and in each M_l."""
  out = [mag_L]
  for l in range(len(params) - 1, 0, -1):
    bound = _df_bound(params[l - 1].activation, z[l - 1], a[l], forms, declared) + floor
    out.append((out[-1] @ np.abs(params[l].W)) * bound + floor)
  return list(reversed(out))


def backprop_variant(case, truth: Truth, *, df_at: str = "z", output_fprime: bool = True,
                     softmax_diagonal: bool = False, kink_values: dict | None = None,
                     df_override: dict | None = None, layers: tuple | None = None,
                     declared=None):
  """The backward pass with one deliberate change, in float64 NumPy (no autodiff).

  Args:
    df_at: "z" (correct) or "a": evaluate f'_l at a_l = f(z_l) instead of z_l.
    output_fprime: False drops f'_L: delta_L = dC/dy.
    softmax_diagonal: a softmax output uses only the diagonal a (1 - a) of its Jacobian.
    kink_values: {activation: f'(0)} used where z is exactly 0.
    df_override: {activation: (z, a) -> f'} replacing that activation's derivative.
    layers: the layers (1-based) the change applies to; all when None.
    declared: see the module docstring.

  Returns (dW, db) tuples like ``Truth``.
  """
  params = _params64(case)
  n_layers = len(params)
  applies = (lambda l: True) if layers is None else (lambda l: l in layers)

  def df_l(l):  # f'_l at the chosen point, with the chosen kink convention
    name = params[l - 1].activation
    z = truth.z[l - 1]
    at = truth.a[l] if (df_at == "a" and applies(l)) else z
    d = df(name, at, declared=declared)
    if df_override and name in df_override and applies(l):
      d = np.asarray(df_override[name](z, truth.a[l]), np.float64)
    if kink_values and name in kink_values and applies(l):
      d = np.where(z == 0, kink_values[name], d)
    return d

  last = params[-1].activation
  g = truth.g
  if not output_fprime and applies(n_layers):
    delta = g  # the bug: delta_L = dC/dy without f'_L
  elif not _activations.get(last).elementwise:
    a = truth.a[-1]
    if softmax_diagonal:
      delta = g * a * (1 - a)  # the bug: only the diagonal of diag(a) - a a^T
    else:
      delta = a * (g - np.sum(g * a, axis=-1, keepdims=True))  # (34) with the softmax Jacobian
  else:
    delta = g * df_l(n_layers)  # (34)
  deltas = deltas64(tuple(p.W for p in params), delta, df_l)
  dW, db = grads64(deltas, truth.a, case.biases is not None)
  return tuple(dW), (tuple(db) if case.biases is not None else None)


def deltas64(weights, delta_L, df_l, through=None) -> list:
  """[delta_1..delta_L] in float64 NumPy from ``delta_L`` down through (37),
  delta_l = (delta_(l+1) W_(l+1)) * f'_l with f'_l = ``df_l(l)`` (l 1-based), the product taken
  with ``through[l]`` in place of W_(l+1) where given: the backward of the bug models and of
  ``backprop_variant``."""
  through = through or weights
  deltas = [delta_L]
  for l in range(len(weights) - 1, 0, -1):
    deltas.insert(0, (deltas[0] @ through[l]) * df_l(l))  # (37)
  return deltas


def grads64(deltas, a, bias: bool) -> tuple:
  """([dW_1..dW_L], [db_1..db_L] or []) of the deltas, a = (a_0..a_L): (39) and the batch sums."""
  dW = [d.T @ a_prev for d, a_prev in zip(deltas, a[:-1])]  # (39)
  return dW, ([d.sum(axis=0) for d in deltas] if bias else [])
