"""The network: immutable parameters and the forward pass that records the tape.

Shapes and conventions (rows are examples):

* ``Params`` is a tuple of ``Layer`` records, one per layer l = 1..L.
* ``Layer.W`` is W_l, shape (n_l, n_{l-1}); ``Layer.b`` is b_l, shape (n_l,), or None.
* ``Layer.activation`` is the name of f_l. It is static: part of the tree's
  structure, not a leaf, so ``jax.jit`` traces only the arrays.
* x has shape (B, n_0) and a_0 = x. For the batch, (7)-(8) read
  Z_l = A_{l-1} W_l^T + b_l and A_l = f_l(Z_l).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import numbers
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bpref import activations as _activations
from bpref import losses as _losses

Array = jax.Array

DEFAULT_PRECISION = jax.lax.Precision.HIGHEST
"""Matmul precision of the reference: full precision on every backend (no TF32, no bf16 passes)."""


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class Layer:
  """One layer's parameters: z_l = W_l a_{l-1} + b_l, a_l = f_l(z_l).

  Attributes:
    W: weights W_l, shape (n_l, n_{l-1}).
    b: bias b_l, shape (n_l,), or None for a bias-free layer.
    activation: name of f_l (static).
  """
  W: Array
  b: Array | None
  activation: str

  def tree_flatten(self):
    return (self.W, self.b), self.activation

  @classmethod
  def tree_unflatten(cls, activation, children):
    return cls(children[0], children[1], activation)


Params = tuple  # tuple[Layer, ...], one per layer 1..L
Grads = Params  # same tree as the parameters: Layer(W=dC/dW_l, b=dC/db_l)


class Tape(NamedTuple):
  """What the forward pass saves for the backward pass.

  Attributes:
    z: (z_1, ..., z_L), z_l of shape (B, n_l).
    a: (a_0, ..., a_L), a_0 = x, a_l of shape (B, n_l); y = a_L.
  """
  z: tuple
  a: tuple


def _matmul_t(a, W, precision):
  # a W^T for rows a of shape (B, n_{l-1}) and W of shape (n_l, n_{l-1}).
  return jnp.matmul(a, W.T, precision=precision)


# ---------------------------------------------------------------- validation

def _describe(x) -> str:
  dtype = getattr(x, "dtype", type(x).__name__)
  return f"shape {tuple(getattr(x, 'shape', ()))} and dtype {dtype}"


def check_params(params) -> tuple:
  """Validate ``params`` and return the layer sizes (n_0, ..., n_L).

  Raises a ValueError or TypeError naming the layer, what was expected and what came.
  """
  if isinstance(params, Layer):
    raise TypeError("params must be a tuple of Layer records, one per layer; got a single Layer "
                    "(wrap it: (layer,))")
  if not isinstance(params, (tuple, list)):
    raise TypeError(f"params must be a tuple of Layer records (see bpref.init, bpref.from_arrays); "
                    f"got {type(params).__name__}")
  if len(params) == 0:
    raise ValueError("params has zero layers; a network needs at least one layer")
  sizes = []
  dtype = None
  n_layers = len(params)
  for l, layer in enumerate(params, start=1):
    if not isinstance(layer, Layer):
      raise TypeError(f"layer {l}: expected a bpref Layer record, got {type(layer).__name__}")
    W, b = layer.W, layer.b
    act = _activations.get(layer.activation)
    if act.name in _activations.OUTPUT_ONLY and l != n_layers:
      raise ValueError(f"layer {l}: {act.name} is allowed only in the output layer "
                       f"(layer {n_layers}); use an elementwise activation here")
    if not hasattr(W, "shape") or not hasattr(W, "dtype"):
      raise TypeError(f"layer {l}: W must be an array, got {type(W).__name__}")
    if len(W.shape) != 2:
      raise ValueError(f"layer {l}: W must be 2-D of shape (n_{l}, n_{l - 1}); got {_describe(W)}")
    if not jnp.issubdtype(W.dtype, jnp.floating):
      raise TypeError(f"layer {l}: W must have a floating dtype; got {W.dtype}")
    if dtype is None:
      dtype = W.dtype
    elif W.dtype != dtype:
      raise TypeError(f"layer {l}: W has dtype {W.dtype} but layer 1 has {dtype}; "
                      "all parameters must share one floating dtype")
    n_out, n_in = W.shape
    if n_out == 0 or n_in == 0:
      raise ValueError(f"layer {l}: zero width; W has shape {tuple(W.shape)}, every n_l must be >= 1")
    if sizes and n_in != sizes[-1]:
      raise ValueError(f"layer {l}: W has shape {tuple(W.shape)} but layer {l - 1} outputs "
                       f"{sizes[-1]} units; W_{l} must be (n_{l}, n_{l - 1}) = ({n_out}, {sizes[-1]})")
    if not sizes:
      sizes.append(n_in)
    sizes.append(n_out)
    if b is not None:
      if not hasattr(b, "shape") or not hasattr(b, "dtype"):
        raise TypeError(f"layer {l}: b must be an array or None, got {type(b).__name__}")
      if tuple(b.shape) != (n_out,):
        raise ValueError(f"layer {l}: b must have shape ({n_out},) to match W {tuple(W.shape)}; "
                         f"got {_describe(b)}")
      if b.dtype != dtype:
        raise TypeError(f"layer {l}: b has dtype {b.dtype} but W has {dtype}; "
                        "all parameters must share one floating dtype")
  return tuple(sizes)


def params_dtype(params):
  return params[0].W.dtype


def check_x(params, x) -> tuple:
  """Validate x against ``params``; return (x as a (B, n_0) array, whether x was 1-D)."""
  sizes = check_params(params)
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    raise TypeError(f"x must be an array of shape (B, {sizes[0]}) or ({sizes[0]},); "
                    f"got {type(x).__name__}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"x must have the parameters' floating dtype {params_dtype(params)}; got {x.dtype}")
  if x.dtype != params_dtype(params):
    raise TypeError(f"x has dtype {x.dtype} but the parameters have {params_dtype(params)}; "
                    "cast one of them so that they agree")
  if x.ndim not in (1, 2):
    raise ValueError(f"x must have shape (B, n_0) = (B, {sizes[0]}) or ({sizes[0]},); got {_describe(x)}")
  if x.shape[-1] != sizes[0]:
    raise ValueError(f"x has {x.shape[-1]} features (shape {tuple(x.shape)}) but layer 1 expects "
                     f"n_0 = {sizes[0]} (W_1 has shape {tuple(params[0].W.shape)})")
  single = x.ndim == 1
  x2 = x[None, :] if single else x
  if x2.shape[0] == 0:
    raise ValueError(f"x has an empty batch (shape {tuple(x.shape)}); B must be >= 1")
  return x2, single


def check_problem(params, x, t, loss, reduction):
  """Validate a whole (params, x, t, loss, reduction) problem.

  Returns (x2, t2, single): x and t with a batch axis, and whether it was added.
  """
  loss_obj = _losses.get(loss)
  _losses.check_reduction(reduction)
  x2, single = check_x(params, x)
  n_out = params[-1].W.shape[0]
  batch = x2.shape[0]
  expect = f"({n_out},)" if single else f"(B, n_L) = ({batch}, {n_out})"
  if not hasattr(t, "shape") or not hasattr(t, "dtype"):
    raise TypeError(f"t must be an array of shape {expect}; got {type(t).__name__}")
  if not jnp.issubdtype(t.dtype, jnp.floating):
    hint = (" (class labels must be one-hot encoded rows of probabilities)"
            if loss_obj.targets != "real" else "")
    raise TypeError(f"t must have the parameters' floating dtype {params_dtype(params)}; "
                    f"got {t.dtype}{hint}")
  if t.dtype != params_dtype(params):
    raise TypeError(f"t has dtype {t.dtype} but the parameters have {params_dtype(params)}; "
                    "cast one of them so that they agree")
  t2 = t[None, :] if (single and t.ndim == 1) else t
  if t2.ndim != 2 or t2.shape != (batch, n_out):
    what = ("targets" if loss_obj.targets == "real"
            else f"{loss} targets (one row of K = {n_out} per example)")
    if t2.ndim == 2 and t2.shape[0] != batch:
      raise ValueError(f"t has batch size {t2.shape[0]} but x has {batch}; {what} must have shape {expect}")
    raise ValueError(f"{what}: t must have shape {expect} to match the output layer; got {_describe(t)}")
  if loss_obj.output is not None and params[-1].activation != loss_obj.output:
    raise ValueError(f"loss {loss!r} takes probabilities from a {loss_obj.output} output layer; "
                     f"layer {len(params)} has activation {params[-1].activation!r}")
  return x2, t2, single


# ---------------------------------------------------------------- constructors

def _check_sizes(sizes) -> tuple:
  """``sizes`` as a tuple of ints; a TypeError for a string, floats or bools."""
  listed = isinstance(sizes, collections.abc.Sequence) or (
      isinstance(sizes, np.ndarray) and sizes.ndim == 1)
  if isinstance(sizes, (str, bytes)) or not listed:
    raise TypeError(f"sizes must be a sequence of layer widths (n_0, ..., n_L), e.g. (3, 4, 2); "
                    f"got {type(sizes).__name__} {sizes!r}")
  for l, n in enumerate(sizes):
    if isinstance(n, bool) or not isinstance(n, (numbers.Integral, np.integer)):
      raise TypeError(f"sizes[{l}] (n_{l}) must be an integer width; got {type(n).__name__} {n!r}")
  return tuple(int(n) for n in sizes)


def _check_key(key) -> None:
  """A TypeError unless ``key`` is a jax.random key (typed, or the legacy uint32[2])."""
  dtype = getattr(key, "dtype", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    return
  if dtype is not None and np.dtype(dtype) == np.uint32 and np.shape(key) == (2,):
    return
  raise TypeError(f"key must be a jax.random key, e.g. jax.random.key(0); got "
                  f"{type(key).__name__} {key!r}")


_PRECISION_NAMES = ("default", "high", "highest", "fastest", "bfloat16", "tensorfloat32", "float32")


def check_precision(precision):
  """``precision`` if jnp.matmul accepts it; a ValueError naming the valid values otherwise."""
  if precision is None or isinstance(precision, jax.lax.Precision):
    return precision
  if isinstance(precision, tuple) and len(precision) == 2:
    for p in precision:
      check_precision(p)
    return precision
  if isinstance(precision, str) and precision in _PRECISION_NAMES:
    return precision
  raise ValueError(f"precision must be a jax.lax.Precision (DEFAULT, HIGH, HIGHEST), one of "
                   f"{', '.join(map(repr, _PRECISION_NAMES))}, a pair of those, or None; "
                   f"got {precision!r}")


def init(key, sizes: Sequence[int], activations, *, bias: bool = True, dtype=None) -> Params:
  """Random parameters, fan-in scaled: W_l ~ N(0, 1/n_{l-1}), b_l = 0.

  Args:
    key: a ``jax.random`` key.
    sizes: (n_0, n_1, ..., n_L), L >= 1, every n >= 1.
    activations: L names (f_1, ..., f_L), or one name for every layer.
    bias: whether layers carry a bias.
    dtype: floating dtype; default float64 when x64 is enabled, else float32.

  >>> import jax, bpref
  >>> params = bpref.init(jax.random.key(0), (3, 4, 2), ("tanh", "identity"))
  >>> [p.W.shape for p in params]
  [(4, 3), (2, 4)]
  """
  sizes = _check_sizes(sizes)
  _check_key(key)
  if len(sizes) < 2:
    raise ValueError(f"sizes must list n_0, ..., n_L with at least one layer; got {sizes}")
  if any(n < 1 for n in sizes):
    raise ValueError(f"every layer width must be >= 1; got sizes {sizes}")
  n_layers = len(sizes) - 1
  if isinstance(activations, str):
    activations = (activations,) * n_layers
  activations = tuple(activations)
  if len(activations) != n_layers:
    raise ValueError(f"sizes {sizes} define {n_layers} layers but {len(activations)} activations "
                     f"were given: {activations}")
  if dtype is None:
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"dtype must be floating; got {dtype}")
  keys = jax.random.split(key, n_layers)
  params = []
  for l in range(1, n_layers + 1):
    n_out, n_in = sizes[l], sizes[l - 1]
    W = jax.random.normal(keys[l - 1], (n_out, n_in), dtype) / np.sqrt(n_in).astype(dtype)
    b = jnp.zeros((n_out,), dtype) if bias else None
    params.append(Layer(W, b, activations[l - 1]))
  params = tuple(params)
  check_params(params)
  return params


def per_layer(n_layers: int, biases, activations) -> tuple[list, tuple]:
  """``biases`` (None for none) and ``activations`` (one name for all) as one entry per layer."""
  biases = [None] * n_layers if biases is None else list(biases)
  if len(biases) != n_layers:
    raise ValueError(f"{n_layers} weight arrays but {len(biases)} biases; give one per layer or None")
  if isinstance(activations, str):
    activations = (activations,) * n_layers
  activations = tuple(activations)
  if len(activations) != n_layers:
    raise ValueError(f"{n_layers} weight arrays but {len(activations)} activations: {activations}")
  return biases, activations


def from_arrays(weights, biases, activations) -> Params:
  """Parameters from plain arrays.

  Args:
    weights: L arrays, W_l of shape (n_l, n_{l-1}).
    biases: L arrays of shape (n_l,) (an entry may be None), or None for no biases.
    activations: L names, or one name for every layer.
  """
  weights = list(weights)
  biases, activations = per_layer(len(weights), biases, activations)
  params = tuple(
      Layer(jnp.asarray(W), None if b is None else jnp.asarray(b), act)
      for W, b, act in zip(weights, biases, activations))
  check_params(params)
  return params


# ---------------------------------------------------------------- forward pass

def _forward(params, x2, precision) -> Tape:
  check_precision(precision)
  zs, acts = [], [x2]  # a_0 = x (4)
  for layer in params:
    z = _matmul_t(acts[-1], layer.W, precision)  # (7): z_l = W_l a_{l-1}, rows: A_{l-1} W_l^T
    if layer.b is not None:
      z = z + layer.b[None, :]  # (7) with bias: z_l = W_l a_{l-1} + b_l
    zs.append(z)
    acts.append(_activations.get(layer.activation).f(z))  # (8): a_l = f_l(z_l)
  return Tape(tuple(zs), tuple(acts))


def _squeeze_tape(tape: Tape) -> Tape:
  return Tape(tuple(z[0] for z in tape.z), tuple(a[0] for a in tape.a))


def forward(params, x, *, precision=DEFAULT_PRECISION) -> Tape:
  """The forward pass (4)-(10), saving every z_l and a_l.

  Args:
    params: the network.
    x: inputs, shape (B, n_0), or (n_0,) for one example.
    precision: matmul precision (``jax.lax.Precision``); HIGHEST by default.

  Returns:
    ``Tape(z=(z_1..z_L), a=(a_0..a_L))`` with a_0 = x and y = a_L; without a
    batch axis when x is 1-D.
  """
  x2, single = check_x(params, x)
  tape = _forward(params, x2, precision)
  return _squeeze_tape(tape) if single else tape


def predict(params, x, *, precision=DEFAULT_PRECISION) -> Array:
  """y = a_L = f_L(W_L f_{L-1}(... f_1(W_1 x))) (1), shape (B, n_L) or (n_L,)."""
  return forward(params, x, precision=precision).a[-1]


def loss_value(params, x, t, loss="squared_error", reduction="mean", *,
               precision=DEFAULT_PRECISION) -> Array:
  """The reduced loss C of the network's prediction."""
  x2, t2, _ = check_problem(params, x, t, loss, reduction)
  y = _forward(params, x2, precision).a[-1]
  return _losses.reduce(_losses.get(loss).value(y, t2), reduction)
