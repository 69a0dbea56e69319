"""The independent witnesses of ``bpref verify``'s second table, one record each.

Each witness either estimates the gradient of a problem by other means than bpref, or
measures bpref's gradient by a property it must have. Its value on one problem is compared
with the exact referee (``bpref.witnesses.referee``, mpmath at 50 digits): ||X - exact||_inf /
||exact||_inf per array, the worst array. A record says when the witness applies (its value
is None otherwise), when its assumptions hold (``judged``: outside them a value is reported
but neither ranked nor judged) and its verdict rule (``ok``; None: reported, never judged).
``bpref verify`` loops over ``WITNESSES``: a new witness is one record here.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import numpy as np

from bpref import activations as _activations
from bpref import losses as _losses
from bpref import problems as _problems
from bpref import tables as _tables
from bpref.scale import fast as _fast
from bpref.structures import Layer
from bpref.witnesses import autodiff as _autodiff
from bpref.witnesses import finite_diff as _fd
from bpref.witnesses import referee as _referee


def bpref_grads(problems) -> list:
  """bpref's gradient of each problem in its dtype, through the buckets (no compilation per
  shape), in chunks of ``bpref verify``'s main table: its compiled functions serve again."""
  return _fast.grads_many(problems, chunk=_fast.CHUNKS[-1])


def autodiff_grads(problems, narrow: bool = False) -> list:
  """The autodiff witness's gradient of each problem in its dtype, through its padded twin
  (``narrow`` as ``bpref.witnesses.padding.bucketed``'s)."""
  return _autodiff.grads_many(problems, narrow=narrow)


def smooth(problem) -> bool:
  """Whether C is smooth along any line: Richardson's estimate and the Taylor order assume it."""
  return (_losses.get(problem.loss).smooth
          and not any(_activations.get(p.activation).kink for p in problem.params))


DOMAIN = (3, max(_problems.WIDTHS), max(_problems.BATCHES))
"""The bucket (D, N, M) of the finite-difference estimates: ``bpref verify``'s witness cases
(depth <= 3) all fit, so a run compiles them once per dtype; a larger problem widens it."""


class Context:
  """One problem and what its witnesses share: one random direction v (drawn at once, so the
  draws do not depend on what is computed), and, computed when first asked, the exact referee,
  (T), whether the complex step applies and whether C is smooth. Estimates computed for many
  contexts together are kept in ``shared``. With ``narrow``, the witnesses' padded programs
  switch over only the activations and losses of the contexts computed together
  (``bpref.witnesses.padding.bucketed``): smaller programs for a run that draws its cases once;
  without it, one program serves every draw."""

  def __init__(self, problem, rng, *, narrow: bool = False):
    self.problem = problem
    self.narrow = narrow
    size = sum(p.W.size + (0 if p.b is None else p.b.size) for p in problem.params)  # theta's
    v = rng.normal(size=size).astype(problem.x.dtype)
    self.v = tuple(Layer(np.asarray(l.W), None if l.b is None else np.asarray(l.b), l.activation)
                   for l in _fd.unflatten(v, problem.params))
    self.shared: dict = {}

  @functools.cached_property
  def exact(self):
    return _referee.exact(*self.problem)

  @functools.cached_property
  def tolerance(self) -> float:
    """(T) of the problem; its forward pass through the table of every activation, which the
    contexts of a run share (``bpref.tables``)."""
    return _problems.problem_tolerance(self.problem.params, self.problem.x,
                                       table=_tables.ACTIVATIONS)

  @functools.cached_property
  def complex(self) -> bool:
    return _fd.supports_complex_step(self.problem.params, self.problem.loss)

  @functools.cached_property
  def smooth(self) -> bool:
    return smooth(self.problem)

  def error(self, grads) -> float:
    return _referee.worst_error(grads, self.exact.grads)


def _shared(contexts, key, compute) -> list:
  """``compute(contexts)`` for the contexts that lack ``key``, once, kept on each context."""
  todo = [c for c in contexts if key not in c.shared]
  if todo:
    for c, value in zip(todo, compute(todo)):
      c.shared[key] = value
  return [c.shared[key] for c in contexts]


def _narrow(contexts) -> bool:
  return all(c.narrow for c in contexts)


