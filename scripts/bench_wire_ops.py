"""Op cases a second over bpref-wire version 2, beside the same op's check in process.

  python scripts/bench_wire_ops.py [--calls 2000] [--command ./layers]

Builds examples/c/layers.c (cc -O2) unless --command names a client, and for dense,
layernorm, attention (llm.c's layout) and embedding (float64, the default search: probes + 40
random cases) times

* ``check``: a whole default ``check_op`` of the C client (``exec_command``) and of a NumPy
  backward called in process, each after one warm-up check (so that bpref's own programs are
  compiled): cases checked a second, with bpref's truth and judging in both (the process's
  start and hello included over the wire);
* ``calls``: ``--calls`` backward calls on the search's cases, one call at a time as the
  engine makes them: through ``OpWirePool.map`` (encoding, the pipe both ways, the client's
  arithmetic, decoding), and through the in-process call the check makes (a thread, the
  output captured), without bpref's truth or judging.

Prints cases (calls) a second and the time of each, best and median of ``--repeats``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

from bpref.oracle import isolation  # noqa: E402
from bpref.oracle.ops import _search, check_op, kinds, wire_ops  # noqa: E402


def dense_backward(x, W, b, dout):
  """(dx, dW, db) = (dout W, dout^T x, sum_rows dout)."""
  return dout @ W, dout.T @ x, dout.sum(axis=0)


def layernorm_backward(x, w, b, dout, eps=1e-5):
  """dx = rstd (g - mean(g) - xhat mean(g xhat)) with g = dout w; dw, db summed over the rows."""
  xc = x - x.mean(-1, keepdims=True)
  rstd = 1 / np.sqrt((xc * xc).mean(-1, keepdims=True) + eps)
  xhat, g = xc * rstd, dout * w
  C = x.shape[-1]
  dx = rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
  return dx, (dout * xhat).reshape(-1, C).sum(0), dout.reshape(-1, C).sum(0)


def attention_backward(qkv, dout, heads, scale=True):
  """llm.c's layout: qkv (B, T, 3C), dout (B, T, C); per head S = q k^T / sqrt(hs), causal.
  ``scale=False`` leaves 1/sqrt(hs) out of dq and dk (layers.c's BUG_ATTENTION_SCALE)."""
  B, T, C3 = qkv.shape
  hs = C3 // (3 * heads)
  q, k, v = (np.swapaxes(part, 1, 2) for part in np.split(qkv.reshape(B, T, 3 * heads, hs), 3, axis=2))
  dO = np.swapaxes(dout.reshape(B, T, heads, hs), 1, 2)
  causal = np.tril(np.ones((T, T), dtype=bool))
  S = np.where(causal, q @ np.swapaxes(k, -1, -2) / np.sqrt(hs), -np.inf)
  P = np.exp(S - S.max(-1, keepdims=True))
  P /= P.sum(-1, keepdims=True)
  dP = dO @ np.swapaxes(v, -1, -2)
  dS = P * (dP - (dP * P).sum(-1, keepdims=True)) / (np.sqrt(hs) if scale else 1.0)
  grads = (dS @ k, np.swapaxes(dS, -1, -2) @ q, np.swapaxes(P, -1, -2) @ dO)
  return np.concatenate([np.swapaxes(g, 1, 2).reshape(B, T, C3 // 3) for g in grads], axis=-1)


def embedding_backward(ids, wte, wpe, dout):
  """out[b, t] = wte[ids[b, t]] + wpe[t]: dwte accumulated over repeated tokens, dwpe over B."""
  dwte, dwpe = np.zeros_like(wte), np.zeros_like(wpe)
  np.add.at(dwte, ids, dout)
  dwpe[:ids.shape[1]] = dout.sum(0)
  return dwte, dwpe


NUMPY = {"dense": dense_backward, "layernorm": layernorm_backward,
         "attention": attention_backward, "embedding": embedding_backward}


def _timed(run, repeats: int) -> tuple:
  """(best, median) seconds of ``repeats`` runs: on a machine shared with other jobs the best
  is the cost, the median what a run meets."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return min(times), float(np.median(times))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--calls", type=int, default=2000)
  p.add_argument("--repeats", type=int, default=9)
  p.add_argument("--command", help="a bpref-wire version-2 client declaring the four ops "
                                   "(default: examples/c/layers.c built with cc -O2)")
  args = p.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    command = args.command
    if command is None:
      exe = os.path.join(tmp, "layers")
      compiler = shutil.which("cc") or shutil.which("gcc")
      subprocess.run([compiler, "-O2", "-o", exe, os.path.join(ROOT, "examples", "c", "layers.c"),
                      "-lm"], check=True)
      command = shlex.quote(exe)
    for kind, fn in NUMPY.items():
      check_op(kind, exec_command=command)  # warm-up: bpref's programs compiled
      check_op(kind, fn)
      reports = {"over the wire": [check_op(kind, exec_command=command)
                                   for _ in range(args.repeats)],
                 "in process": [check_op(kind, fn) for _ in range(args.repeats)]}
      first = reports["over the wire"][0]
      assert all(r.verdict == "pass" for rs in reports.values() for r in rs), first.text()
      print(f"{kind}: a default check ({first.cases} cases, {first.calls} calls), best (median) "
            f"of {args.repeats}")
      for what, rs in reports.items():
        best = min(r.seconds for r in rs)
        median = float(np.median([r.seconds for r in rs]))
        print(f"  check {what:14} {first.cases / best:8.0f} ({first.cases / median:5.0f}) cases/s  "
              f"{best * 1e3:7.1f} ({median * 1e3:6.1f}) ms a check")
      spec = kinds.make_spec(kind)
      record = kinds.of(spec)
      labels = _search.probes(spec) + _search.random_labels(spec)
      calls = [record.args(spec, record.case(spec, label)) for label in labels]
      calls = [calls[i % len(calls)] for i in range(args.calls)]
      with wire_ops.OpWirePool(command, kind) as pool:
        pool.start()

        def wire_calls():
          for a in calls:
            assert pool.map([("backward", a)])[0].status == "ok"

        t_wire = _timed(wire_calls, args.repeats)
      here = isolation.InProcess(types.SimpleNamespace(backward=fn), 60.0)

      def python_calls():
        for a in calls:
          assert here.map([("backward", a)])[0].status == "ok"

      t_py = _timed(python_calls, args.repeats)
      for what, (best, median) in (("over the wire", t_wire), ("in process", t_py)):
        print(f"  calls {what:14} {args.calls / best:8.0f} ({args.calls / median:5.0f}) calls/s  "
              f"{best / args.calls * 1e6:7.1f} ({median / args.calls * 1e6:6.1f}) us a call")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
