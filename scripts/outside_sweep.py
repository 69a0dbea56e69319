#!/usr/bin/env python
"""The oracle's first law, measured at seeds the suite does not run: right candidates written by
others pass, planted bugs fail with their name.

The candidates are the test suite's own tables (tests/test_ops_*.py, tests/test_ops.py,
tests/test_oracle_outside.py), so a candidate added there is swept here too:

* ``--what right``: each layer kind's right candidates (PyTorch autograd, PyTorch functions,
  course-style NumPy, llm.c's loops) at every window, geometry, layout and activation the tables
  name; the classic kinds' correct layer functions; PyTorch autograd of every activation; and
  whole networks: a PyTorch MLP of every activation with each loss and reduction, and
  scikit-learn's MLP derivatives. Each must PASS without a convention note where none is due.
* ``--what bugs``: each planted bug of the layer kinds (their ``BUGS`` tables) and of the
  classic kinds (``MUTANTS``): each must FAIL, its first finding the bug's code (a classic
  mutant: one of the codes its table names).

Usage (each line a JSON record with ``--jsonl``; a summary and every miss on stdout):

    python scripts/outside_sweep.py --what right --seeds 100:120 --examples 60
    python scripts/outside_sweep.py --what bugs --seeds 1:11 --only layernorm,conv2d

Needs the ``test`` extra; the jobs of PyTorch (the ``bridges`` extra) and of scikit-learn (the
``train`` extra) run where those are installed and are counted as skipped elsewhere.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def _layer_right():
  import test_ops_attention as A
  import test_ops_batchnorm as BN
  import test_ops_conv as C
  import test_ops_embedding as E
  import test_ops_layernorm as LN
  import test_ops_pool as P
  import test_ops_residual as R

  from bpref.oracle.ops import check_op
  from bpref.oracle.ops.pool import pool_stride

  windows = ("p2s2", "p2s1", "p3s2", "p3s3", "p3s1")
  jobs = []
  for way in ("llmc_loops", "course", "torch_sdpa"):
    for layout in ("llmc", "torch"):
      jobs.append((f"attention/{way}/{layout}", lambda way=way, layout=layout, **o: A._check(
          way, layout, **o)))
  for way in ("torch_autograd", "staged", "one_pass"):
    for layout in ("nd", "nchw"):
      jobs.append((f"batchnorm/{way}/{layout}", lambda way=way, layout=layout, **o: check_op(
          "batchnorm", BN.RIGHT[way](), layout=layout, **o)))
  for way in ("torch_autograd", "im2col", "naive"):
    for name in ("s1p0", "s1p1", "s2p0", "s2p1", "s2p2", "s3p1"):
      jobs.append((f"conv2d/{way}/{name}", lambda way=way, name=name, **o: C._check(way, name, **o)))
  for way in ("torch_autograd", "add_at", "loops"):
    jobs.append((f"embedding/{way}", lambda way=way, **o: check_op("embedding", E.RIGHT[way](), **o)))
  for way in ("torch_autograd", "course", "one_pass", "llmc"):
    jobs.append((f"layernorm/{way}", lambda way=way, **o: check_op("layernorm", LN.RIGHT[way](), **o)))
  for way in ("torch_autograd", "torch_function", "vectorised", "naive_loops"):
    for name in windows:
      jobs.append((f"maxpool2d/{way}/{name}", lambda way=way, name=name, **o: check_op(
          "maxpool2d", P.RIGHT_POOL[way](*pool_stride(name)), name, **o)))
  for way in P.RIGHT_AVG:
    for name in windows:
      jobs.append((f"avgpool2d/{way}/{name}", lambda way=way, name=name, **o: check_op(
          "avgpool2d", P.RIGHT_AVG[way](*pool_stride(name)), name, **o)))
  for way in ("torch_autograd", "numpy"):
    for name in ("p0.1", "p0.5", "p0.9"):
      jobs.append((f"dropout/{way}/{name}", lambda way=way, name=name, **o: check_op(
          "dropout", P.RIGHT_DROPOUT[way](float(name[1:])), name, **o)))
  for way in ("torch_autograd", "course"):
    for act in sorted(R.ACTIVATIONS):
      jobs.append((f"residual/{way}/{act}", lambda way=way, act=act, **o: check_op(
          "residual", R.RIGHT[way](act), name=act, **o)))
  return jobs


def _classic_right():
  import test_ops as T

  from bpref.oracle.ops import check_op

  jobs = [(f"classic/{label}", lambda kind=kind, name=name, options=options, fn=fn, **o: check_op(
      kind, fn, name=name, **options, **o)) for label, (kind, name, options, fn) in T.CORRECT.items()]
  if not _available("torch"):
    return jobs
  import test_ops_outside as OPO  # its module needs torch

  for name, f in OPO.TORCH_ACTIVATIONS.items():
    jobs.append((f"activation/torch/{name}", lambda f=f, name=name, **o: check_op(
        "activation", OPO._torch_autograd(f), name=name, **o)))
  return jobs


def _torch_network(reduction):
  """A PyTorch MLP's gradient by autograd: every activation and loss bpref names."""
  import torch
  import torch.nn.functional as F

  act = {"identity": lambda z: z, "relu": torch.relu, "leaky_relu": F.leaky_relu, "elu": F.elu,
         "selu": torch.selu, "gelu": F.gelu, "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"),
         "silu": F.silu, "mish": F.mish, "softplus": F.softplus, "sigmoid": torch.sigmoid,
         "tanh": torch.tanh, "softsign": F.softsign, "sin": torch.sin,
         "softmax": lambda z: torch.softmax(z, dim=1)}
  loss = {"squared_error": lambda y, t: ((y - t) ** 2).sum(1),
          "half_squared_error": lambda y, t: 0.5 * ((y - t) ** 2).sum(1),
          "softmax_cross_entropy": lambda y, t: -(t * torch.log_softmax(y, dim=1)).sum(1),
          "sigmoid_binary_cross_entropy": lambda y, t: F.binary_cross_entropy_with_logits(
              y, t, reduction="none").sum(1),
          "binary_cross_entropy": lambda y, t: F.binary_cross_entropy(y, t, reduction="none").sum(1),
          "cross_entropy": lambda y, t: -(t * torch.log(y)).sum(1),
          "huber": lambda y, t: F.huber_loss(y, t, reduction="none", delta=1.0).sum(1)}

  def grads(weights, biases, activations, name, x, t):
    Ws = [torch.tensor(W, requires_grad=True) for W in weights]
    bs = [torch.tensor(b, requires_grad=True) for b in biases]
    a = torch.tensor(x)
    for W, b, f in zip(Ws, bs, activations):
      a = act[f](a @ W.T + b)
    per = loss[name](a, torch.tensor(t))
    (per.mean() if reduction == "mean" else per.sum()).backward()
    return [W.grad.numpy() for W in Ws], [b.grad.numpy() for b in bs]

  return grads, tuple(k for k in act if k != "softmax"), tuple(loss)


