"""Many small networks at once: padded buckets, masks, one compiled function per bucket.

``bpref.value_and_grad`` under ``jax.jit`` compiles once per architecture: the
widths are shapes and the activation names are static, so a verification run
over random architectures spends nearly all its time compiling. This module
evaluates bpref's equations for many different small networks with a handful
of compilations:

* **Buckets.** A case of depth L, widths n_0..n_L and batch B goes to the
  bucket (D, N, M): D >= L layers, every width padded to N >= max n_l, the
  batch padded to M >= B, each rounded up to a power of two.
* **Masks, so the padding contributes exactly zero.** Padded entries of W_l and
  b_l are 0; padded units of a_l are set to 0 after f_l (softmax is taken over
  the real units only); the rows of padded examples and the padded outputs are
  masked out of the loss and out of every delta_l. Layers l > L pass a through
  unchanged (a_l = a_{l-1}) and the cotangent back unchanged: no arithmetic,
  so they are an exact identity. The padded output units are given a value on
  which the case's loss contributes exactly 0 (0 for most losses, ``pad_logit``
  for the logit losses: its exp underflows to exactly 0).
* **The fused output layer, as in ``bpref.value_and_grad``.** cross_entropy
  after softmax and binary_cross_entropy after sigmoid are evaluated as their
  logit losses of z_L (``bpref.losses.Loss.logits``): C from log-softmax or
  softplus of z_L, delta_L = (softmax(z_L) sum_k t_k - t) or (sigma(z_L) - t)
  times dC/dC_b, and the output layer's VJP is skipped. The two-step route
  (dC/dy, then the VJP) divides by y_L, which rounds to 0 or 1 once the output
  saturates, and returns C = inf and NaN gradients where the fused one is exact.
* **Runtime activations and losses.** The activation of each layer and the
  loss are integers; ``jax.lax.switch`` picks ``bpref.activations`` f and its
  vjp, and ``bpref.losses`` C and dC/dy. Every branch is bpref's own function,
  so the arithmetic on the real entries is bpref's. The switch holds every name,
  or only those given (``Branches``), which compiles in a fraction of the time.
* **One recursion.** Each layer's step is the core's: ``bpref.network.layer_forward``
  (7)-(8), ``bpref.backprop.pull_back`` and ``layer_grads`` (37)-(39); this module adds only
  the padding, the masks and the switches.
* **Batching.** K cases of one bucket run in one call (``jax.vmap`` over
  cases); K is padded up to a fixed chunk size with copies of a case whose
  results are dropped. ``jax.jit`` caches one executable per (bucket, K, dtype).

The results equal ``bpref.value_and_grad`` on each unpadded network up to the
order of floating-point summation (a padded row or column adds exact zeros, but
XLA may sum a length-8 axis in a different order than a length-3 one): the
tests bound the difference by a rounding model and check against the witness.

>>> import numpy as np, bpref
>>> from bpref.scale import fast
>>> from bpref import problems
>>> rng = np.random.default_rng(0)
>>> cases = [problems.random_problem(rng) for _ in range(3)]
>>> results = fast.value_and_grad_many(cases)
>>> len(results), results[0][1][0].W.shape == cases[0].params[0].W.shape
(3, True)
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bpref import activations as _activations
from bpref import compilation
from bpref import backprop as _backprop
from bpref import losses as _losses
from bpref import network as _network
from bpref.network import DEFAULT_PRECISION
from bpref.structures import Layer
from bpref.validation import check_precision, check_problem

ACTIVATION_NAMES = tuple(_activations.ACTIVATIONS)
LOSS_NAMES = tuple(_losses.LOSSES)
LOGIT_LOSSES = tuple(name for name, loss in _losses.LOSSES.items() if loss.on_logits)
"""Losses on logits (those the fused losses name): a padded output gets ``pad_logit``."""

MIN_DEPTH, MIN_WIDTH, MIN_BATCH = 8, 8, 8
"""Smallest bucket: depth 1-8, widths 1-8 and batches 1-8 share one compiled function."""

CHUNKS = (16, 256)
"""Cases per call: the smallest chunk that holds what is left, else the largest."""


class Result(NamedTuple):
  """bpref's outputs for one case, as NumPy arrays of the case's dtype.

  Attributes:
    value: the reduced loss C, a scalar.
    grads: dC/dparams, the structure of ``params`` (db is None for a bias-free layer).
    deltas: (delta_1, ..., delta_L), delta_l of shape (B, n_l).
    input_grad: dC/dx = delta_1 W_1, shape (B, n_0).
    y: the prediction a_L, shape (B, n_L).
    a: the tape's activations (a_0, ..., a_{L-1}) that feed each layer, a_l of shape (B, n_l).
  """
  value: np.ndarray
  grads: tuple
  deltas: tuple
  input_grad: np.ndarray
  y: np.ndarray
  a: tuple


def pad_logit(dtype) -> float:
  """The logit of a padded output unit for the logit losses: -max / 2 of ``dtype``.

  For every real logit |z| < max / 2 the shifted logit pad - max_k z_k is finite and its exp
  underflows to exactly 0, so the unit adds exactly 0 to sum_k exp, to t_k log softmax_k
  (t_k = 0 on a padded unit) and to softplus. -inf would not do: 0 * -inf is NaN.
  A fixed constant would not either: -1e30 is -inf in float16.
  """
  return -float(jnp.finfo(dtype).max) / 2


def _ceil_pow2(n: int, least: int) -> int:
  size = least
  while size < n:
    size *= 2
  return size


def bucket(sizes: Sequence[int], batch: int) -> tuple:
  """The bucket (D, N, M) of a network with widths ``sizes`` = (n_0..n_L) and batch B."""
  return (_ceil_pow2(len(sizes) - 1, MIN_DEPTH), _ceil_pow2(max(sizes), MIN_WIDTH),
          _ceil_pow2(batch, MIN_BATCH))


# ---------------------------------------------------------------- one padded case

def _f_branch(name):
  act = _activations.get(name)
  if act.elementwise:
    return lambda z, mask: act.f(z)
  # softmax over the real units only: exp(-inf) = 0 removes the padded ones from the sum.
  return lambda z, mask: act.f(jnp.where(mask[None, :], z, jnp.full_like(z, -jnp.inf)))


def _vjp_branch(name):
  return lambda z, a, g: _activations.vjp(name, z, a, g)


def _fused_output(z, a, g):
  return g  # the output layer of a fused loss: its cotangent is delta_L = dC/dz_L already (34)


class Branches(NamedTuple):
  """The activations and losses one compiled function switches over (static under jit).

  A packed case's ``act`` indexes ``activations``, its ``vjp`` the same or ``fused`` (the
  output layer of a fused loss), its ``loss`` indexes ``losses``. Fewer names compile a
  smaller function: a search over a declared domain needs only the names it declares.
  """
  activations: tuple = ACTIVATION_NAMES
  losses: tuple = LOSS_NAMES

  @property
  def fused(self) -> int:
    """The index of the fused output layer's backward branch: after every activation's."""
    return len(self.activations)

  def covering(self, cases) -> "Branches":
    """These names if they hold every activation and loss of ``cases`` (tuples of
    ``as_case``), else every name (and a malformed case is left to the validation)."""
    if self == Branches():
      return self
    for params, _, _, loss, _ in cases:
      if not isinstance(params, (tuple, list)):
        return Branches()
      found = _losses.LOSSES.get(loss) if isinstance(loss, str) else None
      if found is None or (found.logits or loss) not in self.losses:
        return Branches()
      if not all(getattr(layer, "activation", None) in self.activations for layer in params):
        return Branches()
    return self


EVERY = Branches()


class _Packed(NamedTuple):
  """One bucket's cases as stacked, padded arrays (leading axis: the K cases)."""
  W: np.ndarray  # (K, D, N, N): W_l in the top-left (n_l, n_{l-1}) corner
  b: np.ndarray  # (K, D, N)
  act: np.ndarray  # (K, D) int32: index into Branches.activations
  vjp: np.ndarray  # (K, D) int32: act, or Branches.fused for the output layer of a fused loss
  live: np.ndarray  # (K, D) bool: layer l <= L
  units: np.ndarray  # (K, D, N) bool: unit j < n_l
  x: np.ndarray  # (K, M, N)
  t: np.ndarray  # (K, M, N)
  rows: np.ndarray  # (K, M) bool: example b < B
  outputs: np.ndarray  # (K, N) bool: output unit k < n_L
  loss: np.ndarray  # (K,) int32: index into Branches.losses (the logit loss for a fused one)
  fused: np.ndarray  # (K,) bool: the loss is taken of z_L, not of y = a_L
  depth: np.ndarray  # (K,) int32: L
  fill: np.ndarray  # (K,) the padded outputs' value
  divisor: np.ndarray  # (K,) B for the mean, 1 for the sum
  scale: np.ndarray  # (K,) dC/dC_b: 1/B for the mean, 1 for the sum


