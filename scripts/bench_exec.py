"""Cases a second through the bpref-wire pipe, against a Python candidate called in process.

  python scripts/bench_exec.py [--cases 5000] [--command ./mlp]

Builds examples/c/mlp.c (gcc) unless --command names a client, makes ``--cases`` small
cases of the oracle's own kind (depth 1-3, widths 1-5, B 1-4, float64), and times

* ``exec``: ``ExecPool.map`` sending each case to the client and decoding its reply
  (encoding, the pipe both ways, the client's own arithmetic, decoding);
* ``in process``: ``isolation.call_direct`` on the same cases with a NumPy backprop,
  the path ``bpref.oracle.check`` takes by default.

Neither includes bpref's truth or the judging, which are the same for both. Prints
cases per second and microseconds per case for each, best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bpref.oracle import exec as ex  # noqa: E402
from bpref.oracle import isolation  # noqa: E402
from bpref.oracle import spec as _spec  # noqa: E402


def numpy_backprop(weights, biases, activations, loss, x, t):
  """Textbook NumPy backprop (squared error, mean), tanh/identity/relu/sigmoid."""
  f = {"identity": lambda z: z, "relu": lambda z: np.maximum(z, 0), "tanh": np.tanh,
       "sigmoid": lambda z: 1 / (1 + np.exp(-z))}
  df = {"identity": lambda z, a: np.ones_like(z), "relu": lambda z, a: (z > 0) * 1.0,
        "tanh": lambda z, a: 1 - a * a, "sigmoid": lambda z, a: a * (1 - a)}
  a, zs, acts = [x], [], []
  for W, b, name in zip(weights, biases, activations):
    zs.append(a[-1] @ W.T + b)
    a.append(f[name](zs[-1]))
  d = 2 * (a[-1] - t) / x.shape[0] * df[activations[-1]](zs[-1], a[-1])
  dW, db = [None] * len(weights), [None] * len(weights)
  for l in range(len(weights) - 1, -1, -1):
    dW[l], db[l] = d.T @ a[l], d.sum(axis=0)
    if l:
      d = (d @ weights[l]) * df[activations[l - 1]](zs[l - 1], a[l])
  return dW, db


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--cases", type=int, default=5000)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--command", help="a bpref-wire client (default: examples/c/mlp.c built with gcc -O2)")
  args = p.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    command = args.command
    if command is None:
      exe = os.path.join(tmp, "mlp")
      subprocess.run(["gcc", "-O2", "-o", exe, os.path.join(ROOT, "examples", "c", "mlp.c"), "-lm"],
                     check=True)
      command = shlex.quote(exe)
    spec = _spec.make_spec(activations=("identity", "relu", "tanh", "sigmoid"))
    archs = _spec.random_archs(spec, 200, seed=0)
    cases = [_spec.build_case(archs[i % len(archs)], spec) for i in range(args.cases)]
    sizes = [sum(W.size for W in c.weights) + c.x.size for c in cases]
    print(f"{args.cases} cases: depth 1-{spec.max_depth}, widths <= {spec.max_width}, "
          f"B <= {spec.max_batch}, float64; {np.mean(sizes):.0f} input numbers a case on average")
    calls = [isolation.NetworkCall(c, "out_in") for c in cases]
    with ex.ExecPool(command, timeout=10.0) as pool:
      pool.start(0)
      best = float("inf")
      for _ in range(args.repeats):
        start = time.perf_counter()
        outcomes = pool.map(calls)
        best = min(best, time.perf_counter() - start)
      bad = [o for o in outcomes if o.status != "ok"]
      if bad:
        print(f"the client failed {len(bad)} cases: {bad[0].error}")
        return 1
    print(f"exec ({command}): {args.cases / best:8.0f} cases/s, {1e6 * best / args.cases:7.1f} us a case")
    inputs = [isolation.candidate_inputs(c, "out_in") for c in cases]
    best_py = float("inf")
    for _ in range(args.repeats):
      start = time.perf_counter()
      for inp in inputs:
        isolation.call_direct(numpy_backprop, inp)
      best_py = min(best_py, time.perf_counter() - start)
    print(f"in process (NumPy backprop, call_direct): {args.cases / best_py:8.0f} cases/s, "
          f"{1e6 * best_py / args.cases:7.1f} us a case")
  return 0


if __name__ == "__main__":
  sys.exit(main())