def _network_right():
  import bpref.oracle

  jobs = []
  for reduction in ("mean", "sum"):
    def check(loss, reduction=reduction, examples=40, **o):
      grads, hidden, _ = _torch_network(reduction)
      return bpref.oracle.check(grads, activations=hidden, losses=(loss,), reduction=reduction,
                                examples=3 * examples, **o)
    for loss in ("squared_error", "half_squared_error", "softmax_cross_entropy",
                 "sigmoid_binary_cross_entropy", "binary_cross_entropy", "cross_entropy", "huber"):
      jobs.append((f"network/torch/{loss}/{reduction}", lambda loss=loss, check=check, **o: check(
          loss, **o)))

  def sklearn(examples=40, **o):
    import test_oracle_outside as OO
    return bpref.oracle.check(OO.sklearn_mlp, activations=OO.HIDDEN, losses=("half_squared_error",),
                              examples=3 * examples, **o)
  jobs.append(("network/sklearn", sklearn))
  return jobs


def _bugs():
  import test_ops as T
  import test_ops_attention as A
  import test_ops_batchnorm as BN
  import test_ops_conv as C
  import test_ops_embedding as E
  import test_ops_layernorm as LN
  import test_ops_pool as P
  import test_ops_residual as R

  from bpref.oracle.ops import check_op

  jobs = []  # (label, the codes that name it, check)
  for bug in A.BUGS:
    jobs.append((f"attention/{bug}", {bug}, lambda bug=bug, **o: check_op(
        "attention", lambda qkv, dout, heads: A.course(qkv, dout, heads, mistake=bug), **o)))
  for bug, (cand, layout) in BN.BUGS.items():
    jobs.append((f"batchnorm/{bug}", {bug}, lambda cand=cand, layout=layout, **o: check_op(
        "batchnorm", cand, layout=layout, **o)))
  for bug, (fn, name) in C.BUGS.items():
    s, p = C.geometry(name)
    jobs.append((f"conv2d/{bug}", {bug}, lambda fn=fn, name=name, s=s, p=p, **o: check_op(
        "conv2d", lambda x, w, b, dout: fn(x, w, b, dout, s, p), name=name, **o)))
  for bug, cand in E.BUGS.items():
    jobs.append((f"embedding/{bug}", {bug.split("/")[0]}, lambda cand=cand, **o: check_op(
        "embedding", cand, **o)))
  for bug, cand in LN.BUGS.items():
    jobs.append((f"layernorm/{bug}", {bug}, lambda cand=cand, **o: check_op("layernorm", cand, **o)))
  for bug, (name, make) in P.POOL_BUGS.items():
    jobs.append((f"maxpool2d/{bug}", {bug}, lambda name=name, make=make, **o: check_op(
        "maxpool2d", make(), name, **o)))
  for bug, (name, make) in P.AVG_BUGS.items():
    jobs.append((f"avgpool2d/{bug}", {bug}, lambda name=name, make=make, **o: check_op(
        "avgpool2d", make(), name, **o)))
  for bug, make in P.DROPOUT_BUGS.items():
    jobs.append((f"dropout/{bug}", {bug}, lambda make=make, **o: check_op(
        "dropout", make(0.5), "p0.5", **o)))
  for bug in R.BUGS:
    for act in ("relu", "tanh"):
      jobs.append((f"residual/{bug}/{act}", {bug.split("/")[0]}, lambda bug=bug, act=act, **o: check_op(
          "residual", R.course(act, bug), name=act, **o)))
  for label, (kind, name, options, fn, codes) in T.MUTANTS.items():
    jobs.append((f"classic/{label}", set(codes or ()), lambda kind=kind, name=name, options=options,
                 fn=fn, **o: check_op(kind, fn, name=name, **options, **o)))
  return jobs