def _padded_layer(f_branches, precision, a_prev, layer):
  """``bpref.network.layer_forward`` on a padded layer: (7), (8), then the masks."""
  W, b, act, live, units = layer
  z, a = _network.layer_forward(W, b, a_prev, lambda z: jax.lax.switch(act, f_branches, z, units),
                                precision=precision)  # (7), (8)
  a = jnp.where(units[None, :], a, jnp.zeros_like(a))  # padded units are 0
  a = jnp.where(live, a, a_prev)  # a layer past the last one passes a_{l-1} through
  return a, (z, a)


def _one_case(p: _Packed, precision, names: Branches = EVERY):
  """Forward, loss and backward of one padded case (arrays without the K axis)."""
  zero_rows = ~p.rows[:, None]
  f_branches = tuple(_f_branch(n) for n in names.activations)
  vjp_branches = tuple(_vjp_branch(n) for n in names.activations) + (_fused_output,)
  value_branches = tuple(_losses.get(n).value for n in names.losses)
  dy_branches = tuple(_losses.get(n).dy for n in names.losses)

  y, (zs, acts) = jax.lax.scan(functools.partial(_padded_layer, f_branches, precision), p.x,
                               (p.W, p.b, p.act, p.live, p.units))
  a_prevs = jnp.concatenate([p.x[None], acts[:-1]], axis=0)  # a_0 = x (4), a_1, ..., a_{D-1}

  z_L = zs[p.depth - 1]  # the last real layer's z, before the pass-through layers
  y_loss = jnp.where(p.fused, z_L, y)  # a fused loss is its logit loss of z_L
  y_loss = jnp.where(p.outputs[None, :], y_loss, jnp.full_like(y_loss, p.fill))
  per_example = jax.lax.switch(p.loss, value_branches, y_loss, p.t)  # C_b (13)
  per_example = jnp.where(p.rows, per_example, jnp.zeros_like(per_example))
  value = jnp.sum(per_example, axis=0) / p.divisor  # C = sum_b C_b, or its mean
  # (14) and the batch reduction; for a fused loss, delta_L: (34), corrected, with f_L and C fused
  g = jax.lax.switch(p.loss, dy_branches, y_loss, p.t) * p.scale
  g = jnp.where(zero_rows | ~p.outputs[None, :], jnp.zeros_like(g), g)

  def layer_backward(g_out, layer):
    W, vjp, live, units, z, a, a_prev = layer
    delta = jax.lax.switch(vjp, vjp_branches, z, a, g_out)  # (34)/(37), corrected: g diag f'(z_l)
    delta = jnp.where(zero_rows | ~units[None, :] | ~live, jnp.zeros_like(delta), delta)
    dW, db = _backprop.layer_grads(delta, a_prev, precision=precision)  # (39), dC/db_l = delta_l
    back = _backprop.pull_back(delta, W, precision=precision)  # delta_l W_l, the cotangent on a_{l-1}
    return jnp.where(live, back, g_out), (delta, dW, db)

  dx, (deltas, dW, db) = jax.lax.scan(
      layer_backward, g, (p.W, p.vjp, p.live, p.units, zs, acts, a_prevs), reverse=True)
  return value, dW, db, deltas, dx, y, a_prevs, zs


