"""Framework rules as op candidates: a ``torch.autograd.Function``'s ``backward`` and a
``jax.custom_vjp`` function's bwd rule.

Each adapter returns an ``OpCandidate`` whose backward runs the user's own rule and whose
forward runs the user's forward, so ``check_op`` checks both against bpref's. Framework
autodiff is only the means of calling the user's rule: ``torch.autograd.grad`` through a
Function calls its ``backward`` and nothing else, and ``jax.vjp`` of a ``custom_vjp`` function
calls its bwd rule; a function without such a rule is refused, since its gradient would be the
framework's, not the user's.

The framework function is called as

=========== ======================= ===============================================
kind        forward                 backward run with
=========== ======================= ===============================================
dense       fn(x, W, b) -> z        cotangent dout on z: (dx, dW, db)
layer       fn(x, W, b) -> a        cotangent dout on a: (dx, dW, db)
activation  fn(z) -> a              cotangent dout on a: dz
softmax     fn(z) -> y              cotangent dout on y: dz
loss        fn(y, t) -> C           cotangent 1 on C: dC/dy
=========== ======================= ===============================================

with W in the declared layout, and b left out (fn(x, W)) for a layer without bias.
"""

from __future__ import annotations

import sys

import numpy as np

from bpref.oracle.ops import kinds
from bpref.oracle.ops.record import OpCandidate


def is_torch_function(obj) -> bool:
  """Whether ``obj`` is a subclass of ``torch.autograd.Function`` (torch already imported)."""
  torch = sys.modules.get("torch")
  return torch is not None and isinstance(obj, type) and issubclass(obj, torch.autograd.Function)


def is_custom_vjp(obj) -> bool:
  """Whether ``obj`` is a function decorated with ``jax.custom_vjp``."""
  import jax

  return isinstance(obj, jax.custom_vjp)


def _torch_function(fn_class) -> None:
  import torch

  if not (isinstance(fn_class, type) and issubclass(fn_class, torch.autograd.Function)):
    raise TypeError(f"from_torch_function needs a torch.autograd.Function subclass; got "
                    f"{fn_class!r}")
  if fn_class.backward is torch.autograd.Function.backward:
    raise TypeError(f"{fn_class.__name__} defines no backward: torch would have nothing of yours "
                    "to check; write a @staticmethod backward(ctx, grad_output)")


def _custom_vjp(fn) -> None:
  import jax

  if not isinstance(fn, jax.custom_vjp):
    raise TypeError("from_custom_vjp needs a function decorated with @jax.custom_vjp (its bwd "
                    "rule is what is checked); the gradient of a plain function would be JAX's "
                    f"autodiff, not yours; got {fn!r}")


def _spec(kind, **options):
  return kinds.make_spec(kind, options.pop("name", None), **options)


def from_torch_function(fn_class, kind: str, *, name=None, dtype="float64", layout="", bias=True,
                        reduction="mean", **options) -> OpCandidate:
  """An op candidate running ``fn_class.apply`` forward and its own ``backward`` rule.

  Args:
    fn_class: a ``torch.autograd.Function`` subclass with its own ``forward`` and ``backward``.
    kind: the op kind (module docstring gives the call per kind).
    name, dtype, layout, bias, reduction, **options: as for ``check_op`` (dtype picks the
      tensors' dtype).
  """
  _torch_function(fn_class)
  return torch_candidate(fn_class, _spec(kind, name=name, dtype=dtype, layout=layout, bias=bias,
                                         reduction=reduction, **options))


def torch_candidate(fn_class, spec) -> OpCandidate:
  """``from_torch_function`` for a checked ``OpSpec``."""
  import torch

  record = kinds.of(spec)
  _torch_function(fn_class)
  tdtype = torch.float64 if spec.dtype == "float64" else torch.float32

  def tensor(a, grad):
    if a.dtype.kind in "iu":
      return torch.from_numpy(np.array(a, np.int64))
    return torch.tensor(np.array(a), dtype=tdtype, requires_grad=grad)

  def forward(*args):
    with torch.no_grad():
      out = fn_class.apply(*[tensor(a, False) for a in args if a is not None])
    return out.detach().numpy()

  def backward(*args):
    inputs, grad, cot = record.framework_call(spec, args)
    tensors = [None if a is None else tensor(a, g) for a, g in zip(inputs, grad)]
    out = fn_class.apply(*[t for t in tensors if t is not None])
    wrt = [t for t, g in zip(tensors, grad) if t is not None and g]
    cot = torch.ones((), dtype=tdtype) if cot is None else torch.tensor(np.array(cot), dtype=tdtype)
    grads = torch.autograd.grad(out, wrt, grad_outputs=cot, allow_unused=True)
    return record.framework_result(spec, [None if g is None else g.detach().numpy() for g in grads])

  return OpCandidate(backward, forward, name=fn_class.__name__)


def from_custom_vjp(fn, kind: str, *, name=None, dtype="float64", layout="", bias=True,
                    reduction="mean", **options) -> OpCandidate:
  """An op candidate running a ``jax.custom_vjp`` function forward and its bwd rule backward.

  Args:
    fn: a function decorated with ``@jax.custom_vjp`` whose ``defvjp`` gave its fwd and bwd.
    kind: the op kind (module docstring gives the call per kind).
    name, dtype, layout, bias, reduction, **options: as for ``check_op``; float64 runs under
      ``jax.enable_x64``.
  """
  _custom_vjp(fn)
  return custom_vjp_candidate(fn, _spec(kind, name=name, dtype=dtype, layout=layout, bias=bias,
                                        reduction=reduction, **options))


def custom_vjp_candidate(fn, spec) -> OpCandidate:
  """``from_custom_vjp`` for a checked ``OpSpec``."""
  import jax
  import jax.numpy as jnp

  record = kinds.of(spec)
  _custom_vjp(fn)
  x64 = spec.dtype == "float64"

  def pull(inputs, grad, cot):  # the user's bwd rule, run by jax.vjp
    wrt = [i for i, g in enumerate(grad) if g]

    def on(*diff):
      full = list(inputs)
      for i, d in zip(wrt, diff):
        full[i] = d
      return fn(*full)

    out, pullback = jax.vjp(on, *[inputs[i] for i in wrt])
    return pullback(jnp.ones_like(out) if cot is None else cot)

  pull_jit, forward_jit = jax.jit(pull, static_argnums=1), jax.jit(fn)

  def forward(*args):
    with jax.enable_x64(x64):
      return np.asarray(forward_jit(*[jnp.asarray(a) for a in args if a is not None]))

  def backward(*args):
    inputs, grad, cot = record.framework_call(spec, args)
    with jax.enable_x64(x64):  # the arrays made inside, so that float64 stays float64
      kept = [(jnp.asarray(a), g) for a, g in zip(inputs, grad) if a is not None]
      grads = pull_jit([a for a, _ in kept], tuple(g for _, g in kept),
                       None if cot is None else jnp.asarray(cot))
      grads = [np.asarray(g) for g in grads]
    return record.framework_result(spec, grads)

  return OpCandidate(backward, forward, name=getattr(fn, "__name__", "custom_vjp function"))
