"""The independent witnesses of ``bpref verify``'s second table, one record each.

Each witness either estimates the gradient of a problem by other means than bpref, or
measures bpref's gradient by a property it must have. Its value on one problem is compared
with the exact referee (``bpref.referee``, mpmath at 50 digits): ||X - exact||_inf /
||exact||_inf per array, the worst array. A record says when the witness applies (its value
is None otherwise), when its assumptions hold (``judged``: outside them a value is reported
but neither ranked nor judged) and its verdict rule (``ok``; None: reported, never judged).
``bpref verify`` loops over ``WITNESSES``: a new witness is one record here.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bpref import activations as _activations
from bpref import backprop as _backprop
from bpref import fast as _fast
from bpref import finite_diff as _fd
from bpref import losses as _losses
from bpref import reference as _reference
from bpref import referee as _referee
from bpref import tolerance as _tolerance
from bpref.network import DEFAULT_PRECISION


def bpref_grad(problem):
  """bpref's gradient in the problem's dtype, through the buckets (no compilation per shape)."""
  return _fast.grads_many([problem])[0]


def autodiff_grad(problem):
  """The autodiff witness's gradient in the problem's dtype, through its padded twin."""
  return _reference.grads_many([problem])[0]


def smooth(problem) -> bool:
  """Whether C is smooth along any line: Richardson's estimate and the Taylor order assume it."""
  return (_losses.get(problem.loss).smooth
          and not any(_activations.get(p.activation).kink for p in problem.params))


@functools.partial(jax.jit, static_argnums=(3, 4, 6))
def _adjoint_and_taylor(params, x, t, loss, reduction, v, use_complex):
  theta, fun = _fd.loss_function(params, x, t, loss, reduction)
  fun_c = _fd.complex_loss_function(params, x, t, loss, reduction)[1] if use_complex else None
  g = _fd.flatten(_backprop.grad(params, x, t, loss, reduction))
  return (_fd.directional(fun, theta, g, v, fun_c=fun_c), _fd.taylor_test(fun, theta, g, v).order,
          jnp.vdot(jnp.abs(g), jnp.abs(v), precision=DEFAULT_PRECISION))


class Context:
  """What the witnesses of one problem share: the exact referee, (T), whether the complex
  step applies and C is smooth, and one random direction v for the directional checks."""

  def __init__(self, problem, rng):
    self.problem = problem
    self.exact = _referee.exact(*problem)
    self.tolerance = _tolerance.problem_tolerance(problem.params, problem.x)
    self.complex = _fd.supports_complex_step(problem.params, problem.loss)
    self.smooth = smooth(problem)
    size = sum(p.W.size + (0 if p.b is None else p.b.size) for p in problem.params)  # theta's
    self.v = rng.normal(size=size).astype(problem.x.dtype)

  def error(self, grads) -> float:
    return _referee.worst_error(grads, self.exact.grads)

  @functools.cached_property
  def directional(self) -> dict:
    """The adjoint check of bpref's gradient along v (complex step where it applies, else
    Richardson, with its error estimate) and the Taylor remainder's fitted order."""
    adj, order, scale = _adjoint_and_taylor(*self.problem, self.v, self.complex)
    scale = max(float(scale), 1e-300)  # |<|g|, |v|>|, in float64: a float32 zero stays a zero
    return {"adjoint": abs(float(adj.claimed) - float(adj.measured)) / scale,
            "adjoint_estimate": float(adj.error) / scale, "taylor_order": float(order)}


class Witness(NamedTuple):
  """One row of the witness table.

  Attributes:
    name: the row's name.
    value: Context -> the witness's value on the problem, or None where it does not apply.
    judged: Context -> whether the witness's assumptions hold on the problem.
    ok: (value, Context) -> its verdict; None for a witness that is reported, not judged.
    worst_is_lowest: the worst value is the lowest (a fitted order), not the highest error.
  """
  name: str
  value: Callable[[Context], float | None]
  judged: Callable[[Context], bool] = lambda ctx: True
  ok: Callable[[float, Context], bool] | None = None
  worst_is_lowest: bool = False


WITNESSES = (
    Witness("bpref_vs_referee", lambda ctx: ctx.error(bpref_grad(ctx.problem)),
            ok=lambda value, ctx: value <= ctx.tolerance),  # (T)
    Witness("jax_grad_vs_referee", lambda ctx: ctx.error(autodiff_grad(ctx.problem))),
    Witness("complex_step", lambda ctx: ctx.error(_fd.gradient(*ctx.problem, method="complex"))
            if ctx.complex else None,
            ok=lambda value, ctx: value <= ctx.tolerance),  # exact to rounding: (T)
    Witness("richardson",
            lambda ctx: ctx.error(_fd.gradient(*ctx.problem, method="richardson")[0])),
    Witness("central", lambda ctx: ctx.error(_fd.gradient(*ctx.problem, method="central"))),
    # complex step: (T); Richardson: its own error estimate plus (T), where C is smooth
    Witness("adjoint", lambda ctx: ctx.directional["adjoint"],
            judged=lambda ctx: ctx.complex or ctx.smooth,
            ok=lambda value, ctx: value <= 2 * ctx.directional["adjoint_estimate"] + ctx.tolerance),
    # a correct gradient leaves r(h) = O(h^2): slope 2, or more where the h^3 term still shows
    # (float32 cannot reach small h); a wrong one slope 1. nan: C linear along v to rounding.
    Witness("taylor_order", lambda ctx: ctx.directional["taylor_order"],
            judged=lambda ctx: ctx.smooth,
            ok=lambda value, ctx: not np.isfinite(value) or value >= 1.8, worst_is_lowest=True),
)
"""Every witness, in the table's order."""

NAMES = tuple(w.name for w in WITNESSES)


def get(name: str) -> Witness:
  """The witness called ``name``; a ValueError lists the valid names."""
  for witness in WITNESSES:
    if witness.name == name:
      return witness
  raise ValueError(f"unknown witness {name!r}; valid names: {', '.join(NAMES)}")
