"""``reference_grads``: bpref's gradients for a user's own property tests, in a few compiled programs."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Reference(NamedTuple):
  """bpref's answer on one problem, float64 NumPy arrays.

  Attributes:
    value: the reduced loss C.
    dW: dC/dW_l for l = 1..L, in the problem's layout: (n_l, n_{l-1}), or (n_{l-1}, n_l)
      for a problem drawn with ``layout="in_out"``.
    db: dC/db_l, each of shape (n_l,); None for a network without biases.
  """
  value: float
  dW: tuple
  db: tuple | None


def reference_grads(problem) -> Reference:
  """bpref's loss and gradients on ``problem``, through one compiled program per bucket.

  ``bpref.grad`` under ``jax.jit`` compiles once per architecture, so a property test that
  draws 50 networks compiles about 50 programs per function it calls. This evaluates
  bpref's equations in ``bpref.scale.fast``'s padded buckets instead, as the oracle's truth
  does (the same compiled programs): every network of depth, widths and batch up to 8 shares
  one program, so 50 examples compile one or two whatever their shapes, activations and
  losses, and the persistent cache keeps them between runs. It runs in float64 on the
  problem's values (float32 ones are cast up exactly) whatever JAX's x64 setting, so that a
  difference measures the code under test alone.

  Args:
    problem: a ``bpref.problems.Problem`` (what ``bpref.testing.strategies.problems``
      draws, in its layout), or a tuple (params, x, t[, loss[, reduction]]) of bpref's
      arguments (the (n_l, n_{l-1}) layout).

  Returns:
    a ``Reference``: C, dC/dW_l and dC/db_l.

  >>> import numpy as np
  >>> from bpref.structures import Layer
  >>> from bpref.testing import reference_grads
  >>> params = (Layer(np.array([[2.0, -1.0]]), np.array([0.5]), "identity"),)
  >>> ref = reference_grads((params, np.array([[1.0, 3.0]]), np.array([[0.0]]), "half_squared_error"))
  >>> ref.value, ref.dW[0].tolist(), ref.db[0].tolist()      # z = 2 - 3 + 0.5 = -0.5
  (0.125, [[-0.5, -1.5]], [-0.5])
  """
  import jax

  from bpref.oracle import truth as _truth
  from bpref.scale import fast as _fast
  from bpref.structures import Layer
  from bpref.testing._assert import TALLY

  TALLY["references"] += 1

  params, x, t, loss, reduction = _fast.as_case(problem)
  params = tuple(Layer(np.asarray(layer.W, np.float64),
                       None if layer.b is None else np.asarray(layer.b, np.float64), layer.activation)
                 for layer in params)
  case = (params, np.asarray(x, np.float64), np.asarray(t, np.float64), loss, reduction)
  with jax.enable_x64(True):
    # the oracle's names when they hold the problem's (its program), else every name
    result, = _fast.evaluate_many([case], names=_truth.COMMON, chunk=_fast.CHUNKS[0])
  in_out = getattr(problem, "layout", "out_in") == "in_out"
  dW = tuple(np.asarray(g.W, np.float64).T if in_out else np.asarray(g.W, np.float64)
             for g in result.grads)
  db = None if params[0].b is None else tuple(np.asarray(g.b, np.float64) for g in result.grads)
  return Reference(float(result.value), dW, db)