@compilation.jit(static_argnames=("precision", "names"), cpu_options=compilation.ELEMENTAL_EMITTERS)
def _many(p: _Packed, precision=DEFAULT_PRECISION, names: Branches = EVERY):
  return jax.vmap(lambda case: _one_case(case, precision, names))(p)


# ---------------------------------------------------------------- packing and unpacking

def pack_params(trees, shape, chunk, dtype) -> tuple:
  """(W, b) of shapes (K, D, N, N) and (K, D, N): each network's parameters (a tuple of
  ``Layer``) in the top-left corners, zeros elsewhere (and for a None bias); copies of the
  last network fill the chunk of K = ``chunk`` cases, as in ``bucketed``."""
  depth, width, _ = shape
  W = np.zeros((chunk, depth, width, width), dtype)
  b = np.zeros((chunk, depth, width), dtype)
  for k in range(chunk):
    for l, layer in enumerate(trees[min(k, len(trees) - 1)]):
      n_out, n_in = np.shape(layer.W)
      W[k, l, :n_out, :n_in] = layer.W
      if layer.b is not None:
        b[k, l, :n_out] = layer.b
  return W, b


def unpack_params(W, b, k, params) -> tuple:
  """The inverse of ``pack_params``: the k-th case's (K, D, N, N) and (K, D, N) values sliced to
  the shapes of ``params``, a tuple of ``Layer`` (db None where ``params`` has no bias)."""
  return tuple(Layer(W[k, l, :n_out, :n_in], None if layer.b is None else b[k, l, :n_out],
                     layer.activation)
               for l, layer in enumerate(params) for n_out, n_in in [np.shape(layer.W)])