def _claimed(contexts) -> list:
  """bpref's gradients: the bpref row's estimate and the claim the directional checks test."""
  return _shared(contexts, "bpref", lambda cs: bpref_grads([c.problem for c in cs]))


def _estimates(contexts) -> list:
  """``bpref.witnesses.finite_diff.estimates_many`` of every context, computed together once."""
  def compute(cs):
    problems = [c.problem for c in cs]
    need = [(len(p.params), max([p.params[0].W.shape[1]] + [l.W.shape[0] for l in p.params]),
             np.atleast_2d(p.x).shape[0]) for p in problems]
    shape = tuple(max(d, *n) for d, n in zip(DOMAIN, zip(*need)))
    return _fd.estimates_many(problems, _claimed(cs), [c.v for c in cs], shape=shape,
                              narrow=_narrow(cs))
  return _shared(contexts, "finite_diff", compute)


def _directional(contexts) -> list:
  """The adjoint check of bpref's gradient along v (complex step where it applies, else
  Richardson, with its error estimate) and the Taylor remainder's fitted order, per context."""
  def compute(cs):
    out = []
    for c, e, g in zip(cs, _estimates(cs), _claimed(cs)):
      pairs = [(gl.W, vl.W) for gl, vl in zip(g, c.v)] + [
          (gl.b, vl.b) for gl, vl in zip(g, c.v) if vl.b is not None]
      scale = max(sum(float(np.vdot(np.abs(np.asarray(a, np.float64)), np.abs(np.asarray(b, np.float64))))
                      for a, b in pairs), 1e-300)  # |<|g|, |v|>|, in float64
      d = e.directional
      out.append({"adjoint": abs(float(d.claimed) - float(d.measured)) / scale,
                  "adjoint_estimate": float(d.error) / scale, "taylor_order": e.taylor_order})
    return out
  return _shared(contexts, "directional", compute)


def _errors(estimate, applies=lambda c: True):
  """The value of a witness that estimates the gradient: its error against the referee, on
  the contexts where it applies (None elsewhere), estimated for all of them at once."""
  def value(contexts):
    use = [c for c in contexts if applies(c)]
    grads = dict(zip(map(id, use), estimate(use) if use else ()))
    return [c.error(grads[id(c)]) if id(c) in grads else None for c in contexts]
  return value


class Witness(NamedTuple):
  """One row of the witness table.

  Attributes:
    name: the row's name.
    value: [Context] -> the witness's value on each problem, or None where it does not apply
      (the values of many problems are computed together: a few compilations per dtype).
    judged: Context -> whether the witness's assumptions hold on the problem.
    ok: (value, Context) -> its verdict; None for a witness that is reported, not judged.
    worst_is_lowest: the worst value is the lowest (a fitted order), not the highest error.
  """
  name: str
  value: Callable[[list], list]
  judged: Callable[[Context], bool] = lambda ctx: True
  ok: Callable[[float, Context], bool] | None = None
  worst_is_lowest: bool = False


WITNESSES = (
    Witness("bpref_vs_referee", _errors(_claimed), ok=lambda value, ctx: value <= ctx.tolerance),  # (T)
    Witness("jax_grad_vs_referee",
            _errors(lambda cs: autodiff_grads([c.problem for c in cs], narrow=_narrow(cs)))),
    Witness("complex_step", _errors(lambda cs: [e.complex for e in _estimates(cs)],
                                    applies=lambda ctx: ctx.complex),
            ok=lambda value, ctx: value <= ctx.tolerance),  # exact to rounding: (T)
    Witness("richardson", _errors(lambda cs: [e.richardson for e in _estimates(cs)])),
    Witness("central", _errors(lambda cs: [e.central for e in _estimates(cs)])),
    # complex step: (T); Richardson: its own error estimate plus (T), where C is smooth
    Witness("adjoint", lambda cs: [d["adjoint"] for d in _directional(cs)],
            judged=lambda ctx: ctx.complex or ctx.smooth,
            ok=lambda value, ctx: value <= 2 * _directional([ctx])[0]["adjoint_estimate"] + ctx.tolerance),
    # a correct gradient leaves r(h) = O(h^2): slope 2, or more where the h^3 term still shows
    # (float32 cannot reach small h); a wrong one slope 1. nan: C linear along v to rounding.
    Witness("taylor_order", lambda cs: [d["taylor_order"] for d in _directional(cs)],
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