def _available(module: str) -> bool:
  return importlib.util.find_spec(module) is not None


def _needs(label: str) -> str:
  """The framework a job's candidate needs ("" for none): its way, the label's second part."""
  way = label.split("/")[1] if "/" in label else ""
  return "torch" if way.startswith("torch") else "sklearn" if way == "sklearn" else ""


def run(what, seeds, examples, dtypes=("float32", "float64"), only=(), out=None) -> dict:
  """Every job of ``what`` at every seed and dtype; {"checks", "misses", "skipped", "cases"}."""
  import jax
  jax.config.update("jax_enable_x64", True)
  jax.config.update("jax_numpy_dtype_promotion", "standard")  # outside code, written as the world writes it

  if what == "right":
    jobs = [(label, None, check) for label, check in _layer_right() + _classic_right() + _network_right()]
  else:
    jobs = _bugs()
  if only:
    jobs = [j for j in jobs if j[0].split("/")[0] in only]
  counts = collections.Counter()
  missing = [j for j in jobs if _needs(j[0]) and not _available(_needs(j[0]))]
  if missing:
    counts["skipped"] = len(missing) * len(seeds) * len(dtypes)
    print(f"skipped, their framework not installed: {', '.join(j[0] for j in missing)}", flush=True)
    jobs = [j for j in jobs if j not in missing]
  misses = []
  for seed in seeds:
    for dtype in dtypes:
      for label, codes, check in jobs:
        start = time.perf_counter()
        report = check(dtype=dtype, seed=seed, examples=examples)
        if codes is None:
          ok = report.verdict == "pass"
        else:
          first = report.diagnosis[0].code if report.diagnosis else ""
          ok = report.verdict == "fail" and (first in codes if codes else True)
        counts["checks"] += 1
        counts["cases"] += report.cases
        record = dict(label=label, dtype=dtype, seed=seed, verdict=report.verdict, ok=ok,
                      codes=[f.code for f in report.diagnosis], cases=report.cases,
                      seconds=round(time.perf_counter() - start, 2))
        if out is not None:
          out.write(json.dumps(record) + "\n")
          out.flush()
        if not ok:
          misses.append(record)
          print(f"MISS {label} {dtype} seed {seed}:\n{report.text()}\n", flush=True)
  return dict(counts, misses=len(misses))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--what", choices=("right", "bugs"), required=True)
  parser.add_argument("--seeds", default="100:101", help="A:B, the seeds A to B - 1")
  parser.add_argument("--examples", type=int, default=20, help="random cases per op check "
                      "(three times as many for a whole network)")
  parser.add_argument("--dtypes", default="float32,float64")
  parser.add_argument("--only", default="", help="kinds (label prefixes), comma separated")
  parser.add_argument("--jsonl", default=None, help="a file to append each check's record to")
  args = parser.parse_args(argv)
  a, b = (int(v) for v in args.seeds.split(":"))
  only = tuple(k for k in args.only.split(",") if k)
  out = open(args.jsonl, "a") if args.jsonl else None
  start = time.perf_counter()
  summary = run(args.what, range(a, b), args.examples, tuple(args.dtypes.split(",")), only, out)
  print(json.dumps(dict(summary, what=args.what, seeds=args.seeds,
                        seconds=round(time.perf_counter() - start, 1))))
  return 1 if summary["misses"] else 0


if __name__ == "__main__":
  sys.exit(main())
