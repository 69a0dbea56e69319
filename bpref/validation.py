"""Validation of everything a caller hands bpref, before anything is traced.

Each check raises a ValueError or TypeError that names the layer, what was expected and
what came; none returns a partly checked value.
"""

from __future__ import annotations

import argparse
import collections.abc
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from bpref import activations as _activations
from bpref import losses as _losses
from bpref.structures import Layer, Tape


def ranged(lo, hi, kind=int, unit: str = ""):
  """An argparse type: a ``kind`` (int or float) from ``lo`` to ``hi``, else a usage error.

  Both ends are included for integers; a float must exceed ``lo`` (a time, a rate) and be finite.
  """
  what = (f"an integer from {lo} to {hi}" if kind is int
          else f"a number{f' of {unit}' if unit else ''} above {lo:g} and at most {hi:g}")

  def parse(text: str):
    try:
      value = kind(text)
    except (TypeError, ValueError):
      raise argparse.ArgumentTypeError(f"takes {what}; got {text!r}") from None
    if not (lo < value <= hi if kind is float else lo <= value <= hi):
      raise argparse.ArgumentTypeError(f"takes {what}; got {text}")
    return value

  parse.__name__ = kind.__name__  # argparse names the type in its messages
  return parse


def as_array(v):
  """v as an array: a JAX array or tracer as it is, anything else through ``np.asarray``."""
  return v if hasattr(v, "shape") and hasattr(v, "dtype") else np.asarray(v)


def floating_array(v, what: str, *, layer: str):
  """v as an array with a floating dtype, else a TypeError naming the layer, what v is and what
  came (a JAX array or tracer is kept as it is, so the check runs before and while tracing)."""
  v = as_array(v)
  if not jnp.issubdtype(v.dtype, jnp.floating):
    raise TypeError(f"{layer}: {what} must have a floating dtype; got {describe(v)}")
  return v


def cotangent_like(x, dout, what: str = "dout", *, layer: str):
  """dout = dC/d(output) as a floating array of x's shape and dtype, else a ValueError or
  TypeError naming the layer, the shape or dtype expected and the one received."""
  dout = floating_array(dout, what, layer=layer)
  return shaped_like(dout, x.shape, x, layer=layer, name=what, what=f"{what} = dC/dout",
                     must=f"the shape of x, {tuple(x.shape)}")


def shaped_like(v, shape, x, *, layer: str, name: str, must: str, what: str | None = None):
  """The array v when it has ``shape`` and x's dtype; else a ValueError "{layer}: {what} must
  have {must}; got ..." (``what`` defaults to ``name``) or ``same_dtype``'s TypeError."""
  if tuple(v.shape) != tuple(shape):
    raise ValueError(f"{layer}: {what or name} must have {must}; got {describe(v)}")
  return same_dtype(v, x, name, layer=layer)


def same_dtype(v, x, name: str, *, layer: str, other: str = "x"):
  """The array v when it has x's dtype; else a TypeError naming the layer and both dtypes."""
  if v.dtype != x.dtype:
    raise TypeError(f"{layer}: {name} has dtype {v.dtype} but {other} has {x.dtype}; cast one of "
                    "them so that they agree")
  return v


def layer_eps(eps, *, layer: str) -> float:
  """A normalization's eps as a Python float: a finite number >= 0, given as configuration (not a
  traced array); else a TypeError or ValueError naming the layer."""
  if isinstance(eps, (jax.Array, bool, np.bool_)) or not isinstance(
      eps, (numbers.Real, np.floating, np.integer)):
    raise TypeError(f"{layer}: eps must be a Python or NumPy number, the layer's configuration; got "
                    f"{type(eps).__name__} (under jax.jit mark it static: static_argnames='eps')")
  eps = float(eps)
  if not (math.isfinite(eps) and eps >= 0):
    raise ValueError(f"{layer}: eps must be finite and >= 0 (1e-5 in PyTorch, CS231n and llm.c); "
                     f"got {eps}")
  return eps


def describe(x) -> str:
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
      raise ValueError(f"layer {l}: W must be 2-D of shape (n_{l}, n_{l - 1}); got {describe(W)}")
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
                         f"got {describe(b)}")
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
    hint = ("; JAX's 64-bit mode is off, so float64 parameters cannot be made: call "
            "jax.config.update('jax_enable_x64', True) first"
            if x.dtype == np.float64 and not jax.config.jax_enable_x64 else "")
    raise TypeError(f"x has dtype {x.dtype} but the parameters have {params_dtype(params)}; "
                    f"cast one of them so that they agree{hint}")
  if x.ndim not in (1, 2):
    raise ValueError(f"x must have shape (B, n_0) = (B, {sizes[0]}) or ({sizes[0]},); got {describe(x)}")
  if x.shape[-1] != sizes[0]:
    raise ValueError(f"x has {x.shape[-1]} features (shape {tuple(x.shape)}) but layer 1 expects "
                     f"n_0 = {sizes[0]} (W_1 has shape {tuple(params[0].W.shape)})")
  single = x.ndim == 1
  x2 = x[None, :] if single else x
  if x2.shape[0] == 0:
    raise ValueError(f"x has an empty batch (shape {tuple(x.shape)}); B must be >= 1")
  return x2, single


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
    raise ValueError(f"{what}: t must have shape {expect} to match the output layer; got {describe(t)}")
  if loss_obj.output is not None and params[-1].activation != loss_obj.output:
    raise ValueError(f"loss {loss!r} takes probabilities from a {loss_obj.output} output layer; "
                     f"layer {len(params)} has activation {params[-1].activation!r}")
  return x2, t2, single