def _pack(cases, shape, chunk, dtype, names: Branches = EVERY) -> _Packed:
  depth, width, batch = shape
  W, b = pack_params([case[0] for case in cases], shape, chunk, dtype)
  act = np.zeros((chunk, depth), np.int32)
  vjp = np.zeros((chunk, depth), np.int32)
  live = np.zeros((chunk, depth), bool)
  units = np.zeros((chunk, depth, width), bool)
  x = np.zeros((chunk, batch, width), dtype)
  t = np.zeros((chunk, batch, width), dtype)
  rows = np.zeros((chunk, batch), bool)
  outputs = np.zeros((chunk, width), bool)
  loss = np.zeros((chunk,), np.int32)
  fused = np.zeros((chunk,), bool)
  n_layers = np.ones((chunk,), np.int32)
  fill = np.zeros((chunk,), dtype)
  divisor = np.ones((chunk,), dtype)
  scale = np.ones((chunk,), dtype)
  for k in range(chunk):
    params, x2, t2, name, reduction = cases[min(k, len(cases) - 1)]  # copies of a case fill the chunk
    for l, layer in enumerate(params):
      n_out = layer.W.shape[0]
      act[k, l] = names.activations.index(layer.activation)
      live[k, l] = True
      units[k, l, :n_out] = True
    n_batch, n_0 = x2.shape
    x[k, :n_batch, :n_0] = x2
    t[k, :n_batch, :t2.shape[1]] = t2
    rows[k, :n_batch] = True
    outputs[k, :t2.shape[1]] = True
    n_layers[k] = len(params)
    vjp[k] = act[k]
    logits = _losses.get(name).logits
    if logits is not None:  # as bpref.backprop.output_delta: C(f_L(z_L)) is a loss of z_L
      name = logits
      fused[k] = True
      vjp[k, len(params) - 1] = names.fused
    loss[k] = names.losses.index(name)
    fill[k] = pad_logit(dtype) if name in LOGIT_LOSSES else 0
    if reduction == "mean":
      divisor[k] = n_batch  # C = (1/B) sum_b C_b as losses.reduce: sum / B
      scale[k] = _losses.reduce_scale(n_batch, reduction)  # 1/B rounded once to the dtype
  return _Packed(W, b, act, vjp, live, units, x, t, rows, outputs, loss, fused, n_layers, fill,
                 divisor, scale)


