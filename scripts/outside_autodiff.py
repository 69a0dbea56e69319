#!/usr/bin/env python
"""The oracle's first law on two autodiff libraries bpref's tests do not use: tinygrad and mygrad.

Each candidate is the library's own backward pass: the forward written with the library's
functions (tinygrad's ``layernorm``, ``conv2d``, ``max_pool2d``, ``scaled_dot_product_attention``,
``sparse_categorical_crossentropy``, ...; mygrad's ``conv_nd``, ``max_pool``, ``batchnorm``,
``softmax_crossentropy``, ...), the gradients from the library's autodiff. Every op kind of
``check_op`` that the library has, each activation as an op and as a layer, and whole networks
through ``bpref.oracle.check``, in float64 and float32.

A check that ``KNOWN`` lists fails with the finding listed there: a defect of the library that
the oracle names (tinygrad's elu'(0) = 0, mygrad's leaky_relu'(0) = 0, ...); every other check
passes. Anything else is printed as unexpected and the script exits 1: a false alarm of
bpref's, a defect it missed or misnamed, or a new defect to read. ``tests/test_outside_autodiff.py``
runs mygrad's checks at seed 0 in CI's deep tier (the ``outside`` extra).

    pip install tinygrad mygrad     # tinygrad's CPU device needs clang (apt install clang)
    python scripts/outside_autodiff.py [--only tg/layernorm,mg/] [--seeds 0:1] [--jsonl F]

tinygrad compiles a kernel for each new shape, so a full run takes about 25 minutes on 2 cores
(mygrad's part, a few seconds). Each line of ``--jsonl`` is one check's record.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import bpref.oracle  # noqa: E402
from bpref.oracle.ops import check_op  # noqa: E402

KNOWN = {
    # label prefix: {dtype or "*": the first finding's codes it may end in}
    "tg/activation/elu": {"float64": {"kink_value"}, "float32": {"kink_value", "exp_overflow"}},
    "tg/layer/elu": {"float64": {"kink_value"}, "float32": {"kink_value", "exp_overflow"}},
    "tg/activation/selu": {"*": {"activation_derivative", "exp_overflow"}},
    "tg/layer/selu": {"*": {"activation_derivative", "exp_overflow"}},
    "tg/activation/sin": {"float64": {"lower_precision"}},
    "tg/layer/sin": {"float64": {"lower_precision"}},
    "mg/activation/leaky_relu": {"*": {"kink_value"}},
    "mg/layer/leaky_relu": {"*": {"kink_value"}},
    "mg/conv2d/s2": {"*": {"shape_limit"}},
    "mg/maxpool2d/p2s2": {"*": {"shape_limit"}},
    "mg/maxpool2d/p3s2": {"*": {"shape_limit"}},
}
"""What each library gets wrong, as the oracle names it:

