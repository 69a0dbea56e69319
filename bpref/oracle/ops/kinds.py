"""The op kinds: each one record (``bpref.oracle.ops.record.OpKind``), listed once here.

Adding a kind is writing its record and naming it in ``RECORDS``; ``tests/test_ops_kinds.py``
says what a new record still lacks.
"""

from __future__ import annotations

import numpy as np

from bpref import losses as _losses
from bpref.oracle.ops import attention as _attention
from bpref.oracle.ops import batchnorm as _batchnorm
from bpref.oracle.ops import block as _block
from bpref.oracle.ops import classic as _classic
from bpref.oracle.ops import conv as _conv
from bpref.oracle.ops import embedding as _embedding
from bpref.oracle.ops import layernorm as _layernorm
from bpref.oracle.ops import pool as _pool
from bpref.oracle.ops import residual as _residual
from bpref.oracle.ops.record import OpKind, OpSpec

RECORDS: tuple = (
    *_classic.RECORDS,
    _layernorm.LAYERNORM,
    _block.BLOCK,
    _attention.ATTENTION,
    _batchnorm.BATCHNORM,
    _conv.CONV2D,
    _embedding.EMBEDDING,
    _residual.RESIDUAL,
    _pool.MAXPOOL2D,
    _pool.AVGPOOL2D,
    _pool.DROPOUT,
)

KINDS = tuple(r.name for r in RECORDS)
"""The kinds' names, as ``check_op`` and ``bpref check --op`` spell them."""

_BY_NAME = {r.name: r for r in RECORDS}


def get(kind: str) -> OpKind:
  """The record of ``kind``; ValueError names the valid kinds."""
  if kind not in _BY_NAME:
    raise ValueError(f"unknown op kind {kind!r}; valid kinds: {', '.join(KINDS)}")
  return _BY_NAME[kind]


def of(spec: OpSpec) -> OpKind:
  """The record of the spec's kind."""
  return _BY_NAME[spec.kind]


def make_spec(kind, name=None, **options) -> OpSpec:
  """An ``OpSpec`` with every option checked; ValueError or TypeError says what was expected."""
  record = get(kind)
  unknown = sorted(set(options) - set(OpSpec._fields))
  if unknown:
    raise TypeError(f"unknown option(s) {', '.join(unknown)}; valid: "
                    f"{', '.join(f for f in OpSpec._fields if f not in ('kind', 'name'))}")
  spec = OpSpec(kind, name, **options)
  if spec.targets not in ("probabilities", "labels"):
    raise ValueError(f"targets must be 'probabilities' or 'labels'; got {spec.targets!r}")
  _losses.check_reduction(spec.reduction)
  if spec.dtype not in ("float64", "float32"):
    raise ValueError(f"dtype must be 'float64' or 'float32'; got {spec.dtype!r}")
  for field, least in (("examples", 0), ("max_batch", 1), ("max_width", 1), ("shrink_budget", 0),
                       ("heads", 0)):
    value = getattr(spec, field)
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < least:
      raise ValueError(f"{field} must be an integer >= {least}; got {value!r}")
  if not isinstance(spec.seed, (int, np.integer)) or isinstance(spec.seed, bool):
    raise TypeError(f"seed must be an integer; got {spec.seed!r}")
  if not spec.timeout > 0:
    raise ValueError(f"timeout must be a positive number of seconds; got {spec.timeout!r}")
  if not (isinstance(spec.eps, (int, float, np.floating)) and 0 < spec.eps < 1):
    raise ValueError(f"eps must be a number in (0, 1); got {spec.eps!r}")
  spec = record.validate(spec)
  return spec._replace(examples=int(spec.examples), seed=int(spec.seed), heads=int(spec.heads),
                       eps=float(spec.eps))
