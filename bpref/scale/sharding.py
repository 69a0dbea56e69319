"""Running bpref over many devices with JAX's own sharding: a ``Mesh`` and ``NamedSharding``.

bpref's functions are plain traceable JAX, so they need no special version to run
distributed: place the arrays on a device mesh, compile with ``jax.jit``, and XLA's
SPMD partitioner splits the work and inserts the collectives. This module only
names the layouts and checks the inputs.

Data parallelism (rows are examples, the batch axis is split over the mesh axis
``"data"`` into k blocks X = [X^(1); ...; X^(k)]):

* the forward pass (7)-(8) and the delta and lambda recursions (34), (37), (27), (30)
  act on each row alone, so every block runs on its own device with no communication;
* the gradient (39) sums over the batch, dC/dW_l = D_l^T A_{l-1} = sum_j D_l^(j)T A_{l-1}^(j):
  each device forms its partial sum and XLA adds the k partial sums with one all-reduce,
  as it does for dC/db_l = sum_b delta_l,b and for the loss C = sum_b C_b.

Model parallelism (optional, on a second mesh axis ``"model"``): W_l is split over its
output rows, W_l = [W_l^(1); ...; W_l^(m)], so device i computes the columns
Z_l^(i) = A_{l-1} W_l^(i)T of (7); XLA gathers A_l before the next layer's product and
the gradient dC/dW_l^(i) = D_l^(i)T A_{l-1} lands on the device that holds W_l^(i).

The mesh must use ``AxisType.Auto`` axes (``make_mesh`` below does): bpref leaves the
choice of intermediate layouts to XLA. Shapes are global: x is (B, n_0) across all
devices, and B must be a multiple of the size of the data axis.

>>> import jax, numpy as np, bpref
>>> from bpref.scale import sharding
>>> mesh = sharding.make_mesh((len(jax.devices()),), ("data",))
>>> params = sharding.shard_params(mesh, bpref.init(jax.random.key(0), (3, 4, 2), "tanh"))
>>> x, t = sharding.shard_batch(mesh, np.ones((8, 3)), np.zeros((8, 2)))
>>> C, grads = sharding.data_parallel(bpref.value_and_grad, mesh)(params, x, t)
>>> grads[0].W.shape
(4, 3)
"""

from __future__ import annotations

import inspect

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from bpref.structures import Layer

from bpref.validation import check_params

DATA = "data"
"""Default name of the mesh axis that splits the batch."""

MODEL = "model"
"""Default name of the mesh axis that splits each W_l over its output rows."""

REDUCED_OUTPUTS = ("value_and_grad", "grad", "loss_value")
"""Functions that sum over the batch: their outputs are replicated (one all-reduce)."""

PER_EXAMPLE_OUTPUTS = ("forward", "predict", "deltas", "lambdas", "input_grad", "per_example_grads")
"""Functions whose outputs keep the batch axis first: it stays split over the data axis."""

_STATIC = ("loss", "reduction", "precision")


def make_mesh(shape, names, *, devices=None) -> Mesh:
  """A device mesh with automatic (``AxisType.Auto``) axes, the kind bpref runs on.

  Args:
    shape: devices along each axis, e.g. ``(8,)`` or ``(4, 2)``; the product must be
      the number of devices used.
    names: one name per axis, e.g. ``("data",)`` or ``("data", "model")``.
    devices: the devices to use; default all of ``jax.devices()``.
  """
  shape, names = tuple(int(s) for s in shape), tuple(names)
  if len(shape) != len(names):
    raise ValueError(f"mesh shape {shape} has {len(shape)} axes but {len(names)} names {names}; "
                     "give one name per axis")
  devices = list(jax.devices() if devices is None else devices)
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f"mesh shape {shape} needs {int(np.prod(shape))} devices but {len(devices)} "
                     "were given; choose a shape whose product is the device count")
  return Mesh(np.array(devices).reshape(shape), names, axis_types=(AxisType.Auto,) * len(shape))


def _check_mesh(mesh, *axes) -> None:
  if not isinstance(mesh, Mesh):
    raise TypeError(f"mesh must be a jax.sharding.Mesh (see bpref.scale.sharding.make_mesh); "
                    f"got {type(mesh).__name__}")
  explicit = [n for n, kind in zip(mesh.axis_names, mesh.axis_types) if kind != AxisType.Auto]
  if explicit:
    raise ValueError(f"mesh axes {explicit} are not AxisType.Auto; bpref lets XLA choose the "
                     "intermediate layouts, so build the mesh with bpref.scale.sharding.make_mesh or "
                     "jax.make_mesh(..., axis_types=(jax.sharding.AxisType.Auto,) * ndim)")
  for axis in axes:
    if axis not in mesh.axis_names:
      raise ValueError(f"mesh has no axis {axis!r}; its axes are {tuple(mesh.axis_names)}. "
                       "Name the axis to use with axis=... (or model_axis=...)")


def batch_sharding(mesh: Mesh, axis: str = DATA) -> NamedSharding:
  """The layout that splits an array's first (batch) axis over the mesh axis ``axis``."""
  _check_mesh(mesh, axis)
  return NamedSharding(mesh, PartitionSpec(axis))


def replicated(mesh: Mesh) -> NamedSharding:
  """The layout that keeps a whole copy of an array on every device of ``mesh``."""
  _check_mesh(mesh)
  return NamedSharding(mesh, PartitionSpec())