def _unpack(out, k, params, x2, single):
  value, dW, db, deltas, dx, y, a_prevs, _ = out
  n_batch, n_0 = x2.shape
  sizes = [n_0] + [layer.W.shape[0] for layer in params]
  grads = unpack_params(dW, db, k, params)
  ds = tuple(deltas[k, l, :n_batch, :sizes[l + 1]] for l in range(len(params)))
  dx_k = dx[k, :n_batch, :n_0]
  y_k = y[k, :n_batch, :sizes[-1]]
  a_k = tuple(a_prevs[k, l, :n_batch, :sizes[l]] for l in range(len(params)))
  if single:
    ds, dx_k, y_k, a_k = tuple(d[0] for d in ds), dx_k[0], y_k[0], tuple(a[0] for a in a_k)
  return Result(value[k], grads, ds, dx_k, y_k, a_k)


def as_case(problem):
  if hasattr(problem, "params"):
    return problem.params, problem.x, problem.t, problem.loss, problem.reduction
  params, x, t, *rest = problem
  loss = rest[0] if len(rest) > 0 else "squared_error"
  reduction = rest[1] if len(rest) > 1 else "mean"
  return params, x, t, loss, reduction


def evaluate_many(problems, *, precision=DEFAULT_PRECISION, shape=None, chunk=None,
                  names: Branches = EVERY) -> list:
  """bpref's loss, gradients, deltas, input gradient and prediction for many networks.

  Args:
    problems: a sequence of ``bpref.problems.Problem`` or tuples
      (params, x, t[, loss[, reduction]]), each validated as ``bpref.value_and_grad``
      validates its arguments. Architectures, activations, losses, reductions,
      batch sizes and dtypes may all differ.
    precision: matmul precision, as in ``bpref.value_and_grad``.
    shape: one bucket (D, N, M) for every problem (each must fit in it), in place of
      the smallest bucket of each: a search over a declared domain compiles once.
    chunk: cases per call, in place of the smallest of ``CHUNKS`` that holds them: a
      caller whose calls differ in size shares one compiled function between them.
    names: the activations and losses the compiled function holds (``Branches``), when
      they hold every one the problems use (else every name): a declared domain's few
      names compile in a fraction of the time of all of them.

  Returns:
    A list of ``Result``, one per problem, in order.
  """
  check_precision(precision)
  cases = [as_case(problem) for problem in problems]
  names = names.covering(cases)
  return bucketed(cases, lambda p: _many(p, precision=precision, names=names), _unpack,
                  shape=shape, chunk=chunk, names=names)


