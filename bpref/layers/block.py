"""A GPT-2 transformer block: the layers composed, forward and handwritten backward.

The block (proofs/layers.md, section 7) is llm.c's and GPT-2's, on x of shape (B, T, C), rows
flattened to (N, C) = (B T, C) for the dense steps:

* (BLK1) h1 = layernorm(x; ln1_w, ln1_b)
* (BLK2) qkv = h1 W_qkv^T + b_qkv              W_qkv (3C, C)
* (BLK3) a = attention(qkv, heads)
* (BLK4) x2 = x + a W_proj^T + b_proj          W_proj (C, C): the first residual
* (BLK5) h2 = layernorm(x2; ln2_w, ln2_b)
* (BLK6) f = h2 W_fc^T + b_fc                  W_fc (4C, C)
* (BLK7) g = gelu_tanh(f)
* (BLK8) y = x2 + g W_fp^T + b_fp              W_fp (C, 4C): the second residual

and from dy = dC/dy the backward steps run them in reverse; each residual's input is used
twice (the skip path and the branch), so its gradients add (RES5):

* (BLK9) dx2 = dy + the layernorm ln2's dx of (the fc dense step's dx of (gelu's VJP of
  (the fc_proj dense step's dx of dy)))
* (BLK10) dx = dx2 + the layernorm ln1's dx of (the qkv dense step's dx of (attention's
  backward of (the attn_proj dense step's dx of dx2)))

with every parameter's gradient from its own step. Each step is a layer of ``bpref.layers``
or the network's own dense step (``bpref.network.layer_forward``, ``bpref.backprop.pull_back``,
``bpref.backprop.layer_grads``); the composition adds nothing but the sums of (BLK9), (BLK10).
``STEPS`` names the steps in backward order with what each is handed, which is what the op
oracle's ``block`` kind uses to check someone's layer functions one at a time on the block's
own activations. No JAX autodiff is used.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from bpref import activations as _activations
from bpref.backprop import layer_grads, pull_back
from bpref.layers import attention as _attention
from bpref.layers import layernorm as _layernorm
from bpref.network import DEFAULT_PRECISION, layer_forward

Array = jax.Array

GELU = "gelu_tanh"
"""GPT-2's activation: gelu's tanh approximation, as llm.c."""


class BlockParams(NamedTuple):
  """A block's parameters, C the width: ln1_w, ln1_b, ln2_w, ln2_b (C,); W_qkv (3C, C), b_qkv
  (3C,); W_proj (C, C), b_proj (C,); W_fc (4C, C), b_fc (4C,); W_fp (C, 4C), b_fp (C,).
  Weights are (out, in), as everywhere in bpref and in llm.c's matmuls."""
  ln1_w: Array
  ln1_b: Array
  W_qkv: Array
  b_qkv: Array
  W_proj: Array
  b_proj: Array
  ln2_w: Array
  ln2_b: Array
  W_fc: Array
  b_fc: Array
  W_fp: Array
  b_fp: Array


class BlockCache(NamedTuple):
  """The block's activations, rows (N, .) for the dense steps' inputs and outputs:
  x and x2 (B, T, C); h1, a, h2 (N, C); qkv (B, T, 3C); f, g (N, 4C); and the layers' caches."""
  x: Array
  h1: Array
  qkv: Array
  a: Array
  x2: Array
  h2: Array
  f: Array
  g: Array
  ln1: _layernorm.LayerNormCache
  attn: _attention.AttentionCache
  ln2: _layernorm.LayerNormCache


class Step(NamedTuple):
  """One step of a composition's backward pass, as the op oracle checks it (``bpref.layers.cnn``
  uses it too).

  Attributes:
    name: the step's name, unique in its composition ("fc_proj", "ln2", ...).
    kind: the op kind that checks it (``bpref.oracle.ops.kinds``).
    variant: the kind's name for this step where the kind takes one (the activation, the loss,
      a convolution's "s{stride}p{pad}", a pooling's "p{pool}s{stride}"), else None.
    takes: what it is handed, the array names of ``steps``'s dictionaries.
    returns: what it returns, in order.
  """
  name: str
  kind: str
  variant: str | None
  takes: tuple
  returns: tuple


STEPS = (
    Step("fc_proj", "dense", None, ("x", "W", "b", "dout"), ("dx", "dW", "db")),
    Step("gelu", "activation", GELU, ("z", "dout"), ("dz",)),
    Step("fc", "dense", None, ("x", "W", "b", "dout"), ("dx", "dW", "db")),
    Step("ln2", "layernorm", None, ("x", "w", "b", "dout"), ("dx", "dw", "db")),
    Step("attn_proj", "dense", None, ("x", "W", "b", "dout"), ("dx", "dW", "db")),
    Step("attention", "attention", None, ("qkv", "dout"), ("dqkv",)),
    Step("qkv", "dense", None, ("x", "W", "b", "dout"), ("dx", "dW", "db")),
    Step("ln1", "layernorm", None, ("x", "w", "b", "dout"), ("dx", "dw", "db")),
)
"""The backward pass's steps in the order they run: the first wrong one is where a bug is."""


