"""bpref's activations evaluated in float64 on NumPy arrays, a few compilations for many shapes.

The oracle's truth, the problem generator and the tolerance of a problem evaluate f, f' and
rho_f (the absolute error a correct f' may make, proofs/tolerance.md) on arrays of every shape.
rho_f is bpref's |f''| bound (``Activation.d2f``) plus, where the caller gives them (``forms``),
the errors of other people's forms of f' (the oracle's ``bpref.oracle.textbook_forms.ERRORS``).
Compiling each function at each shape would cost more than the arithmetic, so

* ``pointwise`` flattens its arrays and zero-pads them to a power-of-two length: one
  compilation per length class;
* given ``table``, the activation names a caller works with (a search's declared domain,
  or ``ACTIVATIONS`` for every name), the f's of those activations share one compiled
  function, their f''s another, their rho_f's a third, ``jax.lax.switch`` picking the branch
  (``_tables``): a search that declares 4 of the 14 activations compiles a table of 4 branches,
  not 14 (0.25 s against 0.86 s for the f' table). A function outside ``table`` still gets its
  value, from the table of every name;
* without ``table`` each function compiles on its own: one network with three activations
  compiles three small programs, not a table of all of them.

The caller chooses, by argument: nothing here depends on where it is called from.

>>> import numpy as np
>>> from bpref import activations
>>> pointwise(activations.get("relu").f, np.array([-1.0, 2.0]), table=ACTIVATIONS).tolist()
[0.0, 2.0]
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from bpref import activations as _activations
from bpref import compilation

ACTIVATIONS = tuple(sorted(_activations.ACTIVATIONS))
"""Every activation name: the ``table`` that holds them all."""


@functools.lru_cache(maxsize=None)
def rho_function(name: str, forms: tuple = ()):
  """rho_f of activation ``name`` as one function (z, a) -> units of u, or None where it is 0:
  the record's ``d2f`` plus the error phi_f that ``forms``, (activation, phi_f) pairs, gives
  for ``name`` (derived in proofs/tolerance.md); () for bpref's own f', d2f alone.
  The same function object for the same arguments, so that compiled uses of it are shared."""
  act = _activations.get(name)
  parts = [f for f in (act.d2f, dict(forms).get(name)) if f is not None]
  if not parts:
    return None
  return parts[0] if len(parts) == 1 else (lambda z, a: parts[0](z, a) + parts[1](z, a))


def _key(table) -> tuple | None:
  """The cache key of ``_tables`` for ``table``: its names sorted, None for every name."""
  names = tuple(sorted(set(table)))
  return None if set(names) >= set(ACTIVATIONS) else names


@functools.lru_cache(maxsize=None)
def _tables(names: tuple | None = None, forms: tuple = ()) -> dict:
  """fn -> (apply, i) for every elementwise f, f' and rho_f of ``bpref.activations`` (of
  ``names`` alone if given; rho_f with and without ``forms``): one compiled function per role
  (the f's, the f''s, the rho_f's), ``apply(i, z, a)`` picking the i-th by ``jax.lax.switch``,
  so a role compiles once per length class for every activation, and a caller compiles only
  the roles it uses."""
  elementwise = [(name, act) for name, act in _activations.ACTIVATIONS.items()
                 if act.elementwise and (names is None or name in names)]
  roles = (
      [(act.f, lambda z, a, fn=act.f: fn(z)) for _, act in elementwise],
      [(act.df, lambda z, a, fn=act.df: fn(z)) for _, act in elementwise],
      [(r, r) for name, _ in elementwise
       for r in dict.fromkeys((rho_function(name), rho_function(name, forms))) if r is not None],
  )
  found = {}
  named = tuple((name, f"{fn.__module__}.{fn.__qualname__}") for name, fn in forms)
  for index, role in enumerate(roles):
    branches = tuple(branch for _, branch in role)
    apply = compilation.jit(lambda i, z, a, branches=branches: jax.lax.switch(i, branches, z, a),
                            key=f"bpref.tables._tables{(index, names, named)}",
                            cpu_options=compilation.ELEMENTAL_EMITTERS)
    for i, (fn, _) in enumerate(role):
      found.setdefault(fn, (apply, i))
  return found


@functools.partial(jax.jit, static_argnums=0)
def _apply(fn, *args):
  return fn(*args)


def pointwise(fn, *arrays, table=None, forms=()) -> np.ndarray:
  """fn(*arrays) for an elementwise jnp function, in float64 whatever the caller's x64.

  The arrays are flattened and zero-padded to a power-of-two length (at least 64), so
  many problems compile once per length class rather than once per shape.

  Args:
    fn: an elementwise function of one or two arrays of the same shape (an activation's f or
      f', or ``rho_function``'s (z, a) -> rho_f).
    arrays: its arguments.
    table: activation names (``ACTIVATIONS`` for all) whose f, f' and rho_f share one
      compiled function per role and length class (``_tables``); a ``fn`` outside them comes
      from the table of every name, any other function compiles alone. None: ``fn``
      compiles alone.
    forms: the ``forms`` of ``rho_function`` whose rho_f's the table holds (beside d2f alone).
  """
  shape = np.shape(arrays[0])
  n = int(np.prod(shape, dtype=np.int64))
  size = max(64, 1 << max(n - 1, 0).bit_length())
  flat = [np.pad(np.asarray(a, np.float64).ravel(), (0, size - n)) for a in arrays]
  found = {}
  if table is not None:
    found = _tables(_key(table), forms)
    if fn not in found:
      found = _tables(None, forms)
  with jax.enable_x64(True):
    if fn in found and len(flat) <= 2:
      apply, i = found[fn]
      out = apply(np.int32(i), flat[0], flat[-1])
    else:
      out = _apply(fn, *flat)
    out = np.asarray(out, np.float64)
  return out[:n].reshape(shape)


def rowwise(fn, z) -> np.ndarray:
  """fn(z) in float64 for a function of each row of z that gives an entry of -inf no weight
  (softmax), on rows and columns padded to powers of two (at least 8): one compilation per
  size class."""
  rows, cols = np.shape(z)
  size = lambda n: max(8, 1 << max(n - 1, 0).bit_length())  # noqa: E731
  padded = np.full((size(rows), size(cols)), -np.inf)
  padded[:rows, :cols] = z
  with jax.enable_x64(True):
    return np.asarray(_apply(fn, padded), np.float64)[:rows, :cols]