def row_shardings(mesh: Mesh, params, axis: str = MODEL):
  """A tree like ``params`` of layouts that split each W_l over its output rows.

  W_l (n_l, n_{l-1}) is split along n_l over the mesh axis ``axis`` and b_l (n_l,)
  alike, so device i holds rows i n_l/m .. (i+1) n_l/m - 1 of both. A layer whose
  width n_l is not a multiple of the axis size m (a one-unit output layer, say) is
  replicated instead; the returned tree shows which layers are split.
  """
  _check_mesh(mesh, axis)
  check_params(params)
  size = mesh.shape[axis]
  layouts = []
  for layer in params:
    split = layer.W.shape[0] % size == 0
    w_spec = PartitionSpec(axis, None) if split else PartitionSpec()
    b_spec = PartitionSpec(axis) if split else PartitionSpec()
    layouts.append(Layer(NamedSharding(mesh, w_spec),
                         None if layer.b is None else NamedSharding(mesh, b_spec), layer.activation))
  return tuple(layouts)


def param_shardings(mesh: Mesh, params, *, model_axis: str | None = None):
  """A tree like ``params`` of layouts: replicated, or split by rows over ``model_axis``."""
  if model_axis is None:
    check_params(params)
    rep = replicated(mesh)
    return tuple(Layer(rep, None if layer.b is None else rep, layer.activation) for layer in params)
  return row_shardings(mesh, params, model_axis)


def shard_params(mesh: Mesh, params, *, model_axis: str | None = None):
  """``params`` placed on ``mesh``: a copy on every device, or W_l split by rows over ``model_axis``."""
  return jax.device_put(params, param_shardings(mesh, params, model_axis=model_axis))


def _check_batch(name, a, batch, size, axis):
  if not hasattr(a, "shape") or not hasattr(a, "dtype"):
    raise TypeError(f"{name} must be an array of shape (B, n); got {type(a).__name__}")
  if len(a.shape) != 2:
    raise ValueError(f"{name} must be a batch of shape (B, n) to be split over the mesh; got shape "
                     f"{tuple(a.shape)} (for one example use x[None, :])")
  if batch is not None and a.shape[0] != batch:
    raise ValueError(f"{name} has batch size {a.shape[0]} but x has {batch}; "
                     "their first axes must agree")
  if a.shape[0] % size != 0:
    raise ValueError(f"{name} has batch size B = {a.shape[0]}, which the mesh axis {axis!r} of size "
                     f"{size} does not divide; use a batch that is a multiple of {size}")


def shard_batch(mesh: Mesh, x, t=None, *, axis: str = DATA):
  """x (and t) placed on ``mesh`` with the batch axis split over the mesh axis ``axis``.

  Args:
    mesh: a ``jax.sharding.Mesh`` with Auto axes (see ``make_mesh``).
    x: inputs, shape (B, n_0), B a multiple of the size k of ``axis``.
    t: targets, shape (B, n_L), or None.
    axis: the mesh axis that splits the batch.

  Returns:
    x, or (x, t), as global arrays of the same shapes; device j holds rows
    j B/k .. (j+1) B/k - 1 (replicated over any other mesh axis).
  """
  sharding = batch_sharding(mesh, axis)
  size = mesh.shape[axis]
  _check_batch("x", x, None, size, axis)
  if t is None:
    return jax.device_put(x, sharding)
  _check_batch("t", t, x.shape[0], size, axis)
  return jax.device_put(x, sharding), jax.device_put(t, sharding)


def output_shardings(fn, mesh: Mesh, *, axis: str = DATA, params_layout=None):
  """The layout of ``fn``'s outputs when the batch is split over ``axis``.

  Reduced outputs (``REDUCED_OUTPUTS``) are replicated, except gradients, which take
  ``params_layout`` (a tree from ``param_shardings``; default replicated). Per-example
  outputs (``PER_EXAMPLE_OUTPUTS``) keep their batch axis split over ``axis``.
  """
  name = getattr(fn, "__name__", repr(fn))
  batch = batch_sharding(mesh, axis)
  rep = replicated(mesh)
  grads = rep if params_layout is None else params_layout
  if name == "value_and_grad":
    return (rep, grads)
  if name == "grad":
    return grads
  if name == "loss_value":
    return rep
  if name in PER_EXAMPLE_OUTPUTS:
    return batch
  raise TypeError(f"no known output layout for {name!r}; data_parallel takes one of "
                  f"{REDUCED_OUTPUTS + PER_EXAMPLE_OUTPUTS} (from bpref or bpref.witnesses.autodiff). "
                  "For another function use jax.jit(fn, out_shardings=...) directly")


def data_parallel(fn, mesh: Mesh, *, axis: str = DATA, params_layout=None):
  """``fn`` compiled to run with the batch split over the mesh axis ``axis``.

  ``fn`` is one of bpref's public functions (or the same-named function of
  ``bpref.witnesses.autodiff``); its arguments are unchanged. Place the inputs first with
  ``shard_batch`` and ``shard_params`` (uncommitted arrays are moved by JAX). The
  outputs come back in the layout of ``output_shardings``: gradients and losses are
  summed over the batch by an XLA all-reduce and replicated (or split like the
  parameters when ``params_layout`` is given); per-example outputs stay split.

  Args:
    fn: e.g. ``bpref.value_and_grad``, ``bpref.deltas``, ``bpref.lambdas``,
      ``bpref.per_example_grads``.
    mesh: the device mesh (Auto axes).
    axis: the mesh axis that splits the batch.
    params_layout: for model parallelism, ``param_shardings(mesh, params, model_axis=...)``.

  Returns:
    A ``jax.jit`` function with ``loss``, ``reduction`` and ``precision`` static.
  """
  out = output_shardings(fn, mesh, axis=axis, params_layout=params_layout)
  accepted = inspect.signature(fn).parameters
  static = tuple(name for name in _STATIC if name in accepted)
  return jax.jit(fn, static_argnames=static, out_shardings=out)