def _rows(v: Array) -> Array:
  return jnp.reshape(v, (-1, v.shape[-1]))


def _dense(x, W, b, precision):
  return layer_forward(W, b, x, lambda z: z, precision=precision)[0]  # z = x W^T + b


def forward(params: BlockParams, x: Array, heads: int, *, eps: float = _layernorm.DEFAULT_EPS,
            precision=DEFAULT_PRECISION) -> tuple[Array, BlockCache]:
  """y of x's shape (B, T, C) and the cache; ``heads`` divides C."""
  B, T, C = x.shape
  h1, ln1 = _layernorm.forward(x, params.ln1_w, params.ln1_b, eps)  # (BLK1)
  qkv = _dense(_rows(h1), params.W_qkv, params.b_qkv, precision).reshape(B, T, 3 * C)  # (BLK2)
  att, attn = _attention.forward(qkv, heads, precision=precision)  # (BLK3)
  a = _rows(att)
  x2 = x + _dense(a, params.W_proj, params.b_proj, precision).reshape(B, T, C)  # (BLK4): x + a W_proj^T + b_proj
  h2, ln2 = _layernorm.forward(x2, params.ln2_w, params.ln2_b, eps)  # (BLK5)
  f = _dense(_rows(h2), params.W_fc, params.b_fc, precision)  # (BLK6)
  g = _activations.get(GELU).f(f)  # (BLK7)
  y = x2 + _dense(g, params.W_fp, params.b_fp, precision).reshape(B, T, C)  # (BLK8): x2 + g W_fp^T + b_fp
  return y, BlockCache(x, _rows(h1), qkv, a, x2, _rows(h2), f, g, ln1, attn, ln2)


def _dense_back(x, W, dout, precision):
  dW, db = layer_grads(dout, x, precision=precision)  # (39) on the rows
  return pull_back(dout, W, precision=precision), dW, db  # dx = dout W


def steps(params: BlockParams, cache: BlockCache, dy: Array, *,
          precision=DEFAULT_PRECISION) -> tuple[dict, dict]:
  """The backward pass, step by step: ({step: what it is handed}, {step: what it returns})."""
  B, T, C = cache.x.shape
  given, got = {}, {}

  def run(name, handed, result):
    given[name], got[name] = handed, result
    return result

  dm = _rows(dy)
  dg, _, _ = run("fc_proj", dict(x=cache.g, W=params.W_fp, b=params.b_fp, dout=dm),
                 _dense_back(cache.g, params.W_fp, dm, precision))
  df = run("gelu", dict(z=cache.f, dout=dg),
           (_activations.vjp(GELU, cache.f, cache.g, dg),))[0]  # gelu's VJP: dg f'(f)
  dh2, _, _ = run("fc", dict(x=cache.h2, W=params.W_fc, b=params.b_fc, dout=df),
                  _dense_back(cache.h2, params.W_fc, df, precision))
  dh2 = dh2.reshape(B, T, C)
  dx2_ln, _, _ = run("ln2", dict(x=cache.x2, w=params.ln2_w, b=params.ln2_b, dout=dh2),
                     _layernorm.backward(cache.ln2, params.ln2_w, dh2))
  dx2 = dy + dx2_ln  # (BLK9): the second residual's skip path plus its branch
  dp = _rows(dx2)
  da, _, _ = run("attn_proj", dict(x=cache.a, W=params.W_proj, b=params.b_proj, dout=dp),
                 _dense_back(cache.a, params.W_proj, dp, precision))
  da = da.reshape(B, T, C)
  dqkv = run("attention", dict(qkv=cache.qkv, dout=da),
             (_attention.backward(cache.attn, da, precision=precision),))[0]
  dq = _rows(dqkv)
  dh1, _, _ = run("qkv", dict(x=cache.h1, W=params.W_qkv, b=params.b_qkv, dout=dq),
                  _dense_back(cache.h1, params.W_qkv, dq, precision))
  dh1 = dh1.reshape(B, T, C)
  run("ln1", dict(x=cache.x, w=params.ln1_w, b=params.ln1_b, dout=dh1),
      _layernorm.backward(cache.ln1, params.ln1_w, dh1))
  return given, got


def backward(params: BlockParams, cache: BlockCache, dy: Array, *,
             precision=DEFAULT_PRECISION) -> tuple[Array, BlockParams]:
  """(dx, dparams) from dy = dC/dy of x's shape."""
  _, got = steps(params, cache, dy, precision=precision)
  dx = dy + got["ln2"][0] + got["ln1"][0]  # (BLK10): dx2's skip path, then the first residual's
  grads = BlockParams(
      got["ln1"][1], got["ln1"][2], got["qkv"][1], got["qkv"][2], got["attn_proj"][1],
      got["attn_proj"][2], got["ln2"][1], got["ln2"][2], got["fc"][1], got["fc"][2],
      got["fc_proj"][1], got["fc_proj"][2])
  return dx, grads