* tinygrad: elu(z) = relu(z) - relu(1 - e^z) gives elu'(0) = 0, where elu is C^1 with
  elu'(0) = 1; elu and selu take e^z of every z, so float32 gradients are NaN from z = 88.7
  on; selu's constants are rounded (1.0507, 1.67326); float64 cos is 4e-8 off at z = 54.6
  (sin' there), as float32 arithmetic would be.
* mygrad: leaky_relu'(0) = 0 (the gradient of a maximum at a tie goes to neither side);
  conv_nd and max_pool raise where the windows do not tile the input.

The whole networks leave those activations out, so that each library's networks must pass."""


def _tinygrad():
  from tinygrad import Tensor

  def T(a):
    return Tensor(np.ascontiguousarray(a))

  def grads(out, wrt, dout):
    return tuple(g.numpy() for g in out.gradient(*wrt, gradient=T(dout)))

  act = {"relu": lambda z: z.relu(), "leaky_relu": lambda z: z.leaky_relu(0.01),
         "elu": lambda z: z.elu(), "selu": lambda z: z.selu(), "gelu_tanh": lambda z: z.gelu(),
         "silu": lambda z: z.silu(), "mish": lambda z: z.mish(), "softplus": lambda z: z.softplus(),
         "sigmoid": lambda z: z.sigmoid(), "tanh": lambda z: z.tanh(),
         "softsign": lambda z: z.softsign(), "sin": lambda z: z.sin(), "identity": lambda z: z}

  def activation(name):
    return lambda z, dout: grads(act[name](Z := T(z)), [Z], dout)[0]

  def layer(name):
    def backward(x, W, b, dout):
      X, Wt, B = T(x), T(W), T(b)
      return grads(act[name](X.linear(Wt.T, B)), [X, Wt, B], dout)
    return backward

  def dense(x, W, b, dout):
    X, Wt, B = T(x), T(W), T(b)
    return grads(X.linear(Wt.T, B), [X, Wt, B], dout)

  def softmax(z, dout):
    return grads((Z := T(z)).softmax(-1), [Z], dout)[0]

  def sce_labels(y, t):
    Y = T(y)
    return Y.sparse_categorical_crossentropy(Tensor(t.astype(np.int32))).gradient(Y)[0].numpy()

  def layernorm(x, w, b, dout, eps=1e-5):
    X, W, B = T(x), T(w), T(b)
    return grads(X.layernorm(axis=-1, eps=eps) * W + B, [X, W, B], dout)

  def batchnorm(x, gamma, beta, dout, eps=1e-5):
    X, G, B = T(x), T(gamma), T(beta)
    axes, shape = ((0,), (1, -1)) if x.ndim == 2 else ((0, 2, 3), (1, -1, 1, 1))
    mean = X.mean(axis=axes)
    var = ((X - mean.reshape(shape)) ** 2).mean(axis=axes)
    return grads(X.batchnorm(G, B, mean, (var + eps).rsqrt()), [X, G, B], dout)

  def conv(stride, pad):
    def backward(x, w, b, dout):
      X, W, B = T(x), T(w), T(b)
      return grads(X.conv2d(W, B, stride=stride, padding=pad), [X, W, B], dout)
    return backward

  def pool(how, k, s):
    return lambda x, dout: grads(getattr(X := T(x), how)(kernel_size=(k, k), stride=s), [X],
                                 dout)[0]

  def attention(q, k, v, dout):
    Q, K, V = T(q), T(k), T(v)
    return grads(Q.scaled_dot_product_attention(K, V, is_causal=True), [Q, K, V], dout)

  def embedding(ids, wte, wpe, dout):
    WTE, WPE = T(wte), T(wpe)
    return grads(WTE[Tensor(ids.astype(np.int32))] + WPE[:ids.shape[1]], [WTE, WPE], dout)

  def network(weights, biases, activations, loss, x, t):
    Ws, Bs = [T(W) for W in weights], [T(b) for b in biases]
    a = T(x)
    for W, B, name in zip(Ws, Bs, activations):
      z = a.linear(W.T, B)
      a = z.softmax(-1) if name == "softmax" else act[name](z)
    tt = T(t)
    C = {"squared_error": lambda: ((tt - a) ** 2).sum(-1).mean(),
         "half_squared_error": lambda: (0.5 * ((tt - a) ** 2).sum(-1)).mean(),
         "softmax_cross_entropy": lambda: -(tt * a.log_softmax(-1)).sum(-1).mean()}[loss]()
    g = C.gradient(*Ws, *Bs)
    return [v.numpy() for v in g[:len(Ws)]], [v.numpy() for v in g[len(Ws):]]

  return dict(act=act, activation=activation, layer=layer, dense=dense, softmax=softmax,
              sce_labels=sce_labels, layernorm=layernorm, batchnorm=batchnorm, conv=conv,
              maxpool=lambda k, s: pool("max_pool2d", k, s),
              avgpool=lambda k, s: pool("avg_pool2d", k, s), attention=attention,
              embedding=embedding, network=network,
              network_activations=("relu", "tanh", "sigmoid", "gelu_tanh", "silu", "softplus",
                                   "leaky_relu", "mish", "softsign"))


def _mygrad():
  import mygrad as mg
  import mygrad.nnet as nn

  act = {"relu": nn.relu, "leaky_relu": lambda z: nn.leaky_relu(z, 0.01),
         "elu": lambda z: nn.elu(z, 1.0), "selu": nn.selu, "sigmoid": nn.sigmoid, "tanh": nn.tanh,
         "softsign": nn.soft_sign, "identity": lambda z: z}

  def grads(out, dout, *wrt):
    out.backward(dout)
    return tuple(np.asarray(t.grad, dout.dtype) for t in wrt)

  def activation(name):
    return lambda z, dout: grads(act[name](Z := mg.tensor(z)), dout, Z)[0]

  def layer(name):
    def backward(x, W, b, dout):
      X, Wt, B = mg.tensor(x), mg.tensor(W), mg.tensor(b)
      return grads(act[name](mg.matmul(X, Wt.T) + B), dout, X, Wt, B)
    return backward

  def dense(x, W, b, dout):
    X, Wt, B = mg.tensor(x), mg.tensor(W), mg.tensor(b)
    return grads(mg.matmul(X, Wt.T) + B, dout, X, Wt, B)

  def softmax(z, dout):
    return grads(nn.softmax(Z := mg.tensor(z), axis=-1), dout, Z)[0]

  def sce_labels(y, t):
    Y = mg.tensor(y)
    nn.softmax_crossentropy(Y, t).backward()
    return np.asarray(Y.grad, y.dtype)

  def layernorm(x, w, b, dout, eps=1e-5):  # mygrad has none: its mean, var and sqrt
    X, W, B = mg.tensor(x), mg.tensor(w), mg.tensor(b)
    mu, var = mg.mean(X, axis=-1, keepdims=True), mg.var(X, axis=-1, keepdims=True)
    return grads((X - mu) / mg.sqrt(var + eps) * W + B, dout, X, W, B)

  def batchnorm(x, gamma, beta, dout, eps=1e-5):
    X, G, B = mg.tensor(x), mg.tensor(gamma), mg.tensor(beta)
    return grads(nn.batchnorm(X, gamma=G, beta=B, eps=eps), dout, X, G, B)

  def conv(stride, pad):
    def backward(x, w, b, dout):
      X, W, B = mg.tensor(x), mg.tensor(w), mg.tensor(b)
      return grads(nn.conv_nd(X, W, stride=stride, padding=pad) + B.reshape(1, -1, 1, 1), dout,
                   X, W, B)
    return backward

  def maxpool(k, s):
    return lambda x, dout: grads(nn.max_pool(X := mg.tensor(x), (k, k), s), dout, X)[0]

  def attention(q, k, v, dout):  # its matmul, softmax and a causal mask of -inf
    Q, K, V = mg.tensor(q), mg.tensor(k), mg.tensor(v)
    T = q.shape[-2]
    s = mg.matmul(Q, mg.swapaxes(K, -1, -2)) / np.sqrt(q.shape[-1])
    p = nn.softmax(s + np.triu(np.full((T, T), -np.inf, q.dtype), 1), axis=-1)
    return grads(mg.matmul(p, V), dout, Q, K, V)

  def embedding(ids, wte, wpe, dout):
    WTE, WPE = mg.tensor(wte), mg.tensor(wpe)
    return grads(WTE[ids] + WPE[:ids.shape[1]], dout, WTE, WPE)

  def network(weights, biases, activations, loss, x, t):
    Ws, Bs = [mg.tensor(W) for W in weights], [mg.tensor(b) for b in biases]
    a = mg.tensor(x)
    for W, B, name in zip(Ws, Bs, activations):
      z = mg.matmul(a, W.T) + B
      a = nn.softmax(z, axis=-1) if name == "softmax" else act[name](z)
    C = {"squared_error": lambda: mg.mean(mg.sum((t - a) ** 2, axis=-1)),
         "half_squared_error": lambda: mg.mean(0.5 * mg.sum((t - a) ** 2, axis=-1)),
         "softmax_cross_entropy": lambda: -mg.mean(mg.sum(t * nn.logsoftmax(a, axis=-1),
                                                          axis=-1))}[loss]()
    C.backward()
    return [np.asarray(W.grad, x.dtype) for W in Ws], [np.asarray(B.grad, x.dtype) for B in Bs]

  return dict(act=act, activation=activation, layer=layer, dense=dense, softmax=softmax,
              sce_labels=sce_labels, layernorm=layernorm, batchnorm=batchnorm, conv=conv,
              maxpool=maxpool, attention=attention, embedding=embedding, network=network,
              network_activations=("relu", "tanh", "sigmoid", "elu", "selu", "softsign"))


def jobs(lib: str, c: dict) -> list:
  """(label, run(dtype, seed) -> report) for every check of library ``lib``'s candidates."""
  out = []
  for name in c["act"]:
    out.append((f"{lib}/activation/{name}", lambda name=name, **o: check_op(
        "activation", c["activation"](name), name, **o)))
    if name != "identity":
      out.append((f"{lib}/layer/{name}", lambda name=name, **o: check_op(
          "layer", c["layer"](name), name, **o)))
  out += [(f"{lib}/softmax", lambda **o: check_op("softmax", c["softmax"], **o)),
          (f"{lib}/dense", lambda **o: check_op("dense", c["dense"], **o)),
          (f"{lib}/loss/softmax_cross_entropy", lambda **o: check_op(
              "loss", c["sce_labels"], "softmax_cross_entropy", targets="labels", **o))]
  out += [(f"{lib}/layernorm/{layout}", lambda layout=layout, **o: check_op(
      "layernorm", c["layernorm"], layout=layout, **o)) for layout in ("btc", "nc")]
  out += [(f"{lib}/batchnorm/{layout}", lambda layout=layout, **o: check_op(
      "batchnorm", c["batchnorm"], layout=layout, **o)) for layout in ("nd", "nchw")]
  out += [(f"{lib}/conv2d/s{s}p{p}", lambda s=s, p=p, **o: check_op(
      "conv2d", c["conv"](s, p), f"s{s}p{p}", **o)) for s, p in ((1, 0), (1, 1), (2, 1), (2, 0))]
  for kind, key in (("maxpool2d", "maxpool"), ("avgpool2d", "avgpool")):
    if key in c:
      out += [(f"{lib}/{kind}/p{k}s{s}", lambda kind=kind, key=key, k=k, s=s, **o: check_op(
          kind, c[key](k, s), f"p{k}s{s}", **o)) for k, s in ((2, 2), (3, 2), (2, 1))]
  out += [(f"{lib}/attention/torch", lambda **o: check_op("attention", c["attention"],
                                                          layout="torch", **o)),
          (f"{lib}/embedding", lambda **o: check_op("embedding", c["embedding"], **o))]
  out += [(f"{lib}/network/{loss}", lambda loss=loss, **o: bpref.oracle.check(
      c["network"], activations=c["network_activations"], losses=(loss,), **o))
      for loss in ("half_squared_error", "squared_error", "softmax_cross_entropy")]
  return out


def known(label: str, dtype: str) -> set:
  """The first findings a check may end in (``KNOWN``); empty where the check must pass."""
  for prefix, codes in KNOWN.items():
    if label.startswith(prefix):
      return codes.get(dtype, codes.get("*", set()))
  return set()


def expected(label: str, dtype: str, report) -> bool:
  """A pass where ``KNOWN`` lists nothing, else a failure whose first finding it lists."""
  allowed = known(label, dtype)
  if not allowed:
    return report.verdict == "pass"
  return report.verdict == "fail" and bool(report.codes) and report.codes[0] in allowed


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", default="", help="label prefixes, comma separated (tg/, mg/layer)")
  parser.add_argument("--seeds", default="0:1", help="A:B, the seeds A to B - 1")
  parser.add_argument("--dtypes", default="float64,float32")
  parser.add_argument("--jsonl", default=None, help="a file to append each check's record to")
  args = parser.parse_args(argv)
  os.environ.setdefault("DEV", "CPU")  # tinygrad's device: clang-compiled kernels
  import jax
  jax.config.update("jax_enable_x64", True)
  only = tuple(p for p in args.only.split(",") if p)
  a, b = (int(v) for v in args.seeds.split(":"))
  out = open(args.jsonl, "a") if args.jsonl else None
  libraries = {"tg": _tinygrad, "mg": _mygrad}
  counts = {"checks": 0, "passed": 0, "known": 0, "unexpected": 0}
  start = time.perf_counter()
  for lib, load in libraries.items():
    if only and not any(p.split("/")[0] == lib for p in only):
      continue
    for label, run in jobs(lib, load()):
      if only and not any(label.startswith(p) for p in only):
        continue
      for seed in range(a, b):
        for dtype in args.dtypes.split(","):
          t0 = time.perf_counter()
          report = run(dtype=dtype, seed=seed)
          ok = expected(label, dtype, report)
          counts["checks"] += 1
          counts["unexpected" if not ok else "passed" if report.verdict == "pass" else "known"] += 1
          record = {"label": label, "dtype": dtype, "seed": seed, "verdict": report.verdict,
                    "codes": report.codes, "cases": report.cases, "expected": ok,
                    "seconds": round(time.perf_counter() - t0, 1)}
          if out:
            out.write(json.dumps(record) + "\n")
            out.flush()
          if not ok:
            print(f"UNEXPECTED {label} {dtype} seed {seed}:\n{report.text()}\n", flush=True)
  print(json.dumps(dict(counts, seeds=args.seeds, seconds=round(time.perf_counter() - start, 1))))
  return 1 if counts["unexpected"] else 0


if __name__ == "__main__":
  sys.exit(main())