def bucketed(problems, compute, unpack, *, shape=None, chunk=None, names: Branches = EVERY) -> list:
  """Validate ``problems``, pack them into buckets, ``compute`` each chunk, ``unpack`` each case.

  ``compute(packed: _Packed)`` returns arrays with a leading case axis, and
  ``unpack(out, k, params, x2, single)`` the k-th case's result, sliced to its shapes.
  ``shape``, ``chunk`` and ``names`` are ``evaluate_many``'s (``compute`` must switch over
  ``names``). The witnesses pad their cases with their own code (``bpref.witnesses.padding``).
  """
  cases = []
  groups: dict = {}
  for i, problem in enumerate(problems):
    params, x, t, loss, reduction = as_case(problem)
    try:
      x2, t2, single = check_problem(params, x, t, loss, reduction)
    except (TypeError, ValueError) as err:
      raise type(err)(f"problem {i}: {err}") from None
    params = tuple(Layer(np.asarray(p.W), None if p.b is None else np.asarray(p.b), p.activation)
                   for p in params)
    x2, t2 = np.asarray(x2), np.asarray(t2)
    cases.append((params, x2, single))
    sizes = [x2.shape[1]] + [p.W.shape[0] for p in params]
    own = bucket(sizes, x2.shape[0])
    need = (len(params), max(sizes), x2.shape[0])
    if shape is not None and any(n > m for n, m in zip(need, shape)):
      raise ValueError(f"problem {i}: depth {len(params)}, widths {tuple(sizes)} and batch "
                       f"{x2.shape[0]} need a bucket of at least {need}, larger than "
                       f"shape={tuple(shape)}")
    key = (np.dtype(x2.dtype), own if shape is None else tuple(shape))
    groups.setdefault(key, []).append((i, (params, x2, t2, loss, reduction)))
  results = [None] * len(cases)
  for (dtype, bucket_shape), members in groups.items():
    start = 0
    while start < len(members):
      left = len(members) - start
      size = chunk or next((c for c in CHUNKS if c >= left), CHUNKS[-1])
      part = members[start:start + size]
      packed = _pack([case for _, case in part], bucket_shape, size, dtype, names)
      out = jax.device_get(compute(packed))
      for k, (i, _) in enumerate(part):
        params, x2, single = cases[i]
        results[i] = unpack(out, k, params, x2, single)
      start += size
  return results


def value_and_grad_many(problems, *, precision=DEFAULT_PRECISION) -> list:
  """[(C, grads), ...]: ``bpref.value_and_grad`` of each problem, computed in buckets."""
  return [(r.value, r.grads) for r in evaluate_many(problems, precision=precision)]


def grads_many(problems, *, precision=DEFAULT_PRECISION, chunk=None) -> list:
  """[grads, ...]: ``bpref.grad`` of each problem, computed in buckets (``evaluate_many``)."""
  return [r.grads for r in evaluate_many(problems, precision=precision, chunk=chunk)]


def per_example_grads_many(problems, *, precision=DEFAULT_PRECISION, shape=None) -> list:
  """[grads, ...]: ``bpref.per_example_grads`` of each problem (its reduction is ignored).

  Each problem is evaluated with the summed loss, whose delta_l has rows dC_b/dz_l;
  then dC_b/dW_l = delta_{l,b} a_{l-1,b}^T (39) and dC_b/db_l = delta_{l,b}, with a
  leading axis B (none for a 1-D x).
  """
  summed = []
  for problem in problems:
    params, x, t, loss, _ = as_case(problem)
    summed.append((params, x, t, loss, "sum"))
  out = []
  for r, (params, *_) in zip(evaluate_many(summed, precision=precision, shape=shape), summed):
    grads = []
    for layer, delta, a_prev in zip(params, r.deltas, r.a):
      dW = delta[..., :, None] * a_prev[..., None, :]  # (39) per example: delta_{l,b} a_{l-1,b}^T
      grads.append(Layer(dW, None if layer.b is None else delta, layer.activation))  # dC_b/db_l = delta_{l,b}
    out.append(tuple(grads))
  return out