def check_tape(params, tape) -> tuple:
  """Validate a batch's tape against ``params``; return the sizes (n_0, ..., n_L) and B.

  The pipeline's stages work on the tape of a batch: z_l and a_l of shape (B, n_l).
  """
  sizes = check_params(params)
  if not isinstance(tape, Tape):
    raise TypeError(f"tape must be the Tape(z, a) of bpref.forward; got {type(tape).__name__}")
  if len(tape.z) != len(params) or len(tape.a) != len(params) + 1:
    raise ValueError(f"the tape has {len(tape.z)} z's and {len(tape.a)} a's but the network has "
                     f"{len(params)} layers; expected {len(params)} and {len(params) + 1}")
  a_0 = tape.a[0]
  if len(getattr(a_0, "shape", ())) != 2:
    raise ValueError(f"the tape must be a batch's, a_0 of shape (B, {sizes[0]}); got a_0 with "
                     f"{describe(a_0)} (for one example, give bpref.forward x[None, :])")
  batch = a_0.shape[0]
  for l, n in enumerate(sizes):
    for name, arr in ((f"a_{l}", tape.a[l]),) + (((f"z_{l}", tape.z[l - 1]),) if l else ()):
      if tuple(getattr(arr, "shape", ())) != (batch, n):
        raise ValueError(f"the tape's {name} must have shape (B, n_{l}) = ({batch}, {n}); got {describe(arr)}")
  return sizes, batch


def check_deltas(params, tape, deltas) -> None:
  """Validate (delta_1, ..., delta_L) against ``params`` and the batch's tape: each (B, n_l)."""
  sizes, batch = check_tape(params, tape)
  if not isinstance(deltas, (tuple, list)) or len(deltas) != len(params):
    got = f"{len(deltas)} arrays" if isinstance(deltas, (tuple, list)) else type(deltas).__name__
    raise ValueError(f"deltas must be (delta_1, ..., delta_L), one per layer ({len(params)}); got {got}")
  for l, delta in enumerate(deltas, start=1):
    if tuple(getattr(delta, "shape", ())) != (batch, sizes[l]):
      raise ValueError(f"delta_{l} must have shape (B, n_{l}) = ({batch}, {sizes[l]}); got {describe(delta)}")
    if delta.dtype != params_dtype(params):
      raise TypeError(f"delta_{l} has dtype {delta.dtype} but the parameters have {params_dtype(params)}")


def check_delta_L(params, tape, delta) -> None:
  """Validate delta_L against ``params`` and the batch's tape: shape (B, ..., n_L)."""
  sizes, batch = check_tape(params, tape)
  shape = tuple(getattr(delta, "shape", ()))
  if len(shape) < 2 or shape[0] != batch or shape[-1] != sizes[-1]:
    raise ValueError(f"delta_L must have shape (B, n_L) = ({batch}, {sizes[-1]}), or (B, ..., n_L) for "
                     f"rows pulled back alone; got {describe(delta)}")
  if delta.dtype != params_dtype(params):
    raise TypeError(f"delta_L has dtype {delta.dtype} but the parameters have {params_dtype(params)}")


def check_sizes(sizes) -> tuple:
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


MAX_PARAMETERS = 2**31 - 1
"""Most parameters ``bpref.init`` draws: XLA indexes one array with 32-bit integers on some devices."""


def check_init(key, sizes, activations, bias, dtype) -> tuple:
  """``bpref.init``'s arguments checked: (sizes, L activation names, a NumPy float dtype)."""
  sizes = check_sizes(sizes)
  check_key(key)
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
  try:
    dtype = np.dtype(dtype)
  except TypeError:
    raise TypeError(f"dtype must be float32 or float64; got {dtype!r}") from None
  if dtype not in (np.float32, np.float64):
    raise TypeError(f"dtype must be float32 or float64; got {dtype}")
  if dtype == np.float64 and not jax.config.jax_enable_x64:
    raise TypeError("dtype float64 needs JAX's 64-bit mode, which is off: call "
                    "jax.config.update('jax_enable_x64', True) first (JAX would give float32)")
  entries = sum(sizes[l] * (sizes[l - 1] + bias) for l in range(1, n_layers + 1))
  if entries > MAX_PARAMETERS:
    raise ValueError(f"sizes {sizes} need {entries:,} parameters ({entries * dtype.itemsize / 2**30:,.1f} "
                     f"GiB in {dtype}); init draws at most {MAX_PARAMETERS:,}")
  return sizes, activations, dtype


def device_array(v, what: str):
  """``v`` on the device, unchanged if it is a jax.Array; a TypeError for a non-numeric dtype,
  or for float64 while JAX's 64-bit mode is off (JAX would make it float32)."""
  if isinstance(v, jax.Array):
    return v
  v = np.asarray(v)
  if v.dtype.kind not in "biufc":
    raise TypeError(f"{what} must have a floating dtype; got {v.dtype}")
  if v.dtype == np.float64 and not jax.config.jax_enable_x64:
    raise TypeError(f"{what} is float64, but JAX's 64-bit mode is off, so it would become float32: "
                    "call jax.config.update('jax_enable_x64', True) first, or pass float32 arrays")
  return jax.device_put(v)


def check_key(key) -> None:
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
