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

from bpref.oracle.ops._judge import OpCandidate


def is_torch_function(obj) -> bool:
  """Whether ``obj`` is a subclass of ``torch.autograd.Function`` (torch already imported)."""
  torch = sys.modules.get("torch")
  return torch is not None and isinstance(obj, type) and issubclass(obj, torch.autograd.Function)


def is_custom_vjp(obj) -> bool:
  """Whether ``obj`` is a function decorated with ``jax.custom_vjp``."""
  import jax

  return isinstance(obj, jax.custom_vjp)


def _check_kind(kind):
  kinds = ("dense", "layer", "activation", "softmax", "loss")
  if kind not in kinds:
    raise ValueError(f"unknown op kind {kind!r}; valid kinds: {', '.join(kinds)}")


def from_torch_function(fn_class, kind: str, *, name=None, dtype="float64", layout="out_in",
                        bias=True, reduction="mean") -> OpCandidate:
  """An op candidate running ``fn_class.apply`` forward and its own ``backward`` rule.

  Args:
    fn_class: a ``torch.autograd.Function`` subclass with its own ``forward`` and ``backward``.
    kind: the op kind (module docstring gives the call per kind).
    name, dtype, layout, bias, reduction: as for ``check_op`` (dtype picks the tensors' dtype).
  """
  import torch

  _check_kind(kind)
  if not (isinstance(fn_class, type) and issubclass(fn_class, torch.autograd.Function)):
    raise TypeError(f"from_torch_function needs a torch.autograd.Function subclass; got "
                    f"{fn_class!r}")
  if fn_class.backward is torch.autograd.Function.backward:
    raise TypeError(f"{fn_class.__name__} defines no backward: torch would have nothing of yours "
                    "to check; write a @staticmethod backward(ctx, grad_output)")
  tdtype = torch.float64 if dtype == "float64" else torch.float32

  def tensors(args, grad):
    out = []
    for i, a in enumerate(args):
      if a is None:
        continue
      if a.dtype.kind in "iu":
        out.append(torch.from_numpy(np.array(a, np.int64)))
      else:
        out.append(torch.tensor(np.array(a), dtype=tdtype, requires_grad=grad[i]))
    return out

  def run(args, grad):
    inputs = tensors(args, grad)
    return inputs, fn_class.apply(*inputs)

  def forward(*args):
    with torch.no_grad():
      _, out = run(args, (False,) * len(args))
    return out.detach().numpy()

  def backward(*args):
    if kind in ("dense", "layer"):
      x, W, b, dout = args
      inputs, out = run((x, W, b), (True, True, True))
      cot = torch.tensor(np.array(dout), dtype=tdtype)
    elif kind == "loss":
      y, t = args
      inputs, out = run((y, t), (True, False))
      inputs = inputs[:1]
      cot = torch.ones((), dtype=tdtype)
    else:
      z, dout = args
      inputs, out = run((z,), (True,))
      cot = torch.tensor(np.array(dout), dtype=tdtype)
    grads = torch.autograd.grad(out, inputs, grad_outputs=cot, allow_unused=True)
    grads = [None if g is None else g.detach().numpy() for g in grads]
    if kind in ("dense", "layer"):
      return tuple(grads) if bias else (grads[0], grads[1])
    return grads[0]

  return OpCandidate(backward, forward, name=fn_class.__name__)


def from_custom_vjp(fn, kind: str, *, name=None, dtype="float64", layout="out_in", bias=True,
                    reduction="mean") -> OpCandidate:
  """An op candidate running a ``jax.custom_vjp`` function forward and its bwd rule backward.

  Args:
    fn: a function decorated with ``@jax.custom_vjp`` whose ``defvjp`` gave its fwd and bwd.
    kind: the op kind (module docstring gives the call per kind).
    name, dtype, layout, bias, reduction: as for ``check_op``; float64 runs under
      ``jax.enable_x64``.
  """
  import jax
  import jax.numpy as jnp

  _check_kind(kind)
  if not isinstance(fn, jax.custom_vjp):
    raise TypeError("from_custom_vjp needs a function decorated with @jax.custom_vjp (its bwd "
                    "rule is what is checked); the gradient of a plain function would be JAX's "
                    f"autodiff, not yours; got {fn!r}")
  x64 = dtype == "float64"

  def arrays(args):
    return [jnp.asarray(a) for a in args if a is not None]

  def pull(*args):  # the user's bwd rule, run by jax.vjp; one compilation per shape under jit
    if kind in ("dense", "layer"):
      *inputs, dout = args
      return jax.vjp(fn, *inputs)[1](dout)
    if kind == "loss":
      y, t = args
      out, pullback = jax.vjp(lambda v: fn(v, t), y)
      return pullback(jnp.ones_like(out))
    z, dout = args
    return jax.vjp(fn, z)[1](dout)

  pull_jit, forward_jit = jax.jit(pull), jax.jit(fn)

  def forward(*args):
    with jax.enable_x64(x64):
      return np.asarray(forward_jit(*arrays(args)))

  def backward(*args):
    with jax.enable_x64(x64):
      grads = [np.asarray(g) for g in pull_jit(*arrays(args))]
    if kind in ("dense", "layer"):
      return tuple(grads) if bias else (grads[0], grads[1])
    return grads[0]

  return OpCandidate(backward, forward, name=getattr(fn, "__name__", "custom_vjp function"))