def _one_case_lambdas(p: _Packed, zs, acts, precision):
  """lambda_l = dy/dz_l of one padded case from its tape (``_one_case``'s z_l and a_l):
  (D, M, N, N), zero for l > L and padded units."""
  n = p.W.shape[-1]
  eye = jnp.broadcast_to(jnp.eye(n, dtype=p.x.dtype), (p.x.shape[0], n, n))  # dy/da_L = I
  layer_index = jnp.arange(p.W.shape[0], dtype=p.depth.dtype)

  def layer_backward(dy_da, layer):  # dy_da: dy/da_l, (M, N, N)
    W, act, live, units, z, a, l = layer
    df = jax.lax.switch(act, _DERIVATIVE_BRANCHES, z, a)  # (24)
    lam = dy_da * df[:, None, :]  # (30), corrected; at l = L, I diag f'_L(z_L): (27)
    for index, jacobian in _FULL_JACOBIANS:  # (27) for an f_L whose Jacobian is not diagonal
      lam = jnp.where((l == p.depth - 1) & (act == index), jacobian(z, a), lam)
    keep = live & p.rows[:, None, None] & units[None, None, :]
    lam = jnp.where(keep, lam, jnp.zeros_like(lam))
    back = _backprop.pull_back(lam, W, precision=precision)  # lambda_l W_l = dy/da_{l-1}
    return jnp.where(live, back, dy_da), lam

  _, lams = jax.lax.scan(layer_backward, eye, (p.W, p.act, p.live, p.units, zs, acts, layer_index),
                         reverse=True)
  return lams


def _derivative_branch(name):
  if _activations.get(name).elementwise:
    return lambda z, a: _activations.derivative(name, z, a)
  return lambda z, a: jnp.zeros_like(z)  # softmax is an output activation only (bpref.network)


_DERIVATIVE_BRANCHES = tuple(_derivative_branch(n) for n in ACTIVATION_NAMES)
_FULL_JACOBIANS = tuple((index, functools.partial(_activations.jacobian, name))
                        for index, name in enumerate(ACTIVATION_NAMES)
                        if not _activations.get(name).elementwise)
"""(index, da/dz) of each activation whose Jacobian is not diagonal (softmax)."""


@compilation.jit(static_argnames=("precision",), cpu_options=compilation.ELEMENTAL_EMITTERS)
def _many_lambdas(p: _Packed, y, a_prevs, zs, precision=DEFAULT_PRECISION):
  acts = jnp.concatenate([a_prevs[:, 1:], y[:, None]], axis=1)  # a_1, ..., a_D
  return jax.vmap(lambda case, z, a: _one_case_lambdas(case, z, a, precision))(p, zs, acts)


def _lambdas_of(p: _Packed, precision):
  """The lambdas of a chunk from the tape of ``_many``, the compiled function ``evaluate_many``
  runs: the forward pass (4)-(8) is compiled once for both."""
  *_, y, a_prevs, zs = _many(p, precision=precision, names=EVERY)  # names as evaluate_many gives them
  return _many_lambdas(p, y, a_prevs, zs, precision=precision)


def _unpack_lambdas(lams, k, params, x2, single):
  n_batch = x2.shape[0]
  n_out = params[-1].W.shape[0]
  out = tuple(lams[k, l, :n_batch, :n_out, :layer.W.shape[0]] for l, layer in enumerate(params))
  return tuple(v[0] for v in out) if single else out


def lambdas_many(problems, *, precision=DEFAULT_PRECISION, shape=None) -> list:
  """[lambdas, ...]: ``bpref.lambdas(params, x)`` of each problem, computed in buckets.

  lambda_L = da_L/dz_L (27), then lambda_{l-1} = lambda_l W_l diag f'_{l-1}(z_{l-1}) (30),
  corrected; each lambda_l of shape (B, n_L, n_l) (no batch axis for a 1-D x). The loss and
  t of each problem are validated but not used.
  """
  check_precision(precision)
  return bucketed(problems, lambda p: _lambdas_of(p, precision), _unpack_lambdas, shape=shape)


def compiled_count() -> int:
  """How many executables the bucketed function holds (one per bucket, chunk and dtype)."""
  return _many._cache_size()
